//! What one call's phone side and agent side saw, reduced to the numbers the load report needs:
//! output pacing (|inter-packet gap − 20 ms| of the RTP the phone received, RFC 3550 §6.4.1's
//! transit idea without the smoothing; from the kernel's receive stamps, i.e. the gateway's send
//! times, and separately from the phone task's own arrival times), loss (gaps in the RTP sequence
//! numbers, RFC 3550 §A.3), late packets (arrival behind the stream's own media clock), first
//! agent audio, the sample-exact comparison of what the agent heard with what the phone played,
//! and the gateway-added latency both ways, found by content (µ-law passthrough keeps the bytes).

use std::time::{Duration, Instant};

use trunkline_emulators::agent::AudioSent;
use trunkline_emulators::trunk::TrunkCall;
use trunkline_media::g711::G711;
use trunkline_media::jitter::QUIET_PEAK;

/// A packet later than this behind the media clock counts as late.
pub const LATE_AFTER: Duration = Duration::from_millis(20);

/// Samples louder than this mark agent speech (silence and comfort noise stay below).
pub const LOUD: i16 = 500;

/// The phone side's view of one call's downlink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Downlink {
    /// Audio packets received.
    pub received: u64,
    /// Packets missing from the sequence-number range received.
    pub lost: u64,
    /// Packets arriving more than [`LATE_AFTER`] behind the media clock.
    pub late: u64,
    /// |gap − 20 ms| in µs for each pair of consecutive packets (consecutive sequence numbers),
    /// from the kernel's receive stamps (the gateway's send times on loopback; the phone task's
    /// arrival where a packet has no stamp).
    pub pacing_us: Vec<u64>,
    /// The same from the phone task's arrival times: includes the load generator's own
    /// scheduling delay.
    pub pacing_user_us: Vec<u64>,
    /// Packets that carried a kernel receive stamp.
    pub stamped: u64,
    /// When the first packet carrying agent speech arrived.
    pub first_loud: Option<Instant>,
}

/// Reduce the RTP the phone received on one call.
pub fn downlink(call: &TrunkCall) -> Downlink {
    let law = call.law.unwrap_or(G711::Ulaw);
    let pt = law.payload_type();
    let mut d = Downlink::default();
    let mut prev: Option<(Instant, Instant, u16)> = None;
    let mut ext_first: Option<i64> = None;
    let mut ext_last = 0i64;
    let mut cycles = 0i64;
    let mut last_seq: Option<u16> = None;
    let mut clock0: Option<(Instant, u32)> = None;
    let mut lateness: Vec<i128> = Vec::new();
    // Telephone-events share the audio's sequence space (RFC 4733 §2.1): they count for loss.
    let dtmf_pt = call.dtmf_pt;
    let mut in_seq = 0u64;
    for p in call
        .rtp_in
        .iter()
        .filter(|p| p.pt == pt || Some(p.pt) == dtmf_pt)
    {
        if let Some(ls) = last_seq
            && p.seq < 0x1000
            && ls > 0xF000
        {
            cycles += 1 << 16;
        }
        last_seq = Some(p.seq);
        let ext = cycles + i64::from(p.seq);
        ext_first = Some(ext_first.map_or(ext, |f: i64| f.min(ext)));
        ext_last = ext_last.max(ext);
        in_seq += 1;
        if p.pt != pt {
            continue;
        }
        d.received += 1;
        let kt = p.kernel_at.unwrap_or(p.at);
        d.stamped += u64::from(p.kernel_at.is_some());
        if let Some((at, k, seq)) = prev
            && p.seq == seq.wrapping_add(1)
        {
            let gap = p.at.saturating_duration_since(at).as_micros() as i64;
            d.pacing_user_us.push((gap - 20_000).unsigned_abs());
            let gap = kt.saturating_duration_since(k).as_micros() as i64;
            d.pacing_us.push((gap - 20_000).unsigned_abs());
        }
        prev = Some((p.at, kt, p.seq));
        let (t0, ts0) = *clock0.get_or_insert((p.at, p.ts));
        let media_us = i128::from(p.ts.wrapping_sub(ts0)) * 1_000_000 / 8000;
        let real_us = p.at.saturating_duration_since(t0).as_micros() as i128;
        lateness.push(real_us - media_us);
        if d.first_loud.is_none() && p.payload.iter().any(|&c| law.decode(c).abs() > LOUD) {
            d.first_loud = Some(p.at);
        }
    }
    if let Some(first) = ext_first {
        let expected = (ext_last - first + 1).max(0) as u64;
        d.lost = expected.saturating_sub(in_seq);
    }
    // Lateness relative to the earliest packet: a late first packet must not hide the others.
    if let Some(min) = lateness.iter().copied().min() {
        let limit = LATE_AFTER.as_micros() as i128;
        d.late = lateness.iter().filter(|&&l| l - min > limit).count() as u64;
    }
    d
}

/// Result of comparing what the agent heard with what the phone played.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Integrity {
    /// Samples compared.
    pub compared: usize,
    /// Samples that differ.
    pub mismatched: usize,
    /// The phone's audio was found at all in what the agent heard.
    pub aligned: bool,
    /// Where in `heard` the alignment point is.
    pub aligned_at: usize,
    /// The sample of `played` (one pass) heard at `aligned_at`.
    pub played_at: usize,
    /// Offset (samples from the alignment point) of the first difference.
    pub first_mismatch: Option<usize>,
    /// At the first difference: samples the agent heard that the phone never sent (positive:
    /// inserted, e.g. concealment of a late packet), phone audio missing (negative) or replaced
    /// in place (zero), when the stream realigns within 400 ms ([`MAX_SHIFT`]).
    pub shift: Option<i64>,
    /// When what the agent heard is the phone's audio with some stretches deleted and nothing
    /// else changed, every deleted stretch being quiet (peak ≤ [`QUIET_PEAK`], what the
    /// gateway's jitter buffer may skip to shrink its depth): the samples deleted in all. `None`
    /// if anything else differs, or a deleted stretch held louder audio (speech lost).
    pub deleted_only: Option<usize>,
    /// When `deleted_only` is `None` with a difference: the first one deletions of quiet audio
    /// do not explain.
    pub unexplained: Option<Unexplained>,
    /// Samples taken as inserted (concealment and re-anchoring after a jitter-buffer underrun)
    /// to explain the call with [`integrity_allowing`]; 0 from [`integrity`].
    pub inserted: usize,
}

/// A difference that deletions of quiet audio do not explain (`at`: samples of what the agent
/// heard, from the alignment point, 8 kHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexplained {
    /// Less than 40 ms before the end of what the agent heard: too close to tell.
    NearEnd { at: usize },
    /// Phone audio missing there, but louder than quiet (peak of the missing stretch).
    LoudDeleted {
        at: usize,
        samples: usize,
        peak: i16,
    },
    /// Not a deletion: samples inserted (+) or replaced (0), or no realignment within 400 ms.
    NotDeleted { at: usize, shift: Option<i64> },
    /// More than 64 differences, or more deletion points tried than the search allows.
    TooMany,
}

impl std::fmt::Display for Unexplained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |at: &usize| *at as f64 / 8000.0;
        match self {
            Self::NearEnd { at } => {
                write!(f, "a difference at {:.2}s, < 40 ms before the end", s(at))
            }
            Self::LoudDeleted { at, samples, peak } => {
                write!(
                    f,
                    "{samples} samples missing at {:.2}s, peak {peak} (not quiet)",
                    s(at)
                )
            }
            Self::NotDeleted { at, shift: Some(d) } => {
                write!(f, "{d:+} samples at {:.2}s (not a deletion)", s(at))
            }
            Self::NotDeleted { at, shift: None } => {
                write!(f, "no realignment within 400 ms after {:.2}s", s(at))
            }
            Self::TooMany => write!(f, "more than 64 differences (or too many ways to try)"),
        }
    }
}

impl Integrity {
    /// Sample-exact over at least one second.
    pub fn exact(&self) -> bool {
        self.aligned && self.mismatched == 0 && self.compared >= 8000
    }
}

/// Compare `heard` (the agent's decoded caller audio, 8 kHz) with one pass of the phone's audio
/// `played`, looped: align on the first loud 20 ms frame of the capture, then compare every
/// following sample.
pub fn integrity(heard: &[i16], played: &[i16]) -> Integrity {
    integrity_allowing(heard, played, 0)
}

/// [`integrity`], where deletions of quiet audio and up to `insertions` stretches of audio
/// inserted (≤ 2 s each) may explain the differences: what a jitter buffer does after as many
/// underruns (it conceals the missing frames, then re-anchors the next packet at a deeper target;
/// nothing the phone sent is lost). `deleted_only` then counts the deletions and `inserted` the
/// samples inserted.
pub fn integrity_allowing(heard: &[i16], played: &[i16], insertions: usize) -> Integrity {
    let n = played.len();
    // Align on the first loud frame of the capture that the agent heard (a frame lost on the
    // way must not make the whole call uncheckable).
    let loud = played
        .chunks_exact(160)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|s| s.abs() > LOUD))
        .map(|(i, _)| i)
        .take(50);
    let Some((f, a)) = loud
        .filter_map(|f| {
            let probe = &played[f * 160..f * 160 + 160];
            heard.windows(160).position(|w| w == probe).map(|a| (f, a))
        })
        .min_by_key(|&(_, a)| a)
    else {
        return Integrity::default();
    };
    let mut out = Integrity {
        aligned: true,
        aligned_at: a,
        played_at: f * 160,
        ..Integrity::default()
    };
    for (i, &s) in heard[a..].iter().enumerate() {
        out.compared += 1;
        if s != played[(f * 160 + i) % n] {
            out.mismatched += 1;
            out.first_mismatch.get_or_insert(i);
        }
    }
    if let Some(i) = out.first_mismatch {
        out.shift = realign(&heard[a + i..], played, (f * 160 + i) % n);
    }
    out.deleted_only = match out.first_mismatch {
        None => Some(0),
        Some(_) => match walk(heard, played, a, f * 160, insertions) {
            Ok(w) => {
                out.inserted = w.inserted.iter().map(|x| x.1).sum();
                Some(w.deleted.iter().map(|x| x.1).sum())
            }
            Err(why) => {
                out.unexplained = Some(why);
                None
            }
        },
    };
    out
}

/// Where the phone's audio was deleted in `heard` when deletions of quiet audio alone explain
/// every difference (see [`Integrity::deleted_only`]): (index in `heard` of the first sample
/// after the deletion, samples deleted), in order. Empty otherwise.
pub fn deletions(heard: &[i16], played: &[i16], integ: &Integrity) -> Vec<(usize, usize)> {
    if !integ.aligned || integ.first_mismatch.is_none() || integ.deleted_only.is_none() {
        return Vec::new();
    }
    walk(heard, played, integ.aligned_at, integ.played_at, 0)
        .map(|w| w.deleted)
        .unwrap_or_default()
}

/// Fewest samples kept between two deletions the walk accepts: the jitter buffer plays at least
/// one 20 ms frame between two skipped ones (a frame just under the quiet threshold, say), and
/// the first samples after a deletion may equal those deleted, so the run it sees can be short.
const MIN_KEPT: usize = 80;
/// The longest stretch one underrun may insert: the stall it conceals plus the deeper
/// re-anchoring (load runs on this 2-core machine showed stalls of the phones' sender over
/// 100 ms, every call at once).
const MAX_INSERTED: usize = 16_000;
/// What the gateway's jitter buffer plays for missing audio: the last frame repeated, fading,
/// for at most 60 ms, then silence. An inserted stretch is quiet after its first 480 samples.
const CONCEALED: usize = 480;
/// The longest deletion the walk tries, and the widest shift [`realign`] looks for: 400 ms, the
/// deepest the gateway's jitter buffer can be (`JitterConfig::max_delay`). Shrinking, it skips
/// quiet frames at the playout point while it is too deep, several in one pop when they are all
/// quiet (after an underrun raised its depth, 960 samples at once were seen; 100 ms, the limit
/// before, left such calls unexplained).
pub const MAX_SHIFT: usize = 3200;
/// Deletion points the walk may try in all before it gives up ([`Unexplained::TooMany`]).
const WALK_BUDGET: usize = 256;

/// Walk `heard` from `h` against the looped `played` from `p`, realigning at each difference,
/// if deletions of quiet audio and up to `insertions` insertions explain every difference (the
/// last 320 samples may be cut short by the call's end): each deletion and insertion (heard
/// index after it, samples).
///
/// In quiet audio (digital silence above all) an insertion and a deletion can trade places: a
/// stall concealed in silence is explained as well by 400 samples inserted as by 597 inserted
/// and 197 deleted. With insertions allowed, the search runs twice, deletions tried first at
/// each difference and insertions tried first, and the explanation that deletes less is kept:
/// the gateway's count of skipped samples is then compared with the least the audio needs.
fn walk<'a>(
    heard: &'a [i16],
    played: &'a [i16],
    h: usize,
    p: usize,
    insertions: usize,
) -> Result<Walk<'a>, Unexplained> {
    let run = |insert_first: bool| {
        let mut walk = Walk {
            heard,
            played,
            start: h,
            deleted: Vec::new(),
            inserted: Vec::new(),
            insertions,
            insert_first,
            budget: WALK_BUDGET,
        };
        walk.from(h, p % played.len()).map(|()| walk)
    };
    let first = run(false);
    if insertions == 0 {
        return first;
    }
    match (first, run(true)) {
        (Ok(a), Ok(b)) => Ok(if b.deleted_samples() < a.deleted_samples() {
            b
        } else {
            a
        }),
        (Ok(w), Err(_)) | (Err(_), Ok(w)) => Ok(w),
        (Err(e), Err(_)) => Err(e),
    }
}

/// A depth-first search for quiet deletions (and allowed insertions) that turn the looped
/// `played` into `heard`.
struct Walk<'a> {
    heard: &'a [i16],
    played: &'a [i16],
    start: usize,
    deleted: Vec<(usize, usize)>,
    /// (index in `heard` of the first inserted sample, samples inserted).
    inserted: Vec<(usize, usize)>,
    insertions: usize,
    /// Try insertions before deletions at each difference.
    insert_first: bool,
    budget: usize,
}

impl Walk<'_> {
    fn deleted_samples(&self) -> usize {
        self.deleted.iter().map(|x| x.1).sum()
    }

    /// Explain everything from `heard[h]` / `played[p]` on. Only deletions are asked for: in
    /// quiet, self-similar audio an insertion can also realign (a load run once showed "+328
    /// inserted" where the gateway had skipped 480 quiet samples), and a wrong guess cannot
    /// explain the call, since everything after must still match. Candidates that realign for
    /// 320 samples come first, fewest samples first; then those that realign only up to the
    /// next difference, at least [`MIN_KEPT`] samples on (two frames skipped with one played
    /// between them, which a 320-sample window cannot see). Insertions, while allowed, are tried
    /// after the deletions (before them with `insert_first`). The error is the first candidate's.
    fn from(&mut self, h: usize, p: usize) -> Result<(), Unexplained> {
        let (heard, played) = (self.heard, self.played);
        let n = played.len();
        if self.budget == 0 {
            return Err(Unexplained::TooMany);
        }
        self.budget -= 1;
        let rest = heard.get(h..).unwrap_or_default();
        let Some(i) = rest
            .iter()
            .enumerate()
            .position(|(k, s)| *s != played[(p + k) % n])
        else {
            return Ok(());
        };
        let at = h + i - self.start;
        if rest.len() - i < 320 {
            // A difference too close to the end to tell what it is.
            return Err(Unexplained::NearEnd { at });
        }
        if self.deleted.len() + self.inserted.len() >= 64 {
            return Err(Unexplained::TooMany);
        }
        let pos = (p + i) % n;
        let mut first_err = None;
        for insert in [self.insert_first, !self.insert_first] {
            let r = if insert {
                self.insertions_at(h + i, pos, &mut first_err)
            } else {
                self.deletions_at(h + i, pos, at, &mut first_err)
            };
            if let Some(r) = r {
                return r;
            }
        }
        Err(first_err.unwrap_or_else(|| Unexplained::NotDeleted {
            at,
            shift: realign(&rest[i..], played, pos),
        }))
    }

    /// Try each quiet deletion at the difference `heard[h]` / `played[pos]`: `Some` when one
    /// explains the rest of the call or the search must stop, `None` when none did.
    fn deletions_at(
        &mut self,
        h: usize,
        pos: usize,
        at: usize,
        first_err: &mut Option<Unexplained>,
    ) -> Option<Result<(), Unexplained>> {
        let (heard, played) = (self.heard, self.played);
        let n = played.len();
        let runs: Vec<(usize, usize)> = (1..=MAX_SHIFT)
            .map(|d| (d, run_len(&heard[h..], played, pos + d, 320)))
            .filter(|&(_, run)| run >= MIN_KEPT)
            .collect();
        let full = runs.iter().filter(|r| r.1 >= 320);
        let short = runs.iter().filter(|r| r.1 < 320);
        for &(d, _) in full.chain(short) {
            let peak = (0..d)
                .map(|k| played[(pos + k) % n].saturating_abs())
                .max()
                .unwrap_or(0);
            let result = if peak > QUIET_PEAK {
                // Speech went missing: not the jitter buffer's adaptation.
                Err(Unexplained::LoudDeleted {
                    at,
                    samples: d,
                    peak,
                })
            } else {
                self.deleted.push((h, d));
                let r = self.from(h, (pos + d) % n);
                if r.is_err() {
                    self.deleted.pop();
                }
                r
            };
            match result {
                Ok(()) => return Some(Ok(())),
                Err(Unexplained::TooMany) => return Some(Err(Unexplained::TooMany)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        None
    }

    /// Try each insertion at the difference `heard[h]` / `played[pos]` while insertions are
    /// allowed: audio the phone never sent (concealment, then silence), then the phone's audio
    /// again with nothing missing. Shortest first.
    fn insertions_at(
        &mut self,
        h: usize,
        pos: usize,
        first_err: &mut Option<Unexplained>,
    ) -> Option<Result<(), Unexplained>> {
        if self.inserted.len() >= self.insertions {
            return None;
        }
        let (heard, played) = (self.heard, self.played);
        let rest = &heard[h..];
        let loud_at = rest
            .iter()
            .enumerate()
            .skip(CONCEALED)
            .find(|(_, s)| s.saturating_abs() > QUIET_PEAK)
            .map_or(rest.len(), |(k, _)| k);
        for d in 1..=MAX_INSERTED {
            if d + 320 > rest.len() || d > loud_at {
                break;
            }
            if run_len(&rest[d..], played, pos, 320) < 320 {
                continue;
            }
            self.inserted.push((h, d));
            match self.from(h + d, pos) {
                Ok(()) => return Some(Ok(())),
                Err(Unexplained::TooMany) => return Some(Err(Unexplained::TooMany)),
                Err(e) => {
                    self.inserted.pop();
                    first_err.get_or_insert(e);
                }
            }
        }
        None
    }
}

/// Gateway-added uplink latency of each caller chunk the agent received: the chunk's arrival at
/// the agent minus the phone's send time of the RTP packet that carried the chunk's last sample.
///
/// `chunks` are the agent's (arrival, offset of the first sample in `heard`) per
/// `user_audio_chunk`, `integ` the alignment of `heard` on the looped capture, `packet_lens` the
/// samples of each audio packet of one pass and `sent_log` the phone's send time of every audio
/// packet in order over the passes. Only chunks up to the first difference count (after it the
/// alignment no longer holds), unless the differences are all `deletions` of quiet audio (the
/// gateway's jitter buffer shrinking, see [`deletions`]): then the alignment is carried past each.
pub fn uplink_latency(
    chunks: &[(Instant, usize)],
    heard_len: usize,
    integ: &Integrity,
    deletions: &[(usize, usize)],
    packet_lens: &[usize],
    sent_log: &[Instant],
) -> Vec<Duration> {
    let pass: usize = packet_lens.iter().sum();
    if !integ.aligned || pass == 0 {
        return Vec::new();
    }
    let mut starts = Vec::with_capacity(packet_lens.len());
    let mut acc = 0;
    for &l in packet_lens {
        starts.push(acc);
        acc += l;
    }
    let valid_end = if deletions.is_empty() {
        integ
            .first_mismatch
            .map_or(heard_len, |m| integ.aligned_at + m)
    } else {
        heard_len
    };
    let mut out = Vec::new();
    for (j, &(arrived, _)) in chunks.iter().enumerate() {
        let end = chunks.get(j + 1).map_or(heard_len, |c| c.1);
        let Some(last) = end.checked_sub(1) else {
            continue;
        };
        if last < integ.aligned_at || last >= valid_end {
            continue;
        }
        let skipped: usize = deletions
            .iter()
            .take_while(|(at, _)| *at <= last)
            .map(|x| x.1)
            .sum();
        let sample = integ.played_at + (last - integ.aligned_at) + skipped;
        let (loop_n, within) = (sample / pass, sample % pass);
        let k = starts.partition_point(|&s| s <= within).saturating_sub(1);
        if let Some(sent) = sent_log.get(loop_n * packet_lens.len() + k) {
            out.push(arrived.saturating_duration_since(*sent));
        }
    }
    out
}

/// Gateway-added downlink latency, found by content in the µ-law the phone received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownlinkLatency {
    /// For the first byte of every agent audio chunk found at the phone: the kernel receive time
    /// of the RTP packet carrying it minus the time the agent sent the chunk (includes the
    /// gateway's playout queue: the agent sends faster than real time).
    pub chunks: Vec<Duration>,
    /// The same for the first chunk of each response that did not queue behind the previous
    /// response's audio in the gateway (what responsiveness depends on).
    pub first_chunks: Vec<Duration>,
    /// Responses whose audio was found at the phone.
    pub responses_found: usize,
    /// Of which queued behind the previous response's audio (sent while it still played; their
    /// first chunk is counted in `chunks` only).
    pub responses_queued: usize,
}

/// Where each response's audio starts in the phone's received µ-law stream and how late each
/// chunk's first byte arrived. `audio` is the response audio (the same for every response, see
/// `AgentEmulator::response_audio`), `sent` the agent's chunk log. A response is located by the
/// first 160 bytes of its audio from its first loud sample on, found after the previous
/// response's position, arriving after the response's first chunk was sent and before the next
/// response started; every chunk's bytes are then checked at their place before counting.
/// Packet times are the kernel's receive stamps (the gateway's send times on loopback).
pub fn downlink_latency(call: &TrunkCall, sent: &[AudioSent], audio: &[u8]) -> DownlinkLatency {
    let mut out = DownlinkLatency::default();
    let law = G711::Ulaw;
    if call.law != Some(law) {
        return out;
    }
    let Some(a0) = audio.iter().position(|&c| law.decode(c).abs() > LOUD) else {
        return out;
    };
    let Some(anchor) = audio.get(a0..a0 + 160) else {
        return out;
    };
    // The received stream and the kernel time of the packet carrying each byte.
    let mut stream = Vec::new();
    let mut starts: Vec<(usize, Instant)> = Vec::new();
    for p in call.rtp_in.iter().filter(|p| p.pt == law.payload_type()) {
        starts.push((stream.len(), p.kernel_at.unwrap_or(p.at)));
        stream.extend_from_slice(&p.payload);
    }
    let time_of = |b: usize| -> Option<Instant> {
        let i = starts.partition_point(|&(s, _)| s <= b).checked_sub(1)?;
        Some(starts[i].1)
    };
    let n_resp = sent.iter().map(|c| c.response + 1).max().unwrap_or(0);
    let first_sent: Vec<Option<Instant>> = (0..n_resp)
        .map(|r| sent.iter().find(|c| c.response == r).map(|c| c.at))
        .collect();
    let mut from = 0usize;
    // Where the previous response found starts in the stream, and the bytes the agent sent of it.
    let mut prev: Option<(usize, usize)> = None;
    for r in 0..n_resp {
        let Some(t_r) = first_sent[r] else { continue };
        let reached = sent
            .iter()
            .filter(|c| c.response == r)
            .map(|c| c.offset + c.len)
            .max()
            .unwrap_or(0);
        if reached < a0 + 160 {
            continue;
        }
        let next_start = first_sent[r + 1..].iter().flatten().next().copied();
        let mut q = from;
        let found = loop {
            let Some(i) = stream
                .get(q..)
                .and_then(|s| s.windows(160).position(|w| w == anchor))
            else {
                break None;
            };
            let pos = q + i;
            let t = time_of(pos);
            if t.is_some_and(|t| t < t_r) {
                q = pos + 1;
                continue;
            }
            break Some(pos).filter(|_| next_start.is_none_or(|n| t.is_some_and(|t| t < n)));
        };
        let Some(pos) = found else { continue };
        let Some(start) = pos
            .checked_sub(a0)
            .filter(|&s| prev.is_none_or(|(p, _)| s > p))
        else {
            continue;
        };
        from = pos + 1;
        out.responses_found += 1;
        // Queued: it waited in the gateway behind other agent audio. Either audible audio reached
        // the phone between this response's sending and its start, or it directly follows the
        // previous response found (the 20 ms before it are that response's bytes at their place,
        // trailing silence included) sent after this response was.
        let first_after = starts.partition_point(|&(_, t)| t < t_r);
        let audible_before = starts
            .get(first_after..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&(s, _)| s + 160 <= start)
            .any(|&(s, _)| {
                stream[s..(s + 160).min(start)]
                    .iter()
                    .any(|&c| law.decode(c).abs() > LOUD)
            });
        let follows_prev = prev.is_some_and(|(sp, reached_prev)| {
            let x = start - sp;
            x >= 160
                && x <= reached_prev
                && stream.get(start - 160..start) == audio.get(x - 160..x)
                && time_of(start - 1).is_some_and(|t| t > t_r)
        });
        let queued = audible_before || follows_prev;
        prev = Some((start, reached));
        out.responses_queued += usize::from(queued);
        for c in sent.iter().filter(|c| c.response == r) {
            let k = c.len.min(160);
            let b = start + c.offset;
            let matches = k > 0 && stream.get(b..b + k) == audio.get(c.offset..c.offset + k);
            if let (true, Some(t)) = (matches, time_of(b)) {
                let d = t.saturating_duration_since(c.at);
                out.chunks.push(d);
                if c.offset == 0 && !queued {
                    out.first_chunks.push(d);
                }
            }
        }
    }
    out
}

/// The shift (±[`MAX_SHIFT`] samples) after which `heard` continues `played` from `pos` for 320
/// samples.
fn realign(heard: &[i16], played: &[i16], pos: usize) -> Option<i64> {
    let matches = |h: usize, p: i64| matches_at(heard, played, h, p);
    (1..=MAX_SHIFT as i64).find_map(|d| {
        if matches(d as usize, pos as i64) {
            Some(d)
        } else if matches(0, pos as i64 + d) {
            Some(-d)
        } else if matches(d as usize, pos as i64 + d) {
            Some(0)
        } else {
            None
        }
    })
}

/// `heard[h..h + 320]` is the looped `played` from `p`.
fn matches_at(heard: &[i16], played: &[i16], h: usize, p: i64) -> bool {
    let n = played.len() as i64;
    heard.len() >= h + 320
        && (0..320).all(|k| heard[h + k] == played[((p + k as i64).rem_euclid(n)) as usize])
}

/// How many samples (up to `max`) `heard` continues the looped `played` from `p`.
fn run_len(heard: &[i16], played: &[i16], p: usize, max: usize) -> usize {
    let n = played.len();
    heard
        .iter()
        .take(max)
        .enumerate()
        .take_while(|&(k, s)| *s == played[(p + k) % n])
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_emulators::trunk::RxPacket;

    fn pkt(at: Instant, seq: u16, ts: u32, loud: bool) -> RxPacket {
        RxPacket {
            at,
            kernel_at: None,
            pt: 0,
            marker: false,
            seq,
            ts,
            payload: vec![if loud { 0x10 } else { 0xff }; 160],
        }
    }

    #[test]
    fn pacing_loss_and_lateness_are_read_from_the_phone_side() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut call = TrunkCall {
            law: Some(G711::Ulaw),
            ..TrunkCall::default()
        };
        // seq 1..=5 with 3 missing; packet 5 arrives 40 ms late.
        call.rtp_in = vec![
            pkt(t, 1, 0, false),
            pkt(t + ms(21), 2, 160, false),
            pkt(t + ms(80) + ms(40), 4, 480, true),
            pkt(t + ms(100) + ms(40), 5, 640, true),
        ];
        let d = downlink(&call);
        assert_eq!(d.received, 4);
        assert_eq!(d.lost, 1);
        assert_eq!(d.late, 2);
        assert_eq!(d.pacing_us, vec![1000, 0]);
        assert_eq!(d.first_loud, Some(t + ms(120)));
    }

    #[test]
    fn pacing_comes_from_kernel_stamps_and_the_receivers_view_is_kept_apart() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // The gateway sent every 20 ms (kernel stamps); the phone task read packets 2 and 3
        // together 15 ms late.
        let mut call = TrunkCall {
            law: Some(G711::Ulaw),
            ..TrunkCall::default()
        };
        let user = [0, 20, 55, 55, 80];
        call.rtp_in = (0..5u16)
            .map(|i| {
                let mut p = pkt(t + ms(user[usize::from(i)]), i, 160 * u32::from(i), false);
                p.kernel_at = Some(t + ms(20 * u64::from(i)));
                p
            })
            .collect();
        let d = downlink(&call);
        assert_eq!(d.pacing_us, vec![0, 0, 0, 0]);
        assert_eq!(d.pacing_user_us, vec![0, 15_000, 20_000, 5_000]);
        assert_eq!(d.stamped, 5);
        // Without stamps both views are the task's arrival times.
        for p in &mut call.rtp_in {
            p.kernel_at = None;
        }
        let d = downlink(&call);
        assert_eq!(d.pacing_us, d.pacing_user_us);
        assert_eq!(d.stamped, 0);
    }

    #[test]
    fn telephone_events_in_the_sequence_space_are_not_loss() {
        let t = Instant::now();
        let mut call = TrunkCall {
            law: Some(G711::Ulaw),
            dtmf_pt: Some(101),
            ..TrunkCall::default()
        };
        call.rtp_in = (0..6u16)
            .map(|i| pkt(t + Duration::from_millis(20 * u64::from(i)), i, 0, false))
            .collect();
        call.rtp_in[2].pt = 101;
        call.rtp_in[3].pt = 101;
        let d = downlink(&call);
        assert_eq!((d.received, d.lost), (4, 0));
        // A real gap still is.
        call.rtp_in.remove(4);
        assert_eq!(downlink(&call).lost, 1);
    }

    #[test]
    fn uplink_latency_maps_each_chunks_last_sample_to_the_packet_that_carried_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // One pass: 4 packets of 160 samples; the phone sent packet n at n × 20 ms, 2 passes.
        let lens = [160usize; 4];
        let sent: Vec<Instant> = (0..8u64).map(|n| t + ms(20 * n)).collect();
        // The agent heard 100 samples of something else, then the capture from sample 160
        // (packet 1) on: alignment at heard 100 ↔ played 160.
        let integ = Integrity {
            aligned: true,
            aligned_at: 100,
            played_at: 160,
            compared: 900,
            ..Integrity::default()
        };
        // Chunks of 320 samples from heard 0: [0,320) [320,640) [640,960) (and 40 ms chunking).
        let chunks = vec![(t + ms(70), 0), (t + ms(110), 320), (t + ms(150), 640)];
        let l = uplink_latency(&chunks, 960, &integ, &[], &lens, &sent);
        // Last samples: heard 319 → played 379 → packet 2 (40 ms); heard 639 → played 699 →
        // second pass packet 0 (80 ms); heard 959 → played 1019 → second pass packet 2 (120 ms).
        assert_eq!(l, vec![ms(30), ms(30), ms(30)]);
        // After the first difference nothing counts.
        let broken = Integrity {
            first_mismatch: Some(400),
            ..integ
        };
        assert_eq!(
            uplink_latency(&chunks, 960, &broken, &[], &lens, &sent).len(),
            1
        );
        assert!(uplink_latency(&chunks, 960, &Integrity::default(), &[], &lens, &sent).is_empty());
        // Unless the difference is 160 quiet samples the jitter buffer skipped at heard 400:
        // from there on, heard sample h is played sample h + 60 + 160, a packet later, so the
        // same arrival is 20 ms sooner after its send.
        let l = uplink_latency(&chunks, 960, &broken, &[(400, 160)], &lens, &sent);
        assert_eq!(l, vec![ms(30), ms(10), ms(10)]);
    }

    #[test]
    fn downlink_latency_finds_each_response_in_the_received_audio() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        // A response: 80 bytes of silence, then 720 bytes of loud varying audio.
        let mut audio = vec![0xFFu8; 80];
        let mut x = 12345u32;
        audio.extend((0..720).map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((x >> 16) % 0x70) as u8
        }));
        let chunk = |r: usize, at: u64, offset: usize, len: usize| AudioSent {
            at: t + ms(at),
            response: r,
            offset,
            len,
        };
        // Response 0 sent at 0 ms in two chunks; response 1 at 1000 ms in one, queued behind
        // nothing; response 2 sent at 1150 ms while response 1 still plays: queued.
        let sent = vec![
            chunk(0, 0, 0, 400),
            chunk(0, 10, 400, 400),
            chunk(1, 1000, 0, 800),
            chunk(2, 1150, 0, 800),
        ];
        // The phone: 2 packets of idle silence, response 0 from packet 2 (40 ms, gateway sent it
        // 40 ms after the agent), idle until packet 55, response 1 from packet 55 (1100 ms),
        // response 2 right after it (packet 60, 1200 ms).
        let mut stream = vec![0xFFu8; 320];
        stream.extend(&audio);
        stream.resize(55 * 160, 0xFF);
        stream.extend(&audio);
        stream.extend(&audio);
        stream.resize(70 * 160, 0xFF);
        let mut call = TrunkCall {
            law: Some(G711::Ulaw),
            ..TrunkCall::default()
        };
        call.rtp_in = stream
            .chunks(160)
            .enumerate()
            .map(|(i, c)| {
                let mut p = pkt(t + ms(20 * i as u64 + 7), i as u16, 0, false);
                p.kernel_at = Some(t + ms(20 * i as u64));
                p.payload = c.to_vec();
                p
            })
            .collect();
        let d = downlink_latency(&call, &sent, &audio);
        assert_eq!(d.responses_found, 3);
        assert_eq!(d.responses_queued, 1);
        // Response 0: byte 0 in packet 2 (40 ms after 0), byte 400 → stream 720 → packet 4 (80 ms
        // after 10 ms); response 1: packet 55 (1100 − 1000); response 2: byte 800 after →
        // stream 9600 → packet 60 (1200 − 1150).
        assert_eq!(d.chunks, vec![ms(40), ms(70), ms(100), ms(50)]);
        assert_eq!(d.first_chunks, vec![ms(40), ms(100)]);
        // A response sent before the previous one's audio reached the phone cannot be told
        // apart from it (same audio): the earlier one is skipped rather than mismatched.
        let mut early = sent.clone();
        early[3].at = t + ms(1050);
        let e = downlink_latency(&call, &early, &audio);
        assert_eq!(e.responses_found, 2);
        assert_eq!(e.chunks, vec![ms(40), ms(70), ms(50)]);
        // A-law calls are not looked at (the bytes are not the agent's).
        call.law = Some(G711::Alaw);
        assert_eq!(
            downlink_latency(&call, &sent, &audio),
            DownlinkLatency::default()
        );
    }

    #[test]
    fn sequence_wrap_is_not_loss() {
        let t = Instant::now();
        let call = TrunkCall {
            rtp_in: (0..4u16)
                .map(|i| {
                    let at = t + Duration::from_millis(20 * u64::from(i));
                    pkt(at, 0xFFFEu16.wrapping_add(i), 160 * u32::from(i), false)
                })
                .collect(),
            ..TrunkCall::default()
        };
        let d = downlink(&call);
        assert_eq!((d.received, d.lost, d.late), (4, 0, 0));
    }

    #[test]
    fn integrity_finds_the_looped_audio_and_counts_differences() {
        let played: Vec<i16> = (0..1600).map(|i| ((i * 37) % 4000) as i16 - 2000).collect();
        // The agent heard some silence, then the capture from frame 0, looped twice.
        let mut heard = vec![0i16; 480];
        heard.extend(played.iter().chain(played.iter()).copied());
        let ok = integrity(&heard, &played);
        assert!(ok.aligned);
        assert_eq!(ok.mismatched, 0);
        assert_eq!(ok.compared, 3200);
        heard[1000] = 7;
        let bad = integrity(&heard, &played);
        assert_eq!(bad.mismatched, 1);
        assert_eq!(bad.first_mismatch, Some(520));
        assert_eq!(bad.shift, Some(0), "one sample replaced in place");
        assert!(!bad.exact());
        // 160 samples of silence inserted in the middle: everything after is shifted.
        let mut ins = vec![0i16; 480];
        ins.extend(&played[..800]);
        ins.extend([0i16; 160]);
        ins.extend(played[800..].iter().chain(played.iter()));
        let shifted = integrity(&ins, &played);
        assert_eq!(shifted.first_mismatch, Some(800));
        assert_eq!(shifted.shift, Some(160));
        assert_eq!(shifted.deleted_only, None, "an insertion is not a deletion");
        assert_eq!(
            shifted.unexplained,
            Some(Unexplained::NotDeleted {
                at: 800,
                shift: Some(160)
            })
        );
        // Two quiet frames missing at different places: deletions of 160 + 320 explain
        // everything…
        let mut quiet_gaps = played.clone();
        for (i, s) in quiet_gaps.iter_mut().enumerate() {
            if (800..960).contains(&i) || (1280..1600).contains(&i) {
                *s = (*s % 200).abs() + 1; // peak ≤ QUIET_PEAK, no run that aligns elsewhere
            }
        }
        let mut del = vec![0i16; 480];
        del.extend(&quiet_gaps[..800]);
        del.extend(&quiet_gaps[960..1280]);
        del.extend(quiet_gaps[1600..].iter().chain(quiet_gaps.iter()));
        let missing = integrity(&del, &quiet_gaps);
        assert_eq!(missing.shift, Some(-160));
        assert_eq!(missing.deleted_only, Some(480));
        assert_eq!(missing.unexplained, None);
        assert_eq!(
            deletions(&del, &quiet_gaps, &missing),
            vec![(1280, 160), (1600, 320)],
            "where each stretch went missing in what the agent heard"
        );
        assert!(deletions(&heard, &played, &bad).is_empty(), "not deletions");
        // …unless something else differs too…
        let last = del.len() - 400;
        del[last] ^= 0x55;
        let also = integrity(&del, &quiet_gaps);
        assert_eq!(also.deleted_only, None);
        assert_eq!(
            also.unexplained,
            Some(Unexplained::NotDeleted {
                at: last - 480,
                shift: Some(0)
            }),
            "counted in what the agent heard, from the alignment point"
        );
        // A difference in the last 40 ms cannot be told apart.
        let mut cut = vec![0i16; 480];
        cut.extend(played.iter().chain(played.iter()));
        let tail = cut.len() - 100;
        cut[tail] = 9999;
        assert!(matches!(
            integrity(&cut, &played).unexplained,
            Some(Unexplained::NearEnd { .. })
        ));
        // …or a deleted frame was loud (speech lost, not the jitter buffer's adaptation).
        let mut loud_del = vec![0i16; 480];
        loud_del.extend(&played[..800]);
        loud_del.extend(played[960..].iter().chain(played.iter()));
        let lost = integrity(&loud_del, &played);
        assert_eq!(lost.shift, Some(-160));
        assert_eq!(lost.deleted_only, None, "a loud frame deleted");
        assert!(
            matches!(
                lost.unexplained,
                Some(Unexplained::LoudDeleted {
                    at: 800,
                    samples: 160,
                    peak
                }) if peak > QUIET_PEAK
            ),
            "{:?}",
            lost.unexplained
        );
        assert_eq!(
            lost.unexplained.map(|u| u.to_string()).unwrap_or_default(),
            format!(
                "160 samples missing at 0.10s, peak {} (not quiet)",
                played[800..960].iter().map(|s| s.abs()).max().unwrap_or(0)
            )
        );
        assert_eq!(bad.deleted_only, None, "a sample replaced in place");
        assert_eq!(ok.deleted_only, Some(0));
        assert!(!integrity(&[0; 4000], &played).aligned);
    }

    #[test]
    fn a_deletion_in_self_similar_quiet_audio_is_not_taken_for_an_insertion() {
        // 400 ms of quiet audio repeating every 168 samples between louder audio; 480 samples
        // of it deleted. Realigning from the first difference, "24 inserted" matches before
        // "144 deleted" does; only deletions of quiet audio explain the whole call (144 there,
        // the other 336 where the quiet stretch ends).
        let mut played: Vec<i16> = (0..1600).map(|i| ((i * 37) % 4000) as i16 - 2000).collect();
        played.extend((0..3200).map(|i| (i % 168) as i16 + 1));
        played.extend((0..1600).map(|i| ((i * 53) % 4000) as i16 - 2000));
        let cut = 1600 + 800;
        let mut heard = vec![0i16; 480];
        heard.extend(&played[..cut]);
        heard.extend(played[cut + 480..].iter().chain(played.iter()));
        let integ = integrity(&heard, &played);
        assert_eq!(integ.first_mismatch, Some(cut));
        assert_eq!(integ.shift, Some(24), "the generic realignment is fooled");
        assert_eq!(integ.unexplained, None);
        assert_eq!(integ.deleted_only, Some(480));
        let total: usize = deletions(&heard, &played, &integ).iter().map(|d| d.1).sum();
        assert_eq!(total, 480);
    }

    #[test]
    fn two_quiet_frames_skipped_around_one_played_frame_are_deletions() {
        // The jitter buffer skips quiet frames while it is too deep; a frame just over the quiet
        // threshold is played, and the next quiet one skipped: what the agent hears keeps only
        // 160 samples between the two deletions, too few for a 320-sample realignment (a load
        // run showed "+174 samples at 3.26s (not a deletion)" where the gateway had skipped 480).
        let loud =
            |k: i32| -> Vec<i16> { (0..800).map(|i| ((i * k) % 4000) as i16 - 2000).collect() };
        let quiet = |k: i32| -> Vec<i16> { (0..160).map(|i| ((i * k) % 200) as i16 + 1).collect() };
        let low: Vec<i16> = (0..160).map(|i| ((i * 11) % 600) as i16 - 300).collect();
        assert!(
            low.iter().any(|s| s.abs() > QUIET_PEAK),
            "played, not skipped"
        );
        let mut played = loud(37);
        let q1 = played.len();
        played.extend(quiet(7));
        played.extend(&low);
        let q2 = played.len();
        played.extend(quiet(13));
        played.extend(loud(53));
        let mut heard = vec![0i16; 480];
        heard.extend(&played[..q1]);
        heard.extend(&played[q1 + 160..q2]);
        heard.extend(played[q2 + 160..].iter().chain(played.iter()));
        let integ = integrity(&heard, &played);
        assert_eq!(integ.first_mismatch, Some(q1));
        assert_eq!(integ.unexplained, None, "{:?}", integ.unexplained);
        assert_eq!(integ.deleted_only, Some(320));
        assert_eq!(
            deletions(&heard, &played, &integ),
            vec![(480 + q1, 160), (480 + q1 + 160, 160)]
        );
        // The played frame between them matters: had it been skipped too, speech-level audio
        // (over the threshold) went missing.
        let mut lost = vec![0i16; 480];
        lost.extend(&played[..q1]);
        lost.extend(played[q2 + 160..].iter().chain(played.iter()));
        assert!(matches!(
            integrity(&lost, &played).unexplained,
            Some(Unexplained::LoudDeleted { samples: 480, .. })
        ));
    }

    #[test]
    fn an_underrun_inserts_audio_and_later_quiet_skips_take_it_back() {
        // After an underrun the jitter buffer repeats the last frame fading out, then plays the
        // next packet re-anchored deeper (silence before it): audio inserted, nothing the phone
        // sent lost. It later skips quiet frames to shrink back. Load runs at 250 calls showed
        // such calls as "+338 samples at 3.26s (not a deletion)", the gateway reporting one
        // underrun and 640 samples skipped.
        let loud = |k: i32, n: i32| -> Vec<i16> {
            (0..n).map(|i| ((i * k) % 4000) as i16 - 2000).collect()
        };
        let quiet = |k: i32| -> Vec<i16> { (0..320).map(|i| ((i * k) % 200) as i16 + 1).collect() };
        let mut played = loud(37, 1600);
        let q = played.len();
        played.extend(quiet(7));
        played.extend(loud(53, 1600));
        let u = 800;
        let concealment: Vec<i16> = played[u - 160..u]
            .iter()
            .map(|s| s / 2)
            .chain(std::iter::repeat_n(0, 178))
            .collect();
        let mut heard = vec![0i16; 480];
        heard.extend(&played[..u]);
        heard.extend(&concealment);
        heard.extend(&played[u..q]);
        heard.extend(played[q + 320..].iter().chain(played.iter()));
        let strict = integrity(&heard, &played);
        assert_eq!(strict.first_mismatch, Some(u));
        assert_eq!(strict.deleted_only, None);
        assert!(
            matches!(
                strict.unexplained,
                Some(Unexplained::NotDeleted { at: 800, .. })
            ),
            "{:?}",
            strict.unexplained
        );
        assert_eq!(integrity_allowing(&heard, &played, 0), strict);
        let one = integrity_allowing(&heard, &played, 1);
        assert_eq!(one.unexplained, None, "{:?}", one.unexplained);
        assert_eq!((one.deleted_only, one.inserted), (Some(320), 338));
        assert!(
            deletions(&heard, &played, &one).is_empty(),
            "deletions only, not these"
        );
        // Two insertions need two underruns; one may be longer than 100 ms (a stall of every
        // phone at once, concealed, then the backlog played from a deeper anchor).
        let mut twice = heard.clone();
        let at = 480 + 2400;
        twice.splice(at..at, std::iter::repeat_n(0, 1400));
        assert!(
            integrity_allowing(&twice, &played, 1)
                .deleted_only
                .is_none()
        );
        let two = integrity_allowing(&twice, &played, 2);
        assert_eq!((two.deleted_only, two.inserted), (Some(320), 1738));
        // Insertions never excuse speech lost: a loud frame missing stays unexplained.
        let mut lost = heard.clone();
        lost.drain(480 + 1200..480 + 1360);
        assert!(integrity_allowing(&lost, &played, 4).deleted_only.is_none());
    }
}
