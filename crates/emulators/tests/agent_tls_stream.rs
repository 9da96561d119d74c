//! The agent client's TLS stream (`trunkline_agent::tls::TlsStream`, rustls' unbuffered API)
//! against a rustls server driven by tokio-rustls (the buffered API, an independent driver):
//! data both ways across records cut by reads, TLS 1.3 and 1.2, `close_notify` both ways, a TCP
//! end without it, and no buffer held between messages.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use trunkline_agent::tls::TlsStream;
use trunkline_emulators::agent::TestIdentity;

fn server_config(id: &TestIdentity, tls12_only: bool) -> Arc<rustls::ServerConfig> {
    if !tls12_only {
        return id.server_config().unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(id.key_pem().as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert_der().clone()], key)
        .unwrap();
    Arc::new(cfg)
}

/// A TLS server on loopback running `serve` on its one connection, and our client connected.
async fn pair<F, Fut>(tls12_only: bool, serve: F) -> (TlsStream, tokio::task::JoinHandle<()>)
where
    F: FnOnce(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let id = TestIdentity::localhost().unwrap();
    let acceptor = TlsAcceptor::from(server_config(&id, tls12_only));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        serve(tls).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap().to_owned();
    let client = TlsStream::connect(id.client_config().unwrap(), name, tcp)
        .await
        .unwrap();
    (client, server)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// 300 KB each way: the client writes pieces of 1 B to 40 KB (records of up to 16 KiB, some
/// encrypted on the heap), the server echoes in 16 KiB records which 8 KiB socket reads cut,
/// and the client reads them 1 KiB at a time, as the WebSocket does. Nothing lost or
/// reordered, and no buffer left once everything is read.
async fn echo_round_trip(tls12_only: bool) {
    let (mut client, server) = pair(tls12_only, |mut tls| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await.unwrap();
        }
        tls.shutdown().await.unwrap();
    })
    .await;
    let data = pattern(300_000, 7);
    let (mut rd, mut wr) = tokio::io::split(&mut client);
    let writer = async {
        let mut off = 0;
        let mut size = 1;
        while off < data.len() {
            let end = (off + size).min(data.len());
            wr.write_all(&data[off..end]).await.unwrap();
            off = end;
            size = (size * 3 + 17) % 40_000 + 1;
        }
        wr.flush().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::with_capacity(data.len());
        let mut buf = [0u8; 1024];
        while got.len() < data.len() {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert!(got == data, "echoed bytes differ");
    assert_eq!(client.buffered(), 0, "buffers kept between messages");

    // Our close_notify ends the server's reads cleanly (tokio-rustls reports a TCP end without
    // it as an error); its close_notify then reads as end of stream here.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    server.await.unwrap();
}

#[tokio::test]
async fn data_crosses_both_ways_over_tls13() {
    echo_round_trip(false).await;
}

#[tokio::test]
async fn data_crosses_both_ways_over_tls12() {
    echo_round_trip(true).await;
}

#[tokio::test]
async fn close_notify_from_the_server_reads_as_end_of_stream() {
    let (mut client, server) = pair(false, |mut tls| async move {
        tls.write_all(b"goodbye").await.unwrap();
        tls.shutdown().await.unwrap();
    })
    .await;
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"goodbye");
    server.await.unwrap();
}

#[tokio::test]
async fn a_tcp_end_without_close_notify_is_an_error_after_the_data() {
    let (mut client, server) = pair(false, |mut tls| async move {
        tls.write_all(b"cut").await.unwrap();
        tls.flush().await.unwrap();
        let (tcp, _conn) = tls.into_inner();
        drop(tcp);
    })
    .await;
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    let err = loop {
        match client.read(&mut buf).await {
            Ok(0) => panic!("a clean end of stream without close_notify"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(got, b"cut");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    server.await.unwrap();
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let id = TestIdentity::localhost().unwrap();
    let other = TestIdentity::localhost().unwrap();
    let acceptor = TlsAcceptor::from(id.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap_err().to_string()
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap().to_owned();
    let err = TlsStream::connect(other.client_config().unwrap(), name, tcp)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    // The server learns why: our alert, not a bare TCP end.
    let server_err = server.await.unwrap();
    assert!(server_err.contains("received fatal alert"), "{server_err}");
}
