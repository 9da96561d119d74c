//! A SIP UAS that answers every call: 100/180/200 with an SDP answer, holds until BYE, and answers
//! re-INVITE (hold/unhold), UPDATE, INFO, OPTIONS, REFER, BYE and CANCEL.
//!
//! ```text
//! cargo run -p trunkline-sip --example uas -- --listen 127.0.0.1:5060 [--transport udp|tcp|tls]...
//!     [--cert cert.pem --key key.pem] [--ring-ms 0] [--external-addr IP] [--stats-every-s 0]
//! ```
//! `--transport` may be repeated (default udp). `--ring-ms` delays the 200 after the 180 (so a
//! caller can CANCEL during ringing). Runs until killed.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trunkline_sip::message::{Method, Request};
use trunkline_sip::sdp::{self, MediaParams, SessionDescription};
use trunkline_sip::transaction::{IdGen, SplitMix64, TransportKind};
use trunkline_sip::transport::{
    TransportConfig, Transports, UaRunner, Wake, tls_server_config_from_files,
};
use trunkline_sip::ua::{Ua, UaConfig, UaEvent};

struct Args {
    listen: SocketAddr,
    transports: Vec<TransportKind>,
    cert: Option<String>,
    key: Option<String>,
    ring: Duration,
    external: Option<IpAddr>,
    stats_every: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        listen: "127.0.0.1:5060".parse().map_err(|e| format!("{e}"))?,
        transports: Vec::new(),
        cert: None,
        key: None,
        ring: Duration::ZERO,
        external: None,
        stats_every: None,
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => a.listen = val()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--transport" => a.transports.push(match val()?.as_str() {
                "udp" => TransportKind::Udp,
                "tcp" => TransportKind::Tcp,
                "tls" => TransportKind::Tls,
                other => return Err(format!("unknown transport {other}")),
            }),
            "--cert" => a.cert = Some(val()?),
            "--key" => a.key = Some(val()?),
            "--ring-ms" => a.ring = Duration::from_millis(val()?.parse().map_err(|e| format!("--ring-ms: {e}"))?),
            "--external-addr" => a.external = Some(val()?.parse().map_err(|e| format!("--external-addr: {e}"))?),
            "--stats-every-s" => {
                let s: u64 = val()?.parse().map_err(|e| format!("--stats-every-s: {e}"))?;
                a.stats_every = (s > 0).then(|| Duration::from_secs(s));
            }
            "-h" | "--help" => return Err("usage: uas --listen ADDR [--transport udp|tcp|tls]... [--cert PEM --key PEM] [--ring-ms N] [--external-addr IP]".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.transports.is_empty() {
        a.transports.push(TransportKind::Udp);
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

struct Uas {
    media_ip: IpAddr,
    ring: Duration,
    answers: VecDeque<(Instant, trunkline_sip::transaction::TxId)>,
    calls: u64,
}

impl Uas {
    fn sdp_answer(&mut self, offer: &Request) -> Result<Option<(String, Bytes)>, u16> {
        self.calls += 1;
        let port = 20000 + ((self.calls % 20000) as u16) * 2;
        let ours = MediaParams::g711(self.media_ip, port, self.calls);
        if offer.body.is_empty() {
            // Late offer: put ours in the 200 (RFC 3261 §13.2.1).
            let sd = sdp::build_offer(&ours);
            return Ok(Some((
                "application/sdp".into(),
                Bytes::from(sd.to_string()),
            )));
        }
        let text = std::str::from_utf8(&offer.body).map_err(|_| 400u16)?;
        let offer = SessionDescription::parse(text).map_err(|_| 488u16)?;
        let answer = sdp::answer(&offer, &ours).map_err(|_| 488u16)?;
        Ok(Some((
            "application/sdp".into(),
            Bytes::from(answer.sdp.to_string()),
        )))
    }

    fn answer_invite(&mut self, ua: &mut Ua, tx: trunkline_sip::transaction::TxId, now: Instant) {
        let Some(request) = ua.endpoint().request(tx).cloned() else {
            return;
        };
        let resp = match self.sdp_answer(&request) {
            Ok(body) => {
                let Some(mut r) = ua.make_response(tx, 200) else {
                    return;
                };
                if let Some((ct, b)) = body {
                    r.set_body(&ct, b);
                }
                // RFC 4028: echo the negotiated session timer; the UAC refreshes when it can.
                if let Ok(Some((se, refresher))) = trunkline_sip::dialog::negotiate_session_expires(
                    &request,
                    Duration::from_secs(90),
                ) {
                    r.push_header(
                        "Session-Expires",
                        format!("{};refresher={refresher}", se.as_secs()),
                    );
                    if refresher == "uac" {
                        r.push_header("Require", "timer");
                    }
                }
                r
            }
            Err(status) => match ua.make_response(tx, status) {
                Some(r) => r,
                None => return,
            },
        };
        if let Err(e) = ua.respond(tx, resp, now) {
            tracing::debug!(error = %e, "respond");
        }
    }

    fn on_event(&mut self, ua: &mut Ua, ev: UaEvent, now: Instant) {
        match ev {
            UaEvent::IncomingCall { tx, .. } => {
                if let Some(r) = ua.make_response(tx, 180) {
                    let _ = ua.respond(tx, r, now);
                }
                if self.ring.is_zero() {
                    self.answer_invite(ua, tx, now);
                } else {
                    self.answers.push_back((now + self.ring, tx));
                }
            }
            UaEvent::CallCancelled { tx } => self.answers.retain(|(_, t)| *t != tx),
            UaEvent::DialogRequest {
                tx,
                request,
                dialog,
            } => match request.method {
                Method::Invite => self.answer_invite(ua, tx, now),
                Method::Update => self.answer_invite(ua, tx, now),
                Method::Refer => {
                    if let Some(r) = ua.make_response(tx, 202) {
                        let _ = ua.respond(tx, r, now);
                    }
                    // We do not place the referred call; report a final 503 (RFC 3515 §2.4.5).
                    if let Some(d) = ua.dialog_mut(&dialog) {
                        let notify = d.new_refer_notify(503, "Service Unavailable", true);
                        let _ = ua.send_built_in_dialog(&dialog, notify, now);
                    }
                }
                _ => {
                    if let Some(r) = ua.make_response(tx, 200) {
                        let _ = ua.respond(tx, r, now);
                    }
                }
            },
            UaEvent::IncomingRequest { tx, .. } => {
                if let Some(r) = ua.make_response(tx, 200) {
                    let _ = ua.respond(tx, r, now);
                }
            }
            UaEvent::SessionRefreshDue { dialog } => {
                let _ = ua.send_in_dialog(&dialog, Method::Update, None, Vec::new(), now);
            }
            _ => {}
        }
    }
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
    let mut config = TransportConfig {
        external_addr: args.external,
        ..TransportConfig::default()
    };
    for t in &args.transports {
        match t {
            TransportKind::Udp => config.udp = Some(args.listen),
            TransportKind::Tcp => config.tcp = Some(args.listen),
            TransportKind::Tls => {
                let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
                    eprintln!("--transport tls needs --cert and --key");
                    return ExitCode::from(2);
                };
                match tls_server_config_from_files(cert.as_ref(), key.as_ref()) {
                    Ok(c) => config.tls_server = Some(c),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                }
                config.tls = Some(args.listen);
            }
        }
    }
    let (transports, rx) = match Transports::bind(config).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("bind {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let ua_config = UaConfig {
        contact_user: "uas".into(),
        user_agent: "trunkline-uas".into(),
        ..UaConfig::default()
    };
    let mut ua = Ua::new(ua_config, IdGen::new(Box::new(SplitMix64::new(seed()))));
    for t in &args.transports {
        if let Some(hp) = transports.sent_by(*t)
            && let (Some(ip), Some(port)) = (hp.ip(), hp.port)
        {
            ua.set_sent_by(*t, SocketAddr::new(ip, port));
        }
        if let Some(addr) = transports.local_addr(*t) {
            println!("listening on {t:?} {addr}");
        }
    }
    let mut runner = UaRunner::new(ua, transports, rx);
    let mut uas = Uas {
        media_ip: args.external.unwrap_or(args.listen.ip()),
        ring: args.ring,
        answers: VecDeque::new(),
        calls: 0,
    };
    let far = Duration::from_secs(3600);
    let mut next_stats = args.stats_every.map(|d| runner.now() + d);
    loop {
        // Our own deadlines: the next delayed answer and the next stats line.
        let mut deadline = runner.now() + far;
        if let Some((at, _)) = uas.answers.front() {
            deadline = deadline.min(*at);
        }
        if let Some(at) = next_stats {
            deadline = deadline.min(at);
        }
        let wake = runner
            .next_event_or(tokio::time::sleep_until(deadline.into()))
            .await;
        let now = runner.now();
        match wake {
            Wake::Event(ev) => uas.on_event(runner.ua(), ev, now),
            Wake::Other(()) => {
                while let Some((at, tx)) = uas.answers.front().copied() {
                    if at > now {
                        break;
                    }
                    uas.answers.pop_front();
                    uas.answer_invite(runner.ua(), tx, now);
                }
                if let (Some(at), Some(every)) = (next_stats, args.stats_every)
                    && at <= now
                {
                    let ua = runner.ua();
                    println!(
                        "ua {:?} tx {:?} dialogs {}",
                        ua.stats(),
                        ua.endpoint().stats(),
                        ua.dialog_count()
                    );
                    next_stats = Some(now + every);
                }
            }
            Wake::Closed => break,
        }
    }
    ExitCode::SUCCESS
}
