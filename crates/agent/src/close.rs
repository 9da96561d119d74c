//! Why a conversation ended: WebSocket close codes and `error` events mapped to typed reasons
//! (ELEVENLABS.md §2.8: 1000 agent ended / max duration, 1002 timeouts and service failures,
//! 1008 invalid message / override / dynamic-variable / auth errors, 1011 unexpected).
//!
//! The `error` event that precedes a close carries the precise `error_type`; when present it wins
//! over the bare close code.

use crate::protocol::ErrorEvent;

/// The typed reason a conversation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Close 1000: the agent ended the conversation (`end_call`).
    AgentEnded,
    /// `max_duration_exceeded`.
    MaxDuration,
    /// 1002 timeouts: `transport_receive_timeout` (no user audio for 60 s), `llm_timeout`,
    /// `asyncio_timeout`, `redis_timeout_error`, or a bare 1002.
    Timeout {
        /// The `error_type`, if an `error` event named one.
        error_type: Option<String>,
    },
    /// 1008: `invalid_message`, `missing_fields`, `value_error`, or a bare 1008 (also auth).
    Invalid {
        /// The server's message.
        message: String,
    },
    /// `override_error`: overrides not enabled for this agent.
    OverrideError {
        /// The server's message.
        message: String,
    },
    /// `missing_dynamic_variable` / `missing_dynamic_variable_transfer`.
    MissingDynamicVariable {
        /// The server's message.
        message: String,
    },
    /// `safety_violation`.
    SafetyViolation,
    /// 1011 or any other server-side failure (LLM/TTS/ASR errors…).
    Internal {
        /// The `error_type`, if any.
        error_type: Option<String>,
        /// The server's message.
        message: String,
    },
    /// We closed the conversation.
    ClientClosed,
    /// The agent stopped answering: no pong to our WebSocket pings (or, from a server that never
    /// answered one, no frame at all), or our writes blocked, for the stall timeout
    /// ([`crate::AgentConfig::stall_timeout`]). We closed the connection.
    AgentTimeout {
        /// Which rule fired.
        detail: String,
    },
    /// The connection dropped without a close frame, or a read/write failed.
    ConnectionLost {
        /// What happened.
        detail: String,
    },
}

/// Everything known about the end of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// The typed reason.
    pub reason: CloseReason,
    /// The WebSocket close code, if a close frame arrived.
    pub code: Option<u16>,
    /// The close frame's reason text.
    pub text: String,
    /// The `error` event received before the close, if any.
    pub error: Option<ErrorEvent>,
}

impl CloseReason {
    /// Maps a server close (code + reason text) and an optional preceding `error` event.
    pub fn from_server(code: Option<u16>, text: &str, error: Option<&ErrorEvent>) -> CloseReason {
        let message = error
            .and_then(|e| e.message.clone().or_else(|| e.reason.clone()))
            .unwrap_or_else(|| text.to_owned());
        if let Some(error_type) = error.and_then(|e| e.error_type.as_deref()) {
            match error_type {
                "max_duration_exceeded" => return CloseReason::MaxDuration,
                "transport_receive_timeout"
                | "llm_timeout"
                | "asyncio_timeout"
                | "redis_timeout_error" => {
                    return CloseReason::Timeout {
                        error_type: Some(error_type.to_owned()),
                    };
                }
                "override_error" => return CloseReason::OverrideError { message },
                "missing_dynamic_variable" | "missing_dynamic_variable_transfer" => {
                    return CloseReason::MissingDynamicVariable { message };
                }
                "invalid_message" | "missing_fields" | "value_error" => {
                    return CloseReason::Invalid { message };
                }
                "safety_violation" => return CloseReason::SafetyViolation,
                _ => {}
            }
        }
        let error_type = error.and_then(|e| e.error_type.clone());
        match code {
            Some(1000) if error_type.is_none() => CloseReason::AgentEnded,
            Some(1002) if error_type.is_none() => CloseReason::Timeout { error_type: None },
            Some(1008) if error_type.is_none() => CloseReason::Invalid { message },
            None => CloseReason::ConnectionLost {
                detail: if message.is_empty() {
                    "closed without a close frame".to_owned()
                } else {
                    message
                },
            },
            Some(_) => CloseReason::Internal {
                error_type,
                message,
            },
        }
    }

    /// True when the agent ended the call on purpose (play out what is queued, then hang up).
    pub fn is_agent_ended(&self) -> bool {
        matches!(self, CloseReason::AgentEnded | CloseReason::MaxDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: &str) -> ErrorEvent {
        ErrorEvent {
            error_type: Some(t.into()),
            message: Some("m".into()),
            ..Default::default()
        }
    }

    #[test]
    fn codes_and_error_types_map() {
        assert_eq!(
            CloseReason::from_server(Some(1000), "", None),
            CloseReason::AgentEnded
        );
        assert_eq!(
            CloseReason::from_server(Some(1002), "No user input", None),
            CloseReason::Timeout { error_type: None }
        );
        assert_eq!(
            CloseReason::from_server(Some(1002), "", Some(&err("transport_receive_timeout"))),
            CloseReason::Timeout {
                error_type: Some("transport_receive_timeout".into())
            }
        );
        assert_eq!(
            CloseReason::from_server(Some(1008), "", Some(&err("missing_dynamic_variable"))),
            CloseReason::MissingDynamicVariable {
                message: "m".into()
            }
        );
        assert_eq!(
            CloseReason::from_server(Some(1008), "", Some(&err("override_error"))),
            CloseReason::OverrideError {
                message: "m".into()
            }
        );
        assert_eq!(
            CloseReason::from_server(Some(1008), "bad", None),
            CloseReason::Invalid {
                message: "bad".into()
            }
        );
        assert!(matches!(
            CloseReason::from_server(Some(1011), "boom", None),
            CloseReason::Internal { .. }
        ));
        assert_eq!(
            CloseReason::from_server(Some(1000), "", Some(&err("max_duration_exceeded"))),
            CloseReason::MaxDuration
        );
        assert!(matches!(
            CloseReason::from_server(None, "", None),
            CloseReason::ConnectionLost { .. }
        ));
    }
}
