//! The body of the `trigger_body` fuzz target (`fuzz/fuzz_targets/trigger_body.rs`), shared with
//! the stable corpus replay (`tests/fuzz_corpus.rs`): the HTTP trigger's body parsing (serde) and
//! every policy decision after it ([`crate::api::decide`]), with the invariants a toll-fraud
//! guard must keep whatever the input. It panics on purpose when one breaks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::api::{TriggerInput, TriggerRefusal, decide, parse_outbound_body};
use crate::config::{PolicySection, Secrets, is_e164};
use crate::policy::{CALL_VARIABLES, Client, Policy, RequestRules};

/// The backend's token in the fuzzed policy.
pub const TOKEN: &str = "fuzz-backend-token-0123456789";
/// The allowed browser origin in the fuzzed policy.
pub const ORIGIN: &str = "https://shop.example";
/// Prefixes the fuzzed policy may call.
pub const ALLOWED: [&str; 2] = ["+33", "+1"];
/// The key a widget may set; the operator's key nobody may.
const WIDGET_KEY: &str = "customer_name";
const OPERATOR_KEY: &str = "customer_tier";

/// A fresh policy: token required unless an allowed origin calls, `+33`/`+1` only, the default
/// denylist, small rates and caps so the fuzzer reaches them.
pub fn policy() -> Policy {
    let cfg = PolicySection {
        allowed_prefixes: ALLOWED.iter().map(|p| (*p).to_owned()).collect(),
        per_ip_per_minute: 3,
        per_destination_per_day: 2,
        max_concurrent_calls: 3,
        calls_per_second: 2.0,
        ..PolicySection::default()
    };
    let secrets = Secrets {
        api_tokens: vec![("backend".into(), TOKEN.into())],
        ..Secrets::default()
    };
    Policy::new(cfg, vec![ORIGIN.into()], &secrets).with_request_rules(RequestRules {
        anonymous_variables: vec![WIDGET_KEY.into()],
        anonymous_first_message: false,
        operator_variables: vec![OPERATOR_KEY.into()],
    })
}

/// One input: the first byte picks the credentials (token, a wrong token, none, an empty
/// bearer), the origin, the client address and how far virtual time moved; the rest is the JSON
/// body, sent twice (a second request from the same client). Returns the numbers admitted.
pub fn trigger_body(data: &[u8], t0: Instant) -> Vec<String> {
    let Some((&sel, body)) = data.split_first() else {
        return Vec::new();
    };
    let (number, vars, first_message) = match parse_outbound_body(body) {
        Ok(b) => b,
        Err(msg) => {
            assert!(!msg.is_empty());
            return Vec::new();
        }
    };
    let token = match sel & 3 {
        0 => Some(TOKEN),
        1 => Some("wrong-token-0123456789abc"),
        2 => None,
        _ => Some(""),
    };
    let origin = (sel & 4 != 0).then_some(ORIGIN);
    let input = TriggerInput {
        token,
        origin,
        peer: IpAddr::from([192, 0, 2, sel >> 3]),
        number: number.as_deref(),
        dynamic_variables: &vars,
        first_message: first_message.as_deref(),
    };
    let mut policy = policy();
    let mut admitted = Vec::new();
    for i in 0..2u64 {
        let now = t0 + Duration::from_millis(u64::from(sel) * 7 + i * 300);
        match decide(&mut policy, &input, true, 0, now, 20_000) {
            Ok((client, dest)) => {
                check_admitted(&client, &dest.e164, &vars, first_message.as_deref());
                admitted.push(dest.e164);
            }
            Err(TriggerRefusal::BadRequest(msg)) => assert!(!msg.is_empty()),
            Err(TriggerRefusal::Policy(r)) => {
                assert!([400, 401, 403, 429, 503].contains(&r.status()));
                assert!(!r.message().is_empty());
            }
            Err(TriggerRefusal::Unavailable) => panic!("the gateway is ready"),
        }
    }
    admitted
}

/// What must hold of every admitted request.
fn check_admitted(
    client: &Client,
    e164: &str,
    vars: &BTreeMap<String, serde_json::Value>,
    first_message: Option<&str>,
) {
    assert!(is_e164(e164), "admitted a non-E.164 number {e164:?}");
    assert!(
        ALLOWED.iter().any(|p| e164.starts_with(p)),
        "admitted {e164} outside the allowlist"
    );
    assert!(
        !PolicySection::default()
            .denied_prefixes
            .iter()
            .any(|p| e164.starts_with(p.as_str())),
        "admitted the denied {e164}"
    );
    for k in vars.keys() {
        assert!(
            k != OPERATOR_KEY && !CALL_VARIABLES.contains(&k.as_str()),
            "a request set the reserved variable {k:?}"
        );
    }
    if !matches!(client, Client::Token(_)) {
        assert!(
            vars.keys().all(|k| k == WIDGET_KEY),
            "a client without a token set {:?}",
            vars.keys().collect::<Vec<_>>()
        );
        assert!(
            first_message.is_none(),
            "a client without a token set first_message"
        );
    }
}
