//! Deterministic RFC 3261 §17 timer behaviour with virtual time: the test jumps from one deadline to the
//! next (quinn-proto style), so 32 s of retransmissions run in microseconds and never flake.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch; nothing sleeps
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::transaction::TimerConfig;
use trunkline_sip::transaction::fsm::{
    Action, ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, State,
};

fn secs(at: Instant, t0: Instant) -> f64 {
    at.saturating_duration_since(t0).as_secs_f64()
}

/// Runs a machine to completion by jumping to each deadline, returning (time, action) pairs.
fn run<M>(
    t0: Instant,
    mut first: Vec<Action>,
    machine: &mut M,
    deadline: impl Fn(&M) -> Option<Instant>,
    mut fire: impl FnMut(&mut M, Instant, &mut Vec<Action>),
) -> Vec<(f64, Action)> {
    let mut log: Vec<(f64, Action)> = first.drain(..).map(|a| (0.0, a)).collect();
    let mut out = Vec::new();
    while let Some(at) = deadline(machine) {
        fire(machine, at, &mut out);
        log.extend(out.drain(..).map(|a| (secs(at, t0), a)));
        assert!(log.len() < 1000, "runaway timers");
    }
    log
}

fn transmit_times(log: &[(f64, Action)]) -> Vec<f64> {
    log.iter()
        .filter(|(_, a)| matches!(a, Action::Transmit(_)))
        .map(|(t, _)| *t)
        .collect()
}

fn time_of(log: &[(f64, Action)], want: &Action) -> Option<f64> {
    log.iter().find(|(_, a)| a == want).map(|(t, _)| *t)
}

#[test]
fn invite_client_retransmits_at_doubling_intervals_and_times_out_at_64_t1() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    let log = run(
        t0,
        out,
        &mut tx,
        ClientInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    assert_eq!(
        transmit_times(&log),
        vec![0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    );
    assert_eq!(time_of(&log, &Action::Timeout), Some(32.0));
    assert_eq!(log.last().map(|(_, a)| a.clone()), Some(Action::Terminated));
    assert_eq!(tx.state(), State::Terminated);
}

#[test]
fn invite_client_over_tcp_sends_once_and_times_out_at_64_t1() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        true,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    let log = run(
        t0,
        out,
        &mut tx,
        ClientInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    assert_eq!(transmit_times(&log), vec![0.0]);
    assert_eq!(time_of(&log, &Action::Timeout), Some(32.0));
}

#[test]
fn invite_client_t1_is_configurable() {
    let t0 = Instant::now();
    let cfg = TimerConfig {
        t1: Duration::from_millis(100),
        ..TimerConfig::default()
    };
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(Bytes::from_static(b"INVITE"), false, cfg, t0, &mut out);
    let log = run(
        t0,
        out,
        &mut tx,
        ClientInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    let times: Vec<String> = transmit_times(&log)
        .iter()
        .map(|t| format!("{t:.1}"))
        .collect();
    assert_eq!(times, ["0.0", "0.1", "0.3", "0.7", "1.5", "3.1", "6.3"]);
    assert_eq!(
        time_of(&log, &Action::Timeout).map(|t| format!("{t:.1}")),
        Some("6.4".into())
    );
}

#[test]
fn invite_client_provisional_stops_retransmissions_and_timer_b() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    out.clear();
    tx.handle_timeout(t0 + Duration::from_millis(500), &mut out);
    assert!(matches!(out.as_slice(), [Action::Transmit(_)]));
    out.clear();
    tx.handle_response(180, t0 + Duration::from_millis(700), &mut out);
    assert_eq!(out, vec![Action::PassUp]);
    assert_eq!(tx.state(), State::Proceeding);
    assert_eq!(tx.next_deadline(), None, "no A, no B in Proceeding");
}

#[test]
fn invite_client_timer_d_absorbs_retransmitted_final_responses_with_acks_for_32s_on_udp() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    out.clear();
    let t = t0 + Duration::from_millis(100);
    tx.handle_response(486, t, &mut out);
    assert_eq!(out, vec![Action::BuildAck, Action::PassUp]);
    out.clear();
    let ack = Bytes::from_static(b"ACK");
    assert_eq!(tx.set_ack(ack.clone()), Action::Transmit(ack.clone()));
    assert_eq!(tx.state(), State::Completed);
    // A retransmitted 486 is answered with the same ACK and not passed up.
    tx.handle_response(486, t + Duration::from_secs(1), &mut out);
    assert_eq!(out, vec![Action::Transmit(ack.clone())]);
    out.clear();
    assert_eq!(tx.next_deadline(), Some(t + Duration::from_secs(32)));
    tx.handle_timeout(t + Duration::from_millis(31_999), &mut out);
    assert!(out.is_empty());
    tx.handle_response(486, t + Duration::from_millis(31_999), &mut out);
    assert_eq!(out, vec![Action::Transmit(ack)]);
    out.clear();
    tx.handle_timeout(t + Duration::from_secs(32), &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_client_timer_d_is_zero_on_tcp() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        true,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    tx.handle_response(503, t0, &mut out);
    assert_eq!(tx.next_deadline(), Some(t0));
    out.clear();
    tx.handle_timeout(t0, &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_client_2xx_enters_accepted_passes_retransmitted_2xx_up_and_ends_on_timer_m() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientInvite::start(
        Bytes::from_static(b"INVITE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    out.clear();
    tx.handle_response(200, t0, &mut out);
    assert_eq!(out, vec![Action::PassUp]);
    assert_eq!(tx.state(), State::Accepted);
    out.clear();
    tx.handle_response(200, t0 + Duration::from_secs(1), &mut out);
    assert_eq!(
        out,
        vec![Action::PassUp],
        "2xx retransmission goes to the TU, which re-ACKs"
    );
    out.clear();
    tx.handle_response(486, t0 + Duration::from_secs(1), &mut out);
    assert!(out.is_empty());
    assert_eq!(tx.next_deadline(), Some(t0 + Duration::from_secs(32)));
    tx.handle_timeout(t0 + Duration::from_secs(32), &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn non_invite_client_retransmissions_are_capped_at_t2_and_time_out_at_32s() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientNonInvite::start(
        Bytes::from_static(b"BYE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    let log = run(
        t0,
        out,
        &mut tx,
        ClientNonInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    assert_eq!(
        transmit_times(&log),
        vec![0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert_eq!(time_of(&log, &Action::Timeout), Some(32.0));
}

#[test]
fn non_invite_client_in_proceeding_retransmits_every_t2() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientNonInvite::start(
        Bytes::from_static(b"OPTIONS"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    out.clear();
    tx.handle_response(100, t0 + Duration::from_millis(100), &mut out);
    assert_eq!(out, vec![Action::PassUp]);
    let log = run(
        t0,
        Vec::new(),
        &mut tx,
        ClientNonInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    // First E was armed at T1 before the 1xx; from then on every T2.
    assert_eq!(
        transmit_times(&log),
        vec![0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    );
    assert_eq!(time_of(&log, &Action::Timeout), Some(32.0));
}

#[test]
fn non_invite_client_timer_k_absorbs_retransmitted_responses_for_t4() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ClientNonInvite::start(
        Bytes::from_static(b"BYE"),
        false,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    out.clear();
    tx.handle_response(200, t0 + Duration::from_secs(1), &mut out);
    assert_eq!(out, vec![Action::PassUp]);
    out.clear();
    tx.handle_response(200, t0 + Duration::from_secs(2), &mut out);
    assert!(out.is_empty(), "retransmitted 200 absorbed");
    assert_eq!(tx.next_deadline(), Some(t0 + Duration::from_secs(6)));
    tx.handle_timeout(t0 + Duration::from_secs(6), &mut out);
    assert_eq!(out, vec![Action::Terminated]);
    // A TCP transaction terminates at once.
    let mut out = Vec::new();
    let mut tcp = ClientNonInvite::start(
        Bytes::from_static(b"BYE"),
        true,
        TimerConfig::default(),
        t0,
        &mut out,
    );
    tcp.handle_response(200, t0, &mut out);
    assert_eq!(tcp.next_deadline(), Some(t0));
}

#[test]
fn invite_server_sends_trying_after_200ms_unless_the_tu_answers() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    // Silent TU: 100 Trying at exactly 200 ms.
    let mut silent = ServerInvite::start(false, TimerConfig::default(), t0);
    silent.handle_timeout(t0 + Duration::from_millis(199), &mut out);
    assert!(out.is_empty());
    assert_eq!(
        silent.next_deadline(),
        Some(t0 + Duration::from_millis(200))
    );
    silent.handle_timeout(t0 + Duration::from_millis(200), &mut out);
    assert_eq!(out, vec![Action::SendTrying]);
    out.clear();
    // TU answers 180 at 100 ms: no 100 Trying.
    let mut quick = ServerInvite::start(false, TimerConfig::default(), t0);
    quick.send_response(
        180,
        Bytes::from_static(b"180"),
        t0 + Duration::from_millis(100),
        &mut out,
    );
    out.clear();
    quick.handle_timeout(t0 + Duration::from_millis(250), &mut out);
    assert!(out.is_empty());
    assert_eq!(quick.next_deadline(), None);
}

#[test]
fn invite_server_retransmits_final_response_on_g_capped_at_t2_until_h() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ServerInvite::start(false, TimerConfig::default(), t0);
    tx.send_response(486, Bytes::from_static(b"486"), t0, &mut out);
    assert_eq!(tx.state(), State::Completed);
    let log = run(
        t0,
        out,
        &mut tx,
        ServerInvite::next_deadline,
        |m, now, o| m.handle_timeout(now, o),
    );
    assert_eq!(
        transmit_times(&log),
        vec![0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert_eq!(
        time_of(&log, &Action::Timeout),
        Some(32.0),
        "Timer H: no ACK"
    );
}

#[test]
fn invite_server_ack_stops_g_and_timer_i_absorbs_acks() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ServerInvite::start(false, TimerConfig::default(), t0);
    tx.send_response(603, Bytes::from_static(b"603"), t0, &mut out);
    out.clear();
    tx.handle_timeout(t0 + Duration::from_millis(500), &mut out);
    assert_eq!(out, vec![Action::Transmit(Bytes::from_static(b"603"))]);
    out.clear();
    tx.handle_ack(t0 + Duration::from_millis(600));
    assert_eq!(tx.state(), State::Confirmed);
    tx.handle_ack(t0 + Duration::from_millis(700));
    tx.handle_request_retransmission(&mut out);
    assert!(out.is_empty(), "Confirmed absorbs everything");
    assert_eq!(
        tx.next_deadline(),
        Some(t0 + Duration::from_millis(5600)),
        "Timer I = T4"
    );
    tx.handle_timeout(t0 + Duration::from_millis(5600), &mut out);
    assert_eq!(out, vec![Action::Terminated]);
}

#[test]
fn invite_server_answers_invite_retransmissions_with_the_last_response() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ServerInvite::start(false, TimerConfig::default(), t0);
    tx.handle_request_retransmission(&mut out);
    assert!(out.is_empty());
    tx.send_response(180, Bytes::from_static(b"180"), t0, &mut out);
    out.clear();
    tx.handle_request_retransmission(&mut out);
    assert_eq!(out, vec![Action::Transmit(Bytes::from_static(b"180"))]);
    out.clear();
    tx.send_response(200, Bytes::from_static(b"200"), t0, &mut out);
    assert_eq!(tx.state(), State::Accepted);
    out.clear();
    tx.handle_request_retransmission(&mut out);
    assert!(
        out.is_empty(),
        "Accepted: INVITE retransmissions absorbed (the UA core retransmits the 2xx)"
    );
    assert_eq!(
        tx.next_deadline(),
        Some(t0 + Duration::from_secs(32)),
        "Timer L"
    );
}

#[test]
fn non_invite_server_timer_j_is_64_t1_on_udp_and_zero_on_tcp() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut tx = ServerNonInvite::start(false, TimerConfig::default());
    tx.handle_request_retransmission(&mut out);
    assert!(out.is_empty(), "Trying: retransmissions absorbed");
    assert!(tx.send_response(200, Bytes::from_static(b"200"), t0, &mut out));
    out.clear();
    tx.handle_request_retransmission(&mut out);
    assert_eq!(out, vec![Action::Transmit(Bytes::from_static(b"200"))]);
    assert!(!tx.send_response(200, Bytes::from_static(b"200"), t0, &mut out));
    assert_eq!(tx.next_deadline(), Some(t0 + Duration::from_secs(32)));
    let mut tcp = ServerNonInvite::start(true, TimerConfig::default());
    tcp.send_response(200, Bytes::from_static(b"200"), t0, &mut out);
    assert_eq!(tcp.next_deadline(), Some(t0));
}

// ---- the transaction layer (Endpoint) with real messages -----------------------------------------

mod layer {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use trunkline_sip::message::{HostPort, Message, Method, Request, Response, Uri};
    use trunkline_sip::transaction::{
        Endpoint, IdGen, TimerConfig, Transmit, TransportKind, TxEvent,
    };

    const PEER: &str = "192.0.2.10:5060";

    fn endpoint() -> Endpoint {
        let mut ep = Endpoint::new(TimerConfig::default(), IdGen::seeded(1));
        ep.set_sent_by(
            TransportKind::Udp,
            HostPort::parse("198.51.100.1:5060").unwrap(),
        );
        ep.set_sent_by(
            TransportKind::Tcp,
            HostPort::parse("198.51.100.1:5060").unwrap(),
        );
        ep
    }

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn parse(text: &str) -> Message {
        Message::parse(Bytes::from(text.replace('\n', "\r\n"))).unwrap()
    }

    fn invite_from_peer(branch: &str) -> Message {
        parse(&format!(
            "INVITE sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-1\nCSeq: 1 INVITE\nContact: <sip:a@192.0.2.10>\nContent-Length: 0\n\n"
        ))
    }

    fn drain(ep: &mut Endpoint) -> Vec<Transmit> {
        std::iter::from_fn(|| ep.poll_transmit()).collect()
    }

    fn start_line(t: &Transmit) -> String {
        String::from_utf8_lossy(&t.payload)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn run_until(ep: &mut Endpoint, t0: Instant, end: Duration) -> Vec<(f64, String)> {
        let mut log = Vec::new();
        while let Some(at) = ep.poll_timeout() {
            if at > t0 + end {
                break;
            }
            ep.handle_timeout(at);
            for t in drain(ep) {
                log.push((
                    at.saturating_duration_since(t0).as_secs_f64(),
                    start_line(&t),
                ));
            }
        }
        log
    }

    fn new_invite_request() -> Request {
        let mut r = Request::new(Method::Invite, Uri::parse("sip:b@192.0.2.10").unwrap());
        r.push_header("From", "<sip:a@198.51.100.1>;tag=x1");
        r.push_header("To", "<sip:b@192.0.2.10>");
        r.push_header("Call-ID", "c-out");
        r.push_header("CSeq", "1 INVITE");
        r
    }

    fn response_to(sent: &Transmit, status: u16, to_tag: &str) -> Message {
        let Ok(Message::Request(req)) = Message::parse(sent.payload.clone()) else {
            panic!("not a request")
        };
        let mut r = Response::for_request(&req, status);
        r.set_to_tag(to_tag);
        Message::Response(r)
    }

    #[test]
    fn uas_retransmits_2xx_at_t1_doubling_to_t2_until_the_ack_arrives() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        ep.handle_message(invite_from_peer("z9hG4bKa"), peer(), TransportKind::Udp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!("no request event")
        };
        let mut ok = Response::for_request(&request, 200);
        ok.set_to_tag("tt");
        ep.respond(id, ok, t0).unwrap();
        assert_eq!(drain(&mut ep).len(), 1);
        let log = run_until(&mut ep, t0, Duration::from_secs(16));
        let times: Vec<f64> = log
            .iter()
            .filter(|(_, l)| l.starts_with("SIP/2.0 200"))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            times,
            vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5],
            "T1, 2T1, 4T1, then every T2"
        );
        // The ACK (new branch, same Call-ID and CSeq number) stops the retransmissions.
        let ack = parse(
            "ACK sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>;tag=tt\nCall-ID: call-1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
        );
        ep.handle_message(
            ack,
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(16),
        );
        assert!(matches!(ep.poll_event(), Some(TxEvent::Ack { .. })));
        let log = run_until(&mut ep, t0, Duration::from_secs(100));
        assert!(log.is_empty(), "no 2xx after the ACK: {log:?}");
        let events: Vec<TxEvent> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(
            events
                .iter()
                .all(|e| matches!(e, TxEvent::Terminated { .. })),
            "no AckTimeout: {events:?}"
        );
    }

    #[test]
    fn uas_gives_up_on_a_2xx_never_acked_after_64_t1() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        ep.handle_message(invite_from_peer("z9hG4bKb"), peer(), TransportKind::Udp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!()
        };
        let mut ok = Response::for_request(&request, 200);
        ok.set_to_tag("tt");
        ep.respond(id, ok, t0).unwrap();
        let mut at_timeout = None;
        while let Some(at) = ep.poll_timeout() {
            ep.handle_timeout(at);
            drain(&mut ep);
            while let Some(ev) = ep.poll_event() {
                if let TxEvent::AckTimeout { id: got } = ev {
                    assert_eq!(got, id);
                    at_timeout = Some(at.saturating_duration_since(t0));
                }
            }
        }
        assert_eq!(at_timeout, Some(Duration::from_secs(32)));
        assert_eq!(ep.stats().ack_timeouts, 1);
        assert_eq!(
            ep.transaction_count(),
            0,
            "Timer L ended the server transaction"
        );
    }

    #[test]
    fn invite_server_sends_100_trying_after_200ms_and_answers_retransmissions_with_it() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        ep.handle_message(invite_from_peer("z9hG4bKc"), peer(), TransportKind::Udp, t0);
        assert!(matches!(ep.poll_event(), Some(TxEvent::Request { .. })));
        assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_millis(200)));
        ep.handle_timeout(t0 + Duration::from_millis(200));
        let sent = drain(&mut ep);
        assert_eq!(sent.len(), 1);
        assert_eq!(start_line(&sent[0]), "SIP/2.0 100 Trying");
        // rport was requested: the response goes to the source address, with received/rport filled.
        assert_eq!(sent[0].destination, peer());
        let text = String::from_utf8_lossy(&sent[0].payload).into_owned();
        assert!(
            text.contains("rport=5060") && text.contains("received=192.0.2.10"),
            "{text}"
        );
        // A retransmitted INVITE is absorbed and answered with the 100; the TU does not see it.
        ep.handle_message(
            invite_from_peer("z9hG4bKc"),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(500),
        );
        assert!(ep.poll_event().is_none());
        let again = drain(&mut ep);
        assert_eq!(again.len(), 1);
        assert_eq!(start_line(&again[0]), "SIP/2.0 100 Trying");
    }

    #[test]
    fn cancel_is_answered_200_and_the_invite_487_with_the_same_to_tag() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        ep.handle_message(invite_from_peer("z9hG4bKd"), peer(), TransportKind::Udp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!()
        };
        let mut ringing = Response::for_request(&request, 180);
        ringing.set_to_tag("ringtag");
        ep.respond(id, ringing, t0).unwrap();
        drain(&mut ep);
        let cancel = parse(
            "CANCEL sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKd;rport\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-1\nCSeq: 1 CANCEL\nContent-Length: 0\n\n",
        );
        ep.handle_message(
            cancel,
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(1),
        );
        assert!(matches!(ep.poll_event(), Some(TxEvent::Cancelled { id: got }) if got == id));
        let sent = drain(&mut ep);
        let lines: Vec<String> = sent.iter().map(start_line).collect();
        assert_eq!(lines, ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
        for t in &sent {
            assert!(String::from_utf8_lossy(&t.payload).contains("tag=ringtag"));
        }
        assert!(String::from_utf8_lossy(&sent[0].payload).contains("CSeq: 1 CANCEL"));
        assert!(String::from_utf8_lossy(&sent[1].payload).contains("CSeq: 1 INVITE"));
        // The 487 is then retransmitted on Timer G until the ACK.
        let log = run_until(&mut ep, t0, Duration::from_secs(2));
        assert_eq!(
            log,
            vec![(1.5, "SIP/2.0 487 Request Terminated".to_owned())]
        );
    }

    #[test]
    fn cancel_for_an_unknown_invite_gets_481() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let cancel = parse(
            "CANCEL sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnone\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-9\nCSeq: 1 CANCEL\nContent-Length: 0\n\n",
        );
        ep.handle_message(cancel, peer(), TransportKind::Udp, t0);
        let sent = drain(&mut ep);
        assert_eq!(
            start_line(&sent[0]),
            "SIP/2.0 481 Call/Transaction Does Not Exist"
        );
        assert_eq!(ep.stats().unmatched_cancels, 1);
        assert!(ep.poll_event().is_none());
    }

    #[test]
    fn client_invite_acks_a_non_2xx_inside_the_transaction_and_reacks_retransmissions() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let id = ep
            .send_request(new_invite_request(), peer(), TransportKind::Udp, t0)
            .unwrap();
        let sent = drain(&mut ep);
        assert_eq!(sent.len(), 1);
        let text = String::from_utf8_lossy(&sent[0].payload).into_owned();
        assert!(
            text.contains("Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK"),
            "{text}"
        );
        assert!(text.contains(";rport"), "RFC 3581: we ask for rport");
        let busy = response_to(&sent[0], 486, "bt");
        ep.handle_message(
            busy.clone(),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(100),
        );
        assert!(
            matches!(ep.poll_event(), Some(TxEvent::Response { id: got, response }) if got == id && response.status == 486)
        );
        let acks = drain(&mut ep);
        assert_eq!(acks.len(), 1);
        let ack = String::from_utf8_lossy(&acks[0].payload).into_owned();
        assert!(ack.starts_with("ACK sip:b@192.0.2.10 SIP/2.0"), "{ack}");
        assert!(
            ack.contains("CSeq: 1 ACK") && ack.contains("tag=bt"),
            "{ack}"
        );
        // Same branch as the INVITE (§17.1.1.3).
        let branch = |s: &str| {
            s.split("branch=")
                .nth(1)
                .map(|b| b.split([';', '\r']).next().unwrap_or("").to_owned())
        };
        assert_eq!(branch(&ack), branch(&text));
        ep.handle_message(
            busy,
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(1),
        );
        assert!(ep.poll_event().is_none(), "retransmitted 486 absorbed");
        assert_eq!(drain(&mut ep).len(), 1, "and ACKed again");
    }

    #[test]
    fn cancel_waits_for_a_provisional_response_and_matches_by_method() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let id = ep
            .send_request(new_invite_request(), peer(), TransportKind::Udp, t0)
            .unwrap();
        let invite = drain(&mut ep).remove(0);
        assert_eq!(
            ep.send_cancel(id, t0).unwrap(),
            None,
            "no CANCEL before a 1xx (§9.1)"
        );
        assert!(drain(&mut ep).is_empty());
        ep.handle_message(
            response_to(&invite, 180, "r"),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(50),
        );
        let sent = drain(&mut ep);
        assert_eq!(sent.len(), 1);
        let cancel = String::from_utf8_lossy(&sent[0].payload).into_owned();
        assert!(
            cancel.starts_with("CANCEL sip:b@192.0.2.10 SIP/2.0")
                && cancel.contains("CSeq: 1 CANCEL"),
            "{cancel}"
        );
        // 200 to the CANCEL goes to the CANCEL transaction; the INVITE's 487 to the INVITE one.
        ep.handle_message(
            response_to(&sent[0], 200, "r"),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(60),
        );
        ep.handle_message(
            response_to(&invite, 487, "r"),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(61),
        );
        let events: Vec<(u16, bool)> = std::iter::from_fn(|| ep.poll_event())
            .filter_map(|e| match e {
                TxEvent::Response { id: got, response } => Some((response.status, got == id)),
                _ => None,
            })
            .collect();
        assert_eq!(events, vec![(180, true), (200, false), (487, true)]);
    }

    #[test]
    fn responses_are_matched_by_branch_and_cseq_method_and_strays_are_counted() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let mut opt = Request::new(Method::Options, Uri::parse("sip:b@192.0.2.10").unwrap());
        opt.push_header("From", "<sip:a@198.51.100.1>;tag=o1");
        opt.push_header("To", "<sip:b@192.0.2.10>");
        opt.push_header("Call-ID", "c-opt");
        opt.push_header("CSeq", "7 OPTIONS");
        ep.send_request(opt, peer(), TransportKind::Udp, t0)
            .unwrap();
        let sent = drain(&mut ep).remove(0);
        let Message::Response(mut wrong) = response_to(&sent, 200, "x") else {
            panic!()
        };
        wrong.set_header("CSeq", "7 INFO");
        ep.handle_message(Message::Response(wrong), peer(), TransportKind::Udp, t0);
        assert!(
            ep.poll_event().is_none(),
            "same branch, other method: no match"
        );
        assert_eq!(ep.stats().stray_responses, 1);
        ep.handle_message(response_to(&sent, 200, "x"), peer(), TransportKind::Udp, t0);
        assert!(matches!(ep.poll_event(), Some(TxEvent::Response { .. })));
    }

    #[test]
    fn responses_over_udp_without_rport_go_to_the_via_port() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let req = parse(
            "OPTIONS sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKo\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-o\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        );
        let src: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        ep.handle_message(req, src, TransportKind::Udp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!()
        };
        ep.respond(id, Response::for_request(&request, 200), t0)
            .unwrap();
        let sent = drain(&mut ep);
        assert_eq!(
            sent[0].destination,
            "192.0.2.10:5070".parse::<SocketAddr>().unwrap()
        );
        // Over TCP the response goes back on the connection (the source address).
        let req = parse(
            "OPTIONS sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/TCP 192.0.2.10:5070;branch=z9hG4bKt\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-t\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        );
        ep.handle_message(req, src, TransportKind::Tcp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!()
        };
        ep.respond(id, Response::for_request(&request, 200), t0)
            .unwrap();
        assert_eq!(drain(&mut ep)[0].destination, src);
    }

    #[test]
    fn non_invite_server_answers_retransmissions_with_the_final_response_until_timer_j() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        let text = "BYE sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye;rport\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>;tag=tt\nCall-ID: call-1\nCSeq: 2 BYE\nContent-Length: 0\n\n";
        ep.handle_message(parse(text), peer(), TransportKind::Udp, t0);
        let Some(TxEvent::Request { id, request, .. }) = ep.poll_event() else {
            panic!()
        };
        ep.respond(id, Response::for_request(&request, 200), t0)
            .unwrap();
        drain(&mut ep);
        ep.handle_message(
            parse(text),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(31),
        );
        assert!(ep.poll_event().is_none());
        assert_eq!(drain(&mut ep).len(), 1, "answered from the transaction");
        ep.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(ep.transaction_count(), 0, "Timer J");
        assert!(matches!(ep.poll_event(), Some(TxEvent::Terminated { id: got }) if got == id));
        ep.handle_message(
            parse(text),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(33),
        );
        assert!(
            matches!(ep.poll_event(), Some(TxEvent::Request { .. })),
            "a new transaction after J"
        );
    }

    #[test]
    fn responses_with_a_foreign_top_via_are_dropped() {
        let t0 = Instant::now();
        let mut ep = endpoint();
        ep.send_request(new_invite_request(), peer(), TransportKind::Udp, t0)
            .unwrap();
        let sent = drain(&mut ep).remove(0);
        let Message::Response(mut r) = response_to(&sent, 180, "x") else {
            panic!()
        };
        let via = r
            .header("Via")
            .next()
            .unwrap()
            .replace("198.51.100.1:5060", "203.0.113.9:5060");
        r.set_header("Via", via);
        ep.handle_message(Message::Response(r), peer(), TransportKind::Udp, t0);
        assert!(ep.poll_event().is_none());
        assert_eq!(ep.stats().foreign_via, 1);
        ep.handle_message(response_to(&sent, 180, "x"), peer(), TransportKind::Udp, t0);
        assert!(matches!(ep.poll_event(), Some(TxEvent::Response { .. })));
    }
}
