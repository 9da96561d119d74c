//! A dead or stalled agent is noticed and its connection is dropped within a bound (issue 17
//! item 5). Raw WebSocket servers on loopback play agents that hang, stop reading, or stop
//! answering pings; whether the client really let go of its TCP connection is read from
//! `/proc/net/tcp` (a socket nobody owns any more has inode 0 there, or is gone).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use trunkline_agent::client::CLOSE_HANDSHAKE_TIMEOUT;
use trunkline_agent::{AgentConfig, AgentEvent, AgentSession, CloseReason, ToolRegistry, connect};

const METADATA: &str = r#"{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_stall","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"ulaw_8000"}}"#;

/// A listener whose accepted sockets have a small receive buffer (a stalled reader fills fast).
fn listener() -> TcpListener {
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(16 * 1024).unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.listen(8).unwrap()
}

/// Accepts one WebSocket, reads the client's first message, sends the metadata. Returns the
/// socket and the client's address.
async fn accept(l: &TcpListener) -> (WebSocketStream<TcpStream>, SocketAddr) {
    let (tcp, peer) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(
        first
            .to_text()
            .unwrap()
            .contains("conversation_initiation_client_data")
    );
    ws.send(Message::text(METADATA)).await.unwrap();
    (ws, peer)
}

fn config(addr: SocketAddr, stall: Option<Duration>) -> AgentConfig {
    let mut c = AgentConfig::new("agent_stall").with_base_url(format!("ws://{addr}"));
    c.connect_timeout = Duration::from_secs(5);
    c.stall_timeout = stall;
    c
}

/// True while a socket with local address `local` is still owned by this process (an entry of
/// `/proc/net/tcp` with a non-zero inode).
fn socket_held(local: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = local else {
        panic!("IPv4 only")
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 9 && f[1] == want && f[9] != "0"
    })
}

/// Waits until the client released its socket; returns how long that took (`None` if it still
/// holds it after `limit`).
async fn released_within(local: SocketAddr, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !socket_held(local) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn closed_event(s: &mut AgentSession, limit: Duration) -> (CloseReason, Duration) {
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.next_event()).await {
            Ok(Some(AgentEvent::Closed(c))) => return (c.reason, t0.elapsed()),
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without Closed"),
            Err(_) => panic!("no Closed within {limit:?}"),
        }
    }
}

/// Keeps `ws` open without touching it (a hung agent process) until the test ends.
fn hold(ws: WebSocketStream<TcpStream>) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    });
}

/// An agent that hangs right after the metadata (reads nothing, sends nothing, answers no
/// ping): the conversation ends with `AgentTimeout` about `stall` later and the connection is
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_agent_times_out_and_the_socket_is_released() {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let stall = Duration::from_millis(800);
    let server = tokio::spawn(async move { accept(&l).await });
    let mut s = connect(config(addr, Some(stall)), ToolRegistry::new())
        .await
        .unwrap();
    let (ws, client) = server.await.unwrap();
    hold(ws);
    let h = s.handle();
    let pump = tokio::spawn(async move {
        while h.send_audio(vec![0xffu8; 160]).is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (reason, after) = closed_event(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&reason, CloseReason::AgentTimeout { detail } if detail.contains("nothing received")),
        "{reason:?}"
    );
    assert!(
        after >= stall && after < stall + Duration::from_millis(700),
        "noticed {after:?} after the hang (stall timeout {stall:?})"
    );
    let gone = released_within(client, CLOSE_HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(gone.is_some(), "the client still holds its socket");
    pump.await.unwrap();
}

/// An agent that answered our pings, then stops reading while it keeps talking (its own `ping`
/// events every 100 ms): frames keep arriving, but our ping is not answered → `AgentTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_that_talks_but_stops_reading_times_out_on_the_unanswered_ping() {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let stall = Duration::from_millis(800);
    let server = tokio::spawn(async move {
        let (mut ws, client) = accept(&l).await;
        // Read (and so answer pings) for a while…
        let until = Instant::now() + Duration::from_millis(600);
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), ws.next()).await
        {
        }
        let stopped = Instant::now();
        // …then only write.
        tokio::spawn(async move {
            let mut id = 0;
            loop {
                id += 1;
                let ping =
                    format!(r#"{{"type":"ping","ping_event":{{"event_id":{id},"ping_ms":5}}}}"#);
                if ws.send(Message::text(ping)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        (client, stopped)
    });
    let mut s = connect(config(addr, Some(stall)), ToolRegistry::new())
        .await
        .unwrap();
    let (reason, _) = closed_event(&mut s, Duration::from_secs(5)).await;
    let (client, stopped) = server.await.unwrap();
    let after = stopped.elapsed();
    assert!(
        matches!(&reason, CloseReason::AgentTimeout { detail } if detail.contains("no pong")),
        "{reason:?}"
    );
    assert!(
        after < stall + Duration::from_millis(900),
        "noticed {after:?} after the agent stopped reading"
    );
    let gone = released_within(client, CLOSE_HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(gone.is_some(), "the client still holds its socket");
}

/// Fills the socket of an agent that does not read, with messages far larger than the kernel
/// buffers, so that the writer blocks.
fn flood(s: &AgentSession) {
    let big = "x".repeat(1 << 20);
    // 16 MB: more than tungstenite's 4 MB write buffer plus a 4 MB socket send buffer.
    for _ in 0..16 {
        if s.send_user_message(big.clone()).is_err() {
            return; // already timed out
        }
    }
}

/// An agent that never answers a ping (so "nothing received" cannot be the rule) but keeps
/// sending events while it reads nothing: our writes block, and that is the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_writes_to_an_agent_that_does_not_read_time_out() {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let stall = Duration::from_millis(1000);
    let server = tokio::spawn(async move {
        let (mut ws, client) = accept(&l).await;
        tokio::spawn(async move {
            let mut id = 0;
            loop {
                id += 1;
                let ping =
                    format!(r#"{{"type":"ping","ping_event":{{"event_id":{id},"ping_ms":5}}}}"#);
                // Never reading, it never queues a pong answer either.
                if ws.send(Message::text(ping)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        client
    });
    let mut s = connect(config(addr, Some(stall)), ToolRegistry::new())
        .await
        .unwrap();
    let client = server.await.unwrap();
    flood(&s);
    let (reason, after) = closed_event(&mut s, Duration::from_secs(6)).await;
    assert!(
        matches!(&reason, CloseReason::AgentTimeout { detail } if detail.contains("blocked")),
        "{reason:?} after {after:?}"
    );
    let gone = released_within(client, CLOSE_HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
    assert!(gone.is_some(), "the client still holds its socket");
}

/// Issue 17: after hang-up the socket of an agent that stopped reading stayed open for minutes
/// (the writer was blocked in a flush and never saw the close). `close()` is now bounded: the
/// connection is dropped within the close handshake timeout, even with stall detection off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_writes_are_blocked_drops_the_connection_within_the_handshake_timeout() {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move { accept(&l).await });
    let mut s = connect(config(addr, None), ToolRegistry::new())
        .await
        .unwrap();
    let (ws, client) = server.await.unwrap();
    hold(ws);
    flood(&s);
    // Let the writer fill every buffer and block.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(socket_held(client));
    s.close();
    let gone = released_within(client, CLOSE_HANDSHAKE_TIMEOUT + Duration::from_secs(2)).await;
    assert!(
        gone.is_some_and(|d| d < CLOSE_HANDSHAKE_TIMEOUT + Duration::from_millis(700)),
        "socket released after {gone:?}"
    );
    let (reason, _) = closed_event(&mut s, Duration::from_secs(1)).await;
    assert_eq!(reason, CloseReason::ClientClosed);
}
