//! The load run: starts (or reaches) a gateway, the trunk and agent emulators, places calls at a
//! given rate and concurrency level by level, samples CPU and memory while they run, and reduces
//! what the phone and the agent saw into a [`RunReport`].
//!
//! Without `--gateway`, the gateway is a child process (`trunkline serve`, see
//! [`gateway_process`](crate::gateway_process)) wired on loopback to the emulators, which run with
//! this driver on this process's runtime (threads named [`LOAD_THREAD`]). The gateway's CPU is
//! the sum of its threads' `utime + stime` (kernel work done on those threads — socket sends,
//! wake-ups — included; softirq work charged to other threads is not) and its memory its own
//! process's RSS, both from `/proc/<pid>`. Its HTTP API is reached with a pooled client
//! ([`api`](crate::api)).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use trunkline_agent::AudioFormat;
use trunkline_emulators::agent::{
    AgentEmulator, AgentEmulatorConfig, ConnectionRecord, Script, TestIdentity, ToolCallSpec,
    VadConfig,
};
use trunkline_emulators::trunk::{
    Originate, PlayPacket, PlaySource, RxPacket, TrunkCall, TrunkConfig, TrunkEmulator, TrunkSrtp,
};
use trunkline_media::g711::G711;

use crate::analyze::{self, Integrity};
use crate::api::GatewayApi;
use crate::gateway_process::{self, GatewayProcess, GatewaySpec, TRUNK_PASSWORD, TRUNK_USER};
use crate::kamailio::Kamailio;
use crate::procfs::{self, GatewayProc, LOAD_THREAD, Usage};
use crate::prom;
use crate::results::{
    AgentFormat, Defect, FindMax, Mode, NodeShare, PhaseReport, RunReport, Sample, Stats,
    Thresholds,
};
use crate::schedule;
use crate::sipspy::SipSpy;

/// The bearer token of the gateway this tool starts (and the default for an external one).
pub const TOKEN: &str = "trunkline-load-token-0123456789";

/// The agent emulator's audio format for `f`.
fn audio_format(f: AgentFormat) -> AudioFormat {
    match f {
        AgentFormat::Ulaw8000 => AudioFormat::Ulaw8000,
        AgentFormat::Pcm16000 => AudioFormat::Pcm { sample_rate: 16000 },
    }
}

/// One level of load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    /// Most calls up at once.
    pub concurrency: usize,
    /// Calls to place (`usize::MAX` with `duration`).
    pub calls: usize,
    /// Stop placing calls after this long.
    pub duration: Option<Duration>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// HTTP base URL of an external gateway (`None`: start one, a child process).
    pub gateway: Option<String>,
    /// SIP address of an external gateway (inbound mode).
    pub gateway_sip: Option<SocketAddr>,
    /// Pid of an external gateway, for its CPU and RSS.
    pub gateway_pid: Option<u32>,
    /// Bearer token of the gateway's API (the gateway this tool starts is given it).
    pub token: String,
    /// Call direction.
    pub mode: Mode,
    /// Levels to run, in order (with `find_max`: the first level; later ones are generated).
    pub levels: Vec<Level>,
    /// New calls per second.
    pub rate: f64,
    /// How long each call stays up after answer.
    pub hold: Duration,
    /// The capture the phone plays (looped).
    pub pcap: PathBuf,
    /// The agent's audio format.
    pub agent_format: AgentFormat,
    /// The agent answers the caller's turns (and gets interrupted by them); `false`: it only
    /// greets, then listens.
    pub agent_turns: bool,
    /// Record the agent side and check µ-law passthrough sample by sample (costs memory).
    pub integrity: bool,
    /// Raise concurrency until the thresholds break.
    pub find_max: Option<Thresholds>,
    /// Highest level `find_max` tries.
    pub max_concurrency: usize,
    /// Trunk ring time before answer.
    pub ring_time: Duration,
    /// Where the emulated trunk listens (an external gateway's outbound proxy).
    pub trunk_listen: SocketAddr,
    /// Where the emulated agent listens (an external gateway's agent base URL).
    pub agent_listen: SocketAddr,
    /// The `trunkline` binary to start (`None`: the one next to this executable, see
    /// [`gateway_process::default_bin`]).
    pub gateway_bin: Option<PathBuf>,
    /// Worker threads of the started gateway's runtime (`TOKIO_WORKER_THREADS`).
    pub gateway_threads: usize,
    /// Worker threads of the load generator's runtime.
    pub load_threads: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Place no call: start the gateway and emulators, print their addresses, wait this long
    /// (for an independent load generator such as SIPp), then report the gateway's resources.
    pub serve_for: Option<Duration>,
    /// The phone dials an RFC 4733 digit this often during each call.
    pub dtmf_every: Option<Duration>,
    /// The agent asks the gateway (client tool `send_dtmf`) to dial these digits to the phone
    /// after its first turn (the greeting).
    pub agent_dtmf: Option<String>,
    /// Percentage of calls the agent ends itself (end_call) after the caller's first turn.
    pub agent_ends_percent: u32,
    /// SDES-SRTP between the phones (trunk emulator) and the gateway (`--srtp`).
    pub srtp: bool,
    /// The agent emulator serves `wss://`; the started gateway trusts its certificate
    /// (`--agent-tls`).
    pub agent_tls: bool,
    /// Gateway processes to start (`--nodes`, inbound only when > 1): distinct ports and RTP
    /// ranges; calls spread over them round robin, by Kamailio with `kamailio`.
    pub nodes: usize,
    /// Start Kamailio (this cfg: `docker/kamailio/kamailio.cfg`) in front of the nodes and send
    /// the inbound INVITEs to it.
    pub kamailio: Option<PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            gateway: None,
            gateway_sip: None,
            gateway_pid: None,
            token: TOKEN.into(),
            mode: Mode::Outbound,
            levels: vec![Level {
                concurrency: 10,
                calls: 20,
                duration: None,
            }],
            rate: 20.0,
            hold: Duration::from_secs(4),
            pcap: default_pcap(),
            agent_format: AgentFormat::Ulaw8000,
            agent_turns: true,
            integrity: true,
            find_max: None,
            max_concurrency: 2000,
            ring_time: Duration::from_millis(100),
            trunk_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_bin: None,
            gateway_threads: 1,
            load_threads: 1,
            progress: false,
            serve_for: None,
            dtmf_every: None,
            agent_dtmf: None,
            agent_ends_percent: 0,
            srtp: false,
            agent_tls: false,
            nodes: 1,
            kamailio: None,
        }
    }
}

/// How long the warm-up call is held (at most `--hold`): long enough for the greeting to play.
const WARM_UP_HOLD: Duration = Duration::from_secs(3);

/// The capture used by default: 10 s of µ-law speech without gaps or telephone-events.
pub fn default_pcap() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/pcap/derived/pcmu_speech_from_sip-rtp-g711.pcap"
    ))
}

/// Run on a runtime of our own (threads named [`LOAD_THREAD`]) and return the report.
pub fn run_blocking(cfg: RunConfig) -> anyhow::Result<RunReport> {
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.load_threads.max(1))
        .thread_name(LOAD_THREAD)
        .enable_all()
        .build()?;
    let result = load_rt.block_on(async move { tokio::spawn(run(cfg)).await? });
    load_rt.shutdown_background();
    result
}

/// The gateway: how to reach it, and the processes when this tool started them.
struct Target {
    /// Node 0's API (the only node without `--nodes`).
    api: Option<GatewayApi>,
    /// Where inbound INVITEs go: node 0 (or an external gateway), or Kamailio.
    sip: Option<SocketAddr>,
    proc_: GatewayProc,
    processes: Vec<GatewayProcess>,
    /// Every node's API and SIP address (`--nodes N` without Kamailio: INVITEs round robin).
    nodes: Vec<(GatewayApi, SocketAddr)>,
    kamailio: Option<tokio::sync::Mutex<Kamailio>>,
}

struct Ctx {
    cfg: RunConfig,
    target: Target,
    trunk: TrunkEmulator,
    spy: Option<SipSpy>,
    http_failures: AtomicU64,
    live: AtomicU64,
    /// Trigger instants of the current phase.
    triggers: Mutex<Vec<Instant>>,
    run_start: Instant,
    agent: AgentEmulator,
    /// Agent connection records already attributed to earlier phases.
    agent_seen: AtomicU64,
    /// One pass of the phone's audio, decoded (the integrity reference).
    expected: Vec<i16>,
    /// Samples in each audio packet of one pass of the capture.
    packet_lens: Vec<usize>,
    /// The integrity check (and the latencies found by content) apply.
    checkable: bool,
}

/// Start the emulators and the gateway (or reach it), run the configured levels (or the
/// capacity search), stop the gateway if this tool started it, and build the report.
#[allow(clippy::too_many_lines)]
pub async fn run(cfg: RunConfig) -> anyhow::Result<RunReport> {
    let play = PlaySource::from_pcap(&cfg.pcap)
        .with_context(|| format!("reading {}", cfg.pcap.display()))?;
    if play.packets.is_empty() {
        return Err(anyhow!("{}: no RTP audio stream", cfg.pcap.display()));
    }
    let play_bytes = play_source_bytes(&play);
    let trunk = TrunkEmulator::start(TrunkConfig {
        listen: cfg.trunk_listen,
        credentials: Some((TRUNK_USER.into(), TRUNK_PASSWORD.into())),
        ring_time: cfg.ring_time,
        early_media: false,
        play: play.clone(),
        play_loop: true,
        hangup_after: Some(cfg.hold),
        record_sends: cfg.integrity,
        dtmf_every: cfg.dtmf_every,
        // No digit in the last 1.5 s: it must reach the agent before the phone hangs up.
        dtmf_until: Some(cfg.hold.saturating_sub(Duration::from_millis(1500))),
        srtp: if cfg.srtp {
            TrunkSrtp::Required
        } else {
            TrunkSrtp::Off
        },
        ..TrunkConfig::default()
    })
    .await?;
    if cfg.agent_tls && cfg.gateway.is_some() {
        return Err(anyhow!(
            "--agent-tls needs a started gateway (no --gateway): it is given the emulator's CA"
        ));
    }
    let agent_identity = if cfg.agent_tls {
        Some(TestIdentity::localhost().context("generating the agent emulator's certificate")?)
    } else {
        None
    };
    let agent_config = AgentEmulatorConfig {
        input_format: audio_format(cfg.agent_format),
        output_format: audio_format(cfg.agent_format),
        record: cfg.integrity,
        vad: if cfg.agent_turns {
            VadConfig::default()
        } else {
            VadConfig {
                threshold_rms: f64::MAX,
                ..VadConfig::default()
            }
        },
        script: Script {
            tool_call: cfg.agent_dtmf.as_ref().map(|d| ToolCallSpec {
                after_turn: 0,
                tool_name: "send_dtmf".into(),
                parameters: serde_json::json!({ "digits": d }),
            }),
            end_call_percent: cfg.agent_ends_percent,
            ..Script::default()
        },
        ..AgentEmulatorConfig::default()
    };
    let agent = match &agent_identity {
        Some(id) => AgentEmulator::start_tls(cfg.agent_listen, agent_config, id).await?,
        None => AgentEmulator::start(cfg.agent_listen, agent_config).await?,
    };
    if (cfg.nodes > 1 || cfg.kamailio.is_some())
        && (cfg.mode != Mode::Inbound || cfg.gateway.is_some())
    {
        return Err(anyhow!(
            "--nodes and --kamailio need --mode inbound and a started gateway (no --gateway)"
        ));
    }
    let (target, spy) = match &cfg.gateway {
        None => {
            let spy = SipSpy::start(trunk.addr()).await?;
            let ca = agent_identity.as_ref().map(|id| id.cert_pem().to_owned());
            let t = start_gateway(spy.addr(), &agent, ca, &cfg).await?;
            (t, Some(spy))
        }
        Some(url) => {
            let http = resolve_http(url).await?;
            let proc_ = cfg
                .gateway_pid
                .map_or(GatewayProc::Unknown, GatewayProc::Pid);
            let t = Target {
                api: Some(GatewayApi::new(http, cfg.token.clone())),
                sip: cfg.gateway_sip,
                proc_,
                processes: Vec::new(),
                nodes: Vec::new(),
                kamailio: None,
            };
            (t, None)
        }
    };
    if cfg.mode == Mode::Inbound && target.sip.is_none() {
        return Err(anyhow!(
            "inbound mode against an external gateway needs --gateway-sip"
        ));
    }
    let checkable = cfg.integrity
        && cfg.agent_format == AgentFormat::Ulaw8000
        && schedule::integrity_checkable(&play);
    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        target,
        trunk,
        spy,
        http_failures: AtomicU64::new(0),
        live: AtomicU64::new(0),
        triggers: Mutex::new(Vec::new()),
        run_start: Instant::now(),
        agent,
        agent_seen: AtomicU64::new(0),
        expected: schedule::expected_audio(&play, G711::Ulaw),
        packet_lens: play
            .packets
            .iter()
            .filter(|p| p.law.is_some())
            .map(|p| p.payload.len())
            .collect(),
        checkable,
    });
    let result = measure(&ctx, play_bytes).await;
    // Stop the gateway this tool started (SIGTERM, then wait for it), whatever the result.
    if let Some(k) = &ctx.target.kamailio {
        k.lock().await.stop().await;
    }
    for p in &ctx.target.processes {
        match p.stop().await {
            Ok(Some(st)) if !st.success() => eprintln!(
                "trunkline-load: the gateway (pid {}) exited with {st}; its last output:\n{}",
                p.pid(),
                p.output_tail()
            ),
            Ok(_) => {}
            Err(e) => eprintln!("trunkline-load: stopping the gateway: {e:#}"),
        }
    }
    result
}

/// The run proper, once everything is up: the warm-up call, the idle baseline, then each level
/// (or `--serve-for`).
#[allow(clippy::too_many_lines)]
async fn measure(ctx: &Arc<Ctx>, play_bytes: u64) -> anyhow::Result<RunReport> {
    let cfg = &ctx.cfg;
    let checkable = ctx.checkable;
    let agent = &ctx.agent;

    if let Some(d) = cfg.serve_for {
        let pid = match &ctx.target.proc_ {
            GatewayProc::Pid(p) => p.to_string(),
            GatewayProc::Pids(ps) => format!("{ps:?}"),
            GatewayProc::Unknown => "-".into(),
        };
        println!(
            "gateway: sip udp {} http {} pid {pid}; trunk emulator {}; agent emulator {}",
            ctx.target.sip.map_or("-".into(), |a| a.to_string()),
            ctx.target
                .api
                .as_ref()
                .map_or("-".into(), |a| a.addr().to_string()),
            ctx.trunk.addr(),
            agent.ws_base_url()
        );
        let phase = serve_phase(ctx, d).await;
        return Ok(RunReport {
            tool: format!("trunkline-load {}", env!("CARGO_PKG_VERSION")),
            mode: cfg.mode,
            agent_format: cfg.agent_format,
            pcap: String::new(),
            // The gateway never runs inside this process any more (kept for the report's readers).
            in_process: false,
            rate_cps: 0.0,
            hold_s: 0.0,
            cpu_method: "serve mode: calls placed by another tool; gateway CPU % of a core and RSS sampled every 250 ms".into(),
            idle_gateway_cpu_pct: 0.0,
            integrity_checkable: false,
            agent_turns: cfg.agent_turns,
            find_max: None,
            thresholds: None,
            phases: vec![phase],
        });
    }

    // Warm-up: one short call placed and completed before measuring (lazy initialisation in the
    // gateway — phone-number metadata, first connections — is not per-call cost). Not reported.
    let mut next_index = 0u64;
    let warm_hold = cfg.hold.min(WARM_UP_HOLD);
    ctx.trunk.set_hangup_after(Some(warm_hold));
    let warm = run_phase(
        ctx,
        Level {
            concurrency: 1,
            calls: 1,
            duration: None,
        },
        warm_hold,
        &mut next_index,
        0.0,
        play_bytes,
    )
    .await;
    ctx.trunk.set_hangup_after(None);
    if warm.failed > 0 {
        return Err(anyhow!("the warm-up call failed: {:?}", warm.failures));
    }

    // Idle baseline of the gateway's CPU.
    let u0 = ctx.target.proc_.sample();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let u1 = ctx.target.proc_.sample();
    let idle_cpu_per_s = (u1.gateway_cpu_s - u0.gateway_cpu_s).max(0.0);

    let mut phases = Vec::new();
    let mut find_max = None;
    let mut levels = cfg.levels.clone();
    let mut i = 0;
    while i < levels.len() {
        let level = levels[i];
        let mut phase = run_phase(
            ctx,
            level,
            cfg.hold,
            &mut next_index,
            idle_cpu_per_s,
            play_bytes,
        )
        .await;
        if let Some(th) = cfg.find_max {
            let verdict = th.broken(&phase);
            phase.threshold_broken = verdict.clone();
            let good = verdict.is_none();
            let fm = find_max.get_or_insert(FindMax::default());
            if good {
                fm.last_good = Some(level.concurrency);
                let next = (level.concurrency * 2).min(cfg.max_concurrency);
                if next > level.concurrency {
                    levels.push(Level {
                        concurrency: next,
                        calls: next,
                        duration: None,
                    });
                }
            } else {
                fm.first_bad = Some(level.concurrency);
                fm.reason = verdict;
            }
        }
        phases.push(phase);
        i += 1;
    }
    Ok(RunReport {
        tool: format!("trunkline-load {}", env!("CARGO_PKG_VERSION")),
        mode: cfg.mode,
        agent_format: cfg.agent_format,
        pcap: cfg.pcap.display().to_string(),
        // The gateway never runs inside this process any more (kept for the report's readers).
        in_process: false,
        rate_cps: cfg.rate,
        hold_s: cfg.hold.as_secs_f64(),
        cpu_method: match (&ctx.target.proc_, cfg.gateway.is_none()) {
            (GatewayProc::Pid(p), true) => format!(
                "gateway child process (`trunkline serve`, pid {p}, {} worker thread(s)): utime+stime of all its threads from /proc/{p}/task/*/stat, VmRSS from /proc/{p}/status; the emulators and this tool run in the parent",
                cfg.gateway_threads
            ),
            (GatewayProc::Pid(p), false) => {
                format!("external gateway pid {p}: /proc/{p}/task/*/stat and /proc/{p}/status")
            }
            (GatewayProc::Pids(ps), _) => format!(
                "{} gateway child processes (`trunkline serve`, pids {ps:?}, {} worker thread(s) each){}: utime+stime of all their threads summed, VmRSS summed; the emulators and this tool run in the parent",
                ps.len(),
                cfg.gateway_threads,
                if cfg.kamailio.is_some() {
                    " behind Kamailio (its CPU is reported apart)"
                } else {
                    ", inbound INVITEs spread round robin"
                }
            ),
            (GatewayProc::Unknown, _) => {
                "external gateway without --gateway-pid: not measured".into()
            }
        },
        idle_gateway_cpu_pct: idle_cpu_per_s * 100.0,
        integrity_checkable: checkable,
        agent_turns: cfg.agent_turns,
        find_max,
        thresholds: cfg.find_max,
        phases,
    })
}

/// Start the gateway process, wired to the emulators (its outbound proxy is `proxy`, the
/// INVITE timing relay in front of the trunk emulator).
async fn start_gateway(
    proxy: SocketAddr,
    agent: &AgentEmulator,
    agent_ca_pem: Option<String>,
    run: &RunConfig,
) -> anyhow::Result<Target> {
    let bin = match &run.gateway_bin {
        Some(b) => b.clone(),
        None => gateway_process::default_bin().context("finding the gateway binary")?,
    };
    let n = run.nodes.max(1);
    let mut processes = Vec::new();
    for i in 0..n {
        processes.push(
            GatewayProcess::start(&GatewaySpec {
                bin: bin.clone(),
                trunk: proxy,
                agent_ws: agent.ws_base_url(),
                token: run.token.clone(),
                worker_threads: run.gateway_threads,
                srtp: run.srtp,
                agent_ca_pem: agent_ca_pem.clone(),
                rtp_ports: gateway_process::node_rtp_ports(i, n),
            })
            .await?,
        );
    }
    let nodes: Vec<(GatewayApi, SocketAddr)> = processes
        .iter()
        .map(|p| (GatewayApi::new(p.http(), run.token.clone()), p.sip()))
        .collect();
    let kamailio = match &run.kamailio {
        Some(cfg) => {
            let sips: Vec<SocketAddr> = nodes.iter().map(|n| n.1).collect();
            Some(Kamailio::start(cfg, &sips).await?)
        }
        None => None,
    };
    let proc_ = if n == 1 {
        GatewayProc::Pid(processes[0].pid())
    } else {
        GatewayProc::Pids(processes.iter().map(GatewayProcess::pid).collect())
    };
    Ok(Target {
        api: Some(nodes[0].0.clone()),
        sip: Some(kamailio.as_ref().map_or(nodes[0].1, Kamailio::addr)),
        proc_,
        processes,
        nodes: if n > 1 { nodes } else { Vec::new() },
        kamailio: kamailio.map(tokio::sync::Mutex::new),
    })
}

async fn resolve_http(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--gateway must be an http:// URL"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    tokio::net::lookup_host(hostport)
        .await?
        .next()
        .ok_or_else(|| anyhow!("{url}: no address"))
}

/// Bytes one call's copy of the capture costs the trunk emulator (it clones it per call).
fn play_source_bytes(p: &PlaySource) -> u64 {
    let per = std::mem::size_of::<PlayPacket>() as u64;
    p.packets
        .iter()
        .map(|x| per + x.payload.capacity() as u64 + 16)
        .sum()
}

/// Bytes the trunk emulator keeps per RTP packet received (its record, never freed).
fn rx_packet_bytes() -> u64 {
    std::mem::size_of::<RxPacket>() as u64 * 3 / 2 + 160 + 16
}

/// The phone number of call `i` (unique per call: the trunk's Request-URI identifies the call).
pub fn number(i: u64) -> String {
    format!("+336{:08}", i % 100_000_000)
}

struct Placed {
    index: u64,
    trigger: Instant,
    http_status: Option<u16>,
    error: Option<String>,
}

#[allow(clippy::too_many_lines)]
async fn run_phase(
    ctx: &Arc<Ctx>,
    level: Level,
    hold: Duration,
    next_index: &mut u64,
    idle_cpu_per_s: f64,
    play_bytes: u64,
) -> PhaseReport {
    let cfg = &ctx.cfg;
    let metrics_before = scrape_metrics(ctx).await;
    let sem = Arc::new(Semaphore::new(level.concurrency.max(1)));
    let per_call = cfg.ring_time + hold + Duration::from_millis(1500);
    if let Ok(mut t) = ctx.triggers.lock() {
        t.clear();
    }
    let total = if level.calls == usize::MAX {
        None
    } else {
        Some(level.calls as u64)
    };
    let bar = if cfg.progress {
        ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(format!("C={}", level.concurrency));

    // Sampler.
    let samples: Arc<Mutex<Vec<RawSample>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let (ctx, samples, stop, bar) = (ctx.clone(), samples.clone(), stop.clone(), bar.clone());
        let ring = ctx.cfg.ring_time;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut prev: Option<(Instant, Usage)> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.notified() => break,
                }
                let now = Instant::now();
                let u = ctx.target.proc_.sample();
                // Calls with media flowing, and the trunk's recording so far (an estimate).
                let (media_live, rx_pkts) = ctx.triggers.lock().map_or((0, 0), |t| {
                    let mut live = 0u64;
                    let mut pk = 0u64;
                    for &tr in t.iter() {
                        let a = tr + ring;
                        if now >= a && now < a + hold {
                            live += 1;
                        }
                        let up = now.min(a + hold).saturating_duration_since(a);
                        pk += up.as_millis() as u64 / 20;
                    }
                    (live, pk)
                });
                // (+ the phone's send log, one Instant per packet sent, with integrity on.)
                let per_pkt = rx_packet_bytes() + if ctx.cfg.integrity { 16 } else { 0 };
                let rec = rx_pkts * per_pkt + media_live * play_bytes;
                if let Some((pt, pu)) = prev {
                    let dt = now.duration_since(pt).as_secs_f64().max(1e-3);
                    bar.set_message(format!(
                        "live {} http-fail {} gw cpu {:.0}% rss {} MiB",
                        ctx.live.load(Ordering::Relaxed),
                        ctx.http_failures.load(Ordering::Relaxed),
                        (u.gateway_cpu_s - pu.gateway_cpu_s) / dt * 100.0,
                        u.gateway_rss / (1 << 20)
                    ));
                }
                prev = Some((now, u));
                if let Ok(mut s) = samples.lock() {
                    s.push((now, media_live, u, rec));
                }
            }
        })
    };

    let nodes_before = node_counters(ctx).await;
    let phase_start = Instant::now();
    let rss_before = ctx.target.proc_.sample().gateway_rss;
    let mut handles = Vec::new();
    let mut placed_n = 0u64;
    loop {
        if total.is_some_and(|t| placed_n >= t) {
            break;
        }
        if level.duration.is_some_and(|d| phase_start.elapsed() >= d) {
            break;
        }
        let due = phase_start + Duration::from_secs_f64(placed_n as f64 / cfg.rate.max(0.001));
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let index = *next_index;
        *next_index += 1;
        placed_n += 1;
        let ctx2 = ctx.clone();
        let bar2 = bar.clone();
        handles.push(tokio::spawn(async move {
            ctx2.live.fetch_add(1, Ordering::Relaxed);
            let trigger = Instant::now();
            if let Ok(mut t) = ctx2.triggers.lock() {
                t.push(trigger);
            }
            let (http_status, error) = place(&ctx2, index).await;
            if error.is_some() {
                ctx2.http_failures.fetch_add(1, Ordering::Relaxed);
            } else {
                tokio::time::sleep_until((trigger + per_call).into()).await;
            }
            ctx2.live.fetch_sub(1, Ordering::Relaxed);
            bar2.inc(1);
            drop(permit);
            Placed {
                index,
                trigger,
                http_status,
                error,
            }
        }));
    }
    let mut placed = Vec::new();
    for h in handles {
        if let Ok(p) = h.await {
            placed.push(p);
        }
    }
    stop.notify_one();
    let _ = sampler.await;
    bar.finish_and_clear();

    // Wait for the trunk to see every call of the phase end.
    let wanted: Vec<String> = placed.iter().map(|p| call_key(cfg.mode, p.index)).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut calls = ctx.trunk.calls();
    loop {
        let ended = wanted
            .iter()
            .filter(|k| {
                calls.iter().any(|c| {
                    key_of(cfg.mode, c).as_deref() == Some(k.as_str()) && c.ended_by.is_some()
                })
            })
            .count();
        if ended == wanted.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        calls = ctx.trunk.calls();
    }
    let phase_end = Instant::now();
    let nodes_after = node_counters(ctx).await;
    let secs = phase_end
        .duration_since(phase_start)
        .as_secs_f64()
        .max(1e-3);
    let nodes_share: Vec<NodeShare> = nodes_before
        .0
        .iter()
        .zip(&nodes_after.0)
        .map(|(b, a)| NodeShare {
            calls: a.0.saturating_sub(b.0),
            cpu_pct: (a.1 - b.1).max(0.0) / secs * 100.0,
        })
        .collect();
    let kamailio_cpu_pct = nodes_before
        .1
        .zip(nodes_after.1)
        .map(|(b, a)| (a - b).max(0.0) / secs * 100.0);
    let by_key: std::collections::HashMap<String, &TrunkCall> = calls
        .iter()
        .filter_map(|c| key_of(cfg.mode, c).map(|k| (k, c)))
        .collect();

    let metrics_after = scrape_metrics(ctx).await;
    let between = |name: &str| {
        let b = prom::histogram(metrics_before.as_deref()?, name)?;
        let a = prom::histogram(metrics_after.as_deref()?, name)?;
        prom::send_pacing_between(&b, &a)
    };
    let mut report = PhaseReport {
        concurrency: level.concurrency,
        placed: placed.len(),
        gateway_send_pacing: between(prom::SEND_PACING),
        gateway_tick_lateness: between(prom::TICK_LATENESS),
        gateway_missed_send_slots: metrics_before
            .as_deref()
            .zip(metrics_after.as_deref())
            .filter(|(_, a)| a.contains(prom::MISSED_SLOTS))
            .map(|(b, a)| {
                prom::counter_sum(a, prom::MISSED_SLOTS)
                    .saturating_sub(prom::counter_sum(b, prom::MISSED_SLOTS))
            }),
        nodes: nodes_share,
        kamailio_cpu_pct,
        ..PhaseReport::default()
    };
    // The agent's side of the phase: its connections (one per call, in accept order), keyed like
    // the trunk's calls by the dynamic variables the gateway passed.
    let seen = ctx.agent_seen.load(Ordering::Relaxed) as usize;
    let recs: Vec<ConnectionRecord> = ctx
        .agent
        .wait_finished(seen + placed.len(), Duration::from_secs(10))
        .await
        .into_iter()
        .skip(seen)
        .collect();
    ctx.agent_seen
        .store((seen + recs.len()) as u64, Ordering::Relaxed);
    let recs_by_key: std::collections::HashMap<String, &ConnectionRecord> = recs
        .iter()
        .filter_map(|r| agent_key(cfg.mode, r).map(|k| (k, r)))
        .collect();
    let mut integ_by_key: std::collections::HashMap<String, (Integrity, Vec<(usize, usize)>)> =
        Default::default();
    if ctx.checkable {
        let mut integ = Integrity::default();
        let (mut checked, mut exact, mut accounted) = (0usize, 0usize, 0usize);
        for r in &recs {
            let one = analyze::integrity(&r.caller_audio, &ctx.expected);
            checked += 1;
            exact += usize::from(one.exact());
            if !one.exact() {
                let at = one.aligned_at + one.first_mismatch.unwrap_or(0);
                let chunk_t = r.caller_chunks.iter().find(|c| c.1 >= at).map(|c| c.0);
                let since_interruption_ms = chunk_t.and_then(|c| {
                    r.interruption_times
                        .iter()
                        .filter(|t| **t <= c)
                        .max()
                        .map(|t| c.duration_since(*t).as_secs_f64() * 1000.0)
                });
                // The gateway's own account of the call: did its jitter buffer skip exactly
                // the missing samples (quiet audio, to shrink its depth)?
                let sid = r.dynamic_variables.get("call_sid");
                let up = match (&ctx.target.api, sid) {
                    (Some(api), Some(sid)) => gateway_uplink(api, sid).await,
                    _ => None,
                };
                let field = |k: &str| up.as_ref().and_then(|u| u[k].as_u64());
                let (dropped, forced) = (field("dropped_samples"), field("dropped_forced_samples"));
                let underruns = field("underruns");
                // After an underrun the jitter buffer conceals, then re-anchors deeper (audio
                // inserted, nothing lost) and later skips quiet frames to shrink back: allow as
                // many insertions as the gateway reports underruns.
                let explained = match underruns {
                    Some(u) if u > 0 && one.deleted_only.is_none() => analyze::integrity_allowing(
                        &r.caller_audio,
                        &ctx.expected,
                        usize::try_from(u).unwrap_or(usize::MAX),
                    ),
                    _ => one,
                };
                // Every stretch missing is quiet audio and the gateway reports skipping at
                // least that much. It may report more: a frame skipped after the last chunk the
                // agent received (a call the agent ends) never shows in what it heard.
                let is_accounted = dropped.is_some_and(|d| {
                    explained
                        .deleted_only
                        .and_then(|x| u64::try_from(x).ok())
                        .is_some_and(|x| (x > 0 || explained.inserted > 0) && x <= d)
                });
                accounted += usize::from(is_accounted);
                report.integrity_defects.push(Defect {
                    at_s: one.first_mismatch.unwrap_or(0) as f64 / 8000.0,
                    shift_samples: one.shift,
                    mismatched_samples: one.mismatched,
                    since_interruption_ms,
                    gateway_dropped_samples: dropped,
                    gateway_forced_samples: forced,
                    gateway_underruns: underruns,
                    gateway_late_packets: field("late"),
                    gateway_lost_packets: up.as_ref().and_then(|u| u["lost"].as_i64()),
                    accounted: is_accounted,
                    call_sid: sid.cloned(),
                    unexplained: explained.unexplained.map(|u| u.to_string()),
                    inserted_samples: explained.inserted,
                });
            }
            integ.compared += one.compared;
            integ.mismatched += one.mismatched;
            if let Some(k) = agent_key(cfg.mode, r) {
                let dels = analyze::deletions(&r.caller_audio, &ctx.expected, &one);
                integ_by_key.insert(k, (one, dels));
            }
        }
        report.integrity_checked = Some(checked);
        report.integrity_exact = Some(exact);
        report.integrity_accounted = Some(accounted);
        report.integrity_mismatched_samples = Some(integ.mismatched);
        report.integrity_compared_samples = Some(integ.compared);
    }
    let response_audio = ctx.agent.response_audio();

    let mut t2i = Stats::histogram();
    let mut a2a = Stats::histogram();
    let mut pacing = Stats::histogram();
    let mut pacing_rx = Stats::histogram();
    let mut uplink = Stats::histogram();
    let mut downlink = Stats::histogram();
    let mut downlink_first = Stats::histogram();
    let (mut up_sent, mut up_delivered, mut down_sent, mut down_delivered) =
        (0u64, 0u64, 0u64, 0u64);
    let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &placed {
        let key = call_key(cfg.mode, p.index);
        let fail = |f: &mut std::collections::BTreeMap<String, usize>, why: String| {
            *f.entry(why).or_insert(0) += 1;
        };
        if let Some(e) = &p.error {
            fail(&mut failures, e.clone());
            continue;
        }
        let _ = p.http_status;
        let Some(tc) = by_key.get(&key) else {
            fail(&mut failures, "no INVITE reached the trunk".into());
            continue;
        };
        match cfg.mode {
            Mode::Outbound => {
                if let Some(at) = ctx
                    .spy
                    .as_ref()
                    .and_then(|s| s.log().first_invite(&number(p.index)))
                {
                    t2i.record_us(at.saturating_duration_since(p.trigger));
                }
            }
            Mode::Inbound => {
                if let Some(at) = tc.answered_at {
                    t2i.record_us(at.saturating_duration_since(p.trigger));
                }
            }
        }
        let d = analyze::downlink(tc);
        report.packets_received += d.received;
        report.lost += d.lost;
        report.late += d.late;
        for &g in &d.pacing_us {
            pacing.record_raw(g);
        }
        for &g in &d.pacing_user_us {
            pacing_rx.record_raw(g);
        }
        report.pacing_stamped_packets += d.stamped;
        let rec = recs_by_key.get(&key).copied();
        if let Some(r) = rec
            && let Some((integ, dels)) = integ_by_key.get(&key)
        {
            let up = analyze::uplink_latency(
                &r.caller_chunks,
                r.caller_audio.len(),
                integ,
                dels,
                &ctx.packet_lens,
                &tc.sent_log,
            );
            for l in up {
                uplink.record_us(l);
            }
            let down = analyze::downlink_latency(tc, &r.audio_sent, &response_audio);
            for l in down.chunks {
                downlink.record_us(l);
            }
            for l in down.first_chunks {
                downlink_first.record_us(l);
            }
            report.downlink_responses_found += down.responses_found;
            report.downlink_responses_queued += down.responses_queued;
        }
        // DTMF both ways: digits the phone sent while the agent was still connected vs the
        // `user_message`s the agent got; digits the agent asked `send_dtmf` for vs the RFC 4733
        // events the phone got.
        let ended = rec.and_then(|r| r.ended_at);
        up_sent += tc
            .dtmf_sent
            .iter()
            .filter(|(t, _)| ended.is_none_or(|e| *t < e))
            .count() as u64;
        if let Some(r) = rec {
            up_delivered += r
                .user_messages
                .iter()
                .filter(|(_, m)| is_dtmf_text(m))
                .count() as u64;
            down_sent += r
                .tool_calls
                .iter()
                .filter(|(name, _)| name == "send_dtmf")
                .filter_map(|(_, p)| p.get("digits").and_then(|d| d.as_str()))
                .map(|d| d.chars().filter(|c| !matches!(c, 'w' | 'W')).count() as u64)
                .sum::<u64>();
        }
        down_delivered += tc.dtmf_received().len() as u64;
        let Some(answered) = tc.answered_at else {
            fail(
                &mut failures,
                format!("not answered (final {:?})", tc.final_status),
            );
            continue;
        };
        match d.first_loud {
            Some(f) => a2a.record_us(f.saturating_duration_since(answered)),
            None => {
                fail(&mut failures, "no agent audio reached the phone".into());
                continue;
            }
        }
        let agent_ended =
            tc.ended_by.as_deref() == Some("remote_bye") && rec.is_some_and(|r| r.ends_call);
        if agent_ended {
            report.agent_ended_calls += 1;
        } else if tc.ended_by.as_deref() != Some("local_bye") {
            fail(
                &mut failures,
                format!(
                    "ended by the gateway before the phone hung up ({:?})",
                    tc.ended_by
                ),
            );
            continue;
        }
        report.completed += 1;
    }
    report.failed = report.placed - report.completed;
    report.failures = failures.into_iter().collect();
    report.trigger_to_invite_ms = t2i.stats_ms();
    report.answer_to_first_audio_ms = a2a.stats_ms();
    report.pacing_us = pacing.stats_raw();
    report.pacing_at_receiver_us = pacing_rx.stats_raw();
    if ctx.checkable {
        let lat_buckets = [5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000];
        report.uplink_latency_ms = Some(uplink.stats_ms());
        report.uplink_latency_hist_ms = uplink.buckets_ms(&lat_buckets);
        report.downlink_latency_ms = Some(downlink.stats_ms());
        report.downlink_latency_hist_ms = downlink.buckets_ms(&lat_buckets);
        report.downlink_first_chunk_ms = Some(downlink_first.stats_ms());
        report.downlink_first_chunk_hist_ms = downlink_first.buckets_ms(&lat_buckets);
    }
    if cfg.dtmf_every.is_some() {
        report.dtmf_phone_to_agent_sent = Some(up_sent);
        report.dtmf_phone_to_agent_delivered = Some(up_delivered);
    }
    if cfg.agent_dtmf.is_some() {
        report.dtmf_agent_to_phone_sent = Some(down_sent);
        report.dtmf_agent_to_phone_delivered = Some(down_delivered);
    }
    report.pacing_hist_us = pacing.buckets(&[
        50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000, 20_000,
    ]);
    report.trigger_to_invite_hist_ms = t2i.buckets_ms(&[1, 2, 3, 5, 10, 20, 50, 100, 200, 500]);
    report.answer_to_first_audio_hist_ms =
        a2a.buckets_ms(&[50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 5000]);
    report.duration_s = phase_end.duration_since(phase_start).as_secs_f64();

    // Resources.
    let s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let mut cpu_sum = 0.0;
    let mut call_seconds = 0.0;
    let mut peak: Option<(u64, u64)> = None; // (live, rss)
    for w in s.windows(2) {
        let (t0, _, u0, _) = w[0];
        let (t1, live, u1, rec) = w[1];
        let dt = t1.duration_since(t0).as_secs_f64();
        let gw = (u1.gateway_cpu_s - u0.gateway_cpu_s).max(0.0);
        let proc_ = (u1.process_cpu_s - u0.process_cpu_s).max(0.0);
        report.samples.push(Sample {
            t_s: t1.duration_since(ctx.run_start).as_secs_f64(),
            live_calls: live,
            gateway_cpu_pct: gw / dt.max(1e-3) * 100.0,
            process_cpu_pct: proc_ / dt.max(1e-3) * 100.0,
            rss_bytes: u1.gateway_rss,
            emulator_recording_bytes: rec,
        });
        if live > 0 {
            cpu_sum += gw - idle_cpu_per_s * dt;
            call_seconds += live as f64 * dt;
        }
        if peak.is_none_or(|(l, _)| live >= l) {
            peak = Some((live, u1.gateway_rss));
        }
    }
    if call_seconds > 0.0 {
        report.gateway_cpu_per_call_pct = Some(cpu_sum.max(0.0) / call_seconds * 100.0);
        report.call_seconds = call_seconds;
    }
    let steady: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|x| {
            x.live_calls as usize >= level.concurrency.min(placed.len()) && x.live_calls > 0
        })
        .collect();
    if !steady.is_empty() {
        let n = steady.len() as f64;
        report.steady_gateway_cpu_pct =
            Some(steady.iter().map(|x| x.gateway_cpu_pct).sum::<f64>() / n);
        report.steady_process_cpu_pct =
            Some(steady.iter().map(|x| x.process_cpu_pct).sum::<f64>() / n);
    }
    if let Some((live, rss)) = peak
        && live > 0
        && !matches!(ctx.target.proc_, GatewayProc::Unknown)
    {
        report.peak_live_calls = live;
        report.rss_before_bytes = rss_before;
        report.rss_peak_bytes = rss;
        report.rss_per_call_bytes = Some(rss.saturating_sub(rss_before) / live);
    }
    report
}

/// Sample the gateway while another tool places calls (its active-call count is not known here).
async fn serve_phase(ctx: &Ctx, d: Duration) -> PhaseReport {
    let start = Instant::now();
    let mut prev = (start, ctx.target.proc_.sample());
    let mut report = PhaseReport::default();
    while start.elapsed() < d {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let u = ctx.target.proc_.sample();
        let dt = now.duration_since(prev.0).as_secs_f64().max(1e-3);
        report.samples.push(Sample {
            t_s: now.duration_since(ctx.run_start).as_secs_f64(),
            live_calls: 0,
            gateway_cpu_pct: (u.gateway_cpu_s - prev.1.gateway_cpu_s).max(0.0) / dt * 100.0,
            process_cpu_pct: (u.process_cpu_s - prev.1.process_cpu_s).max(0.0) / dt * 100.0,
            rss_bytes: u.gateway_rss,
            emulator_recording_bytes: 0,
        });
        report.rss_peak_bytes = report.rss_peak_bytes.max(u.gateway_rss);
        prev = (now, u);
    }
    report.duration_s = start.elapsed().as_secs_f64();
    report
}

/// (when, calls with media, usage, emulator recording estimate).
type RawSample = (Instant, u64, Usage, u64);

fn call_key(mode: Mode, index: u64) -> String {
    match mode {
        Mode::Outbound => number(index),
        Mode::Inbound => format!("orig-CAload{index}"),
    }
}

fn key_of(mode: Mode, c: &TrunkCall) -> Option<String> {
    match mode {
        Mode::Outbound => {
            if c.direction != "termination" {
                return None;
            }
            let after = c.request_uri.strip_prefix("sip:")?;
            Some(after.split('@').next()?.to_owned())
        }
        Mode::Inbound => (c.direction == "origination").then(|| c.call_id.clone()),
    }
}

/// The key of an agent connection, like [`call_key`]: the number called (outbound) or the trunk's
/// call id (inbound), from the dynamic variables the gateway sends.
fn agent_key(mode: Mode, r: &ConnectionRecord) -> Option<String> {
    match mode {
        Mode::Outbound => r.dynamic_variables.get("called_number").cloned(),
        Mode::Inbound => r
            .dynamic_variables
            .get("twilio_call_sid")
            .map(|s| format!("orig-{s}")),
    }
}

/// A `user_message` that is one DTMF key (what the gateway sends with `dtmf_mode = user_message`).
fn is_dtmf_text(m: &str) -> bool {
    let mut c = m.chars();
    matches!(
        (c.next(), c.next()),
        (Some('0'..='9' | '*' | '#' | 'A'..='D'), None)
    )
}

/// Place call `index`; returns the HTTP status and an error text when it failed.
async fn place(ctx: &Ctx, index: u64) -> (Option<u16>, Option<String>) {
    match ctx.cfg.mode {
        Mode::Inbound => {
            // Several nodes without Kamailio: round robin here.
            let direct = (ctx.target.kamailio.is_none() && !ctx.target.nodes.is_empty())
                .then(|| ctx.target.nodes[(index as usize) % ctx.target.nodes.len()].1);
            let Some(gateway) = direct.or(ctx.target.sip) else {
                return (None, Some("no gateway SIP address".into()));
            };
            ctx.trunk.originate(Originate {
                gateway,
                from: number(index),
                to: "+15005550006".into(),
                call_sid: format!("CAload{index}"),
            });
            (None, None)
        }
        Mode::Outbound => {
            let Some(api) = &ctx.target.api else {
                return (None, Some("no gateway HTTP address".into()));
            };
            match api.trigger(&number(index)).await {
                Ok(200) => (Some(200), None),
                Ok(s) => (Some(s), Some(format!("HTTP {s}"))),
                Err(e) => (None, Some(format!("HTTP error: {e}"))),
            }
        }
    }
}

/// With `--nodes N`: each node's (calls started, CPU seconds); with Kamailio, its CPU seconds
/// (all its processes).
async fn node_counters(ctx: &Ctx) -> (Vec<(u64, f64)>, Option<f64>) {
    let mut nodes = Vec::new();
    for ((api, _), p) in ctx.target.nodes.iter().zip(&ctx.target.processes) {
        let calls = api.metrics_text().await.map_or(0, |t| {
            prom::counter_sum(&t, "trunkline_calls_started_total")
        });
        nodes.push((calls, procfs::cpu_seconds(&p.pid().to_string(), None)));
    }
    let kam = match &ctx.target.kamailio {
        Some(k) => Some(
            k.lock()
                .await
                .pids()
                .iter()
                .map(|p| procfs::cpu_seconds(&p.to_string(), None))
                .sum(),
        ),
        None => None,
    };
    (nodes, kam)
}

/// The `uplink` statistics of the gateway's record of call `sid` (`GET /api/calls/{sid}`):
/// `dropped_samples` (skipped on purpose by its jitter buffer), `dropped_forced_samples` (of
/// those, without the quiet check), `underruns`, `late`.
async fn gateway_uplink(api: &GatewayApi, sid: &str) -> Option<serde_json::Value> {
    Some(api.call_record(sid).await?["uplink"].take())
}

/// The gateway's `/metrics` text (its send-pacing and media-tick histograms are read from it);
/// `None` without an API to scrape.
async fn scrape_metrics(ctx: &Ctx) -> Option<String> {
    ctx.target.api.as_ref()?.metrics_text().await
}
