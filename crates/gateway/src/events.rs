//! The visitor's live call status: per-call capability tokens and the status event hub.
//!
//! The trigger's answer carries a `status_token` for the call it placed: `"<expiry>.<mac>"`, where
//! `expiry` is a Unix time in seconds and `mac` the hex HMAC-SHA256, under the status key, of
//! `trunkline-status-v1|<call_sid>|<expiry>`. It grants one thing: reading that one call's status
//! from `GET /api/calls/{call_sid}/events?token=…` (Server-Sent Events). It is refused after its
//! expiry (`http.status_token_ttl_secs` after it was issued) and `http.status_token_grace_secs`
//! after its call ended, whichever comes first. The key comes from `TRUNKLINE_STATUS_KEY`, or is
//! random at start (tokens then die with the process). It is never the API bearer token, and the
//! MAC is compared in constant time.
//!
//! The hub keeps, per call, the last status published and a broadcast channel of the next ones:
//! a subscriber gets the current status first, then every change, and the stream ends after the
//! final status. The service publishes every record snapshot ([`CallEvents::publish`]); only
//! changes of status among the public ones are events.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use trunkline_call::CallRecord;

/// Statuses a call is in while it lasts, in order.
pub const LIVE_STATUSES: [&str; 3] = ["initiated", "ringing", "in-progress"];
/// The final statuses: the last event of a stream.
pub const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

/// The stable refusal of a bad, expired or foreign token (401).
pub const BAD_TOKEN: &str = "Invalid or expired status token";

/// Longest call sid a token is issued or checked for.
const MAX_SID: usize = 128;
const DOMAIN: &str = "trunkline-status-v1";

/// Whether `status` ends a stream.
pub fn is_final_status(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// One status change, as the `data` of an SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEvent {
    /// Our call id.
    pub call_sid: String,
    /// `initiated`, `ringing`, `in-progress`, `completed`, `busy`, `no-answer`, `failed`,
    /// `canceled`.
    pub status: String,
    /// The agent's conversation id, once known.
    pub conversation_id: Option<String>,
    /// The SIP Call-ID of the INVITE, once known.
    pub sip_call_id: Option<String>,
    /// When the gateway saw the change, Unix milliseconds.
    pub at: u64,
    /// Not a status change: the agent's conversation id became known while the status stayed
    /// the same (in `answer` mode it arrives just after `in-progress`). Sent as
    /// `event: conversation`, once, so that `event: status` stays one event per status.
    #[serde(skip)]
    pub ids_only: bool,
}

struct Entry {
    last: StatusEvent,
    /// Made by the first subscriber: a channel holds its 16 slots (~2 KiB) from the start, and
    /// most calls are never watched.
    tx: Option<broadcast::Sender<StatusEvent>>,
    ended: Option<Instant>,
}

/// What a subscriber gets.
#[derive(Debug)]
pub enum Subscription {
    /// The current status, and the changes to come (none when the current one is final).
    Live(StatusEvent, Option<broadcast::Receiver<StatusEvent>>),
    /// The call is unknown here or ended longer ago than the grace period.
    Gone,
}

/// Tokens and the per-call status hub.
pub struct CallEvents {
    key: Vec<u8>,
    ttl: Duration,
    grace: Duration,
    calls: Mutex<HashMap<String, Entry>>,
}

impl std::fmt::Debug for CallEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEvents")
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// 32 random bytes from the OS (`/dev/urandom`), mixed with `RandomState` keys should that fail.
fn random_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .is_ok();
    if !from_os {
        use std::hash::{BuildHasher, Hasher};
        for chunk in key.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(unix_now().as_nanos());
            let bytes = h.finish().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    key
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl CallEvents {
    /// A hub whose tokens are signed with `key` (random when `None`), refused `ttl` after they
    /// were issued and `grace` after their call ended.
    pub fn new(key: Option<&str>, ttl: Duration, grace: Duration) -> Self {
        CallEvents {
            key: key.map_or_else(random_key, |k| k.as_bytes().to_vec()),
            ttl,
            grace,
            calls: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, call_sid: &str, expiry: u64) -> Option<Vec<u8>> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        m.update(format!("{DOMAIN}|{call_sid}|{expiry}").as_bytes());
        Some(m.finalize().into_bytes().to_vec())
    }

    /// A token for `call_sid`, valid from now for the configured lifetime.
    pub fn issue(&self, call_sid: &str) -> String {
        self.issue_until(call_sid, (unix_now() + self.ttl).as_secs())
    }

    /// A token for `call_sid` that expires at `expiry` (Unix seconds).
    pub fn issue_until(&self, call_sid: &str, expiry: u64) -> String {
        let mac = self.mac(call_sid, expiry).unwrap_or_default();
        format!("{expiry}.{}", hex(&mac))
    }

    /// Whether `token` grants `call_sid`'s status now. Malformed, foreign and expired tokens are
    /// all just `false`; the MAC is compared in constant time.
    pub fn verify(&self, call_sid: &str, token: &str) -> bool {
        if call_sid.is_empty() || call_sid.len() > MAX_SID || token.len() > 96 {
            return false;
        }
        let Some((expiry, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(expiry) = expiry.parse::<u64>() else {
            return false;
        };
        if unix_now().as_secs() >= expiry {
            return false;
        }
        let (Some(given), Some(expected)) = (unhex(mac), self.mac(call_sid, expiry)) else {
            return false;
        };
        given.len() == expected.len() && bool::from(given.ct_eq(&expected))
    }

    /// A record snapshot of a call: an event when its status changed to a public one.
    pub fn publish(&self, r: &CallRecord) {
        let status = r.status.as_str();
        if !LIVE_STATUSES.contains(&status) && !is_final_status(status) {
            return;
        }
        let Ok(mut calls) = self.calls.lock() else {
            return;
        };
        let now = Instant::now();
        let grace = self.grace;
        calls.retain(|_, e| e.ended.is_none_or(|t| now.duration_since(t) <= grace));
        let event = StatusEvent {
            call_sid: r.call_sid.clone(),
            status: status.to_owned(),
            conversation_id: r.conversation_id.clone(),
            sip_call_id: r.sip_call_id.clone(),
            at: u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX),
            ids_only: false,
        };
        let ended = is_final_status(status).then_some(now);
        match calls.get_mut(&r.call_sid) {
            Some(e) => {
                if e.ended.is_some() || e.last.status == status {
                    // A later snapshot of the same status (or after the end): not a status
                    // event, but the ids it learnt are kept for the next subscriber, and a live
                    // call's new conversation id is told once as an `ids_only` event.
                    if e.last.conversation_id.is_none() && event.conversation_id.is_some() {
                        e.last.conversation_id = event.conversation_id.clone();
                        if e.ended.is_none() {
                            let mut update = e.last.clone();
                            update.ids_only = true;
                            update.at = event.at;
                            if update.sip_call_id.is_none() {
                                update.sip_call_id = event.sip_call_id.clone();
                            }
                            if let Some(tx) = &e.tx {
                                let _ = tx.send(update);
                            }
                        }
                    }
                    if e.last.sip_call_id.is_none() {
                        e.last.sip_call_id = event.sip_call_id;
                    }
                    return;
                }
                e.last = event.clone();
                e.ended = ended;
                if let Some(tx) = &e.tx {
                    let _ = tx.send(event);
                }
            }
            None => {
                calls.insert(
                    r.call_sid.clone(),
                    Entry {
                        last: event,
                        tx: None,
                        ended,
                    },
                );
            }
        }
    }

    /// The current status of `call_sid` and a receiver of the changes to come.
    pub fn subscribe(&self, call_sid: &str) -> Subscription {
        let Ok(mut calls) = self.calls.lock() else {
            return Subscription::Gone;
        };
        match calls.get_mut(call_sid) {
            Some(e) if e.ended.is_some_and(|t| t.elapsed() > self.grace) => Subscription::Gone,
            Some(e) => {
                let rx = e.ended.is_none().then(|| {
                    e.tx.get_or_insert_with(|| broadcast::channel(16).0)
                        .subscribe()
                });
                Subscription::Live(e.last.clone(), rx)
            }
            None => Subscription::Gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> CallEvents {
        CallEvents::new(
            Some("test-key"),
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_token_grants_its_call_only_until_it_expires() {
        let h = hub();
        let t = h.issue("CA1");
        assert!(h.verify("CA1", &t));
        assert!(!h.verify("CA2", &t));
        let past = unix_now().as_secs() - 1;
        assert!(!h.verify("CA1", &h.issue_until("CA1", past)));
        // A changed expiry breaks the MAC.
        let (_, mac) = t.split_once('.').expect("dot");
        let later = format!("{}.{mac}", unix_now().as_secs() + 100_000);
        assert!(!h.verify("CA1", &later));
        for bad in ["", ".", "x.y", "1.zz", &t[..t.len() - 2], "99999999999.00"] {
            assert!(!h.verify("CA1", bad), "{bad}");
        }
        // Another key, another token.
        let other = CallEvents::new(None, Duration::from_secs(60), Duration::from_secs(60));
        assert!(!other.verify("CA1", &t));
    }

    #[test]
    fn a_call_nobody_watches_holds_no_channel() {
        let h = hub();
        let mut r = CallRecord::new("CA3".into(), "outbound", "+1".into(), "+2".into());
        for status in ["initiated", "ringing", "in-progress"] {
            r.status = status.into();
            h.publish(&r);
        }
        let has_channel = |h: &CallEvents| h.calls.lock().expect("lock")["CA3"].tx.is_some();
        assert!(!has_channel(&h));
        let Subscription::Live(now, Some(mut rx)) = h.subscribe("CA3") else {
            panic!("live");
        };
        assert_eq!(now.status, "in-progress");
        assert!(has_channel(&h));
        r.status = "completed".into();
        h.publish(&r);
        assert_eq!(rx.try_recv().expect("event").status, "completed");
    }

    #[test]
    fn a_conversation_id_learnt_within_a_status_is_told_once_as_its_own_event() {
        let h = hub();
        let mut r = CallRecord::new("CA2".into(), "outbound", "+1".into(), "+2".into());
        r.status = "in-progress".into();
        h.publish(&r);
        let Subscription::Live(first, Some(mut rx)) = h.subscribe("CA2") else {
            panic!("live");
        };
        assert_eq!(first.conversation_id, None);
        r.conversation_id = Some("conv_7".into());
        h.publish(&r);
        h.publish(&r);
        r.status = "completed".into();
        h.publish(&r);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.status, e.conversation_id, e.ids_only))
            .collect();
        assert_eq!(
            got,
            [
                ("in-progress".to_owned(), Some("conv_7".to_owned()), true),
                ("completed".to_owned(), Some("conv_7".to_owned()), false),
            ]
        );
    }

    #[test]
    fn subscribers_get_the_current_status_then_changes_once() {
        let h = hub();
        let mut r = CallRecord::new("CA1".into(), "outbound", "+1".into(), "+2".into());
        r.status = "initiated".into();
        h.publish(&r);
        let Subscription::Live(first, Some(mut rx)) = h.subscribe("CA1") else {
            panic!("live");
        };
        assert_eq!(first.status, "initiated");
        h.publish(&r);
        r.status = "ringing".into();
        h.publish(&r);
        h.publish(&r);
        r.status = "ending".into();
        h.publish(&r);
        r.status = "completed".into();
        r.conversation_id = Some("conv".into());
        h.publish(&r);
        h.publish(&r);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.status)
            .collect();
        assert_eq!(got, ["ringing", "completed"]);
        let Subscription::Live(last, None) = h.subscribe("CA1") else {
            panic!("final");
        };
        assert_eq!(last.conversation_id.as_deref(), Some("conv"));
        assert!(matches!(h.subscribe("CA9"), Subscription::Gone));
    }
}
