//! Replays the `sip_ua` fuzz corpus (fuzz/corpus/sip_ua/) through the same calls the fuzz target
//! fuzz/fuzz_targets/sip_ua.rs makes, on stable: a crash found by the fuzzer and added to the corpus
//! stays fixed.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::transaction::{IdGen, TransportKind};
use trunkline_sip::ua::{Ua, UaConfig};

/// Same body as the fuzz target; returns (messages sent, events raised).
fn sip_ua(data: &[u8]) -> (usize, usize) {
    let Some((&first, datagram)) = data.split_first() else {
        return (0, 0);
    };
    let transport = if first & 1 == 1 {
        TransportKind::Tcp
    } else {
        TransportKind::Udp
    };
    let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(1));
    ua.set_sent_by(transport, "127.0.0.1:5060".parse().unwrap());
    let peer = "127.0.0.2:5062".parse().unwrap();
    let t0 = Instant::now();
    let (mut sent, mut events) = (0, 0);
    for at in [t0, t0 + Duration::from_secs(1)] {
        ua.handle_datagram(Bytes::copy_from_slice(datagram), peer, transport, at);
        sent += std::iter::from_fn(|| ua.poll_transmit()).count();
        events += std::iter::from_fn(|| ua.poll_event()).count();
    }
    let mut guard = 0;
    while let Some(at) = ua.poll_timeout() {
        ua.handle_timeout(at);
        sent += std::iter::from_fn(|| ua.poll_transmit()).count();
        events += std::iter::from_fn(|| ua.poll_event()).count();
        guard += 1;
        assert!(guard < 10_000, "timers must run out");
    }
    (sent, events)
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
