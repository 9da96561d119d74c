//! Pacer behaviour in virtual time: bursts in, one frame per 20 ms out on an absolute schedule,
//! silence when idle, barge-in flushes, drain detection; and a property test that RTP
//! timestamps advance by exactly 160 per tick whatever the input and polling pattern.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::{Duration, Instant};

use common::{Rng, ms, t0};
use proptest::prelude::*;
use trunkline_media::G711;
use trunkline_media::pacer::{PacedFrame, Pacer, PacerConfig, TICK};

fn drain_due(p: &mut Pacer, now: Instant, out: &mut Vec<PacedFrame>) {
    while let Some(f) = p.poll_frame(now) {
        out.push(f);
    }
}

#[test]
fn a_five_second_burst_plays_at_exactly_real_time() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 4242);
    // 5 s of agent audio arrives within 200 ms, in odd-sized chunks.
    let total = 5 * 8000;
    let mut pushed = 0;
    let mut out = Vec::new();
    let mut rng = Rng::new(7);
    let mut now = start;
    while now < start + ms(6000) {
        if pushed < total && now < start + ms(200) {
            let n = (1 + rng.below(3000) as usize).min(total - pushed);
            let chunk: Vec<u8> = (pushed..pushed + n).map(|i| (i % 200) as u8).collect();
            p.push(1, &chunk);
            pushed += n;
        }
        drain_due(&mut p, now, &mut out);
        now += ms(5);
    }
    assert_eq!(pushed, total);
    // One frame per tick, never more: 300 ticks in 6 s (+1 for t=0).
    assert_eq!(out.len(), 300);
    for (n, f) in out.iter().enumerate() {
        assert_eq!(f.tick, n as u64);
        assert_eq!(f.due, start + TICK * n as u32);
        assert_eq!(f.timestamp, 4242u32.wrapping_add(160 * n as u32));
    }
    let audio: Vec<u8> = out
        .iter()
        .filter(|f| f.is_audio)
        .flat_map(|f| f.data)
        .collect();
    assert_eq!(audio.len(), total);
    assert!(audio.iter().enumerate().all(|(i, b)| *b == (i % 200) as u8));
    // Exactly 250 audio frames, contiguous, marker only on the first.
    let first = out.iter().position(|f| f.is_audio).unwrap();
    assert!(out[first..first + 250].iter().all(|f| f.is_audio));
    assert!(out[first].marker);
    assert_eq!(out.iter().filter(|f| f.marker).count(), 1);
    assert!(p.is_drained());
}

#[test]
fn late_polling_does_not_drift() {
    // The I/O layer is 50 ms late once a second (the tokio `Delay` failure mode).
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 0);
    let mut out = Vec::new();
    let mut emitted_at = Vec::new();
    let mut now = start;
    while out.len() < 501 {
        drain_due(&mut p, now, &mut out);
        emitted_at.resize(out.len(), now);
        let next = p.poll_timeout().unwrap();
        let late = if out.len() % 50 == 49 { ms(50) } else { ms(0) };
        now = next + late;
    }
    // Every tick is emitted, none skipped, the schedule stays anchored at start, and lateness
    // never accumulates: no frame goes out more than the 50 ms stall after its due time.
    assert_eq!(out[500].due, start + ms(10_000));
    assert_eq!(p.stats().skipped_ticks, 0);
    for (f, at) in out.iter().zip(&emitted_at) {
        assert!(at.saturating_duration_since(f.due) <= ms(50));
    }
}

#[test]
fn a_long_stall_skips_ticks_but_keeps_the_media_clock() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Alaw));
    p.start(start, 100);
    p.push(1, &[5u8; 8000]);
    let mut out = Vec::new();
    drain_due(&mut p, start, &mut out);
    drain_due(&mut p, start + ms(1000), &mut out); // 1 s stall
    // At most max_catchup + 1 frames back to back; timestamps follow the tick index.
    assert_eq!(out.len(), 1 + 6);
    for f in &out {
        assert_eq!(f.timestamp, 100 + 160 * f.tick as u32);
    }
    assert!(out[1].marker, "marker after a gap");
    assert_eq!(p.stats().skipped_ticks, 44);
}

#[test]
fn barge_in_flushes_and_stale_events_stay_dropped() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 0);
    p.push(1, &[1u8; 1600]);
    p.push(2, &[2u8; 1600]);
    let mut out = Vec::new();
    drain_due(&mut p, start + ms(40), &mut out);
    assert_eq!(out.iter().filter(|f| f.is_audio).count(), 3);
    // interruption{event_id: 1}: the rest of event 1 goes, event 2 stays.
    assert_eq!(p.flush_up_to(1), 1600 - 480);
    assert_eq!(p.push(1, &[1u8; 160]), 0);
    out.clear();
    drain_due(&mut p, start + ms(60), &mut out);
    assert_eq!(out[0].event_id, Some(2));
    assert_eq!(out[0].data, [2u8; 160]);
    assert!(!p.is_drained());
    // Full barge-in: next tick is silence.
    p.flush();
    assert!(p.is_drained());
    out.clear();
    drain_due(&mut p, start + ms(80), &mut out);
    assert!(!out[0].is_audio && out[0].data == [0xFF; 160]);
}

#[test]
fn silence_keeps_rtp_flowing_when_idle() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Alaw));
    p.start(start, 0);
    let mut out = Vec::new();
    for k in 0..100 {
        drain_due(&mut p, start + ms(20 * k), &mut out);
    }
    assert_eq!(out.len(), 100);
    assert!(out.iter().all(|f| !f.is_audio && f.data == [0xD5; 160]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn timestamps_advance_by_exactly_160_per_tick(
        ts0 in any::<u32>(),
        pushes in prop::collection::vec((0u64..3000, 0usize..4000, 0u64..5), 0..40),
        lateness in prop::collection::vec(0u64..150, 1..200),
        flush_at in prop::option::of(0usize..200),
    ) {
        let start = t0();
        let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
        p.start(start, ts0);
        let mut pushes: Vec<_> = pushes;
        pushes.sort_by_key(|x| x.0);
        let mut pi = 0;
        let mut out: Vec<PacedFrame> = Vec::new();
        let mut now = start;
        for (k, late) in lateness.iter().enumerate() {
            while pi < pushes.len() && start + ms(pushes[pi].0) <= now {
                p.push(pushes[pi].2, &vec![3u8; pushes[pi].1]);
                pi += 1;
            }
            if flush_at == Some(k) {
                p.flush_up_to(2);
            }
            let before = out.len();
            drain_due(&mut p, now, &mut out);
            // Never more than max_catchup + 1 frames per poll.
            prop_assert!(out.len() - before <= 6);
            now = p.poll_timeout().unwrap() + Duration::from_millis(*late);
        }
        for f in &out {
            prop_assert_eq!(f.timestamp, ts0.wrapping_add(160u32.wrapping_mul(f.tick as u32)));
            prop_assert_eq!(f.due, start + TICK * f.tick as u32);
        }
        for w in out.windows(2) {
            prop_assert!(w[1].tick > w[0].tick);
            let dt = w[1].tick - w[0].tick;
            prop_assert_eq!(w[1].timestamp.wrapping_sub(w[0].timestamp), 160 * dt as u32);
        }
        // With lateness below max_catchup ticks, no tick is ever skipped.
        if lateness.iter().all(|l| *l < 100) {
            prop_assert_eq!(p.stats().skipped_ticks, 0);
            for w in out.windows(2) {
                prop_assert_eq!(w[1].tick - w[0].tick, 1);
            }
        }
    }
}

#[test]
fn audio_arriving_after_a_silent_tick_takes_that_tick() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 1000);
    let silent = p.poll_frame(start).unwrap();
    assert!(!silent.is_audio);
    // Nothing queued yet: no late frame.
    assert!(p.poll_late().is_none());
    // The agent's first chunk lands 2 ms after the tick built silence.
    p.push(7, &[5u8; 400]);
    let late = p.poll_late().unwrap();
    assert_eq!((late.tick, late.due, late.timestamp), (0, start, 1000));
    assert!(late.is_audio && late.marker && late.event_id == Some(7));
    assert_eq!(late.data, [5u8; 160]);
    // Once per tick.
    assert!(p.poll_late().is_none());
    // The next tick continues the stream: timestamp + 160, no marker.
    let next = p.poll_frame(start + ms(20)).unwrap();
    assert_eq!((next.tick, next.timestamp), (1, 1160));
    assert!(next.is_audio && !next.marker && next.data == [5u8; 160]);
    assert_eq!(p.queued(), 80);
    assert_eq!(p.stats().audio_frames, 2);
    assert_eq!(p.stats().silence_frames, 0);
}

#[test]
fn late_audio_is_only_offered_for_a_tick_that_found_the_queue_empty() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 0);
    // A partial frame waiting for more audio: its silent tick is not swappable (the partial
    // frame keeps its order), neither is a tick that sent audio.
    p.push(1, &[1u8; 80]);
    assert!(!p.poll_frame(start).unwrap().is_audio);
    p.push(1, &[1u8; 400]);
    assert!(p.poll_late().is_none());
    assert!(p.poll_frame(start + ms(20)).unwrap().is_audio);
    assert!(p.poll_late().is_none());
    // A held tick (DTMF) neither.
    p.flush();
    p.set_hold(true);
    assert!(!p.poll_frame(start + ms(40)).unwrap().is_audio);
    p.push(2, &[2u8; 160]);
    assert!(p.poll_late().is_none());
    p.set_hold(false);
    // Less than a frame: wait for the next tick.
    p.flush();
    assert!(!p.poll_frame(start + ms(60)).unwrap().is_audio);
    p.push(3, &[3u8; 100]);
    assert!(p.poll_late().is_none());
    // Once the next tick is built, the previous one is gone.
    p.push(3, &[3u8; 60]);
    let f = p.poll_frame(start + ms(80)).unwrap();
    assert!(f.is_audio && f.tick == 4);
    assert!(p.poll_late().is_none());
}

#[test]
fn a_missed_late_frame_goes_out_at_the_next_tick_with_the_marker() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 0);
    assert!(!p.poll_frame(start).unwrap().is_audio);
    let audio: Vec<u8> = (0..320u32).map(|i| i as u8).collect();
    p.push(4, &audio[..100]);
    p.push(5, &audio[100..]);
    let late = p.poll_late().unwrap();
    assert_eq!(late.data[..], audio[..160]);
    // The silence had already left: the audio is given back, nothing lost or reordered.
    p.late_missed();
    assert_eq!(p.queued(), 320);
    let f = p.poll_frame(start + ms(20)).unwrap();
    assert!(f.is_audio && f.marker && f.event_id == Some(4) && f.timestamp == 160);
    assert_eq!(f.data[..], audio[..160]);
    assert_eq!((p.stats().audio_frames, p.stats().silence_frames), (1, 1));
    // The segments came back too: event 4 is gone, event 5's remaining 160 bytes are queued.
    assert_eq!(p.flush_up_to(4), 0);
    assert_eq!(p.queued(), 160);
    assert_eq!(p.flush_up_to(5), 160);
}

#[test]
fn barge_in_after_a_late_frame_drops_everything_queued() {
    let start = t0();
    let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
    p.start(start, 0);
    assert!(!p.poll_frame(start).unwrap().is_audio);
    p.push(1, &[1u8; 1600]);
    assert!(p.poll_late().is_some());
    assert_eq!(p.flush(), 1600 - 160);
    // A miss reported after the flush brings nothing back.
    p.late_missed();
    assert!(p.is_drained());
    assert!(!p.poll_frame(start + ms(20)).unwrap().is_audio);
    // flush_up_to likewise.
    p.push(2, &[2u8; 320]);
    assert!(p.poll_late().is_some());
    assert_eq!(p.flush_up_to(2), 160);
    p.late_missed();
    assert!(p.is_drained());
}
