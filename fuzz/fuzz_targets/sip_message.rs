//! Fuzz the SIP message parser, stream framer, validation, accessors, error responses and
//! serialisation (trunkline_sip::message). Replayed on stable by crates/sip/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = trunkline_sip::fuzzing::sip_message(data);
});
