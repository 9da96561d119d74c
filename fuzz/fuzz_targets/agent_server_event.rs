#![no_main]
//! Fuzz target `agent_server_event`: see `trunkline_agent::fuzzing::server_event`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_agent::fuzzing::server_event(data);
});
