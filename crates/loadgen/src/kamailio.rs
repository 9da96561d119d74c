//! Kamailio in front of the gateway nodes (`--nodes N --kamailio`): the repository's
//! `docker/kamailio/kamailio.cfg` run on loopback with its tunable lines rewritten (listen
//! address, dispatcher list = the nodes, control socket), as `crates/gateway/tests/kamailio.rs`
//! does. The trunk emulator sends its inbound INVITEs here; Kamailio dispatches them round robin
//! over the nodes and Record-Routes the dialogs. Its output goes to a log file in its directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::process::{Child, Command};

/// The shipped configuration.
pub fn default_cfg() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docker/kamailio/kamailio.cfg"
    ))
}

/// The shipped cfg with `listen=` on `port`, the dispatcher list at `list` and the control
/// socket at `ctl`; an error if the cfg no longer has those lines.
pub fn rewrite_cfg(shipped: &str, port: u16, list: &Path, ctl: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rewritten = 0;
    for line in shipped.lines() {
        let new = if line.starts_with("listen=") {
            format!("listen=udp:127.0.0.1:{port}")
        } else if line.starts_with("#!define DS_LIST ") {
            format!("#!define DS_LIST \"{}\"", list.display())
        } else if line.starts_with("#!define CTL_SOCKET ") {
            format!("#!define CTL_SOCKET \"unix:{ctl}\"")
        } else {
            line.to_owned()
        };
        rewritten += usize::from(new != line);
        out.push_str(&new);
        out.push('\n');
    }
    if rewritten != 3 {
        return Err(anyhow!(
            "the Kamailio cfg has not the expected listen=/DS_LIST/CTL_SOCKET lines"
        ));
    }
    Ok(out)
}

/// The dispatcher list: set 1 = `nodes`.
pub fn dispatcher_list(nodes: &[SocketAddr]) -> String {
    nodes.iter().map(|n| format!("1 sip:{n} 0 0\n")).collect()
}

/// A running Kamailio, in a process group of its own: [`Kamailio::stop`] stops it cleanly, and
/// dropping it SIGKILLs the whole group (the main process and its workers).
#[derive(Debug)]
pub struct Kamailio {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    dir: PathBuf,
    /// Stopped and reaped: its pid (the group id) may be reused, so it is not signalled again.
    stopped: bool,
}

impl Kamailio {
    /// Start Kamailio on a free loopback port with `cfg` in front of `nodes`, and wait until it
    /// answers an OPTIONS.
    pub async fn start(cfg: &Path, nodes: &[SocketAddr]) -> anyhow::Result<Kamailio> {
        let shipped =
            std::fs::read_to_string(cfg).with_context(|| format!("reading {}", cfg.display()))?;
        let dir = std::env::temp_dir().join(format!("trunkline-load-kam-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Kamailio drops to nobody when run as root: it must reach its own directory.
        let _ = std::process::Command::new("chmod")
            .arg("777")
            .arg(&dir)
            .status();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let list = dir.join("dispatcher.list");
        std::fs::write(&list, dispatcher_list(nodes))?;
        let path = dir.join("kamailio.cfg");
        let ctl = dir.join("kamailio_ctl");
        std::fs::write(
            &path,
            rewrite_cfg(&shipped, port, &list, &ctl.display().to_string())?,
        )?;
        let log = std::fs::File::create(dir.join("kamailio.log"))?;
        let mut cmd = Command::new("kamailio");
        cmd.arg("-f")
            .arg(&path)
            .args(["-DD", "-E", "-Y"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        if std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
        {
            cmd.args(["-u", "nobody", "-g", "nogroup"]);
        }
        let mut child = cmd
            .spawn()
            .context("starting kamailio (Debian package `kamailio`)")?;
        let pid = child.id().ok_or_else(|| anyhow!("kamailio has no pid"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let me = sock.local_addr()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 2048];
        for n in 0u32.. {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default();
                return Err(anyhow!("kamailio exited ({st}):\n{log}"));
            }
            if Instant::now() >= deadline {
                return Err(anyhow!("kamailio did not answer OPTIONS on {addr} in 10 s"));
            }
            let options = format!(
                "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKload{n}\r\nMax-Forwards: 70\r\nFrom: <sip:load@127.0.0.1>;tag=load\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: kam-ready-{n}@load\r\nCSeq: {} OPTIONS\r\nContent-Length: 0\r\n\r\n",
                n + 1
            );
            sock.send_to(options.as_bytes(), addr).await?;
            if let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
                && buf[..len].starts_with(b"SIP/2.0 200")
            {
                break;
            }
        }
        Ok(Kamailio {
            child,
            pid,
            addr,
            dir,
            stopped: false,
        })
    }

    /// Where the trunk sends its INVITEs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its main process id (Kamailio forks workers: see [`Kamailio::pids`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The main process and its children (the SIP workers, timers, the prober).
    pub fn pids(&self) -> Vec<u32> {
        let mut out = vec![self.pid];
        let task = format!("/proc/{}/task/{}/children", self.pid, self.pid);
        if let Ok(text) = std::fs::read_to_string(task) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        out
    }

    /// Stop it: SIGTERM (the main process then stops its workers), SIGKILL to the whole group
    /// after 5 s.
    pub async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            self.kill_group();
            let _ = self.child.kill().await;
        }
        self.stopped = true;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// SIGKILL to its process group: workers left by a main process that died are reached too.
    fn kill_group(&self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill_group();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cfg_is_rewritten_for_loopback() {
        let shipped = std::fs::read_to_string(default_cfg()).expect("docker/kamailio/kamailio.cfg");
        let list = Path::new("/tmp/x/dispatcher.list");
        let cfg = rewrite_cfg(&shipped, 5099, list, "/tmp/x/ctl").expect("rewrite");
        assert!(cfg.contains("\nlisten=udp:127.0.0.1:5099\n"));
        assert!(cfg.contains("#!define DS_LIST \"/tmp/x/dispatcher.list\""));
        assert!(cfg.contains("#!define CTL_SOCKET \"unix:/tmp/x/ctl\""));
        assert!(!cfg.contains("0.0.0.0:5060"));
        assert!(rewrite_cfg("debug=2\n", 5099, list, "c").is_err());
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:5071".parse().expect("addr"),
            "127.0.0.1:5072".parse().expect("addr"),
        ];
        assert_eq!(
            dispatcher_list(&nodes),
            "1 sip:127.0.0.1:5071 0 0\n1 sip:127.0.0.1:5072 0 0\n"
        );
    }
}
