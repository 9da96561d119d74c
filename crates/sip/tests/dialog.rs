//! Dialogs (RFC 3261 §12, §13.2.2.4, §14) and session timers (RFC 4028) on real messages.
#![allow(clippy::disallowed_methods)] // one `Instant::now()` as the virtual epoch
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::dialog::{
    Dialog, DialogError, DialogState, Refresher, Role, SessionTimerAction,
    negotiate_session_expires,
};
use trunkline_sip::message::{Message, Method, Request, Response, Uri};

fn parse(text: &str) -> Message {
    Message::parse(Bytes::from(text.replace('\n', "\r\n"))).unwrap()
}

fn req(text: &str) -> Request {
    match parse(text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("expected a request"),
    }
}

fn our_invite() -> Request {
    req(
        "INVITE sip:+15551234567@trunk.example SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:alice@198.51.100.1>;tag=local1\nTo: <sip:+15551234567@trunk.example>\nCall-ID: dlg-1\nCSeq: 4 INVITE\nContact: <sip:alice@198.51.100.1>\nContent-Length: 0\n\n",
    )
}

fn ok_with_routes(invite: &Request) -> Response {
    let mut ok = Response::for_request(invite, 200);
    ok.set_to_tag("remote1");
    ok.push_header("Contact", "<sip:callee@192.0.2.20:5080;transport=udp>");
    ok.push_header("Record-Route", "<sip:edge2.example;lr>");
    ok.push_header("Record-Route", "<sip:edge1.example;lr>");
    ok
}

fn contact() -> Uri {
    Uri::parse("sip:alice@198.51.100.1").unwrap()
}

#[test]
fn uac_dialog_from_2xx_reverses_record_route_and_targets_the_contact() {
    let invite = our_invite();
    let mut d = Dialog::new_uac(&invite, &ok_with_routes(&invite), contact()).unwrap();
    assert_eq!(d.role, Role::Uac);
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(
        (
            d.id.call_id.as_str(),
            d.id.local_tag.as_str(),
            d.id.remote_tag.as_str()
        ),
        ("dlg-1", "local1", "remote1")
    );
    let routes: Vec<String> = d.route_set.iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(routes, ["sip:edge1.example;lr", "sip:edge2.example;lr"]);
    assert_eq!(
        d.remote_target.to_string(),
        "sip:callee@192.0.2.20:5080;transport=udp"
    );
    assert_eq!(d.next_hop().to_string(), "sip:edge1.example;lr");

    let bye = d.new_request(Method::Bye);
    let text = String::from_utf8_lossy(&bye.to_bytes()).into_owned();
    assert!(
        text.starts_with("BYE sip:callee@192.0.2.20:5080;transport=udp SIP/2.0\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Route: <sip:edge1.example;lr>\r\nRoute: <sip:edge2.example;lr>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("CSeq: 5 BYE"),
        "local CSeq continues from the INVITE's: {text}"
    );
    assert!(
        text.contains("From: <sip:alice@198.51.100.1>;tag=local1") && text.contains("tag=remote1")
    );
    assert_eq!(d.new_request(Method::Info).cseq().unwrap().seq, 6);
}

#[test]
fn ack_for_2xx_keeps_the_invite_cseq_and_the_route_set() {
    let mut invite = our_invite();
    invite.push_header("Proxy-Authorization", "Digest username=\"alice\"");
    let d = Dialog::new_uac(&invite, &ok_with_routes(&invite), contact()).unwrap();
    let ack = d.ack_for_2xx(&invite);
    assert_eq!(ack.method, Method::Ack);
    let cseq = ack.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (4, Method::Ack));
    assert_eq!(ack.route().unwrap().len(), 2);
    assert_eq!(
        ack.header("Proxy-Authorization").count(),
        1,
        "credentials of the INVITE (§22.4)"
    );
    assert!(ack.header("Contact").next().is_none());
}

#[test]
fn strict_route_becomes_the_request_uri() {
    let invite = our_invite();
    let mut ok = Response::for_request(&invite, 200);
    ok.set_to_tag("r");
    ok.push_header("Contact", "<sip:callee@192.0.2.20>");
    ok.push_header("Record-Route", "<sip:strict.example>");
    let mut d = Dialog::new_uac(&invite, &ok, contact()).unwrap();
    let bye = d.new_request(Method::Bye);
    assert_eq!(bye.uri.to_string(), "sip:strict.example");
    let routes: Vec<String> = bye
        .route()
        .unwrap()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    assert_eq!(
        routes,
        ["sip:callee@192.0.2.20"],
        "remote target appended (§12.2.1.1)"
    );
}

fn incoming_invite() -> Request {
    req(
        "INVITE sip:gw@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 54.172.60.1;branch=z9hG4bKtw\nRecord-Route: <sip:54.172.60.0:5060;r2=on;lr>\nMax-Forwards: 69\nFrom: <sip:+15550001111@trunk.pstn.twilio.com>;tag=tw1\nTo: <sip:+15559998888@198.51.100.1>\nCall-ID: in-1\nCSeq: 101 INVITE\nContact: <sip:+15550001111@54.172.60.5:5060>\nContent-Length: 0\n\n",
    )
}

fn uas_dialog() -> Dialog {
    let invite = incoming_invite();
    let mut ok = Response::for_request(&invite, 200);
    ok.set_to_tag("gw1");
    Dialog::new_uas(&invite, &ok, contact()).unwrap()
}

#[test]
fn uas_dialog_keeps_record_route_order_and_checks_remote_cseq() {
    let mut d = uas_dialog();
    assert_eq!(d.role, Role::Uas);
    assert_eq!(d.remote_cseq, Some(101));
    assert_eq!(
        d.route_set[0].uri.to_string(),
        "sip:54.172.60.0:5060;r2=on;lr"
    );
    let bye = d.new_request(Method::Bye);
    assert_eq!(bye.uri.to_string(), "sip:+15550001111@54.172.60.5:5060");
    assert_eq!(
        bye.cseq().unwrap().seq,
        1,
        "our CSeq space starts independently"
    );
    assert_eq!(
        bye.header("To").next(),
        Some("<sip:+15550001111@trunk.pstn.twilio.com>;tag=tw1")
    );

    let in_dialog = |method: &str, cseq: u32, contact: &str| {
        req(&format!(
            "{method} sip:gw@198.51.100.1 SIP/2.0\nVia: SIP/2.0/UDP 54.172.60.1;branch=z9hG4bK{cseq}\nMax-Forwards: 69\nFrom: <sip:+15550001111@trunk.pstn.twilio.com>;tag=tw1\nTo: <sip:+15559998888@198.51.100.1>;tag=gw1\nCall-ID: in-1\nCSeq: {cseq} {method}\n{contact}Content-Length: 0\n\n"
        ))
    };
    assert_eq!(
        d.handle_request(&in_dialog("INFO", 101, "")),
        Err(DialogError::CSeqOutOfOrder)
    );
    assert_eq!(d.handle_request(&in_dialog("INFO", 102, "")), Ok(()));
    // re-INVITE is a target refresh (§12.2.2).
    d.handle_request(&in_dialog(
        "INVITE",
        103,
        "Contact: <sip:moved@54.172.60.9:5060>\n",
    ))
    .unwrap();
    assert_eq!(d.remote_target.to_string(), "sip:moved@54.172.60.9:5060");
    assert_eq!(
        d.handle_request(&in_dialog("INVITE", 104, "")),
        Err(DialogError::Glare),
        "a second re-INVITE while the first is unanswered"
    );
    d.incoming_invite_answered(200);
    d.handle_request(&in_dialog("BYE", 105, "")).unwrap();
    assert_eq!(d.state, DialogState::Terminated);
}

#[test]
fn our_reinvite_blocks_a_second_one_and_2xx_refreshes_the_target() {
    let mut d = uas_dialog();
    let re = d.new_reinvite().unwrap();
    assert_eq!(re.method, Method::Invite);
    assert!(
        re.header("Contact").next().is_some(),
        "target refresh requests carry Contact"
    );
    assert_eq!(d.new_reinvite().unwrap_err(), DialogError::Glare);
    let mut ok = Response::for_request(&re, 200);
    ok.push_header("Contact", "<sip:new@54.172.60.7>");
    d.handle_response(&Method::Invite, &ok);
    assert_eq!(d.remote_target.to_string(), "sip:new@54.172.60.7");
    assert!(d.new_reinvite().is_ok());
    // §14.1 retry delays after 491: UAC owner 2.1–4 s, the other side 0–2 s.
    let uas_delay = d.glare_retry_delay(199);
    assert!(uas_delay <= Duration::from_secs(2));
    let invite = our_invite();
    let uac = Dialog::new_uac(&invite, &ok_with_routes(&invite), contact()).unwrap();
    for r in [0, 77, 199] {
        let t = uac.glare_retry_delay(r);
        assert!(
            t >= Duration::from_millis(2100) && t <= Duration::from_secs(4),
            "{t:?}"
        );
    }
}

#[test]
fn refer_and_sipfrag_notify() {
    let mut d = uas_dialog();
    let refer = d.new_refer(&Uri::parse("sip:+15557770000@trunk.example").unwrap());
    assert_eq!(
        refer.header("Refer-To").next(),
        Some("<sip:+15557770000@trunk.example>")
    );
    let notify = d.new_refer_notify(180, "Ringing", false);
    assert_eq!(notify.header("Event").next(), Some("refer"));
    assert_eq!(notify.content_type(), Some("message/sipfrag;version=2.0"));
    assert_eq!(&notify.body[..], b"SIP/2.0 180 Ringing\r\n");
    assert!(notify.cseq().unwrap().seq > refer.cseq().unwrap().seq);
    let last = d.new_refer_notify(200, "OK", true);
    assert!(
        last.header("Subscription-State")
            .next()
            .unwrap()
            .starts_with("terminated")
    );
}

#[test]
fn session_timer_refreshes_at_half_interval_when_we_refresh() {
    let t0 = Instant::now();
    let invite = our_invite();
    let mut d = Dialog::new_uac(&invite, &ok_with_routes(&invite), contact()).unwrap();
    d.apply_session_expires(Duration::from_secs(1800), Some("uac"), t0);
    assert_eq!(d.session_timer.unwrap().refresher, Refresher::Local);
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(900)));
    assert_eq!(d.handle_timeout(t0 + Duration::from_secs(899)), None);
    assert_eq!(
        d.handle_timeout(t0 + Duration::from_secs(900)),
        Some(SessionTimerAction::Refresh)
    );
    d.session_refreshed(t0 + Duration::from_secs(901));
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(901 + 900)));
}

#[test]
fn session_timer_expires_before_the_interval_when_the_peer_refreshes() {
    let t0 = Instant::now();
    let mut d = uas_dialog();
    d.apply_session_expires(Duration::from_secs(90), Some("uac"), t0);
    assert_eq!(d.session_timer.unwrap().refresher, Refresher::Remote);
    // 90 − min(32, 90/3) = 60 s.
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    d.session_refreshed(t0 + Duration::from_secs(45));
    assert_eq!(
        d.handle_timeout(t0 + Duration::from_secs(60)),
        None,
        "the refresh moved the deadline"
    );
    assert_eq!(
        d.handle_timeout(t0 + Duration::from_secs(105)),
        Some(SessionTimerAction::Expired)
    );
    assert_eq!(d.poll_timeout(), None);
}

#[test]
fn uas_session_expires_negotiation_picks_the_refresher() {
    let base = incoming_invite();
    let with = |extra: &str| {
        let mut r = base.clone();
        for line in extra.lines() {
            let (n, v) = line.split_once(": ").unwrap();
            r.push_header(n, v);
        }
        r
    };
    assert_eq!(
        negotiate_session_expires(&base, Duration::from_secs(90)),
        Ok(None)
    );
    assert_eq!(
        negotiate_session_expires(
            &with("Supported: timer\nSession-Expires: 1800"),
            Duration::from_secs(90)
        ),
        Ok(Some((Duration::from_secs(1800), "uac")))
    );
    assert_eq!(
        negotiate_session_expires(&with("Session-Expires: 1800"), Duration::from_secs(90)),
        Ok(Some((Duration::from_secs(1800), "uas"))),
        "a UAC without timer support cannot refresh"
    );
    assert_eq!(
        negotiate_session_expires(
            &with("Session-Expires: 100;refresher=uas"),
            Duration::from_secs(120)
        ),
        Err(Duration::from_secs(120))
    );
}
