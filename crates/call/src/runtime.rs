//! The thin tokio task around one [`Call`]: it owns the call's RTP/RTCP sockets, the agent
//! connection and the clock, and moves bytes and events between them and the sans-IO core.
//!
//! The SIP dialog is not owned here: the service's SIP stack reports outcomes on
//! [`CallIo::sip_events`] and receives commands on [`CallIo::sip_actions`], so one stack serves
//! every call and this task never blocks on signalling.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tracing::{Instrument, debug, info, trace, warn};
use trunkline_agent::{
    AgentConfig, AgentEvent, AgentEvents, AgentHandle, ConnectError, ToolRegistry,
};
use trunkline_media::g711::G711;
use trunkline_media::session::PacketKind;

pub mod event_wake;
pub mod pacing;
pub mod rtp_socket;
pub mod send_thread;
pub mod sip_task;

use self::event_wake::EventWake;
use self::pacing::{PacingHistogram, SendClock, TickStats};
use self::rtp_socket::{RTP_POLL, RtpSocket};
use self::send_thread::{RtpSendThread, Stream};
use self::sip_task::SipLink;
use crate::core::{AgentAction, Call, CallAction, SipEvent};
use crate::record::{CallRecord, EndCause, TranscriptLine};
use crate::recording::Recorder;
use crate::recording::{RecordingFormat, RecordingRecord, RecordingWriter};

/// Commands from the service to a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Hang up with this cause (API hang-up, shutdown).
    Hangup(EndCause),
}

/// Receives a call's record snapshots (one sink for all calls: no channel or task per call).
pub type RecordSink = std::sync::Arc<dyn Fn(CallRecord) + Send + Sync>;

/// Receives the calls' transcript lines as they come (the call's sid, the line); one sink for all
/// calls, called on the call's task: it must not block.
pub type TranscriptSink = std::sync::Arc<dyn Fn(&str, TranscriptLine) + Send + Sync>;

/// Everything a running call talks to.
pub struct CallIo {
    /// The call's RTP socket (its port is in our SDP).
    pub rtp: UdpSocket,
    /// The RTCP socket (RTP port + 1), unless RTCP is multiplexed or disabled.
    pub rtcp: Option<UdpSocket>,
    /// SIP outcomes for this call (boxed, like the commands below: a tokio channel allocates 32
    /// slots at a time, so the slot size is memory held by every call).
    pub sip_events: mpsc::UnboundedReceiver<Box<SipEvent>>,
    /// SIP commands from this call.
    pub sip: SipLink,
    /// Service commands.
    pub commands: mpsc::UnboundedReceiver<Box<CallCommand>>,
    /// How to reach the agent (URL, credentials, `conversation_initiation_client_data`).
    pub agent: AgentConfig,
    /// Where record snapshots go at every state change (persisted by the service). Called on
    /// the call's task: it must not block (the service takes a short lock and queues the write).
    pub records: Option<RecordSink>,
    /// Where the transcript goes line by line ([`Call::spill_transcript`]); `None` keeps it in
    /// the record.
    pub transcripts: Option<TranscriptSink>,
    /// Where the intervals between this call's RTP sends are counted (shared by all calls).
    pub pacing: Option<std::sync::Arc<PacingHistogram>>,
    /// Where the lateness of this call's media ticks, and the send slots it missed, are
    /// counted (shared by all calls).
    pub ticks: Option<std::sync::Arc<TickStats>>,
    /// Where RTP is sent from at its exact time (see [`send_thread`]); `None` sends it from
    /// this task as soon as it is built.
    pub send_thread: Option<RtpSendThread>,
    /// Record the call (the call's config must have `record_audio`).
    pub recording: Option<RecordingSetup>,
}

/// Where and how a call is recorded.
#[derive(Debug, Clone)]
pub struct RecordingSetup {
    /// The file to write (created by the writer thread at the first frame, after answer).
    pub path: std::path::PathBuf,
    /// The writer thread shared by all recordings.
    pub writer: RecordingWriter,
    /// The consent is the agent's first message: played once the agent is connected.
    pub consent_by_agent: bool,
    /// WAV or Opus.
    pub format: RecordingFormat,
}

impl std::fmt::Debug for CallIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallIo")
            .field("rtp", &self.rtp)
            .field("agent", &self.agent)
            .field("records", &self.records.is_some())
            .field("transcripts", &self.transcripts.is_some())
            .finish_non_exhaustive()
    }
}

type Connecting = JoinHandle<Result<trunkline_agent::AgentSession, ConnectError>>;

/// What woke the call's task: its media tick, or one of its event sources.
enum Woke {
    Tick,
    Rtcp(io::Result<()>),
    Sip(Option<Box<SipEvent>>),
    Command(Option<Box<CallCommand>>),
    Connected(Result<Result<trunkline_agent::AgentSession, ConnectError>, tokio::task::JoinError>),
    Agent(Option<AgentEvent>),
}

/// Late agent audio may replace a queued silence packet until this long before its send slot
/// (the hand-over itself takes microseconds; a miss only delays the audio by one tick).
const LATE_AUDIO_MARGIN: Duration = Duration::from_micros(500);

/// The largest datagram built or read (RTP and RTCP stay well below a 1,500-byte MTU).
const DATAGRAM_MAX: usize = 2048;
/// RTCP datagrams read per wake-up at most (a compound report arrives every ~5 s).
const RTCP_READS: usize = 8;

/// Run the call to its end and return the final record.
///
/// The call is kept boxed: an async state machine stores its arguments and locals inline, so a
/// `Call` (about 4 KB) passed by value through the task's layers would be copied into each of
/// them (this alone was ~16 KB of every call's task).
pub async fn run(call: Box<Call>, io: Box<CallIo>) -> CallRecord {
    let span = tracing::info_span!("call", call_sid = %call.record().call_sid);
    run_inner(call, io).instrument(span).await
}

#[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
async fn run_inner(mut call: Box<Call>, io: Box<CallIo>) -> CallRecord {
    let CallIo {
        rtp,
        rtcp,
        mut sip_events,
        sip,
        mut commands,
        agent: agent_cfg,
        records,
        transcripts,
        pacing,
        ticks,
        send_thread,
        recording,
    } = *io;
    if transcripts.is_some() {
        call.spill_transcript();
    }
    let mut recorder: Option<Recorder> = None;
    let mut send_clock = SendClock::default();
    let mut rtp = match RtpSocket::new(rtp) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "rtp socket unusable");
            let detail = format!("rtp socket: {e}");
            call.hangup(EndCause::MediaFailed { detail }, std::time::Instant::now());
            None
        }
    };
    // With a send thread, RTP built at a tick leaves at that tick's scheduled time + the
    // thread's delay, never before a packet built earlier.
    let paced = send_thread.and_then(|th| {
        let stream = Stream::new(rtp.as_ref()?.shared());
        Some((th, stream))
    });
    let mut tick_at: Option<std::time::Instant> = None;
    let mut last_send_at: Option<std::time::Instant> = None;
    // The send thread's id of the last RTP packet handed over (for late audio).
    let mut last_sent_id: Option<u64> = None;
    let mut agent: Option<AgentHandle> = None;
    let mut agent_events: Option<AgentEvents> = None;
    let mut connecting: Option<Connecting> = None;
    let mut sip_open = true;
    let mut cmd_open = true;
    // When the RTP socket is read next if the call has media but no tick of its own (early
    // media before the answer): see `RtpSocket`.
    let mut rtp_poll: Option<std::time::Instant> = None;
    let far = TokioInstant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far);
    tokio::pin!(sleep);
    // Every source but the tick is polled with this waker, and only after it fired.
    let events = EventWake::new();
    let events_waker = Waker::from(Arc::clone(&events));
    info!(direction = call.direction().as_str(), "call started");

    loop {
        let now = std::time::Instant::now();
        // Outputs first: the datagrams due (the paced RTP frame goes out before anything
        // else is done at this tick), then the actions.
        {
            // The datagram buffer lives on the stack, in a block of its own: only while
            // datagrams are built, never across an await (kept in the call's state, it would
            // be 2 KiB per call).
            let mut buf = [0u8; DATAGRAM_MAX];
            loop {
                while let Some(t) = call.poll_transmit(now, &mut buf) {
                    let res = match (t.kind, rtcp.as_ref(), paced.as_ref()) {
                        (PacketKind::Rtcp, Some(s), _) => {
                            s.try_send_to(&buf[..t.len], t.destination)
                        }
                        (PacketKind::Rtp, _, Some((th, _))) if t.replaces_previous => {
                            // Late agent audio for the packet still waiting for its send time.
                            let replaced =
                                last_sent_id.is_some_and(|id| th.replace(id, &buf[..t.len]));
                            if !replaced {
                                call.late_audio_missed();
                            }
                            trace!(replaced, "late agent audio swapped in");
                            Ok(t.len)
                        }
                        (PacketKind::Rtp, _, Some((th, stream))) => {
                            let at = tick_at.unwrap_or(now) + th.delay();
                            let at = last_send_at.map_or(at, |last| at.max(last));
                            last_send_at = Some(at);
                            last_sent_id =
                                Some(th.send_at(at, stream, &buf[..t.len], t.destination));
                            let slot = th.slot(at);
                            if slot < now
                                && let Some(s) = ticks.as_deref()
                            {
                                // Built after its send time: it leaves at once, late.
                                s.missed_slot();
                            }
                            // Until shortly before the slot, late audio may still replace it.
                            if let Some(until) = slot.checked_sub(LATE_AUDIO_MARGIN) {
                                call.allow_late_audio_until(until);
                            }
                            Ok(t.len)
                        }
                        _ => match rtp.as_ref() {
                            Some(s) => {
                                let res = s.send_to(&buf[..t.len], t.destination);
                                if t.kind == PacketKind::Rtp
                                    && let Some(h) = pacing.as_deref()
                                {
                                    send_clock.sent(std::time::Instant::now(), h);
                                }
                                res
                            }
                            None => Ok(0),
                        },
                    };
                    if let Err(e) = res
                        && e.kind() != io::ErrorKind::WouldBlock
                    {
                        debug!(error = %e, "rtp send failed");
                    }
                }
                while let Some(f) = call.poll_recording() {
                    if recorder.is_none()
                        && let (Some(setup), Some(law)) = (recording.as_ref(), call.law())
                    {
                        recorder = start_recorder(setup, law, &mut call);
                    }
                    if let Some(r) = recorder.as_ref() {
                        r.push(&f);
                    }
                }
                if !call.has_pending_actions() {
                    break;
                }
                while let Some(action) = call.poll_action() {
                    match action {
                        CallAction::Sip(a) => {
                            debug!(?a, "sip action");
                            if !sip.send(a) {
                                warn!("sip stack gone");
                            }
                        }
                        CallAction::Agent(AgentAction::Connect) => {
                            let cfg = agent_cfg.clone();
                            connecting = Some(tokio::spawn(trunkline_agent::connect(
                                cfg,
                                ToolRegistry::new(),
                            )));
                            // A new source: poll it.
                            events.fire();
                        }
                        CallAction::Agent(AgentAction::ConnectWith(overrides)) => {
                            let cfg = with_overrides(&agent_cfg, overrides);
                            connecting = Some(tokio::spawn(trunkline_agent::connect(
                                cfg,
                                ToolRegistry::new(),
                            )));
                            events.fire();
                        }
                        CallAction::Agent(AgentAction::Close) => {
                            if let Some(c) = connecting.take() {
                                c.abort();
                            }
                            if let Some(h) = agent.take() {
                                h.close();
                            }
                        }
                        CallAction::Agent(a) => {
                            if let Some(h) = agent.as_ref() {
                                send_to_agent(h, a);
                            }
                        }
                        CallAction::RecordChanged => {
                            if let Some(sink) = records.as_ref() {
                                call.refresh_stats();
                                sink(call.record().clone());
                            }
                        }
                        CallAction::Transcript(line) => {
                            if let Some(sink) = transcripts.as_ref() {
                                sink(&call.record().call_sid, *line);
                            }
                        }
                    }
                }
                // Acting may have finished a drain (agent ended → BYE): transmit and act again.
            }
        }
        tick_at = None;
        if call.is_done() {
            break;
        }
        let call_deadline = call.poll_timeout();
        if call.media().is_some() {
            if call_deadline.is_some_and(|t| t <= now + RTP_POLL) {
                // The call's own tick reads the socket.
                rtp_poll = None;
            } else if rtp_poll.is_none() {
                rtp_poll = Some(now + RTP_POLL);
            }
        }
        let deadline = [call_deadline, rtp_poll]
            .into_iter()
            .flatten()
            .min()
            .map_or(far, TokioInstant::from_std);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }

        // The tick first (its packet is due), then the event sources, in this order, polled
        // only when one of them woke the task (`EventWake`).
        let woke = std::future::poll_fn(|cx| {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Tick);
            }
            if !events.take_fired() {
                return Poll::Pending;
            }
            events.register(cx.waker());
            let ecx = &mut Context::from_waker(&events_waker);
            let woke = poll_sources(
                ecx,
                rtcp.as_ref(),
                sip_open.then_some(&mut sip_events),
                cmd_open.then_some(&mut commands),
                connecting.as_mut(),
                agent_events.as_mut(),
            );
            if woke.is_ready() {
                // Another source may be ready too: poll them all again next time.
                events.fire();
            }
            woke
        })
        .await;
        match woke {
            Woke::Tick => {
                let now = std::time::Instant::now();
                // The scheduled time of this tick (the wake-up itself may be late).
                tick_at = Some(sleep.deadline().into_std());
                if call.media().is_some()
                    && let (Some(s), Some(at)) = (ticks.as_deref(), tick_at)
                {
                    s.tick(at, now);
                }
                if call.media().is_some()
                    && let Some(rtp) = rtp.as_mut()
                {
                    rtp_poll = None;
                    rtp.drain(now, |datagram, from, at| {
                        call.handle_rtp(datagram, from, at);
                    });
                }
                call.handle_timeout(now);
            }
            Woke::Rtcp(r) => {
                if r.is_ok()
                    && let Some(s) = rtcp.as_ref()
                {
                    let mut buf = [0u8; DATAGRAM_MAX];
                    // A few per wake-up: a flood on the port cannot hold the call's task.
                    for _ in 0..RTCP_READS {
                        let Ok((n, from)) = s.try_recv_from(&mut buf) else {
                            break;
                        };
                        call.handle_rtcp(&buf[..n], from, std::time::Instant::now());
                    }
                }
            }
            Woke::Sip(ev) => match ev {
                Some(ev) => call.handle_sip(*ev, std::time::Instant::now()),
                None => sip_open = false,
            },
            Woke::Command(cmd) => match cmd.map(|c| *c) {
                Some(CallCommand::Hangup(cause)) => call.hangup(cause, std::time::Instant::now()),
                None => cmd_open = false,
            },
            Woke::Connected(res) => {
                connecting = None;
                let now = std::time::Instant::now();
                match res {
                    Ok(Ok(session)) => {
                        let event = AgentEvent::Metadata {
                            conversation_id: session.conversation_id().to_owned(),
                            input_format: session.input_format(),
                            output_format: session.output_format(),
                        };
                        let (h, ev) = session.into_parts();
                        agent = Some(h);
                        agent_events = Some(ev);
                        call.handle_agent(event, now);
                    }
                    Ok(Err(e)) => call.handle_agent_connect_failed(e.to_string(), now),
                    Err(e) => call.handle_agent_connect_failed(e.to_string(), now),
                }
            }
            Woke::Agent(ev) => match ev {
                Some(ev) => call.handle_agent(ev, std::time::Instant::now()),
                None => agent_events = None,
            },
        }
    }
    if let Some(c) = connecting.take() {
        c.abort();
    }
    // Every call end closes the agent connection (bounded close handshake; idempotent).
    if let Some(h) = agent.take() {
        h.close();
    }
    call.refresh_stats();
    let mut record = call.record().clone();
    if let Some(r) = recorder.take() {
        let summary = tokio::task::spawn_blocking(move || r.finish())
            .await
            .ok()
            .flatten();
        if let (Some(s), Some(rec)) = (summary, record.recording.as_mut()) {
            rec.duration_ms = s.duration_ms;
        }
    }
    if let (Some(rec), Some(setup)) = (record.recording.as_mut(), recording.as_ref()) {
        rec.consent_played |= setup.consent_by_agent && record.conversation_id.is_some();
    }
    info!(
        status = %record.status,
        cause = record.end_cause.as_ref().map_or("none", |c| c.label()),
        "call ended"
    );
    record
}

/// The call's first recorded frame: start the writer and say where the file is in the record.
fn start_recorder(setup: &RecordingSetup, law: G711, call: &mut Call) -> Option<Recorder> {
    match setup.writer.begin(setup.path.clone(), setup.format, law) {
        Some(r) => {
            info!(path = %setup.path.display(), "recording");
            call.set_recording(RecordingRecord {
                path: setup.path.to_string_lossy().into_owned(),
                format: setup.format.as_str().into(),
                duration_ms: 0,
                consent_played: false,
            });
            Some(r)
        }
        None => {
            warn!("recording not started: the writer's queue is full");
            None
        }
    }
}

fn send_to_agent(h: &AgentHandle, a: AgentAction) {
    let res = match a {
        AgentAction::Audio(b) => h.send_audio(b),
        AgentAction::UserMessage(t) => h.send_user_message(t),
        AgentAction::ContextualUpdate { text, context_id } => {
            h.send_contextual_update(text, Some(context_id))
        }
        AgentAction::ToolResult {
            tool_call_id,
            result,
            is_error,
        } => h.send_tool_result(tool_call_id, result, is_error),
        AgentAction::Connect | AgentAction::ConnectWith(_) | AgentAction::Close => Ok(()),
    };
    if res.is_err() {
        debug!("agent already closed");
    }
}

/// The call's agent config with per-call overrides (answering-machine detection): extra dynamic
/// variables, and a first message whose `{{variables}}` are filled from the call's.
fn with_overrides(cfg: &AgentConfig, o: crate::amd::AgentOverrides) -> AgentConfig {
    use trunkline_agent::protocol::{AgentOverride, ConversationConfigOverride, DynamicVariable};
    let mut cfg = cfg.clone();
    let init = &mut cfg.initiation;
    for (k, v) in o.dynamic_variables {
        init.dynamic_variables.insert(k, DynamicVariable::String(v));
    }
    if let Some(message) = o.first_message {
        let vars = init.dynamic_variables.iter().map(|(k, v)| {
            let text = match v {
                DynamicVariable::String(s) => s.clone(),
                DynamicVariable::Int(i) => i.to_string(),
                DynamicVariable::Float(f) => f.to_string(),
                DynamicVariable::Bool(b) => b.to_string(),
            };
            (k.as_str(), text)
        });
        let message = crate::amd::render_message(&message, vars);
        let over = init
            .conversation_config_override
            .get_or_insert_with(ConversationConfigOverride::default);
        over.agent
            .get_or_insert_with(AgentOverride::default)
            .first_message = Some(message);
    }
    cfg
}

/// Poll the call's event sources (those it has: `None` for one it has not, or no longer), in
/// order; the first one ready wins.
fn poll_sources(
    cx: &mut Context<'_>,
    rtcp: Option<&UdpSocket>,
    sip_events: Option<&mut mpsc::UnboundedReceiver<Box<SipEvent>>>,
    commands: Option<&mut mpsc::UnboundedReceiver<Box<CallCommand>>>,
    connecting: Option<&mut Connecting>,
    agent_events: Option<&mut AgentEvents>,
) -> Poll<Woke> {
    if let Some(Poll::Ready(r)) = rtcp.map(|s| s.poll_recv_ready(cx)) {
        return Poll::Ready(Woke::Rtcp(r));
    }
    if let Some(Poll::Ready(ev)) = sip_events.map(|r| r.poll_recv(cx)) {
        return Poll::Ready(Woke::Sip(ev));
    }
    if let Some(Poll::Ready(cmd)) = commands.map(|r| r.poll_recv(cx)) {
        return Poll::Ready(Woke::Command(cmd));
    }
    if let Some(Poll::Ready(res)) = connecting.map(|c| Pin::new(c).poll(cx)) {
        return Poll::Ready(Woke::Connected(res));
    }
    if let Some(Poll::Ready(ev)) = agent_events.map(|r| r.poll_recv(cx)) {
        return Poll::Ready(Woke::Agent(ev));
    }
    Poll::Pending
}
