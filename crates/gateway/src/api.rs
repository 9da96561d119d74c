//! The HTTP API (ARCHITECTURE.md, "HTTP API"), on axum.
//!
//! - `POST /api/call/outbound` — the widget's trigger: `{"phoneNumber": "+E164"}` (also
//!   `to_number` / `to`; optional `dynamic_variables`, `first_message`) →
//!   `{"success": true, "conversation_id": …, "call_sid": …}`. Errors are
//!   `{"success": false, "error": "<stable message>"}`.
//! - `POST /v1/convai/twilio/outbound-call`, `POST /v1/convai/sip-trunk/outbound-call` — the
//!   ElevenLabs request and response shapes (`xi-api-key` accepted as the token).
//! - `GET /api/calls`, `GET /api/calls/{call_sid}`, `POST /api/calls/{call_sid}/hangup`,
//!   `GET /api/calls/{call_sid}/recording` (token; never to a browser `Origin`).
//! - `GET /api/calls/{call_sid}/events?token=…` — the visitor's live call status (Server-Sent
//!   Events), authorised by the per-call `status_token` of the trigger's answer ([`crate::events`]).
//! - `GET /widget/trunkline-widget.js` — the browser module (`web/trunkline-widget.js`, compiled
//!   in), cacheable, with an ETag.
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json`.
//!
//! Browser requests: CORS preflight answered for allowed origins only, and any request carrying
//! an `Origin` that is not allowed is refused (403), so a page elsewhere cannot use a visitor's
//! browser against the trigger. Bodies are size-limited, must be JSON, and unknown fields are
//! refused: nothing is placed unless the request is exactly understood.

// Handlers return `Result<_, Response>` so an early refusal is a `?` away; a `Response` is large
// but these paths are per request, not per packet.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use trunkline_call::CallRecord;

use crate::events::{BAD_TOKEN, CallEvents, StatusEvent, Subscription, is_final_status};
use crate::policy::{Client, Destination, Policy, Refusal};

/// A request to place an outbound call, after policy.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundRequest {
    /// The destination, E.164.
    pub to: Destination,
    /// Dynamic variables for the agent (top level of `conversation_initiation_client_data`).
    pub dynamic_variables: BTreeMap<String, Value>,
    /// First-message override for the agent.
    pub first_message: Option<String>,
    /// Who asked.
    pub client: Client,
    /// The cluster-wide admission this call holds (`cluster.enabled`): released when the call
    /// ends or is not placed.
    pub cluster_lease: Option<String>,
}

/// A call that was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Our call id.
    pub call_sid: String,
    /// The agent's conversation id, when already known.
    pub conversation_id: Option<String>,
    /// The SIP Call-ID of the INVITE.
    pub sip_call_id: Option<String>,
}

/// Why a call could not be placed after policy admitted it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Shutting down or not ready.
    #[error("Service unavailable")]
    Unavailable,
    /// Something failed before the INVITE left.
    #[error("{0}")]
    Failed(String),
    /// `agent.connect_at = "trigger"`: the agent conversation could not be started within
    /// `agent.connect_timeout_secs`, so no call was placed (504, stable message).
    #[error("{}", AGENT_UNAVAILABLE)]
    AgentUnavailable,
}

/// The stable error of a trigger whose agent could not be reached (`connect_at = "trigger"`).
pub const AGENT_UNAVAILABLE: &str = "Agent unavailable: the call was not placed";

/// Filters for `GET /api/calls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `initiated`, `ringing`, `in-progress`, `completed`, `busy`, `no-answer`, `failed`, …
    pub status: Option<String>,
    /// `outbound` / `inbound`.
    pub direction: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
    /// Records created before this call (cursor: the last `call_sid` of the previous page).
    pub before: Option<String>,
}

/// A boxed future, for the object-safe [`CallService`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API needs from the gateway.
pub trait CallService: Send + Sync + 'static {
    /// Calls up now (for the concurrency cap).
    fn active_calls(&self) -> usize;
    /// Whether new calls can be taken (SIP bound, not shutting down).
    fn ready(&self) -> bool;
    /// Place a call.
    fn place(&self, req: OutboundRequest) -> BoxFuture<'_, Result<Placed, PlaceError>>;
    /// One record.
    fn get(&self, call_sid: String) -> BoxFuture<'_, Option<CallRecord>>;
    /// A page of records, newest first.
    fn list(&self, q: ListQuery) -> BoxFuture<'_, Vec<CallRecord>>;
    /// Hang up a call; false if unknown or already over.
    fn hangup(&self, call_sid: String) -> BoxFuture<'_, bool>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// A refusal happened (for metrics).
    fn refused(&self, _label: &'static str) {}
    /// The per-call status hub; without one, answers carry no `status_token` and the event
    /// stream refuses every token.
    fn events(&self) -> Option<Arc<CallEvents>> {
        None
    }
    /// The cluster membership (`cluster.enabled`): global limits, calls on other nodes.
    fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        None
    }
}

/// Shared state of the HTTP layer.
pub struct ApiState {
    /// Policy (rate-limit state inside).
    pub policy: Mutex<Policy>,
    /// The gateway.
    pub calls: Arc<dyn CallService>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// The router. Serve with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: Arc<ApiState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/api/call/outbound", post(outbound).options(preflight))
        .route(
            "/v1/convai/twilio/outbound-call",
            post(elevenlabs_twilio).options(preflight),
        )
        .route(
            "/v1/convai/sip-trunk/outbound-call",
            post(elevenlabs_sip_trunk).options(preflight),
        )
        .route("/api/calls", get(list_calls))
        .route("/api/calls/{call_sid}", get(get_call))
        .route("/api/calls/{call_sid}/hangup", post(hangup_call))
        .route("/api/calls/{call_sid}/events", get(call_events))
        .route("/api/calls/{call_sid}/recording", get(get_recording))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/widget/trunkline-widget.js", get(widget_js))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A JSON error with a stable message.
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "error": message})),
    )
        .into_response()
}

fn refusal(state: &ApiState, r: &Refusal, origin: Option<&HeaderValue>) -> Response {
    state.calls.refused(r.label());
    let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = error(status, r.message());
    if let Refusal::RateLimited { retry_after, .. } = r
        && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    with_cors(resp, origin)
}

fn with_cors(mut resp: Response, origin: Option<&HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// The token a request presents: `Authorization: Bearer <token>` (scheme case-insensitive), else
/// `xi-api-key: <token>` (ElevenLabs' shape). `None` without credentials; `Some("")` when
/// credentials are present but are not exactly one non-empty bearer token (`Basic …`,
/// `Negotiate …`, `Bearer ` alone, spaces inside, not ASCII): never valid.
fn bearer(headers: &HeaderMap) -> Option<String> {
    fn one_token(s: &str) -> String {
        let s = s.trim();
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic()) {
            String::new()
        } else {
            s.to_owned()
        }
    }
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let Ok(v) = v.to_str() else {
            return Some(String::new());
        };
        let v = v.trim();
        return Some(match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => one_token(rest),
            _ => String::new(),
        });
    }
    headers
        .get("xi-api-key")
        .map(|v| v.to_str().map(one_token).unwrap_or_default())
}

/// The `Origin` header if present: `Ok(Some)` when allowed, `Err` (403) when not.
fn check_origin(state: &ApiState, headers: &HeaderMap) -> Result<Option<HeaderValue>, Response> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let allowed = origin.to_str().ok().is_some_and(|o| {
        state
            .policy
            .lock()
            .map(|p| p.origin_allowed(o))
            .unwrap_or(false)
    });
    if allowed {
        Ok(Some(origin.clone()))
    } else {
        state.calls.refused("origin_not_allowed");
        Err(error(StatusCode::FORBIDDEN, "Origin not allowed"))
    }
}

async fn preflight(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let origin = match check_origin(&state, &headers) {
        Ok(Some(o)) => o,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "Origin header is required"),
        Err(resp) => return resp,
    };
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization, xi-api-key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// The widget's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundBody {
    #[serde(rename = "phoneNumber")]
    phone_number: Option<String>,
    to_number: Option<String>,
    to: Option<String>,
    #[serde(default)]
    dynamic_variables: Option<BTreeMap<String, Value>>,
    first_message: Option<String>,
}

fn body_error(e: &BytesRejection) -> Response {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
    } else {
        error(StatusCode::BAD_REQUEST, "Invalid request body")
    }
}

/// Parse a JSON body with stable errors: 415 for a wrong content type, 400 for malformed JSON
/// or unknown fields.
fn parse_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Response> {
    json_content_type(headers)?;
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, json_error_message(e)))
}

/// 415 unless the body is declared `application/json`.
fn json_content_type(headers: &HeaderMap) -> Result<(), Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ))
    }
}

/// The stable message for a body serde refused.
fn json_error_message(e: serde_json::Error) -> &'static str {
    if e.is_data() {
        if e.to_string().starts_with("unknown field") {
            "Unknown field in request"
        } else {
            "Invalid request body"
        }
    } else {
        "Malformed JSON"
    }
}

/// Most dynamic variables in one request.
pub const MAX_VARIABLES: usize = 64;
/// Longest dynamic variable name, bytes.
pub const MAX_VARIABLE_NAME: usize = 64;
/// Longest dynamic variable string value, characters.
pub const MAX_VARIABLE_VALUE: usize = 1024;
/// Longest `first_message`, characters.
pub const MAX_FIRST_MESSAGE: usize = 2000;

/// The shape and size of a request's dynamic variables (stable messages, 400).
pub fn validate_variables(vars: &BTreeMap<String, Value>) -> Result<(), &'static str> {
    if vars.len() > MAX_VARIABLES {
        return Err("Too many dynamic variables");
    }
    for (k, v) in vars {
        if k.is_empty() || k.len() > MAX_VARIABLE_NAME {
            return Err("Invalid dynamic variable name");
        }
        match v {
            Value::String(s) if s.chars().count() > MAX_VARIABLE_VALUE => {
                return Err("Dynamic variable value too long");
            }
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
            _ => return Err("Dynamic variables must be strings, numbers or booleans"),
        }
    }
    Ok(())
}

/// Today's UTC day number (days since the Unix epoch), the daily cap's day.
pub fn day_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

/// Policy + placement shared by every trigger shape.
/// Why [`decide`] refused a trigger request.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerRefusal {
    /// 400 with this stable message (the request's shape or sizes).
    BadRequest(&'static str),
    /// The policy's refusal (401/403/429/503 and its stable message).
    Policy(Refusal),
    /// 503 `Service unavailable`: the gateway is shutting down.
    Unavailable,
}

/// What a trigger request asks for, as the HTTP layer read it.
#[derive(Debug, Clone, Copy)]
pub struct TriggerInput<'a> {
    /// The bearer token (`Some("")` for a malformed `Authorization`).
    pub token: Option<&'a str>,
    /// The browser `Origin`, if allowed.
    pub origin: Option<&'a str>,
    /// The client's address.
    pub peer: std::net::IpAddr,
    /// The number as given.
    pub number: Option<&'a str>,
    /// The request's dynamic variables.
    pub dynamic_variables: &'a BTreeMap<String, Value>,
    /// The request's `first_message`.
    pub first_message: Option<&'a str>,
}

/// Every check of a trigger request that needs no I/O, in order: sizes and shapes (400),
/// authentication (401), rate limits (429), what the client may set (403), the destination
/// (400/403), readiness (503), the daily cap, CPS and concurrency (429/503). On success the
/// call is counted against the limits. The HTTP handlers and the `trigger_body` fuzz target
/// both run exactly this.
pub fn decide(
    policy: &mut Policy,
    req: &TriggerInput<'_>,
    ready: bool,
    active_calls: usize,
    now: Instant,
    day: u64,
) -> Result<(Client, Destination), TriggerRefusal> {
    validate_variables(req.dynamic_variables).map_err(TriggerRefusal::BadRequest)?;
    if req
        .first_message
        .is_some_and(|m| m.chars().count() > MAX_FIRST_MESSAGE)
    {
        return Err(TriggerRefusal::BadRequest("first_message is too long"));
    }
    let client = policy
        .authenticate(req.token, req.origin)
        .map_err(TriggerRefusal::Policy)?;
    policy
        .rate_limit(req.peer, &client, now)
        .map_err(TriggerRefusal::Policy)?;
    policy
        .request_content(
            &client,
            req.dynamic_variables.keys().map(String::as_str),
            req.first_message.is_some(),
        )
        .map_err(TriggerRefusal::Policy)?;
    let dest = policy
        .destination(req.number)
        .map_err(TriggerRefusal::Policy)?;
    if !ready {
        return Err(TriggerRefusal::Unavailable);
    }
    policy
        .admit(&dest, active_calls, now, day)
        .map_err(TriggerRefusal::Policy)?;
    Ok((client, dest))
}

/// The widget's body as `POST /api/call/outbound` reads it: (number, dynamic variables, first
/// message).
pub type TriggerBody = (Option<String>, BTreeMap<String, Value>, Option<String>);

/// The widget's body, parsed as `POST /api/call/outbound` reads it, or the stable 400 message.
pub fn parse_outbound_body(body: &[u8]) -> Result<TriggerBody, &'static str> {
    let b: OutboundBody = serde_json::from_slice(body).map_err(json_error_message)?;
    let number = b.phone_number.or(b.to_number).or(b.to);
    Ok((
        number,
        b.dynamic_variables.unwrap_or_default(),
        b.first_message,
    ))
}

async fn trigger(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    number: Option<String>,
    dynamic_variables: BTreeMap<String, Value>,
    first_message: Option<String>,
    origin: Option<&HeaderValue>,
) -> Result<Placed, Response> {
    let token = bearer(headers);
    let origin_str = origin.and_then(|o| o.to_str().ok());
    let (client, dest) = {
        let mut policy = match state.policy.lock() {
            Ok(p) => p,
            Err(_) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")),
        };
        let input = TriggerInput {
            token: token.as_deref(),
            origin: origin_str,
            peer: peer.ip(),
            number: number.as_deref(),
            dynamic_variables: &dynamic_variables,
            first_message: first_message.as_deref(),
        };
        let decided = decide(
            &mut policy,
            &input,
            state.calls.ready(),
            state.calls.active_calls(),
            Instant::now(),
            day_now(),
        );
        match decided {
            Ok(d) => d,
            Err(TriggerRefusal::BadRequest(msg)) => {
                return Err(with_cors(error(StatusCode::BAD_REQUEST, msg), origin));
            }
            Err(TriggerRefusal::Policy(r)) => return Err(refusal(state, &r, origin)),
            Err(TriggerRefusal::Unavailable) => {
                return Err(with_cors(
                    error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
                    origin,
                ));
            }
        }
    };
    // The cluster-wide limits (PostgreSQL), after every local check passed: the local ones
    // count this node's share only, so they never refuse what the cluster would admit.
    let cluster_lease = match state.calls.cluster() {
        None => None,
        Some(c) => match c.admit_outbound(&client, peer.ip(), &dest, day_now()).await {
            Ok(lease) => Some(lease),
            Err(crate::cluster::AdmitError::Refused(r)) => return Err(refusal(state, &r, origin)),
            Err(crate::cluster::AdmitError::Db(_)) => {
                state.calls.refused("cluster_db_error");
                return Err(with_cors(
                    error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
                    origin,
                ));
            }
        },
    };
    let req = OutboundRequest {
        to: dest,
        dynamic_variables,
        first_message,
        client,
        cluster_lease,
    };
    state.calls.place(req).await.map_err(|e| {
        let status = match e {
            PlaceError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PlaceError::Failed(_) => StatusCode::BAD_GATEWAY,
            PlaceError::AgentUnavailable => StatusCode::GATEWAY_TIMEOUT,
        };
        with_cors(error(status, &e.to_string()), origin)
    })
}

async fn outbound(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let origin = match check_origin(&state, &headers) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return with_cors(body_error(&e), origin.as_ref()),
    };
    if let Err(resp) = json_content_type(&headers) {
        return with_cors(resp, origin.as_ref());
    }
    let (number, dynamic_variables, first_message) = match parse_outbound_body(&body) {
        Ok(b) => b,
        Err(msg) => return with_cors(error(StatusCode::BAD_REQUEST, msg), origin.as_ref()),
    };
    match trigger(
        &state,
        peer,
        &headers,
        number,
        dynamic_variables,
        first_message,
        origin.as_ref(),
    )
    .await
    {
        Ok(p) => with_cors(
            axum::Json(with_status_token(
                &state,
                &p.call_sid,
                json!({
                    "success": true,
                    "conversation_id": p.conversation_id,
                    "call_sid": p.call_sid,
                    "sip_call_id": p.sip_call_id,
                }),
            ))
            .into_response(),
            origin.as_ref(),
        ),
        Err(resp) => resp,
    }
}

/// `conversation_initiation_client_data` as ElevenLabs' outbound-call APIs take it (only the
/// parts the gateway uses are read; the rest is accepted and ignored as ElevenLabs does).
#[derive(Debug, Default, Deserialize)]
struct InitiationData {
    #[serde(default)]
    dynamic_variables: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    conversation_config_override: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ElevenLabsOutbound {
    #[allow(dead_code)]
    agent_id: Option<String>,
    #[allow(dead_code)]
    agent_phone_number_id: Option<String>,
    to_number: Option<String>,
    #[serde(default)]
    conversation_initiation_client_data: Option<InitiationData>,
    #[serde(default)]
    #[allow(dead_code)]
    telephony_call_config: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    call_recording_enabled: Option<bool>,
}

async fn elevenlabs_common(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Placed, Option<HeaderValue>), Response> {
    let origin = check_origin(state, headers)?;
    let body = body.map_err(|e| with_cors(body_error(&e), origin.as_ref()))?;
    let b: ElevenLabsOutbound =
        parse_json(headers, &body).map_err(|r| with_cors(r, origin.as_ref()))?;
    let init = b.conversation_initiation_client_data.unwrap_or_default();
    let first_message = init
        .conversation_config_override
        .as_ref()
        .and_then(|o| o.pointer("/agent/first_message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    let placed = trigger(
        state,
        peer,
        headers,
        b.to_number,
        init.dynamic_variables.unwrap_or_default(),
        first_message,
        origin.as_ref(),
    )
    .await?;
    Ok((placed, origin))
}

async fn elevenlabs_twilio(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match elevenlabs_common(&state, peer, &headers, body).await {
        Ok((p, origin)) => with_cors(
            axum::Json(with_status_token(
                &state,
                &p.call_sid,
                json!({
                    "success": true,
                    "message": "Call initiated",
                    "conversation_id": p.conversation_id,
                    "callSid": p.call_sid,
                }),
            ))
            .into_response(),
            origin.as_ref(),
        ),
        Err(resp) => resp,
    }
}

async fn elevenlabs_sip_trunk(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match elevenlabs_common(&state, peer, &headers, body).await {
        Ok((p, origin)) => with_cors(
            axum::Json(with_status_token(
                &state,
                &p.call_sid,
                json!({
                    "success": true,
                    "message": "Call initiated",
                    "conversation_id": p.conversation_id,
                    "sip_call_id": p.sip_call_id,
                }),
            ))
            .into_response(),
            origin.as_ref(),
        ),
        Err(resp) => resp,
    }
}

/// A trigger's answer plus the call's `status_token` (an addition to every answer shape; absent
/// when the service has no status hub).
fn with_status_token(state: &ApiState, call_sid: &str, mut answer: Value) -> Value {
    if let (Some(events), Some(obj)) = (state.calls.events(), answer.as_object_mut()) {
        obj.insert("status_token".into(), Value::String(events.issue(call_sid)));
    }
    answer
}

/// The query of the event stream (other parameters, such as cache-busters, are ignored).
#[derive(Debug, Deserialize)]
struct EventsQuery {
    token: Option<String>,
}

/// How often a comment line keeps an idle event stream (and the proxies in between) alive.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

fn sse_event(n: u64, e: &StatusEvent) -> Event {
    Event::default()
        .event(if e.ids_only { "conversation" } else { "status" })
        .id(n.to_string())
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// `GET /api/calls/{call_sid}/events?token=…`: the call's current status, then each change, as
/// Server-Sent Events (`event: status`, `data: {"call_sid","status","conversation_id",
/// "sip_call_id","at"}`, one per status; `event: conversation` with the same data, once, when
/// the agent's conversation id becomes known within a status); the stream ends after the final
/// status. A missing, malformed, expired
/// or foreign token, or a call that ended longer ago than the grace period: 401
/// `Invalid or expired status token`. Browser origins as for the trigger.
async fn call_events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call_sid): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let origin = match check_origin(&state, &headers) {
        Ok(o) => o,
        Err(resp) => return resp,
    };
    let refuse = |state: &ApiState| {
        state.calls.refused("status_token");
        with_cors(error(StatusCode::UNAUTHORIZED, BAD_TOKEN), origin.as_ref())
    };
    let token = query.ok().and_then(|Query(q)| q.token);
    let (Some(events), Some(token)) = (state.calls.events(), token) else {
        return refuse(&state);
    };
    if !events.verify(&call_sid, &token) {
        return refuse(&state);
    }
    let Subscription::Live(first, rx) = events.subscribe(&call_sid) else {
        return refuse(&state);
    };
    // State: the next event number, an event to send before waiting, the changes to come.
    let start = (0u64, Some(first), rx);
    let stream = futures_util::stream::unfold(start, |(n, pending, mut rx)| async move {
        let ev = match pending {
            Some(ev) => ev,
            None => loop {
                match rx.as_mut()?.recv().await {
                    Ok(ev) => break ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            },
        };
        let next_rx = if is_final_status(&ev.status) {
            None
        } else {
            rx
        };
        let item = Ok::<Event, std::convert::Infallible>(sse_event(n, &ev));
        Some((item, (n + 1, None, next_rx)))
    });
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Let reverse proxies (nginx) pass events on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(resp, origin.as_ref())
}

/// Admin endpoints need a valid token, whatever the trigger policy.
fn require_token(state: &ApiState, headers: &HeaderMap) -> Result<(), Response> {
    if headers.contains_key(header::ORIGIN) {
        return Err(error(StatusCode::FORBIDDEN, "Origin not allowed"));
    }
    let token = bearer(headers);
    let ok = token.is_some()
        && state
            .policy
            .lock()
            .map(|p| matches!(p.authenticate(token.as_deref(), None), Ok(Client::Token(_))))
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(error(StatusCode::UNAUTHORIZED, "Unauthorized"))
    }
}

async fn list_calls(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = require_token(&state, &headers) {
        return r;
    }
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "Invalid query");
    };
    let calls = state.calls.list(q).await;
    axum::Json(json!({"success": true, "calls": calls})).into_response()
}

async fn get_call(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call_sid): Path<String>,
) -> Response {
    if let Err(r) = require_token(&state, &headers) {
        return r;
    }
    match state.calls.get(call_sid).await {
        Some(r) => axum::Json(json!({"success": true, "call": r})).into_response(),
        None => error(StatusCode::NOT_FOUND, "Call not found"),
    }
}

/// `GET /api/calls/{call_sid}/recording`: the call's recording file, streamed. Bearer token as
/// the other `/api/calls` endpoints; refused to browsers (any `Origin`: 403, never CORS-enabled).
/// 404 when the call is unknown, has no recording, or its file is not on this node.
async fn get_recording(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call_sid): Path<String>,
) -> Response {
    if let Err(r) = require_token(&state, &headers) {
        return r;
    }
    let Some(rec) = state.calls.get(call_sid).await.and_then(|r| r.recording) else {
        return error(StatusCode::NOT_FOUND, "Recording not found");
    };
    let file = match tokio::fs::File::open(&rec.path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %rec.path, error = %e, "recording file unavailable");
            return error(StatusCode::NOT_FOUND, "Recording not found");
        }
    };
    let content_type = if rec.format == "opus" {
        "audio/ogg"
    } else {
        "audio/wav"
    };
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn hangup_call(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call_sid): Path<String>,
) -> Response {
    if let Err(r) = require_token(&state, &headers) {
        return r;
    }
    if state.calls.hangup(call_sid.clone()).await {
        return axum::Json(json!({"success": true})).into_response();
    }
    // In a cluster, the call may be another node's: forward the hang-up to it once, with the
    // same bearer token (every node has the same tokens).
    if let Some(c) = state.calls.cluster()
        && !headers.contains_key(FORWARDED)
        && let Some(owner) = c.owner(&call_sid).await
    {
        return forward_hangup(&c, &owner, &call_sid, &headers).await;
    }
    error(StatusCode::NOT_FOUND, "Call not found or already ended")
}

/// The header a forwarded hang-up carries (the forwarding node's id): never forwarded again.
pub const FORWARDED: &str = "x-trunkline-forwarded-by";

async fn forward_hangup(
    cluster: &crate::cluster::Cluster,
    owner: &crate::cluster::Owner,
    call_sid: &str,
    headers: &HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match cluster
        .forward_hangup(owner, call_sid, auth, FORWARDED)
        .await
    {
        Ok((status, body)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(node = %owner.node, call_sid, error = %e, "forwarding a hang-up failed");
            error(StatusCode::BAD_GATEWAY, "Owning node unreachable")
        }
    }
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    if state.calls.ready() {
        axum::Json(json!({"status": "ready", "active_calls": state.calls.active_calls()}))
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.calls.metrics(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found")
}

/// The browser module, as shipped in `web/` (docs/SETUP.md documents its SRI hash).
pub const WIDGET_JS: &str = include_str!("../../../web/trunkline-widget.js");

/// How long browsers and proxies may keep the module without asking again.
pub const WIDGET_CACHE_CONTROL: &str = "public, max-age=3600";

/// The module's ETag: a strong validator from its SHA-256.
pub fn widget_etag() -> &'static str {
    static ETAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ETAG.get_or_init(|| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(WIDGET_JS.as_bytes());
        let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    })
}

/// `GET /widget/trunkline-widget.js`: any site may load it (`Access-Control-Allow-Origin: *`, as a
/// module script or with `integrity` needs CORS; no credentials are involved); 304 when the
/// browser's copy is current.
async fn widget_js(headers: HeaderMap) -> Response {
    let etag = widget_etag();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            )],
            WIDGET_JS,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(WIDGET_CACHE_CONTROL),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    resp
}

/// The OpenAPI document (checked against the router in tests).
pub const OPENAPI: &str = include_str!("openapi.json");
