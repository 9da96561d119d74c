//! CPU and memory from `/proc` (proc(5)): per-thread CPU time (`/proc/<pid>/task/<tid>/stat`
//! fields 14–15, `utime` + `stime`, in clock ticks) summed over a process's threads (or those
//! whose name starts with a prefix), and the resident set (`VmRSS` of `/proc/<pid>/status`).
//! The gateway is another process (the child this tool starts, or one given by pid).

use std::fs;

/// Name of the load generator's (emulators') runtime threads.
pub const LOAD_THREAD: &str = "load-worker";

/// Clock ticks per second for `/proc` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// `(comm, utime + stime in ticks)` from the text of a `stat` file.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the comm: field 3 (state) is rest[0]; utime is field 14 → rest[11], stime rest[12].
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// `VmRSS` in bytes from the text of a `status` file.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of process `pid` (`"self"` for this one), by thread-name prefix (`None`: all).
pub fn cpu_seconds(pid: &str, prefix: Option<&str>) -> f64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((comm, t)) = parse_stat(&text)
            && prefix.is_none_or(|p| comm.starts_with(p))
        {
            ticks += t;
        }
    }
    ticks as f64 / TICKS_PER_SEC
}

/// Resident set of process `pid`, bytes.
pub fn rss_bytes(pid: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_rss(&s))
        .unwrap_or(0)
}

/// One sample of the gateway's and the whole process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Gateway CPU seconds (all its process's threads).
    pub gateway_cpu_s: f64,
    /// This process's CPU seconds.
    pub process_cpu_s: f64,
    /// Gateway RSS bytes.
    pub gateway_rss: u64,
}

/// Where the gateway's resources are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayProc {
    /// Another process (the child this tool started, or `--gateway-pid`).
    Pid(u32),
    /// Several gateway processes (`--nodes N`): their CPU and RSS summed.
    Pids(Vec<u32>),
    /// Not measurable (an external gateway whose pid was not given).
    Unknown,
}

impl GatewayProc {
    /// Read the counters now.
    pub fn sample(&self) -> Usage {
        let process_cpu_s = cpu_seconds("self", None);
        match self {
            GatewayProc::Pid(p) => {
                let pid = p.to_string();
                Usage {
                    gateway_cpu_s: cpu_seconds(&pid, None),
                    process_cpu_s,
                    gateway_rss: rss_bytes(&pid),
                }
            }
            GatewayProc::Pids(ps) => Usage {
                gateway_cpu_s: ps.iter().map(|p| cpu_seconds(&p.to_string(), None)).sum(),
                process_cpu_s,
                gateway_rss: ps.iter().map(|p| rss_bytes(&p.to_string())).sum(),
            },
            GatewayProc::Unknown => Usage {
                process_cpu_s,
                ..Usage::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_comm_with_spaces_and_parens() {
        let text = "4242 (gw-worker (x)) S 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0 100";
        assert_eq!(parse_stat(text), Some(("gw-worker (x)".into(), 281)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_bytes() {
        let s = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_rss(s), Some(2048 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(rss_bytes("self") > 0);
        let spin: u64 = (0..3_000_000u64).fold(0, |a, x| a.wrapping_add(x * x));
        assert!(spin > 0);
        assert!(cpu_seconds("self", None) >= 0.0);
    }
}
