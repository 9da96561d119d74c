//! The SIP stack task shared by every call: the transports, one [`Ua`] and the sans-IO
//! [`Legs`], driven by [`UaRunner`], and the channels that connect them to calls and to the
//! service. No SIP decision is made here: offer/answer, in-dialog requests, transfer and error
//! mapping are [`Legs`]'s; this task only routes.
//!
//! - [`SipStack::outbound`] registers an outbound leg; its events arrive on
//!   [`OutboundLeg::events`] and the call's [`SipAction`]s go back through its [`SipLink`].
//! - Inbound INVITEs that [`Legs`] takes arrive as [`IncomingLeg`]; the service answers the offer
//!   with [`SipStack::answer_offer`] and then accepts ([`SipAction::Accept`]) or rejects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};
use trunkline_sip::sdp::MediaParams;
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind};
use trunkline_sip::transport::{TransportConfig, TransportError, Transports, UaRunner, Wake};
use trunkline_sip::ua::{Ua, UaConfig};

use crate::core::{NegotiatedMedia, SipAction, SipEvent};
use crate::legs::{IncomingCall, LegEvent, LegId, Legs, LegsConfig, Refuse};

/// The stack's configuration.
#[derive(Debug, Clone)]
pub struct SipStackConfig {
    /// Sockets.
    pub transports: TransportConfig,
    /// UA behaviour.
    pub ua: UaConfig,
    /// Legs: the trunk, the inbound source filter.
    pub legs: LegsConfig,
    /// Seed for tags, branches and Call-IDs.
    pub seed: u64,
}

/// An inbound call that [`Legs`] took, for the service.
#[derive(Debug)]
pub struct IncomingLeg {
    /// Who, from where.
    pub call: IncomingCall,
    /// SIP outcomes for this leg.
    pub events: mpsc::UnboundedReceiver<Box<SipEvent>>,
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
    pub events: mpsc::UnboundedReceiver<Box<SipEvent>>,
    /// Commands.
    pub link: SipLink,
}

/// Counters of the stack (copied from [`Legs`] after every step).
#[derive(Debug, Default)]
pub struct SipStackStats {
    /// INVITEs refused because of their source.
    pub inbound_refused_source: AtomicU64,
    /// INVITEs offered to the service.
    pub inbound_offered: AtomicU64,
    /// Outbound INVITEs sent.
    pub outbound_invites: AtomicU64,
    /// Outbound INVITEs sent to a next trunk address after the previous failed (RFC 3263).
    pub failovers: AtomicU64,
    /// Inbound INVITEs answered 401 (digest challenge).
    pub inbound_auth_challenges: AtomicU64,
    /// Inbound INVITEs answered 403 (wrong digest credentials).
    pub inbound_auth_failures: AtomicU64,
    /// Legs the stack still tracks (calls not yet fully torn down on the wire).
    pub active_legs: AtomicU64,
    /// Outbound calls re-offered with plain RTP after a 488 to SRTP (`allowed`).
    pub srtp_plain_retries: AtomicU64,
    /// Inbound offers refused 488 by the media encryption policy.
    pub srtp_policy_refusals: AtomicU64,
}

#[derive(Debug)]
enum Command {
    Outbound {
        leg: LegId,
        to: String,
        targets: Vec<SocketAddr>,
        media: Box<MediaParams>,
        events: mpsc::UnboundedSender<Box<SipEvent>>,
    },
    Answer {
        leg: LegId,
        media: Box<MediaParams>,
        reply: oneshot::Sender<Result<NegotiatedMedia, Refuse>>,
    },
    Action {
        leg: LegId,
        action: SipAction,
    },
    Available(bool),
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
    ) -> Result<(SipStack, mpsc::UnboundedReceiver<IncomingLeg>), TransportError> {
        let (transports, rx) = Transports::bind(cfg.transports.clone()).await?;
        let mut ua = Ua::new(cfg.ua, IdGen::new(Box::new(SplitMix64::new(cfg.seed))));
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
            runner: UaRunner::new(ua, transports, rx),
            legs: Legs::new(cfg.legs),
            cmd_rx,
            cmd_tx: tx.clone(),
            incoming: in_tx,
            routes: HashMap::new(),
            stats: stats.clone(),
        };
        tokio::spawn(task.run());
        Ok((
            SipStack {
                tx,
                next_leg: Arc::new(AtomicU64::new(1)),
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

    /// Whether out-of-dialog OPTIONS are answered 200 (`true`) or 503 (draining, at capacity):
    /// see [`trunkline_sip::ua::Ua::set_available`].
    pub fn set_available(&self, available: bool) {
        let _ = self.tx.send(Command::Available(available));
    }

    /// Register an outbound leg to `to` (E.164) offering `media`; the INVITE goes to
    /// `destination` (the resolved termination host or the outbound proxy).
    pub fn outbound(&self, to: &str, destination: SocketAddr, media: MediaParams) -> OutboundLeg {
        self.outbound_targets(to, vec![destination], media)
    }

    /// Register an outbound leg like [`SipStack::outbound`] with the trunk's addresses in the
    /// order to try them (RFC 3263; failover: [`Legs::outbound_targets`]).
    pub fn outbound_targets(
        &self,
        to: &str,
        targets: Vec<SocketAddr>,
        media: MediaParams,
    ) -> OutboundLeg {
        let leg = self.next_leg.fetch_add(1, Ordering::Relaxed);
        let (etx, events) = mpsc::unbounded_channel();
        let _ = self.tx.send(Command::Outbound {
            leg,
            to: to.to_owned(),
            targets,
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

    /// Answer inbound `leg`'s offer with `media` (see [`Legs::answer_offer`]): what was agreed,
    /// or the status to reject the INVITE with (503 if the stack is gone).
    pub async fn answer_offer(
        &self,
        leg: LegId,
        media: MediaParams,
    ) -> Result<NegotiatedMedia, Refuse> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Answer {
            leg,
            media: Box::new(media),
            reply,
        };
        if self.tx.send(cmd).is_err() {
            return Err(Refuse(503));
        }
        rx.await.unwrap_or(Err(Refuse(503)))
    }
}

/// What woke the task besides the UA.
enum Input {
    Command(Option<Command>),
    LegsTimer,
}

struct StackTask {
    runner: UaRunner,
    legs: Legs,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedSender<IncomingLeg>,
    /// Where each leg's events go.
    routes: HashMap<LegId, mpsc::UnboundedSender<Box<SipEvent>>>,
    stats: Arc<SipStackStats>,
}

impl StackTask {
    async fn run(mut self) {
        loop {
            let deadline = self.legs.poll_timeout();
            let cmd_rx = &mut self.cmd_rx;
            let other = async {
                tokio::select! {
                    c = cmd_rx.recv() => Input::Command(c),
                    () = sleep_until(deadline) => Input::LegsTimer,
                }
            };
            let wake = self.runner.next_event_or(other).await;
            let now = self.runner.now();
            match wake {
                Wake::Event(ev) => self.legs.handle_ua_event(self.runner.ua(), ev, now),
                Wake::Other(Input::Command(Some(cmd))) => self.on_command(cmd, now),
                Wake::Other(Input::LegsTimer) => self.legs.handle_timeout(self.runner.ua(), now),
                Wake::Other(Input::Command(None)) | Wake::Closed => break,
            }
            self.route();
        }
        info!("sip stack stopped");
    }

    fn on_command(&mut self, cmd: Command, now: std::time::Instant) {
        match cmd {
            Command::Outbound {
                leg,
                to,
                targets,
                media,
                events,
            } => {
                self.routes.insert(leg, events);
                self.legs.outbound_targets(leg, &to, targets, *media);
            }
            Command::Answer { leg, media, reply } => {
                let _ = reply.send(self.legs.answer_offer(leg, *media));
            }
            Command::Action { leg, action } => {
                debug!(leg, ?action, "sip action");
                self.legs.handle_action(self.runner.ua(), leg, action, now);
            }
            Command::Available(available) => {
                info!(
                    available,
                    "SIP OPTIONS answer: {}",
                    if available { 200 } else { 503 }
                );
                self.runner.ua().set_available(available);
            }
        }
    }

    /// Hand what [`Legs`] reported to the calls and the service.
    fn route(&mut self) {
        while let Some((leg, ev)) = self.legs.poll_event() {
            match ev {
                LegEvent::Incoming(call) => {
                    let (etx, events) = mpsc::unbounded_channel();
                    self.routes.insert(leg, etx);
                    let inc = IncomingLeg {
                        call: *call,
                        events,
                        link: SipLink {
                            leg,
                            tx: self.cmd_tx.clone(),
                        },
                    };
                    if self.incoming.send(inc).is_err() {
                        let now = self.runner.now();
                        let reject = SipAction::Reject { status: 503 };
                        self.legs.handle_action(self.runner.ua(), leg, reject, now);
                    }
                }
                LegEvent::Call(ev) => {
                    let delivered = self
                        .routes
                        .get(&leg)
                        .is_some_and(|r| r.send(Box::new(ev)).is_ok());
                    if !delivered {
                        // The call is gone: nothing will act on this leg any more.
                        self.routes.remove(&leg);
                        self.legs.forget(leg);
                    }
                }
                LegEvent::Closed => {
                    self.routes.remove(&leg);
                }
            }
        }
        let s = self.legs.stats();
        self.stats
            .inbound_refused_source
            .store(s.inbound_refused_source, Ordering::Relaxed);
        self.stats
            .inbound_offered
            .store(s.inbound_offered, Ordering::Relaxed);
        self.stats
            .outbound_invites
            .store(s.outbound_invites, Ordering::Relaxed);
        self.stats.failovers.store(s.failovers, Ordering::Relaxed);
        self.stats
            .inbound_auth_challenges
            .store(s.inbound_auth_challenges, Ordering::Relaxed);
        self.stats
            .inbound_auth_failures
            .store(s.inbound_auth_failures, Ordering::Relaxed);
        self.stats
            .active_legs
            .store(self.legs.len() as u64, Ordering::Relaxed);
        self.stats
            .srtp_plain_retries
            .store(s.srtp_plain_retries, Ordering::Relaxed);
        self.stats
            .srtp_policy_refusals
            .store(s.srtp_policy_refusals, Ordering::Relaxed);
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
