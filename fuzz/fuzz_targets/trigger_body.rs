//! Fuzz the HTTP trigger (`POST /api/call/outbound`): the body through serde and every policy
//! decision after it, with the toll-fraud invariants. The body is
//! `trunkline_gateway::fuzzing::trigger_body`, replayed on stable by
//! crates/gateway/tests/fuzz_corpus.rs.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_gateway::fuzzing::trigger_body(data, Instant::now());
});
