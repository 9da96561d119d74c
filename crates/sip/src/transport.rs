//! The thin tokio I/O layer: UDP, TCP and TLS sockets (RFC 3261 §18) that move bytes between the
//! network and the sans-IO [`Endpoint`](crate::transaction::Endpoint).
//!
//! - UDP: one socket; every datagram is one message.
//! - TCP and TLS (rustls): stream framing by Content-Length ([`message::frame`](crate::message::frame),
//!   §18.3), CRLFCRLF keep-alives answered with CRLF (RFC 5626 §3.5.1), one connection per remote
//!   address reused in both directions (responses go back over the connection the request came in on,
//!   §18.2.2), connections closed after an idle timeout or on unframeable input (an oversized
//!   request is answered 413, or 513 for an oversized header section, before the close).
//! - Defences for accepted connections (a public listener is a target): an accept filter (the
//!   trunk's source ranges), a total and a per-source cap on open connections, a short deadline
//!   for the first complete message (and the TLS handshake), accept back-off when the process is
//!   out of file descriptors. Every refusal is counted in [`TransportStats`].
//! - RFC 3581: the transaction layer adds `rport` to our Via and fills `received`/`rport` on incoming
//!   requests; this layer only reports the real source address of every message.
//! - NAT: [`TransportConfig::external_addr`] replaces the bound IP in [`Transports::sent_by`] (used for
//!   Via and Contact).
//!
//! - [`UaRunner`] drives a [`Ua`](crate::ua::Ua): sends its transmissions, feeds it what arrives, fires
//!   its timers at [`Ua::poll_timeout`](crate::ua::Ua::poll_timeout), and hands out its events.
//!
//! Nothing protocol-specific happens here; state machines never see a socket.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::message::{Framing, Host, HostPort, ParseError, error_response, frame};
pub use crate::transaction::{Transmit, TransportKind};
use crate::ua::{Ua, UaEvent};

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// A TLS configuration could not be built (bad PEM, no key, rejected certificate).
    #[error("tls config: {0}")]
    Tls(String),
    /// The transport was not configured.
    #[error("transport {0:?} not enabled")]
    NotEnabled(TransportKind),
}

/// What to bind and how.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP listen address (port 0 picks one).
    pub udp: Option<SocketAddr>,
    /// TCP listen address.
    pub tcp: Option<SocketAddr>,
    /// TLS listen address (needs [`TransportConfig::tls_server`]).
    pub tls: Option<SocketAddr>,
    /// Server-side TLS configuration (certificate chain + key), see [`tls_server_config_from_pem`].
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Client-side TLS configuration for outgoing connections, see [`tls_client_config`].
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Name to verify on outgoing TLS connections (default: the peer's IP address).
    pub tls_server_name: Option<String>,
    /// Public IP written in Via/Contact instead of the bound one (behind NAT).
    pub external_addr: Option<IpAddr>,
    /// Close TCP/TLS connections idle for this long (no byte received).
    pub idle_timeout: Duration,
    /// Close an accepted TCP/TLS connection that has not sent one complete message (keep-alives do
    /// not count; for TLS the handshake is included) this long after it was accepted.
    pub first_message_timeout: Duration,
    /// Most accepted TCP/TLS connections open at once (outgoing ones are not counted); more are
    /// closed at accept.
    pub max_connections: usize,
    /// Most accepted TCP/TLS connections open at once from one source IP address.
    pub max_connections_per_source: usize,
    /// Sources allowed to open TCP/TLS connections to us (`None`: any); others are closed at accept.
    pub accept_filter: Option<AcceptFilter>,
    /// The counters, shared with whoever holds a clone of this `Arc` (a fresh set by default).
    pub stats: Arc<TransportStats>,
}

/// Which source addresses may open a TCP/TLS connection to us.
#[derive(Clone)]
pub struct AcceptFilter(Arc<dyn Fn(IpAddr) -> bool + Send + Sync>);

impl AcceptFilter {
    /// A filter from a predicate (true: accept).
    pub fn new(f: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        AcceptFilter(Arc::new(f))
    }

    /// Whether `ip` may connect.
    pub fn allows(&self, ip: IpAddr) -> bool {
        (self.0)(ip)
    }
}

impl std::fmt::Debug for AcceptFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptFilter(..)")
    }
}

/// Default of [`TransportConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Default of [`TransportConfig::max_connections_per_source`].
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 64;
/// Default of [`TransportConfig::first_message_timeout`].
pub const DEFAULT_FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            udp: None,
            tcp: None,
            tls: None,
            tls_server: None,
            tls_client: None,
            tls_server_name: None,
            external_addr: None,
            idle_timeout: Duration::from_secs(300),
            first_message_timeout: DEFAULT_FIRST_MESSAGE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            accept_filter: None,
            stats: Arc::new(TransportStats::default()),
        }
    }
}

/// One received message (a datagram or one framed stream message).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message bytes.
    pub data: Bytes,
    /// The peer's address (for streams: the connection's remote address).
    pub source: SocketAddr,
    /// How it arrived.
    pub transport: TransportKind,
}

/// Counters of the transport layer.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Stream connections closed because they could not be framed (bad Content-Length, huge headers).
    pub framing_errors: AtomicU64,
    /// Stream connections closed after the idle timeout.
    pub idle_closes: AtomicU64,
    /// Sends that failed.
    pub send_errors: AtomicU64,
    /// Accepted connections closed because no complete message (or TLS handshake) came within
    /// [`TransportConfig::first_message_timeout`].
    pub first_message_timeouts: AtomicU64,
    /// Connections closed at accept: [`TransportConfig::max_connections`] reached.
    pub refused_total_cap: AtomicU64,
    /// Connections closed at accept: [`TransportConfig::max_connections_per_source`] reached.
    pub refused_per_source_cap: AtomicU64,
    /// Connections closed at accept: the source is outside [`TransportConfig::accept_filter`].
    pub refused_source: AtomicU64,
    /// Accept failures (out of file descriptors, EMFILE/ENFILE, or memory) after which the
    /// listener paused before accepting again.
    pub accept_backoffs: AtomicU64,
    /// Oversized requests answered 413 (body) or 513 (header section) before the close.
    pub oversized_rejects: AtomicU64,
    /// Accepted TCP/TLS connections open now (a gauge: TLS handshakes in progress included).
    pub accepted_open: AtomicU64,
}

/// Accepted connections open now, in total and per source.
#[derive(Debug, Default)]
struct Accepted {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One accepted connection's place in [`Accepted`], given back on drop (when the connection's
/// tasks are over and its socket closed).
struct Slot {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut a) = self.inner.accepted.lock() {
            a.total = a.total.saturating_sub(1);
            self.inner
                .stats
                .accepted_open
                .store(a.total as u64, Ordering::Relaxed);
            if let Some(n) = a.per_source.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    a.per_source.remove(&self.ip);
                }
            }
        }
    }
}

type ConnMap = Mutex<HashMap<(TransportKind, SocketAddr), (u64, mpsc::UnboundedSender<Bytes>)>>;

#[derive(Debug)]
struct Inner {
    udp: Option<Arc<UdpSocket>>,
    local: HashMap<TransportKind, SocketAddr>,
    conns: ConnMap,
    next_conn: AtomicU64,
    incoming: mpsc::Sender<Incoming>,
    tls_client: Option<Arc<rustls::ClientConfig>>,
    tls_server_name: Option<String>,
    external: Option<IpAddr>,
    idle: Duration,
    first_message: Duration,
    max_connections: usize,
    max_per_source: usize,
    filter: Option<AcceptFilter>,
    accepted: Mutex<Accepted>,
    stats: Arc<TransportStats>,
}

/// The bound sockets. Cheap to clone; every clone sends through the same sockets and connections.
#[derive(Debug, Clone)]
pub struct Transports {
    inner: Arc<Inner>,
}

impl Transports {
    /// Binds what `config` asks for and starts the receive tasks. Received messages arrive on the
    /// returned channel. Must be called inside a tokio runtime.
    pub async fn bind(
        config: TransportConfig,
    ) -> Result<(Transports, mpsc::Receiver<Incoming>), TransportError> {
        let (tx, rx) = mpsc::channel(8192);
        let mut local = HashMap::new();
        let udp = match config.udp {
            Some(addr) => {
                let sock = Arc::new(UdpSocket::bind(addr).await?);
                local.insert(TransportKind::Udp, sock.local_addr()?);
                Some(sock)
            }
            None => None,
        };
        let tcp = match config.tcp {
            Some(addr) => {
                let l = TcpListener::bind(addr).await?;
                local.insert(TransportKind::Tcp, l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        let tls = match (config.tls, &config.tls_server) {
            (Some(addr), Some(server)) => {
                let l = TcpListener::bind(addr).await?;
                local.insert(TransportKind::Tls, l.local_addr()?);
                Some((l, tokio_rustls::TlsAcceptor::from(server.clone())))
            }
            (Some(_), None) => {
                return Err(TransportError::Tls(
                    "TLS listener needs a server config".into(),
                ));
            }
            _ => None,
        };
        let inner = Arc::new(Inner {
            udp: udp.clone(),
            local,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            incoming: tx,
            tls_client: config.tls_client.clone(),
            tls_server_name: config.tls_server_name.clone(),
            external: config.external_addr,
            idle: config.idle_timeout,
            first_message: config.first_message_timeout,
            max_connections: config.max_connections,
            max_per_source: config.max_connections_per_source,
            filter: config.accept_filter.clone(),
            accepted: Mutex::new(Accepted::default()),
            stats: config.stats.clone(),
        });
        let this = Transports { inner };
        if let Some(sock) = udp {
            tokio::spawn(udp_loop(sock, this.inner.incoming.clone()));
        }
        if let Some(l) = tcp {
            let t = this.clone();
            tokio::spawn(accept_loop(l, t, None));
        }
        if let Some((l, acceptor)) = tls {
            let t = this.clone();
            tokio::spawn(accept_loop(l, t, Some(acceptor)));
        }
        Ok((this, rx))
    }

    /// The bound address of `kind`.
    pub fn local_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.inner.local.get(&kind).copied()
    }

    /// The `host:port` to put in Via sent-by and Contact for `kind`: the external address if one is
    /// configured, else the bound one.
    pub fn sent_by(&self, kind: TransportKind) -> Option<HostPort> {
        let local = self.local_addr(kind)?;
        let ip = self.inner.external.unwrap_or(local.ip());
        Some(HostPort {
            host: Host::from(ip),
            port: Some(local.port()),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.inner.stats
    }

    /// Number of open TCP/TLS connections.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Number of accepted TCP/TLS connections holding a place under the caps (TLS handshakes in
    /// progress included).
    pub fn accepted_count(&self) -> usize {
        self.inner.accepted.lock().map(|a| a.total).unwrap_or(0)
    }

    /// Takes a place for a connection from `ip` under the filter and the caps, or counts the
    /// refusal.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let stats = &self.inner.stats;
        if let Some(f) = &self.inner.filter
            && !f.allows(ip)
        {
            stats.refused_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut a = self.inner.accepted.lock().ok()?;
        if a.total >= self.inner.max_connections {
            stats.refused_total_cap.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = a.per_source.entry(ip).or_default();
        if *n >= self.inner.max_per_source {
            stats.refused_per_source_cap.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        a.total += 1;
        stats.accepted_open.store(a.total as u64, Ordering::Relaxed);
        Some(Slot {
            inner: self.inner.clone(),
            ip,
        })
    }

    /// Sends one transmission: a datagram, or a write on the connection to the destination (opened
    /// if there is none).
    pub async fn send(&self, t: Transmit) -> Result<(), TransportError> {
        let r = self.send_inner(t).await;
        if r.is_err() {
            self.inner.stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn send_inner(&self, t: Transmit) -> Result<(), TransportError> {
        match t.transport {
            TransportKind::Udp => {
                let sock = self
                    .inner
                    .udp
                    .as_ref()
                    .ok_or(TransportError::NotEnabled(TransportKind::Udp))?;
                sock.send_to(&t.payload, t.destination).await?;
                Ok(())
            }
            kind => {
                let existing = self.conn_sender(kind, t.destination);
                let sender = match existing {
                    Some(s) => s,
                    None => self.connect(kind, t.destination).await?,
                };
                sender
                    .send(t.payload)
                    .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
                Ok(())
            }
        }
    }

    fn conn_sender(
        &self,
        kind: TransportKind,
        peer: SocketAddr,
    ) -> Option<mpsc::UnboundedSender<Bytes>> {
        let conns = self.inner.conns.lock().ok()?;
        conns.get(&(kind, peer)).map(|(_, s)| s.clone())
    }

    async fn connect(
        &self,
        kind: TransportKind,
        peer: SocketAddr,
    ) -> Result<mpsc::UnboundedSender<Bytes>, TransportError> {
        let stream = TcpStream::connect(peer).await?;
        let _ = stream.set_nodelay(true);
        match kind {
            TransportKind::Tcp => Ok(self.adopt(kind, peer, stream, None)),
            _ => {
                let config = self
                    .inner
                    .tls_client
                    .clone()
                    .ok_or(TransportError::NotEnabled(TransportKind::Tls))?;
                let name = match &self.inner.tls_server_name {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|e| TransportError::Tls(e.to_string()))?,
                    None => ServerName::IpAddress(peer.ip().into()),
                };
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await?;
                Ok(self.adopt(kind, peer, tls, None))
            }
        }
    }

    /// Registers a connected stream and starts its reader and writer tasks. An accepted stream
    /// brings its place under the caps (held until the socket is closed) and the deadline of its
    /// first complete message.
    fn adopt<S>(
        &self,
        kind: TransportKind,
        peer: SocketAddr,
        stream: S,
        accepted: Option<(Slot, Instant)>,
    ) -> mpsc::UnboundedSender<Bytes>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = self.inner.conns.lock() {
            conns.insert((kind, peer), (id, tx.clone()));
        }
        let (mut read, write) = tokio::io::split(stream);
        let writer = tokio::spawn(writer_loop(write, rx));
        let inner = self.inner.clone();
        let pong = tx.clone();
        tokio::spawn(async move {
            let (slot, first_deadline) = match accepted {
                Some((slot, at)) => (Some(slot), Some(at)),
                None => (None, None),
            };
            let end = reader_loop(&mut read, kind, peer, &inner, &pong, first_deadline).await;
            if let Ok(mut conns) = inner.conns.lock()
                && conns.get(&(kind, peer)).is_some_and(|(cid, _)| *cid == id)
            {
                conns.remove(&(kind, peer));
            }
            let rejected = match end {
                End::Reject(response) => {
                    let _ = pong.send(response);
                    true
                }
                End::Closed => false,
            };
            // The writer ends once every sender is gone (the map's and ours): what is queued is
            // written, then the write side is shut down.
            drop(pong);
            let mut writer = writer;
            if rejected {
                // Keep reading (and discarding) while the response leaves, so the close does not
                // turn into a reset that destroys the response before the peer reads it.
                let drain = async {
                    let mut scratch = [0u8; 1024];
                    while let Ok(n) = read.read(&mut scratch).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(LINGER, drain).await;
            }
            if tokio::time::timeout(LINGER, &mut writer).await.is_err() {
                // A peer that does not read: stop writing to it.
                writer.abort();
            }
            drop(read);
            drop(slot);
        });
        tx
    }
}

/// How long a closing connection may take to write what is queued (and, after a rejection, to
/// let the peer read it).
const LINGER: Duration = Duration::from_secs(2);

/// The read buffer grows by this much when it is full: a typical SIP message fits in one step, so
/// an idle connection holds little.
const READ_CHUNK: usize = 2048;

/// Accepts TCP connections (and runs the TLS handshake if `tls`), under the filter and the caps.
#[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
async fn accept_loop(l: TcpListener, t: Transports, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut backoff = Duration::ZERO;
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let Some(slot) = t.admit(peer.ip()) else {
                    // Refused: the socket closes here.
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let deadline = Instant::now() + t.inner.first_message;
                match &tls {
                    None => {
                        let _ = t.adopt(TransportKind::Tcp, peer, stream, Some((slot, deadline)));
                    }
                    Some(acceptor) => {
                        let (t, acceptor) = (t.clone(), acceptor.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = t.adopt(
                                        TransportKind::Tls,
                                        peer,
                                        tls,
                                        Some((slot, deadline)),
                                    );
                                }
                                Ok(Err(e)) => debug!(error = %e, %peer, "tls handshake failed"),
                                Err(_) => {
                                    t.inner
                                        .stats
                                        .first_message_timeouts
                                        .fetch_add(1, Ordering::Relaxed);
                                    debug!(%peer, "tls handshake timed out");
                                }
                            }
                        });
                    }
                }
            }
            Err(e) if is_connection_error(&e) => debug!(error = %e, "accept"),
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or memory: retrying at once would spin.
                // Pause, longer while it lasts; connections wait in the backlog meanwhile.
                t.inner
                    .stats
                    .accept_backoffs
                    .fetch_add(1, Ordering::Relaxed);
                backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
                warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; pausing");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// An accept error about one connection (not about the listener or the process).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn udp_loop(sock: Arc<UdpSocket>, incoming: mpsc::Sender<Incoming>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, source)) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                if incoming
                    .send(Incoming {
                        data,
                        source,
                        transport: TransportKind::Udp,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // ICMP port unreachable surfaces as ECONNREFUSED on some systems: not fatal.
            Err(e) => debug!(error = %e, "udp recv"),
        }
    }
}

async fn writer_loop<W: AsyncWrite + Unpin>(mut write: W, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(bytes) = rx.recv().await {
        if write.write_all(&bytes).await.is_err() {
            return;
        }
        // Coalesce whatever else is queued before flushing.
        while let Ok(more) = rx.try_recv() {
            if write.write_all(&more).await.is_err() {
                return;
            }
        }
        if write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// How a reader ended.
enum End {
    /// Closed (end of stream, error, timeout, unframeable input, or nobody listening).
    Closed,
    /// Closed after this response (an oversized request).
    Reject(Bytes),
}

#[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
async fn reader_loop<R: AsyncRead + Unpin>(
    read: &mut R,
    kind: TransportKind,
    peer: SocketAddr,
    inner: &Inner,
    pong: &mpsc::UnboundedSender<Bytes>,
    mut first_deadline: Option<Instant>,
) -> End {
    let mut buf = BytesMut::new();
    loop {
        // Frame everything already buffered.
        loop {
            match frame(&buf) {
                Framing::Complete(n) => {
                    first_deadline = None;
                    let data = buf.split_to(n).freeze();
                    if inner
                        .incoming
                        .send(Incoming {
                            data,
                            source: peer,
                            transport: kind,
                        })
                        .await
                        .is_err()
                    {
                        return End::Closed;
                    }
                }
                Framing::KeepAlive(n) => {
                    let _ = buf.split_to(n);
                    if n == 4 {
                        let _ = pong.send(Bytes::from_static(b"\r\n"));
                    }
                }
                Framing::Incomplete => break,
                Framing::Invalid(e) => {
                    inner.stats.framing_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(error = %e, %peer, "closing unframeable stream");
                    return match oversize_response(&buf, &e) {
                        Some(r) => {
                            inner
                                .stats
                                .oversized_rejects
                                .fetch_add(1, Ordering::Relaxed);
                            End::Reject(r)
                        }
                        None => End::Closed,
                    };
                }
            }
        }
        if buf.is_empty() {
            // Give back what the last message used (its bytes live on in the frozen message).
            buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        let idle = Instant::now() + inner.idle;
        let (deadline, first) = match first_deadline {
            Some(at) if at < idle => (at, true),
            _ => (idle, false),
        };
        match tokio::time::timeout_at(deadline, read.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
            Err(_) if first => {
                inner
                    .stats
                    .first_message_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "no complete message in time: closing");
                return End::Closed;
            }
            Err(_) => {
                inner.stats.idle_closes.fetch_add(1, Ordering::Relaxed);
                return End::Closed;
            }
        }
    }
}

/// The response to an oversized request (RFC 3261 §21.4.11 413 for the body, §21.5.11 513 for
/// the header section), if the buffered head is a request with what it takes to route a
/// response (Via, CSeq, …); `None` for anything else (a response, an ACK, garbage).
fn oversize_response(buf: &[u8], e: &ParseError) -> Option<Bytes> {
    let (status, reason) = match e {
        ParseError::BodyTooLarge => (413, "Request Entity Too Large"),
        ParseError::HeadersTooLarge => (513, "Message Too Large"),
        _ => return None,
    };
    let mut r = error_response(buf, e, "tl-oversize")?;
    r.status = status;
    r.reason = reason.to_owned();
    Some(r.to_bytes())
}

/// What woke [`UaRunner::next_event_or`].
// Returned by value and matched at once: boxing the event would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Wake<T> {
    /// The UA has an event.
    Event(UaEvent),
    /// The caller's other future completed.
    Other(T),
    /// The transports are gone.
    Closed,
}

/// Drives a [`Ua`] over [`Transports`]: sends what it queues, feeds it what arrives, fires its timers
/// on time, and hands out its events. The only place besides the examples that reads the clock.
///
/// ```no_run
/// # async fn f(ua: trunkline_sip::ua::Ua, config: trunkline_sip::transport::TransportConfig) {
/// use trunkline_sip::transport::{Transports, UaRunner};
/// let (transports, rx) = Transports::bind(config).await.unwrap();
/// let mut runner = UaRunner::new(ua, transports, rx);
/// while let Some(event) = runner.next_event().await {
///     // react with runner.ua().respond(…), .invite(…), .bye(…)
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct UaRunner {
    ua: Ua,
    transports: Transports,
    rx: mpsc::Receiver<Incoming>,
    pending: Option<Transmit>,
}

impl UaRunner {
    /// Wraps a UA and bound transports (set the UA's sent-by from [`Transports::sent_by`] first).
    pub fn new(ua: Ua, transports: Transports, rx: mpsc::Receiver<Incoming>) -> Self {
        Self {
            ua,
            transports,
            rx,
            pending: None,
        }
    }

    /// The UA, to issue commands (they take effect at the next [`UaRunner::next_event`] or
    /// [`UaRunner::flush`]).
    pub fn ua(&mut self) -> &mut Ua {
        &mut self.ua
    }

    /// The transports.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// The current time, for commands issued between events.
    #[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
    pub fn now(&self) -> std::time::Instant {
        std::time::Instant::now()
    }

    /// Sends what is queued, then waits for input or a timer until the UA has an event. `None` when
    /// the transports are gone. Cancel-safe (a send interrupted by cancellation is retried).
    pub async fn next_event(&mut self) -> Option<UaEvent> {
        match self
            .next_event_or(std::future::pending::<std::convert::Infallible>())
            .await
        {
            Wake::Event(ev) => Some(ev),
            Wake::Closed => None,
        }
    }

    /// [`UaRunner::next_event`], or whatever `other` yields first (a command channel of the
    /// caller, say): the one drive loop of a UA that also listens to something else. `other` is
    /// dropped when the UA has an event first, so it must be cancel-safe (`mpsc::Receiver::recv`
    /// is).
    #[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
    pub async fn next_event_or<F: Future>(&mut self, other: F) -> Wake<F::Output> {
        let mut other = std::pin::pin!(other);
        loop {
            self.flush().await;
            if let Some(ev) = self.ua.poll_event() {
                return Wake::Event(ev);
            }
            let deadline = self.ua.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { return Wake::Closed };
                    self.ua.handle_datagram(msg.data, msg.source, msg.transport, std::time::Instant::now());
                }
                () = sleep => self.ua.handle_timeout(std::time::Instant::now()),
                v = &mut other => return Wake::Other(v),
            }
        }
    }

    /// Sends everything the UA has queued.
    pub async fn flush(&mut self) {
        loop {
            if self.pending.is_none() {
                self.pending = self.ua.poll_transmit();
            }
            let Some(t) = self.pending.clone() else {
                return;
            };
            if let Err(e) = self.transports.send(t.clone()).await {
                debug!(error = %e, destination = %t.destination, "send");
                // Requests to it without a response fail now (RFC 3261 §8.1.3.1), so a caller
                // can fail over instead of waiting for Timer B.
                let now = self.now();
                self.ua
                    .handle_transport_error(t.destination, t.transport, now);
            }
            self.pending = None;
        }
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server configuration from a PEM certificate chain and a PEM private key.
pub fn tls_server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::Tls(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TransportError::Tls("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TransportError::Tls(format!("key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// [`tls_server_config_from_pem`] reading the two files.
pub fn tls_server_config_from_files(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    tls_server_config_from_pem(&std::fs::read(cert)?, &std::fs::read(key)?)
}

/// A TLS client configuration trusting the PEM CA certificates given, or the webpki roots if none.
pub fn tls_client_config(
    ca_pem: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TransportError::Tls(format!("ca: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
