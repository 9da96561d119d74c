//! The call state machine driven with virtual time: no sockets, no sleeps. Each test plays the
//! phone (RTP in), the trunk (SIP outcomes) and the agent (events) and asserts what the call did.

// One real `Instant` is read as the origin of virtual time; everything after is simulated.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use trunkline_agent::protocol::{AgentToolResponse, ClientToolCall};
use trunkline_agent::{AgentEvent, AudioFormat, CloseReason, Closed, ResponseCorrection};
use trunkline_call::record::{EndCause, TranscriptLine};
use trunkline_call::{
    AgentAction, Call, CallAction, CallConfig, CallState, NegotiatedMedia, SipAction, SipEvent,
};
use trunkline_media::g711::G711;
use trunkline_media::rtcp::WallClock;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::session::{MediaConfig, PayloadMap};

const PHONE: &str = "127.0.0.1:40000";

struct Harness {
    call: Call,
    now: Instant,
    /// (time, payload type, marker, payload) of every RTP packet the gateway sent.
    rtp_out: Vec<(Instant, u8, bool, Vec<u8>)>,
    actions: Vec<CallAction>,
    phone_seq: u16,
    phone_ts: u32,
    phone_sent: Vec<u8>,
}

fn phone() -> SocketAddr {
    PHONE.parse().expect("addr")
}

fn negotiated() -> NegotiatedMedia {
    NegotiatedMedia {
        remote_rtp: Some(phone()),
        remote_rtcp: None,
        law: G711::Ulaw,
        payload_types: PayloadMap::default(),
        on_hold: false,
        srtp: None,
    }
}

fn template(now: Instant) -> MediaConfig {
    let wallclock = WallClock {
        instant: now,
        system: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    MediaConfig::new(G711::Ulaw, 0x1234_5678, wallclock)
}

fn record() -> trunkline_call::CallRecord {
    trunkline_call::CallRecord::new(
        "CA1".into(),
        "outbound",
        "+15550001".into(),
        "+33100".into(),
    )
}

impl Harness {
    fn outbound(cfg: CallConfig) -> Self {
        let now = Instant::now();
        let call = Call::outbound(cfg, template(now), record(), now);
        Self::wrap(call, now)
    }

    fn inbound(cfg: CallConfig) -> Self {
        let now = Instant::now();
        let call = Call::inbound(cfg, template(now), negotiated(), record(), now);
        Self::wrap(call, now)
    }

    fn wrap(call: Call, now: Instant) -> Self {
        let mut h = Harness {
            call,
            now,
            rtp_out: Vec::new(),
            actions: Vec::new(),
            phone_seq: 100,
            phone_ts: 8000,
            phone_sent: Vec::new(),
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 1500];
        while let Some(t) = self.call.poll_transmit(self.now, &mut buf) {
            if t.destination == phone()
                && let Ok(p) = parse_rtp(&buf[..t.len])
            {
                self.rtp_out.push((
                    self.now,
                    p.header.payload_type,
                    p.header.marker,
                    p.payload.to_vec(),
                ));
            }
        }
        while let Some(a) = self.call.poll_action() {
            self.actions.push(a);
        }
    }

    /// Advance virtual time to `until`, waking at every deadline the call asks for; the phone
    /// sends one 20 ms packet every 20 ms when `talk` is set.
    fn run_for(&mut self, dur: Duration, talk: bool) {
        let until = self.now + dur;
        let mut next_phone = self.now;
        loop {
            let mut next = until;
            if let Some(t) = self.call.poll_timeout() {
                next = next.min(t);
            }
            if talk {
                next = next.min(next_phone);
            }
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if talk && self.now >= next_phone {
                self.phone_packet();
                next_phone += Duration::from_millis(20);
            }
            self.call.handle_timeout(self.now);
            self.drain();
            if self.now >= until {
                break;
            }
        }
        self.now = until;
    }

    fn phone_packet(&mut self) {
        let payload: Vec<u8> = (0..160u32)
            .map(|i| ((self.phone_seq as u32 * 31 + i * 7) % 200) as u8)
            .collect();
        let h = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: self.phone_seq,
            timestamp: self.phone_ts,
            ssrc: 0xCAFE,
        };
        let mut buf = [0u8; 200];
        let n = write_rtp(&h, &payload, &mut buf).expect("rtp");
        self.call.handle_rtp(&buf[..n], phone(), self.now);
        self.phone_sent.extend_from_slice(&payload);
        self.phone_seq = self.phone_seq.wrapping_add(1);
        self.phone_ts = self.phone_ts.wrapping_add(160);
        self.drain();
    }

    fn sip(&mut self, ev: SipEvent) {
        self.call.handle_sip(ev, self.now);
        self.drain();
    }

    fn agent(&mut self, ev: AgentEvent) {
        self.call.handle_agent(ev, self.now);
        self.drain();
    }

    fn take_actions(&mut self) -> Vec<CallAction> {
        std::mem::take(&mut self.actions)
    }

    fn sip_actions(&self) -> Vec<SipAction> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                CallAction::Sip(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn agent_actions(&self) -> Vec<AgentAction> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                CallAction::Agent(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn uplink_bytes(&self) -> Vec<u8> {
        self.agent_actions()
            .into_iter()
            .filter_map(|a| match a {
                AgentAction::Audio(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Answered, agent connected with `fmt` both ways.
    fn connect(&mut self, fmt: AudioFormat) {
        self.sip(SipEvent::Progress {
            status: 180,
            media: None,
        });
        self.sip(SipEvent::Answered {
            media: Some(negotiated()),
        });
        assert!(
            self.agent_actions().contains(&AgentAction::Connect),
            "agent connected at answer"
        );
        self.agent(AgentEvent::Metadata {
            conversation_id: "conv_1".into(),
            input_format: fmt,
            output_format: fmt,
        });
        assert_eq!(self.call.state(), CallState::Answered);
    }
}

fn closed(reason: CloseReason, code: Option<u16>) -> AgentEvent {
    AgentEvent::Closed(Box::new(Closed {
        reason,
        code,
        text: String::new(),
        error: None,
    }))
}

fn agent_audio(event_id: i64, ms: usize, value: u8) -> AgentEvent {
    AgentEvent::Audio {
        event_id,
        audio: Bytes::from(vec![value; ms * 8]),
    }
}

fn audio_packets(h: &Harness, value: u8) -> Vec<Instant> {
    h.rtp_out
        .iter()
        .filter(|(_, pt, _, p)| *pt == 0 && p.iter().all(|&b| b == value))
        .map(|(t, ..)| *t)
        .collect()
}

#[test]
fn outbound_call_bridges_ulaw_byte_for_byte_both_ways() {
    let mut h = Harness::outbound(CallConfig::default());
    assert_eq!(h.sip_actions(), vec![SipAction::Invite]);
    h.connect(AudioFormat::Ulaw8000);

    // Phone → agent: what the phone said arrives at the agent unchanged, in order.
    h.run_for(Duration::from_secs(2), true);
    let up = h.uplink_bytes();
    let first = &h.phone_sent[..160];
    let start = up
        .windows(160)
        .position(|w| w == first)
        .expect("the phone's first packet reached the agent");
    let heard = &up[start..];
    let n = heard.len().min(h.phone_sent.len());
    assert!(
        n >= 160 * 80,
        "at least 1.6 s of speech relayed, got {n} bytes"
    );
    if let Some(i) = (0..n).find(|&i| heard[i] != h.phone_sent[i]) {
        let s = h.call.media().map(|m| m.stats());
        panic!(
            "mismatch at byte {i} (frame {}), n={n}, stats {s:?}",
            i / 160
        );
    }
    // Chunks are 40 ms (default) and keep flowing.
    assert!(h.agent_actions().iter().all(|a| match a {
        AgentAction::Audio(b) => b.len() == 320,
        _ => true,
    }));

    // Agent → phone: a 1 s utterance is paced out as 50 frames of 20 ms, byte-exact.
    let speech: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
    h.agent(AgentEvent::Audio {
        event_id: 1,
        audio: Bytes::from(speech.clone()),
    });
    let before = h.rtp_out.len();
    h.run_for(Duration::from_millis(1100), true);
    let sent: Vec<u8> = h.rtp_out[before..]
        .iter()
        .filter(|(_, pt, ..)| *pt == 0)
        .flat_map(|(.., p)| p.clone())
        .collect();
    let pos = sent
        .windows(160)
        .position(|w| w == &speech[..160])
        .expect("agent audio reached the phone");
    assert_eq!(
        &sent[pos..pos + 8000],
        &speech[..],
        "downlink passthrough is exact"
    );

    // Pacing: one packet every 20 ms, never a burst.
    let times: Vec<Instant> = h.rtp_out[before..].iter().map(|(t, ..)| *t).collect();
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_millis(20));
    }
    let rec = h.call.record();
    assert_eq!(rec.conversation_id.as_deref(), Some("conv_1"));
    assert!(rec.timestamps.first_agent_audio_ms.is_some());
}

#[test]
fn interruption_stops_queued_agent_audio_within_one_frame() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.agent(agent_audio(5, 2000, 0x11));
    h.run_for(Duration::from_millis(300), true);
    assert!(!audio_packets(&h, 0x11).is_empty());
    let t_int = h.now;
    h.agent(AgentEvent::Interruption { event_id: 5 });
    h.run_for(Duration::from_millis(500), true);
    let after: Vec<_> = audio_packets(&h, 0x11)
        .into_iter()
        .filter(|t| *t > t_int)
        .collect();
    assert!(
        after
            .iter()
            .all(|t| *t - t_int <= Duration::from_millis(20)),
        "agent audio still sent {:?} after the interruption",
        after.last().map(|t| *t - t_int)
    );
    // A later turn plays again.
    h.agent(agent_audio(6, 200, 0x22));
    h.run_for(Duration::from_millis(300), true);
    assert!(!audio_packets(&h, 0x22).is_empty());
    assert_eq!(h.call.record().interruptions, 1);
}

#[test]
fn end_call_plays_the_last_sentence_in_full_before_bye() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.agent(agent_audio(3, 1500, 0x33));
    h.agent(AgentEvent::AgentToolResponse(Box::new(AgentToolResponse {
        tool_name: "end_call".into(),
        tool_call_id: "t1".into(),
        tool_type: Some("system".into()),
        is_error: Some(false),
        is_called: Some(true),
        event_id: Some(3),
        full_tool_result: None,
        truncated: None,
        is_blocked: None,
    })));
    h.agent(closed(CloseReason::AgentEnded, Some(1000)));
    assert_eq!(h.call.state(), CallState::Draining);
    assert!(
        !h.sip_actions().contains(&SipAction::Bye),
        "no BYE before playout"
    );
    h.run_for(Duration::from_secs(3), true);
    assert_eq!(audio_packets(&h, 0x33).len(), 75, "all 1.5 s were played");
    assert_eq!(h.sip_actions(), vec![SipAction::Invite, SipAction::Bye]);
    let rec = h.call.record();
    assert_eq!(rec.end_cause, Some(EndCause::AgentEnded));
    assert_eq!(rec.status, "completed");
}

#[test]
fn agent_socket_lost_ends_the_call_with_bye_at_once() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_millis(200), true);
    h.agent(closed(
        CloseReason::ConnectionLost {
            detail: "reset".into(),
        },
        None,
    ));
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Bye));
    assert_eq!(h.call.state(), CallState::Ended);
    assert!(matches!(
        h.call.record().end_cause,
        Some(EndCause::AgentError { .. })
    ));
    assert!(h.call.record().timestamps.ended_ms.is_some());
}

#[test]
fn unresponsive_agent_ends_the_call_as_agent_timeout_with_bye() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_millis(200), true);
    h.agent(closed(
        CloseReason::AgentTimeout {
            detail: "no pong to our ping for 10 s".into(),
        },
        None,
    ));
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Bye));
    let rec = h.call.record();
    assert_eq!(rec.end_cause, Some(EndCause::AgentTimeout));
    assert!(
        rec.agent_close
            .as_deref()
            .is_some_and(|c| c.starts_with("none AgentTimeout")),
        "{:?}",
        rec.agent_close
    );
    assert!(h.call.is_done());
}

#[test]
fn phone_bye_closes_the_agent_and_finalises_the_record() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_millis(500), true);
    h.take_actions();
    h.sip(SipEvent::RemoteBye);
    let actions = h.take_actions();
    assert!(actions.contains(&CallAction::Agent(AgentAction::Close)));
    assert!(!actions.contains(&CallAction::Sip(SipAction::Bye)));
    assert!(actions.contains(&CallAction::RecordChanged));
    let rec = h.call.record();
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    assert!(
        rec.uplink.packets >= 24,
        "uplink stats copied: {:?}",
        rec.uplink
    );
    assert!(h.call.is_done());
}

#[test]
fn busy_and_rejections_are_recorded_with_their_cause() {
    for (status, after_auth, cause) in [
        (486, false, EndCause::Busy { status: 486 }),
        (407, true, EndCause::AuthFailed { status: 407 }),
        (
            503,
            false,
            EndCause::Rejected {
                status: 503,
                reason: "Service Unavailable".into(),
            },
        ),
        (487, false, EndCause::NoAnswer { status: Some(487) }),
    ] {
        let mut h = Harness::outbound(CallConfig::default());
        h.sip(SipEvent::Failed {
            status,
            reason: "Service Unavailable".into(),
            after_auth,
        });
        assert_eq!(h.call.record().end_cause.as_ref(), Some(&cause));
        assert_eq!(
            h.sip_actions(),
            vec![SipAction::Invite],
            "nothing to cancel"
        );
        assert_eq!(h.call.record().sip_status, Some(status));
    }
}

#[test]
fn unanswered_call_is_cancelled_after_the_ring_timeout() {
    let cfg = CallConfig {
        ring_timeout: Duration::from_secs(20),
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.sip(SipEvent::Progress {
        status: 180,
        media: None,
    });
    h.run_for(Duration::from_millis(19_990), false);
    assert!(!h.sip_actions().contains(&SipAction::Cancel));
    h.run_for(Duration::from_millis(20), false);
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Cancel));
    assert_eq!(
        h.call.record().end_cause,
        Some(EndCause::NoAnswer { status: None })
    );
    assert_eq!(h.call.record().status, "no-answer");
    // Agent connection was never opened (connect at answer).
    assert!(!h.agent_actions().contains(&AgentAction::Connect));
}

#[test]
fn agent_connected_at_ringing_greets_from_the_first_frame_after_answer() {
    let cfg = CallConfig {
        agent_connect: trunkline_call::AgentConnectAt::Ringing,
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.sip(SipEvent::Progress {
        status: 183,
        media: Some(negotiated()),
    });
    assert!(h.agent_actions().contains(&AgentAction::Connect));
    h.agent(AgentEvent::Metadata {
        conversation_id: "c".into(),
        input_format: AudioFormat::Ulaw8000,
        output_format: AudioFormat::Ulaw8000,
    });
    h.agent(agent_audio(1, 400, 0x44));
    h.run_for(Duration::from_secs(2), false);
    assert!(
        audio_packets(&h, 0x44).is_empty(),
        "nothing plays before answer"
    );
    let answer = h.now;
    h.sip(SipEvent::Answered { media: None });
    h.run_for(Duration::from_millis(100), true);
    let first = audio_packets(&h, 0x44)[0];
    assert!(
        first - answer <= Duration::from_millis(20),
        "{:?}",
        first - answer
    );
}

#[test]
fn tools_send_dtmf_and_refuse_unknown_or_disabled_ones() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.take_actions();
    let call = |name: &str, id: &str, params: serde_json::Value| AgentEvent::ToolCall {
        call: Box::new(ClientToolCall {
            tool_name: name.into(),
            tool_call_id: id.into(),
            parameters: params,
            event_id: Some(2),
        }),
        handled: false,
    };
    h.agent(call(
        "send_dtmf",
        "d1",
        serde_json::json!({"digits": "12#"}),
    ));
    h.agent(call("fly_to_moon", "u1", serde_json::json!({})));
    h.agent(call(
        "transfer_call",
        "x1",
        serde_json::json!({"destination": "+33123456789"}),
    ));
    h.agent(call(
        "send_dtmf",
        "d2",
        serde_json::json!({"digits": "1;DROP"}),
    ));
    let results: Vec<(String, bool)> = h
        .agent_actions()
        .into_iter()
        .filter_map(|a| match a {
            AgentAction::ToolResult {
                tool_call_id,
                is_error,
                ..
            } => Some((tool_call_id, is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        vec![
            ("d1".to_string(), false),
            ("u1".to_string(), true),
            ("x1".to_string(), true),
            ("d2".to_string(), true)
        ]
    );
    assert!(
        !h.sip_actions()
            .iter()
            .any(|a| matches!(a, SipAction::Refer { .. }))
    );
    h.run_for(Duration::from_secs(2), true);
    // RFC 4733 packets on PT 101: three distinct events, each ending with three end packets.
    let events: Vec<&Vec<u8>> = h
        .rtp_out
        .iter()
        .filter(|(_, pt, ..)| *pt == 101)
        .map(|(.., p)| p)
        .collect();
    let mut digits = Vec::new();
    for p in &events {
        if p[1] & 0x80 != 0 && digits.last() != Some(&p[0]) {
            digits.push(p[0]);
        }
    }
    assert_eq!(digits, vec![1, 2, 11], "events 1, 2, # sent");
}

#[test]
fn transfer_sends_refer_when_enabled_and_ends_after_success() {
    let cfg = CallConfig {
        transfer_enabled: true,
        transfer_allow_prefixes: vec!["+33".into()],
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.connect(AudioFormat::Ulaw8000);
    let tool = |dest: &str, id: &str| AgentEvent::ToolCall {
        call: Box::new(ClientToolCall {
            tool_name: "transfer_call".into(),
            tool_call_id: id.into(),
            parameters: serde_json::json!({ "destination": dest }),
            event_id: None,
        }),
        handled: false,
    };
    h.agent(tool("+1 900 555 0100", "bad"));
    assert!(
        !h.sip_actions()
            .iter()
            .any(|a| matches!(a, SipAction::Refer { .. }))
    );
    h.agent(tool("+33 1 23 45 67 89", "good"));
    assert_eq!(
        h.sip_actions().last(),
        Some(&SipAction::Refer {
            target: "tel:+33123456789".into(),
            tool_call_id: "good".into()
        })
    );
    h.sip(SipEvent::TransferResult {
        tool_call_id: "good".into(),
        ok: true,
        detail: "SIP/2.0 200 OK".into(),
    });
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Bye));
    assert_eq!(h.call.record().end_cause, Some(EndCause::Transferred));
}

/// The bypasses of issue 17 item 11, each refused: no REFER leaves, the agent gets an error.
#[test]
fn transfer_targets_pass_the_destination_policy() {
    use trunkline_call::TransferCheck;
    let tool = |dest: &str, id: &str| AgentEvent::ToolCall {
        call: Box::new(ClientToolCall {
            tool_name: "transfer_call".into(),
            tool_call_id: id.into(),
            parameters: serde_json::json!({ "destination": dest }),
            event_id: None,
        }),
        handled: false,
    };
    // What each destination gives: the REFER target, or None when refused (with an error result).
    let outcome = |cfg: CallConfig, dest: &str| -> Option<String> {
        let mut h = Harness::outbound(cfg);
        h.connect(AudioFormat::Ulaw8000);
        h.take_actions();
        h.agent(tool(dest, "t"));
        let refer = h.sip_actions().into_iter().find_map(|a| match a {
            SipAction::Refer { target, .. } => Some(target),
            _ => None,
        });
        let errored = h
            .agent_actions()
            .into_iter()
            .any(|a| matches!(a, AgentAction::ToolResult { is_error: true, .. }));
        assert_eq!(refer.is_none(), errored, "{dest}: refused ⇔ error result");
        refer
    };
    let base = CallConfig {
        transfer_enabled: true,
        transfer_allow_prefixes: vec!["+3361".into()],
        // The gateway's policy: here, +33 89… is premium rate.
        transfer_check: TransferCheck::new(|n| {
            if n.starts_with("+3389") {
                Err("destination not allowed (premium_rate)".into())
            } else {
                Ok(())
            }
        }),
        ..CallConfig::default()
    };
    // A sip: URI never passes a number prefix, whatever its host.
    assert_eq!(outcome(base.clone(), "sip:+33612345678@evil.example"), None);
    assert_eq!(outcome(base.clone(), "SIP:+33612345678@evil.example"), None);
    assert_eq!(
        outcome(base.clone(), "sips:+33612345678@evil.example"),
        None
    );
    // An empty allowlist means no number, not any number.
    let open = CallConfig {
        transfer_allow_prefixes: Vec::new(),
        ..base.clone()
    };
    assert_eq!(outcome(open, "+33612345678"), None);
    // The destination policy applies after the allowlist.
    let wide = CallConfig {
        transfer_allow_prefixes: vec!["+33".into()],
        ..base.clone()
    };
    assert_eq!(outcome(wide.clone(), "+33 8 91 23 45 67"), None);
    assert_eq!(outcome(wide, "tel:+33891234567"), None);
    // Allowed: a number under the prefix; a SIP URI on an allowed host, whose +number user part
    // must pass the number rules too; nothing that smuggles headers or parameters.
    assert_eq!(
        outcome(base.clone(), "+33 6 12 34 56 78").as_deref(),
        Some("tel:+33612345678")
    );
    let pbx = CallConfig {
        transfer_allow_sip_hosts: vec!["pbx.example".into()],
        ..base.clone()
    };
    assert_eq!(
        outcome(pbx.clone(), "sip:+33612345678@PBX.example:5060").as_deref(),
        Some("sip:+33612345678@PBX.example:5060")
    );
    assert_eq!(
        outcome(pbx.clone(), "sip:1001@pbx.example;transport=tcp").as_deref(),
        Some("sip:1001@pbx.example;transport=tcp")
    );
    assert_eq!(outcome(pbx.clone(), "sip:+14155550123@pbx.example"), None);
    assert_eq!(outcome(pbx.clone(), "sip:+33612345678@evil.example"), None);
    assert_eq!(
        outcome(pbx.clone(), "sip:1001@pbx.example.evil.example"),
        None
    );
    assert_eq!(
        outcome(pbx.clone(), "sip:1001@pbx.example?Replaces=x"),
        None
    );
    assert_eq!(outcome(pbx.clone(), "sip:a@evil.example@pbx.example"), None);
    assert_eq!(outcome(pbx, "<sip:1001@pbx.example>"), None);
}

#[test]
fn dtmf_from_the_phone_reaches_the_agent() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_millis(100), true);
    // Digit 7: start (marker), updates, three end packets.
    let mut buf = [0u8; 64];
    let ts = 50_000;
    for (i, (end, dur)) in [
        (false, 160u16),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ]
    .into_iter()
    .enumerate()
    {
        let payload = [
            7u8,
            if end { 0x80 | 10 } else { 10 },
            (dur >> 8) as u8,
            dur as u8,
        ];
        let hdr = RtpHeader {
            marker: i == 0,
            payload_type: 101,
            sequence: 60_000 + i as u16,
            timestamp: ts,
            ssrc: 0xCAFE,
        };
        let n = write_rtp(&hdr, &payload, &mut buf).expect("rtp");
        h.call.handle_rtp(&buf[..n], phone(), h.now);
        h.now += Duration::from_millis(20);
        h.call.handle_timeout(h.now);
        h.drain();
    }
    h.run_for(Duration::from_millis(200), false);
    let msgs: Vec<_> = h
        .agent_actions()
        .into_iter()
        .filter(|a| matches!(a, AgentAction::UserMessage(_)))
        .collect();
    assert_eq!(msgs, vec![AgentAction::UserMessage("7".into())]);
    assert_eq!(h.call.record().dtmf.len(), 1);
}

#[test]
fn inbound_call_is_answered_once_the_agent_is_there() {
    let mut h = Harness::inbound(CallConfig::default());
    assert_eq!(h.sip_actions(), vec![SipAction::Ringing]);
    assert!(h.agent_actions().contains(&AgentAction::Connect));
    h.agent(AgentEvent::Metadata {
        conversation_id: "c".into(),
        input_format: AudioFormat::Ulaw8000,
        output_format: AudioFormat::Ulaw8000,
    });
    assert_eq!(h.sip_actions(), vec![SipAction::Ringing, SipAction::Accept]);
    assert_eq!(h.call.state(), CallState::Answered);
}

#[test]
fn inbound_200_never_acked_ends_as_no_ack_and_closes_the_agent() {
    let mut h = Harness::inbound(CallConfig::default());
    h.agent(AgentEvent::Metadata {
        conversation_id: "c".into(),
        input_format: AudioFormat::Ulaw8000,
        output_format: AudioFormat::Ulaw8000,
    });
    assert_eq!(h.sip_actions(), vec![SipAction::Ringing, SipAction::Accept]);
    h.run_for(Duration::from_secs(2), true);
    h.take_actions();
    // Timer H-like: the UA gave up on the ACK and already sent BYE.
    h.sip(SipEvent::NoAck);
    let actions = h.take_actions();
    assert!(
        actions.contains(&CallAction::Agent(AgentAction::Close)),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, CallAction::Sip(_))),
        "no second BYE: {actions:?}"
    );
    let rec = h.call.record();
    assert_eq!(rec.end_cause, Some(EndCause::NoAck));
    assert_eq!(rec.status, "failed");
    assert!(h.call.is_done());
}

#[test]
fn inbound_call_is_refused_when_the_agent_cannot_be_reached() {
    let mut h = Harness::inbound(CallConfig::default());
    h.run_for(Duration::from_secs(11), false);
    assert_eq!(
        h.sip_actions(),
        vec![SipAction::Ringing, SipAction::Reject { status: 503 }]
    );
    assert!(matches!(
        h.call.record().end_cause,
        Some(EndCause::AgentConnectFailed { .. })
    ));
}

#[test]
fn silence_from_the_phone_times_out_and_max_duration_hangs_up() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_secs(1), true);
    h.run_for(Duration::from_secs(31), false);
    assert_eq!(h.call.record().end_cause, Some(EndCause::RtpTimeout));
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Bye));

    let cfg = CallConfig {
        max_duration: Duration::from_secs(5),
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.connect(AudioFormat::Ulaw8000);
    h.run_for(Duration::from_secs(6), true);
    assert_eq!(h.call.record().end_cause, Some(EndCause::MaxDuration));
}

#[test]
fn pcm16k_agent_gets_twice_the_samples_and_its_audio_is_paced_as_ulaw() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Pcm { sample_rate: 16000 });
    h.run_for(Duration::from_secs(1), true);
    let up = h.uplink_bytes();
    // ~1 s at 16 kHz × 2 bytes minus start-up, in 40 ms chunks of 1280 bytes.
    assert!(up.len() >= 28_000, "{}", up.len());
    let tone: Vec<u8> = (0..16000)
        .flat_map(|i| {
            let s =
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16000.0).sin()) as i16;
            s.to_le_bytes()
        })
        .collect();
    h.agent(AgentEvent::Audio {
        event_id: 1,
        audio: Bytes::from(tone),
    });
    let before = h.rtp_out.len();
    h.run_for(Duration::from_millis(1200), true);
    let loud = h.rtp_out[before..]
        .iter()
        .filter(|(_, pt, _, p)| *pt == 0 && p.iter().any(|&c| G711::Ulaw.decode(c).abs() > 4000))
        .count();
    assert!(
        (48..=51).contains(&loud),
        "1 s of tone ≈ 50 frames, got {loud}"
    );
}

#[test]
fn odd_sized_agent_chunks_still_drain_completely_before_bye() {
    let mut h = Harness::outbound(CallConfig::default());
    h.connect(AudioFormat::Ulaw8000);
    for (i, n) in [1234usize, 777, 3001, 5, 999].into_iter().enumerate() {
        h.agent(AgentEvent::Audio {
            event_id: 1 + (i as i64 / 3),
            audio: Bytes::from(vec![0x55; n]),
        });
        h.run_for(Duration::from_millis(30), false);
    }
    h.agent(closed(CloseReason::AgentEnded, Some(1000)));
    h.run_for(Duration::from_secs(3), false);
    assert_eq!(h.sip_actions().last(), Some(&SipAction::Bye));
    let sent: usize = h
        .rtp_out
        .iter()
        .filter(|(_, pt, ..)| *pt == 0)
        .map(|(.., p)| p.iter().filter(|&&b| b == 0x55).count())
        .sum();
    assert_eq!(sent, 1234 + 777 + 3001 + 5 + 999, "every byte played");
}

#[test]
fn connect_at_trigger_starts_the_agent_first_and_invites_once_it_is_up() {
    let cfg = CallConfig {
        agent_connect: trunkline_call::AgentConnectAt::Trigger,
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    assert_eq!(h.agent_actions(), vec![AgentAction::Connect]);
    assert!(
        h.sip_actions().is_empty(),
        "no INVITE before the agent is up"
    );
    assert_eq!(h.call.state(), CallState::Initiated);
    h.agent(AgentEvent::Metadata {
        conversation_id: "conv_trigger".into(),
        input_format: AudioFormat::Ulaw8000,
        output_format: AudioFormat::Ulaw8000,
    });
    assert_eq!(h.sip_actions(), vec![SipAction::Invite]);
    assert_eq!(
        h.call.record().conversation_id.as_deref(),
        Some("conv_trigger")
    );
    assert!(h.call.record().timestamps.invite_ms.is_some());
    // The greeting arrives while it rings (early media too): nothing is played before answer.
    h.sip(SipEvent::Progress {
        status: 183,
        media: Some(negotiated()),
    });
    h.agent(agent_audio(1, 400, 0x44));
    h.run_for(Duration::from_secs(3), false);
    assert!(audio_packets(&h, 0x44).is_empty(), "held until answer");
    let answer = h.now;
    h.sip(SipEvent::Answered { media: None });
    h.run_for(Duration::from_millis(100), true);
    let first = audio_packets(&h, 0x44)[0];
    assert!(first - answer <= Duration::from_millis(20));
}

#[test]
fn connect_at_trigger_without_an_agent_places_no_call() {
    let cfg = CallConfig {
        agent_connect: trunkline_call::AgentConnectAt::Trigger,
        agent_connect_timeout: Duration::from_secs(10),
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.run_for(Duration::from_millis(9_990), false);
    assert!(h.sip_actions().is_empty());
    h.run_for(Duration::from_millis(20), false);
    // The leg is withdrawn (no INVITE ever left), the connection attempt closed.
    assert_eq!(h.sip_actions(), vec![SipAction::Cancel]);
    assert!(h.agent_actions().contains(&AgentAction::Close));
    assert!(matches!(
        h.call.record().end_cause,
        Some(EndCause::AgentConnectFailed { .. })
    ));
    assert_eq!(h.call.record().status, "failed");
    assert!(h.call.record().timestamps.invite_ms.is_none());
}

#[test]
fn connect_at_trigger_busy_closes_the_agent() {
    let cfg = CallConfig {
        agent_connect: trunkline_call::AgentConnectAt::Trigger,
        ..CallConfig::default()
    };
    let mut h = Harness::outbound(cfg);
    h.agent(AgentEvent::Metadata {
        conversation_id: "c".into(),
        input_format: AudioFormat::Ulaw8000,
        output_format: AudioFormat::Ulaw8000,
    });
    h.sip(SipEvent::Failed {
        status: 486,
        reason: "Busy Here".into(),
        after_auth: false,
    });
    assert_eq!(h.agent_actions().last(), Some(&AgentAction::Close));
    assert_eq!(h.call.record().status, "busy");
    assert_eq!(h.call.record().conversation_id.as_deref(), Some("c"));
}

// ---- SRTP ---------------------------------------------------------------------------------------

mod srtp {
    use super::*;
    use trunkline_media::srtp::{SdesKey, SrtpSession, SrtpSuite};

    fn key(fill: u8) -> SdesKey {
        SdesKey {
            tag: 1,
            suite: SrtpSuite::AesCm128HmacSha1_80,
            material: [fill; 30],
        }
    }

    fn keyed(ours: u8, theirs: u8) -> NegotiatedMedia {
        NegotiatedMedia {
            srtp: Some((key(ours), key(theirs))),
            ..negotiated()
        }
    }

    /// The phone sends one SRTP packet (protected with `phone`) carrying `fill` bytes.
    fn phone_srtp(h: &mut Harness, phone_ctx: &mut SrtpSession, seq: u16, fill: u8) {
        let hd = RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: u32::from(seq) * 160,
            ssrc: 0xBEEF,
        };
        let mut buf = [0u8; 200];
        let n = write_rtp(&hd, &[fill; 160], &mut buf).expect("rtp");
        let p = phone_ctx.protect_rtp(&buf[..n]).expect("protect");
        h.call.handle_rtp(&p, phone(), h.now);
        h.drain();
    }

    #[test]
    fn srtp_keys_reach_the_media_and_a_rekey_switches_contexts_and_is_recorded() {
        let mut h = Harness::outbound(CallConfig::default());
        h.sip(SipEvent::Answered {
            media: Some(keyed(1, 2)),
        });
        h.agent(AgentEvent::Metadata {
            conversation_id: "c".into(),
            input_format: AudioFormat::Ulaw8000,
            output_format: AudioFormat::Ulaw8000,
        });
        let sec = &h.call.record().media_security;
        assert!(sec.encrypted);
        assert_eq!(sec.suite.as_deref(), Some("AES_CM_128_HMAC_SHA1_80"));

        // Uplink: the phone's SRTP (its key 2) is decrypted.
        let mut phone_ctx = SrtpSession::new(&key(2), &key(1)).expect("ctx");
        for seq in 0..30 {
            phone_srtp(&mut h, &mut phone_ctx, seq, 0x55);
            h.run_for(Duration::from_millis(20), false);
        }
        assert!(
            h.uplink_bytes()
                .windows(160)
                .any(|w| w.iter().all(|&b| b == 0x55)),
            "SRTP from the phone reached the agent in clear"
        );
        // (Downlink SRTP is decrypted by its receiver in the e2e tests: e2e_secure, e2e_baresip.)

        // A re-INVITE rekeys (3, 4): packets under the old key fail authentication and are
        // counted; packets under the new one pass.
        h.sip(SipEvent::MediaChanged(keyed(3, 4)));
        assert_eq!(h.call.record().media_security.rekeys, 1);
        for seq in 30..40 {
            phone_srtp(&mut h, &mut phone_ctx, seq, 0x66);
        }
        h.call.refresh_stats();
        assert_eq!(h.call.record().media_security.auth_failures, 10);
        let mut new_ctx = SrtpSession::new(&key(4), &key(3)).expect("ctx");
        for seq in 40..70 {
            phone_srtp(&mut h, &mut new_ctx, seq, 0x77);
            h.run_for(Duration::from_millis(20), false);
        }
        h.call.refresh_stats();
        assert_eq!(h.call.record().media_security.auth_failures, 10);
        assert!(
            h.uplink_bytes()
                .windows(160)
                .any(|w| w.iter().all(|&b| b == 0x77)),
            "SRTP under the new key reached the agent"
        );
        // The same keys again (a session refresh): no rekey.
        h.sip(SipEvent::MediaChanged(keyed(3, 4)));
        assert_eq!(h.call.record().media_security.rekeys, 1);
    }
}

#[test]
fn late_agent_audio_replaces_the_queued_silence_and_the_recording_follows() {
    let mut h = Harness::outbound(CallConfig {
        record_audio: true,
        ..CallConfig::default()
    });
    h.connect(AudioFormat::Ulaw8000);
    // Ticks at +0, +20, … +100 ms: the last one just built a silence packet.
    h.run_for(Duration::from_millis(100), true);
    while h.call.poll_recording().is_some() {}
    let (tick, _, marker, payload) = h.rtp_out.last().cloned().expect("rtp");
    assert!(tick == h.now && !marker && payload == [0xFF; 160]);
    let before = h.rtp_out.len();
    // The runner sends it 5 ms after the tick: it may be replaced until +4 ms.
    h.call
        .allow_late_audio_until(h.now + Duration::from_millis(4));
    h.now += Duration::from_millis(2);
    h.agent(agent_audio(1, 100, 0x33));
    // The replacement for that tick: the agent's first frame, with the marker.
    assert_eq!(h.rtp_out.len(), before + 1);
    let (_, pt, marker, payload) = h.rtp_out.last().cloned().expect("rtp");
    assert!(pt == 0 && marker && payload == [0x33; 160]);
    // The recording hears what the phone hears: the next stereo frame's agent side is that
    // audio, not the silence it replaced, and no frame is added.
    h.run_for(Duration::from_millis(18), true);
    let rec: Vec<_> = std::iter::from_fn(|| h.call.poll_recording()).collect();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].agent, [0x33; 160]);
    h.run_for(Duration::from_millis(100), true);
    let rec: Vec<_> = std::iter::from_fn(|| h.call.poll_recording()).collect();
    assert_eq!(rec.len(), 5);
    let agent_frames = rec.iter().filter(|f| f.agent == [0x33; 160]).count();
    assert_eq!(agent_frames, 4, "100 ms of agent audio: 5 frames in all");
    assert_eq!(audio_packets(&h, 0x33).len(), 5);
}

/// The transcript lines the call handed out, in order.
fn transcript_lines(actions: &[CallAction]) -> Vec<TranscriptLine> {
    actions
        .iter()
        .filter_map(|a| match a {
            CallAction::Transcript(l) => Some((**l).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_spilled_transcript_is_handed_out_line_by_line_and_corrections_replace_their_line() {
    let agent_says = |text: &str, id: i64| AgentEvent::AgentResponse {
        text: text.into(),
        event_id: Some(id),
    };
    let user_says = |text: &str, id: i64| AgentEvent::UserTranscript {
        text: text.into(),
        event_id: Some(id),
    };
    let correction = |text: &str, id: i64| {
        AgentEvent::AgentResponseCorrection(Box::new(ResponseCorrection {
            original: String::new(),
            corrected: text.into(),
            event_id: Some(id),
        }))
    };

    // Kept (the default): the record holds the conversation, nothing is handed out.
    let mut kept = Harness::outbound(CallConfig::default());
    kept.connect(AudioFormat::Ulaw8000);
    kept.take_actions();
    kept.agent(agent_says("Hello, how can I help?", 1));
    kept.agent(correction("Hello, how", 1));
    assert!(transcript_lines(&kept.take_actions()).is_empty());
    let texts: Vec<&str> = kept
        .call
        .record()
        .transcript
        .iter()
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(texts, ["Hello, how"]);

    let mut h = Harness::outbound(CallConfig::default());
    h.call.spill_transcript();
    h.connect(AudioFormat::Ulaw8000);
    h.take_actions();
    h.agent(agent_says("Hello, how can I help?", 1));
    h.run_for(Duration::from_millis(100), true);
    h.agent(user_says("I would like to book a table", 2));
    h.agent(agent_says("For how many people?", 3));
    for id in 4..7 {
        h.agent(agent_says("Anything else?", id));
    }
    // The turn-3 response is four agent lines back: still remembered.
    h.agent(correction("Anything", 6));
    h.agent(correction("For how", 3));
    // Turn 1 is five agent lines back, forgotten: its correction is a line of its own.
    h.agent(correction("Hello", 1));
    let lines = transcript_lines(&h.take_actions());
    let seqs: Vec<u32> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5, 5, 2, 6]);
    assert_eq!(lines[0].entry.role, "agent");
    assert_eq!(lines[0].entry.text, "Hello, how can I help?");
    assert_eq!(lines[1].entry.role, "user");
    assert_eq!(lines[1].entry.event_id, Some(2));
    assert!(
        lines[1].entry.at_ms > lines[0].entry.at_ms,
        "each line carries the time it arrived"
    );
    // A correction is its line again: same place, same time, the text heard.
    assert_eq!(lines[6].entry.text, "Anything");
    assert_eq!(lines[6].entry.event_id, Some(6));
    assert_eq!(lines[7].entry.text, "For how");
    assert_eq!(lines[7].entry.event_id, Some(3));
    assert_eq!(lines[7].entry.at_ms, lines[2].entry.at_ms);
    assert_eq!(lines[8].entry.text, "Hello");
    assert_eq!(lines[8].entry.role, "agent");
    assert_eq!(lines[8].entry.event_id, Some(1));
    // The call keeps none of it.
    assert!(h.call.record().transcript.is_empty());
    h.sip(SipEvent::RemoteBye);
    assert!(h.call.record().is_final());
    assert!(h.call.record().transcript.is_empty());
}
