//! Entry points shared by the fuzz targets in `/fuzz` (`rtp`, `rtcp`, `rfc4733`) and by the
//! stable replay of their corpora (`tests/fuzz_corpus.rs`). Each must never panic.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::dtmf::{DtmfReceiver, TelephoneEvent};
use crate::g711::G711;
use crate::jitter::{JitterBuffer, JitterConfig};
use crate::rtcp::{WallClock, parse_rtcp};
use crate::rtp::{is_rtcp, parse_rtp};
use crate::session::{MediaConfig, MediaSession};
use crate::srtp::{SdesKey, SrtpSession, SrtpSuite};

/// An SRTP session for untrusted input: its header parsing, index estimate and replay window
/// run before the tag check rejects the packet (the `_32` suite on receive: 4-byte tags).
fn srtp() -> SrtpSession {
    let key = |suite| SdesKey {
        tag: 1,
        suite,
        material: [7; 30],
    };
    #[allow(clippy::expect_used)]
    SrtpSession::new(
        &key(SrtpSuite::AesCm128HmacSha1_80),
        &key(SrtpSuite::AesCm128HmacSha1_32),
    )
    .expect("fixed keys")
}

fn session(now: Instant) -> MediaSession {
    let cfg = MediaConfig::new(
        G711::Ulaw,
        1,
        WallClock {
            instant: now,
            system: SystemTime::UNIX_EPOCH,
        },
    );
    #[allow(clippy::expect_used)]
    MediaSession::new(cfg).expect("no srtp, cannot fail")
}

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    5004,
);

/// RTP: SRTP unprotect/protect, parse, then feed a jitter buffer and a whole session (twice,
/// 20 ms apart).
pub fn rtp(data: &[u8], now: Instant) {
    let _ = is_rtcp(data);
    let mut out = [0u8; 2048];
    let mut s = srtp();
    let _ = s.unprotect_rtp_into(data, &mut out);
    let _ = s.protect_rtp_into(data, &mut out);
    if let Ok(p) = parse_rtp(data) {
        let mut jb = JitterBuffer::new(G711::Alaw, JitterConfig::default());
        jb.push(
            p.header.ssrc,
            p.header.timestamp,
            p.header.marker,
            p.payload,
            now,
        );
        jb.push(
            p.header.ssrc,
            p.header.timestamp.wrapping_add(160),
            false,
            p.payload,
            now,
        );
        let _ = jb.pop(now);
        let _ = jb.pop(now + Duration::from_millis(20));
    }
    let mut s = session(now);
    s.start(now);
    let mut buf = [0u8; 1500];
    for k in 0..2u32 {
        let t = now + Duration::from_millis(20) * k;
        s.handle_rtp(data, PEER, t);
        let _ = s.pop_audio(t);
        while s.poll_transmit(t, &mut buf).is_some() {}
        while s.poll_event().is_some() {}
    }
}

/// RTCP: SRTCP unprotect/protect, parse a compound packet and hand it to a session.
pub fn rtcp(data: &[u8], now: Instant) {
    let _ = parse_rtcp(data);
    let mut out = [0u8; 2048];
    let mut s = srtp();
    let _ = s.unprotect_rtcp_into(data, &mut out);
    let _ = s.protect_rtcp_into(data, &mut out);
    let mut s = session(now);
    s.handle_rtcp(data, PEER, now);
    while s.poll_event().is_some() {}
}

/// RFC 4733: the input is a sequence of 8-byte records (4-byte RTP timestamp, 4-byte event
/// payload) fed to one receiver, 20 ms apart.
pub fn rfc4733(data: &[u8]) {
    let mut rx = DtmfReceiver::new();
    for (i, rec) in data.chunks(8).enumerate() {
        let at = Duration::from_millis(20 * i as u64);
        if rec.len() < 8 {
            let _ = TelephoneEvent::parse(rec);
            break;
        }
        let ts = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if let Ok(ev) = TelephoneEvent::parse(&rec[4..]) {
            assert_eq!(TelephoneEvent::parse(&ev.to_bytes()), Ok(ev));
            rx.handle(7, ts, ev, at);
        }
        rx.handle_timeout(at);
        while rx.poll().is_some() {}
    }
}
