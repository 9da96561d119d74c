//! RFC 3261 §17 timers as an enum indexing a small table (the quinn-proto pattern).
//!
//! Every transaction owns one [`TimerTable`]; a timer is either armed with a deadline or not. The
//! transaction layer asks each table for its earliest deadline and fires the expired ones in order.

use std::time::{Duration, Instant};

/// The transaction timers of RFC 3261 §17 (Table 4 of Appendix A), plus RFC 6026's Timers L and M and
/// the 200 ms "send 100 Trying" timer of §17.2.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE client: request retransmission (UDP only), initially T1, doubling.
    A,
    /// INVITE client: transaction timeout, 64·T1.
    B,
    /// INVITE client: wait time for response retransmissions, 32 s on UDP, 0 on TCP/TLS.
    D,
    /// non-INVITE client: request retransmission (UDP only), initially T1, doubling up to T2.
    E,
    /// non-INVITE client: transaction timeout, 64·T1.
    F,
    /// non-INVITE client: wait time for response retransmissions, T4 on UDP, 0 otherwise.
    K,
    /// INVITE server: final response retransmission (UDP only), initially T1, doubling up to T2.
    G,
    /// INVITE server: wait time for ACK receipt, 64·T1.
    H,
    /// INVITE server: wait time for ACK retransmissions, T4 on UDP, 0 otherwise.
    I,
    /// non-INVITE server: wait time for request retransmissions, 64·T1 on UDP, 0 otherwise.
    J,
    /// INVITE server, RFC 6026 "Accepted": wait time for INVITE retransmissions after a 2xx, 64·T1.
    L,
    /// INVITE client, RFC 6026 "Accepted": wait time for 2xx retransmissions, 64·T1.
    M,
    /// INVITE server: send 100 Trying if the TU has not answered within 200 ms (§17.2.1).
    Trying,
}

impl Timer {
    /// All timers, in table order.
    pub const ALL: [Timer; 13] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::K,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::L,
        Timer::M,
        Timer::Trying,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub struct TimerTable {
    deadlines: [Option<Instant>; 13],
}

impl TimerTable {
    /// Arms `timer` to fire at `at` (replacing an earlier setting).
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    /// Disarms every timer.
    pub fn stop_all(&mut self) {
        self.deadlines = [None; 13];
    }

    /// The deadline of `timer`, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// The earliest timer whose deadline is `<= now`; it is disarmed before being returned.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let mut best: Option<(Timer, Instant)> = None;
        for timer in Timer::ALL {
            if let Some(at) = self.deadlines[timer.index()]
                && at <= now
                && best.is_none_or(|(_, b)| at < b)
            {
                best = Some((timer, at));
            }
        }
        let (timer, _) = best?;
        self.stop(timer);
        Some(timer)
    }
}

/// RFC 3261 timer values (§17.1.1.1, Table 4). Tests shrink or stretch them freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate, default 500 ms.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses, default 4 s.
    pub t2: Duration,
    /// Maximum duration a message remains in the network, default 5 s.
    pub t4: Duration,
    /// How long an INVITE server transaction waits for the TU before sending 100 Trying, default 200 ms.
    pub trying_delay: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            trying_delay: Duration::from_millis(200),
        }
    }
}

impl TimerConfig {
    /// 64·T1: Timers B, F, H, J (UDP), L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // a virtual epoch; nothing waits on it
    fn pop_expired_returns_earliest_first_and_disarms() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::B, t0 + Duration::from_secs(2));
        table.set(Timer::A, t0 + Duration::from_secs(1));
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.pop_expired(t0), None);
        let late = t0 + Duration::from_secs(3);
        assert_eq!(table.pop_expired(late), Some(Timer::A));
        assert_eq!(table.pop_expired(late), Some(Timer::B));
        assert_eq!(table.pop_expired(late), None);
        assert_eq!(table.next_deadline(), None);
    }
}
