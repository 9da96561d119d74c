//! Reading the gateway's Prometheus text exposition (format 0.0.4) as scraped from `/metrics`:
//! one histogram's buckets, and what the gateway's send-pacing histogram
//! (`trunkline_rtp_send_pacing_seconds`) counted between two scrapes. The bucket bounds are
//! read from the text (`le` labels), not assumed.

use std::collections::BTreeMap;

use crate::results::SendPacing;

/// The gateway's send-pacing histogram.
pub const SEND_PACING: &str = "trunkline_rtp_send_pacing_seconds";
/// The gateway's media-tick lateness histogram (how late each call's 20 ms tick ran).
pub const TICK_LATENESS: &str = "trunkline_media_tick_lateness_seconds";
/// The gateway's count of RTP packets built after their send slot (sent late).
pub const MISSED_SLOTS: &str = "trunkline_rtp_send_slot_missed_total";

/// One histogram as scraped: per bucket (not cumulative), in ascending order of bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Upper bounds, µs; `None` is `+Inf` (always the last).
    pub bounds_us: Vec<Option<u64>>,
    /// Observations in each bucket.
    pub counts: Vec<u64>,
}

impl Buckets {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), µs; `None` when empty or in
    /// the `+Inf` bucket.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bound, c) in self.bounds_us.iter().zip(&self.counts) {
            seen += c;
            if seen >= rank {
                return *bound;
            }
        }
        None
    }
}

/// The labels of a sample line's `{…}` (escapes `\\`, `\"`, `\n` decoded), and the rest of the
/// line after the closing brace.
fn labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut out = BTreeMap::new();
    let mut rest = text.strip_prefix('{')?;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let (key, value_and_more) = rest.split_once('=')?;
        let mut chars = value_and_more.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim().to_owned(), value);
        rest = value_and_more.get(end + 2..)?;
    }
}

/// The sum of every series of counter `name` (all label sets) in `/metrics` text; 0 if absent.
pub fn counter_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The buckets of histogram `name` in an exposition `text` (series with other labels are
/// added up by bound); `None` if it has no `+Inf` bucket or a line of it does not parse.
pub fn histogram(text: &str, name: &str) -> Option<Buckets> {
    let prefix = format!("{name}_bucket");
    // Cumulative count per bound (µs; `u64::MAX` for +Inf).
    let mut cumulative: BTreeMap<u64, u64> = BTreeMap::new();
    for line in text.lines() {
        // (A bucket line always has labels: `le`. Another family's name may start the same.)
        let Some(rest) = line.strip_prefix(&prefix).filter(|r| r.starts_with('{')) else {
            continue;
        };
        let (labels, value) = labels(rest)?;
        let le = labels.get("le")?;
        let bound = match le.as_str() {
            "+Inf" => u64::MAX,
            s => {
                let secs: f64 = s.parse().ok()?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return None;
                }
                (secs * 1e6).round() as u64
            }
        };
        // The value, then an optional timestamp.
        let value: f64 = value.split_whitespace().next()?.parse().ok()?;
        if !(value.is_finite() && value >= 0.0) {
            return None;
        }
        *cumulative.entry(bound).or_insert(0) += value.round() as u64;
    }
    if !cumulative.contains_key(&u64::MAX) {
        return None;
    }
    let mut b = Buckets::default();
    let mut prev = 0u64;
    for (bound, c) in cumulative {
        b.bounds_us.push((bound != u64::MAX).then_some(bound));
        b.counts.push(c.saturating_sub(prev));
        prev = c;
    }
    Some(b)
}

/// The gateway's send-pacing histogram in a scrape.
pub fn send_pacing(text: &str) -> Option<Buckets> {
    histogram(text, SEND_PACING)
}

/// What the gateway measured between two scrapes of its send-pacing histogram; `None` when it
/// measured nothing or the buckets changed.
pub fn send_pacing_between(before: &Buckets, after: &Buckets) -> Option<SendPacing> {
    if before.bounds_us != after.bounds_us {
        return None;
    }
    let d = Buckets {
        bounds_us: after.bounds_us.clone(),
        counts: after
            .counts
            .iter()
            .zip(&before.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    };
    let count = d.count();
    if count == 0 {
        return None;
    }
    let highest = d.counts.iter().rposition(|c| *c > 0);
    Some(SendPacing {
        intervals: count,
        p50_le_us: d.quantile_bound_us(0.5),
        p90_le_us: d.quantile_bound_us(0.9),
        p99_le_us: d.quantile_bound_us(0.99),
        p999_le_us: d.quantile_bound_us(0.999),
        max_le_us: highest.and_then(|i| d.bounds_us.get(i).copied().flatten()),
        over_2ms: d
            .bounds_us
            .iter()
            .zip(&d.counts)
            .filter(|(b, _)| b.is_none_or(|b| b > 2_000))
            .map(|(_, c)| c)
            .sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_their_labels_only() {
        let text = "# TYPE trunkline_calls_started_total counter\n\
trunkline_calls_started_total{direction=\"inbound\"} 7\n\
trunkline_calls_started_total{direction=\"outbound\"} 3\n\
trunkline_calls_started_totally 100\n";
        assert_eq!(counter_sum(text, "trunkline_calls_started_total"), 10);
        assert_eq!(counter_sum(text, "trunkline_nothing_total"), 0);
    }

    /// The gateway's bucket bounds, µs.
    const BOUNDS_US: [u64; 12] = [
        100, 250, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 20_000, 40_000, 100_000,
    ];

    /// An exposition as the gateway writes it (`crates/gateway/src/metrics.rs`), with the
    /// pacing histogram holding deviations `us`, between other families.
    fn exposition(us: &[u64]) -> String {
        let mut per = [0u64; BOUNDS_US.len() + 1];
        for &u in us {
            per[BOUNDS_US
                .iter()
                .position(|b| u <= *b)
                .unwrap_or(BOUNDS_US.len())] += 1;
        }
        let mut s = String::from(
            "# HELP trunkline_calls_started_total Calls started.\n# TYPE trunkline_calls_started_total counter\n\
             trunkline_calls_started_total{direction=\"outbound\"} 7\n\
             # HELP trunkline_rtp_send_pacing_seconds |interval - 20 ms|.\n# TYPE trunkline_rtp_send_pacing_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (b, c) in BOUNDS_US.iter().zip(&per) {
            cumulative += c;
            s.push_str(&format!(
                "trunkline_rtp_send_pacing_seconds_bucket{{le=\"{}\"}} {cumulative}\n",
                *b as f64 / 1e6
            ));
        }
        s.push_str(&format!(
            "trunkline_rtp_send_pacing_seconds_bucket{{le=\"+Inf\"}} {}\n",
            us.len()
        ));
        s.push_str(&format!(
            "trunkline_rtp_send_pacing_seconds_sum {}\ntrunkline_rtp_send_pacing_seconds_count {}\n",
            us.iter().sum::<u64>() as f64 / 1e6,
            us.len()
        ));
        s.push_str("# TYPE trunkline_rtp_send_pacing_max_seconds gauge\ntrunkline_rtp_send_pacing_max_seconds 0.03\n");
        s
    }

    #[test]
    fn the_gateways_send_pacing_is_read_back_from_its_metrics_text() {
        let before = send_pacing(&exposition(&[])).expect("exported");
        assert_eq!(before.count(), 0);
        let expected_bounds: Vec<Option<u64>> = BOUNDS_US
            .iter()
            .map(|b| Some(*b))
            .chain(std::iter::once(None))
            .collect();
        assert_eq!(before.bounds_us, expected_bounds);
        let after =
            send_pacing(&exposition(&[50, 60, 70, 1_200, 2_500, 30_000])).expect("exported");
        assert_eq!(after.counts, vec![3, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0]);
        let p = send_pacing_between(&before, &after).expect("intervals");
        assert_eq!(p.intervals, 6);
        assert_eq!(p.p50_le_us, Some(100));
        assert_eq!(p.p99_le_us, Some(40_000));
        assert_eq!(p.max_le_us, Some(40_000));
        assert_eq!(p.over_2ms, 2);
        // Nothing between two equal scrapes.
        assert_eq!(send_pacing_between(&after, &after), None);
        // Above the last bound: no bound to give.
        let over = send_pacing(&exposition(&[150_000])).expect("exported");
        let p = send_pacing_between(&before, &over).expect("one interval");
        assert_eq!((p.p50_le_us, p.max_le_us, p.over_2ms), (None, None, 1));
        assert!(send_pacing("no such metric").is_none());
    }

    #[test]
    fn labels_timestamps_and_series_are_handled() {
        let text = "h_bucket{path=\"a,\\\"b\\\"\",le=\"0.001\"} 2 1700000000000\n\
                    h_bucket{path=\"c\",le=\"0.001\"} 1\n\
                    h_bucket{le=\"+Inf\",path=\"a,\\\"b\\\"\"} 5\n\
                    h_bucket{le=\"+Inf\",path=\"c\"} 1\n\
                    h_sum 3\n";
        let b = histogram(text, "h").expect("parses");
        assert_eq!(b.bounds_us, vec![Some(1_000), None]);
        assert_eq!(b.counts, vec![3, 3]);
        // Malformed lines of the family: not read at all.
        assert!(histogram("h_bucket{le=\"x\"} 1\nh_bucket{le=\"+Inf\"} 1\n", "h").is_none());
        assert!(histogram("h_bucket{le=\"+Inf\"} many\n", "h").is_none());
        assert!(histogram("h_bucket{le=\"+Inf} 1\n", "h").is_none());
    }
}
