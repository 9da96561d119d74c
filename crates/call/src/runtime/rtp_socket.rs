//! The call's RTP socket, read at the call's 20 ms media tick rather than on readiness.
//!
//! A G.711 call receives a packet every 20 ms and sends one every 20 ms on its own clock. Waking
//! the call's task for every received packet *and* for every send tick costs two wake-ups (and
//! on an idle runtime two thread wake-ups) per 20 ms per call, which dominated the gateway's CPU
//! under load. Instead the socket is taken out of the reactor and read without blocking at each
//! tick, right before the jitter buffer is popped, so a call costs one wake-up per 20 ms whatever
//! the traffic — the timer-driven reading FreeSWITCH and Asterisk's timing sources use.
//!
//! Reading late must not falsify what the media layer learns from arrival times (jitter buffer
//! depth, RFC 3550 interarrival jitter, the RTP timeout): each datagram's arrival time is the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`, read by `trunkline_media::udp`, which the
//! trunk emulator shares), mapped onto the monotonic clock. Where the timestamp is missing, the
//! read time is used.
//!
//! At most [`MAX_PER_TICK`] datagrams are read per tick: a flood is left to the kernel's receive
//! buffer (which drops the excess) instead of starving the other calls of the worker.
//!
//! The datagrams are read with `recvmmsg(2)` into buffers each worker thread keeps for all its
//! calls ([`RecvBatch`], one per address family): a tick with one datagram waiting costs one
//! system call, not two (the datagram, then `EAGAIN`), and nothing is allocated per packet or
//! per call.

// The I/O layer owns the clock (the receive path maps kernel stamps onto it).
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;
use trunkline_media::udp::{BATCH, RecvBatch, enable_rx_timestamps, kernel_arrival};

/// How often the socket is read when the call has media but no tick of its own (early media).
pub(crate) const RTP_POLL: Duration = Duration::from_millis(20);

/// Datagrams read per tick at most (50 × 20 ms of audio).
pub const MAX_PER_TICK: usize = 50;

thread_local! {
    /// This worker thread's receive buffers, for its IPv4 and IPv6 sockets.
    static BATCHES: RefCell<[Option<RecvBatch>; 2]> = const { RefCell::new([None, None]) };
}

/// A non-blocking RTP socket outside the reactor, with kernel receive timestamps.
#[derive(Debug)]
pub struct RtpSocket {
    sock: Arc<UdpSocket>,
    /// Which of the thread's [`BATCHES`] fits this socket's addresses.
    family: usize,
}

impl RtpSocket {
    /// Take the socket out of tokio's reactor (it stays non-blocking) and ask for timestamps.
    pub fn new(sock: tokio::net::UdpSocket) -> io::Result<Self> {
        let sock = sock.into_std()?;
        let family = usize::from(sock.local_addr()?.is_ipv6());
        sock.set_nonblocking(true)?;
        if let Err(e) = enable_rx_timestamps(&sock) {
            debug!(error = %e, "SO_TIMESTAMPNS unavailable: arrival times are read times");
        }
        Ok(RtpSocket {
            sock: Arc::new(sock),
            family,
        })
    }

    /// The socket, for the RTP send thread.
    pub fn shared(&self) -> Arc<UdpSocket> {
        self.sock.clone()
    }

    /// Send one datagram (never blocks: a full send buffer is `WouldBlock`).
    pub fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.send_to(buf, to)
    }

    /// Hand every waiting datagram (up to [`MAX_PER_TICK`]) to `f` with its sender and
    /// arrival time, from an IP sender only. `now` is the monotonic time of this read. Returns
    /// how many were read.
    pub fn drain(&mut self, now: Instant, mut f: impl FnMut(&[u8], SocketAddr, Instant)) -> usize {
        BATCHES.with(|b| {
            let mut batches = b.borrow_mut();
            let batch = batches[self.family].get_or_insert_with(RecvBatch::new);
            let mut wall_now: Option<SystemTime> = None;
            let mut read = 0;
            while read < MAX_PER_TICK {
                let want = BATCH.min(MAX_PER_TICK - read);
                let n = match batch.recv(&*self.sock, want) {
                    Ok(n) => n,
                    Err(e) => {
                        debug!(error = %e, "rtp receive failed");
                        break;
                    }
                };
                for i in 0..n {
                    let (data, d) = batch.datagram(i);
                    let Some(from) = d.from else {
                        continue; // not an IP datagram: nothing to answer
                    };
                    let at = match d.stamp {
                        Some(stamp) => {
                            let wall = *wall_now.get_or_insert_with(SystemTime::now);
                            arrival(now, wall, stamp)
                        }
                        None => now,
                    };
                    f(data, from, at);
                }
                read += n;
                if n < want {
                    break;
                }
            }
            read
        })
    }
}

/// The monotonic arrival time of a datagram the kernel stamped `stamp` (wall clock), read at
/// `now` / `wall_now`. Clamped to `now` and to one second before it: a wall-clock step must not
/// send arrival times into the future or far into the past.
fn arrival(now: Instant, wall_now: SystemTime, stamp: SystemTime) -> Instant {
    kernel_arrival(now, wall_now, stamp, Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_maps_the_kernel_stamp_onto_the_monotonic_clock() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let stamp = wall - Duration::from_millis(7);
        assert_eq!(arrival(now, wall, stamp), now - Duration::from_millis(7));
        // A stamp "in the future" (wall clock stepped back) is now; a very old one is capped.
        assert_eq!(arrival(now, wall, wall + Duration::from_secs(3)), now);
        assert_eq!(
            arrival(now, wall, wall - Duration::from_secs(30)),
            now - Duration::from_secs(1)
        );
    }

    /// An `RtpSocket` on loopback, its address, and a plain socket to send to it from.
    async fn bound() -> (RtpSocket, SocketAddr, UdpSocket) {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = rx.local_addr().expect("addr");
        let rx = RtpSocket::new(rx).expect("rtp socket");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        (rx, addr, tx)
    }

    #[tokio::test]
    async fn datagrams_waiting_at_a_tick_are_read_with_their_arrival_times() {
        let (mut rx, addr, tx) = bound().await;
        assert_eq!(rx.drain(Instant::now(), |_, _, _| {}), 0);
        // The kernel turns receive stamping on for the whole system lazily (a deferred static
        // key): when no other socket had it on, the first datagrams after enabling it are
        // stamped when read. Let one go through first.
        tx.send_to(b"warm-up", addr).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(rx.drain(Instant::now(), |_, _, _| {}), 1);

        tx.send_to(b"first", addr).expect("send");
        std::thread::sleep(Duration::from_millis(30));
        tx.send_to(b"second", addr).expect("send");
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let mut got = Vec::new();
        let n = rx.drain(now, |d, from, at| got.push((d.to_vec(), from, at)));
        assert_eq!(n, 2);
        assert_eq!(got[0].0, b"first");
        assert_eq!(got[1].0, b"second");
        assert_eq!(got[0].1, tx.local_addr().expect("tx addr"));
        // The kernel stamps keep the 30 ms between the two arrivals although both were read
        // at once (a read-time stamp would give 0).
        let gap = got[1].2.duration_since(got[0].2);
        assert!(gap >= Duration::from_millis(25), "gap {gap:?}");
        assert!(got[1].2 <= now);
    }

    #[tokio::test]
    async fn a_flood_is_read_at_most_max_per_tick_at_a_time() {
        let (mut rx, addr, tx) = bound().await;
        for _ in 0..(MAX_PER_TICK + 10) {
            tx.send_to(&[0u8; 172], addr).expect("send");
        }
        assert_eq!(rx.drain(Instant::now(), |_, _, _| {}), MAX_PER_TICK);
        assert_eq!(rx.drain(Instant::now(), |_, _, _| {}), 10);
    }
}
