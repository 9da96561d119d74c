//! The agent client's TLS stream (`trunkline_agent::tls::TlsStream`) against OpenSSL's
//! `s_server`: a TLS implementation that shares no code with rustls. `-rev` echoes every line
//! reversed; ours must come back whole, in order, over TLS 1.3 and 1.2, and our shutdown must end
//! the connection (`s_server -naccept 1` then exits with status 0; it does so without a
//! `close_notify` too, which `agent_tls_stream` checks against rustls instead).
//! `.ci/run` installs `openssl`; without it the tests print SKIPPED (and fail under `CI`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::process::Stdio;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use trunkline_agent::tls::TlsStream;
use trunkline_emulators::agent::TestIdentity;

fn have_openssl() -> bool {
    let found = std::process::Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let why = "`openssl` is not on PATH (.ci/run installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

async fn echo_through_openssl(version_flag: &str) {
    if !have_openssl() {
        return;
    }
    let id = TestIdentity::localhost().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "trunkline-openssl-{}-{}",
        std::process::id(),
        version_flag.trim_start_matches('-')
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), id.cert_pem()).unwrap();
    std::fs::write(dir.join("key.pem"), id.key_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .args(["-rev", "-naccept", "1", "-quiet", version_flag])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl (installed by .ci/run)");
    let mut tcp = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            tcp = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tcp = tcp.expect("s_server listening");
    let name = ServerName::try_from("localhost").unwrap().to_owned();
    let client = TlsStream::connect(id.client_config().unwrap(), name, tcp)
        .await
        .unwrap();
    let (rd, mut wr) = tokio::io::split(client);

    // 150 lines of 1 to ~3,000 bytes (~220 KB), written while the echo is read.
    let lines: Vec<String> = (0..150u32)
        .map(|i| {
            let len = 1 + (i as usize * 997) % 3000;
            (0..len)
                .map(|j| char::from(b'a' + ((i as usize + j * 7) % 26) as u8))
                .collect()
        })
        .collect();
    let writer = async {
        for l in &lines {
            wr.write_all(l.as_bytes()).await.unwrap();
            wr.write_all(b"\n").await.unwrap();
        }
        wr.flush().await.unwrap();
        wr
    };
    let reader = async {
        let mut rd = BufReader::new(rd);
        let mut got = Vec::new();
        for _ in 0..lines.len() {
            let mut l = String::new();
            assert!(rd.read_line(&mut l).await.unwrap() > 0, "echo ended early");
            got.push(l.trim_end_matches('\n').to_owned());
        }
        (rd, got)
    };
    let (wr, (rd, got)) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the echo within 30 s");
    for (i, (sent, back)) in lines.iter().zip(&got).enumerate() {
        let reversed: String = sent.chars().rev().collect();
        assert!(
            *back == reversed,
            "line {i} ({} bytes) came back wrong",
            sent.len()
        );
    }
    let mut client = rd.into_inner().unsplit(wr);
    assert_eq!(client.buffered(), 0, "buffers kept between messages");

    // Our shutdown: s_server closes the connection and, after its one accept, exits cleanly.
    client.shutdown().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("s_server exits after our close_notify")
        .unwrap();
    let mut err = String::new();
    if let Some(mut e) = server.stderr.take() {
        use tokio::io::AsyncReadExt;
        e.read_to_string(&mut err).await.unwrap();
    }
    assert!(out.success(), "s_server: {out:?} {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn lines_echo_through_openssl_over_tls13() {
    echo_through_openssl("-tls1_3").await;
}

#[tokio::test]
async fn lines_echo_through_openssl_over_tls12() {
    echo_through_openssl("-tls1_2").await;
}
