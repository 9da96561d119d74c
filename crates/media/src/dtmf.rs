//! RFC 4733 telephone-events (DTMF): payload parsing/serialisation (§2.3), a receiver that
//! reports each key press exactly once (§2.5.2: de-duplicates the retransmitted end packets, copes
//! with a missing marker bit and lost start packets), and a sender (§2.5.1: marker on the first
//! packet, growing duration every update, the end packet sent three times).

use std::collections::VecDeque;
use std::time::Duration;

use thiserror::Error;

/// Length of an RFC 4733 event payload.
pub const EVENT_LEN: usize = 4;

/// Why an event payload was rejected.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DtmfError {
    /// Shorter than 4 bytes.
    #[error("telephone-event payload too short")]
    TooShort,
}

/// One RFC 4733 event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0–9, 10 = `*`, 11 = `#`, 12–15 = A–D, …).
    pub event: u8,
    /// E bit: this is (a retransmission of) the final packet.
    pub end: bool,
    /// Volume in −dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parse the first 4 bytes (further bytes, e.g. a second event in one packet, are ignored).
    pub fn parse(buf: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        if buf.len() < EVENT_LEN {
            return Err(DtmfError::TooShort);
        }
        Ok(TelephoneEvent {
            event: buf[0],
            end: buf[1] & 0x80 != 0,
            volume: buf[1] & 0x3F,
            duration: u16::from_be_bytes([buf[2], buf[3]]),
        })
    }

    /// Serialise into 4 bytes.
    pub fn to_bytes(self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }
}

/// The character for a DTMF event code (RFC 4733 §3.2), if it is one.
pub fn event_to_char(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        _ => return None,
    })
}

/// The event code of a DTMF character.
pub fn char_to_event(c: char) -> Option<u8> {
    Some(match c {
        '0'..='9' => c as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => c as u8 - b'A' + 12,
        'a'..='d' => c as u8 - b'a' + 12,
        _ => return None,
    })
}

/// A detected key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    /// `0-9`, `*`, `#`, `A-D`.
    pub digit: char,
    /// The RTP timestamp of the event (its start).
    pub rtp_timestamp: u32,
    /// Duration in timestamp units (the largest seen).
    pub duration: u16,
    /// When the event was recognised as finished (caller's time base): the arrival of its first
    /// end packet, or of whatever proved it over when every end packet was lost.
    pub at: Duration,
    /// False when no end packet was seen (finished by a later event or a timeout).
    pub saw_end: bool,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    duration: u16,
    ended: bool,
    last_seen: Duration,
}

/// Receives telephone-event packets and reports each event once.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    current: Option<Current>,
    out: VecDeque<DtmfDigit>,
    /// Packets that were retransmissions or updates of an already known event.
    pub duplicates: u64,
}

/// An event without end packet is reported after this much silence from the sender.
pub const DTMF_END_TIMEOUT: Duration = Duration::from_millis(800);

impl DtmfReceiver {
    /// A new receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handle one telephone-event packet. `at` is the arrival time in the caller's time base.
    /// The marker bit is deliberately not required: a new event is recognised by a new timestamp.
    pub fn handle(&mut self, ssrc: u32, rtp_timestamp: u32, ev: TelephoneEvent, at: Duration) {
        if let Some(cur) = &mut self.current
            && cur.ssrc == ssrc
            && cur.timestamp == rtp_timestamp
        {
            cur.last_seen = at;
            cur.duration = cur.duration.max(ev.duration);
            self.duplicates += 1;
            if ev.end && !cur.ended {
                cur.ended = true;
                let cur = *cur;
                self.emit(cur, at, true);
            }
            return;
        }
        // A different event: the previous one is over even if its end packets were lost.
        if let Some(prev) = self.current.take()
            && !prev.ended
        {
            self.emit(prev, at, false);
        }
        let cur = Current {
            ssrc,
            timestamp: rtp_timestamp,
            event: ev.event,
            duration: ev.duration,
            ended: ev.end,
            last_seen: at,
        };
        self.current = Some(cur);
        if ev.end {
            self.emit(cur, at, true);
        }
    }

    /// Report an event whose end packets were all lost once the sender has been quiet for
    /// [`DTMF_END_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Duration) {
        if let Some(cur) = &mut self.current
            && !cur.ended
            && now.saturating_sub(cur.last_seen) >= DTMF_END_TIMEOUT
        {
            cur.ended = true;
            let cur = *cur;
            self.emit(cur, now, false);
        }
    }

    /// When [`Self::handle_timeout`] would fire, if an event is in progress.
    pub fn timeout(&self) -> Option<Duration> {
        self.current
            .filter(|c| !c.ended)
            .map(|c| c.last_seen + DTMF_END_TIMEOUT)
    }

    /// Next detected digit.
    pub fn poll(&mut self) -> Option<DtmfDigit> {
        self.out.pop_front()
    }

    fn emit(&mut self, cur: Current, at: Duration, saw_end: bool) {
        if let Some(digit) = event_to_char(cur.event) {
            self.out.push_back(DtmfDigit {
                digit,
                rtp_timestamp: cur.timestamp,
                duration: cur.duration,
                at,
                saw_end,
            });
        }
    }
}

/// Generates the packets of one digit, one per 20 ms tick (RFC 4733 §2.5.1).
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    volume: u8,
    total: u16,
    timestamp: u32,
    sent: u16,
    ends_sent: u8,
    first: bool,
}

/// One packet of an outgoing event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// RTP marker bit (first packet of the event only).
    pub marker: bool,
    /// RTP timestamp (the event start, same for every packet).
    pub timestamp: u32,
    /// Payload.
    pub payload: [u8; EVENT_LEN],
}

impl DtmfSender {
    /// A digit of `duration` samples (8 kHz) starting at media timestamp `timestamp`.
    /// Returns `None` for a character that is not a DTMF key.
    pub fn new(digit: char, duration: u16, volume: u8, timestamp: u32) -> Option<Self> {
        Some(DtmfSender {
            event: char_to_event(digit)?,
            volume: volume.min(63),
            total: duration.max(160),
            timestamp,
            sent: 0,
            ends_sent: 0,
            first: true,
        })
    }

    /// The packet for the next tick of `step` samples (160 for 20 ms), or `None` when finished.
    pub fn next_packet(&mut self, step: u16) -> Option<DtmfPacket> {
        if self.ends_sent >= 3 {
            return None;
        }
        let end = if self.sent < self.total {
            self.sent = self.sent.saturating_add(step).min(self.total);
            self.sent >= self.total
        } else {
            true
        };
        if end {
            self.ends_sent += 1;
        }
        let marker = std::mem::replace(&mut self.first, false);
        Some(DtmfPacket {
            marker,
            timestamp: self.timestamp,
            payload: TelephoneEvent {
                event: self.event,
                end,
                volume: self.volume,
                duration: self.sent,
            }
            .to_bytes(),
        })
    }

    /// True once the three end packets went out.
    pub fn is_done(&self) -> bool {
        self.ends_sent >= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }
    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    #[test]
    fn three_end_packets_give_one_digit() {
        let mut rx = DtmfReceiver::new();
        for i in 1..=5u16 {
            rx.handle(1, 1000, ev(5, false, i * 160), ms(i as u64 * 20));
        }
        for i in 0..3 {
            rx.handle(1, 1000, ev(5, true, 960), ms(120 + i));
        }
        let d = rx.poll().unwrap();
        assert_eq!(
            (d.digit, d.duration, d.at, d.saw_end),
            ('5', 960, ms(120), true)
        );
        assert_eq!(rx.poll(), None);
    }

    #[test]
    fn lost_start_and_missing_marker_still_detected() {
        let mut rx = DtmfReceiver::new();
        // Only end packets of two events arrive.
        rx.handle(1, 1000, ev(1, true, 800), ms(100));
        rx.handle(1, 1000, ev(1, true, 800), ms(101));
        rx.handle(1, 5000, ev(1, true, 800), ms(600));
        let a: Vec<char> = std::iter::from_fn(|| rx.poll()).map(|d| d.digit).collect();
        assert_eq!(a, vec!['1', '1']);
    }

    #[test]
    fn lost_end_packets_are_finished_by_next_event_or_timeout() {
        let mut rx = DtmfReceiver::new();
        rx.handle(1, 1000, ev(2, false, 160), ms(0));
        rx.handle(1, 2000, ev(3, false, 160), ms(300));
        assert_eq!(rx.poll().map(|d| (d.digit, d.saw_end)), Some(('2', false)));
        rx.handle_timeout(ms(500));
        assert_eq!(rx.poll(), None);
        assert_eq!(rx.timeout(), Some(ms(1100)));
        rx.handle_timeout(ms(1100));
        assert_eq!(rx.poll().map(|d| d.digit), Some('3'));
        // A late end retransmission of the finished event does not double it.
        rx.handle(1, 2000, ev(3, true, 320), ms(1200));
        assert_eq!(rx.poll(), None);
    }

    #[test]
    fn sender_marker_durations_and_three_ends() {
        let mut tx = DtmfSender::new('#', 480, 10, 777).unwrap();
        let pkts: Vec<_> = std::iter::from_fn(|| tx.next_packet(160)).collect();
        assert_eq!(pkts.len(), 5);
        assert!(pkts[0].marker && pkts[1..].iter().all(|p| !p.marker));
        assert!(pkts.iter().all(|p| p.timestamp == 777));
        let evs: Vec<_> = pkts
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        assert_eq!(
            evs.iter().map(|e| (e.duration, e.end)).collect::<Vec<_>>(),
            vec![
                (160, false),
                (320, false),
                (480, true),
                (480, true),
                (480, true)
            ]
        );
        assert!(evs.iter().all(|e| e.event == 11));
        // Round trip through the receiver.
        let mut rx = DtmfReceiver::new();
        for (i, p) in pkts.iter().enumerate() {
            rx.handle(
                9,
                p.timestamp,
                TelephoneEvent::parse(&p.payload).unwrap(),
                ms(i as u64 * 20),
            );
        }
        assert_eq!(rx.poll().map(|d| d.digit), Some('#'));
        assert_eq!(rx.poll(), None);
    }
}
