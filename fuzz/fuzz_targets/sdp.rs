//! Fuzz the SDP parser and offer/answer (trunkline_sip::sdp). Replayed on stable by
//! crates/sip/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline_sip::sdp::{MediaParams, SessionDescription, answer, negotiated};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sd) = SessionDescription::parse(text) else {
        return;
    };
    let printed = sd.to_string();
    let again = SessionDescription::parse(&printed).expect("printed SDP parses");
    assert_eq!(again.to_string(), printed);
    let ours = MediaParams::g711([192, 0, 2, 1].into(), 4000, 1);
    if let Ok(a) = answer(&sd, &ours) {
        let _ = negotiated(&sd, &a.sdp);
    }
    let _ = negotiated(&trunkline_sip::sdp::build_offer(&ours), &sd);
});
