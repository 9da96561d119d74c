//! `trunkline-load`: the load tester. Plays the trunk (Twilio-like, replaying an RTP capture per
//! call with its original timing) and the agent (ElevenLabs-like) at scale against a Trunkline
//! gateway — one it starts in-process, or a running one — and measures the audio path per call
//! and in aggregate: trigger → INVITE, answer → first agent audio, output pacing (from the
//! kernel's receive stamps, i.e. the gateway's send times, and from the phone's own arrival
//! times) and loss at the phone (RFC 3550 sequence numbers), sample-exact µ-law passthrough, the
//! gateway-added latency uplink and downlink (aligned by content), DTMF delivered both ways
//! (RFC 4733 from the phone → `user_message`; `send_dtmf` tool → RFC 4733 at the phone),
//! agent-ended calls, and the gateway's CPU and memory from `/proc`.
//!
//! Modules: [`schedule`] (capture replay timing), [`analyze`] (per-call reduction),
//! [`procfs`] (CPU/RSS), [`sipspy`] (INVITE timing relay), [`runner`] (the run), [`report`]
//! (JSON, table, HTML).

pub mod analyze;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod sipspy;

pub use report::RunReport;
pub use runner::{AgentFormat, Level, Mode, RunConfig, Thresholds, run_blocking};
