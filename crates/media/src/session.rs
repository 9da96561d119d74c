//! One call's media: [`MediaSession`] combines RTP receive and send state, the jitter buffer, the
//! playout pacer, RFC 4733 DTMF in both directions, RTCP (RFC 3550 §6), symmetric RTP latching
//! (RFC 4961 / "comedia") with a hijack guard, and optional SRTP (RFC 3711), behind a sans-IO API:
//!
//! - inputs: [`MediaSession::handle_rtp`], [`MediaSession::handle_rtcp`],
//!   [`MediaSession::handle_timeout`], commands (`push_agent_audio`, `flush_agent_audio*`,
//!   `send_dtmf`, `close`);
//! - outputs: [`MediaSession::poll_transmit`] (writes into the caller's buffer),
//!   [`MediaSession::poll_event`], [`MediaSession::poll_timeout`], and the pull of received audio
//!   [`MediaSession::pop_audio`] once per 20 ms.
//!
//! After any input, drain `poll_transmit` and `poll_event`, then sleep until `poll_timeout`.
//!
//! RTP handling (RFC 3550 §5, RFC 3551): the payload-type map comes from SDP, so PCMU/PCMA,
//! telephone-event and comfort noise (PT 13, RFC 3389: tolerated and counted, the buffer plays
//! silence) can be on any number. Audio of the other G.711 law is transcoded on arrival. 20 and
//! 30 ms (or any) packetisation is accepted. A new SSRC or a timestamp jump re-synchronises the
//! jitter buffer without dropping buffered audio.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::dtmf::{DtmfDigit, DtmfReceiver, DtmfSender, TelephoneEvent};
use crate::g711::G711;
use crate::jitter::{FRAME, Frame, JitterBuffer, JitterConfig, JitterStats};
use crate::pacer::{Pacer, PacerConfig, PacerStats, TICK};
use crate::rtcp::{
    MAX_COMPOUND, ReceiverStats, RtcpItem, SenderInfo, WallClock, for_each_rtcp_item,
    write_compound,
};
use crate::rtp::{RtpHeader, is_rtcp, parse_rtp, write_rtp};
use crate::srtp::{SdesKey, SrtpError, SrtpSession, Transform};

/// Payload types negotiated in SDP (`None` = not negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadMap {
    /// PCMU.
    pub pcmu: Option<u8>,
    /// PCMA.
    pub pcma: Option<u8>,
    /// telephone-event/8000.
    pub telephone_event: Option<u8>,
    /// CN/8000.
    pub comfort_noise: Option<u8>,
}

impl Default for PayloadMap {
    fn default() -> Self {
        PayloadMap {
            pcmu: Some(0),
            pcma: Some(8),
            telephone_event: Some(101),
            comfort_noise: Some(13),
        }
    }
}

impl PayloadMap {
    /// The same map with another comfort-noise payload type.
    pub fn with_cn(mut self, cn: Option<u8>) -> Self {
        self.comfort_noise = cn;
        self
    }

    /// Build the map from an SDP media description: the `m=` line's format list and its
    /// `a=rtpmap` entries as `(payload type, "encoding/clock[/channels]")`. Static types 0, 8
    /// and 13 need no rtpmap (RFC 3551 §6); names are case-insensitive; only 8 kHz clocks count.
    pub fn from_sdp(formats: &[u8], rtpmaps: &[(u8, &str)]) -> PayloadMap {
        let mut m = PayloadMap {
            pcmu: None,
            pcma: None,
            telephone_event: None,
            comfort_noise: None,
        };
        for &pt in formats {
            let name = match rtpmaps.iter().find(|(p, _)| *p == pt) {
                Some((_, enc)) => {
                    let mut parts = enc.split('/');
                    let name = parts.next().unwrap_or_default().to_ascii_lowercase();
                    if parts.next().is_some_and(|clock| clock.trim() != "8000") {
                        continue;
                    }
                    name
                }
                None => match pt {
                    0 => "pcmu".into(),
                    8 => "pcma".into(),
                    13 => "cn".into(),
                    _ => continue,
                },
            };
            let slot = match name.as_str() {
                "pcmu" => &mut m.pcmu,
                "pcma" => &mut m.pcma,
                "telephone-event" => &mut m.telephone_event,
                "cn" => &mut m.comfort_noise,
                _ => continue,
            };
            slot.get_or_insert(pt);
        }
        m
    }
}

/// Session configuration. Randomness (SSRC, first sequence number and timestamp) is injected.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The law we send and deliver from [`MediaSession::pop_audio`].
    pub law: G711,
    /// Payload types from SDP.
    pub payload_types: PayloadMap,
    /// Our SSRC.
    pub local_ssrc: u32,
    /// First RTP sequence number.
    pub initial_sequence: u16,
    /// First RTP timestamp.
    pub initial_timestamp: u32,
    /// Peer's RTP address from SDP.
    pub remote_rtp: Option<SocketAddr>,
    /// Peer's RTCP address from SDP (`a=rtcp`); default RTP port + 1, or the RTP address with mux.
    pub remote_rtcp: Option<SocketAddr>,
    /// RTCP multiplexed on the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// Latch the send address to the source of received RTP (symmetric RTP).
    pub symmetric_rtp: bool,
    /// Another source may take over only after the latched one was silent this long…
    pub relatch_after: Duration,
    /// …and after sending this many consecutive in-sequence packets.
    pub relatch_packets: u32,
    /// Jitter buffer bounds.
    pub jitter: JitterConfig,
    /// Pacer queue limit in bytes.
    pub max_playout_queue: usize,
    /// RTCP report interval (each actual interval is randomised in [0.5, 1.5] × this,
    /// RFC 3550 §6.3.1).
    pub rtcp_interval: Duration,
    /// Seed for the RTCP interval randomisation (injected; defaults to the SSRC).
    pub rtcp_seed: u64,
    /// Report [`MediaEvent::RtpTimeout`] after this long without valid RTP.
    pub rtp_timeout: Option<Duration>,
    /// RTCP SDES CNAME.
    pub cname: String,
    /// Wall-clock anchor for RTCP NTP timestamps.
    pub wallclock: WallClock,
    /// SDES-SRTP keys: (ours, theirs).
    pub srtp: Option<(SdesKey, SdesKey)>,
}

impl MediaConfig {
    /// Defaults: symmetric RTP, default payload types, 5 s RTCP, 30 s RTP timeout.
    pub fn new(law: G711, local_ssrc: u32, wallclock: WallClock) -> Self {
        MediaConfig {
            law,
            payload_types: PayloadMap::default(),
            local_ssrc,
            initial_sequence: 0,
            initial_timestamp: 0,
            remote_rtp: None,
            remote_rtcp: None,
            rtcp_mux: false,
            symmetric_rtp: true,
            relatch_after: Duration::from_secs(2),
            relatch_packets: 5,
            jitter: JitterConfig::default(),
            max_playout_queue: PacerConfig::new(law).max_queue,
            rtcp_interval: Duration::from_secs(5),
            rtcp_seed: local_ssrc as u64,
            rtp_timeout: Some(Duration::from_secs(30)),
            cname: "trunkline".into(),
            wallclock,
            srtp: None,
        }
    }
}

/// Session set-up errors.
#[derive(Debug, Error)]
pub enum MediaError {
    /// SRTP keys unusable.
    #[error("srtp: {0}")]
    Srtp(#[from] SrtpError),
}

/// Something the call layer should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A DTMF key press (RFC 4733).
    Dtmf(DtmfDigit),
    /// We now send to this address (symmetric RTP latch or re-latch).
    RemoteLatched(SocketAddr),
    /// The peer's SSRC changed.
    SsrcChanged {
        /// Previous SSRC.
        old: u32,
        /// New SSRC.
        new: u32,
    },
    /// The peer sent RTCP BYE.
    Bye(u32),
    /// No valid RTP for the configured timeout.
    RtpTimeout,
}

/// Kind of an outgoing datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// RTP (or SRTP).
    Rtp,
    /// RTCP (or SRTCP).
    Rtcp,
}

/// A datagram written into the caller's buffer by [`MediaSession::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// RTP or RTCP.
    pub kind: PacketKind,
    /// This RTP packet replaces the previous one (same sequence number and timestamp: late
    /// agent audio instead of the silence built at the tick, see
    /// [`MediaSession::allow_late_audio_until`]). If the previous one already left, drop this
    /// one and call [`MediaSession::late_audio_missed`].
    pub replaces_previous: bool,
}

/// Counters for the call record and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaStats {
    /// Valid RTP packets accepted.
    pub rtp_received: u64,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// RTCP packets received / sent.
    pub rtcp_received: u64,
    /// RTCP packets sent.
    pub rtcp_sent: u64,
    /// Datagrams that were not valid RTP/RTCP.
    pub malformed: u64,
    /// Packets with a payload type not in the map.
    pub unknown_payload_type: u64,
    /// Packets dropped because they came from a source other than the latched one.
    pub foreign_source: u64,
    /// SRTP/SRTCP authentication or replay failures.
    pub srtp_failures: u64,
    /// Comfort-noise packets.
    pub comfort_noise: u64,
    /// Telephone-event packets.
    pub dtmf_packets: u64,
    /// Frames that could not be sent for lack of a destination.
    pub unsent_frames: u64,
    /// Cumulative packets lost (RFC 3550 A.3) of the current source.
    pub packets_lost: i64,
    /// Interarrival jitter of the current source, milliseconds.
    pub jitter_ms: f64,
    /// Jitter buffer.
    pub jitter_buffer: JitterStats,
    /// Pacer.
    pub pacer: PacerStats,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    from: SocketAddr,
    ssrc: u32,
    seq: u16,
    count: u32,
}

/// One call's media session.
#[derive(Debug)]
pub struct MediaSession {
    law: G711,
    pt: PayloadMap,
    ssrc: u32,
    seq: u16,
    symmetric: bool,
    relatch_after: Duration,
    relatch_packets: u32,
    rtcp_interval: Duration,
    rtcp_rng: u64,
    rtcp_mux: bool,
    rtp_timeout: Option<Duration>,
    cname: String,
    wallclock: WallClock,

    jitter: JitterBuffer,
    pacer: Pacer,
    dtmf_rx: DtmfReceiver,
    dtmf_tx: Option<DtmfSender>,
    dtmf_queue: VecDeque<(char, u16)>,
    rx: Option<ReceiverStats>,
    /// Boxed: the two crypto contexts are ~1.2 KB, held by every plain-RTP call if inline.
    srtp: Option<Box<SrtpSession>>,

    remote_rtp: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    rtcp_learned: bool,
    latched: Option<SocketAddr>,
    last_from_latched: Option<Instant>,
    candidate: Option<Candidate>,

    epoch: Option<Instant>,
    last_rx: Option<Instant>,
    timeout_reported: bool,
    rtcp_next: Option<Instant>,
    bye_pending: bool,
    closed: bool,
    last_sent_ts: u32,
    octets_sent: u32,
    /// The audio of the last RTP packet built (silence for a DTMF tick), for recording.
    last_sent_audio: Option<[u8; FRAME]>,
    /// Whether to keep `last_sent_audio` (recorded calls only).
    keep_sent_audio: bool,
    /// The last RTP packet built was pacer silence (its sequence number): late audio may
    /// replace it until `late_until`.
    late_seq: Option<u16>,
    late_until: Option<Instant>,

    scratch: Vec<u8>,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
}

impl MediaSession {
    /// Create a session (not yet started).
    pub fn new(cfg: MediaConfig) -> Result<Self, MediaError> {
        let srtp = match &cfg.srtp {
            Some((local, remote)) => Some(Box::new(SrtpSession::new(local, remote)?)),
            None => None,
        };
        let mut pc = PacerConfig::new(cfg.law);
        pc.max_queue = cfg.max_playout_queue;
        Ok(MediaSession {
            law: cfg.law,
            pt: cfg.payload_types,
            ssrc: cfg.local_ssrc,
            seq: cfg.initial_sequence,
            symmetric: cfg.symmetric_rtp,
            relatch_after: cfg.relatch_after,
            relatch_packets: cfg.relatch_packets.max(1),
            rtcp_interval: cfg.rtcp_interval,
            rtcp_rng: cfg.rtcp_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            rtcp_mux: cfg.rtcp_mux,
            rtp_timeout: cfg.rtp_timeout,
            cname: cfg.cname,
            wallclock: cfg.wallclock,
            jitter: JitterBuffer::new(cfg.law, cfg.jitter),
            pacer: {
                let mut p = Pacer::new(pc);
                p.start_ts_hint(cfg.initial_timestamp);
                p
            },
            dtmf_rx: DtmfReceiver::new(),
            dtmf_tx: None,
            dtmf_queue: VecDeque::new(),
            rx: None,
            srtp,
            remote_rtp: cfg.remote_rtp,
            remote_rtcp: cfg.remote_rtcp,
            rtcp_learned: false,
            latched: None,
            last_from_latched: None,
            candidate: None,
            epoch: None,
            last_rx: None,
            timeout_reported: false,
            rtcp_next: None,
            bye_pending: false,
            closed: false,
            last_sent_ts: cfg.initial_timestamp,
            octets_sent: 0,
            last_sent_audio: None,
            keep_sent_audio: false,
            late_seq: None,
            late_until: None,
            scratch: Vec::with_capacity(512),
            events: VecDeque::new(),
            stats: MediaStats::default(),
        })
    }

    /// Start sending: the first frame is due at `now`, RTCP after one interval.
    pub fn start(&mut self, now: Instant) {
        self.epoch.get_or_insert(now);
        let ts = self.pacer.ts_hint();
        self.pacer.start(now, ts);
        self.rtcp_next = Some(now + self.next_rtcp_interval());
        self.last_rx.get_or_insert(now);
    }

    /// The law of audio in and out.
    pub fn law(&self) -> G711 {
        self.law
    }

    /// Where RTP goes now.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.latched.or(self.remote_rtp)
    }

    /// Change the peer address (re-INVITE); clears the latch.
    pub fn set_remote(&mut self, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        self.remote_rtp = rtp;
        self.remote_rtcp = rtcp;
        self.latched = None;
        self.candidate = None;
        self.rtcp_learned = false;
    }

    /// New SRTP keys (a re-INVITE that rekeyed, RFC 4568 §7.1.4), or `None` for plain RTP: both
    /// crypto contexts start afresh (rollover counters and replay windows at zero).
    pub fn set_srtp(&mut self, keys: Option<(&SdesKey, &SdesKey)>) -> Result<(), MediaError> {
        self.srtp = match keys {
            Some((local, remote)) => Some(Box::new(SrtpSession::new(local, remote)?)),
            None => None,
        };
        Ok(())
    }

    /// Whether RTP/RTCP are SRTP/SRTCP.
    pub fn is_srtp(&self) -> bool {
        self.srtp.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats;
        s.jitter_buffer = self.jitter.stats();
        s.pacer = self.pacer.stats();
        if let Some(rx) = &self.rx {
            s.packets_lost = rx.lost();
            s.jitter_ms = rx.jitter() / 8.0;
        }
        s
    }

    fn since_epoch(&mut self, now: Instant) -> Duration {
        now.saturating_duration_since(*self.epoch.get_or_insert(now))
    }

    // ---- inputs ----

    /// A datagram arrived on the RTP port (RTCP is recognised and routed when multiplexed).
    pub fn handle_rtp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        if is_rtcp(datagram) {
            self.handle_rtcp(datagram, from, now);
            return;
        }
        self.receive(
            datagram,
            from,
            now,
            SrtpSession::unprotect_rtp_into,
            Self::handle_plain_rtp,
        );
    }

    /// A datagram handed to `handle` as it is, or with SRTP once `unprotect` has decrypted and
    /// authenticated it into a stack buffer (a rejected one is counted and dropped).
    fn receive(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        unprotect: Transform,
        handle: fn(&mut Self, &[u8], SocketAddr, Instant),
    ) {
        let Some(s) = &mut self.srtp else {
            handle(self, datagram, from, now);
            return;
        };
        let mut plain = [0u8; MAX_DATAGRAM];
        match unprotect(s, datagram, &mut plain) {
            Ok(n) => handle(self, &plain[..n], from, now),
            Err(e) => {
                tracing::trace!(%e, %from, "srtp: packet rejected");
                self.stats.srtp_failures += 1;
            }
        }
    }

    /// A (decrypted) RTP packet.
    fn handle_plain_rtp(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        let Ok(pkt) = parse_rtp(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let h = pkt.header;
        let pt = h.payload_type;
        let kind = if Some(pt) == self.pt.pcmu {
            Some(G711::Ulaw)
        } else if Some(pt) == self.pt.pcma {
            Some(G711::Alaw)
        } else {
            None
        };
        let is_dtmf = Some(pt) == self.pt.telephone_event;
        let is_cn = Some(pt) == self.pt.comfort_noise;
        if kind.is_none() && !is_dtmf && !is_cn {
            self.stats.unknown_payload_type += 1;
            return;
        }
        if !self.accept_source(from, &h, now) {
            self.stats.foreign_source += 1;
            return;
        }
        self.stats.rtp_received += 1;
        self.last_rx = Some(now);
        self.timeout_reported = false;

        // RFC 3550 receiver statistics, per source.
        let at = self.since_epoch(now);
        match &mut self.rx {
            Some(rx) if rx.ssrc == h.ssrc => {}
            other => {
                if let Some(old) = other {
                    tracing::debug!(old = old.ssrc, new = h.ssrc, "rtp: ssrc changed");
                    self.events.push_back(MediaEvent::SsrcChanged {
                        old: old.ssrc,
                        new: h.ssrc,
                    });
                }
                *other = Some(ReceiverStats::new(h.ssrc, h.sequence));
            }
        }
        if let Some(rx) = &mut self.rx {
            rx.update_seq(h.sequence);
            rx.update_jitter(h.timestamp, (at.as_micros() as u64) * 8 / 1000);
        }

        if let Some(law) = kind {
            let payload = if law == self.law {
                pkt.payload
            } else {
                self.scratch.clear();
                self.scratch.extend_from_slice(pkt.payload);
                law.transcode_in_place(self.law, &mut self.scratch);
                &self.scratch
            };
            self.jitter
                .push(h.ssrc, h.timestamp, h.marker, payload, now);
        } else if is_dtmf {
            self.stats.dtmf_packets += 1;
            if let Ok(ev) = TelephoneEvent::parse(pkt.payload) {
                self.dtmf_rx.handle(h.ssrc, h.timestamp, ev, at);
                while let Some(d) = self.dtmf_rx.poll() {
                    self.events.push_back(MediaEvent::Dtmf(d));
                }
            }
        } else {
            self.stats.comfort_noise += 1;
        }
    }

    /// Symmetric RTP: latch on the first valid packet; later, another source may take over only
    /// after the latched one has been silent for `relatch_after` and with `relatch_packets`
    /// consecutive in-sequence packets.
    fn accept_source(&mut self, from: SocketAddr, h: &RtpHeader, now: Instant) -> bool {
        if !self.symmetric {
            return true;
        }
        match self.latched {
            None => {
                self.latch(from, now);
                true
            }
            Some(addr) if addr == from => {
                self.last_from_latched = Some(now);
                self.candidate = None;
                true
            }
            Some(_) => {
                let quiet = self
                    .last_from_latched
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.relatch_after);
                if !quiet {
                    self.candidate = None;
                    return false;
                }
                let c = match self.candidate {
                    Some(c)
                        if c.from == from
                            && c.ssrc == h.ssrc
                            && h.sequence == c.seq.wrapping_add(1) =>
                    {
                        Candidate {
                            seq: h.sequence,
                            count: c.count + 1,
                            ..c
                        }
                    }
                    _ => Candidate {
                        from,
                        ssrc: h.ssrc,
                        seq: h.sequence,
                        count: 1,
                    },
                };
                if c.count >= self.relatch_packets {
                    self.candidate = None;
                    self.latch(from, now);
                    true
                } else {
                    self.candidate = Some(c);
                    false
                }
            }
        }
    }

    fn latch(&mut self, from: SocketAddr, now: Instant) {
        tracing::debug!(%from, previous = ?self.latched, "rtp: latched to source");
        self.latched = Some(from);
        self.last_from_latched = Some(now);
        self.events.push_back(MediaEvent::RemoteLatched(from));
    }

    /// A datagram arrived on the RTCP port.
    pub fn handle_rtcp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        self.receive(
            datagram,
            from,
            now,
            SrtpSession::unprotect_rtcp_into,
            Self::handle_plain_rtcp,
        );
    }

    /// A (decrypted) RTCP packet.
    fn handle_plain_rtcp(&mut self, bytes: &[u8], from: SocketAddr, now: Instant) {
        if for_each_rtcp_item(bytes, |_| {}).is_err() {
            self.stats.malformed += 1;
            return;
        }
        // Symmetric RTCP: only from the latched peer's host.
        if let Some(l) = self.latched
            && l.ip() != from.ip()
        {
            self.stats.foreign_source += 1;
            return;
        }
        self.stats.rtcp_received += 1;
        if self.symmetric && !self.rtcp_mux {
            self.remote_rtcp = Some(from);
            self.rtcp_learned = true;
        }
        let (rx, events) = (&mut self.rx, &mut self.events);
        let _ = for_each_rtcp_item(bytes, |item| match item {
            RtcpItem::SenderReport(ssrc, ntp) => {
                if let Some(rx) = rx.as_mut()
                    && rx.ssrc == ssrc
                {
                    rx.on_sender_report(ntp, now);
                }
            }
            RtcpItem::Bye(ssrc) => {
                if rx.as_ref().is_none_or(|r| r.ssrc == ssrc) {
                    events.push_back(MediaEvent::Bye(ssrc));
                }
            }
            RtcpItem::ReportBlock(..) => {}
        });
    }

    /// Timers: DTMF end timeout, RTP timeout. (Sending is driven by `poll_transmit`.)
    pub fn handle_timeout(&mut self, now: Instant) {
        let at = self.since_epoch(now);
        self.dtmf_rx.handle_timeout(at);
        while let Some(d) = self.dtmf_rx.poll() {
            self.events.push_back(MediaEvent::Dtmf(d));
        }
        if let (Some(limit), Some(last)) = (self.rtp_timeout, self.last_rx)
            && !self.timeout_reported
            && now.saturating_duration_since(last) >= limit
        {
            self.timeout_reported = true;
            tracing::info!(?limit, "rtp: no media, timing out");
            self.events.push_back(MediaEvent::RtpTimeout);
        }
    }

    // ---- commands ----

    /// Pull the next 20 ms of received audio (call once per tick). Always returns a frame.
    pub fn pop_audio(&mut self, now: Instant) -> Frame {
        self.jitter.pop(now)
    }

    /// Queue agent audio (codes of [`MediaSession::law`]) for paced playout.
    pub fn push_agent_audio(&mut self, event_id: u64, codes: &[u8]) -> usize {
        self.pacer.push(event_id, codes)
    }

    /// Barge-in: drop all queued agent audio.
    pub fn flush_agent_audio(&mut self) -> usize {
        self.pacer.flush()
    }

    /// Drop queued and future agent audio with `event_id <= up_to`.
    pub fn flush_agent_audio_up_to(&mut self, up_to: u64) -> usize {
        self.pacer.flush_up_to(up_to)
    }

    /// True when all queued agent audio has been sent.
    pub fn is_playout_drained(&self) -> bool {
        self.pacer.is_drained()
    }

    /// Queue an outgoing DTMF digit of `duration_ms` (RFC 4733). False if not a DTMF key or no
    /// telephone-event payload type was negotiated.
    pub fn send_dtmf(&mut self, digit: char, duration_ms: u16) -> bool {
        if self.pt.telephone_event.is_none() || crate::dtmf::char_to_event(digit).is_none() {
            return false;
        }
        self.dtmf_queue
            .push_back((digit, duration_ms.saturating_mul(8)));
        true
    }

    /// Send RTCP BYE at the next `poll_transmit` and stop sending RTP.
    pub fn close(&mut self) {
        self.bye_pending = true;
    }

    // ---- outputs ----

    /// Next event.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// Earliest instant at which `poll_transmit`/`handle_timeout` have something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if !self.closed {
            consider(self.pacer.poll_timeout());
            consider(self.rtcp_next);
        }
        if let (Some(e), Some(d)) = (self.epoch, self.dtmf_rx.timeout()) {
            consider(Some(e + d));
        }
        if let (Some(limit), Some(last)) = (self.rtp_timeout, self.last_rx)
            && !self.timeout_reported
        {
            consider(Some(last + limit));
        }
        t
    }

    /// Queue a prompt (G.711 codes in this session's law) to be played before any agent audio
    /// queued or to come; `interruption{N}` never flushes it (its event id is `u64::MAX`).
    pub fn push_prompt_audio(&mut self, codes: &[u8]) -> usize {
        self.pacer.push_front(u64::MAX, codes)
    }

    /// The 160 codes of the last RTP packet [`MediaSession::poll_transmit`] built (what the phone
    /// hears at that tick; silence for a DTMF tick), once: `None` until the next one. Only kept
    /// after [`MediaSession::set_keep_sent_audio`] (a recorded call): otherwise always `None`.
    pub fn take_sent_audio(&mut self) -> Option<[u8; FRAME]> {
        self.last_sent_audio.take()
    }

    /// Keep the audio of each RTP packet built for [`MediaSession::take_sent_audio`].
    pub fn set_keep_sent_audio(&mut self, keep: bool) {
        self.keep_sent_audio = keep;
        if !keep {
            self.last_sent_audio = None;
        }
    }

    /// The RTP packet just returned by [`MediaSession::poll_transmit`] leaves at a later send
    /// time; until `deadline` it may still be replaced. If it was silence and a whole frame of
    /// agent audio is queued before `deadline`, the next `poll_transmit` returns that audio as
    /// a packet for the same tick ([`Transmit::replaces_previous`]): the audio catches the send
    /// slot already scheduled instead of waiting for the next tick. Not used with SRTP (one
    /// packet index is never protected twice).
    pub fn allow_late_audio_until(&mut self, deadline: Instant) {
        if self.late_seq.is_some() && self.srtp.is_none() {
            self.late_until = Some(deadline);
        }
    }

    /// The replacement packet could not be used (the silence had left): its audio goes out at
    /// the next tick instead.
    pub fn late_audio_missed(&mut self) {
        self.pacer.late_missed();
    }

    /// The replacement packet for the last tick, if agent audio arrived in time for it.
    fn poll_late(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let seq = self.late_seq?;
        if self.late_until.is_none_or(|d| now >= d)
            || self.dtmf_tx.is_some()
            || !self.dtmf_queue.is_empty()
        {
            return None;
        }
        let dest = self.remote()?;
        let frame = self.pacer.poll_late()?;
        self.late_seq = None;
        self.late_until = None;
        let h = RtpHeader {
            marker: frame.marker,
            payload_type: self.law_pt(),
            sequence: seq,
            timestamp: frame.timestamp,
            ssrc: self.ssrc,
        };
        let mut tmp = [0u8; 12 + FRAME];
        let len = write_rtp(&h, &frame.data, &mut tmp).ok()?;
        if self.keep_sent_audio {
            self.last_sent_audio = Some(frame.data);
        }
        let len = self.finish(&tmp[..len], buf, false)?;
        Some(Transmit {
            destination: dest,
            len,
            kind: PacketKind::Rtp,
            replaces_previous: true,
        })
    }

    /// Write the next datagram due at `now` into `buf` (≥ 1500 bytes recommended).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.closed {
            return None;
        }
        if self.bye_pending {
            self.closed = true;
            return self.write_rtcp(now, true, buf);
        }
        if self.rtcp_next.is_some_and(|t| now >= t) {
            self.rtcp_next = Some(now + self.next_rtcp_interval());
            if let Some(t) = self.write_rtcp(now, false, buf) {
                return Some(t);
            }
        }
        // Ticks carrying RFC 4733 events hold the agent's audio back instead of dropping it.
        self.pacer
            .set_hold(self.dtmf_tx.is_some() || !self.dtmf_queue.is_empty());
        if let Some(t) = self.poll_late(now, buf) {
            return Some(t);
        }
        loop {
            self.pacer
                .set_hold(self.dtmf_tx.is_some() || !self.dtmf_queue.is_empty());
            let frame = self.pacer.poll_frame(now)?;
            self.late_seq = None;
            self.late_until = None;
            let Some(dest) = self.remote() else {
                self.stats.unsent_frames += 1;
                continue;
            };
            self.last_sent_ts = frame.timestamp;
            if self.dtmf_tx.is_none()
                && let Some((digit, dur)) = self.dtmf_queue.pop_front()
            {
                self.dtmf_tx = DtmfSender::new(digit, dur, 10, frame.timestamp);
            }
            let mut tmp = [0u8; 12 + FRAME];
            let len = if let (Some(tx), Some(pt)) = (&mut self.dtmf_tx, self.pt.telephone_event) {
                let p = tx.next_packet(FRAME as u16);
                if tx.is_done() {
                    self.dtmf_tx = None;
                }
                let Some(p) = p else { continue };
                let h = RtpHeader {
                    marker: p.marker,
                    payload_type: pt,
                    sequence: self.seq,
                    timestamp: p.timestamp,
                    ssrc: self.ssrc,
                };
                if self.keep_sent_audio {
                    self.last_sent_audio = Some([self.law.silence(); FRAME]);
                }
                write_rtp(&h, &p.payload, &mut tmp).ok()?
            } else {
                let h = RtpHeader {
                    marker: frame.marker,
                    payload_type: self.law_pt(),
                    sequence: self.seq,
                    timestamp: frame.timestamp,
                    ssrc: self.ssrc,
                };
                if self.keep_sent_audio {
                    self.last_sent_audio = Some(frame.data);
                }
                if !frame.is_audio {
                    self.late_seq = Some(self.seq);
                }
                write_rtp(&h, &frame.data, &mut tmp).ok()?
            };
            self.seq = self.seq.wrapping_add(1);
            self.stats.rtp_sent += 1;
            self.octets_sent = self.octets_sent.wrapping_add((len - 12) as u32);
            let len = self.finish(&tmp[..len], buf, false)?;
            return Some(Transmit {
                destination: dest,
                len,
                kind: PacketKind::Rtp,
                replaces_previous: false,
            });
        }
    }

    /// RFC 3550 §6.3.1: the interval times a uniform factor in [0.5, 1.5] (xorshift64*).
    fn next_rtcp_interval(&mut self) -> Duration {
        let mut x = self.rtcp_rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rtcp_rng = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 random bits
        let factor = 0.5 + r as f64 / (1u64 << 53) as f64;
        self.rtcp_interval.mul_f64(factor)
    }

    fn law_pt(&self) -> u8 {
        match self.law {
            G711::Ulaw => self.pt.pcmu.unwrap_or(0),
            G711::Alaw => self.pt.pcma.unwrap_or(8),
        }
    }

    /// Copy (and SRTP-protect) a packet into `buf`.
    fn finish(&mut self, pkt: &[u8], buf: &mut [u8], rtcp: bool) -> Option<usize> {
        match &mut self.srtp {
            Some(s) => if rtcp {
                s.protect_rtcp_into(pkt, buf)
            } else {
                s.protect_rtp_into(pkt, buf)
            }
            .ok(),
            None => {
                let dst = buf.get_mut(..pkt.len())?;
                dst.copy_from_slice(pkt);
                Some(pkt.len())
            }
        }
    }

    fn rtcp_destination(&self) -> Option<SocketAddr> {
        if self.rtcp_mux {
            return self.remote();
        }
        if (self.rtcp_learned || self.latched.is_none())
            && let Some(a) = self.remote_rtcp
        {
            return Some(a);
        }
        self.remote().map(|mut a| {
            a.set_port(a.port().wrapping_add(1));
            a
        })
    }

    fn write_rtcp(&mut self, now: Instant, bye: bool, buf: &mut [u8]) -> Option<Transmit> {
        let dest = self.rtcp_destination()?;
        // RTP timestamp corresponding to `now` on our media clock.
        let rtp_time = match (self.pacer.poll_timeout(), self.pacer.is_started()) {
            (Some(next_due), true) => {
                let ahead = next_due.saturating_duration_since(now);
                let ticks_ts = self.pacer.next_timestamp();
                ticks_ts.wrapping_sub((ahead.as_micros() as u64 * 8 / 1000) as u32)
            }
            _ => self.last_sent_ts,
        };
        let me = SenderInfo {
            ssrc: self.ssrc,
            ntp: self.wallclock.ntp(now),
            rtp_time,
            packets: self.stats.rtp_sent as u32,
            octets: self.octets_sent,
        };
        let block = self.rx.as_mut().map(|r| r.report_block(now));
        let mut raw = [0u8; MAX_COMPOUND];
        let n = write_compound(
            me,
            self.stats.rtp_sent > 0,
            block,
            &self.cname,
            bye,
            &mut raw,
        )
        .ok()?;
        let len = self.finish(&raw[..n], buf, true)?;
        self.stats.rtcp_sent += 1;
        Some(Transmit {
            destination: dest,
            len,
            kind: PacketKind::Rtcp,
            replaces_previous: false,
        })
    }
}

/// The largest SRTP/SRTCP datagram decrypted (a longer one is refused as malformed).
const MAX_DATAGRAM: usize = 2048;

/// Frames per second of the pacer (for callers sizing timers).
pub const FRAMES_PER_SECOND: u32 = (1000 / TICK.as_millis()) as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_map_from_sdp() {
        // Twilio-style offer: PCMU, PCMA, telephone-event on 101.
        let m = PayloadMap::from_sdp(
            &[0, 8, 101],
            &[
                (0, "PCMU/8000"),
                (8, "PCMA/8000"),
                (101, "telephone-event/8000"),
            ],
        );
        assert_eq!(m, PayloadMap::default().with_cn(None));
        // DTMF on 96, static types without rtpmap, a 16 kHz telephone-event ignored.
        let m = PayloadMap::from_sdp(
            &[8, 13, 97, 96],
            &[(97, "telephone-event/16000"), (96, "TELEPHONE-EVENT/8000")],
        );
        assert_eq!(
            m,
            PayloadMap {
                pcmu: None,
                pcma: Some(8),
                telephone_event: Some(96),
                comfort_noise: Some(13),
            }
        );
    }
}
