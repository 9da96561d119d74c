//! Outbound calls end to end over real loopback sockets: HTTP trigger → SIP INVITE through a
//! 407 digest challenge → answer → agent WebSocket → audio both ways → hang-up. Each test asserts
//! what was heard on each side, not only that nothing crashed.

mod common;

use std::time::Duration;

use common::{deploy, speech};
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::{Outcome, TrunkConfig};

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

/// A parameter of a `Digest` credentials value, quotes removed.
fn digest_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let rest = value.trim().strip_prefix("Digest")?.trim();
    rest.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
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

    // The wire, as the trunk received it (not as our own SIP stack parsed it).
    let wire = d.trunk.received_sip(t);
    let problems = d.trunk.sip_problems(t);
    assert!(problems.is_empty(), "{problems:#?}\n{wire:#?}");
    // The digest answered the challenge for this very request: the emulator verified the nonce
    // it issued, the opaque echoed and the response; here, independently, the digest-uri is the
    // Request-URI of the INVITE that carries it (RFC 2617 §3.2.2).
    let invites: Vec<_> = wire
        .iter()
        .filter(|m| m.method() == Some("INVITE"))
        .collect();
    assert_eq!(invites.len(), 2);
    let creds = invites[1]
        .header("Proxy-Authorization")
        .expect("credentials on the retry");
    assert_eq!(digest_param(creds, "uri"), invites[1].request_uri());
    assert!(
        digest_param(creds, "opaque").is_some_and(|o| !o.is_empty()),
        "{creds}"
    );
    assert_eq!(digest_param(creds, "realm"), Some("sip.twilio.com"));
    assert_eq!(invites[0].call_id(), invites[1].call_id());
    assert_eq!(invites[0].from_tag(), invites[1].from_tag());
    assert_eq!(
        invites[1].cseq().map(|c| c.0),
        invites[0].cseq().map(|c| c.0 + 1),
        "CSeq + 1 on the retry"
    );
    // The 200 carried two Record-Route entries; the ACK routes through them, reversed, verbatim,
    // to the edge the last one names — not to the trunk's Contact (RFC 3261 §12.1.2, §12.2.1.1).
    let acks: Vec<_> = wire
        .iter()
        .filter(|m| m.method() == Some("ACK") && m.to_tag() == t.local_tag)
        .collect();
    assert!(!acks.is_empty(), "the gateway ACKed the 200\n{wire:#?}");
    let reversed: Vec<String> = t.record_route.iter().rev().cloned().collect();
    assert_eq!(t.record_route.len(), 2);
    for ack in &acks {
        assert_eq!(ack.header_values("Route"), reversed, "{ack:#?}");
        assert_eq!(
            ack.local,
            d.trunk.edge_addr(),
            "ACK sent to the first route"
        );
        assert_eq!(ack.request_uri(), Some(t.contact.as_str()));
        assert_eq!(ack.cseq(), invites[1].cseq().map(|c| (c.0, "ACK".into())));
    }
    // Early media flowed between the 183 and the 200.
    assert!(t.early_rtp_sent >= 3, "early RTP: {}", t.early_rtp_sent);

    // Downlink: the agent's greeting reached the phone, paced.
    let loud = t.loud_packets(2000);
    assert!(
        loud.len() >= 25,
        "greeting heard: {} loud packets",
        loud.len()
    );

    // Uplink: the phone's words reached the agent unchanged (µ-law passthrough), but for the
    // quiet frames the jitter buffer skipped to settle at the line's delay, which it reports.
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    assert_eq!(agent.len(), 1);
    let skipped = common::assert_relayed_except_quiet_frames(
        &agent[0].caller_audio,
        &common::speech_samples(),
        3,
        4,
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
    assert!(
        skipped as u64 <= rec.uplink.dropped_samples,
        "skipped {skipped}, reported {}",
        rec.uplink.dropped_samples
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

/// The gateway hangs up (the agent ends the call): its BYE follows the route set of the trunk's
/// 200 — the two Record-Route values reversed, verbatim, sent to the edge the first one names —
/// with the dialog's tags, a CSeq above the INVITE's, and our Contact as Request-URI; the 200 was
/// ACKed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bye_and_ack_follow_the_trunks_record_route() {
    let d = deploy(
        trunk(|t| t.hangup_after = None),
        AgentEmulatorConfig {
            script: trunkline_emulators::agent::Script {
                end_after_turns: Some(0),
                end_call_tool_response: true,
                ..Default::default()
            },
            ..AgentEmulatorConfig::default()
        },
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.end_cause, Some(EndCause::AgentEnded), "{rec:?}");
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| {
            c.first().is_some_and(|c| c.ended_by.is_some())
        })
        .await;
    let t = &calls[0];
    assert_eq!(
        t.ended_by.as_deref(),
        Some("remote_bye"),
        "the gateway sent BYE"
    );
    let wire = d.trunk.received_sip(t);
    let problems = d.trunk.sip_problems(t);
    assert!(problems.is_empty(), "{problems:#?}\n{wire:#?}");
    let reversed: Vec<String> = t.record_route.iter().rev().cloned().collect();
    let invite_cseq = wire
        .iter()
        .filter(|m| m.method() == Some("INVITE"))
        .filter_map(|m| m.cseq())
        .map(|c| c.0)
        .max()
        .expect("INVITE");
    for method in ["ACK", "BYE"] {
        let m = wire
            .iter()
            .find(|m| m.method() == Some(method) && m.to_tag() == t.local_tag)
            .unwrap_or_else(|| panic!("no {method}\n{wire:#?}"));
        assert_eq!(m.header_values("Route"), reversed, "{method}: {m:#?}");
        assert_eq!(
            m.local,
            d.trunk.edge_addr(),
            "{method} sent to the first route"
        );
        assert_eq!(m.request_uri(), Some(t.contact.as_str()), "{method}");
        let (n, cm) = m.cseq().expect("CSeq");
        assert_eq!(cm, method);
        if method == "ACK" {
            assert_eq!(n, invite_cseq);
        } else {
            assert!(n > invite_cseq, "BYE CSeq {n} after INVITE {invite_cseq}");
        }
    }
}

/// Origination: the trunk's INVITE carries two Record-Route values (edge first, as each proxy
/// prepends its own); the gateway's 180 and 200 echo them verbatim and in order (RFC 3261
/// §12.1.1), and when it hangs up its BYE carries them in order as Route, sent to the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_echoes_record_route_and_routes_its_bye_through_it() {
    let d = deploy(
        trunk(|t| t.hangup_after = None),
        AgentEmulatorConfig {
            script: trunkline_emulators::agent::Script {
                end_after_turns: Some(0),
                end_call_tool_response: true,
                ..Default::default()
            },
            ..AgentEmulatorConfig::default()
        },
        |_| {},
    )
    .await;
    let gw = d
        .gateway
        .sip_addr(trunkline_sip::transaction::TransportKind::Udp)
        .expect("sip addr");
    d.trunk.originate(trunkline_emulators::trunk::Originate {
        gateway: gw,
        from: "+14155550123".into(),
        to: "+15005550006".into(),
        call_sid: "CAtwilioRR01".into(),
    });
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(20), |c| {
            c.first().is_some_and(|c| c.ended_at.is_some())
        })
        .await;
    let t = &calls[0];
    assert_eq!(t.final_status, Some(200), "{t:?}");
    assert_eq!(
        t.ended_by.as_deref(),
        Some("remote_bye"),
        "the gateway hung up"
    );
    let wire = d.trunk.received_sip(t);
    let problems = d.trunk.sip_problems(t);
    assert!(problems.is_empty(), "{problems:#?}\n{wire:#?}");
    assert_eq!(t.record_route.len(), 2);
    let answers: Vec<_> = wire
        .iter()
        .filter(|m| m.status().is_some_and(|s| (180..300).contains(&s)))
        .collect();
    assert!(
        answers.iter().any(|m| m.status() == Some(200)) && answers.len() >= 2,
        "18x and 200\n{wire:#?}"
    );
    for m in &answers {
        assert_eq!(m.header_values("Record-Route"), t.record_route, "{m:#?}");
        assert!(m.to_tag().is_some());
    }
    let bye = wire
        .iter()
        .find(|m| m.method() == Some("BYE"))
        .unwrap_or_else(|| panic!("no BYE\n{wire:#?}"));
    assert_eq!(bye.header_values("Route"), t.record_route);
    assert_eq!(
        bye.local,
        d.trunk.edge_addr(),
        "BYE sent to the first route"
    );
    assert_eq!(bye.request_uri(), Some(t.contact.as_str()));
    assert_eq!(bye.to_tag(), t.local_tag);
}

/// `/metrics` as text.
async fn metrics_text(http: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.expect("connect");
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
        common::TOKEN
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of the sample `series` (name and labels, exactly as exported).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// A runtime that stalls for longer than `rtp.send_delay_ms` (a blocking call on the only
/// runtime thread here) makes the call's media tick late, and the packet it then builds misses
/// its send slot: both are counted on `/metrics` (`trunkline_media_tick_lateness_seconds`,
/// `trunkline_rtp_send_slot_missed_total`), so an operator can tell the gateway's own
/// scheduling from the network's jitter.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_runtime_shows_as_late_media_ticks_and_missed_send_slots() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(3))),
        AgentEmulatorConfig::default(),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while d
        .gateway
        .record(&sid)
        .is_none_or(|r| r.status != "in-progress")
    {
        assert!(tokio::time::Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The media ticks run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ticks = "trunkline_media_tick_lateness_seconds";
    let late = |t: &str| {
        sample(t, &format!("{ticks}_count")) - sample(t, &format!("{ticks}_bucket{{le=\"0.04\"}}"))
    };
    let missed = "trunkline_rtp_send_slot_missed_total";
    let m0 = metrics_text(d.http).await;
    assert!(sample(&m0, &format!("{ticks}_count")) >= 10.0, "{m0}");

    // The only runtime thread blocks for 80 ms: the tick due in its first 20 ms runs ≥ 60 ms late.
    std::thread::sleep(Duration::from_millis(80));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m1 = metrics_text(d.http).await;
    assert!(
        late(&m1) > late(&m0),
        "a tick > 40 ms late is counted\n{m1}"
    );
    assert!(
        sample(&m1, missed) > sample(&m0, missed),
        "its packet missed its send slot\n{m1}"
    );
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.status, "completed", "{rec:?}");
}
