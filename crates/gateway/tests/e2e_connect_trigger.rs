//! `agent.connect_at = "trigger"` end to end: the conversation starts when the call is placed,
//! the trigger's answer carries the agent's real `conversation_id` and the INVITE's Call-ID, the
//! agent's audio is held until the phone answers, a busy phone closes the conversation, and an
//! agent that cannot be reached means no call at all (a stable error, a record).

mod common;

use std::time::Duration;

use common::{TOKEN, deploy, post, speech};
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::{Outcome, TrunkConfig};
use trunkline_gateway::api::{AGENT_UNAVAILABLE, CallService, ListQuery};
use trunkline_gateway::config::{Config, ConnectAt};

fn trunk(f: impl FnOnce(&mut TrunkConfig)) -> TrunkConfig {
    let mut t = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        // Long enough for the whole greeting to reach the gateway while it rings.
        ring_time: Duration::from_millis(2500),
        hangup_after: Some(Duration::from_secs(4)),
        ..TrunkConfig::default()
    };
    f(&mut t);
    t
}

fn at_trigger(cfg: &mut Config) {
    cfg.agent.connect_at = ConnectAt::Trigger;
}

async fn place(d: &common::Deployment) -> (u16, serde_json::Value) {
    post(
        d.http,
        "/api/call/outbound",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        r#"{"phoneNumber": "+33612345678"}"#,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_carries_the_agents_conversation_id_and_the_invites_call_id() {
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), at_trigger).await;
    let asked = std::time::Instant::now();
    let (status, j) = place(&d).await;
    let answered_http = asked.elapsed();
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["success"], true);
    let conv = j["conversation_id"]
        .as_str()
        .expect("conversation_id known");
    let sip_call_id = j["sip_call_id"].as_str().expect("sip_call_id known");
    let sid = j["call_sid"].as_str().expect("call_sid");
    assert!(j["status_token"].is_string(), "{j}");

    // The agent's own id, not one made up by the gateway.
    let agents = d.agent.records();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].conversation_id.as_deref(), Some(conv));

    let rec = d.finished(sid, 20).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
    assert_eq!(rec.conversation_id.as_deref(), Some(conv));
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    assert_eq!(calls.len(), 1);
    let t = &calls[0];
    assert_eq!(t.sip_call_id, sip_call_id, "the INVITE's Call-ID");

    // The conversation started before the INVITE left; the greeting, streamed while the phone
    // rang, was held and reached the phone only after it answered.
    let agents = d.agent_finished(1, Duration::from_secs(5)).await;
    let answered = t.answered_at.expect("answered");
    let invited = t.first_invite_at.expect("invited");
    let first_audio_sent = agents[0]
        .response_starts
        .first()
        .copied()
        .expect("greeting sent");
    assert!(first_audio_sent < answered, "the agent spoke while it rang");
    assert!(invited < answered);
    assert!(
        t.rtp_in.iter().all(|p| p.at >= answered),
        "nothing reaches the phone before the answer"
    );
    eprintln!(
        "trigger: HTTP answer after {answered_http:?}; INVITE {:?} after the request; \
         greeting started {:?} before the answer",
        invited.duration_since(asked),
        answered.duration_since(first_audio_sent)
    );
    let loud = t.loud_packets(500);
    let first_loud = *loud.first().expect("the greeting was heard");
    eprintln!(
        "trigger: greeting heard {:?} after the answer",
        first_loud.duration_since(answered)
    );
    assert!(
        first_loud.duration_since(answered) < Duration::from_secs(1),
        "the held greeting plays at answer: {:?}",
        first_loud.duration_since(answered)
    );

    // The live status carries the conversation id from its first event on.
    let ev = trunkline_gateway::service::Gateway::events(&d.gateway).subscribe(sid);
    let trunkline_gateway::events::Subscription::Live(last, _) = ev else {
        panic!("the status of a call that just ended is kept for the grace period");
    };
    assert_eq!(last.status, "completed");
    assert_eq!(last.conversation_id.as_deref(), Some(conv));
    assert_eq!(last.sip_call_id.as_deref(), Some(sip_call_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_phone_closes_the_conversation_and_the_record_is_written() {
    let d = deploy(
        trunk(|t| {
            t.outcome = Outcome::Busy;
            t.ring_time = Duration::from_millis(600);
        }),
        AgentEmulatorConfig::default(),
        at_trigger,
    )
    .await;
    let (status, j) = place(&d).await;
    assert_eq!(status, 200, "{j}");
    let conv = j["conversation_id"].as_str().expect("conversation_id");
    let sid = j["call_sid"].as_str().expect("call_sid");
    let rec = d.finished(sid, 15).await;
    assert_eq!(rec.status, "busy", "{rec:?}");
    assert_eq!(rec.conversation_id.as_deref(), Some(conv));
    // The agent's socket was closed by the gateway, cleanly (close 1000).
    let agents = d.agent_finished(1, Duration::from_secs(5)).await;
    assert!(agents[0].finished, "{:?}", agents[0]);
    assert_eq!(agents[0].client_close_code, Some(1000), "{:?}", agents[0]);
    // Written to the records database.
    let stored = d.gateway.list(ListQuery::default()).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].status, "busy");
    assert_eq!(stored[0].conversation_id.as_deref(), Some(conv));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_means_no_call_a_stable_error_and_a_record() {
    // An "agent" that accepts TCP and never answers the WebSocket upgrade.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hole = black_hole.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            conns.push(s);
        }
    });
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), |cfg| {
        at_trigger(cfg);
        cfg.agent.base_url = format!("ws://{hole}");
        cfg.agent.connect_timeout_secs = 1;
    })
    .await;
    let (status, j) = place(&d).await;
    assert_eq!(status, 504, "{j}");
    assert_eq!(j["success"], false);
    assert_eq!(j["error"], AGENT_UNAVAILABLE);
    // Nothing reached the trunk, and the call is over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        d.trunk.calls().is_empty(),
        "no INVITE: {:?}",
        d.trunk.calls()
    );
    assert!(d.gateway.drain(Duration::from_secs(5)).await);
    assert!(d.gateway.wait_sip_idle(Duration::from_secs(5)).await);
    // Written to the records database: failed, the agent's connection as the cause.
    let stored = d.gateway.list(ListQuery::default()).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].status, "failed");
    assert!(
        matches!(
            stored[0].end_cause,
            Some(EndCause::AgentConnectFailed { .. })
        ),
        "{:?}",
        stored[0]
    );
    assert!(stored[0].timestamps.invite_ms.is_none());
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elevenlabs_shaped_endpoint_carries_both_ids_too() {
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), at_trigger).await;
    let (status, j) = post(
        d.http,
        "/v1/convai/sip-trunk/outbound-call",
        &[("xi-api-key", TOKEN)],
        r#"{"agent_id": "agent_e2e", "agent_phone_number_id": "phnum_1", "to_number": "+33612345678"}"#,
    )
    .await;
    assert_eq!(status, 200, "{j}");
    let conv = j["conversation_id"].as_str().expect("conversation_id");
    let sip_call_id = j["sip_call_id"].as_str().expect("sip_call_id");
    assert_eq!(d.agent.records()[0].conversation_id.as_deref(), Some(conv));
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(5), |c| !c.is_empty())
        .await;
    assert_eq!(calls[0].sip_call_id, sip_call_id);
}
