#![no_main]
//! Fuzz target `agent_client_message`: see `trunkline_agent::fuzzing::client_message`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_agent::fuzzing::client_message(data);
});
