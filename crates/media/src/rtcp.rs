//! RTCP (RFC 3550 §6): receiver statistics — sequence tracking and loss (Appendix A.1, A.3),
//! interarrival jitter (§6.4.1, A.8) — and building/parsing compound SR/RR + SDES CNAME (+ BYE)
//! packets (§6.4, §6.5, §6.6) into and out of the caller's buffers, without allocating.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u32 = 2;

/// RFC 3550 Appendix A.1 per-source state, plus jitter (A.8) and loss (A.3).
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// Source being tracked.
    pub ssrc: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    /// Packets received (accepted by the sequence check).
    pub received: u64,
    expected_prior: u32,
    received_prior: u32,
    transit: Option<i64>,
    jitter: f64,
    initialised: bool,
    last_sr: Option<(u32, Instant)>,
}

impl ReceiverStats {
    /// Start tracking `ssrc` at `seq` (A.1 `init_seq`).
    pub fn new(ssrc: u32, seq: u16) -> Self {
        let mut s = ReceiverStats {
            ssrc,
            probation: MIN_SEQUENTIAL,
            ..Default::default()
        };
        s.init_seq(seq);
        s.max_seq = seq.wrapping_sub(1);
        s.initialised = true;
        s
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq as u32;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// A.1 `update_seq`: returns false when the packet should be considered invalid.
    pub fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += RTP_SEQ_MOD;
            }
            self.max_seq = seq;
        } else if udelta as u32 <= RTP_SEQ_MOD - MAX_MISORDER as u32 {
            if seq as u32 == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (seq as u32 + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        }
        self.received += 1;
        true
    }

    /// A.8: update the jitter with a packet's RTP timestamp and arrival (8 kHz clock).
    pub fn update_jitter(&mut self, rtp_ts: u32, arrival_units: u64) {
        let transit = arrival_units as i64 - rtp_ts as i64;
        if let Some(prev) = self.transit {
            // Differences are taken modulo 2^32 so wrap-around does not show as jitter.
            let d = ((transit - prev) as i32 as i64).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }

    /// Extended highest sequence number received.
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(self.max_seq as u32)
    }

    /// Packets expected so far.
    pub fn expected(&self) -> u32 {
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    /// Cumulative packets lost (may be negative with duplicates).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Remember a sender report's NTP middle 32 bits and when it arrived (for LSR/DLSR).
    pub fn on_sender_report(&mut self, ntp: u64, now: Instant) {
        self.last_sr = Some(((ntp >> 16) as u32, now));
    }

    /// A report block (A.3), updating the "prior" counters.
    pub fn report_block(&mut self, now: Instant) -> ReceptionReport {
        let expected = self.expected();
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        self.expected_prior = expected;
        let received = self.received as u32;
        let received_interval = received.wrapping_sub(self.received_prior);
        self.received_prior = received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let lost = self.lost().clamp(-0x80_0000, 0x7F_FFFF);
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                (lsr, (d.as_secs_f64() * 65536.0) as u32)
            }
            None => (0, 0),
        };
        ReceptionReport {
            ssrc: self.ssrc,
            fraction_lost: fraction,
            total_lost: (lost as i32 as u32) & 0x00FF_FFFF,
            last_sequence_number: self.extended_max(),
            jitter: self.jitter as u32,
            last_sender_report: lsr,
            delay: dlsr,
        }
    }
}

/// Maps `Instant`s to wall-clock NTP time from an anchor the I/O layer provides.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// An instant…
    pub instant: Instant,
    /// …and the wall-clock time at that instant.
    pub system: SystemTime,
}

impl WallClock {
    /// NTP 64-bit timestamp (RFC 3550 §4) of `now`.
    pub fn ntp(&self, now: Instant) -> u64 {
        let unix = self
            .system
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            + now.saturating_duration_since(self.instant);
        let secs = unix.as_secs() + 2_208_988_800;
        let frac = ((unix.subsec_nanos() as u64) << 32) / 1_000_000_000;
        (secs << 32) | frac
    }
}

/// What we report about our own sending.
#[derive(Debug, Clone, Copy)]
pub struct SenderInfo {
    /// Our SSRC.
    pub ssrc: u32,
    /// NTP time of the report.
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_time: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// The largest compound packet [`write_compound`] builds: SR with one report block (52), SDES
/// with a 255-byte CNAME (268), BYE (8).
pub const MAX_COMPOUND: usize = 52 + 268 + 8;

/// Build a compound RTCP packet into `out`: SR (when `sent` is true) or RR, SDES CNAME (cut
/// to 255 bytes), and BYE if asked (RFC 3550 §6.4, §6.5, §6.6). Returns the length written;
/// nothing is allocated. Fails only when `out` is too small ([`MAX_COMPOUND`] always fits).
pub fn write_compound(
    me: SenderInfo,
    sent: bool,
    block: Option<ReceptionReport>,
    cname: &str,
    bye: bool,
    out: &mut [u8],
) -> Result<usize, RtcpError> {
    let mut w = Writer { out, at: 0 };
    let rc = u8::from(block.is_some());
    if sent {
        w.header(rc, PT_SR, 6 + 6 * usize::from(rc))?;
        w.u32(me.ssrc)?;
        w.u32((me.ntp >> 32) as u32)?;
        w.u32(me.ntp as u32)?;
        w.u32(me.rtp_time)?;
        w.u32(me.packets)?;
        w.u32(me.octets)?;
    } else {
        w.header(rc, PT_RR, 1 + 6 * usize::from(rc))?;
        w.u32(me.ssrc)?;
    }
    if let Some(b) = block {
        w.u32(b.ssrc)?;
        w.u32(u32::from(b.fraction_lost) << 24 | (b.total_lost & 0x00FF_FFFF))?;
        w.u32(b.last_sequence_number)?;
        w.u32(b.jitter)?;
        w.u32(b.last_sender_report)?;
        w.u32(b.delay)?;
    }
    // SDES: one chunk (SSRC, CNAME item, a null octet ending the item list, zeros to the next
    // 32-bit boundary).
    let text = &cname.as_bytes()[..cname.len().min(255)];
    let chunk = 4 + 2 + text.len() + 1;
    let chunk = chunk.div_ceil(4) * 4;
    w.header(1, PT_SDES, chunk / 4)?;
    w.u32(me.ssrc)?;
    w.bytes(&[SDES_CNAME, text.len() as u8])?;
    w.bytes(text)?;
    w.zeros(chunk - 6 - text.len())?;
    if bye {
        w.header(1, PT_BYE, 1)?;
        w.u32(me.ssrc)?;
    }
    Ok(w.at)
}

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
const SDES_CNAME: u8 = 1;

/// Big-endian writing into a caller's buffer.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), RtcpError> {
        let dst = self
            .out
            .get_mut(self.at..self.at + b.len())
            .ok_or(RtcpError::BufferTooSmall)?;
        dst.copy_from_slice(b);
        self.at += b.len();
        Ok(())
    }
    fn u32(&mut self, v: u32) -> Result<(), RtcpError> {
        self.bytes(&v.to_be_bytes())
    }
    fn zeros(&mut self, n: usize) -> Result<(), RtcpError> {
        let dst = self
            .out
            .get_mut(self.at..self.at + n)
            .ok_or(RtcpError::BufferTooSmall)?;
        dst.fill(0);
        self.at += n;
        Ok(())
    }
    /// A packet header: version 2, no padding, `count`, `pt`, and the length in 32-bit words
    /// after the header.
    fn header(&mut self, count: u8, pt: u8, words_after: usize) -> Result<(), RtcpError> {
        let len = u16::try_from(words_after).map_err(|_| RtcpError::BufferTooSmall)?;
        let [hi, lo] = len.to_be_bytes();
        self.bytes(&[0x80 | (count & 0x1F), pt, hi, lo])
    }
}

/// A reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceptionReport {
    /// The source this block is about.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit two's complement).
    pub total_lost: u32,
    /// Extended highest sequence number received.
    pub last_sequence_number: u32,
    /// Interarrival jitter, timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the last SR's NTP timestamp (LSR).
    pub last_sender_report: u32,
    /// Delay since the last SR, 1/65536 s (DLSR).
    pub delay: u32,
}

/// Why an RTCP datagram was rejected or could not be built.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    /// Not a valid (compound) RTCP packet.
    #[error("malformed rtcp packet")]
    Malformed,
    /// The output buffer cannot hold the packet.
    #[error("rtcp packet does not fit the buffer")]
    BufferTooSmall,
}

/// One thing an incoming compound packet says that the media path cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpItem {
    /// A sender report: (SSRC, NTP timestamp).
    SenderReport(u32, u64),
    /// A report block (from SR or RR): (reporter, block).
    ReportBlock(u32, ReceptionReport),
    /// An SSRC saying goodbye.
    Bye(u32),
}

/// What an incoming compound packet said, collected ([`parse_rtcp`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    /// Sender reports: (SSRC, NTP timestamp).
    pub sender_reports: Vec<(u32, u64)>,
    /// Report blocks about our stream: (reporter, block).
    pub report_blocks: Vec<(u32, ReceptionReport)>,
    /// SSRCs saying goodbye.
    pub bye: Vec<u32>,
}

/// Parse a compound RTCP datagram into a summary (allocates; tests and tools).
pub fn parse_rtcp(buf: &[u8]) -> Result<RtcpSummary, RtcpError> {
    let mut out = RtcpSummary::default();
    for_each_rtcp_item(buf, |item| match item {
        RtcpItem::SenderReport(ssrc, ntp) => out.sender_reports.push((ssrc, ntp)),
        RtcpItem::ReportBlock(from, b) => out.report_blocks.push((from, b)),
        RtcpItem::Bye(ssrc) => out.bye.push(ssrc),
    })?;
    Ok(out)
}

/// Parse a compound RTCP datagram (RFC 3550 §6.1) without allocating: the whole datagram is
/// checked first — every part version 2 with a length that fits, sender/receiver reports
/// long enough for their report count, BYE long enough for its source count — and only a
/// valid datagram hands its items to `f`. Other parts (SDES, APP, feedback, XR) are skipped
/// unread: a voice gateway has no use for them.
pub fn for_each_rtcp_item(buf: &[u8], mut f: impl FnMut(RtcpItem)) -> Result<(), RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Malformed);
    }
    walk(buf, |_, _, _| Ok(()))?;
    walk(buf, |pt, count, body| {
        match pt {
            PT_SR => {
                let ssrc = be32(body, 0);
                let ntp = u64::from(be32(body, 4)) << 32 | u64::from(be32(body, 8));
                f(RtcpItem::SenderReport(ssrc, ntp));
                blocks(ssrc, &body[24..], count, &mut f);
            }
            PT_RR => blocks(be32(body, 0), &body[4..], count, &mut f),
            PT_BYE => {
                for i in 0..count {
                    f(RtcpItem::Bye(be32(body, 4 * i)));
                }
            }
            _ => {}
        }
        Ok(())
    })
}

/// Every part of a compound packet: (payload type, count, body after the 4-byte header), the
/// body checked long enough for what [`for_each_rtcp_item`] reads of it.
fn walk(
    buf: &[u8],
    mut part: impl FnMut(u8, usize, &[u8]) -> Result<(), RtcpError>,
) -> Result<(), RtcpError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let [first, pt, hi, lo, ..] = *rest else {
            return Err(RtcpError::Malformed);
        };
        if first >> 6 != 2 {
            return Err(RtcpError::Malformed);
        }
        let len = (usize::from(u16::from_be_bytes([hi, lo])) + 1) * 4;
        let Some(whole) = rest.get(..len) else {
            return Err(RtcpError::Malformed);
        };
        let count = usize::from(first & 0x1F);
        let body = &whole[4..];
        let needed = match pt {
            PT_SR => 24 + 24 * count,
            PT_RR => 4 + 24 * count,
            PT_BYE => 4 * count,
            _ => 0,
        };
        if body.len() < needed {
            return Err(RtcpError::Malformed);
        }
        part(pt, count, body)?;
        rest = &rest[len..];
    }
    Ok(())
}

/// The `count` report blocks at the start of `b` (its length checked by [`walk`]).
fn blocks(reporter: u32, b: &[u8], count: usize, f: &mut impl FnMut(RtcpItem)) {
    for i in 0..count {
        let o = 24 * i;
        let lost = be32(b, o + 4);
        f(RtcpItem::ReportBlock(
            reporter,
            ReceptionReport {
                ssrc: be32(b, o),
                fraction_lost: (lost >> 24) as u8,
                total_lost: lost & 0x00FF_FFFF,
                last_sequence_number: be32(b, o + 8),
                jitter: be32(b, o + 12),
                last_sender_report: be32(b, o + 16),
                delay: be32(b, o + 20),
            },
        ));
    }
}

/// The big-endian u32 at `at` (the caller checked the length; a short slice reads zeros).
fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|x| <[u8; 4]>::try_from(x).ok())
        .map_or(0, u32::from_be_bytes)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a fixed origin for virtual time
mod tests {
    use super::*;

    #[test]
    fn loss_and_fraction_per_rfc3550_a3() {
        let t = Instant::now();
        let mut s = ReceiverStats::new(7, 100);
        // Probation: two in sequence validate the source.
        let mut ok = 0;
        for seq in 100..200u16 {
            if seq % 10 == 3 {
                continue; // 10 % loss
            }
            if s.update_seq(seq) {
                ok += 1;
            }
        }
        assert!(ok >= 88);
        let b = s.report_block(t);
        assert_eq!(b.last_sequence_number, 199);
        assert_eq!(b.total_lost, 10);
        assert!(
            (b.fraction_lost as i32 - 26).abs() <= 1,
            "{}",
            b.fraction_lost
        );
    }

    #[test]
    fn sequence_wrap_extends() {
        let mut s = ReceiverStats::new(1, 65530);
        for i in 0..20u16 {
            s.update_seq(65530u16.wrapping_add(i));
        }
        assert_eq!(s.extended_max(), 65536 + 13);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn compound_round_trip_with_bye() {
        let t = Instant::now();
        let mut s = ReceiverStats::new(0xAB, 1);
        s.update_seq(1);
        s.update_seq(2);
        let me = SenderInfo {
            ssrc: 0x1234,
            ntp: 0x0102_0304_0506_0708,
            rtp_time: 160,
            packets: 10,
            octets: 1600,
        };
        let mut buf = [0u8; MAX_COMPOUND];
        let n = write_compound(
            me,
            true,
            Some(s.report_block(t)),
            "trunkline",
            true,
            &mut buf,
        )
        .unwrap();
        let raw = &buf[..n];
        let sum = parse_rtcp(raw).unwrap();
        assert_eq!(sum.sender_reports, vec![(0x1234, 0x0102_0304_0506_0708)]);
        assert_eq!(sum.report_blocks.len(), 1);
        assert_eq!(sum.report_blocks[0].1.ssrc, 0xAB);
        assert_eq!(sum.bye, vec![0x1234]);
        assert!(parse_rtcp(&raw[..7]).is_err());
    }

    #[test]
    fn malformed_feedback_parts_are_skipped_not_parsed() {
        // The `rtcp` fuzz target's find: a transport-layer NACK (RTPFB, FMT 1) whose body is
        // shorter than the crate expects made it panic; such parts are now never parsed.
        let nack = [0x81, 205, 0x00, 0x01, 0, 0, 0, 0];
        assert_eq!(parse_rtcp(&nack), Ok(RtcpSummary::default()));
        // (The two inputs the fuzzer found are in fuzz/corpus/rtcp and fuzz/corpus/rtp, replayed
        // by tests/fuzz_corpus.rs.)
        // Headers that do not add up are still refused.
        assert_eq!(
            parse_rtcp(&[0x81, 201, 0x00, 0x07, 0, 0, 0, 1]),
            Err(RtcpError::Malformed)
        );
        assert_eq!(
            parse_rtcp(&[0x41, 201, 0x00, 0x01, 0, 0, 0, 1]),
            Err(RtcpError::Malformed)
        );
        assert_eq!(parse_rtcp(&[]), Err(RtcpError::Malformed));
    }

    /// An independent reader and writer: the webrtc-rs `rtcp` crate (which the media path used
    /// before) parses what we write field for field, and what it writes parses here the same.
    #[test]
    fn interoperates_with_the_webrtc_rs_rtcp_crate() {
        use rtcp::compound_packet::CompoundPacket;
        use webrtc_util::marshal::{Marshal, Unmarshal};

        let block = ReceptionReport {
            ssrc: 0xAB,
            fraction_lost: 26,
            total_lost: 0x00FF_FFF0, // −16 in 24 bits
            last_sequence_number: 70_000,
            jitter: 33,
            last_sender_report: 0x0304_0506,
            delay: 65_536 * 3,
        };
        let me = SenderInfo {
            ssrc: 0x1234,
            ntp: 0x0102_0304_0506_0708,
            rtp_time: 160,
            packets: 10,
            octets: 1600,
        };
        let as_crate = |b: &ReceptionReport| rtcp::reception_report::ReceptionReport {
            ssrc: b.ssrc,
            fraction_lost: b.fraction_lost,
            total_lost: b.total_lost,
            last_sequence_number: b.last_sequence_number,
            jitter: b.jitter,
            last_sender_report: b.last_sender_report,
            delay: b.delay,
        };
        for (sent, block, cname, bye) in [
            (true, Some(block), "trunkline", true),
            (false, None, "a", false),
            (false, Some(block), "abcd", false),
            (true, None, &*"x".repeat(300), true),
        ] {
            let mut buf = [0u8; MAX_COMPOUND];
            let n = write_compound(me, sent, block, cname, bye, &mut buf).unwrap();
            assert_eq!(n % 4, 0);
            let mut raw = bytes::Bytes::copy_from_slice(&buf[..n]);
            let compound = CompoundPacket::unmarshal(&mut raw).unwrap();
            compound.validate().unwrap(); // RFC 3550 §6.1: SR/RR first, then an SDES with a CNAME
            assert_eq!(
                compound.cname().unwrap(),
                &cname.as_bytes()[..cname.len().min(255)]
            );
            let first = compound.0[0].as_any();
            let reports = if sent {
                let sr = first
                    .downcast_ref::<rtcp::sender_report::SenderReport>()
                    .unwrap();
                assert_eq!((sr.ssrc, sr.ntp_time, sr.rtp_time), (0x1234, me.ntp, 160));
                assert_eq!((sr.packet_count, sr.octet_count), (10, 1600));
                sr.reports.clone()
            } else {
                let rr = first
                    .downcast_ref::<rtcp::receiver_report::ReceiverReport>()
                    .unwrap();
                assert_eq!(rr.ssrc, 0x1234);
                rr.reports.clone()
            };
            assert_eq!(reports, block.iter().map(as_crate).collect::<Vec<_>>());
            let byes: Vec<u32> = compound
                .0
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<rtcp::goodbye::Goodbye>())
                .flat_map(|g| g.sources.clone())
                .collect();
            assert_eq!(byes, if bye { vec![0x1234] } else { vec![] });

            // The other way: the crate's bytes (with the SDES it writes) parse here.
            let theirs = compound.marshal().unwrap();
            let sum = parse_rtcp(&theirs).unwrap();
            assert_eq!(sum, parse_rtcp(&buf[..n]).unwrap());
            assert_eq!(
                sum.report_blocks,
                block.iter().map(|b| (0x1234, *b)).collect::<Vec<_>>()
            );
            assert_eq!(
                sum.sender_reports,
                if sent { vec![(0x1234, me.ntp)] } else { vec![] }
            );
            // A cut inside a part is refused (a cut between parts is a shorter compound).
            for cut in (1..n).filter(|c| c % 4 != 0) {
                assert_eq!(
                    parse_rtcp(&buf[..cut]),
                    Err(RtcpError::Malformed),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn report_counts_longer_than_the_part_are_refused() {
        // An RR claiming two blocks with room for one; a BYE claiming 3 sources in one word.
        let mut rr = vec![0x82, 201, 0x00, 0x07];
        rr.extend_from_slice(&[0u8; 28]);
        assert_eq!(parse_rtcp(&rr), Err(RtcpError::Malformed));
        assert_eq!(
            parse_rtcp(&[0x83, 203, 0x00, 0x01, 0, 0, 0, 1]),
            Err(RtcpError::Malformed)
        );
        // The same with a count that fits is read.
        rr[0] = 0x81;
        assert_eq!(parse_rtcp(&rr).unwrap().report_blocks.len(), 1);
        assert_eq!(
            write_compound(
                SenderInfo {
                    ssrc: 1,
                    ntp: 0,
                    rtp_time: 0,
                    packets: 0,
                    octets: 0
                },
                true,
                None,
                "x",
                false,
                &mut [0u8; 30],
            ),
            Err(RtcpError::BufferTooSmall)
        );
    }
}
