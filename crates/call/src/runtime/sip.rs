//! The SIP stack task shared by every call: one [`Ua`] and its transports, and the mapping
//! between SIP and each call's [`SipEvent`]s / [`SipAction`]s.
//!
//! - Outbound: [`SipStack::outbound`] registers a leg; the call's [`SipAction::Invite`] sends the
//!   INVITE (digest retry on 401/407 inside the UA); 1xx → [`SipEvent::Progress`] (with early
//!   media), 2xx → [`SipEvent::Answered`] (SDP answer negotiated against our offer), final
//!   failures and Timer B → [`SipEvent::Failed`] (`X-Twilio-Error` kept in the reason).
//! - Inbound: INVITEs from sources outside `inbound_allowed` are refused with 403 and counted;
//!   the others reach the service as [`IncomingCall`] (offer parsed), which answers through the
//!   leg's [`SipLink`] after [`SipStack::set_answer`].
//! - In dialog: re-INVITE/UPDATE offers are answered from our media parameters and reported as
//!   [`SipEvent::MediaChanged`] (hold/unhold, new address); session refreshes are sent as re-INVITEs
//!   (Twilio's Allow has no UPDATE); REFER for `transfer_call` with its NOTIFY progress
//!   (`message/sipfrag`) → [`SipEvent::TransferResult`]; BYE → [`SipEvent::RemoteBye`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use trunkline_media::g711::G711;
use trunkline_media::session::PayloadMap;
use trunkline_sip::auth::Credentials;
use trunkline_sip::dialog::DialogId;
use trunkline_sip::message::{Method, NameAddr, Request, Uri};
use trunkline_sip::sdp::{self, MediaParams, Negotiated, SessionDescription};
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind, TxId};
use trunkline_sip::transport::{Incoming, TransportConfig, TransportError, Transports};
use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaConfig, UaEvent};

use crate::core::{NegotiatedMedia, SipAction, SipEvent};

/// A leg's id.
pub type LegId = u64;

/// Where outbound calls go.
#[derive(Debug, Clone)]
pub struct TrunkTarget {
    /// Host (and optional port) written in the Request-URI: the termination URI's host. Twilio
    /// drops INVITEs whose Request-URI names any other host.
    pub request_uri_host: String,
    /// Over what.
    pub transport: TransportKind,
    /// Digest credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// Our caller ID (E.164).
    pub caller_id: String,
    /// Session timer to ask for (RFC 4028).
    pub session_expires: Option<Duration>,
}

/// The stack's configuration.
#[derive(Debug, Clone)]
pub struct SipStackConfig {
    /// Sockets.
    pub transports: TransportConfig,
    /// UA behaviour.
    pub ua: UaConfig,
    /// The trunk.
    pub trunk: TrunkTarget,
    /// Sources allowed to send INVITEs (IP, prefix length).
    pub inbound_allowed: Vec<(IpAddr, u8)>,
    /// Seed for tags, branches and Call-IDs.
    pub seed: u64,
}

/// An INVITE from an allowed source, for the service to accept or refuse.
#[derive(Debug)]
pub struct IncomingCall {
    /// The leg.
    pub leg: LegId,
    /// Caller (From user part, e.g. `+15551234567`).
    pub from: String,
    /// Callee (To/Request-URI user part).
    pub to: String,
    /// Where it came from.
    pub source: SocketAddr,
    /// The parsed SDP offer (`None` if the INVITE had none or it did not parse).
    pub offer: Option<SessionDescription>,
    /// `X-Twilio-*` and other `X-` headers (call sid, account sid, …).
    pub x_headers: Vec<(String, String)>,
    /// The SIP Call-ID.
    pub call_id: String,
    /// SIP outcomes for this leg.
    pub events: mpsc::UnboundedReceiver<SipEvent>,
    /// Commands for this leg.
    pub link: SipLink,
}

/// A call's handle on its SIP leg.
#[derive(Debug, Clone)]
pub struct SipLink {
    leg: LegId,
    tx: mpsc::UnboundedSender<Command>,
}

impl SipLink {
    /// Send a command for this leg; false if the stack is gone.
    pub fn send(&self, action: SipAction) -> bool {
        self.tx
            .send(Command::Action {
                leg: self.leg,
                action,
            })
            .is_ok()
    }

    /// The leg.
    pub fn leg(&self) -> LegId {
        self.leg
    }
}

/// An outbound leg, registered; the INVITE leaves on [`SipAction::Invite`].
#[derive(Debug)]
pub struct OutboundLeg {
    /// The leg.
    pub leg: LegId,
    /// SIP outcomes.
    pub events: mpsc::UnboundedReceiver<SipEvent>,
    /// Commands.
    pub link: SipLink,
}

/// Counters of the stack.
#[derive(Debug, Default)]
pub struct SipStackStats {
    /// INVITEs refused because of their source.
    pub inbound_refused_source: AtomicU64,
    /// INVITEs accepted for processing.
    pub inbound_offered: AtomicU64,
    /// Outbound INVITEs sent.
    pub outbound_invites: AtomicU64,
    /// Legs the stack still tracks (calls not yet fully torn down on the wire).
    pub active_legs: AtomicU64,
}

#[derive(Debug)]
enum Command {
    Outbound {
        leg: LegId,
        to: String,
        destination: SocketAddr,
        media: Box<MediaParams>,
        events: mpsc::UnboundedSender<SipEvent>,
    },
    SetAnswer {
        leg: LegId,
        media: Box<MediaParams>,
        sdp: Box<SessionDescription>,
    },
    Action {
        leg: LegId,
        action: SipAction,
    },
}

/// Handle on the running stack.
#[derive(Debug, Clone)]
pub struct SipStack {
    tx: mpsc::UnboundedSender<Command>,
    next_leg: Arc<AtomicU64>,
    local: HashMap<TransportKind, SocketAddr>,
    stats: Arc<SipStackStats>,
}

impl SipStack {
    /// Bind the transports and start the stack task. Inbound calls arrive on the receiver.
    pub async fn start(
        cfg: SipStackConfig,
    ) -> Result<(SipStack, mpsc::UnboundedReceiver<IncomingCall>), TransportError> {
        let (transports, rx) = Transports::bind(cfg.transports.clone()).await?;
        let mut ua = Ua::new(
            cfg.ua.clone(),
            IdGen::new(Box::new(SplitMix64::new(cfg.seed))),
        );
        let mut local = HashMap::new();
        for kind in [TransportKind::Udp, TransportKind::Tcp, TransportKind::Tls] {
            if let Some(addr) = transports.local_addr(kind) {
                local.insert(kind, addr);
                let advertised = match cfg.transports.external_addr {
                    Some(ip) => SocketAddr::new(ip, addr.port()),
                    None => addr,
                };
                ua.set_sent_by(kind, advertised);
            }
        }
        let (tx, cmd_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(SipStackStats::default());
        let task = StackTask {
            ua,
            transports,
            rx,
            cmd_rx,
            cmd_tx: tx.clone(),
            incoming: in_tx,
            cfg,
            legs: HashMap::new(),
            by_tx: HashMap::new(),
            by_dialog: HashMap::new(),
            next_leg: Arc::new(AtomicU64::new(1 << 32)),
            stats: stats.clone(),
        };
        let next_leg = task.next_leg.clone();
        tokio::spawn(task.run());
        Ok((
            SipStack {
                tx,
                next_leg,
                local,
                stats,
            },
            in_rx,
        ))
    }

    /// The bound address of a transport.
    pub fn local_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.local.get(&kind).copied()
    }

    /// Counters.
    pub fn stats(&self) -> &SipStackStats {
        &self.stats
    }

    /// Register an outbound leg to `to` (E.164) offering `media`; the INVITE goes to
    /// `destination` (the resolved termination host or the outbound proxy).
    pub fn outbound(&self, to: &str, destination: SocketAddr, media: MediaParams) -> OutboundLeg {
        let leg = self.next_leg.fetch_add(1, Ordering::Relaxed);
        let (etx, events) = mpsc::unbounded_channel();
        let _ = self.tx.send(Command::Outbound {
            leg,
            to: to.to_owned(),
            destination,
            media: Box::new(media),
            events: etx,
        });
        OutboundLeg {
            leg,
            events,
            link: SipLink {
                leg,
                tx: self.tx.clone(),
            },
        }
    }

    /// Our SDP answer for an inbound leg (sent with the 200 on [`SipAction::Accept`]), and the
    /// media parameters to answer later re-offers with.
    pub fn set_answer(&self, leg: LegId, media: MediaParams, sdp: SessionDescription) {
        let _ = self.tx.send(Command::SetAnswer {
            leg,
            media: Box::new(media),
            sdp: Box::new(sdp),
        });
    }
}

/// Convert an SDP negotiation result to what the call needs.
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

#[derive(Debug)]
struct Leg {
    events: mpsc::UnboundedSender<SipEvent>,
    to: String,
    destination: SocketAddr,
    media: MediaParams,
    local_sdp: Option<SessionDescription>,
    invite_tx: Option<TxId>,
    dialog: Option<DialogId>,
    refer: Option<(TxId, String)>,
    awaiting_notify: Option<String>,
}

struct StackTask {
    ua: Ua,
    transports: Transports,
    rx: mpsc::Receiver<Incoming>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedSender<IncomingCall>,
    cfg: SipStackConfig,
    legs: HashMap<LegId, Leg>,
    by_tx: HashMap<TxId, LegId>,
    by_dialog: HashMap<DialogId, LegId>,
    next_leg: Arc<AtomicU64>,
    stats: Arc<SipStackStats>,
}

impl StackTask {
    #[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
    async fn run(mut self) {
        loop {
            while let Some(t) = self.ua.poll_transmit() {
                if let Err(e) = self.transports.send(t).await {
                    debug!(error = %e, "sip send failed");
                }
            }
            self.stats
                .active_legs
                .store(self.legs.len() as u64, Ordering::Relaxed);
            let now = std::time::Instant::now();
            while let Some(ev) = self.ua.poll_event() {
                self.on_event(ev, now);
            }
            self.stats
                .active_legs
                .store(self.legs.len() as u64, Ordering::Relaxed);
            // Events may have queued transmissions.
            if self.ua.poll_timeout().is_some_and(|t| t <= now) {
                self.ua.handle_timeout(now);
                continue;
            }
            let deadline = self.ua.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(m) => self.ua.handle_datagram(m.data, m.source, m.transport, std::time::Instant::now()),
                    None => break,
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(c) => self.on_command(c, std::time::Instant::now()),
                    None => break,
                },
                () = sleep => self.ua.handle_timeout(std::time::Instant::now()),
            }
        }
        info!("sip stack stopped");
    }

    fn emit(&mut self, leg: LegId, ev: SipEvent) {
        if let Some(l) = self.legs.get(&leg)
            && l.events.send(ev).is_err()
        {
            self.forget(leg);
        }
    }

    fn forget(&mut self, leg: LegId) {
        if let Some(l) = self.legs.remove(&leg) {
            if let Some(t) = l.invite_tx {
                self.by_tx.remove(&t);
            }
            if let Some((t, _)) = l.refer {
                self.by_tx.remove(&t);
            }
            if let Some(d) = l.dialog {
                self.by_dialog.remove(&d);
            }
        }
    }

    fn on_command(&mut self, cmd: Command, now: std::time::Instant) {
        match cmd {
            Command::Outbound {
                leg,
                to,
                destination,
                media,
                events,
            } => {
                self.legs.insert(
                    leg,
                    Leg {
                        events,
                        to,
                        destination,
                        local_sdp: Some(sdp::build_offer(&media)),
                        media: *media,
                        invite_tx: None,
                        dialog: None,
                        refer: None,
                        awaiting_notify: None,
                    },
                );
            }
            Command::SetAnswer { leg, media, sdp } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.media = *media;
                    l.local_sdp = Some(*sdp);
                }
            }
            Command::Action { leg, action } => self.on_action(leg, action, now),
        }
    }

    fn on_action(&mut self, leg: LegId, action: SipAction, now: std::time::Instant) {
        let Some(l) = self.legs.get_mut(&leg) else {
            debug!(leg, ?action, "action for a finished leg");
            return;
        };
        match action {
            SipAction::Invite => {
                let t = &self.cfg.trunk;
                let target = Uri::parse(&format!("sip:{}@{}", l.to, t.request_uri_host));
                let from_host = self
                    .ua
                    .contact(t.transport)
                    .as_sip()
                    .map(|s| s.host_port.to_string())
                    .unwrap_or_else(|| "invalid".into());
                let from = Uri::parse(&format!("sip:{}@{}", t.caller_id, from_host));
                let (Ok(target), Ok(from)) = (target, from) else {
                    let _ = l.events.send(SipEvent::Failed {
                        status: 400,
                        reason: "bad destination".into(),
                        after_auth: false,
                    });
                    return;
                };
                let body = l
                    .local_sdp
                    .as_ref()
                    .map(|s| ("application/sdp".to_owned(), Bytes::from(s.to_string())));
                let params = InviteParams {
                    target,
                    to: None,
                    from: NameAddr::new(from),
                    destination: l.destination,
                    transport: t.transport,
                    body,
                    credentials: t.credentials.clone(),
                    session_expires: t.session_expires,
                    extra_headers: Vec::new(),
                };
                match self.ua.invite(params, now) {
                    Ok(tx) => {
                        self.stats.outbound_invites.fetch_add(1, Ordering::Relaxed);
                        l.invite_tx = Some(tx);
                        if let Some(call_id) =
                            self.ua.endpoint().request(tx).and_then(|r| r.call_id())
                        {
                            let _ = l.events.send(SipEvent::Invited {
                                call_id: call_id.to_owned(),
                            });
                        }
                        self.by_tx.insert(tx, leg);
                    }
                    Err(e) => {
                        let _ = l.events.send(SipEvent::Failed {
                            status: 500,
                            reason: e.to_string(),
                            after_auth: false,
                        });
                    }
                }
            }
            SipAction::Ringing => {
                if let Some(tx) = l.invite_tx
                    && let Some(r) = self.ua.make_response(tx, 180)
                {
                    let _ = self.ua.respond(tx, r, now);
                }
            }
            SipAction::Accept => {
                let Some(tx) = l.invite_tx else { return };
                let Some(mut r) = self.ua.make_response(tx, 200) else {
                    return;
                };
                if let Some(sdp) = &l.local_sdp {
                    r.set_body("application/sdp", Bytes::from(sdp.to_string()));
                }
                match self.ua.respond(tx, r, now) {
                    Ok(Some(d)) => {
                        l.dialog = Some(d.clone());
                        self.by_dialog.insert(d, leg);
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "200 OK not sent"),
                }
            }
            SipAction::Reject { status } => {
                if let Some(tx) = l.invite_tx
                    && let Some(r) = self.ua.make_response(tx, status)
                {
                    let _ = self.ua.respond(tx, r, now);
                }
                self.forget(leg);
            }
            SipAction::Cancel => {
                if let Some(tx) = l.invite_tx
                    && let Err(e) = self.ua.cancel(tx, now)
                {
                    debug!(error = %e, "cancel");
                }
            }
            SipAction::Bye => {
                if let Some(d) = l.dialog.clone()
                    && let Err(e) = self.ua.bye(&d, now)
                {
                    debug!(error = %e, "bye");
                }
            }
            SipAction::Refer {
                target,
                tool_call_id,
            } => {
                let fail = |detail: String| SipEvent::TransferResult {
                    tool_call_id: tool_call_id.clone(),
                    ok: false,
                    detail,
                };
                let (Some(d), Ok(uri)) = (l.dialog.clone(), Uri::parse(&target)) else {
                    let _ = l.events.send(fail("no dialog or bad target".into()));
                    return;
                };
                let Some(dialog) = self.ua.dialog_mut(&d) else {
                    let _ = l.events.send(fail("dialog gone".into()));
                    return;
                };
                let req = dialog.new_refer(&uri);
                match self.ua.send_built_in_dialog(&d, req, now) {
                    Ok(tx) => {
                        if let Some(l) = self.legs.get_mut(&leg) {
                            l.refer = Some((tx, tool_call_id));
                        }
                        self.by_tx.insert(tx, leg);
                    }
                    Err(e) => {
                        if let Some(l) = self.legs.get(&leg) {
                            let _ = l.events.send(fail(e.to_string()));
                        }
                    }
                }
            }
        }
    }

    fn source_allowed(&self, ip: IpAddr) -> bool {
        self.cfg
            .inbound_allowed
            .iter()
            .any(|&(net, bits)| cidr_contains(net, bits, ip))
    }

    fn on_event(&mut self, ev: UaEvent, now: std::time::Instant) {
        match ev {
            UaEvent::IncomingCall {
                tx,
                request,
                source,
                ..
            } => self.on_incoming(tx, request, source, now),
            UaEvent::CallCancelled { tx } => {
                if let Some(leg) = self.by_tx.get(&tx).copied() {
                    self.emit(leg, SipEvent::RemoteCancel);
                    self.forget(leg);
                }
            }
            UaEvent::Response {
                tx,
                method,
                response,
                dialog,
            } => {
                let Some(leg) = self.by_tx.get(&tx).copied() else {
                    return;
                };
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                let status = response.status;
                if method == Method::Invite && l.invite_tx == Some(tx) {
                    if status < 200 {
                        if status == 100 {
                            return;
                        }
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
                        let mut reason = response.reason.clone();
                        if let Some(x) = response.header("X-Twilio-Error").next() {
                            reason = format!("{reason} (X-Twilio-Error: {x})");
                        }
                        let after_auth = self.cfg.trunk.credentials.is_some();
                        self.emit(
                            leg,
                            SipEvent::Failed {
                                status,
                                reason,
                                after_auth,
                            },
                        );
                        self.forget(leg);
                    }
                } else if method == Method::Refer
                    && let Some((rtx, id)) = l.refer.clone()
                    && rtx == tx
                    && status >= 200
                {
                    l.refer = None;
                    self.by_tx.remove(&tx);
                    if status < 300 {
                        l.awaiting_notify = Some(id);
                    } else {
                        self.emit(
                            leg,
                            SipEvent::TransferResult {
                                tool_call_id: id,
                                ok: false,
                                detail: format!("REFER answered {status} {}", response.reason),
                            },
                        );
                    }
                }
            }
            UaEvent::Timeout { tx } => {
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
                    self.forget(leg);
                } else if let Some((rtx, id)) = l.refer.take()
                    && rtx == tx
                {
                    self.emit(
                        leg,
                        SipEvent::TransferResult {
                            tool_call_id: id,
                            ok: false,
                            detail: "REFER timed out".into(),
                        },
                    );
                }
            }
            UaEvent::DialogRequest {
                dialog,
                tx,
                request,
            } => self.on_dialog_request(dialog, tx, request, now),
            UaEvent::SessionRefreshDue { dialog } => {
                let Some(leg) = self.by_dialog.get(&dialog).copied() else {
                    return;
                };
                let body = self.legs.get_mut(&leg).and_then(|l| {
                    l.local_sdp.as_mut().map(|s| {
                        s.bump_version();
                        ("application/sdp".to_owned(), Bytes::from(s.to_string()))
                    })
                });
                if let Err(e) =
                    self.ua
                        .send_in_dialog(&dialog, Method::Invite, body, Vec::new(), now)
                {
                    debug!(error = %e, "session refresh");
                }
            }
            UaEvent::DialogTerminated { dialog, reason } => {
                let Some(leg) = self.by_dialog.get(&dialog).copied() else {
                    return;
                };
                if reason != EndReason::LocalBye {
                    if reason != EndReason::RemoteBye {
                        info!(?reason, "dialog ended");
                    }
                    self.emit(leg, SipEvent::RemoteBye);
                }
                self.forget(leg);
            }
            UaEvent::IncomingRequest { tx, request } => {
                let status = if request.method == Method::Message {
                    405
                } else {
                    200
                };
                if let Some(r) = self.ua.make_response(tx, status) {
                    let _ = self.ua.respond(tx, r, now);
                }
            }
            UaEvent::AckReceived { .. } => {}
        }
    }

    fn on_incoming(
        &mut self,
        tx: TxId,
        request: Request,
        source: SocketAddr,
        now: std::time::Instant,
    ) {
        if !self.source_allowed(source.ip()) {
            self.stats
                .inbound_refused_source
                .fetch_add(1, Ordering::Relaxed);
            warn!(%source, "INVITE from a source that is not allowed: 403");
            if let Some(r) = self.ua.make_response(tx, 403) {
                let _ = self.ua.respond(tx, r, now);
            }
            return;
        }
        self.stats.inbound_offered.fetch_add(1, Ordering::Relaxed);
        let leg = self.next_leg.fetch_add(1, Ordering::Relaxed);
        let (etx, events) = mpsc::unbounded_channel();
        let offer = std::str::from_utf8(&request.body)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .and_then(|t| SessionDescription::parse(t).ok());
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
        let call_id = request.call_id().map(|c| c.to_string()).unwrap_or_default();
        self.legs.insert(
            leg,
            Leg {
                events: etx,
                to: to.clone(),
                destination: source,
                media: MediaParams::g711(IpAddr::from([0, 0, 0, 0]), 0, 0),
                local_sdp: None,
                invite_tx: Some(tx),
                dialog: None,
                refer: None,
                awaiting_notify: None,
            },
        );
        self.by_tx.insert(tx, leg);
        let call = IncomingCall {
            leg,
            from,
            to,
            source,
            offer,
            x_headers,
            call_id,
            events,
            link: SipLink {
                leg,
                tx: self.cmd_tx.clone(),
            },
        };
        if self.incoming.send(call).is_err() {
            if let Some(r) = self.ua.make_response(tx, 503) {
                let _ = self.ua.respond(tx, r, now);
            }
            self.forget(leg);
        }
    }

    fn on_dialog_request(
        &mut self,
        dialog: DialogId,
        tx: TxId,
        request: Request,
        now: std::time::Instant,
    ) {
        let leg = self.by_dialog.get(&dialog).copied();
        let mut status = 200;
        let mut body = None;
        let mut event = None;
        match (&request.method, leg.and_then(|l| self.legs.get_mut(&l))) {
            (Method::Invite | Method::Update, Some(l)) => {
                let offer = std::str::from_utf8(&request.body)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .and_then(|t| SessionDescription::parse(t).ok());
                match offer {
                    Some(offer) => {
                        let mut ours = l.media.clone();
                        ours.session_version = l
                            .local_sdp
                            .as_ref()
                            .map_or(1, |s| s.origin.session_version + 1);
                        match sdp::answer(&offer, &ours) {
                            Ok(a) => {
                                body = Some(a.sdp.to_string());
                                l.local_sdp = Some(a.sdp);
                                event =
                                    to_negotiated_media(&a.negotiated).map(SipEvent::MediaChanged);
                            }
                            Err(_) => status = 488,
                        }
                    }
                    // An offerless re-INVITE: offer our current SDP (the answer comes in ACK).
                    None => {
                        if let Some(s) = l.local_sdp.as_mut() {
                            s.bump_version();
                            body = Some(s.to_string());
                        }
                    }
                }
            }
            (Method::Notify, Some(l)) => {
                if let Some(id) = l.awaiting_notify.clone() {
                    let frag = String::from_utf8_lossy(&request.body).into_owned();
                    let code = frag
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse::<u16>().ok());
                    if let Some(code) = code
                        && code >= 200
                    {
                        l.awaiting_notify = None;
                        event = Some(SipEvent::TransferResult {
                            tool_call_id: id,
                            ok: code < 300,
                            detail: frag.lines().next().unwrap_or_default().trim().to_owned(),
                        });
                    }
                }
            }
            (Method::Refer, _) => status = 403,
            (_, None) => status = 481,
            _ => {}
        }
        if let Some(mut r) = self.ua.make_response(tx, status) {
            if let Some(b) = body {
                r.set_body("application/sdp", Bytes::from(b));
            }
            if let Err(e) = self.ua.respond(tx, r, now) {
                debug!(error = %e, "in-dialog response");
            }
        }
        if let (Some(leg), Some(ev)) = (leg, event) {
            self.emit(leg, ev);
        }
    }
}

/// What our offer and the peer's answer agreed, for the call.
fn negotiate_answer(offer: Option<&SessionDescription>, body: &[u8]) -> Option<NegotiatedMedia> {
    let offer = offer?;
    let text = std::str::from_utf8(body).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    let answer = SessionDescription::parse(text).ok()?;
    let n = sdp::negotiated(offer, &answer).ok()?;
    to_negotiated_media(&n)
}

/// Whether `ip` is inside `net/bits` (IPv4-mapped IPv6 networks match IPv4 addresses).
pub fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let bits = u32::from(bits.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let bits = u32::from(bits.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V4(a)) => n.to_ipv4_mapped().is_some_and(|n| {
            let bits = u32::from(bits.saturating_sub(96).min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }),
        _ => false,
    }
}
