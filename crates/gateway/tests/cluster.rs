//! Three gateways sharing PostgreSQL behave like one (issue 13): the concurrency cap and the
//! per-destination daily cap are global, a call is found and hung up through any node, a
//! restarted node counts nothing twice. And every node answers SIP OPTIONS 503 while it takes no
//! new call (at its own capacity, draining), 200 otherwise.
//!
//! Needs `TRUNKLINE_TEST_DATABASE_URL` (`eval "$(.ci/postgres-start)"`); without it the
//! PostgreSQL tests fail in CI and are skipped with a reason elsewhere.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TOKEN, api, base_config, pg};
use serde_json::Value;
use sqlx::Connection;
use tokio::net::{TcpListener, UdpSocket};
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};
use trunkline_emulators::trunk::{TrunkConfig, TrunkEmulator};
use trunkline_gateway::config::{Config, Secrets};
use trunkline_gateway::server::Server;
use trunkline_sip::transaction::TransportKind;

fn secrets() -> Secrets {
    Secrets {
        trunk_password: Some("s3cret".into()),
        api_tokens: vec![("e2e".into(), TOKEN.into())],
        ..Secrets::default()
    }
}

fn node_config(
    trunk: &TrunkEmulator,
    agent: &AgentEmulator,
    db: &str,
    node: usize,
    tweak: &dyn Fn(&mut Config),
) -> Config {
    let mut cfg = base_config(trunk, agent);
    cfg.records.database_url = db.to_owned();
    cfg.records.node_id = format!("node-{node}");
    cfg.cluster.enabled = true;
    cfg.cluster.heartbeat_secs = 1;
    // Each node its own RTP ports (as on separate machines with one address each).
    cfg.rtp.port_min = 40000 + (std::process::id() % 50) as u16 * 300 + node as u16 * 100;
    cfg.rtp.port_max = cfg.rtp.port_min + 98;
    cfg.policy.max_concurrent_calls = 10;
    cfg.policy.calls_per_second = 1000.0;
    cfg.policy.per_ip_per_minute = 10_000;
    cfg.policy.per_destination_per_day = 3;
    tweak(&mut cfg);
    cfg
}

async fn start(cfg: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Server::start_on(cfg, secrets(), listener)
        .await
        .expect("gateway")
}

async fn trigger(http: SocketAddr, number: &str) -> (u16, Value) {
    common::post(
        http,
        "/api/call/outbound",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &format!(r#"{{"phoneNumber": "{number}"}}"#),
    )
    .await
}

async fn sql_i64(db: &str, q: &'static str) -> i64 {
    let mut c = sqlx::PgConnection::connect(db).await.expect("connect");
    sqlx::query_scalar::<_, i64>(q)
        .fetch_one(&mut c)
        .await
        .expect("query")
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_caps_find_and_hang_up_calls_and_count_nothing_twice() {
    let Some(db) = pg::database("cluster_caps").await else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let trunk = TrunkEmulator::start(TrunkConfig {
        hangup_after: Some(Duration::from_secs(60)),
        ..TrunkConfig::default()
    })
    .await
    .expect("trunk");
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start(node_config(&trunk, &agent, &db, i, &|_| {})).await);
    }
    let https: Vec<SocketAddr> = nodes.iter().map(Server::http_addr).collect();

    // 20 simultaneous triggers spread over the three nodes, a global cap of 10.
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let http = https[i % 3];
        tasks.push(tokio::spawn(async move {
            trigger(http, &format!("+336123456{i:02}")).await
        }));
    }
    let mut placed = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (status, j) = t.await.expect("task");
        match status {
            200 => placed.push(j["call_sid"].as_str().expect("sid").to_owned()),
            503 => {
                assert_eq!(j["error"], "At capacity", "{j}");
                refused += 1;
            }
            s => panic!("unexpected {s}: {j}"),
        }
    }
    assert_eq!(
        (placed.len(), refused),
        (10, 10),
        "exactly the cap is placed"
    );
    let live = sql_i64(&db, "SELECT count(*) FROM cluster_calls").await;
    assert_eq!(live, 10);
    let per_node: Vec<usize> = nodes.iter().map(|n| n.gateway().active_calls()).collect();
    assert_eq!(per_node.iter().sum::<usize>(), 10, "{per_node:?}");

    // Any node finds any call; a hang-up through node 0 reaches the owning node.
    for sid in &placed {
        wait_for("records written", 10, async || {
            api("GET", https[0], &format!("/api/calls/{sid}")).await.0 == 200
        })
        .await;
    }
    let metrics0 = |n: &Server| {
        use trunkline_gateway::api::CallService;
        n.gateway().metrics()
    };
    for sid in &placed {
        let (status, j) = api("POST", https[0], &format!("/api/calls/{sid}/hangup")).await;
        assert_eq!(status, 200, "hang-up of {sid} through node 0: {j}");
    }
    assert!(
        !metrics0(&nodes[0]).contains("trunkline_cluster_forwarded_hangups_total 0\n"),
        "some hang-ups were another node's and were forwarded"
    );
    wait_for("every call over and released", 30, async || {
        nodes.iter().all(|n| n.gateway().active_calls() == 0)
            && sql_i64(&db, "SELECT count(*) FROM cluster_calls").await == 0
    })
    .await;
    for sid in &placed {
        let (_, j) = api("GET", https[2], &format!("/api/calls/{sid}")).await;
        assert_eq!(j["call"]["end_cause"]["kind"], "api_hangup", "{j}");
    }

    // The per-destination daily cap (3) holds across nodes.
    let number = "+33612340000";
    let mut ok = 0;
    for i in 0..6 {
        let (status, j) = trigger(https[i % 3], number).await;
        match status {
            200 => ok += 1,
            429 => assert_eq!(j["error"], "Too many requests"),
            s => panic!("unexpected {s}: {j}"),
        }
    }
    assert_eq!(
        ok, 3,
        "three calls a day to one number, whichever node is asked"
    );
    let counted = |db: String| async move {
        sql_i64(
            &db,
            "SELECT calls FROM destination_daily WHERE number = '+33612340000'",
        )
        .await
    };
    assert_eq!(counted(db.clone()).await, 3);

    // Restart node 2 (orderly): nothing is counted twice — the daily count stays 3 and a
    // trigger on the restarted node is still refused; live calls are only the ones up.
    let old = nodes.remove(2);
    old.shutdown(Duration::from_secs(5)).await;
    let restarted = start(node_config(&trunk, &agent, &db, 2, &|_| {})).await;
    assert_eq!(counted(db.clone()).await, 3);
    let (status, _) = trigger(restarted.http_addr(), number).await;
    assert_eq!(status, 429);
    assert_eq!(counted(db.clone()).await, 3);
    let (status, j) = trigger(restarted.http_addr(), "+33612349999").await;
    assert_eq!(status, 200, "{j}");
    let live = sql_i64(&db, "SELECT count(*) FROM cluster_calls").await;
    let up: usize = nodes
        .iter()
        .chain(std::iter::once(&restarted))
        .map(|n| n.gateway().active_calls())
        .sum();
    assert_eq!(live as usize, up, "one lease per call up");
    restarted.shutdown(Duration::from_millis(100)).await;
    for n in nodes {
        n.shutdown(Duration::from_millis(100)).await;
    }
}

/// A node whose heartbeat stopped (killed, partitioned) stops counting after three intervals;
/// its calls stay in the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_calls_stop_counting_after_its_heartbeat_expires() {
    let Some(db) = pg::database("cluster_expiry").await else {
        return;
    };
    let trunk = TrunkEmulator::start(TrunkConfig {
        hangup_after: Some(Duration::from_secs(60)),
        ..TrunkConfig::default()
    })
    .await
    .expect("trunk");
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    let node = start(node_config(&trunk, &agent, &db, 0, &|c| {
        c.policy.max_concurrent_calls = 2;
    }))
    .await;
    for n in ["+33612345601", "+33612345602"] {
        assert_eq!(trigger(node.http_addr(), n).await.0, 200);
    }
    assert_eq!(trigger(node.http_addr(), "+33612345603").await.0, 503);
    // Another node of the same cluster (its own gateway) sees the cap reached too.
    let other = start(node_config(&trunk, &agent, &db, 1, &|c| {
        c.policy.max_concurrent_calls = 2;
    }))
    .await;
    let (status, j) = trigger(other.http_addr(), "+33612345604").await;
    assert_eq!((status, j["error"].as_str()), (503, Some("At capacity")));
    // Node 0's heartbeat stops (as if killed): set it in the past, as a dead node leaves it.
    let mut c = sqlx::PgConnection::connect(&db).await.expect("connect");
    let stop_heartbeat = sqlx::query(
        "CREATE OR REPLACE RULE frozen AS ON UPDATE TO cluster_nodes
         WHERE old.node_id = 'node-0' DO INSTEAD NOTHING",
    );
    stop_heartbeat.execute(&mut c).await.expect("freeze");
    let t0 = Instant::now();
    wait_for("node 0 expired", 20, async || {
        trigger(other.http_addr(), "+33612345605").await.0 == 200
    })
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "node 0 expired after {waited:?}: sooner than its heartbeat allows"
    );
    // Its calls are still in the database, in progress.
    let open = sql_i64(
        &db,
        "SELECT count(*) FROM calls WHERE node = 'node-0' AND end_cause IS NULL",
    )
    .await;
    assert_eq!(open, 2);
    other.shutdown(Duration::from_millis(100)).await;
    node.shutdown(Duration::from_millis(100)).await;
}

async fn options(sock: &UdpSocket, to: SocketAddr, n: u32) -> String {
    let local = sock.local_addr().expect("local");
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{to}>\r\nCall-ID: probe-{n}@{local}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(msg.as_bytes(), to).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("OPTIONS answered")
        .expect("recv");
    String::from_utf8_lossy(&buf[..len])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What Kamailio's dispatcher probing sees (no database needed): 200 while the node takes
/// calls, 503 at its own capacity and while draining.
#[tokio::test]
async fn options_say_503_at_capacity_and_while_draining() {
    let d = common::deploy(
        TrunkConfig {
            hangup_after: Some(Duration::from_secs(2)),
            ..TrunkConfig::default()
        },
        AgentEmulatorConfig::default(),
        |c| c.policy.max_concurrent_calls = 1,
    )
    .await;
    let sip = d.gateway.sip_addr(TransportKind::Udp).expect("sip");
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    assert_eq!(options(&probe, sip, 1).await, "SIP/2.0 200 OK");
    let sid = d.call("+33612345678").await;
    assert_eq!(
        options(&probe, sip, 2).await,
        "SIP/2.0 503 Service Unavailable",
        "at its own capacity (1 call)"
    );
    d.finished(&sid, 30).await;
    let mut n = 3;
    wait_for("200 again", 10, async || {
        n += 1;
        options(&probe, sip, n).await == "SIP/2.0 200 OK"
    })
    .await;
    d.gateway.stop_accepting();
    assert_eq!(
        options(&probe, sip, 100).await,
        "SIP/2.0 503 Service Unavailable",
        "draining"
    );
}

/// What one cluster admission costs (PostgreSQL on loopback): sequential, and with 8 triggers at
/// once (they serialise on the admission lock). Not a pass/fail test: run it with
/// `cargo test -p trunkline-gateway --test cluster admission_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn admission_cost() {
    use std::sync::Arc;
    use trunkline_gateway::cluster::Cluster;
    use trunkline_gateway::config::PolicySection;
    use trunkline_gateway::policy::{Client, Destination};
    let Some(db) = pg::database("cluster_cost").await else {
        return;
    };
    let limits = PolicySection {
        max_concurrent_calls: 1_000_000,
        calls_per_second: 1e9,
        per_ip_per_minute: 1_000_000_000,
        per_destination_per_day: 1_000_000_000,
        ..PolicySection::default()
    };
    let c = Cluster::join(
        &db,
        "bench",
        "http://127.0.0.1:1",
        Duration::from_secs(1),
        limits,
    )
    .await
    .expect("join");
    let client = Client::Token("e2e".into());
    let ip = "127.0.0.1".parse().expect("ip");
    // Warm up the pool and the statement cache.
    for i in 0..200 {
        let dest = Destination {
            e164: format!("+3361234{i:04}"),
        };
        let lease = c
            .admit_outbound(&client, ip, &dest, 1)
            .await
            .expect("admit");
        c.release(&lease).await;
    }
    let n = 2000;
    let mut times = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let dest = Destination {
            e164: format!("+3361234{:04}", i % 5000),
        };
        let t = Instant::now();
        let lease = c
            .admit_outbound(&client, ip, &dest, 2)
            .await
            .expect("admit");
        times.push(t.elapsed());
        c.release(&lease).await;
    }
    let total = t0.elapsed();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    eprintln!(
        "sequential: {n} admissions, p50 {:?}, p90 {:?}, p99 {:?}, max {:?} (with release: {:.0}/s)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        times[times.len() - 1],
        n as f64 / total.as_secs_f64()
    );
    let c = Arc::new(c);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = Arc::clone(&c);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let dest = Destination {
                    e164: format!("+336123{w}{i:04}"),
                };
                let lease = c
                    .admit_outbound(&client, ip, &dest, 3)
                    .await
                    .expect("admit");
                c.release(&lease).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let total = t0.elapsed();
    eprintln!(
        "8 at once: 2000 admissions (+ releases) in {total:?}: {:.0} admissions/s",
        2000.0 / total.as_secs_f64()
    );
}
