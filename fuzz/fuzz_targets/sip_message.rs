//! Fuzz the SIP message parser, stream framer, validation, accessors, error responses and
//! serialisation (trunkline_sip::message). Replayed on stable by crates/sip/tests/fuzz_corpus.rs.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use trunkline_sip::message::{Framing, Message, error_response, frame};

fuzz_target!(|data: &[u8]| {
    if let Framing::Complete(n) = frame(data) {
        assert!(n <= data.len());
    }
    match Message::parse(Bytes::copy_from_slice(data)) {
        Err(e) => {
            if let Some(r) = error_response(data, &e, "fuzz") {
                Message::parse(r.to_bytes()).expect("our error response parses");
            }
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
        }
    }
});
