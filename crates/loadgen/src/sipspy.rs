//! A transparent SIP/UDP relay between the gateway and the trunk emulator that notes when each
//! call's first INVITE passes (RFC 3261 §7.1 request line: `INVITE sip:+1555…@host SIP/2.0`),
//! so the load tester measures trigger → INVITE on the wire. The gateway's outbound proxy points
//! at the relay; datagrams from the gateway go to the trunk, the trunk's answers back to the last
//! gateway address seen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// First-INVITE arrival times, by Request-URI user part.
#[derive(Debug, Clone, Default)]
pub struct InviteLog(Arc<Mutex<HashMap<String, Instant>>>);

impl InviteLog {
    /// When the first INVITE for `user` passed.
    pub fn first_invite(&self, user: &str) -> Option<Instant> {
        self.0.lock().ok().and_then(|m| m.get(user).copied())
    }

    /// Note a datagram seen at `at`.
    pub fn observe(&self, datagram: &[u8], at: Instant) {
        if let Some(user) = invite_user(datagram)
            && let Ok(mut m) = self.0.lock()
        {
            m.entry(user.to_owned()).or_insert(at);
        }
    }
}

/// The Request-URI user of an INVITE request line.
pub fn invite_user(datagram: &[u8]) -> Option<&str> {
    let rest = datagram.strip_prefix(b"INVITE ")?;
    let end = rest.iter().position(|&b| b == b' ' || b == b'\r')?;
    let uri = std::str::from_utf8(&rest[..end]).ok()?;
    let after = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = after.split_once('@')?;
    Some(user.split(';').next().unwrap_or(user))
}

/// A running relay.
#[derive(Debug)]
pub struct SipSpy {
    addr: SocketAddr,
    log: InviteLog,
    tasks: Vec<JoinHandle<()>>,
}

impl SipSpy {
    /// Relay to `trunk`, listening on an ephemeral loopback port.
    pub async fn start(trunk: SocketAddr) -> std::io::Result<SipSpy> {
        let front = Arc::new(UdpSocket::bind(SocketAddr::new(trunk.ip(), 0)).await?);
        let back = Arc::new(UdpSocket::bind(SocketAddr::new(trunk.ip(), 0)).await?);
        let addr = front.local_addr()?;
        let log = InviteLog::default();
        let peer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (f, b, l, p) = (front.clone(), back.clone(), log.clone(), peer.clone());
        let up = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                l.observe(&buf[..n], Instant::now());
                if let Ok(mut g) = p.lock() {
                    *g = Some(from);
                }
                let _ = b.send_to(&buf[..n], trunk).await;
            }
        });
        let down = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to = peer.lock().ok().and_then(|g| *g);
                if let Some(to) = to {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        Ok(SipSpy {
            addr,
            log,
            tasks: vec![up, down],
        })
    }

    /// Where the gateway should send (its outbound proxy).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The INVITE log.
    pub fn log(&self) -> &InviteLog {
        &self.log
    }
}

impl Drop for SipSpy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_uri_user_of_an_invite_is_found() {
        let m =
            b"INVITE sip:+33600000042@trunk.pstn.twilio.com;transport=udp SIP/2.0\r\nVia: x\r\n";
        assert_eq!(invite_user(m), Some("+33600000042"));
        assert_eq!(invite_user(b"INVITE sip:+1;x=y@h SIP/2.0\r\n"), Some("+1"));
        assert_eq!(invite_user(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(invite_user(b"ACK sip:+1@h SIP/2.0\r\n"), None);
        assert_eq!(invite_user(b"INVITE sip:host SIP/2.0\r\n"), None);
    }

    #[test]
    fn only_the_first_invite_is_kept() {
        let log = InviteLog::default();
        let t = Instant::now();
        log.observe(b"INVITE sip:+1@h SIP/2.0\r\n", t);
        log.observe(
            b"INVITE sip:+1@h SIP/2.0\r\n",
            t + std::time::Duration::from_millis(5),
        );
        assert_eq!(log.first_invite("+1"), Some(t));
        assert_eq!(log.first_invite("+2"), None);
    }
}
