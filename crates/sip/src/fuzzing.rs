//! The bodies of the `sip_message`, `sdp` and `sip_ua` fuzz targets (`fuzz/fuzz_targets/`),
//! shared with the stable corpus replays (`tests/fuzz_corpus.rs`, `tests/fuzz_corpus_ua.rs`) so
//! both exercise exactly the same calls.
//! They panic on purpose when an invariant breaks: that is what the fuzzer looks for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::{Framing, Message, error_response, frame};
use crate::sdp::{MediaParams, SessionDescription, answer, build_offer, negotiated};
use crate::transaction::{IdGen, TransportKind};
use crate::ua::{Ua, UaConfig};

/// One `sip_message` fuzz input: framing, parse, accessors, validation, error response and
/// re-serialisation must never panic, and what we print must parse again. Returns whether the
/// input parsed as a message.
pub fn sip_message(data: &[u8]) -> bool {
    if let Framing::Complete(n) = frame(data) {
        assert!(n <= data.len());
    }
    match Message::parse(Bytes::copy_from_slice(data)) {
        Err(e) => {
            if let Some(r) = error_response(data, &e, "fuzz") {
                Message::parse(r.to_bytes()).expect("our error response parses");
            }
            false
        }
        Ok(m) => {
            let h = m.headers();
            let _ = (
                h.vias(),
                h.from(),
                h.to(),
                h.cseq(),
                h.max_forwards(),
                h.contacts(),
                h.route(),
            );
            let _ = (
                h.record_route(),
                h.content_length(),
                h.from_tag(),
                h.to_tag(),
            );
            if let Err(e) = m.validate() {
                let _ = error_response(data, &e, "fuzz");
            }
            let again = Message::parse(m.to_bytes()).expect("serialised message parses");
            assert_eq!(again.body(), m.body());
            true
        }
    }
}

/// One `sdp` fuzz input: parse, print/re-parse stability, answer and negotiation must never
/// panic. Returns whether the input parsed as SDP.
pub fn sdp(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(sd) = SessionDescription::parse(text) else {
        return false;
    };
    let printed = sd.to_string();
    let again = SessionDescription::parse(&printed).expect("printed SDP parses");
    assert_eq!(again.to_string(), printed);
    let ours = MediaParams::g711([192, 0, 2, 1].into(), 4000, 1);
    if let Ok(a) = answer(&sd, &ours) {
        let _ = negotiated(&sd, &a.sdp);
    }
    let _ = negotiated(&build_offer(&ours), &sd);
    true
}

/// One `sip_ua` fuzz input through the UA core and transaction layer: the first byte picks UDP or
/// TCP, the rest is one datagram, delivered twice (a retransmission, one second apart from `t0`,
/// the virtual epoch) and followed by every timer until none is left. Returns (messages sent,
/// events raised). Panics if the timers never run out.
pub fn sip_ua(data: &[u8], t0: Instant) -> (usize, usize) {
    let Some((&first, datagram)) = data.split_first() else {
        return (0, 0);
    };
    let transport = if first & 1 == 1 {
        TransportKind::Tcp
    } else {
        TransportKind::Udp
    };
    let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(1));
    ua.set_sent_by(transport, SocketAddr::from(([127, 0, 0, 1], 5060)));
    let peer = SocketAddr::from(([127, 0, 0, 2], 5062));
    let (mut sent, mut events) = (0, 0);
    for at in [t0, t0 + Duration::from_secs(1)] {
        ua.handle_datagram(Bytes::copy_from_slice(datagram), peer, transport, at);
        sent += std::iter::from_fn(|| ua.poll_transmit()).count();
        events += std::iter::from_fn(|| ua.poll_event()).count();
    }
    let mut guard = 0;
    while let Some(at) = ua.poll_timeout() {
        ua.handle_timeout(at);
        sent += std::iter::from_fn(|| ua.poll_transmit()).count();
        events += std::iter::from_fn(|| ua.poll_event()).count();
        guard += 1;
        assert!(guard < 10_000, "timers must run out");
    }
    (sent, events)
}
