//! `trunkline-gateway`: the `trunkline` service — configuration, the HTTP API, the call registry
//! and policy, call records, metrics, graceful shutdown, and the `demo`.
//!
//! - [`config`]: the TOML configuration, environment overrides and secrets.
//! - [`policy`]: authentication, destination policy, rate limits and capacity (toll-fraud guard).

pub mod config;
pub mod policy;
