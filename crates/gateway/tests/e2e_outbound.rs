//! Outbound calls end to end over real loopback sockets: HTTP trigger → SIP INVITE through a
//! 407 digest challenge → answer → agent WebSocket → audio both ways → hang-up. Each test asserts
//! what was heard on each side, not only that nothing crashed.

mod common;

use std::time::Duration;

use common::{deploy, speech};
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::{Outcome, TrunkConfig};
use trunkline_media::g711::G711;

fn trunk(f: impl FnOnce(&mut TrunkConfig)) -> TrunkConfig {
    let mut t = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        hangup_after: Some(Duration::from_secs(6)),
        ..TrunkConfig::default()
    };
    f(&mut t);
    t
}

/// Index of `needle` (decoded µ-law) in `hay`.
fn find(hay: &[i16], needle: &[i16]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_greets_the_phone_and_relays_its_speech_exactly() {
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), |_| {}).await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;

    // SIP: challenged once, authenticated, R-URI on the termination domain, E.164 user.
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    assert_eq!(calls.len(), 1);
    let t = &calls[0];
    assert_eq!(t.invites, 2, "INVITE, 407, INVITE with credentials");
    assert_eq!(t.auth_ok, Some(true));
    assert!(
        t.request_uri
            .starts_with("sip:+33612345678@trunkline-test.pstn.twilio.com"),
        "{}",
        t.request_uri
    );
    assert_eq!(
        t.ended_by.as_deref(),
        Some("local_bye"),
        "the phone hung up: {rec:?}"
    );

    // Downlink: the agent's greeting reached the phone, paced.
    let loud = t.loud_packets(2000);
    assert!(
        loud.len() >= 25,
        "greeting heard: {} loud packets",
        loud.len()
    );

    // Uplink: the phone's words reached the agent unchanged (µ-law passthrough).
    let agent = d.agent.wait_finished(1, Duration::from_secs(5)).await;
    assert_eq!(agent.len(), 1);
    let heard = &agent[0].caller_audio;
    let played: Vec<i16> = common::speech()
        .packets
        .iter()
        .filter(|p| p.law.is_some())
        .flat_map(|p| {
            p.payload
                .iter()
                .map(|&c| G711::Ulaw.decode(c))
                .collect::<Vec<_>>()
        })
        .collect();
    let first_loud = played
        .chunks(160)
        .position(|c| c.iter().any(|s| s.abs() > 1000))
        .expect("speech in capture");
    let probe = &played[first_loud * 160..first_loud * 160 + 160];
    let at = find(heard, probe).expect("the phone's speech reached the agent");
    let n = (heard.len() - at)
        .min(played.len() - first_loud * 160)
        .min(8000 * 4);
    assert!(n >= 8000 * 3, "at least 3 s relayed, got {n} samples");
    assert_eq!(
        &heard[at..at + n],
        &played[first_loud * 160..first_loud * 160 + n],
        "µ-law passthrough is sample-exact"
    );

    // The record.
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    assert_eq!(rec.status, "completed");
    assert!(rec.conversation_id.is_some());
    assert_eq!(rec.conversation_id, agent[0].conversation_id);
    assert_eq!(rec.sip_call_id.as_deref(), Some(t.call_id.as_str()));
    let ts = &rec.timestamps;
    assert!(
        ts.invite_ms <= ts.answered_ms && ts.answered_ms <= ts.first_agent_audio_ms,
        "{ts:?}"
    );
    assert!(
        rec.uplink.packets > 200 && rec.downlink.packets > 200,
        "{rec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_no_answer_rejection_and_wrong_password_end_with_their_cause() {
    for (outcome, expect) in [
        (Outcome::Busy, EndCause::Busy { status: 486 }),
        (
            Outcome::Reject(503),
            EndCause::Rejected {
                status: 503,
                reason: "Service Unavailable".into(),
            },
        ),
        (Outcome::NoAnswer, EndCause::NoAnswer { status: None }),
    ] {
        let d = deploy(
            trunk(|t| t.outcome = outcome),
            AgentEmulatorConfig::default(),
            |c| c.trunk.ring_timeout_secs = 2,
        )
        .await;
        let sid = d.call("+33612345678").await;
        let rec = d.finished(&sid, 10).await;
        assert_eq!(rec.end_cause.as_ref(), Some(&expect), "{outcome:?}");
        if outcome == Outcome::NoAnswer {
            let t = d
                .trunk
                .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
                .await;
            assert_eq!(t[0].ended_by.as_deref(), Some("cancelled"), "CANCEL sent");
        }
        assert!(
            d.agent.records().is_empty(),
            "no agent session without answer"
        );
    }

    let d = deploy(
        trunk(|t| t.credentials = Some(("trunkline".into(), "other".into()))),
        AgentEmulatorConfig::default(),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 10).await;
    assert_eq!(rec.end_cause, Some(EndCause::AuthFailed { status: 403 }));
    assert_eq!(rec.status, "failed");
}

/// The trunk emulator's hang-up time can be changed for the calls answered next (the load
/// tester's short warm-up call), and set back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phones_hangup_time_can_be_overridden_for_later_calls() {
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), |_| {}).await;
    let held = |rec: &trunkline_call::CallRecord| {
        let ts = &rec.timestamps;
        ts.ended_ms
            .unwrap_or(0)
            .saturating_sub(ts.answered_ms.unwrap_or(u64::MAX))
    };
    d.trunk.set_hangup_after(Some(Duration::from_millis(800)));
    let short = d.call("+33612345678").await;
    let short = d.finished(&short, 20).await;
    assert_eq!(short.end_cause, Some(EndCause::RemoteHangup));
    assert!(
        (700..3000).contains(&held(&short)),
        "held {} ms",
        held(&short)
    );
    d.trunk.set_hangup_after(None);
    let long = d.call("+33612345679").await;
    let long = d.finished(&long, 20).await;
    assert_eq!(long.end_cause, Some(EndCause::RemoteHangup));
    assert!(
        held(&long) >= 5500,
        "configured 6 s: held {} ms",
        held(&long)
    );
}
