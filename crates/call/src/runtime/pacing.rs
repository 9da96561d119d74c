//! Output pacing as the gateway itself sees it: |interval between two consecutive RTP sends of
//! a call − 20 ms|, measured right after each `sendto`, into one histogram shared by all calls
//! (exported as `trunkline_rtp_send_pacing_seconds`).
//!
//! A receiver measures the same thing plus the network and its own scheduling; this is the part
//! the gateway is responsible for (timer wake-up, queueing behind other calls on the worker).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, µs (a last bucket counts everything above).
pub const PACING_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 20_000, 40_000, 100_000,
];

/// The nominal packet interval.
const INTERVAL: Duration = Duration::from_millis(20);

/// Shared pacing histogram (lock-free: one relaxed increment per packet).
#[derive(Debug, Default)]
pub struct PacingHistogram {
    counts: [AtomicU64; PACING_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacingSnapshot {
    /// Per bucket (not cumulative); the last is above the last bound.
    pub counts: [u64; PACING_BUCKETS_US.len() + 1],
    /// Sum of all deviations, µs.
    pub sum_us: u64,
    /// Largest deviation seen, µs.
    pub max_us: u64,
}

impl PacingSnapshot {
    /// Intervals recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), µs; `None` when empty or in
    /// the overflow bucket.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return PACING_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

impl PacingHistogram {
    /// Record one deviation.
    pub fn record(&self, deviation: Duration) {
        let us = u64::try_from(deviation.as_micros()).unwrap_or(u64::MAX);
        let i = PACING_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(PACING_BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> PacingSnapshot {
        let mut s = PacingSnapshot {
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
            ..PacingSnapshot::default()
        };
        for (d, c) in s.counts.iter_mut().zip(&self.counts) {
            *d = c.load(Ordering::Relaxed);
        }
        s
    }
}

/// How the calls' media ticks kept time, shared by all calls (exported on `/metrics`).
///
/// A call's task builds its RTP packet at its 20 ms tick, woken by tokio's timer; the send
/// thread sends it at the tick's scheduled time + `rtp.send_delay_ms`. A task woken later than
/// that misses its packet's send slot, and the packet leaves late: these two counters say how
/// often, and by how much, so that an operator (and the load tester) can tell the gateway's own
/// scheduling from the network's jitter.
#[derive(Debug, Default)]
pub struct TickStats {
    /// How late each media tick ran after its scheduled time (the task's wake-up delay).
    pub lateness: PacingHistogram,
    /// RTP packets handed to the send thread after their send slot had passed (sent at once,
    /// late by the difference).
    pub missed_slots: AtomicU64,
}

impl TickStats {
    /// A tick scheduled for `scheduled` ran at `ran`.
    pub fn tick(&self, scheduled: Instant, ran: Instant) {
        self.lateness
            .record(ran.saturating_duration_since(scheduled));
    }

    /// A packet missed its send slot.
    pub fn missed_slot(&self) {
        self.missed_slots.fetch_add(1, Ordering::Relaxed);
    }

    /// Packets that missed their send slot so far.
    pub fn missed(&self) -> u64 {
        self.missed_slots.load(Ordering::Relaxed)
    }
}

/// One call's send clock: feeds the shared histogram with the interval since its last send.
#[derive(Debug, Default)]
pub(crate) struct SendClock {
    last: Option<Instant>,
}

impl SendClock {
    pub(crate) fn sent(&mut self, at: Instant, hist: &PacingHistogram) {
        if let Some(prev) = self.last.replace(at) {
            let gap = at.saturating_duration_since(prev);
            hist.record(gap.abs_diff(INTERVAL));
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests are the origin of time
mod tests {
    use super::*;

    #[test]
    fn deviations_land_in_their_buckets_and_quantiles_read_back() {
        let h = PacingHistogram::default();
        let mut clock = SendClock::default();
        let t0 = Instant::now();
        // 98 perfect intervals, one 1.2 ms late, then one 30 ms late.
        let mut t = t0;
        for _ in 0..=98 {
            clock.sent(t, &h);
            t += INTERVAL;
        }
        t += Duration::from_micros(1_200);
        clock.sent(t, &h);
        t += INTERVAL + Duration::from_millis(30);
        clock.sent(t, &h);
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.counts[0], 98);
        assert_eq!(s.counts[4], 1, "1.2 ms → the ≤ 1.5 ms bucket");
        assert_eq!(s.counts[10], 1, "30 ms → the ≤ 40 ms bucket");
        assert_eq!(s.max_us, 30_000);
        assert_eq!(s.quantile_bound_us(0.5), Some(100));
        assert_eq!(s.quantile_bound_us(0.98), Some(100));
        assert_eq!(s.quantile_bound_us(0.99), Some(1_500));
        assert_eq!(s.quantile_bound_us(1.0), Some(40_000));
        assert_eq!(PacingSnapshot::default().quantile_bound_us(0.5), None);
    }
}
