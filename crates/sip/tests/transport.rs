//! The tokio transport layer on loopback: UDP, TCP framing (split and coalesced writes, keep-alives,
//! unframeable input), connection reuse, idle close, TLS with an rcgen certificate, and the examples
//! completing a call over TLS.
#![allow(clippy::disallowed_methods)] // real sockets and processes: this is the I/O layer
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;
use trunkline_sip::transport::{
    Incoming, Transmit, TransportConfig, TransportKind, Transports, tls_client_config,
    tls_server_config_from_pem,
};

const OPTIONS: &str = "OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn recv(rx: &mut mpsc::Receiver<Incoming>) -> Incoming {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message within 5 s")
        .expect("channel open")
}

#[tokio::test]
async fn udp_datagrams_arrive_with_their_source_and_sent_by_uses_the_external_address() {
    let config = TransportConfig {
        udp: Some(loopback()),
        external_addr: Some("203.0.113.7".parse().unwrap()),
        ..TransportConfig::default()
    };
    let (t, mut rx) = Transports::bind(config).await.unwrap();
    let local = t.local_addr(TransportKind::Udp).unwrap();
    assert_eq!(
        t.sent_by(TransportKind::Udp).unwrap().to_string(),
        format!("203.0.113.7:{}", local.port())
    );
    let peer = UdpSocket::bind(loopback()).await.unwrap();
    peer.send_to(b"hello", local).await.unwrap();
    let m = recv(&mut rx).await;
    assert_eq!(
        (&m.data[..], m.source, m.transport),
        (
            &b"hello"[..],
            peer.local_addr().unwrap(),
            TransportKind::Udp
        )
    );
    t.send(Transmit {
        transport: TransportKind::Udp,
        destination: peer.local_addr().unwrap(),
        payload: Bytes::from_static(b"back"),
    })
    .await
    .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"back"[..], local));
}

#[tokio::test]
async fn tcp_stream_is_framed_by_content_length_and_keepalives_are_answered() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let server = t.local_addr(TransportKind::Tcp).unwrap();
    let mut s = TcpStream::connect(server).await.unwrap();
    let me = s.local_addr().unwrap();
    // One message in three pieces.
    let bytes = OPTIONS.as_bytes();
    for chunk in [
        &bytes[..10],
        &bytes[10..bytes.len() - 2],
        &bytes[bytes.len() - 2..],
    ] {
        s.write_all(chunk).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = recv(&mut rx).await;
    assert_eq!(m.data, Bytes::from(OPTIONS));
    assert_eq!((m.source, m.transport), (me, TransportKind::Tcp));
    // Two messages and a keep-alive in one write.
    s.write_all(format!("{OPTIONS}\r\n\r\n{OPTIONS}").as_bytes())
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await.data, Bytes::from(OPTIONS));
    assert_eq!(recv(&mut rx).await.data, Bytes::from(OPTIONS));
    let mut pong = [0u8; 2];
    timeout(Duration::from_secs(5), s.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n", "RFC 5626 CRLF pong");
    // A response to the client's address goes over the same connection.
    t.send(Transmit {
        transport: TransportKind::Tcp,
        destination: me,
        payload: Bytes::from_static(b"SIP/2.0 200 OK\r\n"),
    })
    .await
    .unwrap();
    let mut buf = [0u8; 16];
    timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"SIP/2.0 200 OK\r\n");
    assert_eq!(t.connection_count(), 1);
}

#[tokio::test]
async fn tcp_message_without_content_length_closes_the_connection() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let mut s = TcpStream::connect(t.local_addr(TransportKind::Tcp).unwrap())
        .await
        .unwrap();
    s.write_all(OPTIONS.replace("Content-Length: 4\r\n", "").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(rx.try_recv().is_err(), "nothing passed up");
    assert_eq!(t.stats().framing_errors.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let config = TransportConfig {
        tcp: Some(loopback()),
        idle_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let (t, _rx) = Transports::bind(config).await.unwrap();
    let mut s = TcpStream::connect(t.local_addr(TransportKind::Tcp).unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(t.stats().idle_closes.load(Ordering::Relaxed), 1);
}

fn self_signed() -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

#[tokio::test]
async fn tls_round_trip_with_an_rcgen_certificate_and_rejection_of_an_unknown_ca() {
    let (cert, key) = self_signed();
    let server_config = TransportConfig {
        tls: Some(loopback()),
        tls_server: Some(tls_server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
        ..TransportConfig::default()
    };
    let (server, mut srx) = Transports::bind(server_config).await.unwrap();
    let addr = server.local_addr(TransportKind::Tls).unwrap();

    let client_config = TransportConfig {
        tcp: Some(loopback()),
        tls_client: Some(tls_client_config(Some(cert.as_bytes())).unwrap()),
        ..TransportConfig::default()
    };
    let (client, mut crx) = Transports::bind(client_config).await.unwrap();
    client
        .send(Transmit {
            transport: TransportKind::Tls,
            destination: addr,
            payload: Bytes::from(OPTIONS),
        })
        .await
        .unwrap();
    let m = recv(&mut srx).await;
    assert_eq!(
        (m.data.clone(), m.transport),
        (Bytes::from(OPTIONS), TransportKind::Tls)
    );
    server
        .send(Transmit {
            transport: TransportKind::Tls,
            destination: m.source,
            payload: Bytes::from(OPTIONS),
        })
        .await
        .unwrap();
    let back = recv(&mut crx).await;
    assert_eq!((back.data, back.source), (Bytes::from(OPTIONS), addr));

    // A client trusting only the webpki roots refuses the self-signed server.
    let strict = TransportConfig {
        tls_client: Some(tls_client_config(None).unwrap()),
        ..TransportConfig::default()
    };
    let (strict, _) = Transports::bind(strict).await.unwrap();
    let r = strict
        .send(Transmit {
            transport: TransportKind::Tls,
            destination: addr,
            payload: Bytes::from(OPTIONS),
        })
        .await;
    assert!(r.is_err(), "untrusted certificate must fail the handshake");
    assert!(
        timeout(Duration::from_millis(300), srx.recv())
            .await
            .is_err(),
        "nothing delivered"
    );
}

fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test exe path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "trunkline-sip", "--examples"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build --examples").success());
        profile_dir.join("examples")
    })
}

#[test]
fn example_uac_calls_example_uas_over_tls() {
    let dir = std::env::temp_dir().join(format!("trunkline-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut uas = Command::new(examples_dir().join("uas"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--transport",
            "tls",
        ])
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(examples_dir().join("uac"))
        .args([
            "--target",
            &format!("sip:echo@127.0.0.1:{port}"),
            "--transport",
            "tls",
            "--hold",
            "0.2",
            "--timeout",
            "15",
        ])
        .arg("--ca")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    let _ = uas.kill();
    let _ = uas.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("INVITE → 200 OK") && stdout.contains("BYE → 200 OK"),
        "{stdout}"
    );
}

/// Two UAs driven by `UaRunner` over real UDP sockets: INVITE → 200 → ACK → BYE → 200.
#[tokio::test]
async fn ua_runners_complete_a_call_over_udp_loopback() {
    use trunkline_sip::message::{NameAddr, Uri};
    use trunkline_sip::transaction::IdGen;
    use trunkline_sip::transport::UaRunner;
    use trunkline_sip::ua::{EndReason, InviteParams, Ua, UaConfig, UaEvent};

    async fn runner(seed: u64) -> UaRunner {
        let (t, rx) = Transports::bind(TransportConfig {
            udp: Some(loopback()),
            ..TransportConfig::default()
        })
        .await
        .unwrap();
        let mut ua = Ua::new(UaConfig::default(), IdGen::seeded(seed));
        ua.set_sent_by(
            TransportKind::Udp,
            t.local_addr(TransportKind::Udp).unwrap(),
        );
        UaRunner::new(ua, t, rx)
    }
    let mut uas = runner(1).await;
    let mut uac = runner(2).await;
    let uas_addr = uas.transports().local_addr(TransportKind::Udp).unwrap();
    let server = tokio::spawn(async move {
        while let Some(ev) = uas.next_event().await {
            match ev {
                UaEvent::IncomingCall { tx, .. } => {
                    let ok = uas.ua().make_response(tx, 200).unwrap();
                    let now = uas.now();
                    uas.ua().respond(tx, ok, now).unwrap();
                }
                UaEvent::DialogTerminated { reason, .. } => return reason,
                _ => {}
            }
        }
        panic!("uas transports closed");
    });
    let now = uac.now();
    let invite = uac
        .ua()
        .invite(
            InviteParams {
                target: Uri::parse(&format!("sip:svc@{uas_addr}")).unwrap(),
                to: None,
                from: NameAddr::parse("<sip:me@127.0.0.1>").unwrap(),
                destination: uas_addr,
                transport: TransportKind::Udp,
                body: None,
                credentials: None,
                session_expires: None,
                extra_headers: Vec::new(),
            },
            now,
        )
        .unwrap();
    let call = async {
        loop {
            match uac.next_event().await.unwrap() {
                UaEvent::Response {
                    tx,
                    response,
                    dialog: Some(d),
                    ..
                } if tx == invite && response.status == 200 => {
                    let now = uac.now();
                    uac.ua().bye(&d, now).unwrap();
                }
                UaEvent::Response {
                    response,
                    method: trunkline_sip::message::Method::Bye,
                    ..
                } => return response.status,
                _ => {}
            }
        }
    };
    assert_eq!(timeout(Duration::from_secs(10), call).await.unwrap(), 200);
    assert_eq!(
        timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap(),
        EndReason::RemoteBye
    );
}

// ---------------------------------------------------------------------------------------------
// Defences of accepted connections (issue 17 items 2 and 12).

/// True if the peer closed `s` (EOF or reset) within `d`; bytes read meanwhile are discarded.
async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// `OPTIONS` with a distinct Call-ID, to tell messages apart.
fn options(n: u32) -> String {
    OPTIONS.replace("Call-ID: c1", &format!("Call-ID: c{n}"))
}

#[tokio::test]
async fn connections_over_the_total_cap_are_closed_at_accept_and_places_are_given_back() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        max_connections: 3,
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let addr = t.local_addr(TransportKind::Tcp).unwrap();
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(TcpStream::connect(addr).await.unwrap());
    }
    for n in 0..2 {
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut over, Duration::from_secs(2)).await,
            "connection {} over the cap closed",
            n + 4
        );
    }
    assert_eq!(t.stats().refused_total_cap.load(Ordering::Relaxed), 2);
    // The ones under the cap work.
    kept[2].write_all(options(3).as_bytes()).await.unwrap();
    assert!(recv(&mut rx).await.data.starts_with(b"OPTIONS"));
    // A closed connection gives its place back.
    drop(kept.pop());
    timeout(Duration::from_secs(2), async {
        while t.accepted_count() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the place is given back");
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(options(4).as_bytes()).await.unwrap();
    assert!(recv(&mut rx).await.data.starts_with(b"OPTIONS"));
    assert_eq!(t.stats().refused_total_cap.load(Ordering::Relaxed), 2);
    drop(kept);
    drop(again);
    timeout(Duration::from_secs(3), async {
        while t.accepted_count() != 0 || t.connection_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every connection and place released after the peers closed");
}

#[tokio::test]
async fn one_source_cannot_take_more_than_its_share() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        max_connections_per_source: 2,
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let addr = t.local_addr(TransportKind::Tcp).unwrap();
    let _a = connect_from("127.0.0.1", addr).await;
    let _b = connect_from("127.0.0.1", addr).await;
    let mut c = connect_from("127.0.0.1", addr).await;
    assert!(closed_within(&mut c, Duration::from_secs(2)).await);
    assert_eq!(t.stats().refused_per_source_cap.load(Ordering::Relaxed), 1);
    // Another source still gets in.
    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(options(1).as_bytes()).await.unwrap();
    let m = recv(&mut rx).await;
    assert_eq!(m.source.ip().to_string(), "127.0.0.2");
    assert_eq!(t.stats().refused_total_cap.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn sources_outside_the_accept_filter_are_closed_at_accept() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        accept_filter: Some(trunkline_sip::transport::AcceptFilter::new(|ip| {
            ip.to_string() == "127.0.0.2"
        })),
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let addr = t.local_addr(TransportKind::Tcp).unwrap();
    let mut outsider = connect_from("127.0.0.1", addr).await;
    let _ = outsider.write_all(options(1).as_bytes()).await;
    assert!(closed_within(&mut outsider, Duration::from_secs(2)).await);
    assert_eq!(t.stats().refused_source.load(Ordering::Relaxed), 1);
    let mut trunk = connect_from("127.0.0.2", addr).await;
    trunk.write_all(options(2).as_bytes()).await.unwrap();
    let m = recv(&mut rx).await;
    assert!(
        std::str::from_utf8(&m.data)
            .unwrap()
            .contains("Call-ID: c2")
    );
    assert!(rx.try_recv().is_err(), "nothing from the outsider");
}

#[tokio::test]
async fn a_connection_without_a_complete_message_is_closed_after_the_first_message_timeout() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        first_message_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let addr = t.local_addr(TransportKind::Tcp).unwrap();
    // Trickles a header and keep-alives, never a whole message: keeps sending, yet closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let t0 = std::time::Instant::now();
    slow.write_all(b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"X-Pad: y\r\n").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    assert!(closed_within(&mut slow, Duration::from_secs(2)).await);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(t.stats().first_message_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(t.stats().idle_closes.load(Ordering::Relaxed), 0);

    // One that sent a message is established: the short deadline no longer applies.
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(options(1).as_bytes()).await.unwrap();
    recv(&mut rx).await;
    assert!(!closed_within(&mut good, Duration::from_millis(800)).await);
    good.write_all(options(2).as_bytes()).await.unwrap();
    assert!(
        std::str::from_utf8(&recv(&mut rx).await.data)
            .unwrap()
            .contains("Call-ID: c2")
    );
    assert_eq!(t.stats().first_message_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_oversized_request_gets_413_then_the_close_and_other_oversized_input_just_the_close() {
    let (t, mut rx) = Transports::bind(TransportConfig {
        tcp: Some(loopback()),
        ..TransportConfig::default()
    })
    .await
    .unwrap();
    let addr = t.local_addr(TransportKind::Tcp).unwrap();
    let read_all = |mut s: TcpStream| async move {
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("closed within 5 s");
        String::from_utf8_lossy(&out).into_owned()
    };

    // A body over the 64 KiB limit: 413 with the request's Via, Call-ID and CSeq, then the close,
    // while the peer is still sending its body.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = OPTIONS.replace(
        "Content-Length: 4\r\n\r\nbody",
        "Content-Length: 100000\r\n\r\n",
    );
    s.write_all(big.as_bytes()).await.unwrap();
    let _ = s.write_all(&[b'x'; 8192]).await;
    let got = read_all(s).await;
    assert!(
        got.starts_with("SIP/2.0 413 Request Entity Too Large\r\n"),
        "{got:?}"
    );
    assert!(
        got.contains("Via: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1")
            && got.contains("Call-ID: c1")
            && got.contains("CSeq: 1 OPTIONS")
            && got.contains("Content-Length: 0"),
        "{got}"
    );

    // A header section over the limit: 513, then the close.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let huge = OPTIONS.replace(
        "Content-Length: 4\r\n",
        &format!("X-Pad: {}\r\nContent-Length: 4\r\n", "p".repeat(20_000)),
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let got = read_all(s).await;
    assert!(
        got.starts_with("SIP/2.0 513 Message Too Large\r\n"),
        "{got:?}"
    );

    // An oversized response, or a head without a Via: closed without a word.
    for text in [
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bK1\r\nFrom: <sip:b@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c9\r\nCSeq: 1 OPTIONS\r\nContent-Length: 100000\r\n\r\n".to_owned(),
        "OPTIONS sip:a@h SIP/2.0\r\nCSeq: 1 OPTIONS\r\nContent-Length: 100000\r\n\r\n".to_owned(),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(text.as_bytes()).await.unwrap();
        let got = read_all(s).await;
        assert_eq!(got, "", "no answer to {text:?}");
    }
    assert_eq!(t.stats().oversized_rejects.load(Ordering::Relaxed), 2);
    assert_eq!(t.stats().framing_errors.load(Ordering::Relaxed), 4);
    assert!(rx.try_recv().is_err(), "nothing passed up");
}
