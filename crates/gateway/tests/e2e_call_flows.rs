//! Barge-in, hang-up ordering, DTMF both ways, transcoding and inbound calls, end to end over real
//! loopback sockets with the trunk and agent emulators.

mod common;

use std::time::{Duration, Instant};

use common::{TOKEN, api, deploy, pcap, post, speech};
use trunkline_agent::AudioFormat;
use trunkline_call::record::EndCause;
use trunkline_emulators::agent::{AbortKind, AgentEmulatorConfig, Script, ToolCallSpec};
use trunkline_emulators::trunk::{Originate, PlaySource, TrunkConfig};

fn trunk(f: impl FnOnce(&mut TrunkConfig)) -> TrunkConfig {
    let mut t = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        hangup_after: Some(Duration::from_secs(8)),
        ..TrunkConfig::default()
    };
    f(&mut t);
    t
}

fn agent(f: impl FnOnce(&mut AgentEmulatorConfig)) -> AgentEmulatorConfig {
    let mut a = AgentEmulatorConfig::default();
    f(&mut a);
    a
}

/// The agent's phrase exactly as the emulator sends it in µ-law, as 20 ms frames with at least
/// one sample louder than 2500.
fn phrase_loud_frames() -> usize {
    use trunkline_emulators::agent::audio::{encode_for, phrase_16k};
    let ulaw = encode_for(AudioFormat::Ulaw8000, &phrase_16k());
    ulaw.chunks(160)
        .filter(|c| {
            c.iter()
                .any(|&b| trunkline_media::g711::G711::Ulaw.decode(b).abs() > 2500)
        })
        .count()
}

/// The agent's audio stops reaching the phone promptly after an interruption. Times are the
/// phone's kernel receive stamps (on loopback: when the gateway sent the packet), so a phone-side
/// task that is scheduled late cannot make a packet look late. The bound is 100 ms: the flush
/// itself is immediate, what remains is the gateway reading the interruption off the WebSocket
/// on a busy 2-core machine; without the flush the agent's audio (streamed ahead of real time,
/// seconds of it queued) keeps coming for the whole window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_agent_audio_reaching_the_phone_within_100_ms() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.play_delay = Duration::from_millis(700);
        }),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    let t_int = *agent[0]
        .interruption_times
        .first()
        .expect("the caller's speech interrupted the greeting");
    assert!(rec.interruptions >= 1, "{rec:?}");
    let phone = &d.trunk.calls()[0];
    let law = phone.law.expect("answered");
    let loud: Vec<Instant> = phone
        .rtp_in
        .iter()
        .filter(|p| p.pt == law.payload_type())
        .filter(|p| p.payload.iter().any(|&c| law.decode(c).abs() > 2000))
        .map(|p| p.kernel_at.expect("kernel receive stamp"))
        .collect();
    assert!(loud.iter().any(|t| *t < t_int), "the greeting had started");
    let late: Vec<Duration> = loud
        .iter()
        .filter(|t| {
            **t > t_int + Duration::from_millis(100) && **t < t_int + Duration::from_millis(600)
        })
        .map(|t| *t - t_int)
        .collect();
    assert!(
        late.is_empty(),
        "agent audio still reached the phone at {late:?} after the interruption"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_plays_the_last_sentence_in_full_then_sends_bye() {
    let d = deploy(
        trunk(|t| t.hangup_after = None),
        agent(|a| {
            a.script = Script {
                end_after_turns: Some(0),
                end_call_tool_response: true,
                ..Script::default()
            }
        }),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.end_cause, Some(EndCause::AgentEnded), "{rec:?}");
    let phone = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
        .await;
    let phone = &phone[0];
    assert_eq!(
        phone.ended_by.as_deref(),
        Some("remote_bye"),
        "the gateway sent BYE"
    );
    let loud = phone.loud_packets(2500);
    let expected = phrase_loud_frames(); // the greeting, then end_call
    assert!(
        loud.len() >= expected,
        "the last sentence was cut: {} of {expected} loud frames heard",
        loud.len()
    );
    let bye_at = phone.ended_at.expect("ended");
    assert!(loud.iter().all(|t| *t <= bye_at), "no audio after BYE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_socket_dying_mid_call_ends_the_call_with_bye_within_a_second() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.hangup_after = None;
        }),
        agent(|a| a.script.abort_after_turns = Some((1, AbortKind::Drop))),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert!(
        matches!(rec.end_cause, Some(EndCause::AgentError { .. })),
        "{rec:?}"
    );
    let phone = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
        .await;
    assert_eq!(phone[0].ended_by.as_deref(), Some("remote_bye"));
    let ended = rec.timestamps.ended_ms.expect("end time");
    assert!(rec.agent_close.is_some(), "agent close reason recorded");
    // BYE within 1 s of the socket dying: the phone's BYE arrived at most a second after the
    // agent emulator dropped the connection (and not before it).
    let agent = d.agent_finished(1, Duration::from_secs(3)).await;
    assert!(agent[0].finished);
    assert!(ended >= rec.timestamps.answered_ms.unwrap_or(0));
    let lost_at = agent[0].ended_at.expect("agent connection end time");
    let bye_at = phone[0].ended_at.expect("phone BYE time");
    assert!(bye_at >= lost_at, "BYE before the agent was lost");
    let gap = bye_at - lost_at;
    assert!(
        gap < Duration::from_secs(1),
        "BYE {gap:?} after the agent loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_bye_closes_the_agent_socket_with_1000_and_writes_the_record() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(2))),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    // While the call runs, its record has the transcript so far (the greeting), though the call
    // hands its lines to the database as they come and keeps none.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, j) = api("GET", d.http, &format!("/api/calls/{sid}")).await;
        assert_eq!(status, 200, "{j}");
        let j = &j["call"];
        if j["status"] == "in-progress" && j["transcript"].as_array().is_some_and(|t| !t.is_empty())
        {
            assert_eq!(j["transcript"][0]["role"], "agent", "{j}");
            break;
        }
        assert!(
            Instant::now() < deadline && j["end_cause"].is_null(),
            "no transcript while the call ran: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    assert_eq!(agent[0].client_close_code, Some(1000));
    assert!(!rec.transcript.is_empty(), "transcript kept: {rec:?}");
    // The API serves the final record with it.
    let (status, j) = api("GET", d.http, &format!("/api/calls/{sid}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        j["call"]["transcript"].as_array().map(Vec::len),
        Some(rec.transcript.len()),
        "{j}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_from_the_capture_reaches_the_agent() {
    let d = deploy(
        trunk(|t| {
            t.play = PlaySource::from_pcap(pcap("restcomm/dtmf_rfc2833_4_digits_slow.pcap"))
                .expect("capture");
            t.hangup_after = Some(Duration::from_secs(5));
        }),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let received: String = rec
        .dtmf
        .iter()
        .filter(|d| d.direction == "received")
        .map(|d| d.digit)
        .collect();
    assert_eq!(received, "1234", "{rec:?}");
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    let digits: Vec<&String> = agent[0]
        .messages
        .iter()
        .filter(|m| m.contains("\"user_message\""))
        .collect();
    assert_eq!(digits.len(), 4, "{digits:?}");
    for (m, digit) in digits.iter().zip(["1", "2", "3", "4"]) {
        assert!(m.contains(&format!(r#""text":"{digit}""#)), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_dtmf_tool_reaches_the_phone_as_rfc4733() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(6))),
        agent(|a| {
            a.script.tool_call = Some(ToolCallSpec {
                after_turn: 0,
                tool_name: "send_dtmf".into(),
                parameters: serde_json::json!({"digits": "42#"}),
            })
        }),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let phone = &d.trunk.calls()[0];
    assert_eq!(phone.dtmf_received(), vec!['4', '2', '#'], "{rec:?}");
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    assert!(
        agent[0]
            .messages
            .iter()
            .any(|m| m.contains("client_tool_result") && m.contains("sent 3 DTMF digits")),
        "{:?}",
        agent[0].messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcm_16000_agent_still_hears_the_phone_and_is_heard() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.play_delay = Duration::from_millis(200);
            t.hangup_after = Some(Duration::from_secs(5));
        }),
        agent(|a| {
            a.input_format = AudioFormat::Pcm { sample_rate: 16000 };
            a.output_format = AudioFormat::Pcm { sample_rate: 16000 };
        }),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    assert_eq!(agent[0].caller_sample_rate, 16000);
    // Correlate the 16 kHz audio the agent heard (decimated to 8 kHz) with the capture.
    let heard: Vec<f64> = agent[0]
        .caller_audio
        .iter()
        .step_by(2)
        .map(|&s| f64::from(s))
        .collect();
    let src: Vec<f64> = common::speech_samples()
        .into_iter()
        .map(f64::from)
        .take(8000 * 3)
        .collect();
    let best = best_correlation(&heard, &src[8000..8000 + 8000]);
    assert!(best >= 0.9, "correlation {best:.3}");
    assert!(
        d.trunk.calls()[0].loud_packets(2000).len() > 25,
        "agent heard on the phone"
    );
}

/// Best normalised cross-correlation of `needle` against windows of `hay`.
fn best_correlation(hay: &[f64], needle: &[f64]) -> f64 {
    let nn: f64 = needle.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut best = 0.0f64;
    for off in 0..hay.len().saturating_sub(needle.len()) {
        let w = &hay[off..off + needle.len()];
        let ww: f64 = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if ww == 0.0 {
            continue;
        }
        let dot: f64 = w.iter().zip(needle).map(|(a, b)| a * b).sum();
        best = best.max(dot / (ww * nn));
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_from_an_allowed_source_is_answered_by_the_agent() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.play_delay = Duration::from_millis(3500);
            t.hangup_after = Some(Duration::from_secs(6));
        }),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let gw = d
        .gateway
        .sip_addr(trunkline_sip::transaction::TransportKind::Udp)
        .expect("sip addr");
    let start = Instant::now();
    d.trunk.originate(Originate {
        gateway: gw,
        from: "+14155550123".into(),
        to: "+15005550006".into(),
        call_sid: "CAtwilio0001".into(),
    });
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(15), |c| {
            c.first().is_some_and(|c| c.ended_at.is_some())
        })
        .await;
    let c = &calls[0];
    assert_eq!(c.final_status, Some(200), "{c:?}");
    assert!(c.answered_at.is_some_and(|t| t > start));
    assert!(
        c.loud_packets(2000).len() > 25,
        "the agent greeted the caller: {} packets in, law {:?}, ended by {:?}, records {:?}",
        c.rtp_in.len(),
        c.law,
        c.ended_by,
        d.gateway.record_list()
    );
    let agent = d.agent_finished(1, Duration::from_secs(5)).await;
    assert!(agent[0].caller_seconds() > 1.0);
    assert!(
        agent[0]
            .messages
            .first()
            .is_some_and(|m| m.contains("CAtwilio0001") && m.contains("+14155550123")),
        "dynamic variables carry the Twilio call sid and caller: {:?}",
        agent[0].messages.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_from_another_source_is_refused() {
    let d = deploy(trunk(|_| {}), agent(|_| {}), |c| {
        c.trunk.inbound_allowed_sources = vec!["54.172.60.0/30".into()];
    })
    .await;
    let gw = d
        .gateway
        .sip_addr(trunkline_sip::transaction::TransportKind::Udp)
        .expect("sip addr");
    d.trunk.originate(Originate {
        gateway: gw,
        from: "+14155550123".into(),
        to: "+15005550006".into(),
        call_sid: "CAtwilio0002".into(),
    });
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(5), |c| {
            c.first().is_some_and(|c| c.final_status.is_some())
        })
        .await;
    assert_eq!(calls[0].final_status, Some(403));
    assert!(d.agent.records().is_empty());
}

/// One delivery: the body's `event` and `event_id`, and the `X-Trunkline-Event-Id` header.
#[derive(Debug)]
struct Delivery {
    event: String,
    event_id: String,
    header_id: String,
}

/// A tiny HTTP endpoint that records every POST and answers 200.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0usize);
                        if body.len() >= len {
                            let j =
                                serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
                            let field = |k: &str| j[k].as_str().unwrap_or_default().to_owned();
                            let header_id = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("x-trunkline-event-id")
                                        .then(|| v.trim().to_owned())
                                })
                                .unwrap_or_default();
                            let _ = tx.send(Delivery {
                                event: field("event"),
                                event_id: field("event_id"),
                                header_id,
                            });
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}/status"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_webhooks_follow_the_call() {
    let (url, mut events) = webhook_receiver().await;
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(1))),
        agent(|_| {}),
        |c| c.records.webhook_url = Some(url),
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.status, "completed");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => break,
        }
    }
    // Nothing after the final event (it used to be delivered twice).
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(1500), events.recv()).await
    {
        seen.push(extra);
    }
    assert_eq!(
        seen.iter().map(|d| d.event.as_str()).collect::<Vec<_>>(),
        ["initiated", "ringing", "answered", "completed"],
        "{seen:?}"
    );
    // Every delivery carries its event id, in the body and the header, unique per event.
    let ids: std::collections::BTreeSet<&str> = seen.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "{seen:?}");
    for d in &seen {
        assert!(d.event_id.starts_with(&sid), "{d:?}");
        assert_eq!(d.header_id, d.event_id, "{d:?}");
    }
    use trunkline_gateway::api::CallService;
    let metrics = CallService::metrics(&d.gateway);
    assert!(
        metrics.contains("trunkline_webhooks_total{result=\"delivered\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_session_refresh_reinvite_keeps_the_call_up() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.reinvite_after = Some(Duration::from_secs(1));
            t.hangup_after = Some(Duration::from_secs(4));
        }),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    let phone = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
        .await;
    assert_eq!(
        phone[0].reinvite_answers,
        vec![200],
        "re-INVITE answered 200"
    );
    assert_eq!(
        phone[0].ended_by.as_deref(),
        Some("local_bye"),
        "the phone hung up, not us"
    );
    assert_eq!(rec.end_cause, Some(EndCause::RemoteHangup));
    // Audio kept flowing after the refresh: packets for the whole 4 s.
    assert!(rec.downlink.packets >= 180, "{:?}", rec.downlink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_tool_sends_refer_and_ends_after_notify_200() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(10))),
        agent(|a| {
            a.script.tool_call = Some(ToolCallSpec {
                after_turn: 0,
                tool_name: "transfer_call".into(),
                parameters: serde_json::json!({"destination": "+33 1 23 45 67 89"}),
            })
        }),
        |c| {
            c.agent.transfer_enabled = true;
            c.agent.transfer_allow_prefixes = vec!["+33".into()];
        },
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 20).await;
    assert_eq!(rec.end_cause, Some(EndCause::Transferred), "{rec:?}");
    let phone = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
        .await;
    assert_eq!(phone[0].refer_to, vec!["<tel:+33123456789>".to_owned()]);
    assert_eq!(
        phone[0].ended_by.as_deref(),
        Some("remote_bye"),
        "BYE after the transfer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_daily_cap_and_fails_the_calls_left_open() {
    use trunkline_call::CallRecord;
    use trunkline_gateway::api::CallService;
    use trunkline_gateway::config::Config;
    use trunkline_gateway::records::RecordStore;
    let dir = std::env::temp_dir().join(format!("trunkline-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let url = format!("sqlite://{}", dir.join("records.db").display());
    // A call the last run left open (killed with SIGKILL mid-call).
    {
        let store = RecordStore::open(&url).await.expect("open");
        let mut r = CallRecord::new(
            "CAstale".into(),
            "outbound",
            "+15005550006".into(),
            "+33612345670".into(),
        );
        r.status = "in-progress".into();
        r.timestamps.answered_ms = Some(1_000);
        store.save_now(&r).await.expect("save");
    }
    let tweak = |url: String| {
        move |c: &mut Config| {
            c.records.database_url = url;
            c.policy.per_destination_per_day = 1;
        }
    };
    let a = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(1))),
        agent(|_| {}),
        tweak(url.clone()),
    )
    .await;
    let stale = CallService::get(&a.gateway, "CAstale".into())
        .await
        .expect("stale record");
    assert_eq!(stale.status, "failed");
    assert_eq!(stale.end_cause, Some(EndCause::GatewayRestart));
    assert_eq!(stale.timestamps.ended_ms, None, "end time unknown");
    let sid = a.call("+33612345678").await;
    a.finished(&sid, 20).await;
    a.gateway.flush_records().await;

    // The restart: a new gateway on the same database.
    let b = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(1))),
        agent(|_| {}),
        tweak(url.clone()),
    )
    .await;
    let (status, j) = post(
        b.http,
        "/api/call/outbound",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        r#"{"phoneNumber": "+33612345678"}"#,
    )
    .await;
    assert_eq!(
        (status, j["error"].as_str()),
        (429, Some("Too many requests"))
    );
    assert!(b.trunk.calls().is_empty(), "nothing reached the trunk");
    // A finished call is not touched by the restart; another number still passes.
    let done = CallService::get(&b.gateway, sid.clone())
        .await
        .expect("record");
    assert_eq!(done.status, "completed");
    let other = b.call("+33612345679").await;
    b.finished(&other, 20).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A caller over raw UDP that sends an INVITE, reads what the gateway sends, and never ACKs
/// (RFC 3261 §13.3.1.4): the 200 is retransmitted, then BYE comes after 64·T1, and the call
/// ends as `no_ack` with its agent closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_200_never_acked_gets_bye_after_64_t1_and_ends_as_no_ack() {
    let d = deploy(trunk(|_| {}), agent(|_| {}), |c| {
        c.sip.t1_ms = 50; // 64·T1 = 3.2 s
        c.sip.t2_ms = 400;
    })
    .await;
    let gw = d
        .gateway
        .sip_addr(trunkline_sip::transaction::TransportKind::Udp)
        .expect("sip addr");
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let me = sock.local_addr().expect("addr");
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 9 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
               a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    let invite = format!(
        "INVITE sip:+15005550006@{gw} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKnoack1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+14155550123@{me}>;tag=noack\r\n\
         To: <sip:+15005550006@{gw}>\r\n\
         Call-ID: noack-1@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:+14155550123@{me}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    sock.send_to(invite.as_bytes(), gw).await.expect("send");
    let mut buf = vec![0u8; 8192];
    let mut first_ok = None;
    let mut oks = 0;
    let mut sid = None;
    let bye_at = loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("the gateway kept talking")
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with("SIP/2.0 200") && msg.contains("CSeq: 1 INVITE") {
            oks += 1;
            first_ok.get_or_insert_with(Instant::now);
            if sid.is_none() {
                sid = d.gateway.record_list().first().map(|r| r.call_sid.clone());
            }
        } else if msg.starts_with("BYE ") {
            let at = Instant::now();
            // Answer the BYE (copy its Via/From/To/Call-ID/CSeq).
            let keep: String = msg
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    ["via:", "from:", "to:", "call-id:", "cseq:"]
                        .iter()
                        .any(|h| l.starts_with(h))
                })
                .map(|l| format!("{l}\r\n"))
                .collect();
            let ok = format!("SIP/2.0 200 OK\r\n{keep}Content-Length: 0\r\n\r\n");
            sock.send_to(ok.as_bytes(), from).await.expect("send");
            break at;
        }
    };
    let first_ok = first_ok.expect("the call was answered");
    let waited = bye_at - first_ok;
    assert!(
        waited >= Duration::from_millis(3000) && waited < Duration::from_millis(4500),
        "BYE {waited:?} after the 200 (64·T1 = 3.2 s)"
    );
    assert!(
        oks >= 5,
        "the 200 was retransmitted while no ACK came: {oks}"
    );
    // The record: cause no_ack, the agent closed.
    let sid = sid.expect("the call was in the records while up");
    let rec = d.finished(&sid, 5).await;
    assert_eq!(rec.end_cause, Some(EndCause::NoAck), "{rec:?}");
    assert_eq!(rec.status, "failed");
    let agent = d.agent.wait_finished(1, Duration::from_secs(5)).await;
    assert!(agent[0].finished, "the agent socket was closed");
    assert_eq!(agent[0].client_close_code, Some(1000));
}

/// Issue 17: an agent that hangs (reads nothing, sends nothing, answers no ping) used to leave
/// the phone in silence forever and its WebSocket open after hang-up. With
/// `agent.stall_timeout_secs = 2` the call ends as `agent_timeout` about 2 s after the hang, the
/// phone gets BYE, and the emulator sees its TCP connection closed shortly after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_agent_ends_the_call_as_agent_timeout_with_bye_and_its_socket_closed() {
    let d = deploy(
        trunk(|t| {
            t.play = speech();
            t.hangup_after = Some(Duration::from_secs(20));
        }),
        agent(|a| a.script.hang_after_metadata = Some(Duration::from_secs(30))),
        |c| c.agent.stall_timeout_secs = 2,
    )
    .await;
    let sid = d.call("+33612345678").await;
    let rec = d.finished(&sid, 12).await;
    assert_eq!(rec.end_cause, Some(EndCause::AgentTimeout), "{rec:?}");
    let (connected, ended) = (
        rec.timestamps.agent_connected_ms.expect("agent connected"),
        rec.timestamps.ended_ms.expect("ended"),
    );
    let waited = ended.saturating_sub(connected);
    assert!(
        (2000..3500).contains(&waited),
        "the call ended {waited} ms after the agent hung (stall timeout 2 s)"
    );
    let phone = d
        .trunk
        .wait_for(Duration::from_secs(3), |c| c[0].ended_by.is_some())
        .await;
    assert_eq!(phone[0].ended_by.as_deref(), Some("remote_bye"), "BYE");
    let agent = d.agent.wait_finished(1, Duration::from_secs(5)).await;
    let closed_at = agent[0]
        .peer_closed_at
        .expect("the emulator saw the gateway close the connection");
    let bye_at = phone[0].ended_at.expect("BYE time");
    let after_bye = closed_at.saturating_duration_since(bye_at);
    assert!(
        after_bye < Duration::from_millis(2500),
        "socket closed {after_bye:?} after the BYE"
    );
    let metrics = d.gateway.metrics_registry().render(0, 0);
    assert!(metrics.contains(r#"cause="agent_timeout"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"trunkline_agent_closes_total{reason="AgentTimeout"} 1"#),
        "{metrics}"
    );
}

/// Symmetric RTCP through the call's own RTCP socket: an RTCP report reaching the gateway's
/// RTCP port (its RTP port + 1) from another port of the phone's host makes the gateway send
/// its reports there (RFC 3550 §6 with symmetric RTP/RTCP for NAT), instead of to the port
/// the phone's SDP implies. Fails if the call's task does not read its RTCP socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_from_the_phone_is_read_and_answered_where_it_came_from() {
    use trunkline_media::rtcp::{SenderInfo, parse_rtcp, write_compound};
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(20))),
        agent(|_| {}),
        |_| {},
    )
    .await;
    let _sid = d.call("+33612345678").await;
    let calls = d
        .trunk
        .wait_for(Duration::from_secs(10), |c| {
            c.first().is_some_and(|c| c.final_status == Some(200))
        })
        .await;
    let invite = d
        .trunk
        .received_sip(&calls[0])
        .into_iter()
        .find(|m| m.start_line.starts_with("INVITE ") && !m.body.is_empty())
        .expect("the gateway's INVITE with its offer");
    let port: u16 = invite
        .body
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port");
    let gw_rtcp = std::net::SocketAddr::from(([127, 0, 0, 1], port + 1));

    let phone = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut rr = [0u8; 512];
    let me = SenderInfo {
        ssrc: 0x5eed_0001,
        ntp: 0,
        rtp_time: 0,
        packets: 0,
        octets: 0,
    };
    let n = write_compound(me, false, None, "phone@nat", false, &mut rr).expect("rr");

    // Like a phone, report every second (the first may arrive before the gateway has taken the
    // answer and made the call's media); the gateway reports every 5 s on average (randomised
    // 0.5–1.5×), and its reports after it has read ours come to us.
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(15);
    let (len, from) = loop {
        assert!(
            Instant::now() < deadline,
            "no RTCP report from the gateway came to the port our reports came from"
        );
        phone.send_to(&rr[..n], gw_rtcp).await.expect("send rr");
        if let Ok(got) =
            tokio::time::timeout(Duration::from_secs(1), phone.recv_from(&mut buf)).await
        {
            break got.expect("recv");
        }
    };
    assert_eq!(from, gw_rtcp, "sent from the gateway's RTCP port");
    let report = parse_rtcp(&buf[..len]).expect("a valid compound RTCP packet");
    assert!(
        !report.sender_reports.is_empty(),
        "the gateway sends audio, so it sends sender reports: {report:?}"
    );
}
