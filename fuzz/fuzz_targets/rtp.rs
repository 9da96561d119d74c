#![no_main]
//! Fuzz target `rtp`: see `trunkline_media::fuzzing::rtp`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_media::fuzzing::rtp(data, std::time::Instant::now());
});
