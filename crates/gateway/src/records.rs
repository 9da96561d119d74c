//! Call records: SQLite by default (one file, WAL, no server), PostgreSQL with the same schema
//! for several gateways sharing records (`sqlx`'s `Any` driver picks by URL).
//!
//! Every snapshot a call emits at a state change is upserted in order by one writer task, so a
//! crash loses nothing already known: after a restart the record is there, in the state it had
//! reached (a call killed mid-conversation stays `in-progress` with its timestamps).

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio::sync::mpsc;
use tracing::warn;
use trunkline_call::CallRecord;

use crate::api::ListQuery;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// Connecting or creating the schema failed.
    #[error("records database: {0}")]
    Db(#[from] sqlx::Error),
}

/// The schema (portable SQL: SQLite and PostgreSQL).
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS calls (
        call_sid TEXT PRIMARY KEY,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        direction TEXT NOT NULL,
        status TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        conversation_id TEXT,
        end_cause TEXT,
        record TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS calls_created ON calls (created_ms)",
    "CREATE INDEX IF NOT EXISTS calls_status ON calls (status)",
];

/// The records store.
#[derive(Debug, Clone)]
pub struct RecordStore {
    pool: AnyPool,
    writer: mpsc::UnboundedSender<Msg>,
}

impl RecordStore {
    /// Open (and create) the database at `url` (`sqlite://file.db`, `postgres://…`).
    pub async fn open(url: &str) -> Result<RecordStore, RecordsError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains("mode=") && !url.contains(":memory:") {
            format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 1 } else { 4 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
            sqlx::query("PRAGMA synchronous=NORMAL")
                .execute(&pool)
                .await?;
        }
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(pool.clone(), rx));
        Ok(RecordStore { pool, writer })
    }

    /// Queue a snapshot for writing (never blocks the call).
    pub fn save(&self, record: CallRecord) {
        if self.writer.send(Msg::Save(Box::new(record))).is_err() {
            warn!("records writer gone");
        }
    }

    /// Write a snapshot now and wait for it (shutdown, tests).
    pub async fn save_now(&self, record: &CallRecord) -> Result<(), RecordsError> {
        upsert(&self.pool, record).await
    }

    /// Wait until every queued snapshot is written.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.writer.send(Msg::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    /// One record.
    pub async fn get(&self, call_sid: &str) -> Option<CallRecord> {
        let row = sqlx::query("SELECT record FROM calls WHERE call_sid = $1")
            .bind(call_sid)
            .fetch_optional(&self.pool)
            .await
            .ok()??;
        let text: String = row.try_get("record").ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A page of records, newest first.
    pub async fn list(&self, q: &ListQuery) -> Vec<CallRecord> {
        let limit = q.limit.unwrap_or(50).clamp(1, 500) as i64;
        let before = match &q.before {
            Some(sid) => sqlx::query("SELECT created_ms FROM calls WHERE call_sid = $1")
                .bind(sid)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get::<i64, _>("created_ms").ok())
                .unwrap_or(i64::MAX),
            None => i64::MAX,
        };
        let rows = sqlx::query(
            "SELECT record FROM calls
             WHERE created_ms < $1
               AND ($2 = '' OR status = $2)
               AND ($3 = '' OR direction = $3)
             ORDER BY created_ms DESC, call_sid DESC
             LIMIT $4",
        )
        .bind(before)
        .bind(q.status.clone().unwrap_or_default())
        .bind(q.direction.clone().unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        rows.iter()
            .filter_map(|r| r.try_get::<String, _>("record").ok())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect()
    }
}

enum Msg {
    Save(Box<CallRecord>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

async fn write_loop(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(first) = rx.recv().await {
        // Coalesce what is queued: only the newest snapshot of each call needs writing.
        let mut batch: Vec<Box<CallRecord>> = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Msg::Save(r) => match batch.iter_mut().find(|b| b.call_sid == r.call_sid) {
                    Some(slot) => *slot = r,
                    None => batch.push(r),
                },
                Msg::Flush(ack) => {
                    acks.push(ack);
                    break;
                }
            }
        }
        for r in &batch {
            write(&pool, r).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

async fn write(pool: &AnyPool, r: &CallRecord) {
    for attempt in 0..3 {
        match upsert(pool, r).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, attempt, call_sid = %r.call_sid, "record write failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}

async fn upsert(pool: &AnyPool, r: &CallRecord) -> Result<(), RecordsError> {
    let json = serde_json::to_string(r).unwrap_or_else(|_| "{}".into());
    let created = r.timestamps.created_ms.unwrap_or(0) as i64;
    let updated = r
        .timestamps
        .ended_ms
        .or(r.timestamps.answered_ms)
        .or(r.timestamps.created_ms)
        .unwrap_or(0) as i64;
    sqlx::query(
        "INSERT INTO calls (call_sid, created_ms, updated_ms, direction, status, from_number,
                            to_number, conversation_id, end_cause, record)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (call_sid) DO UPDATE SET
            updated_ms = excluded.updated_ms, status = excluded.status,
            conversation_id = excluded.conversation_id, end_cause = excluded.end_cause,
            record = excluded.record",
    )
    .bind(&r.call_sid)
    .bind(created)
    .bind(updated)
    .bind(&r.direction)
    .bind(&r.status)
    .bind(&r.from)
    .bind(&r.to)
    .bind(r.conversation_id.clone())
    .bind(r.end_cause.as_ref().map(|c| c.label().to_owned()))
    .bind(json)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_call::record::EndCause;

    #[tokio::test]
    async fn records_survive_reopening_and_list_filters() {
        let dir = std::env::temp_dir().join(format!("trunkline-records-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = RecordStore::open(&url).await.expect("open");
        for i in 0..5u64 {
            let mut r = CallRecord::new(format!("CA{i}"), "outbound", "+1".into(), "+2".into());
            r.timestamps.created_ms = Some(1000 + i);
            store.save(r.clone());
            if i % 2 == 0 {
                r.status = "completed".into();
                r.end_cause = Some(EndCause::RemoteHangup);
                store.save(r);
            }
        }
        store.flush().await;
        drop(store);
        let store = RecordStore::open(&url).await.expect("reopen");
        let all = store.list(&ListQuery::default()).await;
        assert_eq!(
            all.iter().map(|r| r.call_sid.as_str()).collect::<Vec<_>>(),
            ["CA4", "CA3", "CA2", "CA1", "CA0"]
        );
        let done = store
            .list(&ListQuery {
                status: Some("completed".into()),
                ..ListQuery::default()
            })
            .await;
        assert_eq!(done.len(), 3);
        let page = store
            .list(&ListQuery {
                limit: Some(2),
                before: Some("CA3".into()),
                ..ListQuery::default()
            })
            .await;
        assert_eq!(
            page.iter().map(|r| r.call_sid.as_str()).collect::<Vec<_>>(),
            ["CA2", "CA1"]
        );
        let r = store.get("CA2").await.expect("record");
        assert_eq!(r.end_cause, Some(EndCause::RemoteHangup));
        assert!(store.get("CA9").await.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
