//! Playout pacer for agent audio.
//!
//! Agent TTS arrives in bursts, much faster than real time. The pacer queues it (tagged by the
//! agent's `event_id`) and emits exactly one 20 ms frame per tick on an absolute schedule
//! (`start + n × 20 ms`, so lateness never accumulates into drift), with silence when the queue is
//! empty so RTP never stops. The RTP timestamp of tick `n` is `base + 160 n`, always.
//!
//! Barge-in: [`Pacer::flush`] drops everything queued; [`Pacer::flush_up_to`] drops queued audio
//! with `event_id <= n` and any such audio that arrives later. [`Pacer::is_drained`] tells a
//! hang-up that the last sentence went out. Sans-IO: time is passed in.
//!
//! Marker bit: set on the first audio frame after silence (RFC 3551 §4.1) and after skipped ticks.
//!
//! Late audio: a frame is built at its tick but may leave a little later (the I/O layer's send
//! delay). When a tick found the queue empty and built silence, [`Pacer::poll_late`] lets audio
//! that arrived since take that same tick (same timestamp) instead of waiting 20 ms for the next
//! one; the caller swaps the packet before it leaves, or gives the audio back with
//! [`Pacer::late_missed`] if it already left.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::byteq::ByteQueue;
use crate::g711::G711;
use crate::jitter::FRAME;

/// Tick period.
pub const TICK: Duration = Duration::from_millis(20);

/// Pacer configuration.
#[derive(Debug, Clone, Copy)]
pub struct PacerConfig {
    /// Law of the queued codes.
    pub law: G711,
    /// At most this many overdue ticks are emitted back to back after a stall; beyond that the
    /// schedule skips ahead (timestamps still advance by 160 per tick, skipped ticks included).
    pub max_catchup: u32,
    /// Queue limit in bytes (8 bytes per ms); audio beyond it is refused.
    pub max_queue: usize,
    /// A trailing partial frame waits this many ticks for more audio before being padded.
    pub partial_hold_ticks: u32,
}

impl PacerConfig {
    /// Defaults for `law`.
    pub fn new(law: G711) -> Self {
        PacerConfig {
            law,
            max_catchup: 5,
            max_queue: 8 * 180_000, // 3 minutes
            partial_hold_ticks: 2,
        }
    }
}

/// A frame due for sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacedFrame {
    /// Tick index since start.
    pub tick: u64,
    /// When it was due.
    pub due: Instant,
    /// RTP timestamp (`base + 160 × tick`).
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// True when it carries agent audio (possibly padded), false for silence.
    pub is_audio: bool,
    /// The agent event the audio belongs to (of its first sample).
    pub event_id: Option<u64>,
    /// 160 codes.
    pub data: [u8; FRAME],
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    event_id: u64,
    len: usize,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacerStats {
    /// Frames with audio.
    pub audio_frames: u64,
    /// Silence frames.
    pub silence_frames: u64,
    /// Ticks skipped after a stall longer than `max_catchup`.
    pub skipped_ticks: u64,
    /// Bytes dropped by flushes or stale `event_id`s.
    pub flushed_bytes: u64,
    /// Bytes refused because the queue was full.
    pub refused_bytes: u64,
}

/// The pacer.
#[derive(Debug)]
pub struct Pacer {
    cfg: PacerConfig,
    queue: ByteQueue,
    segments: VecDeque<Segment>,
    drop_up_to: Option<u64>,
    start: Option<Instant>,
    tick: u64,
    ts_base: u32,
    talking: bool,
    force_marker: bool,
    partial_waited: u32,
    hold: bool,
    /// The last tick built silence from an empty queue (not held): it may still take audio.
    late_slot: Option<LateSlot>,
    /// What the last [`Pacer::poll_late`] took, until the next frame: for [`Pacer::late_missed`].
    late_taken: Option<[u8; FRAME]>,
    /// The segments it took them from (kept allocated from one swap to the next).
    late_segments: Vec<Segment>,
    stats: PacerStats,
}

#[derive(Debug, Clone, Copy)]
struct LateSlot {
    tick: u64,
    due: Instant,
    timestamp: u32,
}

impl Pacer {
    /// A stopped pacer; call [`Pacer::start`].
    pub fn new(cfg: PacerConfig) -> Self {
        Pacer {
            cfg,
            queue: ByteQueue::new(),
            segments: VecDeque::new(),
            drop_up_to: None,
            start: None,
            tick: 0,
            ts_base: 0,
            talking: false,
            force_marker: false,
            partial_waited: 0,
            hold: false,
            late_slot: None,
            late_taken: None,
            late_segments: Vec::new(),
            stats: PacerStats::default(),
        }
    }

    /// Start the schedule: tick 0 is due at `now` with RTP timestamp `ts_base`.
    pub fn start(&mut self, now: Instant, ts_base: u32) {
        self.start = Some(now);
        self.tick = 0;
        self.ts_base = ts_base;
    }

    /// Set the RTP timestamp of tick 0 before starting.
    pub fn start_ts_hint(&mut self, ts_base: u32) {
        self.ts_base = ts_base;
    }

    /// The RTP timestamp of tick 0.
    pub fn ts_hint(&self) -> u32 {
        self.ts_base
    }

    /// The RTP timestamp of the next tick.
    pub fn next_timestamp(&self) -> u32 {
        self.ts_base
            .wrapping_add((self.tick as u32).wrapping_mul(FRAME as u32))
    }

    /// Whether [`Pacer::start`] was called.
    pub fn is_started(&self) -> bool {
        self.start.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> PacerStats {
        self.stats
    }

    /// Queue audio codes (any length) for `event_id`. Returns the number of bytes accepted
    /// (0 when the event was already flushed by [`Pacer::flush_up_to`]).
    pub fn push(&mut self, event_id: u64, codes: &[u8]) -> usize {
        if self.drop_up_to.is_some_and(|n| event_id <= n) {
            self.stats.flushed_bytes += codes.len() as u64;
            return 0;
        }
        let room = self.cfg.max_queue.saturating_sub(self.queue.len());
        let n = codes.len().min(room);
        self.stats.refused_bytes += (codes.len() - n) as u64;
        if n == 0 {
            return 0;
        }
        self.queue.extend(&codes[..n]);
        match self.segments.back_mut() {
            Some(s) if s.event_id == event_id => s.len += n,
            _ => self.segments.push_back(Segment { event_id, len: n }),
        }
        n
    }

    /// Queue audio codes for `event_id` before everything already queued (a prompt that must
    /// be heard first, e.g. recording consent). Bounded like [`Pacer::push`].
    pub fn push_front(&mut self, event_id: u64, codes: &[u8]) -> usize {
        let room = self.cfg.max_queue.saturating_sub(self.queue.len());
        let n = codes.len().min(room);
        self.stats.refused_bytes += (codes.len() - n) as u64;
        if n == 0 {
            return 0;
        }
        self.queue.push_front(&codes[..n]);
        self.segments.push_front(Segment { event_id, len: n });
        n
    }

    /// Barge-in: drop everything queued. Returns the bytes dropped.
    pub fn flush(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.segments.clear();
        self.partial_waited = 0;
        self.late_taken = None;
        self.stats.flushed_bytes += n as u64;
        n
    }

    /// Drop queued audio with `event_id <= up_to`, and refuse such audio from now on.
    pub fn flush_up_to(&mut self, up_to: u64) -> usize {
        self.drop_up_to = Some(self.drop_up_to.map_or(up_to, |d| d.max(up_to)));
        self.late_taken = None;
        let mut dropped = 0;
        let mut offset = 0;
        let mut i = 0;
        while i < self.segments.len() {
            let seg = self.segments[i];
            if seg.event_id <= up_to {
                self.queue.remove(offset, offset + seg.len);
                self.segments.remove(i);
                dropped += seg.len;
            } else {
                offset += seg.len;
                i += 1;
            }
        }
        self.stats.flushed_bytes += dropped as u64;
        dropped
    }

    /// Queued bytes (8 per millisecond).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when no agent audio is left to send.
    pub fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    /// When the next frame is due (`None` before [`Pacer::start`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.start.map(|s| due_at(s, self.tick))
    }

    /// While held, ticks go on (silence frames, timestamps advancing) but no queued audio is
    /// taken: the audio is delayed, not lost (used while RFC 4733 events take the ticks).
    pub fn set_hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// The next frame if it is due at `now`. Call until it returns `None`.
    pub fn poll_frame(&mut self, now: Instant) -> Option<PacedFrame> {
        let start = self.start?;
        let mut due = due_at(start, self.tick);
        if now < due {
            return None;
        }
        // How many ticks are overdue beyond this one?
        let behind = (now.saturating_duration_since(due).as_micros() / TICK.as_micros()) as u64;
        if behind > self.cfg.max_catchup as u64 {
            let skip = behind - self.cfg.max_catchup as u64;
            self.tick += skip;
            self.stats.skipped_ticks += skip;
            self.force_marker = true;
            due = due_at(start, self.tick);
        }
        let tick = self.tick;
        self.tick += 1;
        self.late_slot = None;
        self.late_taken = None;
        let timestamp = self
            .ts_base
            .wrapping_add((tick as u32).wrapping_mul(FRAME as u32));
        let avail = if self.hold { 0 } else { self.queue.len() };
        let take = if avail >= FRAME {
            FRAME
        } else if avail > 0 && self.partial_waited >= self.cfg.partial_hold_ticks {
            avail
        } else {
            if avail > 0 {
                self.partial_waited += 1;
            }
            0
        };
        if take == 0 {
            self.talking = false;
            self.stats.silence_frames += 1;
            if avail == 0 && !self.hold {
                self.late_slot = Some(LateSlot {
                    tick,
                    due,
                    timestamp,
                });
            }
            return Some(PacedFrame {
                tick,
                due,
                timestamp,
                marker: false,
                is_audio: false,
                event_id: None,
                data: [self.cfg.law.silence(); FRAME],
            });
        }
        self.partial_waited = 0;
        let (event_id, data) = self.take_audio(take, None);
        let marker = !self.talking || std::mem::take(&mut self.force_marker);
        self.talking = true;
        self.stats.audio_frames += 1;
        Some(PacedFrame {
            tick,
            due,
            timestamp,
            marker,
            is_audio: true,
            event_id,
            data,
        })
    }

    /// Late audio for the tick just built: when that tick built silence from an empty queue
    /// and a whole frame has been queued since, the frame for *that* tick (same `tick`, `due`
    /// and timestamp, marker set: it follows silence). The caller replaces the silence packet
    /// with it before it leaves; if it already left, [`Pacer::late_missed`] gives the audio
    /// back. At most once per tick; `None` once the next tick was built.
    pub fn poll_late(&mut self) -> Option<PacedFrame> {
        let slot = self.late_slot?;
        if self.hold || self.queue.len() < FRAME {
            return None;
        }
        self.late_slot = None;
        let mut taken = std::mem::take(&mut self.late_segments);
        taken.clear();
        let (event_id, data) = self.take_audio(FRAME, Some(&mut taken));
        self.late_segments = taken;
        self.late_taken = Some(data);
        let marker = !self.talking || std::mem::take(&mut self.force_marker);
        self.talking = true;
        self.stats.silence_frames = self.stats.silence_frames.saturating_sub(1);
        self.stats.audio_frames += 1;
        Some(PacedFrame {
            tick: slot.tick,
            due: slot.due,
            timestamp: slot.timestamp,
            marker,
            is_audio: true,
            event_id,
            data,
        })
    }

    /// The frame of the last [`Pacer::poll_late`] could not replace the silence (it had left):
    /// put its audio back at the front of the queue for the next tick, which then carries the
    /// marker. Nothing happens if a tick or a flush came in between.
    pub fn late_missed(&mut self) {
        let Some(data) = self.late_taken.take() else {
            return;
        };
        let len: usize = self.late_segments.iter().map(|s| s.len).sum();
        self.queue.push_front(&data[..len]);
        for seg in self.late_segments.drain(..).rev() {
            match self.segments.front_mut() {
                Some(s) if s.event_id == seg.event_id => s.len += seg.len,
                _ => self.segments.push_front(seg),
            }
        }
        self.talking = false;
        self.stats.audio_frames = self.stats.audio_frames.saturating_sub(1);
        self.stats.silence_frames += 1;
    }

    /// Take `take` (≤ [`FRAME`]) queued bytes into a frame padded with silence; the event of
    /// the first byte. `taken` collects the segments consumed.
    fn take_audio(
        &mut self,
        take: usize,
        mut taken: Option<&mut Vec<Segment>>,
    ) -> (Option<u64>, [u8; FRAME]) {
        let mut data = [self.cfg.law.silence(); FRAME];
        let event_id = self.segments.front().map(|s| s.event_id);
        self.queue.copy_front(&mut data[..take]);
        self.queue.drain_front(take);
        let mut left = take;
        while left > 0 {
            let Some(seg) = self.segments.front_mut() else {
                break;
            };
            let n = seg.len.min(left);
            seg.len -= n;
            left -= n;
            if let Some(t) = taken.as_deref_mut() {
                t.push(Segment {
                    event_id: seg.event_id,
                    len: n,
                });
            }
            if seg.len == 0 {
                self.segments.pop_front();
            }
        }
        (event_id, data)
    }
}

fn due_at(start: Instant, tick: u64) -> Instant {
    start + TICK * tick as u32
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin for virtual time
mod tests {
    use super::*;

    #[test]
    fn a_prompt_pushed_in_front_plays_first_and_survives_interruptions() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
        p.start(t0, 0);
        p.push(3, &[7u8; 320]);
        assert_eq!(p.push_front(u64::MAX, &[9u8; 320]), 320);
        // An interruption of the agent's event 3 leaves the prompt.
        assert_eq!(p.flush_up_to(3), 320);
        p.push(4, &[5u8; 160]);
        let data: Vec<u8> = (0..3)
            .map(|i| p.poll_frame(t0 + TICK * i).unwrap().data[0])
            .collect();
        assert_eq!(data, [9, 9, 5]);
        assert!(p.is_drained());
    }

    #[test]
    fn silence_when_empty_then_audio_with_marker() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::new(G711::Ulaw));
        p.start(t0, 1000);
        let f = p.poll_frame(t0).unwrap();
        assert!(!f.is_audio && f.timestamp == 1000 && f.data == [0xFF; 160]);
        assert!(p.poll_frame(t0).is_none());
        assert_eq!(p.poll_timeout(), Some(t0 + TICK));
        p.push(1, &[7u8; 400]);
        let f = p.poll_frame(t0 + TICK).unwrap();
        assert!(f.is_audio && f.marker && f.timestamp == 1160 && f.event_id == Some(1));
        let f = p.poll_frame(t0 + TICK * 2).unwrap();
        assert!(f.is_audio && !f.marker);
        // 80 bytes left: held for two ticks, then padded.
        assert!(!p.poll_frame(t0 + TICK * 3).unwrap().is_audio);
        assert!(!p.poll_frame(t0 + TICK * 4).unwrap().is_audio);
        let f = p.poll_frame(t0 + TICK * 5).unwrap();
        assert!(f.is_audio && f.data[..80] == [7; 80] && f.data[80..] == [0xFF; 80]);
        assert!(p.is_drained());
    }

    #[test]
    fn flush_up_to_drops_old_events_now_and_later() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::new(G711::Alaw));
        p.start(t0, 0);
        p.push(1, &[1; 320]);
        p.push(2, &[2; 320]);
        p.push(3, &[3; 320]);
        assert_eq!(p.flush_up_to(2), 640);
        assert_eq!(p.push(2, &[2; 160]), 0);
        assert_eq!(p.queued(), 320);
        let f = p.poll_frame(t0).unwrap();
        assert_eq!((f.event_id, f.data[0]), (Some(3), 3));
        assert_eq!(p.flush(), 160);
        assert!(p.is_drained());
    }
}
