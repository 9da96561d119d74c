//! The gateway bootstrap, once: the [`Gateway`] (SIP stack, calls, records), the HTTP API on
//! its [`Policy`], and the orderly shutdown. `trunkline serve`, `trunkline demo`, the tests and
//! anything else that runs a gateway in-process start it here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use trunkline_call::record::EndCause;

use crate::api::{ApiState, day_now, router};
use crate::config::{Config, Secrets};
use crate::policy::{DailySink, Policy, RequestRules};
use crate::service::{Gateway, StartError};

/// A running gateway with its HTTP API.
#[derive(Debug)]
pub struct Server {
    gateway: Arc<Gateway>,
    http: SocketAddr,
    stop_http: Arc<Notify>,
    http_task: JoinHandle<()>,
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
        let gateway = Gateway::start(cfg.clone(), secrets.clone()).await?;
        // The daily cap continues from the records (a restart does not reset it).
        let day = day_now();
        let counts = gateway.daily_counts(day).await?;
        let sink = {
            let gw = Arc::downgrade(&gateway);
            DailySink::new(move |day, number| {
                if let Some(gw) = gw.upgrade() {
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
                .with_daily_counts(day, counts, sink),
            ),
            calls: Arc::new(gateway.clone()),
            max_body_bytes: cfg.http.max_body_bytes,
        });
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let stop_http = Arc::new(Notify::new());
        let stop = stop_http.clone();
        let http_task = tokio::spawn(async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await });
            if let Err(e) = server.await {
                error!(error = %e, "http server");
            }
        });
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

    /// Orderly shutdown: the HTTP API stops (requests in flight finish), no new call is taken,
    /// active calls get `grace` to finish and are then hung up, the BYEs are let out and
    /// answered, and every record is flushed to the database.
    pub async fn shutdown(self, grace: Duration) {
        self.stop_http.notify_one();
        let _ = self.http_task.await;
        let gateway = self.gateway;
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
        if !gateway.wait_sip_idle(Duration::from_secs(5)).await {
            warn!("some SIP legs were still being torn down at exit");
        }
        gateway.flush_records().await;
    }
}
