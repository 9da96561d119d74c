//! Digest client against the published test vectors (RFC 2617 §3.5, RFC 7616 §3.9.1) and the
//! challenge Twilio sends (TWILIO.md item 6).
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use bytes::Bytes;
use trunkline_sip::auth::{
    Algorithm, AuthError, Challenge, Credentials, DigestClient, Qop, digest_response,
};
use trunkline_sip::message::{Message, Request, Response};

fn creds(user: &str, pw: &str) -> DigestClient {
    DigestClient::new(Credentials {
        username: user.into(),
        password: pw.into(),
    })
}

#[test]
fn rfc2617_mufasa_vector() {
    let ch = Challenge::parse(
        r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
    )
    .unwrap();
    assert_eq!(ch.algorithm, Algorithm::Md5);
    let mut c = creds("Mufasa", "Circle Of Life");
    let a = c
        .authorize(&ch, "GET", "/dir/index.html", b"", "0a4f113b")
        .unwrap();
    assert_eq!(a.response, "6629fae49393a05397450978507c4ef1");
    assert_eq!(a.qop, Some(Qop::Auth));
    assert_eq!(a.nc, Some(1));
    let s = a.to_string();
    assert!(s.starts_with(r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1""#), "{s}");
    assert!(s.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    assert!(s.contains("qop=auth, nc=00000001"));
    assert!(s.contains(r#"cnonce="0a4f113b""#));
    assert!(
        !s.contains("algorithm"),
        "no algorithm in challenge, none echoed"
    );
}

const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
const RFC7616_OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";

fn rfc7616(alg: &str) -> Challenge {
    Challenge::parse(&format!(
        r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}""#
    ))
    .unwrap()
}

#[test]
fn rfc7616_md5_vector() {
    let mut c = creds("Mufasa", "Circle of Life");
    let a = c
        .authorize(
            &rfc7616("MD5"),
            "GET",
            "/dir/index.html",
            b"",
            RFC7616_CNONCE,
        )
        .unwrap();
    assert_eq!(a.response, "8ca523f5e9506fed4657c9700eebdbec");
    assert!(a.to_string().contains("algorithm=MD5"));
    assert!(
        a.to_string()
            .contains(&format!(r#"opaque="{RFC7616_OPAQUE}""#))
    );
}

#[test]
fn rfc7616_sha256_vector() {
    let mut c = creds("Mufasa", "Circle of Life");
    let a = c
        .authorize(
            &rfc7616("SHA-256"),
            "GET",
            "/dir/index.html",
            b"",
            RFC7616_CNONCE,
        )
        .unwrap();
    assert_eq!(
        a.response,
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    );
    assert!(a.to_string().contains("algorithm=SHA-256"));
}

#[test]
fn sess_variants_and_no_qop_follow_the_formulas() {
    // -sess: HA1 = H(H(user:realm:pw):nonce:cnonce)
    let h = |s: &str| Algorithm::Md5.hash(s.as_bytes());
    let ha1 = h(&format!("{}:{}", h("u:r:p"), "n:c"));
    let ha2 = h("INVITE:sip:a@b");
    let want = h(&format!("{ha1}:n:00000001:c:auth:{ha2}"));
    assert_eq!(
        digest_response(
            Algorithm::Md5Sess,
            "u",
            "r",
            "p",
            "n",
            "c",
            1,
            Some(Qop::Auth),
            "INVITE",
            "sip:a@b",
            b""
        ),
        want
    );
    // RFC 2069 style (no qop): H(HA1:nonce:HA2)
    let want = h(&format!("{}:n:{ha2}", h("u:r:p")));
    assert_eq!(
        digest_response(
            Algorithm::Md5,
            "u",
            "r",
            "p",
            "n",
            "c",
            1,
            None,
            "INVITE",
            "sip:a@b",
            b""
        ),
        want
    );
    // auth-int hashes the body
    let a = digest_response(
        Algorithm::Sha256,
        "u",
        "r",
        "p",
        "n",
        "c",
        1,
        Some(Qop::AuthInt),
        "INVITE",
        "sip:a@b",
        b"v=0",
    );
    let b = digest_response(
        Algorithm::Sha256,
        "u",
        "r",
        "p",
        "n",
        "c",
        1,
        Some(Qop::AuthInt),
        "INVITE",
        "sip:a@b",
        b"v=1",
    );
    assert_ne!(a, b);
    let s = digest_response(
        Algorithm::Sha256Sess,
        "u",
        "r",
        "p",
        "n",
        "c",
        1,
        Some(Qop::Auth),
        "INVITE",
        "sip:a@b",
        b"",
    );
    assert_eq!(s.len(), 64);
}

#[test]
fn nonce_count_increments_per_nonce() {
    let mut c = creds("u", "p");
    let ch = Challenge::parse(r#"Digest realm="r", nonce="n1", qop="auth""#).unwrap();
    assert_eq!(
        c.authorize(&ch, "INVITE", "sip:x@y", b"", "c1").unwrap().nc,
        Some(1)
    );
    let second = c.authorize(&ch, "BYE", "sip:x@y", b"", "c2").unwrap();
    assert_eq!(second.nc, Some(2));
    assert!(second.to_string().contains("nc=00000002"));
    let ch2 = Challenge::parse(r#"Digest realm="r", nonce="n2", qop="auth""#).unwrap();
    assert_eq!(
        c.authorize(&ch2, "INVITE", "sip:x@y", b"", "c3")
            .unwrap()
            .nc,
        Some(1)
    );
}

fn parse_resp(s: &str) -> Response {
    match Message::parse(Bytes::from(s.to_owned())).unwrap() {
        Message::Response(r) => r,
        Message::Request(_) => panic!(),
    }
}

fn invite() -> Request {
    let s = "INVITE sip:+15105550100@example.pstn.twilio.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:+15105550199@gw.example.com>;tag=f1\r\nTo: <sip:+15105550100@example.pstn.twilio.com>\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    match Message::parse(Bytes::from(s)).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => panic!(),
    }
}

#[test]
fn twilio_407_is_answered_with_proxy_authorization() {
    let resp = parse_resp(
        "SIP/2.0 407 Proxy Authentication required\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n\
From: <sip:+15105550199@gw.example.com>;tag=f1\r\nTo: <sip:+15105550100@example.pstn.twilio.com>;tag=t9\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nServer: Twilio\r\n\
Proxy-Authenticate: Digest realm=\"sip.twilio.com\",qop=\"auth\",nonce=\"b3a1c0ffee\",opaque=\"0p4qu3\"\r\nContent-Length: 0\r\n\r\n",
    );
    let mut req = invite();
    let mut c = creds("trunkuser", "s3cret");
    c.authorize_request(&resp, &mut req, "deadbeef").unwrap();
    let v: Vec<&str> = req.header("Proxy-Authorization").collect();
    assert_eq!(v.len(), 1);
    assert!(req.header("Authorization").next().is_none());
    let want = digest_response(
        Algorithm::Md5,
        "trunkuser",
        "sip.twilio.com",
        "s3cret",
        "b3a1c0ffee",
        "deadbeef",
        1,
        Some(Qop::Auth),
        "INVITE",
        "sip:+15105550100@example.pstn.twilio.com",
        b"",
    );
    assert!(v[0].contains(&format!("response=\"{want}\"")), "{}", v[0]);
    assert!(v[0].contains(r#"uri="sip:+15105550100@example.pstn.twilio.com""#));
    assert!(v[0].contains(r#"opaque="0p4qu3""#) && v[0].contains("qop=auth, nc=00000001"));
    // a second challenge (stale nonce) replaces the credentials for the realm, nc restarts
    let resp2 = parse_resp(&String::from_utf8_lossy(&resp.to_bytes()).replace("b3a1c0ffee", "n2"));
    c.authorize_request(&resp2, &mut req, "cafe").unwrap();
    let v: Vec<&str> = req.header("Proxy-Authorization").collect();
    assert_eq!(v.len(), 1);
    assert!(v[0].contains(r#"nonce="n2""#) && v[0].contains("nc=00000001"));
}

#[test]
fn www_authenticate_401_prefers_sha256_and_echoes_algorithm() {
    let resp = parse_resp(
        "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\n\
Call-ID: x\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"n\", algorithm=MD5, qop=\"auth\"\r\n\
WWW-Authenticate: Digest realm=\"r\", nonce=\"n\", algorithm=sha-256, qop=\"auth\"\r\nContent-Length: 0\r\n\r\n",
    );
    let mut req = invite();
    creds("u", "p")
        .authorize_request(&resp, &mut req, "c")
        .unwrap();
    let v = req.header("Authorization").next().unwrap();
    assert!(v.contains("algorithm=sha-256"), "echoed as sent: {v}");
    assert_eq!(
        v.split("response=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .len(),
        64
    );
}

#[test]
fn bad_challenges_are_errors_not_panics() {
    assert_eq!(
        Challenge::parse("Basic realm=\"x\""),
        Err(AuthError::NotDigest)
    );
    assert_eq!(
        Challenge::parse("Digest nonce=\"n\""),
        Err(AuthError::Missing("realm"))
    );
    assert_eq!(
        Challenge::parse("Digest realm=\"r\""),
        Err(AuthError::Missing("nonce"))
    );
    assert_eq!(
        Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256"),
        Err(AuthError::UnsupportedAlgorithm("SHA-512-256".into()))
    );
    assert_eq!(
        Challenge::parse("Digest realm=\"r"),
        Err(AuthError::Malformed)
    );
    let ch = Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\"").unwrap();
    assert!(matches!(
        creds("u", "p").authorize(&ch, "INVITE", "sip:a@b", b"", "c"),
        Err(AuthError::UnsupportedQop(_))
    ));
    let mut req = invite();
    let ok = parse_resp("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        creds("u", "p").authorize_request(&ok, &mut req, "c"),
        Err(AuthError::NoChallenge)
    );
    for junk in [
        "Digest",
        "Digest ,,,",
        "Digest =x",
        "Digest a",
        "Digest a=\"\\",
        "",
        "Digest realm=\u{e9}, nonce=\u{1F600}",
    ] {
        let _ = Challenge::parse(junk);
    }
}
