//! RTP sent at its exact time by one dedicated OS thread, whatever the call tasks' scheduling.
//!
//! A call's task wakes on tokio's timer, which has 1 ms resolution and, on a busy runtime,
//! queues the wake-ups of hundreds of calls behind each other: sent from the task, a call's
//! 20 ms packets leave 0–5 ms late, a different amount each time, and the receiver sees that as
//! jitter. Here the task still builds each packet at its tick, but hands it over with a send
//! time of *its scheduled tick + a fixed delay* (`rtp.send_delay_ms`); this thread sleeps until
//! that time on the monotonic clock and sends it. As long as the task is late by less than the
//! delay, the packets leave exactly 20 ms apart: the delay buys steady pacing for a constant,
//! small addition to the downlink latency (the playout-delay trade every media server makes).
//! A task later than the delay has its packet sent at once (never early, never reordered).
//!
//! Send times are rounded down to a 1 ms grid ([`GRID`]) and each grid point's packets go out
//! in one wake-up: with 500 calls, 25,000 packets a second cost at most 1,000 thread wake-ups a
//! second, not one each. As 20 ms is a whole number of grid steps, a call's packets keep their
//! place on the grid: the rounding takes up to 1 ms off the delay, never off the 20 ms.
//!
//! The thread ends when the last [`RtpSendThread`] handle and every queued packet are gone.

// The I/O layer owns the clock.
#![allow(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::debug;

use super::pacing::{PacingHistogram, SendClock};

/// Send times are rounded down to this grid; one wake-up sends a grid point's packets.
pub const GRID: Duration = Duration::from_millis(1);

/// How long the idle thread waits before checking whether it is still wanted.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// Handle to the sending thread; clone it into every call.
#[derive(Debug)]
pub struct RtpSendThread {
    shared: Arc<Shared>,
    delay: Duration,
}

#[derive(Debug)]
struct Shared {
    /// The origin of the grid.
    epoch: Instant,
    queue: Mutex<Queue>,
    wake: Condvar,
    pacing: Option<Arc<PacingHistogram>>,
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Item>>,
    next_seq: u64,
    /// The deadline the thread sleeps until (`None` while it sends, or when idle: then any
    /// new packet wakes it).
    sleeping_until: Option<Instant>,
    handles: usize,
    /// Packet buffers given back by the thread once sent, reused by the next packets: no
    /// allocation per packet once as many are in use as the busiest millisecond needed.
    free: Vec<Vec<u8>>,
}

/// Spare packet buffers kept at most (~0.5 MB of 256-byte packets).
const MAX_FREE: usize = 2048;

#[derive(Debug)]
struct Item {
    at: Instant,
    seq: u64,
    packet: Vec<u8>,
    to: SocketAddr,
    stream: Arc<Stream>,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One call's RTP stream as the thread sees it: the socket and the call's send clock.
#[derive(Debug)]
pub struct Stream {
    sock: Arc<UdpSocket>,
    clock: Mutex<SendClock>,
}

impl Stream {
    pub fn new(sock: Arc<UdpSocket>) -> Arc<Stream> {
        Arc::new(Stream {
            sock,
            clock: Mutex::new(SendClock::default()),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RtpSendThread {
    /// Start the thread. Packets leave `delay` after the tick that built them; send intervals
    /// are recorded in `pacing`.
    pub fn start(delay: Duration, pacing: Option<Arc<PacingHistogram>>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            queue: Mutex::new(Queue {
                handles: 1,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            pacing,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("trunkline-rtp-send".into())
            .spawn(move || worker.run())?;
        Ok(RtpSendThread { shared, delay })
    }

    /// The delay between a packet's tick and its send time.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// When a packet given `at` actually becomes due (`at` rounded down to the grid).
    pub fn slot(&self, at: Instant) -> Instant {
        self.shared.on_grid(at)
    }

    /// Send `packet` to `to` on `stream` at `at` (at once if that has passed). A stream's
    /// packets leave in the order given for equal or increasing `at`. Returns the packet's id
    /// for [`RtpSendThread::replace`].
    pub fn send_at(&self, at: Instant, stream: &Arc<Stream>, packet: &[u8], to: SocketAddr) -> u64 {
        let at = self.shared.on_grid(at);
        let mut q = lock(&self.shared.queue);
        let seq = q.next_seq;
        q.next_seq += 1;
        let mut buf = q.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        q.heap.push(Reverse(Item {
            at,
            seq,
            packet: buf,
            to,
            stream: stream.clone(),
        }));
        // Wake the thread only if it sleeps past this packet (or waits for work).
        let wake = q.sleeping_until.is_none_or(|until| at < until);
        if wake {
            q.sleeping_until = Some(at);
            drop(q);
            self.shared.wake.notify_one();
        }
        seq
    }

    /// Replace the content of the queued packet `id` (same send time and destination). False
    /// when it is no longer queued (being sent or sent): then nothing changes.
    pub fn replace(&self, id: u64, packet: &[u8]) -> bool {
        let mut q = lock(&self.shared.queue);
        // The send time (the heap's order) does not change: the vector stays a valid heap.
        let mut items = std::mem::take(&mut q.heap).into_vec();
        let found = items
            .iter_mut()
            .find(|Reverse(i)| i.seq == id)
            .map(|Reverse(i)| {
                i.packet.clear();
                i.packet.extend_from_slice(packet);
            })
            .is_some();
        q.heap = BinaryHeap::from(items);
        found
    }
}

impl Clone for RtpSendThread {
    fn clone(&self) -> Self {
        lock(&self.shared.queue).handles += 1;
        RtpSendThread {
            shared: self.shared.clone(),
            delay: self.delay,
        }
    }
}

impl Drop for RtpSendThread {
    fn drop(&mut self) {
        lock(&self.shared.queue).handles -= 1;
    }
}

impl Shared {
    /// `at` rounded down to the grid (a time before the epoch is due at once anyway).
    fn on_grid(&self, at: Instant) -> Instant {
        let Some(since) = at.checked_duration_since(self.epoch) else {
            return at;
        };
        let step = GRID.as_nanos();
        let n = since.as_nanos() / step;
        u64::try_from(n * step)
            .map(|ns| self.epoch + Duration::from_nanos(ns))
            .unwrap_or(at)
    }

    fn run(&self) {
        let mut due: Vec<Item> = Vec::new();
        let mut spent: Vec<Vec<u8>> = Vec::new();
        let mut q = lock(&self.queue);
        loop {
            let room = MAX_FREE.saturating_sub(q.free.len());
            q.free.extend(spent.drain(..).take(room));
            let now = Instant::now();
            // Take everything due.
            while q.heap.peek().is_some_and(|Reverse(i)| i.at <= now) {
                if let Some(Reverse(i)) = q.heap.pop() {
                    due.push(i);
                }
            }
            if !due.is_empty() {
                q.sleeping_until = None;
                drop(q);
                self.send_all(&mut due, &mut spent);
                q = lock(&self.queue);
                continue;
            }
            match q.heap.peek().map(|Reverse(i)| i.at) {
                Some(at) => {
                    q.sleeping_until = Some(at);
                    let wait = at.saturating_duration_since(now);
                    q = self
                        .wake
                        .wait_timeout(q, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                None => {
                    if q.handles == 0 {
                        return;
                    }
                    q.sleeping_until = None;
                    q = self
                        .wake
                        .wait_timeout(q, IDLE_CHECK)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            }
        }
    }

    /// Send `due`, keeping each packet's buffer in `spent` for reuse.
    fn send_all(&self, due: &mut Vec<Item>, spent: &mut Vec<Vec<u8>>) {
        for item in due.drain(..) {
            let res = item.stream.sock.send_to(&item.packet, item.to);
            if let Some(h) = self.pacing.as_deref() {
                lock(&item.stream.clock).sent(Instant::now(), h);
            }
            if let Err(e) = res
                && e.kind() != io::ErrorKind::WouldBlock
            {
                debug!(error = %e, to = %item.to, "rtp send failed");
            }
            spent.push(item.packet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Arc<Stream>, UdpSocket, SocketAddr) {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind tx");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind rx");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        (Stream::new(Arc::new(tx)), rx, to)
    }

    #[test]
    fn packets_leave_at_their_time_in_order_and_late_ones_at_once() {
        let sender = RtpSendThread::start(Duration::from_millis(5), None).expect("start");
        let (stream, rx, to) = pair();
        let t0 = Instant::now();
        // Given out of time order: the 60 ms packet first, then 30 ms, then one already late.
        sender.send_at(t0 + Duration::from_millis(60), &stream, b"third", to);
        sender.send_at(t0 + Duration::from_millis(30), &stream, b"second", to);
        sender.send_at(t0 - Duration::from_millis(10), &stream, b"first", to);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = rx.recv(&mut buf).expect("recv");
            got.push((buf[..n].to_vec(), t0.elapsed()));
        }
        assert_eq!(got[0].0, b"first");
        assert_eq!(got[1].0, b"second");
        assert_eq!(got[2].0, b"third");
        // Never earlier than due, rounded down to the grid.
        assert!(
            got[1].1 + GRID >= Duration::from_millis(30),
            "{:?}",
            got[1].1
        );
        assert!(
            got[2].1 + GRID >= Duration::from_millis(60),
            "{:?}",
            got[2].1
        );
        assert!(
            got[0].1 < Duration::from_millis(30),
            "late packet held: {:?}",
            got[0].1
        );
    }

    #[test]
    fn a_queued_packet_can_be_replaced_until_it_leaves() {
        let sender = RtpSendThread::start(Duration::ZERO, None).expect("start");
        let (stream, rx, to) = pair();
        let at = Instant::now() + Duration::from_millis(40);
        let other = sender.send_at(at, &stream, b"other", to);
        let id = sender.send_at(at, &stream, b"silence", to);
        assert!(sender.replace(id, b"audio"));
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"other");
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(
            &buf[..n],
            b"audio",
            "the replacement left in the original's slot"
        );
        // Both have left: too late to replace.
        assert!(!sender.replace(id, b"late"));
        assert!(!sender.replace(other, b"late"));
    }

    #[test]
    fn equal_send_times_keep_the_order_given() {
        let sender = RtpSendThread::start(Duration::ZERO, None).expect("start");
        let (stream, rx, to) = pair();
        let at = Instant::now() + Duration::from_millis(20);
        for i in 0u8..20 {
            sender.send_at(at, &stream, &[i], to);
        }
        let mut buf = [0u8; 8];
        for i in 0u8..20 {
            let n = rx.recv(&mut buf).expect("recv");
            assert_eq!(&buf[..n], &[i]);
        }
    }

    #[test]
    fn send_intervals_are_recorded_per_stream() {
        let hist = Arc::new(PacingHistogram::default());
        let sender = RtpSendThread::start(Duration::ZERO, Some(hist.clone())).expect("start");
        let (a, rx_a, to_a) = pair();
        let (b, rx_b, to_b) = pair();
        let t0 = Instant::now() + Duration::from_millis(10);
        for n in 0..5u32 {
            let at = t0 + Duration::from_millis(20) * n;
            sender.send_at(at, &a, b"a", to_a);
            sender.send_at(at + Duration::from_millis(7), &b, b"b", to_b);
        }
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            rx_a.recv(&mut buf).expect("recv a");
            rx_b.recv(&mut buf).expect("recv b");
        }
        // 4 intervals per stream, each ~20 ms: the two streams' sends 7 ms apart do not mix.
        // (The last interval is recorded just after its packet left: give it a moment.)
        let deadline = Instant::now() + Duration::from_secs(2);
        while hist.snapshot().count() < 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = hist.snapshot();
        assert_eq!(s.count(), 8);
        assert!(s.max_us < 10_000, "max deviation {} µs", s.max_us);
    }

    #[test]
    fn the_thread_ends_when_the_last_handle_is_dropped() {
        let sender = RtpSendThread::start(Duration::ZERO, None).expect("start");
        let weak = Arc::downgrade(&sender.shared);
        let clone = sender.clone();
        drop(sender);
        drop(clone);
        let deadline = Instant::now() + Duration::from_secs(3);
        while weak.strong_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(weak.strong_count(), 0, "send thread still running");
    }
}
