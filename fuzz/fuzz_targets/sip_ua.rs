//! Fuzz the SIP UA core and transaction layer (trunkline_sip::ua::Ua::handle_datagram): the first
//! byte picks UDP or TCP, the rest is one datagram, delivered twice (a retransmission) and followed by
//! every timer. Replayed on stable by crates/sip/tests/fuzz_corpus_ua.rs.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use trunkline_sip::transaction::{IdGen, TransportKind};
use trunkline_sip::ua::{Ua, UaConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&first, datagram)) = data.split_first() else { return };
    let transport = if first & 1 == 1 { TransportKind::Tcp } else { TransportKind::Udp };
    let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(1));
    ua.set_sent_by(transport, "127.0.0.1:5060".parse().unwrap());
    let peer = "127.0.0.2:5062".parse().unwrap();
    let t0 = Instant::now();
    for at in [t0, t0 + Duration::from_secs(1)] {
        ua.handle_datagram(Bytes::copy_from_slice(datagram), peer, transport, at);
        while ua.poll_transmit().is_some() {}
        while ua.poll_event().is_some() {}
    }
    let mut guard = 0;
    while let Some(at) = ua.poll_timeout() {
        ua.handle_timeout(at);
        while ua.poll_transmit().is_some() {}
        while ua.poll_event().is_some() {}
        guard += 1;
        assert!(guard < 10_000, "timers must run out");
    }
});
