//! The website flow in a real browser: Debian's `chromium`, headless, driven by `puppeteer-core`
//! (`tests/browser/drive.mjs`; nothing downloads a browser) loads the example page
//! `examples/website/client-sdk.html`, which runs the real `@elevenlabs/client` from npm (pinned in
//! `tests/browser/package-lock.json`, bundled by esbuild) against the agent emulator and the
//! gateway's `trunkline-widget.js`. The emulator asks the page to call a number
//! (`client_tool_call` `initiatePhoneCall`), the widget's confirm dialog is answered, the gateway
//! dials the trunk emulator, and the page shows the call's live status.
//!
//! Scenarios, one browser context each, in this order: the visitor declines; a number outside the
//! policy; a page of an origin the gateway does not allow (CORS); the visitor accepts and the
//! phone answers. The gateway must end with exactly one call — the accepted one — and, with
//! `agent.connect_at = "trigger"`, the page learns that call's agent conversation id at once.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci --prefix crates/gateway/tests/browser`
//! (`.ci/run` installs all three). Missing, the test fails under `CI` and is skipped otherwise.
//! Screenshots of every state go to `target/tmp/browser-screenshots/` (not committed).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{deploy, speech};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trunkline_agent::AudioFormat;
use trunkline_emulators::agent::{
    AgentEmulator, AgentEmulatorConfig, ConnectionRecord, Script, ToolCallSpec,
};
use trunkline_emulators::trunk::TrunkConfig;
use trunkline_gateway::api::CallService;

const CHROMIUM: &str = "/usr/bin/chromium";
const SITE_AGENT: &str = "agent_site";
const CDN_CLIENT: &str = "https://cdn.jsdelivr.net/npm/@elevenlabs/client@";
const ACCEPTED: &str = "+33612345678";
const DECLINED: &str = "+33612345001";
const OUTSIDE: &str = "+4915112345678";
const FROM_ELSEWHERE: &str = "+33612345002";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether the browser test can run; under `CI` a missing piece is a failure.
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (Debian package `chromium`)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".into());
    }
    for m in ["puppeteer-core", "esbuild", "@elevenlabs/client"] {
        if !fixture().join("node_modules").join(m).exists() {
            missing.push(format!(
                "{m} (npm ci --prefix crates/gateway/tests/browser)"
            ));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("browser test prerequisites missing: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (.ci/run installs them)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// `@elevenlabs/client` as one ES module (esbuild from the fixture's lockfile).
fn bundle_client(out: &Path) -> String {
    let status = Command::new(fixture().join("node_modules/.bin/esbuild"))
        .current_dir(fixture())
        .args([
            "entry.js",
            "--bundle",
            "--format=esm",
            "--platform=browser",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", out.display()))
        .status()
        .expect("run esbuild");
    assert!(status.success(), "esbuild failed");
    std::fs::read_to_string(out).expect("bundle")
}

fn lock_version(name: &str) -> String {
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("package-lock.json")).expect("package-lock.json"),
    )
    .expect("lockfile JSON");
    lock["packages"][format!("node_modules/{name}")]["version"]
        .as_str()
        .expect("locked version")
        .to_owned()
}

/// The example page with its placeholders filled for this deployment (each one must be there:
/// the test runs the page a site owner copies, not a private variant).
fn page(example: &str, gateway: SocketAddr, agent_origin: &str, client_version: &str) -> String {
    let cdn = format!("{CDN_CLIENT}{client_version}/+esm");
    let swaps = [
        (cdn.as_str(), "/vendor/elevenlabs-client.js".to_owned()),
        ("https://calls.example.com", format!("http://{gateway}")),
        ("\"YOUR_AGENT_ID\"", format!("\"{SITE_AGENT}\"")),
        (
            "const AGENT_ORIGIN = undefined;",
            format!("const AGENT_ORIGIN = \"{agent_origin}\";"),
        ),
    ];
    let mut html = example.to_owned();
    for (from, to) in swaps {
        assert!(
            html.contains(from),
            "examples/website/client-sdk.html no longer has {from:?} (pinned client {client_version})"
        );
        html = html.replace(from, &to);
    }
    html
}

/// A tiny static server: `/s/<agent port>/` is the page talking to that agent emulator,
/// `/vendor/elevenlabs-client.js` the bundle.
async fn serve_static(listener: TcpListener, files: Arc<HashMap<String, (String, String)>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let files = files.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 64 * 1024 {
                    return;
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or("/");
            let resp = match files.get(path) {
                Some((ctype, body)) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// The agent the page talks to: PCM 16 kHz both ways (as for a browser), it greets, then asks
/// the page to call `number`.
async fn site_agent(number: &str) -> AgentEmulator {
    let cfg = AgentEmulatorConfig {
        agent_ids: vec![SITE_AGENT.into()],
        input_format: AudioFormat::Pcm { sample_rate: 16000 },
        output_format: AudioFormat::Pcm { sample_rate: 16000 },
        script: Script {
            tool_call: Some(ToolCallSpec {
                after_turn: 0,
                tool_name: "initiatePhoneCall".into(),
                parameters: json!({ "phoneNumber": number }),
            }),
            ..Script::default()
        },
        ..AgentEmulatorConfig::default()
    };
    AgentEmulator::start("127.0.0.1:0".parse().expect("addr"), cfg)
        .await
        .expect("site agent")
}

/// The browser's one conversation with `agent`, once the page is gone.
async fn browser_conversation(agent: &AgentEmulator) -> ConnectionRecord {
    let recs = agent.wait_finished(1, Duration::from_secs(10)).await;
    assert_eq!(recs.len(), 1, "one conversation per page: {recs:#?}");
    recs.into_iter().next().expect("record")
}

fn statuses_in(result: &Value, of: &[&str]) -> Vec<String> {
    result["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|s| s.as_str())
                .filter(|s| of.contains(s))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_asks_for_a_call_in_a_real_browser() {
    if !prerequisites() {
        return;
    }
    let work =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}", std::process::id()));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshots dir");
    std::fs::create_dir_all(work.join("profile")).expect("profile dir");

    // The site (allowed) and another site (not allowed), both on loopback.
    let site = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let site_origin = format!("http://{}", site.local_addr().expect("addr"));
    let other_origin = format!("http://{}", elsewhere.local_addr().expect("addr"));

    let trunk = TrunkConfig {
        credentials: Some(("trunkline".into(), "s3cret".into())),
        play: speech(),
        play_delay: Duration::from_millis(300),
        ring_time: Duration::from_millis(1500),
        hangup_after: Some(Duration::from_secs(3)),
        ..TrunkConfig::default()
    };
    let origin = site_origin.clone();
    let d = deploy(trunk, AgentEmulatorConfig::default(), move |cfg| {
        // examples/website/trunkline-call-me-back.toml: no token in a browser; the allowed
        // origin plus a destination allowlist admit the widget.
        cfg.http.allowed_origins = vec![origin];
        // The answer the page gets carries the phone call's conversation id.
        cfg.agent.connect_at = trunkline_gateway::config::ConnectAt::Trigger;
        cfg.policy.allowed_prefixes = vec!["+336".into(), "+337".into()];
    })
    .await;

    let client_version = lock_version("@elevenlabs/client");
    let bundle = bundle_client(&work.join("elevenlabs-client.js"));
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/website/client-sdk.html"),
    )
    .expect("example page");

    let declined = site_agent(DECLINED).await;
    let outside = site_agent(OUTSIDE).await;
    let foreign = site_agent(FROM_ELSEWHERE).await;
    let accepted = site_agent(ACCEPTED).await;
    let mut files = HashMap::new();
    files.insert(
        "/vendor/elevenlabs-client.js".to_owned(),
        ("text/javascript; charset=utf-8".to_owned(), bundle),
    );
    for a in [&declined, &outside, &foreign, &accepted] {
        files.insert(
            format!("/s/{}/", a.local_addr().port()),
            (
                "text/html; charset=utf-8".to_owned(),
                page(&example, d.http, &a.ws_base_url(), &client_version),
            ),
        );
    }
    let files = Arc::new(files);
    tokio::spawn(serve_static(site, files.clone()));
    tokio::spawn(serve_static(elsewhere, files));

    let url = |origin: &str, a: &AgentEmulator| format!("{origin}/s/{}/", a.local_addr().port());
    let config = json!({
        "chromium": CHROMIUM,
        "screenshots": shots,
        "profile": work.join("profile"),
        "scenarios": [
            { "name": "1-declined", "url": url(&site_origin, &declined), "confirm": "decline", "until": "declined" },
            { "name": "2-outside-policy", "url": url(&site_origin, &outside), "confirm": "accept", "until": "error" },
            { "name": "3-other-origin", "url": url(&other_origin, &foreign), "confirm": "accept", "until": "error" },
            { "name": "4-accepted", "url": url(&site_origin, &accepted), "confirm": "accept", "until": "completed" },
        ],
    });
    let config_path = work.join("scenarios.json");
    std::fs::write(&config_path, config.to_string()).expect("write scenarios");

    let driver = tokio::process::Command::new("node")
        .current_dir(fixture())
        .arg("drive.mjs")
        .arg(&config_path)
        .env("PUPPETEER_SKIP_DOWNLOAD", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), driver)
        .await
        .expect("the browser run ended within 4 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "driver failed:\n{stdout}\n{stderr}");
    let results: HashMap<String, Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str::<Value>(l).expect("result JSON"))
        .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v))
        .collect();
    assert_eq!(results.len(), 4, "{stdout}\n{stderr}");
    for (name, r) in &results {
        eprintln!(
            "{name}: {}",
            serde_json::to_string_pretty(r).unwrap_or_default()
        );
        assert!(r.get("error").is_none(), "{name}: {r:#}");
        assert!(r.get("timeout").is_none(), "{name} timed out: {r:#}");
        // The confirm dialog is labelled, described, and has the focus on Cancel.
        let dialog = &r["dialog"];
        assert_eq!(dialog["focused"], "trunkline-cancel", "{name}: {dialog}");
        assert!(
            dialog["describedby"]
                .as_str()
                .is_some_and(|t| t.contains("+33") || t.contains("+49")),
            "{name}: {dialog}"
        );
    }

    // Every conversation came from the browser's @elevenlabs/client over the `convai`
    // subprotocol, spoke the protocol cleanly, and got the tool call.
    let expect_result = |a: &ConnectionRecord, number: &str, text: &str| {
        assert_eq!(a.subprotocol.as_deref(), Some("convai"), "{a:?}");
        assert!(
            a.request_target.contains("source=js_sdk"),
            "{}",
            a.request_target
        );
        assert_eq!(
            a.tool_calls,
            vec![(
                "initiatePhoneCall".to_owned(),
                json!({ "phoneNumber": number })
            )]
        );
        assert_eq!(a.tool_results, vec![(text.to_owned(), false)], "{a:?}");
        assert!(a.violations.is_empty(), "{:#?}", a.violations);
    };

    // 1. Declined: the agent is told, nothing is dialled.
    let r = &results["1-declined"];
    assert!(statuses_in(r, &["declined"]) == ["declined"], "{r:#}");
    let a = browser_conversation(&declined).await;
    expect_result(
        &a,
        DECLINED,
        "The visitor declined the call; nothing was dialled.",
    );
    assert_eq!(a.origin.as_deref(), Some(site_origin.as_str()));
    assert_eq!(
        r["conversation_id"].as_str(),
        a.conversation_id.as_deref(),
        "the page knows the agent's conversation"
    );

    // 2. Outside the policy: the visitor sees the stable error, the agent gets it.
    let r = &results["2-outside-policy"];
    assert_eq!(
        r["states"]
            .as_array()
            .and_then(|s| s.last())
            .map(|s| &s["status"]),
        Some(&json!("error")),
        "{r:#}"
    );
    assert!(
        r["status_text"]
            .as_str()
            .is_some_and(|t| t.contains("Destination not allowed")),
        "{r:#}"
    );
    let a = browser_conversation(&outside).await;
    expect_result(
        &a,
        OUTSIDE,
        "The call could not be placed: Destination not allowed",
    );

    // 3. Another origin: the browser refuses the answer (CORS), the gateway counts it.
    let r = &results["3-other-origin"];
    assert!(
        r["status_text"]
            .as_str()
            .is_some_and(|t| t.contains("Service unavailable")),
        "{r:#}"
    );
    assert!(
        r["requests_failed"].as_array().is_some_and(|f| f
            .iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains("/api/call/outbound")))),
        "the fetch failed in the browser: {r:#}"
    );
    let a = browser_conversation(&foreign).await;
    expect_result(
        &a,
        FROM_ELSEWHERE,
        "The call could not be placed: Service unavailable",
    );
    assert_eq!(a.origin.as_deref(), Some(other_origin.as_str()));
    let metrics = d.gateway.metrics();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("trunkline_policy_rejections_total{reason=\"origin_not_allowed\"} ")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused >= 1, "{metrics}");

    // 4. Accepted: the phone rings, answers, hangs up; the page showed each state in order.
    let r = &results["4-accepted"];
    assert_eq!(
        statuses_in(r, &["ringing", "in-progress", "completed"]),
        ["ringing", "in-progress", "completed"],
        "{r:#}"
    );
    let shown: Vec<&str> = r["states"]
        .as_array()
        .map(|s| s.iter().filter_map(|x| x["status"].as_str()).collect())
        .unwrap_or_default();
    let pos = |s: &str| shown.iter().position(|x| *x == s);
    assert!(
        pos("in-progress").is_some() && pos("completed") > pos("in-progress"),
        "the visible status went through in-progress to completed: {shown:?}"
    );
    let a = browser_conversation(&accepted).await;
    expect_result(
        &a,
        ACCEPTED,
        &format!("Calling {ACCEPTED}; it will ring within seconds."),
    );

    // The gateway placed exactly one call, the accepted one, and it completed.
    let calls = d.gateway.list(Default::default()).await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].to, ACCEPTED);
    assert_eq!(calls[0].status, "completed", "{:?}", calls[0]);
    // The phone call's own conversation (the gateway's agent client) was clean as well, and
    // the page learnt its id from the trigger's answer (`connect_at = "trigger"`).
    let phone_agent = d.agent_finished(1, Duration::from_secs(10)).await;
    assert_eq!(phone_agent.len(), 1);
    assert_eq!(
        r["placed"]["call_sid"].as_str(),
        Some(calls[0].call_sid.as_str())
    );
    assert_eq!(
        r["placed"]["conversation_id"].as_str(),
        phone_agent[0].conversation_id.as_deref(),
        "{r:#}"
    );
    assert_eq!(calls[0].conversation_id, phone_agent[0].conversation_id);
    let trunk_calls = d.trunk.calls();
    assert_eq!(trunk_calls.len(), 1);
    assert!(trunk_calls[0].request_uri.contains(ACCEPTED));
    let shots_taken = std::fs::read_dir(&shots).map(|d| d.count()).unwrap_or(0);
    eprintln!("{shots_taken} screenshots in {}", shots.display());
    assert!(shots_taken >= 12, "{shots_taken}");
    let _ = std::fs::remove_dir_all(&work);
}
