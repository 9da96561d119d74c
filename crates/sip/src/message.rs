//! SIP messages: parsing, framing, serialisation and the stateless helpers a UA core needs.
//!
//! Implements:
//! - RFC 3261 §7 (message format): start line, header fields with compact names (§7.3.3), folding
//!   (LWS continuation lines, §7.3.1), comma-separated lists, body framed by Content-Length (§18.3,
//!   §20.14): on UDP a missing Content-Length means "rest of the datagram", trailing octets beyond it
//!   are ignored; on streams Content-Length is mandatory ([`frame`]).
//! - RFC 5626 §3.5.1 CRLF keep-alives on streams.
//! - RFC 3261 §8.2.6 (responses for a request: copies Via, From, To, Call-ID, CSeq), §17.1.1.3 (ACK
//!   for a non-2xx final response), §9.1 (CANCEL).
//! - RFC 3261 §8.2 / §16.3 stateless validation ([`Request::validate`], [`Response::validate`]) and a
//!   best-effort 400 (or 505) for a request too broken to parse ([`error_response`]).
//! - URIs `sip:`, `sips:`, `tel:` (RFC 3966) and opaque other schemes ([`Uri`]), kept exactly as
//!   received (no `%`-unescaping on the way through, RFC 4475 §3.1.1.3).
//!
//! Bounded: a header section over [`Limits::max_header_bytes`], more than [`Limits::max_headers`]
//! header fields or a body over [`Limits::max_body_bytes`] is rejected before any allocation grows
//! with it.
//!
//! `ezk-sip-types` is used for status-code reason phrases; its message parser is not used on the wire
//! because it percent-decodes URI user parts (so `%`-escaped URIs would not round-trip), matches
//! methods case-insensitively by prefix, and lacks `tel:` URIs and `\"` in display names. Our parser
//! is a small hand-written one, tested against all 49 RFC 4475 torture messages.

mod headers;
mod uri;

pub use headers::{CSeq, Header, Headers, NameAddr, Via, canonical_name, split_list};
pub use uri::{Host, HostPort, Param, SipUri, TelUri, Uri, unescape};

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use headers::{is_token, parse_decimal};

/// Why a message could not be parsed or is not acceptable; its [`Display`](fmt::Display) is short
/// enough to serve as the detail of a 400 reason phrase ([`ParseError::reason_phrase`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty message")]
    Empty,
    /// No empty line ends the header section.
    #[error("header section not terminated")]
    MissingHeaderEnd,
    /// The header section is longer than the limit.
    #[error("header section too large")]
    HeadersTooLarge,
    /// More header fields than the limit.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The header section is not UTF-8.
    #[error("invalid UTF-8 in header section")]
    InvalidUtf8,
    /// The request or status line is malformed.
    #[error("malformed start line")]
    BadStartLine,
    /// `SIP/x.y` other than 2.0 (answer 505).
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    /// The method is not a token.
    #[error("malformed method")]
    BadMethod,
    /// Status code not three digits in 100–699.
    #[error("invalid status code")]
    BadStatusCode,
    /// The Request-URI is malformed.
    #[error("malformed Request-URI")]
    BadRequestUri,
    /// A URI is malformed.
    #[error("malformed URI")]
    BadUri,
    /// A line in the header section is not `name: value`.
    #[error("malformed header line")]
    BadHeaderLine,
    /// A header field's value is malformed.
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    /// A name-addr (display name / `<uri>`) is malformed.
    #[error("malformed name-addr")]
    BadNameAddr,
    /// A `;name=value` parameter is malformed.
    #[error("malformed parameter")]
    BadParam,
    /// Content-Length is not a non-negative decimal number.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// Several Content-Length values disagree.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// Content-Length is larger than the bytes received.
    #[error("Content-Length larger than message body")]
    BodyTruncated,
    /// The body is larger than the limit.
    #[error("message body too large")]
    BodyTooLarge,
    /// Content-Length is required on stream transports.
    #[error("missing Content-Length on stream transport")]
    MissingContentLength,
    /// A mandatory header field is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A single-valued header field appears more than once.
    #[error("multiple {0} headers")]
    DuplicateHeader(&'static str),
    /// CSeq method differs from the request method.
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
}

impl ParseError {
    /// The status code to answer a request with this error (505 for a version, else 400).
    pub fn status_code(&self) -> u16 {
        match self {
            ParseError::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    /// A reason phrase for the error response: `Bad Request (malformed Via header)`.
    pub fn reason_phrase(&self) -> String {
        match self {
            ParseError::UnsupportedVersion => "Version Not Supported".to_owned(),
            e => format!("Bad Request ({e})"),
        }
    }
}

/// Resource limits applied while parsing and framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of start line + header fields, in bytes.
    pub max_header_bytes: usize,
    /// Maximum number of header fields (after unfolding, before list splitting).
    pub max_headers: usize,
    /// Maximum body size.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 256,
            max_body_bytes: 64 * 1024,
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A SIP method. Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// INFO (RFC 6086)
    Info,
    /// UPDATE (RFC 3311)
    Update,
    /// PRACK (RFC 3262)
    Prack,
    /// SUBSCRIBE (RFC 6665)
    Subscribe,
    /// NOTIFY (RFC 6665)
    Notify,
    /// REFER (RFC 3515)
    Refer,
    /// MESSAGE (RFC 3428)
    Message,
    /// PUBLISH (RFC 3903)
    Publish,
    /// Any other token.
    Other(String),
}

impl Method {
    /// Maps a token to a method (exact, case-sensitive match for the known ones).
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method name.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The default reason phrase for a status code (`"OK"`, `"Not Found"` …), `""` if unknown.
pub fn default_reason(status: u16) -> &'static str {
    ezk_sip_types::StatusCode::from(status).text().unwrap_or("")
}

// ---------------------------------------------------------------------------------------------

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method from the request line.
    pub method: Method,
    /// Request-URI.
    pub uri: Uri,
    /// Header fields in order.
    pub headers: Headers,
    /// Body (exactly Content-Length bytes when parsed).
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 100–699.
    pub status: u16,
    /// Reason phrase (may be empty).
    pub reason: String,
    /// Header fields in order.
    pub headers: Headers,
    /// Body.
    pub body: Bytes,
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

macro_rules! header_accessors {
    ($($t:ty),*) => {$(
        impl $t {
            /// Raw values of every `name` header (any case, compact form accepted), in order.
            pub fn header<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
                self.headers.get(name)
            }
            /// Appends a header field.
            pub fn push_header(&mut self, name: &str, value: impl Into<String>) {
                self.headers.push(name, value);
            }
            /// Replaces every `name` header with one value.
            pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
                self.headers.set(name, value);
            }
            /// Sets the body and its Content-Type (Content-Length is written by `to_bytes`).
            pub fn set_body(&mut self, content_type: &str, body: impl Into<Bytes>) {
                self.headers.set("Content-Type", content_type);
                self.body = body.into();
            }
            /// Call-ID.
            pub fn call_id(&self) -> Option<&str> { self.headers.call_id() }
            /// CSeq number and method.
            pub fn cseq(&self) -> Result<CSeq, ParseError> { self.headers.cseq() }
            /// From header.
            pub fn from(&self) -> Result<NameAddr, ParseError> { self.headers.from() }
            /// To header.
            pub fn to(&self) -> Result<NameAddr, ParseError> { self.headers.to() }
            /// From tag.
            pub fn from_tag(&self) -> Option<String> { self.headers.from_tag() }
            /// To tag.
            pub fn to_tag(&self) -> Option<String> { self.headers.to_tag() }
            /// Topmost Via.
            pub fn top_via(&self) -> Result<Via, ParseError> { self.headers.top_via() }
            /// All Via values, top first.
            pub fn vias(&self) -> Result<Vec<Via>, ParseError> { self.headers.vias() }
            /// Max-Forwards.
            pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> { self.headers.max_forwards() }
            /// First Contact.
            pub fn contact(&self) -> Result<Option<NameAddr>, ParseError> { self.headers.contact() }
            /// All Contact values.
            pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> { self.headers.contacts() }
            /// Record-Route values in order.
            pub fn record_route(&self) -> Result<Vec<NameAddr>, ParseError> { self.headers.record_route() }
            /// Route values in order.
            pub fn route(&self) -> Result<Vec<NameAddr>, ParseError> { self.headers.route() }
            /// Content-Type.
            pub fn content_type(&self) -> Option<&str> { self.headers.content_type() }
        }
    )*};
}
header_accessors!(Request, Response);

impl Message {
    /// Parses one whole UDP datagram (or one frame cut by [`frame`]) with default [`Limits`].
    ///
    /// Content-Length is honoured (trailing bytes ignored); without it the body is the rest of the
    /// datagram. Leading CRLFs are skipped (RFC 3261 §7.5).
    pub fn parse(datagram: Bytes) -> Result<Message, ParseError> {
        Message::parse_with(datagram, &Limits::default())
    }

    /// [`Message::parse`] with explicit limits.
    pub fn parse_with(datagram: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        parse_message(datagram, limits)
    }

    /// Serialises the message with a correct Content-Length.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }

    /// Raw values of every `name` header.
    pub fn header<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.headers().get(name)
    }

    /// Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.headers().call_id()
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        self.headers().cseq()
    }

    /// Topmost Via.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        self.headers().top_via()
    }

    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Message::Request(r) => Some(r),
            Message::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Message::Response(r) => Some(r),
            Message::Request(_) => None,
        }
    }

    /// Runs [`Request::validate`] or [`Response::validate`].
    pub fn validate(&self) -> Result<(), ParseError> {
        match self {
            Message::Request(r) => r.validate(),
            Message::Response(r) => r.validate(),
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn write_headers_and_body(out: &mut BytesMut, headers: &Headers, body: &[u8]) {
    for h in headers.iter() {
        if h.name == "Content-Length" {
            continue;
        }
        put_line_safe(out, h.name.as_bytes());
        out.put_slice(b": ");
        put_line_safe(out, h.value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: ");
    out.put_slice(body.len().to_string().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(body);
}

/// Writes `bytes`, turning any CR or LF into a space: a value set by the application can never
/// inject a header line or end the header section early.
fn put_line_safe(out: &mut BytesMut, bytes: &[u8]) {
    if bytes.iter().any(|&c| c == b'\r' || c == b'\n') {
        out.extend(
            bytes
                .iter()
                .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
    } else {
        out.put_slice(bytes);
    }
}

fn estimated_size(headers: &Headers, body: &[u8]) -> usize {
    128 + body.len()
        + headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>()
}

impl Request {
    /// A request with no header field and no body; add headers with [`Request::push_header`].
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Serialises the request (Content-Length always written, equal to the body length).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(estimated_size(&self.headers, &self.body));
        put_line_safe(
            &mut out,
            format!("{} {} SIP/2.0", self.method, self.uri).as_bytes(),
        );
        out.put_slice(b"\r\n");
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// Stateless checks of RFC 3261 §8.1.1/§8.2: exactly one parseable From, To, Call-ID, CSeq
    /// (number ≤ 2³²−1, method equal to the request method), at least one Via and every Via
    /// parseable, Max-Forwards (if present) a single value in 0–255, Contact values parseable.
    /// An `Err` means "answer 400 (or 505) with [`ParseError::reason_phrase`]".
    pub fn validate(&self) -> Result<(), ParseError> {
        validate_common(&self.headers)?;
        let cseq = self.headers.cseq()?;
        if cseq.method != self.method {
            return Err(ParseError::CSeqMethodMismatch);
        }
        if self.headers.get("Max-Forwards").count() > 1 {
            return Err(ParseError::DuplicateHeader("Max-Forwards"));
        }
        self.headers.max_forwards()?;
        self.headers.contacts()?;
        Ok(())
    }

    /// The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3): same Request-URI,
    /// Call-ID, From, CSeq number and Route set as the INVITE, the top Via of the INVITE only, and
    /// the To of the response (with its tag).
    pub fn ack_for_non2xx(invite: &Request, response: &Response) -> Result<Request, ParseError> {
        let cseq = invite.cseq()?;
        let mut ack = Request::new(Method::Ack, invite.uri.clone());
        let via = invite
            .headers
            .list_values("Via")
            .into_iter()
            .next()
            .ok_or(ParseError::MissingHeader("Via"))?;
        ack.headers.push("Via", via);
        ack.headers.push("Max-Forwards", "70");
        ack.headers.push("From", invite.headers.single("From")?);
        ack.headers.push("To", response.headers.single("To")?);
        ack.headers
            .push("Call-ID", invite.headers.single("Call-ID")?);
        ack.headers.push("CSeq", format!("{} ACK", cseq.seq));
        ack.headers.copy_from(&invite.headers, "Route");
        Ok(ack)
    }

    /// The CANCEL for `request` (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, CSeq number
    /// and Route set, and the request's top Via only (so it matches the same server transaction).
    pub fn cancel_for(request: &Request) -> Result<Request, ParseError> {
        let cseq = request.cseq()?;
        let mut cancel = Request::new(Method::Cancel, request.uri.clone());
        let via = request
            .headers
            .list_values("Via")
            .into_iter()
            .next()
            .ok_or(ParseError::MissingHeader("Via"))?;
        cancel.headers.push("Via", via);
        cancel.headers.push("Max-Forwards", "70");
        cancel.headers.push("From", request.headers.single("From")?);
        cancel.headers.push("To", request.headers.single("To")?);
        cancel
            .headers
            .push("Call-ID", request.headers.single("Call-ID")?);
        cancel.headers.push("CSeq", format!("{} CANCEL", cseq.seq));
        cancel.headers.copy_from(&request.headers, "Route");
        Ok(cancel)
    }
}

fn validate_common(h: &Headers) -> Result<(), ParseError> {
    let vias = h.vias()?;
    if vias.is_empty() {
        return Err(ParseError::MissingHeader("Via"));
    }
    h.from()?;
    h.to()?;
    let call_id = h.single("Call-ID")?;
    if call_id.is_empty() || call_id.contains([' ', '\t']) {
        return Err(ParseError::BadHeader("Call-ID"));
    }
    h.cseq()?;
    h.content_length()?;
    Ok(())
}

impl Response {
    /// A response with the default reason phrase and no header field.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: default_reason(status).to_owned(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// A response to `request` (RFC 3261 §8.2.6.2): copies every Via (in order), From, To, Call-ID
    /// and CSeq, and Timestamp for a 100 (§8.2.6.1). Add the To tag with [`Response::set_to_tag`].
    pub fn for_request(request: &Request, status: u16) -> Response {
        let mut r = Response::new(status);
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            r.headers.copy_from(&request.headers, name);
        }
        if status == 100 {
            r.headers.copy_from(&request.headers, "Timestamp");
        }
        r
    }

    /// Adds `;tag=` to the To header unless it already has a tag (RFC 3261 §8.2.6.2).
    pub fn set_to_tag(&mut self, tag: &str) {
        let Some(to) = self.headers.first("To") else {
            return;
        };
        match NameAddr::parse(to) {
            Ok(na) if na.tag().is_some() => {}
            Ok(mut na) => {
                na.set_tag(tag);
                self.headers.set("To", na.to_string());
            }
            Err(_) => {
                let v = format!("{to};tag={tag}");
                self.headers.set("To", v);
            }
        }
    }

    /// Serialises the response.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(estimated_size(&self.headers, &self.body));
        put_line_safe(
            &mut out,
            format!("SIP/2.0 {} {}", self.status, self.reason).as_bytes(),
        );
        out.put_slice(b"\r\n");
        write_headers_and_body(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// Checks a response is usable (RFC 3261 §18.1.2 / §8.1.3): Via, From, To, Call-ID and CSeq
    /// parseable. A response that fails is dropped.
    pub fn validate(&self) -> Result<(), ParseError> {
        validate_common(&self.headers)
    }
}

// ---------------------------------------------------------------------------------------------
// parsing

/// Finds the end of the header section: returns (end of last header line, start of body).
/// Accepts CRLF CRLF, and bare LF LF as a liberal extension.
fn find_head_end(buf: &[u8], limit: usize) -> Result<Option<(usize, usize)>, ParseError> {
    let scan = &buf[..buf.len().min(limit.saturating_add(4))];
    let mut i = 0;
    while let Some(off) = scan[i..].iter().position(|&c| c == b'\n') {
        let n = i + off;
        match (scan.get(n + 1), scan.get(n + 2)) {
            (Some(b'\n'), _) => return check_head_len(n, n + 2, limit),
            (Some(b'\r'), Some(b'\n')) => return check_head_len(n, n + 3, limit),
            _ => {}
        }
        i = n + 1;
    }
    if buf.len() > limit {
        Err(ParseError::HeadersTooLarge)
    } else {
        Ok(None)
    }
}

fn check_head_len(
    end: usize,
    body: usize,
    limit: usize,
) -> Result<Option<(usize, usize)>, ParseError> {
    if end > limit {
        Err(ParseError::HeadersTooLarge)
    } else {
        Ok(Some((end, body)))
    }
}

fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count()
}

/// `true` if `s` starts with `SIP/` in any case (byte-wise: safe on any UTF-8).
fn starts_with_sip(s: &str) -> bool {
    s.as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
}

enum StartLine {
    Request(Method, Uri),
    Response(u16, String),
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if starts_with_sip(line) {
        let (version, rest) = line.split_once(' ').ok_or(ParseError::BadStartLine)?;
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(ParseError::UnsupportedVersion);
        }
        let rest = rest.trim_start_matches(' ');
        let (code, reason) = match rest.split_once(' ') {
            Some((c, r)) => (c, r),
            None => (rest, ""),
        };
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::BadStatusCode);
        }
        let status: u16 = code.parse().map_err(|_| ParseError::BadStatusCode)?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::BadStatusCode);
        }
        return Ok(StartLine::Response(status, reason.trim().to_owned()));
    }
    // liberal: runs of SP and trailing SP accepted (RFC 4475 §3.1.2.9/§3.1.2.10); never re-emitted.
    let mut parts = line.split([' ', '\t']).filter(|p| !p.is_empty());
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if !is_token(method) {
        return Err(ParseError::BadMethod);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(if starts_with_sip(version) {
            ParseError::UnsupportedVersion
        } else {
            ParseError::BadStartLine
        });
    }
    let uri = Uri::parse(uri).map_err(|_| ParseError::BadRequestUri)?;
    Ok(StartLine::Request(Method::from_token(method), uri))
}

/// Splits a header section (after the start line) into unfolded header fields.
fn parse_header_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    limits: &Limits,
    lenient: bool,
) -> Result<Headers, ParseError> {
    let mut headers = Headers::new();
    let mut current: Option<(String, String)> = None;
    let mut count = 0usize;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            match current.as_mut() {
                Some((_, v)) => {
                    let t = line.trim();
                    if !t.is_empty() {
                        if !v.is_empty() {
                            v.push(' ');
                        }
                        v.push_str(t);
                    }
                    continue;
                }
                None if lenient => continue,
                None => return Err(ParseError::BadHeaderLine),
            }
        }
        if let Some((n, v)) = current.take() {
            headers.push_raw(n, v);
        }
        let Some(colon) = line.find(':') else {
            if lenient {
                continue;
            }
            return Err(ParseError::BadHeaderLine);
        };
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if !is_token(name) {
            if lenient {
                continue;
            }
            return Err(ParseError::BadHeaderLine);
        }
        count += 1;
        if count > limits.max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        current = Some((
            canonical_name(name).to_owned(),
            line[colon + 1..].trim().to_owned(),
        ));
    }
    if let Some((n, v)) = current.take() {
        headers.push_raw(n, v);
    }
    Ok(headers)
}

fn lines(head: &str) -> impl Iterator<Item = &str> {
    head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

fn parse_message(datagram: Bytes, limits: &Limits) -> Result<Message, ParseError> {
    let start = skip_leading_crlf(&datagram);
    let buf = &datagram[start..];
    if buf.iter().all(|c| c.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    let (head_end, body_start) = match find_head_end(buf, limits.max_header_bytes)? {
        Some(x) => x,
        // Liberal (RFC 4475 §3.1.2.15's baddn ends so): a datagram whose last header line is
        // complete but has no empty line after it is taken as headers with an empty body.
        None if buf.ends_with(b"\n") => {
            let end = buf.len() - 1 - usize::from(buf.ends_with(b"\r\n"));
            (end, buf.len())
        }
        None => return Err(ParseError::MissingHeaderEnd),
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ParseError::InvalidUtf8)?;
    let mut it = lines(head);
    let first = it.next().ok_or(ParseError::BadStartLine)?;
    let start_line = parse_start_line(first)?;
    let headers = parse_header_lines(it, limits, false)?;

    let available = buf.len() - body_start;
    let body_len = match headers.content_length()? {
        Some(n) if n > available => return Err(ParseError::BodyTruncated),
        Some(n) => n,
        None => available,
    };
    if body_len > limits.max_body_bytes {
        return Err(ParseError::BodyTooLarge);
    }
    let body_from = start + body_start;
    let body = datagram.slice(body_from..body_from + body_len);
    Ok(match start_line {
        StartLine::Request(method, uri) => Message::Request(Request {
            method,
            uri,
            headers,
            body,
        }),
        StartLine::Response(status, reason) => Message::Response(Response {
            status,
            reason,
            headers,
            body,
        }),
    })
}

/// Builds the error response for a request that failed [`Message::parse`] or
/// [`Request::validate`], from the raw bytes, as far as they allow (RFC 3261 §8.2, RFC 4475).
///
/// Returns `None` (drop silently) when the bytes are a response or an ACK, or when there is not enough to
/// route an answer: a parseable top Via and a CSeq are required; From, To, Call-ID are copied if
/// present. `to_tag` is added to To when it has none. Status and reason come from `err`.
pub fn error_response(datagram: &[u8], err: &ParseError, to_tag: &str) -> Option<Response> {
    let limits = Limits::default();
    let buf = &datagram[skip_leading_crlf(datagram)..];
    let head = match find_head_end(buf, limits.max_header_bytes) {
        Ok(Some((end, _))) => &buf[..end],
        Ok(None) => buf,
        Err(_) => &buf[..buf.len().min(limits.max_header_bytes)],
    };
    let head = String::from_utf8_lossy(head);
    let mut it = lines(&head);
    let first = it.next()?;
    // never answer a response, and never answer an ACK (RFC 3261 §17.1.1.3: no response to ACK)
    if starts_with_sip(first) || first.split([' ', '\t']).next() == Some("ACK") {
        return None;
    }
    let headers = parse_header_lines(it, &limits, true).ok()?;
    let top = headers.list_values("Via").into_iter().next()?;
    // the sent-by must be usable even if the parameters or the version are broken
    // (RFC 4475 §3.1.2.1 badinv01, §3.1.2.16 badvers)
    if Via::parse(top).is_err() {
        let sent_by = top
            .split(';')
            .next()
            .unwrap_or("")
            .split_ascii_whitespace()
            .next_back()?;
        HostPort::parse(sent_by).ok()?;
    }
    let cseq = headers.first("CSeq")?;
    if cseq.is_empty() {
        return None;
    }
    let mut r = Response::new(err.status_code());
    r.reason = err.reason_phrase();
    let mut copied = 0usize;
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        copied += headers.get(name).map(str::len).sum::<usize>();
        r.headers.copy_from(&headers, name);
    }
    // never answer with something larger than we would accept ourselves
    if copied > limits.max_header_bytes / 2 {
        return None;
    }
    r.set_to_tag(to_tag);
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// stream framing

/// The result of looking for one message at the start of a stream buffer (RFC 3261 §18.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// A whole message occupies the first `n` bytes: pass `buf[..n]` to [`Message::parse`].
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// The first `n` bytes are a keep-alive: 4 = CRLFCRLF ping (answer with CRLF), 2 = CRLF pong
    /// (RFC 5626 §3.5.1). Consume them and call again.
    KeepAlive(usize),
    /// The stream cannot be framed (oversized or unframeable header section, missing or invalid
    /// Content-Length): close the connection.
    Invalid(ParseError),
}

/// Frames the next message of a TCP/TLS stream with default [`Limits`].
pub fn frame(buf: &[u8]) -> Framing {
    frame_with(buf, &Limits::default())
}

/// [`frame`] with explicit limits.
pub fn frame_with(buf: &[u8], limits: &Limits) -> Framing {
    if buf.is_empty() {
        return Framing::Incomplete;
    }
    if buf.starts_with(b"\r\n") {
        return match buf.get(2..4) {
            Some(b"\r\n") => Framing::KeepAlive(4),
            Some([b'\r']) => Framing::Incomplete,
            _ if buf.len() == 3 && buf[2] == b'\r' => Framing::Incomplete,
            _ => Framing::KeepAlive(2),
        };
    }
    if buf[0] == b'\n' {
        return Framing::KeepAlive(1);
    }
    let (head_end, body_start) = match find_head_end(buf, limits.max_header_bytes) {
        Ok(Some(x)) => x,
        Ok(None) => return Framing::Incomplete,
        Err(e) => return Framing::Invalid(e),
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Framing::Invalid(ParseError::InvalidUtf8);
    };
    let mut it = lines(head);
    it.next();
    let headers = match parse_header_lines(it, limits, false) {
        Ok(h) => h,
        Err(e) => return Framing::Invalid(e),
    };
    let len = match headers.content_length() {
        Ok(Some(n)) => n,
        Ok(None) => return Framing::Invalid(ParseError::MissingContentLength),
        Err(e) => return Framing::Invalid(e),
    };
    if len > limits.max_body_bytes {
        return Framing::Invalid(ParseError::BodyTooLarge);
    }
    let total = body_start + len;
    if buf.len() >= total {
        Framing::Complete(total)
    } else {
        Framing::Incomplete
    }
}

/// RFC 3261 §25.1 `token` character test (shared with the auth and SDP parsers).
pub(crate) fn is_token_byte(c: u8) -> bool {
    headers::is_token_char(c)
}

/// `Some(n)` if `s` is a plain non-negative decimal (used by other modules for numeric headers).
pub fn parse_number(s: &str) -> Option<u64> {
    parse_decimal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+15105550100@example.pstn.twilio.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15105550100@example.pstn.twilio.com>\r\n\
From: \"Alice\" <sip:+15105550199@gw.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@gw.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Route: <sip:54.172.60.0:5060;lr>\r\n\
Contact: <sip:+15105550199@192.0.2.10:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 5\r\n\r\nv=0\r\n";

    fn parse_req(s: &str) -> Request {
        match Message::parse(Bytes::copy_from_slice(s.as_bytes())) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn twilio_origination_invite_over_tls_exposes_routing_headers() {
        let msg = "INVITE sip:+14155550123@gw.example.com:5061;transport=tls SIP/2.0\r\n\
Record-Route: <sip:54.172.60.0:5061;transport=tls;r2=on;lr>\r\n\
Record-Route: <sip:172.25.10.217;r2=on;lr>\r\n\
Via: SIP/2.0/TLS 54.172.60.0:5061;branch=z9hG4bKa1b2.0\r\n\
Via: SIP/2.0/UDP 172.25.10.217:5060;rport=5060;branch=z9hG4bK8cbd_c3356d0b_58\r\n\
Max-Forwards: 68\r\n\
From: <sip:+14155550199@example.pstn.twilio.com:5060>;tag=98765432_c3356d0b_9a8b\r\n\
To: <sip:+14155550123@gw.example.com>\r\n\
Call-ID: 6e8a4b1c2d3f4e5a@0.0.0.0\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+14155550199@172.25.10.217:5060>\r\n\
X-Twilio-CallSid: CA0123\r\n\
Content-Length: 0\r\n\r\n";
        let r = parse_req(msg);
        assert!(r.validate().is_ok());
        let rr = r.record_route().unwrap();
        assert_eq!(rr.len(), 2);
        assert_eq!(
            rr[0].uri.to_string(),
            "sip:54.172.60.0:5061;transport=tls;r2=on;lr"
        );
        assert_eq!(rr[0].uri.param("lr"), Some(None));
        assert_eq!(r.uri.param("transport"), Some(Some("tls")));
        let vias = r.vias().unwrap();
        assert_eq!(
            (vias[0].transport.as_str(), vias[0].sent_by.port),
            ("TLS", Some(5061))
        );
        assert_eq!(vias[1].rport(), Some(Some(5060)));
        assert_eq!(r.call_id(), Some("6e8a4b1c2d3f4e5a@0.0.0.0"));
        assert_eq!(r.from_tag().as_deref(), Some("98765432_c3356d0b_9a8b"));
        assert_eq!(r.header("x-twilio-callsid").next(), Some("CA0123"));
        assert_eq!(r.max_forwards().unwrap(), Some(68));
    }

    #[test]
    fn application_values_cannot_inject_header_lines() {
        let mut r = Response::new(200);
        r.reason = "OK\r\nX-Evil: 1".into();
        r.push_header("Subject", "hi\r\nX-Evil: 2\r\n\r\nbody");
        let na = NameAddr {
            display: Some("A\r\nX-Evil: 3\u{7}\"".into()),
            uri: Uri::parse("sip:a@b").unwrap(),
            params: Vec::new(),
        };
        r.push_header("To", na.to_string());
        let out = r.to_bytes();
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains("\nX-Evil"), "{text}");
        let back = match Message::parse(out).unwrap() {
            Message::Response(b) => b,
            Message::Request(_) => panic!(),
        };
        assert_eq!(back.headers.len(), 3, "Subject, To, Content-Length only");
        assert_eq!(
            back.to().unwrap().display.as_deref(),
            Some("A  X-Evil: 3\u{7}\"")
        );
    }

    #[test]
    fn tel_uris_parse_and_print_rfc3966() {
        let u = Uri::parse("tel:+1-201-555-0123;ext=22").unwrap();
        let Uri::Tel(t) = &u else { panic!("tel") };
        assert!(t.is_global());
        assert_eq!(t.digits(), "+12015550123");
        assert_eq!(u.param("ext"), Some(Some("22")));
        assert_eq!(u.to_string(), "tel:+1-201-555-0123;ext=22");
        let local = Uri::parse("tel:7042;phone-context=example.com").unwrap();
        assert_eq!(local.user(), Some("7042"));
        assert_eq!(
            Uri::parse("tel:7042"),
            Err(ParseError::BadUri),
            "local number needs phone-context"
        );
        assert_eq!(Uri::parse("tel:+1 555"), Err(ParseError::BadUri));
        assert_eq!(Uri::parse("tel:"), Err(ParseError::BadUri));
        // in a request line and a To header
        let r = parse_req(
            &INVITE
                .replace(
                    "INVITE sip:+15105550100@example.pstn.twilio.com",
                    "INVITE tel:+15105550100",
                )
                .replace(
                    "To: <sip:+15105550100@example.pstn.twilio.com>",
                    "To: <tel:+15105550100>;tag=x",
                ),
        );
        assert_eq!(r.uri.scheme(), "tel");
        assert_eq!(r.to().unwrap().uri.user(), Some("+15105550100"));
        assert_eq!(r.to_tag().as_deref(), Some("x"));
        assert!(r.validate().is_ok());
    }

    #[test]
    fn escaped_quotes_in_display_names_are_unescaped_and_re_escaped() {
        let na = NameAddr::parse(r#""Joe \"the man\" Smith \\ jr" <sip:joe@example.com>;tag=9"#)
            .unwrap();
        assert_eq!(na.display.as_deref(), Some(r#"Joe "the man" Smith \ jr"#));
        assert_eq!(na.tag(), Some("9"));
        let printed = na.to_string();
        assert_eq!(
            printed,
            r#""Joe \"the man\" Smith \\ jr" <sip:joe@example.com>;tag=9"#
        );
        assert_eq!(NameAddr::parse(&printed).unwrap(), na);
        assert!(NameAddr::parse(r#""unterminated <sip:a@b>"#).is_err());
    }

    #[test]
    fn ipv6_hosts_in_request_uri_and_via() {
        let r = parse_req(
            &INVITE
                .replace(
                    "sip:+15105550100@example.pstn.twilio.com SIP",
                    "sip:bob@[2001:db8::10]:5070;transport=tcp SIP",
                )
                .replace("192.0.2.10:5060;branch", "[2001:db8::10]:5070;branch"),
        );
        let sip = r.uri.as_sip().unwrap();
        assert_eq!(
            sip.host_port.host,
            Host::V6("2001:db8::10".parse().unwrap())
        );
        assert_eq!(sip.host_port.port, Some(5070));
        assert_eq!(
            r.uri.to_string(),
            "sip:bob@[2001:db8::10]:5070;transport=tcp"
        );
        let via = r.top_via().unwrap();
        assert_eq!(via.sent_by.to_string(), "[2001:db8::10]:5070");
        let via =
            Via::parse("SIP/2.0/UDP [2001:db8::1];received=[2001:db8::2];rport=5061").unwrap();
        assert_eq!(via.received(), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(via.rport(), Some(Some(5061)));
        assert!(Uri::parse("sip:[2001:db8::zz]").is_err());
    }

    #[test]
    fn space_before_colon_and_compact_forms() {
        let msg = "OPTIONS sip:a@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards : 70\r\n\
i: abc\r\nf: <sip:b@example.com>;tag=1\r\nt: sip:a@example.com\r\nm: <sip:b@h>\r\nc: text/plain\r\n\
k: timer, 100rel\r\ns: hi\r\ne: gzip\r\no: refer\r\nu: talk\r\nr: <sip:x@y>\r\nl: 0\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let r = parse_req(msg);
        assert_eq!(r.max_forwards().unwrap(), Some(70));
        assert_eq!(r.call_id(), Some("abc"));
        assert_eq!(r.from_tag().as_deref(), Some("1"));
        assert_eq!(r.contact().unwrap().unwrap().uri.to_string(), "sip:b@h");
        assert_eq!(r.content_type(), Some("text/plain"));
        assert_eq!(r.headers.option_tags("Supported"), ["timer", "100rel"]);
        for (compact, long) in [
            ("s", "Subject"),
            ("e", "Content-Encoding"),
            ("o", "Event"),
            ("u", "Allow-Events"),
            ("r", "Refer-To"),
        ] {
            assert_eq!(r.header(compact).next(), r.header(long).next(), "{compact}");
            assert!(r.headers.iter().any(|h| h.name == long), "{long} canonical");
        }
        assert!(r.validate().is_ok());
        let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(out.contains("\r\nMax-Forwards: 70\r\n") && out.contains("\r\nCall-ID: abc\r\n"));
    }

    #[test]
    fn folding_and_multiple_vias_in_one_and_across_headers() {
        let msg = "BYE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP p1.example.com;branch=z9hG4bKa,\r\n  SIP/2.0/TCP p2.example.com:5080\r\n\t;branch=z9hG4bKb\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKc;received=192.0.2.9;rport=1234\r\nFrom: <sip:b@example.com>;tag=1\r\n\
To: <sip:a@example.com>;tag=2\r\nCall-ID: x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
        let r = parse_req(msg);
        let vias = r.vias().unwrap();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].branch(), Some("z9hG4bKa"));
        assert_eq!(
            (
                vias[1].transport.as_str(),
                vias[1].sent_by.port,
                vias[1].branch()
            ),
            ("TCP", Some(5080), Some("z9hG4bKb"))
        );
        assert_eq!(vias[2].received(), Some("192.0.2.9".parse().unwrap()));
        assert_eq!(vias[2].rport(), Some(Some(1234)));
        assert_eq!(r.top_via().unwrap(), vias[0]);
        // responses copy all of them, in order
        let resp = Response::for_request(&r, 200);
        let again = match Message::parse(resp.to_bytes()).unwrap() {
            Message::Response(x) => x,
            Message::Request(_) => panic!(),
        };
        assert_eq!(again.vias().unwrap(), vias);
    }

    #[test]
    fn content_length_framing_on_datagrams() {
        let r = parse_req(&INVITE.replace("Content-Length: 5", "Content-Length: 2"));
        assert_eq!(&r.body[..], b"v=");
        let r = parse_req(&INVITE.replace("Content-Length: 5\r\n", ""));
        assert_eq!(
            &r.body[..],
            b"v=0\r\n",
            "no Content-Length on UDP: rest of datagram"
        );
        let b = |s: String| Message::parse(Bytes::from(s));
        assert_eq!(
            b(INVITE.replace("Content-Length: 5", "Content-Length: 50")),
            Err(ParseError::BodyTruncated)
        );
        assert_eq!(
            b(INVITE.replace("Content-Length: 5", "Content-Length: -4")),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            b(INVITE.replace(
                "Content-Length: 5",
                "Content-Length: 99999999999999999999999"
            )),
            Err(ParseError::BadContentLength)
        );
        // serialising always writes the real length
        let mut r = parse_req(INVITE);
        r.body = Bytes::from_static(b"hello");
        assert!(String::from_utf8_lossy(&r.to_bytes()).contains("Content-Length: 5\r\n\r\nhello"));
    }

    #[test]
    fn stream_framing_keepalives_pipelining_and_limits() {
        assert_eq!(frame(b"\r\n\r\n"), Framing::KeepAlive(4));
        assert_eq!(frame(b"\r\nINV"), Framing::KeepAlive(2));
        assert_eq!(frame(b"\r\n\r"), Framing::Incomplete);
        assert_eq!(frame(b""), Framing::Incomplete);
        let two = format!("{INVITE}{INVITE}");
        let Framing::Complete(n) = frame(two.as_bytes()) else {
            panic!()
        };
        assert_eq!(n, INVITE.len());
        for cut in 0..INVITE.len() {
            let f = frame(&INVITE.as_bytes()[..cut]);
            assert!(
                matches!(f, Framing::Incomplete | Framing::KeepAlive(_)),
                "cut {cut}: {f:?}"
            );
        }
        let no_cl = INVITE.replace("Content-Length: 5\r\n", "");
        assert_eq!(
            frame(no_cl.as_bytes()),
            Framing::Invalid(ParseError::MissingContentLength)
        );
        let huge = vec![b'a'; 20_000];
        assert_eq!(frame(&huge), Framing::Invalid(ParseError::HeadersTooLarge));
        let big_body = INVITE.replace("Content-Length: 5", "Content-Length: 100000000");
        assert_eq!(
            frame(big_body.as_bytes()),
            Framing::Invalid(ParseError::BodyTooLarge)
        );
    }

    #[test]
    fn header_limits_are_enforced() {
        let many = INVITE.replace("Max-Forwards: 70\r\n", &"X-A: 1\r\n".repeat(300));
        assert_eq!(
            Message::parse(Bytes::from(many)),
            Err(ParseError::TooManyHeaders)
        );
        let long = INVITE.replace(
            "Max-Forwards: 70\r\n",
            &format!("X-A: {}\r\n", "b".repeat(20_000)),
        );
        assert_eq!(
            Message::parse(Bytes::from(long)),
            Err(ParseError::HeadersTooLarge)
        );
    }

    #[test]
    fn methods_are_case_sensitive_and_exact() {
        assert_eq!(Method::from_token("INVITE"), Method::Invite);
        assert_eq!(Method::from_token("invite"), Method::Other("invite".into()));
        assert_eq!(
            Method::from_token("INVITEX"),
            Method::Other("INVITEX".into())
        );
    }

    #[test]
    fn response_for_request_copies_dialog_headers_and_adds_to_tag() {
        let req = parse_req(INVITE);
        let mut r = Response::for_request(&req, 180);
        assert_eq!(r.reason, "Ringing");
        r.set_to_tag("as83kd");
        assert_eq!(r.to_tag().as_deref(), Some("as83kd"));
        r.set_to_tag("other");
        assert_eq!(r.to_tag().as_deref(), Some("as83kd"), "existing tag kept");
        assert_eq!(r.call_id(), req.call_id());
        assert_eq!(r.cseq().unwrap(), req.cseq().unwrap());
        assert_eq!(r.from_tag(), req.from_tag());
        assert!(r.header("Route").next().is_none());
        assert!(r.validate().is_ok());
    }

    #[test]
    fn ack_for_non2xx_and_cancel() {
        let mut invite = parse_req(INVITE);
        invite
            .headers
            .push_front("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKtop");
        let mut resp = Response::for_request(&invite, 486);
        resp.set_to_tag("xyz");
        let ack = Request::ack_for_non2xx(&invite, &resp).unwrap();
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, invite.uri);
        assert_eq!(ack.vias().unwrap().len(), 1);
        assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKtop"));
        assert_eq!(
            ack.cseq().unwrap(),
            CSeq {
                seq: 314159,
                method: Method::Ack
            }
        );
        assert_eq!(ack.to_tag().as_deref(), Some("xyz"));
        assert_eq!(ack.route().unwrap().len(), 1);
        assert!(ack.validate().is_ok());
        let cancel = Request::cancel_for(&invite).unwrap();
        assert_eq!(
            cancel.cseq().unwrap(),
            CSeq {
                seq: 314159,
                method: Method::Cancel
            }
        );
        assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bKtop"));
        assert_eq!(cancel.to_tag(), None);
        assert!(cancel.validate().is_ok());
    }

    #[test]
    fn builder_produces_a_valid_request() {
        let uri = Uri::parse("sip:+15105550100@example.pstn.twilio.com").unwrap();
        let mut r = Request::new(Method::Invite, uri);
        let via = Via::new(
            "udp",
            HostPort::parse("192.0.2.10:5060").unwrap(),
            "z9hG4bK1",
        )
        .with_rport();
        r.push_header("Via", via.to_string());
        r.push_header("Max-Forwards", "70");
        r.push_header("From", "<sip:a@b>;tag=1");
        r.push_header("To", "<sip:+15105550100@example.pstn.twilio.com>");
        r.push_header("Call-ID", "c1");
        r.push_header("CSeq", "1 INVITE");
        r.set_body("application/sdp", Bytes::from_static(b"v=0\r\n"));
        let parsed = match Message::parse(r.to_bytes()).unwrap() {
            Message::Request(p) => p,
            Message::Response(_) => panic!(),
        };
        assert!(parsed.validate().is_ok());
        assert_eq!(parsed.top_via().unwrap().rport(), Some(None));
        assert_eq!(
            parsed.top_via().unwrap().to_string(),
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1;rport"
        );
        assert_eq!(&parsed.body[..], b"v=0\r\n");
    }

    #[test]
    fn error_response_needs_via_and_cseq() {
        let bad = INVITE.replace("CSeq: 314159 INVITE", "CSeq: 314159 BYE");
        let req = parse_req(&bad);
        let err = req.validate().unwrap_err();
        assert_eq!(err, ParseError::CSeqMethodMismatch);
        let r = error_response(bad.as_bytes(), &err, "t1").unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(
            r.reason,
            "Bad Request (CSeq method does not match request method)"
        );
        assert_eq!(r.to_tag().as_deref(), Some("t1"));
        assert!(error_response(b"\x00\x01garbage", &ParseError::BadStartLine, "t").is_none());
        let ack = bad.replace("INVITE sip:", "ACK sip:");
        assert!(
            error_response(ack.as_bytes(), &err, "t").is_none(),
            "never answer an ACK"
        );
        assert!(
            error_response(
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\n\r\n",
                &ParseError::BadHeader("To"),
                "t"
            )
            .is_none()
        );
    }
}
