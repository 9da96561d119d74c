//! baresip (Debian `baresip`, a SIP UA we did not write, with libre's TLS and its own SDES-SRTP)
//! as the far end of a secure trunk: SIP over TLS both ways, `mediaenc=srtp-mand`, audio checked
//! by content both ways.
//!
//! baresip writes its default route's source address into its SDP, so each test runs in its own
//! network namespace where `lo` is the default route (`unshare -n`; the test re-executes its own
//! binary there): the gateway, the agent emulator and baresip all live on 127.0.0.1 of that
//! namespace, and nothing can leave it.
//!
//! - outbound: the gateway dials baresip (auto-answer) over TLS; baresip plays a known WAV
//!   (`aufile`) and records what it hears (`sndfile`);
//! - inbound: baresip dials the gateway's TLS listener.
//!
//! Checked both ways: the µ-law of the agent's phrase is found in what baresip recorded, and what
//! the agent heard correlates with the WAV baresip played.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Deployment, deploy_with_trunk, speech_samples};
use trunkline_emulators::agent::{AgentEmulatorConfig, TestIdentity};
use trunkline_emulators::trunk::TrunkConfig;
use trunkline_gateway::api::{CallService, ListQuery};
use trunkline_gateway::config::{MediaEncryption, SipTransport};
use trunkline_media::g711::G711;
use trunkline_sip::transaction::TransportKind;

const NETNS_ENV: &str = "TRUNKLINE_TEST_NETNS";

/// True inside the namespace this file's tests re-execute themselves in.
fn in_netns() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Whether baresip and unshare are usable; in CI they must be.
fn tools_present() -> bool {
    let ok = |c: &str, a: &str| {
        Command::new(c)
            .arg(a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let present = ok("baresip", "-h") && ok("unshare", "--version") && ok("ip", "-V");
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "baresip, unshare and ip are required in CI (.ci/run installs baresip)"
        );
        eprintln!("SKIP: baresip/unshare/ip not installed");
    }
    present
}

/// Runs test `name` of this binary again inside a fresh network namespace whose default route is
/// `lo`, and asserts it passed.
fn rerun_in_netns(name: &str) {
    if !tools_present() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && ip route add default dev lo && exec \"$@\"",
            "sh",
        ])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(NETNS_ENV, "1")
        .output()
        .expect("unshare");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} in its namespace:\n{text}"
    );
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("trunkline-baresip-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch");
        Scratch(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, data: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write");
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("TRUNKLINE_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The phone's words: the test capture's µ-law decoded, 8 kHz.
fn phone_samples() -> Vec<i16> {
    speech_samples()
}

fn write_wav(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("wav");
    for &s in samples {
        w.write_sample(s).expect("sample");
    }
    w.finalize().expect("wav");
}

/// A running baresip, killed at drop.
struct Baresip {
    child: Child,
    log: PathBuf,
}

impl Baresip {
    /// baresip on `127.0.0.1:sip_port` (TLS on `sip_port + 1`) with `identity` as its TLS
    /// certificate, trusting `ca_pem`, playing `play`, recording into `dir`; extra `-e` commands.
    fn start(
        dir: &Scratch,
        sip_port: u16,
        identity: &TestIdentity,
        ca_pem: &str,
        play: &Path,
        commands: &[String],
    ) -> Baresip {
        let cert = format!("{}{}", identity.cert_pem(), identity.key_pem());
        let cert = dir.write("baresip.pem", &cert);
        let ca = dir.write("ca.pem", ca_pem);
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{sip_port}\n\
             sip_certificate {cert}\n\
             sip_cafile {ca}\n\
             audio_player alsa,null\n\
             audio_alert alsa,null\n\
             audio_source aufile,{play}\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module alsa.so\n\
             module sndfile.so\n\
             module srtp.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             snd_path {dir}\n",
            play = play.display(),
            dir = dir.0.display()
        );
        dir.write("config", &config);
        dir.write(
            "accounts",
            "<sip:+33612345678@127.0.0.1;transport=tls>;regint=0;answermode=auto;mediaenc=srtp-mand\n",
        );
        let log = dir.path("baresip.log");
        let out = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("baresip");
        cmd.arg("-f").arg(&dir.0).args(["-t", "40", "-v"]);
        for c in commands {
            cmd.args(["-e", c]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("baresip");
        let b = Baresip { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !b.log_text().contains("baresip is ready") {
            assert!(
                Instant::now() < deadline,
                "baresip not ready:\n{}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ends baresip (SIGTERM: it hangs up and closes its files) and returns its log.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What baresip heard: its `sndfile` decoder dump, 8 kHz PCM16.
fn baresip_heard(dir: &Scratch) -> Vec<i16> {
    baresip_dump(dir, "dec")
}

/// What baresip sent: its `sndfile` encoder dump (the audio its µ-law encoder was given, after
/// its `aufile` source: under load that source may itself lose or repeat a stretch).
fn baresip_sent(dir: &Scratch) -> Vec<i16> {
    baresip_dump(dir, "enc")
}

/// One of baresip's `sndfile` dumps (`dec`: what it decoded; `enc`: what it encoded).
fn baresip_dump(dir: &Scratch, kind: &str) -> Vec<i16> {
    let suffix = format!("-{kind}.wav");
    let file = std::fs::read_dir(&dir.0)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dump-") && n.ends_with(&suffix))
        })
        .expect("baresip's sndfile dump");
    let mut r = hound::WavReader::open(&file).expect("wav");
    assert_eq!(r.spec().sample_rate, 8000, "{:?}", r.spec());
    r.samples::<i16>().map_while(Result::ok).collect()
}

/// The agent's phrase reached baresip: two half-second stretches of its speech (decoded)
/// correlate with what baresip decoded (≥ 0.95; libre's own G.711 tables, so not bit-exact).
fn assert_agent_heard_by_baresip(d: &Deployment, heard: &[i16]) {
    let phrase: Vec<i16> = d
        .agent
        .response_audio()
        .iter()
        .map(|&b| G711::Ulaw.decode(b))
        .collect();
    let loud: Vec<usize> = phrase
        .chunks_exact(160)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|s| s.abs() > 2000))
        .map(|(i, _)| i * 160)
        .collect();
    assert!(loud.len() > 25, "the phrase has speech");
    for at in [loud[0], loud[loud.len() / 2]] {
        let probe = &phrase[at..(at + 4000).min(phrase.len())];
        let c = best_correlation(heard, probe);
        assert!(
            c > 0.95,
            "baresip heard the agent's phrase at {at}: correlation {c:.3} ({} samples recorded)",
            heard.len()
        );
    }
}

/// Normalised cross-correlation of `needle` against every offset of `hay`: the best, and where.
fn best_correlation_at(hay: &[i16], needle: &[i16]) -> (f64, usize) {
    let n: Vec<f64> = needle.iter().map(|&x| f64::from(x)).collect();
    let nn = n.iter().map(|x| x * x).sum::<f64>().sqrt();
    let h: Vec<f64> = hay.iter().map(|&x| f64::from(x)).collect();
    let (mut best, mut at) = (0.0f64, 0);
    for off in 0..h.len().saturating_sub(n.len()) {
        let w = &h[off..off + n.len()];
        let ww = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if ww == 0.0 {
            continue;
        }
        let dot: f64 = w.iter().zip(&n).map(|(a, b)| a * b).sum();
        let c = dot / (ww * nn);
        if c > best {
            (best, at) = (c, off);
        }
    }
    (best, at)
}

fn best_correlation(hay: &[i16], needle: &[i16]) -> f64 {
    best_correlation_at(hay, needle).0
}

/// baresip's words reached the agent: the first loud second of what baresip sent (its encoder's
/// input) is found in what the agent heard, 100 ms piece by piece, each with correlation ≥ 0.95
/// (baresip's own µ-law encoder, our passthrough) and each where the one before says it should
/// be.
///
/// The gateway's jitter buffer may repair the line: conceal a frame for a packet that came late
/// (or never), which adds delay that it later gives back by skipping a quiet frame. Each such
/// repair patches or shifts the audio once, spoiling at most one piece (missing, or not where
/// the piece before says); a time slip inside one whole-second probe would drop its correlation
/// to ~0.7, which is why the pieces are short. So the pieces spoiled must not outnumber twice the
/// underruns and late packets plus the frames dropped by force that the call record counts: with
/// none counted, every piece is there, in sequence. (The quiet frames skipped while the buffer
/// relaxes from its 60 ms start fall in the 4 s of silence before the speech.)
async fn assert_baresip_heard_by_agent(
    d: &Deployment,
    rec: &trunkline_call::CallRecord,
    sent: &[i16],
    played: &[i16],
) {
    const PIECE: usize = 800;
    let agent = d.agent_finished(1, Duration::from_secs(10)).await;
    let heard = &agent[0].caller_audio;
    let first_loud = sent
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("baresip sent speech");
    let probe = &sent[first_loud * 160..(first_loud * 160 + 8000).min(sent.len())];
    // Not asserted (baresip's business, not the gateway's), but said when the test fails.
    let sent_as_played = played.windows(probe.len()).any(|w| w == probe);
    // (piece, correlation, offset in what the agent heard), the loud pieces only.
    let pieces: Vec<(usize, f64, usize)> = probe
        .chunks_exact(PIECE)
        .enumerate()
        .filter(|(_, p)| p.iter().any(|s| s.abs() > 1000))
        .map(|(i, p)| {
            let (c, at) = best_correlation_at(heard, p);
            (i, c, at)
        })
        .collect();
    let found = |&(_, c, _): &(usize, f64, usize)| c > 0.95;
    let missing = pieces.iter().filter(|p| !found(p)).count();
    // Consecutive pieces found, each where the one before says it should be (quiet pieces
    // between them skipped: a frame lost there counts too).
    let found_pieces: Vec<_> = pieces.iter().filter(|p| found(p)).collect();
    let out_of_sequence = found_pieces
        .windows(2)
        .filter(|w| w[1].2 != w[0].2 + (w[1].0 - w[0].0) * PIECE)
        .count();
    let up = &rec.uplink;
    let repairs = 2 * (up.underruns + up.late) + up.dropped_forced_samples.div_ceil(160);
    let why = format!(
        "the agent heard baresip's speech: 100 ms pieces (piece, correlation, offset) \
         {pieces:.3?}; {missing} missing, {out_of_sequence} out of sequence; {} samples heard; \
         the gateway's uplink: {up:?}; baresip sent this second as its WAV has it: \
         {sent_as_played}",
        heard.len()
    );
    assert!(pieces.len() >= 5, "too little speech: {why}");
    assert!(
        (missing + out_of_sequence) as u64 <= repairs,
        "more pieces spoiled than repairs counted: {why}"
    );
    assert!(missing * 5 <= pieces.len(), "most pieces missing: {why}");
}

fn free_port() -> u16 {
    // Two consecutive free ports (SIP, and TLS on SIP + 1) in this namespace.
    for _ in 0..100 {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p < 60000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

struct Setup {
    dir: Scratch,
    gateway_id: TestIdentity,
    baresip_id: TestIdentity,
    played: Vec<i16>,
    play: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = Scratch::new(tag);
    // 4 s of silence first: the agent's greeting (2.9 s) plays out before baresip speaks (its
    // speech would barge in and cut the greeting short).
    let mut played = vec![0i16; 4 * 8000];
    played.extend(phone_samples());
    let play = dir.path("play.wav");
    write_wav(&play, &played);
    Setup {
        dir,
        gateway_id: TestIdentity::generate(&["127.0.0.1", "localhost"]).expect("cert"),
        baresip_id: TestIdentity::generate(&["127.0.0.1", "localhost"]).expect("cert"),
        played,
        play,
    }
}

/// The gateway: TLS listener, trunk = baresip over TLS, SRTP required, calls capped at 10 s.
async fn gateway(s: &Setup, baresip_sip: u16) -> Deployment {
    let gw_dir = Scratch::new("gw");
    let cert = gw_dir.write("cert.pem", s.gateway_id.cert_pem());
    let key = gw_dir.write("key.pem", s.gateway_id.key_pem());
    let ca = gw_dir.write("ca.pem", s.baresip_id.cert_pem());
    let d = deploy_with_trunk(
        TrunkConfig::default(),
        AgentEmulatorConfig::default(),
        |cfg, _| {
            cfg.trunk.transport = SipTransport::Tls;
            cfg.trunk.termination_uri = format!("sip:127.0.0.1:{}", baresip_sip + 1);
            cfg.trunk.outbound_proxy = None;
            cfg.trunk.tls_ca_file = Some(ca.clone());
            cfg.trunk.media_encryption = MediaEncryption::Required;
            cfg.sip.transports = vec![SipTransport::Udp, SipTransport::Tls];
            cfg.sip.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
            cfg.sip.tls_cert = Some(cert.clone());
            cfg.sip.tls_key = Some(key.clone());
            cfg.agent.max_call_secs = 10;
            cfg.rtp.port_min = 20000;
            cfg.rtp.port_max = 20100;
        },
    )
    .await;
    // The files were read at start.
    drop(gw_dir);
    d
}

fn netns_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn outbound_gateway_dials_baresip_over_tls_with_srtp() {
    if !in_netns() {
        return rerun_in_netns("outbound_gateway_dials_baresip_over_tls_with_srtp");
    }
    netns_runtime().block_on(async {
        let s = setup("out");
        let port = free_port();
        let bare = Baresip::start(
            &s.dir,
            port,
            &s.baresip_id,
            s.gateway_id.cert_pem(),
            &s.play,
            &[],
        );
        let d = gateway(&s, port).await;
        let sid = d.call("+33612345678").await;
        let rec = d.finished(&sid, 30).await;
        let log = bare.stop();
        assert_eq!(rec.status, "completed", "{rec:?}\n{log}");
        assert!(
            rec.media_security.encrypted,
            "{:?}\n{log}",
            rec.media_security
        );
        assert_eq!(rec.media_security.auth_failures, 0, "{log}");
        assert!(log.contains("srtp"), "{log}");
        assert_agent_heard_by_baresip(&d, &baresip_heard(&s.dir));
        assert_baresip_heard_by_agent(&d, &rec, &baresip_sent(&s.dir), &s.played).await;
    });
}

#[test]
fn inbound_baresip_dials_the_gateway_over_tls_with_srtp() {
    if !in_netns() {
        return rerun_in_netns("inbound_baresip_dials_the_gateway_over_tls_with_srtp");
    }
    netns_runtime().block_on(async {
        let s = setup("in");
        let port = free_port();
        let d = gateway(&s, port).await;
        let gw_tls = d.gateway.sip_addr(TransportKind::Tls).expect("tls");
        let bare = Baresip::start(
            &s.dir,
            port,
            &s.baresip_id,
            s.gateway_id.cert_pem(),
            &s.play,
            &[format!("/dial sip:+15005550006@{gw_tls};transport=tls")],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let rec = loop {
            let done = CallService::list(&d.gateway, ListQuery::default())
                .await
                .into_iter()
                .find(|r| r.direction == "inbound" && r.is_final());
            if let Some(r) = done {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "no finished inbound call\n{}",
                bare.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let log = bare.stop();
        assert_eq!(rec.status, "completed", "{rec:?}\n{log}");
        assert!(
            rec.media_security.encrypted,
            "{:?}\n{log}",
            rec.media_security
        );
        assert_agent_heard_by_baresip(&d, &baresip_heard(&s.dir));
        assert_baresip_heard_by_agent(&d, &rec, &baresip_sent(&s.dir), &s.played).await;
    });
}
