//! A Twilio-like SIP trunk on loopback (TWILIO.md), built on Trunkline's own SIP and media
//! crates but playing the *other* side:
//!
//! - Termination (the gateway calls out): `100 trying -- your call is important to us`, then —
//!   with credentials configured — `407 Proxy Authentication required` with
//!   `Digest realm="sip.twilio.com",qop="auth",nonce=…,opaque=…`, verified on the retry with
//!   `trunkline_sip::auth` as strictly as a real trunk ([`DigestChallenges`]: a nonce we issued,
//!   else a new 407; its opaque echoed, `uri` = Request-URI, our realm, MD5 with qop=auth and the
//!   right password, else 403); then 180, optional 183 with SDP (early media), and 200
//!   with a PCMU/PCMA + telephone-event answer (Twilio picks the first codec of the offer it
//!   supports) — or busy (486), no answer (ring until CANCEL → 487), or any scripted rejection.
//! - Origination (the trunk calls the gateway): an INVITE offering PCMU then PCMA and
//!   telephone-event/101, with `X-Twilio-CallSid`, `X-Twilio-AccountSid`, `Record-Route` and
//!   `User-Agent: Twilio Gateway`.
//! - Media: after answer, plays a real RTP capture (or µ-law audio) at its original timing —
//!   telephone-event packets included, re-mapped to the negotiated payload type — and records every
//!   RTP packet it receives with its arrival time, so tests can assert what the phone heard.
//!   Each received packet also carries the kernel's receive time (`SO_TIMESTAMPNS`, read with
//!   `recvmsg`): on loopback the kernel queues a datagram into the receiver's socket during the
//!   sender's `sendto`, so that stamp is the gateway's send time, free of this emulator's own
//!   scheduling delay.
//! - DTMF from the phone (optional): an RFC 4733 digit every N seconds, sent in the audio
//!   stream's SSRC and sequence space with the negotiated telephone-event payload type (marker on
//!   the first packet, growing duration, three end packets; RFC 4733 §2.5.1).
//! - In dialog: answers BYE, re-INVITE, and REFER (202, then NOTIFY `100 Trying` and `200 OK`
//!   sipfrags); hangs up after a scripted time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tracing::debug;
use trunkline_media::capture::{CaptureError, extract_rtp_streams, read_udp_file};
use trunkline_media::dtmf::DtmfSender;
use trunkline_media::g711::G711;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::srtp::{SdesKey, SrtpSession};
use trunkline_media::udp;
use trunkline_sip::auth::{Algorithm, Authorization, Qop};
use trunkline_sip::dialog::DialogId;
use trunkline_sip::message::{Method, NameAddr, Request, Uri};
use trunkline_sip::sdp::{self, Crypto, MediaParams, SessionDescription};
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind, TxId};
use trunkline_sip::transport::{Incoming, TransportConfig, Transports, UaRunner, Wake};
use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaConfig, UaEvent};

/// The digest realm Twilio uses.
pub const TWILIO_REALM: &str = "sip.twilio.com";

/// How the trunk answers an INVITE from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Ring, then answer.
    Answer,
    /// 486 Busy Here after ringing.
    Busy,
    /// Ring until cancelled.
    NoAnswer,
    /// A final error after ringing (403, 404, 503, …).
    Reject(u16),
}

/// One packet to play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayPacket {
    /// When, from the start of playback.
    pub at: Duration,
    /// Audio (of this law) or a telephone-event (`None`).
    pub law: Option<G711>,
    /// Marker bit.
    pub marker: bool,
    /// Timestamp offset from the first packet.
    pub ts: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// What the phone side says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaySource {
    /// Packets in order.
    pub packets: Vec<PlayPacket>,
}

impl PlaySource {
    /// The longest RTP stream of a capture, with its original timing (telephone-events kept).
    pub fn from_pcap(path: impl AsRef<Path>) -> Result<PlaySource, CaptureError> {
        let datagrams = read_udp_file(path)?;
        let streams = extract_rtp_streams(&datagrams);
        let Some(stream) = streams.iter().max_by_key(|s| s.packets.len()) else {
            return Ok(PlaySource::default());
        };
        let te = stream.telephone_event_pt();
        let Some(first) = stream.packets.first() else {
            return Ok(PlaySource::default());
        };
        let (t0, ts0) = (first.time, first.header.timestamp);
        let packets = stream
            .packets
            .iter()
            .filter_map(|p| {
                let law = if Some(p.header.payload_type) == te {
                    None
                } else {
                    Some(G711::from_payload_type(p.header.payload_type)?)
                };
                Some(PlayPacket {
                    at: p.time.saturating_sub(t0),
                    law,
                    marker: p.header.marker,
                    ts: p.header.timestamp.wrapping_sub(ts0),
                    payload: p.payload().to_vec(),
                })
            })
            .collect();
        Ok(PlaySource { packets })
    }

    /// µ-law audio cut into 20 ms packets.
    pub fn from_ulaw(audio: &[u8]) -> PlaySource {
        let packets = audio
            .chunks(160)
            .enumerate()
            .map(|(i, c)| PlayPacket {
                at: Duration::from_millis(20 * i as u64),
                law: Some(G711::Ulaw),
                marker: i == 0,
                ts: 160 * i as u32,
                payload: c.to_vec(),
            })
            .collect();
        PlaySource { packets }
    }

    /// Length of the source.
    pub fn duration(&self) -> Duration {
        self.packets
            .last()
            .map_or(Duration::ZERO, |p| p.at + Duration::from_millis(20))
    }
}

/// The trunk's behaviour.
#[derive(Debug, Clone)]
pub struct TrunkConfig {
    /// SIP listen address (UDP and TCP).
    pub listen: SocketAddr,
    /// Digest credentials required on termination (`None` = IP ACL, no challenge).
    pub credentials: Option<(String, String)>,
    /// What happens to INVITEs from the gateway.
    pub outcome: Outcome,
    /// Time between 180 and the final answer.
    pub ring_time: Duration,
    /// Send 183 with SDP before answering.
    pub early_media: bool,
    /// What the phone says after answer.
    pub play: PlaySource,
    /// Per dialled number: what the phone says instead of `play` when the INVITE's Request-URI
    /// contains the number (first match; e.g. one answering-machine test file per number).
    pub play_by_number: Vec<(String, PlaySource)>,
    /// Loop the source until the call ends.
    pub play_loop: bool,
    /// Start playing this long after answer.
    pub play_delay: Duration,
    /// Hang up (BYE) this long after answer.
    pub hangup_after: Option<Duration>,
    /// Send a session-refresh re-INVITE (same media, new SDP version) this long after answer,
    /// as carriers do.
    pub reinvite_after: Option<Duration>,
    /// Prefer PCMA when the offer has both (Twilio takes the offer's order; this tests A-law).
    pub prefer_pcma: bool,
    /// Record the send time of every audio packet of the source, every pass of the loop
    /// ([`TrunkCall::sent_log`]; costs 16 bytes per packet).
    pub record_sends: bool,
    /// Send an RFC 4733 digit this often while playing (the first one this long after the play
    /// starts), when the call negotiated telephone-event.
    pub dtmf_every: Option<Duration>,
    /// Start no digit this long or later after playback started (keep digits clear of the hang-up).
    pub dtmf_until: Option<Duration>,
    /// The digits sent, cycled.
    pub dtmf_digits: String,
    /// Length of each digit.
    pub dtmf_duration: Duration,
    /// SDES-SRTP (RFC 4568), as Twilio's Secure Trunking: `Off` answers an RTP/SAVP-only offer
    /// 488 and originates plain RTP; `Allowed` takes either; `Required` answers an RTP/AVP offer
    /// 488 (what Twilio does with Secure Trunking on) and originates RTP/SAVP.
    pub srtp: TrunkSrtp,
    /// SIP over TLS too, on its own port ([`TrunkEmulator::tls_addr`]), with this certificate.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Originate over TLS with this client configuration (the gateway's certificate must chain
    /// to its roots and be valid for the gateway's IP address).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// The trunk's media encryption ([`TrunkConfig::srtp`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrunkSrtp {
    /// Plain RTP only.
    #[default]
    Off,
    /// SRTP or plain RTP, as offered (originates plain).
    Allowed,
    /// SRTP only (originates RTP/SAVP).
    Required,
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials: None,
            outcome: Outcome::Answer,
            ring_time: Duration::from_millis(200),
            early_media: true,
            play: PlaySource::default(),
            play_by_number: Vec::new(),
            play_loop: false,
            play_delay: Duration::ZERO,
            hangup_after: None,
            reinvite_after: None,
            prefer_pcma: false,
            record_sends: false,
            dtmf_every: None,
            dtmf_until: None,
            dtmf_digits: "123456789*0#".into(),
            dtmf_duration: Duration::from_millis(100),
            srtp: TrunkSrtp::Off,
            tls_server: None,
            tls_client: None,
        }
    }
}

/// An RTP packet the phone side received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPacket {
    /// Arrival: when the receive task got the packet (includes this emulator's scheduling delay).
    pub at: Instant,
    /// The kernel's receive time (`SO_TIMESTAMPNS`), moved onto the [`Instant`] clock (`at` minus
    /// the wall-clock age of the stamp when it was read). On loopback this is the sender's send
    /// time. `None` when the socket gave no stamp.
    pub kernel_at: Option<Instant>,
    /// Payload type.
    pub pt: u8,
    /// Marker.
    pub marker: bool,
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub ts: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// One RFC 4733 event the phone received (see [`TrunkCall::dtmf_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxDtmfEvent {
    /// The digit of its first packet.
    pub digit: Option<char>,
    /// Its RTP timestamp (the event's start).
    pub timestamp: u32,
    /// Packets received for it (retransmitted end packets included).
    pub packets: usize,
    /// Packets with the end bit.
    pub end_packets: usize,
    /// Its final duration (of the end packets, else the last packet), in timestamp units.
    pub duration: u16,
    /// What is wrong with it; empty for a well-formed event.
    pub problems: Vec<String>,
}

/// What the trunk saw of one call.
#[derive(Debug, Clone, Default)]
pub struct TrunkCall {
    /// `termination` (the gateway called) or `origination` (we called the gateway).
    pub direction: String,
    /// Request-URI of the INVITE.
    pub request_uri: String,
    /// From header.
    pub from: String,
    /// To header.
    pub to: String,
    /// Call-ID.
    pub call_id: String,
    /// When the first INVITE arrived.
    pub first_invite_at: Option<Instant>,
    /// INVITEs received for this Call-ID (2 with a digest challenge).
    pub invites: u32,
    /// The digest response was right.
    pub auth_ok: Option<bool>,
    /// Final status we sent / received.
    pub final_status: Option<u16>,
    /// When the call was answered.
    pub answered_at: Option<Instant>,
    /// When playback started.
    pub play_started_at: Option<Instant>,
    /// When it ended.
    pub ended_at: Option<Instant>,
    /// `remote_bye`, `local_bye`, `cancelled`, `rejected`.
    pub ended_by: Option<String>,
    /// Codec answered.
    pub law: Option<G711>,
    /// RFC 4733 payload type agreed.
    pub dtmf_pt: Option<u8>,
    /// Final statuses the gateway gave our re-INVITEs.
    pub reinvite_answers: Vec<u16>,
    /// REFER targets received.
    pub refer_to: Vec<String>,
    /// Every RTP packet received, in arrival order.
    pub rtp_in: Vec<RxPacket>,
    /// RTP packets sent.
    pub rtp_sent: u64,
    /// When each packet of the play source was sent (index = packet index in the source, first
    /// pass only).
    pub sent_at: Vec<Instant>,
    /// With [`TrunkConfig::record_sends`]: when each audio packet of the source was sent, in
    /// order over every pass of the loop (index = pass × audio packets per pass + audio packet
    /// index; telephone-events not counted).
    pub sent_log: Vec<Instant>,
    /// RFC 4733 digits the phone sent (start of each event).
    pub dtmf_sent: Vec<(Instant, char)>,
    /// The SIP Call-ID (for termination the same as `call_id`; origination records keep their
    /// `orig-<CallSid>` key in `call_id`). [`TrunkEmulator::received_sip`] finds the messages by it.
    pub sip_call_id: String,
    /// Our tag in the dialog (the To tag of our responses on termination, the From tag of our
    /// INVITE on origination).
    pub local_tag: Option<String>,
    /// Our Contact URI (the remote target the gateway must put in the Request-URI of its
    /// in-dialog requests).
    pub contact: String,
    /// The `Record-Route` values this trunk's "proxies" stamped on the call, in header order: on
    /// termination on our 18x/2xx (the gateway's route set is their reverse), on origination on
    /// our INVITE (the gateway must echo them in its 18x/2xx and route with them in order).
    pub record_route: Vec<String>,
    /// CSeq numbers of the INVITEs (initial or re-INVITE) we answered with a 2xx: each needs the
    /// gateway's ACK (RFC 3261 §13.2.2.4).
    pub invite_2xx_cseqs: Vec<u32>,
    /// RTP packets sent during 183 early media (before the 200).
    pub early_rtp_sent: u64,
    /// The SDP offer we got (termination) was RTP/SAVP.
    pub offered_srtp: bool,
    /// SRTP keys in use (the trunk's, the gateway's) when the media was encrypted.
    pub srtp: Option<(SdesKey, SdesKey)>,
    /// SRTP packets from the gateway that failed authentication (or replayed).
    pub srtp_failures: u64,
    /// The transport the INVITE came (or went) over.
    pub transport: Option<TransportKind>,
    /// The trunk's RTP socket of the call (after answer).
    pub media_addr: Option<SocketAddr>,
}

impl TrunkCall {
    /// The audio received, as codes of the answered law, in arrival order.
    pub fn received_audio(&self) -> Vec<u8> {
        let pt = self.law.map_or(0, |l| l.payload_type());
        self.rtp_in
            .iter()
            .filter(|p| p.pt == pt)
            .flat_map(|p| p.payload.iter().copied())
            .collect()
    }

    /// Arrival times of packets whose audio is not silence (|sample| > `threshold`).
    pub fn loud_packets(&self, threshold: i16) -> Vec<Instant> {
        let law = self.law.unwrap_or(G711::Ulaw);
        self.rtp_in
            .iter()
            .filter(|p| p.pt == law.payload_type())
            .filter(|p| p.payload.iter().any(|&c| law.decode(c).abs() > threshold))
            .map(|p| p.at)
            .collect()
    }

    /// Telephone-event digits received (one per event, by its RTP timestamp), of the events that
    /// are well-formed ([`TrunkCall::dtmf_events`] found no problem): a digit sent without its
    /// marker, its three end packets or a sane duration is not counted.
    pub fn dtmf_received(&self) -> Vec<char> {
        self.dtmf_events()
            .into_iter()
            .filter(|e| e.problems.is_empty())
            .filter_map(|e| e.digit)
            .collect()
    }

    /// The RFC 4733 events received, in order of their first packet (grouped by RTP timestamp),
    /// each checked as a real phone's receiver would (RFC 4733 §2.5.1): the marker bit on the first
    /// packet of the event and on no other, one event code throughout, a duration that never
    /// shrinks, exactly three end packets (§2.5.1.4) carrying the same final duration and nothing
    /// but end packets after the first one, a final duration of 40 ms to 2 s, and no overlap with
    /// the next event (its timestamp at or after this one's end).
    pub fn dtmf_events(&self) -> Vec<RxDtmfEvent> {
        use trunkline_media::dtmf::{TelephoneEvent, event_to_char};
        let Some(pt) = self.dtmf_pt else {
            return Vec::new();
        };
        let mut order: Vec<u32> = Vec::new();
        let mut by_ts: HashMap<u32, Vec<&RxPacket>> = HashMap::new();
        for p in self.rtp_in.iter().filter(|p| p.pt == pt) {
            if !by_ts.contains_key(&p.ts) {
                order.push(p.ts);
            }
            by_ts.entry(p.ts).or_default().push(p);
        }
        let mut out: Vec<RxDtmfEvent> = Vec::new();
        for ts in order {
            let packets = &by_ts[&ts];
            let mut e = RxDtmfEvent {
                digit: None,
                timestamp: ts,
                packets: packets.len(),
                end_packets: 0,
                duration: 0,
                problems: Vec::new(),
            };
            let mut code = None;
            let mut last_duration = 0u16;
            let mut end_duration = None;
            for (i, p) in packets.iter().enumerate() {
                let Ok(ev) = TelephoneEvent::parse(&p.payload) else {
                    e.problems
                        .push(format!("packet {i}: not a telephone-event payload"));
                    continue;
                };
                if i == 0 {
                    code = Some(ev.event);
                    e.digit = event_to_char(ev.event);
                    if !p.marker {
                        e.problems
                            .push("first packet of the event without the marker bit".into());
                    }
                } else {
                    if p.marker {
                        e.problems.push(format!("packet {i}: marker bit set again"));
                    }
                    if code != Some(ev.event) {
                        e.problems.push(format!(
                            "packet {i}: event {} in an event {code:?}",
                            ev.event
                        ));
                    }
                }
                if ev.duration < last_duration {
                    e.problems.push(format!(
                        "packet {i}: duration {} shrank from {last_duration}",
                        ev.duration
                    ));
                }
                last_duration = ev.duration;
                if ev.end {
                    e.end_packets += 1;
                    match end_duration {
                        None => end_duration = Some(ev.duration),
                        Some(d) if d != ev.duration => e.problems.push(format!(
                            "packet {i}: end duration {} after {d}",
                            ev.duration
                        )),
                        Some(_) => {}
                    }
                } else if end_duration.is_some() {
                    e.problems
                        .push(format!("packet {i}: not an end packet after the end"));
                }
            }
            e.duration = end_duration.unwrap_or(last_duration);
            if e.end_packets != 3 {
                e.problems.push(format!(
                    "{} end packets, RFC 4733 §2.5.1.4 sends three",
                    e.end_packets
                ));
            }
            if !(320..=16000).contains(&e.duration) {
                e.problems.push(format!(
                    "final duration {} samples is not 40 ms to 2 s",
                    e.duration
                ));
            }
            if let Some(prev) = out.last_mut()
                && ts.wrapping_sub(prev.timestamp) < u32::from(prev.duration)
            {
                prev.problems.push(format!(
                    "the next event (timestamp {ts}) starts before this one ends"
                ));
            }
            out.push(e);
        }
        out
    }

    /// Write what was received as a 8 kHz mono 16-bit WAV.
    pub fn write_wav(&self, path: &Path) -> Result<(), hound::Error> {
        let law = self.law.unwrap_or(G711::Ulaw);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec)?;
        for c in self.received_audio() {
            w.write_sample(law.decode(c))?;
        }
        w.finalize()
    }
}

#[derive(Debug, Default)]
struct Shared {
    calls: Mutex<Vec<TrunkCall>>,
    changed: Notify,
    /// Replaces `TrunkConfig::hangup_after` for calls answered from now on.
    hangup_override: Mutex<Option<Duration>>,
    /// Every SIP message received, as on the wire, by Call-ID.
    wire: Mutex<HashMap<String, Vec<WireMessage>>>,
}

/// A call placed by the trunk to the gateway (origination).
#[derive(Debug, Clone)]
pub struct Originate {
    /// The gateway's SIP address.
    pub gateway: SocketAddr,
    /// Caller (E.164).
    pub from: String,
    /// Callee (E.164).
    pub to: String,
    /// `X-Twilio-CallSid`.
    pub call_sid: String,
}

/// The running trunk.
#[derive(Debug, Clone)]
pub struct TrunkEmulator {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    edge: SocketAddr,
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<CmdBox>,
}

#[derive(Debug)]
struct CmdBox(Box<Originate>);

impl TrunkEmulator {
    /// Start on `cfg.listen` (UDP and TCP on the same port).
    pub async fn start(cfg: TrunkConfig) -> std::io::Result<TrunkEmulator> {
        // With port 0, the UDP port picked may be taken for TCP (or taken again before we bind
        // it) by a parallel test: pick another, a few times.
        let mut attempt = 0;
        let (addr, transports, rx) = loop {
            attempt += 1;
            let udp = std::net::UdpSocket::bind(cfg.listen)?;
            let addr = udp.local_addr()?;
            drop(udp);
            let tc = TransportConfig {
                udp: Some(addr),
                tcp: Some(addr),
                tls: cfg
                    .tls_server
                    .as_ref()
                    .map(|_| SocketAddr::new(addr.ip(), 0)),
                tls_server: cfg.tls_server.clone(),
                tls_client: cfg.tls_client.clone(),
                ..TransportConfig::default()
            };
            match Transports::bind(tc).await {
                Ok((t, rx)) => break (addr, t, rx),
                Err(e) if cfg.listen.port() != 0 || attempt >= 10 => {
                    return Err(std::io::Error::other(e.to_string()));
                }
                Err(_) => {}
            }
        };
        // The "edge proxy" address our Record-Route entries name: a second UDP socket whose
        // requests reach the same UA, so a gateway that ignores the route set (and sends to our
        // Contact) is told apart from one that follows it.
        let edge_sock = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).await?;
        let edge = edge_sock.local_addr()?;
        let mut ua = Ua::new(
            UaConfig {
                user_agent: "Twilio Gateway".into(),
                contact_user: "twilio".into(),
                ..UaConfig::default()
            },
            IdGen::new(Box::new(SplitMix64::new(u64::from(addr.port()) * 7919))),
        );
        ua.set_sent_by(TransportKind::Udp, addr);
        ua.set_sent_by(TransportKind::Tcp, addr);
        let tls_addr = transports.local_addr(TransportKind::Tls);
        if let Some(a) = tls_addr {
            ua.set_sent_by(TransportKind::Tls, a);
        }
        let contact = ua.contact(TransportKind::Udp).to_string();
        let shared = Arc::new(Shared::default());
        let (tap_tx, tap_rx) = mpsc::channel(8192);
        tokio::spawn(tap(rx, edge_sock, addr, edge, shared.clone(), tap_tx));
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let task = Task {
            runner: UaRunner::new(ua, transports, tap_rx),
            cmd_rx,
            cfg,
            addr,
            edge,
            contact,
            shared: shared.clone(),
            challenges: DigestChallenges::new(),
            calls: HashMap::new(),
            by_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            timers: Vec::new(),
            pending: HashMap::new(),
            reinvites: HashMap::new(),
        };
        tokio::spawn(task.run());
        Ok(TrunkEmulator {
            addr,
            tls_addr,
            edge,
            shared,
            cmd: cmd_tx,
        })
    }

    /// The SIP address (of our Contact).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The SIP-over-TLS address, with [`TrunkConfig::tls_server`].
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address our `Record-Route` entries name (UDP): the "edge proxy" in-dialog requests
    /// must be sent to when they follow the route set.
    pub fn edge_addr(&self) -> SocketAddr {
        self.edge
    }

    /// The SIP messages received on `call` (by its SIP Call-ID), in arrival order, as on the wire.
    pub fn received_sip(&self, call: &TrunkCall) -> Vec<WireMessage> {
        self.shared
            .wire
            .lock()
            .ok()
            .and_then(|w| w.get(&call.sip_call_id).cloned())
            .unwrap_or_default()
    }

    /// What is wrong in the SIP the gateway sent on `call` ([`sip_problems`]); empty when nothing.
    pub fn sip_problems(&self, call: &TrunkCall) -> Vec<String> {
        sip_problems(call, &self.received_sip(call), self.edge)
    }

    /// Calls whose media starts from now on hang up after `after` instead of
    /// `TrunkConfig::hangup_after`; `None` goes back to the configured value.
    pub fn set_hangup_after(&self, after: Option<Duration>) {
        if let Ok(mut o) = self.shared.hangup_override.lock() {
            *o = after;
        }
    }

    /// Everything seen so far.
    pub fn calls(&self) -> Vec<TrunkCall> {
        self.shared
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Wait until `pred` holds over the calls, or `timeout`; returns the calls either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[TrunkCall]) -> bool,
    ) -> Vec<TrunkCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let calls = self.calls();
            if pred(&calls) {
                return calls;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.calls();
            }
        }
    }

    /// Place a call to the gateway (origination).
    pub fn originate(&self, o: Originate) {
        let _ = self.cmd.send(CmdBox(Box::new(o)));
    }
}

enum Timer {
    Answer { tx: TxId, call: usize },
    Final { tx: TxId, status: u16, call: usize },
    Hangup { dialog: DialogId },
    Reinvite { dialog: DialogId, call: String },
}

struct CallState {
    index: usize,
    media: Option<MediaTask>,
    media_params: MediaParams,
    offer: Option<SessionDescription>,
}

struct MediaTask {
    stop: Arc<Notify>,
}

struct Task {
    runner: UaRunner,
    cmd_rx: mpsc::UnboundedReceiver<CmdBox>,
    cfg: TrunkConfig,
    addr: SocketAddr,
    edge: SocketAddr,
    /// Our Contact URI.
    contact: String,
    shared: Arc<Shared>,
    challenges: DigestChallenges,
    calls: HashMap<String, CallState>,
    by_tx: HashMap<TxId, String>,
    by_dialog: HashMap<DialogId, String>,
    timers: Vec<(Instant, Timer)>,
    /// Sockets (and answers) waiting for the ring time or the 200 OK, by Call-ID.
    pending: HashMap<String, PendingEntry>,
    /// Our re-INVITEs in flight, by transaction.
    reinvites: HashMap<TxId, usize>,
}

impl Task {
    /// The trunk's loop: [`UaRunner`] drives the UA (transmissions, datagrams, its timers) while
    /// this task also waits for origination commands and its own scripted timers (answer after
    /// the ring time, hang-up, re-INVITE).
    async fn run(mut self) {
        loop {
            let now = self.runner.now();
            let due: Vec<Timer> = {
                let (due, later): (Vec<_>, Vec<_>) =
                    self.timers.drain(..).partition(|(t, _)| *t <= now);
                self.timers = later;
                due.into_iter().map(|(_, t)| t).collect()
            };
            for t in due {
                self.on_timer(t, now).await;
            }
            let next_timer = self.timers.iter().map(|(t, _)| *t).min();
            let cmd_rx = &mut self.cmd_rx;
            let other = async move {
                tokio::select! {
                    c = cmd_rx.recv() => Some(c),
                    () = sleep_until(next_timer) => None,
                }
            };
            match self.runner.next_event_or(other).await {
                Wake::Event(ev) => {
                    let now = self.runner.now();
                    self.on_event(ev, now).await;
                }
                Wake::Other(Some(Some(CmdBox(o)))) => {
                    let now = self.runner.now();
                    self.originate(*o, now).await;
                }
                // A timer of ours is due: fired at the top of the loop.
                Wake::Other(None) => {}
                // Every `TrunkEmulator` handle is gone, or the transports are.
                Wake::Other(Some(None)) | Wake::Closed => break,
            }
        }
    }

    /// Our crypto line for a call, as [`TrunkConfig::srtp`] says (a key that differs per call).
    fn srtp_params(&self, params: &mut MediaParams, index: usize) {
        if self.cfg.srtp == TrunkSrtp::Off {
            return;
        }
        let mut key = [0u8; 30];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (self.addr.port() as usize * 31 + index * 131 + i * 17) as u8 ^ 0xa5;
        }
        params.crypto = Some(Crypto::new(1, "AES_CM_128_HMAC_SHA1_80", &key));
        params.allow_plain_rtp = self.cfg.srtp == TrunkSrtp::Allowed;
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut TrunkCall)) {
        if let Ok(mut calls) = self.shared.calls.lock()
            && let Some(c) = calls.get_mut(index)
        {
            f(c);
        }
        self.shared.changed.notify_waiters();
    }

    fn new_record(&self, call: TrunkCall) -> usize {
        let idx = match self.shared.calls.lock() {
            Ok(mut calls) => {
                calls.push(call);
                calls.len() - 1
            }
            Err(_) => 0,
        };
        self.shared.changed.notify_waiters();
        idx
    }

    fn respond(&mut self, tx: TxId, status: u16, reason: Option<&str>, now: Instant) {
        if let Some(mut r) = self.runner.ua().make_response(tx, status) {
            if let Some(reason) = reason {
                r.reason = reason.to_owned();
            }
            let _ = self.runner.ua().respond(tx, r, now);
        }
    }

    /// The `Record-Route` values of the proxies between this trunk's UA and the gateway, in header
    /// order as the gateway sees them: the entry nearest the gateway names the edge socket, the
    /// other our Contact socket (so a gateway that reverses the wrong way sends to the wrong
    /// place). `in_responses`: in our responses (termination, the gateway is the UAC) rather than in
    /// our INVITE (origination, the gateway is the UAS).
    fn record_route(&self, in_responses: bool) -> Vec<String> {
        if self.cfg.tls_server.is_some() || self.cfg.tls_client.is_some() {
            // Over TLS the "proxies" would route in-dialog requests over plain UDP: none.
            return Vec::new();
        }
        let edge = format!("<sip:{};lr;r2=on;hop=edge>", self.edge);
        let core = format!("<sip:{};lr;r2=on;hop=core>", self.addr);
        // Each proxy prepends its entry: the one nearest the UAS comes first.
        if in_responses {
            vec![core, edge]
        } else {
            vec![edge, core]
        }
    }

    /// A response to the gateway's INVITE carrying our proxies' `Record-Route` (one header line
    /// each) and an optional SDP body; records our To tag. The dialog, for a 2xx.
    fn respond_routed(
        &mut self,
        tx: TxId,
        status: u16,
        reason: &str,
        sdp: Option<String>,
        call: usize,
        now: Instant,
    ) -> Option<DialogId> {
        let mut r = self.runner.ua().make_response(tx, status)?;
        r.reason = reason.to_owned();
        for v in self.record_route(true) {
            r.push_header("Record-Route", v);
        }
        if let Some(b) = sdp {
            r.set_body("application/sdp", Bytes::from(b));
        }
        if let Some(tag) = r.to_tag() {
            self.update(call, |c| {
                c.local_tag.get_or_insert(tag);
            });
        }
        self.runner.ua().respond(tx, r, now).ok().flatten()
    }

    async fn on_event(&mut self, ev: UaEvent, now: Instant) {
        match ev {
            UaEvent::IncomingCall {
                tx,
                request,
                transport,
                ..
            } => self.on_invite(tx, request, transport, now).await,
            UaEvent::CallCancelled { tx } => {
                if let Some(cid) = self.by_tx.get(&tx)
                    && let Some(c) = self.calls.get(cid)
                {
                    let i = c.index;
                    if let Some(p) = self.pending.remove(cid)
                        && let Some(e) = p.early
                    {
                        e.abort();
                    }
                    self.timers.retain(|(_, t)| !matches!(t, Timer::Answer { tx: x, .. } | Timer::Final { tx: x, .. } if *x == tx));
                    self.update(i, |c| {
                        c.final_status = Some(487);
                        c.ended_by = Some("cancelled".into());
                        c.ended_at = Some(now);
                    });
                }
            }
            UaEvent::DialogRequest {
                dialog,
                tx,
                request,
            } => {
                let mut status = 200;
                let mut body = None;
                if request.method == Method::Refer {
                    status = 202;
                    if let Some(cid) = self.by_dialog.get(&dialog)
                        && let Some(c) = self.calls.get(cid)
                    {
                        let target = request.header("Refer-To").next().unwrap_or("").to_owned();
                        self.update(c.index, |c| c.refer_to.push(target));
                    }
                } else if matches!(request.method, Method::Invite | Method::Update)
                    && let Some(cid) = self.by_dialog.get(&dialog)
                    && let Some(c) = self.calls.get(cid)
                    && let Some(offer) = std::str::from_utf8(&request.body)
                        .ok()
                        .and_then(|t| SessionDescription::parse(t).ok())
                {
                    let mut ours = c.media_params.clone();
                    ours.session_version += 1;
                    match sdp::answer(&offer, &ours) {
                        Ok(a) => body = Some(a.sdp.to_string()),
                        Err(_) => status = 488,
                    }
                }
                if let Some(mut r) = self.runner.ua().make_response(tx, status) {
                    if let Some(b) = body {
                        r.set_body("application/sdp", Bytes::from(b));
                    }
                    if self.runner.ua().respond(tx, r, now).is_ok()
                        && request.method == Method::Invite
                        && (200..300).contains(&status)
                        && let Some(cid) = self.by_dialog.get(&dialog)
                        && let Some(c) = self.calls.get(cid)
                        && let Ok(cseq) = request.cseq()
                    {
                        self.update(c.index, |c| c.invite_2xx_cseqs.push(cseq.seq));
                    }
                }
                if request.method == Method::Refer {
                    for (code, reason, last) in [(100, "Trying", false), (200, "OK", true)] {
                        if let Some(d) = self.runner.ua().dialog_mut(&dialog) {
                            let n = d.new_refer_notify(code, reason, last);
                            let _ = self.runner.ua().send_built_in_dialog(&dialog, n, now);
                        }
                    }
                }
            }
            UaEvent::DialogTerminated { dialog, reason } => {
                if let Some(cid) = self.by_dialog.remove(&dialog)
                    && let Some(mut c) = self.calls.remove(&cid)
                {
                    if let Some(m) = c.media.take() {
                        m.stop.notify_one();
                    }
                    let by = match reason {
                        EndReason::RemoteBye => "remote_bye",
                        EndReason::LocalBye => "local_bye",
                        _ => "dialog_lost",
                    };
                    self.update(c.index, |c| {
                        c.ended_by.get_or_insert(by.into());
                        c.ended_at.get_or_insert(now);
                    });
                }
            }
            UaEvent::Response {
                tx,
                method: Method::Invite,
                response,
                dialog,
            } => {
                if let Some(&index) = self.reinvites.get(&tx) {
                    if response.status >= 200 {
                        self.reinvites.remove(&tx);
                        self.update(index, |c| c.reinvite_answers.push(response.status));
                    }
                    return;
                }
                // Origination: our INVITE to the gateway.
                let Some(cid) = self.by_tx.get(&tx).cloned() else {
                    return;
                };
                let Some(c) = self.calls.get(&cid) else {
                    return;
                };
                let index = c.index;
                if response.status >= 200 {
                    self.update(index, |c| c.final_status = Some(response.status));
                }
                if (200..300).contains(&response.status) {
                    let offer = c.offer.clone();
                    let answer = std::str::from_utf8(&response.body)
                        .ok()
                        .and_then(|t| SessionDescription::parse(t).ok());
                    if let (Some(d), Some(offer), Some(answer)) = (dialog, offer, answer)
                        && let Ok(n) = sdp::negotiated(&offer, &answer)
                    {
                        self.by_dialog.insert(d.clone(), cid.clone());
                        self.answered(&cid, d, &n, now).await;
                    }
                } else if response.status >= 300 {
                    self.update(index, |c| {
                        c.ended_by = Some("rejected".into());
                        c.ended_at = Some(now);
                    });
                }
            }
            _ => {}
        }
    }

    async fn on_invite(
        &mut self,
        tx: TxId,
        request: Request,
        transport: TransportKind,
        now: Instant,
    ) {
        let call_id = request.call_id().unwrap_or_default().to_owned();
        let index = match self.calls.get(&call_id) {
            Some(c) => c.index,
            None => {
                let idx = self.new_record(TrunkCall {
                    direction: "termination".into(),
                    request_uri: request.uri.to_string(),
                    from: request.header("From").next().unwrap_or("").to_owned(),
                    to: request.header("To").next().unwrap_or("").to_owned(),
                    call_id: call_id.clone(),
                    sip_call_id: call_id.clone(),
                    contact: self.contact.clone(),
                    record_route: self.record_route(true),
                    first_invite_at: Some(now),
                    ..TrunkCall::default()
                });
                let params = MediaParams::g711(self.addr.ip(), 0, 42);
                self.calls.insert(
                    call_id.clone(),
                    CallState {
                        index: idx,
                        media: None,
                        media_params: params,
                        offer: None,
                    },
                );
                idx
            }
        };
        self.update(index, |c| {
            c.invites += 1;
            c.transport = Some(transport);
        });
        self.by_tx.insert(tx, call_id.clone());
        // Twilio's first provisional.
        self.respond(tx, 100, Some("trying -- your call is important to us"), now);

        if let Some((user, pass)) = self.cfg.credentials.clone() {
            match self.challenges.check(&request, &user, &pass) {
                DigestVerdict::Accept => self.update(index, |c| c.auth_ok = Some(true)),
                DigestVerdict::Challenge => {
                    let value = self.challenges.issue(now.elapsed().as_nanos() as u32);
                    if request.header("Proxy-Authorization").next().is_some() {
                        self.update(index, |c| c.auth_ok = Some(false));
                    }
                    if let Some(mut r) = self.runner.ua().make_response(tx, 407) {
                        r.reason = "Proxy Authentication required".into();
                        r.push_header("Proxy-Authenticate", value);
                        let _ = self.runner.ua().respond(tx, r, now);
                    }
                    return;
                }
                DigestVerdict::Forbidden => {
                    self.update(index, |c| c.auth_ok = Some(false));
                    self.respond(tx, 403, Some("Forbidden"), now);
                    self.update(index, |c| {
                        c.final_status = Some(403);
                        c.ended_by = Some("rejected".into());
                        c.ended_at = Some(now);
                    });
                    return;
                }
            }
        }

        // Media: bind a socket and answer the offer.
        let offer = std::str::from_utf8(&request.body)
            .ok()
            .and_then(|t| SessionDescription::parse(t).ok());
        let sock = match UdpSocket::bind(SocketAddr::new(self.addr.ip(), 0)).await {
            Ok(s) => s,
            Err(_) => {
                self.respond(tx, 500, None, now);
                return;
            }
        };
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut params = MediaParams::g711(self.addr.ip(), port, 42 + index as u64);
        if self.cfg.prefer_pcma {
            params.codecs.reverse();
        }
        self.srtp_params(&mut params, index);
        let offered_srtp = offer
            .as_ref()
            .is_some_and(|o| o.media.iter().any(|m| m.is_srtp()));
        self.update(index, |c| c.offered_srtp = offered_srtp);
        let answer = offer.as_ref().and_then(|o| sdp::answer(o, &params).ok());
        let Some(answer) = answer else {
            self.respond(tx, 488, None, now);
            self.update(index, |c| {
                c.final_status = Some(488);
                c.ended_by = Some("rejected".into());
                c.ended_at = Some(now);
            });
            return;
        };
        if let Some(c) = self.calls.get_mut(&call_id) {
            c.media_params = params;
        }
        self.respond_routed(tx, 180, "Ringing", None, index, now);
        let sdp_text = answer.sdp.to_string();
        let sock = Arc::new(sock);
        let mut early = None;
        if self.cfg.early_media && self.cfg.outcome == Outcome::Answer {
            self.respond_routed(
                tx,
                183,
                "Session Progress",
                Some(sdp_text.clone()),
                index,
                now,
            );
            // The far end's early media (a quiet ringback) flows from the 183 on, as Twilio
            // passes the PSTN's.
            if let Some(dest) = answer.negotiated.remote_rtp {
                let law = G711::from_payload_type(answer.negotiated.codec.pt).unwrap_or(G711::Ulaw);
                let task = tokio::spawn(early_media(
                    sock.clone(),
                    dest,
                    law,
                    answer.negotiated.codec.pt,
                    self.shared.clone(),
                    index,
                    srtp_keys(&answer.negotiated),
                ));
                early = Some(task.abort_handle());
            }
        }
        let at = now + self.cfg.ring_time;
        match self.cfg.outcome {
            Outcome::Answer => {
                self.timers.push((at, Timer::Answer { tx, call: index }));
                self.pending.insert(
                    call_id.clone(),
                    PendingEntry {
                        sock,
                        answer: Some((answer.negotiated, sdp_text)),
                        early,
                    },
                );
            }
            Outcome::Busy => self.timers.push((
                at,
                Timer::Final {
                    tx,
                    status: 486,
                    call: index,
                },
            )),
            Outcome::Reject(status) => self.timers.push((
                at,
                Timer::Final {
                    tx,
                    status,
                    call: index,
                },
            )),
            Outcome::NoAnswer => {}
        }
    }

    async fn on_timer(&mut self, t: Timer, now: Instant) {
        match t {
            Timer::Final { tx, status, call } => {
                self.respond(tx, status, None, now);
                if let Some(cid) = self.by_tx.get(&tx)
                    && let Some(p) = self.pending.remove(cid)
                    && let Some(e) = p.early
                {
                    e.abort();
                }
                self.update(call, |c| {
                    c.final_status = Some(status);
                    c.ended_by = Some("rejected".into());
                    c.ended_at = Some(now);
                });
            }
            Timer::Answer { tx, call } => {
                let Some(cid) = self.by_tx.get(&tx).cloned() else {
                    return;
                };
                let Some(PendingEntry {
                    sock,
                    answer: Some((negotiated, sdp_text)),
                    early,
                }) = self.pending.remove(&cid)
                else {
                    return;
                };
                if let Some(e) = early {
                    e.abort();
                }
                let cseq = self
                    .runner
                    .ua()
                    .endpoint()
                    .request(tx)
                    .and_then(|r| r.cseq().ok())
                    .map(|c| c.seq);
                if let Some(d) = self.respond_routed(tx, 200, "OK", Some(sdp_text), call, now) {
                    self.update(call, |c| {
                        c.final_status = Some(200);
                        c.invite_2xx_cseqs.extend(cseq);
                    });
                    self.by_dialog.insert(d.clone(), cid.clone());
                    self.start_media(&cid, d, sock, &negotiated, now);
                }
            }
            Timer::Hangup { dialog } => {
                if self.by_dialog.contains_key(&dialog) {
                    let _ = self.runner.ua().bye(&dialog, now);
                }
            }
            Timer::Reinvite { dialog, call } => {
                let Some(c) = self.calls.get_mut(&call) else {
                    return;
                };
                c.media_params.session_version += 1;
                let body = sdp::build_offer(&c.media_params).to_string();
                if let Ok(tx) = self.runner.ua().send_in_dialog(
                    &dialog,
                    Method::Invite,
                    Some(("application/sdp".into(), Bytes::from(body))),
                    Vec::new(),
                    now,
                ) {
                    self.reinvites.insert(tx, c.index);
                }
            }
        }
    }

    async fn answered(&mut self, cid: &str, dialog: DialogId, n: &sdp::Negotiated, now: Instant) {
        let Some(PendingEntry { sock, .. }) = self.pending.remove(cid) else {
            return;
        };
        self.start_media(cid, dialog, sock, n, now);
    }

    fn start_media(
        &mut self,
        cid: &str,
        dialog: DialogId,
        sock: Arc<UdpSocket>,
        n: &sdp::Negotiated,
        now: Instant,
    ) {
        let Some(c) = self.calls.get_mut(cid) else {
            return;
        };
        let law = G711::from_payload_type(n.codec.pt).unwrap_or(G711::Ulaw);
        let index = c.index;
        let keys = srtp_keys(n);
        // Re-offers and re-answers keep the line the offer/answer settled on.
        if n.local_crypto.is_some() {
            c.media_params.crypto = n.local_crypto.clone();
        }
        let stop = Arc::new(Notify::new());
        c.media = Some(MediaTask { stop: stop.clone() });
        if let Some(after) = self.cfg.reinvite_after {
            self.timers.push((
                now + after,
                Timer::Reinvite {
                    dialog: dialog.clone(),
                    call: cid.to_owned(),
                },
            ));
        }
        let hangup_after = self
            .shared
            .hangup_override
            .lock()
            .ok()
            .and_then(|o| *o)
            .or(self.cfg.hangup_after);
        if let Some(after) = hangup_after {
            self.timers.push((now + after, Timer::Hangup { dialog }));
        }
        if let Ok(mut calls) = self.shared.calls.lock()
            && let Some(rec) = calls.get_mut(index)
        {
            rec.answered_at = Some(now);
            rec.law = Some(law);
            rec.dtmf_pt = n.dtmf_pt;
            rec.srtp = keys.clone();
            rec.media_addr = sock.local_addr().ok();
        }
        self.shared.changed.notify_waiters();
        let play = self
            .shared
            .calls
            .lock()
            .ok()
            .and_then(|c| c.get(index).map(|r| r.request_uri.clone()))
            .and_then(|uri| {
                self.cfg
                    .play_by_number
                    .iter()
                    .find(|(n, _)| uri.contains(n.as_str()))
                    .map(|(_, p)| p.clone())
            })
            .unwrap_or_else(|| self.cfg.play.clone());
        let media = MediaPlayer {
            sock,
            dest: n.remote_rtp,
            law,
            codec_pt: n.codec.pt,
            dtmf_pt: n.dtmf_pt,
            play,
            play_loop: self.cfg.play_loop,
            delay: self.cfg.play_delay,
            shared: self.shared.clone(),
            index,
            record_sends: self.cfg.record_sends,
            srtp: keys,
            dtmf: self.cfg.dtmf_every.map(|every| DtmfPlan {
                every: every.max(Duration::from_millis(200)),
                until: self.cfg.dtmf_until,
                digits: self.cfg.dtmf_digits.chars().collect(),
                samples: (self.cfg.dtmf_duration.as_millis() * 8).clamp(160, 8000) as u16,
            }),
        };
        tokio::spawn(media.run(stop));
    }

    async fn originate(&mut self, o: Originate, now: Instant) {
        let sock = match UdpSocket::bind(SocketAddr::new(self.addr.ip(), 0)).await {
            Ok(s) => s,
            Err(_) => return,
        };
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut params = MediaParams::g711(self.addr.ip(), port, 7);
        if self.cfg.srtp == TrunkSrtp::Required {
            let n = self.shared.calls.lock().map(|c| c.len()).unwrap_or(0);
            self.srtp_params(&mut params, n);
        }
        let offer = sdp::build_offer(&params);
        let transport = if self.cfg.tls_client.is_some() {
            TransportKind::Tls
        } else {
            TransportKind::Udp
        };
        let host = format!("{}:{}", o.gateway.ip(), o.gateway.port());
        let (Ok(target), Ok(from)) = (
            Uri::parse(&format!("sip:{}@{host}", o.to)),
            Uri::parse(&format!("sip:{}@trunk.pstn.twilio.com", o.from)),
        ) else {
            return;
        };
        let params_inv = InviteParams {
            target,
            to: None,
            from: NameAddr::new(from),
            destination: o.gateway,
            transport,
            body: Some(("application/sdp".into(), Bytes::from(offer.to_string()))),
            credentials: None,
            session_expires: None,
            extra_headers: vec![
                ("X-Twilio-CallSid".into(), o.call_sid.clone()),
                (
                    "X-Twilio-AccountSid".into(),
                    "AC00000000000000000000000000000000".into(),
                ),
                ("User-Agent".into(), "Twilio Gateway".into()),
            ]
            .into_iter()
            .chain(
                self.record_route(false)
                    .into_iter()
                    .map(|v| ("Record-Route".to_owned(), v)),
            )
            .collect(),
        };
        let Ok(tx) = self.runner.ua().invite(params_inv, now) else {
            return;
        };
        let (sip_call_id, local_tag) = self
            .runner
            .ua()
            .endpoint()
            .request(tx)
            .map(|r| (r.call_id().unwrap_or_default().to_owned(), r.from_tag()))
            .unwrap_or_default();
        let cid = format!("orig-{}", o.call_sid);
        let idx = self.new_record(TrunkCall {
            direction: "origination".into(),
            request_uri: format!("sip:{}@{host}", o.to),
            from: o.from.clone(),
            to: o.to.clone(),
            call_id: cid.clone(),
            sip_call_id,
            local_tag,
            contact: self.contact.clone(),
            record_route: self.record_route(false),
            invites: 1,
            offered_srtp: params.crypto.is_some(),
            transport: Some(transport),
            ..TrunkCall::default()
        });
        self.calls.insert(
            cid.clone(),
            CallState {
                index: idx,
                media: None,
                media_params: params,
                offer: Some(offer),
            },
        );
        self.pending.insert(
            cid.clone(),
            PendingEntry {
                sock: Arc::new(sock),
                answer: None,
                early: None,
            },
        );
        self.by_tx.insert(tx, cid);
    }
}

/// Between the transports and the UA: records every message received (on the Contact socket
/// or the edge socket) as it was on the wire, and feeds it on. Responses lose their
/// `Record-Route` on the way in: the "proxies" those entries name are this trunk itself, so
/// its own UA must not route its ACK and BYE through them (a real edge proxy would forward them).
#[allow(clippy::disallowed_methods)] // an emulator's I/O reads the clock
async fn tap(
    mut rx: mpsc::Receiver<Incoming>,
    edge_sock: UdpSocket,
    main: SocketAddr,
    edge: SocketAddr,
    shared: Arc<Shared>,
    out: mpsc::Sender<Incoming>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (mut msg, local) = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => (m, main),
                None => break,
            },
            r = edge_sock.recv_from(&mut buf) => match r {
                Ok((n, source)) => (
                    Incoming {
                        data: Bytes::copy_from_slice(&buf[..n]),
                        source,
                        transport: TransportKind::Udp,
                    },
                    edge,
                ),
                Err(_) => continue,
            },
        };
        if let Some(w) = WireMessage::parse(&msg.data, Instant::now(), msg.source, local) {
            if w.status().is_some()
                && !w.header_lines("Record-Route").is_empty()
                && let Some(stripped) = strip_record_route(&msg.data)
            {
                msg.data = stripped;
            }
            let key = w.call_id().unwrap_or_default().to_owned();
            if let Ok(mut wire) = shared.wire.lock() {
                wire.entry(key).or_default().push(w);
            }
        }
        if out.send(msg).await.is_err() {
            break;
        }
    }
}

/// The SRTP keys (ours, theirs) an offer/answer agreed.
fn srtp_keys(n: &sdp::Negotiated) -> Option<(SdesKey, SdesKey)> {
    let l = SdesKey::parse(&n.local_crypto.as_ref()?.to_string()).ok()?;
    let r = SdesKey::parse(&n.remote_crypto.as_ref()?.to_string()).ok()?;
    Some((l, r))
}

/// Sends one RTP packet, SRTP-protected when `srtp` is set; true when it left.
async fn send_rtp(
    sock: &UdpSocket,
    srtp: &mut Option<SrtpSession>,
    packet: &[u8],
    dest: SocketAddr,
) -> bool {
    match srtp {
        Some(s) => match s.protect_rtp(packet) {
            Ok(p) => sock.send_to(&p, dest).await.is_ok(),
            Err(_) => false,
        },
        None => sock.send_to(packet, dest).await.is_ok(),
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct PendingEntry {
    sock: Arc<UdpSocket>,
    answer: Option<(sdp::Negotiated, String)>,
    /// The early-media sender, stopped at the answer.
    early: Option<tokio::task::AbortHandle>,
}

/// Early media after our 183: a quiet 425 Hz ringback (peak 100, below any speech detector and
/// the jitter buffer's quiet level) in 20 ms packets, its own SSRC, until aborted.
async fn early_media(
    sock: Arc<UdpSocket>,
    dest: SocketAddr,
    law: G711,
    pt: u8,
    shared: Arc<Shared>,
    index: usize,
    keys: Option<(SdesKey, SdesKey)>,
) {
    let mut srtp = keys.and_then(|(l, r)| SrtpSession::new(&l, &r).ok());
    let mut out = vec![0u8; 1500];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let ssrc = 0x5eed_0183u32 ^ index as u32;
    let mut n = 0u32;
    for seq in 0u16.. {
        tick.tick().await;
        let payload: Vec<u8> = (0..160)
            .map(|_| {
                let t = f64::from(n) / 8000.0;
                n = n.wrapping_add(1);
                law.encode((100.0 * (std::f64::consts::TAU * 425.0 * t).sin()) as i16)
            })
            .collect();
        let h = RtpHeader {
            marker: seq == 0,
            payload_type: pt,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc,
        };
        if let Ok(len) = write_rtp(&h, &payload, &mut out)
            && send_rtp(&sock, &mut srtp, &out[..len], dest).await
            && let Ok(mut calls) = shared.calls.lock()
            && let Some(c) = calls.get_mut(index)
        {
            c.early_rtp_sent += 1;
        }
    }
}

struct MediaPlayer {
    sock: Arc<UdpSocket>,
    dest: Option<SocketAddr>,
    law: G711,
    codec_pt: u8,
    dtmf_pt: Option<u8>,
    play: PlaySource,
    play_loop: bool,
    delay: Duration,
    shared: Arc<Shared>,
    index: usize,
    record_sends: bool,
    srtp: Option<(SdesKey, SdesKey)>,
    dtmf: Option<DtmfPlan>,
}

/// When and what the phone dials (RFC 4733 events in the audio stream).
#[derive(Debug, Clone)]
struct DtmfPlan {
    every: Duration,
    until: Option<Duration>,
    digits: Vec<char>,
    /// Duration of each digit, in 8 kHz samples.
    samples: u16,
}

pub use trunkline_media::udp::enable_rx_timestamps;

/// Receive one datagram into `buf`: its length, when this task got it, and the kernel's receive
/// time (`SO_TIMESTAMPNS`, see [`enable_rx_timestamps`]) moved onto the [`Instant`] clock (the
/// stamp's wall-clock age subtracted from the user-space arrival), or `None` without a stamp.
#[allow(clippy::disallowed_methods)] // an emulator's I/O reads the clock
pub async fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, Instant, Option<Instant>)> {
    let mut space = udp::StampSpace::new();
    let d = sock
        .async_io(Interest::READABLE, || {
            udp::recv_stamped(sock, buf, &mut space)
        })
        .await?;
    let at = Instant::now();
    let kernel_at = d
        .stamp
        .map(|k| udp::kernel_arrival(at, SystemTime::now(), k, Duration::MAX));
    Ok((d.len, at, kernel_at))
}

impl MediaPlayer {
    #[allow(clippy::disallowed_methods)] // an emulator's I/O loop owns the clock
    async fn run(self, stop: Arc<Notify>) {
        let rx_sock = self.sock.clone();
        let shared = self.shared.clone();
        let index = self.index;
        let mut rx_srtp = self
            .srtp
            .as_ref()
            .and_then(|(l, r)| SrtpSession::new(l, r).ok());
        let mut srtp = self
            .srtp
            .as_ref()
            .and_then(|(l, r)| SrtpSession::new(l, r).ok());
        let receiver = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let _ = enable_rx_timestamps(&rx_sock);
            while let Ok((n, at, kernel_at)) = recv_stamped(&rx_sock, &mut buf).await {
                let plain;
                let data: &[u8] = match rx_srtp.as_mut() {
                    // RTCP (SRTCP) shares nothing with this port: RTP only here.
                    Some(s) => match s.unprotect_rtp(&buf[..n]) {
                        Ok(p) => {
                            plain = p;
                            &plain
                        }
                        Err(_) => {
                            if let Ok(mut calls) = shared.calls.lock()
                                && let Some(c) = calls.get_mut(index)
                            {
                                c.srtp_failures += 1;
                            }
                            continue;
                        }
                    },
                    None => &buf[..n],
                };
                let Ok(p) = parse_rtp(data) else {
                    continue;
                };
                let pkt = RxPacket {
                    at,
                    kernel_at,
                    pt: p.header.payload_type,
                    marker: p.header.marker,
                    seq: p.header.sequence,
                    ts: p.header.timestamp,
                    payload: p.payload.to_vec(),
                };
                if let Ok(mut calls) = shared.calls.lock()
                    && let Some(c) = calls.get_mut(index)
                {
                    c.rtp_in.push(pkt);
                }
                shared.changed.notify_waiters();
            }
        });
        let sender = async {
            let Some(dest) = self.dest else {
                return std::future::pending::<()>().await;
            };
            tokio::time::sleep(self.delay).await;
            if let Ok(mut calls) = self.shared.calls.lock()
                && let Some(c) = calls.get_mut(self.index)
            {
                c.play_started_at = Some(Instant::now());
            }
            if self.play.packets.is_empty() {
                return std::future::pending::<()>().await;
            }
            let start = tokio::time::Instant::now();
            let (mut seq, ssrc) = (1000u16, 0x7711_2233u32);
            let mut loop_offset = Duration::ZERO;
            let mut ts_offset = 0u32;
            let mut out = vec![0u8; 1500];
            // The digit being sent, and when the next one starts (from the start of playback).
            let mut digit: Option<DtmfSender> = None;
            let mut next_digit = self.dtmf.as_ref().map(|d| d.every);
            let mut digits_sent = 0usize;
            loop {
                for p in &self.play.packets {
                    let due = loop_offset + p.at;
                    tokio::time::sleep_until(start + due).await;
                    // RFC 4733 events ride along the audio, one per 20 ms packet, same SSRC and
                    // sequence space, the event's timestamp being the audio's at its start.
                    if let (Some(plan), Some(pt)) = (&self.dtmf, self.dtmf_pt)
                        && p.law.is_some()
                    {
                        let ts_now = 0x1000_0000u32.wrapping_add(ts_offset).wrapping_add(p.ts);
                        if digit.is_none()
                            && next_digit.is_some_and(|t| due >= t)
                            && plan.until.is_none_or(|u| due < u)
                            && !plan.digits.is_empty()
                        {
                            let c = plan.digits[digits_sent % plan.digits.len()];
                            digits_sent += 1;
                            digit = DtmfSender::new(c, plan.samples, 10, ts_now);
                            next_digit = next_digit.map(|t| t + plan.every);
                            if digit.is_some()
                                && let Ok(mut calls) = self.shared.calls.lock()
                                && let Some(rec) = calls.get_mut(self.index)
                            {
                                rec.dtmf_sent.push((Instant::now(), c));
                            }
                        }
                        if let Some(d) = digit.as_mut() {
                            if let Some(ev) = d.next_packet(160) {
                                let h = RtpHeader {
                                    marker: ev.marker,
                                    payload_type: pt,
                                    sequence: seq,
                                    timestamp: ev.timestamp,
                                    ssrc,
                                };
                                seq = seq.wrapping_add(1);
                                if let Ok(n) = write_rtp(&h, &ev.payload, &mut out) {
                                    send_rtp(&self.sock, &mut srtp, &out[..n], dest).await;
                                }
                            }
                            if d.is_done() {
                                digit = None;
                            }
                        }
                    }
                    let (pt, payload) = match p.law {
                        Some(l) => {
                            let mut data = p.payload.clone();
                            if l != self.law {
                                l.transcode_in_place(self.law, &mut data);
                            }
                            (self.codec_pt, data)
                        }
                        None => match self.dtmf_pt {
                            Some(pt) => (pt, p.payload.clone()),
                            None => continue,
                        },
                    };
                    let h = RtpHeader {
                        marker: p.marker,
                        payload_type: pt,
                        sequence: seq,
                        timestamp: 0x1000_0000u32.wrapping_add(ts_offset).wrapping_add(p.ts),
                        ssrc,
                    };
                    seq = seq.wrapping_add(1);
                    if let Ok(n) = write_rtp(&h, &payload, &mut out) {
                        send_rtp(&self.sock, &mut srtp, &out[..n], dest).await;
                        let sent = Instant::now();
                        if let Ok(mut calls) = self.shared.calls.lock()
                            && let Some(c) = calls.get_mut(self.index)
                        {
                            c.rtp_sent += 1;
                            if loop_offset.is_zero() {
                                c.sent_at.push(sent);
                            }
                            if self.record_sends && p.law.is_some() {
                                c.sent_log.push(sent);
                            }
                        }
                    }
                }
                if !self.play_loop {
                    // Keep the stream alive with silence, as a phone does.
                    let silence = vec![self.law.silence(); 160];
                    let mut t = self.play.duration();
                    let mut ts = self.play.packets.last().map_or(0, |p| p.ts) + 160;
                    loop {
                        tokio::time::sleep_until(start + loop_offset + t).await;
                        let h = RtpHeader {
                            marker: false,
                            payload_type: self.codec_pt,
                            sequence: seq,
                            timestamp: 0x1000_0000u32.wrapping_add(ts_offset).wrapping_add(ts),
                            ssrc,
                        };
                        seq = seq.wrapping_add(1);
                        if let Ok(n) = write_rtp(&h, &silence, &mut out) {
                            send_rtp(&self.sock, &mut srtp, &out[..n], dest).await;
                        }
                        t += Duration::from_millis(20);
                        ts = ts.wrapping_add(160);
                    }
                }
                loop_offset += self.play.duration();
                ts_offset = ts_offset
                    .wrapping_add(self.play.packets.last().map_or(0, |p| p.ts))
                    .wrapping_add(160);
            }
        };
        tokio::select! {
            () = sender => {}
            () = stop.notified() => {}
        }
        receiver.abort();
    }
}

/// One SIP message the trunk received, as it was on the wire: start line and header lines
/// verbatim (folded lines joined), independent of the SIP stack the trunk answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// When the trunk read it.
    pub at: Instant,
    /// Where it came from.
    pub source: SocketAddr,
    /// The trunk address it arrived at: its Contact address ([`TrunkEmulator::addr`]) or its
    /// edge ([`TrunkEmulator::edge_addr`], the address of its Record-Route entries).
    pub local: SocketAddr,
    /// The start line.
    pub start_line: String,
    /// Header lines in order: (name as sent, value as sent, trimmed).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// Compact header forms (RFC 3261 §7.3.3) of the headers looked up here.
const COMPACT: [(&str, &str); 8] = [
    ("i", "call-id"),
    ("f", "from"),
    ("t", "to"),
    ("v", "via"),
    ("m", "contact"),
    ("l", "content-length"),
    ("c", "content-type"),
    ("k", "supported"),
];

fn header_name_is(sent: &str, name: &str) -> bool {
    let full = |n: &str| {
        let n = n.trim().to_ascii_lowercase();
        COMPACT
            .iter()
            .find(|(c, _)| *c == n)
            .map_or(n, |(_, f)| (*f).to_owned())
    };
    full(sent) == full(name)
}

impl WireMessage {
    /// Splits a received datagram into start line, header lines and body; `None` when it has no
    /// start line.
    pub fn parse(raw: &[u8], at: Instant, source: SocketAddr, local: SocketAddr) -> Option<Self> {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => match text.find("\n\n") {
                Some(i) => (&text[..i], &text[i + 2..]),
                None => (&text[..], ""),
            },
        };
        let mut lines = head.lines().map(|l| l.trim_end_matches('\r'));
        let start_line = lines.find(|l| !l.trim().is_empty())?.to_owned();
        let mut headers: Vec<(String, String)> = Vec::new();
        for l in lines {
            if l.starts_with([' ', '\t']) {
                if let Some((_, v)) = headers.last_mut() {
                    v.push(' ');
                    v.push_str(l.trim());
                }
            } else if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Some(WireMessage {
            at,
            source,
            local,
            start_line,
            headers,
            body: body.to_owned(),
        })
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        (!self.start_line.starts_with("SIP/")).then(|| self.start_line.split(' ').next())?
    }

    /// The Request-URI of a request, as sent.
    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start_line.split(' ').nth(1)
    }

    /// The status of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.split(' ').next()?.parse().ok()
    }

    /// The value of every `name` header line, in order (compact forms included).
    pub fn header_lines(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| header_name_is(k, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first `name` header line.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_lines(name).into_iter().next()
    }

    /// Every value of a comma-separated header (`Record-Route`, `Route`, `Via`…) over all its
    /// lines, in order, each verbatim (split at commas outside `<…>` and quotes).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.header_lines(name)
            .into_iter()
            .flat_map(split_header_values)
            .collect()
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// The CSeq: (number, method).
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let (n, m) = v.trim().split_once(char::is_whitespace)?;
        Some((n.trim().parse().ok()?, m.trim().to_owned()))
    }

    /// The tag of the From header.
    pub fn from_tag(&self) -> Option<String> {
        tag_param(self.header("From")?)
    }

    /// The tag of the To header.
    pub fn to_tag(&self) -> Option<String> {
        tag_param(self.header("To")?)
    }
}

/// Splits one header line into its comma-separated values, verbatim (trimmed).
pub fn split_header_values(line: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut angle, mut quoted) = (false, false);
    for ch in line.chars() {
        match ch {
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !angle && !quoted => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// The `tag` parameter of a From/To value (after the `<…>` of a name-addr).
fn tag_param(value: &str) -> Option<String> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_owned())
    })
}

/// The datagram with its `Record-Route` header lines removed (folded continuations included).
fn strip_record_route(raw: &[u8]) -> Option<Bytes> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut out = String::with_capacity(raw.len());
    let mut dropping = false;
    for (i, l) in head.split("\r\n").enumerate() {
        if i > 0 && l.starts_with([' ', '\t']) {
            if dropping {
                continue;
            }
        } else {
            dropping = i > 0
                && l.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("Record-Route"));
            if dropping {
                continue;
            }
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&raw[end + 2..]);
    Some(Bytes::from(bytes))
}

/// Checks the SIP the gateway sent on `call` (its messages as the trunk received them,
/// [`TrunkEmulator::received_sip`]) against RFC 3261: the dialog's tags and Call-ID, the
/// `Record-Route` echo in 18x/2xx (§12.1.1, verbatim and in order), the route set of every
/// in-dialog request (§12.2.1.1: `Route` = the Record-Route values reversed for the UAC, in order
/// for the UAS, sent to the first route's address = this trunk's edge, Request-URI = our
/// Contact), the CSeq of in-dialog requests (ACK = its INVITE's number, others increasing), an
/// ACK for every 2xx this trunk sent to an INVITE (§13.2.2.4), and no Record-Route on a 100.
/// Returns what is wrong; empty when nothing is.
pub fn sip_problems(call: &TrunkCall, msgs: &[WireMessage], edge: SocketAddr) -> Vec<String> {
    let mut p = Vec::new();
    let Some(local_tag) = call.local_tag.as_deref() else {
        if call.final_status.is_some_and(|s| (200..300).contains(&s)) {
            p.push("answered but no local tag recorded".into());
        }
        return p;
    };
    let termination = call.direction == "termination";
    let name = |m: &WireMessage| m.start_line.clone();
    for m in msgs {
        if m.call_id() != Some(call.sip_call_id.as_str()) {
            p.push(format!("{}: Call-ID {:?}", name(m), m.call_id()));
        }
    }
    // The gateway's tag: the From tag of its INVITE (termination), the To tag of its 2xx
    // (origination).
    let remote_tag = if termination {
        msgs.iter()
            .find(|m| m.method() == Some("INVITE") && m.to_tag().is_none())
            .and_then(WireMessage::from_tag)
    } else {
        msgs.iter()
            .find(|m| m.status().is_some_and(|s| (200..300).contains(&s)))
            .and_then(WireMessage::to_tag)
    };
    let Some(remote_tag) = remote_tag else {
        if call.final_status.is_some_and(|s| (200..300).contains(&s)) {
            p.push("answered, but no tag of the gateway's side seen".into());
        }
        return p;
    };
    let initial_cseq = if termination {
        msgs.iter()
            .filter(|m| m.method() == Some("INVITE") && m.to_tag().is_none())
            .filter_map(|m| m.cseq().map(|c| c.0))
            .max()
    } else {
        None
    };
    // Responses from the gateway.
    for m in msgs.iter().filter(|m| m.status().is_some()) {
        let status = m.status().unwrap_or(0);
        let rr = m.header_values("Record-Route");
        let is_invite = m.cseq().is_some_and(|c| c.1 == "INVITE");
        if status == 100 && !rr.is_empty() {
            p.push(format!("{}: a 100 carries Record-Route {rr:?}", name(m)));
        }
        if !termination && is_invite && (101..300).contains(&status) {
            // Our INVITE: the gateway is the UAS and must echo our Record-Route.
            if rr != call.record_route {
                p.push(format!(
                    "{}: Record-Route {rr:?}, the INVITE had {:?} (RFC 3261 §12.1.1: verbatim, \
                     in order)",
                    name(m),
                    call.record_route
                ));
            }
            if status >= 200 && m.to_tag().is_none() {
                p.push(format!("{}: no To tag", name(m)));
            }
        }
        // A response to a request of ours: From = its From (our tag), To = its To (the gateway's
        // tag, once the dialog exists: a 100 or a tag-less 1xx has none yet). Every request we
        // send on a call is in its dialog or creates it.
        let (want_from, want_to) = (local_tag, remote_tag.as_str());
        if m.from_tag().as_deref() != Some(want_from) {
            p.push(format!(
                "{}: From tag {:?}, ours is {want_from}",
                name(m),
                m.from_tag()
            ));
        }
        if status > 100
            && let Some(t) = m.to_tag()
            && t != want_to
        {
            p.push(format!(
                "{}: To tag {t}, the gateway's is {want_to}",
                name(m)
            ));
        }
    }
    // Requests from the gateway in the dialog.
    let want_route: Vec<String> = if termination {
        call.record_route.iter().rev().cloned().collect()
    } else {
        call.record_route.clone()
    };
    let mut last_cseq: Option<(u32, String)> = None;
    for m in msgs.iter().filter(|m| m.method().is_some()) {
        let method = m.method().unwrap_or_default();
        if termination && method == "INVITE" && m.to_tag().is_none() {
            continue; // the initial INVITE (and its authenticated retry)
        }
        if termination
            && method == "ACK"
            && let Some((n, _)) = m.cseq()
            && !call.invite_2xx_cseqs.contains(&n)
            && let Some(invite) = msgs.iter().find(|i| {
                i.method() == Some("INVITE")
                    && i.to_tag().is_none()
                    && i.cseq().map(|c| c.0) == Some(n)
            })
        {
            // The ACK of a non-2xx final (the 407): part of the INVITE transaction, same
            // Request-URI and CSeq number as its INVITE (RFC 3261 §17.1.1.3).
            if m.request_uri() != invite.request_uri() {
                p.push(format!("{}: not the Request-URI of its INVITE", name(m)));
            }
            continue;
        }
        if m.from_tag().as_deref() != Some(remote_tag.as_str()) {
            p.push(format!(
                "{}: From tag {:?}, the gateway's is {remote_tag}",
                name(m),
                m.from_tag()
            ));
        }
        if m.to_tag().as_deref() != Some(local_tag) {
            p.push(format!(
                "{}: To tag {:?}, ours is {local_tag}",
                name(m),
                m.to_tag()
            ));
        }
        if m.request_uri() != Some(call.contact.as_str()) {
            p.push(format!(
                "{}: Request-URI is not our Contact {} (RFC 3261 §12.2.1.1)",
                name(m),
                call.contact
            ));
        }
        let route = m.header_values("Route");
        if route != want_route {
            p.push(format!(
                "{}: Route {route:?}, the route set is {want_route:?} (RFC 3261 §12.2.1.1)",
                name(m)
            ));
        }
        if !want_route.is_empty() && m.local != edge {
            p.push(format!(
                "{}: sent to {}, not to the first route's address {edge}",
                name(m),
                m.local
            ));
        }
        let Some((n, cm)) = m.cseq() else {
            p.push(format!("{}: no CSeq", name(m)));
            continue;
        };
        if cm != method {
            p.push(format!("{}: CSeq method {cm}", name(m)));
        }
        if method == "ACK" {
            if !call.invite_2xx_cseqs.contains(&n) {
                p.push(format!("{}: CSeq {n} ACKs no 2xx of ours", name(m)));
            }
            continue;
        }
        if let Some(first) = initial_cseq
            && n <= first
        {
            p.push(format!(
                "{}: CSeq {n} not above the initial INVITE's {first}",
                name(m)
            ));
        }
        if let Some((ln, lm)) = &last_cseq
            && (n < *ln || (n == *ln && *lm != method))
        {
            p.push(format!("{}: CSeq {n} after {ln} {lm}", name(m)));
        }
        last_cseq = Some((n, method.to_owned()));
    }
    // §13.2.2.4: every 2xx to an INVITE is ACKed.
    for n in &call.invite_2xx_cseqs {
        let acked = msgs
            .iter()
            .any(|m| m.method() == Some("ACK") && m.cseq().is_some_and(|c| c.0 == *n));
        if !acked {
            p.push(format!(
                "no ACK for our 2xx to INVITE CSeq {n} (RFC 3261 §13.2.2.4)"
            ));
        }
    }
    p
}

/// What the trunk makes of the credentials on an INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestVerdict {
    /// The credentials answer one of our challenges with the right password.
    Accept,
    /// No credentials, or they answer a nonce we never issued: challenge (again) with 407.
    Challenge,
    /// Credentials that fail: 403, as Twilio answers bad credentials (TWILIO.md item 7).
    Forbidden,
}

/// Nonces remembered at most; the oldest are forgotten first (a client then gets a new 407).
const MAX_ISSUED_NONCES: usize = 4096;

/// The digest challenges this trunk issued (nonce → opaque), and the check of an answer to one
/// of them, strict as a real trunk: realm `sip.twilio.com`, a nonce we issued, its `opaque`
/// echoed, `uri` equal to the Request-URI, MD5 with `qop=auth` (what the challenge offered), and
/// the right user name and response.
#[derive(Debug, Default)]
pub struct DigestChallenges {
    seq: u64,
    issued: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

impl DigestChallenges {
    /// No challenge issued yet.
    pub fn new() -> DigestChallenges {
        DigestChallenges::default()
    }

    /// A fresh challenge: the `Proxy-Authenticate` value Twilio sends
    /// (`Digest realm="sip.twilio.com",qop="auth",nonce=…,opaque=…`). `salt` varies the nonce
    /// between emulator instances.
    pub fn issue(&mut self, salt: u32) -> String {
        self.seq += 1;
        let nonce = format!("{:016x}{salt:08x}", self.seq * 0x9E37_79B9);
        let opaque = format!("{:x}", self.seq);
        if self.order.len() >= MAX_ISSUED_NONCES
            && let Some(old) = self.order.pop_front()
        {
            self.issued.remove(&old);
        }
        self.order.push_back(nonce.clone());
        self.issued.insert(nonce.clone(), opaque.clone());
        format!(
            "Digest realm=\"{TWILIO_REALM}\",qop=\"auth\",nonce=\"{nonce}\",opaque=\"{opaque}\""
        )
    }

    /// Checks the `Proxy-Authorization` values of `request` against `user` / `password`.
    pub fn check(&self, request: &Request, user: &str, password: &str) -> DigestVerdict {
        let mut values = request.header("Proxy-Authorization").peekable();
        if values.peek().is_none() {
            return DigestVerdict::Challenge;
        }
        // Credentials for another realm are not ours to judge; ours must be there and right.
        let mut ours = None;
        for v in values {
            match Authorization::parse(v) {
                Ok(a) if a.realm == TWILIO_REALM => ours = Some(a),
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "trunk: malformed Proxy-Authorization");
                    return DigestVerdict::Forbidden;
                }
            }
        }
        let Some(auth) = ours else {
            return DigestVerdict::Forbidden;
        };
        let Some(opaque) = self.issued.get(&auth.nonce) else {
            return DigestVerdict::Challenge;
        };
        let uri_ok = auth.uri == request.uri.to_string()
            || Uri::parse(&auth.uri).is_ok_and(|u| u == request.uri);
        let ok = auth.opaque.as_deref() == Some(opaque.as_str())
            && uri_ok
            && auth.algorithm_kind() == Some(Algorithm::Md5)
            && auth.qop == Some(Qop::Auth)
            && auth.username == user
            && auth.verify(password, request.method.as_str(), &request.body);
        if ok {
            DigestVerdict::Accept
        } else {
            DigestVerdict::Forbidden
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_sip::auth::{Challenge, Credentials, DigestClient};

    const RURI: &str = "sip:+15550001111@example.pstn.twilio.com";

    fn invite() -> Request {
        Request::new(Method::Invite, Uri::parse(RURI).unwrap())
    }

    /// `request` with credentials answering `challenge` (a `Proxy-Authenticate` value).
    fn answered(challenge: &str, password: &str, uri: &str) -> Request {
        let mut c = DigestClient::new(Credentials {
            username: "trunkline".into(),
            password: password.into(),
        });
        let a = c
            .authorize(
                &Challenge::parse(challenge).unwrap(),
                "INVITE",
                uri,
                b"",
                "cn",
            )
            .unwrap();
        let mut r = invite();
        r.headers.push("Proxy-Authorization", a.to_string());
        r
    }

    #[test]
    fn right_answer_to_our_challenge_is_accepted() {
        let mut ch = DigestChallenges::new();
        let value = ch.issue(1);
        assert_eq!(
            ch.check(&invite(), "trunkline", "s3cret"),
            DigestVerdict::Challenge
        );
        let r = answered(&value, "s3cret", RURI);
        assert_eq!(ch.check(&r, "trunkline", "s3cret"), DigestVerdict::Accept);
        assert_eq!(ch.check(&r, "other", "s3cret"), DigestVerdict::Forbidden);
        let r = answered(&value, "wrong", RURI);
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
    }

    #[test]
    fn nonce_opaque_uri_and_realm_are_checked() {
        let mut ch = DigestChallenges::new();
        let value = ch.issue(1);
        // A nonce we never issued: a new challenge.
        let foreign = value.replace("nonce=\"", "nonce=\"ff");
        let r = answered(&foreign, "s3cret", RURI);
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Challenge
        );
        // Opaque not echoed, or another one.
        let no_opaque = value.split(",opaque=").next().unwrap().to_owned();
        let r = answered(&no_opaque, "s3cret", RURI);
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
        let r = answered(
            &value.replace("opaque=\"1\"", "opaque=\"2\""),
            "s3cret",
            RURI,
        );
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
        // A digest-uri that is not the Request-URI.
        let r = answered(&value, "s3cret", "sip:+15550002222@example.pstn.twilio.com");
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
        // Another realm only.
        let r = answered(&value.replace(TWILIO_REALM, "evil.example"), "s3cret", RURI);
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
        // Garbage.
        let mut r = invite();
        r.headers.push("Proxy-Authorization", "Digest username=\"x");
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Forbidden
        );
    }

    #[test]
    fn wire_messages_keep_repeated_headers_verbatim_and_in_order() {
        let raw = b"SIP/2.0 200 OK\r\nRecord-Route: <sip:a;lr;x=1>\r\ni: abc\r\n\
Record-Route: <sip:b:5070;lr>,\r\n <sip:\"c,d\"@e;lr>\r\nTo: <sip:x@y>;tag=t1\r\n\
CSeq: 7 INVITE\r\nContent-Length: 2\r\n\r\nhi";
        let at = Instant::now();
        let a: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let m = WireMessage::parse(raw, at, a, a).unwrap();
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.call_id(), Some("abc"), "compact form");
        assert_eq!(
            m.header_values("Record-Route"),
            ["<sip:a;lr;x=1>", "<sip:b:5070;lr>", "<sip:\"c,d\"@e;lr>"]
        );
        assert_eq!(m.to_tag().as_deref(), Some("t1"));
        assert_eq!(m.cseq(), Some((7, "INVITE".into())));
        assert_eq!(m.body, "hi");
        let stripped = strip_record_route(raw).unwrap();
        let s = WireMessage::parse(&stripped, at, a, a).unwrap();
        assert!(s.header_lines("Record-Route").is_empty());
        assert_eq!(s.headers.len(), m.headers.len() - 2);
        assert_eq!(s.body, "hi");
    }

    #[test]
    fn old_nonces_are_forgotten() {
        let mut ch = DigestChallenges::new();
        let first = ch.issue(1);
        for _ in 0..MAX_ISSUED_NONCES {
            ch.issue(1);
        }
        let r = answered(&first, "s3cret", RURI);
        assert_eq!(
            ch.check(&r, "trunkline", "s3cret"),
            DigestVerdict::Challenge
        );
    }
}
