//! SIP transactions (RFC 3261 §17), sans-IO, with the RFC 6026 "Accepted" states.
//!
//! - [`fsm`]: the four state machines — INVITE client (§17.1.1: Timers A, B, D, M; ACK for non-2xx
//!   built inside the transaction, §17.1.1.3), non-INVITE client (§17.1.2: E, F, K; E capped at T2),
//!   INVITE server (§17.2.1: 100 Trying after 200 ms, G, H, I, L), non-INVITE server (§17.2.2: J).
//! - [`timer`]: the timer table and [`TimerConfig`] (T1/T2/T4).
//!
//! Nothing here reads the clock or touches a socket: every input carries `now`, and outputs are drained
//! with `poll_*`.

pub mod fsm;
pub mod timer;

pub use timer::{Timer, TimerConfig, TimerTable};

/// The transport a message travels over (RFC 3261 §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// UDP: unreliable, retransmissions by the transaction layer.
    Udp,
    /// TCP: reliable, stream-framed by Content-Length.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl TransportKind {
    /// Reliable transports need no retransmissions (§17.1.1.2, §17.1.2.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, TransportKind::Udp)
    }

    /// The Via transport token (`UDP`, `TCP`, `TLS`).
    pub fn via_token(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }
}

pub mod ids;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::{HostPort, Message, Method, Request, Response, Via};
use fsm::{Action, ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, State};
pub use ids::{IdGen, RandomSource, SplitMix64};

/// Handle of one transaction inside an [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

/// Bytes to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Transport to use.
    pub transport: TransportKind,
    /// Where to send (for TCP/TLS: the connection to that address, opened if needed).
    pub destination: SocketAddr,
    /// The serialized message.
    pub payload: Bytes,
}

/// What the transaction layer tells the TU.
#[derive(Debug, Clone)]
pub enum TxEvent {
    /// A new request created server transaction `id` (never an ACK, never a retransmission).
    Request {
        /// The server transaction; answer with [`Endpoint::respond`].
        id: TxId,
        /// The request, with `received`/`rport` filled in its top Via (RFC 3581 §4).
        request: Request,
        /// Where it came from.
        source: SocketAddr,
        /// Over what.
        transport: TransportKind,
    },
    /// An ACK that belongs to no INVITE server transaction in "Completed": the ACK for a 2xx
    /// (§13.3.1.4, §17.1.1.3); it also stops the 2xx retransmissions.
    Ack {
        /// The ACK.
        request: Request,
        /// Where it came from.
        source: SocketAddr,
        /// Over what.
        transport: TransportKind,
    },
    /// A response for client transaction `id` (provisional, final, or a retransmitted 2xx).
    Response {
        /// The client transaction.
        id: TxId,
        /// The response.
        response: Response,
    },
    /// A 2xx to an INVITE that matches no transaction (retransmission after Timer M, or a fork):
    /// the dialog layer re-sends its ACK.
    Stray2xx {
        /// The response.
        response: Response,
        /// Where it came from.
        source: SocketAddr,
    },
    /// Transaction `id` timed out (Timer B or F for clients; Timer H for INVITE servers).
    Timeout {
        /// The transaction.
        id: TxId,
    },
    /// The INVITE of server transaction `id` was CANCELled: 200 went to the CANCEL and 487 to the
    /// INVITE already (§9.2).
    Cancelled {
        /// The INVITE server transaction.
        id: TxId,
    },
    /// No ACK arrived for the 2xx sent on server transaction `id` within 64·T1: the UAS should end
    /// the session with BYE (§13.3.1.4).
    AckTimeout {
        /// The INVITE server transaction.
        id: TxId,
    },
    /// Transaction `id` is over and forgotten (after Timer D, I, J, K, L, M, or a timeout): the TU
    /// can drop what it keeps about it.
    Terminated {
        /// The transaction.
        id: TxId,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The transaction does not exist (terminated or never created).
    #[error("no such transaction")]
    NoTransaction,
    /// The transaction's state does not allow this (a second final response, CANCEL after final…).
    #[error("not allowed in the transaction's current state")]
    WrongState,
    /// ACKs are sent with [`Endpoint::send_ack`], not as a client transaction.
    #[error("ACK is not sent through a client transaction")]
    AckNotAllowed,
    /// The request lacks a header the layer needs (CSeq, Via).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No sent-by address is configured for the transport.
    #[error("no local address configured for {0:?}")]
    NoLocalAddress(TransportKind),
}

/// Counters of what the layer did with messages it did not pass up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Requests retransmitted by client transactions (Timers A, E).
    pub request_retransmissions: u64,
    /// Responses retransmitted (Timer G, INVITE/non-INVITE retransmissions answered, 2xx resends).
    pub response_retransmissions: u64,
    /// Retransmitted requests absorbed by server transactions.
    pub absorbed_requests: u64,
    /// Retransmitted responses absorbed by client transactions.
    pub absorbed_responses: u64,
    /// Responses that matched no transaction (and were not a 2xx to an INVITE).
    pub stray_responses: u64,
    /// Messages dropped because a header the layer needs (Via, CSeq) was unusable.
    pub dropped_malformed: u64,
    /// Responses whose top Via `sent-by` is not ours (§18.1.2), dropped.
    pub foreign_via: u64,
    /// Transactions that timed out.
    pub timeouts: u64,
    /// CANCELs that matched no INVITE (answered 481).
    pub unmatched_cancels: u64,
    /// 2xx responses never ACKed within 64·T1.
    pub ack_timeouts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: String,
    sent_by: String,
    method: Method,
}

/// `(Call-ID, From tag, CSeq number, method)`: used for merged-request detection (§8.2.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MergeKey {
    call_id: String,
    from_tag: String,
    cseq: u32,
    method: Method,
}

#[derive(Debug)]
enum ClientFsm {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

#[derive(Debug)]
struct ClientTx {
    key: ClientKey,
    fsm: ClientFsm,
    /// Dropped once a final response arrived (only the ACK and a CANCEL need it before).
    request: Option<Request>,
    destination: SocketAddr,
    transport: TransportKind,
    /// INVITE only: the TU asked to CANCEL before any provisional response (§9.1).
    cancel_pending: bool,
    cancel_sent: bool,
}

#[derive(Debug)]
enum ServerFsm {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

#[derive(Debug)]
struct ServerTx {
    key: ServerKey,
    merge: Option<MergeKey>,
    fsm: ServerFsm,
    /// Dropped once the final response is sent (only 100 Trying and 487 need it before).
    request: Option<Request>,
    destination: SocketAddr,
    transport: TransportKind,
    /// The To tag used in responses so far (so 487 and the CANCEL's 200 agree, §9.2).
    to_tag: Option<String>,
}

/// Boxed: the table of transactions keeps up to twice as many slots as entries, and a slot
/// holds the largest variant (a request and its state, ~1 KB), so most of that would be slack.
#[derive(Debug)]
enum Tx {
    Client(Box<ClientTx>),
    Server(Box<ServerTx>),
}

impl Tx {
    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Tx::Client(c) => match &c.fsm {
                ClientFsm::Invite(f) => f.next_deadline(),
                ClientFsm::NonInvite(f) => f.next_deadline(),
            },
            Tx::Server(s) => match &s.fsm {
                ServerFsm::Invite(f) => f.next_deadline(),
                ServerFsm::NonInvite(f) => f.next_deadline(),
            },
        }
    }
}

/// UA-core retransmission of a 2xx to an INVITE until its ACK arrives (§13.3.1.4).
#[derive(Debug)]
struct Pending2xx {
    payload: Bytes,
    destination: SocketAddr,
    transport: TransportKind,
    interval: Duration,
    next: Option<Instant>,
    give_up: Instant,
    key: (String, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    Tx(TxId),
    Ack(TxId),
}

/// The transaction layer: owns every client and server transaction, matches messages to them
/// (§17.1.3, §17.2.3), and retransmits 2xx responses until ACKed (§13.3.1.4).
///
/// After every `handle_*` or command, drain [`Endpoint::poll_transmit`] and [`Endpoint::poll_event`],
/// then sleep until [`Endpoint::poll_timeout`] and call [`Endpoint::handle_timeout`].
#[derive(Debug)]
pub struct Endpoint {
    config: TimerConfig,
    ids: IdGen,
    sent_by: HashMap<TransportKind, HostPort>,
    next_id: u64,
    txs: HashMap<TxId, Tx>,
    scheduled: HashMap<Slot, Instant>,
    client_keys: HashMap<ClientKey, TxId>,
    server_keys: HashMap<ServerKey, TxId>,
    merge_keys: HashMap<MergeKey, (TxId, String)>,
    pending_2xx: HashMap<TxId, Pending2xx>,
    pending_2xx_keys: HashMap<(String, u32), TxId>,
    heap: BinaryHeap<Reverse<(Instant, Slot)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    actions: Vec<Action>,
    stats: TxStats,
}

fn method_key(method: &Method) -> Method {
    if *method == Method::Ack {
        Method::Invite
    } else {
        method.clone()
    }
}

/// Where a response to a request that arrived from `source` goes (RFC 3261 §18.2.2, RFC 3581 §4):
/// reliable transports answer on the connection (the source address); UDP answers the source address
/// when `rport` was requested, else the source IP at the Via sent-by port (5060 by default).
pub fn response_destination(via: &Via, source: SocketAddr, transport: TransportKind) -> SocketAddr {
    if transport.is_reliable() || via.rport().is_some() {
        source
    } else {
        SocketAddr::new(source.ip(), via.sent_by.port.unwrap_or(5060))
    }
}

impl Endpoint {
    /// A layer with the given timers and identifier source. Configure sent-by addresses with
    /// [`Endpoint::set_sent_by`] before sending requests.
    pub fn new(config: TimerConfig, ids: IdGen) -> Self {
        Self {
            config,
            ids,
            sent_by: HashMap::new(),
            next_id: 1,
            txs: HashMap::new(),
            scheduled: HashMap::new(),
            client_keys: HashMap::new(),
            server_keys: HashMap::new(),
            merge_keys: HashMap::new(),
            pending_2xx: HashMap::new(),
            pending_2xx_keys: HashMap::new(),
            heap: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            actions: Vec::new(),
            stats: TxStats::default(),
        }
    }

    // ---- getters ------------------------------------------------------------------------------

    /// The timer configuration.
    pub fn timer_config(&self) -> TimerConfig {
        self.config
    }

    /// Counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Number of live transactions (client + server).
    pub fn transaction_count(&self) -> usize {
        self.txs.len()
    }

    /// The address written in our Via `sent-by` (and usable in Contact) for `transport`.
    pub fn sent_by(&self, transport: TransportKind) -> Option<&HostPort> {
        self.sent_by.get(&transport)
    }

    /// Identifier generator (tags, Call-IDs) shared with the layers above.
    pub fn ids(&mut self) -> &mut IdGen {
        &mut self.ids
    }

    /// The request that created transaction `id`.
    pub fn request(&self, id: TxId) -> Option<&Request> {
        match self.txs.get(&id)? {
            Tx::Client(c) => c.request.as_ref(),
            Tx::Server(s) => s.request.as_ref(),
        }
    }

    /// State of transaction `id`.
    pub fn state(&self, id: TxId) -> Option<State> {
        Some(match self.txs.get(&id)? {
            Tx::Client(c) => match &c.fsm {
                ClientFsm::Invite(f) => f.state(),
                ClientFsm::NonInvite(f) => f.state(),
            },
            Tx::Server(s) => match &s.fsm {
                ServerFsm::Invite(f) => f.state(),
                ServerFsm::NonInvite(f) => f.state(),
            },
        })
    }

    /// `true` if `request` (without To tag) has the Call-ID, From tag and CSeq of a live server
    /// transaction but a different branch: a merged request to answer 482 (§8.2.2.2).
    pub fn is_merged(&self, request: &Request) -> bool {
        if request.to_tag().is_some()
            || request.method == Method::Ack
            || request.method == Method::Cancel
        {
            return false;
        }
        let Some(key) = merge_key(request) else {
            return false;
        };
        let branch = request
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned));
        match self.merge_keys.get(&key) {
            Some((_, b)) => Some(b.as_str()) != branch.as_deref(),
            None => false,
        }
    }

    // ---- commands -----------------------------------------------------------------------------

    /// Sets the `sent-by` written in our Via for `transport` (the public address behind NAT).
    pub fn set_sent_by(&mut self, transport: TransportKind, sent_by: HostPort) {
        self.sent_by.insert(transport, sent_by);
    }

    fn our_via(&mut self, transport: TransportKind, branch: &str) -> Result<Via, TxError> {
        let sent_by = self
            .sent_by
            .get(&transport)
            .cloned()
            .ok_or(TxError::NoLocalAddress(transport))?;
        Ok(Via::new(transport.via_token(), sent_by, branch).with_rport())
    }

    fn alloc_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Starts a client transaction for `request` (any method but ACK): a top Via with a new
    /// branch and `rport` is added, the request is sent at once and retransmitted as needed.
    pub fn send_request(
        &mut self,
        mut request: Request,
        destination: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) -> Result<TxId, TxError> {
        if request.method == Method::Ack {
            return Err(TxError::AckNotAllowed);
        }
        request
            .cseq()
            .map_err(|e| TxError::Malformed(e.to_string()))?;
        let branch = self.ids.branch();
        let via = self.our_via(transport, &branch)?;
        request.headers.push_front("Via", via.to_string());
        if request.header("Max-Forwards").next().is_none() {
            request.push_header("Max-Forwards", "70");
        }
        Ok(self.start_client(request, branch, destination, transport, now))
    }

    fn start_client(
        &mut self,
        request: Request,
        branch: String,
        destination: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) -> TxId {
        let id = self.alloc_id();
        let bytes = request.to_bytes();
        let reliable = transport.is_reliable();
        let mut out = std::mem::take(&mut self.actions);
        let fsm = if request.method == Method::Invite {
            ClientFsm::Invite(ClientInvite::start(
                bytes,
                reliable,
                self.config,
                now,
                &mut out,
            ))
        } else {
            ClientFsm::NonInvite(ClientNonInvite::start(
                bytes,
                reliable,
                self.config,
                now,
                &mut out,
            ))
        };
        let key = ClientKey {
            branch,
            method: request.method.clone(),
        };
        self.client_keys.insert(key.clone(), id);
        let tx = ClientTx {
            key,
            fsm,
            request: Some(request),
            destination,
            transport,
            cancel_pending: false,
            cancel_sent: false,
        };
        self.txs.insert(id, Tx::Client(Box::new(tx)));
        self.apply(id, &mut out, None);
        self.actions = out;
        id
    }

    /// Drops client transaction `id` without a final response: no more retransmissions, no
    /// timeout; a late response to its branch is a stray. For RFC 3263 §4.3 failover before any
    /// provisional response (there is nothing to CANCEL yet).
    pub fn abandon(&mut self, id: TxId) {
        if matches!(self.txs.get(&id), Some(Tx::Client(_))) {
            self.remove(id);
        }
    }

    /// The transport could not send to `destination` (connection refused, unreachable): every
    /// client transaction to it that has no response yet fails at once, as a timeout
    /// (RFC 3261 §17.1.1.2 / §17.1.2.2, §8.1.3.1). Returns how many failed.
    pub fn transport_error(&mut self, destination: SocketAddr, transport: TransportKind) -> usize {
        let failed: Vec<TxId> = self
            .txs
            .iter()
            .filter_map(|(id, t)| match t {
                Tx::Client(c)
                    if c.destination == destination
                        && c.transport == transport
                        && matches!(
                            match &c.fsm {
                                ClientFsm::Invite(f) => f.state(),
                                ClientFsm::NonInvite(f) => f.state(),
                            },
                            State::Calling | State::Trying
                        ) =>
                {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for id in &failed {
            self.events.push_back(TxEvent::Timeout { id: *id });
            self.remove(*id);
        }
        failed.len()
    }

    /// CANCELs the INVITE of client transaction `invite` (§9.1). Before any provisional response
    /// the CANCEL is held back and sent when one arrives; returns `Ok(None)` in that case.
    pub fn send_cancel(&mut self, invite: TxId, now: Instant) -> Result<Option<TxId>, TxError> {
        let Some(Tx::Client(c)) = self.txs.get_mut(&invite) else {
            return Err(TxError::NoTransaction);
        };
        let ClientFsm::Invite(f) = &c.fsm else {
            return Err(TxError::WrongState);
        };
        if c.cancel_sent {
            return Err(TxError::WrongState);
        }
        match f.state() {
            State::Calling => {
                c.cancel_pending = true;
                Ok(None)
            }
            State::Proceeding => self.cancel_now(invite, now).map(Some),
            _ => Err(TxError::WrongState),
        }
    }

    fn cancel_now(&mut self, invite: TxId, now: Instant) -> Result<TxId, TxError> {
        let Some(Tx::Client(c)) = self.txs.get_mut(&invite) else {
            return Err(TxError::NoTransaction);
        };
        c.cancel_pending = false;
        c.cancel_sent = true;
        let cancel = Request::cancel_for(c.request.as_ref().ok_or(TxError::WrongState)?)
            .map_err(|e| TxError::Malformed(e.to_string()))?;
        let (branch, destination, transport) = (c.key.branch.clone(), c.destination, c.transport);
        Ok(self.start_client(cancel, branch, destination, transport, now))
    }

    /// Sends an ACK for a 2xx (built by the dialog, §13.2.2.4) outside any transaction, with a new
    /// branch. Returns the bytes so the dialog can re-send them when the 2xx is retransmitted.
    pub fn send_ack(
        &mut self,
        mut ack: Request,
        destination: SocketAddr,
        transport: TransportKind,
    ) -> Result<Bytes, TxError> {
        let branch = self.ids.branch();
        let via = self.our_via(transport, &branch)?;
        ack.headers.push_front("Via", via.to_string());
        if ack.header("Max-Forwards").next().is_none() {
            ack.push_header("Max-Forwards", "70");
        }
        let payload = ack.to_bytes();
        self.transmits.push_back(Transmit {
            transport,
            destination,
            payload: payload.clone(),
        });
        Ok(payload)
    }

    /// Queues raw bytes (a cached ACK, a stateless response).
    pub fn send_raw(&mut self, payload: Bytes, destination: SocketAddr, transport: TransportKind) {
        self.transmits.push_back(Transmit {
            transport,
            destination,
            payload,
        });
    }

    /// Sends a response outside any transaction (to a request the layer was never given, e.g.
    /// a 400 for a request that failed validation), to the address RFC 3261 §18.2.2 / RFC 3581 give.
    pub fn respond_stateless(
        &mut self,
        response: &Response,
        source: SocketAddr,
        transport: TransportKind,
    ) {
        let destination = match response.top_via() {
            Ok(via) => response_destination(&via, source, transport),
            Err(_) => source,
        };
        self.transmits.push_back(Transmit {
            transport,
            destination,
            payload: response.to_bytes(),
        });
    }

    /// Sends `response` on server transaction `id`. A 2xx to an INVITE is then retransmitted until
    /// the ACK arrives (§13.3.1.4; UDP only) or [`TxEvent::AckTimeout`] after 64·T1.
    pub fn respond(&mut self, id: TxId, response: Response, now: Instant) -> Result<(), TxError> {
        let Some(Tx::Server(s)) = self.txs.get_mut(&id) else {
            return Err(TxError::NoTransaction);
        };
        if response.status > 100
            && let Some(tag) = response.to_tag()
        {
            s.to_tag = Some(tag);
        }
        let status = response.status;
        let payload = response.to_bytes();
        let mut out = std::mem::take(&mut self.actions);
        let ok = match &mut s.fsm {
            ServerFsm::Invite(f) => f.send_response(status, payload.clone(), now, &mut out),
            ServerFsm::NonInvite(f) => f.send_response(status, payload.clone(), now, &mut out),
        };
        let is_invite_2xx = matches!(s.fsm, ServerFsm::Invite(_)) && (200..300).contains(&status);
        let (destination, transport) = (s.destination, s.transport);
        let ack_key = s.request.as_ref().and_then(|r| {
            r.call_id()
                .map(str::to_owned)
                .zip(r.cseq().ok().map(|c| c.seq))
        });
        self.apply(id, &mut out, None);
        self.actions = out;
        if !ok {
            return Err(TxError::WrongState);
        }
        if is_invite_2xx
            && let Some(key) = ack_key
            && !self.pending_2xx.contains_key(&id)
        {
            let next = (!transport.is_reliable()).then(|| now + self.config.t1);
            let give_up = now + self.config.t1x64();
            self.pending_2xx_keys.insert(key.clone(), id);
            self.pending_2xx.insert(
                id,
                Pending2xx {
                    payload,
                    destination,
                    transport,
                    interval: self.config.t1,
                    next,
                    give_up,
                    key,
                },
            );
            self.schedule(Slot::Ack(id), next.map_or(give_up, |n| n.min(give_up)));
        }
        Ok(())
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// A parsed message arrived from `source` over `transport`.
    pub fn handle_message(
        &mut self,
        message: Message,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        match message {
            Message::Request(r) => self.handle_request(r, source, transport, now),
            Message::Response(r) => self.handle_response(r, source, now),
        }
    }

    fn handle_request(
        &mut self,
        mut request: Request,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        let Ok(mut via) = request.top_via() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let Ok(cseq) = request.cseq() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        // RFC 3581 §4 / RFC 3261 §18.2.1: note where the request really came from.
        let needs_received = via.rport().is_some() || via.sent_by.ip() != Some(source.ip());
        if needs_received {
            via.set_received(source);
            replace_top_via(&mut request, &via);
        }
        let branch = match via.branch() {
            Some(b) if via.is_rfc3261_branch() => b.to_owned(),
            other => format!(
                "{}|{}|{}|{}",
                other.unwrap_or(""),
                request.call_id().unwrap_or(""),
                cseq.seq,
                request.from_tag().unwrap_or_default()
            ),
        };
        let key = ServerKey {
            branch,
            sent_by: via.sent_by.to_string(),
            method: method_key(&request.method),
        };

        match request.method {
            Method::Ack => self.handle_ack(request, key, source, transport, now),
            Method::Cancel => self.handle_cancel(request, key, source, transport, now),
            _ => {
                if let Some(&id) = self.server_keys.get(&key) {
                    self.stats.absorbed_requests += 1;
                    let mut out = std::mem::take(&mut self.actions);
                    if let Some(Tx::Server(s)) = self.txs.get_mut(&id) {
                        match &mut s.fsm {
                            ServerFsm::Invite(f) => f.handle_request_retransmission(&mut out),
                            ServerFsm::NonInvite(f) => f.handle_request_retransmission(&mut out),
                        }
                    }
                    self.stats.response_retransmissions += out.len() as u64;
                    self.apply(id, &mut out, None);
                    self.actions = out;
                    return;
                }
                let id = self.create_server(request.clone(), key, via, source, transport, now);
                self.events.push_back(TxEvent::Request {
                    id,
                    request,
                    source,
                    transport,
                });
            }
        }
    }

    fn create_server(
        &mut self,
        request: Request,
        key: ServerKey,
        via: Via,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) -> TxId {
        let id = self.alloc_id();
        let reliable = transport.is_reliable();
        let fsm = if request.method == Method::Invite {
            ServerFsm::Invite(ServerInvite::start(reliable, self.config, now))
        } else {
            ServerFsm::NonInvite(ServerNonInvite::start(reliable, self.config))
        };
        let merge = if request.to_tag().is_none() {
            merge_key(&request)
        } else {
            None
        };
        if let Some(m) = &merge {
            // Keep the first transaction's branch: a later one with another branch is merged.
            self.merge_keys
                .entry(m.clone())
                .or_insert_with(|| (id, via.branch().unwrap_or("").to_owned()));
        }
        let destination = response_destination(&via, source, transport);
        self.server_keys.insert(key.clone(), id);
        let to_tag = request.to_tag();
        self.txs.insert(
            id,
            Tx::Server(Box::new(ServerTx {
                key,
                merge,
                fsm,
                request: Some(request),
                destination,
                transport,
                to_tag,
            })),
        );
        self.reschedule(id);
        id
    }

    fn handle_ack(
        &mut self,
        request: Request,
        key: ServerKey,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        if let Some(&id) = self.server_keys.get(&key)
            && let Some(Tx::Server(s)) = self.txs.get_mut(&id)
            && let ServerFsm::Invite(f) = &mut s.fsm
            && matches!(f.state(), State::Completed | State::Confirmed)
        {
            // ACK for our non-2xx final response: absorbed by the transaction (§17.2.1).
            if f.state() == State::Confirmed {
                self.stats.absorbed_requests += 1;
            }
            f.handle_ack(now);
            self.reschedule(id);
            return;
        }
        // ACK for a 2xx: stop retransmitting the 2xx, pass it to the TU.
        if let (Some(call_id), Ok(cseq)) = (request.call_id(), request.cseq())
            && let Some(id) = self
                .pending_2xx_keys
                .remove(&(call_id.to_owned(), cseq.seq))
        {
            self.pending_2xx.remove(&id);
            self.scheduled.remove(&Slot::Ack(id));
        }
        self.events.push_back(TxEvent::Ack {
            request,
            source,
            transport,
        });
    }

    fn handle_cancel(
        &mut self,
        request: Request,
        key: ServerKey,
        source: SocketAddr,
        transport: TransportKind,
        now: Instant,
    ) {
        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmitted CANCEL.
            self.stats.absorbed_requests += 1;
            let mut out = std::mem::take(&mut self.actions);
            if let Some(Tx::Server(s)) = self.txs.get_mut(&id)
                && let ServerFsm::NonInvite(f) = &mut s.fsm
            {
                f.handle_request_retransmission(&mut out);
            }
            self.apply(id, &mut out, None);
            self.actions = out;
            return;
        }
        let invite_key = ServerKey {
            method: Method::Invite,
            ..key.clone()
        };
        let invite_id = self.server_keys.get(&invite_key).copied();
        let Ok(via) = request.top_via() else { return };
        let cancel_id = self.create_server(request.clone(), key, via, source, transport, now);
        let Some(invite_id) = invite_id else {
            self.stats.unmatched_cancels += 1;
            let mut r = Response::for_request(&request, 481);
            let tag = self.ids.tag();
            r.set_to_tag(&tag);
            let _ = self.respond(cancel_id, r, now);
            return;
        };
        // The To tag of the CANCEL's 200 and of the 487 should agree (§9.2).
        let (tag, invite_req, pending) = match self.txs.get_mut(&invite_id) {
            Some(Tx::Server(s)) => {
                let tag = match &s.to_tag {
                    Some(t) => t.clone(),
                    None => {
                        let t = self.ids.tag();
                        s.to_tag = Some(t.clone());
                        t
                    }
                };
                let pending =
                    matches!(&s.fsm, ServerFsm::Invite(f) if f.state() == State::Proceeding);
                (tag, s.request.clone(), pending)
            }
            _ => return,
        };
        let invite_req = match invite_req {
            Some(r) => r,
            None => request.clone(),
        };
        let mut ok = Response::for_request(&request, 200);
        ok.set_to_tag(&tag);
        let _ = self.respond(cancel_id, ok, now);
        if pending {
            let mut terminated = Response::for_request(&invite_req, 487);
            terminated.set_to_tag(&tag);
            let _ = self.respond(invite_id, terminated, now);
            self.events.push_back(TxEvent::Cancelled { id: invite_id });
        }
    }

    fn handle_response(&mut self, response: Response, source: SocketAddr, now: Instant) {
        let (Ok(via), Ok(cseq)) = (response.top_via(), response.cseq()) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let Some(branch) = via.branch() else {
            self.stats.dropped_malformed += 1;
            return;
        };
        // §18.1.2: a response whose top Via is not ours is misrouted. (Ports are compared only
        // when both sides have one; with no sent-by configured nothing can be checked.)
        if !self.sent_by.is_empty()
            && !self.sent_by.values().any(|ours| {
                ours.host == via.sent_by.host
                    && (ours.port.is_none()
                        || via.sent_by.port.is_none()
                        || ours.port == via.sent_by.port)
            })
        {
            self.stats.foreign_via += 1;
            return;
        }
        let key = ClientKey {
            branch: branch.to_owned(),
            method: cseq.method.clone(),
        };
        let Some(&id) = self.client_keys.get(&key) else {
            if cseq.method == Method::Invite && (200..300).contains(&response.status) {
                self.events
                    .push_back(TxEvent::Stray2xx { response, source });
            } else {
                self.stats.stray_responses += 1;
            }
            return;
        };
        let status = response.status;
        let mut out = std::mem::take(&mut self.actions);
        let mut send_cancel = false;
        if let Some(Tx::Client(c)) = self.txs.get_mut(&id) {
            match &mut c.fsm {
                ClientFsm::Invite(f) => {
                    f.handle_response(status, now, &mut out);
                    send_cancel = c.cancel_pending && f.state() == State::Proceeding;
                }
                ClientFsm::NonInvite(f) => f.handle_response(status, now, &mut out),
            }
        }
        if out.is_empty() {
            self.stats.absorbed_responses += 1;
        }
        self.apply(id, &mut out, Some(response));
        self.actions = out;
        if send_cancel {
            let _ = self.cancel_now(id, now);
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.scheduled.get(&slot) != Some(&at) {
                continue; // stale entry
            }
            self.scheduled.remove(&slot);
            match slot {
                Slot::Tx(id) => {
                    let mut out = std::mem::take(&mut self.actions);
                    match self.txs.get_mut(&id) {
                        Some(Tx::Client(c)) => match &mut c.fsm {
                            ClientFsm::Invite(f) => f.handle_timeout(now, &mut out),
                            ClientFsm::NonInvite(f) => f.handle_timeout(now, &mut out),
                        },
                        Some(Tx::Server(s)) => match &mut s.fsm {
                            ServerFsm::Invite(f) => f.handle_timeout(now, &mut out),
                            ServerFsm::NonInvite(f) => f.handle_timeout(now, &mut out),
                        },
                        None => {}
                    }
                    let retransmits = out
                        .iter()
                        .filter(|a| matches!(a, Action::Transmit(_)))
                        .count() as u64;
                    match self.txs.get(&id) {
                        Some(Tx::Client(_)) => self.stats.request_retransmissions += retransmits,
                        _ => self.stats.response_retransmissions += retransmits,
                    }
                    self.apply(id, &mut out, None);
                    self.actions = out;
                }
                Slot::Ack(id) => self.fire_2xx(id, now),
            }
        }
    }

    fn fire_2xx(&mut self, id: TxId, now: Instant) {
        let Some(p) = self.pending_2xx.get_mut(&id) else {
            return;
        };
        if now >= p.give_up {
            let key = p.key.clone();
            self.pending_2xx.remove(&id);
            self.pending_2xx_keys.remove(&key);
            self.stats.ack_timeouts += 1;
            self.events.push_back(TxEvent::AckTimeout { id });
            return;
        }
        if let Some(next) = p.next
            && next <= now
        {
            self.transmits.push_back(Transmit {
                transport: p.transport,
                destination: p.destination,
                payload: p.payload.clone(),
            });
            self.stats.response_retransmissions += 1;
            p.interval = p.interval.saturating_mul(2).min(self.config.t2);
            p.next = Some(now + p.interval);
        }
        let at = p.next.map_or(p.give_up, |n| n.min(p.give_up));
        self.schedule(Slot::Ack(id), at);
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// The next datagram/segment to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next (may be early; never late).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot))) = self.heap.peek().copied() {
            if self.scheduled.get(&slot) == Some(&at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    // ---- internals ----------------------------------------------------------------------------

    fn schedule(&mut self, slot: Slot, at: Instant) {
        if self.scheduled.get(&slot) != Some(&at) {
            self.scheduled.insert(slot, at);
            self.heap.push(Reverse((at, slot)));
        }
    }

    fn reschedule(&mut self, id: TxId) {
        match self.txs.get(&id).and_then(Tx::next_deadline) {
            Some(at) => self.schedule(Slot::Tx(id), at),
            None => {
                self.scheduled.remove(&Slot::Tx(id));
            }
        }
    }

    /// Carries out the actions of transaction `id`'s state machine. `response` is the message that
    /// was just received (for `PassUp` and `BuildAck`).
    fn apply(&mut self, id: TxId, out: &mut Vec<Action>, response: Option<Response>) {
        let mut terminated = false;
        for action in out.drain(..) {
            match action {
                Action::Transmit(payload) => {
                    if let Some((destination, transport)) = self.route_of(id) {
                        self.transmits.push_back(Transmit {
                            transport,
                            destination,
                            payload,
                        });
                    }
                }
                Action::BuildAck => {
                    if let (Some(Tx::Client(c)), Some(resp)) =
                        (self.txs.get_mut(&id), response.as_ref())
                        && let ClientFsm::Invite(f) = &mut c.fsm
                        && let Some(req) = &c.request
                        && let Ok(ack) = Request::ack_for_non2xx(req, resp)
                        && let Action::Transmit(payload) = f.set_ack(ack.to_bytes())
                    {
                        let (destination, transport) = (c.destination, c.transport);
                        self.transmits.push_back(Transmit {
                            transport,
                            destination,
                            payload,
                        });
                    }
                }
                Action::PassUp => {
                    if let Some(resp) = &response {
                        self.events.push_back(TxEvent::Response {
                            id,
                            response: resp.clone(),
                        });
                    }
                }
                Action::SendTrying => {
                    if let Some(Tx::Server(s)) = self.txs.get_mut(&id)
                        && let ServerFsm::Invite(f) = &mut s.fsm
                        && let Some(req) = &s.request
                    {
                        let payload = Response::for_request(req, 100).to_bytes();
                        f.trying_sent(payload.clone());
                        let (destination, transport) = (s.destination, s.transport);
                        self.transmits.push_back(Transmit {
                            transport,
                            destination,
                            payload,
                        });
                    }
                }
                Action::Timeout => {
                    self.stats.timeouts += 1;
                    self.events.push_back(TxEvent::Timeout { id });
                }
                Action::Terminated => terminated = true,
            }
        }
        if terminated {
            self.remove(id);
        } else {
            self.reschedule(id);
            self.shed(id);
        }
    }

    /// After the final response, a transaction keeps only what retransmissions need.
    fn shed(&mut self, id: TxId) {
        match self.txs.get_mut(&id) {
            Some(Tx::Client(c)) => {
                let done = match &c.fsm {
                    ClientFsm::Invite(f) => matches!(f.state(), State::Completed | State::Accepted),
                    ClientFsm::NonInvite(f) => f.state() == State::Completed,
                };
                if done {
                    c.request = None;
                }
            }
            Some(Tx::Server(s)) => {
                let done = match &s.fsm {
                    ServerFsm::Invite(f) => {
                        matches!(
                            f.state(),
                            State::Completed | State::Accepted | State::Confirmed
                        )
                    }
                    ServerFsm::NonInvite(f) => f.state() == State::Completed,
                };
                if done {
                    s.request = None;
                }
            }
            None => {}
        }
    }

    fn route_of(&self, id: TxId) -> Option<(SocketAddr, TransportKind)> {
        match self.txs.get(&id)? {
            Tx::Client(c) => Some((c.destination, c.transport)),
            Tx::Server(s) => Some((s.destination, s.transport)),
        }
    }

    fn remove(&mut self, id: TxId) {
        self.scheduled.remove(&Slot::Tx(id));
        if self.txs.contains_key(&id) {
            self.events.push_back(TxEvent::Terminated { id });
        }
        match self.txs.remove(&id) {
            Some(Tx::Client(c)) => {
                self.client_keys.remove(&c.key);
            }
            Some(Tx::Server(s)) => {
                self.server_keys.remove(&s.key);
                if let Some(m) = s.merge
                    && self.merge_keys.get(&m).is_some_and(|(t, _)| *t == id)
                {
                    self.merge_keys.remove(&m);
                }
            }
            None => {}
        }
    }
}

fn merge_key(request: &Request) -> Option<MergeKey> {
    Some(MergeKey {
        call_id: request.call_id()?.to_owned(),
        from_tag: request.from_tag()?,
        cseq: request.cseq().ok()?.seq,
        method: request.method.clone(),
    })
}

/// Rewrites the first Via value of `request` (which may sit in a comma-separated header line).
fn replace_top_via(request: &mut Request, via: &Via) {
    let values: Vec<String> = request
        .headers
        .list_values("Via")
        .into_iter()
        .map(str::to_owned)
        .collect();
    request.headers.remove("Via");
    for (i, v) in values.iter().enumerate().rev() {
        if i == 0 {
            request.headers.push_front("Via", via.to_string());
        } else {
            request.headers.push_front("Via", v.clone());
        }
    }
}
