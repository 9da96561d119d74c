//! The thin tokio task around one [`Call`]: it owns the call's RTP/RTCP sockets, the agent
//! connection and the clock, and moves bytes and events between them and the sans-IO core.
//!
//! The SIP dialog is not owned here: the service's SIP stack reports outcomes on
//! [`CallIo::sip_events`] and receives commands on [`CallIo::sip_actions`], so one stack serves
//! every call and this task never blocks on signalling.

use std::io;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tracing::{Instrument, debug, info, warn};
use trunkline_agent::{AgentConfig, AgentEvent, AgentHandle, ConnectError, ToolRegistry};
use trunkline_media::session::PacketKind;

pub mod sip;

use self::sip::SipLink;
use crate::core::{AgentAction, Call, CallAction, SipEvent};
use crate::record::{CallRecord, EndCause};

/// Commands from the service to a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCommand {
    /// Hang up with this cause (API hang-up, shutdown).
    Hangup(EndCause),
}

/// Everything a running call talks to.
#[derive(Debug)]
pub struct CallIo {
    /// The call's RTP socket (its port is in our SDP).
    pub rtp: UdpSocket,
    /// The RTCP socket (RTP port + 1), unless RTCP is multiplexed or disabled.
    pub rtcp: Option<UdpSocket>,
    /// SIP outcomes for this call.
    pub sip_events: mpsc::UnboundedReceiver<SipEvent>,
    /// SIP commands from this call.
    pub sip: SipLink,
    /// Service commands.
    pub commands: mpsc::UnboundedReceiver<CallCommand>,
    /// How to reach the agent (URL, credentials, `conversation_initiation_client_data`).
    pub agent: AgentConfig,
    /// Where record snapshots go at every state change (persisted by the service).
    pub records: Option<mpsc::UnboundedSender<CallRecord>>,
}

type Connecting = JoinHandle<Result<trunkline_agent::AgentSession, ConnectError>>;

/// Run the call to its end and return the final record.
pub async fn run(call: Call, io: CallIo) -> CallRecord {
    let span = tracing::info_span!("call", call_sid = %call.record().call_sid);
    run_inner(call, io).instrument(span).await
}

#[allow(clippy::disallowed_methods)] // the I/O layer owns the clock
async fn run_inner(mut call: Call, mut io: CallIo) -> CallRecord {
    let mut agent: Option<AgentHandle> = None;
    let mut agent_events: Option<mpsc::UnboundedReceiver<AgentEvent>> = None;
    let mut connecting: Option<Connecting> = None;
    let mut sip_open = true;
    let mut cmd_open = true;
    let mut out = vec![0u8; 1500];
    let mut rtp_buf = vec![0u8; 2048];
    let mut rtcp_buf = vec![0u8; 1500];
    info!(direction = call.direction().as_str(), "call started");

    loop {
        let now = std::time::Instant::now();
        // Outputs first: actions, then every datagram due.
        while let Some(action) = call.poll_action() {
            match action {
                CallAction::Sip(a) => {
                    debug!(?a, "sip action");
                    if !io.sip.send(a) {
                        warn!("sip stack gone");
                    }
                }
                CallAction::Agent(AgentAction::Connect) => {
                    let cfg = io.agent.clone();
                    connecting = Some(tokio::spawn(trunkline_agent::connect(
                        cfg,
                        ToolRegistry::new(),
                    )));
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
                    if let Some(tx) = io.records.as_ref() {
                        call.refresh_stats();
                        let _ = tx.send(call.record().clone());
                    }
                }
            }
        }
        while let Some(t) = call.poll_transmit(now, &mut out) {
            let sock = match (t.kind, io.rtcp.as_ref()) {
                (PacketKind::Rtcp, Some(s)) => s,
                _ => &io.rtp,
            };
            if let Err(e) = sock.try_send_to(&out[..t.len], t.destination)
                && e.kind() != io::ErrorKind::WouldBlock
            {
                debug!(error = %e, "rtp send failed");
            }
        }
        if call.has_pending_actions() {
            // Sending may have finished a drain (agent ended → BYE): act on it now.
            continue;
        }
        if call.is_done() {
            break;
        }
        let deadline = call
            .poll_timeout()
            .map(TokioInstant::from_std)
            .unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));

        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(deadline) => {
                call.handle_timeout(std::time::Instant::now());
            }
            r = io.rtp.recv_from(&mut rtp_buf) => {
                if let Ok((n, from)) = r {
                    call.handle_rtp(&rtp_buf[..n], from, std::time::Instant::now());
                }
            }
            r = recv_opt(io.rtcp.as_ref(), &mut rtcp_buf) => {
                if let Ok((n, from)) = r {
                    call.handle_rtcp(&rtcp_buf[..n], from, std::time::Instant::now());
                }
            }
            ev = io.sip_events.recv(), if sip_open => match ev {
                Some(ev) => call.handle_sip(ev, std::time::Instant::now()),
                None => sip_open = false,
            },
            cmd = io.commands.recv(), if cmd_open => match cmd {
                Some(CallCommand::Hangup(cause)) => call.hangup(cause, std::time::Instant::now()),
                None => cmd_open = false,
            },
            res = join_opt(&mut connecting), if connecting.is_some() => {
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
            ev = recv_events(&mut agent_events), if agent_events.is_some() => match ev {
                Some(ev) => call.handle_agent(ev, std::time::Instant::now()),
                None => agent_events = None,
            },
        }
    }
    if let Some(c) = connecting.take() {
        c.abort();
    }
    call.refresh_stats();
    let record = call.record().clone();
    info!(
        status = %record.status,
        cause = record.end_cause.as_ref().map_or("none", |c| c.label()),
        "call ended"
    );
    record
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
        AgentAction::Connect | AgentAction::Close => Ok(()),
    };
    if res.is_err() {
        debug!("agent already closed");
    }
}

async fn recv_opt(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, std::net::SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn join_opt(
    c: &mut Option<Connecting>,
) -> Result<Result<trunkline_agent::AgentSession, ConnectError>, tokio::task::JoinError> {
    match c.as_mut() {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn recv_events(rx: &mut Option<mpsc::UnboundedReceiver<AgentEvent>>) -> Option<AgentEvent> {
    match rx.as_mut() {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
