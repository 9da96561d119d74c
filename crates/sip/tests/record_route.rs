//! Record-Route and Route through a record-routing proxy (RFC 3261 §12.1.1, §12.1.2, §12.2.1.1,
//! §16.12), both sides of the UA core, driven with bytes and virtual time: the UAS echoes the
//! INVITE's Record-Route verbatim in its 18x/2xx; the UAC's ACK/BYE/re-INVITE/REFER/NOTIFY carry
//! the route set (2xx Record-Route reversed) and go to the first route's address; the UAS's own
//! BYE carries the INVITE's Record-Route in order and goes to the first route's address.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::dialog::DialogId;
use trunkline_sip::message::{Message, Method, NameAddr, Request, Response, Uri};
use trunkline_sip::transaction::{IdGen, Transmit, TransportKind, TxId};
use trunkline_sip::ua::{InviteParams, Ua, UaConfig, UaEvent};

/// The Record-Route lines of the INVITE as a proxy chain sends them: two header lines, the second
/// holding two values; URI parameters (`ftag`, `transport`, an unknown `x`), a port, an IPv6
/// host, a header parameter after `>` and a lower-case header name (names are case-insensitive).
const RR_LINES: [&str; 3] = [
    "Record-Route: <sip:p1.example.net;lr;ftag=abc>",
    "Record-Route: <sip:p2.example.net:5070;transport=tcp;lr>, <sip:[2001:db8::1];lr;x=y>",
    "record-route: \"Edge\" <sip:192.0.2.99;lr>;x-unknown=1",
];

/// What the responses must carry: the same values, same order, same line grouping.
const RR_ECHOED: [&str; 3] = [
    "Record-Route: <sip:p1.example.net;lr;ftag=abc>",
    "Record-Route: <sip:p2.example.net:5070;transport=tcp;lr>, <sip:[2001:db8::1];lr;x=y>",
    "Record-Route: \"Edge\" <sip:192.0.2.99;lr>;x-unknown=1",
];

fn ua() -> Ua {
    let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(7));
    ua.set_sent_by(TransportKind::Udp, "198.51.100.1:5060".parse().unwrap());
    ua
}

/// Where the proxy's requests come from (it is not the caller's Contact, nor a route's address).
fn proxy_source() -> SocketAddr {
    "192.0.2.10:5060".parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn feed(ua: &mut Ua, text: &str, now: Instant) {
    ua.handle_datagram(
        Bytes::from(text.replace('\n', "\r\n")),
        proxy_source(),
        TransportKind::Udp,
        now,
    );
}

fn transmits(ua: &mut Ua) -> Vec<Transmit> {
    std::iter::from_fn(|| ua.poll_transmit()).collect()
}

fn text(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.payload).into_owned()
}

fn events(ua: &mut Ua) -> Vec<UaEvent> {
    std::iter::from_fn(|| ua.poll_event()).collect()
}

/// Every header line called `name` (any case), as it is on the wire, in order.
fn header_lines<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .collect()
}

/// An INVITE from the caller `sip:a@192.0.2.10:5062` through the proxy, with `rr` lines.
fn invite(branch: &str, rr: &[&str]) -> String {
    let mut rr_block = String::new();
    for l in rr {
        rr_block.push_str(l);
        rr_block.push('\n');
    }
    format!(
        "INVITE sip:uas@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\nVia: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKcaller\n{rr_block}Max-Forwards: 69\nFrom: <sip:a@example.org>;tag=ft\nTo: <sip:uas@198.51.100.1>\nCall-ID: rr-{branch}\nCSeq: 1 INVITE\nContact: <sip:a@192.0.2.77:5062>\nContent-Length: 0\n\n"
    )
}

fn incoming_call(ua: &mut Ua, msg: &str, now: Instant) -> TxId {
    feed(ua, msg, now);
    let evs = events(ua);
    let [UaEvent::IncomingCall { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    *tx
}

/// An in-dialog request from the caller in the call set up by [`invite`]`(branch, …)`.
fn in_dialog(method: &str, call_branch: &str, branch: &str, cseq: u32, tag: &str) -> String {
    format!(
        "{method} sip:trunkline@198.51.100.1:5060 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\nMax-Forwards: 69\nFrom: <sip:a@example.org>;tag=ft\nTo: <sip:uas@198.51.100.1>;tag={tag}\nCall-ID: rr-{call_branch}\nCSeq: {cseq} {method}\nContent-Length: 0\n\n"
    )
}

#[test]
fn uas_18x_and_2xx_echo_record_route_verbatim_and_in_order_but_100_does_not() {
    let t0 = Instant::now();
    let mut ua = ua();
    let tx = incoming_call(&mut ua, &invite("z9hG4bKrr1", &RR_LINES), t0);

    // 100 Trying (sent by the transaction layer after 200 ms, or built here) is hop-by-hop:
    // it has no To tag and must not carry Record-Route.
    ua.handle_timeout(t0 + Duration::from_millis(200));
    let trying = transmits(&mut ua);
    assert_eq!(trying.len(), 1);
    let trying = text(&trying[0]);
    assert!(trying.starts_with("SIP/2.0 100 Trying\r\n"), "{trying}");
    assert!(header_lines(&trying, "Record-Route").is_empty(), "{trying}");
    let built_100 = ua.make_response(tx, 100).unwrap();
    assert_eq!(built_100.header("Record-Route").count(), 0);

    // 180 and 183 with our To tag: early dialog, so RR is copied (§12.1.1).
    for status in [180, 183] {
        let r = ua.make_response(tx, status).unwrap();
        assert_eq!(
            r.header("Record-Route").collect::<Vec<_>>(),
            RR_ECHOED.map(|l| l.split_once(": ").unwrap().1),
            "make_response builds it complete"
        );
        ua.respond(tx, r, t0 + Duration::from_millis(300)).unwrap();
        let out = transmits(&mut ua);
        let msg = text(&out[0]);
        assert!(msg.starts_with(&format!("SIP/2.0 {status} ")), "{msg}");
        assert_eq!(header_lines(&msg, "Record-Route"), RR_ECHOED, "{msg}");
    }

    // The 2xx: same values, same order; its retransmission too.
    let ok = ua.make_response(tx, 200).unwrap();
    ua.respond(tx, ok, t0 + Duration::from_millis(400)).unwrap();
    let out = transmits(&mut ua);
    let msg = text(&out[0]);
    assert!(msg.starts_with("SIP/2.0 200 OK\r\n"), "{msg}");
    assert_eq!(header_lines(&msg, "Record-Route"), RR_ECHOED, "{msg}");
    assert_eq!(out[0].destination, proxy_source(), "responses follow Via");
    ua.handle_timeout(t0 + Duration::from_millis(900));
    let again = transmits(&mut ua);
    assert_eq!(again.len(), 1, "2xx retransmitted at T1");
    assert_eq!(
        header_lines(&text(&again[0]), "Record-Route"),
        RR_ECHOED,
        "{}",
        text(&again[0])
    );

    // Parsed back, the values are the INVITE's, element by element.
    let Ok(Message::Response(parsed)) = Message::parse(out[0].payload.clone()) else {
        panic!()
    };
    let got: Vec<String> = parsed
        .record_route()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "<sip:p1.example.net;lr;ftag=abc>",
            "<sip:p2.example.net:5070;transport=tcp;lr>",
            "<sip:[2001:db8::1];lr;x=y>",
            "\"Edge\" <sip:192.0.2.99;lr>;x-unknown=1",
        ]
    );
}

#[test]
fn uas_error_responses_and_non_invite_responses_carry_no_record_route() {
    let t0 = Instant::now();
    let mut ua = ua();
    let tx = incoming_call(&mut ua, &invite("z9hG4bKrr2", &RR_LINES), t0);
    let busy = ua.make_response(tx, 486).unwrap();
    assert_eq!(busy.header("Record-Route").count(), 0);
    ua.respond(tx, busy, t0).unwrap();
    let msg = text(&transmits(&mut ua)[0]);
    assert!(msg.starts_with("SIP/2.0 486 "), "{msg}");
    assert!(header_lines(&msg, "Record-Route").is_empty(), "{msg}");

    // An OPTIONS through the same proxy: answered by the core, nothing to record-route.
    let options = invite("z9hG4bKrr3", &RR_LINES)
        .replace("INVITE sip:", "OPTIONS sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    feed(&mut ua, &options, t0);
    let msg = text(&transmits(&mut ua)[0]);
    assert!(msg.starts_with("SIP/2.0 200 OK"), "{msg}");
    assert!(header_lines(&msg, "Record-Route").is_empty(), "{msg}");
}

#[test]
fn a_2xx_built_without_make_response_gets_record_route_when_sent() {
    let t0 = Instant::now();
    let mut ua = ua();
    let raw = invite("z9hG4bKrr4", &RR_LINES);
    let tx = incoming_call(&mut ua, &raw, t0);
    let Ok(Message::Request(request)) = Message::parse(Bytes::from(raw.replace('\n', "\r\n")))
    else {
        panic!()
    };
    let mut ok = Response::for_request(&request, 200);
    ok.set_to_tag("hand1");
    ok.push_header("Contact", "<sip:trunkline@198.51.100.1:5060>");
    ua.respond(tx, ok, t0).unwrap().expect("a UAS dialog");
    let msg = text(&transmits(&mut ua)[0]);
    assert_eq!(header_lines(&msg, "Record-Route"), RR_ECHOED, "{msg}");
}

#[test]
fn an_invite_with_an_unparseable_record_route_gets_400_not_a_silent_failure() {
    // The dialog's route set cannot be built from it, so no 180/200 could be sent: answer 400 at
    // once instead of handing the application a call it cannot answer.
    let t0 = Instant::now();
    let mut ua = ua();
    feed(
        &mut ua,
        &invite("z9hG4bKrr8", &["Record-Route: <sip:p1.example.net;lr"]),
        t0,
    );
    let out = transmits(&mut ua);
    assert_eq!(out.len(), 1);
    let msg = text(&out[0]);
    assert!(
        msg.starts_with("SIP/2.0 400 Bad Request (") && msg.contains("Record-Route"),
        "{msg}"
    );
    assert!(events(&mut ua).is_empty());
    assert_eq!(ua.stats().bad_requests, 1);
    assert_eq!(ua.dialog_count(), 0);
}

/// Answers the INVITE of `branch` with 200, takes the caller's ACK; returns (dialog, our tag).
fn answer_and_ack(ua: &mut Ua, branch: &str, rr: &[&str], now: Instant) -> (DialogId, String) {
    let tx = incoming_call(ua, &invite(branch, rr), now);
    let ok = ua.make_response(tx, 200).unwrap();
    let tag = ok.to_tag().unwrap();
    let dialog = ua.respond(tx, ok, now).unwrap().expect("a UAS dialog");
    transmits(ua);
    feed(ua, &in_dialog("ACK", branch, "z9hG4bKack", 1, &tag), now);
    assert!(matches!(
        events(ua).as_slice(),
        [UaEvent::AckReceived { .. }]
    ));
    (dialog, tag)
}

#[test]
fn uas_bye_carries_the_invite_record_route_in_order_and_goes_to_the_first_route() {
    let t0 = Instant::now();
    let mut ua = ua();
    let rr = [
        "Record-Route: <sip:192.0.2.50:5070;lr;ftag=abc>",
        "Record-Route: <sip:p2.example.net;transport=udp;lr>, <sip:[2001:db8::1];lr;x=y>",
    ];
    let (dialog, _) = answer_and_ack(&mut ua, "z9hG4bKrr5", &rr, t0);
    ua.bye(&dialog, t0 + Duration::from_secs(1)).unwrap();
    let out = transmits(&mut ua);
    assert_eq!(out.len(), 1);
    let bye = text(&out[0]);
    // Loose routing (§12.2.1.1): Request-URI = remote target (the caller's Contact), Route = the
    // route set, which for the UAS is the INVITE's Record-Route in order (§12.1.1).
    assert!(
        bye.starts_with("BYE sip:a@192.0.2.77:5062 SIP/2.0\r\n"),
        "{bye}"
    );
    assert_eq!(
        header_lines(&bye, "Route"),
        [
            "Route: <sip:192.0.2.50:5070;lr;ftag=abc>",
            "Route: <sip:p2.example.net;transport=udp;lr>",
            "Route: <sip:[2001:db8::1];lr;x=y>",
        ],
        "{bye}"
    );
    // §16.12 / RFC 3263: sent to the first route, not to the Contact nor back to the source.
    assert_eq!(
        (out[0].destination, out[0].transport),
        (addr("192.0.2.50:5070"), TransportKind::Udp)
    );
}

#[test]
fn uas_bye_with_a_host_name_first_route_goes_back_to_the_proxy_that_sent_the_invite() {
    // Without DNS the first route cannot be resolved here; the proxy that sent the INVITE is the
    // best next hop (it is the one that record-routed on top), never the caller's Contact.
    let t0 = Instant::now();
    let mut ua = ua();
    let (dialog, _) = answer_and_ack(&mut ua, "z9hG4bKrr6", &RR_LINES, t0);
    ua.bye(&dialog, t0 + Duration::from_secs(1)).unwrap();
    let out = transmits(&mut ua);
    let bye = text(&out[0]);
    assert_eq!(header_lines(&bye, "Route").len(), 4, "{bye}");
    assert_eq!(out[0].destination, proxy_source());
}

#[test]
fn uas_reinvite_2xx_echoes_its_record_route_but_the_route_set_stays() {
    let t0 = Instant::now();
    let mut ua = ua();
    let rr = ["Record-Route: <sip:192.0.2.50:5070;lr;ftag=abc>"];
    let (dialog, tag) = answer_and_ack(&mut ua, "z9hG4bKrr7", &rr, t0);
    let reinvite = in_dialog("INVITE", "z9hG4bKrr7", "z9hG4bKre", 2, &tag).replace(
        "Max-Forwards: 69\n",
        "Record-Route: <sip:192.0.2.60;lr;ftag=abc>, <sip:192.0.2.61;lr>\nMax-Forwards: 69\nContact: <sip:a@192.0.2.78:5062>\n",
    );
    feed(&mut ua, &reinvite, t0 + Duration::from_secs(1));
    let evs = events(&mut ua);
    let [UaEvent::DialogRequest { tx, .. }] = evs.as_slice() else {
        panic!("{evs:?}")
    };
    let tx = *tx;
    let ok = ua.make_response(tx, 200).unwrap();
    ua.respond(tx, ok, t0 + Duration::from_secs(1)).unwrap();
    let msg = text(&transmits(&mut ua)[0]);
    assert_eq!(
        header_lines(&msg, "Record-Route"),
        ["Record-Route: <sip:192.0.2.60;lr;ftag=abc>, <sip:192.0.2.61;lr>"],
        "{msg}"
    );
    // §12.2: Record-Route in a target refresh does not change the route set; Contact does change
    // the remote target.
    feed(
        &mut ua,
        &in_dialog("ACK", "z9hG4bKrr7", "z9hG4bKack2", 2, &tag),
        t0 + Duration::from_secs(1),
    );
    ua.bye(&dialog, t0 + Duration::from_secs(2)).unwrap();
    let out = transmits(&mut ua);
    let bye = text(&out[0]);
    assert!(
        bye.starts_with("BYE sip:a@192.0.2.78:5062 SIP/2.0"),
        "{bye}"
    );
    assert_eq!(
        header_lines(&bye, "Route"),
        ["Route: <sip:192.0.2.50:5070;lr;ftag=abc>"],
        "{bye}"
    );
    assert_eq!(out[0].destination, addr("192.0.2.50:5070"));
}

// ---- UAC ------------------------------------------------------------------------------------

fn outbound_proxy() -> SocketAddr {
    addr("192.0.2.30:5060")
}

/// Places a call through the outbound proxy; returns (request id, the INVITE as sent).
fn place_call(ua: &mut Ua, now: Instant) -> (TxId, Request) {
    let tx = ua
        .invite(
            InviteParams {
                target: Uri::parse("sip:+15551234567@trunk.example").unwrap(),
                to: None,
                from: NameAddr::parse("<sip:gw@198.51.100.1>").unwrap(),
                destination: outbound_proxy(),
                transport: TransportKind::Udp,
                body: None,
                credentials: None,
                session_expires: None,
                extra_headers: Vec::new(),
            },
            now,
        )
        .unwrap();
    let out = transmits(ua);
    let Ok(Message::Request(invite)) = Message::parse(out[0].payload.clone()) else {
        panic!()
    };
    (tx, invite)
}

/// The callee's 200 as it arrives through the proxies: the proxy chain's Record-Route (as in
/// [`RR_ECHOED`], the callee echoed it), the callee's Contact.
fn ok_through_proxies(invite: &Request, rr: &[&str]) -> Response {
    let mut ok = Response::for_request(invite, 200);
    ok.set_to_tag("callee1");
    ok.push_header("Contact", "<sip:callee@203.0.113.20:5080>");
    for l in rr {
        let (_, v) = l.split_once(':').unwrap();
        ok.push_header("Record-Route", v.trim());
    }
    ok
}

fn answered_uac_call(ua: &mut Ua, rr: &[&str], now: Instant) -> (DialogId, Vec<Transmit>) {
    let (tx, invite) = place_call(ua, now);
    ua.handle_datagram(
        ok_through_proxies(&invite, rr).to_bytes(),
        outbound_proxy(),
        TransportKind::Udp,
        now,
    );
    let evs = events(ua);
    let [
        UaEvent::Response {
            tx: got,
            dialog: Some(dialog),
            ..
        },
    ] = evs.as_slice()
    else {
        panic!("{evs:?}")
    };
    assert_eq!(*got, tx);
    (dialog.clone(), transmits(ua))
}

/// The route set of the UAC: the 2xx's Record-Route reversed (§12.1.2), one value per line.
const UAC_ROUTES: [&str; 4] = [
    "Route: \"Edge\" <sip:192.0.2.99;lr>;x-unknown=1",
    "Route: <sip:[2001:db8::1];lr;x=y>",
    "Route: <sip:p2.example.net:5070;transport=tcp;lr>",
    "Route: <sip:p1.example.net;lr;ftag=abc>",
];

#[test]
fn uac_ack_and_in_dialog_requests_carry_the_reversed_route_set_and_go_to_the_first_route() {
    let t0 = Instant::now();
    let mut ua = ua();
    let (dialog, acks) = answered_uac_call(&mut ua, &RR_ECHOED, t0);
    assert_eq!(acks.len(), 1);
    let check = |t: &Transmit, method: &str| {
        let msg = text(t);
        assert!(
            msg.starts_with(&format!(
                "{method} sip:callee@203.0.113.20:5080 SIP/2.0\r\n"
            )),
            "loose routing: the remote target stays the Request-URI: {msg}"
        );
        assert_eq!(header_lines(&msg, "Route"), UAC_ROUTES, "{msg}");
        assert_eq!(
            (t.destination, t.transport),
            (addr("192.0.2.99:5060"), TransportKind::Udp),
            "to the first route, not to the Contact nor the INVITE's destination: {msg}"
        );
    };
    check(&acks[0], "ACK");

    // A re-INVITE, and its 200 coming back with another Record-Route: the ACK keeps the route set
    // (§12.2: RR in a target refresh does not change it), the new Contact becomes the target.
    let t1 = t0 + Duration::from_secs(1);
    ua.send_in_dialog(&dialog, Method::Invite, None, Vec::new(), t1)
        .unwrap();
    let out = transmits(&mut ua);
    check(&out[0], "INVITE");
    let Ok(Message::Request(reinvite)) = Message::parse(out[0].payload.clone()) else {
        panic!()
    };
    let mut ok = Response::for_request(&reinvite, 200);
    ok.push_header("Contact", "<sip:callee@203.0.113.21:5080>");
    ok.push_header("Record-Route", "<sip:192.0.2.88;lr>");
    ua.handle_datagram(
        ok.to_bytes(),
        addr("192.0.2.99:5060"),
        TransportKind::Udp,
        t1,
    );
    events(&mut ua);
    let out = transmits(&mut ua);
    assert_eq!(out.len(), 1, "the ACK of the re-INVITE");
    let ack = text(&out[0]);
    assert!(
        ack.starts_with("ACK sip:callee@203.0.113.21:5080 SIP/2.0\r\n"),
        "{ack}"
    );
    assert_eq!(header_lines(&ack, "Route"), UAC_ROUTES, "{ack}");
    assert_eq!(out[0].destination, addr("192.0.2.99:5060"));

    let check = |t: &Transmit, method: &str| {
        let msg = text(t);
        assert!(
            msg.starts_with(&format!(
                "{method} sip:callee@203.0.113.21:5080 SIP/2.0\r\n"
            )),
            "{msg}"
        );
        assert_eq!(header_lines(&msg, "Route"), UAC_ROUTES, "{msg}");
        assert_eq!(
            (t.destination, t.transport),
            (addr("192.0.2.99:5060"), TransportKind::Udp),
            "{msg}"
        );
    };
    let refer = ua
        .dialog_mut(&dialog)
        .unwrap()
        .new_refer(&Uri::parse("sip:+15550001111@trunk.example").unwrap());
    ua.send_built_in_dialog(&dialog, refer, t1).unwrap();
    check(&transmits(&mut ua)[0], "REFER");
    let notify = ua
        .dialog_mut(&dialog)
        .unwrap()
        .new_refer_notify(200, "OK", true);
    ua.send_built_in_dialog(&dialog, notify, t1).unwrap();
    check(&transmits(&mut ua)[0], "NOTIFY");
    ua.bye(&dialog, t1).unwrap();
    check(&transmits(&mut ua)[0], "BYE");
}

#[test]
fn uac_early_dialog_takes_the_route_set_of_the_2xx_not_of_the_18x() {
    // §13.2.2.4 / §12.1.2: a 183 through one proxy path, then the 200 through another.
    let t0 = Instant::now();
    let mut ua = ua();
    let (_, invite) = place_call(&mut ua, t0);
    let mut progress = Response::for_request(&invite, 183);
    progress.set_to_tag("callee1");
    progress.push_header("Contact", "<sip:callee@203.0.113.20:5080>");
    progress.push_header("Record-Route", "<sip:192.0.2.70;lr>");
    ua.handle_datagram(
        progress.to_bytes(),
        outbound_proxy(),
        TransportKind::Udp,
        t0,
    );
    events(&mut ua);
    ua.handle_datagram(
        ok_through_proxies(
            &invite,
            &["Record-Route: <sip:192.0.2.71;lr>, <sip:192.0.2.72;lr>"],
        )
        .to_bytes(),
        outbound_proxy(),
        TransportKind::Udp,
        t0,
    );
    let out = transmits(&mut ua);
    let ack = text(&out[0]);
    assert!(ack.starts_with("ACK "), "{ack}");
    assert_eq!(
        header_lines(&ack, "Route"),
        ["Route: <sip:192.0.2.72;lr>", "Route: <sip:192.0.2.71;lr>"],
        "{ack}"
    );
    assert_eq!(out[0].destination, addr("192.0.2.72:5060"));
}

#[test]
fn uac_strict_router_first_route_becomes_the_request_uri_and_the_destination() {
    // §12.2.1.1: a first route without `lr` is a strict router (RFC 2543): it goes in the
    // Request-URI, the remote target goes last in Route, and the request is sent to it.
    let t0 = Instant::now();
    let mut ua = ua();
    let (dialog, acks) = answered_uac_call(
        &mut ua,
        &["Record-Route: <sip:192.0.2.31;lr>, <sip:192.0.2.40:5080;ftag=abc>"],
        t0,
    );
    ua.bye(&dialog, t0 + Duration::from_secs(1)).unwrap();
    let bye = transmits(&mut ua).remove(0);
    for (t, method) in [(&acks[0], "ACK"), (&bye, "BYE")] {
        let msg = text(t);
        assert!(
            msg.starts_with(&format!(
                "{method} sip:192.0.2.40:5080;ftag=abc SIP/2.0\r\n"
            )),
            "{msg}"
        );
        assert_eq!(
            header_lines(&msg, "Route"),
            [
                "Route: <sip:192.0.2.31;lr>",
                "Route: <sip:callee@203.0.113.20:5080>"
            ],
            "{msg}"
        );
        assert_eq!(t.destination, addr("192.0.2.40:5080"), "{msg}");
    }
}

#[test]
fn uac_ack_goes_to_an_ipv6_first_route_with_its_parameters_kept() {
    // The two Record-Route lines of the issue, as the callee echoes them: reversed, the IPv6
    // proxy is the first route.
    let t0 = Instant::now();
    let mut ua = ua();
    let (_, acks) = answered_uac_call(&mut ua, &RR_ECHOED[..2], t0);
    let ack = text(&acks[0]);
    assert_eq!(
        header_lines(&ack, "Route"),
        [
            "Route: <sip:[2001:db8::1];lr;x=y>",
            "Route: <sip:p2.example.net:5070;transport=tcp;lr>",
            "Route: <sip:p1.example.net;lr;ftag=abc>",
        ],
        "{ack}"
    );
    assert_eq!(
        (acks[0].destination, acks[0].transport),
        (addr("[2001:db8::1]:5060"), TransportKind::Udp)
    );
}
