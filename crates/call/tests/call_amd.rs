//! Answering-machine detection in the call state machine, in virtual time: the phone plays files
//! of the labelled set `tests/data/amd/` as RTP after the answer; the tests assert what the call
//! does with the verdict in `hold` and `detect` mode and for each `on_machine` policy.

// One real `Instant` is read as the origin of virtual time; everything after is simulated.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use trunkline_agent::{AgentEvent, AudioFormat};
use trunkline_call::amd::{AgentOverrides, AmdMode, AmdSettings, OnMachine};
use trunkline_call::record::EndCause;
use trunkline_call::{
    AgentAction, Call, CallAction, CallConfig, NegotiatedMedia, SipAction, SipEvent,
};
use trunkline_media::capture::wav_ulaw_data;
use trunkline_media::g711::G711;
use trunkline_media::rtcp::WallClock;
use trunkline_media::rtp::{RtpHeader, parse_rtp, write_rtp};
use trunkline_media::session::{MediaConfig, PayloadMap};

const SET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/amd");

fn phone() -> SocketAddr {
    "127.0.0.1:40000".parse().expect("addr")
}

fn ulaw(file: &str) -> Vec<u8> {
    let bytes = std::fs::read(format!("{SET}/{file}")).expect("set file");
    wav_ulaw_data(&bytes).expect("µ-law wav").to_vec()
}

struct H {
    call: Call,
    t0: Instant,
    now: Instant,
    /// (time, actions) in order.
    actions: Vec<(Instant, CallAction)>,
    /// Time of every RTP packet with agent audio (not µ-law silence) sent to the phone.
    agent_audio_out: Vec<Instant>,
    audio: Vec<u8>,
    pos: usize,
    seq: u16,
}

impl H {
    fn new(amd: AmdSettings, file: &str) -> H {
        let now = Instant::now();
        let wallclock = WallClock {
            instant: now,
            system: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let cfg = CallConfig {
            amd: Some(amd),
            ..CallConfig::default()
        };
        let record = trunkline_call::CallRecord::new(
            "CA1".into(),
            "outbound",
            "+15550001".into(),
            "+33100".into(),
        );
        let call = Call::outbound(
            cfg,
            MediaConfig::new(G711::Ulaw, 0x1234_5678, wallclock),
            record,
            now,
        );
        let mut h = H {
            call,
            t0: now,
            now,
            actions: Vec::new(),
            agent_audio_out: Vec::new(),
            audio: ulaw(file),
            pos: 0,
            seq: 1,
        };
        h.drain();
        h.sip(SipEvent::Answered {
            media: Some(NegotiatedMedia {
                remote_rtp: Some(phone()),
                remote_rtcp: None,
                law: G711::Ulaw,
                payload_types: PayloadMap::default(),
                on_hold: false,
                srtp: None,
            }),
        });
        h
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_millis() as u64
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 1500];
        while let Some(t) = self.call.poll_transmit(self.now, &mut buf) {
            if t.destination == phone()
                && let Ok(p) = parse_rtp(&buf[..t.len])
                && p.header.payload_type == 0
                && p.payload.iter().any(|&b| b != 0xFF)
            {
                self.agent_audio_out.push(self.now);
            }
        }
        while let Some(a) = self.call.poll_action() {
            self.actions.push((self.now, a));
        }
    }

    fn sip(&mut self, ev: SipEvent) {
        self.call.handle_sip(ev, self.now);
        self.drain();
    }

    fn agent(&mut self, ev: AgentEvent) {
        self.call.handle_agent(ev, self.now);
        self.drain();
    }

    /// Run `dur` of virtual time; the phone plays its file (then µ-law silence) every 20 ms.
    fn run(&mut self, dur: Duration) {
        let until = self.now + dur;
        let mut next_phone = self.now;
        while self.now < until && !self.call.is_done() {
            let mut next = until.min(next_phone);
            if let Some(t) = self.call.poll_timeout() {
                next = next.min(t);
            }
            self.now = self.now.max(next);
            if self.now >= next_phone {
                let mut payload = [0xFFu8; 160];
                if let Some(chunk) = self.audio.get(self.pos..self.pos + 160) {
                    payload.copy_from_slice(chunk);
                }
                self.pos += 160;
                let hdr = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: self.seq,
                    timestamp: u32::from(self.seq) * 160,
                    ssrc: 0xCAFE,
                };
                self.seq = self.seq.wrapping_add(1);
                let mut buf = [0u8; 200];
                let n = write_rtp(&hdr, &payload, &mut buf).expect("rtp");
                self.call.handle_rtp(&buf[..n], phone(), self.now);
                next_phone += Duration::from_millis(20);
            }
            self.call.handle_timeout(self.now);
            self.drain();
        }
    }

    /// The first agent connect: when, and with what overrides (None: plain `Connect`).
    fn connect(&self) -> Option<(u64, Option<AgentOverrides>)> {
        self.actions.iter().find_map(|(t, a)| match a {
            CallAction::Agent(AgentAction::Connect) => Some((self.ms(*t), None)),
            CallAction::Agent(AgentAction::ConnectWith(o)) => Some((self.ms(*t), Some(o.clone()))),
            _ => None,
        })
    }

    fn sip_actions(&self) -> Vec<SipAction> {
        self.actions
            .iter()
            .filter_map(|(_, a)| match a {
                CallAction::Sip(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn connected(&mut self) {
        self.agent(AgentEvent::Metadata {
            conversation_id: "conv_1".into(),
            input_format: AudioFormat::Ulaw8000,
            output_format: AudioFormat::Ulaw8000,
        });
    }
}

fn hold(on_machine: OnMachine) -> AmdSettings {
    AmdSettings {
        mode: AmdMode::Hold,
        on_machine,
        message: "Hello {{name}}, this is Acme calling back. Goodbye.".into(),
        ..AmdSettings::default()
    }
}

fn answered_by(o: &AgentOverrides) -> Option<&str> {
    o.dynamic_variables
        .iter()
        .find(|(k, _)| k == "answered_by")
        .map(|(_, v)| v.as_str())
}

#[test]
fn hold_connects_the_agent_for_a_person_only_after_the_verdict() {
    let mut h = H::new(hold(OnMachine::Hangup), "h01_hello.wav");
    h.run(Duration::from_millis(1000));
    assert_eq!(h.connect(), None, "nothing connected before the verdict");
    h.run(Duration::from_millis(2000));
    let (at, o) = h.connect().expect("agent connected");
    let o = o.expect("with overrides");
    assert_eq!(answered_by(&o), Some("human"));
    assert_eq!(o.first_message, None);
    let amd = h.call.record().amd.clone().expect("amd in the record");
    assert_eq!(amd.answered_by, "human");
    assert_eq!(amd.reason, "after_greeting_silence");
    // "Hello?" ends 0.86 s into the file; 0.8 s of quiet; plus the jitter buffer's delay.
    assert!(
        (1600..=2200).contains(&amd.decision_after_answer_ms),
        "{amd:?}"
    );
    assert!(at >= amd.decision_after_answer_ms, "connect at {at}");
    // The agent now speaks: audio reaches the phone, none of it before the verdict.
    h.connected();
    h.agent(AgentEvent::Audio {
        event_id: 1,
        audio: Bytes::from(vec![0x55u8; 1600]),
    });
    h.run(Duration::from_millis(500));
    let first = h
        .agent_audio_out
        .first()
        .copied()
        .expect("agent audio sent");
    assert!(h.ms(first) >= amd.decision_after_answer_ms);
    assert!(h.sip_actions().iter().all(|a| *a != SipAction::Bye));
}

#[test]
fn hold_hangs_up_on_a_machine_without_ever_connecting_the_agent() {
    let mut h = H::new(hold(OnMachine::Hangup), "m03_carrier_us.wav");
    h.run(Duration::from_secs(6));
    assert_eq!(h.connect(), None);
    assert!(h.sip_actions().contains(&SipAction::Bye));
    let r = h.call.record();
    assert_eq!(r.end_cause, Some(EndCause::Machine));
    assert_eq!(r.status, "completed");
    let amd = r.amd.clone().expect("amd");
    assert_eq!(amd.answered_by, "machine");
    assert!(amd.decision_after_answer_ms <= 3000, "{amd:?}");
}

#[test]
fn leave_message_connects_after_the_beep_with_the_message_and_hangs_up_after_it() {
    let mut h = H::new(hold(OnMachine::LeaveMessage), "m01_thomas_beep.wav");
    h.run(Duration::from_secs(6));
    assert_eq!(
        h.connect(),
        None,
        "waits for the beep (7.05 s into the file)"
    );
    h.run(Duration::from_secs(3));
    let (at, o) = h.connect().expect("connected after the beep");
    let o = o.expect("overrides");
    assert_eq!(answered_by(&o), Some("machine"));
    assert_eq!(
        o.first_message.as_deref(),
        Some("Hello {{name}}, this is Acme calling back. Goodbye.")
    );
    let amd = h.call.record().amd.clone().expect("amd");
    let beep = amd.beep_after_answer_ms.expect("beep located");
    // The beep starts 7053 ms into the file (+ the jitter buffer's delay).
    assert!((7000..=7300).contains(&beep), "{amd:?}");
    assert!(
        at >= beep + 400,
        "connected at {at}, after the 500 ms beep at {beep}"
    );
    // The agent says the message (1 s), then nothing: the call ends with BYE.
    h.connected();
    h.agent(AgentEvent::Audio {
        event_id: 1,
        audio: Bytes::from(vec![0x55u8; 8000]),
    });
    h.run(Duration::from_secs(5));
    assert!(h.sip_actions().contains(&SipAction::Bye));
    let r = h.call.record();
    assert_eq!(r.end_cause, Some(EndCause::AgentEnded));
    assert_eq!(r.downlink.audio_frames, 50, "the whole message was played");
}

#[test]
fn detect_mode_connects_at_once_and_tells_the_agent_the_verdict() {
    let mut h = H::new(
        AmdSettings {
            mode: AmdMode::Detect,
            on_machine: OnMachine::Connect,
            ..AmdSettings::default()
        },
        "m10_fast_mike.wav",
    );
    assert_eq!(h.connect(), Some((0, None)), "plain connect at answer");
    h.connected();
    h.run(Duration::from_secs(4));
    let update = h.actions.iter().find_map(|(t, a)| match a {
        CallAction::Agent(AgentAction::ContextualUpdate { text, context_id })
            if context_id == "amd" =>
        {
            Some((h.ms(*t), text.clone()))
        }
        _ => None,
    });
    let (at, text) = update.expect("verdict sent to the agent");
    assert!(text.contains("voicemail"), "{text}");
    assert!(at <= 3000, "{at}");
    assert!(h.sip_actions().iter().all(|a| *a != SipAction::Bye));
}

#[test]
fn hold_connects_as_unknown_when_max_hold_runs_out() {
    // 2.2 s of silence, then "Yes?": no verdict within 1 s of hold.
    let mut h = H::new(
        AmdSettings {
            max_hold: Duration::from_millis(1000),
            ..hold(OnMachine::Hangup)
        },
        "h15_late_yes.wav",
    );
    h.run(Duration::from_secs(5));
    let (at, o) = h.connect().expect("connected");
    assert_eq!(at, 1000);
    assert_eq!(answered_by(&o.expect("overrides")), Some("unknown"));
    // The detector went on: the person is recorded, and not hung up on.
    assert_eq!(
        h.call.record().amd.as_ref().map(|a| a.answered_by.as_str()),
        Some("human")
    );
    assert!(h.sip_actions().iter().all(|a| *a != SipAction::Bye));
}
