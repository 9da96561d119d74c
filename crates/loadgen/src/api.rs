//! The gateway's HTTP API as the load tester uses it — the outbound trigger, a call's record,
//! `/metrics` and `/readyz` — over one pooled HTTP/1.1 client (`hyper-util`'s client, plain
//! HTTP: the gateway under test is on loopback). Connections are kept alive and reused, so the
//! trigger POSTs of a 50 calls/s run do not each pay a TCP handshake.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The longest one request may take, response body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no response.
#[derive(Debug)]
pub enum ApiError {
    /// The path does not make a URI.
    Uri(String),
    /// Connecting, sending or reading failed (the error and its causes).
    Http(String),
    /// No complete response within [`REQUEST_TIMEOUT`].
    Timeout,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Uri(e) => write!(f, "bad URI: {e}"),
            ApiError::Http(e) => f.write_str(e),
            ApiError::Timeout => write!(f, "no response in {} s", REQUEST_TIMEOUT.as_secs()),
        }
    }
}

impl std::error::Error for ApiError {}

/// An error and its causes, `a: b: c` (hyper's own message alone is terse: "client error
/// (Connect)").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// A gateway's HTTP API at `addr`, with a bearer token. Cheap to clone (the connection pool is
/// shared).
#[derive(Clone)]
pub struct GatewayApi {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    token: String,
}

impl fmt::Debug for GatewayApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GatewayApi {
    /// The API at `addr`. Must be called inside a tokio runtime's context only when used.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> GatewayApi {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        GatewayApi {
            client,
            addr,
            token: token.into(),
        }
    }

    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request; the status and the whole body (read to the end, which hands the connection
    /// back to the pool).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        json_body: Option<String>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let uri: Uri = format!("http://{}{path}", self.addr)
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ApiError::Uri(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if json_body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json_body.unwrap_or_default())))
            .map_err(|e| ApiError::Uri(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| ApiError::Http(with_causes(&e)))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ApiError::Http(with_causes(&e)))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout)?
    }

    /// `POST /api/call/outbound` to `number`: the HTTP status.
    pub async fn trigger(&self, number: &str) -> Result<u16, ApiError> {
        let body = serde_json::json!({ "phoneNumber": number }).to_string();
        let (status, _) = self
            .request(Method::POST, "/api/call/outbound", Some(body))
            .await?;
        Ok(status.as_u16())
    }

    /// `GET /api/calls/{sid}`: the call's record (`call` of the answer), if found.
    pub async fn call_record(&self, sid: &str) -> Option<serde_json::Value> {
        let (status, body) = self
            .request(Method::GET, &format!("/api/calls/{sid}"), None)
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let mut v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(v.get_mut("call")?.take())
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics_text(&self) -> Option<String> {
        let (status, body) = self.request(Method::GET, "/metrics", None).await.ok()?;
        if !status.is_success() {
            return None;
        }
        String::from_utf8(body.to_vec()).ok()
    }

    /// `GET /readyz` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(
            self.request(Method::GET, "/readyz", None).await,
            Ok((StatusCode::OK, _))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny HTTP/1.1 server that answers every request on a connection with `200` and counts
    /// connections and requests: the client keeps one connection for sequential requests.
    #[tokio::test]
    async fn sequential_requests_reuse_one_kept_alive_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut requests = Vec::new();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while requests.len() < 3 {
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the client closed the connection");
                buf.extend_from_slice(&chunk[..n]);
                // Requests are complete once the head and the Content-Length body arrived.
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    buf.drain(..end + 4 + len);
                    requests.push((head, body));
                    let answer = br#"{"call":{"uplink":{"dropped_samples":160}}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n",
                        answer.len()
                    );
                    s.write_all(resp.as_bytes()).await.expect("write");
                    s.write_all(answer).await.expect("write");
                }
            }
            requests
        });
        let api = GatewayApi::new(addr, "tok");
        assert_eq!(api.trigger("+33600000001").await.expect("POST"), 200);
        let rec = api.call_record("CA1").await.expect("record");
        assert_eq!(rec["uplink"]["dropped_samples"], 160);
        assert!(api.ready().await);
        let requests = server.await.expect("server");
        let (head, body) = &requests[0];
        assert!(
            head.starts_with("POST /api/call/outbound HTTP/1.1"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer tok"),
            "{head}"
        );
        assert_eq!(body, r#"{"phoneNumber":"+33600000001"}"#);
        assert!(requests[1].0.starts_with("GET /api/calls/CA1 "));
        assert!(requests[2].0.starts_with("GET /readyz "));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_with_its_cause() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let api = GatewayApi::new(addr, "tok");
        let e = api.trigger("+33600000001").await.expect_err("refused");
        assert!(e.to_string().contains("refused"), "{e}");
        assert!(!api.ready().await);
    }
}
