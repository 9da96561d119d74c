//! Several gateways behaving like one (`[cluster] enabled = true` over a PostgreSQL
//! `records.database_url`): the trigger limits that are per node on a single gateway are global —
//! concurrent calls, calls per second, the per-destination daily cap and the per-client request
//! rate — and a call can be looked up or hung up through any node.
//!
//! Mechanism: every admission is one transaction under one transaction-scoped advisory lock
//! ([`ADMISSION_LOCK`]), so admissions are serialised cluster-wide and a check and its count can
//! never interleave with another node's (no lost update, no over-admission): the token buckets
//! (CPS, per client) are rows read and written in that transaction, the daily cap is
//! `destination_daily` (the same table a single node persists it in), and a live call is a row of
//! `cluster_calls` (a *lease*) owned by a node. Concurrent calls = leases of nodes whose heartbeat
//! (`cluster_nodes.heartbeat_at`, the database's clock, so node clocks may differ) is younger than
//! three heartbeat intervals: a killed node's calls stop counting after that, while their records
//! stay in `calls` (`in-progress`, until that node starts again and marks them failed). A node
//! starting deletes its own leases (its calls of a previous run are over: no double counting).
//!
//! The single-node path does not come here: with `cluster.enabled = false` nothing of this runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tracing::{info, warn};

use crate::config::PolicySection;
use crate::policy::{Client, Destination, Refusal, TOKEN_RATE_FACTOR};

/// The advisory lock key every admission takes (`pg_advisory_xact_lock`): ASCII "TRNK".
pub const ADMISSION_LOCK: i64 = 0x5452_4e4b;

/// A node is live while its heartbeat is younger than this many heartbeat intervals.
pub const EXPIRY_INTERVALS: u32 = 3;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cluster_nodes (
        node_id TEXT PRIMARY KEY,
        http_url TEXT NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS cluster_calls (
        lease TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        call_sid TEXT,
        direction TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS cluster_calls_sid ON cluster_calls (call_sid)",
    "CREATE INDEX IF NOT EXISTS cluster_calls_node ON cluster_calls (node_id)",
    "CREATE TABLE IF NOT EXISTS cluster_buckets (
        key TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL
    )",
    // The records store creates it too; here so the cluster does not depend on the order.
    "CREATE TABLE IF NOT EXISTS destination_daily (
        day BIGINT NOT NULL,
        number TEXT NOT NULL,
        calls BIGINT NOT NULL,
        PRIMARY KEY (day, number)
    )",
];

/// Why an admission did not happen.
#[derive(Debug)]
pub enum AdmitError {
    /// A limit refused it (the same refusals as a single node's).
    Refused(Refusal),
    /// The database could not be asked: the call is not placed (fail closed).
    Db(String),
}

impl From<sqlx::Error> for AdmitError {
    fn from(e: sqlx::Error) -> Self {
        AdmitError::Db(e.to_string())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Admissions granted (outbound and inbound).
    pub admitted: AtomicU64,
    /// Admissions refused by a global limit.
    pub refused: AtomicU64,
    /// Database errors (admission, heartbeat, release).
    pub db_errors: AtomicU64,
    /// Hang-ups forwarded to the owning node.
    pub forwarded_hangups: AtomicU64,
    /// Sum of admission transaction times, microseconds.
    pub admit_micros: AtomicU64,
}

/// This node's membership.
#[derive(Debug)]
pub struct Cluster {
    pool: PgPool,
    node: String,
    heartbeat: Duration,
    limits: PolicySection,
    seq: AtomicU64,
    stats: ClusterStats,
    http: reqwest::Client,
}

/// The owner of a live call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its node id.
    pub node: String,
    /// Its internal HTTP base URL (`http://10.0.0.5:8080`).
    pub http_url: String,
}

impl Cluster {
    /// Join: create the tables, register this node (its internal HTTP URL), drop the leases a
    /// previous run of it left, and start the heartbeat.
    pub async fn join(
        url: &str,
        node: &str,
        http_url: &str,
        heartbeat: Duration,
        limits: PolicySection,
    ) -> Result<Arc<Cluster>, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        // Several nodes starting at once: create the schema under the admission lock.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMISSION_LOCK)
            .execute(&mut *tx)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&mut *tx).await?;
        }
        let dropped = sqlx::query("DELETE FROM cluster_calls WHERE node_id = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "INSERT INTO cluster_nodes (node_id, http_url, heartbeat_at, started_at)
             VALUES ($1, $2, clock_timestamp(), clock_timestamp())
             ON CONFLICT (node_id) DO UPDATE SET http_url = excluded.http_url,
                heartbeat_at = excluded.heartbeat_at, started_at = excluded.started_at",
        )
        .bind(node)
        .bind(http_url)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        info!(
            node,
            http_url,
            dropped_leases = dropped,
            "joined the cluster"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
        let cluster = Arc::new(Cluster {
            pool,
            node: node.to_owned(),
            heartbeat: heartbeat.max(Duration::from_millis(100)),
            limits,
            seq: AtomicU64::new(0),
            stats: ClusterStats::default(),
            http,
        });
        tokio::spawn(heartbeat_loop(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    fn new_lease(&self) -> String {
        format!("{}/{}", self.node, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The global checks of one outbound trigger, in the single node's order (client rate,
    /// concurrency, daily cap, CPS), and on success the counts: a lease for the call, the
    /// destination's daily count + 1. `client`/`ip` pick the rate bucket as
    /// [`crate::policy::Policy::rate_limit`] does.
    pub async fn admit_outbound(
        &self,
        client: &Client,
        ip: IpAddr,
        dest: &Destination,
        day: u64,
    ) -> Result<String, AdmitError> {
        let started = Instant::now();
        let r = self.admit_outbound_tx(client, ip, dest, day).await;
        self.account(started, &r);
        r
    }

    async fn admit_outbound_tx(
        &self,
        client: &Client,
        ip: IpAddr,
        dest: &Destination,
        day: u64,
    ) -> Result<String, AdmitError> {
        let per_min = f64::from(self.limits.per_ip_per_minute.max(1));
        let (key, cap, limit) = match client {
            Client::Token(name) => (
                format!("token:{name}"),
                per_min * TOKEN_RATE_FACTOR,
                "per_token",
            ),
            _ => (format!("ip:{ip}"), per_min, "per_ip"),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ADMISSION_LOCK)
            .execute(&mut *tx)
            .await?;
        let now_ms = db_now_ms(&mut tx).await?;
        if let Err(retry_after) = take(&mut tx, &key, cap, cap / 60.0, now_ms).await? {
            return Err(AdmitError::Refused(Refusal::RateLimited {
                limit,
                retry_after,
            }));
        }
        if self.live_calls(&mut tx).await? >= self.limits.max_concurrent_calls as i64 {
            // The client's token stays taken, as on one node; nothing else is counted.
            tx.commit().await?;
            return Err(AdmitError::Refused(Refusal::AtCapacity));
        }
        let used: i64 =
            sqlx::query("SELECT calls FROM destination_daily WHERE day = $1 AND number = $2")
                .bind(day as i64)
                .bind(&dest.e164)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<i64, _>("calls"))
                .transpose()?
                .unwrap_or(0);
        if used >= i64::from(self.limits.per_destination_per_day) {
            tx.commit().await?;
            return Err(AdmitError::Refused(Refusal::RateLimited {
                limit: "per_destination_daily",
                retry_after: 3600,
            }));
        }
        let cps = self.limits.calls_per_second.max(0.01);
        if let Err(retry_after) = take(&mut tx, "cps", cps.ceil().max(1.0), cps, now_ms).await? {
            tx.commit().await?;
            return Err(AdmitError::Refused(Refusal::RateLimited {
                limit: "calls_per_second",
                retry_after,
            }));
        }
        sqlx::query(
            "INSERT INTO destination_daily (day, number, calls) VALUES ($1, $2, 1)
             ON CONFLICT (day, number) DO UPDATE SET calls = destination_daily.calls + 1",
        )
        .bind(day as i64)
        .bind(&dest.e164)
        .execute(&mut *tx)
        .await?;
        let lease = self.new_lease();
        self.insert_lease(&mut tx, &lease, "outbound").await?;
        tx.commit().await?;
        Ok(lease)
    }

    /// The global concurrency check of an inbound call (503 when the cluster is at
    /// `policy.max_concurrent_calls`), and its lease.
    pub async fn admit_inbound(&self) -> Result<String, AdmitError> {
        let started = Instant::now();
        let r = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(ADMISSION_LOCK)
                .execute(&mut *tx)
                .await?;
            if self.live_calls(&mut tx).await? >= self.limits.max_concurrent_calls as i64 {
                return Err(AdmitError::Refused(Refusal::AtCapacity));
            }
            let lease = self.new_lease();
            self.insert_lease(&mut tx, &lease, "inbound").await?;
            tx.commit().await?;
            Ok(lease)
        }
        .await;
        self.account(started, &r);
        r
    }

    fn account(&self, started: Instant, r: &Result<String, AdmitError>) {
        let micros = started.elapsed().as_micros() as u64;
        self.stats.admit_micros.fetch_add(micros, Ordering::Relaxed);
        let counter = match r {
            Ok(_) => &self.stats.admitted,
            Err(AdmitError::Refused(_)) => &self.stats.refused,
            Err(AdmitError::Db(e)) => {
                warn!(error = %e, "cluster admission: database error (call refused)");
                &self.stats.db_errors
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    async fn live_calls(&self, tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM cluster_calls c JOIN cluster_nodes n USING (node_id)
             WHERE n.heartbeat_at > clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(self.expiry().as_secs_f64())
        .fetch_one(&mut **tx)
        .await?;
        row.try_get("n")
    }

    async fn insert_lease(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        lease: &str,
        direction: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO cluster_calls (lease, node_id, direction, started_at)
             VALUES ($1, $2, $3, clock_timestamp())",
        )
        .bind(lease)
        .bind(&self.node)
        .bind(direction)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// How long a node stays live without a heartbeat.
    pub fn expiry(&self) -> Duration {
        self.heartbeat * EXPIRY_INTERVALS
    }

    /// Name the call a lease stands for (so any node finds its owner).
    pub async fn bind(&self, lease: &str, call_sid: &str) {
        let r = sqlx::query("UPDATE cluster_calls SET call_sid = $2 WHERE lease = $1")
            .bind(lease)
            .bind(call_sid)
            .execute(&self.pool)
            .await;
        if let Err(e) = r {
            self.stats.db_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, lease, call_sid, "cluster: naming a lease failed");
        }
    }

    /// The call is over (or was never placed): it stops counting.
    pub async fn release(&self, lease: &str) {
        for attempt in 0..3u32 {
            match sqlx::query("DELETE FROM cluster_calls WHERE lease = $1")
                .bind(lease)
                .execute(&self.pool)
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    self.stats.db_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, lease, attempt, "cluster: releasing a lease failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }

    /// The live node that owns `call_sid`, if another node does.
    pub async fn owner(&self, call_sid: &str) -> Option<Owner> {
        let row = sqlx::query(
            "SELECT n.node_id, n.http_url FROM cluster_calls c JOIN cluster_nodes n USING (node_id)
             WHERE c.call_sid = $1 AND n.heartbeat_at > clock_timestamp() - make_interval(secs => $2)",
        )
        .bind(call_sid)
        .bind(self.expiry().as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .ok()??;
        let owner = Owner {
            node: row.try_get("node_id").ok()?,
            http_url: row.try_get("http_url").ok()?,
        };
        (owner.node != self.node).then_some(owner)
    }

    /// Forward `POST /api/calls/{sid}/hangup` to the owning node with the caller's
    /// `Authorization` (every node has the same tokens) and `forwarded_by` (this node: the owner
    /// never forwards it again). Its status and body, or why it could not be asked.
    pub async fn forward_hangup(
        &self,
        owner: &Owner,
        call_sid: &str,
        authorization: Option<&[u8]>,
        forwarded_header: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        self.stats.forwarded_hangups.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}/api/calls/{call_sid}/hangup", owner.http_url);
        let mut req = self.http.post(&url).header(forwarded_header, &self.node);
        if let Some(auth) = authorization {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, body.to_vec()))
    }

    /// Live calls in the whole cluster (leases of live nodes).
    pub async fn cluster_calls(&self) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let n = self.live_calls(&mut tx).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Leave at an orderly shutdown: this node's leases go (its calls are over) and it is no
    /// longer live.
    pub async fn leave(&self) {
        let _ = sqlx::query("DELETE FROM cluster_calls WHERE node_id = $1")
            .bind(&self.node)
            .execute(&self.pool)
            .await;
        let _ = sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1")
            .bind(&self.node)
            .execute(&self.pool)
            .await;
        info!(node = %self.node, "left the cluster");
    }

    /// Prometheus lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let _ = writeln!(
            out,
            "# HELP trunkline_cluster_admissions_total Cluster-wide admissions (PostgreSQL), by result.\n# TYPE trunkline_cluster_admissions_total counter"
        );
        for (result, n) in [
            ("admitted", &s.admitted),
            ("refused", &s.refused),
            ("db_error", &s.db_errors),
        ] {
            let _ = writeln!(
                out,
                "trunkline_cluster_admissions_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP trunkline_cluster_admit_seconds_total Time spent in admission transactions.\n# TYPE trunkline_cluster_admit_seconds_total counter\ntrunkline_cluster_admit_seconds_total {:.6}",
            s.admit_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP trunkline_cluster_forwarded_hangups_total Hang-ups forwarded to the owning node.\n# TYPE trunkline_cluster_forwarded_hangups_total counter\ntrunkline_cluster_forwarded_hangups_total {}",
            s.forwarded_hangups.load(Ordering::Relaxed)
        );
    }
}

async fn db_now_ms(tx: &mut Transaction<'_, Postgres>) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS ms")
        .fetch_one(&mut **tx)
        .await?
        .try_get("ms")
}

/// Take one token from bucket `key` (capacity `cap`, refilled at `per_sec`) inside the
/// admission transaction; on refusal the seconds until one is available.
async fn take(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
    cap: f64,
    per_sec: f64,
    now_ms: i64,
) -> Result<Result<(), u64>, sqlx::Error> {
    let row = sqlx::query("SELECT tokens, at_ms FROM cluster_buckets WHERE key = $1")
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    let (tokens, at_ms) = match row {
        Some(r) => (
            r.try_get::<f64, _>("tokens")?,
            r.try_get::<i64, _>("at_ms")?,
        ),
        None => (cap, now_ms),
    };
    let dt = (now_ms - at_ms).max(0) as f64 / 1000.0;
    let mut tokens = (tokens + dt * per_sec).min(cap);
    let result = if tokens >= 1.0 {
        tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - tokens) / per_sec).ceil().max(1.0) as u64)
    };
    sqlx::query(
        "INSERT INTO cluster_buckets (key, tokens, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
    )
    .bind(key)
    .bind(tokens)
    .bind(now_ms.max(at_ms))
    .execute(&mut **tx)
    .await?;
    Ok(result)
}

async fn heartbeat_loop(cluster: std::sync::Weak<Cluster>) {
    let mut beats = 0u64;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let every = c.heartbeat;
        let r = sqlx::query(
            "UPDATE cluster_nodes SET heartbeat_at = clock_timestamp() WHERE node_id = $1",
        )
        .bind(&c.node)
        .execute(&c.pool)
        .await;
        if let Err(e) = r {
            c.stats.db_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "cluster heartbeat failed");
        }
        beats += 1;
        if beats.is_multiple_of(100) {
            // Idle per-client buckets are full again after a minute: forget them.
            let _ = sqlx::query(
                "DELETE FROM cluster_buckets WHERE key <> 'cps'
                 AND at_ms < (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT - 600000",
            )
            .execute(&c.pool)
            .await;
        }
        drop(c);
        tokio::time::sleep(every).await;
    }
}
