//! The gateway service: one SIP stack, the call registry, RTP port allocation, call records and
//! metrics. It implements [`CallService`] for the HTTP API and answers inbound calls.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};
use trunkline_call::agent::{
    AgentConfig, AgentOverride, ConversationConfigOverride, DynamicVariable,
};
use trunkline_call::media::{G711, JitterConfig, MediaConfig, WallClock};
use trunkline_call::record::EndCause;
use trunkline_call::recording::{RecordingFormat, RecordingWriter, SHARED_QUEUE_FRAMES};
use trunkline_call::runtime::send_thread::RtpSendThread;
use trunkline_call::runtime::sip_task::{IncomingLeg, SipLink, SipStack};
use trunkline_call::runtime::{
    CallCommand, CallIo, RecordSink, RecordingSetup, TranscriptSink, run,
};
use trunkline_call::sip::{MediaParams, TransportKind};
use trunkline_call::{Call, CallRecord, SipAction, SipEvent};

use crate::api::{BoxFuture, CallService, ListQuery, OutboundRequest, PlaceError, Placed};
use crate::cluster::{AdmitError, Cluster};
use crate::config::{Config, ConnectAt, Secrets};
use crate::dns::TrunkResolver;
use crate::events::CallEvents;
use crate::metrics::Metrics;
use crate::records::RecordStore;
use crate::setup::Setup;
use crate::webhook::Webhooks;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// SIP sockets could not be bound.
    #[error("sip: {0}")]
    Sip(String),
    /// The records database could not be opened.
    #[error("{0}")]
    Records(#[from] crate::records::RecordsError),
    /// The RTP send thread could not be started.
    #[error("rtp send thread: {0}")]
    SendThread(std::io::Error),
    /// The HTTP listener could not be bound.
    #[error("http: {0}")]
    Http(String),
}

struct Active {
    commands: mpsc::UnboundedSender<Box<CallCommand>>,
}

/// The running gateway.
pub struct Gateway {
    cfg: Config,
    secrets: Secrets,
    setup: Setup,
    sip: SipStack,
    trunk: TrunkResolver,
    active: Mutex<HashMap<String, Active>>,
    records: Mutex<RecordBook>,
    store: RecordStore,
    webhooks: Option<Webhooks>,
    events: Arc<CallEvents>,
    next_port: Mutex<u16>,
    metrics: Arc<Metrics>,
    send_thread: Option<RtpSendThread>,
    /// The writer thread of every call recording (`recording.enabled`).
    recording_writer: Option<RecordingWriter>,
    ready: AtomicBool,
    /// What out-of-dialog OPTIONS last said (200 = true, 503 = false).
    available: AtomicBool,
    cluster: Option<Arc<Cluster>>,
    seq: AtomicU64,
    seed: u64,
    call_ended: Notify,
    /// Woken at every record snapshot (the trigger waiting for its call's ids).
    record_changed: Notify,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("sip", &self.sip.local_addr(TransportKind::Udp))
            .finish_non_exhaustive()
    }
}

/// Records by call sid, in creation order (in memory; persisted by the records store).
#[derive(Debug, Default)]
struct RecordBook {
    order: Vec<String>,
    by_sid: HashMap<String, CallRecord>,
    /// The last finished calls (their database write may still be queued).
    recent: std::collections::VecDeque<CallRecord>,
}

impl RecordBook {
    fn put(&mut self, r: CallRecord) {
        if !self.by_sid.contains_key(&r.call_sid) {
            self.order.push(r.call_sid.clone());
        }
        self.by_sid.insert(r.call_sid.clone(), r);
    }
}

fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Gateway {
    /// Bind SIP, start the stack and the inbound-call handler.
    pub async fn start(cfg: Config, secrets: Secrets) -> Result<Arc<Gateway>, StartError> {
        Self::start_with(cfg, secrets, None).await
    }

    /// [`Gateway::start`] knowing where the HTTP API listens (`http`, the bound address): with
    /// `cluster.enabled` and no `cluster.internal_url`, the other nodes are told this address.
    pub async fn start_with(
        cfg: Config,
        secrets: Secrets,
        http: Option<SocketAddr>,
    ) -> Result<Arc<Gateway>, StartError> {
        cfg.validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let seed = random_seed();
        let setup = Setup::new(&cfg, &secrets, seed).map_err(|e| StartError::Config(e.0))?;
        if cfg.recording.enabled {
            std::fs::create_dir_all(&cfg.recording.dir).map_err(|e| {
                StartError::Config(format!("recording.dir {}: {e}", cfg.recording.dir))
            })?;
        }
        let store = RecordStore::open_as(&cfg.records.database_url, &cfg.records.node_id).await?;
        // Calls this node left open when it last stopped (SIGKILL, crash) are over.
        let interrupted = store.recover_interrupted().await?;
        let webhooks = match &cfg.records.webhook_url {
            Some(url) if !url.is_empty() => Some(
                Webhooks::start(url.clone(), secrets.webhook_secret.clone())
                    .map_err(StartError::Config)?,
            ),
            _ => None,
        };
        let cluster = if cfg.cluster.enabled {
            let url = match cfg.cluster.internal_url.trim() {
                "" => format!("http://{}", http.unwrap_or(cfg.http.listen)),
                u => u.trim_end_matches('/').to_owned(),
            };
            Some(
                Cluster::join(
                    &cfg.records.database_url,
                    &cfg.records.node_id,
                    &url,
                    Duration::from_secs(cfg.cluster.heartbeat_secs),
                    cfg.policy.clone(),
                )
                .await
                .map_err(|e| StartError::Records(e.into()))?,
            )
        } else {
            None
        };
        let (sip, incoming) = SipStack::start(setup.stack.clone())
            .await
            .map_err(|e| StartError::Sip(e.to_string()))?;
        let metrics = Arc::new(Metrics::default());
        if !interrupted.is_empty() {
            warn!(
                calls = interrupted.len(),
                node = %cfg.records.node_id,
                "calls left open by the last run marked failed (gateway_restart)"
            );
        }
        for r in &interrupted {
            metrics.call_ended(&r.direction, r);
            if let Some(hooks) = &webhooks {
                hooks.notify(&r.status, r);
            }
        }
        let send_thread = match setup.send_delay {
            None => None,
            Some(delay) => Some(
                RtpSendThread::start(delay, Some(metrics.pacing().clone()))
                    .map_err(StartError::SendThread)?,
            ),
        };
        let events = Arc::new(CallEvents::new(
            secrets.status_key.as_deref(),
            Duration::from_secs(cfg.http.status_token_ttl_secs),
            Duration::from_secs(cfg.http.status_token_grace_secs),
        ));
        let trunk = TrunkResolver::new(
            &setup.trunk_address,
            setup.stack.legs.trunk.transport,
            &cfg.trunk.dns_servers,
            seed ^ 0x3263,
        )
        .map_err(StartError::Sip)?;
        let recording_writer = if cfg.recording.enabled {
            Some(
                RecordingWriter::start(SHARED_QUEUE_FRAMES, metrics.recording.clone())
                    .map_err(|e| StartError::Config(format!("recording writer: {e}")))?,
            )
        } else {
            None
        };
        let gw = Arc::new(Gateway {
            next_port: Mutex::new(cfg.rtp.port_min & !1),
            events,
            cfg,
            secrets,
            setup,
            sip,
            trunk,
            active: Mutex::new(HashMap::new()),
            records: Mutex::new(RecordBook::default()),
            store,
            webhooks,
            recording_writer,
            metrics,
            send_thread,
            ready: AtomicBool::new(true),
            available: AtomicBool::new(true),
            cluster,
            seq: AtomicU64::new(0),
            seed,
            call_ended: Notify::new(),
            record_changed: Notify::new(),
        });
        // Resolved again for every call (cached for the records' TTL): this only warns early.
        if let Err(e) = gw.trunk.resolve().await {
            warn!(error = %e, "trunk not resolvable yet; outbound calls will retry");
        }
        tokio::spawn(Self::inbound_loop(gw.clone(), incoming));
        if gw.cfg.recording.enabled {
            crate::recordings::spawn_retention(
                gw.cfg.recording.dir.clone().into(),
                gw.cfg.recording.retention_days,
                gw.metrics.recording.clone(),
            );
        }
        info!(
            sip = ?gw.sip.local_addr(TransportKind::Udp),
            "gateway started"
        );
        Ok(gw)
    }

    /// The SIP address of a transport.
    pub fn sip_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.sip.local_addr(kind)
    }

    /// The per-call status hub (the visitor's event stream and its tokens).
    pub fn events(&self) -> &Arc<CallEvents> {
        &self.events
    }

    /// Metrics registry.
    pub fn metrics_registry(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stop taking new calls (and answer SIP OPTIONS 503 from now on).
    pub fn stop_accepting(&self) {
        self.ready.store(false, Ordering::SeqCst);
        self.update_available();
    }

    /// Out-of-dialog OPTIONS say 503 while this node takes no new call (draining, or at its own
    /// `policy.max_concurrent_calls`), 200 otherwise: a dispatcher probing with OPTIONS (Kamailio)
    /// then sends calls elsewhere.
    fn update_available(&self) {
        let available = self.ready.load(Ordering::SeqCst)
            && self.active_calls() < self.cfg.policy.max_concurrent_calls;
        if self.available.swap(available, Ordering::SeqCst) != available {
            self.sip.set_available(available);
        }
    }

    /// Whether SIP OPTIONS are answered 200 (true) or 503.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// The cluster membership (`cluster.enabled`).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Hang up every active call with `cause`.
    pub fn hangup_all(&self, cause: EndCause) {
        if let Ok(active) = self.active.lock() {
            for a in active.values() {
                let _ = a
                    .commands
                    .send(Box::new(CallCommand::Hangup(cause.clone())));
            }
        }
    }

    /// Wait until no call is active or `timeout` passes; true if all ended.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.call_ended.notified();
            if self.active_calls() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active_calls() == 0;
            }
        }
    }

    /// The records of the calls in progress, oldest first. A finished call leaves this list
    /// (its record stays readable with [`Gateway::record`] for a while, and in the store).
    pub fn record_list(&self) -> Vec<CallRecord> {
        self.records
            .lock()
            .map(|b| {
                b.order
                    .iter()
                    .filter_map(|s| b.by_sid.get(s).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A record (also of a finished call).
    pub fn record(&self, sid: &str) -> Option<CallRecord> {
        let book = self.records.lock().ok()?;
        book.by_sid
            .get(sid)
            .or_else(|| book.recent.iter().rev().find(|r| r.call_sid == sid))
            .cloned()
    }

    /// A record kept in memory, with its transcript: a running call's lines so far, a finished
    /// call's from the database (the finished records kept in memory carry none: a long call's
    /// transcript would be held a thousand times over).
    pub async fn record_with_transcript(&self, sid: &str) -> Option<CallRecord> {
        let mut r = self.record(sid)?;
        if !r.is_final() {
            r.transcript = self.store.transcript(sid).await;
            return Some(r);
        }
        self.store.flush().await;
        Some(self.store.get(sid).await.unwrap_or(r))
    }

    /// Wait for a call to end and return its final record (with its transcript).
    pub async fn wait_call(&self, sid: &str, timeout: Duration) -> Option<CallRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.call_ended.notified();
            if self.record(sid).is_some_and(|r| r.is_final())
                && !self.active.lock().is_ok_and(|a| a.contains_key(sid))
            {
                return self.record_with_transcript(sid).await;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.record_with_transcript(sid).await;
            }
        }
    }

    /// The trunk's addresses for one call, in the order to try them (RFC 3263, cached per TTL).
    async fn resolve_trunk(&self) -> Result<Vec<SocketAddr>, String> {
        self.trunk.resolve().await
    }

    fn new_sid(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let a = splitmix(self.seed ^ n);
        let b = splitmix(a ^ 0x5555);
        format!("CA{a:016x}{b:016x}")
    }

    /// Bind an even RTP port and the next one for RTCP in the configured range.
    async fn allocate_rtp(&self) -> Result<(UdpSocket, UdpSocket), String> {
        let (min, max) = (self.cfg.rtp.port_min & !1, self.cfg.rtp.port_max);
        let span = u32::from(max.saturating_sub(min)) / 2;
        for _ in 0..span.min(2000) {
            let port = {
                let Ok(mut next) = self.next_port.lock() else {
                    return Err("port pool poisoned".into());
                };
                let p = *next;
                *next = if p.saturating_add(2) >= max {
                    min
                } else {
                    p + 2
                };
                p
            };
            let ip = self.cfg.rtp.bind_ip;
            let Ok(rtp) = UdpSocket::bind(SocketAddr::new(ip, port)).await else {
                continue;
            };
            let Ok(rtcp) = UdpSocket::bind(SocketAddr::new(ip, port + 1)).await else {
                continue;
            };
            return Ok((rtp, rtcp));
        }
        Err("no free RTP port".into())
    }

    /// The address written in our SDP.
    fn media_ip(&self, toward: SocketAddr) -> IpAddr {
        if let Some(ip) = self.cfg.sip.external_ip {
            return ip;
        }
        if !self.cfg.rtp.bind_ip.is_unspecified() {
            return self.cfg.rtp.bind_ip;
        }
        std::net::UdpSocket::bind(SocketAddr::new(
            if toward.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
            0,
        ))
        .and_then(|s| s.connect(toward).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    fn media_params(&self, ip: IpAddr, port: u16, session_id: u64) -> MediaParams {
        self.setup.media_params(ip, port, session_id)
    }

    #[allow(clippy::disallowed_methods)]
    fn media_template(&self, sid: &str) -> MediaConfig {
        let ssrc = splitmix(self.seed ^ fxhash(sid)) as u32;
        let wallclock = WallClock {
            instant: Instant::now(),
            system: SystemTime::now(),
        };
        let mut m = MediaConfig::new(G711::Ulaw, ssrc, wallclock);
        m.symmetric_rtp = self.cfg.rtp.symmetric;
        m.rtp_timeout = Some(Duration::from_secs(self.cfg.rtp.timeout_secs.max(1)));
        m.initial_sequence = (ssrc >> 16) as u16;
        m.initial_timestamp = ssrc.rotate_left(7);
        m.jitter = JitterConfig {
            min_delay: Duration::from_millis(u64::from(self.cfg.rtp.jitter_min_ms)),
            max_delay: Duration::from_millis(u64::from(self.cfg.rtp.jitter_max_ms)),
            ..m.jitter
        };
        m
    }

    /// Where and how call `sid` is recorded (`None`: recording off).
    fn recording_setup(&self, sid: &str) -> Option<RecordingSetup> {
        let r = &self.cfg.recording;
        let format = match r.format {
            crate::config::RecordingFormatName::Wav => RecordingFormat::Wav,
            crate::config::RecordingFormatName::Opus => RecordingFormat::Opus,
        };
        let writer = self.recording_writer.clone()?;
        Some(RecordingSetup {
            path: crate::recordings::path_for(Path::new(&r.dir), sid, format),
            writer,
            consent_by_agent: !r.consent_message.trim().is_empty(),
            format,
        })
    }

    /// The agent's configuration for one call: `request` is what the trigger asked for (already
    /// checked by policy), `own` the call's own variables.
    fn agent_config(
        &self,
        request: BTreeMap<String, DynamicVariable>,
        own: BTreeMap<String, DynamicVariable>,
        first_message: Option<String>,
    ) -> AgentConfig {
        let a = &self.cfg.agent;
        let mut c = AgentConfig::new(a.agent_id.clone()).with_base_url(a.base_url.clone());
        c.api_key = self.secrets.elevenlabs_api_key.clone();
        c.connect_timeout = Duration::from_secs(a.connect_timeout_secs);
        c.stall_timeout = self.setup.agent_stall_timeout;
        c.tls = Some(self.setup.agent_tls.clone());
        c.http = Some(self.setup.agent_http.clone());
        c.initiation.dynamic_variables = merge_variables(request, &a.dynamic_variables, own);
        // Recording consent said by the agent: its first words, before any requested greeting.
        let consent = &self.cfg.recording.consent_message;
        let first_message = match (
            self.cfg.recording.enabled && !consent.trim().is_empty(),
            first_message,
        ) {
            (true, Some(m)) => Some(format!("{} {m}", consent.trim())),
            (true, None) => Some(consent.trim().to_owned()),
            (false, m) => m,
        };
        if let Some(m) = first_message {
            c.initiation.conversation_config_override = Some(ConversationConfigOverride {
                agent: Some(AgentOverride {
                    first_message: Some(m),
                    ..AgentOverride::default()
                }),
                ..ConversationConfigOverride::default()
            });
        }
        c
    }

    fn store(&self, r: CallRecord) {
        let done = r.is_final();
        // Under the lock, so snapshots reach the database writer in the order they are accepted,
        // and a late non-final snapshot never overwrites the final record.
        let Ok(mut book) = self.records.lock() else {
            return;
        };
        if !done && book.recent.iter().any(|f| f.call_sid == r.call_sid) {
            return;
        }
        self.events.publish(&r);
        if let Some(hooks) = &self.webhooks {
            // The status last notified: the live record's, or the finished one's (the call's
            // task stores its final record once more when it returns: not a new event).
            let prev = book
                .by_sid
                .get(&r.call_sid)
                .or_else(|| book.recent.iter().rev().find(|f| f.call_sid == r.call_sid));
            let before = prev.map(|p| p.status.as_str());
            // The answering-machine verdict is an event of its own (`amd`), once.
            if r.amd.is_some() && prev.is_some_and(|p| p.amd.is_none()) {
                hooks.notify("amd", &r);
            }
            if before != Some(r.status.as_str()) && r.status != "ending" {
                let event = match r.status.as_str() {
                    "in-progress" => "answered",
                    s => s,
                };
                hooks.notify(event, &r);
            }
        }
        self.store.save(r.clone());
        if done {
            // Finished calls live in the database; keep memory bounded.
            book.by_sid.remove(&r.call_sid);
            book.order.retain(|s| s != &r.call_sid);
            book.recent.retain(|f| f.call_sid != r.call_sid);
            // Without its transcript, which is in the database (`record_with_transcript`).
            let mut r = r;
            r.transcript = Vec::new();
            book.recent.push_back(r);
            if book.recent.len() > 1000 {
                book.recent.pop_front();
            }
        } else {
            book.put(r);
        }
        drop(book);
        self.record_changed.notify_waiters();
    }

    /// `connect_at = trigger`: wait until the call's conversation and INVITE are known (the
    /// agent's metadata arrived, the INVITE left), or the call ended, or `timeout` passed. The
    /// call's own agent deadline (`connect_timeout_secs`) ends it first when the agent does not
    /// answer; past `timeout` the call is hung up here all the same.
    async fn wait_placed(&self, sid: &str, timeout: Duration) -> Result<Placed, PlaceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.record_changed.notified();
            tokio::pin!(notified);
            // Registered before the check: a snapshot stored in between still wakes us.
            notified.as_mut().enable();
            if let Some(r) = self.record(sid) {
                let placed = Placed {
                    call_sid: sid.to_owned(),
                    conversation_id: r.conversation_id.clone(),
                    sip_call_id: r.sip_call_id.clone(),
                };
                if r.conversation_id.is_some() && (r.sip_call_id.is_some() || r.is_final()) {
                    return Ok(placed);
                }
                if r.is_final() {
                    let detail = r.agent_close.clone().unwrap_or_else(|| r.status.clone());
                    warn!(call_sid = %sid, %detail, "agent unavailable: call not placed");
                    return Err(PlaceError::AgentUnavailable);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                warn!(call_sid = %sid, "agent not up in time: call not placed");
                if let Ok(a) = self.active.lock()
                    && let Some(c) = a.get(sid)
                {
                    let cause = EndCause::AgentConnectFailed {
                        detail: "timed out".into(),
                    };
                    let _ = c.commands.send(Box::new(CallCommand::Hangup(cause)));
                }
                return Err(PlaceError::AgentUnavailable);
            }
        }
    }

    /// Wait until the SIP stack has torn every leg down on the wire (BYEs sent and answered or
    /// timed out), or `timeout` passes.
    pub async fn wait_sip_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.sip.stats().active_legs.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The calls counted per destination on UTC `day` (the daily cap after a restart).
    pub async fn daily_counts(&self, day: u64) -> Result<Vec<(String, u32)>, StartError> {
        Ok(self.store.daily_counts(day).await?)
    }

    /// Persist one call to `number` on `day` (queued).
    pub fn count_destination(&self, day: u64, number: &str) {
        self.store.count_destination(day, number);
    }

    /// Wait until every record snapshot is in the database.
    pub async fn flush_records(&self) {
        self.store.flush().await;
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_call(
        self: &Arc<Self>,
        sid: String,
        call: Call,
        rtp: UdpSocket,
        rtcp: UdpSocket,
        events: mpsc::UnboundedReceiver<Box<SipEvent>>,
        link: SipLink,
        agent: AgentConfig,
        lease: Option<String>,
    ) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        if let Ok(mut a) = self.active.lock() {
            a.insert(sid.clone(), Active { commands: cmd_tx });
        }
        self.update_available();
        self.metrics.call_started(call.direction().as_str());
        self.store(call.record().clone());
        let weak = Arc::downgrade(self);
        let sink: RecordSink = Arc::new(move |r| {
            // The final snapshot is stored when the call's task returns it, with the transcript
            // read back from the lines written as they came: stored here, it would be seen
            // (and announced) without them first.
            if r.is_final() {
                return;
            }
            if let Some(gw) = weak.upgrade() {
                gw.store(r);
            }
        });
        let lines = self.store.clone();
        let transcripts: TranscriptSink =
            Arc::new(move |sid, line| lines.transcript_line(sid, line));
        let gw = self.clone();
        let direction = call.direction().as_str();
        let call = Box::new(call);
        // Boxed, like the call: moved through the task's futures by value, its fields would be
        // stored in each of them (the agent config alone is ~750 bytes).
        let io = Box::new(CallIo {
            rtp,
            rtcp: Some(rtcp),
            sip_events: events,
            sip: link,
            commands: cmd_rx,
            agent,
            records: Some(sink),
            transcripts: Some(transcripts),
            pacing: Some(gw.metrics.pacing().clone()),
            ticks: Some(gw.metrics.ticks().clone()),
            send_thread: gw.send_thread.clone(),
            recording: gw.recording_setup(&sid),
        });
        let fut = async move {
            let mut record = run(call, io).await;
            // Boxed, like the release below: kept out of the task's size for the whole call.
            record.transcript = Box::pin(gw.store.transcript(&sid)).await;
            gw.metrics.call_ended(direction, &record);
            gw.store(record);
            if let Ok(mut a) = gw.active.lock() {
                a.remove(&sid);
            }
            if let (Some(c), Some(lease)) = (&gw.cluster, &lease) {
                // Boxed: the database future is larger than the rest of the task, which would
                // hold room for it for the whole call.
                Box::pin(c.release(lease)).await;
            }
            gw.update_available();
            gw.call_ended.notify_waiters();
        };
        tokio::spawn(fut);
    }

    async fn place_outbound(self: Arc<Self>, req: OutboundRequest) -> Result<Placed, PlaceError> {
        let lease = req.cluster_lease.clone();
        let placed = self.clone().place_outbound_leased(req).await;
        if placed.is_err()
            && let (Some(c), Some(lease)) = (&self.cluster, &lease)
        {
            c.release(lease).await;
        }
        placed
    }

    async fn place_outbound_leased(
        self: Arc<Self>,
        req: OutboundRequest,
    ) -> Result<Placed, PlaceError> {
        if !self.ready.load(Ordering::SeqCst) {
            return Err(PlaceError::Unavailable);
        }
        let targets = self
            .resolve_trunk()
            .await
            .map_err(|e| PlaceError::Failed(format!("Trunk unreachable: {e}")))?;
        let Some(&destination) = targets.first() else {
            return Err(PlaceError::Failed("Trunk unreachable: no address".into()));
        };
        let (rtp, rtcp) = self.allocate_rtp().await.map_err(PlaceError::Failed)?;
        let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
        let sid = self.new_sid();
        let ip = self.media_ip(destination);
        let params = self.media_params(ip, port, splitmix(self.seed ^ fxhash(&sid)) >> 16);
        let leg = self.sip.outbound_targets(&req.to.e164, targets, params);
        let mut record = CallRecord::new(
            sid.clone(),
            "outbound",
            self.cfg.trunk.caller_id.clone(),
            req.to.e164.clone(),
        );
        // The first trunk address; a failover replaces it (SipEvent::Target).
        record.trunk_target = Some(destination.to_string());
        record.trunk_attempts = 1;
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let call = Call::outbound(
            self.setup.call.clone(),
            self.media_template(&sid),
            record,
            now,
        );
        let request_vars: BTreeMap<String, DynamicVariable> = req
            .dynamic_variables
            .into_iter()
            .filter_map(|(k, v)| {
                let dv = match v {
                    serde_json::Value::String(s) => DynamicVariable::String(s),
                    serde_json::Value::Bool(b) => DynamicVariable::Bool(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => DynamicVariable::Int(i),
                        None => DynamicVariable::Float(n.as_f64()?),
                    },
                    _ => return None,
                };
                Some((k, dv))
            })
            .collect();
        let mut vars: BTreeMap<String, DynamicVariable> = BTreeMap::new();
        vars.insert("call_sid".into(), sid.clone().into());
        vars.insert("called_number".into(), req.to.e164.clone().into());
        vars.insert("caller_id".into(), self.cfg.trunk.caller_id.clone().into());
        vars.insert("direction".into(), "outbound".into());
        let agent = self.agent_config(request_vars, vars, req.first_message);
        if let (Some(c), Some(lease)) = (&self.cluster, &req.cluster_lease) {
            c.bind(lease, &sid).await;
        }
        self.spawn_call(
            sid.clone(),
            call,
            rtp,
            rtcp,
            leg.events,
            leg.link,
            agent,
            req.cluster_lease,
        );
        if self.cfg.agent.connect_at == ConnectAt::Trigger {
            // A second past the call's own agent deadline: that one normally fires first.
            let bound = Duration::from_secs(self.cfg.agent.connect_timeout_secs + 1);
            let placed = self.wait_placed(&sid, bound).await?;
            info!(call_sid = %sid, conversation_id = ?placed.conversation_id, "outbound call placed");
            return Ok(placed);
        }
        info!(call_sid = %sid, "outbound call placed");
        Ok(Placed {
            call_sid: sid,
            conversation_id: None,
            sip_call_id: None,
        })
    }

    async fn inbound_loop(gw: Arc<Gateway>, mut incoming: mpsc::UnboundedReceiver<IncomingLeg>) {
        while let Some(inc) = incoming.recv().await {
            gw.clone().answer_inbound(inc).await;
        }
    }

    async fn answer_inbound(self: Arc<Self>, leg: IncomingLeg) {
        // The cluster-wide concurrency cap: a lease first, released if the call is not taken.
        let lease = match &self.cluster {
            Some(c) if self.ready.load(Ordering::SeqCst) => match c.admit_inbound().await {
                Ok(l) => Some(l),
                Err(e) => {
                    self.metrics.refused(match e {
                        AdmitError::Refused(_) => "inbound_cluster_at_capacity",
                        AdmitError::Db(_) => "inbound_cluster_db_error",
                    });
                    leg.link.send(SipAction::Reject { status: 503 });
                    return;
                }
            },
            _ => None,
        };
        let taken = self.clone().answer_inbound_leased(leg, lease.clone()).await;
        if !taken && let (Some(c), Some(lease)) = (&self.cluster, &lease) {
            c.release(lease).await;
        }
    }

    /// Answer (true) or refuse (false) an inbound call.
    async fn answer_inbound_leased(
        self: Arc<Self>,
        leg: IncomingLeg,
        lease: Option<String>,
    ) -> bool {
        let IncomingLeg {
            call: inc,
            events,
            link,
        } = leg;
        if !self.ready.load(Ordering::SeqCst)
            || self.active_calls() >= self.cfg.policy.max_concurrent_calls
        {
            self.metrics.refused("inbound_at_capacity");
            link.send(SipAction::Reject { status: 503 });
            return false;
        }
        if !inc.has_offer {
            link.send(SipAction::Reject { status: 488 });
            return false;
        }
        let Ok((rtp, rtcp)) = self.allocate_rtp().await else {
            link.send(SipAction::Reject { status: 503 });
            return false;
        };
        let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
        let sid = self.new_sid();
        let ip = self.media_ip(inc.source);
        let params = self.media_params(ip, port, splitmix(self.seed ^ fxhash(&sid)) >> 16);
        let neg = match self.sip.answer_offer(inc.leg, params).await {
            Ok(n) => n,
            Err(refuse) => {
                link.send(SipAction::Reject { status: refuse.0 });
                return false;
            }
        };
        let mut record = CallRecord::new(sid.clone(), "inbound", inc.from.clone(), inc.to.clone());
        record.sip_call_id = Some(inc.call_id.clone());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let call = Call::inbound(
            self.setup.call.clone(),
            self.media_template(&sid),
            neg,
            record,
            now,
        );
        let mut vars: BTreeMap<String, DynamicVariable> = BTreeMap::new();
        vars.insert("call_sid".into(), sid.clone().into());
        vars.insert("caller_id".into(), inc.from.clone().into());
        vars.insert("called_number".into(), inc.to.clone().into());
        vars.insert("direction".into(), "inbound".into());
        for (k, v) in &inc.x_headers {
            if k.eq_ignore_ascii_case("X-Twilio-CallSid") {
                vars.insert("twilio_call_sid".into(), v.clone().into());
            }
        }
        let agent = self.agent_config(BTreeMap::new(), vars, None);
        info!(call_sid = %sid, source = %inc.source, "inbound call");
        if let (Some(c), Some(lease)) = (&self.cluster, &lease) {
            c.bind(lease, &sid).await;
        }
        self.spawn_call(sid, call, rtp, rtcp, events, link, agent, lease);
        true
    }
}

/// The dynamic variables of a conversation: the request's, then the operator's
/// (`[agent.dynamic_variables]`) over them, then the call's own over everything. Policy already
/// refuses requests naming the operator's or the call's keys; this order holds even if it did not.
pub fn merge_variables(
    request: BTreeMap<String, DynamicVariable>,
    operator: &BTreeMap<String, String>,
    own: BTreeMap<String, DynamicVariable>,
) -> BTreeMap<String, DynamicVariable> {
    let mut all = request;
    all.extend(
        operator
            .iter()
            .map(|(k, v)| (k.clone(), DynamicVariable::from(v.as_str()))),
    );
    all.extend(own);
    all
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl CallService for Arc<Gateway> {
    fn active_calls(&self) -> usize {
        Gateway::active_calls(self)
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn place(&self, req: OutboundRequest) -> BoxFuture<'_, Result<Placed, PlaceError>> {
        Box::pin(self.clone().place_outbound(req))
    }
    fn get(&self, call_sid: String) -> BoxFuture<'_, Option<CallRecord>> {
        Box::pin(async move {
            match self.record_with_transcript(&call_sid).await {
                Some(r) => Some(r),
                None => self.store.get(&call_sid).await,
            }
        })
    }
    fn list(&self, q: ListQuery) -> BoxFuture<'_, Vec<CallRecord>> {
        Box::pin(async move {
            self.store.flush().await;
            self.store.list(&q).await
        })
    }
    fn hangup(&self, call_sid: String) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.active.lock().is_ok_and(|a| {
                a.get(&call_sid).is_some_and(|c| {
                    c.commands
                        .send(Box::new(CallCommand::Hangup(EndCause::ApiHangup)))
                        .is_ok()
                })
            })
        })
    }
    fn metrics(&self) -> String {
        let s = self.sip.stats();
        let mut out = self.metrics.render(
            Gateway::active_calls(self),
            s.inbound_refused_source.load(Ordering::Relaxed),
        );
        crate::metrics::render_trunk(&mut out, self.trunk.failures.load(Ordering::Relaxed), s);
        crate::metrics::render_recording(&mut out, &self.metrics.recording);
        {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "# HELP trunkline_srtp_negotiation_total SRTP negotiation outcomes on the trunk: plain_retry (488 to our SRTP offer, re-offered plain RTP: media_encryption = allowed), policy_refused (an inbound offer refused 488 by media_encryption).\n# TYPE trunkline_srtp_negotiation_total counter\ntrunkline_srtp_negotiation_total{{outcome=\"plain_retry\"}} {}\ntrunkline_srtp_negotiation_total{{outcome=\"policy_refused\"}} {}",
                s.srtp_plain_retries.load(Ordering::Relaxed),
                s.srtp_policy_refusals.load(Ordering::Relaxed)
            );
        }
        if let Some(hooks) = &self.webhooks {
            let w = hooks.stats();
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "# HELP trunkline_webhooks_total Status webhook events, by outcome (dropped: queue full).\n# TYPE trunkline_webhooks_total counter"
            );
            for (result, n) in [
                ("delivered", &w.delivered),
                ("failed", &w.failed),
                ("dropped", &w.dropped),
            ] {
                let _ = writeln!(
                    out,
                    "trunkline_webhooks_total{{result=\"{result}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        crate::metrics::render_defences(
            &mut out,
            &self.metrics.defences,
            &self.setup.stack.transports.stats,
        );
        if let Some(c) = &self.cluster {
            c.render(&mut out);
        }
        out
    }
    fn refused(&self, label: &'static str) {
        self.metrics.refused(label);
    }
    fn events(&self) -> Option<Arc<CallEvents>> {
        Some(self.events.clone())
    }
    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }
}

impl Gateway {
    /// Calls up now.
    pub fn active_calls(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_and_the_call_win_over_the_request() {
        let request: BTreeMap<String, DynamicVariable> = [
            ("customer_tier", "platinum"),
            ("caller_id", "+19005550100"),
            ("order_id", "42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), DynamicVariable::from(v)))
        .collect();
        let operator: BTreeMap<String, String> =
            [("customer_tier".to_owned(), "basic".to_owned())].into();
        let own: BTreeMap<String, DynamicVariable> = [(
            "caller_id".to_owned(),
            DynamicVariable::from("+15005550006"),
        )]
        .into();
        let all = merge_variables(request, &operator, own);
        assert_eq!(all["customer_tier"], DynamicVariable::from("basic"));
        assert_eq!(all["caller_id"], DynamicVariable::from("+15005550006"));
        assert_eq!(all["order_id"], DynamicVariable::from("42"));
    }
}
