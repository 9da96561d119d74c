//! TLS for the agent's WebSocket on rustls' unbuffered API, so that a connection between
//! messages holds no buffer at all.
//!
//! A buffered `rustls::ClientConnection` (what tokio-rustls drives) keeps its receive buffer
//! for the life of the connection: `DeframerVecBuffer::prepare_read` shrinks it back to 4 KiB
//! when empty, never to 0, and it is not configurable in rustls 0.23. That was 4.7–5.0 KiB of
//! every `wss://` call in the heap profiles, for a socket that carries a few KiB a second.
//!
//! Here the caller owns the buffers ([`rustls::client::UnbufferedClientConnection`]):
//! - **Receive.** A read from the socket lands in a buffer on the stack and its records are
//!   decrypted there; only a record cut by the read (its tail not yet arrived) is kept on the
//!   heap, and that buffer is freed as soon as the record is complete. Plaintext the reader has
//!   not taken yet (the WebSocket reads at most 1 KiB at a time, [`crate::read_cap`]) is kept
//!   until read, then freed.
//! - **Send.** Application data is encrypted into a buffer on the stack and written to the
//!   socket from there; only what the socket does not take at once is kept on the heap until
//!   flushed, then freed.
//!
//! A TCP end without the peer's `close_notify` is an `UnexpectedEof` error, as in rustls'
//! buffered reader; `close_notify` received reads as end of stream; shutting down sends ours.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, into a buffer on the stack. A TLS record is at most
/// 16 KiB + 256 bytes; agent messages are a few KiB, so a read usually holds whole records.
const READ_SIZE: usize = 8 * 1024;

/// Plaintext encrypted into a buffer on the stack at a time: an agent message (audio chunk,
/// JSON) is far smaller; a larger write is encrypted into the heap instead.
const WRITE_STACK: usize = 4 * 1024;

/// A client TLS stream over TCP holding no buffer between records (module docs).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    /// TLS bytes received but not processed: the start of a record cut by a read.
    incoming: Vec<u8>,
    /// What processing records produced.
    out: Processed,
    /// Decrypted bytes already read from `out.plain`.
    plain_pos: usize,
    /// TLS bytes already written from `out.outgoing`.
    out_pos: usize,
    /// The socket reached end of file.
    eof: bool,
    close_sent: bool,
    /// The reader waiting for the socket, woken if a write finds data to read.
    read_waker: Option<Waker>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("buffered", &self.buffered())
            .field("peer_closed", &self.out.peer_closed)
            .finish_non_exhaustive()
    }
}

/// What [`process`] produces besides consuming records.
#[derive(Default)]
struct Processed {
    /// Decrypted bytes not yet read.
    plain: Vec<u8>,
    /// TLS bytes encrypted or encoded but not yet written.
    outgoing: Vec<u8>,
    /// Application data may be sent (the handshake is complete).
    handshaken: bool,
    /// The peer's `close_notify` arrived: no more data after `plain`.
    peer_closed: bool,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Encodes a handshake or alert record at the end of `outgoing`.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, ClientConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    let start = outgoing.len();
    let mut room = 512;
    loop {
        outgoing.resize(start + room, 0);
        match e.encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

/// Runs rustls over the records in `buf` until it needs more bytes (or may encrypt):
/// plaintext goes to `out.plain`, handshake records to `out.outgoing`, and the handshake's
/// end and the peer's `close_notify` to its flags. Returns how many bytes of `buf` were
/// consumed, and rustls' handle for encrypting once application data may be sent.
fn process<'c>(
    conn: &'c mut UnbufferedClientConnection,
    buf: &mut [u8],
    out: &mut Processed,
) -> io::Result<(usize, Option<WriteTraffic<'c, ClientConnectionData>>)> {
    let mut consumed = 0;
    // rustls hands out a `WriteTraffic` borrowing the connection; a loop re-borrowing it
    // cannot return that borrow (NLL), so the loop stops *before* the final state and the
    // last call is made outside it.
    loop {
        let status = conn.process_tls_records(&mut buf[consumed..]);
        let mut discard = status.discard;
        match status.state.map_err(tls_error)? {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record.map_err(tls_error)?;
                    discard += record.discard;
                    out.plain.extend_from_slice(record.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => encode(&mut e, &mut out.outgoing)?,
            // What was encoded is queued in `outgoing`, written before anything else.
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::PeerClosed => out.peer_closed = true,
            ConnectionState::BlockedHandshake
            | ConnectionState::WriteTraffic(_)
            | ConnectionState::Closed => {
                consumed += discard;
                break;
            }
            other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
        }
        consumed += discard;
    }
    let status = conn.process_tls_records(&mut buf[consumed..]);
    consumed += status.discard;
    let write = match status.state.map_err(tls_error)? {
        ConnectionState::WriteTraffic(w) => {
            out.handshaken = true;
            Some(w)
        }
        ConnectionState::Closed => {
            out.peer_closed = true;
            None
        }
        _ => None,
    };
    Ok((consumed, write))
}

impl TlsStream {
    /// The TLS handshake over `tcp`, with the server name checked against its certificate.
    pub async fn connect(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut stream = Self {
            tcp,
            conn,
            incoming: Vec::new(),
            out: Processed::default(),
            plain_pos: 0,
            out_pos: 0,
            eof: false,
            close_sent: false,
            read_waker: None,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// Bytes held in the stream's buffers (received, decrypted or to send): 0 between messages.
    pub fn buffered(&self) -> usize {
        self.incoming.capacity() + self.out.plain.capacity() + self.out.outgoing.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Err(e) = self.process_incoming() {
                self.send_alert();
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_flush_out(cx))?;
            if self.out.handshaken {
                return Poll::Ready(Ok(()));
            }
            if self.eof || self.out.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                )));
            }
            if let Err(e) = ready!(self.poll_read_tls(cx)) {
                self.send_alert();
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Processes the records kept in `incoming`.
    fn process_incoming(&mut self) -> io::Result<()> {
        let (consumed, _) = process(&mut self.conn, &mut self.incoming, &mut self.out)?;
        self.discard_incoming(consumed);
        Ok(())
    }

    /// Drops the first `consumed` bytes of `incoming`; frees it once empty.
    fn discard_incoming(&mut self, consumed: usize) {
        self.incoming.drain(..consumed);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }

    /// One read from the socket, its records processed. Whole records are decrypted in a buffer
    /// on the stack; a cut record's start is appended to `incoming`.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.incoming.is_empty() {
            let start = self.incoming.len();
            self.incoming.resize(start + READ_SIZE, 0);
            let mut buf = ReadBuf::new(&mut self.incoming[start..]);
            let read = Pin::new(&mut self.tcp).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            self.incoming.truncate(start + n);
            ready!(read)?;
            if n == 0 {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(self.process_incoming());
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let filled = buf.filled_mut();
        if filled.is_empty() {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let (consumed, _) = process(&mut self.conn, filled, &mut self.out)?;
        self.incoming.extend_from_slice(&filled[consumed..]);
        Poll::Ready(Ok(()))
    }

    /// Writes `outgoing` to the socket; frees it once written.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.outgoing.len() {
            let n =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.outgoing = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// After a TLS error, the alert rustls queued for the peer, best effort (never waits).
    fn send_alert(&mut self) {
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state
            && encode(&mut e, &mut self.out.outgoing).is_ok()
        {
            let _ = self.tcp.try_write(&self.out.outgoing[self.out_pos..]);
        }
    }

    /// Encrypts `data` and writes it, keeping on the heap only what the socket did not take.
    fn encrypt_and_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<()> {
        let (consumed, write) = process(&mut self.conn, &mut self.incoming, &mut self.out)?;
        let Some(mut w) = write else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        let mut stack = [0u8; WRITE_STACK + 256];
        match w.encrypt(data, &mut stack) {
            Ok(n) => {
                let mut sent = 0;
                if self.out.outgoing.len() == self.out_pos {
                    while sent < n {
                        match Pin::new(&mut self.tcp).poll_write(cx, &stack[sent..n]) {
                            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                            Poll::Ready(Ok(k)) => sent += k,
                            Poll::Ready(Err(e)) => return Err(e),
                            Poll::Pending => break,
                        }
                    }
                }
                self.out.outgoing.extend_from_slice(&stack[sent..n]);
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                let outgoing = &mut self.out.outgoing;
                let start = outgoing.len();
                outgoing.resize(start + required_size, 0);
                let n = w
                    .encrypt(data, &mut outgoing[start..])
                    .map_err(io::Error::other)?;
                outgoing.truncate(start + n);
            }
            Err(e) => return Err(io::Error::other(e)),
        }
        self.discard_incoming(consumed);
        // Records processed on the way (a reader's data, a close_notify) wake the reader.
        if (self.out.plain.len() > self.plain_pos || self.out.peer_closed)
            && let Some(waker) = self.read_waker.take()
        {
            waker.wake();
        }
        Ok(())
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let plain = &mut this.out.plain;
            if this.plain_pos < plain.len() {
                let n = buf.remaining().min(plain.len() - this.plain_pos);
                buf.put_slice(&plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == plain.len() {
                    *plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.out.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            // Records rustls answers (a key update) go out before waiting for more.
            if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                return Poll::Ready(Err(e));
            }
            match this.poll_read_tls(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    this.send_alert();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.encrypt_and_write(cx, data)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            let (consumed, write) = process(&mut this.conn, &mut this.incoming, &mut this.out)?;
            if let Some(mut w) = write {
                let outgoing = &mut this.out.outgoing;
                let start = outgoing.len();
                outgoing.resize(start + 64, 0);
                let n = w
                    .queue_close_notify(&mut outgoing[start..])
                    .map_err(io::Error::other)?;
                outgoing.truncate(start + n);
            }
            this.discard_incoming(consumed);
            ready!(this.poll_flush_out(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The agent WebSocket's transport: TCP for `ws://`, TCP + [`TlsStream`] for `wss://`.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
