//! Who may ring what, how often: the outbound trigger is a toll-fraud target and is guarded like
//! a payment API. Sans-IO: time comes in as `now` (monotonic, for rate limits) and `day` (the
//! UTC day number, for daily caps).
//!
//! Order of checks for `POST /api/call/outbound` (each with a stable error message):
//! 1. authentication — a bearer token, or (for a public browser widget) an allowed `Origin`
//!    together with a restricted destination policy (pinned numbers or an allowlist) → 401
//!    `Unauthorized`;
//! 2. per-client rate limit (per token for token clients, at ten times the per-IP rate; per IP
//!    for everyone else) → 429 `Too many requests`;
//! 3. the number: present (400 `Phone number is required`), E.164 after normalisation with
//!    libphonenumber metadata (400 `Invalid phone number`);
//! 4. destination policy — pinned numbers, allowlist, denylist, premium-rate and shared-cost
//!    numbers by metadata → 403 `Destination not allowed`;
//! 5. per-destination daily cap → 429; global calls per second (the trunk's CPS) → 429;
//!    concurrent calls → 503 `At capacity`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use ipnet::IpNet;

use phonenumber::{Mode, Type as PhoneNumberType};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{PolicySection, Secrets};

/// Why a trigger request was refused. `message()` is the stable text clients see.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// 400.
    MissingNumber,
    /// 400.
    InvalidNumber,
    /// 401.
    Unauthorized,
    /// 403.
    DestinationNotAllowed(&'static str),
    /// 429 with `Retry-After`.
    RateLimited {
        /// Which limit (metrics label).
        limit: &'static str,
        /// Seconds until a retry may pass.
        retry_after: u64,
    },
    /// 503.
    AtCapacity,
    /// 403: the request sets a dynamic variable this client may not set (the operator's, the
    /// call's own, or, without a token, one not in `agent.request_variables`).
    VariableNotAllowed,
    /// 403: a `first_message` from a client without a token, not allowed by
    /// `agent.allow_request_first_message`.
    FirstMessageNotAllowed,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::MissingNumber | Refusal::InvalidNumber => 400,
            Refusal::Unauthorized => 401,
            Refusal::DestinationNotAllowed(_)
            | Refusal::VariableNotAllowed
            | Refusal::FirstMessageNotAllowed => 403,
            Refusal::RateLimited { .. } => 429,
            Refusal::AtCapacity => 503,
        }
    }

    /// The stable error message.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::MissingNumber => "Phone number is required",
            Refusal::InvalidNumber => "Invalid phone number",
            Refusal::Unauthorized => "Unauthorized",
            Refusal::DestinationNotAllowed(_) => "Destination not allowed",
            Refusal::RateLimited { .. } => "Too many requests",
            Refusal::AtCapacity => "At capacity",
            Refusal::VariableNotAllowed => "Dynamic variable not allowed",
            Refusal::FirstMessageNotAllowed => "first_message not allowed",
        }
    }

    /// A short label for metrics (no numbers, no ids).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::MissingNumber => "missing_number",
            Refusal::InvalidNumber => "invalid_number",
            Refusal::Unauthorized => "unauthorized",
            Refusal::DestinationNotAllowed(why) => why,
            Refusal::RateLimited { limit, .. } => limit,
            Refusal::AtCapacity => "at_capacity",
            Refusal::VariableNotAllowed => "request_variable_not_allowed",
            Refusal::FirstMessageNotAllowed => "first_message_not_allowed",
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// A bearer token, by its configured name.
    Token(String),
    /// A browser on an allowed origin, without a token.
    Origin(String),
    /// Tokens are not required and none was given.
    Anonymous,
}

pub use crate::config::CALL_VARIABLES;

/// What a trigger request may carry for the agent (`[agent]` `request_variables`,
/// `allow_request_first_message`, and the keys of `[agent.dynamic_variables]`).
///
/// - The operator's variables and the call's own ([`CALL_VARIABLES`]) always win: a request
///   naming one of them is refused, whoever sends it.
/// - A token client (the operator's backend) may add any other key.
/// - A client without a token (browser widget, anonymous) may add only the keys in
///   `request_variables` (none by default), and a `first_message` only with
///   `allow_request_first_message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRules {
    /// Keys a client without a token may set.
    pub anonymous_variables: Vec<String>,
    /// Whether a client without a token may set `first_message`.
    pub anonymous_first_message: bool,
    /// The operator's keys (`[agent.dynamic_variables]`); the call's own are always reserved.
    pub operator_variables: Vec<String>,
}

impl RequestRules {
    /// Whether `client` may send these variable names and (if `first_message`) a first message.
    pub fn check<'a>(
        &self,
        client: &Client,
        mut keys: impl Iterator<Item = &'a str>,
        first_message: bool,
    ) -> Result<(), Refusal> {
        let token = matches!(client, Client::Token(_));
        if keys.any(|k| {
            CALL_VARIABLES.contains(&k)
                || self.operator_variables.iter().any(|o| o == k)
                || (!token && !self.anonymous_variables.iter().any(|a| a == k))
        }) {
            return Err(Refusal::VariableNotAllowed);
        }
        if first_message && !token && !self.anonymous_first_message {
            return Err(Refusal::FirstMessageNotAllowed);
        }
        Ok(())
    }
}

/// A normalised destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// E.164, `+` and digits.
    pub e164: String,
}

/// Normalise a number to E.164 with libphonenumber metadata. Only international form is
/// accepted (`+` country code …): without a default region a national number is ambiguous.
pub fn normalise(raw: &str) -> Result<(Destination, PhoneNumberType), Refusal> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Refusal::MissingNumber);
    }
    if trimmed.len() > 32
        || !trimmed.starts_with('+')
        || !trimmed
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
    {
        return Err(Refusal::InvalidNumber);
    }
    let number = phonenumber::parse(None, trimmed).map_err(|_| Refusal::InvalidNumber)?;
    if !phonenumber::is_valid(&number) {
        return Err(Refusal::InvalidNumber);
    }
    let kind = number.number_type(&phonenumber::metadata::DATABASE);
    let e164 = number.format().mode(Mode::E164).to_string();
    Ok((Destination { e164 }, kind))
}

/// The checks every destination passes, whoever asks (the trigger, the agent's `transfer_call`):
/// not under a denied prefix, not premium rate / shared cost / pager by metadata.
pub fn check_destination(
    dest: &Destination,
    kind: PhoneNumberType,
    denied_prefixes: &[String],
) -> Result<(), Refusal> {
    if denied_prefixes
        .iter()
        .any(|p| dest.e164.starts_with(p.as_str()))
    {
        return Err(Refusal::DestinationNotAllowed("denied_prefix"));
    }
    if matches!(
        kind,
        PhoneNumberType::PremiumRate | PhoneNumberType::SharedCost | PhoneNumberType::Pager
    ) {
        return Err(Refusal::DestinationNotAllowed("premium_rate"));
    }
    Ok(())
}

/// The destination policy of a transfer number (after `agent.transfer_allow_prefixes`): valid
/// E.164 by libphonenumber metadata and [`check_destination`]. The error is what the agent is
/// told, with the refusal's label.
pub fn check_transfer_number(e164: &str, denied_prefixes: &[String]) -> Result<(), String> {
    let refused = |r: Refusal| format!("destination not allowed ({})", r.label());
    let (dest, kind) = normalise(e164).map_err(refused)?;
    check_destination(&dest, kind, denied_prefixes).map_err(refused)
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Take one token from a bucket of `capacity` refilled at `per_sec`; on refusal, the seconds
    /// until one is available.
    fn take(&mut self, capacity: f64, per_sec: f64, now: Instant) -> Result<(), u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * per_sec).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }

    fn is_full(&self, capacity: f64, per_sec: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * per_sec >= capacity
    }
}

/// A token client's request rate, in multiples of `per_ip_per_minute`.
pub const TOKEN_RATE_FACTOR: f64 = 10.0;

/// Most client buckets kept before idle ones are pruned.
const MAX_BUCKETS: usize = 50_000;

/// The policy state.
#[derive(Debug)]
pub struct Policy {
    cfg: PolicySection,
    origins: Vec<String>,
    /// Token names and the SHA-256 of each token (compared in constant time, whatever their
    /// lengths).
    tokens: Vec<(String, [u8; 32])>,
    ip_buckets: HashMap<IpAddr, Bucket>,
    token_buckets: HashMap<String, Bucket>,
    cps: Option<Bucket>,
    daily: HashMap<String, (u64, u32)>,
    daily_sink: Option<DailySink>,
    request: RequestRules,
    /// Step 5 is the cluster's (PostgreSQL, [`crate::cluster`]): [`Policy::admit`] checks and
    /// counts nothing here, so a trigger the cluster refuses is not counted on this node.
    cluster_admission: bool,
}

/// Where each admitted call's destination count is persisted (the records database), so the
/// daily cap survives a restart: called with the UTC day and the E.164 number.
#[derive(Clone)]
pub struct DailySink(std::sync::Arc<DailySinkFn>);

/// The function inside a [`DailySink`].
type DailySinkFn = dyn Fn(u64, &str) + Send + Sync;

impl DailySink {
    /// A sink from a function (it must not block: queue the write).
    pub fn new(f: impl Fn(u64, &str) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for DailySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DailySink")
    }
}

impl Policy {
    /// A policy from the `[policy]` section, the allowed browser origins and the API tokens.
    pub fn new(cfg: PolicySection, allowed_origins: Vec<String>, secrets: &Secrets) -> Self {
        // Load libphonenumber's metadata now (tens of ms), not on the first caller's request.
        let _ = normalise("+14155550123");
        Policy {
            cfg,
            origins: allowed_origins,
            // An empty token can never authenticate (`Secrets::from_env` refuses it at start;
            // this guards secrets built in code).
            tokens: secrets
                .api_tokens
                .iter()
                .filter(|(_, t)| !t.is_empty())
                .map(|(n, t)| (n.clone(), token_digest(t)))
                .collect(),
            ip_buckets: HashMap::new(),
            token_buckets: HashMap::new(),
            cps: None,
            daily: HashMap::new(),
            daily_sink: None,
            request: RequestRules::default(),
            cluster_admission: false,
        }
    }

    /// The daily cap's state from storage: `counts` calls already placed per number on `day`,
    /// and where to persist each new one.
    pub fn with_daily_counts(
        mut self,
        day: u64,
        counts: impl IntoIterator<Item = (String, u32)>,
        sink: DailySink,
    ) -> Self {
        for (number, n) in counts {
            self.daily.insert(number, (day, n));
        }
        self.daily_sink = Some(sink);
        self
    }

    /// Leave step 5 (capacity, daily cap, CPS) to the cluster when `on` (`cluster.enabled`).
    pub fn cluster_admission(mut self, on: bool) -> Self {
        self.cluster_admission = on;
        self
    }

    /// What trigger requests may carry for the agent (default: nothing from a client without a
    /// token, and never the call's own variables).
    pub fn with_request_rules(mut self, rules: RequestRules) -> Self {
        self.request = rules;
        self
    }

    /// Step 2b: whether `client` may set these dynamic variables and a first message.
    pub fn request_content<'a>(
        &self,
        client: &Client,
        keys: impl Iterator<Item = &'a str>,
        first_message: bool,
    ) -> Result<(), Refusal> {
        self.request.check(client, keys, first_message)
    }

    /// True when the destination policy cannot reach arbitrary numbers (pinned or allowlist),
    /// the condition for letting a token-less browser widget in.
    pub fn destinations_restricted(&self) -> bool {
        !self.cfg.pinned_numbers.is_empty() || !self.cfg.allowed_prefixes.is_empty()
    }

    /// Step 1: who is this? `bearer` is the token the request presented (`Some("")` when it
    /// presented credentials that are not a bearer token: never valid). Tokens are compared in
    /// constant time: SHA-256 of both sides, every configured token compared.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Client, Refusal> {
        if let Some(given) = bearer {
            if given.is_empty() {
                return Err(Refusal::Unauthorized);
            }
            let given = token_digest(given);
            let mut found: Option<&String> = None;
            for (name, digest) in &self.tokens {
                if bool::from(digest.ct_eq(&given)) {
                    found = Some(name);
                }
            }
            return found
                .map(|name| Client::Token(name.clone()))
                .ok_or(Refusal::Unauthorized);
        }
        if let Some(o) = origin
            && self.origin_allowed(o)
        {
            if !self.cfg.require_token || self.destinations_restricted() {
                return Ok(Client::Origin(o.to_owned()));
            }
            return Err(Refusal::Unauthorized);
        }
        if self.cfg.require_token {
            Err(Refusal::Unauthorized)
        } else {
            Ok(Client::Anonymous)
        }
    }

    /// Whether a browser `Origin` is on the allowlist (exact match, no trailing slash).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin.trim_end_matches('/'))
    }

    /// Step 2: request rate. A token client (a server) is counted per token at ten times
    /// `per_ip_per_minute`, whatever its address (a backend behind one NAT address is not held
    /// to a browser's rate); every other client per IP at `per_ip_per_minute`.
    pub fn rate_limit(&mut self, ip: IpAddr, client: &Client, now: Instant) -> Result<(), Refusal> {
        let per_min = f64::from(self.cfg.per_ip_per_minute.max(1));
        if let Client::Token(name) = client {
            let cap = per_min * TOKEN_RATE_FACTOR;
            // One bucket per configured token: the table is bounded by the configuration.
            let b = self.token_buckets.entry(name.clone()).or_insert(Bucket {
                tokens: cap,
                last: now,
            });
            return b
                .take(cap, cap / 60.0, now)
                .map_err(|retry_after| Refusal::RateLimited {
                    limit: "per_token",
                    retry_after,
                });
        }
        if self.ip_buckets.len() >= MAX_BUCKETS {
            self.ip_buckets
                .retain(|_, b| !b.is_full(per_min, per_min / 60.0, now));
        }
        if self.ip_buckets.len() >= MAX_BUCKETS {
            return Err(Refusal::RateLimited {
                limit: "ip_table_full",
                retry_after: 60,
            });
        }
        let b = self.ip_buckets.entry(ip).or_insert(Bucket {
            tokens: per_min,
            last: now,
        });
        b.take(per_min, per_min / 60.0, now)
            .map_err(|retry_after| Refusal::RateLimited {
                limit: "per_ip",
                retry_after,
            })
    }

    /// Steps 3–4: the number and where it goes. With pinned numbers and no number given, the
    /// only pinned number is used.
    pub fn destination(&self, raw: Option<&str>) -> Result<Destination, Refusal> {
        let raw = match raw.map(str::trim).filter(|s| !s.is_empty()) {
            Some(r) => r,
            None if self.cfg.pinned_numbers.len() == 1 => &self.cfg.pinned_numbers[0],
            None => return Err(Refusal::MissingNumber),
        };
        let (dest, kind) = normalise(raw)?;
        if !self.cfg.pinned_numbers.is_empty() {
            return if self.cfg.pinned_numbers.iter().any(|p| p == &dest.e164) {
                Ok(dest)
            } else {
                Err(Refusal::DestinationNotAllowed("not_pinned"))
            };
        }
        check_destination(&dest, kind, &self.cfg.denied_prefixes)?;
        if !self.cfg.allowed_prefixes.is_empty()
            && !self
                .cfg
                .allowed_prefixes
                .iter()
                .any(|p| dest.e164.starts_with(p.as_str()))
        {
            return Err(Refusal::DestinationNotAllowed("not_allowlisted"));
        }
        Ok(dest)
    }

    /// Step 5: capacity, CPS and the daily cap. On success the call is counted.
    pub fn admit(
        &mut self,
        dest: &Destination,
        active_calls: usize,
        now: Instant,
        day: u64,
    ) -> Result<(), Refusal> {
        if self.cluster_admission {
            return Ok(());
        }
        if active_calls >= self.cfg.max_concurrent_calls {
            return Err(Refusal::AtCapacity);
        }
        let cap = self.cfg.per_destination_per_day;
        let used = match self.daily.get(&dest.e164) {
            Some((d, n)) if *d == day => *n,
            _ => 0,
        };
        if used >= cap {
            return Err(Refusal::RateLimited {
                limit: "per_destination_daily",
                retry_after: 3600,
            });
        }
        let cps = self.cfg.calls_per_second.max(0.01);
        let burst = cps.ceil().max(1.0);
        let bucket = self.cps.get_or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        bucket
            .take(burst, cps, now)
            .map_err(|retry_after| Refusal::RateLimited {
                limit: "calls_per_second",
                retry_after,
            })?;
        if self.daily.len() >= MAX_BUCKETS {
            self.daily.retain(|_, (d, _)| *d == day);
        }
        self.daily.insert(dest.e164.clone(), (day, used + 1));
        if let Some(sink) = &self.daily_sink {
            (sink.0)(day, &dest.e164);
        }
        Ok(())
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One entry of `trunk.inbound_allowed_sources`: an address (`192.0.2.7`, `::1`) or a network
/// (`54.172.60.0/30`, `2001:db8::/32`). `None` if it is neither.
pub fn parse_source(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Who may send us INVITEs (`trunk.inbound_allowed_sources`): checked on every INVITE outside
/// a dialog, before anything else is done with it (a refused source gets 403 and is counted).
///
/// What it protects against, and what not: a UDP source address can be forged, so over UDP
/// this stops scanners and stray traffic, not a determined attacker who can also receive the
/// answer's media somewhere; TLS connections and digest authentication cannot be forged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundSources {
    nets: Vec<IpNet>,
}

impl InboundSources {
    /// From the configured entries; the error names the first one that does not parse.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let nets = entries
            .iter()
            .map(|e| {
                parse_source(e.as_ref()).ok_or_else(|| format!("bad address/CIDR {:?}", e.as_ref()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    /// Whether `ip` may send INVITEs. An IPv4 address also matches an IPv4-mapped IPv6 network
    /// (`::ffff:10.0.0.0/104`), and an IPv4-mapped IPv6 source matches IPv4 networks: a
    /// dual-stack socket reports IPv4 peers that way.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let mapped = v4.map(|a| IpAddr::V6(a.to_ipv6_mapped()));
        self.nets.iter().any(|n| {
            n.contains(&ip)
                || v4.is_some_and(|a| n.contains(&IpAddr::V4(a)))
                || mapped.is_some_and(|m| n.contains(&m))
        })
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// True when no source may call in.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(f: impl FnOnce(&mut PolicySection)) -> Policy {
        let mut cfg = PolicySection::default();
        f(&mut cfg);
        let secrets = Secrets {
            api_tokens: vec![("backend".into(), "s3cret".into())],
            ..Secrets::default()
        };
        Policy::new(cfg, vec!["https://shop.example".into()], &secrets)
    }

    #[test]
    fn numbers_are_normalised_to_e164_and_junk_refused() {
        let (d, _) = normalise(" +33 6 12 34 56 78 ").expect("valid FR mobile");
        assert_eq!(d.e164, "+33612345678");
        assert_eq!(normalise("").unwrap_err(), Refusal::MissingNumber);
        for bad in [
            "0612345678",
            "+33",
            "+1 (555) abc",
            "+99912345678",
            "sip:x@y",
            "+3361234567890123",
        ] {
            assert_eq!(normalise(bad).unwrap_err(), Refusal::InvalidNumber, "{bad}");
        }
    }

    #[test]
    fn token_or_allowed_origin_with_restricted_destinations() {
        let open = policy(|_| {});
        assert_eq!(
            open.authenticate(Some("s3cret"), None),
            Ok(Client::Token("backend".into()))
        );
        assert_eq!(
            open.authenticate(Some("wrong"), None),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(open.authenticate(None, None), Err(Refusal::Unauthorized));
        // An allowed origin alone cannot reach arbitrary numbers…
        assert_eq!(
            open.authenticate(None, Some("https://shop.example")),
            Err(Refusal::Unauthorized)
        );
        // …but can when the destinations are pinned.
        let pinned = policy(|c| c.pinned_numbers = vec!["+33612345678".into()]);
        assert_eq!(
            pinned.authenticate(None, Some("https://shop.example")),
            Ok(Client::Origin("https://shop.example".into()))
        );
        assert_eq!(
            pinned.authenticate(None, Some("https://evil.example")),
            Err(Refusal::Unauthorized)
        );
    }

    #[test]
    fn an_empty_token_never_authenticates() {
        let secrets = Secrets {
            api_tokens: vec![
                ("empty".into(), String::new()),
                ("backend".into(), "s3cret".into()),
            ],
            ..Secrets::default()
        };
        let p = Policy::new(PolicySection::default(), Vec::new(), &secrets);
        assert_eq!(p.authenticate(Some(""), None), Err(Refusal::Unauthorized));
        assert_eq!(
            p.authenticate(Some("s3cre"), None),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            p.authenticate(Some("s3cret"), None),
            Ok(Client::Token("backend".into()))
        );
    }

    #[test]
    fn request_variables_and_first_message_by_client() {
        let rules = RequestRules {
            anonymous_variables: vec!["customer_name".into()],
            anonymous_first_message: false,
            operator_variables: vec!["customer_tier".into()],
        };
        let token = Client::Token("backend".into());
        let widget = Client::Origin("https://shop.example".into());
        let check = |c: &Client, keys: &[&str], fm: bool| rules.check(c, keys.iter().copied(), fm);
        // The operator's and the call's own keys: nobody.
        for k in [
            "customer_tier",
            "caller_id",
            "call_sid",
            "called_number",
            "direction",
        ] {
            assert_eq!(
                check(&token, &[k], false),
                Err(Refusal::VariableNotAllowed),
                "{k}"
            );
            assert_eq!(
                check(&widget, &[k], false),
                Err(Refusal::VariableNotAllowed),
                "{k}"
            );
        }
        // Other keys: a token client any, a widget only the listed ones.
        assert_eq!(check(&token, &["order_id", "customer_name"], true), Ok(()));
        assert_eq!(check(&widget, &["customer_name"], false), Ok(()));
        assert_eq!(
            check(&widget, &["order_id"], false),
            Err(Refusal::VariableNotAllowed)
        );
        assert_eq!(
            check(&Client::Anonymous, &[], true),
            Err(Refusal::FirstMessageNotAllowed)
        );
        let open = RequestRules {
            anonymous_first_message: true,
            ..RequestRules::default()
        };
        assert_eq!(open.check(&widget, std::iter::empty(), true), Ok(()));
        // The default: nothing from a client without a token.
        assert_eq!(
            RequestRules::default().check(&widget, ["x"].into_iter(), false),
            Err(Refusal::VariableNotAllowed)
        );
    }

    #[test]
    fn pinned_allowlist_and_denylist() {
        let pinned = policy(|c| c.pinned_numbers = vec!["+33612345678".into()]);
        assert_eq!(
            pinned.destination(None).expect("pinned").e164,
            "+33612345678"
        );
        assert_eq!(
            pinned
                .destination(Some("+33 6 12 34 56 78"))
                .expect("same")
                .e164,
            "+33612345678"
        );
        assert_eq!(
            pinned.destination(Some("+33612345679")),
            Err(Refusal::DestinationNotAllowed("not_pinned"))
        );
        let allow = policy(|c| c.allowed_prefixes = vec!["+33".into()]);
        assert!(allow.destination(Some("+33612345678")).is_ok());
        assert_eq!(
            allow.destination(Some("+14155550123")),
            Err(Refusal::DestinationNotAllowed("not_allowlisted"))
        );
        let open = policy(|_| {});
        assert_eq!(
            open.destination(Some("+19005550123")),
            Err(Refusal::DestinationNotAllowed("denied_prefix"))
        );
        // French premium rate (089x) is refused by metadata even without a prefix rule.
        let bare = policy(|c| c.denied_prefixes.clear());
        assert_eq!(
            bare.destination(Some("+33891234567")),
            Err(Refusal::DestinationNotAllowed("premium_rate"))
        );
        assert_eq!(open.destination(None), Err(Refusal::MissingNumber));
    }

    #[test]
    fn per_ip_rate_limit_refills_over_time() {
        let mut p = policy(|c| c.per_ip_per_minute = 3);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(p.rate_limit(ip, &Client::Anonymous, t0).is_ok());
        }
        let refused = p
            .rate_limit(ip, &Client::Anonymous, t0)
            .expect_err("4th refused");
        assert_eq!(refused.status(), 429);
        assert!(matches!(
            refused,
            Refusal::RateLimited {
                retry_after: 20,
                ..
            }
        ));
        assert!(
            p.rate_limit(other, &Client::Anonymous, t0).is_ok(),
            "per IP"
        );
        assert!(
            p.rate_limit(ip, &Client::Anonymous, t0 + Duration::from_secs(20))
                .is_ok()
        );
    }

    #[test]
    fn token_clients_get_ten_times_the_per_ip_rate_and_anonymous_clients_do_not() {
        let mut p = policy(|c| c.per_ip_per_minute = 10);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let t0 = Instant::now();
        let token = Client::Token("backend".into());
        for i in 0..100 {
            assert!(p.rate_limit(ip, &token, t0).is_ok(), "token request {i}");
        }
        assert_eq!(
            p.rate_limit(ip, &token, t0),
            Err(Refusal::RateLimited {
                limit: "per_token",
                retry_after: 1
            })
        );
        // The token's use does not eat the address's budget, nor the reverse.
        for i in 0..10 {
            assert!(p.rate_limit(ip, &Client::Anonymous, t0).is_ok(), "anon {i}");
        }
        assert!(matches!(
            p.rate_limit(ip, &Client::Anonymous, t0),
            Err(Refusal::RateLimited {
                limit: "per_ip",
                ..
            })
        ));
        let widget = Client::Origin("https://shop.example".into());
        let other: IpAddr = "192.0.2.9".parse().expect("ip");
        for _ in 0..10 {
            assert!(p.rate_limit(other, &widget, t0).is_ok());
        }
        assert!(p.rate_limit(other, &widget, t0).is_err(), "widget: per IP");
        // 1.67 tokens per second refill.
        assert!(
            p.rate_limit(ip, &token, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn capacity_cps_and_daily_cap() {
        let mut p = policy(|c| {
            c.max_concurrent_calls = 2;
            c.calls_per_second = 1.0;
            c.per_destination_per_day = 2;
        });
        let d = Destination {
            e164: "+33612345678".into(),
        };
        let t0 = Instant::now();
        assert_eq!(p.admit(&d, 2, t0, 1), Err(Refusal::AtCapacity));
        assert!(p.admit(&d, 0, t0, 1).is_ok());
        assert!(matches!(
            p.admit(&d, 0, t0, 1),
            Err(Refusal::RateLimited {
                limit: "calls_per_second",
                ..
            })
        ));
        assert!(p.admit(&d, 0, t0 + Duration::from_secs(1), 1).is_ok());
        assert!(matches!(
            p.admit(&d, 0, t0 + Duration::from_secs(2), 1),
            Err(Refusal::RateLimited {
                limit: "per_destination_daily",
                ..
            })
        ));
        assert!(
            p.admit(&d, 0, t0 + Duration::from_secs(3), 2).is_ok(),
            "new day"
        );
    }

    #[test]
    fn inbound_sources_match_addresses_and_networks() {
        let s = InboundSources::parse(&["54.172.60.0/30", "2001:db8::/32", "192.0.2.7"])
            .expect("parses");
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        assert!(s.allows(ip("54.172.60.0")));
        assert!(s.allows(ip("54.172.60.3")));
        assert!(!s.allows(ip("54.172.60.4")));
        assert!(s.allows(ip("192.0.2.7")));
        assert!(!s.allows(ip("192.0.2.8")));
        assert!(s.allows(ip("2001:db8::1")));
        assert!(!s.allows(ip("2001:db9::1")));
        // A dual-stack socket reports an IPv4 peer as IPv4-mapped IPv6.
        assert!(s.allows(ip("::ffff:54.172.60.2")));
        let mapped = InboundSources::parse(&["::ffff:10.0.0.0/104"]).expect("parses");
        assert!(mapped.allows(ip("10.1.2.3")));
        assert!(!mapped.allows(ip("11.1.2.3")));
        assert!(InboundSources::parse(&["1.2.3.4/33"]).is_err());
        assert!(InboundSources::parse(&["nope"]).is_err());
        assert!(
            InboundSources::parse::<&str>(&[])
                .expect("empty")
                .is_empty()
        );
    }
}
