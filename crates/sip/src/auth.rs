//! Digest authentication (RFC 3261 §22.2–22.3): answering challenges as a client, and parsing and
//! checking the credentials a client sent.
//!
//! Implements RFC 2617 §3.2 (`WWW-Authenticate`/`Proxy-Authenticate` challenges, `Authorization`/
//! `Proxy-Authorization` credentials, `qop=auth` and `auth-int`, `nc`/`cnonce`, `opaque` echoed),
//! RFC 7616 §3.4 (`algorithm=SHA-256`, `-sess` variants, `algorithm` echoed) as adopted for SIP by
//! RFC 8760 (preference SHA-256 over MD5 when a server offers both).
//!
//! Server side: [`Authorization::parse`] reads an `Authorization`/`Proxy-Authorization` value and
//! [`Authorization::verify`] checks its `response` against a password. [`DigestServer`] is a
//! whole UAS policy on top (RFC 3261 §22.4, RFC 8760): it issues `WWW-Authenticate` challenges
//! (SHA-256 then MD5, `qop="auth"`) with nonces it can recognise without state (issue time +
//! counter + a keyed hash), lets them expire, refuses a replayed `nc` and answers expired or
//! replayed nonces with `stale=true`.
//!
//! Not supported: `SHA-512-256` (challenge rejected with [`AuthError::UnsupportedAlgorithm`]),
//! `userhash`, `username*` (RFC 7616 §3.4.4).
//!
//! The cnonce is supplied by the caller (inject a seeded RNG in tests); the nonce count increments
//! per nonce inside [`DigestClient`].

use std::collections::HashMap;
use std::fmt;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::message::{Request, Response};

/// Why a challenge could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The response carries no challenge header for its status (401 → WWW-Authenticate, 407 →
    /// Proxy-Authenticate), or the status is neither.
    #[error("no digest challenge in response")]
    NoChallenge,
    /// The challenge uses another scheme than Digest.
    #[error("challenge scheme is not Digest")]
    NotDigest,
    /// The challenge is syntactically broken.
    #[error("malformed challenge")]
    Malformed,
    /// A required parameter is missing (`realm` or `nonce` of a challenge; `username`, `realm`,
    /// `nonce`, `uri`, `response` of credentials, and `cnonce`/`nc` with a qop).
    #[error("challenge or credentials lack {0}")]
    Missing(&'static str),
    /// The algorithm is not MD5, MD5-sess, SHA-256 or SHA-256-sess.
    #[error("unsupported digest algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// `qop` offers neither `auth` nor `auth-int`.
    #[error("unsupported qop {0}")]
    UnsupportedQop(String),
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// MD5 (the default when no `algorithm` is given).
    Md5,
    /// MD5-sess.
    Md5Sess,
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
    /// SHA-256-sess.
    Sha256Sess,
}

impl Algorithm {
    /// Parses an algorithm token (case-insensitive).
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "MD5-SESS" => Some(Algorithm::Md5Sess),
            "SHA-256" => Some(Algorithm::Sha256),
            "SHA-256-SESS" => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    /// The canonical token.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex digest of `data`.
    pub fn hash(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data)),
        }
    }

    fn strength(self) -> u8 {
        match self {
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Quality of protection chosen for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// `qop=auth`.
    Auth,
    /// `qop=auth-int` (the body is hashed into A2).
    AuthInt,
}

impl Qop {
    /// Parses a qop token (case-insensitive).
    pub fn parse(s: &str) -> Option<Qop> {
        if s.eq_ignore_ascii_case("auth") {
            Some(Qop::Auth)
        } else if s.eq_ignore_ascii_case("auth-int") {
            Some(Qop::AuthInt)
        } else {
            None
        }
    }

    /// The token.
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// A parsed Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, echoed unchanged.
    pub opaque: Option<String>,
    /// The algorithm (MD5 when absent).
    pub algorithm: Algorithm,
    /// The `algorithm` token exactly as the server sent it, echoed back; `None` if absent.
    pub algorithm_token: Option<String>,
    /// `qop` options offered (empty for RFC 2069 style).
    pub qop: Vec<String>,
    /// `stale=true`: the nonce expired, credentials were fine.
    pub stale: bool,
}

/// Splits `a=b, c="d,e"` into (name, unquoted value) pairs.
fn auth_params(s: &str) -> Result<Vec<(String, String)>, AuthError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\r' | b'\n' | b',') {
            *i += 1;
        }
    };
    loop {
        skip(&mut i);
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && crate::message::is_token_byte(b[i]) {
            i += 1;
        }
        let name = &s[start..i];
        if name.is_empty() {
            return Err(AuthError::Malformed);
        }
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(AuthError::Malformed);
        }
        i += 1;
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        let mut value = String::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    // quoted-pair: keep the next character, whatever it is
                    b'\\' if i + 1 < b.len() => i += 1,
                    b'"' => {
                        closed = true;
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                // push the whole UTF-8 char
                let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                value.push_str(&s[i..i + ch_len]);
                i += ch_len;
            }
            if !closed {
                return Err(AuthError::Malformed);
            }
        } else {
            let vs = i;
            while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                i += 1;
            }
            value.push_str(&s[vs..i]);
        }
        out.push((name.to_ascii_lowercase(), value));
    }
}

impl Challenge {
    /// Parses one `WWW-Authenticate` / `Proxy-Authenticate` value.
    pub fn parse(value: &str) -> Result<Challenge, AuthError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let mut c = Challenge {
            realm: String::new(),
            nonce: String::new(),
            opaque: None,
            algorithm: Algorithm::Md5,
            algorithm_token: None,
            qop: Vec::new(),
            stale: false,
        };
        let (mut realm, mut nonce) = (None, None);
        for (name, v) in auth_params(rest)? {
            match name.as_str() {
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "opaque" => c.opaque = Some(v),
                "algorithm" => {
                    c.algorithm = Algorithm::parse(&v)
                        .ok_or_else(|| AuthError::UnsupportedAlgorithm(v.clone()))?;
                    c.algorithm_token = Some(v);
                }
                "qop" => {
                    c.qop = v
                        .split(',')
                        .map(|q| q.trim().to_ascii_lowercase())
                        .filter(|q| !q.is_empty())
                        .collect()
                }
                "stale" => c.stale = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        c.realm = realm.ok_or(AuthError::Missing("realm"))?;
        c.nonce = nonce.ok_or(AuthError::Missing("nonce"))?;
        Ok(c)
    }

    /// The qop we will use: `auth` if offered, else `auth-int`, `None` for no qop.
    pub fn chosen_qop(&self) -> Result<Option<Qop>, AuthError> {
        if self.qop.is_empty() {
            return Ok(None);
        }
        if self.qop.iter().any(|q| q == "auth") {
            return Ok(Some(Qop::Auth));
        }
        if self.qop.iter().any(|q| q == "auth-int") {
            return Ok(Some(Qop::AuthInt));
        }
        Err(AuthError::UnsupportedQop(self.qop.join(",")))
    }
}

/// Username and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password (never printed by `Debug`).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// The computed credentials, printed as the `Authorization`/`Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// user name
    pub username: String,
    /// realm from the challenge
    pub realm: String,
    /// nonce from the challenge
    pub nonce: String,
    /// the digest-uri (the Request-URI as sent)
    pub uri: String,
    /// the response hash
    pub response: String,
    /// algorithm token echoed from the challenge
    pub algorithm: Option<String>,
    /// client nonce (with qop)
    pub cnonce: Option<String>,
    /// opaque echoed
    pub opaque: Option<String>,
    /// qop chosen
    pub qop: Option<Qop>,
    /// nonce count (with qop)
    pub nc: Option<u32>,
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest username={}, realm={}, nonce={}, uri={}, response={}",
            quote(&self.username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(&self.uri),
            quote(&self.response)
        )?;
        if let Some(a) = &self.algorithm {
            write!(f, ", algorithm={a}")?;
        }
        if let Some(c) = &self.cnonce {
            write!(f, ", cnonce={}", quote(c))?;
        }
        if let Some(o) = &self.opaque {
            write!(f, ", opaque={}", quote(o))?;
        }
        if let (Some(q), Some(nc)) = (self.qop, self.nc) {
            write!(f, ", qop={}, nc={nc:08x}", q.as_str())?;
        }
        Ok(())
    }
}

impl Authorization {
    /// Parses one `Authorization` / `Proxy-Authorization` value (RFC 2617 §3.2.2, RFC 7616
    /// §3.4): `Digest` then `username`, `realm`, `nonce`, `uri` and `response` (required),
    /// `algorithm` (checked to be one we support, kept as sent), `opaque`, and `qop` with its
    /// `cnonce` and hex `nc` (both required when `qop` is present). Unknown parameters are
    /// ignored.
    pub fn parse(value: &str) -> Result<Authorization, AuthError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(AuthError::NotDigest);
        }
        let (mut username, mut realm, mut nonce, mut uri, mut response) =
            (None, None, None, None, None);
        let (mut algorithm, mut cnonce, mut opaque, mut qop, mut nc) =
            (None, None, None, None, None);
        for (name, v) in auth_params(rest)? {
            match name.as_str() {
                "username" => username = Some(v),
                "realm" => realm = Some(v),
                "nonce" => nonce = Some(v),
                "uri" => uri = Some(v),
                "response" => response = Some(v),
                "algorithm" => {
                    if Algorithm::parse(&v).is_none() {
                        return Err(AuthError::UnsupportedAlgorithm(v));
                    }
                    algorithm = Some(v);
                }
                "cnonce" => cnonce = Some(v),
                "opaque" => opaque = Some(v),
                "qop" => qop = Some(Qop::parse(&v).ok_or(AuthError::UnsupportedQop(v))?),
                "nc" => {
                    // 8LHEX (RFC 2617 §3.2.2); shorter counts are read too.
                    let ok = (1..=8).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit());
                    nc = Some(
                        u32::from_str_radix(&v, 16)
                            .ok()
                            .filter(|_| ok)
                            .ok_or(AuthError::Malformed)?,
                    );
                }
                _ => {}
            }
        }
        if qop.is_some() {
            cnonce.as_ref().ok_or(AuthError::Missing("cnonce"))?;
            nc.ok_or(AuthError::Missing("nc"))?;
        } else {
            // nc only means something with a qop (RFC 2617 §3.2.2).
            nc = None;
        }
        Ok(Authorization {
            username: username.ok_or(AuthError::Missing("username"))?,
            realm: realm.ok_or(AuthError::Missing("realm"))?,
            nonce: nonce.ok_or(AuthError::Missing("nonce"))?,
            uri: uri.ok_or(AuthError::Missing("uri"))?,
            response: response.ok_or(AuthError::Missing("response"))?,
            algorithm,
            cnonce,
            opaque,
            qop,
            nc,
        })
    }

    /// The algorithm the credentials name (MD5 when absent); `None` for one we do not support.
    pub fn algorithm_kind(&self) -> Option<Algorithm> {
        match &self.algorithm {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        }
    }

    /// True when `response` is the digest of these parameters with `password`, for a request
    /// `method` with `body` (hashed only for `auth-int`). Compares in constant time. It checks
    /// the hash only: whether the nonce, opaque, realm and `uri` are acceptable is the caller's
    /// decision.
    pub fn verify(&self, password: &str, method: &str, body: &[u8]) -> bool {
        let Some(algorithm) = self.algorithm_kind() else {
            return false;
        };
        let expected = digest_response(
            algorithm,
            &self.username,
            &self.realm,
            password,
            &self.nonce,
            self.cnonce.as_deref().unwrap_or(""),
            self.nc.unwrap_or(0),
            self.qop,
            method,
            &self.uri,
            body,
        );
        let got = self.response.as_bytes();
        expected.len() == got.len()
            && expected
                .bytes()
                .zip(got)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
                == 0
    }
}

/// Computes the digest `response` value (RFC 7616 §3.4.1–3.4.3).
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    algorithm: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    cnonce: &str,
    nc: u32,
    qop: Option<Qop>,
    method: &str,
    uri: &str,
    body: &[u8],
) -> String {
    let h = |s: &str| algorithm.hash(s.as_bytes());
    let mut ha1 = h(&format!("{username}:{realm}:{password}"));
    if algorithm.is_sess() {
        ha1 = h(&format!("{ha1}:{nonce}:{cnonce}"));
    }
    let ha2 = match qop {
        Some(Qop::AuthInt) => h(&format!("{method}:{uri}:{}", algorithm.hash(body))),
        _ => h(&format!("{method}:{uri}")),
    };
    match qop {
        Some(q) => h(&format!(
            "{ha1}:{nonce}:{nc:08x}:{cnonce}:{}:{ha2}",
            q.as_str()
        )),
        None => h(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// A digest client: answers challenges, counting `nc` per nonce.
#[derive(Debug, Clone)]
pub struct DigestClient {
    credentials: Credentials,
    nonce_counts: HashMap<String, u32>,
}

/// Nonce counts remembered at most; older ones are forgotten (a server then re-challenges).
const MAX_NONCES: usize = 32;

impl DigestClient {
    /// A client with these credentials.
    pub fn new(credentials: Credentials) -> DigestClient {
        DigestClient {
            credentials,
            nonce_counts: HashMap::new(),
        }
    }

    /// Answers `challenge` for a request `method` to `uri` with `body` (hashed only for auth-int).
    /// `cnonce` should be fresh random text (it is only used when the challenge has a qop or a
    /// `-sess` algorithm).
    pub fn authorize(
        &mut self,
        challenge: &Challenge,
        method: &str,
        uri: &str,
        body: &[u8],
        cnonce: &str,
    ) -> Result<Authorization, AuthError> {
        let qop = challenge.chosen_qop()?;
        if self.nonce_counts.len() >= MAX_NONCES
            && !self.nonce_counts.contains_key(&challenge.nonce)
        {
            self.nonce_counts.clear();
        }
        let nc = self
            .nonce_counts
            .entry(challenge.nonce.clone())
            .or_insert(0);
        *nc = nc.wrapping_add(1);
        let nc = *nc;
        let response = digest_response(
            challenge.algorithm,
            &self.credentials.username,
            &challenge.realm,
            &self.credentials.password,
            &challenge.nonce,
            cnonce,
            nc,
            qop,
            method,
            uri,
            body,
        );
        let uses_cnonce = qop.is_some() || challenge.algorithm.is_sess();
        Ok(Authorization {
            username: self.credentials.username.clone(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: uri.to_owned(),
            response,
            algorithm: challenge.algorithm_token.clone(),
            cnonce: uses_cnonce.then(|| cnonce.to_owned()),
            opaque: challenge.opaque.clone(),
            qop,
            nc: qop.map(|_| nc),
        })
    }

    /// Answers a 401 or 407 `response` to `request`: picks the strongest supported challenge
    /// (SHA-256 before MD5, RFC 8760 §2.4), and sets `Authorization` (401) or
    /// `Proxy-Authorization` (407) on `request`, replacing earlier credentials for the same realm.
    ///
    /// The caller still re-sends it as a new transaction: CSeq + 1, new Via branch, same Call-ID
    /// and From tag (RFC 3261 §22.2).
    pub fn authorize_request(
        &mut self,
        response: &Response,
        request: &mut Request,
        cnonce: &str,
    ) -> Result<(), AuthError> {
        let (challenge_header, credentials_header) = match response.status {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => return Err(AuthError::NoChallenge),
        };
        let mut best: Option<Challenge> = None;
        let mut last_err = AuthError::NoChallenge;
        for v in response.header(challenge_header) {
            match Challenge::parse(v) {
                Ok(c)
                    if best
                        .as_ref()
                        .is_none_or(|b| c.algorithm.strength() > b.algorithm.strength()) =>
                {
                    best = Some(c)
                }
                Ok(_) => {}
                Err(e) => last_err = e,
            }
        }
        let challenge = best.ok_or(last_err)?;
        let auth = self.authorize(
            &challenge,
            request.method.as_str(),
            &request.uri.to_string(),
            &request.body,
            cnonce,
        )?;
        // drop stale credentials for this realm, keep others (several proxies may challenge)
        let keep: Vec<String> = request
            .header(credentials_header)
            .filter(|v| Challenge::parse(v).map_or(true, |c| c.realm != challenge.realm))
            .map(str::to_owned)
            .collect();
        request.headers.remove(credentials_header);
        for v in keep {
            request.headers.push(credentials_header, v);
        }
        request.headers.push(credentials_header, auth.to_string());
        Ok(())
    }
}

// ---- server side ---------------------------------------------------------------------------

/// What [`DigestServer::check`] decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials: take the request.
    Accept,
    /// No usable credentials (none, not for our realm, a nonce that is not ours), or an expired
    /// or replayed nonce with an otherwise correct response (`stale`): send 401 with
    /// [`DigestServer::challenges`].
    Challenge {
        /// `stale=true` (RFC 7616 §3.3): retry with the new nonce, no need to ask the user.
        stale: bool,
    },
    /// Credentials for us that are wrong (user name, response, digest-uri): 403.
    Forbidden,
}

/// A digest-authenticating UAS (sans-IO: every call takes `now`).
#[derive(Debug)]
pub struct DigestServer {
    realm: String,
    credentials: Credentials,
    secret: u64,
    nonce_ttl: std::time::Duration,
    algorithms: Vec<Algorithm>,
    origin: Option<std::time::Instant>,
    counter: u64,
    /// The highest `nc` seen per nonce (pruned when nonces expire).
    seen: HashMap<String, u32>,
}

/// Nonces tracked for replay at most (older ones are dropped first when full).
const MAX_TRACKED_NONCES: usize = 4096;

impl DigestServer {
    /// A server for `realm` accepting `credentials`; nonces are keyed with `secret` and valid for
    /// `nonce_ttl`.
    pub fn new(
        realm: &str,
        credentials: Credentials,
        secret: u64,
        nonce_ttl: std::time::Duration,
    ) -> Self {
        Self {
            realm: realm.to_owned(),
            credentials,
            secret,
            nonce_ttl,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            origin: None,
            counter: 0,
            seen: HashMap::new(),
        }
    }

    /// Challenge with these algorithms, in this order (default SHA-256, MD5; some UACs — SIPp
    /// 3.6 among them — only read the first challenge and only know MD5). Credentials with an
    /// algorithm not listed are refused.
    pub fn with_algorithms(mut self, algorithms: Vec<Algorithm>) -> Self {
        if !algorithms.is_empty() {
            self.algorithms = algorithms;
        }
        self
    }

    fn elapsed_ms(&mut self, now: std::time::Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn mac(&self, issued: u64, counter: u64) -> String {
        let h = Sha256::digest(format!("{:016x}:{issued:x}:{counter:x}", self.secret).as_bytes());
        hex(&h[..12])
    }

    /// A new nonce: `{issued ms}.{counter}.{mac}` in hex.
    pub fn nonce(&mut self, now: std::time::Instant) -> String {
        let issued = self.elapsed_ms(now);
        self.counter += 1;
        let counter = self.counter;
        format!("{issued:x}.{counter:x}.{}", self.mac(issued, counter))
    }

    /// When `nonce` was issued (ms after the origin), if we issued it.
    fn issued(&self, nonce: &str) -> Option<u64> {
        let mut parts = nonce.split('.');
        let issued = u64::from_str_radix(parts.next()?, 16).ok()?;
        let counter = u64::from_str_radix(parts.next()?, 16).ok()?;
        let mac = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let expected = self.mac(issued, counter);
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some(issued)
    }

    /// The `WWW-Authenticate` values of a 401, in order of preference (RFC 8760 §2.4: SHA-256
    /// first, then MD5 for older clients), with one fresh nonce.
    pub fn challenges(&mut self, stale: bool, now: std::time::Instant) -> Vec<String> {
        let nonce = self.nonce(now);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm={}, nonce={}, algorithm={}, qop=\"auth\"{stale}",
                    quote(&self.realm),
                    quote(&nonce),
                    a.as_str()
                )
            })
            .collect()
    }

    /// Checks `request`'s `Authorization` credentials for our realm.
    pub fn check(&mut self, request: &Request, now: std::time::Instant) -> Verdict {
        let elapsed = self.elapsed_ms(now);
        let ours = request
            .header("Authorization")
            .filter_map(|v| Authorization::parse(v).ok())
            .find(|a| a.realm == self.realm);
        let Some(auth) = ours else {
            return Verdict::Challenge { stale: false };
        };
        let Some(issued) = self.issued(&auth.nonce) else {
            // Not a nonce of ours (or of an earlier run): a fresh challenge.
            return Verdict::Challenge { stale: false };
        };
        if auth.username != self.credentials.username
            || auth.qop != Some(Qop::Auth)
            || !auth
                .algorithm_kind()
                .is_some_and(|a| self.algorithms.contains(&a))
            || !uri_matches(&auth.uri, &request.uri.to_string())
            || !auth.verify(
                &self.credentials.password,
                request.method.as_str(),
                &request.body,
            )
        {
            return Verdict::Forbidden;
        }
        let ttl = u64::try_from(self.nonce_ttl.as_millis()).unwrap_or(u64::MAX);
        if elapsed.saturating_sub(issued) > ttl {
            return Verdict::Challenge { stale: true };
        }
        let nc = auth.nc.unwrap_or(0);
        if self.seen.get(&auth.nonce).is_some_and(|last| nc <= *last) {
            // A replay (or a reordered old request): only a fresh nonce will do.
            return Verdict::Challenge { stale: true };
        }
        if self.seen.len() >= MAX_TRACKED_NONCES {
            let limit = elapsed.saturating_sub(ttl);
            let issued_of = |n: &str| {
                n.split('.')
                    .next()
                    .and_then(|x| u64::from_str_radix(x, 16).ok())
            };
            self.seen
                .retain(|n, _| issued_of(n).is_some_and(|i| i >= limit));
            if self.seen.len() >= MAX_TRACKED_NONCES {
                self.seen.clear();
            }
        }
        self.seen.insert(auth.nonce, nc);
        Verdict::Accept
    }
}

/// The digest-uri names the Request-URI's resource (RFC 2617 §3.2.2.5): the same URI, or the
/// same scheme, host and port without the user part (SIPp and some gateways put
/// `sip:host:port` there; the hash covers whatever they sent, so only the target is checked).
fn uri_matches(digest_uri: &str, request_uri: &str) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    match (
        crate::message::Uri::parse(digest_uri),
        crate::message::Uri::parse(request_uri),
    ) {
        (Ok(a), Ok(b)) => match (a.as_sip(), b.as_sip()) {
            (Some(a), Some(b)) => {
                a.secure == b.secure
                    && a.host_port
                        .to_string()
                        .eq_ignore_ascii_case(&b.host_port.to_string())
                    && (a.user.is_none() || a.user == b.user)
            }
            _ => a == b,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_algorithms() {
        assert_eq!(Algorithm::Md5.hash(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            Algorithm::Sha256.hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Algorithm::parse("sha-256-SESS"),
            Some(Algorithm::Sha256Sess)
        );
        assert_eq!(Algorithm::parse("SHA-512-256"), None);
    }

    #[test]
    fn quoted_params_with_commas_and_escapes() {
        let p =
            auth_params(r#"realm="a,b", qop="auth,auth-int",nonce="x\"y", stale=TRUE"#).unwrap();
        assert_eq!(p[0], ("realm".into(), "a,b".into()));
        assert_eq!(p[1], ("qop".into(), "auth,auth-int".into()));
        assert_eq!(p[2], ("nonce".into(), "x\"y".into()));
        assert_eq!(p[3], ("stale".into(), "TRUE".into()));
        assert_eq!(auth_params(r#"realm="open"#), Err(AuthError::Malformed));
        assert_eq!(
            auth_params("a=\"\\\u{e9}\"").unwrap()[0].1,
            "\u{e9}",
            "escaped multibyte char"
        );
    }

    fn md5_challenge() -> Challenge {
        Challenge::parse(r#"Digest realm="sip.twilio.com",qop="auth",nonce="abc123",opaque="7f""#)
            .unwrap()
    }

    #[test]
    fn credentials_round_trip_through_display_and_parse() {
        let mut c = DigestClient::new(Credentials {
            username: "trunkline".into(),
            password: "s3cret".into(),
        });
        let a = c
            .authorize(
                &md5_challenge(),
                "INVITE",
                "sip:+15550001111@example.pstn.twilio.com",
                b"",
                "cn0",
            )
            .unwrap();
        let parsed = Authorization::parse(&a.to_string()).unwrap();
        assert_eq!(parsed, a);
        assert_eq!(parsed.qop, Some(Qop::Auth));
        assert_eq!(parsed.nc, Some(1));
        assert_eq!(parsed.opaque.as_deref(), Some("7f"));
        assert!(parsed.verify("s3cret", "INVITE", b""));
        assert!(!parsed.verify("wrong", "INVITE", b""));
        assert!(!parsed.verify("s3cret", "BYE", b""));
        let mut other_uri = parsed.clone();
        other_uri.uri = "sip:+15550002222@example.pstn.twilio.com".into();
        assert!(!other_uri.verify("s3cret", "INVITE", b""));
        let mut upper = parsed.clone();
        upper.response = upper.response.to_ascii_uppercase();
        assert!(
            upper.verify("s3cret", "INVITE", b""),
            "hex case does not matter"
        );
    }

    #[test]
    fn credentials_with_sha256_and_without_qop() {
        let ch = Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-256"#).unwrap();
        let mut c = DigestClient::new(Credentials {
            username: "u".into(),
            password: "p".into(),
        });
        let a = c.authorize(&ch, "INVITE", "sip:x@y", b"", "cn").unwrap();
        let parsed = Authorization::parse(&a.to_string()).unwrap();
        assert_eq!(parsed.algorithm_kind(), Some(Algorithm::Sha256));
        assert_eq!(
            (parsed.qop, parsed.nc, parsed.cnonce.as_deref()),
            (None, None, None)
        );
        assert!(parsed.verify("p", "INVITE", b""));
    }

    #[test]
    fn credentials_parse_errors() {
        let ok = r#"Digest username="u", realm="r", nonce="n", uri="sip:x@y", response="00""#;
        assert!(Authorization::parse(ok).is_ok());
        assert_eq!(
            Authorization::parse(&ok.replace("Digest", "Basic")),
            Err(AuthError::NotDigest)
        );
        assert_eq!(
            Authorization::parse(&ok.replace(r#"uri="sip:x@y", "#, "")),
            Err(AuthError::Missing("uri"))
        );
        assert_eq!(
            Authorization::parse(&format!("{ok}, qop=auth, nc=00000001")),
            Err(AuthError::Missing("cnonce"))
        );
        assert_eq!(
            Authorization::parse(&format!("{ok}, qop=auth, cnonce=\"c\"")),
            Err(AuthError::Missing("nc"))
        );
        assert_eq!(
            Authorization::parse(&format!("{ok}, qop=auth, cnonce=\"c\", nc=+1")),
            Err(AuthError::Malformed),
            "nc is hex digits only"
        );
        assert_eq!(
            Authorization::parse(&format!("{ok}, qop=auth-conf, cnonce=\"c\", nc=00000001")),
            Err(AuthError::UnsupportedQop("auth-conf".into()))
        );
        assert_eq!(
            Authorization::parse(&format!("{ok}, algorithm=SHA-512-256")),
            Err(AuthError::UnsupportedAlgorithm("SHA-512-256".into()))
        );
        assert_eq!(
            Authorization::parse(r#"Digest username="u, realm=r"#),
            Err(AuthError::Malformed)
        );
        let a = Authorization::parse(&format!("{ok}, qop=AUTH, cnonce=\"c\", nc=0000000a, x=y"))
            .unwrap();
        assert_eq!((a.qop, a.nc), (Some(Qop::Auth), Some(10)));
    }

    // ---- DigestServer ----------------------------------------------------------------------

    /// The origin of virtual time (the one clock read of these tests).
    #[allow(clippy::disallowed_methods)]
    fn origin() -> std::time::Instant {
        std::time::Instant::now()
    }

    fn server() -> DigestServer {
        DigestServer::new(
            "trunkline",
            Credentials {
                username: "carrier".into(),
                password: "pa55".into(),
            },
            42,
            std::time::Duration::from_secs(30),
        )
    }

    fn invite() -> Request {
        Request::new(
            crate::message::Method::Invite,
            crate::message::Uri::parse("sip:+15005550006@127.0.0.1:5060").unwrap(),
        )
    }

    fn challenged(srv: &mut DigestServer, stale: bool, now: std::time::Instant) -> Response {
        let mut r = Response::new(401);
        for c in srv.challenges(stale, now) {
            r.push_header("WWW-Authenticate", c);
        }
        r
    }

    #[test]
    fn server_challenges_sha256_first_then_md5_and_accepts_either() {
        let t0 = origin();
        let mut srv = server();
        let mut req = invite();
        assert_eq!(srv.check(&req, t0), Verdict::Challenge { stale: false });
        let r = challenged(&mut srv, false, t0);
        let values: Vec<&str> = r.header("WWW-Authenticate").collect();
        assert!(values[0].contains("algorithm=SHA-256") && values[0].contains("qop=\"auth\""));
        assert!(values[1].contains("algorithm=MD5"));
        // A client that prefers SHA-256 (RFC 8760).
        let creds = Credentials {
            username: "carrier".into(),
            password: "pa55".into(),
        };
        let mut client = DigestClient::new(creds.clone());
        client.authorize_request(&r, &mut req, "c1").unwrap();
        assert!(
            req.header("Authorization")
                .next()
                .unwrap()
                .contains("SHA-256")
        );
        assert_eq!(srv.check(&req, t0), Verdict::Accept);
        // An MD5-only client: only the MD5 challenge (a new one: that nonce and nc are used).
        let again = challenged(&mut srv, false, t0);
        let mut md5_only = Response::new(401);
        md5_only.push_header(
            "WWW-Authenticate",
            again.header("WWW-Authenticate").nth(1).unwrap(),
        );
        let mut req2 = invite();
        DigestClient::new(creds)
            .authorize_request(&md5_only, &mut req2, "c2")
            .unwrap();
        assert_eq!(srv.check(&req2, t0), Verdict::Accept);
    }

    #[test]
    fn server_refuses_wrong_passwords_users_and_uris_and_foreign_nonces() {
        let t0 = origin();
        let mut srv = server();
        let r = challenged(&mut srv, false, t0);
        let answer = |user: &str, pass: &str| {
            let mut req = invite();
            DigestClient::new(Credentials {
                username: user.into(),
                password: pass.into(),
            })
            .authorize_request(&r, &mut req, "c")
            .unwrap();
            req
        };
        assert_eq!(
            srv.check(&answer("carrier", "wrong"), t0),
            Verdict::Forbidden
        );
        assert_eq!(
            srv.check(&answer("mallory", "pa55"), t0),
            Verdict::Forbidden
        );
        // The credentials were for another Request-URI.
        let mut moved = answer("carrier", "pa55");
        moved.uri = crate::message::Uri::parse("sip:+15005550006@10.9.9.9").unwrap();
        assert_eq!(srv.check(&moved, t0), Verdict::Forbidden);
        // A nonce another server (another secret) issued is not ours: a fresh challenge.
        let mut other = DigestServer::new(
            "trunkline",
            Credentials {
                username: "carrier".into(),
                password: "pa55".into(),
            },
            43,
            std::time::Duration::from_secs(30),
        );
        let r2 = challenged(&mut other, false, t0);
        let mut forged = invite();
        DigestClient::new(Credentials {
            username: "carrier".into(),
            password: "pa55".into(),
        })
        .authorize_request(&r2, &mut forged, "c")
        .unwrap();
        assert_eq!(srv.check(&forged, t0), Verdict::Challenge { stale: false });
    }

    #[test]
    fn server_nonces_expire_and_replays_are_stale() {
        let t0 = origin();
        let mut srv = server();
        let r = challenged(&mut srv, false, t0);
        let mut req = invite();
        let mut client = DigestClient::new(Credentials {
            username: "carrier".into(),
            password: "pa55".into(),
        });
        client.authorize_request(&r, &mut req, "c").unwrap();
        assert_eq!(srv.check(&req, t0), Verdict::Accept);
        // The same credentials again (same nonce, same nc): a replay.
        assert_eq!(srv.check(&req, t0), Verdict::Challenge { stale: true });
        // The next request with the same nonce and nc + 1 is fine.
        let mut req2 = invite();
        client.authorize_request(&r, &mut req2, "c").unwrap();
        assert_eq!(srv.check(&req2, t0), Verdict::Accept);
        // After the nonce's lifetime: stale (the response is right, the nonce old).
        let mut req3 = invite();
        client.authorize_request(&r, &mut req3, "c").unwrap();
        let later = t0 + std::time::Duration::from_secs(31);
        assert_eq!(srv.check(&req3, later), Verdict::Challenge { stale: true });
        let fresh = challenged(&mut srv, true, later);
        assert!(
            fresh
                .header("WWW-Authenticate")
                .all(|v| v.contains("stale=true"))
        );
        let mut req4 = invite();
        client.authorize_request(&fresh, &mut req4, "c").unwrap();
        assert_eq!(srv.check(&req4, later), Verdict::Accept);
    }
}
