//! Answering-machine detection end to end: the gateway calls 40 numbers through the trunk
//! emulator, which answers each one by playing one file of the labelled set `tests/data/amd/`
//! as the callee (real SIP, RTP, jitter buffer, agent WebSocket on loopback). With
//! `amd.mode = "hold"` and `on_machine = "hangup"` the test checks every record's verdict against
//! the label (≥ 90 % right; the detector's own bound, 95 %, is in `amd_set`), that machines are hung up with cause `machine` and never reach an
//! agent, that persons get the agent with `answered_by`, and that the phone heard nothing from the
//! agent before the verdict. A second test leaves a voicemail message after the beep.

mod common;

use std::time::Duration;

use common::{Deployment, deploy};
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::{PlaySource, TrunkConfig};
use trunkline_gateway::config::{AmdModeName, OnMachineName};
use trunkline_media::capture::wav_ulaw_data;

const SET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/amd");

struct Label {
    file: String,
    human: bool,
}

fn labels() -> Vec<Label> {
    let text = std::fs::read_to_string(format!("{SET}/labels.csv")).expect("labels");
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, ',').collect();
            Label {
                file: f[0].to_string(),
                human: f[1] == "human",
            }
        })
        .collect()
}

fn source(file: &str) -> PlaySource {
    let bytes = std::fs::read(format!("{SET}/{file}")).expect("file");
    PlaySource::from_ulaw(wav_ulaw_data(&bytes).expect("µ-law wav"))
}

fn number(i: usize) -> String {
    format!("+3361200{i:04}")
}

async fn deployment(files: &[&Label], on_machine: OnMachineName, message: &str) -> Deployment {
    let trunk = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play_by_number: files
            .iter()
            .enumerate()
            .map(|(i, l)| (number(i), source(&l.file)))
            .collect(),
        hangup_after: Some(Duration::from_secs(14)),
        ..TrunkConfig::default()
    };
    let message = message.to_owned();
    deploy(trunk, AgentEmulatorConfig::default(), move |cfg| {
        cfg.amd.mode = AmdModeName::Hold;
        cfg.amd.on_machine = on_machine;
        cfg.amd.message = message;
        cfg.policy.max_concurrent_calls = 100;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_file_through_the_gateway_in_hold_mode() {
    let labels = labels();
    let all: Vec<&Label> = labels.iter().collect();
    let d = deployment(&all, OnMachineName::Hangup, "").await;
    let mut sids = Vec::new();
    for i in 0..all.len() {
        sids.push(d.call(&number(i)).await);
    }
    let mut right = 0;
    let mut agents_expected = 0;
    for (i, (l, sid)) in all.iter().zip(&sids).enumerate() {
        let r = d.finished(sid, 40).await;
        let amd = r
            .amd
            .clone()
            .unwrap_or_else(|| panic!("{}: no amd in {r:?}", l.file));
        let trunk_call = d
            .trunk
            .calls()
            .into_iter()
            .find(|c| c.request_uri.contains(&number(i)))
            .expect("trunk saw the call");
        let answered = trunk_call.answered_at.expect("answered");
        let loud = trunk_call.loud_packets(200);
        println!(
            "{:<24} {:>7} -> {:<8} {:<22} {:>5} ms  beep {:?}  end {:?}  agent audio {} pkts",
            l.file,
            if l.human { "human" } else { "machine" },
            amd.answered_by,
            amd.reason,
            amd.decision_after_answer_ms,
            amd.beep_after_answer_ms,
            r.end_cause.as_ref().map(|c| c.label()),
            loud.len()
        );
        let machine = amd.answered_by == "machine";
        if machine != l.human {
            right += 1;
        }
        if machine {
            assert_eq!(r.end_cause, Some(EndCause::Machine), "{}", l.file);
            if amd.decision_after_answer_ms < 3000 {
                // Decided within the hold: the agent was never connected. (Later, the agent
                // had been connected as `unknown` at `max_hold_ms` and the call is hung up now.)
                assert!(
                    r.conversation_id.is_none(),
                    "{}: no agent for a machine",
                    l.file
                );
                assert!(loud.is_empty(), "{}: the machine heard the agent", l.file);
            } else {
                agents_expected += 1;
            }
        } else {
            agents_expected += 1;
            assert!(
                r.conversation_id.is_some(),
                "{}: the person got the agent",
                l.file
            );
            // Hold: nothing from the agent reached the phone before the verdict (or the end of
            // the hold, `max_hold_ms` = 3000, when the verdict came later: then as `unknown`).
            let first = *loud
                .first()
                .unwrap_or_else(|| panic!("{}: agent heard", l.file));
            let release_ms = amd.decision_after_answer_ms.min(3000);
            let verdict_at = answered + Duration::from_millis(release_ms);
            assert!(
                first >= verdict_at,
                "{}: agent audio {:?} after answer, verdict at {} ms",
                l.file,
                first - answered,
                amd.decision_after_answer_ms
            );
        }
    }
    let accuracy = f64::from(right) / all.len() as f64;
    println!(
        "end to end: {right}/{} right ({:.1} %)",
        all.len(),
        accuracy * 100.0
    );
    // The set test (`trunkline-media`, `amd_set`) holds the detector to ≥ 95 % in virtual time;
    // here real RTP timing on a busy machine shifts borderline files (h11, a 1.4 s phrase on a
    // rumbling line, was once judged a machine): a looser bound keeps this test about the wiring.
    assert!(accuracy >= 0.9, "accuracy {accuracy}");
    let recs = d
        .agent_finished(agents_expected, Duration::from_secs(30))
        .await;
    assert_eq!(
        recs.len(),
        agents_expected,
        "one agent conversation per person"
    );
    for rec in &recs {
        let by = rec.dynamic_variables.get("answered_by").map(String::as_str);
        assert!(matches!(by, Some("human" | "unknown")), "{by:?}");
        assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_gets_the_message_after_the_beep_then_the_call_ends() {
    let labels = labels();
    let file: Vec<&Label> = labels
        .iter()
        .filter(|l| l.file == "m03_carrier_us.wav")
        .collect();
    let d = deployment(
        &file,
        OnMachineName::LeaveMessage,
        "Hello, this is Acme. Please call us back.",
    )
    .await;
    let sid = d.call(&number(0)).await;
    let r = d.finished(&sid, 40).await;
    let amd = r.amd.clone().expect("amd");
    println!("{amd:?} end {:?}", r.end_cause);
    assert_eq!(amd.answered_by, "machine");
    let beep = amd.beep_after_answer_ms.expect("beep heard");
    // The beep starts 4.89 s into the file.
    assert!((4800..=5400).contains(&beep), "beep at {beep} ms");
    assert_eq!(
        r.end_cause,
        Some(EndCause::AgentEnded),
        "ended after the message"
    );
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(5), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    let trunk_call = calls.into_iter().next().expect("call");
    assert_eq!(
        trunk_call.ended_by.as_deref(),
        Some("remote_bye"),
        "the gateway hung up"
    );
    let answered = trunk_call.answered_at.expect("answered");
    let loud = trunk_call.loud_packets(200);
    let first = *loud.first().expect("the message reached the voicemail");
    assert!(
        first >= answered + Duration::from_millis(beep + 300),
        "message at {:?}, beep at {beep} ms",
        first - answered
    );
    let recs = d.agent_finished(1, Duration::from_secs(10)).await;
    assert_eq!(
        recs[0]
            .dynamic_variables
            .get("answered_by")
            .map(String::as_str),
        Some("machine")
    );
}
