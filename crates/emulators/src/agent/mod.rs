//! The ElevenLabs agent emulator: the server side of the agent WebSocket contract
//! (ELEVENLABS.md §2), on plain `ws://` or `wss://` (test certificate), with the signed-URL
//! endpoint (§2.1) served on the same port.
//!
//! Behaviour, per connection:
//! - `GET /v1/convai/conversation/get-signed-url?agent_id=…` checks `xi-api-key` and returns
//!   `{"signed_url": "ws[s]://…/v1/convai/conversation?agent_id=…&conversation_signature=…"}`;
//!   signatures are single-use; with [`AgentEmulatorConfig::require_signed_url`] the WebSocket
//!   refuses connections without a valid one (HTTP 403).
//! - The first message must be `conversation_initiation_client_data` (else `error` +
//!   close 1008 `invalid_message`); overrides are refused unless allowed (`override_error`,
//!   1008); required dynamic variables must be present at top level (`missing_dynamic_variable`,
//!   1008).
//! - `conversation_initiation_metadata` with the configured formats, then the first message as
//!   real speech (the embedded espeak-ng phrase converted to the output format), streamed in
//!   bursts faster than real time with varying chunk sizes.
//! - Pings: the first [`AgentEmulatorConfig::first_ping_after`] (300 ms) after the metadata, then
//!   at an interval; a pong missing [`AgentEmulatorConfig::pong_timeout`] (1.5 s) after its ping
//!   is a violation and closes with 1002. No user audio for `silence_timeout` (60 s by default)
//!   closes with `transport_receive_timeout` (1002).
//! - Strict like the real server: what a client must not send is recorded in
//!   [`ConnectionRecord::violations`] (always, even without recording), and ends the conversation
//!   where ELEVENLABS.md says the real server closes (1008: invalid JSON / missing fields, a first
//!   message other than the initiation, forbidden overrides, missing dynamic variables). Where
//!   the document is silent (unknown message types, binary frames, a second initiation, odd-length
//!   PCM, a pong for no outstanding ping) the violation is recorded and the conversation goes on.
//! - An energy VAD on the caller's audio: speech over the agent ⇒ `interruption` and the response
//!   stops; end of caller speech ⇒ `user_transcript` "(speech 1.4 s)", `agent_response`, audio.
//! - Browsers: `@elevenlabs/client` (`connectionType: "websocket"`, `origin` pointing here)
//!   connects to `/v1/convai/conversation?agent_id=…&source=js_sdk&version=…` asking for the
//!   `convai` subprotocol, which is selected; its page's `Origin` is recorded. With
//!   [`Script::tool_call`] the emulator issues a `client_tool_call` (for example
//!   `initiatePhoneCall` with a `phoneNumber`) to the page and records the `client_tool_result`.
//! - Scripted: end after N turns (close 1000, optionally after `agent_tool_response` `end_call`),
//!   a `client_tool_call`, abrupt close (1011 or a dropped TCP connection), a read stall, garbage,
//!   stale audio after an interruption.
//! - Scripted per share of connections: end the call after the caller's first turn
//!   ([`Script::end_call_percent`]; the goodbye is not interruptible, as once the agent decided to
//!   end it ends). A tool call due after a response is still made when that response is
//!   interrupted.
//! - Records what it received ([`ConnectionRecord`]): caller audio (PCM16, writable as WAV) and
//!   every message as a JSON line, the agent audio chunks it sent ([`AudioSent`]: time, response,
//!   byte range) — and always, even without recording: the dynamic variables, `user_message`s,
//!   tool calls and their results, and when the conversation ended.
//!
//! Time-dependent behaviour uses injected durations (tests set `silence_timeout` to a few hundred
//! ms rather than pausing tokio time over real sockets); the VAD runs on caller-audio time.

pub mod audio;
mod conn;
mod http;
pub mod tls;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::debug;
use trunkline_agent::AudioFormat;

pub use audio::{VadConfig, VadEvent};
pub use tls::TestIdentity;

/// A `client_tool_call` the emulator issues.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallSpec {
    /// Issue it after this many caller turns (0 = right after the first message).
    pub after_turn: u32,
    /// Tool name.
    pub tool_name: String,
    /// Parameters.
    pub parameters: serde_json::Value,
}

/// How to end a connection abruptly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// Close frame 1011 (unexpected condition), no `error` event.
    Close1011,
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// What the emulated agent does beyond the basic contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Speak the first message right after the metadata.
    pub first_message: bool,
    /// After this many caller turns, speak a goodbye and close with 1000 (0 = after the first
    /// message).
    pub end_after_turns: Option<u32>,
    /// Send `agent_tool_response` `end_call` before the close 1000.
    pub end_call_tool_response: bool,
    /// Issue a `client_tool_call` and speak its result.
    pub tool_call: Option<ToolCallSpec>,
    /// After this many caller turns, end abruptly.
    pub abort_after_turns: Option<(u32, AbortKind)>,
    /// Stop reading the socket for this long right after the metadata (back-pressure tests).
    pub stall_after_metadata: Option<Duration>,
    /// Hang for this long right after the metadata, like a frozen agent process: no reads, no
    /// writes, no pings answered, no timers; the TCP connection stays open. While hung the
    /// emulator watches the TCP connection without reading it and ends the conversation when
    /// the client drops it ([`ConnectionRecord::peer_closed_at`]).
    pub hang_after_metadata: Option<Duration>,
    /// After the metadata, send garbage: non-JSON text, a binary frame, an unknown event type,
    /// and a known event with unknown fields.
    pub garbage: bool,
    /// After an interruption, still send this many stale chunks of the interrupted response.
    pub stale_chunks_after_interruption: u32,
    /// Send `agent_response_correction` after an interruption.
    pub corrections: bool,
    /// Percentage (0–100) of connections, spread evenly over the accept order, on which the
    /// agent ends the call itself after the caller's first turn: it answers "Goodbye!", sends
    /// `agent_tool_response` `end_call` (with [`Script::end_call_tool_response`]) and closes 1000.
    pub end_call_percent: u32,
    /// Stop sending audio for this long once half of each response has been sent (a TTS
    /// hiccup: exercises the caller's playout underrun handling).
    pub pause_mid_response: Option<Duration>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            first_message: true,
            end_after_turns: None,
            end_call_tool_response: true,
            tool_call: None,
            abort_after_turns: None,
            stall_after_metadata: None,
            hang_after_metadata: None,
            garbage: false,
            stale_chunks_after_interruption: 0,
            corrections: true,
            end_call_percent: 0,
            pause_mid_response: None,
        }
    }
}

/// Emulator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEmulatorConfig {
    /// Agent ids accepted (empty = any).
    pub agent_ids: Vec<String>,
    /// API key the signed-URL endpoint requires (`None`: the endpoint answers 401 to everyone).
    pub api_key: Option<String>,
    /// Refuse WebSocket connections without a valid, unused `conversation_signature`.
    pub require_signed_url: bool,
    /// `agent_output_audio_format`.
    pub output_format: AudioFormat,
    /// `user_input_audio_format`.
    pub input_format: AudioFormat,
    /// Dynamic variables that must be present at top level.
    pub required_dynamic_variables: Vec<String>,
    /// Accept `conversation_config_override`.
    pub allow_overrides: bool,
    /// Ping interval (`None`: no pings).
    pub ping_interval: Option<Duration>,
    /// When the first ping goes out after the metadata (capped at `ping_interval`): early, so a
    /// client that never answers pings is caught by short calls too.
    pub first_ping_after: Duration,
    /// Time allowed for a pong: a late one is a violation and closes 1002.
    pub pong_timeout: Duration,
    /// Close after this long without a `user_audio_chunk` (the service uses 60 s).
    pub silence_timeout: Duration,
    /// Time allowed for the first client message.
    pub init_timeout: Duration,
    /// VAD settings.
    pub vad: VadConfig,
    /// Agent audio chunk length range, ms.
    pub chunk_ms: (u32, u32),
    /// Chunks per burst range.
    pub burst_chunks: (u32, u32),
    /// How much faster than real time the agent audio is streamed.
    pub speed: f64,
    /// Seed for chunk-size variation.
    pub seed: u64,
    /// Record caller audio and messages (turn off for long load tests).
    pub record: bool,
    /// Behaviour script.
    pub script: Script,
}

impl Default for AgentEmulatorConfig {
    fn default() -> Self {
        AgentEmulatorConfig {
            agent_ids: Vec::new(),
            api_key: None,
            require_signed_url: false,
            output_format: AudioFormat::Ulaw8000,
            input_format: AudioFormat::Ulaw8000,
            required_dynamic_variables: Vec::new(),
            allow_overrides: true,
            ping_interval: Some(Duration::from_secs(5)),
            first_ping_after: Duration::from_millis(300),
            pong_timeout: Duration::from_millis(1500),
            silence_timeout: Duration::from_secs(60),
            init_timeout: Duration::from_secs(10),
            vad: VadConfig::default(),
            chunk_ms: (40, 250),
            burst_chunks: (1, 4),
            speed: 4.0,
            seed: 1,
            record: true,
            script: Script::default(),
        }
    }
}

/// What one connection received and how it ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionRecord {
    /// The request path and query.
    pub request_target: String,
    /// The `agent_id` query parameter.
    pub agent_id: Option<String>,
    /// The WebSocket subprotocol selected (`convai`, when the client asked for it as
    /// `@elevenlabs/client` does).
    pub subprotocol: Option<String>,
    /// The `Origin` header of the upgrade (a browser's page; absent for server clients).
    pub origin: Option<String>,
    /// The conversation id handed out.
    pub conversation_id: Option<String>,
    /// Every text message received, in order, as JSON lines (`user_audio_chunk` payloads are
    /// replaced by `{"user_audio_chunk_bytes": N}` to keep records small).
    pub messages: Vec<String>,
    /// Caller audio decoded to PCM16 at the input format's rate.
    pub caller_audio: Vec<i16>,
    /// The input format's sample rate.
    pub caller_sample_rate: u32,
    /// `type`s of the events sent, in order.
    pub sent_types: Vec<String>,
    /// Pongs received with the right id.
    pub pongs: u64,
    /// Caller turns detected.
    pub turns: u32,
    /// Interruptions sent.
    pub interruptions: u32,
    /// When each interruption was sent.
    pub interruption_times: Vec<std::time::Instant>,
    /// Arrival time of each `user_audio_chunk` and the offset (in samples) of its first sample in
    /// `caller_audio`.
    pub caller_chunks: Vec<(std::time::Instant, usize)>,
    /// When the first audio chunk of each agent response was sent.
    pub response_starts: Vec<std::time::Instant>,
    /// The connection's `dynamic_variables` (values as text), from its
    /// `conversation_initiation_client_data` (recorded even without [`AgentEmulatorConfig::record`]).
    pub dynamic_variables: std::collections::BTreeMap<String, String>,
    /// Every `user_message` text received, with its arrival (the gateway passes caller DTMF this
    /// way with `dtmf_mode = user_message`; always recorded).
    pub user_messages: Vec<(std::time::Instant, String)>,
    /// `client_tool_call`s issued: tool name and parameters (always recorded).
    pub tool_calls: Vec<(String, serde_json::Value)>,
    /// `client_tool_result`s received for them: result text and `is_error` (always recorded).
    pub tool_results: Vec<(String, bool)>,
    /// With [`AgentEmulatorConfig::record`]: every agent audio chunk sent, in order.
    pub audio_sent: Vec<AudioSent>,
    /// This connection was picked by [`Script::end_call_percent`] to end the call.
    pub ends_call: bool,
    /// When the conversation stopped (the emulator's last read of the client's messages before
    /// closing, or the client's close).
    pub ended_at: Option<std::time::Instant>,
    /// The close code the client sent (1005 for a close frame without one).
    pub client_close_code: Option<u16>,
    /// The close code the emulator sent (`None`: TCP dropped, or the client closed first).
    pub close_code: Option<u16>,
    /// True once the connection is over.
    pub finished: bool,
    /// With [`Script::hang_after_metadata`]: when the client's end of the TCP connection was
    /// seen closed during the hang.
    pub peer_closed_at: Option<std::time::Instant>,
    /// What the client sent that the real server forbids, in order (always recorded): one line
    /// each, e.g. `unknown message type "foo"`. Tests assert it is empty.
    pub violations: Vec<String>,
}

/// One agent audio chunk as sent (see [`ConnectionRecord::audio_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSent {
    /// When the `audio` event had been written to the WebSocket.
    pub at: std::time::Instant,
    /// Which response of this connection (0 = the first message), counting every response
    /// started.
    pub response: usize,
    /// Offset of the chunk's first byte in the response's audio ([`AgentEmulator::response_audio`]).
    pub offset: usize,
    /// Bytes in the chunk.
    pub len: usize,
}

impl ConnectionRecord {
    /// Writes the caller audio as a mono PCM16 WAV.
    pub fn write_caller_wav(&self, path: &Path) -> Result<(), hound::Error> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.caller_sample_rate.max(1),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec)?;
        for &s in &self.caller_audio {
            w.write_sample(s)?;
        }
        w.finalize()
    }

    /// The messages as JSON-lines text.
    pub fn messages_jsonl(&self) -> String {
        let mut s = self.messages.join("\n");
        s.push('\n');
        s
    }

    /// Seconds of caller audio received.
    pub fn caller_seconds(&self) -> f64 {
        self.caller_audio.len() as f64 / f64::from(self.caller_sample_rate.max(1))
    }
}

pub(crate) struct EmuState {
    pub config: AgentEmulatorConfig,
    pub tls: bool,
    pub records: Mutex<Vec<Arc<Mutex<ConnectionRecord>>>>,
    pub signatures: Mutex<HashSet<String>>,
    pub next_id: AtomicU64,
    /// Conversations started (for [`Script::end_call_percent`]).
    pub conversations: AtomicU64,
    /// TCP (or TLS) connections that carried signed-URL requests.
    pub signed_url_connections: AtomicU64,
    pub changed: Notify,
    /// The phrase in the configured output format, encoded once.
    pub phrase_out: Arc<Vec<u8>>,
}

impl EmuState {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A running agent emulator. Dropping it stops accepting (open connections finish on their own).
#[derive(Debug)]
pub struct AgentEmulator {
    addr: SocketAddr,
    tls: bool,
    state: Arc<EmuState>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for EmuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmuState")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl AgentEmulator {
    /// Serves plain `ws://` / `http://` on `addr` (use port 0 for an ephemeral port).
    pub async fn start(addr: SocketAddr, config: AgentEmulatorConfig) -> io::Result<Self> {
        Self::start_inner(addr, config, None).await
    }

    /// Serves `wss://` / `https://` with `identity`.
    pub async fn start_tls(
        addr: SocketAddr,
        config: AgentEmulatorConfig,
        identity: &TestIdentity,
    ) -> io::Result<Self> {
        let cfg = identity
            .server_config()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::start_inner(addr, config, Some(tokio_rustls::TlsAcceptor::from(cfg))).await
    }

    async fn start_inner(
        addr: SocketAddr,
        config: AgentEmulatorConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(EmuState {
            phrase_out: Arc::new(audio::encode_for(
                config.output_format,
                &audio::phrase_16k(),
            )),
            config,
            tls: tls.is_some(),
            records: Mutex::new(Vec::new()),
            signatures: Mutex::new(HashSet::new()),
            next_id: AtomicU64::new(0),
            conversations: AtomicU64::new(0),
            signed_url_connections: AtomicU64::new(0),
            changed: Notify::new(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "agent emulator accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let probe = st
                    .config
                    .script
                    .hang_after_metadata
                    .and_then(|_| conn::Probe::of(&tcp));
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let result = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(s) => conn::serve(s, st, probe).await,
                            Err(e) => Err(e),
                        },
                        None => conn::serve(tcp, st, probe).await,
                    };
                    if let Err(e) = result {
                        debug!(%peer, error = %e, "agent emulator connection ended with error");
                    }
                });
            }
        });
        Ok(AgentEmulator {
            addr,
            tls: state.tls,
            state,
            accept,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP (or TLS) connections that carried signed-URL requests: one for many requests when
    /// the client keeps its connection alive.
    pub fn signed_url_connections(&self) -> u64 {
        self.state.signed_url_connections.load(Ordering::Relaxed)
    }

    /// The audio of every agent response (the embedded phrase in the output format): an
    /// [`AudioSent`] chunk is `response_audio()[offset..offset + len]`.
    pub fn response_audio(&self) -> Arc<Vec<u8>> {
        self.state.phrase_out.clone()
    }

    /// `ws://127.0.0.1:PORT` or `wss://localhost:PORT`: the client's `base_url`.
    pub fn ws_base_url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}", self.addr.port())
        } else {
            format!("ws://{}", self.addr)
        }
    }

    /// `http://…` or `https://…`: the client's `api_base_url`.
    pub fn http_base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Snapshots of every WebSocket connection so far, in accept order.
    pub fn records(&self) -> Vec<ConnectionRecord> {
        let recs = match self.state.records.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        recs.iter()
            .map(|r| match r.lock() {
                Ok(r) => r.clone(),
                Err(p) => p.into_inner().clone(),
            })
            .collect()
    }

    /// Waits until at least `n` WebSocket connections have finished (or `timeout` passes) and
    /// returns the records.
    pub async fn wait_finished(&self, n: usize, timeout: Duration) -> Vec<ConnectionRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            let recs = self.records();
            if recs.iter().filter(|r| r.finished).count() >= n {
                return recs;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.records();
            }
        }
    }
}

impl Drop for AgentEmulator {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
