//! Just enough HTTP/1.1 (RFC 9112 §2–3) to route one request: the request line and headers are
//! read by hand so the signed-URL endpoint and the WebSocket upgrade (RFC 6455 §4.2) share a port.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A parsed request head plus any bytes read past it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub leftover: Vec<u8>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request head (max 16 KiB).
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<RequestHead> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    };
    let head = std::str::from_utf8(&buf[..end])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-utf8 head"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(RequestHead {
        method,
        target,
        headers,
        leftover: buf[end..].to_vec(),
    })
}

/// A complete small HTTP response (`Connection: close`).
pub fn response(status: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    response_with(status, reason, content_type, body, false)
}

/// A complete small HTTP response; with `keep_alive` the connection stays open for the next
/// request (HTTP/1.1's default, RFC 9112 §9.3), else `Connection: close`.
pub fn response_with(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_head_and_query() {
        let raw = b"GET /v1/convai/conversation?agent_id=a%2Fb&x=1 HTTP/1.1\r\nHost: h\r\nXI-API-KEY: k\r\n\r\nextra";
        let mut r = &raw[..];
        let h = read_head(&mut r).await.unwrap();
        assert_eq!(h.method, "GET");
        assert_eq!(h.path(), "/v1/convai/conversation");
        assert_eq!(h.query("agent_id").as_deref(), Some("a/b"));
        assert_eq!(h.query("missing"), None);
        assert_eq!(h.header("xi-api-key"), Some("k"));
        assert_eq!(h.leftover, b"extra");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
