//! The report's renderings of a run's [`results`](crate::results): the summary table printed at
//! the end and a self-contained HTML page with inline SVG plots (no script, no external asset).
//! (The JSON document is the results serialized as they are.)

use std::fmt::Write as _;

use crate::results::{Bucket, Mode, Percentiles, PhaseReport, RunReport, SendPacing};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The summary's line of inexact calls: at most 8, those the gateway does not account for
/// first (they are what a reader looks for), and how many more the JSON report holds.
fn defects_line(p: &PhaseReport) -> Option<String> {
    if p.integrity_defects.is_empty() {
        return None;
    }
    const SHOWN: usize = 8;
    let unaccounted = p.integrity_defects.iter().filter(|d| !d.accounted);
    let accounted = p.integrity_defects.iter().filter(|d| d.accounted);
    let mut d: Vec<String> = unaccounted
        .chain(accounted)
        .take(SHOWN)
        .map(|d| {
            let sh = d.shift_samples.map_or("?".into(), |v| format!("{v:+}"));
            let int = d.since_interruption_ms.map_or(String::new(), |v| {
                format!(" ({v:.0} ms after an interruption)")
            });
            let why = match (d.accounted, d.gateway_dropped_samples) {
                (true, _) if d.inserted_samples > 0 => format!(
                    " = {} underrun(s) ({} samples concealed) and jitter-buffer shrink the gateway reports",
                    d.gateway_underruns.unwrap_or(0),
                    d.inserted_samples
                ),
                (true, _) => " = jitter-buffer shrink the gateway reports".to_string(),
                (false, Some(n)) => format!(
                    " [call {}: {}; gateway skipped {n} samples, {} without the quiet check; \
                     {} underruns, {} late packets, {} lost]",
                    d.call_sid.as_deref().unwrap_or("?"),
                    d.unexplained.as_deref().unwrap_or("?"),
                    d.gateway_forced_samples.unwrap_or(0),
                    d.gateway_underruns.unwrap_or(0),
                    d.gateway_late_packets.unwrap_or(0),
                    d.gateway_lost_packets.unwrap_or(0),
                ),
                (false, None) => String::new(),
            };
            format!("{:.2}s:{sh}{int}{why}", d.at_s)
        })
        .collect();
    if p.integrity_defects.len() > SHOWN {
        d.push(format!(
            "(and {} more in the JSON report)",
            p.integrity_defects.len() - SHOWN
        ));
    }
    Some(format!(
        "       inexact passthrough (first diff s : samples inserted) {}",
        d.join(" ")
    ))
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
        if !p.nodes.is_empty() {
            let _ = writeln!(
                s,
                "       nodes (calls started / % of a core over the level): {}{}",
                p.nodes
                    .iter()
                    .map(|n| format!("{} / {:.1}", n.calls, n.cpu_pct))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.kamailio_cpu_pct
                    .map_or(String::new(), |k| format!("; Kamailio {k:.1} % of a core"))
            );
        } else if let Some(k) = p.kamailio_cpu_pct {
            let _ = writeln!(s, "       Kamailio {k:.1} % of a core over the level");
        }
        // A scraped histogram's quantiles, as bucket bounds.
        let bounds = |g: &SendPacing| {
            let b = |v: Option<u64>| v.map_or("> 100000".to_owned(), |v| format!("≤ {v}"));
            format!(
                "(µs, bucket bounds) p50 {} p99 {} p99.9 {} max {}",
                b(g.p50_le_us),
                b(g.p99_le_us),
                b(g.p999_le_us),
                b(g.max_le_us)
            )
        };
        if let Some(g) = &p.gateway_send_pacing {
            let _ = writeln!(
                s,
                "       pacing at the gateway's own sends {}; {} of {} intervals > 2 ms",
                bounds(g),
                g.over_2ms,
                g.intervals
            );
        }
        if let Some(t) = &p.gateway_tick_lateness {
            let _ = writeln!(
                s,
                "       media ticks late at the gateway {}; {} of {} ticks > 2 ms late; RTP packets that missed their send slot: {}",
                bounds(t),
                t.over_2ms,
                t.intervals,
                p.gateway_missed_send_slots
                    .map_or("n/a".to_owned(), |n| n.to_string())
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
        if let Some(line) = defects_line(p) {
            let _ = writeln!(s, "{line}");
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

    #[test]
    fn unaccounted_defects_are_listed_first() {
        use crate::results::Defect;
        let shrink = Defect {
            at_s: 1.0,
            shift_samples: Some(-80),
            accounted: true,
            ..Defect::default()
        };
        let lost = Defect {
            at_s: 9.5,
            shift_samples: Some(-160),
            gateway_dropped_samples: Some(640),
            gateway_forced_samples: Some(480),
            gateway_underruns: Some(2),
            gateway_late_packets: Some(1),
            gateway_lost_packets: Some(3),
            call_sid: Some("CA1".into()),
            unexplained: Some("160 samples missing at 9.50s, peak 3000 (not quiet)".into()),
            ..Defect::default()
        };
        let mut p = PhaseReport::default();
        assert_eq!(defects_line(&p), None);
        p.integrity_defects = vec![shrink; 11];
        p.integrity_defects.push(lost);
        let line = defects_line(&p).unwrap_or_default();
        let first = line
            .find(
                "9.50s:-160 [call CA1: 160 samples missing at 9.50s, peak 3000 (not quiet); \
                 gateway skipped 640 samples, 480 without the quiet check; 2 underruns, 1 late \
                 packets, 3 lost]",
            )
            .expect("the unaccounted one is shown");
        assert!(first < line.find("1.00s:-80").unwrap_or(0), "{line}");
        assert_eq!(line.matches("1.00s:-80").count(), 7, "{line}");
        assert!(line.ends_with("(and 4 more in the JSON report)"), "{line}");
    }
}
