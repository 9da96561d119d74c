//! The configuration turned, once at start, into the typed configs of the crates below
//! (ARCHITECTURE.md: "nothing below `gateway` reads config files or env"). Everything that was a
//! string in the file is an enum or a parsed value here, so a bad value is a start-up error
//! (and a `check-config` error), never a decision made at call time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use trunkline_call::agent::AgentConfig;
use trunkline_call::legs::{
    DEFAULT_NOTIFY_TIMEOUT, Failover, InboundAuth, LegsConfig, SourceFilter, TrunkTarget,
};
use trunkline_call::runtime::sip_task::SipStackConfig;
use trunkline_call::sip::auth::Algorithm;
use trunkline_call::sip::{
    AcceptFilter, Codec, Credentials, HostPort, MediaParams, TimerConfig, TransportConfig,
    TransportKind, UaConfig, Uri, tls_client_config, tls_server_config_from_files,
};
use trunkline_call::{AgentConnectAt, CallConfig, DtmfMode, TransferCheck};

use trunkline_call::legs::Encryption;

use crate::config::{
    CodecName, Config, ConnectAt, DtmfDelivery, MediaEncryption, Secrets, SipTransport,
};
use crate::policy::{InboundSources, check_transfer_number};

/// Why the configuration cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// Where outbound INVITEs are sent: a host to resolve (the outbound proxy, else the termination
/// URI's host) and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkAddress {
    /// Host name or address literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether the URI named the port (then RFC 3263 §4.2 skips NAPTR/SRV).
    pub explicit_port: bool,
}

/// The typed configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The SIP stack: transports, UA, legs (trunk target, inbound source filter).
    pub stack: SipStackConfig,
    /// Every call's behaviour.
    pub call: CallConfig,
    /// Codecs to offer/accept, in order of preference.
    pub codecs: Vec<Codec>,
    /// The telephone-event payload type.
    pub dtmf_pt: u8,
    /// Where outbound INVITEs go (resolved for every call, RFC 3263: `dns::TrunkResolver`).
    pub trunk_address: TrunkAddress,
    /// The inbound source policy.
    pub inbound: InboundSources,
    /// RTP send thread delay (`None`: send from each call's task).
    pub send_delay: Option<Duration>,
    /// The agent stall timeout (`agent.stall_timeout_secs`; `None`: off).
    pub agent_stall_timeout: Option<Duration>,
    /// The agent connections' TLS client configuration, built once and shared by every call
    /// (its session cache lets later calls resume; `agent.tls_ca_file` or the webpki roots).
    pub agent_tls: Arc<rustls::ClientConfig>,
    /// The HTTP client of the signed-URL requests (private agents), shared by every call so
    /// that its connection to the API is kept alive and reused.
    pub agent_http: reqwest::Client,
}

impl Setup {
    /// Build everything from `cfg` (already validated), `secrets`, and the seed of the SIP ids.
    pub fn new(cfg: &Config, secrets: &Secrets, seed: u64) -> Result<Setup, SetupError> {
        let mut transports = TransportConfig {
            external_addr: cfg.sip.external_ip,
            ..TransportConfig::default()
        };
        for t in &cfg.sip.transports {
            match t {
                SipTransport::Udp => transports.udp = Some(cfg.sip.listen),
                SipTransport::Tcp => transports.tcp = Some(cfg.sip.listen),
                SipTransport::Tls => {
                    let listen = cfg
                        .sip
                        .tls_listen
                        .unwrap_or_else(|| SocketAddr::new(cfg.sip.listen.ip(), 5061));
                    let (Some(cert), Some(key)) = (&cfg.sip.tls_cert, &cfg.sip.tls_key) else {
                        return Err(SetupError("tls needs tls_cert and tls_key".into()));
                    };
                    transports.tls = Some(listen);
                    transports.tls_server = Some(
                        tls_server_config_from_files(cert.as_ref(), key.as_ref())
                            .map_err(|e| SetupError(e.to_string()))?,
                    );
                }
            }
        }
        let termination = Uri::parse(&cfg.trunk.termination_uri)
            .map_err(|e| SetupError(format!("trunk.termination_uri: {e}")))?;
        let request_uri_host = termination
            .as_sip()
            .map(|s| s.host_port.clone())
            .ok_or_else(|| SetupError("trunk.termination_uri has no host".into()))?;
        let trunk_address = trunk_address(cfg, &request_uri_host)?;
        if cfg.trunk.transport == SipTransport::Tls {
            // Outbound TLS: the trunk's certificate is checked against the termination host
            // (the Request-URI host), whatever address the connection goes to.
            let ca = match &cfg.trunk.tls_ca_file {
                Some(f) => Some(
                    std::fs::read(f)
                        .map_err(|e| SetupError(format!("trunk.tls_ca_file {f}: {e}")))?,
                ),
                None => None,
            };
            transports.tls_client = Some(
                tls_client_config(ca.as_deref())
                    .map_err(|e| SetupError(format!("trunk TLS: {e}")))?,
            );
            let host = request_uri_host.host.to_string();
            transports.tls_server_name = Some(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            );
        }
        let credentials = match (&cfg.trunk.username, &secrets.trunk_password) {
            (Some(u), Some(p)) => Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        };
        let inbound = InboundSources::parse(&cfg.trunk.inbound_allowed_sources)
            .map_err(|e| SetupError(format!("trunk.inbound_allowed_sources: {e}")))?;
        let filter = {
            let inbound = Arc::new(inbound.clone());
            SourceFilter::new(move |ip| inbound.allows(ip))
        };
        // Connection defences of the TCP/TLS listeners.
        transports.max_connections = cfg.sip.max_connections;
        transports.max_connections_per_source = cfg.sip.max_connections_per_source;
        transports.first_message_timeout = Duration::from_secs(cfg.sip.first_message_timeout_secs);
        transports.idle_timeout = Duration::from_secs(cfg.sip.idle_timeout_secs);
        if cfg.sip.restrict_connections_to_trunk {
            let inbound = Arc::new(inbound.clone());
            transports.accept_filter = Some(AcceptFilter::new(move |ip| inbound.allows(ip)));
        }
        let ua = UaConfig {
            user_agent: cfg.sip.user_agent.clone(),
            contact_user: "trunkline".into(),
            timers: TimerConfig {
                t1: Duration::from_millis(cfg.sip.t1_ms),
                t2: Duration::from_millis(cfg.sip.t2_ms),
                t4: Duration::from_millis(cfg.sip.t4_ms),
                ..TimerConfig::default()
            },
            ..UaConfig::default()
        };
        let stack = SipStackConfig {
            transports,
            ua,
            legs: LegsConfig {
                trunk: TrunkTarget {
                    request_uri_host,
                    transport: transport_kind(cfg.trunk.transport),
                    credentials,
                    caller_id: cfg.trunk.caller_id.clone(),
                    session_expires: (cfg.sip.session_expires_secs > 0)
                        .then(|| Duration::from_secs(cfg.sip.session_expires_secs)),
                    encryption: encryption(cfg.trunk.media_encryption),
                },
                inbound: filter,
                notify_timeout: DEFAULT_NOTIFY_TIMEOUT,
                inbound_auth: match (
                    cfg.trunk.inbound_auth,
                    &cfg.trunk.inbound_auth_username,
                    &secrets.inbound_password,
                ) {
                    (false, _, _) => None,
                    (true, Some(u), Some(p)) => Some(InboundAuth {
                        realm: cfg.trunk.inbound_auth_realm.clone(),
                        credentials: Credentials {
                            username: u.clone(),
                            password: p.clone(),
                        },
                        secret: seed ^ 0x5d1e_57a1_7e00_0001,
                        nonce_ttl: Duration::from_secs(300),
                        algorithms: cfg
                            .trunk
                            .inbound_auth_algorithms
                            .iter()
                            .filter_map(|a| Algorithm::parse(a))
                            .collect(),
                    }),
                    (true, _, _) => {
                        return Err(SetupError(
                            "trunk.inbound_auth needs trunk.inbound_auth_username and \
                             TRUNKLINE_INBOUND_PASSWORD"
                                .into(),
                        ));
                    }
                },
                failover: Failover {
                    target_timeout: Duration::from_millis(cfg.trunk.failover_timeout_ms),
                    total: Duration::from_secs(cfg.trunk.ring_timeout_secs),
                },
            },
            seed,
        };
        let a = &cfg.agent;
        let call = CallConfig {
            ring_timeout: Duration::from_secs(cfg.trunk.ring_timeout_secs),
            agent_connect: match a.connect_at {
                ConnectAt::Answer => AgentConnectAt::Answer,
                ConnectAt::Ringing => AgentConnectAt::Ringing,
                ConnectAt::Trigger => AgentConnectAt::Trigger,
            },
            agent_connect_timeout: Duration::from_secs(a.connect_timeout_secs),
            uplink_chunk: Duration::from_millis(a.uplink_chunk_ms),
            max_duration: Duration::from_secs(a.max_call_secs),
            drain_timeout: Duration::from_secs(a.drain_timeout_secs),
            dtmf_mode: match a.dtmf_mode {
                DtmfDelivery::UserMessage => DtmfMode::UserMessage,
                DtmfDelivery::ContextualUpdate => DtmfMode::ContextualUpdate,
                DtmfDelivery::Off => DtmfMode::Off,
            },
            transfer_enabled: a.transfer_enabled,
            transfer_allow_prefixes: a.transfer_allow_prefixes.clone(),
            transfer_allow_sip_hosts: a.transfer_allow_sip_hosts.clone(),
            // The trigger's destination policy applies to transfer numbers too.
            transfer_check: {
                let denied = cfg.policy.denied_prefixes.clone();
                TransferCheck::new(move |n| check_transfer_number(n, &denied))
            },
            amd: amd_settings(&cfg.amd),
            record_audio: cfg.recording.enabled,
            consent_prompt: consent_prompt(&cfg.recording)?,
            ..CallConfig::default()
        };
        let agent_tls = agent_tls_config(cfg.agent.tls_ca_file.as_deref())?;
        let mut http = AgentConfig::new("");
        http.tls = Some(agent_tls.clone());
        http.connect_timeout = Duration::from_secs(cfg.agent.connect_timeout_secs);
        let agent_http = http
            .http_client()
            .map_err(|e| SetupError(format!("agent HTTP client: {e}")))?;
        Ok(Setup {
            stack,
            call,
            codecs: cfg
                .trunk
                .codecs
                .iter()
                .map(|c| match c {
                    CodecName::Pcmu => Codec::pcmu(),
                    CodecName::Pcma => Codec::pcma(),
                })
                .collect(),
            dtmf_pt: cfg.trunk.dtmf_payload_type,
            trunk_address,
            inbound,
            send_delay: (cfg.rtp.send_delay_ms > 0)
                .then(|| Duration::from_millis(cfg.rtp.send_delay_ms)),
            agent_stall_timeout: (cfg.agent.stall_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.agent.stall_timeout_secs)),
            agent_tls,
            agent_http,
        })
    }

    /// Our media parameters for one call: `ip`/`port` in the SDP, the configured codecs and
    /// telephone-event.
    pub fn media_params(&self, ip: std::net::IpAddr, port: u16, session_id: u64) -> MediaParams {
        let mut p = MediaParams::g711(ip, port, session_id);
        p.codecs = self.codecs.clone();
        p.dtmf_pt = Some(self.dtmf_pt);
        p
    }
}

/// The media encryption policy of the configuration.
pub fn encryption(e: MediaEncryption) -> Encryption {
    match e {
        MediaEncryption::Disabled => Encryption::Disabled,
        MediaEncryption::Allowed => Encryption::Allowed,
        MediaEncryption::Required => Encryption::Required,
    }
}

/// The SIP transport kind of a configured transport.
pub fn transport_kind(t: SipTransport) -> TransportKind {
    match t {
        SipTransport::Udp => TransportKind::Udp,
        SipTransport::Tcp => TransportKind::Tcp,
        SipTransport::Tls => TransportKind::Tls,
    }
}

/// Where outbound INVITEs are sent: `trunk.outbound_proxy` (`host:port`, `[v6]:port`, or a
/// host alone) if set, else the termination URI's host, with the transport's default port.
fn trunk_address(cfg: &Config, termination: &HostPort) -> Result<TrunkAddress, SetupError> {
    let default_port = cfg.trunk.transport.default_port();
    let strip = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_owned();
    match &cfg.trunk.outbound_proxy {
        Some(p) => {
            if let Ok(a) = p.parse::<SocketAddr>() {
                return Ok(TrunkAddress {
                    host: a.ip().to_string(),
                    port: a.port(),
                    explicit_port: true,
                });
            }
            let hp = HostPort::parse(p)
                .map_err(|e| SetupError(format!("trunk.outbound_proxy {p:?}: {e}")))?;
            Ok(TrunkAddress {
                host: strip(&hp.host.to_string()),
                port: hp.port.unwrap_or(default_port),
                explicit_port: hp.port.is_some(),
            })
        }
        None => Ok(TrunkAddress {
            host: strip(&termination.host.to_string()),
            port: termination.port.unwrap_or(default_port),
            explicit_port: termination.port.is_some(),
        }),
    }
}

/// Longest consent prompt (it delays the agent's first words).
const MAX_CONSENT_SECS: usize = 60;

/// The consent prompt WAV as 8 kHz samples (`None` without one or with recording off).
fn consent_prompt(
    r: &crate::config::RecordingSection,
) -> Result<Option<std::sync::Arc<[i16]>>, SetupError> {
    let path = r.consent_prompt_wav.trim();
    if !r.enabled || path.is_empty() {
        return Ok(None);
    }
    let err = |e: String| SetupError(format!("recording.consent_prompt_wav {path}: {e}"));
    let reader = hound::WavReader::open(path).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.sample_rate != 8000
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(err(format!(
            "must be 8 kHz mono 16-bit PCM (is {} Hz, {} channel(s), {} bits)",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        )));
    }
    let samples: Vec<i16> = reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if samples.is_empty() {
        return Err(err("holds no audio".into()));
    }
    if samples.len() > MAX_CONSENT_SECS * 8000 {
        return Err(err(format!("longer than {MAX_CONSENT_SECS} s")));
    }
    Ok(Some(samples.into()))
}

/// `[amd]` → the call's answering-machine detection settings (`None` when off).
pub fn amd_settings(a: &crate::config::AmdSection) -> Option<trunkline_call::amd::AmdSettings> {
    use crate::config::{AmdModeName, OnMachineName};
    use trunkline_call::amd::{AmdConfig, AmdMode, AmdSettings, OnMachine};
    let ms = Duration::from_millis;
    let mode = match a.mode {
        AmdModeName::Off => return None,
        AmdModeName::Detect => AmdMode::Detect,
        AmdModeName::Hold => AmdMode::Hold,
    };
    Some(AmdSettings {
        mode,
        on_machine: match a.on_machine {
            OnMachineName::Hangup => OnMachine::Hangup,
            OnMachineName::LeaveMessage => OnMachine::LeaveMessage,
            OnMachineName::Connect => OnMachine::Connect,
        },
        max_hold: ms(a.max_hold_ms),
        message: a.message.clone(),
        detector: AmdConfig {
            initial_silence: ms(a.initial_silence_ms),
            greeting: ms(a.greeting_ms),
            after_greeting_silence: ms(a.after_greeting_silence_ms),
            total_analysis_time: ms(a.total_analysis_time_ms),
            min_word_length: ms(a.min_word_length_ms),
            between_words_silence: ms(a.between_words_silence_ms),
            max_words: a.max_words,
            silence_threshold_dbfs: a.silence_threshold_dbfs,
            beep_min: ms(a.beep_min_ms),
            greeting_end_silence: ms(a.greeting_end_silence_ms),
            max_beep_wait: ms(a.max_beep_wait_ms),
            ..AmdConfig::default()
        },
    })
}

/// The agent's TLS client configuration: the CA(s) of `ca_file` (PEM), else the webpki roots.
fn agent_tls_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, SetupError> {
    let mut a = AgentConfig::new("");
    if let Some(f) = ca_file {
        let pem =
            std::fs::read(f).map_err(|e| SetupError(format!("agent.tls_ca_file {f}: {e}")))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| SetupError(format!("agent.tls_ca_file {f}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| SetupError(format!("agent.tls_ca_file {f}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(SetupError(format!(
                "agent.tls_ca_file {f}: no certificate in it"
            )));
        }
        a.tls_roots = Some(Arc::new(roots));
    }
    a.rustls_config()
        .map(Arc::new)
        .map_err(|e| SetupError(format!("agent TLS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(path: &std::path::Path, rate: u32, channels: u16, n: usize) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..n {
            w.write_sample((i as i16).wrapping_mul(37)).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn the_consent_prompt_is_loaded_and_checked() {
        let dir = std::env::temp_dir().join(format!("trunkline-consent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.wav");
        write_wav(&good, 8000, 1, 4000);
        let mut cfg = Config::default();
        cfg.recording.enabled = true;
        cfg.recording.consent_prompt_wav = good.to_string_lossy().into_owned();
        let p = setup(&cfg).call.consent_prompt.expect("prompt");
        assert_eq!(p.len(), 4000);
        assert_eq!(p[3], 3 * 37);
        let wide = dir.join("wide.wav");
        write_wav(&wide, 16000, 1, 4000);
        cfg.recording.consent_prompt_wav = wide.to_string_lossy().into_owned();
        let e = Setup::new(&cfg, &Secrets::default(), 1).unwrap_err().0;
        assert!(
            e.contains("must be 8 kHz mono 16-bit PCM (is 16000 Hz"),
            "{e}"
        );
        cfg.recording.consent_prompt_wav = dir.join("missing.wav").to_string_lossy().into_owned();
        let e = Setup::new(&cfg, &Secrets::default(), 1).unwrap_err().0;
        assert!(e.starts_with("recording.consent_prompt_wav"), "{e}");
        cfg.recording.consent_prompt_wav.clear();
        assert!(setup(&cfg).call.consent_prompt.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn setup(cfg: &Config) -> Setup {
        Setup::new(cfg, &Secrets::default(), 1).expect("setup")
    }

    #[test]
    fn trunk_address_from_the_termination_uri_or_the_proxy() {
        let mut cfg = Config::default();
        cfg.trunk.termination_uri = "sip:example.pstn.twilio.com".into();
        assert_eq!(
            setup(&cfg).trunk_address,
            TrunkAddress {
                host: "example.pstn.twilio.com".into(),
                port: 5060,
                explicit_port: false,
            }
        );
        cfg.trunk.transport = SipTransport::Tls;
        assert_eq!(setup(&cfg).trunk_address.port, 5061);
        cfg.trunk.outbound_proxy = Some("[2001:db8::1]:5080".into());
        assert_eq!(
            setup(&cfg).trunk_address,
            TrunkAddress {
                host: "2001:db8::1".into(),
                port: 5080,
                explicit_port: true,
            }
        );
        cfg.trunk.outbound_proxy = Some("edge.example.net".into());
        assert_eq!(
            setup(&cfg).trunk_address,
            TrunkAddress {
                host: "edge.example.net".into(),
                port: 5061,
                explicit_port: false,
            }
        );
        // The Request-URI keeps the termination host whatever the next hop.
        assert_eq!(
            setup(&cfg).stack.legs.trunk.request_uri_host.to_string(),
            "example.pstn.twilio.com"
        );
    }

    #[test]
    fn tls_trunk_checks_the_termination_host_with_webpki_or_the_given_ca() {
        let mut cfg = Config::default();
        cfg.trunk.termination_uri = "sip:example.pstn.twilio.com".into();
        assert!(setup(&cfg).stack.transports.tls_client.is_none());
        cfg.trunk.transport = SipTransport::Tls;
        let t = setup(&cfg).stack.transports;
        assert!(t.tls_client.is_some(), "webpki roots by default");
        assert_eq!(
            t.tls_server_name.as_deref(),
            Some("example.pstn.twilio.com")
        );
        cfg.trunk.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let err = Setup::new(&cfg, &Secrets::default(), 1)
            .expect_err("missing CA file")
            .to_string();
        assert!(err.contains("trunk.tls_ca_file"), "{err}");
    }

    #[test]
    fn agent_tls_ca_file_is_read_once_and_refused_when_unusable() {
        let dir = std::env::temp_dir().join(format!("trunkline-agent-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut cfg = Config::default();
        setup(&cfg);
        cfg.agent.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let err = Setup::new(&cfg, &Secrets::default(), 1)
            .expect_err("missing CA file")
            .to_string();
        assert!(err.contains("agent.tls_ca_file"), "{err}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        cfg.agent.tls_ca_file = Some(empty.display().to_string());
        let err = Setup::new(&cfg, &Secrets::default(), 1)
            .expect_err("no certificate")
            .to_string();
        assert!(err.contains("no certificate"), "{err}");

        let id = trunkline_emulators::agent::TestIdentity::localhost().expect("identity");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, id.cert_pem()).expect("write");
        cfg.agent.tls_ca_file = Some(ca.display().to_string());
        setup(&cfg);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn media_encryption_words_become_the_legs_policy() {
        for (word, enc) in [
            ("disabled", Encryption::Disabled),
            ("allowed", Encryption::Allowed),
            ("required", Encryption::Required),
        ] {
            let text = format!("[trunk]\nmedia_encryption = \"{word}\"\n");
            let cfg = Config::from_toml_and_env(&text, []).expect("parses");
            assert_eq!(setup(&cfg).stack.legs.trunk.encryption, enc);
            assert!(
                cfg.explain(&Secrets::default())
                    .contains(&format!("Media encryption ({word})"))
            );
        }
        assert_eq!(
            setup(&Config::default()).stack.legs.trunk.encryption,
            Encryption::Disabled
        );
        let bad = Config::from_toml_and_env("[trunk]\nmedia_encryption = \"sometimes\"\n", [])
            .expect_err("unknown word")
            .to_string();
        assert!(bad.contains("unknown variant"), "{bad}");
    }

    #[test]
    fn config_words_become_typed_values() {
        let text = "[trunk]\ntransport = \"tcp\"\ncodecs = [\"PCMA\"]\n[agent]\nconnect_at = \"ringing\"\ndtmf_mode = \"off\"\n";
        let cfg = Config::from_toml_and_env(text, []).expect("parses");
        let s = setup(&cfg);
        assert_eq!(s.stack.legs.trunk.transport, TransportKind::Tcp);
        assert_eq!(s.codecs, vec![Codec::pcma()]);
        assert_eq!(s.call.agent_connect, AgentConnectAt::Ringing);
        assert_eq!(s.call.dtmf_mode, DtmfMode::Off);
        for bad in [
            "[trunk]\ntransport = \"sctp\"\n",
            "[trunk]\ncodecs = [\"G729\"]\n",
            "[agent]\nconnect_at = \"later\"\n",
            "[agent]\ndtmf_mode = \"sms\"\n",
            "[sip]\ntransports = [\"udp\", \"ws\"]\n",
            "[log]\nformat = \"xml\"\n",
        ] {
            let err = Config::from_toml_and_env(bad, [])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("unknown variant"), "{bad}: {err}");
        }
    }

    #[test]
    fn transfer_numbers_pass_the_triggers_destination_policy() {
        let mut cfg = Config::default();
        cfg.agent.transfer_enabled = true;
        cfg.agent.transfer_allow_prefixes = vec!["+33".into(), "+1".into()];
        let s = setup(&cfg);
        let check = |n: &str| s.call.transfer_check.check(n);
        assert_eq!(check("+33612345678"), Ok(()));
        // Premium rate by metadata, denied prefix, not a valid number.
        assert_eq!(
            check("+33891234567"),
            Err("destination not allowed (denied_prefix)".into())
        );
        cfg.policy.denied_prefixes.clear();
        let bare = setup(&cfg);
        assert_eq!(
            bare.call.transfer_check.check("+33891234567"),
            Err("destination not allowed (premium_rate)".into())
        );
        assert_eq!(
            check("+19005550123"),
            Err("destination not allowed (denied_prefix)".into())
        );
        assert_eq!(
            check("+99912345678"),
            Err("destination not allowed (invalid_number)".into())
        );
        assert_eq!(
            s.call.transfer_allow_prefixes,
            cfg.agent.transfer_allow_prefixes
        );
    }

    #[test]
    fn the_inbound_filter_is_the_configured_policy() {
        let mut cfg = Config::default();
        cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
        let s = setup(&cfg);
        assert!(s.stack.legs.inbound.allows([127, 0, 0, 1].into()));
        assert!(!s.stack.legs.inbound.allows([127, 0, 0, 2].into()));
    }

    #[test]
    fn connection_defences_come_from_the_config_and_the_accept_filter_is_the_trunk() {
        let mut cfg = Config::default();
        cfg.trunk.inbound_allowed_sources = vec!["127.0.0.1/32".into()];
        cfg.sip.max_connections = 7;
        cfg.sip.max_connections_per_source = 3;
        cfg.sip.first_message_timeout_secs = 2;
        let t = setup(&cfg).stack.transports;
        assert_eq!((t.max_connections, t.max_connections_per_source), (7, 3));
        assert_eq!(t.first_message_timeout, Duration::from_secs(2));
        let f = t.accept_filter.expect("restricted to the trunk by default");
        assert!(f.allows([127, 0, 0, 1].into()) && !f.allows([127, 0, 0, 2].into()));
        cfg.sip.restrict_connections_to_trunk = false;
        assert!(setup(&cfg).stack.transports.accept_filter.is_none());
    }
}
