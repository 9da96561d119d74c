//! Answering-machine detection in a call: the policy around [`trunkline_media::amd::Amd`]
//! (ARCHITECTURE.md: "a new media feature: sans-IO in media, fed from call::core at the 20 ms
//! tick"). The core feeds the callee's decoded audio from the answer on; this module turns the
//! detector's events into what the call does:
//!
//! - **detect**: the agent connects as usual and speaks at once; the verdict is told to it as a
//!   `contextual_update`;
//! - **hold**: the agent is connected only when the verdict is in (at most `max_hold` after the
//!   answer, then as `unknown`), with the dynamic variable `answered_by` = `human` / `machine` /
//!   `unknown`: the phone hears nothing from the agent before the verdict, and no conversation is
//!   started for a machine that is hung up on. The callee's audio meanwhile is kept (the last
//!   second) for the agent as when it connects normally;
//! - on a machine: `hangup` (BYE, end cause `machine`), `connect` (as for a person), or
//!   `leave_message`: after the beep (or the greeting's end and silence) the agent is connected
//!   with `message` as its `first_message` and `answered_by=machine`, and the call ends once that
//!   message has played and the agent has been quiet for [`MESSAGE_QUIET`] (or by its own
//!   `end_call`). In detect mode the agent is already talking: it is told by a
//!   `contextual_update` to leave the message.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
pub use trunkline_media::amd::{AmdConfig, AmdEvent, Reason, Verdict};

/// After the left message has played, end the call once the agent has sent no audio this long.
pub const MESSAGE_QUIET: Duration = Duration::from_millis(1500);

/// When the agent speaks relative to the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmdMode {
    /// The agent speaks at once; the verdict is sent to it mid-call.
    Detect,
    /// The agent is connected when the verdict is in (at most `max_hold` after answer).
    Hold,
}

/// What to do when a machine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMachine {
    /// BYE at once (end cause `machine`).
    Hangup,
    /// Leave `message` after the beep, then hang up.
    LeaveMessage,
    /// Carry on as with a person.
    Connect,
}

/// Answering-machine detection for outbound calls (`[amd]`; `None` in [`crate::CallConfig`]
/// when `mode = "off"`).
#[derive(Debug, Clone)]
pub struct AmdSettings {
    /// Detect or hold.
    pub mode: AmdMode,
    /// On a machine.
    pub on_machine: OnMachine,
    /// Hold mode: connect the agent (as `unknown`) at the latest this long after answer.
    pub max_hold: Duration,
    /// The message for `leave_message` (`{{variables}}` are filled from the call's dynamic
    /// variables when the agent connects).
    pub message: String,
    /// The detector's tunables.
    pub detector: AmdConfig,
}

impl Default for AmdSettings {
    fn default() -> Self {
        AmdSettings {
            mode: AmdMode::Hold,
            on_machine: OnMachine::Hangup,
            max_hold: Duration::from_millis(3000),
            message: String::new(),
            detector: AmdConfig::default(),
        }
    }
}

/// The detection's outcome in the call record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmdRecord {
    /// `human`, `machine` or `unknown`.
    pub answered_by: String,
    /// Why (`after_greeting_silence`, `long_greeting`, `max_words`, `max_word_length`, `beep`,
    /// `initial_silence`, `timeout`, `hold_timeout`).
    pub reason: String,
    /// When the verdict was reached (Unix ms).
    pub decided_ms: u64,
    /// … in ms after the answer.
    pub decision_after_answer_ms: u64,
    /// The voicemail beep's start (Unix ms), if one was heard.
    #[serde(default)]
    pub beep_ms: Option<u64>,
    /// … in ms after the answer.
    #[serde(default)]
    pub beep_after_answer_ms: Option<u64>,
    /// Its frequency, Hz.
    #[serde(default)]
    pub beep_hz: Option<f32>,
    /// `leave_message`: when the agent was connected to leave it (Unix ms).
    #[serde(default)]
    pub message_started_ms: Option<u64>,
}

/// Agent connection overrides for one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOverrides {
    /// Replaces the agent's first message (`{{variables}}` filled by the runner).
    pub first_message: Option<String>,
    /// Extra dynamic variables (string values).
    pub dynamic_variables: Vec<(String, String)>,
}

/// Fill `{{name}}` placeholders from `vars` (unknown names are left as they are).
pub fn render_message<'a>(
    message: &str,
    vars: impl IntoIterator<Item = (&'a str, String)>,
) -> String {
    let mut out = message.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), &v);
        out = out.replace(&format!("{{{{ {k} }}}}"), &v);
    }
    out
}

/// Where the detection stands in a call.
#[derive(Debug)]
pub(crate) struct AmdRun {
    pub(crate) settings: AmdSettings,
    pub(crate) detector: trunkline_media::amd::Amd,
    pub(crate) answered_at: Instant,
    /// Hold mode, verdict not in yet: connect the agent at this time at the latest.
    pub(crate) hold_deadline: Option<Instant>,
    /// The agent may connect / has connected (always true in detect mode).
    pub(crate) released: bool,
    pub(crate) verdict: Option<Verdict>,
    /// leave_message: the agent was connected to leave the message.
    pub(crate) leaving_message: bool,
    /// Detect mode: the agent was told to leave the message.
    pub(crate) message_told: bool,
    /// A contextual update waiting for the agent to connect.
    pub(crate) pending_update: Option<String>,
}

impl AmdRun {
    pub(crate) fn new(settings: AmdSettings, now: Instant) -> AmdRun {
        let hold = settings.mode == AmdMode::Hold;
        AmdRun {
            detector: trunkline_media::amd::Amd::new(settings.detector.clone()),
            hold_deadline: hold.then(|| now + settings.max_hold),
            released: !hold,
            answered_at: now,
            verdict: None,
            leaving_message: false,
            message_told: false,
            pending_update: None,
            settings,
        }
    }

    /// Hold mode and the agent not released yet.
    pub(crate) fn holding(&self) -> bool {
        !self.released
    }

    /// The detector still wants audio.
    pub(crate) fn listening(&self) -> bool {
        !self.detector.is_done()
    }

    pub(crate) fn after_answer_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.answered_at).as_millis() as u64
    }
}

/// The text of the verdict's `contextual_update`.
pub(crate) fn verdict_update(verdict: Verdict) -> String {
    match verdict {
        Verdict::Human => "Answering-machine detection: a person answered this call.".into(),
        Verdict::Machine => "Answering-machine detection: this call was answered by a voicemail \
                             or answering machine, not a person."
            .into(),
        Verdict::Unknown => {
            "Answering-machine detection: it is not known whether a person answered.".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_known_variables() {
        let m = render_message(
            "Hi {{name}}, call {{ number }} back. {{unknown}}",
            [("name", "Ann".to_string()), ("number", "555".to_string())],
        );
        assert_eq!(m, "Hi Ann, call 555 back. {{unknown}}");
    }
}
