//! The user-agent core (RFC 3261 §8, §12–§15), sans-IO, on top of the transaction
//! [`Endpoint`].
//!
//! Server behaviour (§8.2), applied to every new request before the application sees it:
//! - unparseable or invalid requests → 400 with the reason in the phrase (505 for a wrong version);
//!   malformed responses dropped silently (§8.1.3.1 / §18.1.2); each counted in [`UaStats`];
//! - an INVITE whose Record-Route or Contact cannot be parsed → 400 (no dialog could be built);
//! - `Max-Forwards: 0` → 483; merged requests (§8.2.2.2) → 482;
//! - unknown methods → 501, known but unsupported → 405 with `Allow` (§8.2.1);
//! - `Require` with an option tag we do not support → 420 with `Unsupported` (§8.2.2.3);
//! - a To tag that matches no dialog → 481 (§12.2.2); CSeq out of order in a dialog → 500;
//! - OPTIONS answered 200 with `Allow`, `Accept`, `Supported` (§11.2; trunks ping with it);
//! - BYE in a dialog answered 200 (§15.1.2); re-INVITE glare → 491 (§14.2);
//! - session timers (RFC 4028): `Session-Expires` below our `Min-SE` → 422;
//! - 18x/2xx to an INVITE carry its `Record-Route` values verbatim and in order (§12.1.1), and our
//!   in-dialog requests follow the route set to the first route's address (§12.2.1.1, §16.12).
//!
//! Client behaviour: INVITE with a new Call-ID/From tag, early dialogs from 1xx with a To tag
//! (§12.1.2, confirmed by the 2xx with its route set, dropped when the call fails), ACK for 2xx
//! built by the dialog (§13.2.2.4) and re-sent on every retransmitted 2xx, digest retry on 401/407
//! (§22.2: CSeq+1, same Call-ID and From tag), 422 retry with a larger Min-SE (RFC 4028 §7.4),
//! re-INVITE 491 retried after the §14.1 delay under the same request id, CANCEL (§9.1),
//! in-dialog requests (digest-retried with the INVITE's credentials) and BYE.
//!
//! Not done here: PRACK/100rel (RFC 3262; a `Require: 100rel` gets 420), RFC 3263 DNS (targets are
//! IP addresses; the caller resolves names), forking beyond one early dialog per To tag.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::{Credentials, DigestClient};
use crate::dialog::{Dialog, DialogError, DialogId, DialogState, SessionTimerAction};
use crate::message::{
    Host, Message, Method, NameAddr, Request, Response, SipUri, Uri, error_response,
};
use crate::transaction::{Endpoint, IdGen, TimerConfig, Transmit, TransportKind, TxEvent, TxId};

/// What the UA supports and says about itself.
#[derive(Debug, Clone)]
pub struct UaConfig {
    /// Methods we implement (the `Allow` header).
    pub allow: Vec<Method>,
    /// Option tags we support (the `Supported` header; `Require` is checked against it).
    pub supported: Vec<String>,
    /// Body types we accept (the `Accept` header).
    pub accept: Vec<String>,
    /// `User-Agent`/`Server` header value.
    pub user_agent: String,
    /// Our Min-SE (RFC 4028), never below 90 s.
    pub min_se: Duration,
    /// User part of our Contact.
    pub contact_user: String,
    /// Transaction timers.
    pub timers: TimerConfig,
}

impl Default for UaConfig {
    fn default() -> Self {
        Self {
            allow: vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
                Method::Update,
                Method::Info,
                Method::Refer,
                Method::Notify,
            ],
            supported: vec!["timer".into()],
            accept: vec!["application/sdp".into()],
            user_agent: "trunkline".into(),
            min_se: Duration::from_secs(90),
            contact_user: "trunkline".into(),
            timers: TimerConfig::default(),
        }
    }
}

/// Counters of what the UA core rejected or dropped, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UaStats {
    /// Requests that could not be parsed or failed validation, answered 400/505.
    pub bad_requests: u64,
    /// Bytes too broken to answer at all (no usable Via/CSeq), dropped.
    pub dropped_unparseable: u64,
    /// Malformed responses, dropped.
    pub dropped_responses: u64,
    /// Max-Forwards 0 → 483.
    pub too_many_hops: u64,
    /// Merged requests → 482.
    pub loops_detected: u64,
    /// Known but unsupported methods → 405.
    pub method_not_allowed: u64,
    /// Unknown methods → 501.
    pub not_implemented: u64,
    /// Unsupported `Require` → 420.
    pub bad_extension: u64,
    /// Requests in unknown dialogs → 481.
    pub unknown_dialog: u64,
    /// In-dialog CSeq out of order → 500.
    pub cseq_out_of_order: u64,
    /// re-INVITE glare → 491.
    pub glare: u64,
    /// Session-Expires too small → 422.
    pub interval_too_brief: u64,
    /// OPTIONS answered.
    pub options_answered: u64,
    /// ACKs matching no dialog, dropped.
    pub stray_acks: u64,
}

/// Why a dialog ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The peer sent BYE.
    RemoteBye,
    /// We sent BYE and it was answered (or timed out).
    LocalBye,
    /// No ACK for our 2xx (§13.3.1.4); a BYE was sent.
    AckTimeout,
    /// The session timer expired (RFC 4028); a BYE was sent.
    SessionExpired,
    /// 481/408 to an in-dialog request (§12.2.1.2).
    Gone,
}

/// What the UA core tells the application.
#[derive(Debug, Clone)]
pub enum UaEvent {
    /// A new INVITE outside any dialog: answer with [`Ua::respond`] (build with [`Ua::make_response`]).
    IncomingCall {
        /// Server transaction.
        tx: TxId,
        /// The INVITE.
        request: Request,
        /// Source address.
        source: SocketAddr,
        /// Transport.
        transport: TransportKind,
    },
    /// A request outside any dialog that the core does not answer itself (e.g. MESSAGE, INFO).
    IncomingRequest {
        /// Server transaction.
        tx: TxId,
        /// The request.
        request: Request,
    },
    /// A request inside dialog `dialog` (re-INVITE, UPDATE, INFO, REFER, NOTIFY): answer it with
    /// [`Ua::respond`]. BYE and OPTIONS are answered by the core.
    DialogRequest {
        /// The dialog.
        dialog: DialogId,
        /// Server transaction.
        tx: TxId,
        /// The request.
        request: Request,
    },
    /// The caller CANCELled INVITE `tx`; 487 was sent.
    CallCancelled {
        /// The INVITE server transaction.
        tx: TxId,
    },
    /// The ACK for our 2xx arrived.
    AckReceived {
        /// The dialog.
        dialog: DialogId,
        /// The ACK (it may carry an SDP answer).
        request: Request,
    },
    /// A response to request `tx` (the id [`Ua::invite`]/[`Ua::send_in_dialog`] returned, kept across
    /// digest retries). For a 2xx to an INVITE the ACK is already sent and `dialog` is set.
    Response {
        /// The request's id.
        tx: TxId,
        /// The method of the request.
        method: Method,
        /// The response.
        response: Response,
        /// The dialog it created or belongs to.
        dialog: Option<DialogId>,
    },
    /// Request `tx` timed out (Timer B/F) — the response is an implicit 408.
    Timeout {
        /// The request's id.
        tx: TxId,
    },
    /// The session timer asks for a refresh (we are the refresher): send a re-INVITE or UPDATE.
    SessionRefreshDue {
        /// The dialog.
        dialog: DialogId,
    },
    /// Dialog ended.
    DialogTerminated {
        /// The dialog.
        dialog: DialogId,
        /// Why.
        reason: EndReason,
    },
}

/// Errors of UA commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UaError {
    /// Unknown dialog.
    #[error("no such dialog")]
    NoDialog,
    /// A dialog operation failed.
    #[error(transparent)]
    Dialog(#[from] DialogError),
    /// The transaction layer refused.
    #[error(transparent)]
    Transaction(#[from] crate::transaction::TxError),
    /// The URI has no address we can send to without DNS.
    #[error("cannot route to {0}")]
    Unroutable(String),
}

/// Where a SIP URI points without DNS: its IP host, port (5060, or 5061 for TLS) and transport
/// (`transport=` parameter, `sips:` → TLS). `None` for host names and non-SIP URIs.
pub fn uri_destination(uri: &Uri) -> Option<(SocketAddr, TransportKind)> {
    let sip = uri.as_sip()?;
    let ip = sip.host_port.ip()?;
    let transport = match sip
        .param("transport")
        .flatten()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("tcp") if !sip.secure => TransportKind::Tcp,
        Some("tls") => TransportKind::Tls,
        _ if sip.secure => TransportKind::Tls,
        _ => TransportKind::Udp,
    };
    let port = sip
        .host_port
        .port
        .unwrap_or(if transport == TransportKind::Tls {
            5061
        } else {
            5060
        });
    Some((SocketAddr::new(ip, port), transport))
}

/// A request we sent and may have to re-send (digest, 422).
#[derive(Debug)]
struct ClientReq {
    /// The id the application knows.
    original: TxId,
    /// The request as built, before the transaction layer added its Via.
    request: Request,
    destination: SocketAddr,
    transport: TransportKind,
    dialog: Option<DialogId>,
    credentials: Option<Credentials>,
    auth_attempts: u8,
    retries_422: u8,
}

/// An INVITE we received and have not answered finally.
#[derive(Debug)]
struct ServerInvite {
    request: Request,
    source: SocketAddr,
    transport: TransportKind,
    to_tag: String,
    /// In-dialog re-INVITE.
    dialog: Option<DialogId>,
}

#[derive(Debug)]
struct DialogEntry {
    dialog: Dialog,
    /// Where to send in-dialog requests when the next hop is not an IP URI (and over streams).
    peer: SocketAddr,
    transport: TransportKind,
    /// Our INVITE (for ACK building) and the last ACK sent, re-sent on 2xx retransmissions.
    invite: Option<Request>,
    ack: Option<(Bytes, SocketAddr, TransportKind)>,
    /// For UAS dialogs: the server transaction whose 2xx awaits an ACK.
    awaiting_ack: Option<TxId>,
    bye_sent: bool,
    /// Credentials of the INVITE, reused when an in-dialog request is challenged.
    credentials: Option<Credentials>,
}

/// The UA core.
#[derive(Debug)]
pub struct Ua {
    endpoint: Endpoint,
    config: UaConfig,
    stats: UaStats,
    // Boxed values: a table keeps up to twice as many slots as entries, and these hold a
    // request each (~1 KB), so inline most of it would be slack.
    dialogs: HashMap<DialogId, Box<DialogEntry>>,
    timed_dialogs: HashSet<DialogId>,
    clients: HashMap<TxId, Box<ClientReq>>,
    current: HashMap<TxId, TxId>,
    server_invites: HashMap<TxId, ServerInvite>,
    ack_wait: HashMap<TxId, DialogId>,
    digest: HashMap<String, DigestClient>,
    glare_retries: Vec<GlareRetry>,
    events: VecDeque<UaEvent>,
    /// Out-of-dialog OPTIONS get 503 instead of 200 (draining or at capacity: a dispatcher's
    /// keep-alive probe then stops sending calls here). See [`Ua::set_available`].
    unavailable: bool,
}

impl Ua {
    /// A UA with `config`, identifiers from `ids`. Set local addresses with [`Ua::set_sent_by`].
    pub fn new(config: UaConfig, ids: IdGen) -> Self {
        Self {
            endpoint: Endpoint::new(config.timers, ids),
            config,
            stats: UaStats::default(),
            dialogs: HashMap::new(),
            timed_dialogs: HashSet::new(),
            clients: HashMap::new(),
            current: HashMap::new(),
            server_invites: HashMap::new(),
            ack_wait: HashMap::new(),
            digest: HashMap::new(),
            glare_retries: Vec::new(),
            events: VecDeque::new(),
            unavailable: false,
        }
    }

    /// Whether this UA takes new calls, as far as a probing proxy is concerned: when `false`,
    /// out-of-dialog OPTIONS are answered `503 Service Unavailable` (with `Retry-After`) instead of
    /// 200, so a dispatcher (Kamailio's `ds_ping_interval` probing) marks this node inactive
    /// and sends new calls elsewhere. OPTIONS inside a dialog are still answered 200: the dialog
    /// is alive. Default: available.
    pub fn set_available(&mut self, available: bool) {
        self.unavailable = !available;
    }

    /// See [`Ua::set_available`].
    pub fn available(&self) -> bool {
        !self.unavailable
    }

    // ---- getters --------------------------------------------------------------------------------

    /// Counters of the UA core.
    pub fn stats(&self) -> UaStats {
        self.stats
    }

    /// The transaction layer (its counters, its sent-by addresses).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A dialog.
    pub fn dialog(&self, id: &DialogId) -> Option<&Dialog> {
        self.dialogs.get(id).map(|e| &e.dialog)
    }

    /// Number of live dialogs.
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// Our Contact URI for `transport`.
    pub fn contact(&self, transport: TransportKind) -> Uri {
        let host_port = self.endpoint.sent_by(transport).cloned();
        let mut uri = SipUri::new(Host::from(IpAddr::from([127, 0, 0, 1])));
        if let Some(hp) = host_port {
            uri.host_port = hp;
        }
        uri.user = Some(self.config.contact_user.clone());
        match transport {
            TransportKind::Udp => {}
            TransportKind::Tcp => uri.params.push(param("transport", "tcp")),
            TransportKind::Tls => uri.params.push(param("transport", "tls")),
        }
        Uri::Sip(uri)
    }

    fn allow_value(&self) -> String {
        self.config
            .allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    // ---- commands -------------------------------------------------------------------------------

    /// Sets our address (public address behind NAT) for Via and Contact on `transport`.
    pub fn set_sent_by(&mut self, transport: TransportKind, addr: SocketAddr) {
        self.endpoint.set_sent_by(
            transport,
            crate::message::HostPort {
                host: Host::from(addr.ip()),
                port: Some(addr.port()),
            },
        );
    }

    /// A response to server transaction `tx` with our To tag (the same for every response of the
    /// transaction), Contact and the request's `Record-Route` values (verbatim, in order: §12.1.1)
    /// on 101–299 to INVITE, and `Allow`/`Supported` on 2xx.
    pub fn make_response(&mut self, tx: TxId, status: u16) -> Option<Response> {
        let (request, tag, transport) = match self.server_invites.get(&tx) {
            Some(s) => (s.request.clone(), Some(s.to_tag.clone()), s.transport),
            None => (self.endpoint.request(tx)?.clone(), None, TransportKind::Udp),
        };
        let mut r = Response::for_request(&request, status);
        if status > 100 {
            let tag = tag.unwrap_or_else(|| self.endpoint.ids().tag());
            r.set_to_tag(&tag);
        }
        copy_record_route(&request, &mut r);
        if request.method == Method::Invite && (101..300).contains(&status) {
            r.push_header("Contact", format!("<{}>", self.contact(transport)));
        }
        if (200..300).contains(&status) && request.method == Method::Invite {
            r.push_header("Allow", self.allow_value());
            r.push_header("Supported", self.config.supported.join(", "));
        }
        Some(r)
    }

    /// Sends `response` on server transaction `tx`. For an INVITE, a 2xx or a 1xx with To tag
    /// creates the UAS dialog; a 2xx is retransmitted until ACKed. A 1xx/2xx to an INVITE built
    /// without [`Ua::make_response`] gets the request's `Record-Route` here (§12.1.1).
    pub fn respond(
        &mut self,
        tx: TxId,
        mut response: Response,
        now: Instant,
    ) -> Result<Option<DialogId>, UaError> {
        if response.header("Server").next().is_none() {
            response.push_header("Server", self.config.user_agent.clone());
        }
        if let Some(si) = self.server_invites.get(&tx)
            && response.header("Record-Route").next().is_none()
        {
            copy_record_route(&si.request, &mut response);
        }
        let status = response.status;
        let mut dialog_id = None;
        if let Some(si) = self.server_invites.get(&tx) {
            if let Some(did) = &si.dialog {
                // re-INVITE answer
                if let Some(e) = self.dialogs.get_mut(did) {
                    e.dialog.incoming_invite_answered(status);
                    if (200..300).contains(&status) {
                        e.dialog.session_refreshed(now);
                        e.awaiting_ack = Some(tx);
                        self.ack_wait.insert(tx, did.clone());
                    }
                }
                dialog_id = Some(did.clone());
            } else if status > 100 && status < 300 && response.to_tag().is_some() {
                let contact = self.contact(si.transport);
                let (source, transport) = (si.source, si.transport);
                let invite = si.request.clone();
                let existing = DialogId::for_response(&response).map(|mut id| {
                    // for_response gives (from=local); for a UAS the local tag is the To tag.
                    std::mem::swap(&mut id.local_tag, &mut id.remote_tag);
                    id
                });
                let known = existing
                    .as_ref()
                    .is_some_and(|id| self.dialogs.contains_key(id));
                if !known {
                    let d = Dialog::new_uas(&invite, &response, contact)?;
                    let id = d.id.clone();
                    self.dialogs.insert(
                        id.clone(),
                        Box::new(DialogEntry {
                            dialog: d,
                            peer: source,
                            transport,
                            invite: None,
                            ack: None,
                            awaiting_ack: None,
                            bye_sent: false,
                            credentials: None,
                        }),
                    );
                }
                if let Some(id) = existing {
                    if let Some(e) = self.dialogs.get_mut(&id) {
                        e.dialog.incoming_invite_answered(status);
                        if (200..300).contains(&status) {
                            e.awaiting_ack = Some(tx);
                            self.ack_wait.insert(tx, id.clone());
                            if let Some(se) = response.header("Session-Expires").next()
                                && let Some((interval, refresher)) =
                                    crate::dialog::parse_session_expires(se)
                            {
                                e.dialog
                                    .apply_session_expires(interval, refresher.as_deref(), now);
                                self.timed_dialogs.insert(id.clone());
                            }
                        }
                    }
                    dialog_id = Some(id);
                }
            }
            if status >= 200
                && let Some(si) = self.server_invites.remove(&tx)
                && status >= 300
            {
                // A failed initial INVITE ends the early dialog its 1xx created (§12.3).
                self.drop_early_dialog(&si);
            }
        }
        // RFC 4028: a 2xx to an UPDATE refreshes the session like a re-INVITE does.
        if (200..300).contains(&status)
            && let Some(req) = self.endpoint.request(tx)
            && req.method == Method::Update
            && let Some(did) = DialogId::for_incoming(req)
            && let Some(e) = self.dialogs.get_mut(&did)
        {
            e.dialog.session_refreshed(now);
            dialog_id = Some(did);
        }
        self.endpoint.respond(tx, response, now)?;
        Ok(dialog_id)
    }

    /// Places a call: INVITE to `target` sent to `destination`, `from` as our identity, `body` as the
    /// SDP offer. `credentials` answer 401/407 challenges (once per realm). Returns the request id.
    pub fn invite(&mut self, params: InviteParams, now: Instant) -> Result<TxId, UaError> {
        let call_id = self.endpoint.ids().call_id(None);
        let tag = self.endpoint.ids().tag();
        let mut from = params.from;
        from.set_tag(&tag);
        let mut r = Request::new(Method::Invite, params.target.clone());
        r.push_header("Max-Forwards", "70");
        r.push_header("From", from.to_string());
        r.push_header(
            "To",
            params
                .to
                .unwrap_or_else(|| NameAddr::new(params.target.clone()))
                .to_string(),
        );
        r.push_header("Call-ID", call_id);
        r.push_header("CSeq", "1 INVITE");
        r.push_header("Contact", format!("<{}>", self.contact(params.transport)));
        r.push_header("Allow", self.allow_value());
        r.push_header("Supported", self.config.supported.join(", "));
        r.push_header("User-Agent", self.config.user_agent.clone());
        if let Some(se) = params.session_expires {
            r.push_header("Session-Expires", format!("{};refresher=uac", se.as_secs()));
            r.push_header(
                "Min-SE",
                self.config
                    .min_se
                    .max(crate::dialog::MIN_SE_FLOOR)
                    .as_secs()
                    .to_string(),
            );
        }
        for (name, value) in params.extra_headers {
            r.push_header(&name, value);
        }
        if let Some((ct, body)) = params.body {
            r.set_body(&ct, body);
        }
        self.send_client(
            r,
            params.destination,
            params.transport,
            None,
            params.credentials,
            None,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_client(
        &mut self,
        request: Request,
        destination: SocketAddr,
        transport: TransportKind,
        dialog: Option<DialogId>,
        credentials: Option<Credentials>,
        original: Option<(TxId, u8, u8)>,
        now: Instant,
    ) -> Result<TxId, UaError> {
        // A retried in-dialog request (digest, 422) used CSeq + 1: keep the dialog's counter ahead.
        if let (Some(did), Ok(cseq)) = (&dialog, request.cseq())
            && let Some(e) = self.dialogs.get_mut(did)
            && cseq.seq > e.dialog.local_cseq
        {
            e.dialog.local_cseq = cseq.seq;
        }
        let id = self
            .endpoint
            .send_request(request.clone(), destination, transport, now)?;
        let (orig, auth_attempts, retries_422) = original.unwrap_or((id, 0, 0));
        self.current.insert(orig, id);
        self.clients.insert(
            id,
            Box::new(ClientReq {
                original: orig,
                request,
                destination,
                transport,
                dialog,
                credentials,
                auth_attempts,
                retries_422,
            }),
        );
        self.flush_endpoint(now);
        Ok(orig)
    }

    /// The request last sent for our request `tx` (after digest and 422 retries, before the
    /// transaction layer's Via), while its transaction lives.
    pub fn sent_request(&self, tx: TxId) -> Option<&Request> {
        let cur = self.current.get(&tx).copied().unwrap_or(tx);
        self.clients.get(&cur).map(|c| &c.request)
    }

    /// Gives up our initial INVITE `tx` before any provisional response (RFC 3263 §4.3
    /// failover: nothing to CANCEL yet): it is no longer retransmitted and reports nothing more.
    pub fn abandon(&mut self, tx: TxId, now: Instant) {
        if let Some(cur) = self.current.remove(&tx) {
            self.clients.remove(&cur);
            self.endpoint.abandon(cur);
        }
        self.flush_endpoint(now);
    }

    /// RFC 3263 §4.3 failover: sends `previous` (an initial INVITE of ours, as
    /// [`Ua::sent_request`] returned it) to another server as a new client transaction: same
    /// Call-ID, From tag, To and body, CSeq `cseq`, a new branch, and no `Authorization` /
    /// `Proxy-Authorization` (challenges are per server; `credentials` answer the new one's).
    /// Returns the new request id.
    pub fn invite_retarget(
        &mut self,
        previous: &Request,
        cseq: u32,
        destination: SocketAddr,
        transport: TransportKind,
        credentials: Option<Credentials>,
        now: Instant,
    ) -> Result<TxId, UaError> {
        let mut r = previous.clone();
        r.headers.remove("Authorization");
        r.headers.remove("Proxy-Authorization");
        r.headers.remove("Via");
        r.set_header("CSeq", format!("{cseq} INVITE"));
        r.set_header("Contact", format!("<{}>", self.contact(transport)));
        self.send_client(r, destination, transport, None, credentials, None, now)
    }

    /// The transport could not send to `destination`: requests to it without any response
    /// yet fail now ([`UaEvent::Timeout`]), as RFC 3261 §8.1.3.1 treats a transport error.
    pub fn handle_transport_error(
        &mut self,
        destination: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        if self.endpoint.transport_error(destination, transport) > 0 {
            self.flush_endpoint(now);
        }
    }

    /// CANCELs our INVITE `tx` (§9.1); held back until a provisional response if none came yet.
    pub fn cancel(&mut self, tx: TxId, now: Instant) -> Result<(), UaError> {
        let cur = self.current.get(&tx).copied().unwrap_or(tx);
        self.endpoint.send_cancel(cur, now)?;
        self.flush_endpoint(now);
        Ok(())
    }

    /// Sends a request in dialog `dialog` (re-INVITE via `Method::Invite`, UPDATE, INFO, OPTIONS,
    /// REFER, NOTIFY, BYE) with an optional `(content-type, body)`.
    pub fn send_in_dialog(
        &mut self,
        dialog: &DialogId,
        method: Method,
        body: Option<(String, Bytes)>,
        extra_headers: Vec<(String, String)>,
        now: Instant,
    ) -> Result<TxId, UaError> {
        let entry = self.dialogs.get_mut(dialog).ok_or(UaError::NoDialog)?;
        let mut r = if method == Method::Invite {
            entry.dialog.new_reinvite()?
        } else {
            entry.dialog.new_request(method.clone())
        };
        for (name, value) in extra_headers {
            r.push_header(&name, value);
        }
        if let Some((ct, b)) = body {
            r.set_body(&ct, b);
        }
        if method == Method::Invite {
            entry.invite = Some(r.clone());
        }
        if method == Method::Bye {
            entry.bye_sent = true;
            entry.dialog.state = DialogState::Terminated;
        }
        let (destination, transport) = Self::route(entry);
        let credentials = entry.credentials.clone();
        self.send_client(
            r,
            destination,
            transport,
            Some(dialog.clone()),
            credentials,
            None,
            now,
        )
    }

    /// Sends a pre-built request in dialog `dialog` (REFER/NOTIFY built with the [`Dialog`] helpers
    /// through [`Ua::dialog_mut`]).
    pub fn send_built_in_dialog(
        &mut self,
        dialog: &DialogId,
        request: Request,
        now: Instant,
    ) -> Result<TxId, UaError> {
        let entry = self.dialogs.get(dialog).ok_or(UaError::NoDialog)?;
        let (destination, transport) = Self::route(entry);
        let credentials = entry.credentials.clone();
        self.send_client(
            request,
            destination,
            transport,
            Some(dialog.clone()),
            credentials,
            None,
            now,
        )
    }

    /// Mutable access to a dialog (to build REFER/NOTIFY requests with its CSeq).
    pub fn dialog_mut(&mut self, id: &DialogId) -> Option<&mut Dialog> {
        self.dialogs.get_mut(id).map(|e| &mut e.dialog)
    }

    /// Hangs up dialog `dialog` with BYE.
    pub fn bye(&mut self, dialog: &DialogId, now: Instant) -> Result<TxId, UaError> {
        self.send_in_dialog(dialog, Method::Bye, None, Vec::new(), now)
    }

    fn route(entry: &DialogEntry) -> (SocketAddr, TransportKind) {
        if entry.transport.is_reliable() && entry.dialog.role == crate::dialog::Role::Uas {
            // Over streams, reuse the connection the dialog came in on.
            return (entry.peer, entry.transport);
        }
        match uri_destination(entry.dialog.next_hop()) {
            Some((addr, t)) if t == entry.transport || !entry.transport.is_reliable() => (addr, t),
            Some((addr, _)) => (addr, entry.transport),
            None => (entry.peer, entry.transport),
        }
    }

    // ---- inputs ---------------------------------------------------------------------------------

    /// Bytes arrived from `source` over `transport` (one datagram or one framed stream message).
    pub fn handle_datagram(
        &mut self,
        data: Bytes,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        let message = match Message::parse(data.clone()) {
            Ok(m) => m,
            Err(e) => {
                let tag = self.endpoint.ids().tag();
                match error_response(&data, &e, &tag) {
                    Some(r) => {
                        self.stats.bad_requests += 1;
                        self.endpoint.respond_stateless(&r, source, transport);
                    }
                    None if data.starts_with(b"SIP/") => self.stats.dropped_responses += 1,
                    None => self.stats.dropped_unparseable += 1,
                }
                return;
            }
        };
        if let Err(e) = message.validate() {
            match &message {
                Message::Request(req) if req.method != Method::Ack => {
                    let tag = self.endpoint.ids().tag();
                    match error_response(&data, &e, &tag) {
                        Some(r) => {
                            self.stats.bad_requests += 1;
                            self.endpoint.respond_stateless(&r, source, transport);
                        }
                        None => self.stats.dropped_unparseable += 1,
                    }
                }
                Message::Request(_) => self.stats.dropped_unparseable += 1,
                Message::Response(_) => self.stats.dropped_responses += 1,
            }
            return;
        }
        self.endpoint
            .handle_message(message, source, transport, now);
        self.flush_endpoint(now);
    }

    /// Fires due timers (transactions, 2xx retransmission, session timers).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.flush_endpoint(now);
        self.retry_glare(now);
        let due: Vec<DialogId> = self
            .timed_dialogs
            .iter()
            .filter(|id| {
                self.dialogs
                    .get(*id)
                    .and_then(|e| e.dialog.poll_timeout())
                    .is_some_and(|t| t <= now)
            })
            .cloned()
            .collect();
        for id in due {
            let action = self
                .dialogs
                .get_mut(&id)
                .and_then(|e| e.dialog.handle_timeout(now));
            match action {
                Some(SessionTimerAction::Refresh) => self
                    .events
                    .push_back(UaEvent::SessionRefreshDue { dialog: id }),
                Some(SessionTimerAction::Expired) => {
                    self.timed_dialogs.remove(&id);
                    let _ = self.bye(&id, now);
                    self.end_dialog(&id, EndReason::SessionExpired);
                }
                None => {}
            }
        }
    }

    // ---- outputs --------------------------------------------------------------------------------

    /// Next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// Next deadline.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let t = self.endpoint.poll_timeout();
        let d = self
            .timed_dialogs
            .iter()
            .filter_map(|id| self.dialogs.get(id)?.dialog.poll_timeout())
            .chain(self.glare_retries.iter().map(|g| g.at))
            .min();
        match (t, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ------------------------------------------------------------------------------

    fn flush_endpoint(&mut self, now: Instant) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                TxEvent::Request {
                    id,
                    request,
                    source,
                    transport,
                } => self.on_request(id, request, source, transport, now),
                TxEvent::Ack { request, .. } => self.on_ack(request),
                TxEvent::Response { id, response } => self.on_response(id, response, now),
                TxEvent::Stray2xx { response, .. } => self.resend_ack(&response),
                TxEvent::Timeout { id } => {
                    if let Some(c) = self.clients.remove(&id) {
                        self.current.remove(&c.original);
                        if let Some(did) = &c.dialog
                            && c.request.method == Method::Bye
                        {
                            self.end_dialog(did, EndReason::LocalBye);
                        }
                        self.events.push_back(UaEvent::Timeout { tx: c.original });
                    }
                    self.server_invites.remove(&id);
                }
                TxEvent::Cancelled { id } => {
                    if let Some(si) = self.server_invites.remove(&id) {
                        self.drop_early_dialog(&si);
                    }
                    self.events.push_back(UaEvent::CallCancelled { tx: id });
                }
                TxEvent::Terminated { id } => {
                    if let Some(c) = self.clients.remove(&id)
                        && self.current.get(&c.original) == Some(&id)
                    {
                        self.current.remove(&c.original);
                    }
                    self.server_invites.remove(&id);
                }
                TxEvent::AckTimeout { id } => {
                    if let Some(did) = self.ack_wait.remove(&id) {
                        let _ = self.bye(&did, now);
                        self.end_dialog(&did, EndReason::AckTimeout);
                    }
                }
            }
        }
    }

    fn reject(&mut self, tx: TxId, status: u16, extra: &[(&str, String)], now: Instant) {
        if let Some(mut r) = self.make_response(tx, status) {
            for (n, v) in extra {
                r.push_header(n, v.clone());
            }
            let _ = self.endpoint.respond(tx, r, now);
        }
        self.server_invites.remove(&tx);
    }

    fn on_request(
        &mut self,
        tx: TxId,
        request: Request,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        // §8.2.1 method inspection.
        if let Method::Other(_) = request.method {
            self.stats.not_implemented += 1;
            let allow = self.allow_value();
            return self.reject(tx, 501, &[("Allow", allow)], now);
        }
        if !self.config.allow.contains(&request.method) {
            self.stats.method_not_allowed += 1;
            let allow = self.allow_value();
            return self.reject(tx, 405, &[("Allow", allow)], now);
        }
        if request.max_forwards().ok().flatten() == Some(0) {
            self.stats.too_many_hops += 1;
            return self.reject(tx, 483, &[], now);
        }
        // §8.2.2.2 merged requests (only outside dialogs).
        if self.endpoint.is_merged(&request) {
            self.stats.loops_detected += 1;
            return self.reject(tx, 482, &[], now);
        }
        // §8.2.2.3 Require.
        if request.method != Method::Cancel {
            let unsupported: Vec<String> = request
                .headers
                .option_tags("Require")
                .into_iter()
                .filter(|t| {
                    !self
                        .config
                        .supported
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(t))
                })
                .map(str::to_owned)
                .collect();
            if !unsupported.is_empty() {
                self.stats.bad_extension += 1;
                return self.reject(tx, 420, &[("Unsupported", unsupported.join(", "))], now);
            }
        }
        if request.method == Method::Invite {
            let tag = self.endpoint.ids().tag();
            let dialog = DialogId::for_incoming(&request);
            self.server_invites.insert(
                tx,
                ServerInvite {
                    request: request.clone(),
                    source,
                    transport,
                    to_tag: dialog.as_ref().map_or(tag, |d| d.local_tag.clone()),
                    dialog: None,
                },
            );
        }
        match DialogId::for_incoming(&request) {
            Some(did) => self.on_dialog_request(tx, did, request, now),
            None => match request.method {
                Method::Options if self.unavailable => {
                    self.stats.options_answered += 1;
                    self.reject(tx, 503, &[("Retry-After", "5".into())], now);
                }
                Method::Options => {
                    self.stats.options_answered += 1;
                    self.answer_options(tx, now);
                }
                Method::Invite => {
                    // §12.1.1: the UAS dialog is built from Record-Route and Contact; if either
                    // cannot be parsed, no 1xx/2xx could be sent: say so now instead.
                    if let Err(e) = request.record_route().and(request.contact()) {
                        self.stats.bad_requests += 1;
                        if let Some(mut r) = self.make_response(tx, 400) {
                            r.reason = e.reason_phrase();
                            let _ = self.endpoint.respond(tx, r, now);
                        }
                        self.server_invites.remove(&tx);
                        return;
                    }
                    if let Err(min) =
                        crate::dialog::negotiate_session_expires(&request, self.config.min_se)
                    {
                        self.stats.interval_too_brief += 1;
                        let min_se = min.as_secs().to_string();
                        return self.reject(tx, 422, &[("Min-SE", min_se)], now);
                    }
                    self.events.push_back(UaEvent::IncomingCall {
                        tx,
                        request,
                        source,
                        transport,
                    });
                }
                Method::Bye | Method::Update | Method::Notify | Method::Refer | Method::Prack => {
                    // These only make sense inside a dialog (§15.1.2, RFC 3311, RFC 3515).
                    self.stats.unknown_dialog += 1;
                    self.reject(tx, 481, &[], now);
                }
                _ => self
                    .events
                    .push_back(UaEvent::IncomingRequest { tx, request }),
            },
        }
    }

    fn answer_options(&mut self, tx: TxId, now: Instant) {
        if let Some(mut r) = self.make_response(tx, 200) {
            r.push_header("Allow", self.allow_value());
            r.push_header("Accept", self.config.accept.join(", "));
            r.push_header("Supported", self.config.supported.join(", "));
            r.push_header("Server", self.config.user_agent.clone());
            let _ = self.endpoint.respond(tx, r, now);
        }
    }

    fn on_dialog_request(&mut self, tx: TxId, did: DialogId, request: Request, now: Instant) {
        let Some(entry) = self.dialogs.get_mut(&did) else {
            self.stats.unknown_dialog += 1;
            return self.reject(tx, 481, &[], now);
        };
        match entry.dialog.handle_request(&request) {
            Ok(()) => {}
            Err(DialogError::CSeqOutOfOrder) => {
                self.stats.cseq_out_of_order += 1;
                return self.reject(tx, 500, &[], now);
            }
            Err(DialogError::Glare) => {
                self.stats.glare += 1;
                let busy_in = entry.dialog.invite_in_pending && !entry.dialog.invite_out_pending;
                // §14.2: 500 + Retry-After while we are still answering their previous INVITE,
                // 491 when our own re-INVITE is pending.
                return if busy_in {
                    self.reject(tx, 500, &[("Retry-After", "1".to_owned())], now)
                } else {
                    self.reject(tx, 491, &[], now)
                };
            }
            Err(_) => return self.reject(tx, 400, &[], now),
        }
        match request.method {
            Method::Bye => {
                if let Some(mut r) = self.make_response(tx, 200) {
                    r.push_header("Server", self.config.user_agent.clone());
                    let _ = self.endpoint.respond(tx, r, now);
                }
                self.end_dialog(&did, EndReason::RemoteBye);
            }
            Method::Options => {
                self.stats.options_answered += 1;
                self.answer_options(tx, now);
            }
            Method::Invite => {
                if let Some(si) = self.server_invites.get_mut(&tx) {
                    si.dialog = Some(did.clone());
                }
                self.events.push_back(UaEvent::DialogRequest {
                    dialog: did,
                    tx,
                    request,
                });
            }
            _ => self.events.push_back(UaEvent::DialogRequest {
                dialog: did,
                tx,
                request,
            }),
        }
    }

    fn on_ack(&mut self, request: Request) {
        let Some(did) = DialogId::for_incoming(&request) else {
            self.stats.stray_acks += 1;
            return;
        };
        match self.dialogs.get_mut(&did) {
            Some(e) => {
                if let Some(tx) = e.awaiting_ack.take() {
                    self.ack_wait.remove(&tx);
                }
                self.events.push_back(UaEvent::AckReceived {
                    dialog: did,
                    request,
                });
            }
            None => self.stats.stray_acks += 1,
        }
    }

    fn resend_ack(&mut self, response: &Response) {
        if let Some(did) = DialogId::for_response(response)
            && let Some(e) = self.dialogs.get(&did)
            && let Some((bytes, dest, transport)) = &e.ack
        {
            self.endpoint.send_raw(bytes.clone(), *dest, *transport);
        }
    }

    fn on_response(&mut self, id: TxId, response: Response, now: Instant) {
        let Some(client) = self.clients.get(&id) else {
            return;
        };
        let method = client.request.method.clone();
        let status = response.status;
        let original = client.original;
        let (has_creds, auth_attempts, retries_422) = (
            client.credentials.is_some(),
            client.auth_attempts,
            client.retries_422,
        );

        // Digest (§22.2) and 422 (RFC 4028 §7.4) retries: a new transaction, CSeq + 1.
        if (status == 401 || status == 407)
            && has_creds
            && auth_attempts < 2
            && self.retry_with_auth(id, &response, now).is_some()
        {
            return;
        }
        if status == 422
            && retries_422 < 2
            && let Some(client) = self.clients.get(&id)
        {
            let mut req = client.request.clone();
            if crate::dialog::retry_after_422(&mut req, &response) {
                bump_cseq(&mut req);
                let (dest, tr, dlg, cred, aa, r422) = (
                    client.destination,
                    client.transport,
                    client.dialog.clone(),
                    client.credentials.clone(),
                    client.auth_attempts,
                    client.retries_422 + 1,
                );
                self.clients.remove(&id);
                if self
                    .send_client(req, dest, tr, dlg, cred, Some((original, aa, r422)), now)
                    .is_ok()
                {
                    return;
                }
            }
        }

        // re-INVITE glare (§14.1): retry after the randomised delay, transparently.
        if status == 491
            && method == Method::Invite
            && retries_422 < 2
            && let Some(client) = self.clients.get(&id)
            && let Some(did) = client.dialog.clone()
        {
            let retry = GlareRetry {
                at: now,
                dialog: did.clone(),
                request: client.request.clone(),
                original,
                credentials: client.credentials.clone(),
                retries: retries_422 + 1,
            };
            let random = self.endpoint.ids().next_u64();
            if let Some(e) = self.dialogs.get_mut(&did) {
                e.dialog.handle_response(&method, &response);
                let at = now + e.dialog.glare_retry_delay(random);
                self.clients.remove(&id);
                self.glare_retries.push(GlareRetry { at, ..retry });
                return;
            }
        }

        let mut dialog = self.clients.get(&id).and_then(|c| c.dialog.clone());
        let initial_invite = method == Method::Invite && dialog.is_none();
        if initial_invite && (101..200).contains(&status) && response.to_tag().is_some() {
            dialog = self.early_uac_dialog(id, &response);
        } else if initial_invite && status >= 300 {
            // The call failed: its early dialogs end with it (§12.3).
            if let (Some(call_id), Some(tag)) = (response.call_id(), response.from_tag()) {
                self.dialogs.retain(|k, e| {
                    !(k.call_id == call_id
                        && k.local_tag == tag
                        && e.dialog.state == DialogState::Early)
                });
            }
        }
        if method == Method::Invite && (200..300).contains(&status) {
            match self.on_invite_2xx(id, &response, now) {
                Some(Ok(d)) => dialog = Some(d),
                // A retransmitted 2xx, ACKed again: nothing new for the application.
                Some(Err(())) => return,
                None => dialog = None,
            }
        } else if let Some(did) = &dialog
            && let Some(e) = self.dialogs.get_mut(did)
        {
            e.dialog.handle_response(&method, &response);
            if method == Method::Update && (200..300).contains(&status) {
                e.dialog.session_refreshed(now);
            }
            if e.dialog.state == DialogState::Terminated
                && method != Method::Bye
                && (status == 481 || status == 408)
            {
                let did = did.clone();
                self.end_dialog(&did, EndReason::Gone);
            }
        }
        if status >= 200 {
            if let Some(c) = self.clients.get(&id)
                && (method != Method::Invite || !(200..300).contains(&status))
            {
                let _ = c;
                self.clients.remove(&id);
                self.current.remove(&original);
            }
            if method == Method::Bye
                && let Some(did) = &dialog
            {
                let did = did.clone();
                self.end_dialog(&did, EndReason::LocalBye);
            }
        }
        self.events.push_back(UaEvent::Response {
            tx: original,
            method,
            response,
            dialog,
        });
    }

    fn retry_with_auth(&mut self, id: TxId, response: &Response, now: Instant) -> Option<TxId> {
        let client = self.clients.get(&id)?;
        let creds = client.credentials.clone()?;
        let key = format!("{}:{}", creds.username, client.destination);
        let mut req = client.request.clone();
        bump_cseq(&mut req);
        let cnonce = format!("{:016x}", self.endpoint.ids().next_u64());
        let digest = self
            .digest
            .entry(key)
            .or_insert_with(|| DigestClient::new(creds.clone()));
        digest.authorize_request(response, &mut req, &cnonce).ok()?;
        let (dest, tr, dlg, aa, r422, original) = (
            client.destination,
            client.transport,
            client.dialog.clone(),
            client.auth_attempts + 1,
            client.retries_422,
            client.original,
        );
        self.clients.remove(&id);
        self.send_client(
            req,
            dest,
            tr,
            dlg,
            Some(creds),
            Some((original, aa, r422)),
            now,
        )
        .ok()
    }

    /// `Some(Ok(dialog))` for a new 2xx (ACK sent), `Some(Err(()))` for a retransmission (ACK re-sent).
    fn on_invite_2xx(
        &mut self,
        id: TxId,
        response: &Response,
        now: Instant,
    ) -> Option<Result<DialogId, ()>> {
        let client = self.clients.get(&id)?;
        let invite = client.request.clone();
        let (destination, transport) = (client.destination, client.transport);
        let credentials = client.credentials.clone();
        let did = DialogId::for_response(response)?;
        if let Some(e) = self.dialogs.get(&did)
            && e.ack.is_some()
            && e.dialog.invite_out_pending.eq(&false)
            && e.invite.as_ref().and_then(|i| i.cseq().ok()).map(|c| c.seq)
                == invite.cseq().ok().map(|c| c.seq)
        {
            // A retransmitted 2xx: re-send the same ACK.
            self.resend_ack(response);
            return Some(Err(()));
        }
        let contact = self.contact(transport);
        if !self.dialogs.contains_key(&did) {
            let d = Dialog::new_uac(&invite, response, contact).ok()?;
            self.dialogs.insert(
                did.clone(),
                Box::new(DialogEntry {
                    dialog: d,
                    peer: destination,
                    transport,
                    invite: None,
                    ack: None,
                    awaiting_ack: None,
                    bye_sent: false,
                    credentials: credentials.clone(),
                }),
            );
        }
        let e = self.dialogs.get_mut(&did)?;
        if e.dialog.state == DialogState::Early {
            // §13.2.2.4: an early dialog confirmed by the 2xx takes the 2xx's route set.
            if let Ok(mut routes) = response.record_route() {
                routes.reverse();
                e.dialog.route_set = routes;
            }
        }
        e.dialog.handle_response(&Method::Invite, response);
        e.dialog.session_refreshed(now);
        if let Some(se) = response.header("Session-Expires").next()
            && let Some((interval, refresher)) = crate::dialog::parse_session_expires(se)
        {
            e.dialog
                .apply_session_expires(interval, refresher.as_deref(), now);
            self.timed_dialogs.insert(did.clone());
        }
        e.invite = Some(invite.clone());
        let ack = e.dialog.ack_for_2xx(&invite);
        let (dest, tr) = Self::route(e);
        if let Ok(bytes) = self.endpoint.send_ack(ack, dest, tr)
            && let Some(e) = self.dialogs.get_mut(&did)
        {
            e.ack = Some((bytes, dest, tr));
        }
        Some(Ok(did))
    }

    fn retry_glare(&mut self, now: Instant) {
        let (due, later): (Vec<GlareRetry>, Vec<GlareRetry>) =
            std::mem::take(&mut self.glare_retries)
                .into_iter()
                .partition(|g| g.at <= now);
        self.glare_retries = later;
        for mut g in due {
            let Some(e) = self.dialogs.get_mut(&g.dialog) else {
                continue;
            };
            if e.dialog.invite_out_pending || e.dialog.invite_in_pending {
                // Still busy with the peer's INVITE: look again shortly.
                g.at = now + Duration::from_millis(200);
                self.glare_retries.push(g);
                continue;
            }
            e.dialog.invite_out_pending = true;
            e.dialog.local_cseq = e.dialog.local_cseq.wrapping_add(1);
            g.request
                .set_header("CSeq", format!("{} INVITE", e.dialog.local_cseq));
            e.invite = Some(g.request.clone());
            let (dest, tr) = Self::route(e);
            let _ = self.send_client(
                g.request,
                dest,
                tr,
                Some(g.dialog),
                g.credentials,
                Some((g.original, 0, g.retries)),
                now,
            );
        }
    }

    /// UAC early dialog from a 1xx with a To tag (§12.1.2); one per forked branch.
    fn early_uac_dialog(&mut self, id: TxId, response: &Response) -> Option<DialogId> {
        let did = DialogId::for_response(response)?;
        if !self.dialogs.contains_key(&did) {
            let client = self.clients.get(&id)?;
            let (peer, transport) = (client.destination, client.transport);
            let credentials = client.credentials.clone();
            let d = Dialog::new_uac(&client.request, response, self.contact(transport)).ok()?;
            self.dialogs.insert(
                did.clone(),
                Box::new(DialogEntry {
                    dialog: d,
                    peer,
                    transport,
                    invite: None,
                    ack: None,
                    awaiting_ack: None,
                    bye_sent: false,
                    credentials,
                }),
            );
        } else if let Some(e) = self.dialogs.get_mut(&did)
            && let Ok(Some(c)) = response.contact()
        {
            e.dialog.remote_target = c.uri;
        }
        Some(did)
    }

    fn drop_early_dialog(&mut self, si: &ServerInvite) {
        if si.dialog.is_some() {
            return; // a re-INVITE: the dialog outlives a failed one
        }
        if let (Some(call_id), Some(remote_tag)) = (si.request.call_id(), si.request.from_tag()) {
            let id = DialogId {
                call_id: call_id.to_owned(),
                local_tag: si.to_tag.clone(),
                remote_tag,
            };
            if self
                .dialogs
                .get(&id)
                .is_some_and(|e| e.dialog.state == DialogState::Early)
            {
                self.dialogs.remove(&id);
                self.timed_dialogs.remove(&id);
            }
        }
    }

    fn end_dialog(&mut self, did: &DialogId, reason: EndReason) {
        self.timed_dialogs.remove(did);
        if let Some(e) = self.dialogs.remove(did) {
            if let Some(tx) = e.awaiting_ack {
                self.ack_wait.remove(&tx);
            }
            self.events.push_back(UaEvent::DialogTerminated {
                dialog: did.clone(),
                reason,
            });
        }
    }
}

/// A re-INVITE that got 491, waiting for its retry time (§14.1).
#[derive(Debug)]
struct GlareRetry {
    at: Instant,
    dialog: DialogId,
    request: Request,
    original: TxId,
    credentials: Option<Credentials>,
    retries: u8,
}

/// Parameters of [`Ua::invite`].
#[derive(Debug, Clone)]
pub struct InviteParams {
    /// Request-URI.
    pub target: Uri,
    /// To (default: the target).
    pub to: Option<NameAddr>,
    /// From (our identity); the tag is added.
    pub from: NameAddr,
    /// Where to send it.
    pub destination: SocketAddr,
    /// Over what.
    pub transport: TransportKind,
    /// `(content-type, body)`, normally the SDP offer.
    pub body: Option<(String, Bytes)>,
    /// Credentials for 401/407.
    pub credentials: Option<Credentials>,
    /// Ask for a session timer (RFC 4028) with this interval, us refreshing.
    pub session_expires: Option<Duration>,
    /// Extra header fields.
    pub extra_headers: Vec<(String, String)>,
}

/// RFC 3261 §12.1.1: a UAS copies every `Record-Route` value of an INVITE into the responses that
/// establish the dialog (101–199 with a To tag, 2xx), verbatim — URIs, URI and header parameters,
/// known or not — and in order, each header line as received. The caller's ACK and later requests
/// follow that route set, so a record-routing proxy (Kamailio, Twilio's edge) stays on the path.
///
/// A re-INVITE's 18x/2xx get them too: RR in a target refresh changes neither side's route set
/// (§12.2), so the copy is harmless there, and a proxy that record-routes in-dialog requests sees
/// its entries come back as it would for the initial INVITE. 100 Trying is hop-by-hop and has no
/// To tag: nothing is copied; nor to error responses, which establish nothing.
fn copy_record_route(request: &Request, response: &mut Response) {
    if request.method == Method::Invite
        && (101..300).contains(&response.status)
        && response.to_tag().is_some()
    {
        response.headers.copy_from(&request.headers, "Record-Route");
    }
}

fn bump_cseq(req: &mut Request) {
    if let Ok(c) = req.cseq() {
        req.set_header("CSeq", format!("{} {}", c.seq.wrapping_add(1), c.method));
    }
}

fn param(name: &str, value: &str) -> crate::message::Param {
    crate::message::Param {
        name: name.into(),
        value: Some(value.into()),
    }
}
