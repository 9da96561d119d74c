//! Status webhooks: `initiated`, `ringing`, `answered`, `completed` (or the final status: `busy`,
//! `no-answer`, `failed`, `canceled`) POSTed as JSON to the configured URL.
//!
//! - Signed: `X-Trunkline-Timestamp: <unix seconds>` and
//!   `X-Trunkline-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` with the secret
//!   from `TRUNKLINE_WEBHOOK_SECRET` (a receiver recomputes it and rejects stale timestamps).
//! - Never blocking a call: events go into a bounded queue; when it is full the event is dropped
//!   and counted.
//! - One delivery per event, each with an `event_id` (`<call_sid>:<event>`, the same on every
//!   retry) in the body and the `X-Trunkline-Event-Id` header, so a receiver drops repeats.
//! - Retried with exponential backoff (0.5, 1, 2, 4, 8 s) on network errors and 5xx/429; a 4xx
//!   other than 429 is final.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use trunkline_call::CallRecord;

/// Queue length before events are dropped.
const QUEUE: usize = 10_000;
/// Attempts per event.
const ATTEMPTS: u32 = 5;

/// Counters.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Delivered (2xx).
    pub delivered: AtomicU64,
    /// Given up after all attempts or a final 4xx.
    pub failed: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The webhook sender.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    stats: Arc<WebhookStats>,
}

/// One event waiting for delivery.
#[derive(Debug)]
struct Queued {
    call_sid: String,
    event_id: String,
    body: String,
}

/// The id of one event of one call: stable across retries (and restarts), unique per event.
pub fn event_id(call_sid: &str, event: &str) -> String {
    format!("{call_sid}:{event}")
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`.
pub fn signature(secret: &[u8], timestamp: u64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Webhooks {
    /// Start the sender for `url`, signing with `secret`.
    pub fn start(url: String, secret: Option<String>) -> Result<Webhooks, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        tokio::spawn(deliver(
            client,
            url,
            secret.unwrap_or_default(),
            rx,
            stats.clone(),
        ));
        Ok(Webhooks { tx, stats })
    }

    /// Counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Queue the event for `record`'s current status (never blocks).
    pub fn notify(&self, event: &str, record: &CallRecord) {
        let event_id = event_id(&record.call_sid, event);
        let body = json!({
            "event": event,
            "event_id": event_id,
            "call_sid": record.call_sid,
            "status": record.status,
            "direction": record.direction,
            "from": record.from,
            "to": record.to,
            "conversation_id": record.conversation_id,
            "sip_status": record.sip_status,
            "end_cause": record.end_cause.as_ref().map(|c| c.label()),
            "answered_by": record.amd.as_ref().map(|a| a.answered_by.as_str()),
            "amd": record.amd,
            "timestamps": record.timestamps,
        })
        .to_string();
        let queued = Queued {
            call_sid: record.call_sid.clone(),
            event_id,
            body,
        };
        if self.tx.try_send(queued).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    secret: String,
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<WebhookStats>,
) {
    while let Some(Queued {
        call_sid: sid,
        event_id,
        body,
    }) = rx.recv().await
    {
        let mut delay = Duration::from_millis(500);
        let mut ok = false;
        for attempt in 1..=ATTEMPTS {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sig = signature(secret.as_bytes(), ts, &body);
            let res = client
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-Trunkline-Timestamp", ts.to_string())
                .header("X-Trunkline-Signature", format!("sha256={sig}"))
                .header("X-Trunkline-Event-Id", event_id.as_str())
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                    warn!(call_sid = %sid, status = r.status().as_u16(), "webhook refused");
                    break;
                }
                Ok(r) => {
                    debug!(call_sid = %sid, status = r.status().as_u16(), attempt, "webhook retry")
                }
                Err(e) => debug!(call_sid = %sid, error = %e, attempt, "webhook retry"),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if ok {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn signature_matches_an_independent_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Ours signs "<ts>.<body>".
        let ours = signature(b"Jefe", 12, "3");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"12.3");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(ours, hex);
    }

    #[tokio::test]
    async fn events_are_signed_and_retried_after_a_5xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                n += 1;
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                // Read until the whole body (Content-Length) is in.
                while let Ok(k) = s.read(&mut buf[got..]).await {
                    if k == 0 {
                        break;
                    }
                    got += k;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..got]).to_string();
                let status = if n == 1 {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = seen_tx.send(text);
            }
        });
        let hooks =
            Webhooks::start(format!("http://{addr}/hook"), Some("s3cret".into())).expect("start");
        let mut r = CallRecord::new("CA1".into(), "outbound", "+1".into(), "+33612345678".into());
        r.status = "ringing".into();
        hooks.notify("ringing", &r);
        let first = seen.recv().await.expect("first attempt");
        let second = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("retried")
            .expect("second attempt");
        assert!(first.contains("\"event\":\"ringing\""));
        assert!(first.contains("\"event_id\":\"CA1:ringing\""), "{first}");
        // The retry is the same event: same id in the body and the header.
        assert!(second.contains("\"event_id\":\"CA1:ringing\""), "{second}");
        let (head, body) = second.split_once("\r\n\r\n").expect("http");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let ts: u64 = header("x-trunkline-timestamp").parse().expect("timestamp");
        assert_eq!(header("x-trunkline-event-id"), "CA1:ringing");
        assert_eq!(
            header("x-trunkline-signature"),
            format!("sha256={}", signature(b"s3cret", ts, body))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(hooks.stats().delivered.load(Ordering::Relaxed), 1);
    }
}
