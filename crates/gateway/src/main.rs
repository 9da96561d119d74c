//! `trunkline`: the gateway binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};
use trunkline_call::agent::AudioFormat;
use trunkline_call::record::EndCause;
use trunkline_call::sip::TransportKind;
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig};
use trunkline_emulators::trunk::{Outcome, PlaySource, TrunkConfig, TrunkEmulator};
use trunkline_gateway::config::{Config, LogFormat, Secrets};
use trunkline_gateway::demo::{self, DemoOptions};
use trunkline_gateway::server::Server;
use trunkline_gateway::setup::Setup;

/// Trunkline: a SIP trunk ↔ ElevenLabs Conversational AI voice gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DemoFormat {
    /// µ-law passthrough.
    Ulaw8000,
    /// PCM 16 kHz (transcoding).
    Pcm16000,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML file.
        #[arg(long, default_value = "config/trunkline.toml")]
        config: PathBuf,
        /// Seconds active calls may continue after SIGTERM before they are hung up.
        #[arg(long, default_value_t = 30)]
        grace_secs: u64,
    },
    /// One real call on loopback through emulated Twilio and ElevenLabs (no account, no key).
    Demo {
        /// Where to write the stereo recording (caller left, agent right).
        #[arg(long, default_value = "demo-call.wav")]
        wav: PathBuf,
        /// The agent's audio format.
        #[arg(long, value_enum, default_value = "ulaw8000")]
        agent_format: DemoFormat,
        /// Connect the agent at ringing (default: at answer).
        #[arg(long)]
        connect_at_ringing: bool,
    },
    /// Validate a configuration file and explain what it does.
    CheckConfig {
        /// The TOML file.
        #[arg(long, default_value = "config/trunkline.toml")]
        config: PathBuf,
    },
    /// Run one of the emulators standalone.
    Emulate {
        #[command(subcommand)]
        what: Emulate,
    },
}

#[derive(Debug, Subcommand)]
enum Emulate {
    /// An ElevenLabs-like agent server (WebSocket + signed-URL endpoint).
    Agent {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
    /// A Twilio-like SIP trunk that answers INVITEs and plays a capture.
    Trunk {
        /// SIP listen address (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:5070")]
        listen: SocketAddr,
        /// Digest credentials to require, `user:password`.
        #[arg(long)]
        credentials: Option<String>,
        /// `answer`, `busy`, `no-answer` or a status code to reject with.
        #[arg(long, default_value = "answer")]
        outcome: String,
        /// A pcap/pcapng file whose RTP the phone plays after answering.
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Hang up this many seconds after answer.
        #[arg(long)]
        hangup_after: Option<u64>,
    },
}

fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config, grace_secs } => rt.block_on(serve(config, grace_secs)),
        Command::Demo {
            wav,
            agent_format,
            connect_at_ringing,
        } => {
            init_logs("warn", false);
            let opts = DemoOptions {
                wav,
                agent_format: match agent_format {
                    DemoFormat::Ulaw8000 => AudioFormat::Ulaw8000,
                    DemoFormat::Pcm16000 => AudioFormat::Pcm { sample_rate: 16000 },
                },
                connect_at_ringing,
            };
            match rt.block_on(demo::run(&opts)) {
                Ok(report) => {
                    print!("{}", demo::summary(&report, &opts.wav));
                    if report.record.end_cause == Some(EndCause::AgentEnded) {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("the call did not end as expected");
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Emulate { what } => {
            init_logs("info", false);
            rt.block_on(emulate(what))
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(path).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let secrets = match Secrets::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("environment: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Everything the gateway parses at start (sources, URIs, certificates) is checked too.
    if let Err(e) = Setup::new(&cfg, &secrets, 0) {
        eprintln!("{}: invalid configuration:\n  - {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("{}: OK\n", path.display());
    print!("{}", cfg.explain(&secrets));
    ExitCode::SUCCESS
}

async fn serve(path: PathBuf, grace_secs: u64) -> ExitCode {
    let cfg = match Config::load(&path).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    init_logs(&cfg.log.level, cfg.log.format == LogFormat::Json);
    raise_fd_limit();
    let secrets = match Secrets::from_env(|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if cfg.agent.agent_id.is_empty() {
        warn!("agent.agent_id is not set: calls will fail to reach the agent");
    }
    let server = match Server::start(cfg.clone(), secrets).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    info!(
        http = %server.http_addr(),
        sip = ?server.gateway().sip_addr(TransportKind::Udp),
        "trunkline serving"
    );
    shutdown_signal().await;
    // Graceful shutdown: no new calls, let active calls finish, then hang up the rest.
    server.shutdown(Duration::from_secs(grace_secs)).await;
    info!("stopped");
    ExitCode::SUCCESS
}

/// Raise the soft limit on open files to the hard limit: every SIP connection, HTTP client and
/// RTP socket is a file descriptor, and the usual soft limit (1024) is reached long before the
/// connection caps.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
            return;
        };
        if soft >= hard {
            info!(open_files = soft, "file descriptor limit");
            return;
        }
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "file descriptor limit raised"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the file descriptor limit"),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    info!("shutdown requested");
}

async fn emulate(what: Emulate) -> ExitCode {
    match what {
        Emulate::Agent { listen } => {
            match AgentEmulator::start(listen, AgentEmulatorConfig::default()).await {
                Ok(e) => {
                    println!("agent emulator on {}", e.ws_base_url());
                    let _ = tokio::signal::ctrl_c().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("agent emulator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Emulate::Trunk {
            listen,
            credentials,
            outcome,
            pcap,
            hangup_after,
        } => {
            let outcome = match outcome.as_str() {
                "answer" => Outcome::Answer,
                "busy" => Outcome::Busy,
                "no-answer" => Outcome::NoAnswer,
                code => match code.parse() {
                    Ok(c) => Outcome::Reject(c),
                    Err(_) => {
                        eprintln!("--outcome: answer, busy, no-answer or a status code");
                        return ExitCode::from(2);
                    }
                },
            };
            let play = match pcap {
                Some(p) => match PlaySource::from_pcap(&p) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("{}: {e}", p.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => PlaySource::default(),
            };
            let cfg = TrunkConfig {
                listen,
                credentials: credentials
                    .and_then(|c| c.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))),
                outcome,
                play,
                hangup_after: hangup_after.map(Duration::from_secs),
                ..TrunkConfig::default()
            };
            match TrunkEmulator::start(cfg).await {
                Ok(t) => {
                    println!("trunk emulator on {}", t.addr());
                    let _ = tokio::signal::ctrl_c().await;
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("trunk emulator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
