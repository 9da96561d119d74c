//! The gateway's configuration: a TOML file (sections `[sip]`, `[trunk]`, `[rtp]`, `[agent]`,
//! `[http]`, `[policy]`, `[records]`, `[log]`), any key overridable from the environment as
//! `TRUNKLINE__SECTION__KEY` (e.g. `TRUNKLINE__HTTP__LISTEN=127.0.0.1:8080`), and secrets only
//! from the environment (`ELEVENLABS_API_KEY`, `TRUNKLINE_TRUNK_PASSWORD`, `TRUNKLINE_API_TOKEN`).
//!
//! Every key is documented in the shipped `config/trunkline.toml`; unknown keys are an error (a
//! typo must not silently fall back to a default). [`Config::validate`] checks what serde
//! cannot and [`Config::explain`] says, in plain words, what the gateway will do.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The dynamic variables every call sets itself (they always win over a request's).
pub const CALL_VARIABLES: [&str; 5] = [
    "call_sid",
    "called_number",
    "caller_id",
    "direction",
    "twilio_call_sid",
];

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "TRUNKLINE__";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key/value of the wrong shape.
    #[error("{0}")]
    Parse(String),
    /// A `TRUNKLINE__…` variable that names no key.
    #[error("environment override {0}: expected TRUNKLINE__SECTION__KEY")]
    BadOverride(String),
    /// Values that do not make sense together.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A SIP transport (`udp`, `tcp`, `tls`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    /// UDP (port 5060).
    Udp,
    /// TCP (port 5060).
    Tcp,
    /// TLS over TCP (port 5061).
    Tls,
}

impl SipTransport {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }

    /// The port a host without one is reached on (RFC 3263 §4.2).
    pub fn default_port(self) -> u16 {
        match self {
            SipTransport::Tls => 5061,
            _ => 5060,
        }
    }
}

/// A codec the trunk may use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum CodecName {
    /// G.711 µ-law.
    #[serde(rename = "PCMU")]
    Pcmu,
    /// G.711 A-law.
    #[serde(rename = "PCMA")]
    Pcma,
}

impl CodecName {
    /// The SDP encoding name.
    pub fn as_str(self) -> &'static str {
        match self {
            CodecName::Pcmu => "PCMU",
            CodecName::Pcma => "PCMA",
        }
    }
}

/// When an outbound call connects to the agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectAt {
    /// At the 200 OK.
    Answer,
    /// At the first 18x (the agent's audio is held until answer).
    Ringing,
    /// When the call is placed, before the INVITE: the trigger's answer carries the real
    /// `conversation_id` (the agent's audio is held until answer).
    Trigger,
}

impl ConnectAt {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectAt::Answer => "answer",
            ConnectAt::Ringing => "ringing",
            ConnectAt::Trigger => "trigger",
        }
    }

    /// What the mode costs and when the conversation id is known (for `check-config`).
    pub fn explain(self) -> &'static str {
        match self {
            ConnectAt::Answer => {
                "the conversation starts at the answer: no agent time while it rings; the \
                 trigger's answer has conversation_id null (known after the answer)"
            }
            ConnectAt::Ringing => {
                "the conversation starts at the first ring, its audio held until the answer: \
                 agent time billed while it rings; conversation_id known while it rings"
            }
            ConnectAt::Trigger => {
                "the conversation starts before the INVITE, its audio held until the answer: \
                 agent time billed from the trigger on, unanswered calls included; the trigger's \
                 answer carries conversation_id and sip_call_id (no agent in time: 504, nothing \
                 dialled)"
            }
        }
    }
}

/// How caller DTMF reaches the agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DtmfDelivery {
    /// As a `user_message` ("The caller pressed 5").
    UserMessage,
    /// As a `contextual_update`.
    ContextualUpdate,
    /// Not at all.
    Off,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// SIP signalling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// Transports to listen on: any of `udp`, `tcp`, `tls`.
    pub transports: Vec<SipTransport>,
    /// TLS listen address (with `tls` in `transports`).
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<String>,
    /// PEM private key for TLS.
    pub tls_key: Option<String>,
    /// Public IP written in Via, Contact and SDP when behind NAT.
    pub external_ip: Option<IpAddr>,
    /// `User-Agent` / `Server` header.
    pub user_agent: String,
    /// RFC 3261 T1 in milliseconds.
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds.
    pub t2_ms: u64,
    /// RFC 3261 T4 in milliseconds.
    pub t4_ms: u64,
    /// Session timer we ask for on outbound calls (RFC 4028), seconds; 0 = none.
    pub session_expires_secs: u64,

    // Connection defences (TCP/TLS listeners).
    /// Most accepted TCP/TLS connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Most accepted TCP/TLS connections open at once from one source IP.
    pub max_connections_per_source: usize,
    /// Close an accepted TCP/TLS connection that sent no complete SIP message (TLS handshake
    /// included) within this many seconds.
    pub first_message_timeout_secs: u64,
    /// Close an established TCP/TLS connection after this many seconds without a byte.
    pub idle_timeout_secs: u64,
    /// Close TCP/TLS connections at accept unless they come from `trunk.inbound_allowed_sources`
    /// (the trunk is our only SIP peer).
    pub restrict_connections_to_trunk: bool,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            transports: vec![SipTransport::Udp, SipTransport::Tcp],
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            external_ip: None,
            user_agent: concat!("Trunkline/", env!("CARGO_PKG_VERSION")).into(),
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            session_expires_secs: 0,

            max_connections: 2048,
            max_connections_per_source: 64,
            first_message_timeout_secs: 10,
            idle_timeout_secs: 300,
            restrict_connections_to_trunk: true,
        }
    }
}

/// The SIP trunk (Twilio Elastic SIP Trunking by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkSection {
    /// Termination URI: the Request-URI host of outbound INVITEs (Twilio drops requests to any
    /// other host without answering).
    pub termination_uri: String,
    /// Where to send outbound INVITEs (`host:port`), when not the termination URI's host.
    pub outbound_proxy: Option<String>,
    /// `udp`, `tcp` or `tls`.
    pub transport: SipTransport,
    /// Digest user name (the password comes from `TRUNKLINE_TRUNK_PASSWORD`).
    pub username: Option<String>,
    /// Caller ID for outbound calls (E.164; a Twilio number or verified caller ID).
    pub caller_id: String,
    /// CANCEL unanswered outbound calls after this many seconds.
    pub ring_timeout_secs: u64,
    /// Sources (IPs or CIDRs) allowed to send us INVITEs. Default: Twilio's signalling ranges.
    pub inbound_allowed_sources: Vec<String>,
    /// Codecs to offer, in order of preference: `PCMU`, `PCMA`.
    pub codecs: Vec<CodecName>,
    /// Offer/accept RFC 4733 telephone-event on this payload type.
    pub dtmf_payload_type: u8,

    // ---- RFC 3263 resolution, failover, inbound digest authentication ----------------------
    /// DNS servers (`ip:port`) for the termination host's NAPTR/SRV/A/AAAA lookups; empty: the
    /// system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// How long one trunk address may stay silent (not even 100 Trying) before the INVITE goes
    /// to the next one, in milliseconds. All attempts end within `ring_timeout_secs`.
    pub failover_timeout_ms: u64,
    /// Challenge inbound INVITEs with digest authentication (401, RFC 3261 §22.4, RFC 8760) and
    /// accept only `inbound_auth_username` with the password in `TRUNKLINE_INBOUND_PASSWORD`.
    pub inbound_auth: bool,
    /// The user name the trunk authenticates with.
    pub inbound_auth_username: Option<String>,
    /// The realm of our challenges.
    pub inbound_auth_realm: String,
    /// Digest algorithms challenged with, in order of preference: `SHA-256`, `MD5`.
    pub inbound_auth_algorithms: Vec<String>,
    /// SDES-SRTP (RFC 4568) on the trunk: `disabled`, `allowed` or `required`.
    pub media_encryption: MediaEncryption,
    /// PEM CA certificate(s) the trunk's TLS certificate must chain to (`transport = "tls"`);
    /// unset: the webpki (Mozilla) roots.
    pub tls_ca_file: Option<String>,
}

/// Media encryption on the trunk (`trunk.media_encryption`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MediaEncryption {
    /// Plain RTP only: offer RTP/AVP; an inbound offer with only RTP/SAVP gets 488.
    #[default]
    Disabled,
    /// Offer SRTP, fall back to plain RTP (a second INVITE after 488); accept either inbound.
    Allowed,
    /// SRTP only: offer RTP/SAVP; an inbound RTP/AVP offer gets 488.
    Required,
}

impl MediaEncryption {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaEncryption::Disabled => "disabled",
            MediaEncryption::Allowed => "allowed",
            MediaEncryption::Required => "required",
        }
    }
}

/// Twilio's documented signalling ranges (TWILIO.md item 22).
pub const TWILIO_SIGNALLING: [&str; 8] = [
    "54.172.60.0/30",
    "54.244.51.0/30",
    "54.171.127.192/30",
    "35.156.191.128/30",
    "54.65.63.192/30",
    "54.169.127.128/30",
    "54.252.254.64/30",
    "177.71.206.192/30",
];

impl Default for TrunkSection {
    fn default() -> Self {
        TrunkSection {
            termination_uri: "sip:example.pstn.twilio.com".into(),
            outbound_proxy: None,
            transport: SipTransport::Udp,
            username: None,
            caller_id: "+15005550006".into(),
            ring_timeout_secs: 30,
            inbound_allowed_sources: TWILIO_SIGNALLING.iter().map(|s| s.to_string()).collect(),
            codecs: vec![CodecName::Pcmu, CodecName::Pcma],
            dtmf_payload_type: 101,
            media_encryption: MediaEncryption::Disabled,
            tls_ca_file: None,
            dns_servers: Vec::new(),
            failover_timeout_ms: 4000,
            inbound_auth: false,
            inbound_auth_username: None,
            inbound_auth_realm: "trunkline".into(),
            inbound_auth_algorithms: vec!["SHA-256".into(), "MD5".into()],
        }
    }
}

/// RTP media.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RtpSection {
    /// Address RTP sockets bind to.
    pub bind_ip: IpAddr,
    /// Lowest RTP port (even).
    pub port_min: u16,
    /// Highest RTP port.
    pub port_max: u16,
    /// Hang up after this many seconds without RTP from the phone side.
    pub timeout_secs: u64,
    /// Latch to the source of the first valid packets (symmetric RTP, for NAT).
    pub symmetric: bool,
    /// Jitter buffer minimum depth, ms (20–400). A new stream starts at 60 ms and relaxes to
    /// this within 2 s unless the measured jitter asks for more.
    pub jitter_min_ms: u32,
    /// Jitter buffer maximum depth, ms (at most 400; the ring is sized to it: 512 ms at most).
    pub jitter_max_ms: u32,
    /// RTP leaves from one dedicated thread this many ms after the 20 ms tick that built it,
    /// so late scheduling of a call's task does not jitter the packet intervals. Agent audio
    /// arriving after a tick built silence but before its send time replaces that silence (the
    /// first chunk of a response does not wait for the next tick). 0 sends from the call's
    /// task at once. At most 20. Default 10: a call's tick, woken by the runtime's timer, runs
    /// 1.5–2 ms late at the median and up to 10 ms at p99 on a busy machine, and a packet
    /// built after its send time leaves late (`trunkline_rtp_send_slot_missed_total`).
    pub send_delay_ms: u64,
}

impl Default for RtpSection {
    fn default() -> Self {
        RtpSection {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            port_min: 10000,
            port_max: 20000,
            timeout_secs: 30,
            symmetric: true,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            send_delay_ms: 10,
        }
    }
}

/// The ElevenLabs agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// WebSocket base URL (`wss://api.elevenlabs.io`; regional hosts; `ws://127.0.0.1:…` for the
    /// emulator). With `ELEVENLABS_API_KEY` set, a signed URL is fetched first.
    pub base_url: String,
    /// The agent id.
    pub agent_id: String,
    /// `answer` (default), `ringing` or `trigger`: when outbound calls connect to the agent.
    pub connect_at: ConnectAt,
    /// Seconds allowed to reach the agent.
    pub connect_timeout_secs: u64,
    /// Size of each `user_audio_chunk`, 20–100 ms.
    pub uplink_chunk_ms: u64,
    /// How caller DTMF reaches the agent: `user_message`, `contextual_update` or `off`.
    pub dtmf_mode: DtmfDelivery,
    /// Longest call, seconds.
    pub max_call_secs: u64,
    /// After the agent ends, the longest wait for its last words to play, seconds.
    pub drain_timeout_secs: u64,
    /// Let the agent's `transfer_call` tool send SIP REFER.
    pub transfer_enabled: bool,
    /// E.164 prefixes `transfer_call` numbers may reach; they also pass the trigger's
    /// destination policy (denied prefixes, premium rate). Empty: no number.
    pub transfer_allow_prefixes: Vec<String>,
    /// Hosts a `sip:` transfer target may name (exact match). Empty: no SIP URI.
    pub transfer_allow_sip_hosts: Vec<String>,
    /// Dynamic variables sent with every conversation (the call's own are added). A trigger
    /// request can never override them.
    pub dynamic_variables: BTreeMap<String, String>,
    /// Dynamic variables a trigger request without a token (browser widget) may set; a token
    /// client may set any key that is neither the operator's nor the call's own.
    pub request_variables: Vec<String>,
    /// Whether a trigger request without a token may set the agent's `first_message`.
    pub allow_request_first_message: bool,
    /// End the call (cause `agent_timeout`) when the agent answers none of our WebSocket pings
    /// (sent every quarter of this), or our writes to it stay blocked, this many seconds; 0
    /// turns the detection off.
    pub stall_timeout_secs: u64,
    /// PEM CA certificate(s) the agent's `wss://` (and signed-URL `https://`) certificate must
    /// chain to instead of the webpki (Mozilla) roots: a TLS-inspecting egress proxy, a private
    /// relay, the load tester's emulator. Unset: the webpki roots.
    pub tls_ca_file: Option<String>,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            base_url: "wss://api.elevenlabs.io".into(),
            agent_id: String::new(),
            connect_at: ConnectAt::Answer,
            connect_timeout_secs: 10,
            uplink_chunk_ms: 40,
            dtmf_mode: DtmfDelivery::UserMessage,
            max_call_secs: 3600,
            drain_timeout_secs: 15,
            transfer_enabled: false,
            transfer_allow_prefixes: Vec::new(),
            transfer_allow_sip_hosts: Vec::new(),
            dynamic_variables: BTreeMap::new(),
            request_variables: Vec::new(),
            allow_request_first_message: false,
            stall_timeout_secs: 10,
            tls_ca_file: None,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address.
    pub listen: SocketAddr,
    /// Browser origins allowed to call the API (CORS and `Origin` check).
    pub allowed_origins: Vec<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,

    // Slow-client defences.
    /// Close a connection whose request head is not complete this many seconds after it began.
    pub header_timeout_secs: u64,
    /// Answer 408 to a request (body included) not handled within this many seconds.
    pub request_timeout_secs: u64,

    // The visitor's per-call status stream (`GET /api/calls/{sid}/events?token=…`).
    /// A `status_token` is refused this many seconds after it was issued, whatever the call.
    pub status_token_ttl_secs: u64,
    /// … and this many seconds after its call ended, whichever comes first.
    pub status_token_grace_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            max_body_bytes: 16 * 1024,

            header_timeout_secs: 10,
            request_timeout_secs: 30,

            status_token_ttl_secs: 3600,
            status_token_grace_secs: 300,
        }
    }
}

/// Who may ring what, how often.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Require a bearer token (`TRUNKLINE_API_TOKEN`, comma-separated `name:token` pairs) on the
    /// outbound trigger.
    pub require_token: bool,
    /// The only numbers that may be called (pinned mode), E.164.
    pub pinned_numbers: Vec<String>,
    /// E.164 prefixes that may be called (empty = any not denied).
    pub allowed_prefixes: Vec<String>,
    /// E.164 prefixes that may never be called (premium rate, …).
    pub denied_prefixes: Vec<String>,
    /// Most calls up at once.
    pub max_concurrent_calls: usize,
    /// New outbound calls per second, all clients together (the trunk's CPS).
    pub calls_per_second: f64,
    /// Trigger requests per minute per client IP.
    pub per_ip_per_minute: u32,
    /// Calls per destination number per day.
    pub per_destination_per_day: u32,
    /// Accept `require_token = false` with neither `pinned_numbers` nor `allowed_prefixes`:
    /// anyone who can reach the HTTP API may then call any number that is not denied. Refused
    /// by [`Config::validate`] unless this is set.
    pub allow_open_trigger_i_accept_toll_fraud_risk: bool,
}

/// Why an open trigger is refused (the `check-config` text).
pub const OPEN_TRIGGER: &str = "policy.require_token = false with no policy.pinned_numbers and no \
policy.allowed_prefixes lets anyone who reaches the HTTP API call any number (toll fraud): \
require a token, pin the numbers or list allowed prefixes; to run an open trigger anyway set \
policy.allow_open_trigger_i_accept_toll_fraud_risk = true";

impl PolicySection {
    /// True when anonymous requests may call any number that is not denied.
    pub fn open_trigger(&self) -> bool {
        !self.require_token && self.pinned_numbers.is_empty() && self.allowed_prefixes.is_empty()
    }
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            require_token: true,
            pinned_numbers: Vec::new(),
            allowed_prefixes: Vec::new(),
            denied_prefixes: vec![
                "+1900".into(),
                "+1976".into(),
                "+44871".into(),
                "+44872".into(),
                "+44873".into(),
                "+449".into(),
                "+3389".into(),
                "+3368".into(),
                "+88".into(),
            ],
            max_concurrent_calls: 100,
            calls_per_second: 1.0,
            per_ip_per_minute: 10,
            per_destination_per_day: 10,
            allow_open_trigger_i_accept_toll_fraud_risk: false,
        }
    }
}

/// Call records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSection {
    /// Database URL (`sqlite://trunkline.db` by default).
    pub database_url: String,
    /// Status webhook URL (empty = none).
    pub webhook_url: Option<String>,
    /// This gateway's name in the records: at start it marks the calls it left unfinished
    /// `failed` (cause `gateway_restart`). Gateways sharing one database need distinct ids.
    pub node_id: String,
}

impl Default for RecordsSection {
    fn default() -> Self {
        RecordsSection {
            database_url: "sqlite://trunkline.db".into(),
            webhook_url: None,
            node_id: crate::records::DEFAULT_NODE.into(),
        }
    }
}

/// Several gateways as one (`[cluster]`, over a PostgreSQL `records.database_url`): global
/// trigger limits, calls found and hung up through any node. The node id is `records.node_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Make concurrency, CPS, per-destination daily caps and per-client rates cluster-wide.
    pub enabled: bool,
    /// How often this node writes its heartbeat; a node silent for three intervals is dead
    /// (its calls stop counting).
    pub heartbeat_secs: u64,
    /// This node's HTTP API as the other nodes reach it (`http://10.0.0.5:8080`), for forwarded
    /// hang-ups; empty = `http://` + `http.listen` (then not a wildcard address).
    pub internal_url: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            enabled: false,
            heartbeat_secs: 2,
            internal_url: String::new(),
        }
    }
}

/// `amd.mode`: answering-machine detection on outbound calls.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AmdModeName {
    /// No detection.
    Off,
    /// The agent speaks at once; the verdict is sent to it mid-call (`contextual_update`).
    Detect,
    /// The agent is connected when the verdict is in (at most `max_hold_ms` after answer).
    Hold,
}

/// `amd.on_machine`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnMachineName {
    /// BYE at once (end cause `machine`).
    Hangup,
    /// After the beep, the agent says `amd.message`, then the call ends.
    LeaveMessage,
    /// Carry on as with a person.
    Connect,
}

/// Answering-machine detection (`[amd]`), outbound calls only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AmdSection {
    /// `off`, `detect` or `hold`.
    pub mode: AmdModeName,
    /// `hangup`, `leave_message` or `connect`.
    pub on_machine: OnMachineName,
    /// `leave_message`: the agent's first message after the beep (`{{variables}}` allowed).
    pub message: String,
    /// `hold`: connect the agent (as `unknown`) at the latest this long after answer.
    pub max_hold_ms: u64,
    /// No speech this long after answer: `unknown`.
    pub initial_silence_ms: u64,
    /// An utterance this long is a greeting: `machine`.
    pub greeting_ms: u64,
    /// Quiet this long after a short utterance: `human`.
    pub after_greeting_silence_ms: u64,
    /// No verdict after this long: `unknown`.
    pub total_analysis_time_ms: u64,
    /// Shortest voice run counted as a word.
    pub min_word_length_ms: u64,
    /// Shortest pause between two words.
    pub between_words_silence_ms: u64,
    /// This many words: `machine`.
    pub max_words: u32,
    /// Energy below this is never speech (dBFS).
    pub silence_threshold_dbfs: f32,
    /// Shortest voicemail beep.
    pub beep_min_ms: u64,
    /// After `machine`: quiet this long ends the greeting when no beep came.
    pub greeting_end_silence_ms: u64,
    /// After `machine`: stop waiting for a beep this long after the verdict.
    pub max_beep_wait_ms: u64,
}

impl Default for AmdSection {
    fn default() -> Self {
        let d = trunkline_call::amd::AmdConfig::default();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        AmdSection {
            mode: AmdModeName::Off,
            on_machine: OnMachineName::Hangup,
            message: String::new(),
            max_hold_ms: 3000,
            initial_silence_ms: ms(d.initial_silence),
            greeting_ms: ms(d.greeting),
            after_greeting_silence_ms: ms(d.after_greeting_silence),
            total_analysis_time_ms: ms(d.total_analysis_time),
            min_word_length_ms: ms(d.min_word_length),
            between_words_silence_ms: ms(d.between_words_silence),
            max_words: d.max_words,
            silence_threshold_dbfs: d.silence_threshold_dbfs,
            beep_min_ms: ms(d.beep_min),
            greeting_end_silence_ms: ms(d.greeting_end_silence),
            max_beep_wait_ms: ms(d.max_beep_wait),
        }
    }
}

impl AmdSection {
    /// What is wrong with these settings (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (key, v, lo, hi) in [
            ("amd.max_hold_ms", self.max_hold_ms, 100, 30_000),
            (
                "amd.initial_silence_ms",
                self.initial_silence_ms,
                100,
                30_000,
            ),
            ("amd.greeting_ms", self.greeting_ms, 100, 30_000),
            (
                "amd.after_greeting_silence_ms",
                self.after_greeting_silence_ms,
                100,
                10_000,
            ),
            (
                "amd.total_analysis_time_ms",
                self.total_analysis_time_ms,
                500,
                60_000,
            ),
            ("amd.min_word_length_ms", self.min_word_length_ms, 20, 5_000),
            (
                "amd.between_words_silence_ms",
                self.between_words_silence_ms,
                20,
                5_000,
            ),
            ("amd.beep_min_ms", self.beep_min_ms, 40, 5_000),
            (
                "amd.greeting_end_silence_ms",
                self.greeting_end_silence_ms,
                200,
                30_000,
            ),
            (
                "amd.max_beep_wait_ms",
                self.max_beep_wait_ms,
                1_000,
                120_000,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                errs.push(format!("{key} must be {lo}–{hi} (is {v})"));
            }
        }
        if self.max_words == 0 {
            errs.push("amd.max_words must be at least 1".into());
        }
        if !(-90.0..=-10.0).contains(&self.silence_threshold_dbfs) {
            errs.push("amd.silence_threshold_dbfs must be -90 to -10".into());
        }
        if self.mode != AmdModeName::Off
            && self.on_machine == OnMachineName::LeaveMessage
            && self.message.trim().is_empty()
        {
            errs.push("amd.on_machine = \"leave_message\" needs amd.message".into());
        }
        if self.message.chars().count() > 2000 {
            errs.push("amd.message is longer than 2000 characters".into());
        }
        errs
    }
}

/// `recording.format`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFormatName {
    /// Stereo 16-bit PCM WAV at the call's rate (8 kHz for G.711).
    Wav,
    /// Stereo Opus (24 kbit/s) in Ogg.
    Opus,
}

/// Call recording (`[recording]`): stereo, the phone left and the agent right, as the phone
/// heard it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingSection {
    /// Record every answered call.
    pub enabled: bool,
    /// `wav` or `opus`.
    pub format: RecordingFormatName,
    /// Where recordings are written (`<call_sid>.wav` / `.ogg`); created at start.
    pub dir: String,
    /// Recordings older than this many days are deleted (at start, then hourly); 0 keeps them.
    pub retention_days: u32,
    /// Consent as a WAV file (8 kHz mono 16-bit PCM, at most 60 s) played to the phone at
    /// answer, before any agent audio. Empty: none. Not with `consent_message`.
    pub consent_prompt_wav: String,
    /// Consent as a sentence the agent says first (its `first_message` override). Empty: none.
    /// Not with `consent_prompt_wav`.
    pub consent_message: String,
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            enabled: false,
            format: RecordingFormatName::Wav,
            dir: "recordings".into(),
            retention_days: 30,
            consent_prompt_wav: String::new(),
            consent_message: String::new(),
        }
    }
}

impl RecordingSection {
    /// What is wrong with these settings (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.enabled && self.dir.trim().is_empty() {
            errs.push("recording.dir must be set when recording.enabled = true".into());
        }
        if self.retention_days > 36_500 {
            errs.push(format!(
                "recording.retention_days must be 0 (keep) to 36500 (is {})",
                self.retention_days
            ));
        }
        let wav = !self.consent_prompt_wav.trim().is_empty();
        let msg = !self.consent_message.trim().is_empty();
        if wav && msg {
            errs.push(
                "recording.consent_prompt_wav and recording.consent_message are exclusive: set one"
                    .into(),
            );
        }
        if (wav || msg) && !self.enabled {
            errs.push("recording.consent_* is set but recording.enabled = false".into());
        }
        if self.consent_message.chars().count() > 2000 {
            errs.push("recording.consent_message is longer than 2000 characters".into());
        }
        if self.enabled && self.format == RecordingFormatName::Opus && !cfg!(feature = "opus") {
            errs.push(format!(
                "recording.format = \"opus\": {}",
                trunkline_call::recording::OPUS_NOT_BUILT
            ));
        }
        errs
    }

    /// One line for `check-config`.
    pub fn explain(&self) -> String {
        if !self.enabled {
            return "Recording: off".into();
        }
        let consent = if !self.consent_prompt_wav.trim().is_empty() {
            format!(
                "consent prompt {} played to the phone before the agent is heard",
                self.consent_prompt_wav
            )
        } else if !self.consent_message.trim().is_empty() {
            format!(
                "consent said by the agent as its first message ({} characters)",
                self.consent_message.chars().count()
            )
        } else {
            "no consent prompt".into()
        };
        let keep = match self.retention_days {
            0 => "kept forever".to_string(),
            d => format!("deleted after {d} days"),
        };
        format!(
            "Recording: every answered call, stereo {} (phone left, agent right) in {}, {keep}; {consent}",
            match self.format {
                RecordingFormatName::Wav => "WAV",
                RecordingFormatName::Opus =>
                    "Opus (CPU-heavy: about 0.5 % of a core per call, 3x a call without recording; \
see docs/PERFORMANCE.md)",
            },
            self.dir
        )
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `tracing` filter (`info`, `trunkline_call=debug,info`, …); `RUST_LOG` wins when set.
    pub level: String,
    /// `human` or `json`.
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[sip]`
    pub sip: SipSection,
    /// `[trunk]`
    pub trunk: TrunkSection,
    /// `[rtp]`
    pub rtp: RtpSection,
    /// `[agent]`
    pub agent: AgentSection,
    /// `[http]`
    pub http: HttpSection,
    /// `[policy]`
    pub policy: PolicySection,
    /// `[records]`
    pub records: RecordsSection,
    /// `[cluster]`
    pub cluster: ClusterSection,
    /// `[log]`
    pub log: LogSection,
    /// `[amd]`
    pub amd: AmdSection,
    /// `[recording]`
    pub recording: RecordingSection,
}

/// Secrets, from the environment only.
#[derive(Clone, Default, PartialEq)]
pub struct Secrets {
    /// `ELEVENLABS_API_KEY`.
    pub elevenlabs_api_key: Option<String>,
    /// `TRUNKLINE_TRUNK_PASSWORD`.
    pub trunk_password: Option<String>,
    /// `TRUNKLINE_INBOUND_PASSWORD`: what the trunk must authenticate with (`trunk.inbound_auth`).
    pub inbound_password: Option<String>,
    /// `TRUNKLINE_API_TOKEN`: `name:token` pairs, comma-separated (a bare token is named
    /// `default`).
    pub api_tokens: Vec<(String, String)>,
    /// `TRUNKLINE_WEBHOOK_SECRET`: the HMAC key of status webhooks.
    pub webhook_secret: Option<String>,
    /// `TRUNKLINE_STATUS_KEY`: the HMAC key of per-call `status_token`s (random at start when
    /// unset: tokens then die with the process).
    pub status_key: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "elevenlabs_api_key",
                &self.elevenlabs_api_key.as_ref().map(|_| "***"),
            )
            .field(
                "trunk_password",
                &self.trunk_password.as_ref().map(|_| "***"),
            )
            .field(
                "inbound_password",
                &self.inbound_password.as_ref().map(|_| "***"),
            )
            .field(
                "api_tokens",
                &self.api_tokens.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Shortest API token accepted (`TRUNKLINE_API_TOKEN`), in characters.
pub const MIN_API_TOKEN_LEN: usize = 16;

impl Secrets {
    /// Read from an environment (a closure, so tests need not touch the process's). API tokens
    /// are checked here, at start: an empty or short token, a token with spaces or control
    /// characters, or a name used twice is an error that names the token by its name (never by
    /// its value) and says the minimum length ([`MIN_API_TOKEN_LEN`]).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let api_tokens = match get("TRUNKLINE_API_TOKEN") {
            None => Vec::new(),
            Some(v) => parse_api_tokens(&v).map_err(|e| ConfigError::Invalid(vec![e]))?,
        };
        Ok(Secrets {
            elevenlabs_api_key: non_empty("ELEVENLABS_API_KEY"),
            trunk_password: non_empty("TRUNKLINE_TRUNK_PASSWORD"),
            inbound_password: non_empty("TRUNKLINE_INBOUND_PASSWORD"),
            api_tokens,
            webhook_secret: non_empty("TRUNKLINE_WEBHOOK_SECRET"),
            status_key: non_empty("TRUNKLINE_STATUS_KEY"),
        })
    }
}

/// `name:token,name2:token2` (a bare token is named `default`), every token at least
/// [`MIN_API_TOKEN_LEN`] visible ASCII characters. Errors never contain a token.
pub fn parse_api_tokens(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    if v.trim().is_empty() {
        return Err(
            "TRUNKLINE_API_TOKEN is set but empty (unset it, or give name:token pairs)".into(),
        );
    }
    for (i, entry) in v.split(',').map(str::trim).enumerate() {
        let (name, tok) = match entry.split_once(':') {
            Some((name, tok)) => (name.trim(), tok.trim()),
            None => ("default", entry),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "TRUNKLINE_API_TOKEN entry {}: the name must be letters, digits, '-', '_' or '.'",
                i + 1
            ));
        }
        if tok.chars().count() < MIN_API_TOKEN_LEN {
            return Err(format!(
                "TRUNKLINE_API_TOKEN: token {name:?} is empty or shorter than \
                 {MIN_API_TOKEN_LEN} characters (the minimum; use a random string)"
            ));
        }
        if !tok.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "TRUNKLINE_API_TOKEN: token {name:?} must be visible ASCII characters without spaces"
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "TRUNKLINE_API_TOKEN: the name {name:?} is used twice"
            ));
        }
        if out.iter().any(|(_, t)| t == tok) {
            return Err(format!(
                "TRUNKLINE_API_TOKEN: token {name:?} is the same as another token"
            ));
        }
        out.push((name.to_owned(), tok.to_owned()));
    }
    Ok(out)
}

impl Config {
    /// Parse TOML text, then apply `TRUNKLINE__SECTION__KEY` overrides from `env`.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        for (key, value) in env {
            let Some(path) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let mut parts = path.split("__");
            let (Some(section), Some(name), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConfigError::BadOverride(key));
            };
            let (section, name) = (section.to_ascii_lowercase(), name.to_ascii_lowercase());
            if section.is_empty() || name.is_empty() {
                return Err(ConfigError::BadOverride(key));
            }
            let entry = root
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(table) = entry else {
                return Err(ConfigError::BadOverride(key));
            };
            table.insert(name, env_value(&value));
        }
        toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
    }

    /// Read a file and the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_and_env(&text, std::env::vars())
    }

    /// Check what serde cannot (the values [`crate::setup::Setup`] parses, such as the inbound
    /// sources, are checked there).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.sip.transports.contains(&SipTransport::Tls)
            && (self.sip.tls_cert.is_none() || self.sip.tls_key.is_none())
        {
            errs.push("sip.transports has tls but sip.tls_cert / sip.tls_key are not set".into());
        }
        if self.trunk.tls_ca_file.is_some() && self.trunk.transport != SipTransport::Tls {
            errs.push("trunk.tls_ca_file is set but trunk.transport is not \"tls\"".into());
        }
        if self.agent.tls_ca_file.is_some() && !self.agent.base_url.starts_with("wss://") {
            errs.push("agent.tls_ca_file is set but agent.base_url is not wss://".into());
        }
        if !self.trunk.termination_uri.starts_with("sip:")
            && !self.trunk.termination_uri.starts_with("sips:")
        {
            errs.push("trunk.termination_uri must be a sip: URI".into());
        }
        if !is_e164(&self.trunk.caller_id) {
            errs.push(format!(
                "trunk.caller_id {:?} is not E.164 (+ and 8–15 digits)",
                self.trunk.caller_id
            ));
        }
        if !(100..=32_000).contains(&self.trunk.failover_timeout_ms) {
            errs.push(
                "trunk.failover_timeout_ms must be 100–32000 (Timer B ends an attempt at 32 s anyway)"
                    .into(),
            );
        }
        if self.trunk.inbound_auth
            && self
                .trunk
                .inbound_auth_username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
        {
            errs.push("trunk.inbound_auth needs trunk.inbound_auth_username".into());
        }
        if self.trunk.inbound_auth_algorithms.is_empty()
            || self
                .trunk
                .inbound_auth_algorithms
                .iter()
                .any(|a| !matches!(a.to_ascii_uppercase().as_str(), "SHA-256" | "MD5"))
        {
            errs.push("trunk.inbound_auth_algorithms must list \"SHA-256\" and/or \"MD5\"".into());
        }
        if self.trunk.inbound_auth_realm.is_empty() || self.trunk.inbound_auth_realm.contains('"') {
            errs.push("trunk.inbound_auth_realm must be non-empty, without quotes".into());
        }
        if self.trunk.codecs.is_empty() {
            errs.push("trunk.codecs is empty".into());
        }
        if !(96..=127).contains(&self.trunk.dtmf_payload_type) {
            errs.push("trunk.dtmf_payload_type must be dynamic (96–127)".into());
        }
        if self.rtp.port_min >= self.rtp.port_max || self.rtp.port_min < 1024 {
            errs.push("rtp.port_min must be ≥ 1024 and below rtp.port_max".into());
        }
        if self.rtp.jitter_min_ms > self.rtp.jitter_max_ms {
            errs.push("rtp.jitter_min_ms exceeds rtp.jitter_max_ms".into());
        }
        if self.rtp.jitter_max_ms > 400 {
            errs.push("rtp.jitter_max_ms must be at most 400".into());
        }
        if self.rtp.send_delay_ms > 20 {
            errs.push("rtp.send_delay_ms must be 0–20".into());
        }
        if !(self.agent.base_url.starts_with("wss://") || self.agent.base_url.starts_with("ws://"))
        {
            errs.push("agent.base_url must start with wss:// or ws://".into());
        }
        if self.agent.connect_at == ConnectAt::Trigger
            && self.agent.connect_timeout_secs + 1 >= self.http.request_timeout_secs
        {
            errs.push(format!(
                "agent.connect_at = \"trigger\": the trigger's answer waits up to                  agent.connect_timeout_secs ({} s) for the agent, so http.request_timeout_secs                  ({} s) must be at least 2 s longer",
                self.agent.connect_timeout_secs, self.http.request_timeout_secs
            ));
        }
        if !(20..=100).contains(&self.agent.uplink_chunk_ms) {
            errs.push("agent.uplink_chunk_ms must be 20–100".into());
        }
        if self.agent.transfer_enabled
            && self.agent.transfer_allow_prefixes.is_empty()
            && self.agent.transfer_allow_sip_hosts.is_empty()
        {
            errs.push(
                "agent.transfer_enabled needs an allowlist: agent.transfer_allow_prefixes \
                 (E.164 prefixes) and/or agent.transfer_allow_sip_hosts"
                    .into(),
            );
        }
        for p in &self.agent.transfer_allow_prefixes {
            if !p.starts_with('+') || p.len() < 2 || !p[1..].chars().all(|c| c.is_ascii_digit()) {
                errs.push(format!(
                    "agent.transfer_allow_prefixes: {p:?} must be + and at least one digit"
                ));
            }
        }
        for h in &self.agent.transfer_allow_sip_hosts {
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
            {
                errs.push(format!(
                    "agent.transfer_allow_sip_hosts: {h:?} must be a host name or address"
                ));
            }
        }
        for k in &self.agent.request_variables {
            if CALL_VARIABLES.contains(&k.as_str()) || self.agent.dynamic_variables.contains_key(k)
            {
                errs.push(format!(
                    "agent.request_variables: {k:?} is the call's own or an operator's variable \
                     (those always win; a request cannot set them)"
                ));
            } else if k.is_empty() || k.len() > crate::api::MAX_VARIABLE_NAME {
                errs.push(format!(
                    "agent.request_variables: {k:?} must be 1–{} characters",
                    crate::api::MAX_VARIABLE_NAME
                ));
            }
        }
        for n in &self.policy.pinned_numbers {
            if !is_e164(n) {
                errs.push(format!("policy.pinned_numbers: {n:?} is not E.164"));
            }
        }
        for p in self
            .policy
            .allowed_prefixes
            .iter()
            .chain(&self.policy.denied_prefixes)
        {
            if !p.starts_with('+') || !p[1..].chars().all(|c| c.is_ascii_digit()) {
                errs.push(format!("policy prefix {p:?} must be + and digits"));
            }
        }
        if self.policy.open_trigger() && !self.policy.allow_open_trigger_i_accept_toll_fraud_risk {
            errs.push(OPEN_TRIGGER.into());
        }
        if self.records.node_id.trim().is_empty() {
            errs.push("records.node_id must not be empty".into());
        }
        if self.cluster.enabled {
            let url = &self.records.database_url;
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                errs.push(
                    "cluster.enabled needs a shared PostgreSQL records.database_url \
                     (postgres://…): SQLite is one node's file"
                        .into(),
                );
            }
            if !(1..=60).contains(&self.cluster.heartbeat_secs) {
                errs.push("cluster.heartbeat_secs must be 1–60".into());
            }
            let internal = self.cluster.internal_url.trim();
            if internal.is_empty() && self.http.listen.ip().is_unspecified() {
                errs.push(
                    "cluster.internal_url is empty and http.listen is a wildcard address: \
                     set the URL the other nodes reach this node's HTTP API at"
                        .into(),
                );
            }
            if !internal.is_empty()
                && !internal.starts_with("http://")
                && !internal.starts_with("https://")
            {
                errs.push("cluster.internal_url must be an http:// or https:// URL".into());
            }
        }
        if self.policy.max_concurrent_calls == 0 {
            errs.push("policy.max_concurrent_calls must be at least 1".into());
        }
        if self.policy.calls_per_second <= 0.0 {
            errs.push("policy.calls_per_second must be positive".into());
        }
        // Connection and slow-client defences: a zero would disable them or refuse everything.
        for (key, v) in [
            ("sip.max_connections", self.sip.max_connections as u64),
            (
                "sip.max_connections_per_source",
                self.sip.max_connections_per_source as u64,
            ),
            (
                "sip.first_message_timeout_secs",
                self.sip.first_message_timeout_secs,
            ),
            ("sip.idle_timeout_secs", self.sip.idle_timeout_secs),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.request_timeout_secs", self.http.request_timeout_secs),
            (
                "http.status_token_ttl_secs",
                self.http.status_token_ttl_secs,
            ),
        ] {
            if v == 0 {
                errs.push(format!("{key} must be at least 1"));
            }
        }
        errs.extend(self.amd.problems());
        errs.extend(self.recording.problems());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    /// A plain-words summary of what this configuration does (for `check-config`).
    pub fn explain(&self, secrets: &Secrets) -> String {
        let mut s = String::new();
        let w = &mut s;
        use std::fmt::Write;
        let _ = writeln!(
            w,
            "SIP: listening on {} ({}){}",
            self.sip.listen,
            self.sip
                .transports
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            self.sip
                .external_ip
                .map(|ip| format!(", advertising {ip} (NAT)"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            w,
            "Trunk: outbound INVITEs to {} over {}{}, caller ID {}, CANCEL after {} s",
            self.trunk.termination_uri,
            self.trunk.transport.as_str(),
            match (&self.trunk.username, &secrets.trunk_password) {
                (Some(u), Some(_)) => format!(", digest user {u}"),
                (Some(u), None) => format!(", digest user {u} (TRUNKLINE_TRUNK_PASSWORD not set!)"),
                _ => ", no digest credentials (IP ACL)".into(),
            },
            self.trunk.caller_id,
            self.trunk.ring_timeout_secs
        );
        let _ = writeln!(
            w,
            "Media encryption ({}): {}",
            self.trunk.media_encryption.as_str(),
            match self.trunk.media_encryption {
                MediaEncryption::Disabled =>
                    "plain RTP; outbound offers RTP/AVP, an inbound offer with only RTP/SAVP gets 488",
                MediaEncryption::Allowed =>
                    "SDES-SRTP offered (RTP/SAVP, AES_CM_128_HMAC_SHA1_80/_32), plain RTP re-offered if the trunk answers 488; inbound SRTP or plain RTP accepted",
                MediaEncryption::Required =>
                    "SDES-SRTP only (RTP/SAVP, AES_CM_128_HMAC_SHA1_80/_32; Twilio Secure Trunking); an inbound RTP/AVP offer gets 488",
            }
        );
        if self.trunk.media_encryption != MediaEncryption::Disabled
            && self.trunk.transport != SipTransport::Tls
        {
            let _ = writeln!(
                w,
                "  warning: SRTP keys travel in the SDP; with trunk.transport = {:?} anyone on the path can read them (use \"tls\")",
                self.trunk.transport.as_str()
            );
        }
        if self.trunk.transport == SipTransport::Tls {
            let _ = writeln!(
                w,
                "Trunk TLS: server name {}, trusting {}",
                self.trunk
                    .termination_uri
                    .trim_start_matches("sips:")
                    .trim_start_matches("sip:")
                    .split([';', ':', '?'])
                    .next()
                    .unwrap_or_default(),
                self.trunk
                    .tls_ca_file
                    .as_deref()
                    .map(|f| format!("the CA in {f}"))
                    .unwrap_or_else(|| "the webpki (Mozilla) roots".into())
            );
        }
        let _ = writeln!(
            w,
            "Trunk addresses: {}; failover to the next address after {} ms of silence, a 503, \
             or a transport error, all attempts within {} s",
            match &self.trunk.outbound_proxy {
                Some(p) => format!("the outbound proxy {p}"),
                None if self.trunk.dns_servers.is_empty() => {
                    "RFC 3263 (NAPTR, SRV, A/AAAA) via the system resolver, per call".into()
                }
                None => format!(
                    "RFC 3263 (NAPTR, SRV, A/AAAA) via {}, per call",
                    self.trunk
                        .dns_servers
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            self.trunk.failover_timeout_ms,
            self.trunk.ring_timeout_secs
        );
        if self.trunk.inbound_auth {
            let _ = writeln!(
                w,
                "Inbound digest authentication: on (user {}, realm {}){}",
                self.trunk.inbound_auth_username.as_deref().unwrap_or("?"),
                self.trunk.inbound_auth_realm,
                if secrets.inbound_password.is_some() {
                    ""
                } else {
                    " — TRUNKLINE_INBOUND_PASSWORD not set: the gateway will not start"
                }
            );
        }
        let _ = writeln!(
            w,
            "Inbound: INVITEs accepted from {} source range(s): {}",
            self.trunk.inbound_allowed_sources.len(),
            self.trunk.inbound_allowed_sources.join(", ")
        );
        let _ = writeln!(
            w,
            "RTP: {}:{}-{}, codecs {}, telephone-event PT {}, timeout {} s, {}",
            self.rtp.bind_ip,
            self.rtp.port_min,
            self.rtp.port_max,
            self.trunk
                .codecs
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            self.trunk.dtmf_payload_type,
            self.rtp.timeout_secs,
            match self.rtp.send_delay_ms {
                0 => "sent from each call's task".to_owned(),
                ms => format!("sent by the send thread {ms} ms after each tick"),
            }
        );
        let _ = writeln!(
            w,
            "Agent: {} agent_id={} ({}), connected at {}, {} ms uplink chunks",
            self.agent.base_url,
            if self.agent.agent_id.is_empty() {
                "(not set!)"
            } else {
                &self.agent.agent_id
            },
            if secrets.elevenlabs_api_key.is_some() {
                "signed URL via ELEVENLABS_API_KEY"
            } else {
                "public agent, no API key"
            },
            self.agent.connect_at.as_str(),
            self.agent.uplink_chunk_ms
        );
        let _ = writeln!(
            w,
            "  connect_at = {:?}: {}",
            self.agent.connect_at.as_str(),
            self.agent.connect_at.explain()
        );
        let _ = writeln!(
            w,
            "HTTP: {} (origins allowed: {})",
            self.http.listen,
            if self.http.allowed_origins.is_empty() {
                "none".to_owned()
            } else {
                self.http.allowed_origins.join(", ")
            }
        );
        let dest = if !self.policy.pinned_numbers.is_empty() {
            format!(
                "only the pinned numbers {}",
                self.policy.pinned_numbers.join(", ")
            )
        } else if !self.policy.allowed_prefixes.is_empty() {
            format!(
                "numbers starting {}",
                self.policy.allowed_prefixes.join(", ")
            )
        } else {
            "any valid E.164 number".to_owned()
        };
        let _ = writeln!(
            w,
            "Policy: {}; may call {dest} except {}; ≤ {} concurrent calls, {} calls/s, {} requests/min per IP, {} calls/day per number",
            if self.policy.require_token {
                format!(
                    "bearer token required ({} configured)",
                    secrets.api_tokens.len()
                )
            } else {
                "no token required".to_owned()
            },
            self.policy.denied_prefixes.join(", "),
            self.policy.max_concurrent_calls,
            self.policy.calls_per_second,
            self.policy.per_ip_per_minute,
            self.policy.per_destination_per_day
        );
        if self.policy.open_trigger() {
            let _ = writeln!(
                w,
                "WARNING: OPEN TRIGGER: no token required and no destination restriction; anyone \
who reaches {} may call any number not denied, at your expense \
(policy.allow_open_trigger_i_accept_toll_fraud_risk = true)",
                self.http.listen
            );
        }
        let _ = writeln!(w, "Records: {}", self.records.database_url);
        if self.cluster.enabled {
            let _ = writeln!(
                w,
                "Cluster: node {:?}; the limits above are for all nodes together (PostgreSQL); \
heartbeat every {} s, a node silent {} s is dead; hang-ups for this node's calls reach it at {}",
                self.records.node_id,
                self.cluster.heartbeat_secs,
                self.cluster.heartbeat_secs * 3,
                if self.cluster.internal_url.is_empty() {
                    format!("http://{}", self.http.listen)
                } else {
                    self.cluster.internal_url.clone()
                }
            );
        }
        let amd = &self.amd;
        let _ = match amd.mode {
            AmdModeName::Off => writeln!(w, "Answering-machine detection: off"),
            mode => writeln!(
                w,
                "Answering-machine detection: {} on outbound calls ({}), on a machine: {}",
                match mode {
                    AmdModeName::Hold => "the agent waits for the verdict",
                    _ => "the agent speaks at once and is told the verdict",
                },
                match mode {
                    AmdModeName::Hold => format!("at most {} ms after answer", amd.max_hold_ms),
                    _ => format!("verdict within {} ms", amd.total_analysis_time_ms),
                },
                match amd.on_machine {
                    OnMachineName::Hangup => "hang up".to_string(),
                    OnMachineName::Connect => "connect the agent anyway".to_string(),
                    OnMachineName::LeaveMessage => format!(
                        "leave a message after the beep ({} characters), then hang up",
                        amd.message.chars().count()
                    ),
                }
            ),
        };
        let _ = writeln!(w, "{}", self.recording.explain());
        s
    }
}

/// An environment value as TOML: numbers, booleans and arrays as such, anything else a string.
fn env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// `+` and 8–15 digits.
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../config/trunkline.toml");

    #[test]
    fn cluster_needs_postgres_a_sane_heartbeat_and_a_reachable_url() {
        let mut c = Config::default();
        c.cluster.enabled = true;
        let e = c.validate().expect_err("sqlite").to_string();
        assert!(e.contains("needs a shared PostgreSQL"), "{e}");
        c.records.database_url = "postgres://u@db/trunkline".into();
        c.http.listen = "0.0.0.0:8080".parse().expect("addr");
        let e = c.validate().expect_err("wildcard").to_string();
        assert!(e.contains("cluster.internal_url is empty"), "{e}");
        c.cluster.internal_url = "http://10.0.0.5:8080".into();
        c.cluster.heartbeat_secs = 0;
        let e = c.validate().expect_err("heartbeat").to_string();
        assert!(e.contains("cluster.heartbeat_secs"), "{e}");
        c.cluster.heartbeat_secs = 2;
        c.validate().expect("valid cluster config");
        assert!(
            c.explain(&Secrets::default())
                .contains("the limits above are for all nodes together")
        );
        c.cluster.internal_url = "10.0.0.5:8080".into();
        assert!(c.validate().is_err(), "a URL, with its scheme");
    }

    #[test]
    fn shipped_config_parses_validates_and_documents_every_key() {
        let cfg = Config::from_toml_and_env(SHIPPED, []).expect("shipped config parses");
        cfg.validate().expect("shipped config is valid");
        // Every key of every section appears in the shipped file, so it documents them all.
        let defaults = toml::Value::try_from(Config::default()).expect("serialize");
        let shipped: toml::Table = SHIPPED.parse().expect("toml");
        let toml::Value::Table(sections) = defaults else {
            panic!("not a table")
        };
        for (section, keys) in sections {
            let toml::Value::Table(keys) = keys else {
                continue;
            };
            for key in keys.keys() {
                let documented = shipped
                    .get(&section)
                    .and_then(|s| s.as_table())
                    .is_some_and(|t| t.contains_key(key))
                    || SHIPPED.contains(&format!("# {key} ="));
                assert!(
                    documented,
                    "[{section}] {key} is not in config/trunkline.toml"
                );
            }
        }
    }

    #[test]
    fn env_overrides_any_key_with_typed_values() {
        let env = [
            (
                "TRUNKLINE__HTTP__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            (
                "TRUNKLINE__POLICY__MAX_CONCURRENT_CALLS".to_owned(),
                "7".to_owned(),
            ),
            ("TRUNKLINE__RTP__SYMMETRIC".to_owned(), "false".to_owned()),
            (
                "TRUNKLINE__POLICY__PINNED_NUMBERS".to_owned(),
                r#"["+33123456789"]"#.to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let cfg = Config::from_toml_and_env(SHIPPED, env).expect("overrides apply");
        assert_eq!(cfg.http.listen, "127.0.0.1:9999".parse().expect("addr"));
        assert_eq!(cfg.policy.max_concurrent_calls, 7);
        assert!(!cfg.rtp.symmetric);
        assert_eq!(cfg.policy.pinned_numbers, vec!["+33123456789".to_owned()]);
    }

    #[test]
    fn typos_and_bad_values_are_refused_with_a_clear_message() {
        let err = Config::from_toml_and_env("[http]\nlisten_addr = \"1.2.3.4:1\"\n", [])
            .expect_err("unknown key");
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = Config::from_toml_and_env("", [("TRUNKLINE__HTTP".to_owned(), "x".to_owned())])
            .expect_err("bad override");
        assert!(matches!(err, ConfigError::BadOverride(_)));
        let mut cfg = Config::default();
        cfg.trunk.caller_id = "0612345678".into();
        cfg.agent.uplink_chunk_ms = 500;
        cfg.rtp.send_delay_ms = 25;
        cfg.rtp.jitter_max_ms = 500;
        let err = cfg.validate().expect_err("invalid").to_string();
        assert!(
            err.contains("caller_id")
                && err.contains("uplink_chunk_ms")
                && err.contains("send_delay_ms")
                && err.contains("rtp.jitter_max_ms must be at most 400"),
            "{err}"
        );
    }

    #[test]
    fn connect_at_trigger_needs_a_request_timeout_longer_than_the_agent_connect() {
        let ok = "[agent]\nconnect_at = \"trigger\"\nconnect_timeout_secs = 10\n";
        let cfg = Config::from_toml_and_env(ok, []).expect("parses");
        assert_eq!(cfg.agent.connect_at, ConnectAt::Trigger);
        cfg.validate().expect("10 s agent, 30 s request");
        let bad = "[agent]\nconnect_at = \"trigger\"\nconnect_timeout_secs = 29\n";
        let err = Config::from_toml_and_env(bad, [])
            .expect("parses")
            .validate()
            .expect_err("29 s agent, 30 s request");
        assert!(
            err.to_string().contains("http.request_timeout_secs"),
            "{err}"
        );
        // Other modes do not wait for the agent in the request.
        let ringing = "[agent]\nconnect_at = \"ringing\"\nconnect_timeout_secs = 29\n";
        let cfg = Config::from_toml_and_env(ringing, []).expect("parses");
        cfg.validate().expect("ringing");
    }

    #[test]
    fn an_open_trigger_is_a_config_error_unless_loudly_accepted() {
        let open = "[policy]\nrequire_token = false\n";
        let cfg = Config::from_toml_and_env(open, []).expect("parses");
        let err = cfg
            .validate()
            .expect_err("open trigger refused")
            .to_string();
        assert!(
            err.contains("toll fraud")
                && err.contains("policy.allow_open_trigger_i_accept_toll_fraud_risk = true"),
            "{err}"
        );
        // Any one restriction closes it.
        for restricted in [
            "[policy]\nrequire_token = false\npinned_numbers = [\"+33612345678\"]\n",
            "[policy]\nrequire_token = false\nallowed_prefixes = [\"+33\"]\n",
            "[policy]\nrequire_token = true\n",
        ] {
            let cfg = Config::from_toml_and_env(restricted, []).expect("parses");
            assert!(cfg.validate().is_ok(), "{restricted}");
            assert!(!cfg.explain(&Secrets::default()).contains("OPEN TRIGGER"));
        }
        // The override is accepted, and check-config says it loudly.
        let cfg = Config::from_toml_and_env(
            "[policy]\nrequire_token = false\nallow_open_trigger_i_accept_toll_fraud_risk = true\n",
            [],
        )
        .expect("parses");
        cfg.validate().expect("explicitly accepted");
        assert!(
            cfg.explain(&Secrets::default())
                .contains("WARNING: OPEN TRIGGER")
        );
    }

    #[test]
    fn request_variables_cannot_name_the_operators_or_the_calls_own() {
        for bad in [
            "[agent]\nrequest_variables = [\"caller_id\"]\n",
            "[agent]\nrequest_variables = [\"tier\"]\n[agent.dynamic_variables]\ntier = \"gold\"\n",
            "[agent]\nrequest_variables = [\"\"]\n",
        ] {
            let cfg = Config::from_toml_and_env(bad, []).expect("parses");
            let err = cfg.validate().expect_err(bad).to_string();
            assert!(err.contains("agent.request_variables"), "{err}");
        }
        let cfg =
            Config::from_toml_and_env("[agent]\nrequest_variables = [\"customer_name\"]\n", [])
                .expect("parses");
        cfg.validate().expect("valid");
    }

    #[test]
    fn transfer_needs_an_allowlist() {
        let err = Config::from_toml_and_env("[agent]\ntransfer_enabled = true\n", [])
            .expect("parses")
            .validate()
            .expect_err("no allowlist")
            .to_string();
        assert!(err.contains("agent.transfer_allow_prefixes"), "{err}");
        for bad in [
            "[agent]\ntransfer_enabled = true\ntransfer_allow_prefixes = [\"+\"]\n",
            "[agent]\ntransfer_enabled = true\ntransfer_allow_sip_hosts = [\"a@b\"]\n",
        ] {
            let cfg = Config::from_toml_and_env(bad, []).expect("parses");
            assert!(cfg.validate().is_err(), "{bad}");
        }
        for ok in [
            "[agent]\ntransfer_enabled = true\ntransfer_allow_prefixes = [\"+3361\"]\n",
            "[agent]\ntransfer_enabled = true\ntransfer_allow_sip_hosts = [\"pbx.example\"]\n",
        ] {
            let cfg = Config::from_toml_and_env(ok, []).expect("parses");
            cfg.validate().expect(ok);
        }
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        let s = Secrets::from_env(|k| match k {
            "TRUNKLINE_API_TOKEN" => {
                Some("widget:abcabcabcabcabcabc, backend:defdefdefdefdefdef".into())
            }
            "ELEVENLABS_API_KEY" => Some("xi-secret".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(s.api_tokens.len(), 2);
        assert_eq!(
            s.api_tokens[1],
            ("backend".into(), "defdefdefdefdefdef".into())
        );
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("xi-secret") && !shown.contains("abc"),
            "{shown}"
        );
    }

    #[test]
    fn empty_short_or_odd_api_tokens_are_refused_at_start() {
        let env =
            |v: &'static str| move |k: &str| (k == "TRUNKLINE_API_TOKEN").then(|| v.to_owned());
        for bad in [
            "backend:",
            "backend: ",
            "",
            " ",
            "backend:shorttok",
            "shorttok",
            "backend:0123456789abcdef,",
            "backend:0123456789abcdef,:0123456789abcdeX",
            "backend:0123456789 abcdef",
            "a:0123456789abcdef,a:0123456789abcdeX",
            "a:0123456789abcdef,b:0123456789abcdef",
        ] {
            let err = Secrets::from_env(env(bad)).expect_err(bad).to_string();
            assert!(err.contains("TRUNKLINE_API_TOKEN"), "{bad}: {err}");
            assert!(!err.contains("shorttok") && !err.contains("0123"), "{err}");
        }
        let err = Secrets::from_env(env("backend:")).expect_err("empty");
        assert!(err.to_string().contains("16 characters"), "{err}");
        let ok = Secrets::from_env(env("0123456789abcdef")).expect("16 is enough");
        assert_eq!(
            ok.api_tokens,
            vec![("default".into(), "0123456789abcdef".into())]
        );
        assert!(
            Secrets::from_env(|_| None)
                .expect("unset")
                .api_tokens
                .is_empty()
        );
    }

    #[test]
    fn trunk_dns_failover_and_inbound_auth_keys_are_checked_and_explained() {
        let base = "[policy]\nrequire_token = true\n";
        for bad in [
            "[trunk]\nfailover_timeout_ms = 50\n",
            "[trunk]\nfailover_timeout_ms = 40000\n",
            "[trunk]\ninbound_auth = true\n",
            "[trunk]\ninbound_auth_algorithms = [\"SHA-512-256\"]\n",
            "[trunk]\ninbound_auth_algorithms = []\n",
            "[trunk]\ninbound_auth_realm = \"a\\\"b\"\n",
        ] {
            let cfg = Config::from_toml_and_env(&format!("{base}{bad}"), []).expect("parses");
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(
            Config::from_toml_and_env("[trunk]\ndns_servers = [\"not an address\"]\n", []).is_err()
        );
        let cfg = Config::from_toml_and_env(
            &format!(
                "{base}[trunk]\ndns_servers = [\"127.0.0.1:5353\"]\nfailover_timeout_ms = 2500\ninbound_auth = true\ninbound_auth_username = \"carrier\"\n"
            ),
            [],
        )
        .expect("parses");
        cfg.validate().expect("valid");
        let text = cfg.explain(&Secrets::default());
        assert!(
            text.contains("RFC 3263 (NAPTR, SRV, A/AAAA) via 127.0.0.1:5353"),
            "{text}"
        );
        assert!(text.contains("after 2500 ms"), "{text}");
        assert!(
            text.contains("TRUNKLINE_INBOUND_PASSWORD not set"),
            "{text}"
        );
        let secrets = Secrets {
            inbound_password: Some("pw".into()),
            ..Secrets::default()
        };
        let text = cfg.explain(&secrets);
        assert!(
            text.contains("Inbound digest authentication: on (user carrier"),
            "{text}"
        );
        assert!(!text.contains("will not start"), "{text}");
        assert!(!format!("{secrets:?}").contains("pw\""));
    }
}

#[cfg(test)]
mod amd_tests {
    use super::*;

    #[test]
    fn amd_section_is_validated() {
        let mut a = AmdSection::default();
        assert_eq!(a.mode, AmdModeName::Off);
        assert!(a.problems().is_empty());
        a.mode = AmdModeName::Hold;
        a.on_machine = OnMachineName::LeaveMessage;
        assert_eq!(
            a.problems(),
            vec!["amd.on_machine = \"leave_message\" needs amd.message".to_string()]
        );
        a.message = "Please call back.".into();
        a.max_hold_ms = 0;
        a.max_words = 0;
        let p = a.problems();
        assert!(
            p.iter().any(|e| e.starts_with("amd.max_hold_ms must be")),
            "{p:?}"
        );
        assert!(p.iter().any(|e| e.starts_with("amd.max_words")), "{p:?}");
        let cfg: Config =
            toml::from_str("[amd]\nmode = \"detect\"\non_machine = \"connect\"\n").expect("parses");
        assert_eq!(cfg.amd.mode, AmdModeName::Detect);
        assert!(toml::from_str::<Config>("[amd]\nmode = \"maybe\"\n").is_err());
        let s = crate::setup::amd_settings(&cfg.amd).expect("on");
        assert_eq!(s.detector.greeting, std::time::Duration::from_millis(1500));
    }
}

#[cfg(test)]
mod recording_tests {
    use super::*;

    #[test]
    fn recording_section_is_validated() {
        let mut c = Config::default();
        assert!(c.validate().is_ok(), "off by default, valid");
        assert_eq!(c.recording.retention_days, 30);
        assert_eq!(c.recording.format, RecordingFormatName::Wav);
        c.recording.enabled = true;
        assert!(c.validate().is_ok());
        let errs = |c: &Config| match c.validate() {
            Err(ConfigError::Invalid(e)) => e.join("\n"),
            other => panic!("expected invalid, got {other:?}"),
        };
        c.recording.format = RecordingFormatName::Opus;
        if cfg!(feature = "opus") {
            assert!(c.validate().is_ok());
        } else {
            assert!(errs(&c).contains("--features opus"), "{}", errs(&c));
        }
        c.recording.format = RecordingFormatName::Wav;
        c.recording.consent_message = "This call is recorded.".into();
        c.recording.consent_prompt_wav = "consent.wav".into();
        assert!(errs(&c).contains("exclusive"));
        c.recording.consent_prompt_wav.clear();
        assert!(c.validate().is_ok());
        c.recording.dir = " ".into();
        assert!(errs(&c).contains("recording.dir"));
        c.recording.dir = "recordings".into();
        c.recording.enabled = false;
        assert!(errs(&c).contains("recording.enabled = false"));
        assert!(
            toml::from_str::<Config>("[recording]\nformat = \"mp3\"\n").is_err(),
            "unknown formats are refused"
        );
    }

    #[test]
    fn recording_is_explained() {
        let mut c = RecordingSection::default();
        assert_eq!(c.explain(), "Recording: off");
        c.enabled = true;
        c.retention_days = 0;
        c.consent_message = "Recorded.".into();
        let e = c.explain();
        assert!(
            e.contains("kept forever") && e.contains("first message"),
            "{e}"
        );
    }
}
