//! Wire types of the ElevenLabs Conversational AI agent WebSocket.
//!
//! Implements the contract written down in `docs/ELEVENLABS.md` (shared docs):
//! - §2.3 every client → server message ([`ClientMessage`]); `user_audio_chunk` has **no** `type`
//!   field and is encoded by the hand-written fast path [`encode_user_audio_chunk`];
//! - §2.4 every server → client event ([`ServerEvent`]), each in its exact envelope
//!   `{"type": "<t>", "<t>_event": {…}}`; unknown event types and unknown fields are tolerated and
//!   counted ([`Decoded::ignored_fields`], [`ServerEvent::Unknown`]), never fatal;
//! - §2.5 audio formats ([`AudioFormat`], `pcm_<rate>` / `ulaw_8000`);
//! - §2.7 the interruption drop rule, stricter Python reading (`event_id <= N` is dropped), as the
//!   reusable [`InterruptionFilter`];
//! - §2.8 the close codes and `error` event types, mapped in [`crate::close`].
//!
//! Event ids are integers (`i64`) everywhere except `agent_reasoning_response_part`, whose id is a
//! string in the contract (kept as a JSON value).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// Errors decoding a message from the wire.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or a known event whose payload has the wrong shape.
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// A JSON object without a `type` field (and, for client messages, no `user_audio_chunk`).
    #[error("message has no type")]
    MissingType,
    /// A known event type whose payload object is absent.
    #[error("event {event_type} has no {key} payload")]
    MissingPayload {
        /// The `type` of the event.
        event_type: &'static str,
        /// The payload key that was expected.
        key: &'static str,
    },
    /// Bad base64 in an audio payload.
    #[error("invalid base64 audio: {0}")]
    Base64(#[from] base64::DecodeError),
    /// An object key that serde_json reserves for its raw values (`raw_value` feature): as the
    /// first key of an object it makes serde_json read the value as JSON text, so the message
    /// could not be re-encoded as it was read.
    #[error("object key {RAW_VALUE_TOKEN:?} is reserved")]
    ReservedKey,
}

/// The key serde_json's `raw_value` feature gives a meaning of its own (it serialises a
/// `RawValue` as a one-key object and reads such an object back as raw JSON text).
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether `v` holds an object with the key [`RAW_VALUE_TOKEN`] at any depth (serde_json limits
/// nesting to 128 levels, so the recursion is bounded).
fn has_raw_value_token(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key(RAW_VALUE_TOKEN) || m.values().any(has_raw_value_token),
        Value::Array(a) => a.iter().any(has_raw_value_token),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Audio formats (§2.5)
// ---------------------------------------------------------------------------------------------

/// An agent audio format: `pcm_<rate>` (16-bit signed little-endian mono) or `ulaw_8000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioFormat {
    /// 16-bit signed little-endian mono PCM at the given sample rate.
    Pcm {
        /// Samples per second.
        sample_rate: u32,
    },
    /// G.711 µ-law at 8 kHz.
    Ulaw8000,
}

/// A format string that is not `pcm_<rate>` or `ulaw_8000`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported audio format {0:?}")]
pub struct UnsupportedFormat(pub String);

impl AudioFormat {
    /// The JS client's default when the metadata does not name an input format.
    pub const DEFAULT: AudioFormat = AudioFormat::Pcm {
        sample_rate: 16_000,
    };

    /// Samples per second.
    pub fn sample_rate(self) -> u32 {
        match self {
            AudioFormat::Pcm { sample_rate } => sample_rate,
            AudioFormat::Ulaw8000 => 8_000,
        }
    }

    /// Bytes per sample (2 for PCM16, 1 for µ-law).
    pub fn bytes_per_sample(self) -> usize {
        match self {
            AudioFormat::Pcm { .. } => 2,
            AudioFormat::Ulaw8000 => 1,
        }
    }

    /// Bytes of audio for `ms` milliseconds.
    pub fn bytes_for_ms(self, ms: u32) -> usize {
        (self.sample_rate() as usize * ms as usize / 1000) * self.bytes_per_sample()
    }
}

impl FromStr for AudioFormat {
    type Err = UnsupportedFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UnsupportedFormat(s.to_owned());
        let (kind, rate) = s.split_once('_').ok_or_else(bad)?;
        let rate: u32 = rate.parse().map_err(|_| bad())?;
        match kind {
            "pcm" if (8_000..=192_000).contains(&rate) => {
                Ok(AudioFormat::Pcm { sample_rate: rate })
            }
            "ulaw" if rate == 8_000 => Ok(AudioFormat::Ulaw8000),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioFormat::Pcm { sample_rate } => write!(f, "pcm_{sample_rate}"),
            AudioFormat::Ulaw8000 => f.write_str("ulaw_8000"),
        }
    }
}

impl Serialize for AudioFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AudioFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Client → server (§2.3)
// ---------------------------------------------------------------------------------------------

/// A dynamic variable value: string, integer, float or boolean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DynamicVariable {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A non-integer number.
    Float(f64),
    /// A string.
    String(String),
}

impl From<&str> for DynamicVariable {
    fn from(v: &str) -> Self {
        DynamicVariable::String(v.to_owned())
    }
}
impl From<String> for DynamicVariable {
    fn from(v: String) -> Self {
        DynamicVariable::String(v)
    }
}
impl From<i64> for DynamicVariable {
    fn from(v: i64) -> Self {
        DynamicVariable::Int(v)
    }
}
impl From<bool> for DynamicVariable {
    fn from(v: bool) -> Self {
        DynamicVariable::Bool(v)
    }
}

/// `conversation_initiation_client_data`: the first message a client sends.
///
/// `dynamic_variables` is a **top-level** field (nesting it elsewhere is the jambonz bug that
/// gets the socket closed with 1008).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationInitiationClientData {
    /// Per-conversation overrides (only honoured when enabled in the agent's security settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_config_override: Option<ConversationConfigOverride>,
    /// Extra body forwarded to a custom LLM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_llm_extra_body: Option<Value>,
    /// Values for `{{variables}}` in the agent's prompt, first message and tools.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dynamic_variables: BTreeMap<String, DynamicVariable>,
    /// An opaque user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Which client is speaking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_info: Option<SourceInfo>,
    /// Tool mocking (testing feature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_mock_config: Option<Value>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `conversation_config_override`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationConfigOverride {
    /// Agent overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentOverride>,
    /// TTS overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tts: Option<TtsOverride>,
    /// ASR overrides (e.g. `keywords`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asr: Option<Value>,
    /// Conversation overrides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationOverride>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `conversation_config_override.agent`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentOverride {
    /// Replaces the whole prompt object (including tool ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptOverride>,
    /// What the agent says first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_message: Option<String>,
    /// Language code, e.g. `en`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// MCP server ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_mcp_server_ids: Option<Vec<String>>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `conversation_config_override.agent.prompt`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptOverride {
    /// The system prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// LLM name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<String>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `conversation_config_override.tts`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TtsOverride {
    /// Voice id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice_id: Option<String>,
    /// Stability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stability: Option<f64>,
    /// Speed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Similarity boost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity_boost: Option<f64>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `conversation_config_override.conversation`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationOverride {
    /// Text-only conversation (no audio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_only: Option<bool>,
    /// Fields not modelled here, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `source_info`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceInfo {
    /// Client name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Client version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `{"user_audio_chunk": "<base64>"}` (no `type` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserAudioChunk {
    /// Base64 of the audio bytes in the negotiated `user_input_audio_format`.
    pub user_audio_chunk: String,
}

impl UserAudioChunk {
    /// Decodes the base64 audio.
    pub fn decode_audio(&self) -> Result<Vec<u8>, DecodeError> {
        Ok(BASE64.decode(self.user_audio_chunk.as_bytes())?)
    }
}

/// `client_tool_result`. `result` is a string in the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientToolResult {
    /// The id from the `client_tool_call`.
    pub tool_call_id: String,
    /// The result text.
    pub result: String,
    /// Whether the tool failed.
    #[serde(default)]
    pub is_error: bool,
}

/// `contextual_update`: non-interrupting context; only the latest per `context_id` is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextualUpdate {
    /// The context text.
    pub text: String,
    /// Optional dedup key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
}

/// `feedback.score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackScore {
    /// 👍
    Like,
    /// 👎
    Dislike,
}

/// Every typed client → server message (internally tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TypedClientMessage {
    ConversationInitiationClientData(Box<ConversationInitiationClientData>),
    Pong {
        event_id: i64,
    },
    ClientToolResult(ClientToolResult),
    ContextualUpdate(ContextualUpdate),
    UserMessage {
        text: String,
    },
    UserActivity,
    Feedback {
        event_id: i64,
        score: Option<FeedbackScore>,
    },
    McpToolApprovalResult {
        tool_call_id: String,
        is_approved: bool,
    },
    MultimodalMessage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<Value>,
    },
}

/// A client → server message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `{"user_audio_chunk": …}`.
    UserAudioChunk(UserAudioChunk),
    /// `conversation_initiation_client_data`.
    ConversationInitiationClientData(Box<ConversationInitiationClientData>),
    /// `pong` echoing a ping's `event_id`.
    Pong {
        /// The ping's event id.
        event_id: i64,
    },
    /// `client_tool_result`.
    ClientToolResult(ClientToolResult),
    /// `contextual_update`.
    ContextualUpdate(ContextualUpdate),
    /// `user_message` (text as if spoken; triggers a turn).
    UserMessage {
        /// The text.
        text: String,
    },
    /// `user_activity` (resets the turn timeout).
    UserActivity,
    /// `feedback`.
    Feedback {
        /// The agent response being rated.
        event_id: i64,
        /// `like`, `dislike` or null.
        score: Option<FeedbackScore>,
    },
    /// `mcp_tool_approval_result`.
    McpToolApprovalResult {
        /// Tool call id.
        tool_call_id: String,
        /// Approved or not.
        is_approved: bool,
    },
    /// `multimodal_message` (kept as raw JSON parts).
    MultimodalMessage {
        /// The `text` part.
        text: Option<Value>,
        /// The `file` part.
        file: Option<Value>,
    },
    /// A message with a `type` this crate does not know.
    Unknown {
        /// Its `type`.
        message_type: String,
        /// The whole message.
        raw: Value,
    },
}

const CLIENT_TYPES: &[&str] = &[
    "conversation_initiation_client_data",
    "pong",
    "client_tool_result",
    "contextual_update",
    "user_message",
    "user_activity",
    "feedback",
    "mcp_tool_approval_result",
    "multimodal_message",
];

impl ClientMessage {
    /// Parses a client message (used by the emulator; not a hot path on the client side).
    pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
        let value: Value = serde_json::from_str(text)?;
        Self::from_value(value)
    }

    /// Parses a client message from a JSON value.
    pub fn from_value(value: Value) -> Result<ClientMessage, DecodeError> {
        let Value::Object(obj) = &value else {
            return Err(DecodeError::MissingType);
        };
        // Read as an ordinary key here, it would be re-encoded first (a `Map` sorts its keys)
        // and so change the message's meaning: refuse it.
        if has_raw_value_token(&value) {
            return Err(DecodeError::ReservedKey);
        }
        let Some(ty) = obj.get("type") else {
            if obj.contains_key("user_audio_chunk") {
                return Ok(ClientMessage::UserAudioChunk(serde_json::from_value(
                    value,
                )?));
            }
            return Err(DecodeError::MissingType);
        };
        let ty = ty.as_str().ok_or(DecodeError::MissingType)?.to_owned();
        if !CLIENT_TYPES.contains(&ty.as_str()) {
            return Ok(ClientMessage::Unknown {
                message_type: ty,
                raw: value,
            });
        }
        let typed: TypedClientMessage = serde_json::from_value(value)?;
        Ok(typed.into())
    }

    /// Serialises to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        match self {
            // Not the hot path (that is `encode_user_audio_chunk`): the string may hold anything.
            ClientMessage::UserAudioChunk(c) => serde_json::to_string(c).unwrap_or_default(),
            ClientMessage::Unknown { raw, .. } => raw.to_string(),
            other => match TypedClientMessage::try_from(other.clone()) {
                // Serialising these plain data types cannot fail (string keys only).
                Ok(t) => serde_json::to_string(&t).unwrap_or_default(),
                Err(()) => String::new(),
            },
        }
    }

    /// The `type` of the message (`user_audio_chunk` for audio).
    pub fn message_type(&self) -> &str {
        match self {
            ClientMessage::UserAudioChunk(_) => "user_audio_chunk",
            ClientMessage::ConversationInitiationClientData(_) => CLIENT_TYPES[0],
            ClientMessage::Pong { .. } => CLIENT_TYPES[1],
            ClientMessage::ClientToolResult(_) => CLIENT_TYPES[2],
            ClientMessage::ContextualUpdate(_) => CLIENT_TYPES[3],
            ClientMessage::UserMessage { .. } => CLIENT_TYPES[4],
            ClientMessage::UserActivity => CLIENT_TYPES[5],
            ClientMessage::Feedback { .. } => CLIENT_TYPES[6],
            ClientMessage::McpToolApprovalResult { .. } => CLIENT_TYPES[7],
            ClientMessage::MultimodalMessage { .. } => CLIENT_TYPES[8],
            ClientMessage::Unknown { message_type, .. } => message_type,
        }
    }
}

impl From<TypedClientMessage> for ClientMessage {
    fn from(t: TypedClientMessage) -> Self {
        match t {
            TypedClientMessage::ConversationInitiationClientData(d) => {
                ClientMessage::ConversationInitiationClientData(d)
            }
            TypedClientMessage::Pong { event_id } => ClientMessage::Pong { event_id },
            TypedClientMessage::ClientToolResult(r) => ClientMessage::ClientToolResult(r),
            TypedClientMessage::ContextualUpdate(u) => ClientMessage::ContextualUpdate(u),
            TypedClientMessage::UserMessage { text } => ClientMessage::UserMessage { text },
            TypedClientMessage::UserActivity => ClientMessage::UserActivity,
            TypedClientMessage::Feedback { event_id, score } => {
                ClientMessage::Feedback { event_id, score }
            }
            TypedClientMessage::McpToolApprovalResult {
                tool_call_id,
                is_approved,
            } => ClientMessage::McpToolApprovalResult {
                tool_call_id,
                is_approved,
            },
            TypedClientMessage::MultimodalMessage { text, file } => {
                ClientMessage::MultimodalMessage { text, file }
            }
        }
    }
}

impl TryFrom<ClientMessage> for TypedClientMessage {
    type Error = ();
    fn try_from(m: ClientMessage) -> Result<Self, ()> {
        Ok(match m {
            ClientMessage::ConversationInitiationClientData(d) => {
                TypedClientMessage::ConversationInitiationClientData(d)
            }
            ClientMessage::Pong { event_id } => TypedClientMessage::Pong { event_id },
            ClientMessage::ClientToolResult(r) => TypedClientMessage::ClientToolResult(r),
            ClientMessage::ContextualUpdate(u) => TypedClientMessage::ContextualUpdate(u),
            ClientMessage::UserMessage { text } => TypedClientMessage::UserMessage { text },
            ClientMessage::UserActivity => TypedClientMessage::UserActivity,
            ClientMessage::Feedback { event_id, score } => {
                TypedClientMessage::Feedback { event_id, score }
            }
            ClientMessage::McpToolApprovalResult {
                tool_call_id,
                is_approved,
            } => TypedClientMessage::McpToolApprovalResult {
                tool_call_id,
                is_approved,
            },
            ClientMessage::MultimodalMessage { text, file } => {
                TypedClientMessage::MultimodalMessage { text, file }
            }
            ClientMessage::UserAudioChunk(_) | ClientMessage::Unknown { .. } => return Err(()),
        })
    }
}

impl Serialize for ClientMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClientMessage::UserAudioChunk(c) => c.serialize(s),
            ClientMessage::Unknown { raw, .. } => raw.serialize(s),
            other => TypedClientMessage::try_from(other.clone())
                .map_err(|()| serde::ser::Error::custom("unserialisable"))?
                .serialize(s),
        }
    }
}

/// What a `user_audio_chunk` message holds before its base64 text …
const USER_AUDIO_HEAD: &str = "{\"user_audio_chunk\":\"";
/// … and after it.
const USER_AUDIO_TAIL: &str = "\"}";

/// Encodes raw audio bytes as a `user_audio_chunk` message (one allocation, base64 written
/// straight into the output).
pub fn encode_user_audio_chunk(audio: &[u8]) -> String {
    let b64 = base64::encoded_len(audio.len(), true).unwrap_or(0);
    let mut out = String::with_capacity(USER_AUDIO_HEAD.len() + b64 + USER_AUDIO_TAIL.len());
    out.push_str(USER_AUDIO_HEAD);
    BASE64.encode_string(audio, &mut out);
    out.push_str(USER_AUDIO_TAIL);
    out
}

/// Like [`encode_user_audio_chunk`], written at the end of `buf` and split off as the message's
/// bytes. The writer keeps `buf` for the whole connection: once the previous message has been
/// written and dropped, `buf` takes its storage back, so a chunk costs no allocation.
pub fn encode_user_audio_chunk_into(audio: &[u8], buf: &mut bytes::BytesMut) -> bytes::Bytes {
    let b64 = base64::encoded_len(audio.len(), true).unwrap_or(0);
    buf.clear();
    buf.reserve(USER_AUDIO_HEAD.len() + b64 + USER_AUDIO_TAIL.len());
    buf.extend_from_slice(USER_AUDIO_HEAD.as_bytes());
    let start = buf.len();
    buf.resize(start + b64, 0);
    let written = BASE64.encode_slice(audio, &mut buf[start..]).unwrap_or(0);
    buf.truncate(start + written);
    buf.extend_from_slice(USER_AUDIO_TAIL.as_bytes());
    buf.split().freeze()
}

/// Encodes a `pong` for the given ping event id.
pub fn encode_pong(event_id: i64) -> String {
    format!("{{\"type\":\"pong\",\"event_id\":{event_id}}}")
}

// ---------------------------------------------------------------------------------------------
// Server → client (§2.4)
// ---------------------------------------------------------------------------------------------

/// `conversation_initiation_metadata_event`. Formats are kept as strings so that a format this
/// crate does not know does not make the whole event unreadable; see [`Self::output_format`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationInitiationMetadataEvent {
    /// The conversation id.
    pub conversation_id: String,
    /// What the agent sends in `audio` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_output_audio_format: Option<String>,
    /// What the agent expects in `user_audio_chunk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_input_audio_format: Option<String>,
}

impl ConversationInitiationMetadataEvent {
    /// The parsed output format ([`AudioFormat::DEFAULT`] when absent).
    pub fn output_format(&self) -> Result<AudioFormat, UnsupportedFormat> {
        self.agent_output_audio_format
            .as_deref()
            .map_or(Ok(AudioFormat::DEFAULT), str::parse)
    }
    /// The parsed input format ([`AudioFormat::DEFAULT`] when absent, as the JS client does).
    pub fn input_format(&self) -> Result<AudioFormat, UnsupportedFormat> {
        self.user_input_audio_format
            .as_deref()
            .map_or(Ok(AudioFormat::DEFAULT), str::parse)
    }
}

/// Character alignment of an audio chunk (numbers kept as sent: int or float).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Alignment {
    /// Characters.
    pub chars: Vec<String>,
    /// Start time of each character, ms.
    pub char_start_times_ms: Vec<Number>,
    /// Duration of each character, ms.
    pub char_durations_ms: Vec<Number>,
}

/// `audio_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioEvent {
    /// Base64 audio in `agent_output_audio_format`.
    pub audio_base_64: String,
    /// The agent turn the chunk belongs to.
    pub event_id: i64,
    /// Optional alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alignment: Option<Alignment>,
}

impl AudioEvent {
    /// Decodes the base64 audio.
    pub fn decode_audio(&self) -> Result<Vec<u8>, DecodeError> {
        Ok(BASE64.decode(self.audio_base_64.as_bytes())?)
    }
}

/// `interruption_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionEvent {
    /// Drop audio with `event_id <= this`.
    pub event_id: i64,
}

/// `ping_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingEvent {
    /// Echo in the pong.
    pub event_id: i64,
    /// The server's RTT estimate (int, float or null).
    #[serde(default)]
    pub ping_ms: Option<Number>,
}

impl PingEvent {
    /// `ping_ms` as a float, if present.
    pub fn ping_ms(&self) -> Option<f64> {
        self.ping_ms.as_ref().and_then(Number::as_f64)
    }
}

/// `agent_response_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResponseEvent {
    /// What the agent says.
    pub agent_response: String,
    /// Same id as the turn's audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
}

/// `agent_response_correction_event` (text actually heard after an interruption).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResponseCorrectionEvent {
    /// What the agent meant to say.
    pub original_agent_response: String,
    /// What was heard.
    pub corrected_agent_response: String,
    /// The turn id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
}

/// `user_transcription_event` / `tentative_user_transcription_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserTranscriptionEvent {
    /// The transcript.
    pub user_transcript: String,
    /// The turn id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
}

/// `client_tool_call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientToolCall {
    /// Tool name.
    pub tool_name: String,
    /// Echo in `client_tool_result`.
    pub tool_call_id: String,
    /// Arguments.
    #[serde(default)]
    pub parameters: Value,
    /// The turn id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
}

/// `vad_score_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VadScoreEvent {
    /// 0..1.
    pub vad_score: f64,
}

/// `tentative_agent_response_internal_event` ("not for public use").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TentativeAgentResponseEvent {
    /// Tentative text.
    pub tentative_agent_response: String,
}

/// `turn_probability_internal_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnProbabilityEvent {
    /// 0..1.
    pub turn_probability: f64,
}

/// `agent_tool_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentToolRequest {
    /// e.g. `end_call`.
    pub tool_name: String,
    /// Tool call id.
    pub tool_call_id: String,
    /// e.g. `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_type: Option<String>,
    /// Turn id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
}

/// `agent_tool_response` and `agent_tool_response_full_payload` (the latter adds the last three
/// fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentToolResponse {
    /// e.g. `end_call`.
    pub tool_name: String,
    /// Tool call id.
    pub tool_call_id: String,
    /// e.g. `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_type: Option<String>,
    /// Whether the tool failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Whether it was called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_called: Option<bool>,
    /// Turn id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    /// Full payload only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_tool_result: Option<String>,
    /// Full payload only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Full payload only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_blocked: Option<bool>,
}

impl AgentToolResponse {
    /// True for the `end_call` system tool: the server is about to close with 1000.
    pub fn is_end_call(&self) -> bool {
        self.tool_name == "end_call"
    }
}

/// `text_response_part` / `reasoning_response_part`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePart {
    /// Text.
    #[serde(default)]
    pub text: String,
    /// `start`, `delta` or `stop`.
    #[serde(rename = "type")]
    pub part_type: String,
    /// Integer for chat parts, string for reasoning parts (experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Value>,
}

/// `context_usage_event`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContextUsageEvent {
    /// Turn id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<i64>,
    /// Model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<i64>,
    /// Token limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_limit_tokens: Option<i64>,
}

/// `agent_typing_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTypingEvent {
    /// Typing or not.
    pub is_typing: bool,
    /// Duration, may be null.
    #[serde(default)]
    pub duration_ms: Option<Number>,
}

/// `error_event`: sent when the connection is closing due to an error.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorEvent {
    /// The close code that follows (1002, 1008, 1011…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Human message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One of the `ErrorType` enum values (`missing_dynamic_variable`, `override_error`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Debug message (often null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_message: Option<Value>,
    /// Details (often null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// An event whose `type` this crate does not know (ignored by both SDKs; counted here).
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownEvent {
    /// Its `type`.
    pub event_type: String,
    /// The raw JSON text.
    pub raw: String,
}

macro_rules! server_events {
    (
        payload { $( $(#[$pm:meta])* $pv:ident ( $pty:ty ) = $ptag:literal / $pkey:literal, )* }
        unit { $( $(#[$um:meta])* $uv:ident = $utag:literal, )* }
    ) => {
        /// A server → client event (ELEVENLABS.md §2.4).
        #[derive(Debug, Clone, PartialEq)]
        pub enum ServerEvent {
            $( $(#[$pm])* $pv($pty), )*
            $( $(#[$um])* $uv, )*
            /// Any other `type`.
            Unknown(UnknownEvent),
        }

        impl ServerEvent {
            /// The event's `type` string.
            pub fn event_type(&self) -> &str {
                match self {
                    $( ServerEvent::$pv(_) => $ptag, )*
                    $( ServerEvent::$uv => $utag, )*
                    ServerEvent::Unknown(u) => &u.event_type,
                }
            }

            fn from_envelope(env: RawEnvelope<'_>, text: &str, ignored: &mut u32)
                -> Result<ServerEvent, DecodeError>
            {
                let Some(ty) = env.ty else { return Err(DecodeError::MissingType) };
                let mut fields = env.fields;
                let event = match &*ty {
                    $( $ptag => {
                        let idx = fields.iter().position(|(k, _)| k == $pkey)
                            .ok_or(DecodeError::MissingPayload { event_type: $ptag, key: $pkey })?;
                        let (_, raw) = fields.swap_remove(idx);
                        ServerEvent::$pv(parse_payload(raw, ignored)?)
                    } )*
                    $( $utag => ServerEvent::$uv, )*
                    other => {
                        return Ok(ServerEvent::Unknown(UnknownEvent {
                            event_type: other.to_owned(),
                            raw: text.to_owned(),
                        }));
                    }
                };
                *ignored += fields.len() as u32;
                Ok(event)
            }
        }

        impl Serialize for ServerEvent {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $( ServerEvent::$pv(p) => {
                        let mut m = s.serialize_map(Some(2))?;
                        m.serialize_entry("type", $ptag)?;
                        m.serialize_entry($pkey, p)?;
                        m.end()
                    } )*
                    $( ServerEvent::$uv => {
                        let mut m = s.serialize_map(Some(1))?;
                        m.serialize_entry("type", $utag)?;
                        m.end()
                    } )*
                    // Verbatim: the raw text was valid JSON when received (re-parsing it as a
                    // `Value` could fail, e.g. on numbers out of f64 range).
                    ServerEvent::Unknown(u) => RawValue::from_string(u.raw.clone())
                        .map_err(serde::ser::Error::custom)?
                        .serialize(s),
                }
            }
        }
    };
}

server_events! {
    payload {
        /// `conversation_initiation_metadata`.
        ConversationInitiationMetadata(ConversationInitiationMetadataEvent)
            = "conversation_initiation_metadata" / "conversation_initiation_metadata_event",
        /// `audio`.
        Audio(AudioEvent) = "audio" / "audio_event",
        /// `interruption`.
        Interruption(InterruptionEvent) = "interruption" / "interruption_event",
        /// `ping`.
        Ping(PingEvent) = "ping" / "ping_event",
        /// `agent_response`.
        AgentResponse(AgentResponseEvent) = "agent_response" / "agent_response_event",
        /// `agent_response_correction`.
        AgentResponseCorrection(AgentResponseCorrectionEvent)
            = "agent_response_correction" / "agent_response_correction_event",
        /// `user_transcript`.
        UserTranscript(UserTranscriptionEvent) = "user_transcript" / "user_transcription_event",
        /// `tentative_user_transcript`.
        TentativeUserTranscript(UserTranscriptionEvent)
            = "tentative_user_transcript" / "tentative_user_transcription_event",
        /// `client_tool_call`.
        ClientToolCall(ClientToolCall) = "client_tool_call" / "client_tool_call",
        /// `vad_score`.
        VadScore(VadScoreEvent) = "vad_score" / "vad_score_event",
        /// `internal_tentative_agent_response`.
        InternalTentativeAgentResponse(TentativeAgentResponseEvent)
            = "internal_tentative_agent_response" / "tentative_agent_response_internal_event",
        /// `internal_turn_probability`.
        InternalTurnProbability(TurnProbabilityEvent)
            = "internal_turn_probability" / "turn_probability_internal_event",
        /// `agent_tool_request`.
        AgentToolRequest(AgentToolRequest) = "agent_tool_request" / "agent_tool_request",
        /// `agent_tool_response`.
        AgentToolResponse(AgentToolResponse) = "agent_tool_response" / "agent_tool_response",
        /// `agent_tool_response_full_payload`.
        AgentToolResponseFullPayload(AgentToolResponse)
            = "agent_tool_response_full_payload" / "agent_tool_response_full_payload",
        /// `agent_chat_response_part`.
        AgentChatResponsePart(ResponsePart) = "agent_chat_response_part" / "text_response_part",
        /// `agent_reasoning_response_part` (experimental).
        AgentReasoningResponsePart(ResponsePart)
            = "agent_reasoning_response_part" / "reasoning_response_part",
        /// `context_usage`.
        ContextUsage(ContextUsageEvent) = "context_usage" / "context_usage_event",
        /// `asr_initiation_metadata`.
        AsrInitiationMetadata(Map<String, Value>)
            = "asr_initiation_metadata" / "asr_initiation_metadata_event",
        /// `agent_typing`.
        AgentTyping(AgentTypingEvent) = "agent_typing" / "agent_typing_event",
        /// `mcp_tool_call` (kept as raw JSON).
        McpToolCall(Value) = "mcp_tool_call" / "mcp_tool_call",
        /// `mcp_connection_status` (kept as raw JSON).
        McpConnectionStatus(Value) = "mcp_connection_status" / "mcp_connection_status",
        /// `rich_content` (kept as raw JSON).
        RichContent(Value) = "rich_content" / "rich_content",
        /// `error`: the connection is closing because of an error.
        Error(ErrorEvent) = "error" / "error_event",
    }
    unit {
        /// `guardrail_triggered`.
        GuardrailTriggered = "guardrail_triggered",
        /// `external_agent_connected`.
        ExternalAgentConnected = "external_agent_connected",
        /// `external_agent_disconnected`.
        ExternalAgentDisconnected = "external_agent_disconnected",
    }
}

/// A decoded server event plus how many fields were ignored while reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The event.
    pub event: ServerEvent,
    /// Fields present on the wire that this crate does not model (tolerated, counted).
    pub ignored_fields: u32,
}

impl ServerEvent {
    /// Decodes one server event from a WebSocket text message.
    ///
    /// One pass over the envelope (payload kept as a borrowed raw slice, so the key order does not
    /// matter), then one pass over the payload of the known type.
    pub fn decode(text: &str) -> Result<Decoded, DecodeError> {
        let env: RawEnvelope<'_> = serde_json::from_str(text)?;
        let mut ignored = 0;
        let event = ServerEvent::from_envelope(env, text, &mut ignored)?;
        Ok(Decoded {
            event,
            ignored_fields: ignored,
        })
    }

    /// Serialises to the JSON text the server sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn parse_payload<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    ignored: &mut u32,
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let v = serde_ignored::deserialize(&mut de, |path| {
        tracing::debug!(%path, "ignored unknown field in agent event");
        *ignored += 1;
    })?;
    de.end()?;
    Ok(v)
}

/// The outer object of a server event: `type` plus raw payload slices.
struct RawEnvelope<'a> {
    ty: Option<Cow<'a, str>>,
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for RawEnvelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnvelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an agent event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut env = RawEnvelope {
                    ty: None,
                    fields: Vec::with_capacity(1),
                };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "type" {
                        env.ty = Some(map.next_value::<Cow<'de, str>>()?);
                    } else {
                        env.fields.push((key, map.next_value::<&'de RawValue>()?));
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Interruption drop rule (§2.7)
// ---------------------------------------------------------------------------------------------

/// The interruption drop rule: after `interruption{event_id: N}`, every audio chunk with
/// `event_id <= N` is dropped (the stricter Python SDK reading; the JS client keeps `== N`).
///
/// Small and `Copy` so the call layer can apply it again on its playout pacer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterruptionFilter {
    last_interrupt: Option<i64>,
}

impl InterruptionFilter {
    /// A filter that admits everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an interruption. Ids only move forward (a stale, smaller id does not re-admit).
    pub fn interrupt(&mut self, event_id: i64) {
        self.last_interrupt = Some(self.last_interrupt.map_or(event_id, |n| n.max(event_id)));
    }

    /// True if audio of `event_id` may be played.
    pub fn admits(&self, event_id: i64) -> bool {
        self.last_interrupt.is_none_or(|n| event_id > n)
    }

    /// The last interruption id, if any.
    pub fn last_interrupt(&self) -> Option<i64> {
        self.last_interrupt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_format_parses_and_displays() {
        for s in [
            "pcm_8000",
            "pcm_16000",
            "pcm_22050",
            "pcm_24000",
            "pcm_44100",
            "pcm_48000",
            "ulaw_8000",
        ] {
            let f: AudioFormat = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert_eq!(
            "ulaw_8000".parse::<AudioFormat>().unwrap().bytes_for_ms(20),
            160
        );
        assert_eq!(
            "pcm_16000".parse::<AudioFormat>().unwrap().bytes_for_ms(20),
            640
        );
        for bad in ["ulaw_16000", "opus_48000", "pcm", "pcm_x", "pcm_0", ""] {
            assert!(bad.parse::<AudioFormat>().is_err(), "{bad}");
        }
    }

    #[test]
    fn interruption_filter_drops_at_and_below_boundary() {
        let mut f = InterruptionFilter::new();
        assert!(f.admits(0));
        f.interrupt(7);
        assert!(!f.admits(6));
        assert!(!f.admits(7));
        assert!(f.admits(8));
        f.interrupt(3); // stale: must not re-admit 4..=7
        assert!(!f.admits(5));
        assert_eq!(f.last_interrupt(), Some(7));
    }

    /// Found by the `agent_client_message` fuzzer: read as an ordinary key, serde_json's raw
    /// value token came back first on re-encoding (keys sorted) and was then read as raw JSON
    /// text, so the message did not survive its own round trip.
    #[test]
    fn client_message_with_serde_json_raw_value_key_is_refused() {
        for text in [
            r#"{ "type": "r%s","$serde_json::private::RawValue": "" }"#,
            r#"{"type":"user_message","text":"hi","$serde_json::private::RawValue":"1"}"#,
            r#"{"type":"x","a":[{"b":1,"$serde_json::private::RawValue":"{}"}]}"#,
            r#"{"user_audio_chunk":"","z":{"y":2,"$serde_json::private::RawValue":"1"}}"#,
        ] {
            assert!(
                matches!(ClientMessage::decode(text), Err(DecodeError::ReservedKey)),
                "{text}: {:?}",
                ClientMessage::decode(text)
            );
            crate::fuzzing::client_message(text.as_bytes());
        }
        // The same key as an object's *first* key is serde_json's business: it reads the value
        // as JSON text, and what it reads round-trips.
        let first = r#"{"$serde_json::private::RawValue":"{\"type\":\"user_activity\"}"}"#;
        assert_eq!(
            ClientMessage::decode(first).ok(),
            Some(ClientMessage::UserActivity)
        );
        crate::fuzzing::client_message(first.as_bytes());
        // An ordinary unknown message still decodes and round-trips.
        let unknown = r#"{"type":"r%s","$other":""}"#;
        assert!(matches!(
            ClientMessage::decode(unknown),
            Ok(ClientMessage::Unknown { .. })
        ));
        crate::fuzzing::client_message(unknown.as_bytes());
    }

    #[test]
    fn audio_chunk_fast_path_matches_serde() {
        let audio: Vec<u8> = (0..160u8).collect();
        let fast = encode_user_audio_chunk(&audio);
        let msg = ClientMessage::decode(&fast).unwrap();
        let ClientMessage::UserAudioChunk(c) = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(c.decode_audio().unwrap(), audio);
        assert_eq!(serde_json::to_string(&msg).unwrap(), fast);
        assert!(!fast.contains("\"type\""));
        let mut buf = bytes::BytesMut::new();
        for len in [160, 0, 1, 2, 159] {
            let into = encode_user_audio_chunk_into(&audio[..len], &mut buf);
            assert_eq!(into, encode_user_audio_chunk(&audio[..len]).as_bytes());
        }
        let big: Vec<u8> = (0..=255u8).cycle().take(640).collect();
        let into = encode_user_audio_chunk_into(&big, &mut buf);
        assert_eq!(into, encode_user_audio_chunk(&big).as_bytes());
    }

    #[test]
    fn unknown_fields_and_types_are_counted_not_fatal() {
        let d = ServerEvent::decode(
            r#"{"extra":1,"type":"interruption","interruption_event":{"event_id":3,"new":true}}"#,
        )
        .unwrap();
        assert_eq!(
            d.event,
            ServerEvent::Interruption(InterruptionEvent { event_id: 3 })
        );
        assert_eq!(d.ignored_fields, 2);
        let d = ServerEvent::decode(r#"{"type":"brand_new","x":{}}"#).unwrap();
        assert!(matches!(d.event, ServerEvent::Unknown(ref u) if u.event_type == "brand_new"));
        assert!(ServerEvent::decode("not json").is_err());
        assert!(ServerEvent::decode(r#"{"audio_event":{}}"#).is_err());
        assert!(ServerEvent::decode(r#"{"type":"audio"}"#).is_err());
    }
}
