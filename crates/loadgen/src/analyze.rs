//! What one call's phone side and agent side saw, reduced to the numbers the load report needs:
//! output pacing (|inter-arrival gap − 20 ms| of the RTP the phone received, RFC 3550 §6.4.1's
//! transit idea without the smoothing), loss (gaps in the RTP sequence numbers, RFC 3550 §A.3),
//! late packets (arrival behind the stream's own media clock), first agent audio, and the
//! sample-exact comparison of what the agent heard with what the phone played.

use std::time::{Duration, Instant};

use trunkline_emulators::trunk::TrunkCall;
use trunkline_media::g711::G711;

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
    /// |gap − 20 ms| in µs for each pair of consecutive packets (consecutive sequence numbers).
    pub pacing_us: Vec<u64>,
    /// When the first packet carrying agent speech arrived.
    pub first_loud: Option<Instant>,
}

/// Reduce the RTP the phone received on one call.
pub fn downlink(call: &TrunkCall) -> Downlink {
    let law = call.law.unwrap_or(G711::Ulaw);
    let pt = law.payload_type();
    let mut d = Downlink::default();
    let mut prev: Option<(Instant, u16)> = None;
    let mut ext_first: Option<i64> = None;
    let mut ext_last = 0i64;
    let mut cycles = 0i64;
    let mut last_seq: Option<u16> = None;
    let mut clock0: Option<(Instant, u32)> = None;
    let mut lateness: Vec<i128> = Vec::new();
    for p in call.rtp_in.iter().filter(|p| p.pt == pt) {
        d.received += 1;
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
        if let Some((at, seq)) = prev
            && p.seq == seq.wrapping_add(1)
        {
            let gap = p.at.saturating_duration_since(at).as_micros() as i64;
            d.pacing_us.push((gap - 20_000).unsigned_abs());
        }
        prev = Some((p.at, p.seq));
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
        d.lost = expected.saturating_sub(d.received);
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
    /// Offset (samples from the alignment point) of the first difference.
    pub first_mismatch: Option<usize>,
    /// At the first difference: samples the agent heard that the phone never sent (positive:
    /// inserted, e.g. concealment of a late packet), phone audio missing (negative) or replaced
    /// in place (zero), when the stream realigns within 100 ms.
    pub shift: Option<i64>,
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
    out
}

/// The shift (−800..=800 samples) after which `heard` continues `played` from `pos` for 320
/// samples.
fn realign(heard: &[i16], played: &[i16], pos: usize) -> Option<i64> {
    let n = played.len() as i64;
    let matches = |h: usize, p: i64| {
        heard.len() >= h + 320
            && (0..320).all(|k| heard[h + k] == played[((p + k as i64).rem_euclid(n)) as usize])
    };
    (1..=800i64).find_map(|d| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_emulators::trunk::RxPacket;

    fn pkt(at: Instant, seq: u16, ts: u32, loud: bool) -> RxPacket {
        RxPacket {
            at,
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
        assert!(!integrity(&[0; 4000], &played).aligned);
    }
}
