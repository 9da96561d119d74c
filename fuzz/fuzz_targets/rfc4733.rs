#![no_main]
//! Fuzz target `rfc4733`: see `trunkline_media::fuzzing::rfc4733`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    trunkline_media::fuzzing::rfc4733(data);
});
