//! Three `trunkline serve` processes sharing PostgreSQL behind Kamailio's dispatcher, all on
//! loopback (issue 13). Kamailio runs the shipped `docker/kamailio/kamailio.cfg` with only its
//! `listen=` and `#!define` lines rewritten (ports, a 1 s probe interval); SIPp plays the trunk.
//!
//! 1. 60 inbound calls through Kamailio: every node takes a share (none under 15 %), SIPp counts
//!    no failed call, and every call's BYE (sent to Kamailio with the route set) reached the node
//!    that took it: each record ends `remote_hangup` on that node.
//! 2. `kill -9` of one node with calls up: Kamailio marks it inactive within the probe interval
//!    (+ the probe's timeout); calls placed after that all succeed on the other nodes; the killed
//!    node's calls are still in the database, `in-progress`.
//!    Restarted, the node drops its old leases and fails its interrupted calls (`gateway_restart`).
//! 3. SIGTERM of a node with calls up: it answers OPTIONS 503, Kamailio stops sending it calls,
//!    its calls finish (their BYEs still reach it), it exits 0.
//!
//! Needs `kamailio`, `sipp` and `TRUNKLINE_TEST_DATABASE_URL` (`.ci/run` provides all three); a
//! missing one fails the test in CI and skips it elsewhere.
#![allow(clippy::disallowed_methods)] // real processes and sockets: this test is I/O, not sans-IO

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{TOKEN, pg};
use sqlx::Connection;
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};

const BIN: &str = env!("CARGO_BIN_EXE_trunkline");
const CFG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docker/kamailio/kamailio.cfg"
);
const SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/sipp/uac_via_kamailio.xml"
);
/// Kamailio's probe interval here (`ds_ping_interval`), seconds.
const PING_SECS: u64 = 1;
/// Kamailio's no-answer timeout (`fr_timer`), ms: also the probe's timeout.
const NODE_TIMEOUT_MS: u64 = 1000;

fn tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let why = format!("`{name}` is not on PATH (.ci/run installs it)");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

fn free_tcp() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn free_udp() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("trunkline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        // Kamailio drops to `nobody` when started as root: it writes its control socket here.
        let _ = Command::new("chmod").arg("777").arg(&p).status();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TRUNKLINE_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process, SIGKILLed and reaped on drop (with its whole process group when it leads
/// one: Kamailio's workers would otherwise outlive the test, orphaned, on their ports).
struct Proc {
    child: Child,
    log: PathBuf,
    group: bool,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child,
            log,
            group: false,
        }
    }

    /// Spawn `cmd` as the leader of a new process group, which is killed as a whole on drop.
    fn spawn_group(mut cmd: Command, log: PathBuf) -> Proc {
        cmd.process_group(0);
        let mut p = Proc::spawn(cmd, log);
        p.group = true;
        p
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig}");
    }

    async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Node {
    id: String,
    sip: u16,
    http: SocketAddr,
    proc: Proc,
}

fn node_config(
    dir: &Path,
    i: usize,
    db: &str,
    agent: &AgentEmulator,
) -> (PathBuf, u16, SocketAddr) {
    let sip = free_udp();
    let http = free_tcp();
    let port_min = 42000 + (std::process::id() % 40) as u16 * 450 + i as u16 * 150;
    let toml = format!(
        r#"[sip]
listen = "127.0.0.1:{sip}"
transports = ["udp"]

[trunk]
termination_uri = "sip:trunkline-test.pstn.twilio.com"
outbound_proxy = "127.0.0.1:9"
caller_id = "+15005550006"
inbound_allowed_sources = ["127.0.0.1/32"]

[rtp]
bind_ip = "127.0.0.1"
port_min = {port_min}
port_max = {port_max}

[agent]
base_url = "{agent}"
agent_id = "agent_e2e"
drain_timeout_secs = 2

[http]
listen = "{http}"

[policy]
max_concurrent_calls = 200
calls_per_second = 100.0
per_ip_per_minute = 1000

[records]
database_url = "{db}"
node_id = "node-{i}"

[cluster]
enabled = true
heartbeat_secs = 1

[log]
level = "info"
"#,
        port_max = port_min + 148,
        agent = agent.ws_base_url(),
    );
    let path = dir.join(format!("node-{i}.toml"));
    std::fs::write(&path, toml).expect("config");
    (path, sip, http)
}

fn spawn_node(dir: &Path, i: usize, config: &Path, sip: u16, http: SocketAddr) -> Node {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .args(["--grace-secs", "30"])
        .env("TRUNKLINE_API_TOKEN", format!("e2e:{TOKEN}"))
        .env("RUST_LOG", "info")
        .env_remove("ELEVENLABS_API_KEY");
    Node {
        id: format!("node-{i}"),
        sip,
        http,
        proc: Proc::spawn(cmd, dir.join(format!("node-{i}.log"))),
    }
}

async fn ready(node: &mut Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = node.proc.child.try_wait().expect("try_wait") {
            panic!("{} exited before ready: {st}\n{}", node.id, node.proc.log());
        }
        if http_get(node.http, "/readyz").await == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready\n{}",
            node.id,
            node.proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// Kamailio on `port` running the shipped cfg, its dispatcher list = `nodes`.
fn spawn_kamailio(dir: &Path, port: u16, nodes: &[u16]) -> (Proc, String) {
    let shipped = std::fs::read_to_string(CFG).expect("docker/kamailio/kamailio.cfg");
    let ctl = format!("unix:{}/kamailio_ctl", dir.display());
    let list = dir.join("dispatcher.list");
    let mut ds = String::new();
    for p in nodes {
        ds.push_str(&format!("1 sip:127.0.0.1:{p} 0 0\n"));
    }
    std::fs::write(&list, ds).expect("dispatcher list");
    let mut cfg = String::new();
    let mut rewritten = 0;
    for line in shipped.lines() {
        let new = if line.starts_with("listen=") {
            format!("listen=udp:127.0.0.1:{port}")
        } else if line.starts_with("#!define DS_LIST ") {
            format!("#!define DS_LIST \"{}\"", list.display())
        } else if line.starts_with("#!define PING_INTERVAL ") {
            format!("#!define PING_INTERVAL {PING_SECS}")
        } else if line.starts_with("#!define NODE_TIMEOUT_MS ") {
            format!("#!define NODE_TIMEOUT_MS {NODE_TIMEOUT_MS}")
        } else if line.starts_with("#!define CTL_SOCKET ") {
            format!("#!define CTL_SOCKET \"{ctl}\"")
        } else {
            cfg.push_str(line);
            cfg.push('\n');
            continue;
        };
        rewritten += 1;
        cfg.push_str(&new);
        cfg.push('\n');
    }
    assert_eq!(rewritten, 5, "the shipped cfg's tunable lines changed");
    let path = dir.join("kamailio.cfg");
    std::fs::write(&path, cfg).expect("cfg");
    let mut cmd = Command::new("kamailio");
    cmd.arg("-f").arg(&path).args(["-DD", "-E", "-Y"]).arg(dir);
    // As root, Kamailio drops to nobody: it never runs as root.
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        cmd.args(["-u", "nobody", "-g", "nogroup"]);
    }
    (Proc::spawn_group(cmd, dir.join("kamailio.log")), ctl)
}

/// `kamcmd dispatcher.list`: each destination's port and flags (`AP` active, `IP` inactive, …).
fn dispatcher_state(ctl: &str) -> HashMap<u16, String> {
    let out = Command::new("kamcmd")
        .args(["-s", ctl, "dispatcher.list"])
        .output();
    let mut state = HashMap::new();
    let Ok(out) = out else { return state };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut port = None;
    for line in text.lines().map(str::trim) {
        if let Some(uri) = line.strip_prefix("URI: ") {
            port = uri.rsplit(':').next().and_then(|p| p.parse().ok());
        } else if let Some(flags) = line.strip_prefix("FLAGS: ")
            && let Some(p) = port.take()
        {
            state.insert(p, flags.to_owned());
        }
    }
    state
}

async fn wait_state(
    ctl: &str,
    what: &str,
    secs: f64,
    pred: impl Fn(&HashMap<u16, String>) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let s = dispatcher_state(ctl);
        if pred(&s) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed().as_secs_f64() < secs,
            "Kamailio: {what} not within {secs} s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIPp through Kamailio: `calls` calls to `number` at `rate`/s, each up `hold_ms`.
fn sipp(dir: &Path, kamailio: u16, number: &str, calls: u32, rate: u32, hold_ms: u32) -> Proc {
    let mut cmd = Command::new("sipp");
    cmd.arg(format!("127.0.0.1:{kamailio}"))
        .args(["-sf", SCENARIO, "-s", number, "-i", "127.0.0.1"])
        .args(["-p", &free_udp().to_string()])
        .args([
            "-m",
            &calls.to_string(),
            "-r",
            &rate.to_string(),
            "-l",
            "200",
        ])
        .args(["-d", &hold_ms.to_string(), "-timeout", "120", "-nostdin"])
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("sipp-{number}-errors.log")))
        .args(["-trace_stat", "-stf"])
        .arg(dir.join(format!("sipp-{number}.csv")))
        .current_dir(dir);
    Proc::spawn(cmd, dir.join(format!("sipp-{number}.log")))
}

async fn sql(db: &str, q: &str, number: &str) -> Vec<(String, String)> {
    let mut c = sqlx::PgConnection::connect(db).await.expect("connect");
    sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(q.to_owned()))
        .bind(number)
        .fetch_all(&mut c)
        .await
        .expect("query")
}

/// (node, end cause) of every inbound call to `number`.
async fn calls_to(db: &str, number: &str) -> Vec<(String, String)> {
    sql(
        db,
        "SELECT node, COALESCE(end_cause, 'open') FROM calls
         WHERE direction = 'inbound' AND to_number = $1",
        number,
    )
    .await
}

fn per_node(calls: &[(String, String)]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (node, _) in calls {
        *m.entry(node.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kamailio_dispatches_over_three_nodes_fails_over_and_drains() {
    if !tool("kamailio") || !tool("sipp") {
        return;
    }
    let Some(db) = pg::database("kamailio").await else {
        return;
    };
    let dir = TempDir::new("kamailio");
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (config, sip, http) = node_config(&dir.0, i, &db, &agent);
        nodes.push(spawn_node(&dir.0, i, &config, sip, http));
    }
    for n in &mut nodes {
        ready(n).await;
    }
    let kport = free_udp();
    let sips: Vec<u16> = nodes.iter().map(|n| n.sip).collect();
    let node_http: Vec<SocketAddr> = nodes.iter().map(|n| n.http).collect();
    let (mut kam, ctl) = spawn_kamailio(&dir.0, kport, &sips);
    wait_state(&ctl, "all three nodes active", 15.0, |s| {
        sips.iter()
            .all(|p| s.get(p).is_some_and(|f| f.starts_with('A')))
    })
    .await;
    if let Some(st) = kam.child.try_wait().expect("try_wait") {
        panic!("kamailio exited: {st}\n{}", kam.log());
    }

    // 1. 60 calls, 10 a second, 2 s each.
    let mut run = sipp(&dir.0, kport, "+15005550001", 60, 10, 2000);
    let st = run
        .exited(Duration::from_secs(90))
        .await
        .expect("SIPp finished");
    assert!(
        st.success(),
        "SIPp: failed calls ({st})\n{}\n{}",
        run.log(),
        kam.log()
    );
    let mut calls = Vec::new();
    for _ in 0..50 {
        calls = calls_to(&db, "+15005550001").await;
        if calls.len() == 60 && calls.iter().all(|(_, c)| c != "open") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls.len(), 60);
    assert!(
        calls.iter().all(|(_, cause)| cause == "remote_hangup"),
        "every BYE reached the node that took the call: {calls:?}"
    );
    let shares = per_node(&calls);
    eprintln!("60 calls through Kamailio, per node: {shares:?}");
    for n in &nodes {
        let got = shares.get(&n.id).copied().unwrap_or(0);
        assert!(got >= 9, "{} took {got} of 60 (< 15 %): {shares:?}", n.id);
    }

    // 2. kill -9 of node 2 with calls up (8 s calls, 5 a second).
    let mut long = sipp(&dir.0, kport, "+15005550002", 15, 5, 8000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls_to(&db, "+15005550002")
        .await
        .iter()
        .filter(|(n, c)| n == "node-2" && c == "open")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "node 2 took no call\n{}",
            long.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = nodes.remove(2);
    killed.proc.signal("-KILL");
    let took = wait_state(&ctl, "the killed node inactive", 10.0, |s| {
        s.get(&killed.sip).is_some_and(|f| f.starts_with('I'))
    })
    .await;
    eprintln!("killed node marked inactive by Kamailio after {took:?}");
    let bound = Duration::from_millis(PING_SECS * 1000 + NODE_TIMEOUT_MS + 1500);
    assert!(
        took <= bound,
        "marked inactive after {took:?}, more than the probe interval + its timeout ({bound:?})"
    );
    let _ = long.exited(Duration::from_secs(60)).await;
    let after = sipp(&dir.0, kport, "+15005550003", 20, 10, 1000);
    let mut after = after;
    let st = after
        .exited(Duration::from_secs(60))
        .await
        .expect("SIPp finished");
    assert!(
        st.success(),
        "calls after the kill failed ({st})\n{}",
        after.log()
    );
    let calls = calls_to(&db, "+15005550003").await;
    assert!(
        calls.iter().all(|(n, _)| n != "node-2"),
        "a call went to the killed node: {calls:?}"
    );
    let orphans = calls_to(&db, "+15005550002")
        .await
        .into_iter()
        .filter(|(n, c)| n == "node-2" && c == "open")
        .count();
    assert!(
        orphans >= 2,
        "the killed node's calls are still in the database, open"
    );
    // Its leases stay in the database, but a dead node's calls no longer count; restarted, it
    // drops them (nothing counted twice) and fails its interrupted calls.
    let leases = |db: String| async move {
        let mut c = sqlx::PgConnection::connect(&db).await.expect("connect");
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cluster_calls WHERE node_id = 'node-2'")
            .fetch_one(&mut c)
            .await
            .expect("query")
    };
    assert!(
        leases(db.clone()).await >= 2,
        "the dead node's leases are kept"
    );
    drop(killed);
    let config = dir.0.join("node-2.toml");
    let mut restarted = spawn_node(&dir.0, 2, &config, sips[2], node_http[2]);
    ready(&mut restarted).await;
    assert_eq!(
        leases(db.clone()).await,
        0,
        "restarted: its old leases are gone"
    );
    let interrupted = calls_to(&db, "+15005550002").await;
    assert!(
        interrupted
            .iter()
            .filter(|(n, _)| n == "node-2")
            .all(|(_, c)| c == "gateway_restart"),
        "restarted: its interrupted calls are failed: {interrupted:?}"
    );
    nodes.push(restarted);

    // 3. SIGTERM of node 1 with calls up: OPTIONS 503, no new calls, its calls finish, exit 0.
    let mut draining = sipp(&dir.0, kport, "+15005550004", 10, 5, 5000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls_to(&db, "+15005550004")
        .await
        .iter()
        .filter(|(n, c)| n == "node-1" && c == "open")
        .count()
        < 1
    {
        assert!(Instant::now() < deadline, "node 1 took no call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut term = nodes.remove(1);
    term.proc.signal("-TERM");
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    probe
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = probe.local_addr().expect("addr");
    // The signal is handled asynchronously: probe until the answer turns (5 s at most).
    let t0 = Instant::now();
    let mut n = 0;
    let answer = loop {
        n += 1;
        let options = format!(
            "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKterm{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=t{n}\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: term-probe-{n}@{local}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            p = term.sip
        );
        probe
            .send_to(options.as_bytes(), ("127.0.0.1", term.sip))
            .expect("send");
        let mut buf = [0u8; 2048];
        let (len, _) = probe
            .recv_from(&mut buf)
            .expect("OPTIONS answered while draining");
        let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
        if answer.starts_with("SIP/2.0 503") || t0.elapsed() > Duration::from_secs(5) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        answer.starts_with("SIP/2.0 503"),
        "draining node answered OPTIONS: {answer}"
    );
    wait_state(&ctl, "the draining node inactive", 10.0, |s| {
        s.get(&term.sip).is_some_and(|f| f.starts_with('I'))
    })
    .await;
    let mut more = sipp(&dir.0, kport, "+15005550005", 10, 10, 500);
    let st = more
        .exited(Duration::from_secs(60))
        .await
        .expect("SIPp finished");
    assert!(
        st.success(),
        "calls during the drain failed\n{}",
        more.log()
    );
    assert!(
        calls_to(&db, "+15005550005")
            .await
            .iter()
            .all(|(n, _)| n != "node-1"),
        "the draining node takes no new call"
    );
    let st = draining
        .exited(Duration::from_secs(60))
        .await
        .expect("SIPp finished");
    assert!(
        st.success(),
        "the draining node's calls did not finish well\n{}",
        draining.log()
    );
    let exit = term.proc.exited(Duration::from_secs(30)).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "the draining node did not exit 0: {exit:?}\n{}",
        term.proc.log()
    );
    let theirs = calls_to(&db, "+15005550004").await;
    assert!(
        theirs
            .iter()
            .filter(|(n, _)| n == "node-1")
            .all(|(_, c)| c == "remote_hangup"),
        "the draining node's calls finished normally: {theirs:?}"
    );
    drop(kam);
    // Kamailio's workers go with it: none is left running on the run's config (an orphaned
    // worker keeps its loopback ports and its CPU figures out of later runs).
    let cfg = dir.0.join("kamailio.cfg").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = running_with_arg(&cfg);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kamailio processes left running after the test: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pids of live processes (not zombies) whose command line has `arg`.
fn running_with_arg(arg: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie's command line is empty.
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}
