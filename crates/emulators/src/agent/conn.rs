//! One emulator connection: HTTP routing (signed URL / WebSocket upgrade), then the server side
//! of a conversation (see the module docs of [`super`]).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tracing::debug;
use trunkline_agent::AudioFormat;
use trunkline_agent::client::{CONVERSATION_PATH, SIGNED_URL_PATH};
use trunkline_agent::protocol::{
    AgentResponseCorrectionEvent, AgentResponseEvent, AgentToolResponse, AudioEvent, ClientMessage,
    ClientToolCall, ConversationInitiationClientData, ConversationInitiationMetadataEvent,
    ErrorEvent, InterruptionEvent, PingEvent, ServerEvent, UserTranscriptionEvent,
};

use super::audio::{self, Vad, VadEvent};
use super::http::{self, RequestHead};
use super::{AbortKind, ConnectionRecord, EmuState};

const PHRASE_TEXT: &str = "Hello, this is the test agent. How can I help?";

fn lock(rec: &Mutex<ConnectionRecord>) -> std::sync::MutexGuard<'_, ConnectionRecord> {
    match rec.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A second handle on a connection's TCP socket (a duplicated descriptor), to see the peer
/// close it without reading the data queued on it.
pub(crate) struct Probe(tokio::net::TcpStream);

impl Probe {
    pub(crate) fn of(tcp: &tokio::net::TcpStream) -> Option<Probe> {
        use std::os::fd::AsFd;
        let fd = tcp.as_fd().try_clone_to_owned().ok()?;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true).ok()?;
        tokio::net::TcpStream::from_std(std).ok().map(Probe)
    }

    /// Resolves once the peer has closed its end (FIN or RST seen), data still unread or not.
    async fn closed(&self) {
        loop {
            match self.0.ready(tokio::io::Interest::READABLE).await {
                Ok(r) if r.is_read_closed() => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(_) => return,
            }
        }
    }
}

pub(crate) async fn serve<S>(
    mut stream: S,
    st: Arc<EmuState>,
    probe: Option<Probe>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = http::read_head(&mut stream).await?;
    // Signed-URL requests on a kept-alive connection, like the real API (HTTP/1.1): a client
    // that shares its connection pool sets up TCP and TLS once for many calls.
    if is_signed_url_request(&head) {
        st.signed_url_connections.fetch_add(1, Ordering::Relaxed);
        loop {
            let close = head
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let resp = signed_url_response(&head, &st, !close);
            stream.write_all(&resp).await?;
            if close {
                return stream.shutdown().await;
            }
            head = match tokio::time::timeout(KEEP_ALIVE_IDLE, http::read_head(&mut stream)).await {
                Ok(Ok(h)) if is_signed_url_request(&h) => h,
                // Idle, closed by the client, or anything else on a kept-alive connection.
                _ => return stream.shutdown().await,
            };
        }
    }
    let path = head.path().to_owned();
    if path != CONVERSATION_PATH {
        stream
            .write_all(&http::response(404, "Not Found", "text/plain", "not found"))
            .await?;
        return stream.shutdown().await;
    }
    let Some(key) = head.header("sec-websocket-key").map(str::to_owned) else {
        stream
            .write_all(&http::response(
                400,
                "Bad Request",
                "text/plain",
                "websocket only",
            ))
            .await?;
        return stream.shutdown().await;
    };
    let agent_id = head.query("agent_id");
    let cfg = &st.config;
    if agent_id
        .as_ref()
        .is_none_or(|a| !cfg.agent_ids.is_empty() && !cfg.agent_ids.contains(a))
    {
        let body = r#"{"detail":"agent not found"}"#;
        stream
            .write_all(&http::response(404, "Not Found", "application/json", body))
            .await?;
        return stream.shutdown().await;
    }
    if cfg.require_signed_url {
        let sig = head.query("conversation_signature");
        let valid = sig.is_some_and(|s| {
            let mut set = match st.signatures.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            set.remove(&s)
        });
        if !valid {
            let body = r#"{"detail":"invalid or missing conversation_signature"}"#;
            stream
                .write_all(&http::response(403, "Forbidden", "application/json", body))
                .await?;
            return stream.shutdown().await;
        }
    }
    let accept = derive_accept_key(key.as_bytes());
    // `@elevenlabs/client` in a browser asks for the `convai` subprotocol (plus `bearer.<token>`
    // with an authorization): the real server selects `convai`, and a browser fails a handshake
    // whose answer selects none of the protocols it asked for (RFC 6455 §4.1, §4.2.2).
    let subprotocol = head
        .header("sec-websocket-protocol")
        .and_then(|v| v.split(',').map(str::trim).find(|p| *p == "convai"))
        .map(str::to_owned);
    let selected = subprotocol.as_deref().map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{selected}\r\n"
    );
    stream.write_all(resp.as_bytes()).await?;
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024);
    let ws = WebSocketStream::from_partially_read(
        stream,
        head.leftover.clone(),
        Role::Server,
        Some(ws_cfg),
    )
    .await;

    let rec = Arc::new(Mutex::new(ConnectionRecord {
        request_target: head.target.clone(),
        agent_id,
        subprotocol,
        origin: head.header("origin").map(str::to_owned),
        caller_sample_rate: cfg.input_format.sample_rate(),
        ..Default::default()
    }));
    {
        let mut recs = match st.records.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        recs.push(rec.clone());
    }
    let (sink, stream) = ws.split();
    let mut conv = Conversation::new(sink, st.clone(), rec.clone());
    conv.probe = probe;
    let result = conv.run(stream).await;
    {
        let mut r = lock(&rec);
        r.finished = true;
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        r.ended_at.get_or_insert(now);
    }
    st.changed.notify_waiters();
    result
}

/// How long a kept-alive signed-URL connection may stay idle.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);

fn is_signed_url_request(head: &RequestHead) -> bool {
    let path = head.path();
    head.method == "GET"
        && (path == SIGNED_URL_PATH || path == "/v1/convai/conversation/get_signed_url")
}

fn signed_url_response(head: &RequestHead, st: &EmuState, keep_alive: bool) -> Vec<u8> {
    let key_ok = st
        .config
        .api_key
        .as_deref()
        .is_some_and(|k| head.header("xi-api-key") == Some(k));
    if !key_ok {
        let body = r#"{"detail":{"status":"invalid_api_key","message":"Invalid API key"}}"#;
        return http::response_with(401, "Unauthorized", "application/json", body, keep_alive);
    }
    let Some(agent_id) = head.query("agent_id") else {
        return http::response_with(
            422,
            "Unprocessable Entity",
            "application/json",
            r#"{"detail":"agent_id required"}"#,
            keep_alive,
        );
    };
    let sig = format!("emu_sig_{}", st.next_id());
    {
        let mut set = match st.signatures.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        set.insert(sig.clone());
    }
    let scheme = if st.tls { "wss" } else { "ws" };
    let host = head.header("host").unwrap_or("127.0.0.1");
    let url = format!(
        "{scheme}://{host}{CONVERSATION_PATH}?agent_id={}&conversation_signature={sig}",
        encode_query(&agent_id)
    );
    let body = serde_json::json!({ "signed_url": url }).to_string();
    http::response_with(200, "OK", "application/json", &body, keep_alive)
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What to do when a response has been fully sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    EndCall,
    ToolCall,
}

struct Speech {
    event_id: i64,
    pos: usize,
    paused: bool,
    then: After,
}

enum Flow {
    Continue,
    Stop,
}

struct Conversation<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    st: Arc<EmuState>,
    rec: Arc<Mutex<ConnectionRecord>>,
    phrase: Arc<Vec<u8>>,
    out_fmt: AudioFormat,
    in_fmt: AudioFormat,
    next_event_id: i64,
    speech: Option<Speech>,
    /// Caller-audio time (ms) at which the agent's current audio has been played out.
    playout_end_ms: u64,
    current_response: Option<i64>,
    next_burst: Instant,
    rng: u64,
    vad: Vad,
    turns: u32,
    pending_tool: Option<String>,
    /// Responses started on this connection.
    responses: usize,
    /// The agent ends the call after the caller's first turn ([`super::Script::end_call_percent`]).
    ends_call: bool,
    ping_seq: i64,
    ping_outstanding: Option<(i64, Instant)>,
    last_rtt_ms: Option<u64>,
    next_ping: Option<Instant>,
    last_audio: Instant,
    stalled_until: Option<Instant>,
    probe: Option<Probe>,
    /// When the emulator last started reading the socket (the metadata, or the end of a stall).
    reading_since: Instant,
}

impl<S> Conversation<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(
        sink: SplitSink<WebSocketStream<S>, Message>,
        st: Arc<EmuState>,
        rec: Arc<Mutex<ConnectionRecord>>,
    ) -> Self {
        let cfg = &st.config;
        let out_fmt = cfg.output_format;
        let in_fmt = cfg.input_format;
        let phrase = st.phrase_out.clone();
        let now = Instant::now();
        let vad = Vad::new(cfg.vad, in_fmt.sample_rate());
        let seed = cfg.seed ^ st.next_id().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Conversation {
            sink,
            phrase,
            out_fmt,
            in_fmt,
            next_event_id: 0,
            speech: None,
            playout_end_ms: 0,
            current_response: None,
            next_burst: now,
            rng: seed | 1,
            vad,
            turns: 0,
            pending_tool: None,
            responses: 0,
            ends_call: false,
            ping_seq: 0,
            ping_outstanding: None,
            last_rtt_ms: None,
            next_ping: None,
            last_audio: now,
            stalled_until: None,
            probe: None,
            reading_since: now,
            st,
            rec,
        }
    }

    fn rand_in(&mut self, (lo, hi): (u32, u32)) -> u32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let hi = hi.max(lo);
        lo + (r % u64::from(hi - lo + 1)) as u32
    }

    fn new_event_id(&mut self) -> i64 {
        self.next_event_id += 1;
        self.next_event_id
    }

    async fn send_event(&mut self, ev: &ServerEvent) -> io::Result<()> {
        lock(&self.rec).sent_types.push(ev.event_type().to_owned());
        self.sink
            .send(Message::text(ev.to_json()))
            .await
            .map_err(io::Error::other)
    }

    async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        lock(&self.rec).close_code = Some(code);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        Ok(())
    }

    async fn error_close(&mut self, code: u16, error_type: &str, message: &str) -> io::Result<()> {
        let ev = ServerEvent::Error(ErrorEvent {
            code: Some(code),
            message: Some(message.to_owned()),
            error_type: Some(error_type.to_owned()),
            reason: Some(message.to_owned()),
            debug_message: None,
            details: None,
        });
        self.send_event(&ev).await?;
        self.close(code, message).await
    }

    /// Records something the real server forbids (see [`ConnectionRecord::violations`]).
    fn violation(&self, what: String) {
        debug!(violation = %what, "agent emulator: client protocol violation");
        lock(&self.rec).violations.push(what);
    }

    fn record_message(&self, text: &str, parsed: Option<&ClientMessage>) {
        if !self.st.config.record {
            return;
        }
        let line = match parsed {
            Some(ClientMessage::UserAudioChunk(c)) => {
                let n = BASE64
                    .decode(c.user_audio_chunk.as_bytes())
                    .map_or(0, |b| b.len());
                format!("{{\"user_audio_chunk_bytes\":{n}}}")
            }
            Some(_) => text.to_owned(),
            None => serde_json::json!({ "unparseable": text }).to_string(),
        };
        lock(&self.rec).messages.push(line);
    }

    async fn run(&mut self, mut stream: SplitStream<WebSocketStream<S>>) -> io::Result<()> {
        // 1. The first message must be conversation_initiation_client_data.
        let init_deadline = Instant::now() + self.st.config.init_timeout;
        let init = loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                () = sleep_until(init_deadline) => {
                    return self.error_close(1008, "invalid_message", "No conversation_initiation_client_data received").await;
                }
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let parsed = ClientMessage::decode(t.as_str());
                    self.record_message(t.as_str(), parsed.as_ref().ok());
                    match parsed {
                        Ok(ClientMessage::ConversationInitiationClientData(d)) => break *d,
                        other => {
                            self.violation(match other {
                                Ok(m) => format!(
                                    "first message is {:?}, not conversation_initiation_client_data",
                                    m.message_type()
                                ),
                                Err(e) => format!("first message invalid ({e}): {}", clip(&t)),
                            });
                            return self
                                .error_close(
                                    1008,
                                    "invalid_message",
                                    "First message must be conversation_initiation_client_data",
                                )
                                .await;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => {
                    self.violation(format!(
                        "first message is a {} frame, not conversation_initiation_client_data",
                        frame_kind(&m)
                    ));
                    return self
                        .error_close(
                            1008,
                            "invalid_message",
                            "First message must be conversation_initiation_client_data",
                        )
                        .await;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(()),
            }
        };
        if let Some(flow) = self.validate_init(&init).await? {
            return flow;
        }
        {
            let n = self.st.conversations.fetch_add(1, Ordering::Relaxed);
            let pct = u64::from(self.st.config.script.end_call_percent.min(100));
            // Spread evenly: connection n ends the call when ⌊(n+1)·p/100⌋ > ⌊n·p/100⌋.
            self.ends_call = (n + 1) * pct / 100 > n * pct / 100;
            let mut rec = lock(&self.rec);
            rec.ends_call = self.ends_call;
            rec.dynamic_variables = init
                .dynamic_variables
                .iter()
                .map(|(k, v)| {
                    let text = match serde_json::to_value(v) {
                        Ok(serde_json::Value::String(s)) => s,
                        Ok(other) => other.to_string(),
                        Err(_) => String::new(),
                    };
                    (k.clone(), text)
                })
                .collect();
        }

        // 2. Metadata.
        let conversation_id = format!("conv_emu_{}", self.st.next_id());
        lock(&self.rec).conversation_id = Some(conversation_id.clone());
        let meta =
            ServerEvent::ConversationInitiationMetadata(ConversationInitiationMetadataEvent {
                conversation_id,
                agent_output_audio_format: Some(self.out_fmt.to_string()),
                user_input_audio_format: Some(self.in_fmt.to_string()),
            });
        self.send_event(&meta).await?;
        let now = Instant::now();
        self.last_audio = now;
        self.reading_since = now;
        self.next_ping = self
            .st
            .config
            .ping_interval
            .map(|i| now + i.min(self.st.config.first_ping_after));
        self.stalled_until = self.st.config.script.stall_after_metadata.map(|d| now + d);
        if let Some(hang) = self.st.config.script.hang_after_metadata {
            // A frozen agent: nothing read, nothing sent; only the TCP connection is watched.
            let closed = async {
                match self.probe.as_ref() {
                    Some(p) => p.closed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = closed => {
                    let mut rec = lock(&self.rec);
                    let at = std::time::Instant::now();
                    rec.peer_closed_at = Some(at);
                    rec.ended_at.get_or_insert(at);
                    return Ok(());
                }
                () = tokio::time::sleep(hang) => {}
            }
            self.last_audio = Instant::now();
            self.next_ping = self.st.config.ping_interval.map(|i| Instant::now() + i);
        }
        if self.st.config.script.garbage {
            self.send_garbage().await?;
        }
        if self.st.config.script.first_message {
            let then = if self.st.config.script.end_after_turns == Some(0) {
                After::EndCall
            } else if self
                .st
                .config
                .script
                .tool_call
                .as_ref()
                .is_some_and(|t| t.after_turn == 0)
            {
                After::ToolCall
            } else {
                After::Nothing
            };
            self.start_response(PHRASE_TEXT.to_owned(), then).await?;
        }

        // 3. Main loop.
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let burst_at = if self.speech.is_some() {
                self.next_burst
            } else {
                far
            };
            let silence_at = self.last_audio + self.st.config.silence_timeout;
            let stalled = self.stalled_until.is_some_and(|t| t > Instant::now());
            let stall_end = self.stalled_until.filter(|_| stalled).unwrap_or(far);
            // While the emulator itself does not read, it neither pings nor lets a pong deadline
            // run out: the deadline counts from the ping or the end of the stall, if later.
            let ping_at = match self.ping_outstanding {
                _ if stalled => far,
                Some((_, sent)) => sent.max(self.reading_since) + self.st.config.pong_timeout,
                None => self.next_ping.unwrap_or(far),
            };
            let flow = tokio::select! {
                // Messages first: a pong already received is never judged late because a timer
                // happened to be polled first.
                biased;
                msg = stream.next(), if !stalled => self.on_message(msg).await?,
                () = sleep_until(burst_at) => self.on_burst().await?,
                () = sleep_until(ping_at) => self.on_ping_timer().await?,
                () = sleep_until(silence_at) => {
                    let secs = self.st.config.silence_timeout.as_secs_f64();
                    let msg = format!("No user input for {secs} seconds");
                    self.error_close(1002, "transport_receive_timeout", &msg).await?;
                    Flow::Stop
                }
                () = sleep_until(stall_end), if stalled => {
                    self.stalled_until = None;
                    self.reading_since = Instant::now();
                    Flow::Continue
                }
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        lock(&self.rec)
            .ended_at
            .get_or_insert_with(std::time::Instant::now);
        // Give the client a moment to answer our close, then drop.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Close(frame) = m {
                    lock(&self.rec).client_close_code =
                        Some(frame.map_or(1005, |f| u16::from(f.code)));
                    break;
                }
            }
        })
        .await;
        Ok(())
    }

    /// Returns `Some(result)` when the connection must end.
    async fn validate_init(
        &mut self,
        init: &ConversationInitiationClientData,
    ) -> io::Result<Option<io::Result<()>>> {
        if init.conversation_config_override.is_some() && !self.st.config.allow_overrides {
            self.violation("conversation_config_override sent; the agent allows none".to_owned());
            self.error_close(
                1008,
                "override_error",
                "Override for field 'conversation_config_override' is not allowed by config.",
            )
            .await?;
            return Ok(Some(Ok(())));
        }
        let missing: Vec<&str> = self
            .st
            .config
            .required_dynamic_variables
            .iter()
            .filter(|v| !init.dynamic_variables.contains_key(*v))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "Missing required dynamic variables in first message: {{{}}}",
                missing.join(", ")
            );
            self.violation(msg.clone());
            self.error_close(1008, "missing_dynamic_variable", &msg)
                .await?;
            return Ok(Some(Ok(())));
        }
        Ok(None)
    }

    async fn send_garbage(&mut self) -> io::Result<()> {
        let sends = [
            Message::text("this is not json {"),
            Message::binary(vec![1u8, 2, 3]),
            Message::text(r#"{"type":"brand_new_event","brand_new_event":{"x":1}}"#),
            Message::text(
                r#"{"type":"vad_score","vad_score_event":{"vad_score":0.5,"future_field":true},"another":1}"#,
            ),
            Message::text(r#"{"no_type":true}"#),
        ];
        for m in sends {
            self.sink.send(m).await.map_err(io::Error::other)?;
        }
        lock(&self.rec).sent_types.push("garbage".to_owned());
        Ok(())
    }

    async fn start_response(&mut self, text: String, then: After) -> io::Result<()> {
        let event_id = self.new_event_id();
        self.send_event(&ServerEvent::AgentResponse(AgentResponseEvent {
            agent_response: text,
            event_id: Some(event_id),
        }))
        .await?;
        let total_ms = (self.phrase.len() / self.out_fmt.bytes_for_ms(1).max(1)) as u64;
        self.playout_end_ms = self.vad.audio_ms.max(self.playout_end_ms) + total_ms;
        self.current_response = Some(event_id);
        self.responses += 1;
        self.speech = Some(Speech {
            event_id,
            pos: 0,
            paused: false,
            then,
        });
        self.next_burst = Instant::now();
        Ok(())
    }

    async fn on_burst(&mut self) -> io::Result<Flow> {
        let n = self.rand_in(self.st.config.burst_chunks).max(1);
        let mut sent_ms = 0u32;
        for _ in 0..n {
            let ms = self.rand_in(self.st.config.chunk_ms).max(10);
            let Some(sp) = self.speech.as_mut() else {
                break;
            };
            let len = self.out_fmt.bytes_for_ms(ms);
            let end = (sp.pos + len).min(self.phrase.len());
            let chunk = &self.phrase[sp.pos..end];
            let (offset, len) = (sp.pos, end - sp.pos);
            let event_id = sp.event_id;
            let first_chunk = sp.pos == 0;
            sp.pos = end;
            let done = end >= self.phrase.len();
            let pause_now = !sp.paused && end * 2 >= self.phrase.len();
            let pause = self
                .st
                .config
                .script
                .pause_mid_response
                .filter(|_| pause_now && !done);
            if pause.is_some() {
                sp.paused = true;
            }
            let ev = ServerEvent::Audio(AudioEvent {
                audio_base_64: BASE64.encode(chunk),
                event_id,
                alignment: None,
            });
            if first_chunk && self.st.config.record {
                lock(&self.rec)
                    .response_starts
                    .push(std::time::Instant::now());
            }
            self.send_event(&ev).await?;
            if self.st.config.record {
                lock(&self.rec).audio_sent.push(super::AudioSent {
                    at: std::time::Instant::now(),
                    response: self.responses.saturating_sub(1),
                    offset,
                    len,
                });
            }
            sent_ms += ms;
            if done {
                let then = self.speech.take().map_or(After::Nothing, |s| s.then);
                return self.after_speech(then).await;
            }
            if let Some(p) = pause {
                self.next_burst = Instant::now() + p;
                return Ok(Flow::Continue);
            }
        }
        let speed = self.st.config.speed.max(0.01);
        self.next_burst =
            Instant::now() + Duration::from_secs_f64(f64::from(sent_ms) / 1000.0 / speed);
        Ok(Flow::Continue)
    }

    async fn after_speech(&mut self, then: After) -> io::Result<Flow> {
        match then {
            After::Nothing => Ok(Flow::Continue),
            After::EndCall => {
                if self.st.config.script.end_call_tool_response {
                    let id = self.new_event_id();
                    let ev = ServerEvent::AgentToolResponse(AgentToolResponse {
                        tool_name: "end_call".into(),
                        tool_call_id: format!("emu_end_call_{id}"),
                        tool_type: Some("system".into()),
                        is_error: Some(false),
                        is_called: Some(true),
                        event_id: Some(id),
                        full_tool_result: None,
                        truncated: None,
                        is_blocked: None,
                    });
                    self.send_event(&ev).await?;
                }
                // Closed right after the last audio: the client must drain what it received.
                self.close(1000, "").await?;
                Ok(Flow::Stop)
            }
            After::ToolCall => {
                let Some(spec) = self.st.config.script.tool_call.clone() else {
                    return Ok(Flow::Continue);
                };
                let id = self.new_event_id();
                let tool_call_id = format!("emu_tool_call_{id}");
                self.pending_tool = Some(tool_call_id.clone());
                lock(&self.rec)
                    .tool_calls
                    .push((spec.tool_name.clone(), spec.parameters.clone()));
                let ev = ServerEvent::ClientToolCall(ClientToolCall {
                    tool_name: spec.tool_name,
                    tool_call_id,
                    parameters: spec.parameters,
                    event_id: Some(id),
                });
                self.send_event(&ev).await?;
                Ok(Flow::Continue)
            }
        }
    }

    async fn on_ping_timer(&mut self) -> io::Result<Flow> {
        if let Some((id, sent)) = self.ping_outstanding {
            self.violation(format!(
                "no pong for ping {id} within {:?} (sent {:?} ago)",
                self.st.config.pong_timeout,
                sent.elapsed()
            ));
            self.close(1002, "ping timeout").await?;
            return Ok(Flow::Stop);
        }
        self.ping_seq += 1;
        let ev = ServerEvent::Ping(PingEvent {
            event_id: self.ping_seq,
            ping_ms: self.last_rtt_ms.map(Into::into),
        });
        let now = Instant::now();
        self.ping_outstanding = Some((self.ping_seq, now));
        self.next_ping = self.st.config.ping_interval.map(|i| now + i);
        self.send_event(&ev).await?;
        Ok(Flow::Continue)
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> io::Result<Flow> {
        let text = match msg {
            None => return Ok(Flow::Stop),
            Some(Err(e)) => {
                debug!(error = %e, "emulator read failed");
                return Ok(Flow::Stop);
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                lock(&self.rec).client_close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                return Ok(Flow::Stop);
            }
            Some(Ok(m @ (Message::Binary(_) | Message::Frame(_)))) => {
                // Every client message is JSON text (§2.2, §2.3); the document does not say what
                // the real server does with a binary frame: recorded, not closed.
                self.violation(format!("{} frame ({} bytes)", frame_kind(&m), m.len()));
                return Ok(Flow::Continue);
            }
            Some(Ok(_)) => return Ok(Flow::Continue),
        };
        let parsed = ClientMessage::decode(text.as_str());
        self.record_message(text.as_str(), parsed.as_ref().ok());
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                // Invalid JSON or missing fields: the real server closes 1008 (§2.8).
                self.violation(format!("invalid message ({e}): {}", clip(&text)));
                self.error_close(1008, "invalid_message", "Invalid message received")
                    .await?;
                return Ok(Flow::Stop);
            }
        };
        match msg {
            ClientMessage::UserAudioChunk(c) => {
                self.last_audio = Instant::now();
                let Ok(bytes) = c.decode_audio() else {
                    self.violation("user_audio_chunk is not base64".to_owned());
                    self.error_close(1008, "invalid_message", "Invalid audio chunk")
                        .await?;
                    return Ok(Flow::Stop);
                };
                if matches!(self.in_fmt, AudioFormat::Pcm { .. }) && bytes.len() % 2 == 1 {
                    // PCM16 comes in whole samples; the document does not say what the real
                    // server does with a half sample: recorded, not closed.
                    self.violation(format!(
                        "user_audio_chunk of {} bytes: odd length for {} (16-bit samples)",
                        bytes.len(),
                        self.in_fmt
                    ));
                }
                let samples = audio::decode_from(self.in_fmt, &bytes);
                if self.st.config.record {
                    let mut rec = lock(&self.rec);
                    let offset = rec.caller_audio.len();
                    rec.caller_chunks.push((std::time::Instant::now(), offset));
                    rec.caller_audio.extend_from_slice(&samples);
                }
                let mut events = Vec::new();
                self.vad.feed(&samples, &mut events);
                for ev in events {
                    if let Flow::Stop = self.on_vad(ev).await? {
                        return Ok(Flow::Stop);
                    }
                }
                Ok(Flow::Continue)
            }
            ClientMessage::Pong { event_id } => {
                if let Some((id, sent)) = self.ping_outstanding
                    && id == event_id
                {
                    self.ping_outstanding = None;
                    self.last_rtt_ms = Some(sent.elapsed().as_millis() as u64);
                    lock(&self.rec).pongs += 1;
                } else {
                    // A pong must echo the outstanding ping's id (§2.9); the document does not
                    // say what the real server does otherwise: recorded, not closed.
                    self.violation(format!(
                        "pong for event_id {event_id}; outstanding ping: {:?}",
                        self.ping_outstanding.map(|(id, _)| id)
                    ));
                }
                Ok(Flow::Continue)
            }
            ClientMessage::ClientToolResult(r) => {
                lock(&self.rec)
                    .tool_results
                    .push((r.result.clone(), r.is_error));
                if self.pending_tool.as_deref() == Some(r.tool_call_id.as_str()) && !self.ending() {
                    self.pending_tool = None;
                    let text = format!("The tool said: {}", r.result);
                    self.start_response(text, After::Nothing).await?;
                }
                Ok(Flow::Continue)
            }
            ClientMessage::UserMessage { text } => {
                lock(&self.rec)
                    .user_messages
                    .push((std::time::Instant::now(), text.clone()));
                self.interrupt_if_speaking().await?;
                self.on_turn(text).await
            }
            ClientMessage::ConversationInitiationClientData(_) => {
                // One initiation per conversation (§2.2); the document does not say what the real
                // server does with a second one: recorded, not closed.
                self.violation("a second conversation_initiation_client_data".to_owned());
                Ok(Flow::Continue)
            }
            ClientMessage::Unknown { message_type, .. } => {
                // Not a client message of the contract (§2.3); the document does not say whether
                // the real server closes on one: recorded, not closed.
                self.violation(format!("unknown message type {message_type:?}"));
                Ok(Flow::Continue)
            }
            _ => Ok(Flow::Continue),
        }
    }

    /// The agent is saying its goodbye before ending the call: it does not take new turns or
    /// get interrupted any more.
    fn ending(&self) -> bool {
        self.speech
            .as_ref()
            .is_some_and(|s| s.then == After::EndCall)
    }

    async fn interrupt_if_speaking(&mut self) -> io::Result<()> {
        let Some(event_id) = self.current_response else {
            return Ok(());
        };
        if self.vad.audio_ms >= self.playout_end_ms && self.speech.is_none() {
            return Ok(());
        }
        if self.ending() {
            return Ok(());
        }
        // A tool call the agent meant to make after this response is still made.
        let tool_call_due = self
            .speech
            .take()
            .is_some_and(|s| s.then == After::ToolCall);
        self.playout_end_ms = self.vad.audio_ms;
        self.current_response = None;
        self.send_event(&ServerEvent::Interruption(InterruptionEvent { event_id }))
            .await?;
        {
            let mut rec = lock(&self.rec);
            rec.interruptions += 1;
            rec.interruption_times.push(std::time::Instant::now());
        }
        // Stale audio that was already in flight inside the service.
        for _ in 0..self.st.config.script.stale_chunks_after_interruption {
            let len = self.out_fmt.bytes_for_ms(20).min(self.phrase.len());
            let ev = ServerEvent::Audio(AudioEvent {
                audio_base_64: BASE64.encode(&self.phrase[..len]),
                event_id,
                alignment: None,
            });
            self.send_event(&ev).await?;
        }
        if self.st.config.script.corrections {
            let ev = ServerEvent::AgentResponseCorrection(AgentResponseCorrectionEvent {
                original_agent_response: PHRASE_TEXT.to_owned(),
                corrected_agent_response: "Hello...".to_owned(),
                event_id: Some(event_id),
            });
            self.send_event(&ev).await?;
        }
        if tool_call_due {
            self.after_speech(After::ToolCall).await?;
        }
        Ok(())
    }

    async fn on_vad(&mut self, ev: VadEvent) -> io::Result<Flow> {
        match ev {
            VadEvent::SpeechStart => {
                self.interrupt_if_speaking().await?;
                Ok(Flow::Continue)
            }
            VadEvent::SpeechEnd { duration_ms } => {
                let transcript = format!("(speech {:.1} s)", duration_ms as f64 / 1000.0);
                self.on_turn(transcript).await
            }
        }
    }

    async fn on_turn(&mut self, transcript: String) -> io::Result<Flow> {
        if self.ending() {
            return Ok(Flow::Continue);
        }
        self.turns += 1;
        lock(&self.rec).turns = self.turns;
        let id = self.new_event_id();
        self.send_event(&ServerEvent::UserTranscript(UserTranscriptionEvent {
            user_transcript: transcript,
            event_id: Some(id),
        }))
        .await?;
        let script = self.st.config.script.clone();
        if let Some((turn, kind)) = script.abort_after_turns
            && turn == self.turns
        {
            return match kind {
                AbortKind::Close1011 => {
                    self.close(1011, "").await?;
                    Ok(Flow::Stop)
                }
                AbortKind::Drop => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "scripted drop",
                )),
            };
        }
        if script.end_after_turns == Some(self.turns) || (self.ends_call && self.turns == 1) {
            self.start_response("Goodbye!".to_owned(), After::EndCall)
                .await?;
        } else if script
            .tool_call
            .as_ref()
            .is_some_and(|t| t.after_turn == self.turns)
        {
            self.after_speech(After::ToolCall).await?;
        } else {
            self.start_response(PHRASE_TEXT.to_owned(), After::Nothing)
                .await?;
        }
        Ok(Flow::Continue)
    }
}

/// A message for a violation line, cut to 120 characters.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(120).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

fn frame_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw",
    }
}
