//! `trunkline-load`: the load tester. Plays the trunk (Twilio-like, replaying an RTP capture per
//! call with its original timing) and the agent (ElevenLabs-like) at scale against a Trunkline
//! gateway — one it starts as a child process (`trunkline serve`), or a running one — and
//! measures the audio path per call and in aggregate: trigger → INVITE, answer → first agent
//! audio, output pacing (from the kernel's receive stamps, i.e. the gateway's send times, and
//! from the phone's own arrival times) and loss at the phone (RFC 3550 sequence numbers),
//! sample-exact µ-law passthrough, the gateway-added latency uplink and downlink (aligned by
//! content), DTMF delivered both ways (RFC 4733 from the phone → `user_message`; `send_dtmf`
//! tool → RFC 4733 at the phone), agent-ended calls, and the gateway's CPU and memory from
//! `/proc`.
//!
//! Modules: [`schedule`] (capture replay timing), [`analyze`] (per-call reduction),
//! [`procfs`] (CPU/RSS), [`sipspy`] (INVITE timing relay), [`gateway_process`] (the gateway as
//! a child process), [`kamailio`] (Kamailio in front of `--nodes N`), [`api`] (its HTTP API), [`prom`] (its `/metrics` text), [`runner`] (the
//! run), [`results`] (what a run found: the JSON document), [`report`] (table, HTML).
//!
//! Inside the crate, dependencies point one way: `runner` uses the other modules but `report`;
//! `report` and `prom` use `results`; `gateway_process` uses `api`; `results` and the rest use
//! no module of the crate. (`main` uses `runner` and `report`.)

pub mod analyze;
pub mod api;
pub mod gateway_process;
pub mod kamailio;
pub mod procfs;
pub mod prom;
pub mod report;
pub mod results;
pub mod runner;
pub mod schedule;
pub mod sipspy;

pub use results::{AgentFormat, Mode, RunReport, Thresholds};
pub use runner::{Level, RunConfig, run_blocking};
