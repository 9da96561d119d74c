//! Loopback numbers for the agent client (not criterion: each is one timed run, printed):
//! - uplink messages/s: one connection, 20 ms µ-law `user_audio_chunk`s from the client to the
//!   agent emulator (which decodes, records and VADs each one);
//! - downlink messages/s: a minimal server blasting pre-encoded `audio` events to one client
//!   (client-side decode + delivery as `AgentEvent::Audio`);
//! - memory per idle connection: RSS growth from `/proc/self/status` over N idle conversations,
//!   client and server in this one process.
//!
//! `cargo bench -p trunkline-emulators --bench agent_loopback`

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use trunkline_agent::{AgentConfig, AgentEvent, AgentSession, ToolRegistry, connect};
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig, Script};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn quiet_emulator_config() -> AgentEmulatorConfig {
    AgentEmulatorConfig {
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn client_config(base: String) -> AgentConfig {
    let mut c = AgentConfig::new("bench").with_base_url(base);
    c.audio_queue_chunks = 1_000_000;
    c
}

/// A minimal agent server: answers the handshake with metadata, then sends `n_audio` audio
/// events (batched flushes), then idles until the client goes away.
async fn raw_server(n_audio: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode([0x55u8; 160]);
    let audio =
        format!(r#"{{"type":"audio","audio_event":{{"audio_base_64":"{b64}","event_id":1}}}}"#);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let audio = audio.clone();
            tokio::spawn(async move {
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(8 * 1024)
                    .write_buffer_size(16 * 1024);
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await
                else {
                    return;
                };
                let _init = ws.next().await;
                let meta = r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"c","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"ulaw_8000"}}"#;
                if ws.send(Message::text(meta)).await.is_err() {
                    return;
                }
                for i in 0..n_audio {
                    if ws.feed(Message::text(audio.clone())).await.is_err() {
                        return;
                    }
                    if i % 64 == 63 && ws.flush().await.is_err() {
                        return;
                    }
                }
                let _ = ws.flush().await;
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

async fn uplink(n: usize) {
    let emu = AgentEmulator::start("127.0.0.1:0".parse().unwrap(), quiet_emulator_config())
        .await
        .unwrap();
    let s = connect(client_config(emu.ws_base_url()), ToolRegistry::new())
        .await
        .unwrap();
    let chunk = vec![0xffu8; 160];
    let t0 = Instant::now();
    for _ in 0..n {
        s.send_audio(chunk.clone()).unwrap();
    }
    let enqueue = t0.elapsed();
    while s.stats().audio_chunks_sent < n as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let written = t0.elapsed();
    s.close();
    let recs = emu.wait_finished(1, Duration::from_secs(60)).await;
    let received = t0.elapsed();
    let got = recs[0].messages.len() - 1;
    assert_eq!(got, n, "emulator received every chunk");
    println!(
        "uplink: {n} x 20 ms ulaw chunks: send_audio {:.0} ns each; client wrote {:.0} msg/s; emulator received {:.0} msg/s end to end",
        enqueue.as_nanos() as f64 / n as f64,
        n as f64 / written.as_secs_f64(),
        n as f64 / received.as_secs_f64()
    );
}

async fn downlink(n: usize) {
    let addr = raw_server(n).await;
    let t0 = Instant::now();
    let mut s = connect(client_config(format!("ws://{addr}")), ToolRegistry::new())
        .await
        .unwrap();
    let mut got = 0usize;
    let mut t_first = None;
    while got < n {
        match s.next_event().await.unwrap() {
            AgentEvent::Audio { .. } => {
                got += 1;
                t_first.get_or_insert_with(Instant::now);
            }
            AgentEvent::Closed(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    let dt = t_first.map_or(t0.elapsed(), |t| t.elapsed());
    println!(
        "downlink: {n} audio events (160 B): client decoded and delivered {:.0} msg/s",
        n as f64 / dt.as_secs_f64()
    );
    s.close();
}

async fn idle_memory(n: usize, raw: bool) {
    let base = if raw {
        format!("ws://{}", raw_server(0).await)
    } else {
        let emu = AgentEmulator::start("127.0.0.1:0".parse().unwrap(), quiet_emulator_config())
            .await
            .unwrap();
        let url = emu.ws_base_url();
        std::mem::forget(emu); // keep serving for the rest of the process
        url
    };
    // Warm up allocator and runtime with a few connections first.
    let mut warm: Vec<AgentSession> = Vec::new();
    for _ in 0..10 {
        warm.push(
            connect(client_config(base.clone()), ToolRegistry::new())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        sessions.push(
            connect(client_config(base.clone()), ToolRegistry::new())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "idle memory, {} : {n} connections, RSS +{} KiB = {:.1} KiB per connection (client + server side in one process)",
        if raw {
            "client + minimal server"
        } else {
            "client + agent emulator"
        },
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );
    for s in sessions.iter().chain(warm.iter()) {
        s.close();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // AGENT_BENCH=uplink|downlink|mem_raw|mem_emulator runs one part only (memory numbers are
    // cleanest in a fresh process: freed memory of an earlier part is reused by the next).
    let only = std::env::var("AGENT_BENCH").ok();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    rt.block_on(async {
        if run("uplink") {
            uplink(50_000).await;
        }
        if run("downlink") {
            downlink(100_000).await;
        }
        if run("mem_raw") {
            idle_memory(500, true).await;
        }
        if run("mem_emulator") {
            idle_memory(500, false).await;
        }
    });
}
