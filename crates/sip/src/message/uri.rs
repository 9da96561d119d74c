//! URIs: `sip:`/`sips:` (RFC 3261 §19.1, §25.1), `tel:` (RFC 3966) and any other scheme kept opaque
//! (RFC 3986 `absoluteURI`, so a UA can answer 416, RFC 3261 §8.2.2.1).
//!
//! Every textual part is kept exactly as received: `%`-escapes are validated (`%` HEX HEX) but never
//! decoded, so a URI prints back byte for byte (RFC 4475 §3.1.1.3: `value%2541` stays `value%2541`).
//! [`SipUri::user_unescaped`] decodes once, on request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::ParseError;

/// A URI as found in a Request-URI or in a name-addr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:` (RFC 3966).
    Tel(TelUri),
    /// Any other syntactically valid scheme, kept verbatim (`scheme` lower-cased, `opaque` after the colon).
    Other {
        /// The scheme, lower-cased (`"nobodyknowsthisscheme"`, `"soap.beep"`).
        scheme: String,
        /// Everything after the first `:`.
        opaque: String,
    },
}

/// A host: a domain name, an IPv4 address or an IPv6 reference (`[2001:db8::1]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name, as received.
    Domain(String),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (printed in brackets).
    V6(Ipv6Addr),
}

/// `host[:port]` as used in SIP URIs and Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host.
    pub host: Host,
    /// The port, if one was given.
    pub port: Option<u16>,
}

/// A URI or header parameter: `name` or `name=value` (value kept as received, quotes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name as received.
    pub name: String,
    /// Parameter value as received, if any.
    pub value: Option<String>,
}

/// A `sip:`/`sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `true` for `sips:`.
    pub secure: bool,
    /// The user part, still `%`-escaped exactly as received.
    pub user: Option<String>,
    /// The password part (discouraged, RFC 3261 §19.1.1), as received.
    pub password: Option<String>,
    /// Host and port.
    pub host_port: HostPort,
    /// URI parameters (`;transport=tcp;lr`), in order.
    pub params: Vec<Param>,
    /// The raw header part after `?`, if any (kept, never interpreted).
    pub headers: Option<String>,
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri {
    /// The number as received: `+1-201-555-0123` (global) or `7042` (local, needs `phone-context`).
    pub number: String,
    /// Parameters (`;phone-context=example.com;ext=22`), in order.
    pub params: Vec<Param>,
}

// ---------------------------------------------------------------------------------------------
// character classes (RFC 3261 §25.1)

pub(crate) fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

fn is_user_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn is_password_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'&' | b'=' | b'+' | b'$' | b',')
}

fn is_param_char(c: u8) -> bool {
    is_unreserved(c) || matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

fn is_header_char(c: u8) -> bool {
    is_unreserved(c)
        || matches!(
            c,
            b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'=' | b'&'
        )
}

/// Checks that `s` is non-empty (if `non_empty`) and made of `allowed` chars or valid `%HH` escapes.
fn check_escaped(s: &str, allowed: fn(u8) -> bool, non_empty: bool) -> bool {
    if non_empty && s.is_empty() {
        return false;
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else if allowed(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes `%HH` escapes once (never recursively). Invalid escapes are kept as they are.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

// ---------------------------------------------------------------------------------------------

impl Uri {
    /// Parses a URI with no surrounding whitespace or angle brackets.
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        let colon = s.find(':').ok_or(ParseError::BadUri)?;
        let (scheme, rest) = (&s[..colon], &s[colon + 1..]);
        if !is_scheme(scheme) {
            return Err(ParseError::BadUri);
        }
        if scheme.eq_ignore_ascii_case("sip") {
            return SipUri::parse_rest(false, rest).map(Uri::Sip);
        }
        if scheme.eq_ignore_ascii_case("sips") {
            return SipUri::parse_rest(true, rest).map(Uri::Sip);
        }
        if scheme.eq_ignore_ascii_case("tel") {
            return TelUri::parse_rest(rest).map(Uri::Tel);
        }
        // absoluteURI: opaque part of visible, non-delimiting characters.
        if rest.is_empty()
            || !rest
                .bytes()
                .all(|c| c.is_ascii_graphic() && !matches!(c, b'<' | b'>' | b'"') || c >= 0x80)
        {
            return Err(ParseError::BadUri);
        }
        Ok(Uri::Other {
            scheme: scheme.to_ascii_lowercase(),
            opaque: rest.to_owned(),
        })
    }

    /// The scheme, lower-case.
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The user part (SIP, still escaped) or the number (tel).
    pub fn user(&self) -> Option<&str> {
        match self {
            Uri::Sip(u) => u.user.as_deref(),
            Uri::Tel(t) => Some(&t.number),
            Uri::Other { .. } => None,
        }
    }

    /// A URI parameter by name (case-insensitive); `Some(None)` for a parameter without value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        let params = match self {
            Uri::Sip(u) => &u.params,
            Uri::Tel(t) => &t.params,
            Uri::Other { .. } => return None,
        };
        find_param(params, name)
    }
}

pub(crate) fn find_param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_deref())
}

impl FromStr for Uri {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Tel(t) => t.fmt(f),
            Uri::Other { scheme, opaque } => write!(f, "{scheme}:{opaque}"),
        }
    }
}

impl SipUri {
    /// A `sip:` URI for `host` (no user, no port).
    pub fn new(host: Host) -> SipUri {
        SipUri {
            secure: false,
            user: None,
            password: None,
            host_port: HostPort { host, port: None },
            params: Vec::new(),
            headers: None,
        }
    }

    fn parse_rest(secure: bool, rest: &str) -> Result<SipUri, ParseError> {
        let (userinfo, hostpart) = match rest.find('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.find(':') {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if !check_escaped(u, is_user_char, true) {
                    return Err(ParseError::BadUri);
                }
                if let Some(p) = p
                    && !check_escaped(p, is_password_char, false)
                {
                    return Err(ParseError::BadUri);
                }
                (Some(u.to_owned()), p.map(str::to_owned))
            }
        };
        let (hostport, after) = match hostpart.find([';', '?']) {
            Some(i) => (&hostpart[..i], &hostpart[i..]),
            None => (hostpart, ""),
        };
        let host_port = HostPort::parse(hostport)?;
        let (params_part, headers) = match after.find('?') {
            Some(q) => (&after[..q], Some(&after[q + 1..])),
            None => (after, None),
        };
        let params = parse_uri_params(params_part)?;
        if let Some(h) = headers
            && !check_escaped(h, is_header_char, false)
        {
            return Err(ParseError::BadUri);
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host_port,
            params,
            headers: headers.map(str::to_owned),
        })
    }

    /// The user part with `%`-escapes decoded once, if it is valid UTF-8.
    pub fn user_unescaped(&self) -> Option<String> {
        self.user
            .as_deref()
            .and_then(|u| String::from_utf8(unescape(u)).ok())
    }

    /// A URI parameter by name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

/// Parses `;name[=value]` repeated (the leading `;` included). Empty input gives no params.
fn parse_uri_params(s: &str) -> Result<Vec<Param>, ParseError> {
    let mut params = Vec::new();
    if s.is_empty() {
        return Ok(params);
    }
    let s = s.strip_prefix(';').ok_or(ParseError::BadUri)?;
    for p in s.split(';') {
        let (name, value) = match p.find('=') {
            Some(e) => (&p[..e], Some(&p[e + 1..])),
            None => (p, None),
        };
        if !check_escaped(name, is_param_char, true) {
            return Err(ParseError::BadUri);
        }
        if let Some(v) = value
            && !check_escaped(v, is_param_char, true)
        {
            return Err(ParseError::BadUri);
        }
        params.push(Param {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        });
    }
    Ok(params)
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &[Param]) -> fmt::Result {
    for p in params {
        match &p.value {
            Some(v) => write!(f, ";{}={}", p.name, v)?,
            None => write!(f, ";{}", p.name)?,
        }
    }
    Ok(())
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(pw) = &self.password {
                write!(f, ":{pw}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host_port)?;
        write_params(f, &self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl TelUri {
    fn parse_rest(rest: &str) -> Result<TelUri, ParseError> {
        let (number, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let digits = number.strip_prefix('+').unwrap_or(number);
        let visual = |c: u8| matches!(c, b'-' | b'.' | b'(' | b')');
        let ok = digits
            .bytes()
            .any(|c| c.is_ascii_hexdigit() || c == b'*' || c == b'#')
            && digits
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b'*' || c == b'#' || visual(c));
        if !ok {
            return Err(ParseError::BadUri);
        }
        let params = parse_uri_params(params)?;
        // RFC 3966 §5.1.5: a local number needs a phone-context.
        if !number.starts_with('+') && find_param(&params, "phone-context").is_none() {
            return Err(ParseError::BadUri);
        }
        Ok(TelUri {
            number: number.to_owned(),
            params,
        })
    }

    /// `true` for a global number (`+` and digits).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }

    /// The number without visual separators (`+12015550123`).
    pub fn digits(&self) -> String {
        self.number
            .chars()
            .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
            .collect()
    }
}

impl fmt::Display for TelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tel:{}", self.number)?;
        write_params(f, &self.params)
    }
}

impl HostPort {
    /// Parses `host[:port]`, `[v6]` or `[v6]:port`. Whitespace around `:` is allowed (Via sent-by).
    pub fn parse(s: &str) -> Result<HostPort, ParseError> {
        let s = s.trim();
        let (host, port) = if let Some(v6) = s.strip_prefix('[') {
            let end = v6.find(']').ok_or(ParseError::BadUri)?;
            let addr: Ipv6Addr = v6[..end].parse().map_err(|_| ParseError::BadUri)?;
            let after = v6[end + 1..].trim_start();
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.trim_start()),
                None if after.is_empty() => None,
                None => return Err(ParseError::BadUri),
            };
            (Host::V6(addr), port)
        } else {
            let (h, p) = match s.find(':') {
                Some(c) => (s[..c].trim_end(), Some(s[c + 1..].trim_start())),
                None => (s, None),
            };
            (Host::parse(h)?, p)
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => {
                Some(p.parse::<u16>().map_err(|_| ParseError::BadUri)?)
            }
            Some(_) => return Err(ParseError::BadUri),
        };
        Ok(HostPort { host, port })
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.ip()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl Host {
    /// Parses a host name, an IPv4 address or a bracketed IPv6 reference.
    pub fn parse(s: &str) -> Result<Host, ParseError> {
        if let Some(v6) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return v6.parse().map(Host::V6).map_err(|_| ParseError::BadUri);
        }
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Ok(Host::V4(v4));
        }
        let valid = !s.is_empty()
            && s.split('.').enumerate().all(|(i, label)| {
                // a single trailing dot (FQDN) gives one empty last label
                (label.is_empty() && i > 0 && s.ends_with('.') && i == s.split('.').count() - 1)
                    || (!label.is_empty()
                        && label
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                        && !label.starts_with('-')
                        && !label.ends_with('-'))
            });
        if valid {
            Ok(Host::Domain(s.to_owned()))
        } else {
            Err(ParseError::BadUri)
        }
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
            Host::Domain(_) => None,
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Host {
        match ip {
            IpAddr::V4(a) => Host::V4(a),
            IpAddr::V6(a) => Host::V6(a),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}
