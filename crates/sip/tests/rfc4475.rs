//! RFC 4475 (SIP torture test messages): every one of the 49 messages of Appendix B, with the
//! outcome `index.tsv` expects, checked through `Message::parse` (datagram framing) and
//! `validate()` (the stateless checks a UA makes before answering 400), plus key fields.
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use bytes::Bytes;
use trunkline_sip::message::{
    Framing, Host, Message, Method, ParseError, Request, Response, Uri, error_response, frame,
};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/rfc4475");

fn load(name: &str) -> Bytes {
    Bytes::from(std::fs::read(format!("{DIR}/dat/{name}.dat")).expect("test data present"))
}

/// What our parser does with a message.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Parses and validates.
    Accept,
    /// Parses (so the UA can answer) but validation fails with this error → 400 / drop.
    Invalid(ParseError),
    /// `Message::parse` fails with this error.
    Reject(ParseError),
}

fn outcome(name: &str) -> Outcome {
    match Message::parse(load(name)) {
        Err(e) => Outcome::Reject(e),
        Ok(m) => match m.validate() {
            Ok(()) => Outcome::Accept,
            Err(e) => Outcome::Invalid(e),
        },
    }
}

fn expected(name: &str) -> Outcome {
    use Outcome::*;
    use ParseError as E;
    match name {
        // 3.1.2: malformed
        "badinv01" => Invalid(E::BadHeader("Via")),
        "clerr" => Reject(E::BodyTruncated),
        "ncl" => Reject(E::BadContentLength),
        "scalar02" => Invalid(E::BadHeader("CSeq")),
        "scalarlg" => Invalid(E::BadHeader("CSeq")),
        "quotbal" => Invalid(E::BadHeader("To")),
        "ltgtruri" => Reject(E::BadRequestUri),
        "lwsruri" => Reject(E::BadStartLine),
        "regbadct" => Invalid(E::BadHeader("Contact")),
        "badaspec" => Invalid(E::BadHeader("To")),
        "baddn" => Invalid(E::BadHeader("From")),
        "badvers" => Reject(E::UnsupportedVersion),
        "mismatch01" | "mismatch02" => Invalid(E::CSeqMethodMismatch),
        "bigcode" => Reject(E::BadStatusCode),
        "mcl01" => Reject(E::ConflictingContentLength),
        // 3.3: parse must not break, then 400
        "insuf" => Invalid(E::MissingHeader("From")),
        "multi01" => Invalid(E::DuplicateHeader("From")),
        // everything else is accepted (incl. the liberal repairs lwsstart, trws, escruri, baddate)
        _ => Accept,
    }
}

struct Row {
    file: String,
    section: String,
    msg: String,
    parser_outcome: String,
}

fn rows() -> Vec<Row> {
    let tsv = std::fs::read_to_string(format!("{DIR}/index.tsv")).expect("index.tsv");
    tsv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            Row {
                file: c[0].into(),
                section: c[1].into(),
                msg: c[3].into(),
                parser_outcome: c[4].into(),
            }
        })
        .collect()
}

fn stem(file: &str) -> &str {
    file.trim_start_matches("dat/").trim_end_matches(".dat")
}

#[test]
fn all_49_messages_have_the_expected_outcome() {
    let rows = rows();
    assert_eq!(rows.len(), 49);
    let mut table = String::new();
    for row in &rows {
        let name = stem(&row.file);
        let got = outcome(name);
        let want = expected(name);
        table.push_str(&format!(
            "{:<10} {:<8} {:<45} {:?}\n",
            name, row.section, row.parser_outcome, got
        ));
        assert_eq!(
            got, want,
            "{name} ({}, index says {})",
            row.section, row.parser_outcome
        );

        // consistency with the index: strict ACCEPT rows must be accepted, strict REJECT rejected.
        let po = row.parser_outcome.as_str();
        if po.starts_with("ACCEPT (must)") || po == "ACCEPT" || po.starts_with("ACCEPT (should)") {
            assert_eq!(got, Outcome::Accept, "{name}: index says {po}");
        }
        if po == "REJECT" || po == "REJECT (framing error)" {
            assert_ne!(got, Outcome::Accept, "{name}: index says {po}");
        }
        if po.contains("must not break") || po.contains("must not fail") {
            assert!(
                !matches!(got, Outcome::Reject(_)),
                "{name}: parse must not break"
            );
        }
    }
    println!("{table}");
}

/// Every rejected *request* gets an error response with the right status when it carries a Via and
/// a CSeq; every rejected *response* is dropped.
#[test]
fn rejected_requests_get_an_error_response_and_responses_are_dropped() {
    for row in rows() {
        let name = stem(&row.file);
        let bytes = load(name);
        let err = match outcome(name) {
            Outcome::Accept => continue,
            Outcome::Invalid(e) | Outcome::Reject(e) => e,
        };
        let resp = error_response(&bytes, &err, "t4g");
        if row.msg == "resp" {
            assert!(resp.is_none(), "{name}: responses are dropped");
            continue;
        }
        let resp = resp.unwrap_or_else(|| panic!("{name}: no error response"));
        let want = if name == "badvers" { 505 } else { 400 };
        assert_eq!(resp.status, want, "{name}");
        assert!(resp.header("Via").next().is_some(), "{name}");
        assert!(resp.header("CSeq").next().is_some(), "{name}");
        // what we send must itself parse
        Message::parse(resp.to_bytes())
            .unwrap_or_else(|e| panic!("{name}: our 400 does not parse: {e}"));
    }
}

#[test]
fn accepted_messages_round_trip_through_to_bytes() {
    for row in rows() {
        let name = stem(&row.file);
        let Ok(m) = Message::parse(load(name)) else {
            continue;
        };
        let again =
            Message::parse(m.to_bytes()).unwrap_or_else(|e| panic!("{name}: reparse failed: {e}"));
        assert_eq!(m.body(), again.body(), "{name}");
        if let (Message::Request(a), Message::Request(b)) = (&m, &again) {
            assert_eq!(a.uri, b.uri, "{name}");
            assert_eq!(a.method, b.method, "{name}");
        }
        let no_cl = |h: &&trunkline_sip::message::Header| h.name != "Content-Length";
        let a: Vec<_> = m.headers().iter().filter(no_cl).collect();
        let b: Vec<_> = again.headers().iter().filter(no_cl).collect();
        assert_eq!(a, b, "{name}");
    }
}

fn req(name: &str) -> Request {
    match Message::parse(load(name)).expect(name) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("{name} is a response"),
    }
}

fn resp(name: &str) -> Response {
    match Message::parse(load(name)).expect(name) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("{name} is a request"),
    }
}

#[test]
fn wsinv_folding_compact_forms_and_leading_zeros() {
    let r = req("wsinv");
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.max_forwards().unwrap(), Some(68));
    let cseq = r.cseq().unwrap();
    assert_eq!((cseq.seq, &cseq.method), (9, &Method::Invite));
    assert_eq!(r.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    let vias = r.vias().unwrap();
    let summary: Vec<_> = vias
        .iter()
        .map(|v| (v.transport.as_str(), v.branch().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("UDP", "390skdjuw"),
            ("TCP", "z9hG4bK9ikj8"),
            ("UDP", "z9hG4bK30239")
        ]
    );
    assert_eq!(
        vias[1].sent_by.host,
        Host::Domain("spindle.example.com".into())
    );
    assert_eq!(r.to_tag().as_deref(), Some("1918181833n"));
    assert_eq!(r.from_tag().as_deref(), Some("98asjd8"));
    let from = r.from().unwrap();
    assert_eq!(from.display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(r.header("Subject").collect::<Vec<_>>(), [""]);
    assert_eq!(r.header("s").count(), 1);
    assert_eq!(
        r.header("NewFangledHeader").next(),
        Some("newfangled value continued newfangled value")
    );
    let contact = r.contact().unwrap().unwrap();
    assert_eq!(contact.display.as_deref(), Some("Quoted string \"\""));
    assert_eq!(contact.param("newparam"), Some(Some("newvalue")));
    assert_eq!(contact.param("secondparam"), Some(None));
    assert_eq!(contact.param("q"), Some(Some("0.33")));
    let route = r.route().unwrap();
    assert_eq!(route.len(), 1);
    assert_eq!(route[0].uri.param("unknown-no-value"), Some(None));
    assert_eq!(r.content_type(), Some("application/sdp"));
    assert_eq!(r.body.len(), 150);
    assert_eq!(
        r.uri.to_string(),
        "sip:vivekg@chair-dnrc.example.com;unknownparam"
    );
}

#[test]
fn intmeth_unknown_method_and_odd_characters() {
    let r = req("intmeth");
    let m = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(r.method, Method::Other(m.into()));
    assert_eq!(r.cseq().unwrap().method, Method::Other(m.into()));
    assert_eq!(r.max_forwards().unwrap(), Some(255));
    let Uri::Sip(u) = &r.uri else {
        panic!("sip uri")
    };
    assert_eq!(
        u.user.as_deref(),
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        u.password.as_deref(),
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(
        r.to().unwrap().display.as_deref(),
        Some("BEL:\x07 NUL:\0 DEL:\x7f")
    );
    assert_eq!(
        r.from().unwrap().display.as_deref(),
        Some("token1~` token2'+_ token3*%!.-")
    );
    assert_eq!(
        r.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
}

#[test]
fn esc01_escapes_are_kept_exactly_and_decoded_only_once() {
    let r = req("esc01");
    assert_eq!(
        r.uri.to_string(),
        "sip:sips%3Auser%40example.com@example.net"
    );
    assert_eq!(
        r.uri.as_sip().unwrap().user_unescaped().as_deref(),
        Some("sips:user@example.com")
    );
    let c = r.contact().unwrap().unwrap();
    assert_eq!(
        c.uri.to_string(),
        "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    );
    assert_eq!(
        r.to()
            .unwrap()
            .uri
            .as_sip()
            .unwrap()
            .user_unescaped()
            .as_deref(),
        Some("user")
    );
    let bytes = r.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("n%61me=v%61lue%25%34%31"),
        "re-emitted exactly"
    );
    assert!(text.starts_with("INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n"));
}

#[test]
fn escnull_contacts_stay_distinct() {
    let r = req("escnull");
    let c = r.contacts().unwrap();
    assert_eq!(c.len(), 2);
    assert_ne!(c[0].uri, c[1].uri);
    assert_eq!(c[1].uri.user(), Some("%00%00"));
}

#[test]
fn esc02_percent_in_method_and_header_name_is_not_an_escape() {
    let r = req("esc02");
    assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
    assert_eq!(r.contacts().unwrap().len(), 2);
    assert_eq!(r.header("C%6Fntact").count(), 1);
}

#[test]
fn lwsdisp_longreq_dblreq_semiuri_transports_mpart01() {
    assert_eq!(
        req("lwsdisp").from().unwrap().display.as_deref(),
        Some("caller")
    );

    let long = req("longreq");
    assert_eq!(long.vias().unwrap().len(), 34);
    assert!(long.to().unwrap().display.unwrap().len() > 60);

    let dbl = req("dblreq");
    assert_eq!(dbl.method, Method::Register);
    assert!(dbl.body.is_empty(), "trailing INVITE bytes ignored");

    let semi = req("semiuri");
    assert_eq!(semi.uri.user(), Some("user;par=u%40example.net"));
    assert_eq!(
        semi.uri.as_sip().unwrap().user_unescaped().as_deref(),
        Some("user;par=u@example.net")
    );
    assert_eq!(semi.headers.list_values("Accept").len(), 6);

    let t: Vec<String> = req("transports")
        .vias()
        .unwrap()
        .into_iter()
        .map(|v| v.transport)
        .collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);

    let mp = req("mpart01");
    assert_eq!(mp.body.len(), 553);
    assert!(mp.body.contains(&0), "binary body kept");
    assert!(mp.content_type().unwrap().starts_with("multipart/mixed"));
}

#[test]
fn responses_with_unusual_or_empty_reason_phrase() {
    let r = resp("unreason");
    assert_eq!(r.status, 200);
    assert!(r.reason.starts_with("= 2**3 * 5**2"));
    let r = resp("noreason");
    assert_eq!((r.status, r.reason.as_str()), (100, ""));
}

#[test]
fn liberal_repairs_never_re_emit_the_oddity() {
    for name in ["lwsstart", "trws"] {
        let r = req(name);
        let out = r.to_bytes();
        let out = String::from_utf8_lossy(&out).to_string();
        let first = out.lines().next().unwrap();
        assert_eq!(first, format!("{} {} SIP/2.0", r.method, r.uri), "{name}");
    }
    let e = req("escruri");
    assert_eq!(
        e.uri.as_sip().unwrap().headers.as_deref(),
        Some("Route=%3Csip:example.com%3E")
    );
}

#[test]
fn odd_but_valid_requests_expose_what_the_ua_needs() {
    assert_eq!(
        req("badbranch").top_via().unwrap().branch(),
        Some("z9hG4bK")
    );
    assert!(
        req("badbranch").top_via().unwrap().is_rfc3261_branch(),
        "cookie only: UA may 400"
    );

    let u = req("unkscm");
    assert_eq!(u.uri.scheme(), "nobodyknowsthisscheme");
    assert!(
        matches!(u.uri, Uri::Other { .. }),
        "416 Unsupported URI Scheme"
    );
    assert_eq!(req("novelsc").uri.scheme(), "soap.beep");

    let u2 = req("unksm2");
    assert_eq!(u2.to().unwrap().uri.scheme(), "isbn");
    assert_eq!(u2.from().unwrap().uri.scheme(), "http");
    assert_eq!(u2.contact().unwrap().unwrap().uri.scheme(), "name");

    let b = req("bext01");
    assert_eq!(
        b.headers.option_tags("Require"),
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(
        b.headers.option_tags("Proxy-Require"),
        ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
    );

    assert_eq!(
        req("invut").content_type(),
        Some("application/unknownformat")
    );
    assert!(
        req("regaut01")
            .header("Authorization")
            .next()
            .unwrap()
            .starts_with("NoOneKnowsThisScheme")
    );
    assert_eq!(req("zeromf").max_forwards().unwrap(), Some(0));

    let c1 = req("cparam01").contact().unwrap().unwrap();
    assert_eq!(c1.uri.to_string(), "sip:+19725552222@gw1.example.net");
    assert_eq!(c1.param("unknownparam"), Some(None));
    let c2 = req("cparam02").contact().unwrap().unwrap();
    assert_eq!(c2.uri.param("unknownparam"), Some(None));
    assert!(c2.params.is_empty());

    let rc = req("regescrt").contact().unwrap().unwrap();
    assert_eq!(
        rc.uri.to_string(),
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    );

    assert_eq!(
        req("sdp01").header("Accept").next(),
        Some("text/nobodyKnowsThis")
    );

    let old = req("inv2543");
    assert_eq!(old.top_via().unwrap().branch(), None);
    assert_eq!(old.from_tag(), None);
    assert_eq!(old.max_forwards().unwrap(), None);
    assert!(old.body.starts_with(b"v=0"), "body = rest of datagram");

    let bc = resp("bcast");
    assert_eq!(
        bc.vias().unwrap()[1].sent_by.host,
        Host::V4("255.255.255.255".parse().unwrap())
    );
}

#[test]
fn stream_framing_of_the_framing_tests() {
    // clerr on TCP: wait for more data
    assert_eq!(frame(&load("clerr")), Framing::Incomplete);
    // ncl and mcl01 on TCP: close
    assert_eq!(
        frame(&load("ncl")),
        Framing::Invalid(ParseError::BadContentLength)
    );
    assert_eq!(
        frame(&load("mcl01")),
        Framing::Invalid(ParseError::ConflictingContentLength)
    );
    // dblreq: two messages? The second lacks a body; only the REGISTER is complete.
    let d = load("dblreq");
    let Framing::Complete(n) = frame(&d) else {
        panic!("dblreq frames")
    };
    assert!(Message::parse(d.slice(..n)).is_ok());
    // inv2543 has no Content-Length: unframeable on a stream
    assert_eq!(
        frame(&load("inv2543")),
        Framing::Invalid(ParseError::MissingContentLength)
    );
}
