//! `trunkline-gateway`: the `trunkline` service — configuration, the HTTP API, the call registry
//! and policy, call records, metrics, graceful shutdown, and the `demo`.
//!
//! - [`api`]: the HTTP API (axum): the widget trigger, ElevenLabs-compatible shapes, records, health, metrics.
//! - [`config`]: the TOML configuration, environment overrides and secrets.
//! - [`policy`]: authentication, destination policy, rate limits and capacity (toll-fraud guard),
//!   and the inbound source policy.
//! - [`setup`]: the configuration turned into the typed configs of the crates below, once.
//! - [`server`]: the bootstrap (gateway + HTTP API) and the orderly shutdown, used by every
//!   entry point.
//! - [`service`]: the call registry: spawning, hang-up, drain, records.
//! - [`recordings`]: call recordings on disk (file names, retention).
//! - [`events`]: the visitor's live call status: per-call `status_token`s and the event hub
//!   behind `GET /api/calls/{call_sid}/events`.

pub mod api;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dns;
pub mod events;
pub mod fuzzing;
pub mod metrics;
pub mod policy;
pub mod recordings;
pub mod records;
pub mod server;
pub mod service;
pub mod setup;
pub mod webhook;
