//! The report: percentiles from HDR histograms, the JSON document, the summary table printed at
//! the end, and a self-contained HTML page with inline SVG plots (no script, no external asset).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::runner::{AgentFormat, Mode, Thresholds};

/// Percentiles of one quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// An HDR histogram (µs or raw units, 3 significant digits).
#[derive(Debug)]
pub struct Stats(Option<Histogram<u64>>);

impl Stats {
    /// A histogram from 1 to one hour in µs.
    pub fn histogram() -> Stats {
        Stats(Histogram::new_with_bounds(1, 3_600_000_000, 3).ok())
    }

    /// Record a duration in µs.
    pub fn record_us(&mut self, d: Duration) {
        self.record_raw(d.as_micros() as u64);
    }

    /// Record a raw value (saturated into range).
    pub fn record_raw(&mut self, v: u64) {
        if let Some(h) = &mut self.0 {
            h.saturating_record(v.max(1));
        }
    }

    fn pct(&self, scale: f64) -> Percentiles {
        let Some(h) = &self.0 else {
            return Percentiles::default();
        };
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / scale,
            p90: h.value_at_quantile(0.9) as f64 / scale,
            p99: h.value_at_quantile(0.99) as f64 / scale,
            max: h.max() as f64 / scale,
        }
    }

    /// Percentiles in the recorded unit.
    pub fn stats_raw(&self) -> Percentiles {
        self.pct(1.0)
    }

    /// Percentiles of µs values, in ms.
    pub fn stats_ms(&self) -> Percentiles {
        self.pct(1000.0)
    }

    /// Counts at or below each bound (raw units), plus one bucket above the last.
    pub fn buckets(&self, bounds: &[u64]) -> Vec<Bucket> {
        let Some(h) = &self.0 else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut lo = 0u64;
        for &b in bounds {
            let c = h.count_between(lo, b) - if lo == 0 { 0 } else { h.count_at(lo) };
            out.push(Bucket {
                label: format!("≤{b}"),
                count: c,
            });
            lo = b;
        }
        let above = h.len().saturating_sub(out.iter().map(|b| b.count).sum());
        out.push(Bucket {
            label: format!(">{lo}"),
            count: above,
        });
        out
    }

    /// Buckets of µs values with bounds in ms.
    pub fn buckets_ms(&self, bounds_ms: &[u64]) -> Vec<Bucket> {
        let us: Vec<u64> = bounds_ms.iter().map(|b| b * 1000).collect();
        let mut b = self.buckets(&us);
        for (x, ms) in b.iter_mut().zip(bounds_ms.iter().chain(bounds_ms.last())) {
            x.label = x.label.replace(&format!("{}", ms * 1000), &format!("{ms}"));
        }
        b
    }
}

/// One histogram bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// `≤N` or `>N`.
    pub label: String,
    /// Values in it.
    pub count: u64,
}

/// A resource sample during a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Calls with media flowing.
    pub live_calls: u64,
    /// Gateway CPU over the last interval, % of one core.
    pub gateway_cpu_pct: f64,
    /// This process's CPU, % of one core.
    pub process_cpu_pct: f64,
    /// Gateway RSS (the process's when in-process).
    pub rss_bytes: u64,
    /// Estimated memory the trunk emulator holds for its recordings and per-call capture copies.
    pub emulator_recording_bytes: u64,
}

/// Where one agent connection's audio stopped matching the phone's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Defect {
    /// Seconds after the alignment point.
    pub at_s: f64,
    /// Samples inserted (+), missing (−) or replaced in place (0) there, when it realigns.
    pub shift_samples: Option<i64>,
    /// Samples that differ from there on.
    pub mismatched_samples: usize,
    /// Time from the agent's last interruption to the chunk carrying the defect.
    pub since_interruption_ms: Option<f64>,
    /// Samples the gateway reports its jitter buffer skipped on purpose in this call (quiet
    /// frames, to shrink its depth: `uplink.dropped_samples` of the call record).
    pub gateway_dropped_samples: Option<u64>,
    /// The difference is exactly that: deletions adding up to the samples the gateway reports
    /// having skipped, everything else sample-exact. Adaptation, not loss.
    pub accounted: bool,
}

/// The gateway's own send-pacing histogram over one level. Quantiles are bucket upper bounds
/// (100, 250, 500 µs, 1, 1.5, 2, 3, 5, 10, 20, 40, 100 ms), µs; `None` above the last bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SendPacing {
    /// Send intervals measured.
    pub intervals: u64,
    /// Median deviation is at most this.
    pub p50_le_us: Option<u64>,
    /// 90th percentile is at most this.
    pub p90_le_us: Option<u64>,
    /// 99th percentile is at most this.
    pub p99_le_us: Option<u64>,
    /// 99.9th percentile is at most this.
    pub p999_le_us: Option<u64>,
    /// The largest deviation is at most this.
    pub max_le_us: Option<u64>,
    /// Intervals more than 2 ms off.
    pub over_2ms: u64,
}

/// One level's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseReport {
    /// Concurrency limit.
    pub concurrency: usize,
    /// Calls placed.
    pub placed: usize,
    /// Calls that completed as planned (answered, agent heard, phone hung up).
    pub completed: usize,
    /// Calls that did not.
    pub failed: usize,
    /// Why, with counts.
    pub failures: Vec<(String, usize)>,
    /// Wall time of the phase.
    pub duration_s: f64,
    /// Outbound: HTTP request sent → first INVITE at the trunk. Inbound: INVITE → answer.
    pub trigger_to_invite_ms: Percentiles,
    /// Answer → first RTP packet with agent speech at the phone.
    pub answer_to_first_audio_ms: Percentiles,
    /// |inter-packet gap − 20 ms| of the RTP the phone received, from the kernel's receive
    /// stamps (`SO_TIMESTAMPNS`: on loopback, the gateway's send times), µs.
    pub pacing_us: Percentiles,
    /// Pacing at the phone's receiver, incl. generator scheduling: the same gaps from the phone
    /// task's own arrival times, µs.
    pub pacing_at_receiver_us: Percentiles,
    /// Packets that carried a kernel receive stamp (the others fall back to the task's arrival).
    pub pacing_stamped_packets: u64,
    /// Pacing as the gateway measured it at its own sends (`trunkline_rtp_send_pacing_seconds`
    /// scraped from `/metrics` before and after the level); `None` if not exported.
    pub gateway_send_pacing: Option<SendPacing>,
    /// Gateway-added uplink latency (phone RTP sent → the same audio's chunk received by the
    /// agent), per chunk, ms; `None` without the integrity check (µ-law, recording).
    pub uplink_latency_ms: Option<Percentiles>,
    /// Histogram of the above.
    pub uplink_latency_hist_ms: Vec<Bucket>,
    /// Gateway-added downlink latency (agent audio chunk sent → its first byte's RTP packet at
    /// the phone, kernel stamp), every chunk, ms; `None` without the integrity check.
    pub downlink_latency_ms: Option<Percentiles>,
    /// The same, first chunk of each response only.
    pub downlink_first_chunk_ms: Option<Percentiles>,
    /// Agent responses located in the phones' received audio (downlink latency).
    pub downlink_responses_found: usize,
    /// Of which queued behind the previous response's audio (left out of the first-chunk figure).
    pub downlink_responses_queued: usize,
    /// Histogram of the downlink latency of every chunk.
    pub downlink_latency_hist_ms: Vec<Bucket>,
    /// Histogram of the downlink latency of first chunks.
    pub downlink_first_chunk_hist_ms: Vec<Bucket>,
    /// DTMF phone → agent: digits the phone sent while the agent was connected (`None`: the
    /// phone sent none).
    pub dtmf_phone_to_agent_sent: Option<u64>,
    /// Of which the agent received as `user_message`.
    pub dtmf_phone_to_agent_delivered: Option<u64>,
    /// DTMF agent → phone: digits the agent asked for with `send_dtmf` (`None`: not asked).
    pub dtmf_agent_to_phone_sent: Option<u64>,
    /// Of which the phone received as RFC 4733 events.
    pub dtmf_agent_to_phone_delivered: Option<u64>,
    /// Calls the agent ended itself (end_call), the gateway then hanging up the phone.
    pub agent_ended_calls: usize,
    /// Histogram of the above.
    pub pacing_hist_us: Vec<Bucket>,
    /// Histogram of trigger → INVITE, ms.
    pub trigger_to_invite_hist_ms: Vec<Bucket>,
    /// Histogram of answer → first audio, ms.
    pub answer_to_first_audio_hist_ms: Vec<Bucket>,
    /// Audio packets the phones received.
    pub packets_received: u64,
    /// Packets missing in the sequence.
    pub lost: u64,
    /// Packets more than 20 ms behind their media clock.
    pub late: u64,
    /// Agent connections checked for sample-exact passthrough.
    pub integrity_checked: Option<usize>,
    /// Of which exact.
    pub integrity_exact: Option<usize>,
    /// Of the others, those whose only difference is quiet audio the gateway's jitter buffer
    /// reports having skipped to shrink its depth (see [`Defect::accounted`]).
    pub integrity_accounted: Option<usize>,
    /// Samples compared in all.
    pub integrity_compared_samples: Option<usize>,
    /// Samples that differed.
    pub integrity_mismatched_samples: Option<usize>,
    /// Per inexact connection: (first difference in s from alignment, samples inserted (+) or
    /// missing (−) there when the stream realigns).
    pub integrity_defects: Vec<Defect>,
    /// Gateway CPU per call with media, % of one core (idle baseline removed).
    pub gateway_cpu_per_call_pct: Option<f64>,
    /// Call-seconds of media the CPU figure covers.
    pub call_seconds: f64,
    /// Gateway CPU while all the level's calls were up, % of one core.
    pub steady_gateway_cpu_pct: Option<f64>,
    /// Whole process (gateway + emulators + this tool) at the same time.
    pub steady_process_cpu_pct: Option<f64>,
    /// Most calls with media at once.
    pub peak_live_calls: u64,
    /// RSS before the phase.
    pub rss_before_bytes: u64,
    /// RSS at the peak.
    pub rss_peak_bytes: u64,
    /// (peak − before − emulator recording estimate) / peak calls.
    pub rss_per_call_bytes: Option<u64>,
    /// With `--find-max`: why this level failed the thresholds.
    pub threshold_broken: Option<String>,
    /// Resource samples.
    pub samples: Vec<Sample>,
}

/// The capacity search's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FindMax {
    /// Highest level that held the thresholds.
    pub last_good: Option<usize>,
    /// First level that broke them.
    pub first_bad: Option<usize>,
    /// How it broke them.
    pub reason: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// Tool and version.
    pub tool: String,
    /// Call direction.
    pub mode: Mode,
    /// Agent audio format.
    pub agent_format: AgentFormat,
    /// The capture played.
    pub pcap: String,
    /// The gateway ran inside this process.
    pub in_process: bool,
    /// Calls per second.
    pub rate_cps: f64,
    /// Seconds each call stays up after answer.
    pub hold_s: f64,
    /// How CPU and memory were attributed.
    pub cpu_method: String,
    /// Gateway CPU with no call, % of a core.
    pub idle_gateway_cpu_pct: f64,
    /// Whether the capture allows a sample-exact check (µ-law, no gaps, no events).
    pub integrity_checkable: bool,
    /// The agent answered the caller's turns (and was interrupted), or only greeted.
    pub agent_turns: bool,
    /// `--find-max` result.
    pub find_max: Option<FindMax>,
    /// `--find-max` thresholds.
    pub thresholds: Option<Thresholds>,
    /// Each level.
    pub phases: Vec<PhaseReport>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The table printed at the end.
pub fn summary_table(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "trunkline-load: {:?} {:?}, {} cps, hold {:.0} s, {}",
        r.mode,
        r.agent_format,
        r.rate_cps,
        r.hold_s,
        if r.in_process {
            "in-process gateway"
        } else {
            "gateway in another process"
        }
    );
    let _ = writeln!(
        s,
        "{:>6} {:>6} {:>5} | {:>13} | {:>13} | {:>19} | {:>5} {:>5} | {:>9} | {:>8} {:>8} | {:>9}",
        "conc",
        "calls",
        "fail",
        "trig→INV ms",
        "ans→audio ms",
        "pacing µs p50/99/max",
        "lost",
        "late",
        "exact",
        "gw %core",
        "%/call",
        "RSS/call"
    );
    let _ = writeln!(
        s,
        "{:>6} {:>6} {:>5} | {:>13} | {:>13} | {:>19} | {:>5} {:>5} | {:>9} | {:>8} {:>8} | {:>9}",
        "", "", "", "p50/p99", "p50/p99", "", "", "", "", "steady", "", "KiB"
    );
    for p in &r.phases {
        let exact = match (p.integrity_exact, p.integrity_checked) {
            (Some(e), Some(c)) => match p.integrity_accounted.unwrap_or(0) {
                0 => format!("{e}/{c}"),
                a => format!("{e}+{a}/{c}"),
            },
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "{:>6} {:>6} {:>5} | {:>13} | {:>13} | {:>19} | {:>5} {:>5} | {:>9} | {:>8} {:>8} | {:>9}",
            p.concurrency,
            p.placed,
            p.failed,
            format!(
                "{:.1}/{:.1}",
                p.trigger_to_invite_ms.p50, p.trigger_to_invite_ms.p99
            ),
            format!(
                "{:.0}/{:.0}",
                p.answer_to_first_audio_ms.p50, p.answer_to_first_audio_ms.p99
            ),
            format!(
                "{:.0}/{:.0}/{:.0}",
                p.pacing_us.p50, p.pacing_us.p99, p.pacing_us.max
            ),
            p.lost,
            p.late,
            exact,
            opt(p.steady_gateway_cpu_pct, 1),
            opt(p.gateway_cpu_per_call_pct, 3),
            opt(p.rss_per_call_bytes.map(|b| b as f64 / 1024.0), 1),
        );
        let _ = writeln!(
            s,
            "       pacing at the phone's receiver, incl. generator scheduling (µs p50/99/max): {:.0}/{:.0}/{:.0}; kernel-stamped packets {}",
            p.pacing_at_receiver_us.p50,
            p.pacing_at_receiver_us.p99,
            p.pacing_at_receiver_us.max,
            p.pacing_stamped_packets
        );
        if let Some(g) = &p.gateway_send_pacing {
            let b = |v: Option<u64>| v.map_or("> 100000".to_owned(), |v| format!("≤ {v}"));
            let _ = writeln!(
                s,
                "       pacing at the gateway's own sends (µs, bucket bounds) p50 {} p99 {} p99.9 {} max {}; {} of {} intervals > 2 ms",
                b(g.p50_le_us),
                b(g.p99_le_us),
                b(g.p999_le_us),
                b(g.max_le_us),
                g.over_2ms,
                g.intervals
            );
        }
        let lat = |x: &Option<Percentiles>| {
            x.map_or("n/a".to_owned(), |v| {
                format!(
                    "{:.1}/{:.1}/{:.1}/{:.1} ({})",
                    v.p50, v.p90, v.p99, v.max, v.count
                )
            })
        };
        let found = if p.downlink_latency_ms.is_some() {
            format!(
                " ({} responses found, {} queued behind the previous one)",
                p.downlink_responses_found, p.downlink_responses_queued
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "       gateway latency ms p50/p90/p99/max (n): uplink {}; downlink every chunk {}, first chunk {}{found}",
            lat(&p.uplink_latency_ms),
            lat(&p.downlink_latency_ms),
            lat(&p.downlink_first_chunk_ms),
        );
        let pair = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "       DTMF sent/delivered: phone→agent {}, agent→phone {}; calls ended by the agent {}",
            pair(p.dtmf_phone_to_agent_sent, p.dtmf_phone_to_agent_delivered),
            pair(p.dtmf_agent_to_phone_sent, p.dtmf_agent_to_phone_delivered),
            p.agent_ended_calls
        );
        if !p.integrity_defects.is_empty() {
            let d: Vec<String> = p
                .integrity_defects
                .iter()
                .take(8)
                .map(|d| {
                    let sh = d.shift_samples.map_or("?".into(), |v| format!("{v:+}"));
                    let int = d.since_interruption_ms.map_or(String::new(), |v| {
                        format!(" ({v:.0} ms after an interruption)")
                    });
                    let why = if d.accounted {
                        " = jitter-buffer shrink the gateway reports"
                    } else {
                        ""
                    };
                    format!("{:.2}s:{sh}{int}{why}", d.at_s)
                })
                .collect();
            let _ = writeln!(
                s,
                "       inexact passthrough (first diff s : samples inserted) {}",
                d.join(" ")
            );
        }
        for (why, n) in &p.failures {
            let _ = writeln!(s, "       failed ×{n}: {why}");
        }
        if let Some(b) = &p.threshold_broken {
            let _ = writeln!(s, "       thresholds broken: {b}");
        }
    }
    if let Some(fm) = &r.find_max {
        let _ = writeln!(
            s,
            "find-max: last good level {}, first bad {} ({})",
            fm.last_good.map_or("none".into(), |v| v.to_string()),
            fm.first_bad
                .map_or("none reached".into(), |v| v.to_string()),
            fm.reason.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(s, "CPU/RSS: {}", r.cpu_method);
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG bar chart of histogram buckets.
pub fn svg_bars(title: &str, unit: &str, buckets: &[Bucket]) -> String {
    let (w, h, left, bottom) = (520.0, 220.0, 50.0, 40.0);
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let n = buckets.len().max(1) as f64;
    let bw = (w - left - 10.0) / n;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img"><title>{t}</title><text x="{left}" y="14" font-size="13">{t}</text>"#,
        t = esc(title)
    );
    let plot_h = h - bottom - 24.0;
    for (i, b) in buckets.iter().enumerate() {
        let bh = b.count as f64 / max * plot_h;
        let x = left + i as f64 * bw;
        let y = h - bottom - bh;
        let _ = write!(
            s,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="#4a7bd0"><title>{} {unit}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"##,
            (bw - 2.0).max(1.0),
            esc(&b.label),
            b.count,
            x + bw / 2.0,
            h - bottom + 12.0,
            esc(&b.label),
            x + bw / 2.0,
            (y - 2.0).max(24.0),
            b.count
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{0}" x2="{w}" y2="{0}" stroke="black"/><text x="{1}" y="{2}" font-size="10" text-anchor="middle">{3}</text></svg>"#,
        h - bottom,
        w / 2.0,
        h - 6.0,
        esc(unit)
    );
    s
}

/// An SVG line/scatter plot of named series.
pub fn svg_lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> String {
    let (w, h, left, bottom) = (520.0, 240.0, 60.0, 40.0);
    let pts = series.iter().flat_map(|(_, v)| v.iter());
    let (mut xmax, mut ymax) = (0.0f64, 0.0f64);
    for &(x, y) in pts {
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    let (xmax, ymax) = (
        if xmax > 0.0 { xmax } else { 1.0 },
        if ymax > 0.0 { ymax * 1.1 } else { 1.0 },
    );
    let (pw, ph) = (w - left - 20.0, h - bottom - 30.0);
    let sx = |x: f64| left + x / xmax * pw;
    let sy = |y: f64| h - bottom - y / ymax * ph;
    let colors = ["#4a7bd0", "#d0704a", "#3a9a5a", "#9a3a9a"];
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img"><title>{t}</title><text x="{left}" y="14" font-size="13">{t}</text>"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{left}" y1="{0}" x2="{left}" y2="30" stroke="black"/>"#,
        h - bottom,
        w - 20.0
    );
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="9" text-anchor="end">{}</text>"#,
            sx(xmax * f),
            h - bottom + 12.0,
            fmt_num(xmax * f),
            left - 4.0,
            sy(ymax * f) + 3.0,
            fmt_num(ymax * f)
        );
    }
    for (i, (name, v)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = v
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in v {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"><title>{}: {} → {}</title></circle>"#,
                sx(x),
                sy(y),
                esc(name),
                fmt_num(x),
                fmt_num(y)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{c}">{}</text>"#,
            w - 150.0,
            30.0 + 12.0 * i as f64,
            esc(name)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text><text x="12" y="{:.1}" font-size="10" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text></svg>"#,
        left + pw / 2.0,
        h - 6.0,
        esc(x_label),
        h / 2.0,
        h / 2.0,
        esc(y_label)
    );
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The HTML report: summary, plots against concurrency, each level's histograms and time series.
pub fn html(r: &RunReport) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>trunkline-load report</title>\
         <style>body{font-family:sans-serif;margin:1.5em;max-width:1200px}pre{background:#f4f4f4;padding:.8em;overflow-x:auto}\
         svg{border:1px solid #ddd;margin:4px;background:#fff}h2{margin-top:1.5em}</style></head><body>\n<h1>trunkline-load report</h1>\n",
    );
    let _ = writeln!(s, "<pre>{}</pre>", esc(&summary_table(r)));
    let by_c = |f: &dyn Fn(&PhaseReport) -> Option<f64>| -> Vec<(f64, f64)> {
        r.phases
            .iter()
            .filter_map(|p| f(p).map(|v| (p.concurrency as f64, v)))
            .collect()
    };
    s.push_str("<h2>Against concurrent calls</h2>\n<div>");
    s.push_str(&svg_lines(
        "Gateway CPU (% of one core)",
        "concurrent calls",
        "% of a core",
        &[
            ("gateway", by_c(&|p| p.steady_gateway_cpu_pct)),
            ("whole process", by_c(&|p| p.steady_process_cpu_pct)),
        ],
    ));
    s.push_str(&svg_lines(
        "Gateway CPU per call (% of one core)",
        "concurrent calls",
        "% per call",
        &[("per call", by_c(&|p| p.gateway_cpu_per_call_pct))],
    ));
    s.push_str(&svg_lines(
        "Memory per call (KiB)",
        "concurrent calls",
        "KiB",
        &[(
            "RSS per call",
            by_c(&|p| p.rss_per_call_bytes.map(|b| b as f64 / 1024.0)),
        )],
    ));
    s.push_str(&svg_lines(
        "Pacing jitter |gap − 20 ms| (µs)",
        "concurrent calls",
        "µs",
        &[
            ("p50 (gateway send)", by_c(&|p| Some(p.pacing_us.p50))),
            ("p99 (gateway send)", by_c(&|p| Some(p.pacing_us.p99))),
            ("max (gateway send)", by_c(&|p| Some(p.pacing_us.max))),
            (
                "p99 at receiver",
                by_c(&|p| Some(p.pacing_at_receiver_us.p99)),
            ),
        ],
    ));
    s.push_str("</div>\n");
    for p in &r.phases {
        let _ = writeln!(
            s,
            "<h2>Concurrency {} ({} calls)</h2>\n<div>",
            p.concurrency, p.placed
        );
        s.push_str(&svg_bars(
            "Pacing |gap − 20 ms| (kernel stamps: gateway send)",
            "µs",
            &p.pacing_hist_us,
        ));
        if p.uplink_latency_ms.is_some() {
            s.push_str(&svg_bars(
                "Uplink latency: phone RTP sent → agent chunk received",
                "ms",
                &p.uplink_latency_hist_ms,
            ));
        }
        if p.downlink_latency_ms.is_some() {
            s.push_str(&svg_bars(
                "Downlink latency: agent chunk sent → RTP at the phone (every chunk)",
                "ms",
                &p.downlink_latency_hist_ms,
            ));
            s.push_str(&svg_bars(
                "Downlink latency: first chunk of each response",
                "ms",
                &p.downlink_first_chunk_hist_ms,
            ));
        }
        s.push_str(&svg_bars(
            if r.mode == Mode::Outbound {
                "Trigger → INVITE"
            } else {
                "INVITE → answer"
            },
            "ms",
            &p.trigger_to_invite_hist_ms,
        ));
        s.push_str(&svg_bars(
            "Answer → first agent audio",
            "ms",
            &p.answer_to_first_audio_hist_ms,
        ));
        let t0 = p.samples.first().map_or(0.0, |x| x.t_s);
        s.push_str(&svg_lines(
            "Over time",
            "seconds into the level",
            "calls / % core / MiB",
            &[
                (
                    "live calls",
                    p.samples
                        .iter()
                        .map(|x| (x.t_s - t0, x.live_calls as f64))
                        .collect(),
                ),
                (
                    "gateway % core",
                    p.samples
                        .iter()
                        .map(|x| (x.t_s - t0, x.gateway_cpu_pct))
                        .collect(),
                ),
                (
                    "RSS MiB",
                    p.samples
                        .iter()
                        .map(|x| (x.t_s - t0, x.rss_bytes as f64 / 1048576.0))
                        .collect(),
                ),
            ],
        ));
        s.push_str("</div>\n");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets_come_from_the_histogram() {
        let mut h = Stats::histogram();
        for v in 1..=100u64 {
            h.record_raw(v * 10);
        }
        let p = h.stats_raw();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() <= 1.0, "{p:?}");
        let b = h.buckets(&[100, 500]);
        let counts: Vec<u64> = b.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![10, 40, 50]);
        assert_eq!(b[2].label, ">500");
    }

    #[test]
    fn an_empty_histogram_gives_zeros() {
        assert_eq!(Stats::histogram().stats_ms(), Percentiles::default());
    }

    #[test]
    fn svg_is_escaped_and_self_contained() {
        let s = svg_bars(
            "a<b",
            "µs",
            &[Bucket {
                label: "≤1".into(),
                count: 3,
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("a&lt;b"));
        let l = svg_lines("t", "x", "y", &[("s", vec![(1.0, 2.0), (2.0, 3.0)])]);
        assert!(l.contains("<polyline"));
        assert!(!l.contains("NaN"));
    }
}
