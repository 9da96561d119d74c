//! The bodies of the `sip_message` and `sdp` fuzz targets (`fuzz/fuzz_targets/`), shared with
//! the stable corpus replay (`tests/fuzz_corpus.rs`) so both exercise exactly the same calls.
//! They panic on purpose when an invariant breaks: that is what the fuzzer looks for.

use bytes::Bytes;

use crate::message::{Framing, Message, error_response, frame};
use crate::sdp::{MediaParams, SessionDescription, answer, build_offer, negotiated};

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
