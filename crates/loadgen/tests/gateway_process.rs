//! The gateway as `trunkline-load` starts it: the `trunkline` binary (`trunkline serve`) as a
//! child process, on the configuration the tool writes, taking `TRUNKLINE__SECTION__KEY`
//! overrides from the environment like any `trunkline serve`, measured from its own `/proc`, and
//! stopped (SIGTERM) when the run ends. `--serve-for` places no call: these runs are light.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use trunkline_loadgen::api::GatewayApi;
use trunkline_loadgen::runner::TOKEN;

fn load_command(gateway_bin: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trunkline-load"));
    c.arg("--gateway-bin")
        .arg(gateway_bin)
        .args(["--quiet", "--no-integrity"])
        .env_remove("RUST_LOG");
    c
}

/// `gateway: sip udp A http B pid P; …` → (B, P).
fn parse_banner(line: &str) -> Option<(SocketAddr, u32)> {
    let mut words = line.split_whitespace();
    let http = words
        .by_ref()
        .skip_while(|w| *w != "http")
        .nth(1)?
        .parse()
        .ok()?;
    let pid = words
        .skip_while(|w| *w != "pid")
        .nth(1)?
        .trim_end_matches(';')
        .parse()
        .ok()?;
    Some((http, pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_process_takes_env_overrides_is_measured_and_is_stopped() {
    let bin = common::trunkline_bin();
    let dir = std::env::temp_dir().join(format!("trunkline-load-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("serve.json");
    let mut child = load_command(&bin)
        .args(["--serve-for", "3s", "--json"])
        .arg(&json)
        // An override visible from outside: the API's largest request body.
        .env("TRUNKLINE__HTTP__MAX_BODY_BYTES", "32")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trunkline-load runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (banner, mut stdout) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).map(|_| (line, stdout))
    })
    .await
    .expect("reader")
    .expect("banner line");
    let (http, pid) = parse_banner(&banner).unwrap_or_else(|| panic!("banner {banner:?}"));
    assert_ne!(pid, std::process::id());
    assert_ne!(pid, child.id(), "the gateway is a process of its own");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("gateway alive");
    assert_eq!(
        comm.trim(),
        "trunkline",
        "the gateway is the trunkline binary"
    );

    let api = GatewayApi::new(http, TOKEN);
    assert!(api.ready().await, "ready while the tool serves");
    let body = format!(
        r#"{{"phoneNumber": "+33600000000", "pad": "{}"}}"#,
        "x".repeat(40)
    );
    let (status, _) = api
        .request(Method::POST, "/api/call/outbound", Some(body))
        .await
        .expect("an answer");
    assert_eq!(
        status.as_u16(),
        413,
        "TRUNKLINE__HTTP__MAX_BODY_BYTES=32 applied"
    );

    let out = tokio::task::spawn_blocking(move || {
        // The rest of its stdout (the summary table), then its exit.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        child.wait_with_output()
    })
    .await
    .expect("waiter")
    .expect("trunkline-load exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert!(!stderr.contains("exited with"), "a clean stop: {stderr}");
    // Stopped and reaped: no such process any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "gateway {pid} still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
        .expect("JSON parses");
    let p = &r["phases"][0];
    assert!(p["samples"].as_array().is_some_and(|s| s.len() >= 8), "{r}");
    assert!(
        p["rss_peak_bytes"].as_u64().is_some_and(|v| v > 1 << 20),
        "the gateway's RSS read from /proc/{pid}: {r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_override_stops_the_run_with_the_gateways_reason() {
    let bin = common::trunkline_bin();
    let out = load_command(&bin)
        .args(["--serve-for", "1s"])
        .env("TRUNKLINE__RTP__SEND_DELAY_MS", "99")
        .output()
        .expect("trunkline-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("exited before it was ready") && stderr.contains("send_delay_ms"),
        "{stderr}"
    );
}

#[test]
fn a_missing_gateway_binary_is_reported() {
    let out = load_command(std::path::Path::new("/nonexistent/trunkline"))
        .args(["--serve-for", "1s"])
        .output()
        .expect("trunkline-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/trunkline") && stderr.contains("--gateway-bin"),
        "{stderr}"
    );
}
