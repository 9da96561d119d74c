//! The load tester's integrity analysis against the gateway's own jitter buffer, deterministic:
//! the default capture played looped in 20 ms packets, a sender stall (packets held, then sent in
//! a burst, as when the load tester's process stalls), the jitter buffer's frames as the agent
//! hears them. Every call the buffer handles without losing audio must be explained by the
//! analysis with as many insertions as the buffer counts underruns, and a call that lost speech
//! must not be.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use trunkline_emulators::trunk::PlaySource;
use trunkline_loadgen::analyze::{Integrity, integrity_allowing};
use trunkline_loadgen::runner::default_pcap;
use trunkline_loadgen::schedule::expected_audio;
use trunkline_media::G711;
use trunkline_media::jitter::{JitterBuffer, JitterConfig, JitterStats};

struct Call {
    heard: Vec<i16>,
    stats: JitterStats,
}

/// `codes` (one pass of the capture) sent looped for `secs`, every packet 20 ms after the
/// previous one except those due during the stall (`stall_at`, `stall_ms`), which leave together
/// when it ends; the gateway pops a frame every 20 ms, `phase_us` after the phone's clock.
fn call(codes: &[u8], secs: u64, stall_at_ms: u64, stall_ms: u64, phase_us: u64) -> Call {
    let t0 = Instant::now();
    let packets = secs * 50;
    let pkts = codes.len() / 160;
    let mut jb = JitterBuffer::new(G711::Ulaw, JitterConfig::default());
    let arrival = |k: u64| {
        let send = k * 20;
        let at = if (stall_at_ms..stall_at_ms + stall_ms).contains(&send) {
            stall_at_ms + stall_ms
        } else {
            send
        };
        at * 1000 + 100
    };
    let mut heard = Vec::with_capacity(packets as usize * 160);
    let mut k = 0u64;
    let mut tick_us = phase_us;
    while tick_us < packets * 20 * 1000 {
        while k < packets && arrival(k) <= tick_us {
            let i = (k as usize % pkts) * 160;
            jb.push(
                7,
                (k * 160) as u32,
                k == 0,
                &codes[i..i + 160],
                t0 + Duration::from_micros(arrival(k)),
            );
            k += 1;
        }
        let f = jb.pop(t0 + Duration::from_micros(tick_us));
        heard.extend(f.data.iter().map(|&c| G711::Ulaw.decode(c)));
        tick_us += 20_000;
    }
    Call {
        heard,
        stats: jb.stats(),
    }
}

fn capture() -> (Vec<u8>, Vec<i16>) {
    let play = PlaySource::from_pcap(default_pcap()).unwrap();
    let played = expected_audio(&play, G711::Ulaw);
    let codes = played.iter().map(|&s| G711::Ulaw.encode(s)).collect();
    (codes, played)
}

fn explained(c: &Call, played: &[i16]) -> Integrity {
    integrity_allowing(&c.heard, played, c.stats.underruns as usize)
}

#[test]
fn every_sender_stall_the_jitter_buffer_absorbs_is_explained() {
    let (codes, played) = capture();
    let mut bad = Vec::new();
    let (mut cases, mut with_underrun, mut speech_cut) = (0, 0, 0);
    for stall_ms in [40u64, 60, 80, 100, 120, 140, 160, 200, 240] {
        for stall_at_ms in (1000..7000).step_by(410) {
            for phase_us in [3_000u64, 11_000, 19_000] {
                let c = call(&codes, 10, stall_at_ms, stall_ms, phase_us);
                let s = c.stats;
                if s.late > 0 || s.samples_lost > 0 || s.samples_dropped_forced > 0 {
                    continue; // the gateway counts what it lost: not this test's subject
                }
                cases += 1;
                with_underrun += usize::from(s.underruns > 0);
                let i = explained(&c, &played);
                if i.deleted_only
                    .is_none_or(|d| d > s.samples_dropped as usize)
                {
                    bad.push(format!(
                        "stall {stall_ms} ms at {stall_at_ms} ms, phase {phase_us} µs: underruns {}, dropped {}: {:?} ({})",
                        s.underruns,
                        s.samples_dropped,
                        i.deleted_only,
                        i.unexplained.map(|u| u.to_string()).unwrap_or_default()
                    ));
                    continue;
                }
                // The same call with one frame of speech cut after the stall is not explained.
                if s.underruns > 0 && speech_cut < 10 {
                    let from = i.aligned_at + (stall_at_ms as usize + 1500) * 8;
                    let Some(k) = (from..c.heard.len() - 8000)
                        .step_by(160)
                        .find(|&k| c.heard[k..k + 160].iter().any(|x| x.abs() > 4000))
                    else {
                        continue;
                    };
                    let mut cut = Call {
                        heard: c.heard.clone(),
                        stats: s,
                    };
                    cut.heard.drain(k..k + 160);
                    assert_eq!(
                        explained(&cut, &played).deleted_only,
                        None,
                        "stall {stall_ms} ms at {stall_at_ms} ms: 160 loud samples cut at {k} pass"
                    );
                    speech_cut += 1;
                }
            }
        }
    }
    assert!(
        cases > 200 && with_underrun > 100,
        "{cases} cases, {with_underrun} with an underrun"
    );
    assert_eq!(speech_cut, 10);
    assert!(
        bad.is_empty(),
        "{} of {cases} unexplained:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
