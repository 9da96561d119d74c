//! The one piece of socket I/O in this crate: receiving a UDP datagram together with the
//! kernel's receive time (`SO_TIMESTAMPNS`, read from the `recvmsg(2)` control messages).
//!
//! The gateway's RTP socket reads at its 20 ms media tick and the trunk emulator records what
//! the phone heard; both need each datagram's arrival time as the kernel saw it, not as a late
//! task read it. They share [`enable_rx_timestamps`], [`recv_stamped`] and [`kernel_arrival`].
//!
//! Nothing here reads the clock: [`recv_stamped`] returns the kernel's wall-clock stamp, and
//! [`kernel_arrival`] moves it onto the monotonic clock from a `now` / `wall_now` pair the
//! caller read.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, recvmsg, setsockopt,
    sockopt,
};
use nix::sys::time::TimeSpec;

/// Asks the kernel to stamp every datagram received on `sock` with its receive time
/// (`SO_TIMESTAMPNS`), which [`recv_stamped`] reads.
pub fn enable_rx_timestamps(sock: &impl AsFd) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Room for the control message of one receive stamp, reused across reads.
#[derive(Debug, Clone)]
pub struct StampSpace(Vec<u8>);

impl StampSpace {
    /// Room for one `SCM_TIMESTAMPNS`.
    pub fn new() -> StampSpace {
        StampSpace(nix::cmsg_space!(TimeSpec))
    }
}

impl Default for StampSpace {
    fn default() -> Self {
        StampSpace::new()
    }
}

/// One datagram read by [`recv_stamped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The sender, `None` for a datagram that did not come from an IP address.
    pub from: Option<SocketAddr>,
    /// The kernel's receive time (wall clock), `None` when the socket gave no stamp (timestamps
    /// not enabled, or not supported).
    pub stamp: Option<SystemTime>,
}

/// Reads one datagram from `sock` into `buf` without blocking (`MSG_DONTWAIT`), with its sender
/// and kernel receive stamp. Nothing waiting is an error of kind [`io::ErrorKind::WouldBlock`],
/// as for any non-blocking socket (so it fits tokio's `async_io`); `EINTR` is retried. A
/// datagram longer than `buf` is truncated to it.
pub fn recv_stamped(
    sock: &impl AsRawFd,
    buf: &mut [u8],
    space: &mut StampSpace,
) -> io::Result<Stamped> {
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space.0),
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut stamp = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = c {
                    stamp = SystemTime::UNIX_EPOCH.checked_add(Duration::from(ts));
                }
            }
        }
        return Ok(Stamped {
            len: msg.bytes,
            from: msg.address.as_ref().and_then(to_std),
            stamp,
        });
    }
}

/// The monotonic time of a datagram the kernel stamped `stamp` (wall clock), given the monotonic
/// and wall-clock times `now` / `wall_now` read together after it arrived: `now` minus the
/// stamp's age. The age is clamped to `0..=max_age`, so that a wall-clock step cannot send
/// arrival times into the future (nor, with a finite `max_age`, far into the past).
pub fn kernel_arrival(
    now: Instant,
    wall_now: SystemTime,
    stamp: SystemTime,
    max_age: Duration,
) -> Instant {
    let age = wall_now
        .duration_since(stamp)
        .unwrap_or(Duration::ZERO)
        .min(max_age);
    now.checked_sub(age).unwrap_or(now)
}

/// Datagrams one [`RecvBatch::recv`] reads at most.
pub const BATCH: usize = 4;

/// Room for one datagram in a [`RecvBatch`] (longer ones are truncated).
pub const BATCH_DATAGRAM: usize = 2048;

/// Several waiting datagrams read with one `recvmmsg(2)`, each with its sender and kernel
/// receive stamp: the common case of one datagram waiting costs one system call where
/// [`recv_stamped`] needs two (the datagram, then `EAGAIN`). Allocated once and reused, so
/// reading allocates nothing.
///
/// The kernel writes each header's address and control-message lengths back into it, and
/// `nix` does not reset them between calls: use one batch per address family (an IPv6 sender's
/// address would not fit the length an IPv4 one left). A datagram without a stamp would leave
/// no room for the next ones' stamps, so the headers are rebuilt after one (an allocation, only
/// then).
pub struct RecvBatch {
    headers: MultiHeaders<SockaddrStorage>,
    bufs: Box<[[u8; BATCH_DATAGRAM]; BATCH]>,
    got: [Stamped; BATCH],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("got", &self.got).finish()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch::new()
    }
}

const NOTHING: Stamped = Stamped {
    len: 0,
    from: None,
    stamp: None,
};

impl RecvBatch {
    /// Room for [`BATCH`] datagrams and their stamps.
    pub fn new() -> RecvBatch {
        RecvBatch {
            headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec))),
            bufs: Box::new([[0; BATCH_DATAGRAM]; BATCH]),
            got: [NOTHING; BATCH],
        }
    }

    /// Read up to `max` (at most [`BATCH`]) waiting datagrams from `sock` without blocking;
    /// returns how many, 0 when none was waiting (or the call was interrupted). They are then
    /// [`RecvBatch::datagram`] `0..n`. Fewer than asked means none is left waiting.
    pub fn recv(&mut self, sock: &impl AsRawFd, max: usize) -> io::Result<usize> {
        let want = max.min(BATCH);
        if want == 0 {
            return Ok(0);
        }
        let mut stampless = false;
        let n = {
            let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            let res = match recvmmsg(
                sock.as_raw_fd(),
                &mut self.headers,
                iovs[..want].iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(r) => r,
                Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut n = 0;
            for (msg, got) in res.zip(self.got.iter_mut()) {
                let mut stamp = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            stamp = SystemTime::UNIX_EPOCH.checked_add(Duration::from(ts));
                        }
                    }
                }
                stampless |= stamp.is_none();
                *got = Stamped {
                    len: msg.bytes.min(BATCH_DATAGRAM),
                    from: msg.address.as_ref().and_then(to_std),
                    stamp,
                };
                n += 1;
            }
            n
        };
        if stampless {
            self.headers = MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(TimeSpec)));
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`]: its bytes and what came with them.
    pub fn datagram(&self, i: usize) -> (&[u8], Stamped) {
        let got = self.got.get(i).copied().unwrap_or(NOTHING);
        let data = self.bufs.get(i).map_or(&[][..], |b| &b[..got.len]);
        (data, got)
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    #[allow(clippy::disallowed_methods)] // a fixed origin for virtual time
    fn kernel_arrival_subtracts_the_stamps_age_within_bounds() {
        let now = Instant::now() + Duration::from_secs(3600);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cap = Duration::from_secs(1);
        let stamp = wall - Duration::from_millis(7);
        assert_eq!(
            kernel_arrival(now, wall, stamp, cap),
            now - Duration::from_millis(7)
        );
        // A stamp "in the future" (wall clock stepped back) is now; an old one is capped.
        assert_eq!(
            kernel_arrival(now, wall, wall + Duration::from_secs(3), cap),
            now
        );
        let old = wall - Duration::from_secs(30);
        assert_eq!(kernel_arrival(now, wall, old, cap), now - cap);
        assert_eq!(
            kernel_arrival(now, wall, old, Duration::MAX),
            now - Duration::from_secs(30)
        );
    }

    #[test]
    fn a_datagram_comes_with_its_sender_and_a_kernel_stamp() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let mut space = StampSpace::new();
        let mut buf = [0u8; 16];
        let e = recv_stamped(&rx, &mut buf, &mut space).expect_err("nothing yet");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // Wait (blocking) until it is there, then read it without blocking.
        let mut peek = [0u8; 1];
        rx.peek_from(&mut peek).expect("datagram arrives");
        let got = recv_stamped(&rx, &mut buf, &mut space).expect("datagram");
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.from, Some(tx.local_addr().expect("tx addr")));
        assert!(got.stamp.is_some(), "stamped by the kernel");

        // Without SO_TIMESTAMPNS: no stamp.
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"x", plain.local_addr().expect("addr"))
            .expect("send");
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        plain.peek_from(&mut peek).expect("datagram arrives");
        let got = recv_stamped(&plain, &mut buf, &mut space).expect("datagram");
        assert_eq!((got.len, got.stamp), (1, None));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // real sockets: let the loopback deliver
    fn a_batch_reads_what_is_waiting_in_one_call_with_senders_and_stamps() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_rx_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let to = rx.local_addr().expect("addr");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv(&rx, BATCH).expect("nothing yet"), 0);
        for i in 0..(BATCH as u8 + 2) {
            tx.send_to(&[i; 3], to).expect("send");
        }
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut peek = [0u8; 1];
        rx.peek_from(&mut peek).expect("datagram arrives");
        std::thread::sleep(Duration::from_millis(20)); // the others land too (loopback)
        assert_eq!(batch.recv(&rx, BATCH).expect("batch"), BATCH);
        for i in 0..BATCH {
            let (data, got) = batch.datagram(i);
            assert_eq!(data, &[i as u8; 3]);
            assert_eq!(got.from, Some(tx.local_addr().expect("tx addr")));
            assert!(got.stamp.is_some(), "datagram {i} stamped");
        }
        // Fewer than asked: the queue is empty.
        assert_eq!(batch.recv(&rx, BATCH).expect("rest"), 2);
        assert_eq!(batch.datagram(1).0, &[BATCH as u8 + 1; 3]);
        assert_eq!(batch.recv(&rx, 3).expect("none"), 0);
        assert_eq!(batch.datagram(7).0, b"");

        // A socket without stamps, then the stamped one again: stamps are still read.
        let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"x", plain.local_addr().expect("addr"))
            .expect("send");
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        plain.peek_from(&mut peek).expect("datagram arrives");
        assert_eq!(batch.recv(&plain, BATCH).expect("plain"), 1);
        assert_eq!(batch.datagram(0).1.stamp, None);
        tx.send_to(b"y", to).expect("send");
        rx.peek_from(&mut peek).expect("datagram arrives");
        assert_eq!(batch.recv(&rx, 1).expect("stamped"), 1);
        assert!(batch.datagram(0).1.stamp.is_some());
    }
}
