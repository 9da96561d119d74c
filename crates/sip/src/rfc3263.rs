//! Locating a SIP server (RFC 3263 §4), sans-IO: what to look up for a URI's host, which NAPTR
//! record names the SRV set for a transport, and the order of SRV targets (RFC 2782). The DNS
//! queries themselves are the caller's (the gateway's resolver); this module only decides.
//!
//! - §4.2: a numeric host (IP literal) is used as is; a host with an explicit port is resolved
//!   with A/AAAA only; otherwise NAPTR, then SRV, then A/AAAA on the transport's default port.
//! - §4.1: NAPTR records are taken in (order, preference) order; only `s`-flagged records whose
//!   service matches the transport (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`) count. Without a usable
//!   NAPTR record the SRV name is built from the transport (`_sip._udp`, `_sip._tcp`,
//!   `_sips._tcp`).
//! - RFC 2782: SRV targets by ascending priority; within a priority, a weighted random order
//!   (zero-weight records first in the running sum, as the RFC says); a target of `.` means
//!   "no service".
//!
//! Not done here: `SIP+D2S` (SCTP), NAPTR regexp rewriting (SIP uses replacements only), and
//! transport selection from NAPTR when the URI names none (we always know our transport).

use std::net::{IpAddr, SocketAddr};

use crate::transaction::TransportKind;

/// What to look up for a host (RFC 3263 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A numeric host: no DNS.
    Direct(SocketAddr),
    /// A host name with an explicit port: A/AAAA only.
    Address {
        /// The name.
        host: String,
        /// The port.
        port: u16,
    },
    /// A host name without a port: NAPTR, SRV, then A/AAAA on `default_port`.
    Naptr {
        /// The name.
        host: String,
        /// Port when neither NAPTR nor SRV gives one.
        default_port: u16,
    },
}

/// The plan for `host` (brackets of an IPv6 literal allowed), `port` if the URI names one.
pub fn plan(host: &str, port: Option<u16>, transport: TransportKind) -> Plan {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = default_port(transport);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Plan::Direct(SocketAddr::new(ip, port.unwrap_or(default_port)));
    }
    let host = bare.trim_end_matches('.').to_ascii_lowercase();
    match port {
        Some(port) => Plan::Address { host, port },
        None => Plan::Naptr { host, default_port },
    }
}

/// 5061 for TLS, else 5060.
pub fn default_port(transport: TransportKind) -> u16 {
    match transport {
        TransportKind::Tls => 5061,
        _ => 5060,
    }
}

/// The NAPTR service field for `transport` (RFC 3263 §4.1).
pub fn naptr_service(transport: TransportKind) -> &'static str {
    match transport {
        TransportKind::Udp => "SIP+D2U",
        TransportKind::Tcp => "SIP+D2T",
        TransportKind::Tls => "SIPS+D2T",
    }
}

/// The SRV name for `host` over `transport` when NAPTR gives none (RFC 3263 §4.1).
pub fn srv_name(host: &str, transport: TransportKind) -> String {
    let prefix = match transport {
        TransportKind::Udp => "_sip._udp",
        TransportKind::Tcp => "_sip._tcp",
        TransportKind::Tls => "_sips._tcp",
    };
    format!("{prefix}.{}", host.trim_end_matches('.'))
}

/// One NAPTR record (RFC 3403), as far as SIP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    /// Order (lower first).
    pub order: u16,
    /// Preference within an order (lower first).
    pub preference: u16,
    /// Flags (`s`: the replacement is an SRV name).
    pub flags: String,
    /// Service (`SIP+D2U`, …).
    pub service: String,
    /// The replacement domain.
    pub replacement: String,
}

/// The SRV name the best NAPTR record for `transport` points to, if any.
pub fn pick_naptr(records: &[Naptr], transport: TransportKind) -> Option<String> {
    let want = naptr_service(transport);
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| r.service.eq_ignore_ascii_case(want))
        .filter(|r| !r.replacement.is_empty() && r.replacement != ".")
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    usable
        .first()
        .map(|r| r.replacement.trim_end_matches('.').to_owned())
}

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Priority (lower first).
    pub priority: u16,
    /// Weight within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host (`.` = no service).
    pub target: String,
}

/// RFC 2782 order of `records`: ascending priority; within one priority, repeatedly pick a
/// record with probability proportional to its weight (zero weights have a small chance, placed
/// first in the running sum as the RFC says), using `random` for the draws. Records whose target
/// is `.` are dropped.
pub fn order_srv(records: &[Srv], mut random: impl FnMut() -> u64) -> Vec<Srv> {
    let mut by_priority: Vec<Srv> = records
        .iter()
        .filter(|r| !r.target.is_empty() && r.target != ".")
        .cloned()
        .collect();
    by_priority.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(by_priority.len());
    let mut i = 0;
    while i < by_priority.len() {
        let p = by_priority[i].priority;
        let end = by_priority[i..]
            .iter()
            .position(|r| r.priority != p)
            .map_or(by_priority.len(), |n| i + n);
        // Zero weights first in the running sum (RFC 2782 "Usage rules").
        let mut group: Vec<Srv> = by_priority[i..end].to_vec();
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u64 = group.iter().map(|r| u64::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let draw = random() % (total + 1);
                let mut sum = 0u64;
                group
                    .iter()
                    .position(|r| {
                        sum += u64::from(r.weight);
                        sum >= draw
                    })
                    .unwrap_or(group.len() - 1)
            };
            out.push(group.remove(pick));
        }
        i = end;
    }
    out
}

/// The destinations to try, in order: each target's addresses (as resolved, IPv4 and IPv6 in
/// the resolver's order) on its port, without duplicates, at most `max`.
pub fn destinations<'a>(
    targets: impl IntoIterator<Item = (u16, &'a [IpAddr])>,
    max: usize,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for (port, ips) in targets {
        for ip in ips {
            let a = SocketAddr::new(*ip, port);
            if !out.contains(&a) && out.len() < max {
                out.push(a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn numeric_hosts_and_explicit_ports_skip_naptr_and_srv() {
        assert_eq!(
            plan("192.0.2.1", None, TransportKind::Udp),
            Plan::Direct("192.0.2.1:5060".parse().expect("addr"))
        );
        assert_eq!(
            plan("[2001:db8::1]", Some(5080), TransportKind::Tls),
            Plan::Direct("[2001:db8::1]:5080".parse().expect("addr"))
        );
        assert_eq!(
            plan("Edge.Example.NET.", Some(5070), TransportKind::Udp),
            Plan::Address {
                host: "edge.example.net".into(),
                port: 5070
            }
        );
        assert_eq!(
            plan("example.pstn.twilio.com", None, TransportKind::Tls),
            Plan::Naptr {
                host: "example.pstn.twilio.com".into(),
                default_port: 5061
            }
        );
    }

    #[test]
    fn srv_names_per_transport() {
        assert_eq!(srv_name("a.b", TransportKind::Udp), "_sip._udp.a.b");
        assert_eq!(srv_name("a.b.", TransportKind::Tcp), "_sip._tcp.a.b");
        assert_eq!(srv_name("a.b", TransportKind::Tls), "_sips._tcp.a.b");
    }

    #[test]
    fn naptr_picks_the_transport_s_record_by_order_then_preference() {
        let n = |order, preference, flags: &str, service: &str, r: &str| Naptr {
            order,
            preference,
            flags: flags.into(),
            service: service.into(),
            replacement: r.into(),
        };
        let records = [
            n(10, 50, "s", "SIP+D2T", "_sip._tcp.x."),
            n(20, 10, "s", "SIP+D2U", "_sip._udp.late."),
            n(10, 60, "s", "SIP+D2U", "_sip._udp.x."),
            n(5, 1, "a", "SIP+D2U", "host.x."),
            n(1, 1, "s", "SIPS+D2T", "_sips._tcp.x."),
        ];
        assert_eq!(
            pick_naptr(&records, TransportKind::Udp).as_deref(),
            Some("_sip._udp.x")
        );
        assert_eq!(
            pick_naptr(&records, TransportKind::Tcp).as_deref(),
            Some("_sip._tcp.x")
        );
        assert_eq!(
            pick_naptr(&records, TransportKind::Tls).as_deref(),
            Some("_sips._tcp.x")
        );
        assert_eq!(pick_naptr(&records[..2], TransportKind::Tls), None);
    }

    #[test]
    fn srv_priority_first_and_dot_means_no_service() {
        let records = [
            srv(20, 0, "c."),
            srv(10, 0, "a."),
            srv(10, 0, "."),
            srv(15, 5, "b."),
        ];
        let order: Vec<String> = order_srv(&records, || 0)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(order, ["a.", "b.", "c."]);
    }

    #[test]
    fn srv_weights_share_first_place_in_proportion() {
        // Weights 60/30/10 (and a zero) in one priority: over many seeded draws, the first pick
        // follows the weights; every order contains every target once.
        let records = [
            srv(1, 60, "a"),
            srv(1, 30, "b"),
            srv(1, 10, "c"),
            srv(1, 0, "z"),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rng = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut first = std::collections::HashMap::<String, u32>::new();
        let n = 20_000;
        for _ in 0..n {
            let o = order_srv(&records, &mut rng);
            assert_eq!(o.len(), 4);
            let mut names: Vec<&str> = o.iter().map(|r| r.target.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["a", "b", "c", "z"]);
            *first.entry(o[0].target.clone()).or_default() += 1;
        }
        let share = |t: &str| f64::from(first.get(t).copied().unwrap_or(0)) / f64::from(n);
        // Expected 60/101, 30/101, 10/101, 1/101 (a draw of 0 picks the zero-weight record).
        assert!((share("a") - 60.0 / 101.0).abs() < 0.02, "{first:?}");
        assert!((share("b") - 30.0 / 101.0).abs() < 0.02, "{first:?}");
        assert!((share("c") - 10.0 / 101.0).abs() < 0.02, "{first:?}");
        assert!(share("z") < 0.03, "{first:?}");
    }

    #[test]
    fn destinations_keep_order_drop_duplicates_and_cap() {
        let a: [IpAddr; 2] = ["10.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
        let b: [IpAddr; 1] = ["10.0.0.1".parse().expect("ip")];
        let d = destinations([(5060, &a[..]), (5060, &b[..]), (5070, &b[..])], 3);
        assert_eq!(
            d,
            [
                "10.0.0.1:5060".parse::<SocketAddr>().expect("addr"),
                "[::1]:5060".parse().expect("addr"),
                "10.0.0.1:5070".parse().expect("addr"),
            ]
        );
    }
}
