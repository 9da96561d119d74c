//! Capture files: read pcap and pcapng (Ethernet, Linux cooked SLL, raw IP; IPv4/IPv6 UDP) with
//! `pcap-file` and `etherparse`, and pick out RTP streams heuristically (no SIP needed): RTP
//! version 2, a plausible payload type (static audio 0–34 or dynamic 96–127, never the RTCP range),
//! and a consistent SSRC / sequence progression. Streams are keyed by SSRC, like Wireshark's
//! inventory; DTMF is found on any dynamic payload type whose packets are RFC 4733 events.
//!
//! Times are offsets from the first packet of the capture, so streams can be replayed with their
//! original timing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use thiserror::Error;

use crate::dtmf::{DtmfDigit, DtmfReceiver, TelephoneEvent};
use crate::rtp::{RtpHeader, is_rtcp, parse_rtp};

/// Capture reading errors.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Not a pcap/pcapng file, or corrupt.
    #[error("capture format: {0}")]
    Format(String),
}

/// One UDP datagram from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Offset from the first packet of the capture.
    pub time: Duration,
    /// Source.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// All UDP datagrams of a capture file.
pub fn read_udp_file(path: impl AsRef<Path>) -> Result<Vec<UdpDatagram>, CaptureError> {
    let data = std::fs::read(path)?;
    read_udp(&data)
}

/// All UDP datagrams of a capture held in memory.
pub fn read_udp(data: &[u8]) -> Result<Vec<UdpDatagram>, CaptureError> {
    let mut frames: Vec<(Duration, DataLink, Vec<u8>)> = Vec::new();
    let magic = data.get(..4).ok_or_else(|| fmt_err("file too short"))?;
    if magic == [0x0A, 0x0D, 0x0D, 0x0A] {
        read_pcapng(data, &mut frames)?;
    } else {
        read_pcap(data, &mut frames)?;
    }
    let start = frames.iter().map(|f| f.0).min().unwrap_or_default();
    let mut out = Vec::new();
    for (t, link, bytes) in frames {
        if let Some((src, dst, payload)) = udp_of(link, &bytes) {
            out.push(UdpDatagram {
                time: t.saturating_sub(start),
                src,
                dst,
                payload: payload.to_vec(),
            });
        }
    }
    Ok(out)
}

fn fmt_err(e: impl ToString) -> CaptureError {
    CaptureError::Format(e.to_string())
}

fn read_pcap(
    data: &[u8],
    out: &mut Vec<(Duration, DataLink, Vec<u8>)>,
) -> Result<(), CaptureError> {
    let mut r = PcapReader::new(data).map_err(fmt_err)?;
    let link = r.header().datalink;
    while let Some(p) = r.next_packet() {
        let p = match p {
            Ok(p) => p,
            Err(_) => break, // truncated last packet: keep what was read
        };
        out.push((p.timestamp, link, p.data.into_owned()));
    }
    Ok(())
}

fn read_pcapng(
    data: &[u8],
    out: &mut Vec<(Duration, DataLink, Vec<u8>)>,
) -> Result<(), CaptureError> {
    let mut r = PcapNgReader::new(data).map_err(fmt_err)?;
    // Per interface: link type and timestamp unit in nanoseconds (if_tsresol, default µs).
    let mut ifaces: Vec<(DataLink, f64)> = Vec::new();
    while let Some(b) = r.next_block() {
        let b = match b {
            Ok(b) => b,
            Err(_) => break,
        };
        match b {
            Block::SectionHeader(_) => ifaces.clear(),
            Block::InterfaceDescription(idb) => {
                let mut unit_ns = 1000.0;
                for o in &idb.options {
                    if let pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfTsResol(res) = o {
                        let v = (*res & 0x7F) as i32;
                        unit_ns = if res & 0x80 != 0 {
                            1e9 / 2f64.powi(v)
                        } else {
                            1e9 / 10f64.powi(v)
                        };
                    }
                }
                ifaces.push((idb.linktype, unit_ns));
            }
            Block::EnhancedPacket(epb) => {
                // pcap-file reports the raw 64-bit count as nanoseconds; rescale by if_tsresol.
                let Some(&(link, unit)) = ifaces.get(epb.interface_id as usize) else {
                    continue;
                };
                let raw = epb.timestamp.as_nanos() as f64;
                out.push((
                    Duration::from_nanos((raw * unit) as u64),
                    link,
                    epb.data.into_owned(),
                ));
            }
            Block::SimplePacket(spb) => {
                if let Some(&(link, _)) = ifaces.first() {
                    out.push((Duration::ZERO, link, spb.data.into_owned()));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn udp_of(link: DataLink, bytes: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(bytes).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(bytes).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(bytes).ok()?,
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(bytes.get(4..)?).ok()?,
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(bytes.get(20..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip): (IpAddr, IpAddr) = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => {
            if v4.is_payload_fragmented() {
                return None;
            }
            (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
            )
        }
        NetSlice::Ipv6(v6) => {
            if v6.is_payload_fragmented() {
                return None;
            }
            (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
            )
        }
        _ => return None,
    };
    match sliced.transport? {
        TransportSlice::Udp(u) => Some((
            SocketAddr::new(src_ip, u.source_port()),
            SocketAddr::new(dst_ip, u.destination_port()),
            u.payload(),
        )),
        _ => None,
    }
}

/// One RTP packet of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPacket {
    /// Offset from the capture start.
    pub time: Duration,
    /// Header fields.
    pub header: RtpHeader,
    /// Source address of this packet.
    pub src: SocketAddr,
    /// Destination address of this packet.
    pub dst: SocketAddr,
    /// The whole RTP packet as captured (header included).
    pub packet: Vec<u8>,
    /// Offset of the payload in `packet`.
    pub payload_offset: usize,
    /// Payload length.
    pub payload_len: usize,
}

impl StreamPacket {
    /// The RTP payload.
    pub fn payload(&self) -> &[u8] {
        &self.packet[self.payload_offset..self.payload_offset + self.payload_len]
    }
}

/// An RTP stream (all packets with one SSRC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpStream {
    /// SSRC.
    pub ssrc: u32,
    /// Source of the first packet.
    pub src: SocketAddr,
    /// Destination of the first packet.
    pub dst: SocketAddr,
    /// Packets in capture order.
    pub packets: Vec<StreamPacket>,
}

/// Summary figures of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSummary {
    /// Packets per payload type.
    pub payload_types: BTreeMap<u8, u32>,
    /// First packet time.
    pub start: Duration,
    /// Last packet time.
    pub end: Duration,
    /// Expected minus received (RFC 3550 A.3, by extended sequence numbers).
    pub lost: i64,
    /// RFC 3550 interarrival jitter at the end, milliseconds (8 kHz clock).
    pub jitter_ms: f64,
    /// The payload type carrying RFC 4733 events, if one was recognised.
    pub telephone_event_pt: Option<u8>,
}

impl RtpStream {
    /// Packet counts, timing, loss and jitter.
    pub fn summary(&self) -> StreamSummary {
        let mut pts = BTreeMap::new();
        for p in &self.packets {
            *pts.entry(p.header.payload_type).or_insert(0u32) += 1;
        }
        // Loss from extended sequence numbers.
        let mut ext_min = i64::MAX;
        let mut ext_max = i64::MIN;
        let mut last: Option<(u16, i64)> = None;
        let mut jitter = 0.0f64;
        let mut prev_transit: Option<f64> = None;
        for p in &self.packets {
            let ext = match last {
                None => p.header.sequence as i64,
                Some((s, e)) => e + p.header.sequence.wrapping_sub(s) as i16 as i64,
            };
            last = Some((p.header.sequence, ext));
            ext_min = ext_min.min(ext);
            ext_max = ext_max.max(ext);
            let arrival = p.time.as_secs_f64() * 8000.0;
            let transit = arrival - p.header.timestamp as f64;
            if let Some(prev) = prev_transit {
                let mut d = (transit - prev).abs();
                if d > 2f64.powi(31) {
                    d = (d - 2f64.powi(32)).abs();
                }
                jitter += (d - jitter) / 16.0;
            }
            prev_transit = Some(transit);
        }
        let expected = if self.packets.is_empty() {
            0
        } else {
            ext_max - ext_min + 1
        };
        StreamSummary {
            payload_types: pts,
            start: self.packets.first().map(|p| p.time).unwrap_or_default(),
            end: self.packets.last().map(|p| p.time).unwrap_or_default(),
            lost: expected - self.packets.len() as i64,
            jitter_ms: jitter / 8.0,
            telephone_event_pt: self.telephone_event_pt(),
        }
    }

    /// A dynamic payload type all of whose packets are 4-byte-multiple RFC 4733 payloads.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        let mut by_pt: BTreeMap<u8, (u32, u32)> = BTreeMap::new();
        for p in &self.packets {
            let pt = p.header.payload_type;
            if !(96..=127).contains(&pt) {
                continue;
            }
            let e = by_pt.entry(pt).or_default();
            e.0 += 1;
            let pl = p.payload();
            if !pl.is_empty() && pl.len() % 4 == 0 {
                e.1 += 1;
            }
        }
        by_pt
            .into_iter()
            .filter(|(_, (n, ok))| *n > 0 && ok == n)
            .max_by_key(|(_, (n, _))| *n)
            .map(|(pt, _)| pt)
    }

    /// DTMF digits carried by the stream, timed by their first end packet.
    pub fn dtmf_digits(&self) -> Vec<DtmfDigit> {
        let Some(pt) = self.telephone_event_pt() else {
            return Vec::new();
        };
        let mut rx = DtmfReceiver::new();
        let mut out = Vec::new();
        for p in &self.packets {
            rx.handle_timeout(p.time);
            if p.header.payload_type == pt
                && let Ok(ev) = TelephoneEvent::parse(p.payload())
            {
                rx.handle(p.header.ssrc, p.header.timestamp, ev, p.time);
            }
            out.extend(std::iter::from_fn(|| rx.poll()));
        }
        if let Some(last) = self.packets.last() {
            rx.handle_timeout(last.time + crate::dtmf::DTMF_END_TIMEOUT);
            out.extend(std::iter::from_fn(|| rx.poll()));
        }
        out
    }
}

fn plausible_pt(pt: u8) -> bool {
    pt <= 34 || (96..=127).contains(&pt)
}

/// Find the RTP streams among captured datagrams.
pub fn extract_rtp_streams(datagrams: &[UdpDatagram]) -> Vec<RtpStream> {
    let mut groups: BTreeMap<u32, RtpStream> = BTreeMap::new();
    let mut order: Vec<u32> = Vec::new();
    for d in datagrams {
        if is_rtcp(&d.payload) {
            continue;
        }
        let Ok(pkt) = parse_rtp(&d.payload) else {
            continue;
        };
        if !plausible_pt(pkt.header.payload_type) || pkt.payload.is_empty() {
            continue;
        }
        let payload_offset = pkt.payload.as_ptr() as usize - d.payload.as_ptr() as usize;
        let sp = StreamPacket {
            time: d.time,
            header: pkt.header,
            src: d.src,
            dst: d.dst,
            payload_offset,
            payload_len: pkt.payload.len(),
            packet: d.payload.clone(),
        };
        groups
            .entry(pkt.header.ssrc)
            .or_insert_with(|| {
                order.push(pkt.header.ssrc);
                RtpStream {
                    ssrc: pkt.header.ssrc,
                    src: d.src,
                    dst: d.dst,
                    packets: Vec::new(),
                }
            })
            .packets
            .push(sp);
    }
    let mut out = Vec::new();
    for ssrc in order {
        let Some(s) = groups.remove(&ssrc) else {
            continue;
        };
        if consistent(&s) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| (s.packets.first().map(|p| p.time), s.ssrc));
    out
}

/// A group is a stream when its sequence numbers mostly advance by small steps; a lone packet
/// is accepted only with a static audio payload type between even ports (RFC 3550 §11).
fn consistent(s: &RtpStream) -> bool {
    let n = s.packets.len();
    if n == 1 {
        let p = &s.packets[0];
        return p.header.payload_type <= 34
            && p.src.port().is_multiple_of(2)
            && p.dst.port().is_multiple_of(2);
    }
    let mut good = 0usize;
    for w in s.packets.windows(2) {
        let d = w[1].header.sequence.wrapping_sub(w[0].header.sequence);
        // Small forward steps, reordering, or an exact duplicate seen on another leg.
        if d <= 100 || d >= u16::MAX - 100 {
            good += 1;
        }
    }
    good * 10 >= (n - 1) * 8
}

fn pt_name(pt: u8, te: Option<u8>) -> String {
    match pt {
        0 => "PCMU".into(),
        8 => "PCMA".into(),
        13 => "CN".into(),
        _ if Some(pt) == te => format!("telephone-event({pt})"),
        _ => format!("PT{pt}"),
    }
}

/// The `rtp-inspect` report of a capture: a header line, one line per RTP stream (SSRC,
/// addresses, payload-type counts, packets, start, duration, loss, jitter), then one
/// `dtmf <digit> <seconds>` line per digit (seconds from the capture start, 3 decimals).
pub fn inspect_report(path: impl AsRef<Path>) -> Result<String, CaptureError> {
    use std::fmt::Write;
    let path = path.as_ref();
    let udp = read_udp_file(path)?;
    let streams = extract_rtp_streams(&udp);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} UDP datagrams, {} RTP streams",
        path.display(),
        udp.len(),
        streams.len()
    );
    let mut digits = Vec::new();
    for s in &streams {
        let sum = s.summary();
        let pts: Vec<String> = sum
            .payload_types
            .iter()
            .map(|(pt, n)| format!("{}x{n}", pt_name(*pt, sum.telephone_event_pt)))
            .collect();
        let _ = writeln!(
            out,
            "stream ssrc=0x{:08x} {}>{} payloads={} packets={} start={:.3}s duration={:.3}s lost={} jitter={:.2}ms",
            s.ssrc,
            s.src,
            s.dst,
            pts.join("+"),
            s.packets.len(),
            sum.start.as_secs_f64(),
            sum.end.saturating_sub(sum.start).as_secs_f64(),
            sum.lost,
            sum.jitter_ms,
        );
        digits.extend(s.dtmf_digits());
    }
    digits.sort_by_key(|d| d.at);
    for d in digits {
        let _ = writeln!(out, "dtmf {} {:.3}", d.digit, d.at.as_secs_f64());
    }
    Ok(out)
}

/// The audio bytes of a WAV file holding 8 kHz mono G.711 µ-law (format tag 7), or why not.
/// Used to play the answering-machine set (`tests/data/amd/`) as a callee.
pub fn wav_ulaw_data(wav: &[u8]) -> Result<&[u8], &'static str> {
    if wav.len() < 12 || &wav[0..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file");
    }
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= wav.len() {
        let id = &wav[pos..pos + 4];
        let len =
            u32::from_le_bytes([wav[pos + 4], wav[pos + 5], wav[pos + 6], wav[pos + 7]]) as usize;
        let body = &wav[pos + 8..(pos + 8).saturating_add(len).min(wav.len())];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err("short fmt chunk");
                }
                let tag = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                if tag != 7 || channels != 1 || rate != 8000 {
                    return Err("not 8 kHz mono µ-law");
                }
                format_ok = true;
            }
            b"data" if format_ok => return Ok(body),
            b"data" => return Err("data before fmt"),
            _ => {}
        }
        pos += 8 + len + (len & 1);
    }
    Err("no data chunk")
}
