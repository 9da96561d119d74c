//! trunkline-agent's client against the agent emulator over real loopback sockets: handshake
//! order, formats, ping/pong, the interruption drop rule at the `event_id` boundary, client tool
//! calls, every close reason, signed URLs, back-pressure, garbage tolerance, and the silence close
//! (with an injected duration instead of waiting 60 s).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use trunkline_agent::protocol::{ConversationConfigOverride, DynamicVariable, ServerEvent};
use trunkline_agent::{
    AgentConfig, AgentEvent, AgentHandle, AgentSession, AudioFormat, CloseReason, ConnectError,
    ToolRegistry, connect,
};
use trunkline_emulators::agent::audio::{encode_for, phrase_16k, ulaw_encode};
use trunkline_emulators::agent::{
    AbortKind, AgentEmulator, AgentEmulatorConfig, ConnectionRecord, Script, ToolCallSpec,
};

const T: Duration = Duration::from_secs(10);

async fn start(cfg: AgentEmulatorConfig) -> AgentEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    AgentEmulator::start(addr, cfg).await.unwrap()
}

fn client_config(emu: &AgentEmulator) -> AgentConfig {
    let mut c = AgentConfig::new("agent_test").with_base_url(emu.ws_base_url());
    c.audio_queue_chunks = 10_000;
    c.connect_timeout = Duration::from_secs(5);
    c
}

async fn next(s: &mut AgentSession) -> AgentEvent {
    tokio::time::timeout(T, s.next_event())
        .await
        .expect("event within 10 s")
        .expect("stream open")
}

/// Collects events until `stop` says so (inclusive) or the stream ends.
async fn collect_until(
    s: &mut AgentSession,
    mut stop: impl FnMut(&AgentEvent) -> bool,
) -> Vec<AgentEvent> {
    let mut out = Vec::new();
    loop {
        let Ok(Some(ev)) = tokio::time::timeout(T, s.next_event()).await else {
            return out;
        };
        let done = stop(&ev) || matches!(ev, AgentEvent::Closed(_));
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn closed(events: &[AgentEvent]) -> Option<&trunkline_agent::Closed> {
    events.iter().find_map(|e| match e {
        AgentEvent::Closed(c) => Some(&**c),
        _ => None,
    })
}

/// 20 ms frames of a loud tone (`tone_ms`) then silence (`silence_ms`) in `fmt`.
fn utterance(fmt: AudioFormat, tone_ms: u32, silence_ms: u32) -> Vec<Vec<u8>> {
    let rate = fmt.sample_rate();
    let per_frame = (rate / 50) as usize;
    let mut frames = Vec::new();
    let mut n = 0usize;
    for f in 0..(tone_ms + silence_ms) / 20 {
        let loud = f * 20 < tone_ms;
        let samples: Vec<i16> = (0..per_frame)
            .map(|_| {
                n += 1;
                if loud {
                    ((n as f64 * 2.0 * std::f64::consts::PI * 440.0 / f64::from(rate)).sin()
                        * 10_000.0) as i16
                } else {
                    0
                }
            })
            .collect();
        frames.push(match fmt {
            AudioFormat::Ulaw8000 => samples.into_iter().map(ulaw_encode).collect(),
            AudioFormat::Pcm { .. } => samples.into_iter().flat_map(i16::to_le_bytes).collect(),
        });
    }
    frames
}

fn speak(h: &AgentHandle, fmt: AudioFormat, tone_ms: u32, silence_ms: u32) {
    for f in utterance(fmt, tone_ms, silence_ms) {
        h.send_audio(f).unwrap();
    }
}

async fn finished(emu: &AgentEmulator) -> ConnectionRecord {
    let recs = emu.wait_finished(1, T).await;
    recs.into_iter().next().expect("one connection")
}

#[tokio::test]
async fn handshake_sends_initiation_first_and_reads_formats() {
    for (input, output) in [
        (AudioFormat::Ulaw8000, AudioFormat::Ulaw8000),
        (
            AudioFormat::Pcm {
                sample_rate: 16_000,
            },
            AudioFormat::Pcm {
                sample_rate: 44_100,
            },
        ),
    ] {
        let emu = start(AgentEmulatorConfig {
            input_format: input,
            output_format: output,
            speed: 50.0,
            ..Default::default()
        })
        .await;
        let mut cfg = client_config(&emu);
        cfg.initiation
            .dynamic_variables
            .insert("customer_name".into(), DynamicVariable::from("Ada"));
        let mut s = connect(cfg, ToolRegistry::new()).await.unwrap();
        assert!(s.conversation_id().starts_with("conv_emu_"));
        assert_eq!((s.input_format(), s.output_format()), (input, output));
        let AgentEvent::Metadata {
            input_format,
            output_format,
            ..
        } = next(&mut s).await
        else {
            panic!("first event must be Metadata")
        };
        assert_eq!((input_format, output_format), (input, output));

        // The whole first message arrives, in the output format, in chunks of varying size.
        let expected = encode_for(output, &phrase_16k()).len();
        let mut got = 0;
        let mut sizes = std::collections::BTreeSet::new();
        let mut response_id = None;
        while got < expected {
            match next(&mut s).await {
                AgentEvent::AgentResponse { event_id, .. } => response_id = event_id,
                AgentEvent::Audio { event_id, audio } => {
                    assert_eq!(Some(event_id), response_id, "audio carries its turn's id");
                    got += audio.len();
                    sizes.insert(audio.len());
                }
                AgentEvent::Ping { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, expected);
        assert!(sizes.len() >= 2, "chunk sizes vary: {sizes:?}");
        s.close();
        let evs = collect_until(&mut s, |_| false).await;
        assert_eq!(closed(&evs).unwrap().reason, CloseReason::ClientClosed);

        let rec = finished(&emu).await;
        assert_eq!(rec.agent_id.as_deref(), Some("agent_test"));
        assert!(rec.request_target.contains("source=trunkline"));
        let first: serde_json::Value = serde_json::from_str(&rec.messages[0]).unwrap();
        assert_eq!(first["type"], "conversation_initiation_client_data");
        assert_eq!(first["dynamic_variables"]["customer_name"], "Ada");
        assert_eq!(rec.sent_types[0], "conversation_initiation_metadata");
        assert!(rec.violations.is_empty(), "{:#?}", rec.violations);
    }
}

#[tokio::test]
async fn pings_are_answered_with_pongs_and_ping_ms_surfaced() {
    let emu = start(AgentEmulatorConfig {
        ping_interval: Some(Duration::from_millis(30)),
        pong_timeout: Duration::from_secs(5),
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let mut pings = Vec::new();
    while pings.len() < 4 {
        if let AgentEvent::Ping { event_id, ping_ms } = next(&mut s).await {
            pings.push((event_id, ping_ms));
        }
    }
    assert_eq!(
        pings.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // From the second ping on, the server reports its RTT estimate.
    assert!(pings[1].1.is_some());
    assert!(s.stats().pings_answered >= 4);
    s.close();
    let _ = collect_until(&mut s, |_| false).await;
    let rec = finished(&emu).await;
    assert!(rec.pongs >= 3, "emulator saw {} pongs", rec.pongs);
    assert_ne!(rec.close_code, Some(1002), "no ping timeout");
    assert!(rec.violations.is_empty(), "{:#?}", rec.violations);
}

#[tokio::test]
async fn unanswered_ping_closes_the_socket() {
    // A raw client that never answers pings: the emulator closes with 1002.
    let emu = start(AgentEmulatorConfig {
        ping_interval: Some(Duration::from_millis(20)),
        pong_timeout: Duration::from_millis(100),
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let url = format!("{}/v1/convai/conversation?agent_id=a", emu.ws_base_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"conversation_initiation_client_data"}"#,
    ))
    .await
    .unwrap();
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1002));
    let rec = finished(&emu).await;
    assert!(
        rec.violations
            .first()
            .is_some_and(|v| v.contains("no pong for ping 1")),
        "{:#?}",
        rec.violations
    );
}

#[tokio::test]
async fn interruption_drops_audio_at_and_below_the_event_id() {
    let fmt = AudioFormat::Ulaw8000;
    let emu = start(AgentEmulatorConfig {
        speed: 1.0, // still speaking when the caller barges in
        script: Script {
            stale_chunks_after_interruption: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let h = s.handle();
    // Wait for the first audio of the first message, then talk over it.
    let first_id = loop {
        if let AgentEvent::Audio { event_id, .. } = next(&mut s).await {
            break event_id;
        }
    };
    speak(&h, fmt, 600, 600);
    let evs = collect_until(
        &mut s,
        |e| matches!(e, AgentEvent::Audio { event_id, .. } if *event_id > first_id),
    )
    .await;
    let pos = evs
        .iter()
        .position(|e| matches!(e, AgentEvent::Interruption { .. }))
        .expect("interruption");
    assert_eq!(evs[pos], AgentEvent::Interruption { event_id: first_id });
    for e in &evs[pos..] {
        if let AgentEvent::Audio { event_id, .. } = e {
            assert!(
                *event_id > first_id,
                "audio {event_id} <= {first_id} surfaced after interruption"
            );
        }
    }
    assert!(evs[pos..].iter().any(|e| matches!(e,
        AgentEvent::AgentResponseCorrection(c) if c.event_id == Some(first_id))));
    assert!(evs[pos..].iter().any(|e| matches!(e,
        AgentEvent::UserTranscript { text, .. } if text.starts_with("(speech "))));
    assert!(matches!(evs.last(), Some(AgentEvent::Audio { event_id, .. }) if *event_id > first_id));
    // The three stale chunks with the interrupted id were dropped inside the client.
    assert_eq!(s.stats().audio_events_dropped_interrupted, 3);
    s.close();
    let rec = finished(&emu).await;
    assert_eq!(rec.interruptions, 1);
    assert_eq!(rec.turns, 1);
    // What the agent heard: 1.2 s of caller audio at 8 kHz, also as a WAV file.
    assert_eq!(rec.caller_audio.len(), 8_000 * 12 / 10);
    let path =
        std::env::temp_dir().join(format!("trunkline_agent_heard_{}.wav", std::process::id()));
    rec.write_caller_wav(&path).unwrap();
    let wav = hound::WavReader::open(&path).unwrap();
    assert_eq!((wav.spec().sample_rate, wav.len()), (8_000, 9_600));
    std::fs::remove_file(&path).unwrap();
    assert!(rec.messages_jsonl().lines().count() > 60);
}

#[tokio::test]
async fn tts_pause_mid_response_delays_but_delivers_all_audio() {
    let fmt = AudioFormat::Ulaw8000;
    let pause = Duration::from_millis(400);
    let emu = start(AgentEmulatorConfig {
        speed: 50.0,
        script: Script {
            pause_mid_response: Some(pause),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let expected = encode_for(fmt, &phrase_16k()).len();
    let (mut got, mut max_gap, mut last) = (0, Duration::ZERO, None::<std::time::Instant>);
    while got < expected {
        if let AgentEvent::Audio { audio, .. } = next(&mut s).await {
            let now = std::time::Instant::now();
            if let Some(l) = last {
                max_gap = max_gap.max(now - l);
            }
            last = Some(now);
            got += audio.len();
        }
    }
    assert_eq!(got, expected);
    // Arrival times here are this task's, not the emulator's send times: the chunk before the
    // pause may be read late, shrinking the gap by as much. Without the pause the bursts come
    // every few ms (50× real time), so half the pause still tells the two apart.
    assert!(max_gap >= pause / 2, "gap {max_gap:?}");
    s.close();
}

#[tokio::test]
async fn client_tool_call_is_dispatched_to_handler_and_answered() {
    let emu = start(AgentEmulatorConfig {
        speed: 50.0,
        script: Script {
            tool_call: Some(ToolCallSpec {
                after_turn: 0,
                tool_name: "lookup".into(),
                parameters: serde_json::json!({"user_id": "user_123"}),
            }),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut tools = ToolRegistry::new();
    tools.register("lookup", |call| async move {
        assert_eq!(call.parameters["user_id"], "user_123");
        Ok::<_, String>("Account is active".to_owned())
    });
    let mut s = connect(client_config(&emu), tools).await.unwrap();
    let evs = collect_until(&mut s, |e| {
        matches!(e, AgentEvent::AgentResponse { text, .. } if text.contains("Account is active"))
    })
    .await;
    let call = evs
        .iter()
        .find_map(|e| match e {
            AgentEvent::ToolCall { call, handled } => Some((call.clone(), *handled)),
            _ => None,
        })
        .expect("tool call event");
    assert!(call.1, "handled by the registered handler");
    assert!(matches!(evs.last(), Some(AgentEvent::AgentResponse { .. })));
    s.close();
    let rec = finished(&emu).await;
    let result = rec
        .messages
        .iter()
        .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap())
        .find(|m| m["type"] == "client_tool_result")
        .expect("client_tool_result sent");
    assert_eq!(result["tool_call_id"], call.0.tool_call_id.as_str());
    assert_eq!(result["result"], "Account is active");
    assert_eq!(result["is_error"], false);
}

#[tokio::test]
async fn unhandled_tool_call_is_surfaced_and_answered_by_the_caller() {
    let emu = start(AgentEmulatorConfig {
        speed: 50.0,
        script: Script {
            first_message: true,
            tool_call: Some(ToolCallSpec {
                after_turn: 0,
                tool_name: "transfer_call".into(),
                parameters: serde_json::json!({"destination": "+15551234567"}),
            }),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::ToolCall { .. })).await;
    let Some(AgentEvent::ToolCall { call, handled }) = evs.last() else {
        panic!("{evs:?}")
    };
    assert!(!handled);
    s.send_tool_result(&call.tool_call_id, "no such number", true)
        .unwrap();
    let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::AgentResponse { .. })).await;
    assert!(
        matches!(evs.last(), Some(AgentEvent::AgentResponse { text, .. }) if text.contains("no such number"))
    );
    s.close();
}

#[tokio::test]
async fn agent_end_call_closes_1000_after_all_audio_is_delivered() {
    let fmt = AudioFormat::Ulaw8000;
    let emu = start(AgentEmulatorConfig {
        speed: 20.0,
        script: Script {
            first_message: false,
            end_after_turns: Some(1),
            end_call_tool_response: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    speak(&s.handle(), fmt, 400, 500);
    let evs = collect_until(&mut s, |_| false).await;
    let goodbye_id = evs
        .iter()
        .find_map(|e| match e {
            AgentEvent::AgentResponse { text, event_id } if text == "Goodbye!" => *event_id,
            _ => None,
        })
        .expect("goodbye response");
    let audio: usize = evs
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Audio { event_id, audio } if *event_id == goodbye_id => Some(audio.len()),
            _ => None,
        })
        .sum();
    assert_eq!(
        audio,
        encode_for(fmt, &phrase_16k()).len(),
        "the last sentence is not cut off"
    );
    let end_call = evs
        .iter()
        .position(|e| matches!(e, AgentEvent::AgentToolResponse(r) if r.is_end_call()))
        .expect("agent_tool_response end_call");
    let c = closed(&evs).unwrap();
    assert_eq!(c.reason, CloseReason::AgentEnded);
    assert_eq!(c.code, Some(1000));
    assert!(c.reason.is_agent_ended());
    assert!(end_call < evs.len() - 1);
    assert!(s.is_closed());
    assert!(s.send_audio(vec![0u8; 160]).is_err());
}

#[tokio::test]
async fn abrupt_close_1011_is_internal_and_dropped_tcp_is_connection_lost() {
    for (kind, check) in [
        (
            AbortKind::Close1011,
            (|c: &trunkline_agent::Closed| {
                matches!(c.reason, CloseReason::Internal { .. }) && c.code == Some(1011)
            }) as fn(&trunkline_agent::Closed) -> bool,
        ),
        (AbortKind::Drop, |c| {
            matches!(c.reason, CloseReason::ConnectionLost { .. }) && c.code.is_none()
        }),
    ] {
        let emu = start(AgentEmulatorConfig {
            script: Script {
                first_message: false,
                abort_after_turns: Some((1, kind)),
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        let mut s = connect(client_config(&emu), ToolRegistry::new())
            .await
            .unwrap();
        speak(&s.handle(), AudioFormat::Ulaw8000, 300, 500);
        let evs = collect_until(&mut s, |_| false).await;
        let c = closed(&evs).expect("closed");
        assert!(check(c), "{kind:?}: {c:?}");
    }
}

#[tokio::test]
async fn missing_dynamic_variable_closes_1008_before_metadata() {
    let emu = start(AgentEmulatorConfig {
        required_dynamic_variables: vec!["customer_name".into()],
        ..Default::default()
    })
    .await;
    // Nested in the override (the jambonz bug) is as good as missing.
    let mut cfg = client_config(&emu);
    let mut o = ConversationConfigOverride::default();
    o.extra.insert(
        "dynamic_variables".into(),
        serde_json::json!({"customer_name": "Ada"}),
    );
    cfg.initiation.conversation_config_override = Some(o);
    let err = connect(cfg, ToolRegistry::new()).await.unwrap_err();
    let ConnectError::Closed(c) = err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(&c.reason, CloseReason::MissingDynamicVariable { message } if message.contains("customer_name")),
        "{c:?}"
    );
    assert_eq!(c.code, Some(1008));
    assert_eq!(
        c.error.and_then(|e| e.error_type).as_deref(),
        Some("missing_dynamic_variable")
    );

    // At top level it is accepted.
    let mut cfg = client_config(&emu);
    cfg.initiation
        .dynamic_variables
        .insert("customer_name".into(), "Ada".into());
    let s = connect(cfg, ToolRegistry::new()).await.unwrap();
    s.close();
}

#[tokio::test]
async fn overrides_not_allowed_close_1008_override_error() {
    let emu = start(AgentEmulatorConfig {
        allow_overrides: false,
        ..Default::default()
    })
    .await;
    let mut cfg = client_config(&emu);
    cfg.initiation.conversation_config_override = Some(ConversationConfigOverride::default());
    let Err(ConnectError::Closed(c)) = connect(cfg, ToolRegistry::new()).await else {
        panic!("expected close")
    };
    assert!(
        matches!(c.reason, CloseReason::OverrideError { .. }),
        "{c:?}"
    );
    assert_eq!(c.code, Some(1008));
}

#[tokio::test]
async fn first_message_other_than_initiation_closes_1008_invalid() {
    let emu = start(AgentEmulatorConfig::default()).await;
    let url = format!("{}/v1/convai/conversation?agent_id=a", emu.ws_base_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"user_audio_chunk":"AAAA"}"#,
    ))
    .await
    .unwrap();
    let mut error_type = None;
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
        match m {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                if let ServerEvent::Error(e) = ServerEvent::decode(t.as_str()).unwrap().event {
                    error_type = e.error_type;
                }
            }
            tokio_tungstenite::tungstenite::Message::Close(f) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(error_type.as_deref(), Some("invalid_message"));
    assert_eq!(code, Some(1008));
    // The same mapping on the client side.
    assert!(matches!(
        CloseReason::from_server(code, "", None),
        CloseReason::Invalid { .. }
    ));
}

#[tokio::test]
async fn no_user_audio_for_the_silence_timeout_closes_1002() {
    // The service's 60 s, injected as 300 ms so the test does not wait a minute.
    let emu = start(AgentEmulatorConfig {
        silence_timeout: Duration::from_millis(300),
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let evs = collect_until(&mut s, |_| false).await;
    let c = closed(&evs).unwrap();
    assert_eq!(
        c.reason,
        CloseReason::Timeout {
            error_type: Some("transport_receive_timeout".into())
        }
    );
    assert_eq!(c.code, Some(1002));
    assert!(evs.iter().any(|e| matches!(e, AgentEvent::Error(_))));
}

#[tokio::test]
async fn continuous_user_audio_keeps_the_conversation_open() {
    let emu = start(AgentEmulatorConfig {
        silence_timeout: Duration::from_millis(1_000),
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    for _ in 0..40 {
        s.send_audio(vec![0xffu8; 160]).unwrap(); // µ-law silence
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !s.is_closed(),
        "2 s of audio at 50 ms spacing keeps a 1 s timeout from firing"
    );
    s.close();
    let rec = finished(&emu).await;
    assert_ne!(rec.close_code, Some(1002));
}

#[test]
fn default_silence_timeout_is_the_services_60_seconds() {
    assert_eq!(
        AgentEmulatorConfig::default().silence_timeout,
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn signed_url_is_fetched_with_api_key_and_single_use() {
    let emu = start(AgentEmulatorConfig {
        api_key: Some("sk_test".into()),
        require_signed_url: true,
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut cfg = client_config(&emu);
    cfg.api_key = Some("sk_test".into());
    let signed = trunkline_agent::fetch_signed_url(&cfg, "sk_test")
        .await
        .unwrap();
    assert!(signed.contains("conversation_signature="), "{signed}");
    let s = connect(cfg.clone(), ToolRegistry::new()).await.unwrap();
    s.close();

    // Wrong key: 401 from the endpoint.
    let mut bad = cfg.clone();
    bad.api_key = Some("sk_wrong".into());
    assert!(matches!(
        connect(bad, ToolRegistry::new()).await,
        Err(ConnectError::SignedUrlStatus(401))
    ));
    // No signature: refused.
    let mut public = cfg.clone();
    public.api_key = None;
    assert!(matches!(
        connect(public, ToolRegistry::new()).await,
        Err(ConnectError::Rejected(403))
    ));
    // The fetched URL works once, then not again.
    let mut once = cfg.clone();
    once.api_key = None;
    once.signed_url = Some(signed);
    connect(once.clone(), ToolRegistry::new())
        .await
        .unwrap()
        .close();
    assert!(matches!(
        connect(once, ToolRegistry::new()).await,
        Err(ConnectError::Rejected(403))
    ));
    // Unknown agent: 404.
    let emu2 = start(AgentEmulatorConfig {
        agent_ids: vec!["agent_known".into()],
        ..Default::default()
    })
    .await;
    assert!(matches!(
        connect(client_config(&emu2), ToolRegistry::new()).await,
        Err(ConnectError::Rejected(404))
    ));
    let recs = emu.wait_finished(2, T).await;
    assert!(
        recs.iter()
            .all(|r| r.request_target.contains("conversation_signature=emu_sig_"))
    );
}

#[tokio::test]
async fn garbage_from_the_server_is_tolerated_and_counted() {
    let emu = start(AgentEmulatorConfig {
        script: Script {
            first_message: false,
            garbage: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = connect(client_config(&emu), ToolRegistry::new())
        .await
        .unwrap();
    let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::Other(_))).await;
    assert!(
        matches!(evs.last(), Some(AgentEvent::Other(e)) if matches!(**e, ServerEvent::VadScore(_)))
    );
    // Still alive: a user message is answered.
    s.send_user_message("hello").unwrap();
    let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::AgentResponse { .. })).await;
    assert!(matches!(evs.last(), Some(AgentEvent::AgentResponse { .. })));
    let st = s.stats();
    assert_eq!(
        st.decode_errors, 2,
        "non-JSON text and an object without type"
    );
    assert_eq!(st.unknown_events, 1);
    assert_eq!(st.ignored_fields, 2);
    // The other client messages reach the server as documented.
    s.send_contextual_update("Caller pressed 1 (billing)", Some("dtmf".into()))
        .unwrap();
    s.send_user_activity().unwrap();
    s.close();
    let rec = finished(&emu).await;
    let msgs: Vec<serde_json::Value> = rec
        .messages
        .iter()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect();
    assert!(msgs.contains(&serde_json::json!({"type": "user_message", "text": "hello"})));
    assert!(msgs.contains(&serde_json::json!(
        {"type": "contextual_update", "text": "Caller pressed 1 (billing)", "context_id": "dtmf"}
    )));
    assert!(msgs.contains(&serde_json::json!({"type": "user_activity"})));
}

#[tokio::test]
async fn stalled_socket_drops_oldest_audio_and_never_blocks() {
    let emu = start(AgentEmulatorConfig {
        input_format: AudioFormat::Pcm {
            sample_rate: 16_000,
        },
        script: stall_after_metadata_default(),
        ..Default::default()
    })
    .await;
    let mut cfg = client_config(&emu);
    cfg.audio_queue_chunks = 8;
    let s = connect(cfg, ToolRegistry::new()).await.unwrap();
    // 400 chunks of ~64 KiB (26 MB: more than loopback socket buffers hold), each a distinct
    // length so the emulator's record says which ones arrived.
    let n = 400usize;
    let started = std::time::Instant::now();
    for i in 0..n {
        s.send_audio(vec![0u8; 64_000 + 2 * i]).unwrap();
    }
    let enqueue = started.elapsed();
    // Wait until the emulator has read the last chunk.
    let last_len = 64_000 + 2 * (n - 1);
    let deadline = tokio::time::Instant::now() + T;
    let received: Vec<usize> = loop {
        let rec = emu.records().into_iter().next().unwrap();
        let lens: Vec<usize> = rec
            .messages
            .iter()
            .filter_map(|m| {
                serde_json::from_str::<serde_json::Value>(m).ok()?["user_audio_chunk_bytes"]
                    .as_u64()
                    .map(|v| v as usize)
            })
            .collect();
        if lens.last() == Some(&last_len) || tokio::time::Instant::now() > deadline {
            break lens;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let st = s.stats();
    assert!(st.audio_chunks_dropped > 0, "{st:?}");
    assert_eq!(received.last(), Some(&last_len), "the newest audio is kept");
    assert_eq!(received.len() as u64 + st.audio_chunks_dropped, n as u64);
    assert!(received.windows(2).all(|w| w[0] < w[1]), "order kept");
    assert!(received.len() < n);
    eprintln!(
        "enqueued {n} chunks in {enqueue:?}; dropped {}",
        st.audio_chunks_dropped
    );
    s.close();
}

fn stall_after_metadata_default() -> Script {
    Script {
        first_message: false,
        stall_after_metadata: Some(Duration::from_millis(1_500)),
        ..Default::default()
    }
}

/// The service's real 60 s, on tokio's paused clock: the runtime auto-advances to the next timer
/// whenever it is idle. That is reliable over loopback sockets here because (a) loopback data is
/// readable as soon as the write returns, so the driver sees I/O before it considers advancing,
/// and (b) the only timers armed are the ones under test (pings off, connect/init timeouts an
/// hour). If auto-advance ever jumped during I/O, the test would fail loudly (a 1 h timeout),
/// not pass by accident.
#[tokio::test(start_paused = true)]
async fn silence_close_at_60_virtual_seconds_and_audio_resets_it() {
    let emu = start(AgentEmulatorConfig {
        ping_interval: None,
        init_timeout: Duration::from_secs(3600),
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut cfg = client_config(&emu);
    cfg.connect_timeout = Duration::from_secs(3600);
    let t0 = tokio::time::Instant::now();
    let mut s = connect(cfg, ToolRegistry::new()).await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "handshake took no virtual time"
    );
    // One chunk of audio at t = 30 s moves the deadline to t = 90 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    s.send_audio(vec![0xffu8; 160]).unwrap();
    let mut closed = None;
    while let Some(ev) = s.next_event().await {
        if let AgentEvent::Closed(c) = ev {
            closed = Some(c);
        }
    }
    let at = t0.elapsed();
    assert!(
        at >= Duration::from_secs(90) && at < Duration::from_secs(91),
        "closed at {at:?}"
    );
    let c = closed.unwrap();
    assert_eq!(c.code, Some(1002));
    assert_eq!(
        c.reason,
        CloseReason::Timeout {
            error_type: Some("transport_receive_timeout".into())
        }
    );
    assert!(
        c.error
            .and_then(|e| e.message)
            .is_some_and(|m| m.contains("No user input for 60 seconds"))
    );
}

/// A peer that never answers our close frame does not keep the conversation open: after the
/// close-handshake timeout the session ends as `ClientClosed` (paused clock, see above).
#[tokio::test(start_paused = true)]
async fn unanswered_client_close_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _init = ws.next().await;
        let meta = r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"c1"}}"#;
        ws.send(tokio_tungstenite::tungstenite::Message::text(meta))
            .await
            .unwrap();
        // Hold the socket without ever reading again: the close frame is never answered.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(ws);
    });
    let mut cfg = AgentConfig::new("a").with_base_url(format!("ws://{addr}"));
    cfg.connect_timeout = Duration::from_secs(3600);
    let mut s = connect(cfg, ToolRegistry::new()).await.unwrap();
    // Formats default to pcm_16000 when the metadata does not name them (JS client rule).
    assert_eq!(
        s.input_format(),
        AudioFormat::Pcm {
            sample_rate: 16_000
        }
    );
    let t0 = tokio::time::Instant::now();
    s.close();
    let evs = collect_until(&mut s, |_| false).await;
    let c = closed(&evs).unwrap();
    assert_eq!(c.reason, CloseReason::ClientClosed);
    assert_eq!(c.text, "close handshake timed out");
    let at = t0.elapsed();
    assert!(
        at >= trunkline_agent::client::CLOSE_HANDSHAKE_TIMEOUT && at < Duration::from_secs(3),
        "{at:?}"
    );
    server.abort();
}

#[tokio::test]
async fn end_call_percent_ends_every_other_conversation_and_the_record_keeps_what_loadgen_counts() {
    let emu = start(AgentEmulatorConfig {
        speed: 50.0,
        script: Script {
            end_call_percent: 50,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let audio = emu.response_audio();
    for (n, number) in ["+15550000001", "+15550000002"].into_iter().enumerate() {
        let mut cfg = client_config(&emu);
        cfg.initiation
            .dynamic_variables
            .insert("called_number".into(), DynamicVariable::from(number));
        let mut s = connect(cfg, ToolRegistry::new()).await.unwrap();
        // The greeting, then a DTMF digit as the gateway passes it: the caller's first turn.
        let mut got = 0;
        collect_until(&mut s, |e| {
            if let AgentEvent::Audio { audio: a, .. } = e {
                got += a.len();
            }
            got >= audio.len()
        })
        .await;
        s.send_user_message("5").unwrap();
        let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::UserTranscript { .. })).await;
        assert!(!evs.is_empty());
        let evs = collect_until(&mut s, |e| matches!(e, AgentEvent::AgentResponse { .. })).await;
        let said = evs.iter().find_map(|e| match e {
            AgentEvent::AgentResponse { text, .. } => Some(text.clone()),
            _ => None,
        });
        if n == 0 {
            assert_ne!(said.as_deref(), Some("Goodbye!"));
            collect_until(&mut s, |e| matches!(e, AgentEvent::Audio { .. })).await;
            s.close();
        } else {
            assert_eq!(said.as_deref(), Some("Goodbye!"));
            let evs = collect_until(&mut s, |_| false).await;
            let c = closed(&evs).expect("the agent closes");
            assert_eq!(c.code, Some(1000));
        }
        let recs = emu.wait_finished(n + 1, T).await;
        let rec = &recs[n];
        assert_eq!(rec.ends_call, n == 1, "every other conversation ends");
        assert_eq!(rec.dynamic_variables["called_number"], number);
        assert_eq!(rec.user_messages.len(), 1);
        assert_eq!(rec.user_messages[0].1, "5");
        assert!(rec.ended_at.is_some());
        // The greeting's chunks cover its audio contiguously, in send order.
        let greeting: Vec<_> = rec.audio_sent.iter().filter(|c| c.response == 0).collect();
        assert!(greeting.len() > 1);
        let mut at = 0;
        for c in &greeting {
            assert_eq!(c.offset, at);
            at += c.len;
        }
        assert_eq!(at, audio.len());
        assert!(greeting.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(
            rec.audio_sent.iter().any(|c| c.response == 1),
            "a second response"
        );
    }
}
