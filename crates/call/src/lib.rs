//! `trunkline-call`: one call — a SIP dialog, an RTP media session and an agent conversation
//! glued together (ARCHITECTURE.md, "One outbound call, end to end").
//!
//! - [`core`]: the call as a sans-IO state machine. SIP outcomes, agent events, RTP datagrams and
//!   time go in; SIP commands, agent commands and RTP datagrams come out. Barge-in, tool calls,
//!   DTMF, hang-up ordering and the call record live here, tested with virtual time.
//! - [`convert`]: audio between the trunk's G.711 and the agent's formats (µ-law passthrough,
//!   A-law ↔ µ-law, PCM16 at 8–48 kHz), streaming, with state carried across frames.
//! - [`record`]: what a call leaves behind (timestamps, causes, audio stats, DTMF, transcript).

pub mod convert;
pub mod core;
pub mod record;
pub mod runtime;

pub use crate::core::{
    AgentAction, AgentConnectAt, Call, CallAction, CallConfig, CallState, Direction, DtmfMode,
    NegotiatedMedia, SipAction, SipEvent,
};
pub use crate::record::{CallRecord, EndCause};
