//! `trunkline demo`: the embedded default. On loopback it starts the gateway, a Twilio-like trunk
//! emulator and an ElevenLabs-like agent emulator, places one outbound call through the real HTTP
//! trigger, lets the agent greet, the phone answer with a real speech capture (which barges in on
//! the greeting), and the agent end the call. It prints what happened — setup times, answer →
//! first agent audio, gateway-added latency both ways, packets, loss, jitter, transcript — and
//! writes a stereo WAV (caller left, agent right).
//!
//! Everything is real sockets on 127.0.0.1: SIP over UDP with a digest challenge, RTP, a
//! WebSocket, HTTP. No account, no key, no network beyond loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trunkline_call::CallRecord;
use trunkline_call::agent::AudioFormat;
use trunkline_call::media::G711;
use trunkline_emulators::agent::audio::{encode_for, phrase_16k};
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig, ConnectionRecord, Script};
use trunkline_emulators::trunk::{PlaySource, TrunkCall, TrunkConfig, TrunkEmulator};

use crate::config::{Config, ConnectAt, Secrets, SipTransport};
use crate::server::Server;

/// The speech the phone says (a real PCMU capture, shipped in the binary).
const SPEECH_PCAP: &[u8] =
    include_bytes!("../../../tests/data/pcap/derived/pcmu_speech_from_sip-rtp-g711.pcap");

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where to write the stereo recording.
    pub wav: PathBuf,
    /// The agent's audio format (`ulaw_8000` passthrough, or a PCM rate to exercise transcoding).
    pub agent_format: AudioFormat,
    /// Connect the agent at ringing instead of at answer.
    pub connect_at_ringing: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            wav: PathBuf::from("demo-call.wav"),
            agent_format: AudioFormat::Ulaw8000,
            connect_at_ringing: false,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The gateway's record of the call.
    pub record: CallRecord,
    /// What the phone side saw.
    pub phone: TrunkCall,
    /// What the agent side saw.
    pub agent: ConnectionRecord,
    /// HTTP request sent → first INVITE received by the trunk.
    pub trigger_to_invite: Option<Duration>,
    /// Answer (200 OK sent by the phone) → first agent audio packet at the phone.
    pub answer_to_first_audio: Option<Duration>,
    /// Gateway-added latency, phone RTP sent → the same audio received by the agent.
    pub uplink_latency: Vec<Duration>,
    /// Gateway-added latency, agent response's first chunk sent → its first RTP packet at the phone.
    pub downlink_latency: Vec<Duration>,
    /// Inter-packet gaps at the phone minus 20 ms, absolute.
    pub pacing_error: Vec<Duration>,
}

/// Run the demo.
pub async fn run(opts: &DemoOptions) -> Result<DemoReport, String> {
    let mut speech = speech_source()?;
    // The caller's first sentence (then the phone stays quiet, sending silence).
    first_sentence(&mut speech);
    let trunk = TrunkEmulator::start(TrunkConfig {
        credentials: Some(("demo".into(), "demo-password".into())),
        play: speech.clone(),
        // The phone picks up and starts talking over the greeting: a barge-in.
        play_delay: Duration::from_millis(1200),
        hangup_after: Some(Duration::from_secs(40)),
        ..TrunkConfig::default()
    })
    .await
    .map_err(|e| format!("trunk emulator: {e}"))?;
    let agent = AgentEmulator::start(
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        AgentEmulatorConfig {
            input_format: opts.agent_format,
            output_format: opts.agent_format,
            script: Script {
                end_after_turns: Some(1),
                ..Script::default()
            },
            ..AgentEmulatorConfig::default()
        },
    )
    .await
    .map_err(|e| format!("agent emulator: {e}"))?;

    let mut cfg = Config::default();
    cfg.sip.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    cfg.sip.transports = vec![SipTransport::Udp];
    cfg.trunk.termination_uri = "sip:demo.pstn.twilio.com".into();
    cfg.trunk.outbound_proxy = Some(trunk.addr().to_string());
    cfg.trunk.username = Some("demo".into());
    cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
    cfg.rtp.bind_ip = "127.0.0.1".parse().map_err(|e| format!("{e}"))?;
    cfg.agent.base_url = agent.ws_base_url();
    cfg.agent.agent_id = "agent_demo".into();
    cfg.records.database_url = "sqlite::memory:".into();
    if opts.connect_at_ringing {
        cfg.agent.connect_at = ConnectAt::Ringing;
    }
    let secrets = Secrets {
        trunk_password: Some("demo-password".into()),
        api_tokens: vec![("demo".into(), "demo-token-0123456789".into())],
        ..Secrets::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("http: {e}"))?;
    let server = Server::start_on(cfg.clone(), secrets.clone(), listener)
        .await
        .map_err(|e| e.to_string())?;
    let http = server.http_addr();
    let gateway = server.gateway().clone();

    // The widget's request.
    let triggered = Instant::now();
    let (status, body) = post_json(
        http,
        "/api/call/outbound",
        &[("Authorization", "Bearer demo-token-0123456789")],
        r#"{"phoneNumber": "+33612345678"}"#,
    )
    .await?;
    if status != 200 {
        return Err(format!("trigger answered {status}: {body}"));
    }
    let sid = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| j["call_sid"].as_str().map(str::to_owned))
        .ok_or("no call_sid in the answer")?;
    let record = gateway
        .wait_call(&sid, Duration::from_secs(60))
        .await
        .ok_or("no record")?;
    let phones = trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_at.is_some())
        })
        .await;
    let phone = phones.into_iter().next().ok_or("the trunk saw no call")?;
    let agent_rec = agent
        .wait_finished(1, Duration::from_secs(3))
        .await
        .into_iter()
        .next()
        .ok_or("the agent saw no conversation")?;

    let report = measure(
        record,
        phone,
        agent_rec,
        triggered,
        &speech,
        opts.agent_format,
    );
    write_wav(&opts.wav, &report, &speech).map_err(|e| format!("{}: {e}", opts.wav.display()))?;
    Ok(report)
}

/// Keep the capture up to its first pause of 600 ms or more after speech started.
fn first_sentence(src: &mut PlaySource) {
    let loud: Vec<bool> = src
        .packets
        .iter()
        .map(|p| {
            p.law
                .is_some_and(|l| p.payload.iter().any(|&c| l.decode(c).abs() > 1500))
        })
        .collect();
    let Some(start) = loud.iter().position(|&l| l) else {
        return;
    };
    let mut quiet = 0;
    for (i, &l) in loud.iter().enumerate().skip(start) {
        quiet = if l { 0 } else { quiet + 1 };
        if quiet >= 30 {
            src.packets.truncate(i + 1 - quiet);
            return;
        }
    }
}

fn speech_source() -> Result<PlaySource, String> {
    let dir = std::env::temp_dir().join(format!("trunkline-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("speech.pcap");
    std::fs::write(&path, SPEECH_PCAP).map_err(|e| e.to_string())?;
    let src = PlaySource::from_pcap(&path).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    src
}

fn measure(
    record: CallRecord,
    phone: TrunkCall,
    agent: ConnectionRecord,
    triggered: Instant,
    speech: &PlaySource,
    format: AudioFormat,
) -> DemoReport {
    // Answer → first agent audio at the phone.
    let first_audio = phone.loud_packets(1000).first().copied();
    let answer_to_first_audio = phone
        .answered_at
        .zip(first_audio)
        .map(|(a, f)| f.saturating_duration_since(a));
    let trigger_to_invite = phone
        .first_invite_at
        .map(|i| i.saturating_duration_since(triggered));

    // Uplink: match the newest 20 ms of each chunk the agent received to the capture packet it
    // came from (µ-law passthrough keeps the audio sample-exact).
    let mut uplink_latency = Vec::new();
    if format == AudioFormat::Ulaw8000 {
        let mut by_frame: HashMap<Vec<i16>, usize> = HashMap::new();
        for (k, p) in speech.packets.iter().enumerate() {
            if p.law.is_some() && p.payload.len() == 160 {
                let frame: Vec<i16> = p.payload.iter().map(|&c| G711::Ulaw.decode(c)).collect();
                if frame.iter().any(|s| s.abs() > 300) {
                    by_frame.entry(frame).or_insert(k);
                }
            }
        }
        let ends: Vec<usize> = agent
            .caller_chunks
            .iter()
            .skip(1)
            .map(|(_, off)| *off)
            .chain(std::iter::once(agent.caller_audio.len()))
            .collect();
        for ((arrived, _), end) in agent.caller_chunks.iter().zip(ends) {
            // Try each 160-sample window ending in this chunk, newest first.
            for back in 0..4 {
                let hi = end.saturating_sub(back * 160);
                if hi < 160 {
                    break;
                }
                let win = &agent.caller_audio[hi - 160..hi];
                if let Some(&k) = by_frame.get(win)
                    && let Some(sent) = phone.sent_at.get(k)
                {
                    uplink_latency.push(arrived.saturating_duration_since(*sent));
                    break;
                }
            }
        }
    }

    // Downlink: the first frame of each response, from its first chunk on the socket to the phone.
    let mut downlink_latency = Vec::new();
    let phrase = encode_for(AudioFormat::Ulaw8000, &phrase_16k());
    if format == AudioFormat::Ulaw8000 && phrase.len() >= 160 {
        let first = &phrase[..160];
        for start in &agent.response_starts {
            if let Some(p) = phone
                .rtp_in
                .iter()
                .find(|p| p.at >= *start && p.payload == first)
            {
                downlink_latency.push(p.at.saturating_duration_since(*start));
            }
        }
    }

    // Pacing at the phone.
    let pacing_error = phone
        .rtp_in
        .windows(2)
        .map(|w| {
            let gap = w[1].at.saturating_duration_since(w[0].at);
            gap.abs_diff(Duration::from_millis(20))
        })
        .collect();

    DemoReport {
        record,
        phone,
        agent,
        trigger_to_invite,
        answer_to_first_audio,
        uplink_latency,
        downlink_latency,
        pacing_error,
    }
}

fn write_wav(path: &Path, r: &DemoReport, speech: &PlaySource) -> Result<(), hound::Error> {
    let Some(t0) = r.phone.answered_at else {
        return Ok(());
    };
    let end = r
        .phone
        .ended_at
        .unwrap_or_else(|| t0 + Duration::from_secs(30));
    let n = (end.saturating_duration_since(t0).as_secs_f64() * 8000.0) as usize + 160;
    let mut left = vec![0i16; n];
    let mut right = vec![0i16; n];
    let place = |buf: &mut [i16], at: Instant, law: G711, payload: &[u8]| {
        let off = (at.saturating_duration_since(t0).as_secs_f64() * 8000.0) as usize;
        for (i, &c) in payload.iter().enumerate() {
            if let Some(s) = buf.get_mut(off + i) {
                *s = law.decode(c);
            }
        }
    };
    for (k, sent) in r.phone.sent_at.iter().enumerate() {
        if let Some(p) = speech.packets.get(k)
            && let Some(law) = p.law
        {
            place(&mut left, *sent, law, &p.payload);
        }
    }
    let law = r.phone.law.unwrap_or(G711::Ulaw);
    for p in &r.phone.rtp_in {
        if p.pt == law.payload_type() {
            place(&mut right, p.at, law, &p.payload);
        }
    }
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for (l, rr) in left.iter().zip(&right) {
        w.write_sample(*l)?;
        w.write_sample(*rr)?;
    }
    w.finalize()
}

/// Percentile of durations, in ms.
pub fn pct(v: &[Duration], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s.get(i).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn dist(v: &[Duration]) -> String {
    match (pct(v, 50.0), pct(v, 99.0), pct(v, 100.0)) {
        (Some(a), Some(b), Some(c)) => {
            format!(
                "p50 {a:.1} ms, p99 {b:.1} ms, max {c:.1} ms (n={})",
                v.len()
            )
        }
        _ => "—".into(),
    }
}

/// A readable summary.
pub fn summary(r: &DemoReport, wav: &Path) -> String {
    use std::fmt::Write;
    let rec = &r.record;
    let t = &rec.timestamps;
    let since = |a: Option<u64>, b: Option<u64>| {
        a.zip(b)
            .map(|(a, b)| format!("{} ms", b.saturating_sub(a)))
            .unwrap_or_else(|| "—".into())
    };
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "Trunkline demo: one outbound call on loopback\n");
    let _ = writeln!(w, "  call_sid          {}", rec.call_sid);
    let _ = writeln!(
        w,
        "  conversation_id   {}",
        rec.conversation_id.as_deref().unwrap_or("—")
    );
    let _ = writeln!(
        w,
        "  outcome           {} ({}), SIP {}",
        rec.status,
        rec.end_cause.as_ref().map_or("—", |c| c.label()),
        rec.sip_status.map_or("—".into(), |c| c.to_string())
    );
    let _ = writeln!(
        w,
        "  SIP               INVITE ×{} (407 digest challenge: {})",
        r.phone.invites,
        match r.phone.auth_ok {
            Some(true) => "answered correctly",
            Some(false) => "WRONG",
            None => "none",
        }
    );
    let _ = writeln!(w, "\nSetup");
    let _ = writeln!(
        w,
        "  trigger → INVITE           {}",
        ms(r.trigger_to_invite)
    );
    let _ = writeln!(
        w,
        "  INVITE → ringing           {}",
        since(t.invite_ms, t.ringing_ms)
    );
    let _ = writeln!(
        w,
        "  INVITE → answer            {}",
        since(t.invite_ms, t.answered_ms)
    );
    let _ = writeln!(
        w,
        "  answer → agent connected   {}",
        since(t.answered_ms, t.agent_connected_ms)
    );
    let _ = writeln!(
        w,
        "  answer → first agent audio {}",
        ms(r.answer_to_first_audio)
    );
    let _ = writeln!(w, "\nGateway-added latency");
    let _ = writeln!(
        w,
        "  uplink   (RTP in → WebSocket out)  {}",
        dist(&r.uplink_latency)
    );
    let _ = writeln!(
        w,
        "  downlink (WebSocket in → RTP out)  {}",
        dist(&r.downlink_latency)
    );
    let _ = writeln!(
        w,
        "  pacing   |gap − 20 ms| at phone     {}",
        dist(&r.pacing_error)
    );
    let _ = writeln!(w, "\nAudio");
    let _ = writeln!(
        w,
        "  uplink    {} RTP packets in, {} lost, jitter {:.2} ms, {} late, {} underruns, {} chunks to the agent",
        rec.uplink.packets,
        rec.uplink.lost,
        rec.uplink.jitter_ms,
        rec.uplink.late,
        rec.uplink.underruns,
        rec.uplink.agent_messages
    );
    let _ = writeln!(
        w,
        "  downlink  {} RTP packets out ({} agent audio, {} silence), {} bytes flushed by barge-in, {} audio events",
        rec.downlink.packets,
        rec.downlink.audio_frames,
        rec.downlink.silence_frames,
        rec.downlink.flushed_bytes,
        rec.downlink.agent_messages
    );
    let _ = writeln!(
        w,
        "  phone     received {} packets; agent heard {:.1} s of caller audio; barge-ins {}",
        r.phone.rtp_in.len(),
        r.agent.caller_seconds(),
        rec.interruptions
    );
    let _ = writeln!(w, "\nTranscript");
    for e in &rec.transcript {
        let _ = writeln!(w, "  {:<5} {}", e.role, e.text);
    }
    let _ = writeln!(
        w,
        "\nRecording: {} (stereo 8 kHz: caller left, agent right)",
        wav.display()
    );
    s
}

/// A minimal HTTP/1.1 JSON POST over loopback (the demo's "widget").
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
