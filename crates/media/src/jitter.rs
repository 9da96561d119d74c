//! Pull-based adaptive jitter buffer for 8 kHz G.711 audio.
//!
//! Packets are written by RTP timestamp into a ring of codes sized to the maximum delay (256 ms
//! at the default 200 ms maximum, 512 ms at 400), so any packetisation (10, 20, 30 ms …) is
//! accepted, reordered packets fall into place and duplicates are recognised. The
//! consumer calls [`JitterBuffer::pop`] once per 20 ms tick and always gets a frame: audio,
//! concealment (repeat of the last frame, fading out over 60 ms) or silence.
//!
//! Depth adapts between the configured bounds from the RFC 3550 §6.4.1 / A.8 interarrival jitter
//! estimate and from underruns. The target starts at the configured initial delay (60 ms: the
//! jitter of a new stream is unknown) and relaxes by 10 ms every 0.5 s towards what the measured
//! jitter warrants (one frame plus four times the RFC 3550 estimate, at least the configured
//! minimum, 20 ms by default), so a clean line is down to its floor within 2 s of the first
//! packet; the extra delay added after an underrun or a late packet decays by 10 ms every 2 s.
//! A new SSRC or a timestamp jump is re-mapped onto the buffer's own timeline right after the
//! audio already buffered (nothing is dropped); after an underrun (DTX, talkspurt start, late
//! sender) the next packet is re-anchored at the target depth. The anchor is measured against
//! the consumer's clock: if the first pop after it comes a whole tick (or more) after the
//! anchoring packet arrived, the silent prefill is shortened by those whole frames, so a steady
//! stream sits at exactly the target depth whatever the phase (and tie order) of arrivals and
//! pops.
//!
//! The depth that decides shrinking is measured in time, not in whole frames: each packet's
//! *lead*, how long before the pop that plays its last sample it arrived (pops come every 20 ms
//! after the last one). Over a second, the least lead minus a 2 ms guard, plus the frame being
//! played, is compared with the target. So a clean line whose packets arrive 7 ms before the
//! pops settles at one frame (each packet played 7 ms after it arrived), and one whose packets
//! arrive just before (or at) the pops keeps two (played ~20 ms after arrival): the delay the
//! buffer adds is the least that keeps a 2 ms + 4 × jitter margin, whatever the phase. After an
//! underrun or a late packet (until that extra delay decays) the more cautious whole-frame depth
//! counts as well, and a late packet cancels a pending shrink.
//!
//! Shrinking never cuts speech. When the buffer has been at least a frame deeper than the
//! target for a whole second (the target relaxed, sender clock drift, a burst that left it deep
//! after jitter calmed down), the excess is removed by skipping whole 20 ms frames that are
//! entirely received and quiet (every sample below [`QUIET_PEAK`]: silence, comfort-noise level
//! background), never below the target. Only if the buffer grew more than a frame beyond the depth
//! it was placed at (drift, a burst) and stays so for [`LAST_RESORT`] without a single quiet frame
//! is one whole frame dropped regardless, counted in [`JitterStats::samples_dropped_forced`]
//! (as is the hard trim when a burst overflows the maximum delay); a target that merely relaxed
//! waits for quiet frames however long that takes, so continuous speech is never cut for latency.
//! Sans-IO: time is only ever passed in.

use std::time::{Duration, Instant};

use crate::g711::{G711, scale_code};

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// The largest ring, in samples (512 ms): room for the largest maximum delay (400 ms) and more
/// than a frame on top.
const RING_MAX: usize = 4096;
/// The smallest ring (256 ms), enough for the default 200 ms maximum delay.
const RING_MIN: usize = 2048;
/// A frame may be skipped to shrink the buffer only if every sample's magnitude (16-bit linear)
/// is at most this: about −42 dBFS peak, i.e. silence or low-level background noise.
pub const QUIET_PEAK: i16 = 256;
/// How long the buffer may stay too deep without a single quiet frame before one frame of audio
/// is dropped anyway.
pub const LAST_RESORT: Duration = Duration::from_secs(10);
/// [`LAST_RESORT`] in 20 ms pops.
const LAST_RESORT_POPS: u32 = (LAST_RESORT.as_millis() / 20) as u32;
/// Pops between two 10 ms decays of the extra delay added after underruns (2 s).
const RELAX_POPS: u32 = 100;
/// Pops between two 10 ms relaxations of the initial delay (0.5 s): from the 60 ms start to a
/// 20 ms floor within 2 s of the first packet, unless the measured jitter asks for more.
const SETTLE_POPS: u32 = 25;
/// Pops per depth observation window (1 s).
const WINDOW_POPS: u32 = 50;
/// The least time a packet must have arrived ahead of the pop that needs it, after a shrink, on
/// top of four times the measured jitter (2 ms: the scheduling noise of a busy host).
const LEAD_GUARD_US: i64 = 2_000;

/// Configuration bounds.
#[derive(Debug, Clone, Copy)]
pub struct JitterConfig {
    /// Smallest buffering delay.
    pub min_delay: Duration,
    /// Largest buffering delay (at most 400 ms).
    pub max_delay: Duration,
    /// Delay at start.
    pub initial_delay: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            initial_delay: Duration::from_millis(60),
        }
    }
}

/// What a popped frame contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Received audio only.
    Audio,
    /// Some or all samples were missing and concealed.
    Concealed,
    /// Nothing to play (before the first packet, during DTX, after concealment faded out).
    Silence,
}

/// One 20 ms frame of G.711 codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// 160 codes in the buffer's law.
    pub data: [u8; FRAME],
    /// What it contains.
    pub kind: FrameKind,
}

/// Result of [`JitterBuffer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored.
    Stored,
    /// Every sample was already there.
    Duplicate,
    /// Entirely behind the playout point.
    Late,
    /// Stored after re-mapping a new SSRC / timestamp jump / re-anchor after underrun.
    Resynced,
}

/// Counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JitterStats {
    /// Packets stored.
    pub stored: u64,
    /// Duplicate packets.
    pub duplicates: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    /// Re-synchronisations (SSRC change, timestamp jump).
    pub resyncs: u64,
    /// Frames popped with audio.
    pub frames_audio: u64,
    /// Frames popped that were (partly) concealed.
    pub frames_concealed: u64,
    /// Frames popped as silence.
    pub frames_silence: u64,
    /// Samples that were expected but missing when played (loss).
    pub samples_lost: u64,
    /// Number of underruns (buffer ran dry while a stream was active).
    pub underruns: u64,
    /// Samples dropped to shrink the depth (all causes, including
    /// [`JitterStats::samples_dropped_forced`]).
    pub samples_dropped: u64,
    /// Of `samples_dropped`, those dropped without checking that they were quiet: last-resort
    /// frame drops after [`LAST_RESORT`] without silence, and the hard trim when a burst
    /// overflows the maximum delay (more than `max_delay` + 20 ms buffered).
    pub samples_dropped_forced: u64,
    /// Interarrival jitter estimate (RFC 3550 A.8), in samples.
    pub jitter_samples: f64,
    /// Current depth (buffered span ahead of playout), in samples.
    pub depth_samples: u32,
    /// Current target depth, in samples.
    pub target_samples: u32,
}

/// The jitter buffer: about 1 KiB, plus its ring (2.3 KiB at the default 200 ms maximum delay,
/// 4.5 KiB at 400 ms).
#[derive(Debug)]
pub struct JitterBuffer {
    cfg_min: i64,
    cfg_max: i64,
    law: G711,
    /// Ring of codes, indexed by position & `mask`; its length is a power of two, at least the
    /// maximum delay plus two frames.
    audio: Box<[u8]>,
    /// Which ring slots hold received audio, one bit per slot.
    present: Box<[u64]>,
    /// Ring length - 1.
    mask: i64,
    started: bool,
    waiting: bool,
    playout: i64,
    highest_end: i64,
    silence_until: i64,
    // stream mapping
    ssrc: u32,
    last_ts: u32,
    last_ext: i64,
    offset: i64,
    /// When the current anchor was set (the arrival of the anchoring packet), until the next pop.
    anchored_at: Option<Instant>,
    // adaptation
    target: i64,
    /// Floor of the target: starts at the initial delay, relaxes to `cfg_min`.
    settle: i64,
    boost: i64,
    /// Pops until the initial delay relaxes by another 10 ms.
    relax_in: u32,
    pops_since_underrun: u32,
    window_min_depth: i64,
    /// Least lead (µs) of a packet in the window: how long before the pop that plays its last
    /// sample it arrived. Unlike the depth in whole frames, it sees the phase of the arrivals
    /// against the pops.
    window_min_lead: i64,
    /// The last pop, from which the next pops' times follow (one every 20 ms).
    last_pop: Option<Instant>,
    window_pops: u32,
    /// Whole frames to remove, decided at the end of a too-deep window.
    shrink_frames: u32,
    /// Pops since the shrink became pending without a frame being removed.
    shrink_wait: u32,
    /// The pending shrink may end in a forced drop: the buffer was more than a whole frame deeper
    /// than it was placed (clock drift, a burst). A target that merely relaxed below the depth
    /// the stream was anchored at waits for quiet frames only.
    shrink_may_force: bool,
    /// The depth the stream was placed at: the target when anchored, lowered by each frame
    /// skipped since.
    placed: i64,
    jitter: f64,
    last_arrival: Option<(Instant, u32)>,
    // concealment
    last_frame: [u8; FRAME],
    conceal_run: u32,
    stats: JitterStats,
}

/// Call `f(word, mask)` for each bitmap word covering ring slots `[start, start + len)`.
#[inline]
fn for_each_word(start: i64, len: usize, mask: i64, mut f: impl FnMut(usize, u64)) {
    let ring = mask as usize + 1;
    let mut slot = (start & mask) as usize;
    let mut left = len.min(ring);
    while left > 0 {
        let b = slot % 64;
        let n = (64 - b).min(left);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << b
        };
        f(slot / 64, mask);
        left -= n;
        slot = (slot + n) & (ring - 1);
    }
}

fn samples(d: Duration) -> i64 {
    (d.as_micros() as i64 * 8 / 1000).clamp(0, RING_MAX as i64 - 2 * FRAME as i64)
}

impl JitterBuffer {
    /// A buffer producing codes of `law` (packets must already be in that law).
    pub fn new(law: G711, cfg: JitterConfig) -> Self {
        let cfg_min = samples(cfg.min_delay).max(FRAME as i64);
        let cfg_max = samples(cfg.max_delay).max(cfg_min);
        let target = samples(cfg.initial_delay).clamp(cfg_min, cfg_max);
        // Room for the deepest buffer (the maximum delay, trimmed beyond one frame more) and a
        // frame arriving ahead of it; a packet further ahead than the ring is a timestamp jump.
        let ring = (cfg_max as usize + 2 * FRAME)
            .next_power_of_two()
            .clamp(RING_MIN, RING_MAX);
        JitterBuffer {
            cfg_min,
            cfg_max,
            law,
            audio: vec![law.silence(); ring].into_boxed_slice(),
            present: vec![0; ring / 64].into_boxed_slice(),
            mask: ring as i64 - 1,
            started: false,
            waiting: false,
            playout: 0,
            highest_end: 0,
            silence_until: 0,
            ssrc: 0,
            last_ts: 0,
            last_ext: 0,
            offset: 0,
            anchored_at: None,
            target,
            settle: target,
            boost: 0,
            relax_in: SETTLE_POPS,
            pops_since_underrun: 0,
            window_min_depth: i64::MAX,
            window_min_lead: i64::MAX,
            last_pop: None,
            window_pops: 0,
            shrink_frames: 0,
            shrink_wait: 0,
            shrink_may_force: false,
            placed: target,
            jitter: 0.0,
            last_arrival: None,
            last_frame: [law.silence(); FRAME],
            conceal_run: u32::MAX,
            stats: JitterStats::default(),
        }
    }

    /// The law of the codes stored and returned.
    pub fn law(&self) -> G711 {
        self.law
    }

    /// Statistics.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats;
        s.jitter_samples = self.jitter;
        s.depth_samples = (self.highest_end - self.playout).max(0) as u32;
        s.target_samples = self.target as u32;
        s
    }

    /// Current target delay.
    pub fn target_delay(&self) -> Duration {
        Duration::from_micros(self.target as u64 * 125)
    }

    /// Insert the payload of one audio packet (`payload.len()` samples at 8 kHz).
    pub fn push(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> PushOutcome {
        let _ = marker; // talkspurt starts are recognised from the underrun itself
        let len = payload.len().min(self.audio.len() / 2) as i64;
        if len == 0 {
            return PushOutcome::Late;
        }
        let payload = &payload[..len as usize];
        let mut outcome = PushOutcome::Stored;

        if !self.started {
            self.started = true;
            self.waiting = true;
            self.map_stream(ssrc, timestamp);
            self.anchor(timestamp, len, now);
            self.last_arrival = None;
            outcome = PushOutcome::Resynced;
        } else if ssrc != self.ssrc {
            self.stats.resyncs += 1;
            self.map_stream(ssrc, timestamp);
            self.last_arrival = None;
            if self.waiting {
                self.anchor(timestamp, len, now);
            } else {
                self.append(timestamp);
            }
            outcome = PushOutcome::Resynced;
        }

        let ext = self.last_ext + timestamp.wrapping_sub(self.last_ts) as i32 as i64;
        let mut pos = ext + self.offset;
        let ahead_limit = self.playout + self.audio.len() as i64 - len;
        if outcome == PushOutcome::Stored {
            if pos > ahead_limit || pos + len <= self.playout - 16_000 {
                // Timestamp jump (or a DTX gap longer than the ring).
                self.stats.resyncs += 1;
                self.last_ts = timestamp;
                self.last_ext = ext;
                self.last_arrival = None;
                if self.waiting {
                    self.anchor(timestamp, len, now);
                } else {
                    self.append(timestamp);
                }
                pos = ext + self.offset;
                outcome = PushOutcome::Resynced;
            } else if self.waiting && pos + len > self.playout {
                // After an underrun (or at a talkspurt start after DTX): re-anchor at the target
                // depth, which drops a silent gap and rebuilds the cushion. Also when the packet
                // starts behind the playout point (packets off the 20 ms grid: the frame before
                // the underrun played silence where it belongs): stored from the playout point
                // on, its head would be discarded without being counted anywhere.
                self.last_ts = timestamp;
                self.last_ext = ext;
                self.anchor(timestamp, len, now);
                pos = ext + self.offset;
            } else if pos > self.last_ext + self.offset {
                self.last_ts = timestamp;
                self.last_ext = ext;
            }
        }

        self.update_jitter(timestamp, now);

        if pos + len <= self.playout {
            self.stats.late += 1;
            self.raise_target();
            return PushOutcome::Late;
        }
        let skip = (self.playout - pos).max(0);
        let mut all_present = true;
        let present = &mut self.present;
        for_each_word(pos + skip, (len - skip) as usize, self.mask, |w, m| {
            if present[w] & m != m {
                all_present = false;
            }
            present[w] |= m;
        });
        if all_present {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        let start = pos + skip;
        let n = (len - skip) as usize;
        let s0 = (start & self.mask) as usize;
        let first = n.min(self.audio.len() - s0);
        self.audio[s0..s0 + first].copy_from_slice(&payload[skip as usize..skip as usize + first]);
        if first < n {
            self.audio[..n - first].copy_from_slice(&payload[skip as usize + first..]);
        }
        self.highest_end = self.highest_end.max(pos + len);
        if let Some(last_pop) = self.last_pop {
            // The pop that plays this packet's first sample: the next one (20 ms after the last)
            // plays [playout, playout + FRAME). The first sample, not the last: with packets
            // off the 20 ms grid (30 ms) a frame is completed by the next packet's head, and a
            // margin measured on the last sample let the buffer shrink below a packet's
            // length; the frames then played silence for the head still in flight, and the
            // head, behind the playout point when it came, was discarded without being counted.
            let ahead = (pos.max(self.playout) - self.playout).div_euclid(FRAME as i64);
            let needed_at = last_pop + Duration::from_millis(20 * (1 + ahead.max(0) as u64));
            let lead = if needed_at >= now {
                needed_at.duration_since(now).as_micros() as i64
            } else {
                -(now.duration_since(needed_at).as_micros() as i64)
            };
            self.window_min_lead = self.window_min_lead.min(lead);
        }
        self.waiting = false;
        self.stats.stored += 1;

        // Beyond the maximum delay (a burst after a stall): hard-trim the oldest audio down to the
        // target. This is a bound, not adaptation, so it does not wait for silence.
        if self.highest_end - self.playout > self.cfg_max + FRAME as i64 {
            let new_playout = self.highest_end - self.target;
            let dropped = self.drop_until(new_playout);
            self.stats.samples_dropped_forced += dropped;
        }
        outcome
    }

    /// Pop the next 20 ms frame. Always returns a frame.
    pub fn pop(&mut self, now: Instant) -> Frame {
        if !self.started {
            self.stats.frames_silence += 1;
            return Frame {
                data: [self.law.silence(); FRAME],
                kind: FrameKind::Silence,
            };
        }
        self.last_pop = Some(now);
        if let Some(at) = self.anchored_at.take() {
            self.settle_anchor(at, now);
        }
        let depth = self.highest_end - self.playout;
        if depth <= 0 {
            if !self.waiting {
                self.waiting = true;
                if self.conceal_run < 3 {
                    // Ran dry in the middle of audio: a real underrun.
                    self.stats.underruns += 1;
                    self.raise_target();
                }
            }
            return self.conceal_frame();
        }
        self.adapt(depth);
        if self.shrink_frames > 0 {
            self.shrink();
        }

        // Fast path: the whole frame is there.
        let mut all = true;
        let present = &mut self.present;
        for_each_word(self.playout, FRAME, self.mask, |w, m| {
            if present[w] & m != m {
                all = false;
            }
        });
        if all {
            for_each_word(self.playout, FRAME, self.mask, |w, m| present[w] &= !m);
            let mut frame = [0u8; FRAME];
            let s0 = (self.playout & self.mask) as usize;
            let first = FRAME.min(self.audio.len() - s0);
            frame[..first].copy_from_slice(&self.audio[s0..s0 + first]);
            if first < FRAME {
                frame[first..].copy_from_slice(&self.audio[..FRAME - first]);
            }
            self.playout += FRAME as i64;
            return self.finish_audio(frame);
        }

        let mut frame = [self.law.silence(); FRAME];
        // 0 = received, 1 = silence (before the stream / beyond the received span), 2 = lost.
        let mut state = [0u8; FRAME];
        let mut missing = 0usize;
        let mut silent = 0usize;
        let ran_dry = self.highest_end < self.playout + FRAME as i64;
        for (i, out) in frame.iter_mut().enumerate() {
            let p = self.playout + i as i64;
            let slot = (p & self.mask) as usize;
            let (w, b) = (slot / 64, slot % 64);
            if self.present[w] & (1 << b) != 0 {
                *out = self.audio[slot];
                self.present[w] &= !(1 << b);
            } else if p < self.silence_until || p >= self.highest_end {
                silent += 1;
                state[i] = 1;
            } else {
                missing += 1;
                state[i] = 2;
            }
        }
        self.playout += FRAME as i64;
        if ran_dry && !self.waiting {
            // Ran dry inside this frame (the next packet, off the 20 ms grid or late, had not
            // come): an underrun like a frame with nothing at all, so that the next packet is
            // re-anchored rather than stored from the playout point on, which would discard
            // its head without counting it.
            self.waiting = true;
            self.stats.underruns += 1;
            self.raise_target();
        }
        self.stats.samples_lost += missing as u64;
        if missing == 0 && silent == 0 {
            return self.finish_audio(frame);
        }
        if missing + silent == FRAME {
            return if missing > 0 {
                self.conceal_frame()
            } else {
                self.silence_frame()
            };
        }
        // Partly there: fill the holes from the concealment signal.
        if missing > 0 {
            let conceal = self.next_conceal_data();
            for ((out, st), c) in frame.iter_mut().zip(state).zip(conceal) {
                if st == 2 {
                    *out = c;
                }
            }
            self.last_frame = frame;
            self.conceal_run = 0;
            self.stats.frames_concealed += 1;
            return Frame {
                data: frame,
                kind: FrameKind::Concealed,
            };
        }
        self.finish_audio(frame)
    }

    fn finish_audio(&mut self, frame: [u8; FRAME]) -> Frame {
        self.last_frame = frame;
        self.conceal_run = 0;
        self.stats.frames_audio += 1;
        Frame {
            data: frame,
            kind: FrameKind::Audio,
        }
    }

    fn silence_frame(&mut self) -> Frame {
        self.stats.frames_silence += 1;
        self.conceal_run = u32::MAX;
        Frame {
            data: [self.law.silence(); FRAME],
            kind: FrameKind::Silence,
        }
    }

    fn next_conceal_data(&self) -> [u8; FRAME] {
        let run = self.conceal_run;
        let mut data = self.last_frame;
        match run {
            0 => {}
            1 | 2 => {
                let den = 1 << run;
                for c in &mut data {
                    *c = scale_code(self.law, *c, 1, den);
                }
            }
            _ => data = [self.law.silence(); FRAME],
        }
        data
    }

    fn conceal_frame(&mut self) -> Frame {
        if self.conceal_run >= 3 {
            return self.silence_frame();
        }
        let data = self.next_conceal_data();
        self.conceal_run += 1;
        self.stats.frames_concealed += 1;
        Frame {
            data,
            kind: FrameKind::Concealed,
        }
    }

    fn adapt(&mut self, depth: i64) {
        self.pops_since_underrun = self.pops_since_underrun.saturating_add(1);
        // Boost from underruns decays by 10 ms every 2 s without one.
        if self.pops_since_underrun.is_multiple_of(RELAX_POPS) && self.boost > 0 {
            self.boost = (self.boost - 80).max(0);
        }
        // The initial delay relaxes by 10 ms every 2 s towards what the jitter warrants.
        if self.settle > self.cfg_min {
            self.relax_in -= 1;
            if self.relax_in == 0 {
                self.relax_in = SETTLE_POPS;
                self.settle = (self.settle - 80).max(self.cfg_min);
            }
        }
        let jitter_term = FRAME as i64 + (4.0 * self.jitter) as i64;
        self.target = (jitter_term.max(self.settle) + self.boost).clamp(self.cfg_min, self.cfg_max);
        self.window_min_depth = self.window_min_depth.min(depth);
        self.window_pops += 1;
        if self.window_pops >= WINDOW_POPS {
            // The depth the window's packets actually had: their least lead plus the frame
            // played at that pop; four times the jitter is already in the target.
            let lead_depth = if self.window_min_lead == i64::MAX {
                i64::MIN
            } else {
                (self.window_min_lead - LEAD_GUARD_US) * 8 / 1000 + FRAME as i64
            };
            // After an underrun or a late packet (the boost has not decayed yet) the stream has
            // shown stalls its jitter estimate does not capture: only whole frames that stayed
            // buffered count then, as a more cautious measure.
            let depth = if self.boost == 0 {
                lead_depth
            } else {
                lead_depth.min(self.window_min_depth)
            };
            let excess = depth - self.target;
            if excess >= FRAME as i64 {
                // Consistently a frame or more too deep for a second: remove the excess, in
                // whole frames, at the next quiet frames.
                if self.shrink_frames == 0 {
                    self.shrink_wait = 0;
                }
                self.shrink_frames = (excess / FRAME as i64) as u32;
                self.shrink_may_force =
                    self.window_min_depth - self.target.max(self.placed) > FRAME as i64;
            } else {
                self.shrink_frames = 0;
                self.shrink_wait = 0;
            }
            self.window_pops = 0;
            self.window_min_depth = i64::MAX;
            self.window_min_lead = i64::MAX;
        }
    }

    /// Skip quiet frames at the playout point while an excess is pending; after [`LAST_RESORT`]
    /// without any, skip one frame whatever it holds.
    #[cold]
    #[inline(never)]
    fn shrink(&mut self) {
        self.shrink_wait = self.shrink_wait.saturating_add(1);
        while self.shrink_frames > 0 && self.highest_end - self.playout >= 2 * FRAME as i64 {
            let forced = self.shrink_may_force && self.shrink_wait >= LAST_RESORT_POPS;
            if !forced && !self.quiet_frame_at_playout() {
                return;
            }
            let dropped = self.drop_until(self.playout + FRAME as i64);
            if forced {
                self.stats.samples_dropped_forced += dropped;
                tracing::debug!(
                    dropped,
                    "jitter: buffer too deep with no silence, frame dropped"
                );
            }
            self.shrink_frames -= 1;
            self.shrink_wait = 0;
            self.placed = (self.placed - FRAME as i64).max(self.target);
            if self.window_min_lead != i64::MAX {
                self.window_min_lead -= 20_000;
            }
            if self.window_min_depth != i64::MAX {
                self.window_min_depth -= FRAME as i64;
            }
        }
    }

    /// The frame at the playout point was received in full and every sample is quiet.
    fn quiet_frame_at_playout(&self) -> bool {
        let mut all = true;
        for_each_word(self.playout, FRAME, self.mask, |w, m| {
            if self.present[w] & m != m {
                all = false;
            }
        });
        if !all {
            return false;
        }
        (0..FRAME as i64).all(|i| {
            let c = self.audio[((self.playout + i) & self.mask) as usize];
            self.law.decode(c).unsigned_abs() <= QUIET_PEAK as u16
        })
    }

    /// First pop after an anchor: if whole ticks passed since the anchoring packet arrived (the
    /// consumer's tick came just before that packet at an equal instant, or the consumer
    /// started late), that time was already spent waiting, so shorten the silent prefill by
    /// those whole frames; never skip audio that was received.
    #[cold]
    #[inline(never)]
    fn settle_anchor(&mut self, at: Instant, now: Instant) {
        let elapsed =
            (now.saturating_duration_since(at).as_micros() as i64).saturating_mul(8) / 1000;
        let frames = elapsed / FRAME as i64;
        let mut shift = (frames * FRAME as i64).min(self.silence_until - self.playout);
        while shift >= FRAME as i64 {
            let mut free = true;
            for_each_word(self.playout, FRAME, self.mask, |w, m| {
                if self.present[w] & m != 0 {
                    free = false;
                }
            });
            if !free {
                break;
            }
            self.playout += FRAME as i64;
            shift -= FRAME as i64;
        }
    }

    fn raise_target(&mut self) {
        self.pops_since_underrun = 0;
        self.shrink_frames = 0;
        self.boost = (self.boost + FRAME as i64).min(self.cfg_max);
        self.target = (self.target + FRAME as i64).min(self.cfg_max);
    }

    /// Advance the playout point, discarding what was received; returns the samples discarded.
    fn drop_until(&mut self, new_playout: i64) -> u64 {
        let mut dropped = 0;
        while self.playout < new_playout {
            let slot = (self.playout & self.mask) as usize;
            let (w, b) = (slot / 64, slot % 64);
            if self.present[w] & (1 << b) != 0 {
                self.present[w] &= !(1 << b);
                dropped += 1;
            }
            self.playout += 1;
        }
        self.stats.samples_dropped += dropped;
        dropped
    }

    fn map_stream(&mut self, ssrc: u32, timestamp: u32) {
        self.ssrc = ssrc;
        self.last_ts = timestamp;
        self.last_ext = 0;
    }

    /// Map the current stream so that `timestamp` lands at `playout + target - len`.
    fn anchor(&mut self, timestamp: u32, len: i64, now: Instant) {
        self.anchored_at = Some(now);
        self.placed = self.target;
        let ext = self.last_ext + timestamp.wrapping_sub(self.last_ts) as i32 as i64;
        let pos = self.playout + (self.target - len).max(0);
        self.offset = pos - ext;
        self.silence_until = pos;
        self.highest_end = self.highest_end.max(self.playout);
    }

    /// Map the current stream so that `timestamp` continues right after the buffered audio.
    fn append(&mut self, timestamp: u32) {
        let ext = self.last_ext + timestamp.wrapping_sub(self.last_ts) as i32 as i64;
        let pos = self.highest_end.max(self.playout);
        self.offset = pos - ext;
    }

    fn update_jitter(&mut self, timestamp: u32, now: Instant) {
        if let Some((t0, ts0)) = self.last_arrival {
            let arrival = now.saturating_duration_since(t0).as_micros() as f64 * 0.008;
            let d = arrival - timestamp.wrapping_sub(ts0) as i32 as f64;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last_arrival = Some((now, timestamp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring holds the maximum delay and two frames, in a power of two of samples: 2 KiB of
    /// codes (and 256 bytes of bitmap) at the default 200 ms, 4 KiB at the largest maximum.
    #[test]
    fn the_ring_is_sized_to_the_maximum_delay() {
        let ring = |max_ms| {
            let cfg = JitterConfig {
                max_delay: Duration::from_millis(max_ms),
                ..JitterConfig::default()
            };
            let jb = JitterBuffer::new(G711::Ulaw, cfg);
            assert_eq!(jb.present.len() * 64, jb.audio.len());
            jb.audio.len()
        };
        assert_eq!(ring(200), 2048);
        assert_eq!(ring(40), 2048);
        assert_eq!(ring(216), 2048);
        assert_eq!(ring(217), 4096);
        assert_eq!(ring(400), 4096);
        assert_eq!(ring(10_000), 4096);
    }
}
