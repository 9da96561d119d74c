//! The visitor's live call status: the trigger's `status_token` and
//! `GET /api/calls/{call_sid}/events?token=…` (Server-Sent Events), read over a raw TCP
//! connection, for real calls through the trunk and agent emulators.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TOKEN, deploy, post, speech};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::{Outcome, TrunkConfig};
use trunkline_gateway::config::Config;

const SITE: &str = "https://www.example.com";
const ORDER: [&str; 4] = ["initiated", "ringing", "in-progress", "completed"];

fn trunk(f: impl FnOnce(&mut TrunkConfig)) -> TrunkConfig {
    let mut t = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        ring_time: Duration::from_millis(800),
        hangup_after: Some(Duration::from_secs(2)),
        ..TrunkConfig::default()
    };
    f(&mut t);
    t
}

fn site(cfg: &mut Config) {
    cfg.http.allowed_origins = vec![SITE.into()];
}

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `data` of each `status` event, in order.
    fn events(&self) -> Vec<Value> {
        self.named("status")
    }

    /// The `data` of each event called `want`, in order.
    fn named(&self, want: &str) -> Vec<Value> {
        let mut out = Vec::new();
        for block in self.body.split("\n\n") {
            let mut name = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if name == want && !data.is_empty() {
                out.push(serde_json::from_str(&data).expect("event data is JSON"));
            }
        }
        out
    }
}

/// `GET path` over a fresh TCP connection, reading until the server closes (the event stream
/// ends after the final status) or `limit` passes; a chunked body is decoded.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)], limit: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nAccept: text/event-stream\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(limit, s.read_to_end(&mut raw)).await;
    assert!(
        read.is_ok(),
        "the stream did not end within {limit:?}: {}",
        String::from_utf8_lossy(&raw)
    );
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Place a call as the widget does (allowed origin, token), returning the answer.
async fn trigger(addr: SocketAddr, number: &str) -> Value {
    let (status, j) = post(
        addr,
        "/api/call/outbound",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Origin", SITE),
        ],
        &format!(r#"{{"phoneNumber": "{number}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{j}");
    j
}

fn events_path(sid: &str, token: &str) -> String {
    format!("/api/calls/{sid}/events?token={token}")
}

fn statuses(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["status"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visitor_sees_ringing_in_progress_and_completed_in_order() {
    let d = deploy(trunk(|_| {}), AgentEmulatorConfig::default(), site).await;
    let j = trigger(d.http, "+33612345678").await;
    // The answer's shape is the seed's, plus the token.
    assert_eq!(j["success"], true);
    assert!(j.get("conversation_id").is_some(), "{j}");
    let sid = j["call_sid"].as_str().expect("call_sid");
    let token = j["status_token"].as_str().expect("status_token");
    assert!(!token.contains(TOKEN), "never the bearer token");

    let a = get(
        d.http,
        &events_path(sid, token),
        &[("Origin", SITE)],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream")),
        "{a:?}"
    );
    assert_eq!(a.header("access-control-allow-origin"), Some(SITE));
    let events = a.events();
    let got = statuses(&events);
    // The status at connect first, then every change, in order, each once, ending at the final.
    let first = ORDER
        .iter()
        .position(|s| *s == got[0])
        .expect("a known status");
    assert!(first <= 1, "connected before the answer: {got:?}");
    assert_eq!(got, ORDER[first..], "{events:#?}");
    for e in &events {
        assert_eq!(e["call_sid"], sid);
        assert!(
            e["at"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
            "{e}"
        );
        for k in ["conversation_id", "sip_call_id"] {
            assert!(e.get(k).is_some(), "{k} missing: {e}");
        }
    }
    let times: Vec<u64> = events.iter().filter_map(|e| e["at"].as_u64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let last = events.last().expect("final");
    let rec = d.finished(sid, 10).await;
    assert_eq!(
        last["conversation_id"].as_str(),
        rec.conversation_id.as_deref(),
        "the final event carries the agent's conversation id"
    );
    assert!(rec.conversation_id.is_some(), "{rec:?}");
    // In `answer` mode the id arrives after `in-progress`: it is told at once, as its own event
    // (once), not only on the final status.
    let told = a.named("conversation");
    assert_eq!(told.len(), 1, "{}", a.body);
    assert_eq!(told[0]["status"], "in-progress", "{}", a.body);
    assert_eq!(
        told[0]["conversation_id"].as_str(),
        rec.conversation_id.as_deref(),
        "{}",
        a.body
    );
    let names: Vec<&str> = a
        .body
        .split("\n\n")
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("event:")))
        .map(str::trim)
        .collect();
    assert_eq!(
        names.last(),
        Some(&"status"),
        "told before the final status: {names:?}"
    );

    // After the end, within the grace period: the final status alone, and the stream ends.
    let again = get(
        d.http,
        &events_path(sid, token),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(statuses(&again.events()), ["completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_phone_ends_the_stream_with_busy() {
    let d = deploy(
        trunk(|t| t.outcome = Outcome::Busy),
        AgentEmulatorConfig::default(),
        site,
    )
    .await;
    let j = trigger(d.http, "+33612345678").await;
    let sid = j["call_sid"].as_str().expect("call_sid");
    let token = j["status_token"].as_str().expect("status_token");
    let a = get(
        d.http,
        &events_path(sid, token),
        &[],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let got = statuses(&a.events());
    assert_eq!(got.last().map(String::as_str), Some("busy"), "{got:?}");
    assert!(!got.iter().any(|s| s == "in-progress"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_call_or_no_token_is_refused() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(3))),
        AgentEmulatorConfig::default(),
        site,
    )
    .await;
    let a = trigger(d.http, "+33612345678").await;
    let b = trigger(d.http, "+33612345679").await;
    let (sid_a, token_a) = (
        a["call_sid"].as_str().expect("sid"),
        a["status_token"].as_str().expect("token"),
    );
    let (sid_b, token_b) = (
        b["call_sid"].as_str().expect("sid"),
        b["status_token"].as_str().expect("token"),
    );
    let quick = Duration::from_secs(5);
    let refused = |r: &Answer| {
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.json()["success"], false);
        assert_eq!(r.json()["error"], "Invalid or expired status token");
    };
    // A's token on B, B's on A.
    let r = get(
        d.http,
        &events_path(sid_b, token_a),
        &[("Origin", SITE)],
        quick,
    )
    .await;
    refused(&r);
    assert_eq!(r.header("access-control-allow-origin"), Some(SITE));
    refused(&get(d.http, &events_path(sid_a, token_b), &[], quick).await);
    // No token, an empty one, garbage, a tampered one, the bearer token itself.
    refused(&get(d.http, &format!("/api/calls/{sid_a}/events"), &[], quick).await);
    refused(&get(d.http, &events_path(sid_a, ""), &[], quick).await);
    refused(&get(d.http, &events_path(sid_a, "not-a-token"), &[], quick).await);
    let (exp, mac) = token_a.split_once('.').expect("expiry.mac");
    let tampered = format!("{}.{mac}", exp.parse::<u64>().expect("expiry") + 3600);
    refused(&get(d.http, &events_path(sid_a, &tampered), &[], quick).await);
    refused(&get(d.http, &events_path(sid_a, TOKEN), &[], quick).await);
    // Nor does the bearer token in a header open the stream.
    refused(
        &get(
            d.http,
            &format!("/api/calls/{sid_a}/events"),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            quick,
        )
        .await,
    );
    // A page elsewhere: 403, as for the trigger.
    let r = get(
        d.http,
        &events_path(sid_a, token_a),
        &[("Origin", "https://evil.example")],
        quick,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "Origin not allowed");
    // The right tokens still work.
    for (sid, token) in [(sid_a, token_a), (sid_b, token_b)] {
        let r = get(
            d.http,
            &events_path(sid, token),
            &[],
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            statuses(&r.events()).last().map(String::as_str),
            Some("completed")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_secs(4))),
        AgentEmulatorConfig::default(),
        |cfg| {
            site(cfg);
            cfg.http.status_token_ttl_secs = 1;
        },
    )
    .await;
    let j = trigger(d.http, "+33612345678").await;
    let sid = j["call_sid"].as_str().expect("sid");
    let token = j["status_token"].as_str().expect("token");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = get(
        d.http,
        &events_path(sid, token),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["error"], "Invalid or expired status token");
    d.finished(sid, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_dies_with_its_call_after_the_grace_period() {
    let d = deploy(
        trunk(|t| t.hangup_after = Some(Duration::from_millis(500))),
        AgentEmulatorConfig::default(),
        |cfg| {
            site(cfg);
            cfg.http.status_token_grace_secs = 1;
        },
    )
    .await;
    let j = trigger(d.http, "+33612345678").await;
    let sid = j["call_sid"].as_str().expect("sid");
    let token = j["status_token"].as_str().expect("token");
    d.finished(sid, 15).await;
    let r = get(
        d.http,
        &events_path(sid, token),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, 200, "within the grace period: {r:?}");
    assert_eq!(statuses(&r.events()), ["completed"]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = get(
        d.http,
        &events_path(sid, token),
        &[],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.status, 401, "after the grace period: {r:?}");
    assert_eq!(r.json()["error"], "Invalid or expired status token");
}
