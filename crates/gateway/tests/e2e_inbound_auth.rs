//! Inbound digest authentication of a trunk (`trunk.inbound_auth`) against SIPp as the carrier:
//! SIPp computes the digest itself (`[authentication]`, an implementation we did not write).
//! - the right password: 401 (SHA-256 and MD5 challenges, `qop="auth"`), the authenticated
//!   INVITE is answered 200 and the call runs until SIPp's BYE;
//! - a wrong password: 401, then 403, and no call; both counted in `trunkline_inbound_auth_total`.
//!
//! SIPp missing: the test fails when `CI` is set (CI installs Debian `sip-tester`), else it is
//! skipped with a message.
#![allow(clippy::disallowed_methods)] // real processes and sockets: this test is I/O, not sans-IO

mod common;

use std::net::SocketAddr;

use common::sipp::{Guard, free_port, free_udp_range, have_sipp, sipp_count};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};
use trunkline_gateway::api::CallService;
use trunkline_gateway::config::{Config, Secrets, SipTransport};
use trunkline_gateway::service::Gateway;
use trunkline_sip::transaction::TransportKind;

const USER: &str = "carrier";
const PASSWORD: &str = "pa55-w0rd";

async fn start_gateway(agent: &AgentEmulator) -> Arc<Gateway> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = Config::default();
    cfg.sip.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.sip.transports = vec![SipTransport::Udp];
    cfg.trunk.termination_uri = "sip:trunkline-test.pstn.twilio.com".into();
    cfg.trunk.outbound_proxy = Some("127.0.0.1:9".into());
    cfg.trunk.caller_id = "+15005550006".into();
    cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
    cfg.trunk.inbound_auth = true;
    cfg.trunk.inbound_auth_username = Some(USER.into());
    // SIPp 3.6 reads only the first challenge and knows only MD5: MD5 first, SHA-256 offered too.
    cfg.trunk.inbound_auth_algorithms = vec!["MD5".into(), "SHA-256".into()];
    cfg.rtp.bind_ip = "127.0.0.1".parse().expect("ip");
    cfg.rtp.port_min = free_udp_range(20);
    cfg.rtp.port_max = cfg.rtp.port_min + 18;
    cfg.agent.base_url = agent.ws_base_url();
    cfg.agent.agent_id = "agent_e2e".into();
    cfg.agent.drain_timeout_secs = 5;
    cfg.records.database_url = "sqlite::memory:".into();
    cfg.validate().expect("valid config");
    let secrets = Secrets {
        inbound_password: Some(PASSWORD.into()),
        ..Secrets::default()
    };
    Gateway::start(cfg, secrets).await.expect("gateway")
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(name)
}

/// Runs one call of `scenario` towards `gw` authenticating with `password`; returns (exit, screen,
/// trace).
async fn run_sipp(
    dir: &Path,
    scenario: &Path,
    gw: SocketAddr,
    password: &str,
) -> (Option<ExitStatus>, String, String) {
    let port = free_port();
    let media = free_udp_range(4);
    let screen = std::fs::File::create(dir.join("screen.out")).expect("sipp screen file");
    let child = Command::new("sipp")
        .arg(gw.to_string())
        .arg("-sf")
        .arg(scenario)
        .args(["-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-mp", &media.to_string()])
        .args(["-au", USER, "-ap", password])
        .args(["-m", "1", "-nostdin", "-timeout", "25s"])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .stdin(Stdio::null())
        .stdout(screen)
        .stderr(std::fs::File::create(dir.join("stderr.out")).expect("sipp stderr file"))
        .spawn()
        .expect("spawn sipp");
    let mut guard = Guard(child);
    let exit = guard.exit_within(Duration::from_secs(30)).await;
    let screen = std::fs::read_to_string(dir.join("screen.out")).unwrap_or_default();
    let trace = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    let errors = std::fs::read_to_string(dir.join("stderr.out")).unwrap_or_default();
    (exit, format!("{screen}\n{errors}"), trace)
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_authenticating_with_sipps_digest_is_taken_and_a_wrong_password_is_refused() {
    if !have_sipp() {
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("trunkline-e2e-inbound-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    let gateway = start_gateway(&agent).await;
    let gw = gateway.sip_addr(TransportKind::Udp).expect("sip addr");

    // The right password: one successful call.
    let (exit, screen, trace) =
        run_sipp(&dir, &scenario("uac_inbound_digest_ok.xml"), gw, PASSWORD).await;
    let exit = exit.unwrap_or_else(|| panic!("SIPp still running\n{screen}\n{trace}"));
    assert_eq!(
        sipp_count(&screen, "Successful call"),
        Some(1),
        "{screen}\n{trace}"
    );
    assert!(exit.success(), "sipp exit {exit:?}\n{screen}\n{trace}");
    // SIPp answered one of our challenges with its own digest (MD5: SIPp 3.6 has no SHA-256).
    assert!(trace.contains("Authorization: Digest"), "{trace}");
    let metrics = CallService::metrics(&gateway);
    assert_eq!(
        metric(
            &metrics,
            "trunkline_inbound_auth_total{result=\"challenged\"} "
        ),
        1
    );
    assert_eq!(
        metric(
            &metrics,
            "trunkline_inbound_auth_total{result=\"forbidden\"} "
        ),
        0
    );
    common_agent_connected(&agent, 1).await;

    // A wrong password: 401, then 403; no call reaches the agent.
    let (exit, screen, trace) = run_sipp(
        &dir,
        &scenario("uac_inbound_digest_wrong.xml"),
        gw,
        "not-the-password",
    )
    .await;
    let exit = exit.unwrap_or_else(|| panic!("SIPp still running\n{screen}\n{trace}"));
    assert_eq!(
        sipp_count(&screen, "Successful call"),
        Some(1),
        "{screen}\n{trace}"
    );
    assert!(exit.success(), "sipp exit {exit:?}\n{screen}\n{trace}");
    assert!(trace.contains("SIP/2.0 403"), "{trace}");
    let metrics = CallService::metrics(&gateway);
    assert_eq!(
        metric(
            &metrics,
            "trunkline_inbound_auth_total{result=\"challenged\"} "
        ),
        2
    );
    assert_eq!(
        metric(
            &metrics,
            "trunkline_inbound_auth_total{result=\"forbidden\"} "
        ),
        1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        agent.records().len(),
        1,
        "the refused INVITE reached no agent"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until `n` agent connections finished (the authenticated call reached the agent).
async fn common_agent_connected(agent: &AgentEmulator, n: usize) {
    let recs = agent.wait_finished(n, Duration::from_secs(10)).await;
    assert_eq!(recs.len(), n, "the authenticated call reached the agent");
}
