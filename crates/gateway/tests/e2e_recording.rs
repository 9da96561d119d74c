//! Call recording end to end over loopback: a call with `[recording]` on, then its file fetched
//! from `GET /api/calls/{sid}/recording` with the bearer token: a stereo WAV whose left channel is
//! what the phone (trunk emulator) sent and whose right channel is what the phone received.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{TOKEN, deploy, speech};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::TrunkConfig;
use trunkline_media::g711::G711;

const CONSENT: &str = "This call is recorded.";

/// A raw HTTP/1.1 GET: (status, headers, body), chunked bodies decoded.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .expect("hex")
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn find(hay: &[i16], needle: &[i16]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_is_served_as_a_stereo_wav_of_both_sides() {
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let trunk = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(6)),
        ..TrunkConfig::default()
    };
    let agent = AgentEmulatorConfig {
        allow_overrides: true,
        ..AgentEmulatorConfig::default()
    };
    let rec_dir = dir.to_string_lossy().into_owned();
    let d = deploy(trunk, agent, move |cfg| {
        cfg.recording.enabled = true;
        cfg.recording.dir = rec_dir;
        cfg.recording.consent_message = CONSENT.into();
    })
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;

    // The record says where the recording is, how long, and that consent was given.
    let r = rec.recording.clone().expect("recording in the record");
    assert_eq!(r.format, "wav");
    assert!(r.consent_played, "{r:?}");
    assert!(
        (4_000..=7_000).contains(&r.duration_ms),
        "about 6 s answered: {r:?}"
    );
    assert_eq!(
        std::path::Path::new(&r.path),
        dir.join(format!("{sid}.wav"))
    );
    // The agent was asked to say the consent first.
    let agents = d.agent_finished(1, Duration::from_secs(5)).await;
    assert!(
        agents[0].messages.iter().any(|m| m.contains(CONSENT)),
        "consent sent as the first message override"
    );

    // Refusals: no token, a browser origin, an unknown call.
    let path = format!("/api/calls/{sid}/recording");
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = get(d.http, &path, &[]).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (status, head, body) = get(
        d.http,
        &path,
        &[("Authorization", &auth), ("Origin", "https://example.com")],
    )
    .await;
    assert_eq!(status, 403);
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(j["success"], false);
    assert_eq!(j["error"], "Origin not allowed");
    let (status, _, body) = get(
        d.http,
        "/api/calls/CA0000/recording",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 404);
    let j: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(j["error"], "Recording not found");

    // The file, over HTTP.
    let (status, head, wav) = get(d.http, &path, &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: audio/wav"), "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let reader = hound::WavReader::new(std::io::Cursor::new(wav.clone())).expect("valid WAV");
    let spec = reader.spec();
    assert_eq!(spec.channels, 2);
    assert_eq!(spec.sample_rate, 8000);
    assert_eq!(spec.bits_per_sample, 16);
    assert_eq!(
        u64::from(reader.duration()) / 8,
        r.duration_ms,
        "exact header"
    );
    assert_eq!(wav.len(), 44 + reader.duration() as usize * 4);
    let samples: Vec<i16> = reader.into_samples().map(|s| s.expect("sample")).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();

    // Left: what the phone sent, sample-exact (µ-law all the way), 3 s of it, but for the quiet
    // frames the jitter buffer skipped to settle at the line's delay.
    let played = common::speech_samples();
    let first_loud = played
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("speech in capture");
    let probe = &played[first_loud * 160..first_loud * 160 + 160];
    let skipped = common::assert_relayed_except_quiet_frames(&left, &played, 2, 3);
    assert!(skipped as u64 <= rec.uplink.dropped_samples, "{skipped}");
    // ...and none of it on the right.
    assert!(
        find(&right, probe).is_none(),
        "the phone leaked to the right"
    );

    // Right: what the phone received, frame by frame (every loud RTP frame it got is a frame of
    // the right channel).
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    let t = &calls[0];
    let law = t.law.unwrap_or(G711::Ulaw);
    let right_frames: HashSet<&[i16]> = right.chunks_exact(160).collect();
    let received: Vec<Vec<i16>> = t
        .rtp_in
        .iter()
        .filter(|p| p.pt == law.payload_type() && p.payload.len() == 160)
        .map(|p| {
            p.payload
                .iter()
                .map(|&c| law.decode(c))
                .collect::<Vec<i16>>()
        })
        .filter(|f| f.iter().any(|s| s.abs() > 2000))
        .collect();
    assert!(received.len() >= 25, "the agent's greeting was heard");
    let found = received
        .iter()
        .filter(|f| right_frames.contains(f.as_slice()))
        .count();
    // Nearly all: under a loaded machine a frame may be paired late (silence) or dropped from
    // the pairing ring (`REC_SENT_MAX`).
    assert!(
        found * 100 >= received.len() * 90,
        "{found} of {} frames the phone heard are on the right",
        received.len()
    );
    assert!(
        !right_frames.contains(probe),
        "the agent channel holds only what was sent to the phone"
    );

    // Metrics.
    let (status, _, body) = get(d.http, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("trunkline_recording_started_total 1\n"),
        "{text}"
    );
    assert!(text.contains("trunkline_recording_dropped_frames_total 0\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_prompt_is_heard_before_the_agent_and_recorded() {
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-consent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The prompt: 0.6 s of a 1 kHz tone, loud.
    let prompt_path = dir.join("consent.wav");
    let prompt: Vec<i16> = (0..4800)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / 8000.0).sin() * 12000.0) as i16)
        .collect();
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&prompt_path, spec).expect("wav");
        for &s in &prompt {
            w.write_sample(s).expect("sample");
        }
        w.finalize().expect("finalize");
    }
    let trunk = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(4)),
        ..TrunkConfig::default()
    };
    let rec_dir = dir.to_string_lossy().into_owned();
    let prompt_cfg = prompt_path.to_string_lossy().into_owned();
    let d = deploy(trunk, AgentEmulatorConfig::default(), move |cfg| {
        cfg.recording.enabled = true;
        cfg.recording.dir = rec_dir;
        cfg.recording.consent_prompt_wav = prompt_cfg;
    })
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let r = rec.recording.clone().expect("recording");
    assert!(r.consent_played, "{r:?}");

    // What the phone heard: the prompt first, whole, then the agent.
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    let t = &calls[0];
    let law = t.law.unwrap_or(G711::Ulaw);
    let heard: Vec<i16> = t
        .rtp_in
        .iter()
        .filter(|p| p.pt == law.payload_type())
        .flat_map(|p| p.payload.iter().map(|&c| law.decode(c)))
        .collect();
    let coded: Vec<i16> = prompt.iter().map(|&s| law.decode(law.encode(s))).collect();
    let at = find(&heard, &coded[..160]).expect("the prompt was heard");
    assert_eq!(
        &heard[at..at + coded.len()],
        &coded[..],
        "the whole prompt, exact"
    );
    assert!(
        heard[..at].iter().all(|s| s.abs() < 100),
        "nothing loud (no agent) before the prompt"
    );
    let after = &heard[at + coded.len()..];
    assert!(
        after.chunks(160).any(|c| c.iter().any(|s| s.abs() > 2000)),
        "the agent was heard after the prompt"
    );

    // And the recording's right channel holds it.
    let wav = std::fs::read(&r.path).expect("file");
    let reader = hound::WavReader::new(std::io::Cursor::new(wav)).expect("wav");
    let right: Vec<i16> = reader
        .into_samples::<i16>()
        .map(|s| s.expect("sample"))
        .skip(1)
        .step_by(2)
        .collect();
    let at = find(&right, &coded[..160]).expect("the prompt is on the right");
    assert_eq!(&right[at..at + coded.len()], &coded[..]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Best normalised cross-correlation of `needle` anywhere in `hay`.
#[cfg(feature = "opus")]
fn best_corr(hay: &[i16], needle: &[i16]) -> f64 {
    let n: Vec<f64> = needle.iter().map(|&x| f64::from(x)).collect();
    let nn: f64 = n.iter().map(|x| x * x).sum();
    let h: Vec<f64> = hay.iter().map(|&x| f64::from(x)).collect();
    let mut best = 0.0f64;
    for lag in 0..h.len().saturating_sub(n.len()) {
        let w = &h[lag..lag + n.len()];
        let (mut ab, mut bb) = (0.0, 0.0);
        for (a, b) in n.iter().zip(w) {
            ab += a * b;
            bb += b * b;
        }
        if bb > 0.0 && nn > 0.0 {
            best = best.max(ab / (nn * bb).sqrt());
        }
    }
    best
}

// Opus is an opt-in feature (libopus): `cargo test -p trunkline-gateway --features opus`
// (.ci/run runs it).
#[cfg(feature = "opus")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opus_recording_decodes_with_opusdec_into_both_sides() {
    let dir = std::env::temp_dir().join(format!("trunkline-e2e-opus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let trunk = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(5)),
        ..TrunkConfig::default()
    };
    let rec_dir = dir.to_string_lossy().into_owned();
    let d = deploy(trunk, AgentEmulatorConfig::default(), move |cfg| {
        cfg.recording.enabled = true;
        cfg.recording.dir = rec_dir;
        cfg.recording.format = trunkline_gateway::config::RecordingFormatName::Opus;
    })
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let r = rec.recording.clone().expect("recording");
    assert_eq!(r.format, "opus");
    assert!(r.path.ends_with(&format!("{sid}.ogg")), "{r:?}");

    let auth = format!("Bearer {TOKEN}");
    let (status, head, ogg) = get(
        d.http,
        &format!("/api/calls/{sid}/recording"),
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: audio/ogg"), "{head}");
    assert_eq!(&ogg[..4], b"OggS");
    // About 24 kbit/s.
    let kbps = ogg.len() as f64 * 8.0 / r.duration_ms as f64;
    assert!((10.0..=32.0).contains(&kbps), "{kbps} kbit/s");

    // Decoded by an independent decoder.
    let src = dir.join("fetched.ogg");
    let dst = dir.join("decoded.wav");
    std::fs::write(&src, &ogg).expect("write");
    let out = std::process::Command::new("opusdec")
        .args(["--quiet", "--rate", "8000"])
        .arg(&src)
        .arg(&dst)
        .output()
        .expect("opusdec (Debian opus-tools, installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = hound::WavReader::open(&dst).expect("decoded wav");
    assert_eq!(reader.spec().channels, 2);
    let s: Vec<i16> = reader
        .into_samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    let left: Vec<i16> = s.iter().step_by(2).copied().collect();
    let right: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
    assert!(
        (left.len() as u64).abs_diff(r.duration_ms * 8) < 800,
        "{} samples for {} ms",
        left.len(),
        r.duration_ms
    );

    // Left: the phone's speech (0.25 s from its first loud frame).
    let played = common::speech_samples();
    let first_loud = played
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("speech");
    let phone = &played[first_loud * 160..first_loud * 160 + 2000];
    let ll = best_corr(&left, phone);
    let lr = best_corr(&right, phone);
    assert!(ll > 0.8, "the phone on the left: {ll}");
    assert!(lr < 0.5, "not on the right: {lr}");

    // Right: what the phone received from the agent (0.2 s from its first loud frame).
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    let t = &calls[0];
    let law = t.law.unwrap_or(G711::Ulaw);
    let heard: Vec<i16> = t
        .rtp_in
        .iter()
        .filter(|p| p.pt == law.payload_type())
        .flat_map(|p| p.payload.iter().map(|&c| law.decode(c)))
        .collect();
    let at = heard
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 2000))
        .expect("the agent was heard")
        * 160;
    let agent = &heard[at..(at + 1600).min(heard.len())];
    let rr = best_corr(&right, agent);
    let rl = best_corr(&left, agent);
    eprintln!(
        "opus e2e correlations: phone/left {ll:.3} phone/right {lr:.3} agent/right {rr:.3} agent/left {rl:.3}, {kbps:.1} kbit/s"
    );
    assert!(rr > 0.8, "the agent on the right: {rr}");
    assert!(rl < 0.5, "not on the left: {rl}");
    let _ = std::fs::remove_dir_all(&dir);
}
