//! Replays every file of the `sip_message` and `sdp` fuzz corpora (fuzz/corpus/) through the same
//! calls the fuzz targets make, on stable, so a crash found by the fuzzer and added to the corpus
//! stays fixed.
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::PathBuf;

use bytes::Bytes;
use trunkline_sip::message::{Framing, Message, error_response, frame};
use trunkline_sip::sdp::{MediaParams, SessionDescription, answer, build_offer, negotiated};

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

/// Same body as fuzz/fuzz_targets/sip_message.rs.
fn sip_message(data: &[u8]) -> bool {
    if let Framing::Complete(n) = frame(data) {
        assert!(n <= data.len());
    }
    match Message::parse(Bytes::copy_from_slice(data)) {
        Err(e) => {
            if let Some(r) = error_response(data, &e, "fuzz") {
                Message::parse(r.to_bytes()).expect("our error response parses");
            }
            false
        }
        Ok(m) => {
            let h = m.headers();
            let _ = (
                h.vias(),
                h.from(),
                h.to(),
                h.cseq(),
                h.max_forwards(),
                h.contacts(),
                h.route(),
            );
            let _ = (
                h.record_route(),
                h.content_length(),
                h.from_tag(),
                h.to_tag(),
            );
            if let Err(e) = m.validate() {
                let _ = error_response(data, &e, "fuzz");
            }
            let again = Message::parse(m.to_bytes()).expect("serialised message parses");
            assert_eq!(again.body(), m.body());
            true
        }
    }
}

/// Same body as fuzz/fuzz_targets/sdp.rs.
fn sdp(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(sd) = SessionDescription::parse(text) else {
        return false;
    };
    let printed = sd.to_string();
    let again = SessionDescription::parse(&printed).expect("printed SDP parses");
    assert_eq!(again.to_string(), printed);
    let ours = MediaParams::g711([192, 0, 2, 1].into(), 4000, 1);
    if let Ok(a) = answer(&sd, &ours) {
        let _ = negotiated(&sd, &a.sdp);
    }
    let _ = negotiated(&build_offer(&ours), &sd);
    true
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
