//! RFC 3263 §4.3 failover of outbound INVITEs in [`Legs`], on virtual time and without sockets:
//! our `Ua` + `Legs` against several trunk addresses, each a real `Ua` or a dead address that
//! drops everything. Each test asserts what every address received and what `Legs` reported.

// One real `Instant` is read as the origin of virtual time; everything after is simulated.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trunkline_call::legs::{
    Failover, LegEvent, LegId, Legs, LegsConfig, SourceFilter, TrunkTarget,
};
use trunkline_call::{SipAction, SipEvent};
use trunkline_sip::auth::Credentials;
use trunkline_sip::message::{HostPort, Message, Method, Request};
use trunkline_sip::sdp::{self, MediaParams, SessionDescription};
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind, TxId};
use trunkline_sip::ua::{Ua, UaConfig, UaEvent};

const GW: &str = "10.0.0.1:5060";
const A: &str = "10.0.1.1:5060";
const B: &str = "10.0.1.2:5060";
const C: &str = "10.0.1.3:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ua(a: SocketAddr, seed: u64) -> Ua {
    let mut ua = Ua::new(
        UaConfig::default(),
        IdGen::new(Box::new(SplitMix64::new(seed))),
    );
    ua.set_sent_by(TransportKind::Udp, a);
    ua
}

fn config(target_timeout_ms: u64, total_secs: u64) -> LegsConfig {
    LegsConfig {
        trunk: TrunkTarget {
            request_uri_host: HostPort::parse("example.pstn.twilio.com").unwrap(),
            transport: TransportKind::Udp,
            credentials: None,
            caller_id: "+15550001111".into(),
            session_expires: None,
            encryption: Default::default(),
        },
        inbound: SourceFilter::allow_all(),
        notify_timeout: Duration::from_secs(32),
        failover: Failover {
            target_timeout: Duration::from_millis(target_timeout_ms),
            total: Duration::from_secs(total_secs),
        },
        inbound_auth: None,
    }
}

/// A trunk address: a live `Ua`, or dead (everything sent to it is lost).
struct Peer {
    ua: Option<Ua>,
    events: VecDeque<UaEvent>,
    /// Every request it was sent (received or not), with when.
    got: Vec<(Instant, Request)>,
}

struct Net {
    now: Instant,
    gw: Ua,
    legs: Legs,
    peers: HashMap<SocketAddr, Peer>,
    events: Vec<(LegId, LegEvent)>,
}

impl Net {
    fn new(cfg: LegsConfig, peers: &[(&str, bool)]) -> Self {
        let peers = peers
            .iter()
            .enumerate()
            .map(|(i, (a, live))| {
                let a = addr(a);
                let p = Peer {
                    ua: live.then(|| ua(a, 10 + i as u64)),
                    events: VecDeque::new(),
                    got: Vec::new(),
                };
                (a, p)
            })
            .collect();
        Self {
            now: Instant::now(),
            gw: ua(addr(GW), 1),
            legs: Legs::new(cfg),
            peers,
            events: Vec::new(),
        }
    }

    fn drive(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(t) = self.gw.poll_transmit() {
                moved = true;
                let p = self.peers.get_mut(&t.destination).expect("a known address");
                if let Message::Request(r) = Message::parse(t.payload.clone()).unwrap() {
                    p.got.push((self.now, r));
                }
                if let Some(u) = p.ua.as_mut() {
                    u.handle_datagram(t.payload, addr(GW), TransportKind::Udp, self.now);
                }
            }
            while let Some(ev) = self.gw.poll_event() {
                moved = true;
                self.legs.handle_ua_event(&mut self.gw, ev, self.now);
            }
            while let Some(ev) = self.legs.poll_event() {
                moved = true;
                self.events.push(ev);
            }
            for (a, p) in self.peers.iter_mut() {
                let Some(u) = p.ua.as_mut() else { continue };
                while let Some(t) = u.poll_transmit() {
                    moved = true;
                    assert_eq!(t.destination, addr(GW));
                    self.gw
                        .handle_datagram(t.payload, *a, TransportKind::Udp, self.now);
                }
                while let Some(ev) = u.poll_event() {
                    moved = true;
                    p.events.push_back(ev);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("never went quiet");
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.drive();
        loop {
            let mut next = [self.gw.poll_timeout(), self.legs.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            for p in self.peers.values_mut() {
                if let Some(t) = p.ua.as_mut().and_then(|u| u.poll_timeout()) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.gw.handle_timeout(self.now);
                    self.legs.handle_timeout(&mut self.gw, self.now);
                    for p in self.peers.values_mut() {
                        if let Some(u) = p.ua.as_mut() {
                            u.handle_timeout(self.now);
                        }
                    }
                    self.drive();
                }
                _ => {
                    self.now = until;
                    self.drive();
                    return;
                }
            }
        }
    }

    fn call(&mut self, leg: LegId, targets: &[&str]) {
        let media = MediaParams::g711(addr(GW).ip(), 40000, 1);
        self.legs.outbound_targets(
            leg,
            "+33612345678",
            targets.iter().map(|t| addr(t)).collect(),
            media,
        );
        self.legs
            .handle_action(&mut self.gw, leg, SipAction::Invite, self.now);
        self.drive();
    }

    /// The INVITE the live peer at `a` got (its server transaction).
    fn incoming(&mut self, a: &str) -> (TxId, Request) {
        let p = self.peers.get_mut(&addr(a)).unwrap();
        let i = p
            .events
            .iter()
            .position(|e| matches!(e, UaEvent::IncomingCall { .. }))
            .unwrap_or_else(|| panic!("no INVITE at {a}"));
        match p.events.remove(i).unwrap() {
            UaEvent::IncomingCall { tx, request, .. } => (tx, request),
            _ => unreachable!(),
        }
    }

    fn respond(&mut self, a: &str, tx: TxId, status: u16, body: Option<SessionDescription>) {
        let u = self.peers.get_mut(&addr(a)).unwrap().ua.as_mut().unwrap();
        let mut r = u.make_response(tx, status).unwrap();
        if status == 407 {
            r.push_header(
                "Proxy-Authenticate",
                "Digest realm=\"sip.twilio.com\", nonce=\"abc123\", algorithm=MD5, qop=\"auth\"",
            );
        }
        if let Some(s) = body {
            r.set_body("application/sdp", bytes::Bytes::from(s.to_string()));
        }
        u.respond(tx, r, self.now).unwrap();
        self.drive();
    }

    /// INVITEs sent to `a`, with when.
    fn invites(&self, a: &str) -> Vec<(Instant, Request)> {
        self.peers[&addr(a)]
            .got
            .iter()
            .filter(|(_, r)| r.method == Method::Invite)
            .cloned()
            .collect()
    }

    fn sip_events(&mut self) -> Vec<SipEvent> {
        self.events
            .drain(..)
            .filter_map(|(_, e)| match e {
                LegEvent::Call(ev) => Some(ev),
                _ => None,
            })
            .collect()
    }
}

fn answer(invite: &Request, port: u16) -> SessionDescription {
    let offer = SessionDescription::parse(std::str::from_utf8(&invite.body).unwrap()).unwrap();
    let ours = MediaParams::g711(addr(B).ip(), port, 9);
    sdp::answer(&offer, &ours).unwrap().sdp
}

fn cseq(r: &Request) -> u32 {
    r.cseq().unwrap().seq
}

fn branch(r: &Request) -> String {
    r.top_via().unwrap().branch().unwrap().to_owned()
}

#[test]
fn first_target_503_then_the_second_answers() {
    let mut n = Net::new(config(4000, 30), &[(A, true), (B, true)]);
    n.call(1, &[A, B]);
    let (tx, inv_a) = n.incoming(A);
    n.respond(A, tx, 503, None);
    let (tx, inv_b) = n.incoming(B);
    // The same call (Call-ID, From tag, To), a new transaction (branch), a higher CSeq.
    assert_eq!(inv_b.call_id(), inv_a.call_id());
    assert_eq!(inv_b.from_tag(), inv_a.from_tag());
    assert_eq!(inv_b.header("To").next(), inv_a.header("To").next());
    assert_ne!(branch(&inv_b), branch(&inv_a));
    assert!(
        cseq(&inv_b) > cseq(&inv_a),
        "{} > {}",
        cseq(&inv_b),
        cseq(&inv_a)
    );
    assert_eq!(inv_b.uri.to_string(), inv_a.uri.to_string());
    assert_eq!(inv_b.body, inv_a.body);
    n.respond(B, tx, 200, Some(answer(&inv_b, 30000)));
    let evs = n.sip_events();
    assert!(
        matches!(
            evs.as_slice(),
            [
                SipEvent::Invited { .. },
                SipEvent::Target { addr: t, attempt: 2 },
                SipEvent::Answered { media: Some(_) },
            ] if *t == addr(B)
        ),
        "{evs:#?}"
    );
    assert_eq!(n.legs.stats().failovers, 1);
    assert_eq!(n.legs.stats().outbound_invites, 2);
    // The ACK for the 503 went to A, the ACK for the 200 to B.
    assert!(
        n.peers[&addr(A)]
            .got
            .iter()
            .any(|(_, r)| r.method == Method::Ack)
    );
    assert!(
        n.peers[&addr(B)]
            .got
            .iter()
            .any(|(_, r)| r.method == Method::Ack)
    );
}

#[test]
fn a_silent_first_target_is_left_after_the_failover_timeout() {
    let mut n = Net::new(config(4000, 30), &[(A, false), (B, true)]);
    let start = n.now;
    n.call(1, &[A, B]);
    n.advance(Duration::from_millis(3999));
    assert!(n.invites(B).is_empty(), "not before the failover timeout");
    n.advance(Duration::from_millis(1));
    let to_b = n.invites(B);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_b[0].0 - start, Duration::from_millis(4000));
    let (tx, inv_b) = n.incoming(B);
    n.respond(B, tx, 180, None);
    n.respond(B, tx, 200, Some(answer(&inv_b, 30002)));
    // A got the INVITE and its retransmissions (0, 0.5, 1.5, 3.5 s) and nothing after 4 s.
    let to_a: Vec<Duration> = n.invites(A).iter().map(|(t, _)| *t - start).collect();
    assert_eq!(
        to_a,
        [0, 500, 1500, 3500].map(Duration::from_millis),
        "A is abandoned at the failover"
    );
    n.advance(Duration::from_secs(40));
    assert_eq!(n.invites(A).len(), 4, "no retransmission to A later");
    let evs = n.sip_events();
    assert!(
        matches!(
            evs.as_slice(),
            [
                SipEvent::Invited { .. },
                SipEvent::Target { attempt: 2, .. },
                SipEvent::Progress { status: 180, .. },
                SipEvent::Answered { .. },
            ]
        ),
        "{evs:#?}"
    );
}

#[test]
fn a_target_that_answered_100_is_not_left_for_silence() {
    let mut n = Net::new(config(4000, 30), &[(A, true), (B, true)]);
    n.call(1, &[A, B]);
    let (tx, inv) = n.incoming(A);
    n.respond(A, tx, 100, None);
    n.advance(Duration::from_secs(10));
    assert!(n.invites(B).is_empty());
    n.respond(A, tx, 200, Some(answer(&inv, 30004)));
    assert_eq!(n.legs.stats().failovers, 0);
}

#[test]
fn all_targets_fail_with_the_last_status() {
    let mut n = Net::new(config(4000, 30), &[(A, true), (B, true)]);
    n.call(1, &[A, B]);
    let (tx, _) = n.incoming(A);
    n.respond(A, tx, 503, None);
    let (tx, _) = n.incoming(B);
    n.respond(B, tx, 503, None);
    let evs = n.sip_events();
    assert!(
        matches!(evs.last(), Some(SipEvent::Failed { status: 503, .. })),
        "{evs:#?}"
    );
    assert_eq!(n.legs.stats().failovers, 1);
    assert!(n.legs.is_empty());
}

#[test]
fn a_final_other_than_503_does_not_fail_over() {
    let mut n = Net::new(config(4000, 30), &[(A, true), (B, true)]);
    n.call(1, &[A, B]);
    let (tx, _) = n.incoming(A);
    n.respond(A, tx, 486, None);
    assert!(n.invites(B).is_empty());
    assert!(matches!(
        n.sip_events().last(),
        Some(SipEvent::Failed { status: 486, .. })
    ));
}

#[test]
fn silent_targets_stop_at_the_ring_timeout_and_the_last_one_times_out_408() {
    // Three dead addresses, 4 s per target, 6 s for all: A at 0, B at 4 s, no C (8 s > 6 s);
    // B keeps its Timer B (64·T1 = 32 s) and the call fails 408 at 36 s.
    let mut n = Net::new(config(4000, 6), &[(A, false), (B, false), (C, false)]);
    let start = n.now;
    n.call(1, &[A, B, C]);
    n.advance(Duration::from_secs(35));
    assert!(n.invites(C).is_empty(), "no attempt after the total");
    assert_eq!(n.invites(B)[0].0 - start, Duration::from_secs(4));
    assert!(
        !n.sip_events()
            .iter()
            .any(|e| matches!(e, SipEvent::Failed { .. }))
    );
    n.advance(Duration::from_secs(2));
    let evs = n.sip_events();
    assert!(
        matches!(evs.last(), Some(SipEvent::Failed { status: 408, .. })),
        "{evs:#?}"
    );
}

#[test]
fn a_timer_b_timeout_fails_over_when_the_target_timeout_is_longer() {
    // failover_timeout at its 32 s maximum: Timer B (32 s) of A fires first and fails over.
    let mut n = Net::new(config(32_000, 60), &[(A, false), (B, true)]);
    let start = n.now;
    n.call(1, &[A, B]);
    n.advance(Duration::from_secs(33));
    let to_b = n.invites(B);
    assert_eq!(to_b.len(), 1);
    assert!(to_b[0].0 - start <= Duration::from_secs(32));
    let (tx, inv) = n.incoming(B);
    n.respond(B, tx, 200, Some(answer(&inv, 30006)));
    assert!(matches!(
        n.sip_events().last(),
        Some(SipEvent::Answered { .. })
    ));
}

#[test]
fn digest_challenges_are_answered_per_target() {
    let mut cfg = config(4000, 30);
    cfg.trunk.credentials = Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    });
    let mut n = Net::new(cfg, &[(A, true), (B, true)]);
    n.call(1, &[A, B]);
    // A challenges, gets the authorised retry, then answers 503.
    let (tx, _) = n.incoming(A);
    n.respond(A, tx, 407, None);
    let (tx, inv_a2) = n.incoming(A);
    assert!(inv_a2.header("Proxy-Authorization").next().is_some());
    n.respond(A, tx, 503, None);
    // B gets the INVITE without A's credentials (its own challenge comes first), a CSeq above
    // both of A's.
    let (tx, inv_b) = n.incoming(B);
    assert!(inv_b.header("Proxy-Authorization").next().is_none());
    assert!(cseq(&inv_b) > cseq(&inv_a2));
    n.respond(B, tx, 407, None);
    let (tx, inv_b2) = n.incoming(B);
    assert!(inv_b2.header("Proxy-Authorization").next().is_some());
    assert_eq!(inv_b2.call_id(), inv_a2.call_id());
    n.respond(B, tx, 200, Some(answer(&inv_b2, 30008)));
    assert!(matches!(
        n.sip_events().last(),
        Some(SipEvent::Answered { .. })
    ));
}

#[test]
fn no_targets_fails_503() {
    let mut n = Net::new(config(4000, 30), &[]);
    n.call(1, &[]);
    assert!(matches!(
        n.sip_events().as_slice(),
        [SipEvent::Failed { status: 503, .. }]
    ));
}

#[test]
fn a_transport_error_fails_over_at_once() {
    // A refused TCP connection (or any send error) to A: the INVITE fails now (RFC 3261 §8.1.3.1),
    // not after Timer B, and goes to B.
    let mut n = Net::new(config(4000, 30), &[(A, false), (B, true)]);
    let start = n.now;
    n.call(1, &[A, B]);
    n.gw.handle_transport_error(addr(A), TransportKind::Udp, n.now);
    n.drive();
    let to_b = n.invites(B);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_b[0].0, start, "no timer waited for");
    // A transport error for an address without pending requests changes nothing.
    n.gw.handle_transport_error(addr(C), TransportKind::Udp, n.now);
    let (tx, inv) = n.incoming(B);
    n.respond(B, tx, 200, Some(answer(&inv, 30010)));
    assert!(matches!(
        n.sip_events().last(),
        Some(SipEvent::Answered { .. })
    ));
    assert_eq!(n.legs.stats().failovers, 1);
}
