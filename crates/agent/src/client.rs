//! The agent WebSocket client (ELEVENLABS.md §2.1–2.2, §2.9): URL building (public `agent_id`
//! URLs, signed URLs fetched with `xi-api-key`), TLS (rustls with the `ring` provider and webpki
//! roots, or a caller-supplied root store), the handshake (`conversation_initiation_client_data`
//! first, then `conversation_initiation_metadata` read for the conversation id and formats), and
//! the connection tasks behind [`crate::session::AgentSession`].
//!
//! Per connection there is one reader task and **one writer task**. The writer sends control
//! messages (pongs first) before audio and coalesces everything queued into one flush. Audio goes
//! through a bounded drop-oldest queue, so [`crate::session::AgentHandle::send_audio`] never
//! blocks and a stalled socket costs a bounded amount of memory.
//!
//! A dead agent is noticed ([`AgentConfig::stall_timeout`]): the writer sends a WebSocket ping
//! every quarter of the timeout, and the reader ends the conversation with
//! [`CloseReason::AgentTimeout`] when a ping goes unanswered that long (or, from a server that
//! never answered one, nothing at all arrives that long), or when one of our writes has been
//! blocked that long. Every close is bounded: our close frame, then at most
//! [`CLOSE_HANDSHAKE_TIMEOUT`] for the peer's, then the connection is dropped — also when a write
//! is blocked on a peer that stopped reading.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, warn};
use url::Url;

use crate::close::{CloseReason, Closed};
use crate::conn::{Control, Shared};
use crate::protocol::{
    AudioFormat, ClientMessage, ConversationInitiationClientData,
    ConversationInitiationMetadataEvent, ErrorEvent, InterruptionFilter, ServerEvent,
    UnsupportedFormat, encode_pong, encode_user_audio_chunk_into,
};
use crate::read_cap::ReadCap;
use crate::session::{AgentEvent, AgentHandle, AgentSession, ResponseCorrection, ToolRegistry};
use crate::tls::{TlsStream, Transport};

/// The production base URL.
pub const DEFAULT_BASE_URL: &str = "wss://api.elevenlabs.io";
/// The WebSocket path.
pub const CONVERSATION_PATH: &str = "/v1/convai/conversation";
/// How long our close frame may go unanswered before the connection is dropped.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The default [`AgentConfig::stall_timeout`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The signed-URL endpoint path (hyphenated: the current one).
pub const SIGNED_URL_PATH: &str = "/v1/convai/conversation/get-signed-url";

/// How to reach and set up one conversation.
#[derive(Clone)]
pub struct AgentConfig {
    /// WebSocket base, e.g. `wss://api.elevenlabs.io`, `wss://api.eu.residency.elevenlabs.io`,
    /// `ws://127.0.0.1:9000`.
    pub base_url: String,
    /// HTTP base for the signed-URL request; derived from `base_url` (`wss`→`https`,
    /// `ws`→`http`) when `None`.
    pub api_base_url: Option<String>,
    /// The agent id.
    pub agent_id: String,
    /// With an API key the client fetches a signed URL first (private agents).
    pub api_key: Option<String>,
    /// Use this signed URL as is (opaque) instead of building or fetching one.
    pub signed_url: Option<String>,
    /// Query parameters appended to the URL (`source`, `version`, `environment`).
    pub extra_query: Vec<(String, String)>,
    /// The first message. `type` is added by the client.
    pub initiation: ConversationInitiationClientData,
    /// Trust these roots instead of the webpki roots (tests, private CAs).
    pub tls_roots: Option<Arc<RootCertStore>>,
    /// A TLS client configuration built once and shared by every connection (then `tls_roots`
    /// is not read). Sharing it is what lets rustls resume sessions (its session cache lives in
    /// the config) and saves building a root store per call; `None`: one is built per connect
    /// from `tls_roots`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The HTTP client of the signed-URL requests ([`AgentConfig::http_client`]), built once and
    /// shared by every call: its pool keeps the connection to the API alive, so a call does not
    /// pay a TCP and TLS handshake before it can connect. `None`: one is built per request.
    pub http: Option<reqwest::Client>,
    /// Audio chunks held while the socket stalls; the oldest is dropped past this.
    pub audio_queue_chunks: usize,
    /// tungstenite read buffer, 4 KiB by default: a µ-law chunk's frame fits it with the 1 KiB
    /// reads of the client's `ReadCap` (tungstenite's default 128 KiB is zeroed on every read).
    pub read_buffer_size: usize,
    /// Time allowed for TCP + TLS + WebSocket handshake + the metadata event.
    pub connect_timeout: Duration,
    /// End the conversation with [`CloseReason::AgentTimeout`] when the agent does not answer
    /// our WebSocket pings (sent every quarter of this), or our writes stay blocked, this long.
    /// `None`: no pings, no stall detection.
    pub stall_timeout: Option<Duration>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("base_url", &self.base_url)
            .field("api_base_url", &self.api_base_url)
            .field("agent_id", &self.agent_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "signed_url",
                &self.signed_url.as_ref().map(|_| "<redacted>"),
            )
            .field("extra_query", &self.extra_query)
            .field("audio_queue_chunks", &self.audio_queue_chunks)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// A config for `agent_id` against the production service with defaults.
    pub fn new(agent_id: impl Into<String>) -> Self {
        AgentConfig {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_base_url: None,
            agent_id: agent_id.into(),
            api_key: None,
            signed_url: None,
            extra_query: vec![
                ("source".to_owned(), "trunkline".to_owned()),
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ],
            initiation: ConversationInitiationClientData::default(),
            tls_roots: None,
            tls: None,
            http: None,
            audio_queue_chunks: 50,
            read_buffer_size: 4 * 1024,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
        }
    }

    /// Sets the WebSocket base URL.
    pub fn with_base_url(mut self, base: impl Into<String>) -> Self {
        self.base_url = base.into();
        self
    }

    /// The public-agent WebSocket URL: `{base}/v1/convai/conversation?agent_id=…&source=…`.
    pub fn public_url(&self) -> Result<Url, ConnectError> {
        let mut url = Url::parse(self.base_url.trim_end_matches('/'))
            .map_err(|e| ConnectError::Url(format!("{}: {e}", self.base_url)))?;
        match url.scheme() {
            "ws" | "wss" => {}
            s => return Err(ConnectError::Url(format!("scheme {s} is not ws/wss"))),
        }
        url.set_path(CONVERSATION_PATH);
        url.query_pairs_mut()
            .clear()
            .append_pair("agent_id", &self.agent_id);
        self.append_extra(&mut url);
        Ok(url)
    }

    /// The signed-URL endpoint: `{api_base}/v1/convai/conversation/get-signed-url?agent_id=…`.
    pub fn signed_url_endpoint(&self) -> Result<Url, ConnectError> {
        let base = match &self.api_base_url {
            Some(b) => b.clone(),
            None => {
                let b = self.base_url.trim_end_matches('/');
                if let Some(rest) = b.strip_prefix("wss://") {
                    format!("https://{rest}")
                } else if let Some(rest) = b.strip_prefix("ws://") {
                    format!("http://{rest}")
                } else {
                    b.to_owned()
                }
            }
        };
        let mut url = Url::parse(base.trim_end_matches('/'))
            .map_err(|e| ConnectError::Url(format!("{base}: {e}")))?;
        url.set_path(SIGNED_URL_PATH);
        url.query_pairs_mut()
            .clear()
            .append_pair("agent_id", &self.agent_id);
        Ok(url)
    }

    fn append_extra(&self, url: &mut Url) {
        if self.extra_query.is_empty() {
            return;
        }
        let mut q = url.query_pairs_mut();
        for (k, v) in &self.extra_query {
            q.append_pair(k, v);
        }
    }

    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(1024))
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024)
            .max_message_size(Some(16 * 1024 * 1024))
            .max_frame_size(Some(16 * 1024 * 1024))
    }

    /// The TLS client configuration a connection uses: the shared one ([`AgentConfig::tls`]) or
    /// a new one from [`AgentConfig::rustls_config`].
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        match &self.tls {
            Some(t) => Ok(t.clone()),
            None => Ok(Arc::new(self.rustls_config()?)),
        }
    }

    /// An HTTP client for [`fetch_signed_url`] with this config's TLS roots and connect timeout
    /// (the request's own timeout is set per request): build it once, share it through
    /// [`AgentConfig::http`].
    pub fn http_client(&self) -> Result<reqwest::Client, ConnectError> {
        Ok(reqwest::Client::builder()
            .tls_backend_preconfigured((*self.tls_config()?).clone())
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?)
    }

    /// The rustls client config: `ring` provider set explicitly (so a second provider elsewhere
    /// in the binary cannot make TLS set-up panic), webpki roots unless `tls_roots` is set.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, ConnectError> {
        let roots = match &self.tls_roots {
            Some(r) => (**r).clone(),
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ConnectError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A base URL or signed URL that does not parse, or has the wrong scheme.
    #[error("invalid url: {0}")]
    Url(String),
    /// TLS configuration failed.
    #[error("tls config: {0}")]
    Tls(rustls::Error),
    /// The signed-URL request failed (network or body).
    #[error("signed url request: {0}")]
    SignedUrlRequest(#[from] reqwest::Error),
    /// The signed-URL endpoint answered with an error status.
    #[error("signed url request: http status {0}")]
    SignedUrlStatus(u16),
    /// The server refused the WebSocket upgrade with this HTTP status (403: bad or reused
    /// signature, 404: unknown agent…).
    #[error("websocket upgrade refused: http status {0}")]
    Rejected(u16),
    /// The WebSocket handshake failed.
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// TCP/TLS/WebSocket/metadata took longer than `connect_timeout`.
    #[error("connect timed out")]
    Timeout,
    /// The server closed before sending `conversation_initiation_metadata`.
    #[error("closed during handshake: {:?}", .0.reason)]
    Closed(Box<Closed>),
    /// The metadata named an audio format this crate cannot handle.
    #[error("metadata: {0}")]
    Format(#[from] UnsupportedFormat),
}

impl From<tokio_tungstenite::tungstenite::Error> for ConnectError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        if let tokio_tungstenite::tungstenite::Error::Http(resp) = &e {
            return ConnectError::Rejected(resp.status().as_u16());
        }
        ConnectError::WebSocket(Box::new(e))
    }
}

/// Fetches a signed URL: `GET …/get-signed-url?agent_id=…` with `xi-api-key`.
pub async fn fetch_signed_url(config: &AgentConfig, api_key: &str) -> Result<String, ConnectError> {
    #[derive(serde::Deserialize)]
    struct SignedUrl {
        signed_url: String,
    }
    let endpoint = config.signed_url_endpoint()?;
    let client = match &config.http {
        Some(c) => c.clone(),
        None => config.http_client()?,
    };
    let resp = client
        .get(endpoint)
        .timeout(config.connect_timeout)
        .header("xi-api-key", api_key)
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(ConnectError::SignedUrlStatus(resp.status().as_u16()));
    }
    Ok(resp.json::<SignedUrl>().await?.signed_url)
}

type Ws = WebSocketStream<ReadCap<Transport>>;

/// Connects, sends `conversation_initiation_client_data`, waits for the metadata, and starts the
/// connection tasks. Must be called inside a tokio runtime.
pub async fn connect(
    config: AgentConfig,
    tools: ToolRegistry,
) -> Result<AgentSession, ConnectError> {
    tokio::time::timeout(config.connect_timeout, connect_inner(config, tools))
        .await
        .map_err(|_| ConnectError::Timeout)?
}

async fn connect_inner(
    config: AgentConfig,
    tools: ToolRegistry,
) -> Result<AgentSession, ConnectError> {
    let url = match (&config.signed_url, &config.api_key) {
        (Some(signed), _) => signed.clone(),
        (None, Some(key)) => fetch_signed_url(&config, key).await?,
        (None, None) => config.public_url()?.to_string(),
    };
    let tls = config.tls_config()?;
    let stream = open_transport(&url, tls).await?;
    let request = url.as_str().into_client_request()?;
    let (mut ws, _resp) = tokio_tungstenite::client_async_with_config(
        request,
        ReadCap(stream),
        Some(config.websocket_config()),
    )
    .await?;

    // 1. conversation_initiation_client_data is the first message (§2.2).
    let init = ClientMessage::ConversationInitiationClientData(Box::new(config.initiation.clone()));
    ws.send(Message::text(init.to_json())).await?;

    // 2. Read until the metadata; answer pings meanwhile; keep anything else for the stream.
    let shared = Arc::new(Shared::new(config.audio_queue_chunks));
    let mut early = Vec::new();
    let mut last_error: Option<ErrorEvent> = None;
    let metadata = loop {
        let Some(msg) = ws.next().await else {
            let closed = lost("closed during handshake", last_error);
            return Err(ConnectError::Closed(Box::new(closed)));
        };
        match msg? {
            Message::Text(text) => match ServerEvent::decode(text.as_str()) {
                Ok(d) => {
                    shared.count_decoded(&d);
                    match d.event {
                        ServerEvent::ConversationInitiationMetadata(m) => break m,
                        ServerEvent::Ping(p) => {
                            shared.record_ping(p.ping_ms());
                            ws.send(Message::text(encode_pong(p.event_id))).await?;
                        }
                        ServerEvent::Error(e) => last_error = Some(e),
                        other => {
                            warn!(event = other.event_type(), "agent event before metadata");
                            early.push(other);
                        }
                    }
                }
                Err(e) => {
                    shared.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, "undecodable agent message during handshake");
                }
            },
            Message::Close(frame) => {
                let (code, text) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                let reason = CloseReason::from_server(code, &text, last_error.as_ref());
                return Err(ConnectError::Closed(Box::new(Closed {
                    reason,
                    code,
                    text,
                    error: last_error,
                })));
            }
            _ => {}
        }
    };
    let input_format = metadata.input_format()?;
    let output_format = metadata.output_format()?;
    Ok(start_tasks(
        ws,
        shared,
        config.stall_timeout.filter(|t| !t.is_zero()),
        tools,
        metadata,
        input_format,
        output_format,
        early,
        last_error,
    ))
}

/// TCP to the URL's host (Nagle off), then TLS for `wss://` (SNI and certificate checked
/// against the host; [`TlsStream`], holding no buffer between messages): what
/// `connect_async_tls_with_config` does, done here so the WebSocket reads through [`ReadCap`]
/// above TLS.
async fn open_transport(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Transport, ConnectError> {
    let parsed = Url::parse(url).map_err(|e| ConnectError::Url(format!("{url}: {e}")))?;
    let secure = match parsed.scheme() {
        "wss" => true,
        "ws" => false,
        other => return Err(ConnectError::Url(format!("{url}: scheme {other}"))),
    };
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(ConnectError::Url(format!("{url}: no host"))),
    };
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    let io = |e: std::io::Error| ConnectError::from(WsError::Io(e));
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    if !secure {
        return Ok(Transport::Plain(tcp));
    }
    let name = rustls::pki_types::ServerName::try_from(host.as_str())
        .map_err(|e| ConnectError::Url(format!("{url}: {e}")))?
        .to_owned();
    let tls = TlsStream::connect(tls, name, tcp).await.map_err(io)?;
    Ok(Transport::Tls(Box::new(tls)))
}

fn lost(detail: &str, error: Option<ErrorEvent>) -> Closed {
    Closed {
        reason: CloseReason::ConnectionLost {
            detail: detail.to_owned(),
        },
        code: None,
        text: String::new(),
        error,
    }
}

#[allow(clippy::too_many_arguments)]
fn start_tasks(
    ws: Ws,
    shared: Arc<Shared>,
    stall_timeout: Option<Duration>,
    tools: ToolRegistry,
    metadata: ConversationInitiationMetadataEvent,
    input_format: AudioFormat,
    output_format: AudioFormat,
    early: Vec<ServerEvent>,
    last_error: Option<ErrorEvent>,
) -> AgentSession {
    let (sink, stream) = ws.split();
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let handle = AgentHandle::new(shared.clone(), ctrl_tx.clone());

    let _ = event_tx.send(Box::new(AgentEvent::Metadata {
        conversation_id: metadata.conversation_id.clone(),
        input_format,
        output_format,
    }));
    let mut reader = Reader {
        shared: shared.clone(),
        ctrl: ctrl_tx,
        events: event_tx,
        tools,
        filter: InterruptionFilter::new(),
        last_error,
        stall_timeout,
    };
    for ev in early {
        reader.handle_event(ev);
    }
    let ping_every = stall_timeout.map(|t| (t / 4).max(Duration::from_millis(50)));
    tokio::spawn(writer_task(sink, ctrl_rx, shared, ping_every));
    tokio::spawn(reader.run(stream));
    AgentSession::new(handle, event_rx, metadata, input_format, output_format)
}

struct Reader {
    shared: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Control>,
    events: mpsc::UnboundedSender<Box<AgentEvent>>,
    tools: ToolRegistry,
    filter: InterruptionFilter,
    last_error: Option<ErrorEvent>,
    stall_timeout: Option<Duration>,
}

impl Reader {
    async fn run(mut self, mut stream: futures_util::stream::SplitStream<Ws>) {
        let mut last_frame = tokio::time::Instant::now();
        let mut watchdog = self.stall_timeout.map(|t| {
            let every = (t / 8).clamp(Duration::from_millis(20), Duration::from_secs(1));
            let mut i = tokio::time::interval(every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let closed = loop {
            let next = tokio::select! {
                biased;
                m = stream.next() => m,
                () = self.shared.close_timed_out.notified() => {
                    break Closed {
                        reason: CloseReason::ClientClosed,
                        code: None,
                        text: "close handshake timed out".to_owned(),
                        error: self.last_error.take(),
                    };
                }
                () = self.shared.writer_failed.notified() => {
                    let detail = format!("write failed: {}", self.shared.writer_error());
                    let reason = if self.shared.client_closing.load(Ordering::Relaxed) {
                        CloseReason::ClientClosed
                    } else {
                        CloseReason::ConnectionLost { detail: detail.clone() }
                    };
                    break Closed {
                        reason,
                        code: None,
                        text: detail,
                        error: self.last_error.take(),
                    };
                }
                now = tick(&mut watchdog) => {
                    let Some(limit) = self.stall_timeout else { continue };
                    let Some(detail) = self.shared.stall(now, limit, last_frame) else {
                        continue;
                    };
                    let reason = if self.shared.client_closing.load(Ordering::Relaxed) {
                        CloseReason::ClientClosed
                    } else {
                        warn!(%detail, "agent unresponsive: closing");
                        self.shared.stalled.store(true, Ordering::Relaxed);
                        CloseReason::AgentTimeout { detail: detail.clone() }
                    };
                    break Closed {
                        reason,
                        code: None,
                        text: detail,
                        error: self.last_error.take(),
                    };
                }
            };
            if let Some(Ok(_)) = &next {
                last_frame = tokio::time::Instant::now();
            }
            match next {
                Some(Ok(Message::Text(text))) => match ServerEvent::decode(text.as_str()) {
                    Ok(d) => {
                        self.shared.count_decoded(&d);
                        self.handle_event(d.event);
                    }
                    Err(e) => {
                        self.shared
                            .stats
                            .decode_errors
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "undecodable agent message ignored");
                    }
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, text) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                        .unwrap_or((None, String::new()));
                    let reason = if self.shared.client_closing.load(Ordering::Relaxed) {
                        CloseReason::ClientClosed
                    } else {
                        CloseReason::from_server(code, &text, self.last_error.as_ref())
                    };
                    break Closed {
                        reason,
                        code,
                        text,
                        error: self.last_error.take(),
                    };
                }
                Some(Ok(Message::Pong(_))) => self.shared.pong_received(),
                Some(Ok(_)) => {} // binary, ping frames (tungstenite answers pings)
                Some(Err(e)) => {
                    let reason = if self.shared.client_closing.load(Ordering::Relaxed) {
                        CloseReason::ClientClosed
                    } else {
                        CloseReason::ConnectionLost {
                            detail: e.to_string(),
                        }
                    };
                    break Closed {
                        reason,
                        code: None,
                        text: String::new(),
                        error: self.last_error.take(),
                    };
                }
                None => {
                    let reason = if self.shared.client_closing.load(Ordering::Relaxed) {
                        CloseReason::ClientClosed
                    } else {
                        CloseReason::from_server(None, "", self.last_error.as_ref())
                    };
                    break Closed {
                        reason,
                        code: None,
                        text: String::new(),
                        error: self.last_error.take(),
                    };
                }
            }
        };
        debug!(reason = ?closed.reason, code = ?closed.code, "agent conversation closed");
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.reader_done.notify_one();
        let _ = self.ctrl.send(Control::Close);
        // The writer may be blocked on a peer that stopped reading.
        self.shared.request_shutdown();
        let _ = self
            .events
            .send(Box::new(AgentEvent::Closed(Box::new(closed))));
    }

    fn emit(&self, ev: AgentEvent) {
        let _ = self.events.send(Box::new(ev));
    }

    fn handle_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Ping(p) => {
                // Answered at once, ahead of queued audio (§2.9).
                let _ = self.ctrl.send(Control::Text(encode_pong(p.event_id)));
                let ping_ms = p.ping_ms();
                self.shared.record_ping(ping_ms);
                self.emit(AgentEvent::Ping {
                    event_id: p.event_id,
                    ping_ms,
                });
            }
            ServerEvent::Audio(a) => {
                self.shared
                    .stats
                    .audio_events_received
                    .fetch_add(1, Ordering::Relaxed);
                if !self.filter.admits(a.event_id) {
                    self.shared
                        .stats
                        .audio_events_dropped_interrupted
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match a.decode_audio() {
                    Ok(audio) => self.emit(AgentEvent::Audio {
                        event_id: a.event_id,
                        audio: Bytes::from(audio),
                    }),
                    Err(e) => {
                        self.shared
                            .stats
                            .decode_errors
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "bad base64 in agent audio");
                    }
                }
            }
            ServerEvent::Interruption(i) => {
                self.filter.interrupt(i.event_id);
                self.emit(AgentEvent::Interruption {
                    event_id: i.event_id,
                });
            }
            ServerEvent::AgentResponse(r) => self.emit(AgentEvent::AgentResponse {
                text: r.agent_response,
                event_id: r.event_id,
            }),
            ServerEvent::AgentResponseCorrection(c) => self.emit(
                AgentEvent::AgentResponseCorrection(Box::new(ResponseCorrection {
                    original: c.original_agent_response,
                    corrected: c.corrected_agent_response,
                    event_id: c.event_id,
                })),
            ),
            ServerEvent::UserTranscript(t) => self.emit(AgentEvent::UserTranscript {
                text: t.user_transcript,
                event_id: t.event_id,
            }),
            ServerEvent::TentativeUserTranscript(t) => {
                self.emit(AgentEvent::TentativeUserTranscript {
                    text: t.user_transcript,
                    event_id: t.event_id,
                })
            }
            ServerEvent::ClientToolCall(call) => {
                let handled = self.tools.dispatch(&call, self.ctrl.clone());
                self.emit(AgentEvent::ToolCall {
                    call: Box::new(call),
                    handled,
                });
            }
            ServerEvent::AgentToolResponse(r) | ServerEvent::AgentToolResponseFullPayload(r) => {
                self.emit(AgentEvent::AgentToolResponse(Box::new(r)))
            }
            ServerEvent::Error(e) => {
                self.last_error = Some(e.clone());
                self.emit(AgentEvent::Error(Box::new(e)));
            }
            ServerEvent::Unknown(_) => {}
            other => self.emit(AgentEvent::Other(Box::new(other))),
        }
    }
}

async fn tick(i: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match i.as_mut() {
        Some(i) => i.tick().await,
        None => std::future::pending().await,
    }
}

type WsError = tokio_tungstenite::tungstenite::Error;
type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Writes `batch` and flushes, unless a shutdown is requested first (`None`). The time the write
/// is in progress is visible to the stall check.
async fn write_batch(
    sink: &mut Sink,
    batch: &mut Vec<Message>,
    shared: &Shared,
) -> Option<Result<(), WsError>> {
    shared.write_busy(true, tokio::time::Instant::now());
    let write = async {
        for m in batch.drain(..) {
            sink.feed(m).await?;
        }
        sink.flush().await
    };
    let r = tokio::select! {
        biased;
        () = shared.shutdown.notified() => None,
        r = write => Some(r),
    };
    shared.write_busy(false, tokio::time::Instant::now());
    r
}

async fn writer_task(
    mut sink: Sink,
    mut ctrl: mpsc::UnboundedReceiver<Control>,
    shared: Arc<Shared>,
    ping_every: Option<Duration>,
) {
    let mut audio = Vec::new();
    let mut batch: Vec<Message> = Vec::new();
    // Where audio messages are encoded: each message's bytes are split off it and come back to
    // it once written, so the audio path allocates nothing per chunk.
    let mut encoded = bytes::BytesMut::new();
    let mut pings = ping_every.map(|p| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut ping_seq = 0u64;
    let result: Result<(), WsError> = async {
        loop {
            let mut close = false;
            tokio::select! {
                biased;
                () = shared.shutdown.notified() => close = true,
                c = ctrl.recv() => match c {
                    Some(Control::Text(t)) => batch.push(Message::text(t)),
                    Some(Control::Close) | None => close = true,
                },
                now = tick(&mut pings) => {
                    ping_seq += 1;
                    shared.ping_sent(now);
                    batch.push(Message::Ping(Bytes::copy_from_slice(&ping_seq.to_be_bytes())));
                }
                () = shared.audio_ready.notified() => {}
            }
            // Coalesce: everything already queued goes out in one flush, control first.
            while !close {
                match ctrl.try_recv() {
                    Ok(Control::Text(t)) => batch.push(Message::text(t)),
                    Ok(Control::Close) => close = true,
                    Err(_) => break,
                }
            }
            if close {
                break;
            }
            shared.take_audio(&mut audio);
            let n_audio = audio.len() as u64;
            for chunk in audio.drain(..) {
                let bytes = encode_user_audio_chunk_into(&chunk, &mut encoded);
                drop(chunk); // the caller's buffer takes its storage back
                match Utf8Bytes::try_from(bytes) {
                    Ok(text) => batch.push(Message::Text(text)),
                    // Cannot happen: JSON punctuation and base64 are ASCII.
                    Err(e) => warn!(error = %e, "audio chunk not encoded"),
                }
            }
            if batch.is_empty() {
                continue;
            }
            let n = batch.len() as u64;
            match write_batch(&mut sink, &mut batch, &shared).await {
                Some(r) => r?,
                None => break, // shutdown while the write was blocked
            }
            shared.stats.messages_sent.fetch_add(n, Ordering::Relaxed);
            shared
                .stats
                .audio_chunks_sent
                .fetch_add(n_audio, Ordering::Relaxed);
        }
        // Close, bounded: our close frame (after any control message still queued), then the
        // peer's close; past the deadline the connection is dropped whatever state it is in.
        let deadline = tokio::time::Instant::now() + CLOSE_HANDSHAKE_TIMEOUT;
        let reader_running = !shared.closed.load(Ordering::Relaxed);
        if reader_running || shared.stalled.load(Ordering::Relaxed) {
            shared.client_closing.store(true, Ordering::Relaxed);
            batch.clear();
            while let Ok(c) = ctrl.try_recv() {
                if let Control::Text(t) = c {
                    batch.push(Message::text(t));
                }
            }
            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            batch.push(Message::Close(Some(frame)));
            let send = async {
                for m in batch.drain(..) {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            match tokio::time::timeout_at(deadline, send).await {
                Ok(Err(e)) => debug!(error = %e, "agent close frame not sent"),
                Err(_) => debug!("agent close frame not sent in time"),
                Ok(Ok(())) => {}
            }
            if reader_running {
                // Do not wait for a peer that never answers the close.
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        shared.close_timed_out.notify_one();
                    }
                    () = shared.reader_done.notified() => {}
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        debug!(error = %e, "agent writer stopped");
        // The reader must not wait on a connection nobody can write to any more.
        shared.writer_failed(e.to_string());
    }
    shared.closed.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_from_the_base() {
        let c = AgentConfig::new("agent_1").with_base_url("ws://127.0.0.1:9000/");
        let u = c.public_url().unwrap();
        assert_eq!(u.path(), "/v1/convai/conversation");
        assert!(
            u.query()
                .unwrap()
                .starts_with("agent_id=agent_1&source=trunkline")
        );
        let s = c.signed_url_endpoint().unwrap();
        assert_eq!(
            s.as_str(),
            "http://127.0.0.1:9000/v1/convai/conversation/get-signed-url?agent_id=agent_1"
        );
        let c = AgentConfig::new("a").with_base_url("wss://api.eu.residency.elevenlabs.io");
        assert!(
            c.signed_url_endpoint()
                .unwrap()
                .as_str()
                .starts_with("https://api.eu.residency.elevenlabs.io/v1/convai/")
        );
        assert!(
            AgentConfig::new("a")
                .with_base_url("http://x")
                .public_url()
                .is_err()
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut c = AgentConfig::new("a");
        c.api_key = Some("sk_secret".into());
        assert!(!format!("{c:?}").contains("sk_secret"));
    }
}
