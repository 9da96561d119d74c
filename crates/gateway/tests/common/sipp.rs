//! What the SIPp-driven tests share: finding SIPp, free loopback ports, the child guard and
//! reading SIPp's final screen.

use std::net::{TcpListener as StdTcpListener, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Whether `sipp` is on PATH. In CI (`CI` set) its absence fails the test: `.ci/run` installs
/// Debian `sip-tester`, so a missing SIPp there is a broken setup, not a reason to skip.
pub fn have_sipp() -> bool {
    let found = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`sipp` is not on PATH in CI (.ci/run installs Debian `sip-tester`)"
        );
        eprintln!("SKIPPED: `sipp` is not on PATH (install Debian `sip-tester`)");
    }
    found
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() && port < 60000 {
            return port;
        }
    }
}

/// An even UDP port `p` such that `p..p + n` are all free on loopback right now.
pub fn free_udp_range(n: u16) -> u16 {
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let base = probe.local_addr().expect("addr").port() & !1;
        drop(probe);
        if !(10000..=60000).contains(&base) {
            continue;
        }
        let held: Vec<_> = (base..base + n)
            .map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
}

/// Kills the child (by its own handle) when dropped, so a failed assertion leaves nothing behind.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits for the child to exit on its own (polling, so the tokio runtime keeps running).
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait sipp") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The cumulative count on SIPp's final-screen line `label` (e.g. "Successful call").
pub fn sipp_count(stdout: &str, label: &str) -> Option<u64> {
    stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|c| c.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
