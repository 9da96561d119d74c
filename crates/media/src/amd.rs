//! Answering-machine detection (AMD) on the callee's audio, sans-IO.
//!
//! [`Amd`] is fed the callee's decoded 8 kHz PCM one 20 ms frame at a time with the frame's time
//! (`now`, virtual: nothing here reads a clock) and answers, once, [`Verdict::Human`],
//! [`Verdict::Machine`] or [`Verdict::Unknown`] with the time the verdict was reached. After
//! `Machine` it keeps listening for the voicemail **beep** and reports [`AmdEvent::Beep`] when the
//! tone ends (a message may start then), or [`AmdEvent::GreetingEnd`] when the greeting stopped
//! and no beep came.
//!
//! The decision follows Asterisk's `AMD()` (same tunables, same defaults, see [`AmdConfig`]) on top
//! of a better voice activity detector and a beep detector:
//! - **VAD**: a 250 Hz high-pass (mains hum and rumble out), frame energy against an adaptive noise
//!   floor (the quietest frame of the last two seconds, at most -35 dBFS) with hysteresis (on at floor + 10 dB, off
//!   at floor + 6 dB) and an absolute floor (`silence_threshold_dbfs`);
//! - **words**: voice runs of at least `min_word_length`, separated by at least
//!   `between_words_silence`; **utterance**: words separated by pauses shorter than
//!   `after_greeting_silence`;
//! - **human**: an utterance shorter than `greeting` followed by `after_greeting_silence` of quiet
//!   ("Hello?" … waiting for an answer);
//! - **machine**: an utterance reaching `greeting` (a greeting is long), `max_words` words, a
//!   single word of `max_word_length`, or a beep before any other decision;
//! - **unknown**: no speech within `initial_silence` (Asterisk says MACHINE here; a silent pickup is
//!   as often a person waiting for the caller to speak, so we do not guess), or nothing decided
//!   within `total_analysis_time`;
//! - **beep**: a sustained pure tone of `beep_min_hz`–`beep_max_hz` for at least `beep_min`. Per
//!   frame, the frequency is estimated from interpolated zero crossings and one Goertzel filter at
//!   that frequency measures how much of the frame's energy it holds (tonality, 1.0 for a pure
//!   tone, ~0.01 for white noise, well under 0.8 for voiced speech); consecutive tonal frames at a
//!   steady frequency make a beep. Tonal frames do not count as speech, so a beep right after a
//!   short greeting does not make it look longer.
//!
//! Cost: a few hundred multiply-adds per frame, no allocation after [`Amd::new`] (checked by
//! `crates/media/tests/amd_alloc.rs`). Accuracy and speed on the labelled set `tests/data/amd/`:
//! `crates/media/tests/amd_set.rs`.
//!
//! Not done here: the analysis starts with the first frame given (the call feeds it from the
//! answer: early media carries ringback tones, which are beeps by this definition); no speech
//! recognition; no multi-tone (SIT) classification.

use std::time::{Duration, Instant};

/// Samples in a 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Sample rate the detector works at.
const RATE: f32 = 8000.0;
/// Frames in the noise-floor window (2 s).
const FLOOR_FRAMES: usize = 100;
/// Voice turns on this far above the noise floor …
const ON_MARGIN_DB: f32 = 10.0;
/// … and stays on down to this far above it.
const OFF_MARGIN_DB: f32 = 6.0;
/// Highest plausible noise floor, dBFS: a "floor" louder than this is a long stretch of speech
/// without a pause, not line noise.
const MAX_FLOOR_DB: f32 = -35.0;
/// Frames quieter than this are digital silence, not line noise (µ-law's quietest non-zero
/// step is about -78 dBFS).
const DIGITAL_SILENCE_DB: f32 = -85.0;
/// Lowest energy considered, dBFS (digital silence would be -inf).
const MIN_DB: f32 = -100.0;

/// The tunables, with Asterisk `AMD()`'s names and defaults where it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct AmdConfig {
    /// No speech for this long from the start: [`Verdict::Unknown`] ([`Reason::InitialSilence`]).
    pub initial_silence: Duration,
    /// An utterance this long is a greeting: [`Verdict::Machine`] ([`Reason::LongGreeting`]).
    pub greeting: Duration,
    /// Quiet this long after a short utterance: [`Verdict::Human`]; also the pause that ends an
    /// utterance.
    pub after_greeting_silence: Duration,
    /// Nothing decided after this long: [`Verdict::Unknown`] ([`Reason::Timeout`]).
    pub total_analysis_time: Duration,
    /// Shortest voice run counted as a word.
    pub min_word_length: Duration,
    /// Shortest pause that separates two words.
    pub between_words_silence: Duration,
    /// This many words: [`Verdict::Machine`] ([`Reason::MaxWords`]).
    pub max_words: u32,
    /// A single word this long: [`Verdict::Machine`] ([`Reason::MaxWordLength`]).
    pub max_word_length: Duration,
    /// Energy below this is never speech, dBFS (Asterisk's `silence_threshold` 256 ≈ -42 dBFS).
    pub silence_threshold_dbfs: f32,
    /// Shortest beep.
    pub beep_min: Duration,
    /// Lowest beep frequency, Hz.
    pub beep_min_hz: f32,
    /// Highest beep frequency, Hz.
    pub beep_max_hz: f32,
    /// Share of a frame's energy the tone must hold (0–1).
    pub beep_tonality: f32,
    /// After `Machine`, quiet (no speech, no tone) this long ends the greeting when no beep came.
    pub greeting_end_silence: Duration,
    /// After `Machine`, stop looking for a beep this long after the verdict
    /// ([`AmdEvent::GreetingEnd`] then).
    pub max_beep_wait: Duration,
}

impl Default for AmdConfig {
    fn default() -> Self {
        AmdConfig {
            initial_silence: Duration::from_millis(2500),
            greeting: Duration::from_millis(1500),
            after_greeting_silence: Duration::from_millis(800),
            total_analysis_time: Duration::from_millis(5000),
            min_word_length: Duration::from_millis(100),
            between_words_silence: Duration::from_millis(50),
            max_words: 5,
            max_word_length: Duration::from_millis(5000),
            silence_threshold_dbfs: -45.0,
            beep_min: Duration::from_millis(150),
            beep_min_hz: 400.0,
            beep_max_hz: 2000.0,
            beep_tonality: 0.8,
            greeting_end_silence: Duration::from_millis(1500),
            max_beep_wait: Duration::from_secs(20),
        }
    }
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A person.
    Human,
    /// An answering machine, voicemail or carrier announcement.
    Machine,
    /// Not decided (silence, or nothing conclusive in the analysis time).
    Unknown,
}

impl Verdict {
    /// `human` / `machine` / `unknown` (record, webhook, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Human => "human",
            Verdict::Machine => "machine",
            Verdict::Unknown => "unknown",
        }
    }
}

/// Why a verdict was reached (Asterisk's `AMDCAUSE`, plus the beep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A short utterance, then quiet (`HUMAN`).
    AfterGreetingSilence,
    /// An utterance reached `greeting` (`LONGGREETING`).
    LongGreeting,
    /// `max_words` words (`MAXWORDS`).
    MaxWords,
    /// One word reached `max_word_length` (`MAXWORDLENGTH`).
    MaxWordLength,
    /// A voicemail beep.
    Beep,
    /// No speech within `initial_silence` (`INITIALSILENCE`).
    InitialSilence,
    /// `total_analysis_time` ran out (`TOOLONG`).
    Timeout,
}

impl Reason {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AfterGreetingSilence => "after_greeting_silence",
            Reason::LongGreeting => "long_greeting",
            Reason::MaxWords => "max_words",
            Reason::MaxWordLength => "max_word_length",
            Reason::Beep => "beep",
            Reason::InitialSilence => "initial_silence",
            Reason::Timeout => "timeout",
        }
    }
}

/// What the detector reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AmdEvent {
    /// The verdict, once.
    Verdict {
        /// Who answered.
        verdict: Verdict,
        /// Why.
        reason: Reason,
        /// When it was reached (the end of the deciding frame).
        at: Instant,
    },
    /// After `Machine`: the voicemail beep ended; a message may start at `end`.
    Beep {
        /// When the tone started.
        at: Instant,
        /// When it ended.
        end: Instant,
        /// Its frequency, Hz.
        hz: f32,
    },
    /// After `Machine`: the greeting ended without a beep (quiet for `greeting_end_silence`, or
    /// `max_beep_wait` ran out); a message may start now.
    GreetingEnd {
        /// When this was decided.
        at: Instant,
    },
}

/// Where the detector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Deciding.
    Analysing,
    /// `Machine` said, looking for the beep.
    BeepHunt,
    /// Nothing more to say.
    Done,
}

/// A 2nd-order IIR section (RBJ cookbook), direct form I.
#[derive(Debug, Clone, Copy)]
struct Biquad {
    b0: f32,
    b1: f32,
    b2: f32,
    a1: f32,
    a2: f32,
    x1: f32,
    x2: f32,
    y1: f32,
    y2: f32,
}

impl Biquad {
    /// Butterworth high-pass at `fc`.
    fn highpass(fc: f32) -> Biquad {
        let w0 = 2.0 * std::f32::consts::PI * fc / RATE;
        let alpha = w0.sin() / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        Biquad {
            b0: (1.0 + cos) / 2.0 / a0,
            b1: -(1.0 + cos) / a0,
            b2: (1.0 + cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
            x1: 0.0,
            x2: 0.0,
            y1: 0.0,
            y2: 0.0,
        }
    }

    fn run(&mut self, x: f32) -> f32 {
        let y = self.b0 * x + self.b1 * self.x1 + self.b2 * self.x2
            - self.a1 * self.y1
            - self.a2 * self.y2;
        self.x2 = self.x1;
        self.x1 = x;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// A small fixed queue of events (at most a verdict and a beep per frame).
#[derive(Debug, Clone, Copy)]
struct Outbox {
    slots: [Option<AmdEvent>; 4],
    head: usize,
    len: usize,
}

impl Outbox {
    fn push(&mut self, e: AmdEvent) {
        if self.len == self.slots.len() {
            // Never happens (at most two events per frame, drained by the caller); keep the newest.
            self.head = (self.head + 1) % self.slots.len();
            self.len -= 1;
        }
        let i = (self.head + self.len) % self.slots.len();
        self.slots[i] = Some(e);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<AmdEvent> {
        if self.len == 0 {
            return None;
        }
        let e = self.slots[self.head].take();
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        e
    }
}

/// A run of tonal frames at a steady frequency.
#[derive(Debug, Clone, Copy)]
struct ToneRun {
    start: Instant,
    frames: u32,
    first_hz: f32,
    last_hz: f32,
    /// Long enough to be a beep.
    confirmed: bool,
}

/// One detector per call (see the module doc).
#[derive(Debug, Clone)]
pub struct Amd {
    cfg: AmdConfig,
    // Frame counts derived from the config.
    word_frames: u32,
    gap_frames: u32,
    after_frames: u32,
    greeting_end_frames: u32,
    beep_frames: u32,
    max_word_frames: u32,
    // Signal.
    hp: Biquad,
    floor_ring: [f32; FLOOR_FRAMES],
    floor_len: usize,
    floor_pos: usize,
    // Time.
    start: Option<Instant>,
    phase: Phase,
    verdict: Option<(Verdict, Reason, Instant)>,
    machine_at: Option<Instant>,
    // Voice.
    voiced: bool,
    heard_speech: bool,
    voice_run: u32,
    quiet_run: u32,
    /// Quiet frames that were not tonal either (the greeting-end clock after `Machine`).
    still_run: u32,
    word_counted: bool,
    words: u32,
    utt_start: Option<Instant>,
    utt_last_voice_end: Option<Instant>,
    // Tone.
    tone: Option<ToneRun>,
    beep: Option<(Instant, Instant, f32)>,
    out: Outbox,
}

impl Amd {
    /// A detector; the analysis clock starts at the first frame.
    pub fn new(cfg: AmdConfig) -> Amd {
        let frames = |d: Duration| (d.as_millis() as u32).div_ceil(20).max(1);
        Amd {
            word_frames: frames(cfg.min_word_length),
            gap_frames: frames(cfg.between_words_silence),
            after_frames: frames(cfg.after_greeting_silence),
            greeting_end_frames: frames(cfg.greeting_end_silence),
            beep_frames: ((cfg.beep_min.as_millis() as u32 + 10) / 20).max(2),
            max_word_frames: frames(cfg.max_word_length),
            cfg,
            hp: Biquad::highpass(250.0),
            floor_ring: [0.0; FLOOR_FRAMES],
            floor_len: 0,
            floor_pos: 0,
            start: None,
            phase: Phase::Analysing,
            verdict: None,
            machine_at: None,
            voiced: false,
            heard_speech: false,
            voice_run: 0,
            quiet_run: 0,
            still_run: 0,
            word_counted: false,
            words: 0,
            utt_start: None,
            utt_last_voice_end: None,
            tone: None,
            beep: None,
            out: Outbox {
                slots: [None; 4],
                head: 0,
                len: 0,
            },
        }
    }

    // ----- getters -----

    /// The verdict, its reason and when it was reached.
    pub fn verdict(&self) -> Option<(Verdict, Reason, Instant)> {
        self.verdict
    }

    /// The beep: start, end, frequency.
    pub fn beep(&self) -> Option<(Instant, Instant, f32)> {
        self.beep
    }

    /// Nothing more will be reported (more frames are ignored).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The configuration.
    pub fn config(&self) -> &AmdConfig {
        &self.cfg
    }

    // ----- input -----

    /// One frame of the callee's audio (normally [`FRAME_SAMPLES`] samples, 20 ms) starting at
    /// `now`. Frames are contiguous: the caller feeds one per 20 ms tick, silence or concealment
    /// included.
    pub fn push_frame(&mut self, now: Instant, pcm: &[i16]) {
        if self.phase == Phase::Done || pcm.is_empty() {
            return;
        }
        let start = *self.start.get_or_insert(now);
        let end = now + FRAME;
        let elapsed = end.saturating_duration_since(start);

        // --- signal: high-pass, energy, zero crossings ---
        let mut energy = 0.0f32;
        let mut buf = [0.0f32; FRAME_SAMPLES];
        let n = pcm.len().min(FRAME_SAMPLES);
        for (i, &s) in pcm.iter().take(n).enumerate() {
            let y = self.hp.run(s as f32 / 32768.0);
            buf[i] = y;
            energy += y * y;
        }
        let samples = &buf[..n];
        let mean_sq = energy / n as f32;
        let db = if mean_sq > 1e-10 {
            10.0 * mean_sq.log10()
        } else {
            MIN_DB
        };
        let floor = self.floor_db(db);
        let threshold = if self.voiced {
            floor + OFF_MARGIN_DB
        } else {
            floor + ON_MARGIN_DB
        }
        .max(self.cfg.silence_threshold_dbfs);
        let loud = db > threshold;
        let tone_hz = if loud {
            self.tonal_hz(samples, energy)
        } else {
            None
        };
        self.track_tone(now, tone_hz);
        let voice = loud && tone_hz.is_none();

        // --- voice, words, utterances ---
        if voice {
            if self.quiet_run >= self.gap_frames {
                // A new word starts (after a real pause).
                self.voice_run = 0;
                self.word_counted = false;
            }
            if self.utt_start.is_none() || self.quiet_run >= self.after_frames {
                self.utt_start = Some(now);
            }
            self.voiced = true;
            self.heard_speech = true;
            self.voice_run += 1;
            self.quiet_run = 0;
            self.still_run = 0;
            self.utt_last_voice_end = Some(end);
            if !self.word_counted && self.voice_run >= self.word_frames {
                self.word_counted = true;
                self.words += 1;
            }
        } else {
            self.voiced = false;
            self.quiet_run = self.quiet_run.saturating_add(1);
            if tone_hz.is_none() {
                self.still_run = self.still_run.saturating_add(1);
            } else {
                self.still_run = 0;
            }
        }

        // --- decisions ---
        match self.phase {
            Phase::Analysing => self.decide(end, elapsed),
            Phase::BeepHunt => {
                let waited = self
                    .machine_at
                    .map(|m| end.saturating_duration_since(m))
                    .unwrap_or_default();
                let tone_on = self.tone.is_some_and(|t| t.confirmed);
                if !tone_on
                    && ((self.heard_speech && self.still_run >= self.greeting_end_frames)
                        || waited >= self.cfg.max_beep_wait)
                {
                    self.out.push(AmdEvent::GreetingEnd { at: end });
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    // ----- output -----

    /// The next event, if any. Drain after every [`Amd::push_frame`].
    pub fn poll_event(&mut self) -> Option<AmdEvent> {
        self.out.pop()
    }

    // ----- internals -----

    fn decide(&mut self, end: Instant, elapsed: Duration) {
        let utt_len = match (self.utt_start, self.utt_last_voice_end) {
            (Some(s), Some(e)) => e.saturating_duration_since(s),
            _ => Duration::ZERO,
        };
        let in_utterance = self.quiet_run < self.after_frames;
        let reason = if self.tone.is_some_and(|t| t.confirmed) {
            Some((Verdict::Machine, Reason::Beep))
        } else if !self.heard_speech && elapsed >= self.cfg.initial_silence {
            Some((Verdict::Unknown, Reason::InitialSilence))
        } else if self.heard_speech && in_utterance && utt_len >= self.cfg.greeting {
            Some((Verdict::Machine, Reason::LongGreeting))
        } else if self.words >= self.cfg.max_words {
            Some((Verdict::Machine, Reason::MaxWords))
        } else if self.voice_run >= self.max_word_frames {
            Some((Verdict::Machine, Reason::MaxWordLength))
        } else if self.heard_speech && self.quiet_run >= self.after_frames {
            Some((Verdict::Human, Reason::AfterGreetingSilence))
        } else if elapsed >= self.cfg.total_analysis_time {
            Some((Verdict::Unknown, Reason::Timeout))
        } else {
            None
        };
        let Some((verdict, reason)) = reason else {
            return;
        };
        self.verdict = Some((verdict, reason, end));
        self.out.push(AmdEvent::Verdict {
            verdict,
            reason,
            at: end,
        });
        if verdict == Verdict::Machine {
            self.machine_at = Some(end);
            self.phase = Phase::BeepHunt;
        } else {
            self.phase = Phase::Done;
        }
    }

    /// Tone tracking: a run of tonal frames at a steady frequency becomes a beep after
    /// `beep_frames`; when it ends (after `Machine`), [`AmdEvent::Beep`].
    fn track_tone(&mut self, now: Instant, hz: Option<f32>) {
        let steady = |run: &ToneRun, hz: f32| {
            (hz - run.last_hz).abs() <= 20.0 + run.last_hz * 0.01
                && (hz - run.first_hz).abs() <= 40.0 + run.first_hz * 0.02
        };
        match (self.tone, hz) {
            (Some(mut run), Some(hz)) if steady(&run, hz) => {
                run.frames += 1;
                run.last_hz = hz;
                if run.frames >= self.beep_frames {
                    run.confirmed = true;
                }
                self.tone = Some(run);
            }
            (prev, hz) => {
                if let Some(run) = prev
                    && run.confirmed
                {
                    self.beep_ended(run, now);
                }
                self.tone = hz.map(|hz| ToneRun {
                    start: now,
                    frames: 1,
                    first_hz: hz,
                    last_hz: hz,
                    confirmed: false,
                });
            }
        }
    }

    fn beep_ended(&mut self, run: ToneRun, end: Instant) {
        // A beep before the verdict makes it `Machine` (decided in `decide` while the tone is on);
        // the event is reported in the hunt, or right after a beep-made verdict.
        if self.beep.is_some() || self.phase == Phase::Done {
            return;
        }
        let hz = (run.first_hz + run.last_hz) / 2.0;
        self.beep = Some((run.start, end, hz));
        if self.phase == Phase::BeepHunt {
            self.out.push(AmdEvent::Beep {
                at: run.start,
                end,
                hz,
            });
            self.phase = Phase::Done;
        }
    }

    /// The noise floor: the quietest of the last two seconds of frames (this one included) that
    /// carried a signal. Digital silence (no packets yet, a muted line) does not count: line
    /// noise starting after it would otherwise sit 60 dB above the "floor" and pass for voice.
    fn floor_db(&mut self, db: f32) -> f32 {
        if db > DIGITAL_SILENCE_DB {
            self.floor_ring[self.floor_pos] = db;
            self.floor_pos = (self.floor_pos + 1) % FLOOR_FRAMES;
            self.floor_len = (self.floor_len + 1).min(FLOOR_FRAMES);
        }
        if self.floor_len == 0 {
            return MIN_DB;
        }
        self.floor_ring[..self.floor_len]
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min)
            .min(MAX_FLOOR_DB)
    }

    /// The frame's tone frequency if it is a pure tone in the beep band.
    fn tonal_hz(&self, x: &[f32], energy: f32) -> Option<f32> {
        // Rising zero crossings, linearly interpolated.
        let mut first = None;
        let mut last = 0.0f32;
        let mut count = 0u32;
        for i in 1..x.len() {
            let (a, b) = (x[i - 1], x[i]);
            if a < 0.0 && b >= 0.0 {
                let pos = (i - 1) as f32 + a / (a - b);
                if first.is_none() {
                    first = Some(pos);
                }
                last = pos;
                count += 1;
            }
        }
        let first = first?;
        if count < 3 || last <= first {
            return None;
        }
        let hz = (count - 1) as f32 * RATE / (last - first);
        if hz < self.cfg.beep_min_hz - 25.0 || hz > self.cfg.beep_max_hz + 25.0 {
            return None;
        }
        // Goertzel at that frequency: |X|² · 2 / (N · E) is 1 for a pure tone.
        let w = 2.0 * std::f32::consts::PI * hz / RATE;
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in x {
            let s = v + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let tonality = 2.0 * power / (x.len() as f32 * energy.max(1e-12));
        (tonality >= self.cfg.beep_tonality).then_some(hz)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin for virtual time
mod tests {
    use super::*;

    fn tone(hz: f32, amp: f32, phase0: usize) -> [i16; FRAME_SAMPLES] {
        let mut f = [0i16; FRAME_SAMPLES];
        for (i, s) in f.iter_mut().enumerate() {
            let t = (phase0 + i) as f32 / RATE;
            *s = (amp * 32767.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16;
        }
        f
    }

    fn noise(seed: &mut u32, amp: f32) -> [i16; FRAME_SAMPLES] {
        let mut f = [0i16; FRAME_SAMPLES];
        for s in f.iter_mut() {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *s = (((*seed >> 16) as f32 / 65536.0 - 0.5) * 2.0 * amp * 32767.0) as i16;
        }
        f
    }

    fn events(amd: &mut Amd) -> Vec<AmdEvent> {
        std::iter::from_fn(|| amd.poll_event()).collect()
    }

    #[test]
    fn tonality_separates_tones_from_noise() {
        let amd = Amd::new(AmdConfig::default());
        for hz in [400.0, 437.0, 1000.0, 1400.0, 1990.0] {
            let f = tone(hz, 0.3, 0);
            let x: Vec<f32> = f.iter().map(|&s| s as f32 / 32768.0).collect();
            let e: f32 = x.iter().map(|v| v * v).sum();
            let got = amd.tonal_hz(&x, e).expect("tone");
            assert!((got - hz).abs() < 5.0, "{hz}: {got}");
        }
        let mut seed = 7;
        let f = noise(&mut seed, 0.3);
        let x: Vec<f32> = f.iter().map(|&s| s as f32 / 32768.0).collect();
        let e: f32 = x.iter().map(|v| v * v).sum();
        assert_eq!(amd.tonal_hz(&x, e), None);
        // Below the band.
        let f = tone(300.0, 0.3, 0);
        let x: Vec<f32> = f.iter().map(|&s| s as f32 / 32768.0).collect();
        let e: f32 = x.iter().map(|v| v * v).sum();
        assert_eq!(amd.tonal_hz(&x, e), None);
    }

    #[test]
    fn silence_is_unknown_at_initial_silence() {
        let t0 = Instant::now();
        let mut amd = Amd::new(AmdConfig::default());
        let mut ev = Vec::new();
        for i in 0..200u32 {
            amd.push_frame(t0 + FRAME * i, &[0; FRAME_SAMPLES]);
            ev.extend(events(&mut amd));
        }
        assert_eq!(
            ev,
            vec![AmdEvent::Verdict {
                verdict: Verdict::Unknown,
                reason: Reason::InitialSilence,
                at: t0 + Duration::from_millis(2500)
            }]
        );
        assert!(amd.is_done());
    }

    #[test]
    fn short_burst_then_quiet_is_human() {
        let t0 = Instant::now();
        let mut amd = Amd::new(AmdConfig::default());
        let mut seed = 1;
        let mut ev = Vec::new();
        for i in 0..150u32 {
            // 0.4 s quiet, 0.5 s "voice" (broadband noise), then quiet.
            let f = if (20..45).contains(&i) {
                noise(&mut seed, 0.3)
            } else {
                noise(&mut seed, 0.001)
            };
            amd.push_frame(t0 + FRAME * i, &f);
            ev.extend(events(&mut amd));
        }
        // Voice ends at 0.9 s; 800 ms of quiet later: 1.7 s.
        assert_eq!(
            ev,
            vec![AmdEvent::Verdict {
                verdict: Verdict::Human,
                reason: Reason::AfterGreetingSilence,
                at: t0 + Duration::from_millis(1700)
            }]
        );
    }

    #[test]
    fn long_voice_then_beep_is_machine_with_beep() {
        let t0 = Instant::now();
        let mut amd = Amd::new(AmdConfig::default());
        let mut seed = 1;
        let mut ev = Vec::new();
        for i in 0..300u32 {
            let f = match i {
                20..150 => noise(&mut seed, 0.3), // 2.6 s greeting
                170..195 => tone(1000.0, 0.3, i as usize * FRAME_SAMPLES), // 0.5 s beep at 3.4 s
                _ => noise(&mut seed, 0.001),
            };
            amd.push_frame(t0 + FRAME * i, &f);
            ev.extend(events(&mut amd));
        }
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(
            ev[0],
            AmdEvent::Verdict {
                verdict: Verdict::Machine,
                reason: Reason::LongGreeting,
                at: t0 + Duration::from_millis(400 + 1500)
            }
        );
        match ev[1] {
            AmdEvent::Beep { at, end, hz } => {
                assert_eq!(at, t0 + Duration::from_millis(3400));
                assert_eq!(end, t0 + Duration::from_millis(3900));
                assert!((hz - 1000.0).abs() < 5.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_beep_ends_with_greeting_end() {
        let t0 = Instant::now();
        let mut amd = Amd::new(AmdConfig::default());
        let mut seed = 1;
        let mut ev = Vec::new();
        for i in 0..300u32 {
            let f = if (10..150).contains(&i) {
                noise(&mut seed, 0.3)
            } else {
                noise(&mut seed, 0.001)
            };
            amd.push_frame(t0 + FRAME * i, &f);
            ev.extend(events(&mut amd));
        }
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(
            ev[1],
            AmdEvent::GreetingEnd {
                at: t0 + Duration::from_millis(3000 + 1500)
            }
        );
    }

    #[test]
    fn deterministic() {
        let run = || {
            let t0 = Instant::now();
            let mut amd = Amd::new(AmdConfig::default());
            let mut seed = 3;
            let mut out = Vec::new();
            for i in 0..300u32 {
                let f = noise(&mut seed, if i % 37 < 20 { 0.2 } else { 0.002 });
                amd.push_frame(t0 + FRAME * i, &f);
                out.extend(
                    events(&mut amd)
                        .into_iter()
                        .map(|e| format!("{e:?}").replace(&format!("{t0:?}"), "")),
                );
            }
            (amd.verdict().map(|v| (v.0, v.1)), out.len())
        };
        assert_eq!(run(), run());
    }
}
