//! The call record: everything known about a call, kept up to date at every state change so the
//! service can persist it as it goes (a crash loses nothing already known).
//!
//! Times are wall-clock milliseconds since the Unix epoch, derived from the call's injected
//! [`WallClock`](trunkline_media::rtcp::WallClock) — the record is built without reading a clock.

use serde::{Deserialize, Serialize};

/// Why a call ended. Stable snake_case names: they are stored, exported as metric labels and
/// shown by the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndCause {
    /// The phone side sent BYE.
    RemoteHangup,
    /// Inbound: the caller cancelled before we answered.
    RemoteCancel,
    /// The agent ended the conversation (`end_call`, close 1000) and its last words were played.
    AgentEnded,
    /// The agent conversation failed (error, close code other than 1000, socket lost).
    AgentError {
        /// The typed reason, as text.
        detail: String,
    },
    /// The agent could not be reached at all.
    AgentConnectFailed {
        /// What failed.
        detail: String,
    },
    /// No RTP from the phone side for the configured time.
    RtpTimeout,
    /// The configured maximum call duration was reached.
    MaxDuration,
    /// Hung up through the API.
    ApiHangup,
    /// The gateway shut down.
    Shutdown,
    /// The callee was busy (486, 600).
    Busy {
        /// SIP status.
        status: u16,
    },
    /// Nobody answered: we cancelled after the ring timeout, or the trunk said 408/480/487.
    NoAnswer {
        /// SIP status, if the trunk sent one.
        status: Option<u16>,
    },
    /// The trunk rejected our credentials (401/407 after we authenticated, or 403).
    AuthFailed {
        /// SIP status.
        status: u16,
    },
    /// Any other final failure from the trunk.
    Rejected {
        /// SIP status.
        status: u16,
        /// Reason phrase (and `X-Twilio-Error` when present).
        reason: String,
    },
    /// The call was handed to another destination with REFER.
    Transferred,
    /// The SDP could not be negotiated (488) or media could not be set up.
    MediaFailed {
        /// What failed.
        detail: String,
    },
    /// The gateway stopped without ending the call (SIGKILL, crash, power loss); found still
    /// open in the records at the next start. Its end time is unknown.
    GatewayRestart,
    /// The agent stopped answering: no pong to our WebSocket pings, or our writes blocked, for
    /// the configured stall timeout (`agent.stall_timeout_secs`).
    AgentTimeout,
    /// Inbound: our 200 OK was never ACKed within 64·T1 (RFC 3261 §13.3.1.4); the SIP layer sent
    /// BYE.
    NoAck,
    /// Answering-machine detection heard a machine and `amd.on_machine = "hangup"`.
    Machine,
}

impl EndCause {
    /// The Twilio-style final status of the call: `completed`, `busy`, `no-answer`, `failed`,
    /// `canceled`.
    pub fn status(&self, answered: bool) -> &'static str {
        match self {
            EndCause::Busy { .. } => "busy",
            EndCause::NoAnswer { .. } => "no-answer",
            EndCause::RemoteCancel => "canceled",
            // The dialog was never confirmed: the caller did not complete the call.
            EndCause::NoAck => "failed",
            EndCause::ApiHangup | EndCause::Shutdown if !answered => "canceled",
            _ if answered => "completed",
            _ => "failed",
        }
    }

    /// A short stable label (for metrics).
    pub fn label(&self) -> &'static str {
        match self {
            EndCause::RemoteHangup => "remote_hangup",
            EndCause::RemoteCancel => "remote_cancel",
            EndCause::AgentEnded => "agent_ended",
            EndCause::AgentError { .. } => "agent_error",
            EndCause::AgentConnectFailed { .. } => "agent_connect_failed",
            EndCause::RtpTimeout => "rtp_timeout",
            EndCause::MaxDuration => "max_duration",
            EndCause::ApiHangup => "api_hangup",
            EndCause::Shutdown => "shutdown",
            EndCause::Busy { .. } => "busy",
            EndCause::NoAnswer { .. } => "no_answer",
            EndCause::AuthFailed { .. } => "auth_failed",
            EndCause::Rejected { .. } => "rejected",
            EndCause::Transferred => "transferred",
            EndCause::MediaFailed { .. } => "media_failed",
            EndCause::GatewayRestart => "gateway_restart",
            EndCause::AgentTimeout => "agent_timeout",
            EndCause::NoAck => "no_ack",
            EndCause::Machine => "machine",
        }
    }
}

/// Wall-clock milestones, milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamps {
    /// The call was created (HTTP trigger or INVITE received).
    pub created_ms: Option<u64>,
    /// Outbound: the INVITE was handed to the SIP layer.
    pub invite_ms: Option<u64>,
    /// The first 180/183 (outbound) or our 180 (inbound).
    pub ringing_ms: Option<u64>,
    /// The call was answered (200 OK sent or received).
    pub answered_ms: Option<u64>,
    /// The agent conversation started (`conversation_initiation_metadata`).
    pub agent_connected_ms: Option<u64>,
    /// The first RTP packet carrying agent audio was sent.
    pub first_agent_audio_ms: Option<u64>,
    /// The call ended.
    pub ended_ms: Option<u64>,
}

/// One direction's audio statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioStats {
    /// RTP packets.
    pub packets: u64,
    /// Packets lost (RFC 3550 cumulative, uplink only).
    pub lost: i64,
    /// RFC 3550 interarrival jitter in ms (uplink only).
    pub jitter_ms: f64,
    /// Packets that arrived too late to play (uplink only).
    pub late: u64,
    /// Frames concealed or played as silence for lack of audio (uplink: jitter-buffer underruns).
    pub underruns: u64,
    /// Samples the jitter buffer skipped to shrink its depth (quiet frames; uplink only).
    #[serde(default)]
    pub dropped_samples: u64,
    /// Of `dropped_samples`, those skipped without the quiet check (a burst over the jitter
    /// buffer's maximum delay, or the last resort after 10 s too deep): audio that may have been
    /// speech (uplink only).
    #[serde(default)]
    pub dropped_forced_samples: u64,
    /// 20 ms frames of audio (downlink: agent speech frames sent).
    pub audio_frames: u64,
    /// 20 ms frames of comfort silence (downlink).
    pub silence_frames: u64,
    /// Bytes of agent audio flushed by interruptions (downlink).
    pub flushed_bytes: u64,
    /// Audio chunks exchanged with the agent (uplink: `user_audio_chunk` sent; downlink: `audio`
    /// events received).
    pub agent_messages: u64,
}

/// A DTMF digit seen or sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfRecord {
    /// The key.
    pub digit: char,
    /// When (Unix ms).
    pub at_ms: u64,
    /// `received` from the phone or `sent` by the agent's `send_dtmf` tool.
    pub direction: String,
}

/// One line of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// `agent` or `user`.
    pub role: String,
    /// What was said (for the agent, corrected to what was actually heard after a barge-in).
    pub text: String,
    /// The agent protocol's turn id.
    pub event_id: Option<i64>,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
}

/// A line of the conversation handed out as it comes ([`crate::core::Call::spill_transcript`]):
/// its place in the conversation and the entry. A later line with the same `seq` replaces it
/// (the agent's response corrected to what was heard before a barge-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    /// 0 for the first line of the call, then 1, 2, …
    pub seq: u32,
    /// The line.
    pub entry: TranscriptEntry,
}

/// What a call leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Our id for the call (`CA…`-like).
    pub call_sid: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Caller (E.164 or URI).
    pub from: String,
    /// Callee (E.164 or URI).
    pub to: String,
    /// The current state (`initiated`, `ringing`, `in-progress`, `ending`, `completed`, `busy`,
    /// `no-answer`, `failed`, `canceled`).
    pub status: String,
    /// The agent's `conversation_id`, once known.
    pub conversation_id: Option<String>,
    /// The SIP Call-ID of the dialog.
    pub sip_call_id: Option<String>,
    /// Milestones.
    pub timestamps: Timestamps,
    /// The last final SIP status seen on the INVITE (200, 486, …).
    pub sip_status: Option<u16>,
    /// Why the call ended.
    pub end_cause: Option<EndCause>,
    /// How the agent conversation ended (close code and typed reason), if it did.
    pub agent_close: Option<String>,
    /// The agent service's last WebSocket round-trip estimate (`ping_ms`).
    #[serde(default)]
    pub agent_ping_ms: Option<f64>,
    /// Audio from the phone to the agent.
    pub uplink: AudioStats,
    /// Audio from the agent to the phone.
    pub downlink: AudioStats,
    /// Barge-ins.
    pub interruptions: u64,
    /// DTMF both ways.
    pub dtmf: Vec<DtmfRecord>,
    /// The conversation. A call that hands its lines out as they come
    /// ([`crate::core::Call::spill_transcript`]) keeps none here: the store that took them fills
    /// the final record.
    pub transcript: Vec<TranscriptEntry>,
    /// Client tool calls handled by the gateway (name → outcome).
    pub tool_calls: Vec<ToolCallRecord>,
    /// Answering-machine detection: who answered, when it was decided, the beep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd: Option<crate::amd::AmdRecord>,
    /// Outbound: the trunk address the last INVITE went to (the one that answered, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk_target: Option<String>,
    /// Outbound: how many trunk addresses were tried (RFC 3263 failover; 0 before the INVITE).
    #[serde(default)]
    pub trunk_attempts: u32,
    /// How the phone leg's media was protected.
    #[serde(default)]
    pub media_security: MediaSecurity,
    /// The call's recording (`[recording]`), when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::RecordingRecord>,
}

/// Whether the phone leg's media was encrypted (SDES-SRTP, RFC 4568) and with what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSecurity {
    /// True when RTP/RTCP were SRTP/SRTCP (set at the first negotiation; a later plain re-offer
    /// clears it).
    pub encrypted: bool,
    /// The crypto suite (`AES_CM_128_HMAC_SHA1_80`, `AES_CM_128_HMAC_SHA1_32`) when encrypted.
    pub suite: Option<String>,
    /// SRTP/SRTCP packets dropped because they failed authentication or the replay check.
    pub auth_failures: u64,
    /// Times the keys changed mid-call (a re-INVITE with a new key).
    pub rekeys: u64,
}

/// A client tool call the gateway executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// Tool name.
    pub name: String,
    /// The result sent back.
    pub result: String,
    /// Whether it was an error.
    pub is_error: bool,
}

impl CallRecord {
    /// A fresh record.
    pub fn new(call_sid: String, direction: &str, from: String, to: String) -> Self {
        CallRecord {
            call_sid,
            direction: direction.to_owned(),
            from,
            to,
            status: "initiated".to_owned(),
            conversation_id: None,
            sip_call_id: None,
            timestamps: Timestamps::default(),
            sip_status: None,
            end_cause: None,
            agent_close: None,
            agent_ping_ms: None,
            uplink: AudioStats::default(),
            downlink: AudioStats::default(),
            interruptions: 0,
            dtmf: Vec::new(),
            transcript: Vec::new(),
            tool_calls: Vec::new(),
            amd: None,
            trunk_target: None,
            trunk_attempts: 0,
            media_security: MediaSecurity::default(),
            recording: None,
        }
    }

    /// True once the call has ended.
    pub fn is_final(&self) -> bool {
        self.end_cause.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_status_follows_cause_and_answer() {
        assert_eq!(EndCause::Busy { status: 486 }.status(false), "busy");
        assert_eq!(
            EndCause::NoAnswer { status: None }.status(false),
            "no-answer"
        );
        assert_eq!(EndCause::RemoteHangup.status(true), "completed");
        assert_eq!(EndCause::ApiHangup.status(false), "canceled");
        assert_eq!(EndCause::ApiHangup.status(true), "completed");
        assert_eq!(EndCause::NoAck.status(true), "failed");
        assert_eq!(EndCause::NoAck.label(), "no_ack");
        assert_eq!(EndCause::AgentTimeout.status(true), "completed");
        assert_eq!(EndCause::AgentTimeout.label(), "agent_timeout");
        assert_eq!(
            EndCause::Rejected {
                status: 503,
                reason: "x".into()
            }
            .status(false),
            "failed"
        );
    }

    #[test]
    fn record_round_trips_as_json() {
        let mut r = CallRecord::new("CA1".into(), "outbound", "+1".into(), "+2".into());
        r.end_cause = Some(EndCause::AgentError {
            detail: "lost".into(),
        });
        let json = serde_json::to_string(&r).expect("serialize");
        assert!(json.contains(r#""kind":"agent_error""#), "{json}");
        let back: CallRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
    }
}
