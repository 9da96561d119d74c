//! `trunkline-agent`: the ElevenLabs Conversational AI agent protocol and its WebSocket client.
//!
//! - [`protocol`]: serde types for every message of the contract (ELEVENLABS.md §2.3–2.5), the
//!   `user_audio_chunk` fast path, and the interruption drop rule ([`InterruptionFilter`], §2.7).
//! - [`close`]: close codes and `error` events mapped to a typed [`CloseReason`] (§2.8).
//! - [`client`]: URLs, signed URLs (§2.1), TLS, the handshake (§2.2), one reader and one writer
//!   task per connection, drop-oldest audio back-pressure.
//! - `conn` (private): the state a connection shares between the handle and its tasks, so
//!   `client` → `session` → `conn` point one way.
//! - [`fuzzing`]: entry points of the fuzz targets.
//! - [`session`]: what the call layer uses: [`AgentSession`] / [`AgentHandle`] / [`AgentEvent`],
//!   client tool handlers ([`ToolRegistry`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use trunkline_agent::{AgentConfig, AgentEvent, ToolRegistry, connect};
//! let mut config = AgentConfig::new("agent_123").with_base_url("ws://127.0.0.1:9000");
//! config.initiation.dynamic_variables.insert("customer_name".into(), "Ada".into());
//! let mut session = connect(config, ToolRegistry::new()).await?;
//! session.send_audio(vec![0xffu8; 160])?; // 20 ms of µ-law silence, never blocks
//! while let Some(event) = session.next_event().await {
//!     if let AgentEvent::Closed(c) = event { println!("{:?}", c.reason); break; }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod close;
mod conn;
pub mod fuzzing;
pub mod protocol;
mod read_cap;
pub mod session;
pub mod tls;

pub use client::{AgentConfig, ConnectError, connect, fetch_signed_url};
pub use close::{CloseReason, Closed};
pub use protocol::{AudioFormat, ClientMessage, InterruptionFilter, ServerEvent};
pub use session::{
    AgentEvent, AgentEvents, AgentHandle, AgentSession, AgentStats, ResponseCorrection,
    SessionClosed, ToolRegistry,
};
