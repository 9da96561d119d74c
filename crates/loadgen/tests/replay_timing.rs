//! The phone side's capture replay keeps the capture's timing: for every capture in
//! `tests/data/pcap/`, the trunk emulator's `PlaySource` offsets equal the capture's packet times,
//! and the load tester's schedule, played on tokio's paused (virtual) clock over three loops,
//! sends every packet within 1 ms of `loop × period + capture offset`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use trunkline_emulators::trunk::PlaySource;
use trunkline_loadgen::schedule::ReplaySchedule;
use trunkline_media::capture::{extract_rtp_streams, read_udp_file};
use trunkline_media::g711::G711;

const PCAP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/pcap");

fn captures(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            captures(&p, out);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(p);
        }
    }
}

fn all_captures() -> Vec<PathBuf> {
    let mut v = Vec::new();
    captures(Path::new(PCAP_DIR), &mut v);
    v.sort();
    assert!(v.len() >= 30, "captures found: {}", v.len());
    v
}

/// The capture's own times of the packets the phone side plays (longest stream, audio and
/// telephone-events), relative to the first.
fn capture_offsets(path: &Path) -> Vec<Duration> {
    let dgrams = read_udp_file(path).expect("readable capture");
    let streams = extract_rtp_streams(&dgrams);
    let Some(s) = streams.iter().max_by_key(|s| s.packets.len()) else {
        return Vec::new();
    };
    let te = s.telephone_event_pt();
    let Some(t0) = s.packets.first().map(|p| p.time) else {
        return Vec::new();
    };
    s.packets
        .iter()
        .filter(|p| {
            Some(p.header.payload_type) == te
                || G711::from_payload_type(p.header.payload_type).is_some()
        })
        .map(|p| p.time - t0)
        .collect()
}

#[test]
fn play_source_offsets_equal_every_captures_packet_times() {
    let mut with_audio = 0;
    for path in all_captures() {
        let src = PlaySource::from_pcap(&path).expect("capture loads");
        let want = capture_offsets(&path);
        let got: Vec<Duration> = src.packets.iter().map(|p| p.at).collect();
        assert_eq!(got.len(), want.len(), "{}", path.display());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = g.abs_diff(*w);
            assert!(
                err <= Duration::from_millis(1),
                "{} packet {i}: {g:?} vs capture {w:?}",
                path.display()
            );
        }
        with_audio += usize::from(!got.is_empty());
        if std::env::var_os("LOADGEN_DEBUG").is_some() {
            let late = trunkline_loadgen::schedule::capture_lateness(&src);
            let max = late.iter().max().copied().unwrap_or_default();
            let over = late
                .iter()
                .filter(|l| **l > Duration::from_millis(40))
                .count();
            eprintln!(
                "{}: {} packets, max lateness {max:?}, >40ms: {over}",
                path.display(),
                got.len()
            );
        }
    }
    assert!(
        with_audio >= 20,
        "captures with a playable stream: {with_audio}"
    );
}

#[tokio::test(start_paused = true)]
async fn replay_schedule_keeps_capture_timing_across_loops_in_virtual_time() {
    for path in all_captures() {
        let src = PlaySource::from_pcap(&path).expect("capture loads");
        let sched = ReplaySchedule::new(&src);
        let want = capture_offsets(&path);
        if want.is_empty() {
            assert!(sched.is_empty());
            assert_eq!(sched.send_time(0), None, "{}", path.display());
            continue;
        }
        // Cap the virtual replay at three passes or 600 packets per capture to stay quick.
        let loops = 3u64;
        let count = (want.len() as u64 * loops).min(600.max(want.len() as u64));
        let start = tokio::time::Instant::now();
        let mut sent: Vec<(u64, Duration)> = Vec::new();
        sched
            .play(start, count, |n| sent.push((n, start.elapsed())))
            .await;
        assert_eq!(sent.len() as u64, count, "{}", path.display());
        let period = sched.period();
        let len = want.len() as u64;
        for (n, at) in sent {
            let k = u32::try_from(n / len).expect("few loops");
            let expected = period * k + want[(n % len) as usize];
            assert!(
                at.abs_diff(expected) <= Duration::from_millis(1),
                "{} packet {n}: sent at {at:?}, capture says {expected:?}",
                path.display()
            );
        }
        // Each loop starts one 20 ms frame after the previous loop's last packet.
        let last = want.last().copied().unwrap_or_default();
        assert_eq!(
            period,
            last + Duration::from_millis(20),
            "{}",
            path.display()
        );
        assert_eq!(sched.send_time(len), Some(period), "{}", path.display());
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_sender_catches_up_instead_of_drifting() {
    // Absolute deadlines: a 100 ms stall delays the packets due during it, not the later ones.
    let src = PlaySource::from_ulaw(&[0xff; 160 * 50]);
    let sched = ReplaySchedule::new(&src);
    let mut late = Vec::new();
    let start = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_millis(100)).await;
    sched.play(start, 10, |_| late.push(start.elapsed())).await;
    // Packets 0..=5 were due during the stall and go at once; the rest on schedule.
    assert!(late[..6].iter().all(|&t| t == Duration::from_millis(100)));
    assert_eq!(late[6], Duration::from_millis(120));
    assert_eq!(late[9], Duration::from_millis(180));
}
