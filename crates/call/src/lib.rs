//! `trunkline-call`: one call — a SIP dialog, an RTP media session and an agent conversation
//! glued together (ARCHITECTURE.md, "One outbound call, end to end").
//!
//! - [`core`]: the call as a sans-IO state machine. SIP outcomes, agent events, RTP datagrams and
//!   time go in; SIP commands, agent commands and RTP datagrams come out. Barge-in, tool calls,
//!   DTMF, hang-up ordering and the call record live here, tested with virtual time.
//! - [`convert`]: audio between the trunk's G.711 and the agent's formats (µ-law passthrough,
//!   A-law ↔ µ-law, PCM16 at 8–48 kHz), streaming, with state carried across frames.
//! - [`legs`]: every SIP leg, sans-IO: offer/answer, in-dialog requests, transfer, error
//!   mapping, on top of `trunkline_sip`'s UA; [`runtime::sip_task`] drives it.
//! - [`amd`]: answering-machine detection in a call (hold / detect, on-machine policy) around
//!   `trunkline_media::amd`.
//! - [`record`]: what a call leaves behind (timestamps, causes, audio stats, DTMF, transcript).
//! - [`recording`]: the stereo WAV of a call as the phone heard it, written off the call's path.

pub mod amd;
pub mod convert;
pub mod core;
pub mod legs;
pub mod record;
pub mod recording;
pub mod runtime;

pub use crate::core::{
    AgentAction, AgentConnectAt, Call, CallAction, CallConfig, CallState, Direction, DtmfMode,
    NegotiatedMedia, SipAction, SipEvent, TransferCheck,
};
pub use crate::record::{CallRecord, EndCause};

/// The SIP types a gateway configures calls with (so it depends on `call` alone).
pub mod sip {
    pub use trunkline_sip::auth::Credentials;
    pub use trunkline_sip::message::{HostPort, Uri};
    /// RFC 3263 server location (sans-IO): what the gateway's resolver looks up and in what order.
    pub use trunkline_sip::rfc3263;
    /// Digest algorithms (inbound authentication is configured with them).
    pub mod auth {
        pub use trunkline_sip::auth::Algorithm;
    }
    pub use trunkline_sip::sdp::{Codec, MediaParams};
    pub use trunkline_sip::transaction::{TimerConfig, TransportKind};
    pub use trunkline_sip::transport::{AcceptFilter, TransportStats};
    pub use trunkline_sip::transport::{
        TransportConfig, TransportError, tls_client_config, tls_server_config_from_files,
    };
    pub use trunkline_sip::ua::UaConfig;
}

/// The media types a gateway configures calls with.
pub mod media {
    pub use trunkline_media::g711::G711;
    pub use trunkline_media::jitter::JitterConfig;
    pub use trunkline_media::rtcp::WallClock;
    pub use trunkline_media::session::MediaConfig;
}

/// The agent types a gateway configures calls with.
pub mod agent {
    pub use trunkline_agent::protocol::{
        AgentOverride, ConversationConfigOverride, DynamicVariable,
    };
    pub use trunkline_agent::{AgentConfig, AudioFormat};
}
