//! `trunkline-emulators`: stand-ins for the services Trunkline talks to but tests cannot reach.
//!
//! - [`agent`]: an ElevenLabs-like Conversational AI agent server (WebSocket, signed URLs),
//!   speaking the documented protocol (ELEVENLABS.md §2), scriptable and recording.

pub mod agent;
pub mod trunk;
