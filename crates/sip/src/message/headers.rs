//! Header fields (RFC 3261 §7.3, §20): the ordered header list, compact-form names (§7.3.3),
//! list splitting (§7.3.1), and the typed values a UA needs: name-addr (From/To/Contact/Route,
//! §20.10/§25.1), Via (§20.42, RFC 3581 `rport`), CSeq (§20.16).
//!
//! Fixes two gaps of `ezk-sip-types`: escaped quotes (`\"`) inside quoted display names and `tel:`
//! URIs in name-addr values.

use std::fmt;
use std::net::IpAddr;

use super::uri::{HostPort, Param, Uri, find_param};
use super::{Method, ParseError};

/// One header field: canonical name and unfolded value (leading/trailing whitespace removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical name (`Via` for `v`, `Call-ID` for `call-id`); unknown names kept as received.
    pub name: String,
    /// The value, with folding (CRLF + whitespace) replaced by a single space.
    pub value: String,
}

/// The header fields of a message, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    list: Vec<Header>,
}

const NAMES: &[(&str, &str)] = &[
    ("accept", "Accept"),
    ("accept-contact", "Accept-Contact"),
    ("a", "Accept-Contact"),
    ("accept-encoding", "Accept-Encoding"),
    ("accept-language", "Accept-Language"),
    ("alert-info", "Alert-Info"),
    ("allow", "Allow"),
    ("allow-events", "Allow-Events"),
    ("u", "Allow-Events"),
    ("authentication-info", "Authentication-Info"),
    ("authorization", "Authorization"),
    ("call-id", "Call-ID"),
    ("i", "Call-ID"),
    ("call-info", "Call-Info"),
    ("contact", "Contact"),
    ("m", "Contact"),
    ("content-disposition", "Content-Disposition"),
    ("content-encoding", "Content-Encoding"),
    ("e", "Content-Encoding"),
    ("content-language", "Content-Language"),
    ("content-length", "Content-Length"),
    ("l", "Content-Length"),
    ("content-type", "Content-Type"),
    ("c", "Content-Type"),
    ("cseq", "CSeq"),
    ("date", "Date"),
    ("error-info", "Error-Info"),
    ("event", "Event"),
    ("o", "Event"),
    ("expires", "Expires"),
    ("from", "From"),
    ("f", "From"),
    ("identity", "Identity"),
    ("y", "Identity"),
    ("in-reply-to", "In-Reply-To"),
    ("max-forwards", "Max-Forwards"),
    ("min-expires", "Min-Expires"),
    ("min-se", "Min-SE"),
    ("mime-version", "MIME-Version"),
    ("organization", "Organization"),
    ("p-asserted-identity", "P-Asserted-Identity"),
    ("priority", "Priority"),
    ("proxy-authenticate", "Proxy-Authenticate"),
    ("proxy-authorization", "Proxy-Authorization"),
    ("proxy-require", "Proxy-Require"),
    ("rack", "RAck"),
    ("reason", "Reason"),
    ("record-route", "Record-Route"),
    ("refer-to", "Refer-To"),
    ("r", "Refer-To"),
    ("referred-by", "Referred-By"),
    ("b", "Referred-By"),
    ("reject-contact", "Reject-Contact"),
    ("j", "Reject-Contact"),
    ("reply-to", "Reply-To"),
    ("request-disposition", "Request-Disposition"),
    ("d", "Request-Disposition"),
    ("require", "Require"),
    ("retry-after", "Retry-After"),
    ("route", "Route"),
    ("rseq", "RSeq"),
    ("server", "Server"),
    ("session-expires", "Session-Expires"),
    ("x", "Session-Expires"),
    ("subject", "Subject"),
    ("s", "Subject"),
    ("subscription-state", "Subscription-State"),
    ("supported", "Supported"),
    ("k", "Supported"),
    ("timestamp", "Timestamp"),
    ("to", "To"),
    ("t", "To"),
    ("unsupported", "Unsupported"),
    ("user-agent", "User-Agent"),
    ("via", "Via"),
    ("v", "Via"),
    ("warning", "Warning"),
    ("www-authenticate", "WWW-Authenticate"),
];

/// Maps a header name (any case, compact or long form) to its canonical spelling.
/// Unknown names are returned as given.
pub fn canonical_name(name: &str) -> &str {
    if name.len() <= 20 {
        for (k, v) in NAMES {
            if k.eq_ignore_ascii_case(name) {
                return v;
            }
        }
    }
    name
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// All header fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.list.iter()
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// `true` when there is no header field.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The raw values of every header field called `name` (any case, compact form accepted), in order.
    pub fn get<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        let name = canonical_name(name);
        self.list
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.get(name).next()
    }

    /// Every comma-separated element of every `name` header, in order (RFC 3261 §7.3.1).
    /// Commas inside quoted strings and `<…>` do not split.
    pub fn list_values<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.get(name).flat_map(split_list).collect()
    }

    /// Appends a header field (name canonicalised).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.list.push(Header {
            name: canonical_name(name).to_owned(),
            value: value.into(),
        });
    }

    /// Inserts a header field before all others (used for Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.list.insert(
            0,
            Header {
                name: canonical_name(name).to_owned(),
                value: value.into(),
            },
        );
    }

    /// Removes every `name` field and appends one with `value`.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = canonical_name(name);
        if let Some(pos) = self
            .list
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            self.list[pos].value = value.into();
            let mut i = pos + 1;
            while i < self.list.len() {
                if self.list[i].name.eq_ignore_ascii_case(name) {
                    self.list.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.push(name, value);
        }
    }

    /// Removes every `name` field; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let name = canonical_name(name).to_owned();
        let before = self.list.len();
        self.list.retain(|h| !h.name.eq_ignore_ascii_case(&name));
        before - self.list.len()
    }

    /// Copies every `name` field of `other` to the end of `self`.
    pub fn copy_from(&mut self, other: &Headers, name: &str) {
        for v in other.get(name) {
            self.push(name, v);
        }
    }

    pub(crate) fn push_raw(&mut self, name: String, value: String) {
        self.list.push(Header { name, value });
    }

    /// Exactly one `name` field, or an error naming it.
    pub(crate) fn single(&self, name: &'static str) -> Result<&str, ParseError> {
        let mut it = self.get(name);
        let first = it.next().ok_or(ParseError::MissingHeader(name))?;
        if it.next().is_some() {
            return Err(ParseError::DuplicateHeader(name));
        }
        Ok(first)
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.first("Call-ID")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<CSeq, ParseError> {
        CSeq::parse(self.single("CSeq")?)
    }

    /// The From header.
    pub fn from(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(self.single("From")?).map_err(|_| ParseError::BadHeader("From"))
    }

    /// The To header.
    pub fn to(&self) -> Result<NameAddr, ParseError> {
        NameAddr::parse(self.single("To")?).map_err(|_| ParseError::BadHeader("To"))
    }

    /// The From tag, if there is one.
    pub fn from_tag(&self) -> Option<String> {
        self.from().ok()?.tag().map(str::to_owned)
    }

    /// The To tag, if there is one.
    pub fn to_tag(&self) -> Option<String> {
        self.to().ok()?.tag().map(str::to_owned)
    }

    /// Every Via value, top first, comma-separated values split.
    pub fn vias(&self) -> Result<Vec<Via>, ParseError> {
        self.list_values("Via")
            .into_iter()
            .map(Via::parse)
            .collect()
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Result<Via, ParseError> {
        let first = self
            .list_values("Via")
            .into_iter()
            .next()
            .ok_or(ParseError::MissingHeader("Via"))?;
        Via::parse(first)
    }

    /// Max-Forwards (0–255), if present.
    pub fn max_forwards(&self) -> Result<Option<u8>, ParseError> {
        let Some(v) = self.first("Max-Forwards") else {
            return Ok(None);
        };
        parse_decimal(v)
            .and_then(|n| u8::try_from(n).ok())
            .map(Some)
            .ok_or(ParseError::BadHeader("Max-Forwards"))
    }

    /// The first Contact (`Ok(None)` when absent or `*`).
    pub fn contact(&self) -> Result<Option<NameAddr>, ParseError> {
        Ok(self.contacts()?.into_iter().next())
    }

    /// Every Contact value (a `*` wildcard is skipped).
    pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addr_list("Contact", "Contact")
            .map(|v| v.into_iter().collect())
    }

    /// Every Record-Route value, in order.
    pub fn record_route(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addr_list("Record-Route", "Record-Route")
    }

    /// Every Route value, in order.
    pub fn route(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addr_list("Route", "Route")
    }

    fn name_addr_list(&self, name: &str, err: &'static str) -> Result<Vec<NameAddr>, ParseError> {
        self.list_values(name)
            .into_iter()
            .filter(|v| v.trim() != "*")
            .map(|v| NameAddr::parse(v).map_err(|_| ParseError::BadHeader(err)))
            .collect()
    }

    /// The Content-Type value (`application/sdp`), if any.
    pub fn content_type(&self) -> Option<&str> {
        self.first("Content-Type")
    }

    /// The Content-Length value; an error when malformed or when several values disagree.
    pub fn content_length(&self) -> Result<Option<usize>, ParseError> {
        let mut result = None;
        for v in self.get("Content-Length") {
            let n = parse_decimal(v).ok_or(ParseError::BadContentLength)?;
            let n = usize::try_from(n).map_err(|_| ParseError::BadContentLength)?;
            match result {
                Some(prev) if prev != n => return Err(ParseError::ConflictingContentLength),
                _ => result = Some(n),
            }
        }
        Ok(result)
    }

    /// Option tags listed in `name` (`Require`, `Proxy-Require`, `Supported`), trimmed.
    pub fn option_tags(&self, name: &str) -> Vec<&str> {
        self.get(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Parses 1*DIGIT (leading zeros allowed) into a u64; `None` on anything else or overflow.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let s = s.trim_start_matches('0');
    if s.is_empty() {
        return Some(0);
    }
    s.parse().ok()
}

/// Splits a header value at top-level commas (outside quotes and `<…>`), trimming each element and
/// dropping empty ones only at the very end (an empty element in the middle is kept so it can be rejected).
pub fn split_list(value: &str) -> Vec<&str> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut start, mut i) = (false, false, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let last = value.get(start..).unwrap_or("").trim();
    if !last.is_empty() || out.is_empty() {
        out.push(last);
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// A small cursor over a header value, tolerant of linear whitespace between elements.
struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while self
            .s
            .as_bytes()
            .get(self.pos)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            self.pos += 1;
        }
        self.pos - start
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.as_bytes().get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.s.as_bytes().get(self.pos).is_some_and(|&c| f(c)) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }
    /// A quoted string including its quotes; `None` if unterminated.
    fn quoted(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        let b = self.s.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            match c {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return self.s.get(start..self.pos);
                }
                b'\r' | b'\n' => return None,
                _ => self.pos += 1,
            }
        }
        None
    }
}

/// Parses `*(SEMI generic-param)` with optional LWS around `;` and `=`.
fn parse_header_params(s: &str) -> Result<Vec<Param>, ParseError> {
    let mut sc = Scanner::new(s);
    let mut params = Vec::new();
    loop {
        sc.skip_ws();
        if sc.at_end() {
            return Ok(params);
        }
        if !sc.eat(b';') {
            return Err(ParseError::BadParam);
        }
        sc.skip_ws();
        let name = sc.take_while(is_token_char);
        if name.is_empty() {
            return Err(ParseError::BadParam);
        }
        sc.skip_ws();
        let value = if sc.eat(b'=') {
            sc.skip_ws();
            let v = if sc.rest().starts_with('"') {
                sc.quoted().ok_or(ParseError::BadParam)?
            } else {
                sc.take_while(|c| is_token_char(c) || matches!(c, b':' | b'[' | b']'))
            };
            if v.is_empty() {
                return Err(ParseError::BadParam);
            }
            Some(v.to_owned())
        } else {
            None
        };
        params.push(Param {
            name: name.to_owned(),
            value,
        });
    }
}

fn write_header_params(f: &mut fmt::Formatter<'_>, params: &[Param]) -> fmt::Result {
    for p in params {
        match &p.value {
            Some(v) => write!(f, ";{}={}", p.name, v)?,
            None => write!(f, ";{}", p.name)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// `[display-name] <uri> *(;param)` or `addr-spec *(;param)` (From, To, Contact, Route, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name, unquoted and unescaped (`Joe "the man" Smith`).
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters after the URI (`tag`, `expires`, `q`, `lr` for addr-spec forms …).
    pub params: Vec<Param>,
}

impl NameAddr {
    /// A name-addr for `uri` with no display name and no parameter.
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display: None,
            uri,
            params: Vec::new(),
        }
    }

    /// Parses one name-addr / addr-spec value (one element of a comma-separated list).
    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let s = s.trim();
        let mut sc = Scanner::new(s);
        let display;
        if s.starts_with('"') {
            let q = sc.quoted().ok_or(ParseError::BadNameAddr)?;
            display = Some(unquote(q));
            sc.skip_ws();
            if !sc.rest().starts_with('<') {
                return Err(ParseError::BadNameAddr);
            }
        } else if let Some(lt) = s.find('<') {
            let d = s[..lt].trim();
            if !d
                .bytes()
                .all(|c| is_token_char(c) || matches!(c, b' ' | b'\t'))
            {
                return Err(ParseError::BadNameAddr);
            }
            display = if d.is_empty() {
                None
            } else {
                Some(d.to_owned())
            };
            sc.pos = lt;
        } else {
            // addr-spec: the URI ends at the first ';' (RFC 3261 §20: URIs with ',', '?' or ';'
            // must be enclosed in <>).
            let end = s.find(';').unwrap_or(s.len());
            let uri_s = s[..end].trim_end();
            if uri_s.contains(['?', ',', ' ', '\t']) {
                return Err(ParseError::BadNameAddr);
            }
            let uri = Uri::parse(uri_s)?;
            let params = parse_header_params(&s[end..])?;
            return Ok(NameAddr {
                display: None,
                uri,
                params,
            });
        }
        // here sc is at '<'
        let rest = sc.rest();
        let gt = rest.find('>').ok_or(ParseError::BadNameAddr)?;
        let uri_s = &rest[1..gt];
        if uri_s.trim() != uri_s {
            return Err(ParseError::BadNameAddr);
        }
        let uri = Uri::parse(uri_s)?;
        let params = parse_header_params(&rest[gt + 1..])?;
        Ok(NameAddr {
            display,
            uri,
            params,
        })
    }

    /// A header parameter by name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// Sets (or replaces) the `tag` parameter.
    pub fn set_tag(&mut self, tag: &str) {
        self.params.retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        self.params.push(Param {
            name: "tag".into(),
            value: Some(tag.into()),
        });
    }
}

/// Removes the quotes of a quoted-string and resolves quoted-pairs (`\"` → `"`, `\\` → `\`).
fn unquote(q: &str) -> String {
    let inner = q.get(1..q.len().saturating_sub(1)).unwrap_or("");
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `s` as a quoted-string, escaping `"` and `\`.
pub(crate) fn write_quoted(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    for c in s.chars() {
        match c {
            // CR and LF cannot be quoted (RFC 3261 §25.1 quoted-pair): never let them through
            '\r' | '\n' => f.write_char(' ')?,
            '"' | '\\' => {
                f.write_char('\\')?;
                f.write_char(c)?;
            }
            // other controls are legal only as quoted-pairs
            c if c.is_ascii_control() => {
                f.write_char('\\')?;
                f.write_char(c)?;
            }
            c => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write_quoted(f, d)?;
            f.write_str(" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        write_header_params(f, &self.params)
    }
}

// ---------------------------------------------------------------------------------------------

/// One Via value (RFC 3261 §20.42, §18.2.1; RFC 3581).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper-case (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or an extension).
    pub transport: String,
    /// `sent-by` host and port.
    pub sent_by: HostPort,
    /// Parameters in order (`branch`, `received`, `rport`, `maddr`, `ttl`, extensions).
    pub params: Vec<Param>,
}

impl Via {
    /// A Via with `transport`, `sent_by` and `branch` (add `rport` with [`Via::with_rport`]).
    pub fn new(transport: &str, sent_by: HostPort, branch: &str) -> Via {
        Via {
            transport: transport.to_ascii_uppercase(),
            sent_by,
            params: vec![Param {
                name: "branch".into(),
                value: Some(branch.into()),
            }],
        }
    }

    /// Adds an empty `rport` parameter (RFC 3581 §3).
    pub fn with_rport(mut self) -> Via {
        self.params.push(Param {
            name: "rport".into(),
            value: None,
        });
        self
    }

    /// Parses one Via value; LWS is allowed around `/`, `:`, `;` and `=`.
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let bad = ParseError::BadHeader("Via");
        let mut sc = Scanner::new(s);
        sc.skip_ws();
        let proto = sc.take_while(is_token_char);
        sc.skip_ws();
        if !proto.eq_ignore_ascii_case("SIP") || !sc.eat(b'/') {
            return Err(bad);
        }
        sc.skip_ws();
        let version = sc.take_while(is_token_char);
        sc.skip_ws();
        if version != "2.0" || !sc.eat(b'/') {
            return Err(bad);
        }
        sc.skip_ws();
        let transport = sc.take_while(is_token_char);
        if transport.is_empty() || sc.skip_ws() == 0 {
            return Err(bad);
        }
        let host_start = sc.pos;
        if sc.rest().starts_with('[') {
            sc.take_while(|c| c != b']');
            if !sc.eat(b']') {
                return Err(bad);
            }
        } else {
            sc.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
        }
        let host_end = sc.pos;
        sc.skip_ws();
        let mut port = "";
        if sc.eat(b':') {
            sc.skip_ws();
            port = sc.take_while(|c| c.is_ascii_digit());
            if port.is_empty() {
                return Err(bad);
            }
        }
        let mut hp = HostPort::parse(&s[host_start..host_end]).map_err(|_| bad.clone())?;
        if !port.is_empty() {
            hp.port = Some(port.parse().map_err(|_| bad.clone())?);
        }
        let params = parse_header_params(sc.rest()).map_err(|_| bad)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            sent_by: hp,
            params,
        })
    }

    /// A parameter by name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// `true` if the branch starts with the RFC 3261 magic cookie `z9hG4bK`.
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    /// `rport` (RFC 3581): `None` if absent, `Some(None)` if present without value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// The `received` parameter as an IP address.
    pub fn received(&self) -> Option<IpAddr> {
        let v = self.param("received").flatten()?;
        let v = v
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(v);
        v.parse().ok()
    }

    /// Sets `received` and, when the request asked for it, fills `rport` (RFC 3581 §4).
    pub fn set_received(&mut self, source: std::net::SocketAddr) {
        self.params
            .retain(|p| !p.name.eq_ignore_ascii_case("received"));
        self.params.push(Param {
            name: "received".into(),
            value: Some(source.ip().to_string()),
        });
        if let Some(p) = self
            .params
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case("rport"))
        {
            p.value = Some(source.port().to_string());
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.sent_by)?;
        write_header_params(f, &self.params)
    }
}

// ---------------------------------------------------------------------------------------------

/// CSeq: sequence number (≤ 2³¹ recommended, ≤ 2³²−1 allowed) and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number.
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(s: &str) -> Result<CSeq, ParseError> {
        let bad = ParseError::BadHeader("CSeq");
        let mut sc = Scanner::new(s);
        sc.skip_ws();
        let num = sc.take_while(|c| c.is_ascii_digit());
        if sc.skip_ws() == 0 {
            return Err(bad);
        }
        let method = sc.take_while(is_token_char);
        sc.skip_ws();
        if method.is_empty() || !sc.at_end() {
            return Err(bad);
        }
        let seq = parse_decimal(num)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(bad)?;
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}
