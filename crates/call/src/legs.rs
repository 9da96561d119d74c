//! Every SIP call leg of the gateway, sans-IO: the one place where SIP turns into what a call
//! needs ([`SipEvent`]) and a call's commands ([`SipAction`]) turn into SIP.
//!
//! [`Legs`] sits on top of a [`Ua`] (transactions, dialogs, digest auth, session timers) and owns:
//! - the leg table, by leg id, by transaction and by dialog;
//! - offer/answer, in one place: our outbound offer and its answer (18x early media, 2xx),
//!   the answer to an inbound offer ([`Legs::answer_offer`]), answers to re-INVITE/UPDATE offers
//!   (hold/unhold, a new address), offerless re-INVITEs, and our session-refresh re-offers;
//! - the Request-URI and From of outbound INVITEs, built as typed [`Uri`]s;
//! - failure mapping (`X-Twilio-Error`, Timer B as 408), REFER and its NOTIFY progress
//!   (`message/sipfrag`, RFC 3515) for `transfer_call`, bounded by a NOTIFY deadline;
//! - the inbound source filter (the policy itself is the gateway's: [`SourceFilter`]) and, when
//!   configured, digest authentication of inbound INVITEs ([`InboundAuth`]: 401 challenges,
//!   403 for wrong credentials, `sip::auth::DigestServer`);
//! - failover between the trunk's targets (RFC 3263 §4.3, [`Failover`]): an outbound INVITE
//!   that gets 503, times out, hits a transport error, or hears nothing at all from its target
//!   within [`Failover::target_timeout`] is sent to the next target (resolved by the caller,
//!   in order) as a new client transaction with the same Call-ID and From tag and a higher
//!   CSeq, as long as [`Failover::total`] (the ring timeout) has not passed since the first.
//!
//! Inputs: [`Legs::outbound`], [`Legs::answer_offer`], [`Legs::handle_action`],
//! [`Legs::handle_ua_event`], [`Legs::handle_timeout`], [`Legs::forget`]. Outputs:
//! [`Legs::poll_event`] (`(LegId, LegEvent)`) and [`Legs::poll_timeout`]; what goes on the wire
//! is queued on the [`Ua`] passed in. No channel, no clock read, no socket: the tokio layer
//! (`runtime::sip_task`) only routes.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_media::g711::G711;
use trunkline_media::session::PayloadMap;
use trunkline_media::srtp::SdesKey;
use trunkline_sip::auth::{Algorithm, Credentials, DigestServer, Verdict};
use trunkline_sip::dialog::DialogId;
use trunkline_sip::message::{HostPort, Method, NameAddr, Request, Response, SipUri, Uri};
use trunkline_sip::sdp::{self, Crypto, MediaParams, Negotiated, SessionDescription};
use trunkline_sip::transaction::{TransportKind, TxId};
use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaEvent};

use crate::core::{NegotiatedMedia, SipAction, SipEvent};

/// A leg's id. Outbound ids are chosen by the caller of [`Legs::outbound`] (below
/// [`INBOUND_LEG_BASE`]); inbound ids are given by [`Legs`] (from it up).
pub type LegId = u64;

/// The first id [`Legs`] gives an inbound leg.
pub const INBOUND_LEG_BASE: LegId = 1 << 62;

/// How long a transfer waits for the final NOTIFY after its REFER was accepted.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(32);

/// Failover between a call's targets (RFC 3263 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// How long a target may stay silent (not even a 100 Trying) before the next one is tried:
    /// the role of Kamailio/OpenSIPS tm `fr_timer` (no reply at all → failure route; any 1xx
    /// hands over to `fr_inv_timer`, here the ring timeout). Their default is 30 s and it is
    /// lowered per transaction for fast failover (`$T_fr_timeout`); 4 s by default here.
    pub target_timeout: Duration,
    /// No new attempt starts later than this after the first INVITE (the ring timeout).
    pub total: Duration,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            target_timeout: Duration::from_millis(4000),
            total: Duration::from_secs(60),
        }
    }
}

/// Where outbound calls go.
#[derive(Debug, Clone)]
pub struct TrunkTarget {
    /// Host and port written in the Request-URI: the termination URI's. Twilio drops INVITEs
    /// whose Request-URI names any other host.
    pub request_uri_host: HostPort,
    /// Over what.
    pub transport: TransportKind,
    /// Digest credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// Our caller ID (E.164), the From user.
    pub caller_id: String,
    /// Session timer to ask for (RFC 4028).
    pub session_expires: Option<Duration>,
    /// SDES-SRTP on the trunk's media (outbound offers and inbound answers).
    pub encryption: Encryption,
}

/// Media encryption policy of the trunk (`trunk.media_encryption`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Plain RTP only: we offer RTP/AVP; an offer with only RTP/SAVP gets 488.
    #[default]
    Disabled,
    /// We offer RTP/SAVP and re-offer RTP/AVP in a second INVITE if the trunk answers 488;
    /// inbound, SRTP offers get SRTP and plain ones plain RTP.
    Allowed,
    /// SRTP only: we offer RTP/SAVP; an RTP/AVP offer gets 488.
    Required,
}

/// The suites we offer, in order of preference (RFC 4568 §6.2; both key with 30 bytes).
pub const OFFERED_SUITES: [&str; 2] = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

/// A crypto line with a fresh master key and salt from the OS CSPRNG (`getrandom`); `None`
/// only if the OS has no randomness to give.
fn fresh_crypto(tag: u32, suite: &str) -> Option<Crypto> {
    let mut key_salt = [0u8; 30];
    getrandom::fill(&mut key_salt).ok()?;
    Some(Crypto::new(tag, suite, &key_salt))
}

/// Decides whether an INVITE from this address may be taken (the gateway's inbound policy).
#[derive(Clone)]
pub struct SourceFilter(Arc<dyn Fn(IpAddr) -> bool + Send + Sync>);

impl SourceFilter {
    /// A filter from a predicate.
    pub fn new(f: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Every source allowed (tests, and trunks authenticated otherwise).
    pub fn allow_all() -> Self {
        Self::new(|_| true)
    }

    /// Whether `ip` may send INVITEs.
    pub fn allows(&self, ip: IpAddr) -> bool {
        (self.0)(ip)
    }
}

impl fmt::Debug for SourceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceFilter")
    }
}

/// Digest authentication of inbound INVITEs (a trunk that authenticates towards us).
#[derive(Debug, Clone)]
pub struct InboundAuth {
    /// Realm of our challenges.
    pub realm: String,
    /// The user name and password the trunk must present.
    pub credentials: Credentials,
    /// Key of our nonces.
    pub secret: u64,
    /// How long a nonce stays valid (then `stale=true`).
    pub nonce_ttl: Duration,
    /// Algorithms challenged with, in order of preference.
    pub algorithms: Vec<Algorithm>,
}

/// What [`Legs`] needs to know.
#[derive(Debug, Clone)]
pub struct LegsConfig {
    /// The trunk outbound INVITEs go to.
    pub trunk: TrunkTarget,
    /// Which sources may place inbound calls (others get 403).
    pub inbound: SourceFilter,
    /// How long a transfer waits for its final NOTIFY.
    pub notify_timeout: Duration,
    /// Failover between outbound targets.
    pub failover: Failover,
    /// Challenge inbound INVITEs (`None`: source filter only).
    pub inbound_auth: Option<InboundAuth>,
}

/// An INVITE from an allowed source, for the service to answer ([`Legs::answer_offer`] then
/// [`SipAction::Accept`]) or refuse ([`SipAction::Reject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The leg.
    pub leg: LegId,
    /// Caller (From user part, e.g. `+15551234567`).
    pub from: String,
    /// Callee (Request-URI user part, else To's).
    pub to: String,
    /// Where it came from.
    pub source: SocketAddr,
    /// Whether the INVITE carried an SDP offer that parsed.
    pub has_offer: bool,
    /// `X-` headers (Twilio's `X-Twilio-CallSid`, …), in order.
    pub x_headers: Vec<(String, String)>,
    /// The SIP Call-ID.
    pub call_id: String,
}

/// What [`Legs`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegEvent {
    /// A new inbound leg.
    Incoming(Box<IncomingCall>),
    /// A SIP outcome for the call that owns the leg.
    Call(SipEvent),
    /// The leg is gone from the table (torn down, failed, refused): nothing more comes for it.
    Closed,
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LegsStats {
    /// INVITEs refused because of their source.
    pub inbound_refused_source: u64,
    /// INVITEs offered to the service.
    pub inbound_offered: u64,
    /// Outbound INVITEs sent.
    pub outbound_invites: u64,
    /// Outbound calls re-offered with plain RTP after the trunk answered 488 to SRTP
    /// (`media_encryption = "allowed"`).
    pub srtp_plain_retries: u64,
    /// Offers refused with 488 because of the media encryption policy (SRTP required and
    /// not offered, or SRTP offered and disabled).
    pub srtp_policy_refusals: u64,
    /// Outbound INVITEs sent to a next target after the previous one failed (RFC 3263 §4.3).
    pub failovers: u64,
    /// Inbound INVITEs answered 401 (no, stale or foreign credentials) ([`InboundAuth`]).
    pub inbound_auth_challenges: u64,
    /// Inbound INVITEs refused 403 for wrong credentials ([`InboundAuth`]).
    pub inbound_auth_failures: u64,
}

/// Why an inbound offer cannot be answered: the SIP status to reject it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refuse(pub u16);

#[derive(Debug)]
enum Role {
    /// We place the call to `to`.
    Outbound { to: String, destination: SocketAddr },
    /// The phone called; `offer` is theirs, until answered.
    Inbound {
        offer: Option<Box<SessionDescription>>,
    },
}

#[derive(Debug)]
struct Refer {
    tx: Option<TxId>,
    tool_call_id: String,
    /// Set once the REFER was accepted: when to give up waiting for the final NOTIFY.
    notify_deadline: Option<Instant>,
}

#[derive(Debug)]
struct Leg {
    role: Role,
    /// Our media parameters (what re-offers are answered with); `None` until an inbound offer
    /// is answered.
    media: Option<MediaParams>,
    /// The last SDP we sent (offer or answer).
    local_sdp: Option<SessionDescription>,
    invite_tx: Option<TxId>,
    dialog: Option<DialogId>,
    refer: Option<Refer>,
    /// The peer's SRTP crypto line in use (what a re-offer is compared with, RFC 4568 §7.1.4).
    remote_crypto: Option<Crypto>,
    /// Outbound, `allowed`: the plain-RTP INVITE after a 488 to our SRTP offer was sent.
    plain_retried: bool,
    /// Outbound: no SRTP key could be made (no OS randomness): the INVITE fails.
    keyless: bool,
    /// Outbound: the targets and the attempt in progress.
    attempts: Option<Attempts>,
}

/// An outbound leg's targets and where it stands (RFC 3263 §4.3).
#[derive(Debug)]
struct Attempts {
    targets: Vec<SocketAddr>,
    /// Index of the target of the INVITE in progress.
    current: usize,
    /// The INVITE as last sent (re-sent to the next target).
    invite: Option<Request>,
    /// The highest CSeq used so far.
    cseq: u32,
    /// Whether the current target answered anything (then only its final response counts).
    heard: bool,
    /// When the current target is given up if it stays silent.
    silent_deadline: Option<Instant>,
    /// No new attempt after this.
    deadline: Option<Instant>,
}

/// Every SIP leg of the gateway (see the module docs).
#[derive(Debug)]
pub struct Legs {
    cfg: LegsConfig,
    /// Boxed: a table keeps up to twice as many slots as entries, and a `Leg` (SDP, media
    /// parameters, attempts) is ~700 bytes.
    legs: HashMap<LegId, Box<Leg>>,
    by_tx: HashMap<TxId, LegId>,
    by_dialog: HashMap<DialogId, LegId>,
    events: VecDeque<(LegId, LegEvent)>,
    next_inbound: LegId,
    stats: LegsStats,
    auth: Option<DigestServer>,
}

impl Legs {
    /// No legs yet.
    pub fn new(cfg: LegsConfig) -> Self {
        let auth = cfg.inbound_auth.as_ref().map(|a| {
            DigestServer::new(&a.realm, a.credentials.clone(), a.secret, a.nonce_ttl)
                .with_algorithms(a.algorithms.clone())
        });
        Self {
            auth,
            cfg,
            legs: HashMap::new(),
            by_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            events: VecDeque::new(),
            next_inbound: INBOUND_LEG_BASE,
            stats: LegsStats::default(),
        }
    }

    /// Legs not yet torn down on the wire.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// True when no leg is left.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> LegsStats {
        self.stats
    }

    /// Registers outbound leg `leg` to `to` (E.164) offering `media`; the INVITE leaves on
    /// [`SipAction::Invite`] and goes to `destination` (the resolved termination host or proxy).
    pub fn outbound(&mut self, leg: LegId, to: &str, destination: SocketAddr, media: MediaParams) {
        self.outbound_targets(leg, to, vec![destination], media);
    }

    /// Registers outbound leg `leg` like [`Legs::outbound`], with the trunk's targets in the
    /// order to try them (RFC 3263: SRV order, then each target's addresses). An empty list
    /// fails the leg at [`SipAction::Invite`] with 503.
    pub fn outbound_targets(
        &mut self,
        leg: LegId,
        to: &str,
        targets: Vec<SocketAddr>,
        mut media: MediaParams,
    ) {
        let destination = targets
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        // SRTP: one line per suite, each with its own fresh key (RFC 4568 §6.1).
        let enc = self.cfg.trunk.encryption;
        let mut keyless = false;
        let mut lines = Vec::new();
        if enc != Encryption::Disabled {
            for (i, suite) in OFFERED_SUITES.iter().enumerate() {
                match fresh_crypto(i as u32 + 1, suite) {
                    Some(c) => lines.push(c),
                    None => keyless = true,
                }
            }
        }
        let mut lines = lines.into_iter();
        media.crypto = lines.next();
        media.allow_plain_rtp = enc != Encryption::Required;
        let mut offer = sdp::build_offer(&media);
        if let Some(m) = offer.media.first_mut() {
            m.crypto.extend(lines);
        }
        self.legs.insert(
            leg,
            Box::new(Leg {
                role: Role::Outbound {
                    to: to.to_owned(),
                    destination,
                },
                media: Some(media),
                local_sdp: Some(offer),
                invite_tx: None,
                dialog: None,
                refer: None,
                remote_crypto: None,
                plain_retried: false,
                keyless,
                attempts: Some(Attempts {
                    targets,
                    current: 0,
                    invite: None,
                    cseq: 1,
                    heard: false,
                    silent_deadline: None,
                    deadline: None,
                }),
            }),
        );
    }

    /// Answers inbound leg `leg`'s offer with `media`: the SDP answer is kept for the 200 that
    /// [`SipAction::Accept`] sends, and what was agreed is returned for the call. The error is
    /// the status to reject the INVITE with (488: no offer, or nothing in common; 481: no such
    /// leg).
    pub fn answer_offer(
        &mut self,
        leg: LegId,
        media: MediaParams,
    ) -> Result<NegotiatedMedia, Refuse> {
        let l = self.legs.get_mut(&leg).ok_or(Refuse(481))?;
        let Role::Inbound { offer } = &l.role else {
            return Err(Refuse(481));
        };
        let offer = offer.as_ref().ok_or(Refuse(488))?;
        let enc = self.cfg.trunk.encryption;
        let Some((crypto, allow_plain)) = choose_crypto(offer, enc, None, None) else {
            self.stats.srtp_policy_refusals += 1;
            tracing::info!(
                leg,
                ?enc,
                "inbound offer refused by the media encryption policy: 488"
            );
            return Err(Refuse(488));
        };
        let mut media = media;
        media.crypto = crypto;
        media.allow_plain_rtp = allow_plain;
        let answer = match sdp::answer(offer, &media) {
            Ok(a) => a,
            Err(_) => {
                if offer_is_srtp_only(offer) != (enc == Encryption::Required) {
                    self.stats.srtp_policy_refusals += 1;
                }
                return Err(Refuse(488));
            }
        };
        let neg = to_negotiated_media(&answer.negotiated).ok_or(Refuse(488))?;
        media.crypto = answer.negotiated.local_crypto.clone();
        l.remote_crypto = answer.negotiated.remote_crypto.clone();
        l.local_sdp = Some(answer.sdp);
        l.media = Some(media);
        Ok(neg)
    }

    /// The call that owned `leg` is gone: stop reporting for it.
    pub fn forget(&mut self, leg: LegId) {
        if let Some(l) = self.legs.remove(&leg) {
            if let Some(t) = l.invite_tx {
                self.by_tx.remove(&t);
            }
            if let Some(t) = l.refer.and_then(|r| r.tx) {
                self.by_tx.remove(&t);
            }
            if let Some(d) = l.dialog {
                self.by_dialog.remove(&d);
            }
        }
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<(LegId, LegEvent)> {
        self.events.pop_front()
    }

    /// When [`Legs::handle_timeout`] is due (a transfer waiting for its NOTIFY).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.legs
            .values()
            .flat_map(|l| {
                let notify = l.refer.as_ref().and_then(|r| r.notify_deadline);
                let silent = l
                    .attempts
                    .as_ref()
                    .filter(|a| !a.heard)
                    .and_then(|a| a.silent_deadline);
                [notify, silent]
            })
            .flatten()
            .min()
    }

    /// Fires what is due at `now` (transfer NOTIFY deadlines, silent targets).
    pub fn handle_timeout(&mut self, ua: &mut Ua, now: Instant) {
        let silent: Vec<LegId> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                l.attempts
                    .as_ref()
                    .is_some_and(|a| !a.heard && a.silent_deadline.is_some_and(|d| d <= now))
            })
            .map(|(id, _)| *id)
            .collect();
        for leg in silent {
            self.on_silent_target(ua, leg, now);
        }
        let due: Vec<LegId> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                l.refer
                    .as_ref()
                    .and_then(|r| r.notify_deadline)
                    .is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for leg in due {
            if let Some(r) = self.legs.get_mut(&leg).and_then(|l| l.refer.take()) {
                self.emit(
                    leg,
                    SipEvent::TransferResult {
                        tool_call_id: r.tool_call_id,
                        ok: false,
                        detail: "no final NOTIFY for the REFER".into(),
                    },
                );
            }
        }
    }

    fn emit(&mut self, leg: LegId, ev: SipEvent) {
        self.events.push_back((leg, LegEvent::Call(ev)));
    }

    fn close(&mut self, leg: LegId) {
        if self.legs.contains_key(&leg) {
            self.forget(leg);
            self.events.push_back((leg, LegEvent::Closed));
        }
    }

    /// A call's command for its leg.
    pub fn handle_action(&mut self, ua: &mut Ua, leg: LegId, action: SipAction, now: Instant) {
        if !self.legs.contains_key(&leg) {
            tracing::debug!(leg, ?action, "action for a finished leg");
            return;
        }
        match action {
            SipAction::Invite if self.legs.get(&leg).is_some_and(|l| l.keyless) => {
                tracing::error!(leg, "no randomness for SRTP keys: call not placed");
                self.emit(
                    leg,
                    SipEvent::Failed {
                        status: 500,
                        reason: "no randomness for SRTP keys".into(),
                        after_auth: false,
                    },
                );
                self.close(leg);
            }
            SipAction::Invite => self.send_invite(ua, leg, now),
            SipAction::Ringing => {
                if let Some(tx) = self.legs.get(&leg).and_then(|l| l.invite_tx)
                    && let Some(r) = ua.make_response(tx, 180)
                {
                    let _ = ua.respond(tx, r, now);
                }
            }
            SipAction::Accept => self.accept(ua, leg, now),
            SipAction::Reject { status } => {
                if let Some(tx) = self.legs.get(&leg).and_then(|l| l.invite_tx)
                    && let Some(r) = ua.make_response(tx, status)
                {
                    let _ = ua.respond(tx, r, now);
                }
                self.close(leg);
            }
            SipAction::Cancel => match self.legs.get(&leg).and_then(|l| l.invite_tx) {
                Some(tx) => {
                    if let Err(e) = ua.cancel(tx, now) {
                        tracing::debug!(error = %e, "cancel");
                    }
                }
                // No INVITE ever left (`connect_at = trigger` and the agent failed): the leg
                // is withdrawn, nothing goes on the wire.
                None => self.close(leg),
            },
            SipAction::Bye => {
                if let Some(d) = self.legs.get(&leg).and_then(|l| l.dialog.clone())
                    && let Err(e) = ua.bye(&d, now)
                {
                    tracing::debug!(error = %e, "bye");
                }
            }
            SipAction::Refer {
                target,
                tool_call_id,
            } => self.send_refer(ua, leg, &target, tool_call_id, now),
        }
    }

    fn send_invite(&mut self, ua: &mut Ua, leg: LegId, now: Instant) {
        let Some(l) = self.legs.get(&leg) else { return };
        let Role::Outbound { to, destination } = &l.role else {
            return;
        };
        if l.attempts.as_ref().is_some_and(|a| a.targets.is_empty()) {
            self.emit(
                leg,
                SipEvent::Failed {
                    status: 503,
                    reason: "no address for the trunk".into(),
                    after_auth: false,
                },
            );
            self.close(leg);
            return;
        }
        let trunk = &self.cfg.trunk;
        let from_host = ua
            .contact(trunk.transport)
            .as_sip()
            .map(|s| s.host_port.clone());
        let (Some(target), Some(from)) = (
            request_uri(to, &trunk.request_uri_host).map(|u| with_transport(u, trunk.transport)),
            from_host.and_then(|h| request_uri(&trunk.caller_id, &h)),
        ) else {
            self.emit(
                leg,
                SipEvent::Failed {
                    status: 400,
                    reason: "bad destination".into(),
                    after_auth: false,
                },
            );
            self.close(leg);
            return;
        };
        let params = InviteParams {
            target,
            to: None,
            from: NameAddr::new(from),
            destination: *destination,
            transport: trunk.transport,
            body: l.local_sdp.as_ref().map(sdp_body),
            credentials: trunk.credentials.clone(),
            session_expires: trunk.session_expires,
            extra_headers: Vec::new(),
        };
        match ua.invite(params, now) {
            Ok(tx) => {
                self.stats.outbound_invites += 1;
                self.by_tx.insert(tx, leg);
                let failover = self.cfg.failover;
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.invite_tx = Some(tx);
                    if let Some(a) = l.attempts.as_mut() {
                        // Kept only for a failover (a copy of the INVITE with its SDP: ~3 KiB).
                        a.invite = (a.targets.len() > 1)
                            .then(|| ua.sent_request(tx).cloned())
                            .flatten();
                        a.heard = false;
                        // The first INVITE starts the bound of all attempts (a plain-RTP
                        // retry after 488 does not extend it).
                        a.deadline.get_or_insert(now + failover.total);
                        a.silent_deadline =
                            (a.targets.len() > 1).then(|| now + failover.target_timeout);
                    }
                }
                if let Some(call_id) = ua.endpoint().request(tx).and_then(|r| r.call_id()) {
                    let call_id = call_id.to_owned();
                    self.emit(leg, SipEvent::Invited { call_id });
                }
            }
            Err(e) => {
                self.emit(
                    leg,
                    SipEvent::Failed {
                        status: 500,
                        reason: e.to_string(),
                        after_auth: false,
                    },
                );
                self.close(leg);
            }
        }
    }

    fn accept(&mut self, ua: &mut Ua, leg: LegId, now: Instant) {
        let Some(l) = self.legs.get(&leg) else { return };
        let Some(tx) = l.invite_tx else { return };
        let Some(sdp) = l.local_sdp.as_ref().filter(|_| l.media.is_some()) else {
            // Accept before answer_offer: a bug in the caller, not the peer's.
            tracing::warn!(leg, "accept without an SDP answer: 500");
            if let Some(r) = ua.make_response(tx, 500) {
                let _ = ua.respond(tx, r, now);
            }
            self.close(leg);
            return;
        };
        let Some(mut r) = ua.make_response(tx, 200) else {
            return;
        };
        let (ct, body) = sdp_body(sdp);
        r.set_body(&ct, body);
        match ua.respond(tx, r, now) {
            Ok(Some(d)) => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.dialog = Some(d.clone());
                }
                self.by_dialog.insert(d, leg);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "200 OK not sent"),
        }
    }

    fn send_refer(
        &mut self,
        ua: &mut Ua,
        leg: LegId,
        target: &str,
        tool_call_id: String,
        now: Instant,
    ) {
        let fail = |detail: &str| SipEvent::TransferResult {
            tool_call_id: tool_call_id.clone(),
            ok: false,
            detail: detail.to_owned(),
        };
        let dialog = self.legs.get(&leg).and_then(|l| l.dialog.clone());
        if self.legs.get(&leg).is_some_and(|l| l.refer.is_some()) {
            self.emit(leg, fail("a transfer is already in progress"));
            return;
        }
        let (Some(d), Ok(uri)) = (dialog, Uri::parse(target)) else {
            self.emit(leg, fail("no dialog or bad target"));
            return;
        };
        let Some(dialog) = ua.dialog_mut(&d) else {
            self.emit(leg, fail("dialog gone"));
            return;
        };
        let req = dialog.new_refer(&uri);
        match ua.send_built_in_dialog(&d, req, now) {
            Ok(tx) => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.refer = Some(Refer {
                        tx: Some(tx),
                        tool_call_id,
                        notify_deadline: None,
                    });
                }
                self.by_tx.insert(tx, leg);
            }
            Err(e) => self.emit(leg, fail(&e.to_string())),
        }
    }

    /// What the UA reported.
    pub fn handle_ua_event(&mut self, ua: &mut Ua, ev: UaEvent, now: Instant) {
        match ev {
            UaEvent::IncomingCall {
                tx,
                request,
                source,
                ..
            } => self.on_incoming(ua, tx, &request, source, now),
            UaEvent::CallCancelled { tx } => {
                if let Some(leg) = self.by_tx.get(&tx).copied() {
                    self.emit(leg, SipEvent::RemoteCancel);
                    self.close(leg);
                }
            }
            UaEvent::Response {
                tx,
                method,
                response,
                dialog,
            } => {
                if !self.plain_retry(ua, tx, &method, &response, now) {
                    self.on_response(ua, tx, &method, &response, dialog, now);
                }
            }
            UaEvent::Timeout { tx } => self.on_timeout(ua, tx, now),
            UaEvent::DialogRequest {
                dialog,
                tx,
                request,
            } => self.on_dialog_request(ua, dialog, tx, &request, now),
            UaEvent::SessionRefreshDue { dialog } => {
                // Twilio's Allow has no UPDATE: refresh with a re-INVITE re-offering our SDP.
                let Some(leg) = self.by_dialog.get(&dialog).copied() else {
                    return;
                };
                let body = self.legs.get_mut(&leg).and_then(|l| {
                    l.local_sdp.as_mut().map(|s| {
                        s.bump_version();
                        sdp_body(s)
                    })
                });
                if let Err(e) = ua.send_in_dialog(&dialog, Method::Invite, body, Vec::new(), now) {
                    tracing::debug!(error = %e, "session refresh");
                }
            }
            UaEvent::DialogTerminated { dialog, reason } => {
                let Some(leg) = self.by_dialog.get(&dialog).copied() else {
                    return;
                };
                match reason {
                    EndReason::LocalBye => {}
                    // Our 2xx never ACKed (the UA sent BYE): the call ends as `no_ack`.
                    EndReason::AckTimeout => {
                        tracing::info!("no ACK for our 200 within 64*T1: BYE sent");
                        self.emit(leg, SipEvent::NoAck);
                    }
                    EndReason::RemoteBye => self.emit(leg, SipEvent::RemoteBye),
                    EndReason::SessionExpired | EndReason::Gone => {
                        tracing::info!(?reason, "dialog ended");
                        self.emit(leg, SipEvent::RemoteBye);
                    }
                }
                self.close(leg);
            }
            UaEvent::IncomingRequest { tx, request } => {
                let status = if request.method == Method::Message {
                    405
                } else {
                    200
                };
                if let Some(r) = ua.make_response(tx, status) {
                    let _ = ua.respond(tx, r, now);
                }
            }
            UaEvent::AckReceived { .. } => {}
        }
    }

    /// `allowed`: the trunk refused our SRTP offer with 488: send a second INVITE offering plain
    /// RTP (what real UAs accept; not RFC 5939 capability negotiation). True when it did.
    fn plain_retry(
        &mut self,
        ua: &mut Ua,
        tx: TxId,
        method: &Method,
        response: &Response,
        now: Instant,
    ) -> bool {
        if response.status != 488
            || *method != Method::Invite
            || self.cfg.trunk.encryption != Encryption::Allowed
        {
            return false;
        }
        let Some(leg) = self.by_tx.get(&tx).copied() else {
            return false;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        let srtp_offered = l
            .local_sdp
            .as_ref()
            .is_some_and(|s| s.media.iter().any(|m| m.is_srtp()));
        if l.invite_tx != Some(tx)
            || l.plain_retried
            || !srtp_offered
            || !matches!(l.role, Role::Outbound { .. })
        {
            return false;
        }
        let Some(mut media) = l.media.clone() else {
            return false;
        };
        media.crypto = None;
        media.allow_plain_rtp = true;
        media.session_version += 1;
        l.local_sdp = Some(sdp::build_offer(&media));
        l.media = Some(media);
        l.plain_retried = true;
        l.invite_tx = None;
        // Again to the address that answered 488 (RFC 3263 failover goes on from there).
        if let Some(t) = l
            .attempts
            .as_ref()
            .and_then(|a| a.targets.get(a.current).copied())
            && let Role::Outbound { destination, .. } = &mut l.role
        {
            *destination = t;
        }
        self.by_tx.remove(&tx);
        self.stats.srtp_plain_retries += 1;
        tracing::info!(leg, "488 to our SRTP offer: calling again with plain RTP");
        self.send_invite(ua, leg, now);
        true
    }

    fn on_incoming(
        &mut self,
        ua: &mut Ua,
        tx: TxId,
        request: &Request,
        source: SocketAddr,
        now: Instant,
    ) {
        if !self.cfg.inbound.allows(source.ip()) {
            self.stats.inbound_refused_source += 1;
            tracing::warn!(%source, "INVITE from a source that is not allowed: 403");
            if let Some(r) = ua.make_response(tx, 403) {
                let _ = ua.respond(tx, r, now);
            }
            return;
        }
        if let Some(auth) = self.auth.as_mut() {
            match auth.check(request, now) {
                Verdict::Accept => {}
                Verdict::Challenge { stale } => {
                    self.stats.inbound_auth_challenges += 1;
                    tracing::debug!(%source, stale, "INVITE without valid credentials: 401");
                    let challenges = auth.challenges(stale, now);
                    if let Some(mut r) = ua.make_response(tx, 401) {
                        for c in challenges {
                            r.push_header("WWW-Authenticate", c);
                        }
                        let _ = ua.respond(tx, r, now);
                    }
                    return;
                }
                Verdict::Forbidden => {
                    self.stats.inbound_auth_failures += 1;
                    tracing::warn!(%source, "INVITE with wrong digest credentials: 403");
                    if let Some(r) = ua.make_response(tx, 403) {
                        let _ = ua.respond(tx, r, now);
                    }
                    return;
                }
            }
        }
        self.stats.inbound_offered += 1;
        let leg = self.next_inbound;
        self.next_inbound += 1;
        let offer = parse_sdp(&request.body).map(Box::new);
        let user_of = |na: Option<NameAddr>| {
            na.and_then(|n| n.uri.user().map(str::to_owned))
                .unwrap_or_default()
        };
        let from = user_of(request.from().ok());
        let to = request
            .uri
            .user()
            .map(str::to_owned)
            .unwrap_or_else(|| user_of(request.to().ok()));
        let x_headers = request
            .headers
            .iter()
            .filter(|h| {
                h.name
                    .get(..2)
                    .is_some_and(|p| p.eq_ignore_ascii_case("x-"))
            })
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        let call_id = request.call_id().map(str::to_owned).unwrap_or_default();
        let has_offer = offer.is_some();
        self.legs.insert(
            leg,
            Box::new(Leg {
                role: Role::Inbound { offer },
                media: None,
                local_sdp: None,
                invite_tx: Some(tx),
                dialog: None,
                refer: None,
                remote_crypto: None,
                plain_retried: false,
                keyless: false,
                attempts: None,
            }),
        );
        self.by_tx.insert(tx, leg);
        self.events.push_back((
            leg,
            LegEvent::Incoming(Box::new(IncomingCall {
                leg,
                from,
                to,
                source,
                has_offer,
                x_headers,
                call_id,
            })),
        ));
    }

    fn on_response(
        &mut self,
        ua: &mut Ua,
        tx: TxId,
        method: &Method,
        response: &Response,
        dialog: Option<DialogId>,
        now: Instant,
    ) {
        let Some(leg) = self.by_tx.get(&tx).copied() else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let status = response.status;
        if *method == Method::Invite && l.invite_tx == Some(tx) {
            if let Some(a) = l.attempts.as_mut() {
                a.heard = true;
                if let Ok(c) = response.cseq() {
                    a.cseq = a.cseq.max(c.seq);
                }
            }
            if status == 100 {
                return;
            }
            if status < 200 {
                let media = negotiate_answer(l, &response.body, self.cfg.trunk.encryption);
                self.emit(leg, SipEvent::Progress { status, media });
            } else if status < 300 {
                // Answered: no other target will be tried; the INVITE copy kept for that goes.
                l.attempts = None;
                if let Some(d) = dialog {
                    l.dialog = Some(d.clone());
                    self.by_dialog.insert(d, leg);
                }
                let media = negotiate_answer(l, &response.body, self.cfg.trunk.encryption);
                self.emit(leg, SipEvent::Answered { media });
            } else {
                if status == 503 && self.fail_over(ua, leg, now) {
                    return;
                }
                let after_auth = self.cfg.trunk.credentials.is_some();
                self.emit(
                    leg,
                    SipEvent::Failed {
                        status,
                        reason: failure_reason(response),
                        after_auth,
                    },
                );
                self.close(leg);
            }
        } else if *method == Method::Refer
            && let Some(r) = l.refer.as_mut()
            && r.tx == Some(tx)
            && status >= 200
        {
            self.by_tx.remove(&tx);
            r.tx = None;
            if status < 300 {
                r.notify_deadline = Some(now + self.cfg.notify_timeout);
            } else if let Some(r) = l.refer.take() {
                self.emit(
                    leg,
                    SipEvent::TransferResult {
                        tool_call_id: r.tool_call_id,
                        ok: false,
                        detail: format!("REFER answered {status} {}", response.reason),
                    },
                );
            }
        }
    }

    fn on_timeout(&mut self, ua: &mut Ua, tx: TxId, now: Instant) {
        let Some(leg) = self.by_tx.get(&tx).copied() else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if l.invite_tx == Some(tx) {
            if self.fail_over(ua, leg, now) {
                return;
            }
            self.emit(
                leg,
                SipEvent::Failed {
                    status: 408,
                    reason: "Request Timeout".into(),
                    after_auth: false,
                },
            );
            self.close(leg);
        } else if l.refer.as_ref().is_some_and(|r| r.tx == Some(tx))
            && let Some(r) = l.refer.take()
        {
            self.by_tx.remove(&tx);
            self.emit(
                leg,
                SipEvent::TransferResult {
                    tool_call_id: r.tool_call_id,
                    ok: false,
                    detail: "REFER timed out".into(),
                },
            );
        }
    }

    /// The current target heard nothing within the target timeout: give it up for the next
    /// one, if there is one and time is left (else it keeps its Timer B).
    fn on_silent_target(&mut self, ua: &mut Ua, leg: LegId, now: Instant) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(a) = l.attempts.as_mut() else { return };
        a.silent_deadline = None;
        let has_next = a.current + 1 < a.targets.len() && a.deadline.is_none_or(|d| now < d);
        let Some(tx) = l.invite_tx.filter(|_| has_next) else {
            return;
        };
        // Keep the request as last sent (a digest retry may have raised its CSeq).
        if let Some(r) = ua.sent_request(tx) {
            if let Ok(c) = r.cseq() {
                a.cseq = a.cseq.max(c.seq);
            }
            a.invite = Some(r.clone());
        }
        tracing::info!(
            leg,
            target = %a.targets[a.current],
            "no response from the target within the failover timeout"
        );
        ua.abandon(tx, now);
        self.fail_over(ua, leg, now);
    }

    /// Sends leg `leg`'s INVITE to its next target (RFC 3263 §4.3). False if there is none,
    /// time is up, or it could not be sent: the caller reports the failure.
    fn fail_over(&mut self, ua: &mut Ua, leg: LegId, now: Instant) -> bool {
        let trunk = &self.cfg.trunk;
        let target_timeout = self.cfg.failover.target_timeout;
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        let Some(a) = l.attempts.as_mut() else {
            return false;
        };
        if a.current + 1 >= a.targets.len() || a.deadline.is_some_and(|d| now >= d) {
            return false;
        }
        let Some(invite) = a.invite.clone() else {
            return false;
        };
        let old = l.invite_tx.take();
        a.current += 1;
        let next = a.targets[a.current];
        a.cseq += 1;
        let cseq = a.cseq;
        match ua.invite_retarget(
            &invite,
            cseq,
            next,
            trunk.transport,
            trunk.credentials.clone(),
            now,
        ) {
            Ok(tx) => {
                a.invite = ua.sent_request(tx).cloned().or(Some(invite));
                a.heard = false;
                a.silent_deadline = (a.current + 1 < a.targets.len()).then(|| now + target_timeout);
                let attempt = a.current as u32 + 1;
                l.invite_tx = Some(tx);
                if let Some(o) = old {
                    self.by_tx.remove(&o);
                }
                self.by_tx.insert(tx, leg);
                self.stats.failovers += 1;
                self.stats.outbound_invites += 1;
                tracing::info!(leg, target = %next, attempt, "INVITE failed over to the next target");
                self.emit(
                    leg,
                    SipEvent::Target {
                        addr: next,
                        attempt,
                    },
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "failover INVITE not sent");
                l.invite_tx = old;
                false
            }
        }
    }

    fn on_dialog_request(
        &mut self,
        ua: &mut Ua,
        dialog: DialogId,
        tx: TxId,
        request: &Request,
        now: Instant,
    ) {
        let leg = self.by_dialog.get(&dialog).copied();
        let enc = self.cfg.trunk.encryption;
        let mut status = 200;
        let mut body = None;
        let mut event = None;
        match (&request.method, leg.and_then(|l| self.legs.get_mut(&l))) {
            (Method::Invite | Method::Update, Some(l)) => match parse_sdp(&request.body) {
                Some(offer) => match answer_reoffer(l, &offer, enc) {
                    Some((answer, media)) => {
                        body = Some(sdp_body(&answer));
                        l.local_sdp = Some(answer);
                        event = media.map(SipEvent::MediaChanged);
                    }
                    None => status = 488,
                },
                // An offerless re-INVITE: offer our current SDP (the answer comes in the ACK).
                None => {
                    if let Some(s) = l.local_sdp.as_mut() {
                        s.bump_version();
                        body = Some(sdp_body(s));
                    }
                }
            },
            (Method::Notify, Some(l)) => {
                // The NOTIFY may overtake the 2xx to the REFER (RFC 6665 §4.1.2.4): a final one
                // settles the transfer whether the REFER was answered yet or not.
                if let Some((code, line)) = parse_sipfrag(&request.body)
                    && code >= 200
                    && let Some(r) = l.refer.take()
                {
                    if let Some(t) = r.tx {
                        self.by_tx.remove(&t);
                    }
                    event = Some(SipEvent::TransferResult {
                        tool_call_id: r.tool_call_id,
                        ok: code < 300,
                        detail: line,
                    });
                }
            }
            (Method::Refer, _) => status = 403,
            (_, None) => status = 481,
            _ => {}
        }
        if let Some(mut r) = ua.make_response(tx, status) {
            if let Some((ct, b)) = body {
                r.set_body(&ct, b);
            }
            if let Err(e) = ua.respond(tx, r, now) {
                tracing::debug!(error = %e, "in-dialog response");
            }
        }
        if let (Some(leg), Some(ev)) = (leg, event) {
            self.emit(leg, ev);
        }
    }
}

/// `sip:{user}@{host}` as a typed URI; `None` if `user` has characters a SIP user part cannot
/// carry unescaped (only digits, letters and `+-._` are taken: numbers and simple names).
pub fn request_uri(user: &str, host: &HostPort) -> Option<Uri> {
    let ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b));
    ok.then(|| {
        let mut u = SipUri::new(host.host.clone());
        u.host_port.port = host.port;
        u.user = Some(user.to_owned());
        Uri::Sip(u)
    })
}

/// `uri` with `;transport=tls` when the trunk is reached over TLS (RFC 3261 §19.1.1: the
/// Request-URI names the transport the trunk expects; Twilio's Secure Trunking documents it).
pub fn with_transport(uri: Uri, transport: TransportKind) -> Uri {
    match (uri, transport) {
        (Uri::Sip(mut u), TransportKind::Tls) if u.param("transport").is_none() => {
            u.params.push(trunkline_sip::message::Param {
                name: "transport".into(),
                value: Some("tls".into()),
            });
            Uri::Sip(u)
        }
        (u, _) => u,
    }
}

/// The reason a failed INVITE is recorded with: the reason phrase, plus Twilio's
/// `X-Twilio-Error` (`32xxx`/`13xxx` codes, TWILIO.md) when present.
pub fn failure_reason(response: &Response) -> String {
    match response.header("X-Twilio-Error").next() {
        Some(x) => format!("{} (X-Twilio-Error: {x})", response.reason),
        None => response.reason.clone(),
    }
}

/// The status line of a `message/sipfrag` NOTIFY body (RFC 3515 §2.4.5): `SIP/2.0 200 OK` →
/// `(200, "SIP/2.0 200 OK")`. `None` if the body does not start with a SIP status line.
pub fn parse_sipfrag(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    (100..700).contains(&code).then(|| (code, line.to_owned()))
}

/// An SDP body that is present, UTF-8, and parses.
fn parse_sdp(body: &[u8]) -> Option<SessionDescription> {
    std::str::from_utf8(body)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .and_then(|t| SessionDescription::parse(t).ok())
}

fn sdp_body(s: &SessionDescription) -> (String, Bytes) {
    ("application/sdp".to_owned(), Bytes::from(s.to_string()))
}

/// Our answer to an in-dialog offer (re-INVITE/UPDATE) and what it changes for the call:
/// the same media parameters, one session version up. `None`: nothing acceptable (488).
///
/// SRTP (RFC 4568 §7.1.4): while the peer's crypto line is unchanged we keep our key; when it
/// changes (a new key, suite or tag) we answer with a fresh key of ours, so both directions
/// start new crypto contexts.
fn answer_reoffer(
    l: &mut Leg,
    offer: &SessionDescription,
    enc: Encryption,
) -> Option<(SessionDescription, Option<NegotiatedMedia>)> {
    let mut ours = l.media.clone()?;
    ours.session_version = l
        .local_sdp
        .as_ref()
        .map_or(1, |s| s.origin.session_version + 1);
    let (crypto, allow_plain) =
        choose_crypto(offer, enc, ours.crypto.as_ref(), l.remote_crypto.as_ref())?;
    ours.crypto = crypto;
    ours.allow_plain_rtp = allow_plain;
    let a = sdp::answer(offer, &ours).ok()?;
    let media = to_negotiated_media(&a.negotiated);
    if media.is_some() {
        ours.crypto = a.negotiated.local_crypto.clone();
        l.remote_crypto = a.negotiated.remote_crypto.clone();
        l.media = Some(ours);
    }
    Some((a.sdp, media))
}

/// What our crypto line should be to answer `offer`, and whether a plain RTP/AVP stream may be
/// accepted; `None`: the policy refuses the offer (488).
///
/// The peer's first usable line of the first SRTP audio stream picks the suite and the tag
/// ("the first suite we support"); our key is `local`'s when the peer's line equals `remote`
/// (nothing changed), else fresh.
fn choose_crypto(
    offer: &SessionDescription,
    enc: Encryption,
    local: Option<&Crypto>,
    remote: Option<&Crypto>,
) -> Option<(Option<Crypto>, bool)> {
    if enc == Encryption::Disabled {
        return Some((None, true));
    }
    let theirs = offer
        .media
        .iter()
        .filter(|m| m.is_rtp_audio() && m.port != 0 && m.is_srtp())
        .find_map(|m| m.crypto.iter().find(|c| c.is_usable()));
    let Some(theirs) = theirs else {
        // No SRTP offered: plain RTP when allowed, refused when required.
        return (enc == Encryption::Allowed).then_some((None, true));
    };
    let kept = match (local, remote) {
        (Some(l), Some(r)) if r == theirs && l.suite == theirs.suite => l.key_salt(),
        _ => None,
    };
    let crypto = match kept {
        Some(key) => Crypto::new(theirs.tag, &theirs.suite, &key),
        None => fresh_crypto(theirs.tag, &theirs.suite)?,
    };
    Some((Some(crypto), enc == Encryption::Allowed))
}

/// Whether every audio stream of `offer` is SRTP.
fn offer_is_srtp_only(offer: &SessionDescription) -> bool {
    offer
        .media
        .iter()
        .filter(|m| m.is_rtp_audio() && m.port != 0)
        .all(|m| m.is_srtp())
}

/// What our offer and the peer's answer agreed, for the call. With SRTP agreed, our offer is
/// narrowed to the line the peer picked (re-offers keep that key); a plain answer to an SRTP
/// offer is unusable when SRTP is required.
fn negotiate_answer(l: &mut Leg, body: &[u8], enc: Encryption) -> Option<NegotiatedMedia> {
    let answer = parse_sdp(body)?;
    let n = sdp::negotiated(l.local_sdp.as_ref()?, &answer).ok()?;
    if n.local_crypto.is_none() && enc == Encryption::Required {
        tracing::warn!("the trunk answered our SRTP offer with plain RTP: SRTP is required");
        return None;
    }
    if let Some(mine) = &n.local_crypto {
        if let Some(m) = l.local_sdp.as_mut().and_then(|s| s.media.first_mut()) {
            m.crypto.retain(|c| c.tag == mine.tag);
        }
        if let Some(p) = l.media.as_mut() {
            p.crypto = Some(mine.clone());
        }
        l.remote_crypto = n.remote_crypto.clone();
    }
    to_negotiated_media(&n)
}

/// An SDP negotiation result as the call needs it (`None` if the codec is not G.711).
pub fn to_negotiated_media(n: &Negotiated) -> Option<NegotiatedMedia> {
    let law = G711::from_payload_type(n.codec.pt).or_else(|| {
        match n.codec.name.to_ascii_uppercase().as_str() {
            "PCMU" => Some(G711::Ulaw),
            "PCMA" => Some(G711::Alaw),
            _ => None,
        }
    })?;
    let mut pts = PayloadMap {
        pcmu: None,
        pcma: None,
        telephone_event: n.dtmf_pt,
        comfort_noise: Some(13),
    };
    match law {
        G711::Ulaw => pts.pcmu = Some(n.codec.pt),
        G711::Alaw => pts.pcma = Some(n.codec.pt),
    }
    let srtp = match (&n.local_crypto, &n.remote_crypto) {
        (Some(l), Some(r)) => Some((
            SdesKey::parse(&l.to_string()).ok()?,
            SdesKey::parse(&r.to_string()).ok()?,
        )),
        _ => None,
    };
    Some(NegotiatedMedia {
        remote_rtp: n.remote_rtp,
        remote_rtcp: n.remote_rtcp,
        law,
        payload_types: pts,
        on_hold: !n.direction.sends(),
        srtp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(
            parse_sipfrag(b"SIP/2.0 200 OK\r\n"),
            Some((200, "SIP/2.0 200 OK".into()))
        );
        assert_eq!(
            parse_sipfrag(b"SIP/2.0 603 Declined"),
            Some((603, "SIP/2.0 603 Declined".into()))
        );
        assert_eq!(
            parse_sipfrag(b"SIP/2.0 100 Trying\r\n").map(|c| c.0),
            Some(100)
        );
        assert_eq!(parse_sipfrag(b""), None);
        assert_eq!(parse_sipfrag(b"INVITE sip:a@b SIP/2.0"), None);
        assert_eq!(parse_sipfrag(b"SIP/2.0 20 OK"), None);
        assert_eq!(parse_sipfrag(b"SIP/2.0 999 Huh"), None);
        assert_eq!(parse_sipfrag(&[0xff, 0xfe]), None);
    }

    #[test]
    fn request_uri_is_typed_and_refuses_what_needs_escaping() {
        let host = HostPort::parse("example.pstn.twilio.com").expect("host");
        let u = request_uri("+33612345678", &host).expect("uri");
        assert_eq!(u.to_string(), "sip:+33612345678@example.pstn.twilio.com");
        assert_eq!(u.user(), Some("+33612345678"));
        let host = HostPort::parse("127.0.0.1:5070").expect("host");
        assert_eq!(
            request_uri("+1555", &host).map(|u| u.to_string()),
            Some("sip:+1555@127.0.0.1:5070".into())
        );
        assert_eq!(request_uri("a@b", &host), None);
        assert_eq!(request_uri("x;transport=tcp", &host), None);
        assert_eq!(request_uri("", &host), None);
    }

    #[test]
    fn request_uri_says_transport_tls_over_tls_only() {
        let host = HostPort::parse("example.pstn.twilio.com").expect("host");
        let u = request_uri("+33612345678", &host).expect("uri");
        assert_eq!(
            with_transport(u.clone(), TransportKind::Tls).to_string(),
            "sip:+33612345678@example.pstn.twilio.com;transport=tls"
        );
        assert_eq!(with_transport(u.clone(), TransportKind::Udp), u);
        let tls = with_transport(u, TransportKind::Tls);
        assert_eq!(with_transport(tls.clone(), TransportKind::Tls), tls, "once");
    }

    #[test]
    fn twilio_error_is_kept_in_the_reason() {
        let mut r = Response::new(403);
        assert_eq!(failure_reason(&r), "Forbidden");
        r.push_header("X-Twilio-Error", "32201 Authentication failed");
        assert_eq!(
            failure_reason(&r),
            "Forbidden (X-Twilio-Error: 32201 Authentication failed)"
        );
    }
}
