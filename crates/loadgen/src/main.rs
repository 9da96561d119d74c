//! `trunkline-load`: load-test a Trunkline gateway (see the crate docs and docs/PERFORMANCE.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use trunkline_loadgen::report::{html, summary_table};
use trunkline_loadgen::runner::TOKEN;
use trunkline_loadgen::{AgentFormat, Level, Mode, RunConfig, Thresholds, run_blocking};

/// Replay RTP captures over many concurrent calls through a Trunkline gateway and measure the
/// audio path. Without --gateway, starts a gateway of its own on loopback, wired to its
/// emulators: `trunkline serve` as a child process (see --gateway-bin), which takes
/// TRUNKLINE__SECTION__KEY environment overrides like any `trunkline serve` (e.g.
/// TRUNKLINE__AGENT__UPLINK_CHUNK_MS=100).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// HTTP base URL of a running gateway (http://host:port); omitted: start one (a child
    /// process).
    #[arg(long)]
    gateway: Option<String>,
    /// SIP (UDP) address of the running gateway, for --mode inbound.
    #[arg(long)]
    gateway_sip: Option<SocketAddr>,
    /// Pid of the running gateway, to read its CPU and RSS from /proc.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Bearer token of the running gateway's API.
    #[arg(long, env = "TRUNKLINE_LOAD_TOKEN", default_value = TOKEN)]
    token: String,
    /// Call direction.
    #[arg(long, value_enum, default_value = "outbound")]
    mode: Mode,
    /// Calls to place (per level).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    /// Most calls up at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// New calls per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Keep placing calls for this long instead of a fixed count (e.g. 5m, 30s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How long each call stays up after answer (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    hold: Duration,
    /// The capture the phone side plays, looped (pcap or pcapng).
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// The agent's audio format.
    #[arg(long, value_enum, default_value = "ulaw_8000")]
    agent_format: AgentFormat,
    /// Raise concurrency (doubling from --concurrency) until pacing p99 > --max-pacing-p99-us,
    /// any loss or any failed call; report the last good level.
    #[arg(long)]
    find_max: bool,
    /// Highest level --find-max tries.
    #[arg(long, default_value_t = 2000)]
    max_concurrency: usize,
    /// --find-max pacing threshold, µs.
    #[arg(long, default_value_t = 2000)]
    max_pacing_p99_us: u64,
    /// Concurrency levels to run one after the other (e.g. 50,200,500); each level holds its
    /// calls for --step.
    #[arg(long, value_delimiter = ',')]
    ramp: Vec<usize>,
    /// Hold time of each --ramp level.
    #[arg(long, value_parser = parse_duration)]
    step: Option<Duration>,
    /// The agent only greets and then listens (no turns, no interruptions).
    #[arg(long)]
    quiet_agent: bool,
    /// Place no call: start the gateway and the emulators, print their addresses, sample the
    /// gateway for this long (e.g. 60s) while another tool (SIPp) calls it, then report.
    #[arg(long, value_parser = parse_duration)]
    serve_for: Option<Duration>,
    /// Skip the sample-exact passthrough check (the agent emulator then records nothing,
    /// which keeps the process's memory close to the gateway's own).
    #[arg(long)]
    no_integrity: bool,
    /// Where the emulated trunk listens (point an external gateway's outbound proxy here).
    #[arg(long, default_value = "127.0.0.1:0")]
    trunk_listen: SocketAddr,
    /// Where the emulated agent listens (an external gateway's agent base_url: ws://ADDR).
    #[arg(long, default_value = "127.0.0.1:0")]
    agent_listen: SocketAddr,
    /// The `trunkline` binary to start as the gateway (without --gateway); default: `trunkline`
    /// next to this executable (build it with `cargo build -p trunkline-gateway --bin trunkline`,
    /// same profile).
    #[arg(long, value_name = "PATH")]
    gateway_bin: Option<PathBuf>,
    /// Worker threads of the started gateway's runtime (its TOKIO_WORKER_THREADS).
    #[arg(long, default_value_t = 2)]
    gateway_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    load_threads: usize,
    /// The phone dials an RFC 4733 digit this often during each call (e.g. 2s; none in the last
    /// 1.5 s before it hangs up); the gateway passes each to the agent as a user_message.
    #[arg(long, value_parser = parse_duration)]
    dtmf_every: Option<Duration>,
    /// The agent asks the gateway (client tool send_dtmf) to dial digits to the phone after its
    /// first turn (the greeting); optionally the digits (default 1234).
    #[arg(long, num_args = 0..=1, default_missing_value = "1234", value_name = "DIGITS")]
    agent_dtmf: Option<String>,
    /// Percent of calls the agent ends itself (end_call) after the caller's first turn; those
    /// calls succeed when the phone gets the gateway's BYE.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    agent_ends: u32,
    /// SDES-SRTP on every call (the phones and the started gateway with
    /// trunk.media_encryption = "required"), to measure its cost against a plain run.
    #[arg(long)]
    srtp: bool,
    /// The agent leg over TLS, as in production: the agent emulator serves `wss://` with a fresh
    /// self-signed certificate, which the started gateway trusts through `agent.tls_ca_file`.
    #[arg(long)]
    agent_tls: bool,
    /// Start this many gateway processes (inbound mode only when > 1): each its own SIP/HTTP
    /// port and RTP port range; inbound INVITEs spread over them round robin (by Kamailio with
    /// --kamailio). CPU is their sum; per-node calls and CPU are reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// Start Kamailio (`kamailio` on PATH) with the repository's docker/kamailio/kamailio.cfg
    /// (see --kamailio-cfg) in front of the nodes, and send the inbound INVITEs to it.
    #[arg(long)]
    kamailio: bool,
    /// The Kamailio cfg for --kamailio (its `listen=`, `DS_LIST` and `CTL_SOCKET` lines are
    /// rewritten for loopback).
    #[arg(long, value_name = "PATH")]
    kamailio_cfg: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let mut hold = cli.hold;
    let levels = if cli.find_max {
        vec![Level {
            concurrency: cli.concurrency,
            calls: cli.concurrency,
            duration: None,
        }]
    } else if cli.ramp.is_empty() {
        vec![Level {
            concurrency: cli.concurrency,
            calls: if cli.duration.is_some() {
                usize::MAX
            } else {
                cli.calls
            },
            duration: cli.duration,
        }]
    } else {
        if let Some(step) = cli.step {
            hold = step;
        }
        cli.ramp
            .iter()
            .map(|&c| Level {
                concurrency: c,
                calls: c,
                duration: None,
            })
            .collect()
    };
    let cfg = RunConfig {
        gateway: cli.gateway,
        gateway_sip: cli.gateway_sip,
        gateway_pid: cli.gateway_pid,
        token: cli.token,
        mode: cli.mode,
        levels,
        rate: cli.rate,
        hold,
        pcap: cli
            .pcap
            .unwrap_or_else(trunkline_loadgen::runner::default_pcap),
        agent_format: cli.agent_format,
        integrity: !cli.no_integrity,
        agent_turns: !cli.quiet_agent,
        find_max: cli.find_max.then_some(Thresholds {
            pacing_p99_us: cli.max_pacing_p99_us,
            ..Thresholds::default()
        }),
        max_concurrency: cli.max_concurrency,
        trunk_listen: cli.trunk_listen,
        agent_listen: cli.agent_listen,
        gateway_bin: cli.gateway_bin,
        gateway_threads: cli.gateway_threads,
        load_threads: cli.load_threads,
        progress: !cli.quiet,
        serve_for: cli.serve_for,
        dtmf_every: cli.dtmf_every,
        agent_dtmf: cli.agent_dtmf,
        agent_ends_percent: cli.agent_ends,
        srtp: cli.srtp,
        agent_tls: cli.agent_tls,
        nodes: usize::from(cli.nodes),
        kamailio: cli.kamailio.then(|| {
            cli.kamailio_cfg
                .clone()
                .unwrap_or_else(trunkline_loadgen::kamailio::default_cfg)
        }),
        ..RunConfig::default()
    };
    let report = match run_blocking(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trunkline-load: {e:#}");
            return ExitCode::from(2);
        }
    };
    print!("{}", summary_table(&report));
    if let Some(path) = &cli.json {
        let text = match serde_json::to_string_pretty(&report) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("trunkline-load: JSON: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("trunkline-load: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &cli.html
        && let Err(e) = std::fs::write(path, html(&report))
    {
        eprintln!("trunkline-load: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let failed: usize = report.phases.iter().map(|p| p.failed).sum();
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn nodes_and_kamailio_parse() {
        let c = Cli::try_parse_from(["t", "--mode", "inbound", "--nodes", "3", "--kamailio"])
            .expect("parse");
        assert_eq!((c.nodes, c.kamailio, c.kamailio_cfg), (3, true, None));
        let c =
            Cli::try_parse_from(["t", "--kamailio", "--kamailio-cfg", "/x.cfg"]).expect("parse");
        assert_eq!(c.kamailio_cfg, Some(PathBuf::from("/x.cfg")));
        let c = Cli::try_parse_from(["t"]).expect("parse");
        assert_eq!((c.nodes, c.kamailio), (1, false));
        assert!(Cli::try_parse_from(["t", "--nodes", "0"]).is_err());
    }
}
