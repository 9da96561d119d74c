//! `trunkline-load`: the load tester. Plays the trunk (Twilio-like, replaying an RTP capture per
//! call with its original timing) and the agent (ElevenLabs-like) at scale against a Trunkline
//! gateway — one it starts in-process, or a running one — and measures the audio path per call
//! and in aggregate: trigger → INVITE, answer → first agent audio, output pacing and loss at the
//! phone (RFC 3550 sequence numbers and arrival times), sample-exact µ-law passthrough, and the
//! gateway's CPU and memory from `/proc`.
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
