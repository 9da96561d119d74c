//! The browser module: `GET /widget/trunkline-widget.js` serves `web/trunkline-widget.js` exactly,
//! cacheable, and the Subresource Integrity hash documented for it is current.

mod common;

use std::net::SocketAddr;

use common::deploy;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trunkline_emulators::agent::AgentEmulatorConfig;
use trunkline_emulators::trunk::TrunkConfig;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(status, headers lower-cased, body)` of a request over a fresh connection.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_module_exactly_with_cache_headers() {
    let d = deploy(
        TrunkConfig::default(),
        AgentEmulatorConfig::default(),
        |_| {},
    )
    .await;
    let shipped = file("web/trunkline-widget.js");
    let path = "/widget/trunkline-widget.js";
    // From a page elsewhere, as a module script (CORS mode).
    let (status, headers, body) = request(
        d.http,
        "GET",
        path,
        &[("Origin", "https://www.example.com")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, shipped, "the served module is the file in web/");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let cache = header(&headers, "cache-control").expect("cache-control");
    assert!(
        cache.starts_with("public") && cache.contains("max-age="),
        "{cache}"
    );
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let etag = header(&headers, "etag").expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "a strong ETag: {etag}"
    );
    assert_eq!(
        header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()),
        Some(shipped.len())
    );

    // Revalidation: 304 without a body, the same validators.
    let (status, h304, body) = request(d.http, "GET", path, &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&h304, "etag"), Some(etag.as_str()));
    assert_eq!(header(&h304, "cache-control"), Some(cache));
    // A stale copy gets the file again.
    let (status, _, body) = request(d.http, "GET", path, &[("If-None-Match", "\"old\"")]).await;
    assert_eq!(status, 200);
    assert_eq!(body, shipped);
    // HEAD: the headers alone.
    let (status, hh, body) = request(d.http, "HEAD", path, &[]).await;
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert_eq!(header(&hh, "etag"), Some(etag.as_str()));
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - c.len()));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_documented_sri_hash_is_the_module_s() {
    assert_eq!(base64(b"Man"), "TWFu");
    assert_eq!(base64(b"Ma"), "TWE=");
    assert_eq!(base64(b"M"), "TQ==");
    let digest = sha2::Sha384::digest(file("web/trunkline-widget.js").as_bytes());
    let sri = format!("sha384-{}", base64(&digest));
    // Every place that pins the module carries the current hash, and only that one.
    for doc in ["docs/SETUP.md", "examples/website/index.html"] {
        let Ok(text) = std::fs::read_to_string(format!("{ROOT}/{doc}")) else {
            panic!("{doc} is missing");
        };
        let pinned: Vec<&str> = text
            .match_indices("sha384-")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=-".contains(c)))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        assert!(!pinned.is_empty(), "{doc} documents no SRI hash");
        for p in pinned {
            assert_eq!(
                p, sri,
                "{doc}: stale SRI hash of web/trunkline-widget.js; the current one is {sri}"
            );
        }
    }
}
