//! Replays every file of the `sip_message` and `sdp` fuzz corpora (fuzz/corpus/) through the same
//! calls the fuzz targets make, on stable, so a crash found by the fuzzer and added to the corpus
//! stays fixed.
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::PathBuf;

use trunkline_sip::fuzzing::{sdp, sip_message};

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus")).join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("readable")))
        .collect()
}

#[test]
fn sip_message_corpus_replays_without_panic() {
    let files = corpus("sip_message");
    assert!(files.len() >= 55, "corpus present ({} files)", files.len());
    let parsed = files.iter().filter(|(_, d)| sip_message(d)).count();
    // sanity: the corpus is not all garbage (RFC 4475 + Twilio-like messages parse)
    assert!(parsed >= 40, "{parsed} of {} parsed", files.len());
}

#[test]
fn sdp_corpus_replays_without_panic() {
    let files = corpus("sdp");
    assert!(files.len() >= 5);
    let parsed = files.iter().filter(|(_, d)| sdp(d)).count();
    assert!(parsed >= 5, "{parsed} of {} parsed", files.len());
}
