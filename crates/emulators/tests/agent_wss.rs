//! The client reaches the emulator over `wss://` (and the signed-URL endpoint over `https://`)
//! with an rcgen test certificate trusted through a custom root store; without that root the
//! handshake is refused.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use trunkline_agent::{AgentConfig, AgentEvent, CloseReason, ConnectError, ToolRegistry, connect};
use trunkline_emulators::agent::{AgentEmulator, AgentEmulatorConfig, TestIdentity};

#[tokio::test]
async fn client_connects_over_wss_with_a_test_certificate() {
    let id = TestIdentity::localhost().unwrap();
    let emu = AgentEmulator::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        AgentEmulatorConfig {
            api_key: Some("sk_tls".into()),
            require_signed_url: true,
            speed: 50.0,
            ..Default::default()
        },
        &id,
    )
    .await
    .unwrap();
    assert!(emu.ws_base_url().starts_with("wss://localhost:"));

    let mut cfg = AgentConfig::new("agent_tls").with_base_url(emu.ws_base_url());
    cfg.api_key = Some("sk_tls".into()); // signed URL fetched over https
    cfg.tls_roots = Some(id.root_store().unwrap());
    cfg.connect_timeout = Duration::from_secs(5);
    let mut s = connect(cfg.clone(), ToolRegistry::new()).await.unwrap();
    assert!(matches!(
        s.next_event().await,
        Some(AgentEvent::Metadata { .. })
    ));
    // Audio flows over TLS too.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.next_event()).await {
            Ok(Some(AgentEvent::Audio { audio, .. })) => {
                assert!(!audio.is_empty());
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no audio over wss: {other:?}"),
        }
    }
    s.close();
    while let Some(ev) = s.next_event().await {
        if let AgentEvent::Closed(c) = ev {
            assert_eq!(c.reason, CloseReason::ClientClosed);
        }
    }

    // Without the test root (webpki roots only) the certificate is not trusted.
    let mut untrusted = cfg.clone();
    untrusted.tls_roots = None;
    untrusted.api_key = None;
    untrusted.signed_url = Some(format!(
        "{}/v1/convai/conversation?agent_id=agent_tls",
        emu.ws_base_url()
    ));
    let err = connect(untrusted, ToolRegistry::new()).await.unwrap_err();
    assert!(matches!(err, ConnectError::WebSocket(_)), "{err:?}");
    let mut untrusted_https = cfg;
    untrusted_https.tls_roots = None;
    let err = connect(untrusted_https, ToolRegistry::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::SignedUrlRequest(_)), "{err:?}");
}

/// One TLS client configuration shared by every call (`AgentConfig::tls`, what the gateway sets
/// up once at start) keeps the server's session tickets, so the next call to the agent resumes
/// its TLS session instead of a full handshake.
#[tokio::test]
async fn a_shared_tls_config_keeps_the_session_for_the_next_connection() {
    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
    use std::sync::Arc;

    // The emulator lives to the end of the test.
    let (_emu, mut cfg) = tls_emulator(AgentEmulatorConfig {
        speed: 50.0,
        ..Default::default()
    })
    .await;
    let cache = Arc::new(ClientSessionMemoryCache::new(16));
    let mut tls = cfg.rustls_config().unwrap();
    tls.resumption = Resumption::store(cache.clone());
    cfg.tls = Some(Arc::new(tls));
    let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    for call in 0..2 {
        let mut s = connect(cfg.clone(), ToolRegistry::new()).await.unwrap();
        // Audio after the metadata: the tickets the server sent after its handshake were read.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.next_event()).await {
                Ok(Some(AgentEvent::Audio { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("call {call}: no audio over wss: {other:?}"),
            }
        }
        s.close();
        while s.next_event().await.is_some() {}
        assert!(
            cache.take_tls13_ticket(&server).is_some(),
            "call {call}: no TLS 1.3 ticket kept in the shared configuration"
        );
    }
}

/// The gateway shares one HTTP client for the signed-URL requests (`AgentConfig::http`): its
/// pool keeps the `https://` connection to the API alive, so the second call's request reuses
/// it (no TCP or TLS handshake before the WebSocket); a client per request opens one each. The
/// URLs fetched either way connect.
#[tokio::test]
async fn a_shared_http_client_fetches_signed_urls_over_one_connection() {
    let (emu, mut cfg) = tls_emulator(AgentEmulatorConfig {
        api_key: Some("sk_tls".into()),
        require_signed_url: true,
        ..Default::default()
    })
    .await;

    let mut urls = Vec::new();
    for _ in 0..2 {
        urls.push(
            trunkline_agent::fetch_signed_url(&cfg, "sk_tls")
                .await
                .unwrap(),
        );
    }
    assert_eq!(emu.signed_url_connections(), 2, "a client per request");

    cfg.http = Some(cfg.http_client().unwrap());
    for _ in 0..3 {
        urls.push(
            trunkline_agent::fetch_signed_url(&cfg, "sk_tls")
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        emu.signed_url_connections(),
        3,
        "one kept-alive connection for three"
    );

    let mut distinct = urls.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "{urls:?}");
    for url in [&urls[1], &urls[4]] {
        let mut once = cfg.clone();
        once.signed_url = Some(url.clone());
        let s = connect(once, ToolRegistry::new()).await.unwrap();
        s.close();
    }
}

/// An emulator serving `wss://` and `https://` with a fresh test certificate, and a client
/// config that trusts it.
async fn tls_emulator(config: AgentEmulatorConfig) -> (AgentEmulator, AgentConfig) {
    let id = TestIdentity::localhost().unwrap();
    let emu = AgentEmulator::start_tls("127.0.0.1:0".parse().unwrap(), config, &id)
        .await
        .unwrap();
    let mut cfg = AgentConfig::new("agent_tls").with_base_url(emu.ws_base_url());
    cfg.tls_roots = Some(id.root_store().unwrap());
    cfg.connect_timeout = Duration::from_secs(5);
    (emu, cfg)
}
