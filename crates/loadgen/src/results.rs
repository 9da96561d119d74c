//! The results of a run, shared by the runner (which fills them) and the report (which renders
//! them): the run's vocabulary (call direction, agent format, `--find-max` thresholds), the
//! per-level figures and the whole run's document, serialized as the JSON report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Outbound (HTTP trigger → gateway INVITEs the trunk) or inbound (the trunk INVITEs the gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Calls placed with `POST /api/call/outbound`.
    Outbound,
    /// Calls placed by the trunk emulator sending INVITE to the gateway.
    Inbound,
}

/// The agent's audio format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum AgentFormat {
    /// µ-law 8 kHz both ways: passthrough.
    #[value(name = "ulaw_8000")]
    #[serde(rename = "ulaw_8000")]
    Ulaw8000,
    /// PCM 16 kHz both ways: the gateway transcodes and resamples.
    #[value(name = "pcm_16000")]
    #[serde(rename = "pcm_16000")]
    Pcm16000,
}

/// Quality thresholds for `--find-max`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Thresholds {
    /// Largest acceptable pacing p99, µs.
    pub pacing_p99_us: u64,
    /// Packets lost allowed.
    pub max_lost: u64,
    /// Failed calls allowed.
    pub max_failed: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            pacing_p99_us: 2000,
            max_lost: 0,
            max_failed: 0,
        }
    }
}

impl Thresholds {
    /// Why `p` breaks the thresholds (`None`: it holds them).
    pub fn broken(&self, p: &PhaseReport) -> Option<String> {
        if p.failed > self.max_failed {
            return Some(format!("{} failed calls", p.failed));
        }
        if p.lost > self.max_lost {
            return Some(format!("{} packets lost", p.lost));
        }
        if p.pacing_us.p99 > self.pacing_p99_us as f64 {
            return Some(format!("pacing p99 {:.0} µs", p.pacing_us.p99));
        }
        None
    }
}

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
    /// Gateway RSS (its process's).
    pub rss_bytes: u64,
    /// Estimated memory the trunk emulator holds for its recordings and per-call capture copies.
    pub emulator_recording_bytes: u64,
}

/// Where one agent connection's audio stopped matching the phone's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
    /// Of those, the samples it skipped without the quiet check (a burst over its maximum
    /// delay, or the last resort): possibly speech (`uplink.dropped_forced_samples`).
    pub gateway_forced_samples: Option<u64>,
    /// Frames the gateway's jitter buffer concealed for lack of audio (`uplink.underruns`).
    pub gateway_underruns: Option<u64>,
    /// Packets that reached the gateway too late to play (`uplink.late`).
    pub gateway_late_packets: Option<u64>,
    /// Packets the gateway never received (RFC 3550 cumulative loss, `uplink.lost`).
    pub gateway_lost_packets: Option<i64>,
    /// The difference is exactly that: deletions adding up to at most the samples the gateway
    /// reports having skipped, at most one insertion per underrun it reports, everything else
    /// sample-exact. Adaptation, not loss.
    pub accounted: bool,
    /// The gateway's call id, to look the call up (`GET /api/calls/{sid}`, its logs).
    pub call_sid: Option<String>,
    /// The first difference that deletions of quiet audio (and, after underruns the gateway
    /// reports, as many insertions) do not explain, in words.
    pub unexplained: Option<String>,
    /// Samples inserted where the gateway reports underruns (concealment, then re-anchoring
    /// deeper), when that explains the call.
    pub inserted_samples: usize,
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
    /// How late the gateway's media ticks ran (`trunkline_media_tick_lateness_seconds`
    /// between the same scrapes; the fields count ticks, not intervals); `None` if not exported.
    pub gateway_tick_lateness: Option<SendPacing>,
    /// RTP packets the gateway built after their send slot, so sent late
    /// (`trunkline_rtp_send_slot_missed_total` between the same scrapes).
    pub gateway_missed_send_slots: Option<u64>,
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
    /// Of the others, those whose only differences are quiet audio the gateway's jitter buffer
    /// reports having skipped to shrink its depth and concealment after the underruns it
    /// reports (see [`Defect::accounted`]).
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
    /// (peak − before) / peak calls.
    pub rss_per_call_bytes: Option<u64>,
    /// With `--find-max`: why this level failed the thresholds.
    pub threshold_broken: Option<String>,
    /// Resource samples.
    pub samples: Vec<Sample>,
    /// With `--nodes N`: each gateway node's share of the level (empty with one node).
    pub nodes: Vec<NodeShare>,
    /// With `--kamailio`: Kamailio's CPU (all its processes) over the level, % of one core.
    pub kamailio_cpu_pct: Option<f64>,
}

/// One gateway node's part of a level (`--nodes N`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct NodeShare {
    /// Calls it started (`trunkline_calls_started_total` on its `/metrics`, before → after).
    pub calls: u64,
    /// Its CPU over the level (first call placed → last call ended), % of one core.
    pub cpu_pct: f64,
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
    /// The gateway ran inside this process (no longer possible: always `false`, kept so the
    /// report's fields stay the same).
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
}
