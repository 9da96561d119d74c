//! Prometheus metrics in text exposition format 0.0.4. Labels never carry phone numbers or call
//! ids: only directions, outcomes, causes and refusal reasons (small fixed sets).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use std::sync::Arc;

use trunkline_call::CallRecord;
use trunkline_call::runtime::pacing::{
    PACING_BUCKETS_US, PacingHistogram, PacingSnapshot, TickStats,
};
use trunkline_call::sip::TransportStats;

/// Setup-latency histogram buckets, seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    started: BTreeMap<&'static str, u64>,
    ended: BTreeMap<(String, String, String), u64>,
    refusals: BTreeMap<&'static str, u64>,
    setup: Histogram,
    first_audio: Histogram,
    ping: Histogram,
    agent_closes: BTreeMap<String, u64>,
    tool_calls: BTreeMap<(&'static str, &'static str), u64>,
    amd_verdicts: BTreeMap<(&'static str, &'static str), u64>,
    amd_decision: Histogram,
    amd_beeps: u64,
    rtp_in: u64,
    rtp_out: u64,
    rtp_lost: i64,
    interruptions: u64,
    encrypted: BTreeMap<&'static str, u64>,
    srtp_auth_failures: u64,
}

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    pacing: Arc<PacingHistogram>,
    ticks: Arc<TickStats>,
    /// Counters of the connection and slow-client defences.
    pub defences: Defences,
    /// Counters of every call recording.
    pub recording: Arc<trunkline_call::recording::RecordingStats>,
}

impl Metrics {
    /// The RTP send-pacing histogram every call feeds.
    pub fn pacing(&self) -> &Arc<PacingHistogram> {
        &self.pacing
    }

    /// The media-tick lateness histogram and missed-slot counter every call feeds.
    pub fn ticks(&self) -> &Arc<TickStats> {
        &self.ticks
    }

    /// A call started.
    pub fn call_started(&self, direction: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.started.entry(direction).or_default() += 1;
        }
    }

    /// A call ended with this record.
    pub fn call_ended(&self, direction: &str, r: &CallRecord) {
        let Ok(mut m) = self.inner.lock() else { return };
        let cause = r.end_cause.as_ref().map_or("unknown", |c| c.label());
        *m.ended
            .entry((direction.to_owned(), r.status.clone(), cause.to_owned()))
            .or_default() += 1;
        let t = &r.timestamps;
        if let (Some(a), Some(b)) = (t.invite_ms.or(t.created_ms), t.answered_ms) {
            m.setup.observe(b.saturating_sub(a) as f64 / 1000.0);
        }
        if let (Some(a), Some(b)) = (t.answered_ms, t.first_agent_audio_ms) {
            m.first_audio.observe(b.saturating_sub(a) as f64 / 1000.0);
        }
        if let Some(p) = r.agent_ping_ms {
            m.ping.observe(p / 1000.0);
        }
        if let Some(close) = &r.agent_close {
            // "<code> <Reason> {…}" → "Reason": a small fixed set of variant names.
            let reason: String = close
                .split_whitespace()
                .nth(1)
                .unwrap_or("unknown")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            *m.agent_closes.entry(reason).or_default() += 1;
        }
        for t in &r.tool_calls {
            let tool = match t.name.as_str() {
                "end_call" => "end_call",
                "send_dtmf" => "send_dtmf",
                "transfer_call" => "transfer_call",
                _ => "other",
            };
            let result = if t.is_error { "error" } else { "ok" };
            *m.tool_calls.entry((tool, result)).or_default() += 1;
        }
        if let Some(a) = &r.amd {
            // Fixed label sets: the verdict and its reason, as the detector names them.
            let verdict = match a.answered_by.as_str() {
                "human" => "human",
                "machine" => "machine",
                _ => "unknown",
            };
            let reason = match a.reason.as_str() {
                "after_greeting_silence" => "after_greeting_silence",
                "long_greeting" => "long_greeting",
                "max_words" => "max_words",
                "max_word_length" => "max_word_length",
                "beep" => "beep",
                "initial_silence" => "initial_silence",
                "timeout" => "timeout",
                _ => "other",
            };
            *m.amd_verdicts.entry((verdict, reason)).or_default() += 1;
            m.amd_decision
                .observe(a.decision_after_answer_ms as f64 / 1000.0);
            if a.beep_ms.is_some() {
                m.amd_beeps += 1;
            }
        }
        m.rtp_in += r.uplink.packets;
        m.rtp_out += r.downlink.packets;
        m.rtp_lost += r.uplink.lost.max(0);
        m.interruptions += r.interruptions;
        if r.media_security.encrypted {
            let suite = match r.media_security.suite.as_deref() {
                Some("AES_CM_128_HMAC_SHA1_32") => "AES_CM_128_HMAC_SHA1_32",
                _ => "AES_CM_128_HMAC_SHA1_80",
            };
            *m.encrypted.entry(suite).or_default() += 1;
        }
        m.srtp_auth_failures += r.media_security.auth_failures;
    }

    /// A request or call was refused by policy.
    pub fn refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.refusals.entry(reason).or_default() += 1;
        }
    }

    /// The text exposition.
    pub fn render(&self, active: usize, sip_inbound_refused: u64) -> String {
        let mut out = String::new();
        let Ok(m) = self.inner.lock() else {
            return out;
        };
        let _ = writeln!(
            out,
            "# HELP trunkline_active_calls Calls in progress.\n# TYPE trunkline_active_calls gauge\ntrunkline_active_calls {active}"
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_calls_started_total Calls started.\n# TYPE trunkline_calls_started_total counter"
        );
        for (d, n) in &m.started {
            let _ = writeln!(
                out,
                "trunkline_calls_started_total{{direction=\"{d}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_calls_ended_total Calls ended, by final status and cause.\n# TYPE trunkline_calls_ended_total counter"
        );
        for ((d, s, c), n) in &m.ended {
            let _ = writeln!(
                out,
                "trunkline_calls_ended_total{{direction=\"{d}\",status=\"{s}\",cause=\"{c}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_policy_rejections_total Requests refused by policy.\n# TYPE trunkline_policy_rejections_total counter"
        );
        for (r, n) in &m.refusals {
            let _ = writeln!(
                out,
                "trunkline_policy_rejections_total{{reason=\"{r}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_sip_inbound_refused_total INVITEs refused because of their source.\n# TYPE trunkline_sip_inbound_refused_total counter\ntrunkline_sip_inbound_refused_total {sip_inbound_refused}"
        );
        m.setup.render(
            &mut out,
            "trunkline_call_setup_seconds",
            "INVITE to answer.",
        );
        m.first_audio.render(
            &mut out,
            "trunkline_first_agent_audio_seconds",
            "Answer to the first agent audio packet.",
        );
        m.ping.render(
            &mut out,
            "trunkline_agent_ping_rtt_seconds",
            "The agent service's WebSocket round-trip estimate (last ping_ms of each call).",
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_amd_verdicts_total Answering-machine detection verdicts of ended calls, by verdict and reason.\n# TYPE trunkline_amd_verdicts_total counter"
        );
        for ((v, r), n) in &m.amd_verdicts {
            let _ = writeln!(
                out,
                "trunkline_amd_verdicts_total{{verdict=\"{v}\",reason=\"{r}\"}} {n}"
            );
        }
        m.amd_decision.render(
            &mut out,
            "trunkline_amd_decision_seconds",
            "Answer to the answering-machine detection verdict.",
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_amd_beeps_total Voicemail beeps heard after a machine verdict.\n# TYPE trunkline_amd_beeps_total counter\ntrunkline_amd_beeps_total {}",
            m.amd_beeps
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_agent_closes_total Agent conversations ended, by reason.\n# TYPE trunkline_agent_closes_total counter"
        );
        for (r, n) in &m.agent_closes {
            let _ = writeln!(out, "trunkline_agent_closes_total{{reason=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_agent_tool_calls_total Client tool calls of ended calls, by tool and result (error: refused by policy or failed).\n# TYPE trunkline_agent_tool_calls_total counter"
        );
        for ((tool, result), n) in &m.tool_calls {
            let _ = writeln!(
                out,
                "trunkline_agent_tool_calls_total{{tool=\"{tool}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_rtp_packets_total RTP packets of ended calls.\n# TYPE trunkline_rtp_packets_total counter\ntrunkline_rtp_packets_total{{direction=\"in\"}} {}\ntrunkline_rtp_packets_total{{direction=\"out\"}} {}",
            m.rtp_in, m.rtp_out
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_rtp_lost_packets_total RTP packets lost from the phone side.\n# TYPE trunkline_rtp_lost_packets_total counter\ntrunkline_rtp_lost_packets_total {}",
            m.rtp_lost
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_interruptions_total Agent barge-ins.\n# TYPE trunkline_interruptions_total counter\ntrunkline_interruptions_total {}",
            m.interruptions
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_calls_encrypted_total Ended calls whose media was SRTP, by crypto suite.\n# TYPE trunkline_calls_encrypted_total counter"
        );
        for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"] {
            let _ = writeln!(
                out,
                "trunkline_calls_encrypted_total{{suite=\"{suite}\"}} {}",
                m.encrypted.get(suite).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_srtp_auth_failures_total SRTP/SRTCP packets of ended calls dropped for failing authentication or the replay check.\n# TYPE trunkline_srtp_auth_failures_total counter\ntrunkline_srtp_auth_failures_total {}",
            m.srtp_auth_failures
        );
        let p = self.pacing.snapshot();
        render_us_histogram(
            &mut out,
            "trunkline_rtp_send_pacing_seconds",
            "|interval between two RTP packets sent to the same phone - 20 ms|, measured at the gateway's send.",
            &p,
        );
        render_us_histogram(
            &mut out,
            "trunkline_media_tick_lateness_seconds",
            "How late each call's 20 ms media tick ran after its scheduled time (the call task's wake-up on the runtime's timer).",
            &self.ticks.lateness.snapshot(),
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_rtp_send_slot_missed_total RTP packets built after their send time (media tick later than rtp.send_delay_ms): sent at once, late.\n# TYPE trunkline_rtp_send_slot_missed_total counter\ntrunkline_rtp_send_slot_missed_total {}",
            self.ticks.missed()
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_rtp_send_pacing_max_seconds The largest send-interval deviation since start.\n# TYPE trunkline_rtp_send_pacing_max_seconds gauge\ntrunkline_rtp_send_pacing_max_seconds {}",
            p.max_us as f64 / 1e6
        );
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Connection and slow-client defences (OPERATIONS.md, "Limits and defences").

/// Counters of the HTTP server's defences (the SIP listeners' are in [`TransportStats`]).
#[derive(Debug, Default)]
pub struct Defences {
    /// HTTP connections closed because the request head did not arrive within
    /// `http.header_timeout_secs`.
    pub http_header_timeouts: std::sync::atomic::AtomicU64,
    /// HTTP requests answered 408 after `http.request_timeout_secs`.
    pub http_request_timeouts: std::sync::atomic::AtomicU64,
    /// HTTP accept failures (out of file descriptors) after which the listener paused.
    pub http_accept_backoffs: std::sync::atomic::AtomicU64,
}

/// A histogram of µs deviations ([`PacingHistogram`]) in seconds.
fn render_us_histogram(out: &mut String, name: &str, help: &str, p: &PacingSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (b, c) in PACING_BUCKETS_US.iter().zip(&p.counts) {
        cumulative += c;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *b as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", p.count());
    let _ = writeln!(out, "{name}_sum {}", p.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", p.count());
}

/// The recording counters in the text exposition.
pub fn render_recording(out: &mut String, r: &trunkline_call::recording::RecordingStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, help, v) in [
        (
            "trunkline_recording_started_total",
            "Call recordings started.",
            &r.started,
        ),
        (
            "trunkline_recording_bytes_total",
            "Bytes written to call recordings.",
            &r.bytes,
        ),
        (
            "trunkline_recording_dropped_frames_total",
            "20 ms recording frames dropped because the writer's queue was full (the call went on).",
            &r.dropped_frames,
        ),
        (
            "trunkline_recording_failed_total",
            "Call recordings that could not be created or written.",
            &r.failed,
        ),
        (
            "trunkline_recording_deleted_total",
            "Call recordings deleted by retention (recording.retention_days).",
            &r.deleted,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Relaxed)
        );
    }
}

/// The defence counters in the text exposition: the HTTP server's and the SIP listeners'.
pub fn render_defences(out: &mut String, d: &Defences, sip: &TransportStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP trunkline_http_timeouts_total HTTP connections closed (header) or requests answered 408 (request) after a timeout.\n# TYPE trunkline_http_timeouts_total counter\ntrunkline_http_timeouts_total{{kind=\"header\"}} {}\ntrunkline_http_timeouts_total{{kind=\"request\"}} {}",
        d.http_header_timeouts.load(Relaxed),
        d.http_request_timeouts.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_accept_backoffs_total Accept failures (out of file descriptors or memory) after which a listener paused.\n# TYPE trunkline_accept_backoffs_total counter\ntrunkline_accept_backoffs_total{{listener=\"http\"}} {}\ntrunkline_accept_backoffs_total{{listener=\"sip\"}} {}",
        d.http_accept_backoffs.load(Relaxed),
        sip.accept_backoffs.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_sip_connections_open Accepted SIP TCP/TLS connections open.\n# TYPE trunkline_sip_connections_open gauge\ntrunkline_sip_connections_open {}",
        sip.accepted_open.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_sip_connections_refused_total SIP TCP/TLS connections closed at accept, by reason.\n# TYPE trunkline_sip_connections_refused_total counter\ntrunkline_sip_connections_refused_total{{reason=\"max_connections\"}} {}\ntrunkline_sip_connections_refused_total{{reason=\"max_connections_per_source\"}} {}\ntrunkline_sip_connections_refused_total{{reason=\"source\"}} {}",
        sip.refused_total_cap.load(Relaxed),
        sip.refused_per_source_cap.load(Relaxed),
        sip.refused_source.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_sip_connections_closed_total SIP TCP/TLS connections closed by the gateway, by reason.\n# TYPE trunkline_sip_connections_closed_total counter\ntrunkline_sip_connections_closed_total{{reason=\"first_message_timeout\"}} {}\ntrunkline_sip_connections_closed_total{{reason=\"idle\"}} {}\ntrunkline_sip_connections_closed_total{{reason=\"unframeable\"}} {}",
        sip.first_message_timeouts.load(Relaxed),
        sip.idle_closes.load(Relaxed),
        sip.framing_errors.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_sip_oversized_rejects_total Oversized SIP requests over TCP/TLS answered 413/513 before the close.\n# TYPE trunkline_sip_oversized_rejects_total counter\ntrunkline_sip_oversized_rejects_total {}",
        sip.oversized_rejects.load(Relaxed)
    );
}

/// The trunk counters (RFC 3263 failover, DNS, inbound digest authentication).
pub fn render_trunk(
    out: &mut String,
    dns_failures: u64,
    sip: &trunkline_call::runtime::sip_task::SipStackStats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP trunkline_trunk_failovers_total Outbound INVITEs sent to the next trunk address after a 503, a timeout or a transport error (RFC 3263).\n# TYPE trunkline_trunk_failovers_total counter\ntrunkline_trunk_failovers_total {}",
        sip.failovers.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_trunk_dns_failures_total Outbound calls for which DNS gave no trunk address.\n# TYPE trunkline_trunk_dns_failures_total counter\ntrunkline_trunk_dns_failures_total {dns_failures}"
    );
    let _ = writeln!(
        out,
        "# HELP trunkline_inbound_auth_total Inbound INVITEs answered by digest authentication (trunk.inbound_auth), by result.\n# TYPE trunkline_inbound_auth_total counter\ntrunkline_inbound_auth_total{{result=\"challenged\"}} {}\ntrunkline_inbound_auth_total{{result=\"forbidden\"}} {}",
        sip.inbound_auth_challenges.load(Relaxed),
        sip.inbound_auth_failures.load(Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_verdicts_and_decision_times_are_counted() {
        let m = Metrics::default();
        let mut r = CallRecord::new("CA1".into(), "outbound", "+1".into(), "+2".into());
        m.call_ended("outbound", &r);
        r.amd = Some(trunkline_call::amd::AmdRecord {
            answered_by: "machine".into(),
            reason: "long_greeting".into(),
            decided_ms: 1,
            decision_after_answer_ms: 1900,
            beep_ms: Some(2),
            beep_after_answer_ms: Some(4000),
            beep_hz: Some(1000.0),
            message_started_ms: None,
        });
        m.call_ended("outbound", &r);
        let text = m.render(0, 0);
        assert!(text.contains(
            "trunkline_amd_verdicts_total{verdict=\"machine\",reason=\"long_greeting\"} 1"
        ));
        assert!(text.contains("trunkline_amd_decision_seconds_bucket{le=\"2\"} 1"));
        assert!(text.contains("trunkline_amd_decision_seconds_bucket{le=\"1\"} 0"));
        assert!(text.contains("trunkline_amd_beeps_total 1"));
    }
}
