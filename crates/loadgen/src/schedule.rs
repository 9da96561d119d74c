//! Replay scheduling of an RTP capture: when the phone side must send each packet, the capture
//! looped with its original timing (packet `i` of loop `k` at `k × duration + at_i`, the loop's
//! duration being the last packet's offset plus one 20 ms frame, as the trunk emulator plays it).
//!
//! The trunk emulator ([`PlaySource`]) does the sending; this module computes the same schedule
//! so the load tester knows what the phone said (the expected audio for the integrity check) and
//! tests can check the replay keeps the capture's timing.

use std::time::Duration;

use trunkline_emulators::trunk::PlaySource;
use trunkline_media::g711::G711;

/// The send schedule of a looped capture.
#[derive(Debug, Clone)]
pub struct ReplaySchedule {
    offsets: Vec<Duration>,
    period: Duration,
}

impl ReplaySchedule {
    /// The schedule of `source`, looped.
    pub fn new(source: &PlaySource) -> ReplaySchedule {
        ReplaySchedule {
            offsets: source.packets.iter().map(|p| p.at).collect(),
            period: source.duration(),
        }
    }

    /// Packets in one pass of the capture.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True for an empty capture.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Length of one pass.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Send time, from the start of playback, of the `n`-th packet sent (counting across loops).
    pub fn send_time(&self, n: u64) -> Option<Duration> {
        let len = self.offsets.len() as u64;
        if len == 0 {
            return None;
        }
        let (k, i) = (n / len, (n % len) as usize);
        let k = u32::try_from(k).ok()?;
        Some(self.period.checked_mul(k)? + self.offsets[i])
    }

    /// Send `count` packets on tokio's clock: wait for `start + send_time(n)` (an absolute
    /// deadline from the media schedule, so lateness never accumulates) and call `send(n)`.
    pub async fn play(&self, start: tokio::time::Instant, count: u64, mut send: impl FnMut(u64)) {
        for n in 0..count {
            let Some(t) = self.send_time(n) else { return };
            tokio::time::sleep_until(start + t).await;
            send(n);
        }
    }

    /// Every send time up to `until` (exclusive), in order.
    pub fn send_times_until(&self, until: Duration) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(t) = self.send_time(n) {
            if t >= until {
                break;
            }
            out.push(t);
            n += 1;
        }
        out
    }
}

/// The audio one pass of `source` puts on the wire when the call negotiated `law`, decoded to
/// linear samples (telephone-events left out, other-law packets transcoded as the trunk does).
pub fn expected_audio(source: &PlaySource, law: G711) -> Vec<i16> {
    let mut out = Vec::new();
    for p in &source.packets {
        let Some(l) = p.law else { continue };
        let mut data = p.payload.clone();
        if l != law {
            l.transcode_in_place(law, &mut data);
        }
        out.extend(data.iter().map(|&c| law.decode(c)));
    }
    out
}

/// How far each packet of the capture is behind its own media clock (RTP timestamp at 8 kHz),
/// relative to the earliest one: the network jitter recorded in the capture, which the replay
/// keeps and the gateway's jitter buffer must absorb.
pub fn capture_lateness(source: &PlaySource) -> Vec<Duration> {
    let raw: Vec<i128> = source
        .packets
        .iter()
        .map(|p| p.at.as_micros() as i128 - i128::from(p.ts) * 1_000_000 / 8000)
        .collect();
    let min = raw.iter().copied().min().unwrap_or(0);
    raw.iter()
        .map(|&l| Duration::from_micros(u64::try_from(l - min).unwrap_or(0)))
        .collect()
}

/// True when the capture can be checked sample-exactly: audio only (no telephone-events) and
/// every packet 20 ms after the previous one with 160 samples (no gaps a jitter buffer would fill).
pub fn integrity_checkable(source: &PlaySource) -> bool {
    let mut prev: Option<(Duration, u32)> = None;
    for p in &source.packets {
        if p.law.is_none() || p.payload.len() != 160 {
            return false;
        }
        if let Some((_, ts)) = prev
            && p.ts.wrapping_sub(ts) != 160
        {
            return false;
        }
        prev = Some((p.at, p.ts));
    }
    !source.packets.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_continue_after_one_period() {
        let src = PlaySource::from_ulaw(&[0x55; 160 * 3]);
        let s = ReplaySchedule::new(&src);
        assert_eq!(s.period(), Duration::from_millis(60));
        let t: Vec<_> = (0..7).filter_map(|n| s.send_time(n)).collect();
        let ms: Vec<u128> = t.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 20, 40, 60, 80, 100, 120]);
        assert_eq!(s.send_times_until(Duration::from_millis(100)).len(), 5);
    }

    #[test]
    fn capture_lateness_is_measured_against_the_media_clock() {
        let mut src = PlaySource::from_ulaw(&[0x55; 160 * 3]);
        src.packets[1].at += Duration::from_millis(30);
        let l = capture_lateness(&src);
        assert_eq!(
            l,
            vec![Duration::ZERO, Duration::from_millis(30), Duration::ZERO]
        );
    }

    #[test]
    fn empty_capture_has_no_schedule() {
        let s = ReplaySchedule::new(&PlaySource::default());
        assert!(s.is_empty());
        assert_eq!(s.send_time(0), None);
        assert!(!integrity_checkable(&PlaySource::default()));
    }

    #[test]
    fn expected_audio_transcodes_like_the_trunk() {
        let src = PlaySource::from_ulaw(&[0x00, 0x7f, 0xff]);
        let a = expected_audio(&src, G711::Ulaw);
        assert_eq!(a, vec![G711::Ulaw.decode(0), G711::Ulaw.decode(0x7f), 0]);
        let mut alaw = [0x00u8, 0x7f, 0xff];
        G711::Ulaw.transcode_in_place(G711::Alaw, &mut alaw);
        let b = expected_audio(&src, G711::Alaw);
        assert_eq!(b[0], G711::Alaw.decode(alaw[0]));
    }
}
