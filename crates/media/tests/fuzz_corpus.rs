//! Replays the seed corpora of the `rtp`, `rtcp` and `rfc4733` fuzz targets (`/fuzz/corpus/`) on
//! stable, plus deterministic mutations of every seed (truncations and bit flips), through the
//! same entry points the fuzz targets call. None may panic.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;

use common::t0;
use trunkline_media::fuzzing;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(CORPUS).join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(v.len() >= 5, "{target}: corpus too small");
    v
}

fn variants(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for cut in 0..seed.len().min(40) {
        out.push(seed[..cut].to_vec());
    }
    for i in 0..seed.len().min(48) {
        for bit in [0x01u8, 0x10, 0x80] {
            let mut m = seed.to_vec();
            m[i] ^= bit;
            out.push(m);
        }
    }
    out
}

#[test]
fn rtp_corpus_replays_without_panic() {
    let now = t0();
    for s in seeds("rtp") {
        for v in variants(&s) {
            fuzzing::rtp(&v, now);
        }
    }
}

#[test]
fn rtcp_corpus_replays_without_panic() {
    let now = t0();
    for s in seeds("rtcp") {
        for v in variants(&s) {
            fuzzing::rtcp(&v, now);
        }
    }
}

#[test]
fn rfc4733_corpus_replays_without_panic() {
    for s in seeds("rfc4733") {
        for v in variants(&s) {
            fuzzing::rfc4733(&v);
        }
    }
}
