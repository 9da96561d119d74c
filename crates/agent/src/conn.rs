//! The state one connection shares between its sending side (`session::AgentHandle`) and its
//! connection tasks (`client`): counters, the writer's control queue and the bounded drop-oldest
//! audio queue. It depends on neither, so the modules point one way: `client` → `session` →
//! `conn`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;
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
        }
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
