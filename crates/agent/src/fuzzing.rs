//! Entry points for the `agent_server_event` and `agent_client_message` fuzz targets
//! (`fuzz/fuzz_targets/`), also replayed on stable by `tests/fuzz_corpus.rs`.
//!
//! They panic only when an invariant is broken (that is the finding): decoding never panics, and
//! whatever decodes re-encodes to JSON that decodes to the same value.

use crate::protocol::{ClientMessage, ServerEvent};

/// Decodes `data` as a server event; a decoded event must round-trip through `to_json`.
pub fn server_event(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = ServerEvent::decode(text) else {
        return;
    };
    if let ServerEvent::Audio(a) = &decoded.event {
        let _ = a.decode_audio();
    }
    let json = decoded.event.to_json();
    let again = match ServerEvent::decode(&json) {
        Ok(d) => d.event,
        Err(e) => panic!("re-encoded event does not decode: {e}: {json}"),
    };
    match (&decoded.event, &again) {
        (ServerEvent::Unknown(a), ServerEvent::Unknown(b)) => {
            assert_eq!(a.event_type, b.event_type)
        }
        (a, b) => assert_eq!(a, b, "round trip changed the event: {json}"),
    }
}

/// Decodes `data` as a client message; a decoded message must round-trip through `to_json`.
pub fn client_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = ClientMessage::decode(text) else {
        return;
    };
    let json = msg.to_json();
    match ClientMessage::decode(&json) {
        Ok(again) => assert_eq!(msg, again, "round trip changed the message: {json}"),
        Err(e) => panic!("re-encoded message does not decode: {e}: {json}"),
    }
}
