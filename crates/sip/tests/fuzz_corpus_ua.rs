//! Replays the `sip_ua` fuzz corpus (fuzz/corpus/sip_ua/) through the body the fuzz target
//! fuzz/fuzz_targets/sip_ua.rs runs (`trunkline_sip::fuzzing::sip_ua`), on stable: a crash found
//! by the fuzzer and added to the corpus stays fixed.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::PathBuf;
use std::time::Instant;

/// The fuzz target's body, shared (`trunkline_sip::fuzzing::sip_ua`).
fn sip_ua(data: &[u8]) -> (usize, usize) {
    trunkline_sip::fuzzing::sip_ua(data, Instant::now())
}

#[test]
fn sip_ua_corpus_replays_without_panic() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/sip_ua"
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "seed corpus present");
    let mut answered = 0;
    for f in &files {
        let (sent, _) = sip_ua(&std::fs::read(f).unwrap());
        if sent > 0 {
            answered += 1;
        }
    }
    // Most seeds are requests the core must answer (200, 400, 420, 481, 483, 501…).
    assert!(
        answered >= 7,
        "only {answered} of {} seeds produced an answer",
        files.len()
    );
}
