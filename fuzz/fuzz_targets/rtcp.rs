#![no_main]
//! Fuzz target `rtcp`: see `trunkline_media::fuzzing::rtcp`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_media::fuzzing::rtcp(data, std::time::Instant::now());
});
