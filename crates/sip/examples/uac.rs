//! A SIP UAC that places one call: INVITE with a G.711 SDP offer (through a 401/407 digest
//! challenge when credentials are given), holds for `--hold` seconds, hangs up with BYE — or answers
//! the far end's BYE if it comes first — and answers re-INVITEs meanwhile.
//!
//! ```text
//! cargo run -p trunkline-sip --example uac -- --target sip:+15551234567@127.0.0.1:5060
//!     [--user U --password P] [--hold SECONDS] [--transport udp|tcp|tls] [--ca ca.pem]
//!     [--local IP] [--from URI] [--timeout SECONDS]
//! ```
//! Exit status 0 only if the call was answered and ended cleanly (our BYE answered 2xx, or the far
//! end's BYE answered by us); 1 otherwise; 2 on bad arguments.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::auth::Credentials;
use trunkline_sip::message::{Method, NameAddr, Uri};
use trunkline_sip::sdp::{self, MediaParams, SessionDescription};
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind};
use trunkline_sip::transport::{TransportConfig, Transports, UaRunner, Wake, tls_client_config};
use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaConfig, UaEvent, uri_destination};

struct Args {
    target: Uri,
    user: Option<String>,
    password: Option<String>,
    hold: Duration,
    transport: Option<TransportKind>,
    ca: Option<String>,
    local: Option<IpAddr>,
    from: Option<String>,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut target = None;
    let mut a = Args {
        target: Uri::parse("sip:invalid").map_err(|e| e.to_string())?,
        user: None,
        password: None,
        hold: Duration::from_secs(2),
        transport: None,
        ca: None,
        local: None,
        from: None,
        timeout: Duration::ZERO,
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => target = Some(Uri::parse(&val()?).map_err(|e| format!("--target: {e}"))?),
            "--user" => a.user = Some(val()?),
            "--password" => a.password = Some(val()?),
            "--hold" => {
                a.hold =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--hold: {e}"))?)
            }
            "--transport" => {
                a.transport = Some(match val()?.as_str() {
                    "udp" => TransportKind::Udp,
                    "tcp" => TransportKind::Tcp,
                    "tls" => TransportKind::Tls,
                    other => return Err(format!("unknown transport {other}")),
                })
            }
            "--ca" => a.ca = Some(val()?),
            "--local" => a.local = Some(val()?.parse().map_err(|e| format!("--local: {e}"))?),
            "--from" => a.from = Some(val()?),
            "--timeout" => {
                a.timeout =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--timeout: {e}"))?)
            }
            "-h" | "--help" => {
                return Err("usage: uac --target URI [--user U --password P] [--hold S] [--transport udp|tcp|tls] [--ca PEM] [--local IP] [--from URI] [--timeout S]".into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.target = target.ok_or("--target is required")?;
    if a.timeout.is_zero() {
        a.timeout = a.hold + Duration::from_secs(40);
    }
    Ok(a)
}

#[allow(clippy::disallowed_methods)] // a seed, not protocol time
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ (u64::from(std::process::id()) << 32)
}

/// Resolves the target URI: an IP host directly, a host name through the system resolver.
async fn resolve(
    target: &Uri,
    forced: Option<TransportKind>,
) -> Result<(SocketAddr, TransportKind), String> {
    if let Some((addr, t)) = uri_destination(target) {
        let t = forced.unwrap_or(t);
        let addr = match (forced, target.as_sip().and_then(|s| s.host_port.port)) {
            (Some(TransportKind::Tls), None) => SocketAddr::new(addr.ip(), 5061),
            _ => addr,
        };
        return Ok((addr, t));
    }
    let sip = target
        .as_sip()
        .ok_or("only sip:/sips: targets can be called")?;
    let t = forced.unwrap_or(if sip.secure {
        TransportKind::Tls
    } else {
        TransportKind::Udp
    });
    let port = sip
        .host_port
        .port
        .unwrap_or(if t == TransportKind::Tls { 5061 } else { 5060 });
    let host = sip.host_port.host.to_string();
    let mut addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?;
    let addr = addrs.next().ok_or(format!("{host} has no address"))?;
    Ok((addr, t))
}

/// The local IP the kernel would use to reach `dest`.
fn local_ip_for(dest: SocketAddr) -> IpAddr {
    let any: SocketAddr = if dest.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(dest).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .unwrap_or(any.ip())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uac: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (dest, transport) = resolve(&args.target, args.transport).await?;
    let local_ip = args.local.unwrap_or_else(|| local_ip_for(dest));
    let bind = SocketAddr::new(local_ip, 0);
    let mut config = TransportConfig::default();
    match transport {
        TransportKind::Udp => config.udp = Some(bind),
        TransportKind::Tcp => config.tcp = Some(bind),
        TransportKind::Tls => {
            let ca = match &args.ca {
                Some(p) => Some(std::fs::read(p).map_err(|e| format!("--ca {p}: {e}"))?),
                None => None,
            };
            config.tls_client = Some(tls_client_config(ca.as_deref()).map_err(|e| e.to_string())?);
            if let Some(sip) = args.target.as_sip()
                && sip.host_port.ip().is_none()
            {
                config.tls_server_name = Some(sip.host_port.host.to_string());
            }
            // A TCP listener address for our Contact; requests come back on our connection.
            config.tcp = Some(bind);
        }
    }
    let (transports, rx) = Transports::bind(config).await.map_err(|e| e.to_string())?;
    let mut ua = Ua::new(
        UaConfig {
            contact_user: "uac".into(),
            user_agent: "trunkline-uac".into(),
            ..UaConfig::default()
        },
        IdGen::new(Box::new(SplitMix64::new(seed()))),
    );
    let listen_kind = if transport == TransportKind::Tls {
        TransportKind::Tcp
    } else {
        transport
    };
    let local = transports
        .local_addr(listen_kind)
        .ok_or("no local address")?;
    ua.set_sent_by(transport, local);
    let mut runner = UaRunner::new(ua, transports, rx);

    let media_port = 40000 + (std::process::id() % 10000) as u16 * 2 % 20000;
    let offer = sdp::build_offer(&MediaParams::g711(local.ip(), media_port, seed() >> 16));
    let from_user = args.user.clone().unwrap_or_else(|| "trunkline".into());
    let from = match &args.from {
        Some(f) => NameAddr::parse(f).map_err(|e| format!("--from: {e}"))?,
        None => NameAddr::new(
            Uri::parse(&format!("sip:{from_user}@{}", local.ip())).map_err(|e| e.to_string())?,
        ),
    };
    let credentials = match (&args.user, &args.password) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }),
        _ => None,
    };
    let start = runner.now();
    let deadline = start + args.timeout;
    let invite = runner
        .ua()
        .invite(
            InviteParams {
                target: args.target.clone(),
                to: None,
                from,
                destination: dest,
                transport,
                body: Some(("application/sdp".into(), Bytes::from(offer.to_string()))),
                credentials,
                session_expires: None,
                extra_headers: Vec::new(),
            },
            start,
        )
        .map_err(|e| e.to_string())?;
    println!("INVITE {} via {transport:?} {dest}", args.target);

    let mut dialog = None;
    let mut hangup_at: Option<Instant> = None;
    let mut outcome: Option<Result<(), String>> = None;
    let mut linger_until: Option<Instant> = None;
    let mut session_version = 1u64;
    loop {
        let now = runner.now();
        if let Some(until) = linger_until
            && now >= until
        {
            break;
        }
        if now >= deadline && outcome.is_none() {
            outcome = Some(Err("timed out".into()));
            break;
        }
        // Our own next deadline: hang-up time, overall timeout, end of linger.
        let wake = [
            outcome.is_none().then_some(deadline),
            hangup_at,
            linger_until,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(deadline);
        let woke = runner
            .next_event_or(tokio::time::sleep_until(wake.into()))
            .await;
        let now = runner.now();
        match woke {
            Wake::Closed => return Err("transport closed".into()),
            Wake::Other(()) => {
                if let (Some(h), Some(d)) = (hangup_at, &dialog)
                    && h <= now
                {
                    hangup_at = None;
                    println!("hanging up");
                    runner.ua().bye(d, now).map_err(|e| e.to_string())?;
                }
            }
            Wake::Event(ev) => match ev {
                UaEvent::Response {
                    tx,
                    method: Method::Invite,
                    response,
                    dialog: d,
                } if tx == invite => {
                    println!("INVITE → {} {}", response.status, response.reason);
                    if (200..300).contains(&response.status) {
                        if dialog.is_none() {
                            dialog = d;
                            hangup_at = Some(now + args.hold);
                        }
                    } else if response.status >= 300 && outcome.is_none() {
                        outcome = Some(Err(format!(
                            "call failed: {} {}",
                            response.status, response.reason
                        )));
                        linger_until = Some(now + Duration::from_millis(100));
                    }
                }
                UaEvent::Response {
                    method: Method::Bye,
                    response,
                    ..
                } => {
                    println!("BYE → {} {}", response.status, response.reason);
                    if outcome.is_none() {
                        outcome = Some(if (200..300).contains(&response.status) {
                            Ok(())
                        } else {
                            Err(format!("BYE answered {}", response.status))
                        });
                        linger_until = Some(now + Duration::from_millis(100));
                    }
                }
                UaEvent::Timeout { tx } if outcome.is_none() => {
                    let what = if tx == invite { "INVITE" } else { "request" };
                    outcome = Some(Err(format!("{what} timed out")));
                    linger_until = Some(now);
                }
                UaEvent::DialogRequest { tx, request, .. } => {
                    // re-INVITE/UPDATE: answer the offer (hold → recvonly etc.); others: 200.
                    let mut resp = runner.ua().make_response(tx, 200).ok_or("no transaction")?;
                    if matches!(request.method, Method::Invite | Method::Update)
                        && !request.body.is_empty()
                    {
                        session_version += 1;
                        let mut ours = MediaParams::g711(local.ip(), media_port, 1);
                        ours.session_version = session_version;
                        let answer = std::str::from_utf8(&request.body)
                            .ok()
                            .and_then(|t| SessionDescription::parse(t).ok())
                            .and_then(|o| sdp::answer(&o, &ours).ok());
                        match answer {
                            Some(a) => {
                                resp.set_body("application/sdp", Bytes::from(a.sdp.to_string()))
                            }
                            None => {
                                resp = runner.ua().make_response(tx, 488).ok_or("no transaction")?
                            }
                        }
                    }
                    println!("{} in dialog → {}", request.method, resp.status);
                    runner
                        .ua()
                        .respond(tx, resp, now)
                        .map_err(|e| e.to_string())?;
                }
                UaEvent::DialogTerminated { reason, .. } => {
                    println!("dialog ended: {reason:?}");
                    if reason == EndReason::RemoteBye && outcome.is_none() {
                        outcome = Some(Ok(()));
                        // Stay a moment to answer a retransmitted BYE.
                        linger_until = Some(now + Duration::from_millis(300));
                    } else if outcome.is_none() && reason != EndReason::LocalBye {
                        outcome = Some(Err(format!("dialog ended: {reason:?}")));
                        linger_until = Some(now);
                    }
                }
                UaEvent::SessionRefreshDue { dialog: d } => {
                    let _ = runner
                        .ua()
                        .send_in_dialog(&d, Method::Update, None, Vec::new(), now);
                }
                _ => {}
            },
        }
    }
    // Send what the last events queued (a final answer, say) before leaving.
    runner.flush().await;
    let s = runner.ua().stats();
    if s != Default::default() {
        println!("ua stats: {s:?}");
    }
    outcome.unwrap_or(Err("no outcome".into()))
}
