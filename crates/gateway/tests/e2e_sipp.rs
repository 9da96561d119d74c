//! The outbound call against SIPp as an independent trunk peer (issue 5): the gateway's real HTTP
//! trigger places a call whose INVITE goes to a SIPp UAS scenario (`tests/sipp/
//! uas_twilio_407_pcap_bye.xml`) that behaves like Twilio's termination side: `100 trying -- your
//! call is important to us`, `407` with a `qop="auth"` digest challenge for realm `sip.twilio.com`,
//! then (for the authenticated INVITE) 100, 180 and 200 with PCMU + telephone-event/101, speech
//! from a capture with `play_pcap_audio`, and a BYE from the trunk after 5 s.
//!
//! Asserted: SIPp exits 0 with one successful call; the digest in SIPp's message trace is the
//! RFC 2617 §3.2.2.1 (qop=auth) response for the configured password, recomputed here with an
//! independent MD5; the retry keeps Call-ID and From tag with CSeq + 1 (RFC 3261 §22.2); the
//! gateway's record ends with `RemoteHangup` and a `conversation_id`; SIPp's RTP reached the
//! gateway (uplink packets) and the agent emulator heard the capture frame by frame, sample-exact
//! (µ-law passthrough), for more than 2 s, missing at most a few quiet frames the adaptive jitter
//! buffer may skip when SIPp's clock runs ahead; the agent socket was closed with 1000.
//!
//! Skipped with a message when `sipp` is not on PATH (CI installs Debian `sip-tester`). SIPp plays
//! pcap audio through a raw socket, so it needs root or CAP_NET_RAW (CI runs as root).
#![allow(clippy::disallowed_methods)] // real processes and sockets: this test is I/O, not sans-IO

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::sipp::{Guard, free_port, free_udp_range, have_sipp, sipp_count};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TOKEN, post};
use tokio::net::TcpListener;
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};
use trunkline_gateway::api::{ApiState, router};
use trunkline_gateway::config::{Config, Secrets};
use trunkline_gateway::policy::Policy;
use trunkline_gateway::service::Gateway;
use trunkline_media::jitter::QUIET_PEAK;

const SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/sipp/uas_twilio_407_pcap_bye.xml"
);
/// SIPp runs here so the scenario's `play_pcap_audio` finds the capture by its file name.
const PCAP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/pcap/derived");
const USER: &str = "trunkline";
const PASSWORD: &str = "s3cret";
const NUMBER: &str = "+33612345678";

/// Waits (up to 10 s) until some process has bound UDP `port` on loopback, reading /proc/net so
/// the check never touches the port (falls back to a bind probe elsewhere).
fn wait_udp_bound(port: u16) {
    let needle = format!(":{port:04X}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut readable = false;
        let mut bound = false;
        for f in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(table) = std::fs::read_to_string(f) {
                readable = true;
                bound |= table.lines().skip(1).any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|local| local.ends_with(&needle))
                });
            }
        }
        if !readable {
            bound = UdpSocket::bind(("127.0.0.1", port)).is_err();
        }
        if bound {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("SIPp did not bind UDP port {port} within 10 s");
}

/// The SIP messages in SIPp's `-message_file`, in order: (received by SIPp?, message text).
fn trace_messages(trace: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for block in trace.split("\n-----------------------------------------------") {
        let mut lines = block.lines();
        // the rest of the separator line (a timestamp), then "UDP message received [n] bytes :"
        let _ = lines.next();
        let Some(kind) = lines.next() else { continue };
        let received = kind.contains("message received");
        if !received && !kind.contains("message sent") {
            continue;
        }
        let text: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        out.push((received, text.join("\n").trim_end().to_owned()));
    }
    out
}

/// The value of header `name` (case-insensitive, first occurrence) in a SIP message.
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A parameter of a `Digest` challenge or credentials header, quotes removed.
fn auth_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let rest = value.trim().strip_prefix("Digest")?.trim();
    rest.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"'))
    })
}

fn tag(from: &str) -> Option<&str> {
    from.split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(|t| t.trim_end_matches('>').trim())
}

/// MD5 (RFC 1321), written here so the digest check does not reuse the gateway's own code.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    let k: Vec<u32> = (0..64)
        .map(|i| (f64::from(i + 1).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = input.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((input.len() as u64).wrapping_mul(8)).to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[(i / 16) * 4 + i % 4]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn md5_hex(s: &str) -> String {
    md5(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_local_md5_matches_the_rfc_1321_test_suite() {
    for (input, hex) in [
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
        ("a", "0cc175b9c0f1b6a831c399e269772661"),
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        (
            "abcdefghijklmnopqrstuvwxyz",
            "c3fcd3d76192e4007dfb496cca67e13b",
        ),
        (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "d174ab98d277d9f5a5611c2c9f419d9f",
        ),
        (
            "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
            "57edf4a22be3c955ac49da2e2107b67a",
        ),
    ] {
        assert_eq!(md5_hex(input), hex, "md5({input:?})");
    }
}

/// The gateway (real SIP, RTP, WebSocket and HTTP) with its trunk pointed at SIPp.
async fn start_gateway(sipp_sip: SocketAddr, agent: &AgentEmulator) -> (Arc<Gateway>, SocketAddr) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cfg = Config::default();
    // Each gateway its own records (the default file in the working directory would be shared
    // by the tests of this file running at once).
    cfg.records.database_url = "sqlite::memory:".into();
    cfg.sip.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.sip.transports = vec![trunkline_gateway::config::SipTransport::Udp];
    cfg.trunk.termination_uri = "sip:trunkline-test.pstn.twilio.com".into();
    cfg.trunk.outbound_proxy = Some(sipp_sip.to_string());
    cfg.trunk.username = Some(USER.into());
    cfg.trunk.caller_id = "+15005550006".into();
    cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
    cfg.trunk.ring_timeout_secs = 5;
    cfg.rtp.bind_ip = "127.0.0.1".parse().expect("ip");
    cfg.rtp.port_min = free_udp_range(20);
    cfg.rtp.port_max = cfg.rtp.port_min + 18;
    cfg.agent.base_url = agent.ws_base_url();
    cfg.agent.agent_id = "agent_e2e".into();
    cfg.agent.drain_timeout_secs = 10;
    cfg.policy.calls_per_second = 100.0;
    cfg.policy.per_ip_per_minute = 1000;
    let secrets = Secrets {
        trunk_password: Some(PASSWORD.into()),
        api_tokens: vec![("e2e".into(), TOKEN.into())],
        ..Secrets::default()
    };
    let gateway = Gateway::start(cfg.clone(), secrets.clone())
        .await
        .expect("gateway");
    let state = Arc::new(ApiState {
        policy: Mutex::new(Policy::new(
            cfg.policy.clone(),
            cfg.http.allowed_origins.clone(),
            &secrets,
        )),
        calls: Arc::new(gateway.clone()),
        max_body_bytes: cfg.http.max_body_bytes,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = listener.local_addr().expect("addr");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (gateway, http)
}

/// Starts the one-call SIPp UAS in the background; its screen goes to `dir/screen.out` and its
/// message trace to `dir/messages.log`.
fn spawn_sipp(dir: &Path) -> (Guard, SocketAddr) {
    spawn_sipp_scenario(dir, SCENARIO, &[])
}

/// Starts one call of `scenario` (`extra`: e.g. the remote address of a UAC) in the background.
fn spawn_sipp_scenario(dir: &Path, scenario: &str, extra: &[&str]) -> (Guard, SocketAddr) {
    let port = free_port();
    let media = free_udp_range(4);
    let screen = std::fs::File::create(dir.join("screen.out")).expect("sipp screen file");
    let child = Command::new("sipp")
        .current_dir(PCAP_DIR)
        .args(extra)
        .args(["-sf", scenario, "-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-mp", &media.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "25s"])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .stdin(Stdio::null())
        // a file, not a pipe nobody drains while the call runs (SIPp would block on a full pipe)
        .stdout(screen)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    let guard = Guard(child);
    wait_udp_bound(port);
    (guard, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The capture's PCMU payloads decoded, as the phone said them.
fn capture_speech() -> Vec<i16> {
    common::speech_samples()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_through_sipp_trunk_with_407_relays_its_rtp_to_the_agent_until_trunk_bye() {
    if !have_sipp() {
        return;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-sipp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (mut sipp, sipp_addr) = spawn_sipp(&dir);
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    let (gateway, http) = start_gateway(sipp_addr, &agent).await;

    // The real HTTP trigger, with the bearer token.
    let (status, j) = post(
        http,
        "/api/call/outbound",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &format!(r#"{{"phoneNumber": "{NUMBER}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{j}");
    let sid = j["call_sid"].as_str().expect("call_sid").to_owned();

    // SIPp hangs up 5 s after the answer; the whole call is over well within 20 s.
    let rec = gateway
        .wait_call(&sid, Duration::from_secs(20))
        .await
        .expect("record exists");
    let exit = sipp.exit_within(Duration::from_secs(10)).await;
    let screen = std::fs::read_to_string(dir.join("screen.out")).unwrap_or_default();
    let trace = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    let exit = exit.unwrap_or_else(|| panic!("SIPp still running\n{screen}\n{rec:?}"));
    assert!(rec.is_final(), "call did not end: {rec:?}\n{screen}");

    // SIPp: exit 0, one successful call, none failed (every scenario check passed).
    assert_eq!(
        sipp_count(&screen, "Successful call"),
        Some(1),
        "{screen}\n{trace}"
    );
    assert_eq!(sipp_count(&screen, "Failed call"), Some(0), "{screen}");
    assert!(exit.success(), "sipp exit {exit:?}\n{screen}");

    // The signalling, as SIPp saw it.
    let msgs = trace_messages(&trace);
    let invites: Vec<&str> = msgs
        .iter()
        .filter(|(rx, m)| *rx && m.starts_with("INVITE "))
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(
        invites.len(),
        2,
        "challenged and authenticated INVITE\n{trace}"
    );
    let sent: Vec<&str> = msgs
        .iter()
        .filter(|(rx, _)| !rx)
        .map(|(_, m)| m.lines().next().unwrap_or(""))
        .collect();
    assert!(
        sent.starts_with(&[
            "SIP/2.0 100 trying -- your call is important to us",
            "SIP/2.0 407 Proxy Authentication required",
        ]),
        "{sent:?}"
    );
    assert!(
        invites[1].starts_with(&format!(
            "INVITE sip:{NUMBER}@trunkline-test.pstn.twilio.com"
        )),
        "Request-URI on the termination domain, E.164 user: {}",
        invites[1].lines().next().unwrap_or("")
    );
    // The retry: same Call-ID and From tag, CSeq + 1 (RFC 3261 §22.2).
    fn h<'a>(m: &'a str, n: &str) -> &'a str {
        header(m, n).unwrap_or_else(|| panic!("{n} missing in\n{m}"))
    }
    assert_eq!(h(invites[0], "Call-ID"), h(invites[1], "Call-ID"));
    // (The record's `sip_call_id` is not filled for outbound calls yet; when it is, it must match.)
    if let Some(id) = rec.sip_call_id.as_deref() {
        assert_eq!(id, h(invites[1], "Call-ID"));
    }
    let (tag0, tag1) = (tag(h(invites[0], "From")), tag(h(invites[1], "From")));
    assert!(tag0.is_some_and(|t| !t.is_empty()), "From tag");
    assert_eq!(tag0, tag1, "same From tag");
    let cseq = |m: &str| -> (u32, String) {
        let v = h(m, "CSeq");
        let (n, method) = v.split_once(' ').expect("CSeq: n METHOD");
        (
            n.trim().parse().expect("CSeq number"),
            method.trim().to_owned(),
        )
    };
    let (c0, m0) = cseq(invites[0]);
    let (c1, m1) = cseq(invites[1]);
    assert_eq!((m0.as_str(), m1.as_str()), ("INVITE", "INVITE"));
    assert_eq!(c1, c0 + 1, "CSeq + 1 on the authenticated INVITE");
    assert!(
        header(invites[0], "Proxy-Authorization").is_none(),
        "no credentials before the challenge"
    );

    // The digest: recomputed from the trace (RFC 2617 §3.2.2.1, qop=auth).
    let challenge = msgs
        .iter()
        .find(|(rx, m)| !rx && m.starts_with("SIP/2.0 407"))
        .and_then(|(_, m)| header(m, "Proxy-Authenticate"))
        .expect("the 407 carried Proxy-Authenticate");
    let creds = h(invites[1], "Proxy-Authorization");
    let c = |n| auth_param(creds, n).unwrap_or_else(|| panic!("{n} missing in {creds}"));
    let ch = |n| auth_param(challenge, n).unwrap_or_else(|| panic!("{n} missing in {challenge}"));
    assert_eq!(c("username"), USER);
    assert_eq!(c("realm"), "sip.twilio.com");
    assert_eq!(c("nonce"), ch("nonce"), "nonce echoed");
    assert_eq!(c("opaque"), ch("opaque"), "opaque echoed");
    assert_eq!(c("qop"), "auth");
    assert_eq!(c("nc"), "00000001");
    assert!(!c("cnonce").is_empty());
    let request_uri = invites[1]
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("Request-URI");
    assert_eq!(c("uri"), request_uri, "digest-uri is the Request-URI");
    let ha1 = md5_hex(&format!("{USER}:sip.twilio.com:{PASSWORD}"));
    let ha2 = md5_hex(&format!("INVITE:{}", c("uri")));
    let expected = md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        c("nonce"),
        c("nc"),
        c("cnonce")
    ));
    assert_eq!(c("response"), expected, "digest response");

    // The gateway offered PCMU and telephone-event/101 in its INVITE.
    let offer = invites[1];
    assert!(
        offer.contains("a=rtpmap:0 PCMU/8000") && offer.contains("telephone-event/8000"),
        "{offer}"
    );

    // The trunk hung up: SIPp sent the BYE and got its 200.
    let bye = msgs
        .iter()
        .position(|(rx, m)| !rx && m.starts_with("BYE "))
        .expect("SIPp sent BYE");
    assert!(
        msgs[bye..]
            .iter()
            .any(|(rx, m)| *rx && m.starts_with("SIP/2.0 200") && m.contains("BYE")),
        "the gateway answered the BYE with 200\n{trace}"
    );
    assert!(
        !msgs.iter().any(|(rx, m)| *rx && m.starts_with("BYE ")),
        "the gateway did not hang up itself"
    );

    // The record.
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup), "{rec:?}");
    assert_eq!(rec.status, "completed");
    assert_eq!(rec.sip_status, Some(200));
    assert!(rec.conversation_id.is_some(), "{rec:?}");
    assert!(
        rec.uplink.packets > 100,
        "SIPp's RTP reached the gateway (SIPp plays pcap audio through a raw socket: it needs \
         root or CAP_NET_RAW): {:?}",
        rec.uplink
    );
    assert!(
        rec.downlink.packets > 0,
        "the gateway sent the agent's audio to SIPp: {:?}",
        rec.downlink
    );

    // The agent heard the phone: the capture's speech, sample-exact (µ-law passthrough), > 2 s.
    let conns = agent.wait_finished(1, Duration::from_secs(5)).await;
    common::assert_agent_clean(&conns);
    assert_eq!(conns.len(), 1);
    let a = &conns[0];
    assert_eq!(a.conversation_id, rec.conversation_id);
    assert_eq!(
        a.client_close_code,
        Some(1000),
        "agent socket closed cleanly"
    );
    assert!(a.caller_seconds() > 2.0, "{} s", a.caller_seconds());
    let played = capture_speech();
    let first_loud = played
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("speech in capture")
        * 160;
    let probe = &played[first_loud..first_loud + 160];
    let heard = &a.caller_audio;
    let at = heard
        .windows(probe.len())
        .position(|w| w == probe)
        .expect("the capture's speech reached the agent");
    // Walk the heard stream frame by frame against the capture. µ-law passthrough: every frame is
    // the capture's, byte for byte, in order. The only frames allowed to be missing are quiet ones
    // (peak ≤ QUIET_PEAK) that the adaptive jitter buffer skips to shrink its depth when SIPp's
    // clock runs ahead of ours (trunkline-media jitter.rs: "shrinking never cuts speech").
    let capture_frames: Vec<&[i16]> = played[first_loud..].chunks_exact(160).collect();
    let heard_frames: Vec<&[i16]> = heard[at..].chunks_exact(160).collect();
    let quiet = |f: &[i16]| {
        f.iter()
            .all(|s| s.unsigned_abs() <= QUIET_PEAK.unsigned_abs())
    };
    let (mut p, mut matched, mut skipped_quiet) = (0, 0, 0);
    for h in &heard_frames {
        if p < capture_frames.len() && *h == capture_frames[p] {
            p += 1;
        } else if p + 1 < capture_frames.len()
            && quiet(capture_frames[p])
            && *h == capture_frames[p + 1]
        {
            skipped_quiet += 1;
            p += 2;
        } else {
            break;
        }
        matched += 1;
    }
    // After SIPp's BYE the last frame or two may be concealment; everything before is the capture.
    assert!(
        matched + 3 >= heard_frames.len(),
        "µ-law passthrough: only {matched} of {} heard frames are the capture's in order \
         (skipped quiet: {skipped_quiet}); frame {matched} differs",
        heard_frames.len()
    );
    assert!(
        matched > 100,
        "more than 2 s relayed sample-exact, got {matched} frames"
    );
    assert!(skipped_quiet <= 5, "{skipped_quiet} quiet frames skipped");

    eprintln!(
        "sipp e2e: uplink {} packets (lost {}, jitter {:.2} ms), downlink {} packets, agent heard \
         {:.2} s, {matched} frames sample-exact ({skipped_quiet} quiet skipped), {:?} in all",
        rec.uplink.packets,
        rec.uplink.lost,
        rec.uplink.jitter_ms,
        rec.downlink.packets,
        a.caller_seconds(),
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    drop(sipp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs SIPp's `scenario` for one call while `drive` makes the gateway take part, then asserts
/// SIPp counted one successful call and exited 0 (every `check_it` ereg in the scenario held).
async fn sipp_call_succeeds(name: &str, screen: &str, exit: Option<ExitStatus>, trace: &str) {
    let exit = exit.unwrap_or_else(|| panic!("{name}: SIPp still running\n{screen}\n{trace}"));
    assert_eq!(
        sipp_count(screen, "Successful call"),
        Some(1),
        "{name}\n{screen}\n{trace}"
    );
    assert_eq!(
        sipp_count(screen, "Failed call"),
        Some(0),
        "{name}\n{screen}"
    );
    assert!(
        exit.success(),
        "{name}: sipp exit {exit:?}\n{screen}\n{trace}"
    );
}

/// Termination through two record-routing proxies, the gateway hanging up: SIPp
/// (`tests/sipp/uas_record_route_gateway_bye.xml`) checks the INVITE's Contact, Allow, Supported
/// and SDP lines, and that the gateway's ACK and BYE carry its 200's two Record-Route values as
/// Route, reversed and verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_ack_and_bye_route_through_sipps_record_route() {
    if !have_sipp() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-sipp-rr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sipp/uas_record_route_gateway_bye.xml"
    );
    let (mut sipp, sipp_addr) = spawn_sipp_scenario(&dir, scenario, &[]);
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig {
            script: trunkline_emulators::agent::Script {
                end_after_turns: Some(0),
                end_call_tool_response: true,
                ..Default::default()
            },
            ..AgentEmulatorConfig::default()
        },
    )
    .await
    .expect("agent");
    let (gateway, http) = start_gateway(sipp_addr, &agent).await;
    let (status, j) = post(
        http,
        "/api/call/outbound",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        &format!(r#"{{"phoneNumber": "{NUMBER}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{j}");
    let sid = j["call_sid"].as_str().expect("call_sid").to_owned();
    let rec = gateway
        .wait_call(&sid, Duration::from_secs(20))
        .await
        .expect("record exists");
    let exit = sipp.exit_within(Duration::from_secs(10)).await;
    let screen = std::fs::read_to_string(dir.join("screen.out")).unwrap_or_default();
    let trace = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    sipp_call_succeeds("termination", &screen, exit, &trace).await;
    assert_eq!(rec.end_cause, Some(EndCause::AgentEnded), "{rec:?}");
    common::assert_agent_clean(&agent.wait_finished(1, Duration::from_secs(5)).await);
    drop(sipp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Origination through two record-routing edge proxies: SIPp
/// (`tests/sipp/uac_origination_record_route.xml`) calls the gateway and checks that its 180 and
/// 200 echo both Record-Route values verbatim and in order, its 100 none, and the 200's Contact,
/// Allow, Supported and SDP answer lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_responses_echo_sipps_record_route() {
    if !have_sipp() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-sipp-orig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        AgentEmulatorConfig::default(),
    )
    .await
    .expect("agent");
    // No outbound call here: the trunk address is never used.
    let (gateway, _http) = start_gateway("127.0.0.1:9".parse().expect("addr"), &agent).await;
    let gw = gateway
        .sip_addr(trunkline_sip::transaction::TransportKind::Udp)
        .expect("sip addr")
        .to_string();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sipp/uac_origination_record_route.xml"
    );
    let (mut sipp, _) = spawn_sipp_scenario(&dir, scenario, &[gw.as_str()]);
    let exit = sipp.exit_within(Duration::from_secs(25)).await;
    let screen = std::fs::read_to_string(dir.join("screen.out")).unwrap_or_default();
    let trace = std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default();
    sipp_call_succeeds("origination", &screen, exit, &trace).await;
    common::assert_agent_clean(&agent.wait_finished(1, Duration::from_secs(5)).await);
    drop(sipp);
    let _ = std::fs::remove_dir_all(&dir);
}
