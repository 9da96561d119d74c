//! `trunkline-gateway`: the `trunkline` service — configuration, the HTTP API, the call registry
//! and policy, call records, metrics, graceful shutdown, and the `demo`.
//!
//! - [`config`]: the TOML configuration, environment overrides and secrets.

pub mod config;
