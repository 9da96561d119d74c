//! Every JSON example of ELEVENLABS.md §2.3 (client → server) and §2.4 (server → client)
//! deserialises to the right type and round-trips.
//!
//! The examples are copied verbatim from the doc except where the doc elides content with `…`
//! outside a string (`agent_tool_response_full_payload`, `mcp_tool_call`,
//! `mcp_connection_status`, `rich_content`), where a concrete value of the documented shape is
//! used instead.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use serde_json::Value;
use trunkline_agent::protocol::{ClientMessage, DynamicVariable, FeedbackScore, ServerEvent};

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Decode, re-encode, decode again: same typed value, and the same JSON (modulo explicit nulls,
/// which the types model as absent).
fn server_round_trip(json: &str) -> ServerEvent {
    let d = ServerEvent::decode(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(
        d.ignored_fields, 0,
        "no unknown fields in doc example {json}"
    );
    let out = d.event.to_json();
    let again = ServerEvent::decode(&out).unwrap().event;
    assert_eq!(again, d.event, "typed round trip of {json}");
    let original: Value = serde_json::from_str(json).unwrap();
    let reencoded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        strip_nulls(reencoded),
        strip_nulls(original),
        "json round trip"
    );
    d.event
}

fn client_round_trip(json: &str) -> ClientMessage {
    let m = ClientMessage::decode(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    let out = m.to_json();
    let again = ClientMessage::decode(&out).unwrap();
    assert_eq!(again, m, "typed round trip of {json}");
    let original: Value = serde_json::from_str(json).unwrap();
    let reencoded: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        strip_nulls(reencoded),
        strip_nulls(original),
        "json round trip"
    );
    m
}

#[test]
fn conversation_initiation_client_data_example() {
    let json = r#"{
  "type": "conversation_initiation_client_data",
  "conversation_config_override": {
    "agent": {
      "prompt": { "prompt": "You are …", "llm": "gpt-4o" },
      "first_message": "Hi, this is Ada from Acme calling about …",
      "language": "en",
      "native_mcp_server_ids": []
    },
    "tts": { "voice_id": "21m00Tcm4TlvDq8ikWAM", "stability": 0.5, "speed": 1.0, "similarity_boost": 0.75 },
    "asr": { "keywords": ["Acme"] },
    "conversation": { "text_only": false }
  },
  "custom_llm_extra_body": { "temperature": 0.7 },
  "dynamic_variables": { "customer_name": "Ada", "order_id": 1234, "vip": true },
  "user_id": "caller-+15551234567",
  "source_info": { "source": "…", "version": "…" },
  "tool_mock_config": { "mocking_strategy": "none" }
}"#;
    let ClientMessage::ConversationInitiationClientData(d) = client_round_trip(json) else {
        panic!("wrong type")
    };
    // dynamic_variables are top level, typed.
    assert_eq!(
        d.dynamic_variables["customer_name"],
        DynamicVariable::String("Ada".into())
    );
    assert_eq!(d.dynamic_variables["order_id"], DynamicVariable::Int(1234));
    assert_eq!(d.dynamic_variables["vip"], DynamicVariable::Bool(true));
    let o = d.conversation_config_override.as_ref().unwrap();
    let agent = o.agent.as_ref().unwrap();
    assert_eq!(agent.language.as_deref(), Some("en"));
    assert_eq!(
        agent.prompt.as_ref().unwrap().llm.as_deref(),
        Some("gpt-4o")
    );
    assert_eq!(o.tts.as_ref().unwrap().stability, Some(0.5));
    assert_eq!(o.conversation.as_ref().unwrap().text_only, Some(false));
    assert!(d.extra.is_empty() && o.extra.is_empty());
    assert_eq!(d.user_id.as_deref(), Some("caller-+15551234567"));
}

#[test]
fn minimal_initiation_is_only_type() {
    let m = client_round_trip(r#"{"type":"conversation_initiation_client_data"}"#);
    assert!(
        matches!(m, ClientMessage::ConversationInitiationClientData(d) if d.dynamic_variables.is_empty())
    );
}

#[test]
fn client_message_examples() {
    let m = client_round_trip(r#"{ "user_audio_chunk": "<base64 PCM16-LE or μ-law bytes>" }"#);
    assert!(matches!(m, ClientMessage::UserAudioChunk(_)));
    assert!(!m.to_json().contains("type"));

    assert_eq!(
        client_round_trip(r#"{ "type": "pong", "event_id": 12345 }"#),
        ClientMessage::Pong { event_id: 12345 }
    );
    let m = client_round_trip(
        r#"{ "type": "client_tool_result", "tool_call_id": "tool_call_123", "result": "Account is active", "is_error": false }"#,
    );
    assert!(
        matches!(m, ClientMessage::ClientToolResult(r) if r.tool_call_id == "tool_call_123" && r.result == "Account is active" && !r.is_error)
    );
    let m = client_round_trip(
        r#"{ "type": "contextual_update", "text": "Caller pressed 1 (billing)", "context_id": "dtmf" }"#,
    );
    assert!(
        matches!(m, ClientMessage::ContextualUpdate(u) if u.context_id.as_deref() == Some("dtmf"))
    );
    assert_eq!(
        client_round_trip(
            r#"{ "type": "user_message", "text": "I would like to upgrade my account" }"#
        ),
        ClientMessage::UserMessage {
            text: "I would like to upgrade my account".into()
        }
    );
    assert_eq!(
        client_round_trip(r#"{ "type": "user_activity" }"#),
        ClientMessage::UserActivity
    );
    assert_eq!(
        client_round_trip(r#"{ "type": "feedback", "event_id": 42, "score": "like" }"#),
        ClientMessage::Feedback {
            event_id: 42,
            score: Some(FeedbackScore::Like)
        }
    );
    assert_eq!(
        client_round_trip(r#"{ "type": "feedback", "event_id": 42, "score": null }"#),
        ClientMessage::Feedback {
            event_id: 42,
            score: None
        }
    );
    assert_eq!(
        client_round_trip(
            r#"{ "type": "mcp_tool_approval_result", "tool_call_id": "…", "is_approved": true }"#
        ),
        ClientMessage::McpToolApprovalResult {
            tool_call_id: "…".into(),
            is_approved: true
        }
    );
    let m = client_round_trip(
        r#"{ "type": "multimodal_message", "text": {"type": "user_message", "text": "…"}, "file": {"type": "file_input", "file_id": "…"} }"#,
    );
    assert!(matches!(m, ClientMessage::MultimodalMessage { .. }));
    let m = client_round_trip(r#"{"type":"something_new","x":1}"#);
    assert!(
        matches!(m, ClientMessage::Unknown { ref message_type, .. } if message_type == "something_new")
    );
}

#[test]
fn server_event_examples() {
    use ServerEvent as E;
    let cases: &[(&str, &str)] = &[
        (
            "conversation_initiation_metadata",
            r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":
  {"conversation_id":"conv_123","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"ulaw_8000"}}"#,
        ),
        (
            "audio",
            r#"{"type":"audio","audio_event":{"audio_base_64":"<b64>","event_id":7,
  "alignment":{"chars":["H","i"],"char_start_times_ms":[0,60],"char_durations_ms":[60,80]}}}"#,
        ),
        (
            "interruption",
            r#"{"type":"interruption","interruption_event":{"event_id":7}}"#,
        ),
        (
            "ping",
            r#"{"type":"ping","ping_event":{"event_id":12345,"ping_ms":50}}"#,
        ),
        (
            "agent_response",
            r#"{"type":"agent_response","agent_response_event":{"agent_response":"Hello, how can I help?","event_id":7}}"#,
        ),
        (
            "agent_response_correction",
            r#"{"type":"agent_response_correction","agent_response_correction_event":
  {"original_agent_response":"Let me tell you about the complete history...",
   "corrected_agent_response":"Let me tell you about...","event_id":7}}"#,
        ),
        (
            "user_transcript",
            r#"{"type":"user_transcript","user_transcription_event":{"user_transcript":"Hi there","event_id":6}}"#,
        ),
        (
            "tentative_user_transcript",
            r#"{"type":"tentative_user_transcript","tentative_user_transcription_event":{"user_transcript":"Hi th","event_id":6}}"#,
        ),
        (
            "client_tool_call",
            r#"{"type":"client_tool_call","client_tool_call":{"tool_name":"lookup","tool_call_id":"tool_call_123",
  "parameters":{"user_id":"user_123"},"event_id":8}}"#,
        ),
        (
            "vad_score",
            r#"{"type":"vad_score","vad_score_event":{"vad_score":0.95}}"#,
        ),
        (
            "internal_tentative_agent_response",
            r#"{"type":"internal_tentative_agent_response","tentative_agent_response_internal_event":
  {"tentative_agent_response":"I'd be happy to help..."}}"#,
        ),
        (
            "internal_turn_probability",
            r#"{"type":"internal_turn_probability","turn_probability_internal_event":{"turn_probability":0.8}}"#,
        ),
        (
            "agent_tool_request",
            r#"{"type":"agent_tool_request","agent_tool_request":{"tool_name":"end_call","tool_call_id":"…","tool_type":"system","event_id":9}}"#,
        ),
        (
            "agent_tool_response",
            r#"{"type":"agent_tool_response","agent_tool_response":{"tool_name":"end_call","tool_call_id":"…","tool_type":"system",
  "is_error":false,"is_called":true,"event_id":9}}"#,
        ),
        // Doc: `{… same + "full_tool_result":"…","truncated":false,"is_blocked":false}`.
        (
            "agent_tool_response_full_payload",
            r#"{"type":"agent_tool_response_full_payload","agent_tool_response_full_payload":{"tool_name":"end_call","tool_call_id":"…","tool_type":"system",
  "is_error":false,"is_called":true,"event_id":9,"full_tool_result":"…","truncated":false,"is_blocked":false}}"#,
        ),
        (
            "agent_chat_response_part",
            r#"{"type":"agent_chat_response_part","text_response_part":{"text":"…","type":"start","event_id":7}}"#,
        ),
        (
            "agent_reasoning_response_part",
            r#"{"type":"agent_reasoning_response_part","reasoning_response_part":{"text":"…","type":"delta","event_id":"…"}}"#,
        ),
        (
            "context_usage",
            r#"{"type":"context_usage","context_usage_event":{"event_id":9,"model":"…","context_tokens":1234,"context_limit_tokens":128000}}"#,
        ),
        (
            "asr_initiation_metadata",
            r#"{"type":"asr_initiation_metadata","asr_initiation_metadata_event":{}}"#,
        ),
        ("guardrail_triggered", r#"{"type":"guardrail_triggered"}"#),
        (
            "agent_typing",
            r#"{"type":"agent_typing","agent_typing_event":{"is_typing":true,"duration_ms":null}}"#,
        ),
        (
            "external_agent_connected",
            r#"{"type":"external_agent_connected"}"#,
        ),
        (
            "external_agent_disconnected",
            r#"{"type":"external_agent_disconnected"}"#,
        ),
        // Doc: `{…state: loading|awaiting_approval|success|failure}`.
        (
            "mcp_tool_call",
            r#"{"type":"mcp_tool_call","mcp_tool_call":{"tool_call_id":"t1","state":"loading"}}"#,
        ),
        // Doc: `{"integrations":[…]}`.
        (
            "mcp_connection_status",
            r#"{"type":"mcp_connection_status","mcp_connection_status":{"integrations":[]}}"#,
        ),
        (
            "rich_content",
            r#"{"type":"rich_content","rich_content":{"rich_content_id":"…","component":"item_card","props":{},"event_id":9}}"#,
        ),
        (
            "error",
            r#"{"type":"error","error_event":{"code":1008,"message":"…","error_type":"missing_dynamic_variable",
  "reason":"…","debug_message":null,"details":null}}"#,
        ),
    ];
    for (ty, json) in cases {
        let ev = server_round_trip(json);
        assert_eq!(ev.event_type(), *ty, "{json}");
        assert!(!matches!(ev, E::Unknown(_)), "{ty} must be a known type");
    }

    // Spot-check the fields that the call layer relies on.
    let E::ConversationInitiationMetadata(m) = server_round_trip(cases[0].1) else {
        panic!()
    };
    assert_eq!(m.conversation_id, "conv_123");
    assert_eq!(m.output_format().unwrap().to_string(), "ulaw_8000");
    assert_eq!(m.input_format().unwrap().to_string(), "ulaw_8000");
    let E::Audio(a) = server_round_trip(cases[1].1) else {
        panic!()
    };
    assert_eq!(a.event_id, 7);
    assert_eq!(a.alignment.unwrap().chars, vec!["H", "i"]);
    let E::Ping(p) = server_round_trip(cases[3].1) else {
        panic!()
    };
    assert_eq!((p.event_id, p.ping_ms()), (12345, Some(50.0)));
    let E::ClientToolCall(c) = server_round_trip(cases[8].1) else {
        panic!()
    };
    assert_eq!(c.parameters["user_id"], "user_123");
    let E::AgentToolResponse(r) = server_round_trip(cases[13].1) else {
        panic!()
    };
    assert!(r.is_end_call());
    let E::Error(e) = server_round_trip(cases[cases.len() - 1].1) else {
        panic!()
    };
    assert_eq!(e.code, Some(1008));
    assert_eq!(e.error_type.as_deref(), Some("missing_dynamic_variable"));
}

#[test]
fn ping_ms_null_and_float_are_accepted() {
    for json in [
        r#"{"type":"ping","ping_event":{"event_id":1,"ping_ms":null}}"#,
        r#"{"type":"ping","ping_event":{"event_id":1,"ping_ms":12.5}}"#,
        r#"{"ping_event":{"event_id":1},"type":"ping"}"#,
    ] {
        assert!(matches!(
            ServerEvent::decode(json).unwrap().event,
            ServerEvent::Ping(_)
        ));
    }
}
