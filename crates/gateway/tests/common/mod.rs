//! A whole deployment on loopback: the gateway (real SIP, RTP, WebSocket, HTTP), the Twilio-like
//! trunk emulator and the ElevenLabs-like agent emulator.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig, ConnectionRecord};
use trunkline_emulators::trunk::{PlaySource, TrunkConfig, TrunkEmulator};
use trunkline_gateway::config::{Config, Secrets, SipTransport};
use trunkline_gateway::server::Server;
use trunkline_gateway::service::Gateway;
use trunkline_media::g711::G711;

pub mod pg;
pub mod sipp;

pub const TOKEN: &str = "e2e-token-0123456789";

pub fn pcap(name: &str) -> String {
    format!(
        "{}/../../tests/data/pcap/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn speech() -> PlaySource {
    PlaySource::from_pcap(pcap("derived/pcmu_speech_from_sip-rtp-g711.pcap")).expect("capture")
}

/// The phone's words of [`speech`]: its µ-law audio packets decoded, 8 kHz.
pub fn speech_samples() -> Vec<i16> {
    speech()
        .packets
        .iter()
        .filter(|p| p.law.is_some())
        .flat_map(|p| p.payload.iter().map(|&c| G711::Ulaw.decode(c)))
        .collect()
}

/// The phone's speech as the agent (or a recording) received it, µ-law passthrough: from the
/// first loud frame of `played` (the capture, decoded), `heard` is `played` sample for sample,
/// except whole 20 ms frames of quiet audio (peak ≤ `QUIET_PEAK`) that the gateway's jitter
/// buffer skips to bring its 60 ms start down to the line's delay (its call record counts them in
/// `uplink.dropped_samples`). Compares at most `max_secs` of `heard`, requires at least
/// `min_secs`, and returns the samples of `played` skipped.
pub fn assert_relayed_except_quiet_frames(
    heard: &[i16],
    played: &[i16],
    min_secs: usize,
    max_secs: usize,
) -> usize {
    use trunkline_media::jitter::QUIET_PEAK;
    let first_loud = played
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("speech in capture")
        * 160;
    let probe = &played[first_loud..first_loud + 160];
    let at = heard
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("the phone's speech was received");
    let (heard, played) = (&heard[at..], &played[first_loud..]);
    let end = heard.len().min(max_secs * 8000);
    let quiet = |x: &[i16]| {
        x.iter()
            .all(|s| s.unsigned_abs() <= QUIET_PEAK.unsigned_abs())
    };
    let (mut h, mut p, mut skipped) = (0, 0, 0);
    while h < end && p < played.len() {
        if heard[h] == played[p] {
            h += 1;
            p += 1;
            continue;
        }
        // A difference: only a skipped quiet frame (or a few) may explain it, the frame being
        // the jitter buffer's, so at any offset from the capture's packets.
        let next = heard.len().min(h + 160);
        let skip = (1..=3).map(|f| f * 160).find(|&d| {
            p + d + (next - h) <= played.len()
                && quiet(&played[p..p + d])
                && heard[h..next] == played[p + d..p + d + (next - h)]
        });
        match skip {
            Some(d) => {
                skipped += d;
                p += d;
            }
            None => panic!(
                "the phone's audio differs at {:.3} s of what was received ({h} samples in, \
                 {skipped} quiet samples skipped before)",
                h as f64 / 8000.0
            ),
        }
    }
    assert!(
        h >= min_secs * 8000,
        "at least {min_secs} s relayed, got {h} samples"
    );
    skipped
}

pub struct Deployment {
    pub gateway: Arc<Gateway>,
    pub http: SocketAddr,
    pub trunk: TrunkEmulator,
    pub agent: AgentEmulator,
}

pub fn base_config(trunk: &TrunkEmulator, agent: &AgentEmulator) -> Config {
    let mut cfg = Config::default();
    cfg.sip.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.sip.transports = vec![SipTransport::Udp];
    cfg.trunk.termination_uri = "sip:trunkline-test.pstn.twilio.com".into();
    cfg.trunk.outbound_proxy = Some(trunk.addr().to_string());
    cfg.trunk.username = Some("trunkline".into());
    cfg.trunk.caller_id = "+15005550006".into();
    cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
    cfg.trunk.ring_timeout_secs = 5;
    cfg.rtp.bind_ip = "127.0.0.1".parse().expect("ip");
    cfg.rtp.port_min = 30000 + (std::process::id() % 200) as u16 * 100;
    cfg.rtp.port_max = cfg.rtp.port_min + 98;
    cfg.agent.base_url = agent.ws_base_url();
    cfg.agent.agent_id = "agent_e2e".into();
    cfg.agent.drain_timeout_secs = 10;
    cfg.policy.calls_per_second = 100.0;
    cfg.records.database_url = "sqlite::memory:".into();
    cfg.policy.per_ip_per_minute = 1000;
    cfg
}

pub async fn deploy(
    trunk_cfg: TrunkConfig,
    agent_cfg: AgentEmulatorConfig,
    tweak: impl FnOnce(&mut Config),
) -> Deployment {
    deploy_with_trunk(trunk_cfg, agent_cfg, |cfg, _| tweak(cfg)).await
}

/// [`deploy`], the tweak seeing the running trunk (its TLS address, …).
pub async fn deploy_with_trunk(
    trunk_cfg: TrunkConfig,
    agent_cfg: AgentEmulatorConfig,
    tweak: impl FnOnce(&mut Config, &TrunkEmulator),
) -> Deployment {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let trunk = TrunkEmulator::start(trunk_cfg).await.expect("trunk");
    let agent = AgentEmulator::start("127.0.0.1:0".parse().expect("addr"), agent_cfg)
        .await
        .expect("agent");
    let mut cfg = base_config(&trunk, &agent);
    tweak(&mut cfg, &trunk);
    let secrets = Secrets {
        trunk_password: Some("s3cret".into()),
        api_tokens: vec![("e2e".into(), TOKEN.into())],
        ..Secrets::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = Server::start_on(cfg, secrets, listener)
        .await
        .expect("gateway");
    let http = server.http_addr();
    let gateway = server.gateway().clone();
    Deployment {
        gateway,
        http,
        trunk,
        agent,
    }
}

/// POST a JSON body; returns (status, JSON).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let (status, body) = trunkline_gateway::demo::post_json(addr, path, headers, body)
        .await
        .expect("HTTP request");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A bodyless API request with the token (`GET`, `POST …/hangup`): the status and the JSON.
pub async fn api(method: &str, http: SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

impl Deployment {
    /// Place a call through the widget endpoint with the token; returns the call sid.
    pub async fn call(&self, number: &str) -> String {
        let (status, j) = post(
            self.http,
            "/api/call/outbound",
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            &format!(r#"{{"phoneNumber": "{number}"}}"#),
        )
        .await;
        assert_eq!(status, 200, "{j}");
        j["call_sid"].as_str().expect("call_sid").to_owned()
    }

    pub async fn finished(&self, sid: &str, secs: u64) -> trunkline_call::CallRecord {
        let r = self
            .gateway
            .wait_call(sid, Duration::from_secs(secs))
            .await
            .expect("record exists");
        assert!(r.is_final(), "call did not end in {secs} s: {r:?}");
        assert_agent_clean(&self.agent.records());
        r
    }

    /// Waits until `n` agent connections have finished (or `timeout`) and asserts that none of
    /// them broke the protocol ([`assert_agent_clean`]).
    pub async fn agent_finished(&self, n: usize, timeout: Duration) -> Vec<ConnectionRecord> {
        let recs = self.agent.wait_finished(n, timeout).await;
        assert_agent_clean(&recs);
        recs
    }
}

/// The gateway spoke to the agent emulator as the real server demands: no unknown message, no
/// binary frame, no second initiation, whole PCM samples, no forbidden override, every ping
/// answered in time (`ConnectionRecord::violations`).
pub fn assert_agent_clean(records: &[ConnectionRecord]) {
    for (i, r) in records.iter().enumerate() {
        assert!(
            r.violations.is_empty(),
            "agent connection {i} ({}) broke the protocol: {:#?}",
            r.request_target,
            r.violations
        );
    }
}
