//! UA core server behaviour (RFC 3261 §8.2) and client flows, driven with bytes and virtual time.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::auth::Credentials;
use trunkline_sip::message::{Message, Method, NameAddr, Response, Uri};
use trunkline_sip::transaction::{IdGen, Transmit, TransportKind};
use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaConfig, UaEvent};

fn ua() -> Ua {
    let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(42));
    ua.set_sent_by(TransportKind::Udp, "198.51.100.1:5060".parse().unwrap());
    ua
}

fn peer() -> SocketAddr {
    "192.0.2.10:5060".parse().unwrap()
}

fn feed(ua: &mut Ua, text: &str, now: Instant) {
    ua.handle_datagram(
        Bytes::from(text.replace('\n', "\r\n")),
        peer(),
        TransportKind::Udp,
        now,
    );
}

fn sent(ua: &mut Ua) -> Vec<String> {
    std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| String::from_utf8_lossy(&t.payload).into_owned())
        .collect()
}

fn transmits(ua: &mut Ua) -> Vec<Transmit> {
    std::iter::from_fn(|| ua.poll_transmit()).collect()
}

fn events(ua: &mut Ua) -> Vec<UaEvent> {
    std::iter::from_fn(|| ua.poll_event()).collect()
}

fn request(method: &str, branch: &str, extra: &str) -> String {
    format!(
        "{method} sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\nMax-Forwards: 70\nFrom: <sip:a@192.0.2.10>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: call-{branch}\nCSeq: 1 {method}\n{extra}Content-Length: 0\n\n"
    )
}

fn status_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or_default()
}

#[test]
fn malformed_request_gets_400_with_the_reason_and_is_counted() {
    let mut ua = ua();
    let t0 = Instant::now();
    // CSeq method does not match the request method.
    feed(
        &mut ua,
        &request("OPTIONS", "z9hG4bK1", "").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
        t0,
    );
    let out = sent(&mut ua);
    assert_eq!(out.len(), 1);
    assert!(
        status_line(&out[0]).starts_with("SIP/2.0 400 Bad Request ("),
        "{}",
        out[0]
    );
    assert_eq!(ua.stats().bad_requests, 1);
    assert!(events(&mut ua).is_empty());
}

#[test]
fn garbage_and_malformed_responses_are_dropped_silently_and_counted() {
    let mut ua = ua();
    let t0 = Instant::now();
    ua.handle_datagram(
        Bytes::from_static(b"\x00\xff garbage \x01"),
        peer(),
        TransportKind::Udp,
        t0,
    );
    feed(
        &mut ua,
        "SIP/2.0 200 OK\nVia: nonsense\nContent-Length: 0\n\n",
        t0,
    );
    feed(
        &mut ua,
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: c\nContent-Length: 0\n\n",
        t0,
    );
    assert!(sent(&mut ua).is_empty());
    assert!(events(&mut ua).is_empty());
    let s = ua.stats();
    assert_eq!(s.dropped_unparseable, 1);
    assert_eq!(s.dropped_responses, 2);
}

#[test]
fn max_forwards_zero_gets_483() {
    let mut ua = ua();
    feed(
        &mut ua,
        &request("INVITE", "z9hG4bK2", "").replace("Max-Forwards: 70", "Max-Forwards: 0"),
        Instant::now(),
    );
    let out = sent(&mut ua);
    assert_eq!(status_line(&out[0]), "SIP/2.0 483 Too Many Hops");
    assert_eq!(ua.stats().too_many_hops, 1);
}

#[test]
fn merged_request_with_another_branch_gets_482() {
    let mut ua = ua();
    let t0 = Instant::now();
    let first = request("INVITE", "z9hG4bKm1", "");
    feed(&mut ua, &first, t0);
    assert!(matches!(
        events(&mut ua).as_slice(),
        [UaEvent::IncomingCall { .. }]
    ));
    // Same Call-ID, From tag and CSeq arriving over another path (new branch): a merged request.
    let merged = first.replace("branch=z9hG4bKm1", "branch=z9hG4bKm2");
    feed(&mut ua, &merged, t0 + Duration::from_millis(10));
    let out = sent(&mut ua);
    assert_eq!(
        status_line(out.last().unwrap()),
        "SIP/2.0 482 Loop Detected"
    );
    assert!(events(&mut ua).is_empty());
    assert_eq!(ua.stats().loops_detected, 1);
}

#[test]
fn unsupported_known_method_gets_405_with_allow_and_unknown_method_501() {
    let mut ua = ua();
    let t0 = Instant::now();
    feed(&mut ua, &request("REGISTER", "z9hG4bK3", ""), t0);
    feed(&mut ua, &request("FROBNICATE", "z9hG4bK4", ""), t0);
    let out = sent(&mut ua);
    assert_eq!(status_line(&out[0]), "SIP/2.0 405 Method Not Allowed");
    assert!(
        out[0].contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS"),
        "{}",
        out[0]
    );
    assert_eq!(status_line(&out[1]), "SIP/2.0 501 Not Implemented");
    assert_eq!(
        (ua.stats().method_not_allowed, ua.stats().not_implemented),
        (1, 1)
    );
}

#[test]
fn options_is_answered_200_with_allow_accept_and_supported() {
    let mut ua = ua();
    feed(&mut ua, &request("OPTIONS", "z9hG4bK5", ""), Instant::now());
    let out = sent(&mut ua);
    assert_eq!(status_line(&out[0]), "SIP/2.0 200 OK");
    for h in [
        "Allow: INVITE",
        "Accept: application/sdp",
        "Supported: timer",
        "To: <sip:uas@198.51.100.1>;tag=",
    ] {
        assert!(out[0].contains(h), "missing {h}: {}", out[0]);
    }
    assert!(
        events(&mut ua).is_empty(),
        "the core answers OPTIONS itself"
    );
}

#[test]
fn options_is_answered_503_while_unavailable_and_200_again_after() {
    // A draining node or one at its own capacity: a dispatcher's keep-alive probe sees 503
    // and stops sending it calls (issue 13); back to 200 when it takes calls again.
    let mut ua = ua();
    let t0 = Instant::now();
    assert!(ua.available());
    ua.set_available(false);
    assert!(!ua.available());
    feed(&mut ua, &request("OPTIONS", "z9hG4bK51", ""), t0);
    let out = sent(&mut ua);
    assert_eq!(out.len(), 1);
    assert_eq!(status_line(&out[0]), "SIP/2.0 503 Service Unavailable");
    assert!(out[0].contains("Retry-After: 5"), "{}", out[0]);
    assert!(!out[0].contains("Allow:"), "{}", out[0]);
    // A retransmission of the same probe is answered from the transaction: still 503.
    feed(&mut ua, &request("OPTIONS", "z9hG4bK51", ""), t0);
    assert!(
        sent(&mut ua)
            .iter()
            .all(|m| status_line(m) == "SIP/2.0 503 Service Unavailable")
    );
    ua.set_available(true);
    feed(&mut ua, &request("OPTIONS", "z9hG4bK52", ""), t0);
    let out = sent(&mut ua);
    assert_eq!(status_line(&out[0]), "SIP/2.0 200 OK");
    assert_eq!(ua.stats().options_answered, 2);
    assert!(events(&mut ua).is_empty());
}

#[test]
fn unsupported_require_gets_420_with_unsupported() {
    let mut ua = ua();
    feed(
        &mut ua,
        &request("INVITE", "z9hG4bK6", "Require: 100rel, timer\n"),
        Instant::now(),
    );
    let out = sent(&mut ua);
    assert_eq!(status_line(&out[0]), "SIP/2.0 420 Bad Extension");
    assert!(
        out[0].contains("Unsupported: 100rel") && !out[0].contains("Unsupported: 100rel, timer"),
        "{}",
        out[0]
    );
}

#[test]
fn request_in_an_unknown_dialog_gets_481() {
    let mut ua = ua();
    let bye = request("BYE", "z9hG4bK7", "").replace(
        "To: <sip:uas@198.51.100.1>",
        "To: <sip:uas@198.51.100.1>;tag=nope",
    );
    feed(&mut ua, &bye, Instant::now());
    let out = sent(&mut ua);
    assert_eq!(
        status_line(&out[0]),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    assert_eq!(ua.stats().unknown_dialog, 1);
}

#[test]
fn too_small_session_expires_gets_422_with_min_se() {
    let mut ua = ua();
    feed(
        &mut ua,
        &request(
            "INVITE",
            "z9hG4bK8",
            "Supported: timer\nSession-Expires: 30\n",
        ),
        Instant::now(),
    );
    let out = sent(&mut ua);
    assert_eq!(
        status_line(&out[0]),
        "SIP/2.0 422 Session Interval Too Small"
    );
    assert!(out[0].contains("Min-SE: 90"), "{}", out[0]);
}

/// Sets up an answered incoming call; returns (ua, dialog id, our To tag).
fn answered_call(t0: Instant) -> (Ua, trunkline_sip::dialog::DialogId, String) {
    let mut ua = ua();
    feed(
        &mut ua,
        &request(
            "INVITE",
            "z9hG4bKcall",
            "Contact: <sip:a@192.0.2.10:5062>\n",
        ),
        t0,
    );
    let evs = events(&mut ua);
    let [UaEvent::IncomingCall { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let tx = *tx;
    let ok = ua.make_response(tx, 200).unwrap();
    let tag = ok.to_tag().unwrap();
    let dialog = ua.respond(tx, ok, t0).unwrap().expect("a UAS dialog");
    let out = sent(&mut ua);
    assert!(
        out[0].contains("Contact: <sip:trunkline@198.51.100.1:5060>"),
        "{}",
        out[0]
    );
    (ua, dialog, tag)
}

fn in_dialog(method: &str, branch: &str, cseq: u32, tag: &str) -> String {
    request(method, branch, "")
        .replace(
            "To: <sip:uas@198.51.100.1>",
            &format!("To: <sip:uas@198.51.100.1>;tag={tag}"),
        )
        .replace(
            &format!("Call-ID: call-{branch}"),
            "Call-ID: call-z9hG4bKcall",
        )
        .replace(
            &format!("CSeq: 1 {method}"),
            &format!("CSeq: {cseq} {method}"),
        )
}

#[test]
fn uas_call_acked_then_ended_by_bye_and_out_of_order_cseq_gets_500() {
    let t0 = Instant::now();
    let (mut ua, dialog, tag) = answered_call(t0);
    feed(
        &mut ua,
        &in_dialog("ACK", "z9hG4bKack", 1, &tag),
        t0 + Duration::from_millis(5),
    );
    assert!(
        matches!(events(&mut ua).as_slice(), [UaEvent::AckReceived { dialog: d, .. }] if *d == dialog)
    );
    // The ACK stopped the 2xx retransmissions.
    ua.handle_timeout(t0 + Duration::from_secs(2));
    assert!(sent(&mut ua).is_empty());
    feed(
        &mut ua,
        &in_dialog("INFO", "z9hG4bKi1", 5, &tag),
        t0 + Duration::from_secs(3),
    );
    assert!(matches!(
        events(&mut ua).as_slice(),
        [UaEvent::DialogRequest { .. }]
    ));
    feed(
        &mut ua,
        &in_dialog("INFO", "z9hG4bKi2", 4, &tag),
        t0 + Duration::from_secs(3),
    );
    assert_eq!(
        status_line(&sent(&mut ua)[0]),
        "SIP/2.0 500 Server Internal Error"
    );
    feed(
        &mut ua,
        &in_dialog("BYE", "z9hG4bKbye", 6, &tag),
        t0 + Duration::from_secs(4),
    );
    assert_eq!(status_line(&sent(&mut ua)[0]), "SIP/2.0 200 OK");
    assert!(matches!(
        events(&mut ua).as_slice(),
        [UaEvent::DialogTerminated {
            reason: EndReason::RemoteBye,
            ..
        }]
    ));
    assert_eq!(ua.dialog_count(), 0);
}

#[test]
fn uas_without_ack_retransmits_the_2xx_and_hangs_up_after_64_t1() {
    let t0 = Instant::now();
    let (mut ua, dialog, _) = answered_call(t0);
    let mut resent = 0;
    let mut bye_at = None;
    while let Some(at) = ua.poll_timeout() {
        if at > t0 + Duration::from_secs(40) {
            break;
        }
        ua.handle_timeout(at);
        for m in sent(&mut ua) {
            if m.starts_with("SIP/2.0 200") {
                resent += 1;
            }
            if m.starts_with("BYE ") {
                bye_at.get_or_insert(at.saturating_duration_since(t0));
                assert!(
                    m.starts_with("BYE sip:a@192.0.2.10:5062 SIP/2.0"),
                    "BYE to the remote target: {m}"
                );
            }
        }
        for e in events(&mut ua) {
            if let UaEvent::DialogTerminated { dialog: d, reason } = e {
                assert_eq!((d, reason), (dialog.clone(), EndReason::AckTimeout));
            }
        }
    }
    assert_eq!(resent, 10, "0.5 1.5 3.5 7.5 11.5 15.5 19.5 23.5 27.5 31.5");
    assert_eq!(bye_at, Some(Duration::from_secs(32)));
}

#[test]
fn reinvite_glare_gets_491() {
    let t0 = Instant::now();
    let (mut ua, dialog, tag) = answered_call(t0);
    feed(&mut ua, &in_dialog("ACK", "z9hG4bKack", 1, &tag), t0);
    events(&mut ua);
    // Our re-INVITE is pending…
    ua.send_in_dialog(&dialog, Method::Invite, None, Vec::new(), t0)
        .unwrap();
    let ours = sent(&mut ua);
    assert!(
        ours[0].starts_with("INVITE sip:a@192.0.2.10:5062 SIP/2.0")
            && ours[0].contains("CSeq: 1 INVITE")
    );
    // …when theirs arrives.
    feed(
        &mut ua,
        &in_dialog("INVITE", "z9hG4bKre", 2, &tag),
        t0 + Duration::from_millis(10),
    );
    let out = sent(&mut ua);
    assert_eq!(
        status_line(out.last().unwrap()),
        "SIP/2.0 491 Request Pending"
    );
    assert_eq!(ua.stats().glare, 1);
}

#[test]
fn uac_answers_407_with_cseq_plus_one_same_call_id_and_from_tag_then_acks_the_200() {
    let t0 = Instant::now();
    let mut ua = ua();
    let tx = ua
        .invite(
            InviteParams {
                target: Uri::parse("sip:+15551234567@192.0.2.10").unwrap(),
                to: None,
                from: NameAddr::parse("<sip:alice@198.51.100.1>").unwrap(),
                destination: peer(),
                transport: TransportKind::Udp,
                body: Some(("application/sdp".into(), Bytes::from_static(b"v=0\r\n"))),
                credentials: Some(Credentials {
                    username: "alice".into(),
                    password: "s3cret".into(),
                }),
                session_expires: None,
                extra_headers: Vec::new(),
            },
            t0,
        )
        .unwrap();
    let first = transmits(&mut ua).remove(0);
    let Ok(Message::Request(invite1)) = Message::parse(first.payload.clone()) else {
        panic!()
    };
    let mut challenge = Response::for_request(&invite1, 407);
    challenge.set_to_tag("gw");
    challenge.push_header(
        "Proxy-Authenticate",
        r#"Digest realm="sip.twilio.com",qop="auth",nonce="abc",opaque="op""#,
    );
    ua.handle_datagram(
        challenge.to_bytes(),
        peer(),
        TransportKind::Udp,
        t0 + Duration::from_millis(20),
    );
    let out = transmits(&mut ua);
    assert_eq!(out.len(), 2, "ACK for the 407, then the new INVITE");
    let text: Vec<String> = out
        .iter()
        .map(|t| String::from_utf8_lossy(&t.payload).into_owned())
        .collect();
    assert!(
        text[0].starts_with("ACK ") && text[0].contains("CSeq: 1 ACK"),
        "{}",
        text[0]
    );
    let Ok(Message::Request(invite2)) = Message::parse(out[1].payload.clone()) else {
        panic!()
    };
    assert_eq!(invite2.cseq().unwrap().seq, 2);
    assert_eq!(invite2.call_id(), invite1.call_id());
    assert_eq!(invite2.from_tag(), invite1.from_tag());
    assert_ne!(
        invite2.top_via().unwrap().branch(),
        invite1.top_via().unwrap().branch()
    );
    let auth = invite2
        .header("Proxy-Authorization")
        .next()
        .expect("Proxy-Authorization");
    assert!(
        auth.contains(r#"realm="sip.twilio.com""#)
            && auth.contains("qop=auth")
            && auth.contains(r#"opaque="op""#)
    );
    assert!(
        events(&mut ua).is_empty(),
        "the 407 is handled inside the core"
    );

    let mut ok = Response::for_request(&invite2, 200);
    ok.set_to_tag("callee");
    ok.push_header("Contact", "<sip:callee@192.0.2.20:5080>");
    ok.push_header("Record-Route", "<sip:p2.example;lr>, <sip:192.0.2.30;lr>");
    ua.handle_datagram(
        ok.to_bytes(),
        peer(),
        TransportKind::Udp,
        t0 + Duration::from_millis(50),
    );
    let evs = events(&mut ua);
    let [
        UaEvent::Response {
            tx: got,
            response,
            dialog: Some(_),
            ..
        },
    ] = evs.as_slice()
    else {
        panic!("{evs:?}")
    };
    assert_eq!((*got, response.status), (tx, 200));
    let acks = transmits(&mut ua);
    assert_eq!(acks.len(), 1);
    let ack = String::from_utf8_lossy(&acks[0].payload).into_owned();
    // §13.2.2.4 / §12.2.1.1: to the remote target, route set = Record-Route reversed, CSeq of the INVITE.
    assert!(
        ack.starts_with("ACK sip:callee@192.0.2.20:5080 SIP/2.0"),
        "{ack}"
    );
    assert!(
        ack.contains("Route: <sip:192.0.2.30;lr>\r\nRoute: <sip:p2.example;lr>"),
        "{ack}"
    );
    assert!(ack.contains("CSeq: 2 ACK"), "{ack}");
    assert_eq!(
        acks[0].destination,
        "192.0.2.30:5060".parse::<SocketAddr>().unwrap(),
        "first route"
    );
    // A retransmitted 200 is ACKed again with the same ACK, and not reported twice.
    ua.handle_datagram(
        ok.to_bytes(),
        peer(),
        TransportKind::Udp,
        t0 + Duration::from_millis(550),
    );
    let again = transmits(&mut ua);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, acks[0].payload);
    assert!(events(&mut ua).is_empty());
}

/// Truncations, byte flips and random bytes of a valid INVITE, fed to the UA core: it must never
/// panic, must answer or drop each one, and must account for what it rejects.
#[test]
fn hostile_input_never_panics_and_every_rejection_is_counted() {
    let mut ua = ua();
    let t0 = Instant::now();
    let valid = request("INVITE", "z9hG4bKfz", "Content-Type: application/sdp\n")
        .replace("Content-Length: 0\n\nX", "")
        .replace('\n', "\r\n")
        .into_bytes();
    let mut rng = trunkline_sip::transaction::SplitMix64::new(9);
    use trunkline_sip::transaction::RandomSource;
    let mut inputs: Vec<Vec<u8>> = (0..valid.len()).map(|n| valid[..n].to_vec()).collect();
    for _ in 0..2000 {
        let mut m = valid.clone();
        for _ in 0..(1 + rng.next_u64() % 4) {
            let i = (rng.next_u64() as usize) % m.len();
            m[i] = rng.next_u64() as u8;
        }
        inputs.push(m);
    }
    for _ in 0..200 {
        inputs.push(
            (0..(rng.next_u64() % 300))
                .map(|_| rng.next_u64() as u8)
                .collect(),
        );
    }
    inputs.push(
        format!(
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKbig\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        )
        .into_bytes(),
    );
    let total = inputs.len() as u64;
    for (i, m) in inputs.into_iter().enumerate() {
        ua.handle_datagram(
            Bytes::from(m),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_millis(i as u64),
        );
        while ua.poll_transmit().is_some() {}
        while ua.poll_event().is_some() {}
    }
    ua.handle_timeout(t0 + Duration::from_secs(3600));
    let s = ua.stats();
    let rejected = s.bad_requests + s.dropped_unparseable + s.dropped_responses;
    assert!(
        rejected > total / 2,
        "most mutations are rejected and counted: {s:?}"
    );
    assert!(s.bad_requests > 0 && s.dropped_unparseable > 0, "{s:?}");
}

#[test]
fn cancel_after_180_reports_the_cancel_and_leaves_no_early_dialog_behind() {
    let t0 = Instant::now();
    let mut ua = ua();
    let invite = request("INVITE", "z9hG4bKcx", "Contact: <sip:a@192.0.2.10>\n");
    feed(&mut ua, &invite, t0);
    let evs = events(&mut ua);
    let [UaEvent::IncomingCall { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let tx = *tx;
    let ringing = ua.make_response(tx, 180).unwrap();
    assert!(
        ua.respond(tx, ringing, t0).unwrap().is_some(),
        "1xx with tag: early dialog"
    );
    assert_eq!(ua.dialog_count(), 1);
    let cancel = invite
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace("Contact: <sip:a@192.0.2.10>\r\n", "");
    feed(
        &mut ua,
        &cancel.replace("Contact: <sip:a@192.0.2.10>\n", ""),
        t0 + Duration::from_secs(1),
    );
    let out = sent(&mut ua);
    let lines: Vec<&str> = out.iter().map(|m| status_line(m)).collect();
    assert_eq!(
        lines[lines.len() - 2..],
        ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    assert!(
        matches!(events(&mut ua).as_slice(), [UaEvent::CallCancelled { tx: got }] if *got == tx)
    );
    assert_eq!(ua.dialog_count(), 0);
}

#[test]
fn session_timer_without_refresh_ends_the_call_with_bye() {
    let t0 = Instant::now();
    let mut ua = ua();
    let invite = request(
        "INVITE",
        "z9hG4bKst",
        "Contact: <sip:a@192.0.2.10>\nSupported: timer\nSession-Expires: 90;refresher=uac\n",
    );
    feed(&mut ua, &invite, t0);
    let evs = events(&mut ua);
    let [UaEvent::IncomingCall { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let tx = *tx;
    let mut ok = ua.make_response(tx, 200).unwrap();
    ok.push_header("Session-Expires", "90;refresher=uac");
    ok.push_header("Require", "timer");
    let tag = ok.to_tag().unwrap();
    ua.respond(tx, ok, t0).unwrap();
    feed(
        &mut ua,
        &in_dialog("ACK", "z9hG4bKsta", 1, &tag).replace("call-z9hG4bKcall", "call-z9hG4bKst"),
        t0,
    );
    events(&mut ua);
    sent(&mut ua);
    let mut bye_at = None;
    while let Some(at) = ua.poll_timeout() {
        if at > t0 + Duration::from_secs(200) {
            break;
        }
        ua.handle_timeout(at);
        if sent(&mut ua).iter().any(|m| m.starts_with("BYE ")) {
            bye_at.get_or_insert(at.saturating_duration_since(t0));
        }
        for e in events(&mut ua) {
            if let UaEvent::DialogTerminated { reason, .. } = e {
                assert_eq!(reason, EndReason::SessionExpired);
            }
        }
    }
    // RFC 4028 §10: 90 − min(32, 90/3) = 60 s after the session was established.
    assert_eq!(bye_at, Some(Duration::from_secs(60)));
}

#[test]
fn uac_early_dialog_from_183_is_confirmed_by_the_200_or_dropped_by_a_failure() {
    let t0 = Instant::now();
    for final_status in [200u16, 486] {
        let mut ua = ua();
        let tx = ua
            .invite(
                InviteParams {
                    target: Uri::parse("sip:b@192.0.2.10").unwrap(),
                    to: None,
                    from: NameAddr::parse("<sip:alice@198.51.100.1>").unwrap(),
                    destination: peer(),
                    transport: TransportKind::Udp,
                    body: None,
                    credentials: None,
                    session_expires: None,
                    extra_headers: Vec::new(),
                },
                t0,
            )
            .unwrap();
        let sent_invite = transmits(&mut ua).remove(0);
        let Ok(Message::Request(invite)) = Message::parse(sent_invite.payload) else {
            panic!()
        };
        let mut progress = Response::for_request(&invite, 183);
        progress.set_to_tag("e1");
        progress.push_header("Contact", "<sip:b@192.0.2.10:5070>");
        ua.handle_datagram(progress.to_bytes(), peer(), TransportKind::Udp, t0);
        let evs = events(&mut ua);
        let [
            UaEvent::Response {
                dialog: Some(early),
                ..
            },
        ] = evs.as_slice()
        else {
            panic!("{evs:?}")
        };
        assert_eq!(
            ua.dialog(early).unwrap().state,
            trunkline_sip::dialog::DialogState::Early
        );
        let mut fin = Response::for_request(&invite, final_status);
        fin.set_to_tag("e1");
        fin.push_header("Contact", "<sip:b@192.0.2.10:5070>");
        ua.handle_datagram(
            fin.to_bytes(),
            peer(),
            TransportKind::Udp,
            t0 + Duration::from_secs(1),
        );
        let evs = events(&mut ua);
        assert!(
            matches!(evs.as_slice(), [UaEvent::Response { tx: got, .. }] if *got == tx),
            "{evs:?}"
        );
        if final_status == 200 {
            assert_eq!(
                ua.dialog(early).unwrap().state,
                trunkline_sip::dialog::DialogState::Confirmed
            );
        } else {
            assert_eq!(
                ua.dialog_count(),
                0,
                "the failed call's early dialog is gone"
            );
        }
    }
}

#[test]
fn an_update_refresh_from_the_peer_postpones_session_expiry() {
    let t0 = Instant::now();
    let mut ua = ua();
    let invite = request(
        "INVITE",
        "z9hG4bKsu",
        "Contact: <sip:a@192.0.2.10>\nSupported: timer\nSession-Expires: 90;refresher=uac\n",
    );
    feed(&mut ua, &invite, t0);
    let evs = events(&mut ua);
    let [UaEvent::IncomingCall { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let tx = *tx;
    let mut ok = ua.make_response(tx, 200).unwrap();
    ok.push_header("Session-Expires", "90;refresher=uac");
    let tag = ok.to_tag().unwrap();
    let dialog = ua.respond(tx, ok, t0).unwrap().unwrap();
    let fix = |m: String| m.replace("call-z9hG4bKcall", "call-z9hG4bKsu");
    feed(&mut ua, &fix(in_dialog("ACK", "z9hG4bKsua", 1, &tag)), t0);
    feed(
        &mut ua,
        &fix(in_dialog("UPDATE", "z9hG4bKsuu", 2, &tag)),
        t0 + Duration::from_secs(40),
    );
    let evs = events(&mut ua);
    let Some(UaEvent::DialogRequest { tx: utx, .. }) = evs.last() else {
        panic!("{evs:?}")
    };
    let utx = *utx;
    let ok = ua.make_response(utx, 200).unwrap();
    ua.respond(utx, ok, t0 + Duration::from_secs(40)).unwrap();
    assert_eq!(
        ua.dialog(&dialog).unwrap().poll_timeout(),
        Some(t0 + Duration::from_secs(100)),
        "40 s + (90 − 30) s"
    );
}

#[test]
fn reinvite_answered_491_is_retried_after_the_glare_delay_under_the_same_id() {
    let t0 = Instant::now();
    let (mut ua, dialog, tag) = answered_call(t0);
    feed(&mut ua, &in_dialog("ACK", "z9hG4bKack", 1, &tag), t0);
    events(&mut ua);
    let body = Some(("application/sdp".to_owned(), Bytes::from_static(b"v=0\r\n")));
    let tx = ua
        .send_in_dialog(&dialog, Method::Invite, body, Vec::new(), t0)
        .unwrap();
    let first = transmits(&mut ua).remove(0);
    let Ok(Message::Request(re1)) = Message::parse(first.payload) else {
        panic!()
    };
    let mut pending = Response::for_request(&re1, 491);
    pending.set_header(
        "To",
        format!(
            "{};tag=ft",
            re1.header("To")
                .next()
                .unwrap()
                .split(";tag=")
                .next()
                .unwrap()
        ),
    );
    ua.handle_datagram(
        pending.to_bytes(),
        peer(),
        TransportKind::Udp,
        t0 + Duration::from_millis(10),
    );
    assert!(events(&mut ua).is_empty(), "491 handled inside the core");
    let acks = sent(&mut ua);
    assert!(acks.iter().all(|m| m.starts_with("ACK ")), "{acks:?}");
    // We are the UAS of this dialog: retry within 0–2 s (§14.1).
    let mut retried = None;
    while let Some(at) = ua.poll_timeout() {
        if at > t0 + Duration::from_secs(3) {
            break;
        }
        ua.handle_timeout(at);
        if let Some(t) = transmits(&mut ua)
            .into_iter()
            .find(|t| t.payload.starts_with(b"INVITE "))
        {
            retried = Some((at, t));
            break;
        }
    }
    let (at, retry) = retried.expect("a retried re-INVITE");
    assert!(at <= t0 + Duration::from_millis(2010));
    let Ok(Message::Request(re2)) = Message::parse(retry.payload) else {
        panic!()
    };
    assert_eq!(re2.cseq().unwrap().seq, re1.cseq().unwrap().seq + 1);
    assert_eq!(&re2.body[..], b"v=0\r\n");
    let mut ok = Response::for_request(&re2, 200);
    ok.set_header(
        "To",
        format!(
            "{};tag=ft",
            re2.header("To")
                .next()
                .unwrap()
                .split(";tag=")
                .next()
                .unwrap()
        ),
    );
    ua.handle_datagram(
        ok.to_bytes(),
        peer(),
        TransportKind::Udp,
        at + Duration::from_millis(5),
    );
    let evs = events(&mut ua);
    assert!(
        matches!(evs.as_slice(), [UaEvent::Response { tx: got, response, .. }] if *got == tx && response.status == 200),
        "{evs:?}"
    );
}
