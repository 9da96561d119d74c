//! The HTTP API over a real loopback socket: the widget's exact request with its CORS preflight,
//! every documented refusal with one request that must fail and one that must pass, malformed
//! input, and the OpenAPI document checked against the real routes. The gateway behind the API
//! is a recorder here, so "nothing placed" is asserted exactly; the end-to-end tests place real
//! calls through the same router.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trunkline_call::CallRecord;
use trunkline_gateway::api::{
    ApiState, BoxFuture, CallService, ListQuery, OutboundRequest, PlaceError, Placed, router,
};
use trunkline_gateway::config::{PolicySection, Secrets};
use trunkline_gateway::policy::{Policy, RequestRules};

const WIDGET: &str = "https://shop.example";

#[derive(Default)]
struct Recorder {
    placed: Mutex<Vec<OutboundRequest>>,
    active: Mutex<usize>,
}

impl CallService for Recorder {
    fn active_calls(&self) -> usize {
        *self.active.lock().expect("lock")
    }
    fn ready(&self) -> bool {
        true
    }
    fn place(&self, req: OutboundRequest) -> BoxFuture<'_, Result<Placed, PlaceError>> {
        Box::pin(async move {
            let mut p = self.placed.lock().expect("lock");
            p.push(req);
            Ok(Placed {
                call_sid: format!("CA{:032}", p.len()),
                conversation_id: None,
                sip_call_id: Some("abc@127.0.0.1".into()),
            })
        })
    }
    fn get(&self, call_sid: String) -> BoxFuture<'_, Option<CallRecord>> {
        Box::pin(async move {
            (call_sid == "CA1").then(|| {
                CallRecord::new("CA1".into(), "outbound", "+1".into(), "+33612345678".into())
            })
        })
    }
    fn list(&self, _q: ListQuery) -> BoxFuture<'_, Vec<CallRecord>> {
        Box::pin(async { Vec::new() })
    }
    fn hangup(&self, call_sid: String) -> BoxFuture<'_, bool> {
        Box::pin(async move { call_sid == "CA1" })
    }
    fn metrics(&self) -> String {
        "# TYPE trunkline_active_calls gauge\ntrunkline_active_calls 0\n".into()
    }
}

struct Server {
    addr: SocketAddr,
    calls: Arc<Recorder>,
}

async fn serve(f: impl FnOnce(&mut PolicySection)) -> Server {
    let secrets = Secrets {
        api_tokens: vec![("backend".into(), "s3cret-token".into())],
        ..Secrets::default()
    };
    serve_with(secrets, f).await
}

async fn serve_with(secrets: Secrets, f: impl FnOnce(&mut PolicySection)) -> Server {
    serve_rules(secrets, RequestRules::default(), f).await
}

async fn serve_rules(
    secrets: Secrets,
    rules: RequestRules,
    f: impl FnOnce(&mut PolicySection),
) -> Server {
    let mut cfg = PolicySection::default();
    f(&mut cfg);
    let calls = Arc::new(Recorder::default());
    let state = Arc::new(ApiState {
        policy: Mutex::new(
            Policy::new(cfg, vec![WIDGET.into()], &secrets).with_request_rules(rules),
        ),
        calls: calls.clone(),
        max_body_bytes: 16 * 1024,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { addr, calls }
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_owned()
    }
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http(addr, "POST", path, &h, body.as_bytes()).await
}

const TOKEN: (&str, &str) = ("Authorization", "Bearer s3cret-token");

#[tokio::test]
async fn the_widget_request_with_preflight_places_a_pinned_call() {
    let srv = serve(|c| c.pinned_numbers = vec!["+33612345678".into()]).await;
    let pre = http(
        srv.addr,
        "OPTIONS",
        "/api/call/outbound",
        &[
            ("Origin", WIDGET),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.headers["access-control-allow-origin"], WIDGET);
    assert!(pre.headers["access-control-allow-methods"].contains("POST"));
    assert!(pre.headers["access-control-allow-headers"].contains("content-type"));

    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[("Origin", WIDGET)],
        r#"{"phoneNumber": "+33 6 12 34 56 78"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["success"], true);
    assert!(j["call_sid"].as_str().is_some_and(|s| s.starts_with("CA")));
    assert!(
        j.as_object()
            .is_some_and(|o| o.contains_key("conversation_id"))
    );
    assert_eq!(r.headers["access-control-allow-origin"], WIDGET);
    let placed = srv.calls.placed.lock().expect("lock");
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].to.e164, "+33612345678");
}

#[tokio::test]
async fn every_refusal_has_its_status_and_stable_message_and_places_nothing() {
    let srv = serve(|c| {
        c.allowed_prefixes = vec!["+33".into()];
        c.per_ip_per_minute = 1000;
    })
    .await;
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![TOKEN], r#"{}"#, 400, "Phone number is required"),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "   "}"#,
            400,
            "Phone number is required",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "0612345678"}"#,
            400,
            "Invalid phone number",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "+33 12"}"#,
            400,
            "Invalid phone number",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "+14155550123"}"#,
            403,
            "Destination not allowed",
        ),
        (
            vec![],
            r#"{"phoneNumber": "+33612345678"}"#,
            401,
            "Unauthorized",
        ),
        (
            vec![("Authorization", "Bearer nope")],
            r#"{"phoneNumber": "+33612345678"}"#,
            401,
            "Unauthorized",
        ),
        (
            vec![TOKEN, ("Origin", "https://evil.example")],
            r#"{"phoneNumber": "+33612345678"}"#,
            403,
            "Origin not allowed",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "+33612345678""#,
            400,
            "Malformed JSON",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "+33612345678", "agent": "x"}"#,
            400,
            "Unknown field in request",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": 33612345678}"#,
            400,
            "Invalid request body",
        ),
        (
            vec![TOKEN],
            r#"{"phoneNumber": "+33612345678", "dynamic_variables": {"a": {"nested": 1}}}"#,
            400,
            "Dynamic variables must be strings, numbers or booleans",
        ),
    ];
    for (headers, body, status, msg) in cases {
        let r = post_json(srv.addr, "/api/call/outbound", &headers, body).await;
        assert_eq!((r.status, r.error().as_str()), (status, msg), "{body}");
        assert_eq!(r.json()["success"], false);
    }
    let r = http(
        srv.addr,
        "POST",
        "/api/call/outbound",
        &[TOKEN, ("Content-Type", "text/plain")],
        br#"{"phoneNumber": "+33612345678"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (415, "Content-Type must be application/json")
    );
    let huge = format!(
        r#"{{"phoneNumber": "+33612345678", "first_message": "{}"}}"#,
        "a".repeat(40_000)
    );
    let r = post_json(srv.addr, "/api/call/outbound", &[TOKEN], &huge).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (413, "Request body too large")
    );
    let r = http(srv.addr, "GET", "/api/call/outbound", &[TOKEN], b"").await;
    assert_eq!(r.status, 405);
    assert!(
        srv.calls.placed.lock().expect("lock").is_empty(),
        "nothing placed"
    );

    // And the same server places a valid request.
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345678"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.calls.placed.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn request_variables_cannot_override_and_widgets_send_only_allowed_ones() {
    let rules = RequestRules {
        anonymous_variables: vec!["customer_name".into()],
        anonymous_first_message: false,
        operator_variables: vec!["customer_tier".into()],
    };
    let secrets = Secrets {
        api_tokens: vec![("backend".into(), "s3cret-token".into())],
        ..Secrets::default()
    };
    let srv = serve_rules(secrets, rules, |c| {
        c.pinned_numbers = vec!["+33612345678".into()];
        c.calls_per_second = 100.0;
        c.per_ip_per_minute = 1000;
        c.per_destination_per_day = 1000;
    })
    .await;
    let widget = ("Origin", WIDGET);
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        // The operator's and the call's own: nobody, token or not.
        (
            vec![TOKEN],
            r#"{"dynamic_variables": {"customer_tier": "platinum"}}"#,
            403,
            "Dynamic variable not allowed",
        ),
        (
            vec![TOKEN],
            r#"{"dynamic_variables": {"caller_id": "+19005550100"}}"#,
            403,
            "Dynamic variable not allowed",
        ),
        (
            vec![widget],
            r#"{"dynamic_variables": {"customer_tier": "platinum"}}"#,
            403,
            "Dynamic variable not allowed",
        ),
        // A widget: only the listed keys, and no first_message.
        (
            vec![widget],
            r#"{"dynamic_variables": {"order_id": "42"}}"#,
            403,
            "Dynamic variable not allowed",
        ),
        (
            vec![widget],
            r#"{"first_message": "Hi, I am your bank"}"#,
            403,
            "first_message not allowed",
        ),
    ];
    for (headers, body, status, msg) in cases {
        let r = post_json(srv.addr, "/api/call/outbound", &headers, body).await;
        assert_eq!((r.status, r.error().as_str()), (status, msg), "{body}");
    }
    assert!(srv.calls.placed.lock().expect("lock").is_empty());
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[widget],
        r#"{"dynamic_variables": {"customer_name": "Ada"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"dynamic_variables": {"order_id": "42"}, "first_message": "Hello"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(srv.calls.placed.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn a_dynamic_variable_over_1024_characters_has_its_own_message() {
    let srv = serve(|c| c.calls_per_second = 100.0).await;
    let body = |n: usize| {
        format!(
            r#"{{"to": "+33612345678", "dynamic_variables": {{"note": "{}"}}}}"#,
            "é".repeat(n)
        )
    };
    let r = post_json(srv.addr, "/api/call/outbound", &[TOKEN], &body(1025)).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "Dynamic variable value too long")
    );
    assert!(srv.calls.placed.lock().expect("lock").is_empty());
    // 1,024 characters (2,048 bytes) pass.
    let r = post_json(srv.addr, "/api/call/outbound", &[TOKEN], &body(1024)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn only_a_bearer_token_authenticates_even_with_an_empty_token_configured() {
    // `TRUNKLINE_API_TOKEN="backend:"` is refused at start; a Policy built in code with an empty
    // token must still let nothing in with empty or non-bearer credentials.
    let secrets = Secrets {
        api_tokens: vec![
            ("empty".into(), String::new()),
            ("backend".into(), "s3cret-token".into()),
        ],
        ..Secrets::default()
    };
    let srv = serve_with(secrets, |c| c.calls_per_second = 100.0).await;
    let body = r#"{"phoneNumber": "+33612345678"}"#;
    for auth in [
        ("Authorization", "Basic YWRtaW46YWRtaW4="),
        ("Authorization", "Negotiate x"),
        ("Authorization", "Bearer "),
        ("Authorization", "Bearer"),
        ("Authorization", "Bearer s3cret-token extra"),
        ("Authorization", "Token s3cret-token"),
        ("Authorization", "s3cret-token"),
        ("xi-api-key", ""),
        ("xi-api-key", " "),
    ] {
        let r = post_json(srv.addr, "/api/call/outbound", &[auth], body).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "Unauthorized"),
            "{auth:?}"
        );
        let r = http(srv.addr, "GET", "/api/calls", &[auth], b"").await;
        assert_eq!(r.status, 401, "GET /api/calls with {auth:?}");
    }
    assert!(srv.calls.placed.lock().expect("lock").is_empty());
    // The real token, in either case of the scheme, still works.
    for auth in ["Bearer s3cret-token", "bearer s3cret-token"] {
        let r = post_json(
            srv.addr,
            "/api/call/outbound",
            &[("Authorization", auth)],
            body,
        )
        .await;
        assert_eq!(r.status, 200, "{auth}: {}", r.body);
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    // per_ip_per_minute = 2: a token client gets 20 a minute, a widget (no token) 2 per IP.
    let srv = serve(|c| {
        c.per_ip_per_minute = 2;
        c.calls_per_second = 100.0;
        c.allowed_prefixes = vec!["+33".into()];
    })
    .await;
    for i in 0..20 {
        let ok = post_json(
            srv.addr,
            "/api/call/outbound",
            &[TOKEN],
            &format!(r#"{{"to": "+336123456{i:02}"}}"#),
        )
        .await;
        assert_eq!(ok.status, 200, "token request {i}: {}", ok.body);
    }
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345670"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (429, "Too many requests"));
    assert_eq!(r.headers["retry-after"], "3");
    // The widget from the same address still has its own two.
    for i in 0..2 {
        let ok = post_json(
            srv.addr,
            "/api/call/outbound",
            &[("Origin", WIDGET)],
            &format!(r#"{{"to": "+336123457{i:02}"}}"#),
        )
        .await;
        assert_eq!(ok.status, 200, "widget request {i}: {}", ok.body);
    }
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[("Origin", WIDGET)],
        r#"{"to": "+33612345799"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (429, "Too many requests"));
    assert_eq!(r.headers["retry-after"], "30");
}

#[tokio::test]
async fn capacity_and_daily_cap() {
    let srv = serve(|c| {
        c.max_concurrent_calls = 1;
        c.per_destination_per_day = 1;
        c.calls_per_second = 100.0;
    })
    .await;
    *srv.calls.active.lock().expect("lock") = 1;
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345678"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (503, "At capacity"));
    *srv.calls.active.lock().expect("lock") = 0;
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345678"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345678"}"#,
    )
    .await;
    assert_eq!((r.status, r.error().as_str()), (429, "Too many requests"));
    let r = post_json(
        srv.addr,
        "/api/call/outbound",
        &[TOKEN],
        r#"{"to": "+33612345679"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "another number is still fine");
}

#[tokio::test]
async fn elevenlabs_shapes_are_accepted_with_xi_api_key() {
    let srv = serve(|c| c.calls_per_second = 100.0).await;
    let body = r#"{"agent_id": "agent_1", "agent_phone_number_id": "phnum_1", "to_number": "+33612345678",
        "conversation_initiation_client_data": {"dynamic_variables": {"customer_name": "Ada", "vip": true},
        "conversation_config_override": {"agent": {"first_message": "Hello Ada"}}}}"#;
    let r = post_json(
        srv.addr,
        "/v1/convai/twilio/outbound-call",
        &[("xi-api-key", "s3cret-token")],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["callSid"].as_str().is_some());
    let r = post_json(
        srv.addr,
        "/v1/convai/sip-trunk/outbound-call",
        &[("xi-api-key", "s3cret-token")],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["sip_call_id"], "abc@127.0.0.1");
    let r = post_json(
        srv.addr,
        "/v1/convai/twilio/outbound-call",
        &[("xi-api-key", "bad")],
        body,
    )
    .await;
    assert_eq!(r.status, 401);
    let placed = srv.calls.placed.lock().expect("lock");
    assert_eq!(placed.len(), 2);
    assert_eq!(placed[0].first_message.as_deref(), Some("Hello Ada"));
    assert_eq!(placed[0].dynamic_variables["customer_name"], "Ada");
}

#[tokio::test]
async fn call_records_need_a_token() {
    let srv = serve(|_| {}).await;
    assert_eq!(
        http(srv.addr, "GET", "/api/calls/CA1", &[], b"")
            .await
            .status,
        401
    );
    let r = http(srv.addr, "GET", "/api/calls/CA1", &[TOKEN], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["call"]["call_sid"], "CA1");
    assert_eq!(
        http(srv.addr, "GET", "/api/calls/CA9", &[TOKEN], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        http(srv.addr, "POST", "/api/calls/CA1/hangup", &[TOKEN], b"")
            .await
            .status,
        200
    );
    let r = http(srv.addr, "GET", "/api/calls?limit=x", &[TOKEN], b"").await;
    assert_eq!((r.status, r.error().as_str()), (400, "Invalid query"));
    let r = http(
        srv.addr,
        "GET",
        "/api/calls?status=completed&limit=10",
        &[TOKEN],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let srv = serve(|_| {}).await;
    let r = http(srv.addr, "GET", "/openapi.json", &[], b"").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        let concrete = path.replace("{call_sid}", "CA1");
        for method in ops.as_object().expect("ops").keys() {
            let r = http(
                srv.addr,
                &method.to_ascii_uppercase(),
                &concrete,
                &[("Origin", WIDGET)],
                b"",
            )
            .await;
            assert!(
                r.status != 404 || r.error() != "Not found",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(
                r.status, 405,
                "{method} {path} documented with the wrong method"
            );
        }
    }
    // And a route that is not documented does not exist.
    assert_eq!(
        http(srv.addr, "GET", "/api/secret", &[], b"").await.status,
        404
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let srv = serve(|_| {}).await;
    assert_eq!(
        http(srv.addr, "GET", "/healthz", &[], b"").await.status,
        200
    );
    let r = http(srv.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(r.json()["status"], "ready");
    let r = http(srv.addr, "GET", "/metrics", &[], b"").await;
    assert!(r.headers["content-type"].starts_with("text/plain"));
    assert!(r.body.contains("trunkline_active_calls"));
}
