//! Replays every file of the `trigger_body` fuzz corpus (fuzz/corpus/trigger_body/) through the
//! body the fuzz target runs (`trunkline_gateway::fuzzing::trigger_body`), on stable: a crash or
//! a broken toll-fraud invariant found by the fuzzer and added to the corpus stays fixed. The
//! hand-written seeds also pin what the trigger admits.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch

use std::path::PathBuf;
use std::time::Instant;

use trunkline_gateway::fuzzing::trigger_body;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/corpus/trigger_body"
    ));
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
fn trigger_body_corpus_replays_without_panic() {
    let files = corpus();
    assert!(files.len() >= 12, "corpus present ({} files)", files.len());
    let t0 = Instant::now();
    let admitted = files
        .iter()
        .filter(|(_, d)| !trigger_body(d, t0).is_empty())
        .count();
    assert!(admitted >= 3, "{admitted} of {} admitted", files.len());
}

#[test]
fn the_seeds_are_decided_as_the_policy_says() {
    let t0 = Instant::now();
    let run = |name: &str| {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/trigger_body"
        ))
        .join(name);
        trigger_body(&std::fs::read(&path).expect("seed"), t0)
    };
    // The backend's token: both requests admitted (daily cap 2).
    assert_eq!(run("00_token_fr"), vec!["+33612345678"; 2]);
    // A widget on the allowed origin may set its one key, not the operator's.
    assert_eq!(run("01_widget_var"), vec!["+33612345678"; 2]);
    assert!(run("02_widget_operator_var").is_empty());
    // Nobody sets the call's own variables; a widget no first_message.
    assert!(run("03_token_reserved").is_empty());
    assert!(run("07_widget_first_message").is_empty());
    assert!(run("12_widget_other_var").is_empty());
    // No credentials, a wrong or empty token: nothing; premium and denied prefixes: nothing.
    assert!(run("04_anonymous_premium").is_empty());
    assert!(run("05_wrong_token_denied").is_empty());
    assert!(run("06_empty_bearer_uk").is_empty());
    // Bad shapes: 400 before any policy.
    assert!(run("08_unknown_field").is_empty());
    assert!(run("09_number_not_string").is_empty());
    assert!(run("10_bad_variable_type").is_empty());
    // A formatted US number under +1 is normalised and admitted.
    assert_eq!(run("11_token_us_formatted"), vec!["+14155550123"; 2]);
}
