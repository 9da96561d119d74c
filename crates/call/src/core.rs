//! One call as a sans-IO state machine (ARCHITECTURE.md, "One outbound call, end to end").
//!
//! The [`Call`] glues three sessions together without touching a socket or a clock:
//! - the SIP dialog, as outcomes in ([`SipEvent`]) and commands out ([`SipAction`]) — the SIP
//!   stack (transactions, dialogs, digest auth, SDP) lives below, in the runner;
//! - the RTP media session ([`MediaSession`]), owned here: datagrams in, paced datagrams out;
//! - the agent conversation, as [`AgentEvent`]s in and [`AgentAction`]s out.
//!
//! Inputs: [`Call::handle_sip`], [`Call::handle_agent`], [`Call::handle_agent_connect_failed`],
//! [`Call::handle_rtp`], [`Call::handle_rtcp`], [`Call::handle_timeout`], [`Call::hangup`].
//! Outputs: [`Call::poll_action`], [`Call::poll_transmit`], [`Call::poll_timeout`],
//! [`Call::record`]. After every input, drain `poll_action` and `poll_transmit`, then sleep until
//! `poll_timeout`.
//!
//! Rules implemented here:
//! - Uplink: one 20 ms frame pulled from the jitter buffer per tick, converted to the agent's input
//!   format (µ-law passthrough when possible) and sent in chunks of `uplink_chunk`, silence
//!   included, for the whole call. Up to one second of the callee's first words is kept while the
//!   agent is still connecting.
//! - Downlink: agent audio converted to the trunk's law and queued on the pacer (20 ms RTP on an
//!   absolute schedule). `interruption{N}` flushes queued audio with `event_id <= N` at once (the
//!   agent client already drops later audio at or below `N`, ELEVENLABS.md §2.7).
//! - Hang-up ordering: phone BYE → agent closed; agent ends (`end_call` or close 1000) → the mic is
//!   muted, queued audio is played out (bounded by `drain_timeout`), then BYE; agent failure, RTP
//!   timeout, max duration, API hang-up → BYE (or CANCEL / a final error before answer) at once.
//! - Client tools executed by the gateway: `end_call`, `send_dtmf {digits}` (RFC 4733),
//!   `transfer_call {destination}` (SIP REFER, off unless allowed by policy); anything else is
//!   answered with `is_error: true`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use trunkline_agent::protocol::ClientToolCall;
use trunkline_agent::{AgentEvent, AudioFormat, CloseReason, Closed, ResponseCorrection};
use trunkline_media::g711::G711;
use trunkline_media::jitter::{FRAME, FrameKind};
use trunkline_media::rtcp::WallClock;
use trunkline_media::session::{MediaConfig, MediaEvent, MediaSession, PayloadMap, Transmit};
use trunkline_media::srtp::SdesKey;

use crate::amd::{AgentOverrides, AmdRecord, AmdRun, AmdSettings, OnMachine};
use crate::convert::{Downlink, Uplink};
use crate::record::{
    CallRecord, DtmfRecord, EndCause, ToolCallRecord, TranscriptEntry, TranscriptLine,
};
use crate::recording::RecFrame;

/// One frame of audio time.
pub const TICK: Duration = Duration::from_millis(20);

/// Longest caller audio kept while the agent connects (frames of 20 ms).
const PREROLL_FRAMES: usize = 50;

/// Agent audio is converted and queued this many payload bytes at a time (40 ms of µ-law,
/// 20 ms of 8 kHz PCM): `Call::on_agent_audio`.
const DOWNLINK_PIECE: usize = 2 * FRAME;
/// Longest agent audio kept before the media session exists (bytes of G.711, 30 s).
const MAX_PENDING_DOWNLINK: usize = 30 * 8000;
/// Longest `send_dtmf` request.
const MAX_DTMF_DIGITS: usize = 32;

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We called the phone (HTTP trigger → INVITE to the trunk).
    Outbound,
    /// The phone called us (INVITE from the trunk).
    Inbound,
}

impl Direction {
    /// `outbound` / `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// When an outbound call connects to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AgentConnectAt {
    /// When the callee answers (nothing is billed while it rings).
    #[default]
    Answer,
    /// At the first 180/183, so the greeting is ready the moment the callee answers.
    Ringing,
    /// Before the INVITE: the conversation starts when the call is placed (its id is known at
    /// once), the INVITE leaves once the agent's metadata arrived, and the agent's audio is held
    /// until answer as with [`AgentConnectAt::Ringing`]. An agent that cannot be reached means no
    /// INVITE at all.
    Trigger,
}

/// How DTMF from the phone reaches the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtmfMode {
    /// As a `user_message` with the digit (starts a turn).
    #[default]
    UserMessage,
    /// As a non-interrupting `contextual_update` listing the keys pressed so far.
    ContextualUpdate,
    /// Not forwarded (still recorded).
    Off,
}

/// Per-call behaviour.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// CANCEL an unanswered outbound call after this long.
    pub ring_timeout: Duration,
    /// When to connect the agent on outbound calls.
    pub agent_connect: AgentConnectAt,
    /// Give up on the agent connection after this long.
    pub agent_connect_timeout: Duration,
    /// Size of each `user_audio_chunk` (20–100 ms, rounded to 20 ms frames).
    pub uplink_chunk: Duration,
    /// Hang up after this long in conversation.
    pub max_duration: Duration,
    /// After the agent ends, wait at most this long for queued audio to play out before BYE.
    pub drain_timeout: Duration,
    /// DTMF from the phone → agent.
    pub dtmf_mode: DtmfMode,
    /// Duration of each digit sent by `send_dtmf`.
    pub dtmf_digit_duration: Duration,
    /// Whether the agent's `transfer_call` tool may send REFER.
    pub transfer_enabled: bool,
    /// E.164 prefixes a `transfer_call` number (`+…`, `tel:+…`, or the `+…` user part of an
    /// allowed `sip:` URI) must start with. Empty: no number may be reached.
    pub transfer_allow_prefixes: Vec<String>,
    /// Hosts a `sip:`/`sips:` transfer target may name (exact, case-insensitive). Empty: no SIP
    /// URI may be reached. A number prefix never admits a SIP URI.
    pub transfer_allow_sip_hosts: Vec<String>,
    /// The destination policy every transfer number must also pass (the gateway's: E.164
    /// metadata, denied prefixes, premium rate), after the prefix allowlist.
    pub transfer_check: TransferCheck,
    /// Answering-machine detection on outbound calls (`None`: off).
    pub amd: Option<AmdSettings>,
    /// Hand out the call as the phone heard it, one [`RecFrame`] per 20 ms tick after the
    /// answer ([`Call::poll_recording`]).
    pub record_audio: bool,
    /// Recording consent: 8 kHz PCM played to the phone at answer, before any agent audio
    /// (`None`: no prompt).
    pub consent_prompt: Option<Arc<[i16]>>,
}

/// A check on an E.164 transfer number (`+` and digits), supplied by the service that owns the
/// destination policy; the error text is told to the agent.
#[derive(Clone)]
pub struct TransferCheck(Arc<TransferCheckFn>);

/// The predicate inside a [`TransferCheck`].
type TransferCheckFn = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl TransferCheck {
    /// A check from a predicate.
    pub fn new(f: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// No check beyond the allowlists (tests).
    pub fn allow_all() -> Self {
        Self::new(|_| Ok(()))
    }

    /// Whether `e164` may be reached.
    pub fn check(&self, e164: &str) -> Result<(), String> {
        (self.0)(e164)
    }
}

impl Default for TransferCheck {
    fn default() -> Self {
        Self::allow_all()
    }
}

impl std::fmt::Debug for TransferCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransferCheck")
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            ring_timeout: Duration::from_secs(30),
            agent_connect: AgentConnectAt::Answer,
            agent_connect_timeout: Duration::from_secs(10),
            uplink_chunk: Duration::from_millis(40),
            max_duration: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(15),
            dtmf_mode: DtmfMode::UserMessage,
            dtmf_digit_duration: Duration::from_millis(120),
            transfer_enabled: false,
            transfer_allow_prefixes: Vec::new(),
            transfer_allow_sip_hosts: Vec::new(),
            transfer_check: TransferCheck::allow_all(),
            amd: None,
            record_audio: false,
            consent_prompt: None,
        }
    }
}

impl CallConfig {
    fn uplink_frames(&self) -> usize {
        let ms = self.uplink_chunk.as_millis().clamp(20, 100) as usize;
        ms.div_ceil(20)
    }
}

/// What SDP negotiation settled for the phone leg (from the offer/answer, see `trunkline-sip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    /// Where the phone side wants RTP (`None`: on hold with `c=0.0.0.0`, or not known yet).
    pub remote_rtp: Option<SocketAddr>,
    /// Where it wants RTCP (`a=rtcp`, else port + 1).
    pub remote_rtcp: Option<SocketAddr>,
    /// The G.711 law in use.
    pub law: G711,
    /// Payload types (PCMU/PCMA/telephone-event/CN) as negotiated.
    pub payload_types: PayloadMap,
    /// Whether the remote side put us on hold (sendonly / inactive).
    pub on_hold: bool,
    /// SDES-SRTP keys (ours, theirs) when the media is encrypted; `None`: plain RTP.
    pub srtp: Option<(SdesKey, SdesKey)>,
}

/// SIP outcomes reported by the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipEvent {
    /// Outbound: the INVITE left with this Call-ID.
    Invited {
        /// The SIP Call-ID.
        call_id: String,
    },
    /// Outbound: the INVITE failed over to this trunk address (attempt 2 and up, RFC 3263
    /// §4.3; the first is in the record from the start); the last one is the one that answered.
    Target {
        /// The address.
        addr: SocketAddr,
        /// 1 for the first target.
        attempt: u32,
    },
    /// Outbound: a provisional response (180/183), with its SDP when it carries early media.
    Progress {
        /// 180, 183, …
        status: u16,
        /// Early media.
        media: Option<NegotiatedMedia>,
    },
    /// Outbound: 200 OK (ACK is the SIP layer's job).
    Answered {
        /// The answer's media (absent only if early media already gave it).
        media: Option<NegotiatedMedia>,
    },
    /// Outbound: a final failure to the INVITE (including a transaction timeout as 408).
    Failed {
        /// Status code.
        status: u16,
        /// Reason phrase (plus `X-Twilio-Error`, if any).
        reason: String,
        /// True if we had already answered a digest challenge on this INVITE.
        after_auth: bool,
    },
    /// The phone side hung up (BYE received; the SIP layer answered 200).
    RemoteBye,
    /// Inbound: our 200 OK was never ACKed within 64·T1 (RFC 3261 §13.3.1.4); the SIP layer
    /// already sent BYE.
    NoAck,
    /// Inbound: the caller cancelled before we answered.
    RemoteCancel,
    /// A re-INVITE/UPDATE changed the media (new address, hold/unhold).
    MediaChanged(NegotiatedMedia),
    /// The outcome of a REFER we sent for `transfer_call`.
    TransferResult {
        /// The tool call being answered.
        tool_call_id: String,
        /// True when the transfer target answered (NOTIFY `SIP/2.0 200`).
        ok: bool,
        /// What happened.
        detail: String,
    },
}

/// Commands for the SIP layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipAction {
    /// Outbound: send the INVITE (with our SDP offer).
    Invite,
    /// Inbound: send 180 Ringing.
    Ringing,
    /// Inbound: send 200 OK with our SDP answer.
    Accept,
    /// Inbound: reject with a final response.
    Reject {
        /// Status code.
        status: u16,
    },
    /// Outbound: CANCEL the pending INVITE.
    Cancel,
    /// Hang up the established dialog.
    Bye,
    /// Send REFER to transfer the call.
    Refer {
        /// Refer-To target (`tel:+…` or a `sip:` URI).
        target: String,
        /// The tool call to answer when the outcome is known.
        tool_call_id: String,
    },
}

/// Commands for the agent connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Open the conversation (the runner reports back with `AgentEvent::Metadata` or
    /// [`Call::handle_agent_connect_failed`]).
    Connect,
    /// [`AgentAction::Connect`] with per-call overrides (answering-machine detection: the
    /// `answered_by` variable, the voicemail message as `first_message`).
    ConnectWith(AgentOverrides),
    /// A `user_audio_chunk` (bytes in the agent's input format).
    Audio(Bytes),
    /// A `user_message`.
    UserMessage(String),
    /// A `contextual_update`.
    ContextualUpdate {
        /// Text.
        text: String,
        /// Dedup id.
        context_id: String,
    },
    /// A `client_tool_result`.
    ToolResult {
        /// Echoed id.
        tool_call_id: String,
        /// Result text.
        result: String,
        /// Error flag.
        is_error: bool,
    },
    /// Close the conversation (normal closure).
    Close,
}

/// Everything the call asks of its runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAction {
    /// A SIP command.
    Sip(SipAction),
    /// An agent command.
    Agent(AgentAction),
    /// The record changed in a way worth persisting (state, milestone, end).
    RecordChanged,
    /// A line of the conversation to persist now (only after [`Call::spill_transcript`]).
    Transcript(Box<TranscriptLine>),
}

/// The agent's most recent lines, remembered (turn id, `seq`, time) when the transcript is
/// handed out, so that a correction after a barge-in replaces its line: corrections come within
/// a turn or two of the response.
const RECENT_AGENT_LINES: usize = 4;

/// Where the call's transcript goes.
#[derive(Debug, Default)]
struct TranscriptOut {
    /// Handed out as [`CallAction::Transcript`] instead of kept in the record.
    spill: bool,
    /// Lines handed out so far (the next `seq`).
    lines: u32,
    /// The last agent lines: (turn id, `seq`, `at_ms`), oldest first.
    recent_agent: [Option<(Option<i64>, u32, u64)>; RECENT_AGENT_LINES],
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Created, nothing sent yet.
    Initiated,
    /// Outbound: INVITE sent, no provisional with a tag yet. Inbound: waiting for the agent.
    Dialing,
    /// Outbound: 180/183 received. Inbound: 180 sent.
    Ringing,
    /// In conversation.
    Answered,
    /// The agent has finished: playing out its last words before BYE.
    Draining,
    /// Over; the record is final.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    Idle,
    Connecting,
    Connected,
    Closed,
}

/// One call.
#[derive(Debug)]
pub struct Call {
    cfg: CallConfig,
    direction: Direction,
    wallclock: WallClock,
    media_template: MediaConfig,
    media: Option<MediaSession>,
    /// The SRTP keys the media session runs with.
    srtp_keys: Option<(SdesKey, SdesKey)>,
    state: CallState,
    agent: AgentState,
    uplink: Option<Uplink>,
    downlink: Option<Downlink>,
    preroll: VecDeque<[u8; FRAME]>,
    pending_downlink: Vec<(u64, Vec<u8>)>,
    pending_downlink_bytes: usize,
    downlink_scratch: Vec<u8>,
    next_uplink: Option<Instant>,
    ring_deadline: Option<Instant>,
    agent_deadline: Option<Instant>,
    max_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
    drain_cause: Option<EndCause>,
    answered: bool,
    dtmf_received: String,
    transfer_pending: Option<String>,
    amd: Option<Box<AmdRun>>,
    rec: Option<Box<RecTap>>,
    /// The consent prompt is played once the pacer has sent this many audio frames.
    consent_until_frames: Option<u64>,
    consent_played: bool,
    last_agent_audio_at: Option<Instant>,
    transcript_out: TranscriptOut,
    actions: VecDeque<CallAction>,
    record: CallRecord,
}

impl Call {
    /// An outbound call: the first action is [`SipAction::Invite`].
    pub fn outbound(
        cfg: CallConfig,
        media_template: MediaConfig,
        record: CallRecord,
        now: Instant,
    ) -> Self {
        let mut call = Call::new(cfg, Direction::Outbound, media_template, record, now);
        if call.cfg.agent_connect == AgentConnectAt::Trigger {
            // The INVITE waits for the agent's metadata (`on_agent_connected`).
            call.connect_agent(now);
        } else {
            call.send_invite(now);
        }
        call.actions.push_back(CallAction::RecordChanged);
        call
    }

    fn send_invite(&mut self, now: Instant) {
        self.state = CallState::Dialing;
        self.record.timestamps.invite_ms = Some(self.wall_ms(now));
        self.ring_deadline = Some(now + self.cfg.ring_timeout);
        self.push_sip(SipAction::Invite);
    }

    /// An inbound call whose offer was negotiated into `media`: the agent is connected first,
    /// and the INVITE answered (200) once the conversation has started.
    pub fn inbound(
        cfg: CallConfig,
        media_template: MediaConfig,
        media: NegotiatedMedia,
        record: CallRecord,
        now: Instant,
    ) -> Self {
        let mut call = Call::new(cfg, Direction::Inbound, media_template, record, now);
        call.state = CallState::Ringing;
        call.record.status = "ringing".into();
        call.record.timestamps.ringing_ms = Some(call.wall_ms(now));
        if let Err(detail) = call.ensure_media(&media) {
            call.end(EndCause::MediaFailed { detail }, now);
            return call;
        }
        call.push_sip(SipAction::Ringing);
        call.connect_agent(now);
        call.actions.push_back(CallAction::RecordChanged);
        call
    }

    fn new(
        cfg: CallConfig,
        direction: Direction,
        media_template: MediaConfig,
        mut record: CallRecord,
        now: Instant,
    ) -> Self {
        let wallclock = media_template.wallclock;
        let cfg_record_audio = cfg.record_audio;
        record.direction = direction.as_str().to_owned();
        let mut call = Call {
            cfg,
            direction,
            wallclock,
            media_template,
            media: None,
            srtp_keys: None,
            state: CallState::Initiated,
            agent: AgentState::Idle,
            uplink: None,
            downlink: None,
            preroll: VecDeque::new(),
            pending_downlink: Vec::new(),
            pending_downlink_bytes: 0,
            downlink_scratch: Vec::with_capacity(2 * FRAME),
            next_uplink: None,
            ring_deadline: None,
            agent_deadline: None,
            max_deadline: None,
            drain_deadline: None,
            drain_cause: None,
            answered: false,
            dtmf_received: String::new(),
            transfer_pending: None,
            amd: None,
            rec: cfg_record_audio.then(|| Box::new(RecTap::default())),
            consent_until_frames: None,
            consent_played: false,
            last_agent_audio_at: None,
            transcript_out: TranscriptOut::default(),
            actions: VecDeque::new(),
            record,
        };
        call.record.timestamps.created_ms = Some(call.wall_ms(now));
        call
    }

    // ---- getters ----

    /// Where the call is.
    pub fn state(&self) -> CallState {
        self.state
    }

    /// Who placed it.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The record as it stands (statistics refreshed by [`Call::refresh_stats`]).
    pub fn record(&self) -> &CallRecord {
        &self.record
    }

    /// The media session, once SDP has been negotiated.
    pub fn media(&self) -> Option<&MediaSession> {
        self.media.as_ref()
    }

    /// Hand the transcript out line by line as [`CallAction::Transcript`] instead of keeping it
    /// in the record: a long conversation then costs the call no memory (the I/O layer persists
    /// each line, and the final record is filled from where they went). Call before any agent
    /// event.
    pub fn spill_transcript(&mut self) {
        self.transcript_out.spill = true;
    }

    /// True while [`Call::poll_action`] has something to return.
    pub fn has_pending_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// True once the call is over and every action has been drained.
    pub fn is_done(&self) -> bool {
        self.state == CallState::Ended && self.actions.is_empty()
    }

    // ---- inputs ----

    /// A SIP outcome.
    pub fn handle_sip(&mut self, event: SipEvent, now: Instant) {
        if self.state == CallState::Ended {
            return;
        }
        match event {
            SipEvent::Invited { call_id } => {
                self.record.sip_call_id = Some(call_id);
                self.actions.push_back(CallAction::RecordChanged);
            }
            SipEvent::Target { addr, attempt } => {
                self.record.trunk_target = Some(addr.to_string());
                self.record.trunk_attempts = attempt;
                self.actions.push_back(CallAction::RecordChanged);
            }
            SipEvent::Progress { status, media } => self.on_progress(status, media, now),
            SipEvent::Answered { media } => self.on_answered(media, now),
            SipEvent::Failed {
                status,
                reason,
                after_auth,
            } => {
                self.record.sip_status = Some(status);
                let cause = match status {
                    486 | 600 => EndCause::Busy { status },
                    408 | 480 | 487 => EndCause::NoAnswer {
                        status: Some(status),
                    },
                    401 | 407 if after_auth => EndCause::AuthFailed { status },
                    403 => EndCause::AuthFailed { status },
                    488 | 606 => EndCause::MediaFailed {
                        detail: format!("{status} {reason}"),
                    },
                    _ => EndCause::Rejected { status, reason },
                };
                // The INVITE transaction is over: nothing to cancel.
                self.ring_deadline = None;
                self.state = CallState::Ended;
                self.finish(cause, now);
            }
            SipEvent::RemoteBye => {
                self.state = CallState::Ended;
                self.finish(EndCause::RemoteHangup, now);
            }
            SipEvent::RemoteCancel => {
                self.state = CallState::Ended;
                self.finish(EndCause::RemoteCancel, now);
            }
            SipEvent::NoAck => {
                // The BYE is already sent: no SIP command, only the agent and media closed.
                self.state = CallState::Ended;
                self.finish(EndCause::NoAck, now);
            }
            SipEvent::MediaChanged(m) => {
                if let Err(detail) = self.ensure_media(&m) {
                    tracing::warn!(%detail, "re-negotiated media unusable");
                }
            }
            SipEvent::TransferResult {
                tool_call_id,
                ok,
                detail,
            } => {
                if self.transfer_pending.as_deref() != Some(tool_call_id.as_str()) {
                    return;
                }
                self.transfer_pending = None;
                if ok {
                    self.tool_result("transfer_call", tool_call_id, detail, false);
                    self.end(EndCause::Transferred, now);
                } else {
                    self.tool_result(
                        "transfer_call",
                        tool_call_id,
                        format!("transfer failed: {detail}"),
                        true,
                    );
                }
            }
        }
    }

    /// An event from the agent conversation.
    pub fn handle_agent(&mut self, event: AgentEvent, now: Instant) {
        if self.state == CallState::Ended {
            return;
        }
        match event {
            AgentEvent::Metadata {
                conversation_id,
                input_format,
                output_format,
            } => self.on_agent_connected(conversation_id, input_format, output_format, now),
            AgentEvent::Audio { event_id, audio } => self.on_agent_audio(event_id, &audio, now),
            AgentEvent::Interruption { event_id } => {
                let n = event_id.max(0) as u64;
                self.record.interruptions += 1;
                if let Some(m) = self.media.as_mut() {
                    m.flush_agent_audio_up_to(n);
                }
                self.pending_downlink.retain(|(id, _)| *id > n);
                self.pending_downlink_bytes =
                    self.pending_downlink.iter().map(|(_, b)| b.len()).sum();
            }
            AgentEvent::AgentResponse { text, event_id } => {
                self.transcript("agent", text, event_id, now);
            }
            AgentEvent::AgentResponseCorrection(c) => {
                let ResponseCorrection {
                    corrected,
                    event_id,
                    ..
                } = *c;
                if self.transcript_out.spill {
                    self.correct_spilled(corrected, event_id, now);
                } else {
                    let entry = self
                        .record
                        .transcript
                        .iter_mut()
                        .rev()
                        .find(|e| e.role == "agent" && e.event_id == event_id);
                    match entry {
                        Some(e) => e.text = corrected,
                        None => self.transcript("agent", corrected, event_id, now),
                    }
                }
            }
            AgentEvent::UserTranscript { text, event_id } => {
                self.transcript("user", text, event_id, now);
            }
            AgentEvent::ToolCall { call, handled } => {
                if !handled {
                    self.on_tool_call(*call, now);
                }
            }
            AgentEvent::AgentToolResponse(resp) => {
                if resp.tool_name == "end_call" && resp.is_error != Some(true) {
                    self.begin_drain(EndCause::AgentEnded, now);
                }
            }
            AgentEvent::Closed(closed) => self.on_agent_closed(*closed, now),
            AgentEvent::Ping {
                ping_ms: Some(ms), ..
            } => self.record.agent_ping_ms = Some(ms),
            AgentEvent::TentativeUserTranscript { .. }
            | AgentEvent::Ping { .. }
            | AgentEvent::Error(_)
            | AgentEvent::Other(_) => {}
        }
    }

    /// The agent connection could not be opened.
    pub fn handle_agent_connect_failed(&mut self, detail: String, now: Instant) {
        if self.agent != AgentState::Connecting {
            return;
        }
        self.agent = AgentState::Closed;
        self.agent_deadline = None;
        self.record.agent_close = Some(format!("connect failed: {detail}"));
        self.end(EndCause::AgentConnectFailed { detail }, now);
    }

    /// An RTP datagram from the phone side.
    pub fn handle_rtp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        if let Some(m) = self.media.as_mut() {
            m.handle_rtp(datagram, from, now);
            self.drain_media_events(now);
        }
    }

    /// An RTCP datagram from the phone side.
    pub fn handle_rtcp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        if let Some(m) = self.media.as_mut() {
            m.handle_rtcp(datagram, from, now);
            self.drain_media_events(now);
        }
    }

    /// Hang up from our side (API, shutdown).
    pub fn hangup(&mut self, cause: EndCause, now: Instant) {
        self.end(cause, now);
    }

    /// Timers: uplink ticks, ring/agent/max-duration deadlines, media timers, drain.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == CallState::Ended {
            return;
        }
        if let Some(m) = self.media.as_mut() {
            m.handle_timeout(now);
            self.drain_media_events(now);
        }
        while let Some(t) = self.next_uplink {
            if t > now || self.state == CallState::Ended {
                break;
            }
            self.next_uplink = Some(t + TICK);
            self.uplink_tick(now);
        }
        if self.ring_deadline.is_some_and(|t| now >= t) {
            self.ring_deadline = None;
            self.end(EndCause::NoAnswer { status: None }, now);
        }
        if self.agent_deadline.is_some_and(|t| now >= t) {
            self.agent_deadline = None;
            if self.agent == AgentState::Connecting {
                self.handle_agent_connect_failed("timed out".into(), now);
                self.push_agent(AgentAction::Close);
            }
        }
        if self.max_deadline.is_some_and(|t| now >= t) {
            self.max_deadline = None;
            self.end(EndCause::MaxDuration, now);
        }
        if self
            .amd
            .as_ref()
            .and_then(|a| a.hold_deadline)
            .is_some_and(|t| now >= t)
        {
            self.amd_hold_timeout(now);
        }
        self.check_drained(now);
    }

    // ---- outputs ----

    /// The next command for the runner.
    pub fn poll_action(&mut self) -> Option<CallAction> {
        self.actions.pop_front()
    }

    /// The next RTP/RTCP datagram due at `now`, written into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.media.as_mut()?.poll_transmit(now, buf);
        if let Some(rec) = self.rec.as_mut()
            && let Some(m) = self.media.as_mut()
            && let Some(sent) = m.take_sent_audio()
            && self.answered
        {
            if t.is_some_and(|t| t.replaces_previous) {
                rec.replace_last(sent);
            } else {
                rec.sent(sent);
            }
        }
        if self.record.timestamps.first_agent_audio_ms.is_none()
            && let Some(m) = self.media.as_ref()
            && m.stats().pacer.audio_frames > 0
        {
            self.record.timestamps.first_agent_audio_ms = Some(self.wall_ms(now));
            self.actions.push_back(CallAction::RecordChanged);
        }
        if let (Some(until), Some(m)) = (self.consent_until_frames, self.media.as_ref())
            && m.stats().pacer.audio_frames >= until
        {
            self.consent_until_frames = None;
            self.consent_played = true;
            if let Some(r) = self.record.recording.as_mut() {
                r.consent_played = true;
            }
            self.actions.push_back(CallAction::RecordChanged);
        }
        if t.is_none() {
            self.check_drained(now);
        }
        t
    }

    /// The RTP packet just returned by [`Call::poll_transmit`] leaves at `deadline` at the
    /// earliest: until then late agent audio may replace it (see
    /// [`MediaSession::allow_late_audio_until`]).
    pub fn allow_late_audio_until(&mut self, deadline: Instant) {
        if let Some(m) = self.media.as_mut() {
            m.allow_late_audio_until(deadline);
        }
    }

    /// A replacement packet ([`Transmit::replaces_previous`]) came too late to be used: its
    /// audio goes out at the next tick.
    pub fn late_audio_missed(&mut self) {
        if let Some(m) = self.media.as_mut() {
            m.late_audio_missed();
        }
        let silence = self
            .media
            .as_ref()
            .map_or(G711::Ulaw, |m| m.law())
            .silence();
        if let Some(rec) = self.rec.as_mut()
            && self.answered
        {
            rec.replace_last([silence; FRAME]);
        }
    }

    /// The next 20 ms of the call as the phone heard it (with `record_audio`, after the
    /// answer): drain it after every input, as the datagrams.
    pub fn poll_recording(&mut self) -> Option<RecFrame> {
        self.rec.as_mut()?.out.pop_front()
    }

    /// Say where the call's recording is (the runner, when it starts one).
    pub fn set_recording(&mut self, mut r: crate::recording::RecordingRecord) {
        r.consent_played |= self.consent_played;
        self.record.recording = Some(r);
        self.actions.push_back(CallAction::RecordChanged);
    }

    /// The trunk's law (what [`RecFrame`]s are coded in), once media is set up.
    pub fn law(&self) -> Option<G711> {
        self.media.as_ref().map(MediaSession::law)
    }

    /// When to call [`Call::handle_timeout`] / [`Call::poll_transmit`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == CallState::Ended {
            return None;
        }
        [
            self.media.as_ref().and_then(|m| m.poll_timeout()),
            self.next_uplink,
            self.ring_deadline,
            self.agent_deadline,
            self.max_deadline,
            self.drain_deadline,
            self.amd.as_ref().and_then(|a| a.hold_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Copy the media counters into the record.
    pub fn refresh_stats(&mut self) {
        let Some(m) = self.media.as_ref() else { return };
        let s = m.stats();
        self.record.media_security.auth_failures = s.srtp_failures;
        let up = &mut self.record.uplink;
        up.packets = s.rtp_received;
        up.lost = s.packets_lost;
        up.jitter_ms = s.jitter_ms;
        up.late = s.jitter_buffer.late;
        up.underruns = s.jitter_buffer.underruns;
        up.dropped_samples = s.jitter_buffer.samples_dropped;
        up.dropped_forced_samples = s.jitter_buffer.samples_dropped_forced;
        up.audio_frames = s.jitter_buffer.frames_audio;
        let down = &mut self.record.downlink;
        down.packets = s.rtp_sent;
        down.audio_frames = s.pacer.audio_frames;
        down.silence_frames = s.pacer.silence_frames;
        down.flushed_bytes = s.pacer.flushed_bytes;
    }

    // ---- internals ----

    fn set_media_security(&mut self) {
        let sec = &mut self.record.media_security;
        sec.encrypted = self.srtp_keys.is_some();
        sec.suite = self
            .srtp_keys
            .as_ref()
            .map(|(l, _)| l.suite.name().to_owned());
        self.actions.push_back(CallAction::RecordChanged);
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        let t = self.wallclock.system + now.saturating_duration_since(self.wallclock.instant);
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn push_sip(&mut self, a: SipAction) {
        self.actions.push_back(CallAction::Sip(a));
    }

    fn push_agent(&mut self, a: AgentAction) {
        self.actions.push_back(CallAction::Agent(a));
    }

    fn transcript(&mut self, role: &str, text: String, event_id: Option<i64>, now: Instant) {
        let at_ms = self.wall_ms(now);
        let entry = TranscriptEntry {
            role: role.to_owned(),
            text,
            event_id,
            at_ms,
        };
        let out = &mut self.transcript_out;
        if !out.spill {
            self.record.transcript.push(entry);
            return;
        }
        let seq = out.lines;
        out.lines = out.lines.saturating_add(1);
        if role == "agent" {
            out.recent_agent.rotate_left(1);
            out.recent_agent[RECENT_AGENT_LINES - 1] = Some((event_id, seq, at_ms));
        }
        self.actions
            .push_back(CallAction::Transcript(Box::new(TranscriptLine {
                seq,
                entry,
            })));
    }

    /// A correction of an agent line already handed out: the line again, same `seq` and time,
    /// with the corrected text (a new line when it is no longer remembered, as when it is not
    /// found in a kept transcript).
    fn correct_spilled(&mut self, corrected: String, event_id: Option<i64>, now: Instant) {
        let found = self
            .transcript_out
            .recent_agent
            .iter()
            .rev()
            .flatten()
            .find(|(id, _, _)| *id == event_id)
            .copied();
        match found {
            Some((_, seq, at_ms)) => {
                let entry = TranscriptEntry {
                    role: "agent".to_owned(),
                    text: corrected,
                    event_id,
                    at_ms,
                };
                self.actions
                    .push_back(CallAction::Transcript(Box::new(TranscriptLine {
                        seq,
                        entry,
                    })));
            }
            None => self.transcript("agent", corrected, event_id, now),
        }
    }

    fn connect_agent(&mut self, now: Instant) {
        self.connect_agent_with(None, now);
    }

    fn connect_agent_with(&mut self, overrides: Option<AgentOverrides>, now: Instant) {
        if self.agent == AgentState::Idle {
            self.agent = AgentState::Connecting;
            self.agent_deadline = Some(now + self.cfg.agent_connect_timeout);
            self.push_agent(match overrides {
                Some(o) => AgentAction::ConnectWith(o),
                None => AgentAction::Connect,
            });
        }
    }

    /// Create the media session on first negotiation, or follow a change of address.
    fn ensure_media(&mut self, neg: &NegotiatedMedia) -> Result<(), String> {
        if let Some(m) = self.media.as_mut() {
            if m.law() != neg.law {
                // A codec switch mid-call (rare with trunks): keep the law we run with; the
                // session transcodes the other law on arrival.
                tracing::info!(from = ?m.law(), to = ?neg.law, "remote switched G.711 law");
            }
            m.set_remote(neg.remote_rtp, neg.remote_rtcp);
            if self.srtp_keys != neg.srtp {
                // Rekeyed (or switched between SRTP and plain) by a re-INVITE: new contexts.
                m.set_srtp(neg.srtp.as_ref().map(|(l, r)| (l, r)))
                    .map_err(|e| e.to_string())?;
                self.srtp_keys = neg.srtp.clone();
                self.record.media_security.rekeys += 1;
                self.set_media_security();
            }
            return Ok(());
        }
        let mut cfg = self.media_template.clone();
        cfg.law = neg.law;
        cfg.payload_types = neg.payload_types;
        cfg.remote_rtp = neg.remote_rtp;
        cfg.remote_rtcp = neg.remote_rtcp;
        cfg.srtp = neg.srtp.clone();
        let mut media = MediaSession::new(cfg).map_err(|e| e.to_string())?;
        media.set_keep_sent_audio(self.rec.is_some());
        self.srtp_keys = neg.srtp.clone();
        self.set_media_security();
        for (id, codes) in self.pending_downlink.drain(..) {
            media.push_agent_audio(id, &codes);
        }
        self.pending_downlink_bytes = 0;
        self.media = Some(media);
        if let Some(d) = self.downlink.as_mut() {
            d.set_law(neg.law);
        }
        if let Some(u) = self.uplink.as_mut() {
            u.set_law(neg.law);
        }
        Ok(())
    }

    fn on_progress(&mut self, status: u16, media: Option<NegotiatedMedia>, now: Instant) {
        if self.direction != Direction::Outbound || self.answered {
            return;
        }
        if (180..=183).contains(&status) && self.state == CallState::Dialing {
            self.state = CallState::Ringing;
            self.record.status = "ringing".into();
            self.record.timestamps.ringing_ms = Some(self.wall_ms(now));
            self.actions.push_back(CallAction::RecordChanged);
            if self.cfg.agent_connect == AgentConnectAt::Ringing && !self.amd_hold_configured() {
                self.connect_agent(now);
            }
        }
        if let Some(m) = media
            && let Err(detail) = self.ensure_media(&m)
        {
            tracing::warn!(%detail, "early media unusable");
        }
    }

    fn on_answered(&mut self, media: Option<NegotiatedMedia>, now: Instant) {
        if self.direction != Direction::Outbound || self.answered {
            return;
        }
        if let Some(m) = media
            && let Err(detail) = self.ensure_media(&m)
        {
            self.mark_answered(now);
            self.end(EndCause::MediaFailed { detail }, now);
            return;
        }
        if self.media.is_none() {
            self.mark_answered(now);
            self.end(
                EndCause::MediaFailed {
                    detail: "200 OK without usable SDP".into(),
                },
                now,
            );
            return;
        }
        self.mark_answered(now);
        if !self.amd_holding() {
            self.connect_agent(now);
        }
        if self.agent == AgentState::Closed && self.drain_cause.is_none() {
            // The agent (connected at ringing) is already gone.
            self.end(
                EndCause::AgentError {
                    detail: "agent closed before answer".into(),
                },
                now,
            );
        }
    }

    /// At answer: the consent prompt goes to the front of the pacer's queue (before any agent
    /// audio, queued or to come).
    fn play_consent_prompt(&mut self) {
        let (Some(prompt), Some(m)) = (self.cfg.consent_prompt.clone(), self.media.as_mut()) else {
            return;
        };
        let law = m.law();
        let mut codes = vec![0u8; prompt.len()];
        law.encode_slice(&prompt, &mut codes);
        let sent_before = m.stats().pacer.audio_frames;
        let n = m.push_prompt_audio(&codes);
        self.consent_until_frames = Some(sent_before + n.div_ceil(FRAME) as u64);
    }

    fn mark_answered(&mut self, now: Instant) {
        self.answered = true;
        self.ring_deadline = None;
        self.state = CallState::Answered;
        self.record.sip_status = Some(200);
        self.record.status = "in-progress".into();
        self.record.timestamps.answered_ms = Some(self.wall_ms(now));
        self.max_deadline = Some(now + self.cfg.max_duration);
        if let Some(m) = self.media.as_mut() {
            m.start(now);
        }
        self.play_consent_prompt();
        self.next_uplink = Some(now + TICK);
        if self.direction == Direction::Outbound
            && let Some(settings) = self.cfg.amd.clone()
        {
            self.amd = Some(Box::new(AmdRun::new(settings, now)));
        }
        self.actions.push_back(CallAction::RecordChanged);
    }

    fn on_agent_connected(
        &mut self,
        conversation_id: String,
        input: AudioFormat,
        output: AudioFormat,
        now: Instant,
    ) {
        if self.agent != AgentState::Connecting {
            return;
        }
        self.agent = AgentState::Connected;
        self.agent_deadline = None;
        self.record.conversation_id = Some(conversation_id);
        self.record.timestamps.agent_connected_ms = Some(self.wall_ms(now));
        let law = self.media.as_ref().map_or(G711::Ulaw, |m| m.law());
        let mut up = Uplink::new(input, law).with_chunk_frames(self.cfg.uplink_frames());
        for frame in self.preroll.drain(..) {
            up.push_frame(&frame);
        }
        self.uplink = Some(up);
        self.downlink = Some(Downlink::new(output, law));
        if self.direction == Direction::Inbound && !self.answered {
            self.push_sip(SipAction::Accept);
            self.mark_answered(now);
        }
        if self.direction == Direction::Outbound && self.state == CallState::Initiated {
            // `connect_at = trigger`: the conversation is up, now the phone may ring.
            self.send_invite(now);
        }
        self.flush_uplink(false);
        if let Some(text) = self.amd.as_mut().and_then(|a| a.pending_update.take()) {
            self.push_agent(AgentAction::ContextualUpdate {
                text,
                context_id: "amd".into(),
            });
        }
        self.actions.push_back(CallAction::RecordChanged);
    }

    fn on_agent_audio(&mut self, event_id: i64, audio: &[u8], now: Instant) {
        if self.agent != AgentState::Connected {
            return;
        }
        self.record.downlink.agent_messages += 1;
        self.last_agent_audio_at = Some(now);
        let Some(down) = self.downlink.as_mut() else {
            return;
        };
        let id = event_id.max(0) as u64;
        // A piece at a time: the conversion's buffers (this scratch, the converter's samples,
        // the resampler's input) then stay at a piece's size for the whole call instead of the
        // largest chunk the agent ever sent (a 250 ms chunk: 2 KB of µ-law, 16 KB of f32
        // samples at 16 kHz). The converter and the pacer are streams: the split is not heard.
        for piece in audio.chunks(DOWNLINK_PIECE) {
            self.downlink_scratch.clear();
            down.convert(piece, &mut self.downlink_scratch);
            if let Some(m) = self.media.as_mut() {
                m.push_agent_audio(id, &self.downlink_scratch);
            } else if self.pending_downlink_bytes + self.downlink_scratch.len()
                <= MAX_PENDING_DOWNLINK
            {
                self.pending_downlink_bytes += self.downlink_scratch.len();
                match self.pending_downlink.last_mut() {
                    Some((last, codes)) if *last == id => {
                        codes.extend_from_slice(&self.downlink_scratch);
                    }
                    _ => self
                        .pending_downlink
                        .push((id, self.downlink_scratch.clone())),
                }
            }
        }
        self.check_drained(now);
    }

    fn on_agent_closed(&mut self, closed: Closed, now: Instant) {
        let was = self.agent;
        self.agent = AgentState::Closed;
        self.agent_deadline = None;
        let code = closed
            .code
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.record.agent_close = Some(format!("{code} {:?}", closed.reason));
        if self.state == CallState::Draining {
            return;
        }
        if was == AgentState::Connecting {
            self.end(
                EndCause::AgentConnectFailed {
                    detail: format!("{:?}", closed.reason),
                },
                now,
            );
            return;
        }
        match closed.reason {
            CloseReason::AgentEnded | CloseReason::MaxDuration => {
                self.begin_drain(EndCause::AgentEnded, now)
            }
            CloseReason::ClientClosed => {}
            CloseReason::AgentTimeout { .. } => self.end(EndCause::AgentTimeout, now),
            reason => self.end(
                EndCause::AgentError {
                    detail: format!("{reason:?}"),
                },
                now,
            ),
        }
    }

    fn on_tool_call(&mut self, call: ClientToolCall, now: Instant) {
        let ClientToolCall {
            tool_name,
            tool_call_id,
            parameters,
            ..
        } = call;
        match tool_name.as_str() {
            "end_call" => {
                self.tool_result(&tool_name, tool_call_id, "ending the call".into(), false);
                self.begin_drain(EndCause::AgentEnded, now);
            }
            "send_dtmf" => {
                let digits = parameters
                    .get("digits")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let (text, err) = self.send_dtmf(&digits, now);
                self.tool_result(&tool_name, tool_call_id, text, err);
            }
            "transfer_call" => {
                let dest = parameters
                    .get("destination")
                    .or_else(|| parameters.get("transfer_number"))
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                match self.transfer_target(&dest) {
                    Ok(target) if self.transfer_pending.is_none() && self.answered => {
                        self.transfer_pending = Some(tool_call_id.clone());
                        self.push_sip(SipAction::Refer {
                            target,
                            tool_call_id,
                        });
                    }
                    Ok(_) => self.tool_result(
                        &tool_name,
                        tool_call_id,
                        "a transfer is already in progress".into(),
                        true,
                    ),
                    Err(e) => self.tool_result(&tool_name, tool_call_id, e, true),
                }
            }
            _ => self.tool_result(
                &tool_name,
                tool_call_id,
                format!("unknown tool: {tool_name}"),
                true,
            ),
        }
    }

    fn tool_result(&mut self, name: &str, tool_call_id: String, result: String, is_error: bool) {
        self.record.tool_calls.push(ToolCallRecord {
            name: name.to_owned(),
            result: result.clone(),
            is_error,
        });
        if self.agent == AgentState::Connected {
            self.push_agent(AgentAction::ToolResult {
                tool_call_id,
                result,
                is_error,
            });
        }
    }

    fn send_dtmf(&mut self, digits: &str, now: Instant) -> (String, bool) {
        if digits.is_empty() {
            return ("no digits given".into(), true);
        }
        if digits.chars().count() > MAX_DTMF_DIGITS {
            return (format!("at most {MAX_DTMF_DIGITS} digits"), true);
        }
        if let Some(bad) = digits
            .chars()
            .find(|c| !matches!(c, '0'..='9' | '*' | '#' | 'A'..='D' | 'w' | 'W'))
        {
            return (format!("invalid DTMF character {bad:?}"), true);
        }
        let Some(media) = self.media.as_mut() else {
            return ("no media session".into(), true);
        };
        let ms = self.cfg.dtmf_digit_duration.as_millis().min(5000) as u16;
        let mut sent = 0;
        for c in digits.chars().filter(|c| !matches!(c, 'w' | 'W')) {
            if !media.send_dtmf(c, ms) {
                return (
                    "the phone side did not negotiate telephone-event (RFC 4733)".into(),
                    true,
                );
            }
            sent += 1;
        }
        let at_ms = self.wall_ms(now);
        for c in digits.chars().filter(|c| !matches!(c, 'w' | 'W')) {
            self.record.dtmf.push(DtmfRecord {
                digit: c,
                at_ms,
                direction: "sent".into(),
            });
        }
        (format!("sent {sent} DTMF digits"), false)
    }

    /// The REFER target for the agent's `transfer_call` destination, or why not. A number
    /// (`+33 6 12…`, `tel:+336…`) must be E.164, start with an allowed prefix and pass the
    /// destination policy; a `sip:`/`sips:` URI must name an allowed host, and a `+…` user part
    /// must pass the number rules too.
    fn transfer_target(&self, dest: &str) -> Result<String, String> {
        if !self.cfg.transfer_enabled {
            return Err("call transfer is not enabled on this gateway".into());
        }
        if dest.is_empty() {
            return Err("no destination given".into());
        }
        let lower = dest
            .get(..5)
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if lower.starts_with("sip:") || lower.starts_with("sips:") {
            return self.sip_transfer_target(dest);
        }
        let number = if lower.starts_with("tel:") {
            &dest[4..]
        } else {
            dest
        };
        Ok(format!("tel:{}", self.transfer_number(number)?))
    }

    fn transfer_number(&self, raw: &str) -> Result<String, String> {
        let digits: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
            .collect();
        let ok = digits
            .strip_prefix('+')
            .is_some_and(|d| (8..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(format!("not an E.164 number: {raw}"));
        }
        if !self
            .cfg
            .transfer_allow_prefixes
            .iter()
            .any(|p| digits.starts_with(p.as_str()))
        {
            return Err("destination not allowed".into());
        }
        self.cfg.transfer_check.check(&digits)?;
        Ok(digits)
    }

    fn sip_transfer_target(&self, uri: &str) -> Result<String, String> {
        let invalid = || format!("not a plain SIP URI: {uri}");
        let (scheme, rest) = uri.split_once(':').ok_or_else(invalid)?;
        // user@host[:port][;param=value…]: no headers (`?`), no display name, nothing to quote.
        let (user, host_params) = rest.split_once('@').ok_or_else(invalid)?;
        let user_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '_' | '.');
        let param_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '=' | '-' | '_' | '.');
        let mut parts = host_params.split(';');
        let host_port = parts.next().unwrap_or_default();
        if user.is_empty()
            || !user.chars().all(user_ok)
            || !parts.all(|p| !p.is_empty() && p.chars().all(param_ok))
        {
            return Err(invalid());
        }
        let (host, port) = match host_port.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(invalid)?;
                (h, after.strip_prefix(':').unwrap_or(after))
            }
            None => host_port.split_once(':').unwrap_or((host_port, "")),
        };
        let host_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':');
        if host.is_empty()
            || !host.chars().all(host_ok)
            || !port.chars().all(|c| c.is_ascii_digit())
        {
            return Err(invalid());
        }
        if !self
            .cfg
            .transfer_allow_sip_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            return Err("destination not allowed".into());
        }
        if user.starts_with('+') {
            self.transfer_number(user)?;
        }
        Ok(format!("{}:{rest}", scheme.to_ascii_lowercase()))
    }

    fn drain_media_events(&mut self, now: Instant) {
        while let Some(ev) = self.media.as_mut().and_then(|m| m.poll_event()) {
            match ev {
                MediaEvent::Dtmf(d) => self.on_dtmf(d.digit, now),
                MediaEvent::RtpTimeout => {
                    if self.answered {
                        self.end(EndCause::RtpTimeout, now);
                    }
                }
                MediaEvent::RemoteLatched(addr) => tracing::debug!(%addr, "rtp latched"),
                MediaEvent::SsrcChanged { old, new } => {
                    tracing::debug!(old, new, "remote ssrc changed")
                }
                MediaEvent::Bye(ssrc) => tracing::debug!(ssrc, "rtcp bye"),
            }
        }
    }

    fn on_dtmf(&mut self, digit: char, now: Instant) {
        let at_ms = self.wall_ms(now);
        self.record.dtmf.push(DtmfRecord {
            digit,
            at_ms,
            direction: "received".into(),
        });
        if self.agent != AgentState::Connected || self.state != CallState::Answered {
            return;
        }
        match self.cfg.dtmf_mode {
            DtmfMode::UserMessage => self.push_agent(AgentAction::UserMessage(digit.to_string())),
            DtmfMode::ContextualUpdate => {
                self.dtmf_received.push(digit);
                let text = format!("The caller pressed keys: {}", self.dtmf_received);
                self.push_agent(AgentAction::ContextualUpdate {
                    text,
                    context_id: "dtmf".into(),
                });
            }
            DtmfMode::Off => {}
        }
    }

    fn uplink_tick(&mut self, now: Instant) {
        let Some(media) = self.media.as_mut() else {
            return;
        };
        let frame = media.pop_audio(now);
        if let Some(rec) = self.rec.as_mut()
            && self.answered
        {
            rec.played(&frame.data, media.law().silence());
        }
        if self.state != CallState::Answered {
            return; // draining: the mic is muted
        }
        if self.amd.is_some() {
            self.amd_tick(&frame.data, now);
            if self.state != CallState::Answered {
                return;
            }
        }
        let keep = self.amd_holding() || self.agent == AgentState::Connecting;
        match (self.agent, self.uplink.as_mut()) {
            (AgentState::Connected, Some(up)) => {
                up.push_frame(&frame.data);
                self.flush_uplink(false);
            }
            (AgentState::Connecting | AgentState::Idle, _) if keep => {
                if frame.kind == FrameKind::Silence && self.preroll.is_empty() {
                    return;
                }
                if self.preroll.len() == PREROLL_FRAMES {
                    self.preroll.pop_front();
                }
                self.preroll.push_back(frame.data);
            }
            _ => {}
        }
    }

    fn flush_uplink(&mut self, all: bool) {
        let frames = self.cfg.uplink_frames();
        let Some(up) = self.uplink.as_mut() else {
            return;
        };
        while let Some(chunk) = up.take_chunk(frames, all) {
            self.record.uplink.agent_messages += 1;
            self.actions
                .push_back(CallAction::Agent(AgentAction::Audio(chunk)));
        }
    }

    fn begin_drain(&mut self, cause: EndCause, now: Instant) {
        match self.state {
            CallState::Answered => {
                self.state = CallState::Draining;
                self.record.status = "ending".into();
                self.drain_cause = Some(cause);
                self.drain_deadline = Some(now + self.cfg.drain_timeout);
                self.next_uplink = None;
                self.actions.push_back(CallAction::RecordChanged);
                self.check_drained(now);
            }
            CallState::Draining | CallState::Ended => {}
            _ => self.end(cause, now),
        }
    }

    fn check_drained(&mut self, now: Instant) {
        if self.state != CallState::Draining {
            return;
        }
        let drained = self.media.as_ref().is_none_or(|m| m.is_playout_drained());
        if drained || self.drain_deadline.is_some_and(|t| now >= t) {
            let cause = self.drain_cause.take().unwrap_or(EndCause::AgentEnded);
            self.end(cause, now);
        }
    }

    /// End the call from our side: the right SIP command for the state, the agent closed.
    fn end(&mut self, cause: EndCause, now: Instant) {
        let sip = match (self.state, self.direction) {
            (CallState::Ended, _) => return,
            (CallState::Answered | CallState::Draining, _) => Some(SipAction::Bye),
            // `connect_at = trigger` before the INVITE: the leg is withdrawn, nothing was sent.
            (CallState::Initiated, Direction::Outbound) => Some(SipAction::Cancel),
            (CallState::Initiated, _) => None,
            (_, Direction::Outbound) => Some(SipAction::Cancel),
            (_, Direction::Inbound) => Some(SipAction::Reject {
                status: match cause {
                    EndCause::MediaFailed { .. } => 488,
                    EndCause::Shutdown | EndCause::AgentConnectFailed { .. } => 503,
                    _ => 480,
                },
            }),
        };
        if let Some(a) = sip {
            self.push_sip(a);
        }
        self.state = CallState::Ended;
        self.finish(cause, now);
    }

    /// Common end of a call: agent closed, media closed, record final.
    fn finish(&mut self, cause: EndCause, now: Instant) {
        if self.agent == AgentState::Connected {
            self.flush_uplink(true);
        }
        if matches!(self.agent, AgentState::Connecting | AgentState::Connected) {
            if self.agent == AgentState::Connected && self.record.agent_close.is_none() {
                self.record.agent_close = Some("1000 ClientClosed".into());
            }
            self.agent = AgentState::Closed;
            self.push_agent(AgentAction::Close);
        }
        if let Some(m) = self.media.as_mut() {
            m.close();
        }
        self.next_uplink = None;
        self.ring_deadline = None;
        self.agent_deadline = None;
        self.max_deadline = None;
        self.drain_deadline = None;
        self.refresh_stats();
        self.record.status = cause.status(self.answered).to_owned();
        self.record.timestamps.ended_ms = Some(self.wall_ms(now));
        self.record.end_cause = Some(cause);
        self.actions.push_back(CallAction::RecordChanged);
    }
}

// ---- answering-machine detection (see `crate::amd`) ----
impl Call {
    /// Hold mode is configured for this (outbound) call: the agent waits for the verdict.
    fn amd_hold_configured(&self) -> bool {
        self.direction == Direction::Outbound
            && self
                .cfg
                .amd
                .as_ref()
                .is_some_and(|a| a.mode == crate::amd::AmdMode::Hold)
    }

    /// The agent is being held back until the verdict (or the beep).
    fn amd_holding(&self) -> bool {
        self.amd.as_ref().is_some_and(|a| a.holding())
    }

    /// One 20 ms frame of the callee's audio for the detector.
    fn amd_tick(&mut self, frame: &[u8; FRAME], now: Instant) {
        let law = self.media.as_ref().map_or(G711::Ulaw, |m| m.law());
        if let Some(run) = self.amd.as_mut()
            && run.listening()
        {
            let mut pcm = [0i16; FRAME];
            law.decode_slice(frame, &mut pcm);
            // The frame popped at this tick is the 20 ms of audio that ends now.
            run.detector
                .push_frame(now.checked_sub(TICK).unwrap_or(now), &pcm);
            while let Some(ev) = self.amd.as_mut().and_then(|a| a.detector.poll_event()) {
                self.on_amd_event(ev, now);
            }
        }
        // leave_message: end once the message has played and the agent has gone quiet.
        if self.amd.as_ref().is_some_and(|a| a.leaving_message)
            && self.agent == AgentState::Connected
            && let Some(m) = self.media.as_ref()
            && m.stats().pacer.audio_frames > 0
            && m.is_playout_drained()
            && self
                .last_agent_audio_at
                .is_some_and(|t| now.saturating_duration_since(t) >= crate::amd::MESSAGE_QUIET)
        {
            self.begin_drain(EndCause::AgentEnded, now);
        }
    }

    fn on_amd_event(&mut self, ev: crate::amd::AmdEvent, now: Instant) {
        use crate::amd::AmdEvent;
        match ev {
            AmdEvent::Verdict {
                verdict,
                reason,
                at,
                ..
            } => {
                let (after, decided_ms) = match self.amd.as_ref() {
                    Some(a) => (a.after_answer_ms(at), self.wall_ms(at)),
                    None => return,
                };
                tracing::info!(
                    answered_by = verdict.as_str(),
                    reason = reason.as_str(),
                    after_answer_ms = after,
                    "answering-machine detection"
                );
                self.record.amd = Some(AmdRecord {
                    answered_by: verdict.as_str().to_owned(),
                    reason: reason.as_str().to_owned(),
                    decided_ms,
                    decision_after_answer_ms: after,
                    beep_ms: None,
                    beep_after_answer_ms: None,
                    beep_hz: None,
                    message_started_ms: None,
                });
                self.actions.push_back(CallAction::RecordChanged);
                self.amd_verdict(verdict, now);
            }
            AmdEvent::Beep { at, hz, .. } => {
                let after = self.amd.as_ref().map(|a| a.after_answer_ms(at));
                let wall = self.wall_ms(at);
                if let Some(r) = self.record.amd.as_mut() {
                    r.beep_ms = Some(wall);
                    r.beep_after_answer_ms = after;
                    r.beep_hz = Some(hz);
                }
                self.actions.push_back(CallAction::RecordChanged);
                self.amd_message_time(now);
            }
            AmdEvent::GreetingEnd { .. } => self.amd_message_time(now),
        }
    }

    fn amd_verdict(&mut self, verdict: crate::amd::Verdict, now: Instant) {
        use crate::amd::Verdict;
        let Some(run) = self.amd.as_mut() else { return };
        run.verdict = Some(verdict);
        let on_machine = run.settings.on_machine;
        let machine = verdict == Verdict::Machine;
        if machine && on_machine == OnMachine::Hangup {
            self.end(EndCause::Machine, now);
            return;
        }
        if run.holding() {
            run.hold_deadline = None;
            if machine && on_machine == OnMachine::LeaveMessage {
                // Wait for the beep (or the greeting's end); nothing of the greeting goes to the
                // agent.
                self.preroll.clear();
                return;
            }
            run.released = true;
            let overrides = AgentOverrides {
                first_message: None,
                dynamic_variables: vec![("answered_by".into(), verdict.as_str().into())],
            };
            self.connect_agent_with(Some(overrides), now);
        } else {
            let text = crate::amd::verdict_update(verdict);
            self.amd_tell_agent(text);
        }
    }

    /// Hold mode: no verdict within `max_hold`: connect the agent as `unknown`; the detector
    /// goes on and a later verdict is handled as in detect mode.
    fn amd_hold_timeout(&mut self, now: Instant) {
        let Some(run) = self.amd.as_mut() else { return };
        run.hold_deadline = None;
        if !run.holding() {
            return;
        }
        run.released = true;
        tracing::info!("answering-machine detection: no verdict within max_hold, agent connected");
        let overrides = AgentOverrides {
            first_message: None,
            dynamic_variables: vec![("answered_by".into(), "unknown".into())],
        };
        self.connect_agent_with(Some(overrides), now);
    }

    /// The beep sounded (or the greeting ended): the message may start.
    fn amd_message_time(&mut self, now: Instant) {
        let Some(run) = self.amd.as_mut() else { return };
        if run.verdict != Some(crate::amd::Verdict::Machine)
            || run.settings.on_machine != OnMachine::LeaveMessage
            || run.leaving_message
            || run.message_told
        {
            return;
        }
        let message = run.settings.message.clone();
        if run.holding() {
            run.leaving_message = true;
            run.released = true;
            self.preroll.clear();
            let started = self.wall_ms(now);
            if let Some(r) = self.record.amd.as_mut() {
                r.message_started_ms = Some(started);
            }
            self.actions.push_back(CallAction::RecordChanged);
            let overrides = AgentOverrides {
                first_message: (!message.is_empty()).then_some(message),
                dynamic_variables: vec![("answered_by".into(), "machine".into())],
            };
            self.connect_agent_with(Some(overrides), now);
        } else {
            run.message_told = true;
            self.amd_tell_agent(format!(
                "The voicemail greeting is over and its beep has sounded: leave this message \
                 now, then end the call: {message}"
            ));
        }
    }

    fn amd_tell_agent(&mut self, text: String) {
        if self.agent == AgentState::Connected {
            self.push_agent(AgentAction::ContextualUpdate {
                text,
                context_id: "amd".into(),
            });
        } else if let Some(run) = self.amd.as_mut() {
            run.pending_update = Some(text);
        }
    }
}

/// Pairs what the jitter buffer played out (the phone) with what was sent to the phone (the
/// agent) tick by tick. The two run on their own 20 ms schedules: the frames sent since the last
/// uplink tick wait in `sent` (a few at most) and are paired with the next phone frames, so the
/// channels are aligned within one frame; a tick with nothing sent records silence. Fixed
/// capacities: no allocation per frame once running.
#[derive(Debug)]
struct RecTap {
    sent: VecDeque<[u8; FRAME]>,
    out: VecDeque<RecFrame>,
}

/// Sent frames kept waiting for a phone frame (more: the oldest is dropped, the pacer caught up
/// while the jitter buffer did not).
const REC_SENT_MAX: usize = 4;
/// Stereo frames kept for the runner (it drains them after every input).
const REC_OUT_MAX: usize = 64;

impl Default for RecTap {
    fn default() -> Self {
        RecTap {
            sent: VecDeque::with_capacity(REC_SENT_MAX + 1),
            out: VecDeque::with_capacity(REC_OUT_MAX + 1),
        }
    }
}

impl RecTap {
    fn sent(&mut self, frame: [u8; FRAME]) {
        if self.sent.len() == REC_SENT_MAX {
            self.sent.pop_front();
        }
        self.sent.push_back(frame);
    }

    /// The last frame sent was replaced before it left (late agent audio): record that one.
    fn replace_last(&mut self, frame: [u8; FRAME]) {
        match self.sent.back_mut() {
            Some(last) => *last = frame,
            None => self.sent(frame),
        }
    }

    fn played(&mut self, phone: &[u8; FRAME], silence: u8) {
        let agent = self.sent.pop_front().unwrap_or([silence; FRAME]);
        if self.out.len() == REC_OUT_MAX {
            self.out.pop_front();
        }
        self.out.push_back(RecFrame {
            phone: *phone,
            agent,
        });
    }
}
