//! The gateway under test as a child process: the `trunkline` binary run as
//! `trunkline serve --config FILE`, with a configuration written for the run (loopback, wired to
//! this tool's emulators, policy limits out of the way, call records in a SQLite file in the run's
//! directory as in production: an in-memory database would hold every record and transcript line
//! in the gateway's own memory and count them in its RSS).
//!
//! The child inherits this process's environment, so `TRUNKLINE__SECTION__KEY` overrides apply
//! to it exactly as to any `trunkline serve` (e.g. `TRUNKLINE__AGENT__UPLINK_CHUNK_MS=100`); its
//! secrets are set for it (`TRUNKLINE_API_TOKEN`, `TRUNKLINE_TRUNK_PASSWORD`) and
//! `ELEVENLABS_API_KEY` is removed (its agent is the emulator). Its runtime's worker threads are
//! set with `TOKIO_WORKER_THREADS`. It is ready when `/readyz` answers 200, and stopped with
//! SIGTERM (then SIGKILL if it has not exited in [`STOP_TIMEOUT`]). Its output (logs at level
//! `error` unless `RUST_LOG` or `TRUNKLINE__LOG__LEVEL` say otherwise) is passed on to this
//! process's stderr, prefixed `[trunkline]`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::api::GatewayApi;

/// The gateway binary's name.
pub const BIN_NAME: &str = "trunkline";
/// Longest wait for `/readyz` after the start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the exit after SIGTERM, before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The trunk password the gateway is given (the trunk emulator's credentials).
pub const TRUNK_USER: &str = "trunkline";
/// See [`TRUNK_USER`].
pub const TRUNK_PASSWORD: &str = "s3cret";
/// Lines of the child's output kept for error messages.
const OUTPUT_TAIL: usize = 40;

/// What the gateway is wired to.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// The `trunkline` binary.
    pub bin: PathBuf,
    /// Where its outbound INVITEs go (`trunk.outbound_proxy`).
    pub trunk: SocketAddr,
    /// Its agent base URL (`agent.base_url`, `ws://…`).
    pub agent_ws: String,
    /// The API's bearer token.
    pub token: String,
    /// Worker threads of its tokio runtime.
    pub worker_threads: usize,
    /// SDES-SRTP on the trunk (`trunk.media_encryption = "required"`).
    pub srtp: bool,
    /// The CA certificate (PEM) of a `wss://` agent: written next to the config and named by
    /// `agent.tls_ca_file`.
    pub agent_ca_pem: Option<String>,
    /// Its RTP port range (`rtp.port_min`, `rtp.port_max`): distinct per node with `--nodes`.
    pub rtp_ports: (u16, u16),
}

/// The RTP port range of the started gateway (one node).
pub const RTP_PORTS: (u16, u16) = (20000, 60000);

/// Node `i`'s share of [`RTP_PORTS`] when `n` nodes run side by side (even bounds).
pub fn node_rtp_ports(i: usize, n: usize) -> (u16, u16) {
    let (lo, hi) = RTP_PORTS;
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let i = u32::try_from(i).unwrap_or(0).min(n - 1);
    let span = (u32::from(hi - lo) / n) & !1;
    let start = u32::from(lo) + i * span;
    (
        u16::try_from(start).unwrap_or(lo),
        u16::try_from(start + span).unwrap_or(hi),
    )
}

/// `trunkline` next to the running executable (for a test binary in `target/<profile>/deps`:
/// in `target/<profile>`).
pub fn default_bin() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("the executable has no directory"))?;
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(up) = dir.parent()
    {
        dir = up;
    }
    Ok(dir.join(format!("{BIN_NAME}{}", std::env::consts::EXE_SUFFIX)))
}

/// A TOML string (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The configuration file of the gateway (keys as in `config/trunkline.toml`; every key not
/// written here keeps its default, and the environment's `TRUNKLINE__SECTION__KEY` win over it).
pub fn config_toml(
    sip: SocketAddr,
    http: SocketAddr,
    spec: &GatewaySpec,
    agent_ca: Option<&Path>,
    records: &Path,
) -> String {
    let agent_ca = agent_ca.map_or(String::new(), |p| {
        format!("tls_ca_file = {}\n", toml_str(&p.display().to_string()))
    });
    format!(
        r#"# Written by trunkline-load for one run.
[sip]
listen = {sip}
transports = ["udp"]

[trunk]
termination_uri = "sip:trunkline-load.pstn.twilio.com"
outbound_proxy = {trunk}
username = {user}
caller_id = "+15005550006"
ring_timeout_secs = 30
inbound_allowed_sources = ["127.0.0.1/32"]
media_encryption = {enc}

[rtp]
bind_ip = "127.0.0.1"
port_min = {port_min}
port_max = {port_max}

[agent]
base_url = {agent}
agent_id = "agent_load"
drain_timeout_secs = 2
{agent_ca}
[http]
listen = {http}

[policy]
max_concurrent_calls = 100000
calls_per_second = 10000.0
per_ip_per_minute = 1000000
per_destination_per_day = 1000000
denied_prefixes = []

[records]
database_url = {records}

[log]
level = "error"
"#,
        sip = toml_str(&sip.to_string()),
        trunk = toml_str(&spec.trunk.to_string()),
        user = toml_str(TRUNK_USER),
        agent = toml_str(&spec.agent_ws),
        http = toml_str(&http.to_string()),
        enc = toml_str(if spec.srtp { "required" } else { "disabled" }),
        port_min = spec.rtp_ports.0,
        port_max = spec.rtp_ports.1,
        records = toml_str(&format!("sqlite://{}", records.display())),
    )
}

/// A directory of our own under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "trunkline-load-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port for TCP (HTTP) and one for UDP (SIP). (Free when asked: the child
/// binds them a moment later; a port taken in between makes it exit, and the start is retried.)
fn free_ports() -> std::io::Result<(SocketAddr, SocketAddr)> {
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let sip = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    Ok((http, sip))
}

/// The last lines the child wrote.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// Pass the child's output on to our stderr, keeping the last lines.
fn forward(out: impl AsyncRead + Unpin + Send + 'static, tail: Tail) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{BIN_NAME}] {line}");
            if let Ok(mut t) = tail.lock() {
                if t.len() == OUTPUT_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }
    });
}

fn tail_text(tail: &Tail) -> String {
    tail.lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// A running gateway process. Dropped without [`GatewayProcess::stop`], it is killed (SIGKILL).
#[derive(Debug)]
pub struct GatewayProcess {
    child: Mutex<Option<Child>>,
    pid: u32,
    http: SocketAddr,
    sip: SocketAddr,
    output: Tail,
    _dir: TempDir,
}

/// Why one attempt to start failed.
enum StartError {
    /// The child exited before it was ready because a port was taken meanwhile: try again.
    PortTaken(anyhow::Error),
    /// Anything else.
    Fatal(anyhow::Error),
}

impl GatewayProcess {
    /// Start `trunkline serve` as `spec` says and wait until it is ready.
    pub async fn start(spec: &GatewaySpec) -> anyhow::Result<GatewayProcess> {
        if !spec.bin.is_file() {
            return Err(anyhow!(
                "the gateway binary {} does not exist: build it with `cargo build -p trunkline-gateway --bin {BIN_NAME}` (the same profile as trunkline-load, e.g. --release) or pass --gateway-bin",
                spec.bin.display()
            ));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(spec).await {
                Ok(p) => return Ok(p),
                Err(StartError::PortTaken(e)) if attempt < 3 => {
                    tracing::warn!("gateway start: {e:#}; retrying with other ports");
                }
                Err(StartError::PortTaken(e) | StartError::Fatal(e)) => return Err(e),
            }
        }
    }

    async fn start_once(spec: &GatewaySpec) -> Result<GatewayProcess, StartError> {
        let fatal = StartError::Fatal;
        let dir = TempDir::new()
            .context("creating the gateway's directory")
            .map_err(fatal)?;
        let (http, sip) = free_ports().context("finding free ports").map_err(fatal)?;
        let config = dir.0.join("trunkline.toml");
        let agent_ca = match &spec.agent_ca_pem {
            Some(pem) => {
                let f = dir.0.join("agent-ca.pem");
                std::fs::write(&f, pem)
                    .with_context(|| format!("writing {}", f.display()))
                    .map_err(fatal)?;
                Some(f)
            }
            None => None,
        };
        std::fs::write(
            &config,
            config_toml(
                sip,
                http,
                spec,
                agent_ca.as_deref(),
                &dir.0.join("records.db"),
            ),
        )
        .with_context(|| format!("writing {}", config.display()))
        .map_err(fatal)?;
        let mut child = serve_command(&spec.bin, &config)
            .env("TRUNKLINE_API_TOKEN", format!("load:{}", spec.token))
            .env("TRUNKLINE_TRUNK_PASSWORD", TRUNK_PASSWORD)
            .env_remove("ELEVENLABS_API_KEY")
            .env(
                "TOKIO_WORKER_THREADS",
                spec.worker_threads.max(1).to_string(),
            )
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))
            .map_err(fatal)?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the gateway process has no pid"))
            .map_err(fatal)?;
        let output: Tail = Arc::default();
        if let Some(out) = child.stdout.take() {
            forward(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, output.clone());
        }
        let api = GatewayApi::new(http, spec.token.clone());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the output forwarders catch up with what it wrote before exiting.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let text = tail_text(&output);
                let e = anyhow!(
                    "the gateway ({} serve) exited before it was ready ({status}):\n{text}",
                    spec.bin.display()
                );
                return Err(if text.contains("in use") {
                    StartError::PortTaken(e)
                } else {
                    StartError::Fatal(e)
                });
            }
            if api.ready().await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(fatal(anyhow!(
                    "the gateway was not ready in {} s (GET http://{http}/readyz):\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail_text(&output)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(GatewayProcess {
            child: Mutex::new(Some(child)),
            pid,
            http,
            sip,
            output,
            _dir: dir,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its HTTP API address.
    pub fn http(&self) -> SocketAddr {
        self.http
    }

    /// Its SIP (UDP) address.
    pub fn sip(&self) -> SocketAddr {
        self.sip
    }

    /// The last lines it wrote.
    pub fn output_tail(&self) -> String {
        tail_text(&self.output)
    }

    /// SIGTERM, then wait for the exit (SIGKILL after [`STOP_TIMEOUT`]). `None` if it was
    /// already stopped.
    pub async fn stop(&self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let pid = i32::try_from(self.pid).context("pid out of range")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("SIGTERM")?;
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                tracing::warn!(
                    "the gateway did not exit {} s after SIGTERM: killing it",
                    STOP_TIMEOUT.as_secs()
                );
                child.kill().await?;
                Ok(Some(child.wait().await?))
            }
        }
    }
}

/// `BIN serve --config FILE`, output piped, killed if dropped.
fn serve_command(bin: &Path, config: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("serve")
        .arg("--config")
        .arg(config)
        // Calls still up when stopped (only after failures) are hung up after 2 s.
        .args(["--grace-secs", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_toml_with_the_wiring() {
        let spec = GatewaySpec {
            bin: PathBuf::from("trunkline"),
            trunk: "127.0.0.1:5070".parse().expect("addr"),
            agent_ws: "wss://localhost:9000".into(),
            token: "t".into(),
            worker_threads: 2,
            srtp: true,
            agent_ca_pem: None,
            rtp_ports: node_rtp_ports(1, 3),
        };
        let text = config_toml(
            "127.0.0.1:5062".parse().expect("addr"),
            "127.0.0.1:8089".parse().expect("addr"),
            &spec,
            Some(Path::new("/tmp/run/agent-ca.pem")),
            Path::new("/tmp/run/records.db"),
        );
        assert_eq!(
            text.parse::<toml::Table>().expect("TOML")["trunk"]["media_encryption"].as_str(),
            Some("required")
        );
        let t: toml::Table = text.parse().expect("TOML");
        assert_eq!(t["sip"]["listen"].as_str(), Some("127.0.0.1:5062"));
        assert_eq!(t["http"]["listen"].as_str(), Some("127.0.0.1:8089"));
        assert_eq!(t["rtp"]["port_min"].as_integer(), Some(33332));
        assert_eq!(t["rtp"]["port_max"].as_integer(), Some(46664));
        assert_eq!(
            t["trunk"]["outbound_proxy"].as_str(),
            Some("127.0.0.1:5070")
        );
        assert_eq!(
            t["agent"]["base_url"].as_str(),
            Some("wss://localhost:9000")
        );
        assert_eq!(
            t["agent"]["tls_ca_file"].as_str(),
            Some("/tmp/run/agent-ca.pem")
        );
        assert_eq!(
            t["records"]["database_url"].as_str(),
            Some("sqlite:///tmp/run/records.db")
        );
        assert_eq!(
            t["policy"]["denied_prefixes"].as_array().map(Vec::len),
            Some(0)
        );
        // Any string survives the quoting.
        let odd = "a\"b'c\\d\n";
        let t: toml::Table = format!("k = {}", toml_str(odd)).parse().expect("TOML");
        assert_eq!(t["k"].as_str(), Some(odd));
    }

    #[test]
    fn nodes_get_disjoint_even_rtp_ranges() {
        assert_eq!(node_rtp_ports(0, 1), RTP_PORTS);
        let r: Vec<_> = (0..3).map(|i| node_rtp_ports(i, 3)).collect();
        assert_eq!(r, [(20000, 33332), (33332, 46664), (46664, 59996)]);
        // The gateway allocates even ports below port_max: ranges touching at a bound are disjoint.
        assert!(r.iter().all(|(a, b)| a % 2 == 0 && b % 2 == 0 && a < b));
    }

    #[test]
    fn the_default_binary_is_next_to_this_one_not_in_deps() {
        let bin = default_bin().expect("current exe");
        assert_eq!(bin.file_stem().and_then(|s| s.to_str()), Some(BIN_NAME));
        // This unit test runs from target/<profile>/deps.
        let dir = bin.parent().expect("dir");
        assert_ne!(dir.file_name().and_then(|s| s.to_str()), Some("deps"));
    }
}
