//! Deterministic jitter-buffer behaviour under seeded loss, reordering, duplication, bursts,
//! 30 ms packetisation, SSRC changes and DTX gaps, all in virtual time.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::{Duration, Instant};

use common::{Rng, ms, t0};
use trunkline_media::G711;
use trunkline_media::jitter::{FrameKind, JitterBuffer, JitterConfig, PushOutcome};

/// Byte for absolute sample index `i` of the sender's audio: never the silence code 0xFF.
fn code(i: u64) -> u8 {
    (i % 251) as u8
}

struct Pkt {
    ssrc: u32,
    ts: u32,
    marker: bool,
    first_sample: u64,
    len: usize,
    arrival: Duration,
}

impl Pkt {
    fn payload(&self) -> Vec<u8> {
        (0..self.len as u64)
            .map(|k| code(self.first_sample + k))
            .collect()
    }
}

/// Sender: `n` packets of `ptime` ms, sent every `ptime` ms from t=0.
fn stream(n: u64, ptime: u64, ssrc: u32, ts0: u32) -> Vec<Pkt> {
    let len = (ptime * 8) as usize;
    (0..n)
        .map(|k| Pkt {
            ssrc,
            ts: ts0.wrapping_add((k as usize * len) as u32),
            marker: k == 0,
            first_sample: k * len as u64,
            len,
            arrival: ms(k * ptime),
        })
        .collect()
}

struct Run {
    out: Vec<(FrameKind, [u8; 160])>,
    jb: JitterBuffer,
}

/// Deliver packets by arrival time and pop every 20 ms for `duration`.
fn run(mut pkts: Vec<Pkt>, cfg: JitterConfig, duration: Duration) -> Run {
    let start = t0();
    pkts.sort_by_key(|p| p.arrival);
    let mut jb = JitterBuffer::new(G711::Ulaw, cfg);
    let mut out = Vec::new();
    let mut i = 0;
    let mut tick = Duration::ZERO;
    while tick <= duration {
        while i < pkts.len() && pkts[i].arrival <= tick {
            let p = &pkts[i];
            jb.push(p.ssrc, p.ts, p.marker, &p.payload(), start + p.arrival);
            i += 1;
        }
        let f = jb.pop(start + tick);
        out.push((f.kind, f.data));
        tick += ms(20);
    }
    Run { out, jb }
}

/// The audio samples played, in order (silence frames skipped).
fn played(r: &Run) -> Vec<u8> {
    // Leading silence inside the first audio frame (prefill not aligned to 20 ms) is skipped.
    r.out
        .iter()
        .filter(|(k, _)| *k == FrameKind::Audio)
        .flat_map(|(_, d)| d.iter().copied())
        .skip_while(|c| *c == 0xFF)
        .collect()
}

fn assert_continuous(samples: &[u8], from: u64, count: usize) {
    assert!(samples.len() >= count, "played {} < {count}", samples.len());
    for (k, s) in samples.iter().take(count).enumerate() {
        assert_eq!(*s, code(from + k as u64), "sample {k}");
    }
}

#[test]
fn clean_stream_plays_everything_in_order_after_the_initial_delay() {
    let r = run(stream(250, 20, 1, 1000), JitterConfig::default(), ms(5200));
    let st = r.jb.stats();
    assert_eq!(st.samples_lost, 0);
    // Only the end of the stream is concealed (fade-out over 3 frames).
    assert_eq!(st.frames_concealed, 3);
    assert_eq!(st.frames_audio, 250);
    assert_continuous(&played(&r), 0, 250 * 160);
    // Initial delay is the configured 60 ms: two silent frames, then audio.
    assert_eq!(r.out[0].0, FrameKind::Silence);
    assert_eq!(r.out[1].0, FrameKind::Silence);
    assert_eq!(r.out[2].0, FrameKind::Audio);
}

#[test]
fn reordering_duplicates_and_jitter_lose_nothing() {
    for seed in 1..=20 {
        let mut rng = Rng::new(seed);
        let mut pkts = stream(500, 20, 7, u32::MAX - 5000); // crosses timestamp wrap
        let mut dups = Vec::new();
        for p in &mut pkts {
            // Up to 30 ms of jitter reorders neighbours.
            p.arrival += ms(rng.below(31));
            if rng.chance(5) {
                dups.push(Pkt {
                    arrival: p.arrival + ms(rng.below(15)),
                    ..*p
                });
            }
        }
        let n_dups = dups.len() as u64;
        pkts.extend(dups);
        let r = run(pkts, JitterConfig::default(), ms(10_500));
        let st = r.jb.stats();
        assert_eq!(st.samples_lost, 0, "seed {seed}");
        assert_eq!(st.duplicates, n_dups, "seed {seed}");
        assert_continuous(&played(&r), 0, 500 * 160);
        assert!(st.target_samples <= 1600);
    }
}

#[test]
fn seeded_loss_is_concealed_frame_for_frame() {
    for seed in 1..=10 {
        let mut rng = Rng::new(seed);
        let mut pkts = stream(400, 20, 3, 0);
        let mut lost = vec![];
        pkts.retain(|p| {
            let keep = p.first_sample < 160 * 3 || !rng.chance(7);
            if !keep {
                lost.push(p.first_sample / 160);
            }
            keep
        });
        let r = run(pkts, JitterConfig::default(), ms(8200));
        let st = r.jb.stats();
        // A loss at the very end is not "lost" yet (nothing after it arrived).
        let expect = lost.iter().filter(|k| **k < 399).count() as u64 * 160;
        assert_eq!(st.samples_lost, expect, "seed {seed} lost {lost:?}");
        // Every frame that arrived is played at its place; lost ones are concealed, not skipped.
        let frames: Vec<_> = r
            .out
            .iter()
            .skip_while(|(k, _)| *k == FrameKind::Silence)
            .collect();
        for (k, (kind, data)) in frames.iter().take(400).enumerate() {
            if lost.contains(&(k as u64)) {
                assert_ne!(*kind, FrameKind::Audio, "seed {seed} frame {k}");
            } else {
                assert_eq!(*kind, FrameKind::Audio, "seed {seed} frame {k}");
                assert_eq!(data[0], code(k as u64 * 160));
            }
        }
    }
}

#[test]
fn thirty_ms_packets_come_out_as_continuous_20_ms_frames() {
    let r = run(stream(200, 30, 9, 12345), JitterConfig::default(), ms(6200));
    assert_eq!(r.jb.stats().samples_lost, 0);
    assert_continuous(&played(&r), 0, 200 * 240);
}

#[test]
fn ssrc_change_with_timestamp_jump_keeps_all_audio() {
    let mut pkts = stream(100, 20, 1, 5000);
    let mut b = stream(100, 20, 2, 9_999_999);
    for p in &mut b {
        p.arrival += ms(2000);
        p.first_sample += 100 * 160; // the audio continues
    }
    pkts.extend(b);
    let r = run(pkts, JitterConfig::default(), ms(4300));
    let st = r.jb.stats();
    assert!(st.resyncs >= 1);
    assert_eq!(st.samples_lost, 0);
    assert_continuous(&played(&r), 0, 200 * 160);
}

#[test]
fn timestamp_jump_within_one_ssrc_is_resynchronised() {
    let mut pkts = stream(100, 20, 1, 0);
    for p in pkts.iter_mut().skip(50) {
        p.ts = p.ts.wrapping_add(3_000_000);
    }
    let r = run(pkts, JitterConfig::default(), ms(2300));
    assert_eq!(r.jb.stats().samples_lost, 0);
    assert_continuous(&played(&r), 0, 100 * 160);
}

#[test]
fn talkspurt_after_dtx_does_not_add_latency() {
    // 1 s of speech, 3 s of silence (no packets, timestamps keep running), 1 s of speech.
    let mut pkts = stream(50, 20, 1, 0);
    let mut b = stream(50, 20, 1, 0);
    for p in &mut b {
        p.ts = p.ts.wrapping_add(4 * 8000);
        p.arrival += ms(4000);
        p.first_sample += 50 * 160;
    }
    b[0].marker = true;
    pkts.extend(b);
    let r = run(pkts, JitterConfig::default(), ms(5400));
    assert_continuous(&played(&r), 0, 100 * 160);
    // The second talkspurt starts playing within the target delay of its first packet (4.0 s).
    let first_b = r
        .out
        .iter()
        .position(|(k, d)| *k == FrameKind::Audio && d[0] == code(50 * 160))
        .unwrap();
    let at = first_b as u64 * 20;
    assert!((4000..=4000 + 120).contains(&at), "played at {at} ms");
}

#[test]
fn late_packets_are_counted_and_raise_the_target_within_bounds() {
    let cfg = JitterConfig {
        min_delay: ms(40),
        max_delay: ms(120),
        initial_delay: ms(40),
    };
    let mut rng = Rng::new(42);
    let mut pkts = stream(500, 20, 1, 0);
    for p in &mut pkts {
        if rng.chance(10) {
            p.arrival += ms(60 + rng.below(60));
        }
    }
    let r = run(pkts, cfg, ms(10_500));
    let st = r.jb.stats();
    assert!(st.late + st.underruns > 0);
    assert!(
        st.target_samples > 320,
        "target grew: {}",
        st.target_samples
    );
    assert!(
        st.target_samples <= 960,
        "bounded by max: {}",
        st.target_samples
    );
    assert!(r.jb.target_delay() <= ms(120));
}

#[test]
fn bursty_arrivals_are_smoothed() {
    // Packets arrive in bursts of 5 every 100 ms (sender-side batching).
    let mut pkts = stream(500, 20, 1, 0);
    for (k, p) in pkts.iter_mut().enumerate() {
        p.arrival = ms((k as u64 / 5 + 1) * 100);
    }
    let r = run(pkts, JitterConfig::default(), ms(10_600));
    let st = r.jb.stats();
    // The depth adapts to the 100 ms bursts: nothing lost, one underrun at most (the very end).
    assert_eq!(st.samples_lost, 0, "{st:?}");
    assert!(st.underruns <= 1, "{st:?}");
    assert_continuous(&played(&r), 0, 500 * 160);
    assert!(st.target_samples >= 800);
}

#[test]
fn too_deep_buffer_is_trimmed_to_the_maximum() {
    // 1 s of audio arrives at once after a stall.
    let mut pkts = stream(50, 20, 1, 0);
    for p in &mut pkts {
        p.arrival = ms(1000);
    }
    let r = run(pkts, JitterConfig::default(), ms(1400));
    let st = r.jb.stats();
    assert!(st.samples_dropped > 0);
    assert!(st.depth_samples <= 1600 + 160);
}

#[test]
fn late_and_duplicate_outcomes_are_reported() {
    let start: Instant = t0();
    let mut jb = JitterBuffer::new(G711::Alaw, JitterConfig::default());
    let p = [1u8; 160];
    assert_eq!(jb.push(1, 0, true, &p, start), PushOutcome::Resynced);
    assert_eq!(jb.push(1, 0, false, &p, start), PushOutcome::Duplicate);
    assert_eq!(jb.push(1, 160, false, &p, start), PushOutcome::Stored);
    for k in 0..6 {
        jb.pop(start + ms(20 * k));
    }
    assert_eq!(jb.push(1, 0, false, &p, start + ms(120)), PushOutcome::Late);
    assert_eq!(jb.stats().late, 1);
    // Empty buffer yields A-law silence, never nothing.
    let f = jb.pop(start + ms(140));
    assert_ne!(f.kind, FrameKind::Audio);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever arrives (any timestamps, SSRCs, sizes, order, duplicates), nothing panics,
        /// every pop yields one 160-code frame (silence is all silence codes), the depth stays
        /// within the ring and the target within the configured bounds.
        #[test]
        fn any_input_yields_one_frame_per_pop_in_order(
            ops in prop::collection::vec(
                (0u32..4, -3000i64..3000, 0usize..400, any::<bool>(), 0u8..3),
                1..300,
            ),
        ) {
            let start = t0();
            let mut jb = JitterBuffer::new(G711::Ulaw, JitterConfig::default());
            let mut ts_base: i64 = 1_000_000;
            let mut now = start;
            for (ssrc, dts, len, marker, pops) in ops {
                ts_base += dts;
                let payload: Vec<u8> = (0..len).map(|i| ((ts_base + i as i64).rem_euclid(251)) as u8).collect();
                jb.push(ssrc, ts_base as u32, marker, &payload, now);
                for _ in 0..pops {
                    let f = jb.pop(now);
                    prop_assert_eq!(f.data.len(), 160);
                    if f.kind == FrameKind::Silence {
                        prop_assert!(f.data.iter().all(|c| *c == 0xFF));
                    }
                    now += ms(20);
                }
                let st = jb.stats();
                prop_assert!(st.depth_samples <= 4096);
                prop_assert!(st.target_samples as i64 >= 320 && st.target_samples <= 1600);
            }
        }
    }
}
