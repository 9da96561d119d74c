//! The gateway bootstrap, once: the [`Gateway`] (SIP stack, calls, records), the HTTP API on
//! its [`Policy`], and the orderly shutdown. `trunkline serve`, `trunkline demo`, the tests and
//! anything else that runs a gateway in-process start it here.
//!
//! The HTTP server is hyper's HTTP/1 connection driver under a small accept loop of ours, so a
//! slow client is bounded: the request head must arrive within `http.header_timeout_secs`, the
//! request (body and handler) is answered 408 after `http.request_timeout_secs`, and at shutdown
//! connections still open after [`HTTP_DRAIN`] are closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};
use trunkline_call::record::EndCause;

use crate::api::{ApiState, day_now, router};
use crate::config::{Config, Secrets};
use crate::metrics::Metrics;
use crate::policy::{DailySink, Policy, RequestRules};
use crate::service::{Gateway, StartError};

/// At shutdown, how long HTTP requests in flight may take to finish before their connections are
/// closed.
pub const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// A running gateway with its HTTP API.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    http: SocketAddr,
    stop_http: watch::Sender<bool>,
    http_task: JoinHandle<()>,
}

/// The HTTP server's slow-client bounds.
#[derive(Debug, Clone, Copy)]
struct HttpLimits {
    header: Duration,
    request: Duration,
}

impl Server {
    /// Start the gateway and serve its HTTP API on `cfg.http.listen`.
    pub async fn start(cfg: Config, secrets: Secrets) -> Result<Server, StartError> {
        let listener = TcpListener::bind(cfg.http.listen)
            .await
            .map_err(|e| StartError::Http(format!("{}: {e}", cfg.http.listen)))?;
        Self::start_on(cfg, secrets, listener).await
    }

    /// [`Server::start`] on a listener already bound.
    pub async fn start_on(
        cfg: Config,
        secrets: Secrets,
        listener: TcpListener,
    ) -> Result<Server, StartError> {
        let http = listener
            .local_addr()
            .map_err(|e| StartError::Http(e.to_string()))?;
        let gateway = Gateway::start_with(cfg.clone(), secrets.clone(), Some(http)).await?;
        // The daily cap continues from the records (a restart does not reset it).
        let day = day_now();
        let counts = gateway.daily_counts(day).await?;
        let cluster = cfg.cluster.enabled;
        let sink = {
            let gw = Arc::downgrade(&gateway);
            DailySink::new(move |day, number| {
                // In a cluster the admission transaction counts it (once, globally).
                if !cluster && let Some(gw) = gw.upgrade() {
                    gw.count_destination(day, number);
                }
            })
        };
        let state = Arc::new(ApiState {
            policy: Mutex::new(
                Policy::new(
                    cfg.policy.clone(),
                    cfg.http.allowed_origins.clone(),
                    &secrets,
                )
                .with_request_rules(RequestRules {
                    anonymous_variables: cfg.agent.request_variables.clone(),
                    anonymous_first_message: cfg.agent.allow_request_first_message,
                    operator_variables: cfg.agent.dynamic_variables.keys().cloned().collect(),
                })
                .with_daily_counts(day, counts, sink)
                .cluster_admission(cluster),
            ),
            calls: Arc::new(gateway.clone()),
            max_body_bytes: cfg.http.max_body_bytes,
        });
        let limits = HttpLimits {
            header: Duration::from_secs(cfg.http.header_timeout_secs),
            request: Duration::from_secs(cfg.http.request_timeout_secs),
        };
        let (stop_http, stop) = watch::channel(false);
        let http_task = tokio::spawn(serve_http(
            listener,
            router(state),
            limits,
            gateway.metrics_registry().clone(),
            stop,
        ));
        Ok(Server {
            gateway,
            http,
            stop_http,
            http_task,
        })
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Orderly shutdown. At once, whatever HTTP clients are doing: no new call is taken (inbound
    /// INVITEs get 503, the trigger and `/readyz` 503) and the grace period starts. The HTTP API
    /// keeps answering meanwhile (readiness, records, hang-up). Active calls get `grace` to finish
    /// and are then hung up, the BYEs are let out and answered; then the HTTP server stops
    /// (requests in flight get [`HTTP_DRAIN`], then their connections are closed) and every record
    /// is flushed to the database.
    pub async fn shutdown(self, grace: Duration) {
        let Server {
            gateway,
            stop_http,
            mut http_task,
            ..
        } = self;
        gateway.stop_accepting();
        let active = gateway.active_calls();
        if active > 0 {
            info!(
                active,
                grace_secs = grace.as_secs(),
                "waiting for active calls"
            );
            if !gateway.drain(grace).await {
                warn!(
                    remaining = gateway.active_calls(),
                    "grace period over: hanging up"
                );
                gateway.hangup_all(EndCause::Shutdown);
                gateway.drain(Duration::from_secs(5)).await;
            }
        }
        let _ = stop_http.send(true);
        let sip_idle = gateway.wait_sip_idle(Duration::from_secs(5));
        let http_done = async {
            if tokio::time::timeout(HTTP_DRAIN + Duration::from_secs(1), &mut http_task)
                .await
                .is_err()
            {
                http_task.abort();
            }
        };
        let (idle, ()) = tokio::join!(sip_idle, http_done);
        if !idle {
            warn!("some SIP legs were still being torn down at exit");
        }
        gateway.flush_records().await;
        if let Some(c) = gateway.cluster() {
            c.leave().await;
        }
    }
}

/// Accepts HTTP connections until `stop` turns true, then lets the open ones finish for
/// [`HTTP_DRAIN`] and closes the rest.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut backoff = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(
                        stream,
                        peer,
                        app.clone(),
                        limits,
                        metrics.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                ) => debug!(error = %e, "http accept"),
                Err(e) => {
                    // Out of file descriptors (EMFILE) or memory: pause rather than spin.
                    metrics.defences.http_accept_backoffs.fetch_add(1, Ordering::Relaxed);
                    backoff = (backoff * 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
                    error!(error = %e, pause_ms = backoff.as_millis() as u64, "http accept failed; pausing");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(HTTP_DRAIN, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = conns.len(),
            "HTTP connections still open at shutdown: closing them"
        );
        conns.abort_all();
    }
}

/// One HTTP/1 connection: the head within `limits.header`, each request answered within
/// `limits.request` (408 otherwise); a graceful close when `stop` turns true.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let app = TowerToHyperService::new(app);
    let m = metrics.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let handled = hyper::service::Service::call(&app, req);
        let m = m.clone();
        async move {
            match tokio::time::timeout(limits.request, handled).await {
                Ok(r) => r,
                Err(_) => {
                    m.defences
                        .http_request_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    Ok::<Response, Infallible>(request_timeout())
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics
                .defences
                .http_header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "http request head not received in time: closed");
        } else {
            debug!(%peer, error = %e, "http connection");
        }
    }
}

/// Resolves when `stop` turns true (never if the [`Server`] was dropped without a shutdown).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn request_timeout() -> Response {
    let mut r = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json::json!({"success": false, "error": "Request timeout"})),
    )
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}
