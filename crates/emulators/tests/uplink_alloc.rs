//! The caller's audio goes to the agent without an allocation per chunk once the connection is
//! warmed up, over `ws://` and over `wss://` (the agent client's own TLS stream): the chunk is
//! queued (`AgentHandle::send_audio`), the writer task encodes it
//! (`{"user_audio_chunk":"<base64>"}`) into its own buffer, which takes its storage back once the
//! WebSocket frame is written, and the frame goes out on a real loopback TCP connection.
//!
//! A counting global allocator (`stats_alloc`, which counts every thread) watches 500 chunks
//! per transport. The agent is a plain thread: a blocking handshake (rustls + `tungstenite`),
//! then raw reads of the TCP socket into a fixed buffer (it allocates nothing while measured),
//! counting the bytes the frames (or the TLS records around them) take on the wire.
//!
//! No libtest harness (`harness = false`): the counter is process-wide, and libtest's main
//! thread allocates its own bookkeeping whenever the scheduler lets it run.
//!
//! Over `wss://` one allocation per record remains, inside rustls 0.23: its record layer returns
//! each encrypted record as a new `Vec` (`CommonState::write_fragments`:
//! `encrypt_outgoing(m).encode()`), even through the unbuffered API, which then copies it into
//! our buffer. The test allows exactly that one: nothing of ours (3 per chunk before, with the
//! JSON `String` and the `Bytes` made of it).
//!
//! Outside this test: the agent → phone direction (each `audio` event is parsed from JSON and
//! its base64 decoded into a new buffer).
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_tungstenite::tungstenite::{self, Message};
use trunkline_agent::{AgentConfig, ToolRegistry, connect};
use trunkline_emulators::agent::TestIdentity;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const METADATA: &str = r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_alloc","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"ulaw_8000"}}"#;

/// 40 ms of µ-law: the default uplink chunk.
static CHUNK: [u8; 320] = {
    let mut c = [0u8; 320];
    let mut i = 0;
    while i < c.len() {
        c[i] = (i * 7 % 251) as u8;
        i += 1;
    }
    c
};

/// The bytes one chunk takes in a WebSocket frame: a masked client frame (2-byte header,
/// 16-bit length, 4-byte mask) around `{"user_audio_chunk":"` + base64 + `"}`.
const FRAME_LEN: usize = 2 + 2 + 4 + 21 + 428 + 2;
/// The same frame in one TLS 1.3 record: 5-byte header, the content type byte, 16-byte tag.
const RECORD_LEN: usize = 5 + FRAME_LEN + 1 + 16;

const WARM_UP: usize = 100;
const MEASURED: usize = 500;

/// The agent's side: handshakes, the metadata, then raw bytes counted into `received`.
fn agent_thread(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    received: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    fn handshake<S: std::io::Read + std::io::Write>(s: S) -> tungstenite::WebSocket<S> {
        let mut ws = tungstenite::accept(s).unwrap();
        let first = ws.read().unwrap();
        assert!(
            first
                .to_text()
                .unwrap()
                .contains("conversation_initiation_client_data")
        );
        ws.send(Message::text(METADATA)).unwrap();
        ws
    }
    fn count(mut tcp: &TcpStream, received: &AtomicUsize) {
        // From here on only raw bytes, into a fixed buffer.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    received.fetch_add(n, Ordering::Release);
                }
            }
        }
    }
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        match tls {
            None => {
                let ws = handshake(tcp);
                count(ws.get_ref(), &received);
            }
            Some(cfg) => {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let ws = handshake(rustls::StreamOwned::new(conn, tcp));
                count(&ws.get_ref().sock, &received);
            }
        }
    })
}

/// Connects the agent client, warms it up, and counts the allocations of `MEASURED` chunks.
fn measure(tls: Option<&TestIdentity>) -> (u64, u64) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let agent = agent_thread(
        listener,
        tls.map(|id| id.server_config().unwrap()),
        Arc::clone(&received),
    );
    let per_chunk = if tls.is_some() { RECORD_LEN } else { FRAME_LEN };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (allocations, reallocations, sent) = rt.block_on(async {
        let mut cfg = match tls {
            None => AgentConfig::new("agent_alloc").with_base_url(format!("ws://{addr}")),
            Some(id) => {
                let mut c = AgentConfig::new("agent_alloc")
                    .with_base_url(format!("wss://localhost:{}", addr.port()));
                c.tls_roots = Some(id.root_store().unwrap());
                c
            }
        };
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.stall_timeout = None;
        let session = connect(cfg, ToolRegistry::new()).await.unwrap();
        let (handle, _events) = session.into_parts();

        // One chunk at a time, each on the wire before the next is queued (as 40 ms apart).
        let send = |n: usize, before: usize| {
            let handle = &handle;
            let received = &received;
            async move {
                for i in 0..n {
                    handle.send_audio(Bytes::from_static(&CHUNK)).unwrap();
                    let want = before + (i + 1) * per_chunk;
                    let mut waited = 0;
                    while received.load(Ordering::Acquire) < want {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        waited += 1;
                        assert!(waited < 5_000, "chunk {i} not received");
                    }
                }
            }
        };
        // TLS: the client's records so far (its WebSocket handshake and first message) are
        // already counted; what follows is one record per chunk.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = received.load(Ordering::Acquire);
        send(WARM_UP, start).await;
        let base = received.load(Ordering::Acquire);
        assert_eq!(
            base - start,
            WARM_UP * per_chunk,
            "frames of unexpected size"
        );

        let region = Region::new(GLOBAL);
        send(MEASURED, base).await;
        let change = region.change();
        assert_eq!(
            received.load(Ordering::Acquire) - base,
            MEASURED * per_chunk
        );
        let sent = handle.stats().audio_chunks_sent;
        handle.close();
        (change.allocations, change.reallocations, sent)
    });
    drop(rt);
    agent.join().unwrap();
    assert_eq!(sent, (WARM_UP + MEASURED) as u64);
    (allocations as u64, reallocations as u64)
}

fn main() {
    let ws = measure(None);
    println!("ws://  {MEASURED} chunks of 40 ms to the agent: {ws:?} (allocations, reallocations)");
    let id = TestIdentity::localhost().unwrap();
    let wss = measure(Some(&id));
    println!(
        "wss:// {MEASURED} chunks of 40 ms to the agent: {wss:?} (allocations, reallocations)"
    );
    assert_eq!(
        ws,
        (0, 0),
        "the agent uplink allocates per chunk over ws://"
    );
    assert_eq!(
        wss,
        (MEASURED as u64, 0),
        "over wss://, more than rustls' record per chunk"
    );
}
