//! Secure trunking end to end on loopback (docs/OPERATIONS.md, "Secure trunking"): SIP over TLS
//! (rustls both ways, the trunk's certificate checked against the termination host through
//! `trunk.tls_ca_file`) and SDES-SRTP media, with the Twilio-like trunk requiring, allowing or
//! refusing SRTP. Audio is checked by content both ways, and `tshark` on `lo` shows no RTP
//! payload and no SIP in clear. The captured SRTP is also decrypted by libsrtp2 (PyPI
//! `pylibsrtp`, an implementation we did not write, installed by `.ci/run`) through
//! `crates/media/tests/srtp_libsrtp.py`: missing, it fails the test in CI and is skipped locally.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Deployment, deploy_with_trunk, speech, speech_samples};
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::{AgentEmulatorConfig, TestIdentity};
use trunkline_emulators::trunk::{Originate, TrunkCall, TrunkConfig, TrunkSrtp};
use trunkline_gateway::api::CallService;
use trunkline_gateway::config::{Config, MediaEncryption, SipTransport};
use trunkline_media::capture::read_udp_file;
use trunkline_media::g711::G711;
use trunkline_media::srtp::{SdesKey, SrtpSession, SrtpSuite};
use trunkline_sip::transaction::TransportKind;

const TERMINATION_HOST: &str = "trunkline-test.pstn.twilio.com";

/// A scratch directory removed at drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "trunkline-secure-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    fn write(&self, name: &str, data: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, data).expect("write");
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("TRUNKLINE_KEEP_SCRATCH").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The trunk's certificate (valid for the termination host) and the gateway's (127.0.0.1).
struct Pki {
    trunk: TestIdentity,
    gateway: TestIdentity,
}

fn pki() -> Pki {
    Pki {
        trunk: TestIdentity::generate(&[TERMINATION_HOST, "127.0.0.1"]).expect("trunk cert"),
        gateway: TestIdentity::generate(&["127.0.0.1", "localhost"]).expect("gateway cert"),
    }
}

fn trunk(pki: &Pki, srtp: TrunkSrtp, f: impl FnOnce(&mut TrunkConfig)) -> TrunkConfig {
    let mut t = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(6)),
        srtp,
        tls_server: Some(pki.trunk.server_config().expect("server config")),
        tls_client: Some(pki.gateway.client_config().expect("client config")),
        ..TrunkConfig::default()
    };
    f(&mut t);
    t
}

/// The gateway over TLS both ways with `enc`; the trunk's CA from a file; its own RTP port range
/// (`rtp_base`, 36 ports) so a capture can be filtered on it.
fn secure(
    cfg: &mut Config,
    dir: &Scratch,
    pki: &Pki,
    trunk_tls: std::net::SocketAddr,
    enc: MediaEncryption,
    rtp_base: u16,
) {
    cfg.rtp.port_min = rtp_base;
    // rtp_base + 39 stays free: the capture's probe port.
    cfg.rtp.port_max = rtp_base + 36;
    cfg.trunk.transport = SipTransport::Tls;
    cfg.trunk.termination_uri = format!("sip:{TERMINATION_HOST}");
    cfg.trunk.outbound_proxy = Some(trunk_tls.to_string());
    cfg.trunk.tls_ca_file = Some(dir.write("trunk-ca.pem", pki.trunk.cert_pem()));
    cfg.trunk.media_encryption = enc;
    cfg.sip.transports = vec![SipTransport::Udp, SipTransport::Tls];
    cfg.sip.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.sip.tls_cert = Some(dir.write("gw-cert.pem", pki.gateway.cert_pem()));
    cfg.sip.tls_key = Some(dir.write("gw-key.pem", pki.gateway.key_pem()));
}

/// `tshark` capturing on `lo` into a file, until dropped (SIGTERM by pid).
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// `None` (after saying why) when tshark is missing and not in CI. Returns once a probe
    /// datagram sent to `127.0.0.1:probe_port` (which `filter` must match) was captured: tshark
    /// says "Capturing on" before the capture is live.
    fn start(dir: &Scratch, filter: &str, probe_port: u16) -> Option<Capture> {
        if Command::new("tshark").arg("-v").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "tshark is required in CI (.ci/run installs it)"
            );
            eprintln!("SKIP capture: tshark not installed");
            return None;
        }
        let file = dir.0.join("lo.pcap");
        // -l -P: a summary line per packet on stdout while writing the file.
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-l", "-P", "-f", filter, "-w"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tshark");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe socket");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = probe.send_to(b"capture-probe", ("127.0.0.1", probe_port));
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
                && line.contains(&probe_port.to_string())
            {
                break;
            }
            assert!(Instant::now() < deadline, "tshark never captured the probe");
        }
        // Keep draining stdout so tshark never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Some(Capture { child, file })
    }

    /// Stops the capture (SIGTERM, so the file is complete) and returns its path.
    fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.file.clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames of `pcap` matching the tshark display filter `filter`.
fn tshark_count(pcap: &Path, filter: &str, tls_ports: &[u16]) -> usize {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap);
    for p in tls_ports {
        cmd.args(["-d", &format!("tcp.port=={p},tls")]);
    }
    let out = cmd
        .args(["-Y", filter, "-T", "fields", "-e", "frame.number"])
        .output()
        .expect("tshark -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// 160-byte µ-law frames of `audio` that are speech (not silence), as needles to look for.
fn loud_frames(audio: &[u8]) -> Vec<&[u8]> {
    audio
        .chunks_exact(160)
        .filter(|c| c.iter().any(|&b| G711::Ulaw.decode(b).abs() > 2000))
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The phone's speech reached the agent sample-exact (µ-law passthrough) for at least 3 s, but
/// for skipped quiet frames.
async fn assert_uplink_exact(d: &Deployment) {
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    // But for the quiet frames the jitter buffer skips to settle at the line's delay.
    common::assert_relayed_except_quiet_frames(&agent[0].caller_audio, &speech_samples(), 3, 4);
}

/// libsrtp2 driven by the media crate's script (one packet a line, "rtp HEX" in, "ok HEX" or
/// "err MESSAGE" out).
const LIBSRTP_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../media/tests/srtp_libsrtp.py"
);

/// python3 with pylibsrtp is there; when not, fails in CI and says why it skips otherwise.
fn have_pylibsrtp() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pylibsrtp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with pylibsrtp is missing in CI (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED libsrtp check: python3 -c 'import pylibsrtp' failed (pip install pylibsrtp==1.0.0)"
        );
    }
    ok
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex from the script"))
        .collect()
}

/// libsrtp `mode`s ("protect" or "unprotect") the RTP `packets` with `key`; the packets go
/// through `dir/name` (hex lines, kept with `TRUNKLINE_KEEP_SCRATCH`). One result per packet.
fn libsrtp_rtp(
    dir: &Scratch,
    name: &str,
    mode: &str,
    key: &SdesKey,
    packets: &[Vec<u8>],
) -> Vec<Result<Vec<u8>, String>> {
    let profile = match key.suite {
        SrtpSuite::AesCm128HmacSha1_80 => "80",
        SrtpSuite::AesCm128HmacSha1_32 => "32",
    };
    let lines: String = packets
        .iter()
        .map(|p| format!("rtp {}\n", hex(p)))
        .collect();
    let input = dir.write(name, &lines);
    let out = Command::new("python3")
        .arg(LIBSRTP_SCRIPT)
        .args([mode, profile, &hex(&key.material)])
        .stdin(std::fs::File::open(&input).expect("packets file"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<_> = text
        .lines()
        .map(|l| match l.split_once(' ') {
            Some(("ok", h)) => Ok(unhex(h)),
            Some((_, e)) => Err(e.to_owned()),
            None => Err(l.to_owned()),
        })
        .collect();
    assert_eq!(results.len(), packets.len(), "{text}");
    results
}

/// The payload of a plain RTP packet (after CSRCs and any header extension; padding removed).
fn rtp_payload(p: &[u8]) -> &[u8] {
    let Some(&b0) = p.first() else { return &[] };
    let mut at = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let words = p
            .get(at + 2..at + 4)
            .map_or(0, |w| usize::from(u16::from_be_bytes([w[0], w[1]])));
        at += 4 + 4 * words;
    }
    let mut end = p.len();
    if b0 & 0x20 != 0 {
        end = end.saturating_sub(p.last().map_or(0, |&n| usize::from(n)));
    }
    p.get(at..end).unwrap_or_default()
}

fn only_call(calls: &[TrunkCall]) -> &TrunkCall {
    let answered: Vec<_> = calls
        .iter()
        .filter(|c| c.final_status == Some(200))
        .collect();
    assert_eq!(answered.len(), 1, "{calls:#?}");
    answered[0]
}

/// A gateway for `pki`/`dir` in front of `trunk_cfg`, TLS both ways, `enc`; `slot` picks its RTP
/// ports (one per test of this file, they run in parallel).
async fn deploy_secure(
    pki: &Pki,
    dir: &Scratch,
    trunk_cfg: TrunkConfig,
    enc: MediaEncryption,
    slot: u16,
) -> (Deployment, u16) {
    let rtp_base = 41000 + (std::process::id() % 100) as u16 * 200 + slot * 40;
    let d = deploy_with_trunk(trunk_cfg, AgentEmulatorConfig::default(), |cfg, trunk| {
        secure(
            cfg,
            dir,
            pki,
            trunk.tls_addr().expect("trunk tls"),
            enc,
            rtp_base,
        )
    })
    .await;
    (d, rtp_base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_required_tls_and_srtp_carry_audio_both_ways_and_nothing_in_clear() {
    let pki = pki();
    let dir = Scratch::new("out");
    let (d, rtp_base) = deploy_secure(
        &pki,
        &dir,
        trunk(&pki, TrunkSrtp::Required, |_| {}),
        MediaEncryption::Required,
        0,
    )
    .await;
    let trunk_tls = d.trunk.tls_addr().expect("tls");
    let gw_tls = d.gateway.sip_addr(TransportKind::Tls).expect("gateway tls");
    let gw_udp = d.gateway.sip_addr(TransportKind::Udp).expect("gateway udp");
    let capture = Capture::start(
        &dir,
        &format!(
            "udp portrange {}-{} or tcp port {} or tcp port {} or udp port {} or port {}",
            rtp_base,
            rtp_base + 39,
            trunk_tls.port(),
            gw_tls.port(),
            gw_udp.port(),
            d.trunk.addr().port()
        ),
        rtp_base + 39,
    );

    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 25).await;
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.iter().any(|c| c.ended_by.is_some())
        })
        .await;
    let t = only_call(&calls);
    assert_eq!(t.transport, Some(TransportKind::Tls));
    assert!(t.offered_srtp, "the gateway offered RTP/SAVP");
    assert!(
        t.request_uri
            .starts_with(&format!("sip:+33612345678@{TERMINATION_HOST}"))
            && t.request_uri.contains(";transport=tls"),
        "{}",
        t.request_uri
    );
    let (trunk_key, gw_key) = t.srtp.clone().expect("SRTP agreed");
    assert_eq!(
        t.srtp_failures, 0,
        "every SRTP packet from the gateway authenticated"
    );
    assert_eq!(t.auth_ok, Some(true));
    assert_eq!(t.ended_by.as_deref(), Some("local_bye"), "{rec:?}");

    // Downlink: the agent's greeting reached the phone (decrypted by the trunk).
    let down = t.received_audio();
    let loud = loud_frames(&down);
    assert!(
        loud.len() >= 25,
        "greeting heard through SRTP: {} loud frames",
        loud.len()
    );
    // Uplink: the phone's speech reached the agent exactly.
    assert_uplink_exact(&d).await;

    // The record and the metrics.
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    assert!(rec.media_security.encrypted, "{:?}", rec.media_security);
    assert_eq!(
        rec.media_security.suite.as_deref(),
        Some("AES_CM_128_HMAC_SHA1_80")
    );
    assert_eq!(rec.media_security.auth_failures, 0);
    let metrics = CallService::metrics(&d.gateway);
    assert!(
        metrics.contains("trunkline_calls_encrypted_total{suite=\"AES_CM_128_HMAC_SHA1_80\"} 1"),
        "{metrics}"
    );

    // On the wire (tshark on lo).
    let Some(capture) = capture else { return };
    let pcap = capture.stop();
    // SIP: TLS records on the TLS ports, no SIP text on any SIP port of the call.
    let tls_ports = [trunk_tls.port(), gw_tls.port()];
    let tls_filter = format!(
        "tls.record && (tcp.port == {} || tcp.port == {})",
        trunk_tls.port(),
        gw_tls.port()
    );
    assert!(
        tshark_count(&pcap, &tls_filter, &tls_ports) >= 4,
        "TLS records captured: {} TCP frames on the TLS ports, {} frames in all",
        tshark_count(
            &pcap,
            &format!(
                "tcp.port == {} || tcp.port == {}",
                tls_ports[0], tls_ports[1]
            ),
            &[]
        ),
        tshark_count(&pcap, "frame", &[])
    );
    let clear_sip = format!(
        "frame contains \"SIP/2.0\" && (tcp.port == {} || tcp.port == {} || udp.port == {} || udp.port == {} || tcp.port == {})",
        trunk_tls.port(),
        gw_tls.port(),
        gw_udp.port(),
        d.trunk.addr().port(),
        d.trunk.addr().port()
    );
    assert_eq!(
        tshark_count(&pcap, &clear_sip, &tls_ports),
        0,
        "no SIP in clear text"
    );
    // Media: no captured UDP payload of the call carries one of the agent's µ-law frames in
    // clear, yet the gateway's packets decrypt (keys from the SDP) to exactly them.
    let trunk_media = t.media_addr.expect("trunk media socket");
    let datagrams = read_udp_file(&pcap).expect("pcap");
    let ours: Vec<_> = datagrams
        .iter()
        .filter(|g| {
            (rtp_base..rtp_base + 40).contains(&g.src.port())
                || (rtp_base..rtp_base + 40).contains(&g.dst.port())
        })
        .collect();
    for g in &ours {
        for needle in &loud {
            assert!(
                !contains(&g.payload, needle),
                "agent audio in clear on the wire ({} → {})",
                g.src,
                g.dst
            );
        }
    }
    let to_trunk: Vec<_> = ours.iter().filter(|g| g.dst == trunk_media).collect();
    assert!(to_trunk.len() > 200, "SRTP captured: {}", to_trunk.len());
    let mut rx = SrtpSession::new(&trunk_key, &gw_key).expect("keys");
    let mut decrypted = Vec::new();
    for g in &to_trunk {
        if let Ok(p) = rx.unprotect_rtp(&g.payload) {
            decrypted.extend_from_slice(p.get(12..).unwrap_or_default());
        }
    }
    let found = loud.iter().filter(|n| contains(&decrypted, n)).count();
    assert_eq!(
        found,
        loud.len(),
        "the captured SRTP decrypts to what the phone heard"
    );
    // The same capture through libsrtp2 (pylibsrtp), with the gateway's key from its SDP offer:
    // every packet authenticates and decrypts, to the packets our SrtpSession got and to the
    // agent's µ-law frames the phone heard.
    if have_pylibsrtp() {
        let wire: Vec<Vec<u8>> = to_trunk.iter().map(|g| g.payload.clone()).collect();
        let plain = libsrtp_rtp(&dir, "gw-to-phone.srtp.hex", "unprotect", &gw_key, &wire);
        let refused: Vec<_> = plain.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            refused.is_empty(),
            "libsrtp refused {} of {} captured packets: {:?}",
            refused.len(),
            plain.len(),
            &refused[..refused.len().min(5)]
        );
        let mut ours = SrtpSession::new(&trunk_key, &gw_key).expect("keys");
        for (w, p) in wire.iter().zip(&plain) {
            let p = p.as_ref().expect("checked");
            assert_eq!(
                ours.unprotect_rtp(w).ok().as_deref(),
                Some(p.as_slice()),
                "libsrtp and our SrtpSession agree on every packet"
            );
        }
        let payloads: Vec<u8> = plain
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|p| rtp_payload(p).to_vec())
            .collect();
        let found = loud.iter().filter(|n| contains(&payloads, n)).count();
        eprintln!(
            "libsrtp decrypted {} captured gateway packets; {found} of {} loud agent frames found",
            plain.len(),
            loud.len()
        );
        assert_eq!(
            found,
            loud.len(),
            "libsrtp decrypts the captured SRTP to the agent's µ-law frames the phone heard"
        );
    }
    // SRTCP too: the gateway's RTCP port sends nothing that parses as plain RTCP SR/RR with our
    // CNAME in clear.
    let rtcp: Vec<_> = ours
        .iter()
        .filter(|g| g.src.port() % 2 == 1 && (rtp_base..rtp_base + 40).contains(&g.src.port()))
        .collect();
    for g in &rtcp {
        assert!(
            !contains(&g.payload, b"trunkline"),
            "RTCP SDES CNAME in clear: not SRTCP"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_allowed_falls_back_to_plain_rtp_after_488() {
    let pki = pki();
    let dir = Scratch::new("allowed");
    let (d, _) = deploy_secure(
        &pki,
        &dir,
        trunk(&pki, TrunkSrtp::Off, |_| {}),
        MediaEncryption::Allowed,
        1,
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 25).await;
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.iter().any(|c| c.ended_by.as_deref() == Some("local_bye"))
        })
        .await;
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert!(calls[0].offered_srtp && calls[0].final_status == Some(488));
    assert!(!calls[1].offered_srtp && calls[1].final_status == Some(200));
    assert!(calls[1].srtp.is_none());
    assert!(loud_frames(&calls[1].received_audio()).len() >= 25);
    assert_uplink_exact(&d).await;
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    assert!(!rec.media_security.encrypted);
    let metrics = CallService::metrics(&d.gateway);
    assert!(
        metrics.contains("trunkline_srtp_negotiation_total{outcome=\"plain_retry\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_488_cases_required_against_plain_and_disabled_against_required() {
    let pki = pki();
    for (slot, (trunk_srtp, enc)) in [
        (TrunkSrtp::Off, MediaEncryption::Required),
        (TrunkSrtp::Required, MediaEncryption::Disabled),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = Scratch::new("488");
        let (d, _) = deploy_secure(
            &pki,
            &dir,
            trunk(&pki, trunk_srtp, |_| {}),
            enc,
            2 + slot as u16,
        )
        .await;
        let sid = d.call("+33612345678").await;
        let rec = d.finished(&sid, 15).await;
        assert!(
            // A 488 to the INVITE ends the call as `media_failed` (no SDP could be agreed).
            matches!(&rec.end_cause, Some(EndCause::MediaFailed { detail }) if detail.contains("488")),
            "{enc:?}: {:?}",
            rec.end_cause
        );
        assert_eq!(rec.status, "failed");
        let calls = d.trunk.calls();
        assert_eq!(calls.len(), 1, "no second INVITE: {calls:#?}");
        assert_eq!(calls[0].offered_srtp, enc == MediaEncryption::Required);
        assert_eq!(calls[0].final_status, Some(488));
    }
}

/// The trunk calls the gateway's TLS listener (origination, Secure Trunking).
fn originate_tls(d: &Deployment, sid: &str) {
    d.trunk.originate(Originate {
        gateway: d.gateway.sip_addr(TransportKind::Tls).expect("gateway tls"),
        from: "+14155550123".into(),
        to: "+15005550006".into(),
        call_sid: sid.into(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_required_srtp_over_tls_is_answered_with_srtp_and_audio_flows_both_ways() {
    let pki = pki();
    let dir = Scratch::new("in");
    let (d, _) = deploy_secure(
        &pki,
        &dir,
        trunk(&pki, TrunkSrtp::Required, |t| {
            t.play_delay = Duration::from_millis(3500);
            t.hangup_after = Some(Duration::from_secs(9));
        }),
        MediaEncryption::Required,
        4,
    )
    .await;
    let start = Instant::now();
    originate_tls(&d, "CAsecure0001");
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(20), |c| {
            c.first().is_some_and(|c| c.ended_at.is_some())
        })
        .await;
    let c = &calls[0];
    assert_eq!(c.final_status, Some(200), "{c:?}");
    assert!(c.answered_at.is_some_and(|t| t > start));
    assert_eq!(c.transport, Some(TransportKind::Tls));
    assert!(c.srtp.is_some(), "answered with SRTP");
    assert_eq!(c.srtp_failures, 0);
    assert!(
        loud_frames(&c.received_audio()).len() >= 25,
        "the agent greeted the caller through SRTP"
    );
    assert_uplink_exact(&d).await;
    // The gateway's record of the call says SRTP (counted when the call task ends).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = CallService::metrics(&d.gateway);
        if metrics.contains("trunkline_calls_encrypted_total{suite=\"AES_CM_128_HMAC_SHA1_80\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_488_cases_srtp_when_disabled_and_plain_when_required() {
    let pki = pki();
    for (slot, (trunk_srtp, enc)) in [
        (TrunkSrtp::Required, MediaEncryption::Disabled),
        (TrunkSrtp::Off, MediaEncryption::Required),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = Scratch::new("in488");
        let (d, _) = deploy_secure(
            &pki,
            &dir,
            trunk(&pki, trunk_srtp, |_| {}),
            enc,
            5 + slot as u16,
        )
        .await;
        originate_tls(&d, "CAsecure0002");
        let calls = d
            .trunk
            .wait_for(Duration::from_secs(10), |c| {
                c.first().is_some_and(|c| c.final_status.is_some())
            })
            .await;
        assert_eq!(calls[0].final_status, Some(488), "{enc:?}: {calls:#?}");
        let metrics = CallService::metrics(&d.gateway);
        assert!(
            metrics.contains("trunkline_srtp_negotiation_total{outcome=\"policy_refused\"} 1"),
            "{metrics}"
        );
    }
}

/// The RTP address of the SDP in `body` (first `c=` and the first `m=audio` port).
fn sdp_rtp_addr(body: &str) -> Option<std::net::SocketAddr> {
    let ip = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split(' ')
        .next()?;
    format!("{ip}:{port}").parse().ok()
}

/// libsrtp2 (pylibsrtp) as the phone: mid-call, 2 s of µ-law speech protected by libsrtp with
/// the phone's SDES key (the trunk's, from its SDP answer) go to the gateway's RTP port from a
/// socket of ours; the agent hears them sample-exact. One tampered copy (a payload bit flipped),
/// sent just before its genuine packet, is dropped and counted in the record and the metrics.
/// The trunk itself sends no RTP on this call (its playback starts after the call ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_required_accepts_libsrtp_protected_packets_and_drops_a_tampered_one() {
    if !have_pylibsrtp() {
        return;
    }
    let pki = pki();
    let dir = Scratch::new("libsrtp");
    let (d, _) = deploy_secure(
        &pki,
        &dir,
        trunk(&pki, TrunkSrtp::Required, |t| {
            t.play_delay = Duration::from_secs(600);
            t.hangup_after = Some(Duration::from_secs(9));
            // No early media from the trunk's own RTP socket: the gateway would latch onto it,
            // and symmetric RTP rightly refuses another source (our libsrtp socket) until the
            // latched one has been quiet for `relatch_after` (2 s), i.e. most of our 100 packets.
            t.early_media = false;
        }),
        MediaEncryption::Required,
        7,
    )
    .await;
    let sid = d.call("+33612345678").await;
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(20), |c| {
            c.iter()
                .any(|c| c.final_status == Some(200) && c.srtp.is_some())
        })
        .await;
    let t = only_call(&calls);
    let (trunk_key, gw_key) = t.srtp.clone().expect("SRTP agreed");
    let invite = d
        .trunk
        .received_sip(t)
        .into_iter()
        .find(|m| m.start_line.starts_with("INVITE ") && !m.body.is_empty())
        .expect("the gateway's INVITE with its offer");
    let gw_rtp = sdp_rtp_addr(&invite.body).expect("RTP address in the offer");

    // 100 packets of speech from its first loud frame, our own SSRC and sequence numbers.
    let play = speech();
    let frames: Vec<&[u8]> = play
        .packets
        .iter()
        .filter(|p| p.law == Some(G711::Ulaw) && p.payload.len() == 160)
        .map(|p| p.payload.as_slice())
        .skip_while(|f| !f.iter().any(|&c| G711::Ulaw.decode(c).abs() > 1000))
        .take(100)
        .collect();
    assert_eq!(frames.len(), 100, "2 s of speech in the capture");
    let plain: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let h = trunkline_media::rtp::RtpHeader {
                marker: i == 0,
                payload_type: 0,
                sequence: 20_000 + i as u16,
                timestamp: 0x0bad_0000 + 160 * i as u32,
                ssrc: 0x5eed_1b52,
            };
            let mut out = vec![0u8; 12 + f.len()];
            let n = trunkline_media::rtp::write_rtp(&h, f, &mut out).expect("rtp");
            out.truncate(n);
            out
        })
        .collect();
    let protected: Vec<Vec<u8>> =
        libsrtp_rtp(&dir, "phone-to-gw.rtp.hex", "protect", &trunk_key, &plain)
            .into_iter()
            .map(|r| r.expect("libsrtp protects"))
            .collect();
    // libsrtp's output is SRTP for our stack too (same key, same suite).
    let mut check = SrtpSession::new(&gw_key, &trunk_key).expect("keys");
    assert_eq!(
        check.unprotect_rtp(&protected[0]).ok().as_deref(),
        Some(plain[0].as_slice())
    );
    const TAMPERED: usize = 50;
    let mut tampered = protected[TAMPERED].clone();
    tampered[12 + 40] ^= 0x01;

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("phone socket");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (i, p) in protected.iter().enumerate() {
        tick.tick().await;
        if i == TAMPERED {
            sock.send_to(&tampered, gw_rtp).await.expect("send");
        }
        sock.send_to(p, gw_rtp).await.expect("send");
    }
    // The gateway latched on our socket and sends us its SRTP; libsrtp decrypts that too.
    let mut from_gw = Vec::new();
    let mut buf = vec![0u8; 2048];
    while from_gw.len() < 20 {
        match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
            Ok(Ok(n)) => from_gw.push(buf[..n].to_vec()),
            _ => break,
        }
    }
    // (What it sends there depends on the agent's timing: checked when there is some.)
    eprintln!(
        "{} gateway packets reached the latched libsrtp peer",
        from_gw.len()
    );
    if !from_gw.is_empty() {
        let down = libsrtp_rtp(&dir, "gw-to-phone.srtp.hex", "unprotect", &gw_key, &from_gw);
        assert!(
            down.iter().all(Result::is_ok),
            "libsrtp decrypts the gateway's packets to the latched peer: {down:?}"
        );
    }

    let rec = d.finished(&sid, 25).await;
    // The agent heard the 100 frames (µ-law passthrough), in order and sample-exact.
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    let heard = &agent[0].caller_audio;
    let sent: Vec<i16> = frames
        .iter()
        .flat_map(|f| f.iter().map(|&c| G711::Ulaw.decode(c)))
        .collect();
    // Matched from frame 10 on: the very first frames of a new stream may meet the jitter
    // buffer's start (seen once in CI on a loaded machine: the first frame was not found).
    // Frames 10–99 include the tampered one's slot (50): a tampered packet played instead of
    // its genuine twin would break the exact match.
    const FROM: usize = 10 * 160;
    let sent = &sent[FROM..];
    let at = heard
        .windows(160)
        .position(|w| w == &sent[..160])
        .expect("the libsrtp-protected speech reached the agent");
    // Sample-exact but for quiet frames the jitter buffer may skip to settle at the line's
    // delay: a tampered frame played would differ from its genuine twin and fail the walk.
    let skipped = common::assert_relayed_except_quiet_frames(heard, sent, 0, 2);
    assert!(
        heard.len() + skipped >= at + sent.len(),
        "heard {} samples from frame 10 ({skipped} quiet skipped), sent {}",
        heard.len() - at,
        sent.len()
    );
    assert!(rec.media_security.encrypted, "{:?}", rec.media_security);
    assert_eq!(
        rec.media_security.auth_failures, 1,
        "the tampered packet, and only it, failed authentication"
    );
    let metrics = CallService::metrics(&d.gateway);
    assert!(
        metrics.contains("trunkline_srtp_auth_failures_total 1\n")
            || metrics.ends_with("trunkline_srtp_auth_failures_total 1"),
        "{metrics}"
    );
}
