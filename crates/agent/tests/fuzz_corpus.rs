//! Replays the `agent_server_event` and `agent_client_message` fuzz corpora (`/fuzz/corpus/`) on
//! stable, plus deterministic mutations of every seed (truncations, byte flips), through the
//! same entry points the fuzz targets call. None may panic.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::Path;

use trunkline_agent::fuzzing;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(CORPUS).join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    v.sort();
    assert!(v.len() >= 10, "{target}: corpus too small");
    v
}

fn variants(seed: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    for cut in (0..seed.len()).step_by(3) {
        out.push(seed[..cut].to_vec());
    }
    for i in 0..seed.len() {
        for b in [b'"', b'}', b'0', b'\\', 0xff] {
            let mut m = seed.to_vec();
            m[i] = b;
            out.push(m);
        }
    }
    out
}

#[test]
fn server_event_corpus_and_mutations_never_panic_and_round_trip() {
    let mut decoded = 0;
    for seed in seeds("agent_server_event") {
        if trunkline_agent::ServerEvent::decode(std::str::from_utf8(&seed).unwrap_or("")).is_ok() {
            decoded += 1;
        }
        for v in variants(&seed) {
            fuzzing::server_event(&v);
        }
    }
    assert!(
        decoded >= 30,
        "the doc examples in the corpus decode ({decoded})"
    );
}

#[test]
fn client_message_corpus_and_mutations_never_panic_and_round_trip() {
    for seed in seeds("agent_client_message") {
        for v in variants(&seed) {
            fuzzing::client_message(&v);
        }
    }
}
