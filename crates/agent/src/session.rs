//! The session API the call layer uses: an [`AgentSession`] (events in order) and a cloneable
//! [`AgentHandle`] (sending). Covers ELEVENLABS.md §2.3 (what a client may send), §2.4/§2.7
//! (typed events, interruption drop rule applied before audio is surfaced), §2.8 (typed close
//! reasons) and §2.9 (pings answered inside the client; `ping_ms` surfaced).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::close::Closed;
use crate::conn::{Control, Shared};
use crate::protocol::{
    AgentToolResponse, AudioFormat, ClientMessage, ClientToolCall, ClientToolResult,
    ContextualUpdate, ConversationInitiationMetadataEvent, ErrorEvent, ServerEvent,
};

/// What happened on the conversation, in wire order.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// Always the first event: the conversation id and both negotiated formats.
    Metadata {
        /// `conversation_id`.
        conversation_id: String,
        /// Encoding for `send_audio`.
        input_format: AudioFormat,
        /// Encoding of `Audio` events.
        output_format: AudioFormat,
    },
    /// Agent audio (already base64-decoded), not interrupted.
    Audio {
        /// The agent turn.
        event_id: i64,
        /// Bytes in `output_format`.
        audio: Bytes,
    },
    /// Flush playout now and drop queued audio with `event_id <= N` (the client already drops
    /// later-arriving chunks at or below `N`).
    Interruption {
        /// `N`.
        event_id: i64,
    },
    /// What the agent says this turn.
    AgentResponse {
        /// Text.
        text: String,
        /// The turn.
        event_id: Option<i64>,
    },
    /// What was actually heard after an interruption (boxed: rare, and the largest payload,
    /// which would set the size of every event queued to the call).
    AgentResponseCorrection(Box<ResponseCorrection>),
    /// Final user transcript.
    UserTranscript {
        /// Text.
        text: String,
        /// The turn.
        event_id: Option<i64>,
    },
    /// Tentative user transcript.
    TentativeUserTranscript {
        /// Text.
        text: String,
        /// The turn.
        event_id: Option<i64>,
    },
    /// A `client_tool_call`. When `handled` is true a registered handler is running and its
    /// result will be sent; otherwise answer with [`AgentHandle::send_tool_result`].
    ToolCall {
        /// The call.
        call: Box<ClientToolCall>,
        /// A registered handler took it.
        handled: bool,
    },
    /// `agent_tool_response` (e.g. `end_call`: stop the mic, drain playout; close 1000 follows).
    AgentToolResponse(Box<AgentToolResponse>),
    /// A ping was answered.
    Ping {
        /// Ping id.
        event_id: i64,
        /// The server's RTT estimate.
        ping_ms: Option<f64>,
    },
    /// An `error` event (the close follows).
    Error(Box<ErrorEvent>),
    /// Any other known event (vad score, agent typing, …).
    Other(Box<ServerEvent>),
    /// The conversation ended. Always the last event.
    Closed(Box<Closed>),
}

/// A snapshot of one connection's counters.
/// [`AgentEvent::AgentResponseCorrection`]: what the agent said after an interruption.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseCorrection {
    /// Intended text.
    pub original: String,
    /// Heard text.
    pub corrected: String,
    /// The turn.
    pub event_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// `user_audio_chunk` messages written.
    pub audio_chunks_sent: u64,
    /// Oldest queued audio chunks dropped because the socket stalled.
    pub audio_chunks_dropped: u64,
    /// `audio` events received.
    pub audio_events_received: u64,
    /// `audio` events dropped by the interruption rule.
    pub audio_events_dropped_interrupted: u64,
    /// Pings answered with a pong.
    pub pings_answered: u64,
    /// Last `ping_ms` from the server (rounded).
    pub last_ping_ms: u64,
    /// Events of an unknown type.
    pub unknown_events: u64,
    /// Unknown fields tolerated.
    pub ignored_fields: u64,
    /// Messages that were not valid events.
    pub decode_errors: u64,
    /// WebSocket messages written.
    pub messages_sent: u64,
    /// Text messages received.
    pub messages_received: u64,
}

/// The conversation is over; nothing can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("agent conversation is closed")]
pub struct SessionClosed;

/// Sending half of a session. Cheap to clone; every method is non-blocking.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Control>,
}

impl fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl AgentHandle {
    pub(crate) fn new(shared: Arc<Shared>, ctrl: mpsc::UnboundedSender<Control>) -> Self {
        AgentHandle { shared, ctrl }
    }

    /// Queues one chunk of caller audio (raw bytes in the input format; base64 is done by the
    /// writer). Never blocks: when the queue is full the oldest chunk is dropped and counted.
    pub fn send_audio(&self, audio: impl Into<Bytes>) -> Result<(), SessionClosed> {
        if self.is_closed() {
            return Err(SessionClosed);
        }
        self.shared.push_audio(audio.into());
        Ok(())
    }

    /// Sends any client message ahead of queued audio.
    pub fn send_message(&self, msg: &ClientMessage) -> Result<(), SessionClosed> {
        self.send_text(msg.to_json())
    }

    fn send_text(&self, text: String) -> Result<(), SessionClosed> {
        if self.is_closed() {
            return Err(SessionClosed);
        }
        self.ctrl
            .send(Control::Text(text))
            .map_err(|_| SessionClosed)
    }

    /// `contextual_update` (non-interrupting).
    pub fn send_contextual_update(
        &self,
        text: impl Into<String>,
        context_id: Option<String>,
    ) -> Result<(), SessionClosed> {
        self.send_message(&ClientMessage::ContextualUpdate(ContextualUpdate {
            text: text.into(),
            context_id,
        }))
    }

    /// `user_message` (text as if spoken).
    pub fn send_user_message(&self, text: impl Into<String>) -> Result<(), SessionClosed> {
        self.send_message(&ClientMessage::UserMessage { text: text.into() })
    }

    /// `user_activity` (resets the turn timeout).
    pub fn send_user_activity(&self) -> Result<(), SessionClosed> {
        self.send_message(&ClientMessage::UserActivity)
    }

    /// `client_tool_result`.
    pub fn send_tool_result(
        &self,
        tool_call_id: impl Into<String>,
        result: impl Into<String>,
        is_error: bool,
    ) -> Result<(), SessionClosed> {
        self.send_message(&ClientMessage::ClientToolResult(ClientToolResult {
            tool_call_id: tool_call_id.into(),
            result: result.into(),
            is_error,
        }))
    }

    /// Closes the conversation (close 1000). The event stream ends with
    /// `Closed(ClientClosed)`. Bounded: the connection is dropped at most
    /// [`crate::client::CLOSE_HANDSHAKE_TIMEOUT`] later, answered or not, even when a write is
    /// blocked on a peer that stopped reading.
    pub fn close(&self) {
        let _ = self.ctrl.send(Control::Close);
        // Also when the writer is blocked on a peer that stopped reading: the close is bounded.
        self.shared.request_shutdown();
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Counters so far.
    pub fn stats(&self) -> AgentStats {
        let s = &self.shared.stats;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        AgentStats {
            audio_chunks_sent: l(&s.audio_chunks_sent),
            audio_chunks_dropped: l(&s.audio_chunks_dropped),
            audio_events_received: l(&s.audio_events_received),
            audio_events_dropped_interrupted: l(&s.audio_events_dropped_interrupted),
            pings_answered: l(&s.pings_answered),
            last_ping_ms: l(&s.last_ping_ms),
            unknown_events: l(&s.unknown_events),
            ignored_fields: l(&s.ignored_fields),
            decode_errors: l(&s.decode_errors),
            messages_sent: l(&s.messages_sent),
            messages_received: l(&s.messages_received),
        }
    }
}

/// A conversation's events, in wire order.
///
/// Each event travels boxed: tokio's unbounded channels allocate their slots 32 at a time, so
/// the slot size is memory every call holds (32 inline events were ~2 KiB per call; 32 boxes
/// are 256 bytes), for one small allocation per event (a few per second).
#[derive(Debug)]
pub struct AgentEvents(mpsc::UnboundedReceiver<Box<AgentEvent>>);

impl AgentEvents {
    /// The next event; `None` after `Closed` has been delivered (and the reader has ended).
    pub async fn recv(&mut self) -> Option<AgentEvent> {
        self.0.recv().await.map(|e| *e)
    }

    /// Poll for the next event (as [`recv`](Self::recv)); `cx`'s waker is kept until one comes.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<AgentEvent>> {
        self.0.poll_recv(cx).map(|e| e.map(|e| *e))
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<AgentEvent, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|e| *e)
    }
}

/// One conversation: a handle for sending plus the ordered event stream.
#[derive(Debug)]
pub struct AgentSession {
    handle: AgentHandle,
    events: AgentEvents,
    metadata: ConversationInitiationMetadataEvent,
    input_format: AudioFormat,
    output_format: AudioFormat,
}

impl AgentSession {
    pub(crate) fn new(
        handle: AgentHandle,
        events: mpsc::UnboundedReceiver<Box<AgentEvent>>,
        metadata: ConversationInitiationMetadataEvent,
        input_format: AudioFormat,
        output_format: AudioFormat,
    ) -> Self {
        AgentSession {
            handle,
            events: AgentEvents(events),
            metadata,
            input_format,
            output_format,
        }
    }

    /// The next event; `None` after `Closed` has been delivered.
    pub async fn next_event(&mut self) -> Option<AgentEvent> {
        self.events.recv().await
    }

    /// A clone of the sending handle.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The conversation id.
    pub fn conversation_id(&self) -> &str {
        &self.metadata.conversation_id
    }

    /// The raw metadata event.
    pub fn metadata(&self) -> &ConversationInitiationMetadataEvent {
        &self.metadata
    }

    /// Encoding expected by `send_audio`.
    pub fn input_format(&self) -> AudioFormat {
        self.input_format
    }

    /// Encoding of `Audio` events.
    pub fn output_format(&self) -> AudioFormat {
        self.output_format
    }

    /// Splits into the handle and the raw event receiver (for a `select!` loop).
    pub fn into_parts(self) -> (AgentHandle, AgentEvents) {
        (self.handle, self.events)
    }
}

impl std::ops::Deref for AgentSession {
    type Target = AgentHandle;
    fn deref(&self) -> &AgentHandle {
        &self.handle
    }
}

/// What a tool handler returns: `Ok(result)` or `Err(error text)` (sent with `is_error`).
pub type ToolOutcome = Result<String, String>;
type ToolFuture = Pin<Box<dyn Future<Output = ToolOutcome> + Send>>;
type ToolFn = dyn Fn(ClientToolCall) -> ToolFuture + Send + Sync;

/// Handlers for `client_tool_call`, by tool name. The client runs the handler on its own task
/// and answers with `client_tool_result`.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    handlers: HashMap<String, Arc<ToolFn>>,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `tool_name`.
    pub fn register<F, Fut>(&mut self, tool_name: impl Into<String>, handler: F) -> &mut Self
    where
        F: Fn(ClientToolCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolOutcome> + Send + 'static,
    {
        self.handlers.insert(
            tool_name.into(),
            Arc::new(move |call| Box::pin(handler(call)) as ToolFuture),
        );
        self
    }

    /// Runs the handler for `call` if one is registered; returns whether one was.
    pub(crate) fn dispatch(
        &self,
        call: &ClientToolCall,
        ctrl: mpsc::UnboundedSender<Control>,
    ) -> bool {
        let Some(h) = self.handlers.get(&call.tool_name) else {
            return false;
        };
        let fut = h(call.clone());
        let id = call.tool_call_id.clone();
        tokio::spawn(async move {
            let (result, is_error) = match fut.await {
                Ok(r) => (r, false),
                Err(e) => (e, true),
            };
            let msg = ClientMessage::ClientToolResult(ClientToolResult {
                tool_call_id: id,
                result,
                is_error,
            });
            let _ = ctrl.send(Control::Text(msg.to_json()));
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event waiting for the call's task takes a slot of this size in its channel, which
    /// allocates 32 slots at a time (two blocks per call in steady state): rare, large payloads
    /// are boxed so that the common ones (audio, transcripts) set the size.
    #[test]
    fn agent_events_stay_small() {
        let size = std::mem::size_of::<AgentEvent>();
        assert!(size <= 48, "AgentEvent is {size} bytes");
    }
}
