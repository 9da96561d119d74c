//! `trunkline-sip`: the SIP signalling core of Trunkline.
//!
//! Layers, bottom to top (each one sans-IO except `transport`):
//! - [`message`]: SIP messages (RFC 3261 §7, §20) on top of `ezk-sip-types`, with stream framing.
//! - [`sdp`]: SDP offer/answer for audio (RFC 4566, RFC 3264, RFC 4568 `a=crypto`).
//! - [`auth`]: digest authentication as a client (RFC 2617, RFC 7616, RFC 8760).
//! - [`transaction`]: client and server transactions with Timers A–K (RFC 3261 §17).
//! - [`dialog`]: UAC/UAS dialogs, in-dialog requests, session timers (RFC 3261 §12, RFC 4028).
//! - [`ua`]: the user-agent core: request validation and server behaviour (RFC 3261 §8.2).
//! - [`transport`]: UDP, TCP and TLS sockets (RFC 3261 §18, RFC 3581) — the thin I/O layer.

pub mod auth;
pub mod dialog;
pub mod fuzzing;
pub mod message;
pub mod rfc3263;
pub mod sdp;
pub mod transaction;
pub mod transport;
pub mod ua;
