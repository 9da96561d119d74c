//! Hostile input never panics: random bytes, mutated torture messages, every truncation of an
//! INVITE, oversized headers, wrong Content-Length, invalid UTF-8, unknown schemes. Each input is
//! parsed as a datagram and framed as a stream, and every accessor of an accepted message is called.
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use bytes::Bytes;
use trunkline_sip::message::{Framing, Limits, Message, ParseError, error_response, frame};
use trunkline_sip::sdp::SessionDescription;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Everything a UA might do with an input.
fn exercise(input: &[u8]) -> Result<(), ParseError> {
    let _ = frame(input);
    let parsed = Message::parse(Bytes::copy_from_slice(input));
    let m = match parsed {
        Ok(m) => m,
        Err(e) => {
            if let Some(r) = error_response(input, &e, "tag") {
                Message::parse(r.to_bytes()).expect("our error response parses");
            }
            return Err(e);
        }
    };
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.top_via();
    let v = m.validate();
    let h = m.headers();
    let _ = (
        h.vias(),
        h.from(),
        h.to(),
        h.from_tag(),
        h.to_tag(),
        h.max_forwards(),
        h.contacts(),
    );
    let _ = (
        h.record_route(),
        h.route(),
        h.content_type(),
        h.content_length(),
        h.option_tags("Require"),
    );
    for hd in h.iter() {
        let _ = trunkline_sip::message::split_list(&hd.value);
    }
    if let Message::Request(r) = &m {
        let _ = r.uri.to_string();
        if let Err(e) = &v {
            let _ = error_response(input, e, "tag");
        }
        let _ = trunkline_sip::message::Request::cancel_for(r);
    }
    let out = m.to_bytes();
    let again = Message::parse(out).expect("what we serialise parses again");
    assert_eq!(again.body(), m.body());
    if let Ok(text) = std::str::from_utf8(m.body()) {
        let _ = SessionDescription::parse(text);
    }
    v
}

const INVITE: &str = "INVITE sip:+15105550100@example.pstn.twilio.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15105550100@example.pstn.twilio.com>\r\n\
From: \"Alice \\\"A\\\"\" <sip:+15105550199@gw.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@gw.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+15105550199@[2001:db8::10]:5070>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 130\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

#[test]
fn the_reference_invite_is_valid() {
    assert_eq!(exercise(INVITE.as_bytes()), Ok(()));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5EED_0001);
    for _ in 0..3000 {
        let len = rng.below(600);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = exercise(&bytes);
    }
}

#[test]
fn random_sip_shaped_text_never_panics() {
    // an alphabet of SIP metacharacters makes the parser go deeper than uniform bytes do
    let alphabet: &[&str] = &[
        "INVITE ",
        "SIP/2.0",
        " ",
        "\r\n",
        "\r\n ",
        ":",
        ";",
        ",",
        "<",
        ">",
        "\"",
        "\\",
        "@",
        "[",
        "]",
        "sip:",
        "tel:",
        "Via: ",
        "v:",
        "SIP/2.0/UDP ",
        "branch=",
        "tag=",
        "l: ",
        "Content-Length: ",
        "CSeq: ",
        "1",
        "-1",
        "99999999999",
        "To: ",
        "From: ",
        "Call-ID: ",
        "%",
        "%4",
        "é",
        "\u{0}",
        "::",
        "?",
        "=",
        "host",
    ];
    let mut rng = Rng(0x5EED_0002);
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..rng.below(80) {
            s.push_str(alphabet[rng.below(alphabet.len())]);
        }
        let _ = exercise(s.as_bytes());
    }
}

#[test]
fn mutated_torture_messages_never_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/rfc4475/dat");
    let mut rng = Rng(0x5EED_0003);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let base = std::fs::read(&f).unwrap();
        for _ in 0..40 {
            let mut m = base.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                match rng.below(3) {
                    0 => m[i] = rng.next() as u8,
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, b"\r\n ;,:<>\"\\%@"[rng.below(12)]),
                }
            }
            let _ = exercise(&m);
        }
    }
}

#[test]
fn every_truncation_of_an_invite_is_an_error_or_a_shorter_valid_message() {
    let full = INVITE.as_bytes();
    for cut in 0..full.len() {
        let part = &full[..cut];
        let r = exercise(part);
        // a datagram cut inside the body contradicts Content-Length: never accepted
        let head_len = INVITE.find("\r\n\r\n").unwrap() + 4;
        if cut >= head_len {
            assert_eq!(r, Err(ParseError::BodyTruncated), "cut at {cut}");
        }
        assert!(
            matches!(frame(part), Framing::Incomplete | Framing::KeepAlive(_)),
            "cut at {cut}"
        );
    }
    assert_eq!(frame(full), Framing::Complete(full.len()));
}

#[test]
fn oversized_headers_are_rejected_and_bounded() {
    let big = INVITE.replace(
        "Max-Forwards: 70\r\n",
        &format!("X-Big: {}\r\n", "a".repeat(64 * 1024)),
    );
    assert_eq!(
        Message::parse(Bytes::from(big.clone())),
        Err(ParseError::HeadersTooLarge)
    );
    assert_eq!(
        frame(big.as_bytes()),
        Framing::Invalid(ParseError::HeadersTooLarge)
    );
    // a stream that never ends its header section is cut off at the limit, not buffered forever
    let endless = "X".repeat(Limits::default().max_header_bytes + 1);
    assert_eq!(
        frame(endless.as_bytes()),
        Framing::Invalid(ParseError::HeadersTooLarge)
    );
    let folded = INVITE.replace("Max-Forwards: 70\r\n", &"X-F: a\r\n b\r\n".repeat(3000));
    assert!(Message::parse(Bytes::from(folded)).is_err());
    let many = INVITE.replace("Max-Forwards: 70\r\n", &"A: b\r\n".repeat(1000));
    assert_eq!(
        Message::parse(Bytes::from(many)),
        Err(ParseError::TooManyHeaders)
    );
}

#[test]
fn wrong_content_length_values() {
    let with = |v: &str| INVITE.replace("Content-Length: 130", &format!("Content-Length: {v}"));
    let p = |s: String| Message::parse(Bytes::from(s)).map(|m| m.body().len());
    assert_eq!(p(with("130")), Ok(130));
    assert_eq!(p(with("10")), Ok(10), "short: body cut, rest ignored");
    assert_eq!(p(with("131")), Err(ParseError::BodyTruncated), "long");
    assert_eq!(p(with("-1")), Err(ParseError::BadContentLength), "negative");
    assert_eq!(
        p(with("18446744073709551616")),
        Err(ParseError::BadContentLength),
        "overflow"
    );
    assert_eq!(
        p(with("4294967296")),
        Err(ParseError::BodyTruncated),
        "huge"
    );
    assert_eq!(p(with("12abc")), Err(ParseError::BadContentLength));
    assert_eq!(p(with("")), Err(ParseError::BadContentLength));
    let dup = with("130").replace("Content-Length: 130\r\n", "Content-Length: 130\r\nl: 5\r\n");
    assert_eq!(
        p(dup),
        Err(ParseError::ConflictingContentLength),
        "two values"
    );
    let same = with("130").replace(
        "Content-Length: 130\r\n",
        "Content-Length: 130\r\nl: 0130\r\n",
    );
    assert_eq!(p(same), Ok(130), "repeated equal values are harmless");
    assert_eq!(
        frame(with("4294967296").as_bytes()),
        Framing::Invalid(ParseError::BodyTooLarge)
    );
    assert_eq!(
        frame(with("-1").as_bytes()),
        Framing::Invalid(ParseError::BadContentLength)
    );
    assert_eq!(
        frame(with("10").as_bytes()),
        Framing::Complete(INVITE.len() - 1 - 120)
    );
}

#[test]
fn invalid_utf8_in_headers_is_rejected_but_binary_bodies_are_fine() {
    let mut bad = INVITE.as_bytes().to_vec();
    let i = INVITE.find("Alice").unwrap();
    bad[i] = 0xff;
    assert_eq!(exercise(&bad), Err(ParseError::InvalidUtf8));
    assert_eq!(frame(&bad), Framing::Invalid(ParseError::InvalidUtf8));
    let mut body = INVITE.as_bytes().to_vec();
    let n = body.len();
    body[n - 3] = 0xff;
    let m = Message::parse(Bytes::from(body)).unwrap();
    assert_eq!(m.body()[127], 0xff);
}

#[test]
fn unknown_uri_schemes_parse_as_opaque_and_bad_ones_are_rejected() {
    for (uri, ok) in [
        ("urn:service:sos", true),
        ("mailto:a@example.com", true),
        ("x-custom+1.a-b:opaque;stuff", true),
        ("1abc:foo", false),
        (":nothing", false),
        ("noscheme", false),
        ("sip:", false),
        ("sip:@", false),
        ("sip:user@", false),
        ("sip:host:99999", false),
        ("sip:host:12ab", false),
        ("sip:a%zz@host", false),
        ("sip:[::1", false),
        ("tel:", false),
        ("tel:++1", false),
    ] {
        let msg = INVITE.replacen("sip:+15105550100@example.pstn.twilio.com", uri, 1);
        let r = Message::parse(Bytes::from(msg.clone()));
        assert_eq!(r.is_ok(), ok, "{uri}: {r:?}");
        if !ok {
            assert_eq!(r, Err(ParseError::BadRequestUri), "{uri}");
            assert_eq!(
                error_response(msg.as_bytes(), &ParseError::BadRequestUri, "t").map(|r| r.status),
                Some(400)
            );
        }
    }
}
