//! The WebSocket's transport, handing tungstenite at most [`READ_CAP`] bytes per read.
//!
//! tungstenite 0.30 reserves a frame's *whole* length in its read buffer as soon as it has parsed
//! the frame's header, on top of the bytes already buffered (which usually hold most of that
//! frame). After a read that filled the 8 KiB buffer with several agent frames, that reserve
//! exceeds the capacity and `BytesMut` doubles the buffer (8 → 16 → 32 KiB), which it then keeps
//! for the whole call: 19.7 KiB per call in the heap profiles. With reads of at most 1 KiB, at
//! most 1 KiB is buffered beyond the frame being parsed, so a frame of up to 3 KiB (a 250 ms
//! µ-law chunk is 2.8 KB of JSON) fits the 4 KiB buffer the client asks for
//! ([`crate::AgentConfig::read_buffer_size`]); a larger frame (PCM chunks) grows it once, as it
//! must. Above TLS the smaller reads cost copies from rustls' plaintext buffer, not system calls;
//! over plain `ws://` (loopback tests) a frame costs two or three `recv`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest read handed to the WebSocket reader.
pub const READ_CAP: usize = 1024;

/// `S` with reads of at most [`READ_CAP`] bytes; writes pass through.
#[derive(Debug)]
pub struct ReadCap<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for ReadCap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().0;
        if buf.remaining() <= READ_CAP {
            return Pin::new(inner).poll_read(cx, buf);
        }
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(READ_CAP));
        ready!(Pin::new(inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadCap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_are_capped_and_nothing_is_lost_or_reordered() {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        a.write_all(&data).await.unwrap();
        drop(a);
        let mut r = ReadCap(b);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= READ_CAP, "read of {n} bytes");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
    }
}
