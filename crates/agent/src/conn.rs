//! The state one connection shares between its sending side (`session::AgentHandle`) and its
//! connection tasks (`client`): counters, the writer's control queue and the bounded drop-oldest
//! audio queue. It depends on neither, so the modules point one way: `client` → `session` →
//! `conn`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::debug;

use crate::protocol::{Decoded, ServerEvent};

/// Counters for one connection.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub audio_chunks_sent: AtomicU64,
    pub audio_chunks_dropped: AtomicU64,
    pub audio_events_received: AtomicU64,
    pub audio_events_dropped_interrupted: AtomicU64,
    pub pings_answered: AtomicU64,
    pub last_ping_ms: AtomicU64,
    pub unknown_events: AtomicU64,
    pub ignored_fields: AtomicU64,
    pub decode_errors: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
}

/// Control messages for the writer (sent before queued audio).
#[derive(Debug)]
pub(crate) enum Control {
    Text(String),
    Close,
}

/// State shared by the handle, the reader and the writer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub stats: Counters,
    pub audio: Mutex<VecDeque<Bytes>>,
    pub audio_cap: usize,
    pub audio_ready: Notify,
    pub closed: AtomicBool,
    pub client_closing: AtomicBool,
    /// Wakes the reader when our close handshake was not answered in time.
    pub close_timed_out: Notify,
    /// The reader has finished (the close handshake completed or the connection is gone).
    pub reader_done: Notify,
    /// Wakes the writer out of a write that may never finish: close now (set with
    /// [`Shared::request_shutdown`]).
    pub shutdown: Notify,
    /// The reader found the agent unresponsive ([`Shared::stall`]).
    pub stalled: AtomicBool,
    /// The writer stopped on an error (wakes the reader).
    pub writer_failed: Notify,
    writer_error: Mutex<String>,
    /// The origin of the millisecond timestamps below.
    base: Instant,
    /// When the oldest of our WebSocket pings still without a pong was sent (ms since `base`,
    /// + 1; 0 = none outstanding).
    ping_unanswered_since: AtomicU64,
    /// The peer has answered one of our pings on this connection.
    pong_seen: AtomicBool,
    /// When the write in progress started (ms since `base`, + 1; 0 = not writing).
    write_busy_since: AtomicU64,
}

impl Shared {
    pub(crate) fn new(audio_cap: usize) -> Self {
        Shared {
            stats: Counters::default(),
            audio: Mutex::new(VecDeque::with_capacity(audio_cap.min(64))),
            audio_cap: audio_cap.max(1),
            audio_ready: Notify::new(),
            closed: AtomicBool::new(false),
            client_closing: AtomicBool::new(false),
            close_timed_out: Notify::new(),
            reader_done: Notify::new(),
            shutdown: Notify::new(),
            stalled: AtomicBool::new(false),
            writer_failed: Notify::new(),
            writer_error: Mutex::new(String::new()),
            base: Instant::now(),
            ping_unanswered_since: AtomicU64::new(0),
            pong_seen: AtomicBool::new(false),
            write_busy_since: AtomicU64::new(0),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    fn age(&self, stamp: u64, now: Instant) -> Option<Duration> {
        (stamp != 0).then(|| Duration::from_millis(self.stamp(now).saturating_sub(stamp)))
    }

    /// Asks the writer to stop whatever it is doing and close (bounded by the close handshake
    /// timeout). The permit is kept until the writer looks.
    pub(crate) fn request_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// The writer stopped on `error`.
    pub(crate) fn writer_failed(&self, error: String) {
        match self.writer_error.lock() {
            Ok(mut e) => *e = error,
            Err(p) => *p.into_inner() = error,
        }
        self.writer_failed.notify_one();
    }

    /// What the writer failed on.
    pub(crate) fn writer_error(&self) -> String {
        match self.writer_error.lock() {
            Ok(e) => e.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// We sent a WebSocket ping.
    pub(crate) fn ping_sent(&self, now: Instant) {
        let _ = self.ping_unanswered_since.compare_exchange(
            0,
            self.stamp(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A pong arrived: the peer reads what we send.
    pub(crate) fn pong_received(&self) {
        self.pong_seen.store(true, Ordering::Relaxed);
        self.ping_unanswered_since.store(0, Ordering::Relaxed);
    }

    /// A write (feed + flush) starts / ended.
    pub(crate) fn write_busy(&self, busy: bool, now: Instant) {
        let v = if busy { self.stamp(now) } else { 0 };
        self.write_busy_since.store(v, Ordering::Relaxed);
    }

    /// Why the agent counts as dead at `now`, if it does:
    /// - it has answered our pings before and one is now unanswered for `limit`;
    /// - it never answered a ping, one is outstanding, and nothing at all arrived for `limit`
    ///   (`last_frame`: when the reader last got a frame) — a server that does not answer
    ///   pings but talks is alive;
    /// - one of our writes has been blocked for `limit` (the peer stopped reading: its receive
    ///   window and our send buffer are full).
    pub(crate) fn stall(
        &self,
        now: Instant,
        limit: Duration,
        last_frame: Instant,
    ) -> Option<String> {
        let secs = limit.as_secs_f64();
        if let Some(age) = self.age(self.write_busy_since.load(Ordering::Relaxed), now)
            && age >= limit
        {
            return Some(format!("writes to the agent blocked for {secs} s"));
        }
        let unanswered = self.age(self.ping_unanswered_since.load(Ordering::Relaxed), now)?;
        if self.pong_seen.load(Ordering::Relaxed) {
            return (unanswered >= limit).then(|| format!("no pong to our ping for {secs} s"));
        }
        (now.saturating_duration_since(last_frame) >= limit)
            .then(|| format!("nothing received from the agent for {secs} s"))
    }

    pub(crate) fn count_decoded(&self, d: &Decoded) {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        if d.ignored_fields > 0 {
            self.stats
                .ignored_fields
                .fetch_add(u64::from(d.ignored_fields), Ordering::Relaxed);
        }
        if let ServerEvent::Unknown(u) = &d.event {
            self.stats.unknown_events.fetch_add(1, Ordering::Relaxed);
            debug!(event_type = %u.event_type, "unknown agent event ignored");
        }
    }

    pub(crate) fn record_ping(&self, ping_ms: Option<f64>) {
        self.stats.pings_answered.fetch_add(1, Ordering::Relaxed);
        if let Some(ms) = ping_ms {
            self.stats
                .last_ping_ms
                .store(ms.max(0.0).round() as u64, Ordering::Relaxed);
        }
    }

    /// Queues audio, dropping the oldest chunk when full. Never blocks (the lock is only held
    /// for a push/pop).
    pub(crate) fn push_audio(&self, chunk: Bytes) {
        let dropped = {
            let mut q = match self.audio.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            let dropped = if q.len() >= self.audio_cap {
                q.pop_front();
                true
            } else {
                false
            };
            q.push_back(chunk);
            dropped
        };
        if dropped {
            self.stats
                .audio_chunks_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.audio_ready.notify_one();
    }

    pub(crate) fn take_audio(&self, into: &mut Vec<Bytes>) {
        let mut q = match self.audio.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        into.extend(q.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_queue_drops_oldest_when_full() {
        let s = Shared::new(3);
        for i in 0..5u8 {
            s.push_audio(Bytes::from(vec![i]));
        }
        let mut out = Vec::new();
        s.take_audio(&mut out);
        assert_eq!(
            out,
            vec![
                Bytes::from(vec![2]),
                Bytes::from(vec![3]),
                Bytes::from(vec![4])
            ]
        );
        assert_eq!(s.stats.audio_chunks_dropped.load(Ordering::Relaxed), 2);
    }
}
