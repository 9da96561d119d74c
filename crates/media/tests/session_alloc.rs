//! The media path allocates nothing per packet: a counting global allocator (`stats_alloc`)
//! watches two `MediaSession`s wired back to back (gateway and phone) for 60 s of virtual time
//! once they are warmed up — RTP both ways with jitter-buffer pops, agent audio pushed in 40 ms
//! chunks ahead of the paced output, late-audio swaps, barge-in flushes, RFC 4733 DTMF both
//! ways, RTCP reports — and asserts zero allocations, reallocations included.
//!
//! The same with SRTP (AES-CM + HMAC-SHA1 both ways, SRTCP). The I/O around the session is
//! covered by the call crate's `media_path_alloc` test; the agent WebSocket is not (each
//! 40 ms chunk is a JSON + base64 message).
//!
//! No libtest harness (`harness = false`): the counter is process-wide, and libtest's main
//! thread allocates its own bookkeeping (running-test map, timeout queue, channel wait) when
//! it gets to run. On a busy 2-core CI machine it once got there only after the measurement
//! had begun and was counted as 4 allocations. Here `main` is the only thread.
#![allow(clippy::disallowed_methods)] // Instant::now: a fixed origin for virtual time
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use trunkline_media::G711;
use trunkline_media::jitter::FrameKind;
use trunkline_media::rtcp::WallClock;
use trunkline_media::session::{MediaConfig, MediaEvent, MediaSession, PacketKind};
use trunkline_media::srtp::{SdesKey, SrtpSuite};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const GW: &str = "10.0.0.1:20000";
const PHONE: &str = "192.0.2.7:30000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pair(start: Instant, srtp: bool) -> (MediaSession, MediaSession) {
    let wall = WallClock {
        instant: start,
        system: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let mut a = MediaConfig::new(G711::Ulaw, 0xAAAA, wall);
    a.remote_rtp = Some(addr(PHONE));
    let mut b = MediaConfig::new(G711::Ulaw, 0xBBBB, wall);
    b.remote_rtp = Some(addr(GW));
    if srtp {
        let key = |seed: u8| SdesKey {
            tag: 1,
            suite: SrtpSuite::AesCm128HmacSha1_80,
            material: std::array::from_fn(|i| seed.wrapping_mul(i as u8 + 1)),
        };
        a.srtp = Some((key(3), key(7)));
        b.srtp = Some((key(7), key(3)));
    }
    (MediaSession::new(a).unwrap(), MediaSession::new(b).unwrap())
}

/// What went through, to show the path was exercised.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    gw_rtp: u32,
    gw_rtcp: u32,
    swaps: u32,
    phone_audio_frames: u32,
    gw_audio_frames: u32,
    dtmf_at_gw: u32,
    dtmf_at_phone: u32,
    flushed: u32,
}

/// One 20 ms tick at `now`: every due datagram both ways, a pop on both sides, events.
fn tick(gw: &mut MediaSession, phone: &mut MediaSession, now: Instant, seen: &mut Seen) {
    let mut buf = [0u8; 1500];
    phone.handle_timeout(now);
    gw.handle_timeout(now);
    while let Some(t) = phone.poll_transmit(now, &mut buf) {
        match t.kind {
            PacketKind::Rtp => gw.handle_rtp(&buf[..t.len], addr(PHONE), now),
            PacketKind::Rtcp => gw.handle_rtcp(&buf[..t.len], addr("192.0.2.7:30001"), now),
        }
    }
    while let Some(t) = gw.poll_transmit(now, &mut buf) {
        match t.kind {
            PacketKind::Rtp => {
                seen.gw_rtp += 1;
                seen.swaps += u32::from(t.replaces_previous);
                phone.handle_rtp(&buf[..t.len], addr(GW), now);
                gw.allow_late_audio_until(now + Duration::from_millis(5));
            }
            PacketKind::Rtcp => {
                seen.gw_rtcp += 1;
                phone.handle_rtcp(&buf[..t.len], addr("10.0.0.1:20001"), now);
            }
        }
    }
    if phone.pop_audio(now).kind == FrameKind::Audio {
        seen.phone_audio_frames += 1;
    }
    if gw.pop_audio(now).kind == FrameKind::Audio {
        seen.gw_audio_frames += 1;
    }
    while let Some(e) = gw.poll_event() {
        seen.dtmf_at_gw += u32::from(matches!(e, MediaEvent::Dtmf(_)));
    }
    while let Some(e) = phone.poll_event() {
        seen.dtmf_at_phone += u32::from(matches!(e, MediaEvent::Dtmf(_)));
    }
}

/// `secs` seconds of a call from tick `first`: the phone talks all along (its own pacer, fed
/// 20 ms at a time), the agent answers in 40 ms chunks arriving two per 40 ms in bursts, is
/// interrupted every 7 s, and each side sends a DTMF digit every 5 s.
fn run(
    gw: &mut MediaSession,
    phone: &mut MediaSession,
    start: Instant,
    first: u64,
    secs: u64,
    seen: &mut Seen,
) {
    let speech: [u8; 320] = std::array::from_fn(|i| (i % 120) as u8);
    let mut event_id = 1;
    for k in first..first + secs * 50 {
        let now = start + Duration::from_millis(20 * k);
        // The phone's own audio, a frame whenever its pacer ran dry.
        if phone.is_playout_drained() {
            phone.push_agent_audio(1, &speech[..160]);
        }
        // The agent: a burst of 4 × 40 ms every 160 ms, arriving 2 ms after the tick.
        if k % 8 == 0 {
            for _ in 0..4 {
                gw.push_agent_audio(event_id, &speech);
            }
            event_id += 1;
        }
        if k % 350 == 100 {
            seen.flushed += u32::from(gw.flush_agent_audio() > 0);
        }
        if k % 250 == 30 {
            assert!(gw.send_dtmf('5', 100));
        }
        if k % 250 == 150 {
            assert!(phone.send_dtmf('#', 100));
        }
        tick(gw, phone, now, seen);
        // Agent audio arriving between the tick and the send slot takes the silence's place.
        if k % 8 == 4 && gw.is_playout_drained() {
            gw.push_agent_audio(event_id, &speech[..160]);
            let mut buf = [0u8; 1500];
            let late = now + Duration::from_millis(2);
            while let Some(t) = gw.poll_transmit(late, &mut buf) {
                if t.kind == PacketKind::Rtp {
                    seen.gw_rtp += 1;
                    seen.swaps += u32::from(t.replaces_previous);
                    phone.handle_rtp(&buf[..t.len], addr(GW), late);
                }
            }
        }
    }
}

fn main() {
    for srtp in [false, true] {
        sixty_seconds(srtp);
        println!("no allocation per packet in a warmed-up session (SRTP {srtp}) ... ok");
    }
}

fn sixty_seconds(srtp: bool) {
    let start = Instant::now();
    let (mut gw, mut phone) = pair(start, srtp);
    gw.start(start);
    phone.start(start);
    // Warm-up: every queue reaches the size this traffic needs.
    let mut warm = Seen::default();
    run(&mut gw, &mut phone, start, 0, 20, &mut warm);
    // The agent's largest burst: 4 s queued at once (its blocks then wait in the pool).
    gw.push_agent_audio(0, &[0x55; 32_000]);
    gw.flush_agent_audio();

    let mut seen = Seen::default();
    let region = Region::new(GLOBAL);
    run(&mut gw, &mut phone, start, 20 * 50, 60, &mut seen);
    let stats = region.change();

    // The path was exercised: a packet every tick, reports, digits, swaps, flushes.
    assert_eq!(seen.gw_rtp, 3000 + seen.swaps, "{seen:?}");
    assert!(seen.gw_rtcp >= 5, "{seen:?}");
    assert_eq!(gw.stats().srtp_failures + phone.stats().srtp_failures, 0);
    assert!(
        seen.phone_audio_frames > 1500 && seen.gw_audio_frames > 2500,
        "{seen:?}"
    );
    assert_eq!((seen.dtmf_at_gw, seen.dtmf_at_phone), (12, 12), "{seen:?}");
    // (SRTP never swaps a packet: one packet index is never protected twice.)
    assert!((seen.swaps > 0) != srtp && seen.flushed > 0, "{seen:?}");
    assert_eq!(
        (stats.allocations, stats.reallocations),
        (0, 0),
        "allocations in 60 s of media (SRTP {srtp}): {stats:?}"
    );
}
