//! Fuzz the SDP parser and offer/answer (trunkline_sip::sdp). Replayed on stable by
//! crates/sip/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = trunkline_sip::fuzzing::sdp(data);
});
