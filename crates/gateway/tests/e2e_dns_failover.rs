//! RFC 3263 end to end on loopback: a DNS server (`hickory-server`, in process, authoritative for
//! `trunk.test`) serves NAPTR → SRV → A for the termination host with two targets; the first
//! (priority 10) is a UDP socket that swallows everything, the second (priority 20) is the trunk
//! emulator. The call must go through the second within the ring timeout, the first must have
//! seen the INVITE, the record must name the target that answered, the failover must be counted,
//! and a second call must be served from the resolver's cache (no new DNS query within the TTL).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{deploy, speech};
use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::rr::rdata::{A, NAPTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::UdpSocket;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::TrunkConfig;

/// The DNS server's address and its query counter.
type DnsServer = (SocketAddr, Arc<AtomicUsize>);

/// The catalog, counting the queries it answers.
struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

/// `trunk.test` with NAPTR → `_sip._udp.trunk.test` → SRV {10: dead, 20: live} → A 127.0.0.1.
async fn dns_server(dead_port: u16, live_port: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    const TTL: u32 = 300;
    let origin = name("trunk.test.");
    let mut zone: InMemoryZoneHandler<TokioRuntimeProvider> =
        InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let records = [
        Record::from_rdata(
            origin.clone(),
            TTL,
            RData::SOA(SOA::new(
                name("ns.trunk.test."),
                name("hostmaster.trunk.test."),
                1,
                3600,
                600,
                86400,
                TTL,
            )),
        ),
        Record::from_rdata(
            origin.clone(),
            TTL,
            RData::NAPTR(NAPTR::new(
                10,
                50,
                b"s".to_vec().into_boxed_slice(),
                b"SIP+D2U".to_vec().into_boxed_slice(),
                Vec::new().into_boxed_slice(),
                name("_sip._udp.trunk.test."),
            )),
        ),
        Record::from_rdata(
            name("_sip._udp.trunk.test."),
            TTL,
            RData::SRV(SRV::new(10, 0, dead_port, name("dead.trunk.test."))),
        ),
        Record::from_rdata(
            name("_sip._udp.trunk.test."),
            TTL,
            RData::SRV(SRV::new(20, 0, live_port, name("live.trunk.test."))),
        ),
        Record::from_rdata(
            name("dead.trunk.test."),
            TTL,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ),
        Record::from_rdata(
            name("live.trunk.test."),
            TTL,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ),
    ];
    for r in records {
        assert!(zone.upsert_mut(r, 1), "record added");
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), vec![Arc::new(zone)]);
    let queries = Arc::new(AtomicUsize::new(0));
    let mut server = Server::new(Counting {
        catalog,
        queries: queries.clone(),
    });
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = sock.local_addr().expect("addr");
    server.register_socket(sock);
    // The server runs until the test's runtime ends.
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    (addr, queries)
}

/// How many datagrams wait on `sock` (read without blocking).
fn drain(sock: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_fails_over_from_a_dead_srv_target_to_the_trunk_within_the_ring_timeout() {
    // The dead target: bound, never read until the end (a host that drops packets).
    let dead = UdpSocket::bind("127.0.0.1:0").await.expect("bind dead");
    let dead_port = dead.local_addr().expect("addr").port();
    let trunk_cfg = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(2)),
        ..TrunkConfig::default()
    };
    // The emulator's port is known once it runs, inside `deploy`: the DNS server starts in the
    // config tweak (the gateway resolves per call, and once at start to warn early).
    let dns_cell: Arc<std::sync::Mutex<Option<DnsServer>>> = Arc::new(std::sync::Mutex::new(None));
    let d = {
        let dns_cell = dns_cell.clone();
        deploy(trunk_cfg, AgentEmulatorConfig::default(), move |cfg| {
            let live_port = cfg
                .trunk
                .outbound_proxy
                .take()
                .and_then(|p| p.parse::<SocketAddr>().ok())
                .expect("the emulator's address")
                .port();
            let (dns, queries) = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(dns_server(dead_port, live_port))
            });
            if let Ok(mut c) = dns_cell.lock() {
                *c = Some((dns, queries));
            }
            cfg.trunk.termination_uri = "sip:trunk.test".into();
            cfg.trunk.dns_servers = vec![dns];
            cfg.trunk.failover_timeout_ms = 1500;
            cfg.trunk.ring_timeout_secs = 8;
        })
        .await
    };
    let (_, queries) = dns_cell.lock().expect("lock").clone().expect("dns started");
    let live = d.trunk.addr();
    let at_start = queries.load(Ordering::SeqCst);
    assert!(at_start >= 3, "NAPTR, SRV and A asked at start: {at_start}");

    let placed = Instant::now();
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 30).await;
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(5), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    assert_eq!(calls.len(), 1, "{rec:?}");
    let t = &calls[0];
    assert_eq!(
        t.auth_ok,
        Some(true),
        "the 407 of the second target answered"
    );
    assert!(
        t.request_uri.starts_with("sip:+33612345678@trunk.test"),
        "the Request-URI keeps the termination host: {}",
        t.request_uri
    );
    let answered_after = t
        .answered_at
        .map(|a| a.saturating_duration_since(placed))
        .expect("answered");
    assert!(
        answered_after < Duration::from_secs(8),
        "answered {answered_after:?} after the trigger, beyond the 8 s ring timeout"
    );
    eprintln!(
        "measured: answered {answered_after:?} after the trigger (failover timeout 1.5 s); DNS queries at start: {at_start}"
    );
    assert_eq!(rec.trunk_target, Some(live.to_string()), "{rec:?}");
    assert_eq!(rec.trunk_attempts, 2);
    assert!(
        matches!(
            rec.end_cause,
            Some(trunkline_call::record::EndCause::RemoteHangup)
        ),
        "{rec:?}"
    );

    // The dead target got the INVITE first (and its retransmissions), nothing after failover.
    let to_dead = drain(&dead);
    assert!(!to_dead.is_empty(), "the first SRV target was tried");
    assert!(
        to_dead
            .iter()
            .all(|m| m.starts_with(b"INVITE sip:+33612345678@trunk.test")),
        "only the INVITE went to the dead target"
    );
    assert!(
        to_dead.len() <= 4,
        "retransmissions at 0, 0.5, 1.0 s only: {}",
        to_dead.len()
    );

    let metrics = trunkline_gateway::api::CallService::metrics(&d.gateway);
    assert!(
        metrics.contains("trunkline_trunk_failovers_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("trunkline_trunk_dns_failures_total 0\n"));

    // A second call within the TTL: no DNS query, the same order (dead first, then live).
    let before = queries.load(Ordering::SeqCst);
    let sid = d.call("+33612345679").await;
    let rec = d.finished(&sid, 30).await;
    assert_eq!(rec.trunk_target, Some(live.to_string()));
    assert_eq!(
        queries.load(Ordering::SeqCst),
        before,
        "the resolver's cache answered the second call"
    );
    assert!(
        !drain(&dead).is_empty(),
        "the dead target is tried again (priority 10)"
    );
}
