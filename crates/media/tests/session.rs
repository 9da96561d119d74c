//! MediaSession end to end in virtual time: two sessions wired back to back (gateway and phone),
//! agent audio paced out and received, DTMF both ways, symmetric RTP latching and its hijack
//! guard, SSRC change, RTCP reports and BYE, SRTP round trip and tampering, RTP timeout.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use common::{ms, t0};
use trunkline_media::G711;
use trunkline_media::jitter::FrameKind;
use trunkline_media::rtcp::WallClock;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::session::{MediaConfig, MediaEvent, MediaSession, PacketKind};
use trunkline_media::srtp::{SdesKey, SrtpSuite};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn wall(t: Instant) -> WallClock {
    WallClock {
        instant: t,
        system: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
    }
}

const GW: &str = "10.0.0.1:20000";
const PHONE: &str = "192.0.2.7:30000";

fn pair(start: Instant, law: G711) -> (MediaSession, MediaSession) {
    let mut a = MediaConfig::new(law, 0xAAAA, wall(start));
    a.remote_rtp = Some(addr("203.0.113.9:4000")); // SDP says this; the phone is behind NAT
    a.initial_sequence = 65530;
    a.initial_timestamp = u32::MAX - 500;
    let mut b = MediaConfig::new(law, 0xBBBB, wall(start));
    b.remote_rtp = Some(addr(GW));
    (MediaSession::new(a).unwrap(), MediaSession::new(b).unwrap())
}

/// Move every due datagram between the two sessions at `now`.
fn exchange(gw: &mut MediaSession, phone: &mut MediaSession, now: Instant) -> Vec<(bool, Vec<u8>)> {
    let mut buf = [0u8; 1500];
    let mut seen = Vec::new();
    while let Some(t) = phone.poll_transmit(now, &mut buf) {
        seen.push((false, buf[..t.len].to_vec()));
        match t.kind {
            PacketKind::Rtp => gw.handle_rtp(&buf[..t.len], addr(PHONE), now),
            PacketKind::Rtcp => gw.handle_rtcp(&buf[..t.len], addr("192.0.2.7:30001"), now),
        }
    }
    while let Some(t) = gw.poll_transmit(now, &mut buf) {
        seen.push((true, buf[..t.len].to_vec()));
        if t.destination.ip() == addr(PHONE).ip() || t.destination == addr(GW) {
            match t.kind {
                PacketKind::Rtp => phone.handle_rtp(&buf[..t.len], addr(GW), now),
                PacketKind::Rtcp => phone.handle_rtcp(&buf[..t.len], addr("10.0.0.1:20001"), now),
            }
        }
    }
    seen
}

fn events(s: &mut MediaSession) -> Vec<MediaEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn agent_audio_reaches_the_phone_paced_and_intact_after_latching() {
    let start = t0();
    let (mut gw, mut phone) = pair(start, G711::Ulaw);
    gw.start(start);
    phone.start(start);
    // The agent sends 1 s of audio at once.
    let audio: Vec<u8> = (0..8000u32).map(|i| (i % 250) as u8).collect();
    gw.push_agent_audio(1, &audio);
    let mut got = Vec::new();
    let mut gw_rtp = 0;
    for k in 0..100u64 {
        let now = start + ms(20 * k);
        for (from_gw, pkt) in exchange(&mut gw, &mut phone, now) {
            if from_gw && parse_rtp(&pkt).is_ok_and(|p| p.header.payload_type == 0) {
                gw_rtp += 1;
            }
        }
        let f = phone.pop_audio(now);
        if f.kind == FrameKind::Audio {
            got.extend_from_slice(&f.data);
        }
    }
    // Latched to the NAT address, not the SDP one.
    assert!(events(&mut gw).contains(&MediaEvent::RemoteLatched(addr(PHONE))));
    assert_eq!(gw.remote(), Some(addr(PHONE)));
    // One RTP packet per 20 ms tick, never a burst (the first went to the SDP address).
    assert_eq!(gw_rtp, 100);
    let start_of_audio = got.iter().position(|b| *b == 0).unwrap();
    // After the agent audio, the pacer's silence keeps RTP flowing (0xFF codes).
    let got = &got[start_of_audio..];
    assert!(got[8000..].iter().all(|b| *b == 0xFF));
    let got = &got[..8000];
    let bad = got
        .iter()
        .enumerate()
        .find(|(i, b)| **b != (*i % 250) as u8);
    assert!(bad.is_none(), "{bad:?} of {}: {:?}", got.len(), &got[..20]);
    assert!(gw.is_playout_drained() || gw.stats().pacer.audio_frames >= 90);
}

#[test]
fn sequence_and_timestamps_on_the_wire_are_continuous() {
    let start = t0();
    let (mut gw, mut phone) = pair(start, G711::Alaw);
    gw.start(start);
    phone.start(start);
    let mut hdrs: Vec<RtpHeader> = Vec::new();
    for k in 0..20u64 {
        if k == 5 {
            gw.push_agent_audio(3, &[9u8; 800]);
        }
        for (from_gw, pkt) in exchange(&mut gw, &mut phone, start + ms(20 * k)) {
            if from_gw && let Ok(p) = parse_rtp(&pkt) {
                hdrs.push(p.header);
            }
        }
    }
    assert_eq!(hdrs.len(), 20);
    for w in hdrs.windows(2) {
        assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1)); // wraps at 65535
        assert_eq!(w[1].timestamp, w[0].timestamp.wrapping_add(160)); // wraps at 2^32
        assert_eq!(w[1].payload_type, 8);
    }
    assert_eq!(hdrs.iter().filter(|h| h.marker).count(), 1);
    assert!(hdrs[5].marker);
}

#[test]
fn dtmf_sent_by_one_side_is_reported_once_by_the_other() {
    let start = t0();
    let (mut gw, mut phone) = pair(start, G711::Ulaw);
    gw.start(start);
    phone.start(start);
    assert!(phone.send_dtmf('7', 100));
    assert!(phone.send_dtmf('#', 60));
    assert!(!phone.send_dtmf('x', 60));
    for k in 0..40u64 {
        exchange(&mut gw, &mut phone, start + ms(20 * k));
    }
    let digits: Vec<char> = events(&mut gw)
        .into_iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf(d) => Some(d.digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec!['7', '#']);
    assert!(gw.stats().dtmf_packets >= 2 * 3 + 5);
}

/// The agent's speech queued when it asks for a digit is played after the digit, whole: the
/// ticks that carry RFC 4733 events hold the audio back instead of dropping the frames.
#[test]
fn agent_audio_queued_around_outgoing_dtmf_is_delayed_not_dropped() {
    let start = t0();
    let (mut gw, mut phone) = pair(start, G711::Ulaw);
    gw.start(start);
    phone.start(start);
    // 200 ms of audio (10 frames), a 100 ms digit, then another 200 ms.
    let first: Vec<u8> = (0..1600u32).map(|i| (i % 97) as u8 + 1).collect();
    let second: Vec<u8> = (0..1600u32).map(|i| (i % 89) as u8 + 100).collect();
    gw.push_agent_audio(1, &first);
    assert!(gw.send_dtmf('5', 100));
    gw.push_agent_audio(1, &second);
    let mut audio = Vec::new();
    let mut events = 0;
    for k in 0..60u64 {
        for (from_gw, pkt) in exchange(&mut gw, &mut phone, start + ms(20 * k)) {
            if !from_gw {
                continue;
            }
            let Ok(p) = parse_rtp(&pkt) else { continue };
            if p.header.payload_type == 0 {
                audio.extend(p.payload.iter().copied().filter(|b| *b != 0xFF));
            } else {
                events += 1;
            }
        }
    }
    assert!(
        events >= 5 + 2,
        "the digit went out as RFC 4733 events ({events})"
    );
    let mut expected = first.clone();
    expected.extend(&second);
    assert_eq!(
        audio.len(),
        expected.len(),
        "no agent audio lost to the digit"
    );
    assert_eq!(audio, expected);
}

fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut b = [0u8; 200];
    let n = write_rtp(
        &RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: ts,
            ssrc,
        },
        &[1u8; 160],
        &mut b,
    )
    .unwrap();
    b[..n].to_vec()
}

#[test]
fn hijack_is_refused_while_the_latched_source_talks_and_relatch_needs_a_stream() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    let evil = addr("198.51.100.66:5004");
    for k in 0..50u16 {
        let now = start + ms(20 * k as u64);
        gw.handle_rtp(&rtp(k, 160 * k as u32, 1), addr(PHONE), now);
        gw.handle_rtp(&rtp(k, 160 * k as u32, 66), evil, now);
    }
    assert_eq!(gw.remote(), Some(addr(PHONE)));
    assert_eq!(gw.stats().foreign_source, 50);
    // The phone moves (NAT rebinding) and goes quiet on the old address: after 2 s, a new source
    // that keeps sending in sequence takes over.
    let moved = addr("192.0.2.7:30500");
    for k in 0..10u16 {
        let now = start + ms(3000 + 20 * k as u64);
        gw.handle_rtp(&rtp(50 + k, 160 * (50 + k as u32), 1), moved, now);
    }
    assert_eq!(gw.remote(), Some(moved));
    let ev = events(&mut gw);
    assert!(ev.contains(&MediaEvent::RemoteLatched(moved)));
}

#[test]
fn ssrc_change_is_reported_and_audio_continues() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    for k in 0..100u16 {
        let now = start + ms(20 * k as u64);
        let (ssrc, ts) = if k < 50 {
            (1, 160 * k as u32)
        } else {
            (2, 777_777 + 160 * k as u32)
        };
        gw.handle_rtp(&rtp(k.wrapping_mul(3), ts, ssrc), addr(PHONE), now);
        gw.pop_audio(now);
    }
    assert!(events(&mut gw).contains(&MediaEvent::SsrcChanged { old: 1, new: 2 }));
    assert_eq!(gw.stats().jitter_buffer.samples_lost, 0);
}

#[test]
fn rtcp_reports_flow_and_bye_is_reported() {
    let start = t0();
    let (mut gw, mut phone) = pair(start, G711::Ulaw);
    gw.start(start);
    phone.start(start);
    let mut rtcp_from_gw = 0;
    for k in 0..=400u64 {
        for (from_gw, pkt) in exchange(&mut gw, &mut phone, start + ms(20 * k)) {
            if from_gw && pkt.len() > 1 && (200..=204).contains(&pkt[1]) {
                rtcp_from_gw += 1;
            }
        }
    }
    // 8 s with a 5 s interval randomised in [2.5, 7.5] s: one to three reports from each side.
    assert!((1..=3).contains(&rtcp_from_gw), "{rtcp_from_gw}");
    assert!((1..=3).contains(&gw.stats().rtcp_received));
    phone.close();
    exchange(&mut gw, &mut phone, start + ms(8020));
    assert!(events(&mut gw).contains(&MediaEvent::Bye(0xBBBB)));
    let mut buf = [0u8; 1500];
    assert!(
        phone.poll_transmit(start + ms(9000), &mut buf).is_none(),
        "closed"
    );
}

#[test]
fn rtcp_interval_is_randomised_per_rfc3550() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    let mut buf = [0u8; 1500];
    let mut times = Vec::new();
    for k in 0..(120_000 / 20) {
        let now = start + ms(20 * k);
        while let Some(t) = gw.poll_transmit(now, &mut buf) {
            if t.kind == PacketKind::Rtcp {
                times.push(now.duration_since(start).as_millis() as i64);
            }
        }
    }
    let gaps: Vec<i64> = std::iter::once(times[0])
        .chain(times.windows(2).map(|w| w[1] - w[0]))
        .collect();
    assert!(gaps.len() >= 16, "{gaps:?}");
    assert!(gaps.iter().all(|g| (2500..=7520).contains(g)), "{gaps:?}");
    assert!(
        gaps.iter().any(|g| *g < 4500) && gaps.iter().any(|g| *g > 5500),
        "{gaps:?}"
    );
}

#[test]
fn srtp_sessions_interoperate_and_reject_tampering() {
    let start = t0();
    let k1 = SdesKey {
        tag: 1,
        suite: SrtpSuite::AesCm128HmacSha1_80,
        material: [7u8; 30],
    };
    let k2 = SdesKey {
        tag: 1,
        suite: SrtpSuite::AesCm128HmacSha1_80,
        material: [9u8; 30],
    };
    let mut a = MediaConfig::new(G711::Ulaw, 1, wall(start));
    a.srtp = Some((k1.clone(), k2.clone()));
    let mut b = MediaConfig::new(G711::Ulaw, 2, wall(start));
    b.remote_rtp = Some(addr(GW));
    b.srtp = Some((k2, k1));
    let (mut gw, mut phone) = (MediaSession::new(a).unwrap(), MediaSession::new(b).unwrap());
    gw.start(start);
    phone.start(start);
    phone.push_agent_audio(1, &[42u8; 1600]);
    let mut buf = [0u8; 1500];
    let mut got = 0;
    for k in 0..20u64 {
        let now = start + ms(20 * k);
        while let Some(t) = phone.poll_transmit(now, &mut buf) {
            // On the wire: 12-byte header + 160 encrypted bytes + 10-byte tag.
            assert_eq!(t.len, 182);
            assert!(buf[12..172] != [42u8; 160][..] || k == 0);
            let mut tampered = buf[..t.len].to_vec();
            tampered[20] ^= 1;
            gw.handle_rtp(&tampered, addr(PHONE), now);
            gw.handle_rtp(&buf[..t.len], addr(PHONE), now);
            // Replay of the same packet is refused.
            gw.handle_rtp(&buf[..t.len], addr(PHONE), now);
        }
        if gw.pop_audio(now).data == [42u8; 160] {
            got += 1;
        }
    }
    assert!(got >= 5, "decrypted audio played: {got}");
    assert_eq!(gw.stats().srtp_failures, 2 * 20);
    assert_eq!(gw.stats().rtp_received, 20);
}

#[test]
fn rtp_timeout_fires_once() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    gw.handle_rtp(&rtp(1, 0, 5), addr(PHONE), start);
    let deadline = gw.poll_timeout().unwrap();
    assert!(deadline <= start + ms(20));
    gw.handle_timeout(start + ms(29_000));
    assert!(!events(&mut gw).contains(&MediaEvent::RtpTimeout));
    gw.handle_timeout(start + ms(30_000));
    gw.handle_timeout(start + ms(31_000));
    let ev = events(&mut gw);
    assert_eq!(
        ev.iter().filter(|e| **e == MediaEvent::RtpTimeout).count(),
        1
    );
}

#[test]
fn malformed_and_unknown_datagrams_are_counted_not_fatal() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    gw.handle_rtp(b"", addr(PHONE), start);
    gw.handle_rtp(b"INVITE sip:x SIP/2.0\r\n", addr(PHONE), start);
    let mut p = rtp(1, 0, 5);
    p[1] = 50; // PT 50 not negotiated
    gw.handle_rtp(&p, addr(PHONE), start);
    gw.handle_rtcp(&[0x80, 0xC9, 0, 9], addr(PHONE), start);
    let s = gw.stats();
    assert_eq!(s.malformed, 3);
    assert_eq!(s.unknown_payload_type, 1);
    assert_eq!(s.rtp_received, 0);
    assert_eq!(
        gw.remote(),
        Some(addr("203.0.113.9:4000")),
        "garbage does not latch"
    );
}

#[test]
fn memory_per_session_is_small() {
    let start = t0();
    let (gw, _) = pair(start, G711::Ulaw);
    let inline = std::mem::size_of::<MediaSession>();
    // Inline state + 4 KiB audio ring + 512 B scratch; the pacer queue grows with queued audio.
    let total = inline + 4096 + 512;
    eprintln!("MediaSession: {inline} B inline, ~{total} B with its fixed heap buffers");
    assert!(total < 16 * 1024, "{inline} B inline, ~{total} B total");
    drop(gw);
}

#[test]
fn dtmf_on_a_negotiated_payload_type_other_than_101_and_comfort_noise_is_tolerated() {
    let start = t0();
    let (mut gw, _) = {
        let mut a = MediaConfig::new(G711::Alaw, 1, wall(start));
        a.payload_types.telephone_event = Some(96);
        let b = a.clone();
        (MediaSession::new(a).unwrap(), MediaSession::new(b).unwrap())
    };
    gw.start(start);
    let mut buf = [0u8; 64];
    let mut seq = 0u16;
    let mut send = |gw: &mut MediaSession, pt: u8, payload: &[u8], ts: u32, k: u64| {
        let h = RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc: 77,
        };
        let n = write_rtp(&h, payload, &mut buf).unwrap();
        seq += 1;
        gw.handle_rtp(&buf[..n], addr(PHONE), start + ms(20 * k));
    };
    send(&mut gw, 13, &[0x40], 0, 0); // CN
    for k in 1..4u64 {
        send(&mut gw, 96, &[4, 10, 0, 100 + k as u8], 1000, k);
    }
    for k in 4..7u64 {
        send(&mut gw, 96, &[4, 0x8A, 0x01, 0xE0], 1000, k);
    }
    send(&mut gw, 101, &[5, 0x8A, 0x01, 0xE0], 3000, 8); // not negotiated here
    let digits: Vec<char> = events(&mut gw)
        .into_iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf(d) => Some(d.digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec!['4']);
    let s = gw.stats();
    assert_eq!(s.comfort_noise, 1);
    assert_eq!(s.dtmf_packets, 6);
    assert_eq!(s.unknown_payload_type, 1);
}

/// Build the gateway's RTP packets due at `now` (the phone side is not involved).
fn gw_rtp(gw: &mut MediaSession, now: Instant) -> Vec<(bool, RtpHeader, Vec<u8>)> {
    let mut buf = [0u8; 1500];
    let mut out = Vec::new();
    while let Some(t) = gw.poll_transmit(now, &mut buf) {
        if t.kind == PacketKind::Rtp {
            let p = parse_rtp(&buf[..t.len]).unwrap();
            out.push((t.replaces_previous, p.header, p.payload.to_vec()));
        }
    }
    out
}

#[test]
fn agent_audio_pushed_before_the_send_slot_replaces_the_silence_of_that_tick() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    // Tick 0 builds silence; the I/O layer will send it at +5 ms: replaceable until +4 ms.
    let sent = gw_rtp(&mut gw, start);
    assert_eq!(sent.len(), 1);
    let (replaces, silence, payload) = &sent[0];
    assert!(!replaces && payload == &[0xFF; 160]);
    gw.allow_late_audio_until(start + ms(4));
    // The agent's first chunk arrives 2 ms after the tick.
    gw.push_agent_audio(1, &[9u8; 480]);
    let late = gw_rtp(&mut gw, start + ms(2));
    assert_eq!(late.len(), 1);
    let (replaces, h, payload) = &late[0];
    assert!(replaces, "the queued silence is replaced");
    assert_eq!(h.sequence, silence.sequence);
    assert_eq!(h.timestamp, silence.timestamp);
    assert!(h.marker, "first audio after silence");
    assert_eq!(payload, &[9u8; 160]);
    // Nothing more until the next tick, which continues the stream.
    assert!(gw_rtp(&mut gw, start + ms(3)).is_empty());
    let next = gw_rtp(&mut gw, start + ms(20));
    let (replaces, h, payload) = &next[0];
    assert!(!replaces && !h.marker && payload == &[9u8; 160]);
    assert_eq!(h.sequence, silence.sequence.wrapping_add(1));
    assert_eq!(h.timestamp, silence.timestamp.wrapping_add(160));
    assert_eq!(gw.stats().rtp_sent, 2);
}

#[test]
fn agent_audio_after_the_send_slot_waits_for_the_next_tick() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    let silence = gw_rtp(&mut gw, start)[0].1;
    gw.allow_late_audio_until(start + ms(4));
    gw.push_agent_audio(1, &[9u8; 480]);
    assert!(
        gw_rtp(&mut gw, start + ms(4)).is_empty(),
        "too late to swap"
    );
    let next = gw_rtp(&mut gw, start + ms(20));
    let (replaces, h, payload) = &next[0];
    assert!(!replaces && h.marker && payload == &[9u8; 160]);
    assert_eq!(h.timestamp, silence.timestamp.wrapping_add(160));
    // Without a send slot (no allow_late_audio_until), never swapped either.
    gw.flush_agent_audio();
    let silence = gw_rtp(&mut gw, start + ms(40))[0].1;
    gw.push_agent_audio(2, &[8u8; 480]);
    assert!(gw_rtp(&mut gw, start + ms(41)).is_empty());
    let next = gw_rtp(&mut gw, start + ms(60));
    assert!(next[0].1.marker && next[0].1.timestamp == silence.timestamp.wrapping_add(160));
}

#[test]
fn a_missed_swap_loses_nothing_and_barge_in_still_flushes_at_once() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    gw_rtp(&mut gw, start);
    gw.allow_late_audio_until(start + ms(4));
    gw.push_agent_audio(1, &[9u8; 320]);
    assert!(gw_rtp(&mut gw, start + ms(1))[0].0);
    // The I/O layer found the silence already sent.
    gw.late_audio_missed();
    let next = gw_rtp(&mut gw, start + ms(20));
    assert!(next[0].1.marker && next[0].2 == [9u8; 160]);
    // Barge-in: everything queued goes, the next tick is silence.
    gw.push_agent_audio(2, &[7u8; 1600]);
    gw.flush_agent_audio();
    let next = gw_rtp(&mut gw, start + ms(40));
    assert!(!next[0].1.marker && next[0].2 == [0xFF; 160]);
    // A swap offered after a barge-in only carries audio pushed after it.
    gw.allow_late_audio_until(start + ms(44));
    assert!(gw_rtp(&mut gw, start + ms(41)).is_empty());
}

#[test]
fn sent_audio_is_kept_only_for_recorded_calls() {
    let start = t0();
    let (mut gw, _) = pair(start, G711::Ulaw);
    gw.start(start);
    gw.push_agent_audio(1, &[9u8; 320]);
    gw_rtp(&mut gw, start);
    assert_eq!(gw.take_sent_audio(), None);
    gw.set_keep_sent_audio(true);
    gw_rtp(&mut gw, start + ms(20));
    assert_eq!(gw.take_sent_audio(), Some([9u8; 160]));
    assert_eq!(gw.take_sent_audio(), None);
}

#[test]
fn srtp_sessions_never_swap_a_packet() {
    let start = t0();
    let key = SdesKey {
        tag: 1,
        suite: SrtpSuite::AesCm128HmacSha1_80,
        material: [7u8; 30],
    };
    let mut cfg = MediaConfig::new(G711::Ulaw, 0xAAAA, wall(start));
    cfg.remote_rtp = Some(addr(PHONE));
    cfg.srtp = Some((key.clone(), key));
    let mut gw = MediaSession::new(cfg).unwrap();
    gw.start(start);
    let mut buf = [0u8; 1500];
    assert!(gw.poll_transmit(start, &mut buf).is_some());
    gw.allow_late_audio_until(start + ms(4));
    gw.push_agent_audio(1, &[9u8; 320]);
    assert!(gw.poll_transmit(start + ms(1), &mut buf).is_none());
}
