//! The agent emulator is as strict as the real server (ELEVENLABS.md §2): what a client must not
//! send is recorded in `ConnectionRecord::violations`, and ends the conversation with 1008 where
//! the real server does; pings start within the first second and a missing pong is caught within
//! the pong deadline. Raw WebSocket clients, so each rule is exercised on its own; the real client
//! (`trunkline-agent`) must produce no violation at all.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trunkline_agent::protocol::{ConversationConfigOverride, ServerEvent};
use trunkline_agent::{AgentConfig, AgentEvent, AudioFormat, ToolRegistry, connect};
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig, ConnectionRecord, Script};

const T: Duration = Duration::from_secs(10);
const INIT: &str = r#"{"type":"conversation_initiation_client_data"}"#;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start(cfg: AgentEmulatorConfig) -> AgentEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    AgentEmulator::start(addr, cfg).await.unwrap()
}

fn quiet() -> AgentEmulatorConfig {
    AgentEmulatorConfig {
        ping_interval: None,
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn raw(emu: &AgentEmulator) -> Ws {
    let url = format!("{}/v1/convai/conversation?agent_id=a", emu.ws_base_url());
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Reads until the server closes (or `T`): the `error_type`s of `error` events, the `type`s of
/// the events, and the close code.
async fn until_close(ws: &mut Ws) -> (Vec<String>, Vec<String>, Option<u16>) {
    let (mut errors, mut types) = (Vec::new(), Vec::new());
    while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
        match m {
            Message::Text(t) => {
                let ev = ServerEvent::decode(t.as_str()).unwrap().event;
                types.push(ev.event_type().to_owned());
                if let ServerEvent::Error(e) = ev {
                    errors.push(e.error_type.unwrap_or_default());
                }
            }
            Message::Close(f) => return (errors, types, f.map(|f| u16::from(f.code))),
            _ => {}
        }
    }
    (errors, types, None)
}

async fn finished(emu: &AgentEmulator) -> ConnectionRecord {
    emu.wait_finished(1, T).await.into_iter().next().unwrap()
}

/// Where ELEVENLABS.md is silent on what the real server does, the emulator records the
/// violation and keeps the conversation going.
#[tokio::test]
async fn silent_rules_are_recorded_without_closing() {
    let emu = start(AgentEmulatorConfig {
        input_format: AudioFormat::Pcm {
            sample_rate: 16_000,
        },
        ..quiet()
    })
    .await;
    let mut ws = raw(&emu).await;
    ws.send(Message::text(INIT)).await.unwrap();
    for m in [
        Message::text(r#"{"type":"brand_new_client_message","x":1}"#),
        Message::binary(vec![1u8, 2, 3, 4]),
        Message::text(INIT),
        Message::text(r#"{"user_audio_chunk":"AAAA"}"#), // 3 bytes: odd
        Message::text(r#"{"user_audio_chunk":"AAAAAA=="}"#), // 4 bytes: fine
        Message::text(r#"{"type":"pong","event_id":77}"#), // no such ping
        Message::text(r#"{"type":"user_activity"}"#),
    ] {
        ws.send(m).await.unwrap();
    }
    // The conversation is still open: it answers a user_message with a turn.
    ws.send(Message::text(r#"{"type":"user_message","text":"hi"}"#))
        .await
        .unwrap();
    let mut transcript = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
        if let Message::Text(t) = m
            && t.contains("user_transcript")
        {
            transcript = true;
            break;
        }
    }
    assert!(transcript, "the conversation went on");
    ws.close(None).await.unwrap();
    let rec = finished(&emu).await;
    assert_eq!(rec.close_code, None, "the emulator did not close");
    let v = &rec.violations;
    assert_eq!(v.len(), 5, "{v:#?}");
    assert!(
        v[0].contains("unknown message type \"brand_new_client_message\""),
        "{v:#?}"
    );
    assert!(v[1].contains("binary frame (4 bytes)"), "{v:#?}");
    assert!(
        v[2].contains("second conversation_initiation_client_data"),
        "{v:#?}"
    );
    assert!(v[3].contains("3 bytes: odd length"), "{v:#?}");
    assert!(v[4].contains("pong for event_id 77"), "{v:#?}");
}

/// µ-law has one byte per sample: any length is whole samples.
#[tokio::test]
async fn odd_length_is_fine_for_ulaw() {
    let emu = start(quiet()).await;
    let mut ws = raw(&emu).await;
    ws.send(Message::text(INIT)).await.unwrap();
    ws.send(Message::text(r#"{"user_audio_chunk":"AAAA"}"#))
        .await
        .unwrap();
    ws.close(None).await.unwrap();
    let rec = finished(&emu).await;
    assert_eq!(rec.caller_audio.len(), 3);
    assert!(rec.violations.is_empty(), "{:#?}", rec.violations);
}

/// Where the real server closes with 1008 (§2.3, §2.8), so does the emulator, after an `error`
/// event, and the violation is recorded.
#[tokio::test]
async fn rules_the_real_server_enforces_close_1008() {
    struct Case {
        cfg: AgentEmulatorConfig,
        send: Vec<&'static str>,
        error_type: &'static str,
        violation: &'static str,
    }
    let cases = [
        Case {
            cfg: quiet(),
            send: vec![INIT, "this is not json {"],
            error_type: "invalid_message",
            violation: "invalid message",
        },
        Case {
            cfg: quiet(),
            send: vec![INIT, r#"{"type":"pong"}"#], // missing event_id
            error_type: "invalid_message",
            violation: "invalid message",
        },
        Case {
            cfg: quiet(),
            send: vec![r#"{"type":"user_activity"}"#],
            error_type: "invalid_message",
            violation: "first message is \"user_activity\"",
        },
        Case {
            cfg: AgentEmulatorConfig {
                allow_overrides: false,
                ..quiet()
            },
            send: vec![
                r#"{"type":"conversation_initiation_client_data","conversation_config_override":{"agent":{"first_message":"Hi"}}}"#,
            ],
            error_type: "override_error",
            violation: "conversation_config_override sent",
        },
        Case {
            cfg: AgentEmulatorConfig {
                required_dynamic_variables: vec!["customer_name".into()],
                ..quiet()
            },
            send: vec![INIT],
            error_type: "missing_dynamic_variable",
            violation: "Missing required dynamic variables",
        },
    ];
    for case in cases {
        let emu = start(case.cfg).await;
        let mut ws = raw(&emu).await;
        for m in &case.send {
            ws.send(Message::text(*m)).await.unwrap();
        }
        let (errors, _, code) = until_close(&mut ws).await;
        assert_eq!(code, Some(1008), "{:?}", case.send);
        assert_eq!(errors, vec![case.error_type.to_owned()], "{:?}", case.send);
        let rec = finished(&emu).await;
        assert_eq!(rec.violations.len(), 1, "{:#?}", rec.violations);
        assert!(
            rec.violations[0].contains(case.violation),
            "{:?}: {:#?}",
            case.send,
            rec.violations
        );
    }
    // A binary frame as the first message.
    let emu = start(quiet()).await;
    let mut ws = raw(&emu).await;
    ws.send(Message::binary(vec![0u8; 2])).await.unwrap();
    let (errors, _, code) = until_close(&mut ws).await;
    assert_eq!(
        (errors.as_slice(), code),
        (&["invalid_message".to_owned()][..], Some(1008))
    );
    let rec = finished(&emu).await;
    assert!(
        rec.violations[0].contains("binary frame"),
        "{:#?}",
        rec.violations
    );
}

/// By default the first ping comes within the first second and a pong is due within 1–2 s; a
/// client that never answers is closed 1002 with a violation. Paused clock: the runtime jumps to
/// the next timer when idle, so the times below are the emulator's schedule, not this machine's
/// scheduling (only the timers under test are armed: no speech, init done, silence at 60 s).
#[tokio::test(start_paused = true)]
async fn first_ping_within_a_second_and_a_missing_pong_closes_1002() {
    let cfg = AgentEmulatorConfig {
        script: Script {
            first_message: false,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(cfg.first_ping_after < Duration::from_secs(1));
    assert!(
        cfg.pong_timeout >= Duration::from_secs(1) && cfg.pong_timeout <= Duration::from_secs(2)
    );
    let emu = start(cfg.clone()).await;
    let mut ws = raw(&emu).await;
    ws.send(Message::text(INIT)).await.unwrap();
    let mut meta_at = None;
    let mut ping_at = None;
    let mut close = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(T, ws.next()).await {
        let now = tokio::time::Instant::now();
        match m {
            Message::Text(t) => match ServerEvent::decode(t.as_str()).unwrap().event {
                ServerEvent::ConversationInitiationMetadata(_) => meta_at = Some(now),
                ServerEvent::Ping(p) => {
                    assert_eq!(p.event_id, 1);
                    ping_at.get_or_insert(now);
                }
                _ => {}
            },
            Message::Close(f) => {
                close = Some((f.map(|f| u16::from(f.code)), now));
                break;
            }
            _ => {}
        }
    }
    let (meta_at, ping_at) = (meta_at.unwrap(), ping_at.unwrap());
    let (code, closed_at) = close.unwrap();
    assert!(
        ping_at - meta_at < Duration::from_secs(1),
        "{:?}",
        ping_at - meta_at
    );
    assert_eq!(code, Some(1002));
    let waited = closed_at - ping_at;
    assert!(
        waited >= cfg.pong_timeout && waited < cfg.pong_timeout + Duration::from_millis(100),
        "closed {waited:?} after the ping"
    );
    let rec = finished(&emu).await;
    assert_eq!(rec.violations.len(), 1, "{:#?}", rec.violations);
    assert!(
        rec.violations[0].contains("no pong for ping 1"),
        "{:#?}",
        rec.violations
    );
}

/// The real client answers pings and speaks only the contract: no violation, with the default
/// (early) ping schedule, in both input formats.
#[tokio::test]
async fn the_agent_client_commits_no_violation() {
    for input in [
        AudioFormat::Ulaw8000,
        AudioFormat::Pcm {
            sample_rate: 16_000,
        },
    ] {
        let emu = start(AgentEmulatorConfig {
            input_format: input,
            ping_interval: Some(Duration::from_millis(200)),
            ..Default::default()
        })
        .await;
        let mut cfg = AgentConfig::new("agent_test").with_base_url(emu.ws_base_url());
        cfg.initiation.conversation_config_override = Some(ConversationConfigOverride::default());
        let mut s = connect(cfg, ToolRegistry::new()).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let mut pings = 0;
        while t0.elapsed() < Duration::from_millis(1200) {
            s.send_audio(vec![0u8; input.bytes_for_ms(20)]).unwrap();
            if let Ok(Some(AgentEvent::Ping { .. })) =
                tokio::time::timeout(Duration::from_millis(20), s.next_event()).await
            {
                pings += 1;
            }
        }
        s.close();
        while tokio::time::timeout(T, s.next_event())
            .await
            .ok()
            .flatten()
            .is_some()
        {}
        let rec = finished(&emu).await;
        assert!(
            pings >= 2 && rec.pongs >= 2,
            "{pings} pings, {} pongs",
            rec.pongs
        );
        assert!(rec.violations.is_empty(), "{input}: {:#?}", rec.violations);
    }
}

/// A browser's `@elevenlabs/client` asks for the `convai` subprotocol (and `bearer.<token>` with
/// an authorization); the server selects `convai` (a browser fails a handshake that selects
/// none), and records it with the page's `Origin`.
#[tokio::test]
async fn the_convai_subprotocol_of_browser_clients_is_selected() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let emu = start(quiet()).await;
    let url = format!(
        "{}/v1/convai/conversation?agent_id=a&source=js_sdk&version=1.25.0",
        emu.ws_base_url()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "convai, bearer.abc".parse().unwrap(),
    );
    req.headers_mut()
        .insert("Origin", "http://127.0.0.1:8080".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("convai")
    );
    ws.send(Message::text(INIT)).await.unwrap();
    ws.close(None).await.unwrap();
    let rec = finished(&emu).await;
    assert_eq!(rec.subprotocol.as_deref(), Some("convai"));
    assert_eq!(rec.origin.as_deref(), Some("http://127.0.0.1:8080"));
    assert!(rec.violations.is_empty(), "{:?}", rec.violations);
    // A server client (no subprotocol asked) gets none.
    let mut plain = raw(&emu).await;
    plain.close(None).await.unwrap();
    let recs = emu.wait_finished(2, T).await;
    assert_eq!(recs[1].subprotocol, None);
}
