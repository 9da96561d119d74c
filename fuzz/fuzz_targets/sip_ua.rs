//! Fuzz the SIP UA core and transaction layer (trunkline_sip::ua::Ua::handle_datagram): the first
//! byte picks UDP or TCP, the rest is one datagram, delivered twice (a retransmission) and followed by
//! every timer. The body is `trunkline_sip::fuzzing::sip_ua`, replayed on stable by
//! crates/sip/tests/fuzz_corpus_ua.rs.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_sip::fuzzing::sip_ua(data, Instant::now());
});
