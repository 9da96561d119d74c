//! RFC 3263 resolution of the trunk's next hop, once per outbound call: NAPTR → SRV → A/AAAA
//! with `hickory-resolver` (its cache keeps every answer for its TTL, so a call costs no query
//! while the records are fresh, and a changed record is seen when its TTL ends). The decisions
//! (what to look up, which NAPTR, the RFC 2782 order) are `sip::rfc3263`'s, sans-IO; this module
//! only asks DNS.
//!
//! The outbound proxy, when set, is the host resolved (it "wins" over the termination host);
//! the Request-URI keeps the termination host either way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tracing::{debug, warn};
use trunkline_call::sip::TransportKind;
use trunkline_call::sip::rfc3263::{self, Naptr, Plan, Srv};

use crate::setup::TrunkAddress;

/// At most this many addresses are tried for one call.
pub const MAX_TARGETS: usize = 8;

/// Per-lookup timeout and attempts: a call waits at most about 2 × 2 s per query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves the trunk's next hop for each call.
#[derive(Debug)]
pub struct TrunkResolver {
    plan: Plan,
    transport: TransportKind,
    resolver: Option<TokioResolver>,
    rng: Mutex<u64>,
    /// Resolutions that produced no address.
    pub failures: AtomicU64,
}

impl TrunkResolver {
    /// A resolver for `address` over `transport`, asking `servers` (empty: the system's
    /// resolv.conf). No query is made here.
    pub fn new(
        address: &TrunkAddress,
        transport: TransportKind,
        servers: &[SocketAddr],
        seed: u64,
    ) -> Result<Self, String> {
        let plan = rfc3263::plan(
            &address.host,
            address.explicit_port.then_some(address.port),
            transport,
        );
        let resolver = match plan {
            Plan::Direct(_) => None,
            _ => Some(build_resolver(servers)?),
        };
        Ok(Self {
            plan,
            transport,
            resolver,
            rng: Mutex::new(seed | 1),
            failures: AtomicU64::new(0),
        })
    }

    /// The addresses to try, in order (RFC 3263 §4.2–4.4). An error says why there is none.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        let r = self.resolve_inner().await;
        match &r {
            Ok(v) if !v.is_empty() => {}
            Ok(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err("no address for the trunk".into());
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "trunk DNS resolution failed");
            }
        }
        r
    }

    async fn resolve_inner(&self) -> Result<Vec<SocketAddr>, String> {
        let (resolver, host, port) = match (&self.plan, &self.resolver) {
            (Plan::Direct(a), _) => return Ok(vec![*a]),
            (_, None) => return Err("no resolver".into()),
            (Plan::Address { host, port }, Some(r)) => (r, host, Some(*port)),
            (Plan::Naptr { host, .. }, Some(r)) => (r, host, None),
        };
        if let Some(port) = port {
            let ips = lookup_ips(resolver, host).await?;
            return Ok(rfc3263::destinations([(port, &ips[..])], MAX_TARGETS));
        }
        let default_port = rfc3263::default_port(self.transport);
        // §4.1: NAPTR first; without a usable record, the transport's SRV name.
        let srv_name = match resolver.lookup(fqdn(host), RecordType::NAPTR).await {
            Ok(l) => {
                let records: Vec<Naptr> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::NAPTR(n) => Some(Naptr {
                            order: n.order,
                            preference: n.preference,
                            flags: String::from_utf8_lossy(&n.flags).into_owned(),
                            service: String::from_utf8_lossy(&n.services).into_owned(),
                            replacement: n.replacement.to_ascii(),
                        }),
                        _ => None,
                    })
                    .collect();
                rfc3263::pick_naptr(&records, self.transport)
            }
            Err(e) => {
                debug!(error = %e, host, "no NAPTR");
                None
            }
        }
        .unwrap_or_else(|| rfc3263::srv_name(host, self.transport));
        let srvs: Vec<Srv> = match resolver.lookup(fqdn(&srv_name), RecordType::SRV).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some(Srv {
                        priority: s.priority,
                        weight: s.weight,
                        port: s.port,
                        target: s.target.to_ascii(),
                    }),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                debug!(error = %e, srv_name, "no SRV");
                Vec::new()
            }
        };
        if srvs.is_empty() {
            // §4.2: no SRV records → A/AAAA of the host itself on the default port.
            let ips = lookup_ips(resolver, host).await?;
            return Ok(rfc3263::destinations(
                [(default_port, &ips[..])],
                MAX_TARGETS,
            ));
        }
        let ordered = {
            let Ok(mut state) = self.rng.lock() else {
                return Err("rng poisoned".into());
            };
            rfc3263::order_srv(&srvs, || {
                *state = splitmix(*state);
                *state
            })
        };
        let mut resolved: Vec<(u16, Vec<IpAddr>)> = Vec::new();
        for s in &ordered {
            match lookup_ips(resolver, s.target.trim_end_matches('.')).await {
                Ok(ips) => resolved.push((s.port, ips)),
                // One target without an address: the next ones still count (§4.4).
                Err(e) => debug!(error = %e, target = %s.target, "SRV target has no address"),
            }
        }
        Ok(rfc3263::destinations(
            resolved.iter().map(|(p, ips)| (*p, &ips[..])),
            MAX_TARGETS,
        ))
    }
}

async fn lookup_ips(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    let l = resolver
        .lookup_ip(fqdn(host))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?;
    let ips: Vec<IpAddr> = l.iter().collect();
    if ips.is_empty() {
        return Err(format!("{host} has no address"));
    }
    Ok(ips)
}

/// `host.` — absolute, so no search-list queries are made.
fn fqdn(host: &str) -> String {
    format!("{}.", host.trim_end_matches('.'))
}

fn build_resolver(servers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let ns = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(ns),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 2;
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_need_no_dns() {
        let a = TrunkAddress {
            host: "127.0.0.1".into(),
            port: 5070,
            explicit_port: true,
        };
        let r = TrunkResolver::new(&a, TransportKind::Udp, &[], 1).expect("resolver");
        assert!(r.resolver.is_none());
        assert_eq!(
            r.resolve().await.expect("resolves"),
            ["127.0.0.1:5070".parse::<SocketAddr>().expect("addr")]
        );
    }
}
