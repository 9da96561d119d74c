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
//! - the inbound source filter (the policy itself is the gateway's: [`SourceFilter`]).
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
use trunkline_sip::auth::Credentials;
use trunkline_sip::dialog::DialogId;
use trunkline_sip::message::{HostPort, Method, NameAddr, Request, Response, SipUri, Uri};
use trunkline_sip::sdp::{self, MediaParams, Negotiated, SessionDescription};
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

/// What [`Legs`] needs to know.
#[derive(Debug, Clone)]
pub struct LegsConfig {
    /// The trunk outbound INVITEs go to.
    pub trunk: TrunkTarget,
    /// Which sources may place inbound calls (others get 403).
    pub inbound: SourceFilter,
    /// How long a transfer waits for its final NOTIFY.
    pub notify_timeout: Duration,
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
}

/// Every SIP leg of the gateway (see the module docs).
#[derive(Debug)]
pub struct Legs {
    cfg: LegsConfig,
    legs: HashMap<LegId, Leg>,
    by_tx: HashMap<TxId, LegId>,
    by_dialog: HashMap<DialogId, LegId>,
    events: VecDeque<(LegId, LegEvent)>,
    next_inbound: LegId,
    stats: LegsStats,
}

impl Legs {
    /// No legs yet.
    pub fn new(cfg: LegsConfig) -> Self {
        Self {
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
        let offer = sdp::build_offer(&media);
        self.legs.insert(
            leg,
            Leg {
                role: Role::Outbound {
                    to: to.to_owned(),
                    destination,
                },
                media: Some(media),
                local_sdp: Some(offer),
                invite_tx: None,
                dialog: None,
                refer: None,
            },
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
        let answer = sdp::answer(offer, &media).map_err(|_| Refuse(488))?;
        let neg = to_negotiated_media(&answer.negotiated).ok_or(Refuse(488))?;
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
            .filter_map(|l| l.refer.as_ref().and_then(|r| r.notify_deadline))
            .min()
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
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
            SipAction::Cancel => {
                if let Some(tx) = self.legs.get(&leg).and_then(|l| l.invite_tx)
                    && let Err(e) = ua.cancel(tx, now)
                {
                    tracing::debug!(error = %e, "cancel");
                }
            }
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
        let trunk = &self.cfg.trunk;
        let from_host = ua
            .contact(trunk.transport)
            .as_sip()
            .map(|s| s.host_port.clone());
        let (Some(target), Some(from)) = (
            request_uri(to, &trunk.request_uri_host),
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
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.invite_tx = Some(tx);
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
            } => self.on_response(tx, &method, &response, dialog, now),
            UaEvent::Timeout { tx } => self.on_timeout(tx),
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
            Leg {
                role: Role::Inbound { offer },
                media: None,
                local_sdp: None,
                invite_tx: Some(tx),
                dialog: None,
                refer: None,
            },
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
            if status == 100 {
                return;
            }
            if status < 200 {
                let media = negotiate_answer(l.local_sdp.as_ref(), &response.body);
                self.emit(leg, SipEvent::Progress { status, media });
            } else if status < 300 {
                if let Some(d) = dialog {
                    l.dialog = Some(d.clone());
                    self.by_dialog.insert(d, leg);
                }
                let media = negotiate_answer(l.local_sdp.as_ref(), &response.body);
                self.emit(leg, SipEvent::Answered { media });
            } else {
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

    fn on_timeout(&mut self, tx: TxId) {
        let Some(leg) = self.by_tx.get(&tx).copied() else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if l.invite_tx == Some(tx) {
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

    fn on_dialog_request(
        &mut self,
        ua: &mut Ua,
        dialog: DialogId,
        tx: TxId,
        request: &Request,
        now: Instant,
    ) {
        let leg = self.by_dialog.get(&dialog).copied();
        let mut status = 200;
        let mut body = None;
        let mut event = None;
        match (&request.method, leg.and_then(|l| self.legs.get_mut(&l))) {
            (Method::Invite | Method::Update, Some(l)) => match parse_sdp(&request.body) {
                Some(offer) => match answer_reoffer(l, &offer) {
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
fn answer_reoffer(
    l: &Leg,
    offer: &SessionDescription,
) -> Option<(SessionDescription, Option<NegotiatedMedia>)> {
    let mut ours = l.media.clone()?;
    ours.session_version = l
        .local_sdp
        .as_ref()
        .map_or(1, |s| s.origin.session_version + 1);
    let a = sdp::answer(offer, &ours).ok()?;
    let media = to_negotiated_media(&a.negotiated);
    Some((a.sdp, media))
}

/// What our offer and the peer's answer agreed, for the call.
fn negotiate_answer(offer: Option<&SessionDescription>, body: &[u8]) -> Option<NegotiatedMedia> {
    let answer = parse_sdp(body)?;
    let n = sdp::negotiated(offer?, &answer).ok()?;
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
    Some(NegotiatedMedia {
        remote_rtp: n.remote_rtp,
        remote_rtcp: n.remote_rtcp,
        law,
        payload_types: pts,
        on_hold: !n.direction.sends(),
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
