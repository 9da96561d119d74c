//! SDP for audio calls: parse/print (RFC 4566), offer/answer (RFC 3264), `a=rtcp` (RFC 3605),
//! `a=crypto` SDES (RFC 4568), telephone-event (RFC 4733 §7) on any dynamic payload type.
//!
//! - [`SessionDescription::parse`] / `Display`: a line parser that keeps what an audio UA needs as
//!   typed fields (origin, connection, media, rtpmap, fmtp, ptime, maxptime, direction, rtcp,
//!   crypto) and every other attribute verbatim.
//! - [`build_offer`]: our offer (PCMU, PCMA, telephone-event, ptime 20, RTP/AVP or RTP/SAVP).
//! - [`answer`]: RFC 3264 §6 answer — same m-lines in the same order, first mutually supported
//!   codec *in offer order*, the offerer's telephone-event PT kept, direction mirrored (§6.1), every
//!   other stream rejected with port 0; [`NoMatch`] (→ 488) when no audio stream can be accepted.
//! - [`negotiated`]: the result on the offerer's side, from our offer and the remote answer.
//! - Hold (RFC 3264 §8.4): `sendonly`/`inactive`, and the RFC 2543 `c=0.0.0.0` form, which is
//!   treated as "do not send to this address".
//!
//! Not supported: more than one active audio stream, video, ICE, DTLS-SRTP, SDES MKI (an offered
//! crypto line with MKI is skipped, as Twilio never sends one), `a=rtcp-mux` negotiation.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why an SDP body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// A line is not `<letter>=<value>`.
    #[error("malformed SDP line {0}")]
    BadLine(usize),
    /// The description does not start with `v=0`.
    #[error("missing or unsupported v= line")]
    BadVersion,
    /// The `o=` line is missing or malformed.
    #[error("malformed o= line")]
    BadOrigin,
    /// A `c=` line is malformed.
    #[error("malformed c= line")]
    BadConnection,
    /// An `m=` line is malformed.
    #[error("malformed m= line")]
    BadMedia,
    /// A known attribute (`rtpmap`, `ptime`, `rtcp`, `crypto`, …) is malformed.
    #[error("malformed a={0} attribute")]
    BadAttribute(&'static str),
}

/// No audio stream of the offer can be accepted: answer 488 Not Acceptable Here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no acceptable audio stream (488 Not Acceptable Here)")]
pub struct NoMatch;

/// Media direction (RFC 4566 §6, RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// send and receive (the default)
    #[default]
    SendRecv,
    /// send only
    SendOnly,
    /// receive only
    RecvOnly,
    /// neither
    Inactive,
}

impl Direction {
    fn parse(s: &str) -> Option<Direction> {
        Some(match s {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction seen from the other side (sendonly ↔ recvonly).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether this side sends.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// Both sides' wishes combined: sends only if both allow it.
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }
}

/// `o=<username> <sess-id> <sess-version> IN <addrtype> <address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// user name (`-` when none)
    pub username: String,
    /// session id (kept as text: some peers exceed u64)
    pub session_id: String,
    /// session version; incremented on every re-offer (RFC 3264 §8)
    pub session_version: u64,
    /// `IP4` or `IP6`
    pub addr_type: String,
    /// unicast address
    pub address: String,
}

/// `c=IN IP4 192.0.2.1` (a multicast `/ttl` suffix is dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `IP4` or `IP6`
    pub addr_type: String,
    /// address (an IP, or a host name kept as text)
    pub address: String,
}

impl Connection {
    /// A connection line for `ip`.
    pub fn new(ip: IpAddr) -> Connection {
        Connection {
            addr_type: if ip.is_ipv4() { "IP4" } else { "IP6" }.into(),
            address: ip.to_string(),
        }
    }

    /// The address as an IP, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }

    /// RFC 2543 hold: `c=IN IP4 0.0.0.0`.
    pub fn is_hold(&self) -> bool {
        self.ip() == Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn parse(v: &str) -> Result<Connection, SdpError> {
        let mut it = v.split_ascii_whitespace();
        let (Some("IN"), Some(t), Some(a), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(SdpError::BadConnection);
        };
        if t != "IP4" && t != "IP6" {
            return Err(SdpError::BadConnection);
        }
        let address = a.split('/').next().unwrap_or(a);
        if address.is_empty() {
            return Err(SdpError::BadConnection);
        }
        Ok(Connection {
            addr_type: t.into(),
            address: address.into(),
        })
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IN {} {}", self.addr_type, self.address)
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// payload type
    pub pt: u8,
    /// encoding name as received (`PCMU`, `telephone-event`)
    pub encoding: String,
    /// clock rate
    pub clock_rate: u32,
    /// channels (audio)
    pub channels: Option<u16>,
}

/// `a=rtcp:<port> [IN IP4 <addr>]` (RFC 3605).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtcp {
    /// RTCP port
    pub port: u16,
    /// RTCP address, when different from the media's
    pub connection: Option<Connection>,
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>]` (RFC 4568 §9.1). `Debug` hides the
/// keys (only `Display`, the SDP form, shows them).
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    /// tag (1–999999999)
    pub tag: u32,
    /// crypto suite (`AES_CM_128_HMAC_SHA1_80`)
    pub suite: String,
    /// key parameters as received, `inline:<base64>[|lifetime][|MKI:len]`, `;`-separated
    pub key_params: Vec<String>,
    /// session parameters (`UNENCRYPTED_SRTCP` …), kept verbatim
    pub session_params: Vec<String>,
}

/// Crypto suites we can key (both use a 30-byte key‖salt).
pub const SUPPORTED_SUITES: [&str; 2] = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

impl Crypto {
    /// A crypto line with an `inline:` key made of `key_salt` (master key ‖ master salt).
    pub fn new(tag: u32, suite: &str, key_salt: &[u8]) -> Crypto {
        Crypto {
            tag,
            suite: suite.into(),
            key_params: vec![format!("inline:{}", base64_encode(key_salt))],
            session_params: Vec::new(),
        }
    }

    fn parse(v: &str) -> Result<Crypto, SdpError> {
        let bad = SdpError::BadAttribute("crypto");
        let mut it = v.split_ascii_whitespace();
        let tag = it.next().and_then(|t| t.parse().ok()).ok_or(bad.clone())?;
        let suite = it.next().ok_or(bad.clone())?.to_owned();
        let keys = it.next().ok_or(bad.clone())?;
        let key_params: Vec<String> = keys.split(';').map(str::to_owned).collect();
        if key_params.iter().any(|k| k.is_empty()) {
            return Err(bad);
        }
        Ok(Crypto {
            tag,
            suite,
            key_params,
            session_params: it.map(str::to_owned).collect(),
        })
    }

    fn first_inline(&self) -> Option<&str> {
        self.key_params.first()?.strip_prefix("inline:")
    }

    /// The decoded master key ‖ salt of the first `inline:` key, if valid base64.
    pub fn key_salt(&self) -> Option<Vec<u8>> {
        let inline = self.first_inline()?;
        base64_decode(inline.split('|').next()?)
    }

    /// Whether the first key carries an MKI (`|MKI:LEN`), which we do not support.
    pub fn has_mki(&self) -> bool {
        self.first_inline()
            .is_some_and(|k| k.split('|').skip(1).any(|p| p.contains(':')))
    }

    /// Whether we can use this line: a supported suite, a 30-byte key, no MKI, one key.
    pub fn is_usable(&self) -> bool {
        SUPPORTED_SUITES.contains(&self.suite.as_str())
            && self.key_params.len() == 1
            && !self.has_mki()
            && self.key_salt().is_some_and(|k| k.len() == 30)
    }
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key_params", &"<redacted>")
            .field("session_params", &self.session_params)
            .finish()
    }
}

impl fmt::Display for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.tag,
            self.suite,
            self.key_params.join(";")
        )?;
        for p in &self.session_params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// Any other attribute, kept verbatim: `a=name` or `a=name:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// name
    pub name: String,
    /// value after the first `:`
    pub value: Option<String>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, …
    pub media: String,
    /// port; 0 = stream rejected / disabled
    pub port: u16,
    /// `/<count>` after the port, if any
    pub port_count: Option<u16>,
    /// `RTP/AVP`, `RTP/SAVP`, …
    pub protocol: String,
    /// formats (payload types for RTP), as text, in preference order
    pub formats: Vec<String>,
    /// media-level `c=` (overrides the session-level one)
    pub connection: Option<Connection>,
    /// `b=` lines, verbatim
    pub bandwidth: Vec<String>,
    /// `a=rtpmap`
    pub rtpmap: Vec<RtpMap>,
    /// `a=fmtp:<pt> <params>`
    pub fmtp: Vec<(u8, String)>,
    /// `a=ptime` (ms)
    pub ptime: Option<u32>,
    /// `a=maxptime` (ms)
    pub maxptime: Option<u32>,
    /// media-level direction
    pub direction: Option<Direction>,
    /// `a=rtcp` (RFC 3605)
    pub rtcp: Option<Rtcp>,
    /// `a=crypto` (RFC 4568)
    pub crypto: Vec<Crypto>,
    /// other attributes
    pub attributes: Vec<Attribute>,
}

impl MediaDescription {
    /// An empty section (`m=<media> <port> <protocol>` with no formats).
    pub fn new(media: &str, port: u16, protocol: &str) -> MediaDescription {
        MediaDescription {
            media: media.into(),
            port,
            port_count: None,
            protocol: protocol.into(),
            formats: Vec::new(),
            connection: None,
            bandwidth: Vec::new(),
            rtpmap: Vec::new(),
            fmtp: Vec::new(),
            ptime: None,
            maxptime: None,
            direction: None,
            rtcp: None,
            crypto: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// Payload types (numeric formats), in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse().ok())
    }

    /// The codec for `pt`: from `a=rtpmap`, or the static table (RFC 3551) for 0 and 8.
    pub fn codec(&self, pt: u8) -> Option<Codec> {
        if let Some(m) = self.rtpmap.iter().find(|m| m.pt == pt) {
            return Some(Codec {
                pt,
                name: m.encoding.clone(),
                clock_rate: m.clock_rate,
            });
        }
        static_codec(pt)
    }

    /// The `a=fmtp` parameters of `pt`.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtp
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, v)| v.as_str())
    }

    /// The telephone-event/8000 payload type offered, if any.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.payload_types().find(|&pt| {
            self.codec(pt).is_some_and(|c| {
                c.name.eq_ignore_ascii_case("telephone-event") && c.clock_rate == 8000
            })
        })
    }

    /// `true` for `RTP/SAVP` (and `RTP/SAVPF`).
    pub fn is_srtp(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("RTP/SAVP")
            || self.protocol.eq_ignore_ascii_case("RTP/SAVPF")
    }

    /// An RTP audio stream (`RTP/AVP`, `RTP/SAVP`, `RTP/SAVPF`).
    pub fn is_rtp_audio(&self) -> bool {
        self.media == "audio" && (self.protocol.eq_ignore_ascii_case("RTP/AVP") || self.is_srtp())
    }

    fn parse_m(v: &str) -> Result<MediaDescription, SdpError> {
        let mut it = v.split_ascii_whitespace();
        let (Some(media), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
            return Err(SdpError::BadMedia);
        };
        let (port, count) = match port.split_once('/') {
            Some((p, c)) => (p, Some(c.parse().map_err(|_| SdpError::BadMedia)?)),
            None => (port, None),
        };
        let port: u16 = port.parse().map_err(|_| SdpError::BadMedia)?;
        let mut m = MediaDescription::new(media, port, proto);
        m.port_count = count;
        m.formats = it.map(str::to_owned).collect();
        if m.formats.is_empty() {
            return Err(SdpError::BadMedia);
        }
        Ok(m)
    }
}

impl fmt::Display for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(c) = self.port_count {
            write!(f, "/{c}")?;
        }
        write!(f, " {} {}\r\n", self.protocol, self.formats.join(" "))?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidth {
            write!(f, "b={b}\r\n")?;
        }
        for m in &self.rtpmap {
            write!(f, "a=rtpmap:{} {}/{}", m.pt, m.encoding, m.clock_rate)?;
            if let Some(ch) = m.channels {
                write!(f, "/{ch}")?;
            }
            f.write_str("\r\n")?;
        }
        for (pt, v) in &self.fmtp {
            write!(f, "a=fmtp:{pt} {v}\r\n")?;
        }
        if let Some(p) = self.ptime {
            write!(f, "a=ptime:{p}\r\n")?;
        }
        if let Some(p) = self.maxptime {
            write!(f, "a=maxptime:{p}\r\n")?;
        }
        if let Some(r) = &self.rtcp {
            write!(f, "a=rtcp:{}", r.port)?;
            if let Some(c) = &r.connection {
                write!(f, " {c}")?;
            }
            f.write_str("\r\n")?;
        }
        for c in &self.crypto {
            write!(f, "a=crypto:{c}\r\n")?;
        }
        write_attributes(f, &self.attributes)?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        Ok(())
    }
}

fn write_attributes(f: &mut fmt::Formatter<'_>, attrs: &[Attribute]) -> fmt::Result {
    for a in attrs {
        match &a.value {
            Some(v) => write!(f, "a={}:{}\r\n", a.name, v)?,
            None => write!(f, "a={}\r\n", a.name)?,
        }
    }
    Ok(())
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`
    pub origin: Origin,
    /// `s=` (`-` when none)
    pub session_name: String,
    /// session-level `c=`
    pub connection: Option<Connection>,
    /// session-level `b=` lines, verbatim
    pub bandwidth: Vec<String>,
    /// `t=` (`0 0`)
    pub timing: String,
    /// session-level direction (media-level overrides it)
    pub direction: Option<Direction>,
    /// other session-level attributes
    pub attributes: Vec<Attribute>,
    /// `m=` sections in order
    pub media: Vec<MediaDescription>,
}

fn parse_u32(v: &str, name: &'static str) -> Result<u32, SdpError> {
    v.trim().parse().map_err(|_| SdpError::BadAttribute(name))
}

impl SessionDescription {
    /// Parses an SDP body (CRLF or LF line ends).
    pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        match lines.next() {
            Some((_, l)) if l.trim_end() == "v=0" => {}
            _ => return Err(SdpError::BadVersion),
        }
        let mut sd = SessionDescription {
            origin: Origin {
                username: String::new(),
                session_id: String::new(),
                session_version: 0,
                addr_type: String::new(),
                address: String::new(),
            },
            session_name: String::new(),
            connection: None,
            bandwidth: Vec::new(),
            timing: "0 0".into(),
            direction: None,
            attributes: Vec::new(),
            media: Vec::new(),
        };
        let mut have_origin = false;
        for (n, line) in lines {
            let b = line.as_bytes();
            if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
                return Err(SdpError::BadLine(n + 1));
            }
            let v = &line[2..];
            match (b[0], sd.media.last_mut()) {
                (b'o', None) => {
                    sd.origin = parse_origin(v)?;
                    have_origin = true;
                }
                (b's', None) => sd.session_name = v.to_owned(),
                (b't', None) => sd.timing = v.trim().to_owned(),
                (b'c', None) => sd.connection = Some(Connection::parse(v)?),
                (b'c', Some(m)) => m.connection = Some(Connection::parse(v)?),
                (b'b', None) => sd.bandwidth.push(v.to_owned()),
                (b'b', Some(m)) => m.bandwidth.push(v.to_owned()),
                (b'm', _) => sd.media.push(MediaDescription::parse_m(v)?),
                (b'a', None) => {
                    let (name, value) = split_attr(v);
                    match Direction::parse(name) {
                        Some(d) if value.is_none() => sd.direction = Some(d),
                        _ => sd.attributes.push(Attribute {
                            name: name.into(),
                            value: value.map(str::to_owned),
                        }),
                    }
                }
                (b'a', Some(m)) => parse_media_attr(m, v)?,
                _ => {} // i= u= e= p= z= k= r= and unknown letters: ignored
            }
        }
        if !have_origin {
            return Err(SdpError::BadOrigin);
        }
        Ok(sd)
    }

    /// The connection address that applies to `m` (media-level overrides session-level).
    pub fn connection_for<'a>(&'a self, m: &'a MediaDescription) -> Option<&'a Connection> {
        m.connection.as_ref().or(self.connection.as_ref())
    }

    /// The direction that applies to `m` (media-level, else session-level, else sendrecv).
    pub fn direction_for(&self, m: &MediaDescription) -> Direction {
        m.direction.or(self.direction).unwrap_or_default()
    }

    /// The first audio RTP section with a non-zero port.
    pub fn active_audio(&self) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.is_rtp_audio() && m.port != 0)
    }

    /// Increments `o=` session version, as every re-offer must (RFC 3264 §8).
    pub fn bump_version(&mut self) {
        self.origin.session_version = self.origin.session_version.wrapping_add(1);
    }
}

fn parse_origin(v: &str) -> Result<Origin, SdpError> {
    let f: Vec<&str> = v.split_ascii_whitespace().collect();
    let [user, id, ver, "IN", at, addr] = f[..] else {
        return Err(SdpError::BadOrigin);
    };
    Ok(Origin {
        username: user.into(),
        session_id: id.into(),
        session_version: ver.parse().map_err(|_| SdpError::BadOrigin)?,
        addr_type: at.into(),
        address: addr.into(),
    })
}

fn split_attr(v: &str) -> (&str, Option<&str>) {
    match v.split_once(':') {
        Some((n, val)) => (n, Some(val)),
        None => (v, None),
    }
}

fn parse_media_attr(m: &mut MediaDescription, v: &str) -> Result<(), SdpError> {
    let (name, value) = split_attr(v);
    match (name, value) {
        ("rtpmap", Some(val)) => {
            let bad = SdpError::BadAttribute("rtpmap");
            let (pt, enc) = val.trim().split_once([' ', '\t']).ok_or(bad.clone())?;
            let pt: u8 = pt.parse().map_err(|_| bad.clone())?;
            let mut parts = enc.trim().split('/');
            let encoding = parts
                .next()
                .filter(|e| !e.is_empty())
                .ok_or(bad.clone())?
                .to_owned();
            let clock_rate: u32 = parts
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or(bad.clone())?;
            let channels = match parts.next() {
                Some(c) => Some(c.parse().map_err(|_| bad.clone())?),
                None => None,
            };
            m.rtpmap.push(RtpMap {
                pt,
                encoding,
                clock_rate,
                channels,
            });
        }
        ("fmtp", Some(val)) => {
            let (pt, params) = val
                .trim()
                .split_once([' ', '\t'])
                .unwrap_or((val.trim(), ""));
            let pt: u8 = pt.parse().map_err(|_| SdpError::BadAttribute("fmtp"))?;
            m.fmtp.push((pt, params.trim().to_owned()));
        }
        ("ptime", Some(val)) => m.ptime = Some(parse_u32(val, "ptime")?),
        ("maxptime", Some(val)) => m.maxptime = Some(parse_u32(val, "maxptime")?),
        ("rtcp", Some(val)) => {
            let val = val.trim();
            let (port, rest) = val.split_once(' ').unwrap_or((val, ""));
            let port: u16 = port.parse().map_err(|_| SdpError::BadAttribute("rtcp"))?;
            let connection = if rest.trim().is_empty() {
                None
            } else {
                Some(Connection::parse(rest)?)
            };
            m.rtcp = Some(Rtcp { port, connection });
        }
        ("crypto", Some(val)) => m.crypto.push(Crypto::parse(val)?),
        (d, None) if Direction::parse(d).is_some() => m.direction = Direction::parse(d),
        _ => m.attributes.push(Attribute {
            name: name.into(),
            value: value.map(str::to_owned),
        }),
    }
    Ok(())
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        write!(
            f,
            "v=0\r\no={} {} {} IN {} {}\r\ns={}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            o.addr_type,
            o.address,
            if self.session_name.is_empty() {
                "-"
            } else {
                &self.session_name
            }
        )?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidth {
            write!(f, "b={b}\r\n")?;
        }
        write!(f, "t={}\r\n", self.timing)?;
        write_attributes(f, &self.attributes)?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// offer / answer

/// A codec: payload type, encoding name, clock rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    /// RTP payload type
    pub pt: u8,
    /// encoding name (`PCMU`)
    pub name: String,
    /// clock rate (8000)
    pub clock_rate: u32,
}

impl Codec {
    /// G.711 µ-law, static PT 0.
    pub fn pcmu() -> Codec {
        Codec {
            pt: 0,
            name: "PCMU".into(),
            clock_rate: 8000,
        }
    }

    /// G.711 A-law, static PT 8.
    pub fn pcma() -> Codec {
        Codec {
            pt: 8,
            name: "PCMA".into(),
            clock_rate: 8000,
        }
    }

    fn same_format(&self, other: &Codec) -> bool {
        self.name.eq_ignore_ascii_case(&other.name) && self.clock_rate == other.clock_rate
    }
}

fn static_codec(pt: u8) -> Option<Codec> {
    match pt {
        0 => Some(Codec::pcmu()),
        8 => Some(Codec::pcma()),
        _ => None,
    }
}

/// What we offer or accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaParams {
    /// our RTP address (the public one behind NAT)
    pub address: IpAddr,
    /// our RTP port
    pub port: u16,
    /// our RTCP port if not port+1 (emits `a=rtcp`)
    pub rtcp_port: Option<u16>,
    /// codecs in our preference order
    pub codecs: Vec<Codec>,
    /// telephone-event PT to offer (answers keep the offerer's); `None` disables DTMF
    pub dtmf_pt: Option<u8>,
    /// packetisation time we want to receive (ms)
    pub ptime: Option<u32>,
    /// maximum packetisation time (ms)
    pub maxptime: Option<u32>,
    /// the direction we want (sendrecv normally, sendonly to put the peer on hold)
    pub direction: Direction,
    /// SRTP: our crypto line (suite + our key); `Some` offers RTP/SAVP / accepts RTP/SAVP
    pub crypto: Option<Crypto>,
    /// accept plain RTP/AVP offers even when `crypto` is set
    pub allow_plain_rtp: bool,
    /// `o=` session id
    pub session_id: u64,
    /// `o=` session version (increment for each re-offer, or use [`SessionDescription::bump_version`])
    pub session_version: u64,
}

impl MediaParams {
    /// PCMU + PCMA + telephone-event/101, ptime 20, sendrecv, plain RTP.
    pub fn g711(address: IpAddr, port: u16, session_id: u64) -> MediaParams {
        MediaParams {
            address,
            port,
            rtcp_port: None,
            codecs: vec![Codec::pcmu(), Codec::pcma()],
            dtmf_pt: Some(101),
            ptime: Some(20),
            maxptime: None,
            direction: Direction::SendRecv,
            crypto: None,
            allow_plain_rtp: true,
            session_id,
            session_version: 1,
        }
    }
}

fn base_description(p: &MediaParams) -> SessionDescription {
    SessionDescription {
        origin: Origin {
            username: "trunkline".into(),
            session_id: p.session_id.to_string(),
            session_version: p.session_version,
            addr_type: if p.address.is_ipv4() { "IP4" } else { "IP6" }.into(),
            address: p.address.to_string(),
        },
        session_name: "trunkline".into(),
        connection: Some(Connection::new(p.address)),
        bandwidth: Vec::new(),
        timing: "0 0".into(),
        direction: None,
        attributes: Vec::new(),
        media: Vec::new(),
    }
}

fn push_codec(m: &mut MediaDescription, c: &Codec) {
    m.formats.push(c.pt.to_string());
    m.rtpmap.push(RtpMap {
        pt: c.pt,
        encoding: c.name.clone(),
        clock_rate: c.clock_rate,
        channels: None,
    });
}

/// Builds our offer: one audio stream with `params.codecs` then telephone-event.
pub fn build_offer(params: &MediaParams) -> SessionDescription {
    let mut sd = base_description(params);
    let proto = if params.crypto.is_some() {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let mut m = MediaDescription::new("audio", params.port, proto);
    for c in &params.codecs {
        push_codec(&mut m, c);
    }
    if let Some(pt) = params.dtmf_pt {
        push_codec(
            &mut m,
            &Codec {
                pt,
                name: "telephone-event".into(),
                clock_rate: 8000,
            },
        );
        m.fmtp.push((pt, "0-16".into()));
    }
    finish_media(&mut m, params, params.direction);
    if let Some(c) = &params.crypto {
        m.crypto.push(c.clone());
    }
    sd.media.push(m);
    sd
}

fn finish_media(m: &mut MediaDescription, p: &MediaParams, direction: Direction) {
    m.ptime = p.ptime;
    m.maxptime = p.maxptime;
    m.rtcp = p.rtcp_port.map(|port| Rtcp {
        port,
        connection: None,
    });
    m.direction = Some(direction);
}

/// The outcome of an offer/answer exchange, seen from our side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// where to send RTP; `None` when on hold with `c=0.0.0.0`, or no usable address
    pub remote_rtp: Option<SocketAddr>,
    /// where to send RTCP (`a=rtcp`, else RTP port + 1)
    pub remote_rtcp: Option<SocketAddr>,
    /// the codec to send and expect
    pub codec: Codec,
    /// the telephone-event PT, if both sides support it
    pub dtmf_pt: Option<u8>,
    /// packetisation time to send with (the peer's `a=ptime`, else 20 ms)
    pub ptime: u32,
    /// what *we* do: send, receive, both or neither
    pub direction: Direction,
    /// our SRTP crypto (keys we send with), when SRTP was agreed
    pub local_crypto: Option<Crypto>,
    /// the peer's SRTP crypto (keys we receive with)
    pub remote_crypto: Option<Crypto>,
}

/// The answer to send and what was agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// the SDP answer
    pub sdp: SessionDescription,
    /// the agreed parameters
    pub negotiated: Negotiated,
}

fn remote_addrs(
    sd: &SessionDescription,
    m: &MediaDescription,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let conn = sd.connection_for(m);
    let ip = conn
        .and_then(Connection::ip)
        .filter(|ip| !ip.is_unspecified());
    let Some(ip) = ip.filter(|_| m.port != 0) else {
        return (None, None);
    };
    let rtcp = match &m.rtcp {
        Some(r) => Some(SocketAddr::new(
            r.connection.as_ref().and_then(Connection::ip).unwrap_or(ip),
            r.port,
        )),
        None => m.port.checked_add(1).map(|p| SocketAddr::new(ip, p)),
    };
    (Some(SocketAddr::new(ip, m.port)), rtcp)
}

/// Whether the remote side asked not to receive (RFC 2543 hold form `c=0.0.0.0`).
fn is_hold_address(sd: &SessionDescription, m: &MediaDescription) -> bool {
    sd.connection_for(m).is_some_and(Connection::is_hold)
}

/// Answers `offer` with our capabilities (RFC 3264 §6).
pub fn answer(offer: &SessionDescription, ours: &MediaParams) -> Result<Answer, NoMatch> {
    let mut sd = base_description(ours);
    let mut negotiated = None;
    for om in &offer.media {
        let accepted = if negotiated.is_none() && om.is_rtp_audio() && om.port != 0 {
            accept_stream(offer, om, ours)
        } else {
            None
        };
        match accepted {
            Some((m, n)) => {
                sd.media.push(m);
                negotiated = Some(n);
            }
            None => {
                // rejected stream: port 0, formats echoed (RFC 3264 §6)
                let mut m = MediaDescription::new(&om.media, 0, &om.protocol);
                m.formats = om.formats.clone();
                sd.media.push(m);
            }
        }
    }
    let negotiated = negotiated.ok_or(NoMatch)?;
    Ok(Answer {
        sdp: sd,
        negotiated,
    })
}

fn accept_stream(
    offer: &SessionDescription,
    om: &MediaDescription,
    ours: &MediaParams,
) -> Option<(MediaDescription, Negotiated)> {
    // SRTP policy
    let (local_crypto, remote_crypto) = if om.is_srtp() {
        let mine = ours.crypto.as_ref()?;
        let theirs = om
            .crypto
            .iter()
            .find(|c| c.is_usable() && c.suite == mine.suite)
            .or_else(|| om.crypto.iter().find(|c| c.is_usable()))?;
        let key = mine.key_salt()?;
        (
            Some(Crypto::new(theirs.tag, &theirs.suite, &key)),
            Some(theirs.clone()),
        )
    } else {
        if ours.crypto.is_some() && !ours.allow_plain_rtp {
            return None;
        }
        (None, None)
    };
    // first codec in offer order that we support
    let codec = om
        .payload_types()
        .filter_map(|pt| om.codec(pt))
        .find(|c| ours.codecs.iter().any(|o| o.same_format(c)))?;
    let dtmf_pt = ours.dtmf_pt.and(om.telephone_event_pt());

    let mut m = MediaDescription::new("audio", ours.port, &om.protocol);
    push_codec(&mut m, &codec);
    if let Some(pt) = dtmf_pt {
        push_codec(
            &mut m,
            &Codec {
                pt,
                name: "telephone-event".into(),
                clock_rate: 8000,
            },
        );
        m.fmtp.push((pt, om.fmtp(pt).unwrap_or("0-16").to_owned()));
    }
    // direction: mirror the offer, then apply our own wish and the c=0.0.0.0 hold form
    let mut offered = offer.direction_for(om);
    if is_hold_address(offer, om) {
        offered = offered.intersect(Direction::SendOnly); // they will not receive
    }
    let ours_dir = offered.reversed().intersect(ours.direction);
    finish_media(&mut m, ours, ours_dir);
    if let Some(c) = &local_crypto {
        m.crypto.push(c.clone());
    }
    let (remote_rtp, remote_rtcp) = remote_addrs(offer, om);
    let negotiated = Negotiated {
        remote_rtp,
        remote_rtcp,
        codec,
        dtmf_pt,
        ptime: om.ptime.unwrap_or(20),
        direction: ours_dir,
        local_crypto,
        remote_crypto,
    };
    Some((m, negotiated))
}

/// What was agreed, on the offerer's side: our `offer` and the peer's `answer` (RFC 3264 §7).
/// Fails with [`NoMatch`] when the answer rejected every audio stream or picked nothing we offered.
pub fn negotiated(
    offer: &SessionDescription,
    answer: &SessionDescription,
) -> Result<Negotiated, NoMatch> {
    let (idx, am) = answer
        .media
        .iter()
        .enumerate()
        .find(|(_, m)| m.is_rtp_audio() && m.port != 0)
        .ok_or(NoMatch)?;
    let om = offer.media.get(idx).ok_or(NoMatch)?;
    let codec = am
        .payload_types()
        .filter_map(|pt| am.codec(pt).or_else(|| om.codec(pt)))
        .find(|c| {
            !c.name.eq_ignore_ascii_case("telephone-event")
                && om.codec(c.pt).is_some_and(|o| o.same_format(c))
        })
        .ok_or(NoMatch)?;
    let dtmf_pt = om.telephone_event_pt().and(am.telephone_event_pt());
    let mut answered = answer.direction_for(am);
    if is_hold_address(answer, am) {
        answered = answered.intersect(Direction::SendOnly);
    }
    let direction = answered.reversed().intersect(offer.direction_for(om));
    let (local_crypto, remote_crypto) = if am.is_srtp() {
        let theirs = am.crypto.first().filter(|c| c.is_usable()).ok_or(NoMatch)?;
        let mine = om
            .crypto
            .iter()
            .find(|c| c.tag == theirs.tag && c.suite == theirs.suite)
            .ok_or(NoMatch)?;
        (Some(mine.clone()), Some(theirs.clone()))
    } else {
        (None, None)
    };
    let (remote_rtp, remote_rtcp) = remote_addrs(answer, am);
    Ok(Negotiated {
        remote_rtp,
        remote_rtcp,
        codec,
        dtmf_pt,
        ptime: am.ptime.unwrap_or(20),
        direction,
        local_crypto,
        remote_crypto,
    })
}

// ---------------------------------------------------------------------------------------------
// base64 (RFC 4648, standard alphabet, padding optional on input) for SDES keys

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` on any invalid character.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None; // a lone trailing character
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
    }

    #[test]
    fn direction_algebra() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(
            Direction::SendRecv.intersect(Direction::SendOnly),
            Direction::SendOnly
        );
        assert_eq!(
            Direction::RecvOnly.intersect(Direction::SendOnly),
            Direction::Inactive
        );
    }
}
