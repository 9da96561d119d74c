//! Call records: SQLite by default (one file, WAL, no server), PostgreSQL with the same schema
//! for several gateways sharing records (`sqlx`'s `Any` driver picks by URL).
//!
//! Every snapshot a call emits at a state change is upserted in order by one writer task, so a
//! crash loses nothing already known: after a restart the record is there, in the state it had
//! reached (a call killed mid-conversation stays `in-progress` with its timestamps) until the next
//! start of the same node ([`RecordStore::recover_interrupted`]) marks it `failed` with cause
//! `gateway_restart` and no end time.
//!
//! A call's transcript is written line by line as the conversation goes (table `transcript`), so
//! a long call holds none of it in memory; its final record carries the whole transcript and
//! the lines are then deleted. A record read while its call runs (or one left by a crash) gets
//! its transcript from those lines.
//!
//! The per-destination daily call counts (`policy.per_destination_per_day`) are kept here too, so
//! a restart does not reset them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio::sync::mpsc;
use tracing::warn;
use trunkline_call::CallRecord;
use trunkline_call::record::{EndCause, TranscriptEntry, TranscriptLine};

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
    "CREATE TABLE IF NOT EXISTS transcript (
        call_sid TEXT NOT NULL,
        seq BIGINT NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL,
        event_id BIGINT,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (call_sid, seq)
    )",
    "CREATE TABLE IF NOT EXISTS destination_daily (
        day BIGINT NOT NULL,
        number TEXT NOT NULL,
        calls BIGINT NOT NULL,
        PRIMARY KEY (day, number)
    )",
];

/// The node id of a store opened with [`RecordStore::open`] (`records.node_id`'s default).
pub const DEFAULT_NODE: &str = "trunkline";

/// Daily counts older than this many days are deleted at start.
const KEEP_DAYS: i64 = 2;

/// The records store.
#[derive(Debug, Clone)]
pub struct RecordStore {
    pool: AnyPool,
    writer: mpsc::UnboundedSender<Msg>,
    node: Arc<str>,
}

impl RecordStore {
    /// Open (and create) the database at `url` (`sqlite://file.db`, `postgres://…`) as the
    /// [`DEFAULT_NODE`].
    pub async fn open(url: &str) -> Result<RecordStore, RecordsError> {
        Self::open_as(url, DEFAULT_NODE).await
    }

    /// Open the database as `node`: the calls it writes are marked with it, and only its own
    /// unfinished calls are recovered at start (gateways sharing a PostgreSQL database need
    /// distinct node ids).
    pub async fn open_as(url: &str, node: &str) -> Result<RecordStore, RecordsError> {
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
        if !sqlite {
            // PostgreSQL shared by several gateways starting at once: create the schema under
            // one transaction-scoped advisory lock (concurrent CREATE TABLE IF NOT EXISTS /
            // ADD COLUMN race otherwise).
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(1414680139)")
                .execute(&mut *tx)
                .await?;
            for stmt in SCHEMA {
                sqlx::query(*stmt).execute(&mut *tx).await?;
            }
            sqlx::query("ALTER TABLE calls ADD COLUMN IF NOT EXISTS node TEXT")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        for stmt in SCHEMA.iter().filter(|_| sqlite) {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        // Databases created before node ids: add the column (portable: no IF NOT EXISTS).
        if sqlite
            && sqlx::query("SELECT node FROM calls LIMIT 1")
                .fetch_optional(&pool)
                .await
                .is_err()
        {
            // Two processes opening one new file at once both see the column missing; the
            // second ALTER then fails with a duplicate column, which means it is there.
            if let Err(e) = sqlx::query("ALTER TABLE calls ADD COLUMN node TEXT")
                .execute(&pool)
                .await
                && !e.to_string().contains("duplicate column name")
            {
                return Err(e.into());
            }
        }
        let node: Arc<str> = Arc::from(node);
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(pool.clone(), node.clone(), sqlite, rx));
        Ok(RecordStore { pool, writer, node })
    }

    /// Mark every call this node left unfinished (`initiated`, `ringing`, `in-progress`, …:
    /// no end cause) as `failed` with cause `gateway_restart` and no end time, and return them.
    /// Call at start, before taking calls.
    pub async fn recover_interrupted(&self) -> Result<Vec<CallRecord>, RecordsError> {
        let rows =
            sqlx::query("SELECT call_sid, record FROM calls WHERE node = $1 AND end_cause IS NULL")
                .bind(&*self.node)
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::new();
        for row in rows {
            let sid: String = row.try_get("call_sid")?;
            let mut r = row
                .try_get::<String, _>("record")
                .ok()
                .and_then(|t| serde_json::from_str::<CallRecord>(&t).ok())
                .unwrap_or_else(|| CallRecord::new(sid, "unknown", String::new(), String::new()));
            r.status = "failed".into();
            r.end_cause = Some(EndCause::GatewayRestart);
            r.timestamps.ended_ms = None;
            if r.transcript.is_empty() {
                r.transcript = read_transcript(&self.pool, &r.call_sid).await?;
            }
            upsert(&self.pool, &self.node, &r).await?;
            delete_transcript(&self.pool, &r.call_sid).await?;
            out.push(r);
        }
        Ok(out)
    }

    /// Count one call to `number` on UTC day `day` (queued, written in order; never blocks).
    pub fn count_destination(&self, day: u64, number: &str) {
        let msg = Msg::Count {
            day: day as i64,
            number: number.to_owned(),
        };
        if self.writer.send(msg).is_err() {
            warn!("records writer gone");
        }
    }

    /// The calls counted per destination on `day` (and old days' counts deleted).
    pub async fn daily_counts(&self, day: u64) -> Result<Vec<(String, u32)>, RecordsError> {
        let day = day as i64;
        sqlx::query("DELETE FROM destination_daily WHERE day < $1")
            .bind(day - KEEP_DAYS)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query("SELECT number, calls FROM destination_daily WHERE day = $1")
            .bind(day)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("calls")?;
                Ok((
                    r.try_get::<String, _>("number")?,
                    u32::try_from(n).unwrap_or(u32::MAX),
                ))
            })
            .collect()
    }

    /// Queue a snapshot for writing (never blocks the call).
    pub fn save(&self, record: CallRecord) {
        if self.writer.send(Msg::Save(Box::new(record))).is_err() {
            warn!("records writer gone");
        }
    }

    /// Queue a transcript line of a running call (never blocks the call; written in order with
    /// the snapshots).
    pub fn transcript_line(&self, call_sid: &str, line: TranscriptLine) {
        let msg = Msg::Line(Box::new((call_sid.to_owned(), line)));
        if self.writer.send(msg).is_err() {
            warn!("records writer gone");
        }
    }

    /// The transcript lines written for `call_sid`, in order, once every line queued before
    /// this call is written (empty when there are none or the database fails).
    pub async fn transcript(&self, call_sid: &str) -> Vec<TranscriptEntry> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = Msg::ReadTranscript(call_sid.to_owned(), tx);
        if self.writer.send(msg).is_err() {
            return Vec::new();
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(lines)) => lines,
            _ => Vec::new(),
        }
    }

    /// Write a snapshot now and wait for it (shutdown, tests).
    pub async fn save_now(&self, record: &CallRecord) -> Result<(), RecordsError> {
        upsert(&self.pool, &self.node, record).await
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
        let mut r: CallRecord = serde_json::from_str(&text).ok()?;
        if r.transcript.is_empty() {
            // A call still running (on any node), or left by a crash: its lines so far.
            r.transcript = read_transcript(&self.pool, call_sid)
                .await
                .unwrap_or_default();
        }
        Some(r)
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
    /// A transcript line: the call's sid and the line (boxed: it sets the channel's slot size).
    Line(Box<(String, TranscriptLine)>),
    Count {
        day: i64,
        number: String,
    },
    Flush(tokio::sync::oneshot::Sender<()>),
    ReadTranscript(String, tokio::sync::oneshot::Sender<Vec<TranscriptEntry>>),
}

/// Transcript lines are written at most this often (one statement for all calls' lines), or at
/// once when a snapshot, flush or read follows them: a line per statement, as they came, cost
/// ~0.02 % of a core per call at 250 calls. A crash loses at most this much of a transcript.
const LINES_EVERY: Duration = Duration::from_secs(1);

async fn write_loop(
    pool: AnyPool,
    node: Arc<str>,
    sqlite: bool,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut lines: Vec<(String, TranscriptLine)> = Vec::new();
    let mut lines_due: Option<tokio::time::Instant> = None;
    loop {
        let first = match lines_due {
            Some(due) => match tokio::time::timeout_at(due, rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    write_lines(&pool, sqlite, &mut lines).await;
                    lines_due = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            write_lines(&pool, sqlite, &mut lines).await;
            return;
        };
        // Coalesce what is queued: only the newest snapshot of each call needs writing.
        let mut batch: Vec<Box<CallRecord>> = Vec::new();
        let mut counts: Vec<(i64, String)> = Vec::new();
        let mut acks = Vec::new();
        let mut read = None;
        let mut next = Some(first);
        while let Some(m) = next.take().or_else(|| rx.try_recv().ok()) {
            match m {
                Msg::Save(r) => match batch.iter_mut().find(|b| b.call_sid == r.call_sid) {
                    Some(slot) => *slot = r,
                    None => batch.push(r),
                },
                Msg::Line(l) => {
                    lines.push(*l);
                    lines_due.get_or_insert_with(|| tokio::time::Instant::now() + LINES_EVERY);
                }
                Msg::Count { day, number } => counts.push((day, number)),
                Msg::Flush(ack) => {
                    acks.push(ack);
                    break;
                }
                Msg::ReadTranscript(sid, reply) => {
                    read = Some((sid, reply));
                    break;
                }
            }
        }
        for (day, number) in &counts {
            if let Err(e) = count(&pool, *day, number).await {
                warn!(error = %e, "daily count write failed");
            }
        }
        // Lines before snapshots: a final record's transcript was read after its lines.
        if !batch.is_empty() || !acks.is_empty() || read.is_some() {
            write_lines(&pool, sqlite, &mut lines).await;
            lines_due = None;
        }
        for r in &batch {
            if write(&pool, &node, r).await && r.is_final() && !r.transcript.is_empty() {
                // The final record carries the transcript: its lines are no longer needed.
                if let Err(e) = delete_transcript(&pool, &r.call_sid).await {
                    warn!(error = %e, call_sid = %r.call_sid, "transcript lines not deleted");
                }
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if let Some((sid, reply)) = read {
            let got = read_transcript(&pool, &sid).await.unwrap_or_else(|e| {
                warn!(error = %e, call_sid = %sid, "transcript read failed");
                Vec::new()
            });
            let _ = reply.send(got);
        }
    }
}

async fn count(pool: &AnyPool, day: i64, number: &str) -> Result<(), RecordsError> {
    sqlx::query(
        "INSERT INTO destination_daily (day, number, calls) VALUES ($1, $2, 1)
         ON CONFLICT (day, number) DO UPDATE SET calls = destination_daily.calls + 1",
    )
    .bind(day)
    .bind(number)
    .execute(pool)
    .await?;
    Ok(())
}

/// Write a snapshot (3 attempts); true when it is written.
async fn write(pool: &AnyPool, node: &str, r: &CallRecord) -> bool {
    retry(
        || upsert(pool, node, r),
        |e, attempt| {
            warn!(error = %e, attempt, call_sid = %r.call_sid, "record write failed");
        },
    )
    .await
}

/// Run `op` up to 3 times, 100, 200 then 400 ms apart, reporting each failure; true when it
/// succeeded.
async fn retry<F, Fut>(mut op: F, mut failed: impl FnMut(&RecordsError, u32)) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), RecordsError>>,
{
    for attempt in 0..3 {
        match op().await {
            Ok(()) => return true,
            Err(e) => {
                failed(&e, attempt);
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    false
}

/// Rows per statement (6 parameters each; SQLite allows 32,766, PostgreSQL 65,535).
const LINES_PER_STATEMENT: usize = 500;

/// Write the queued transcript lines (a line with a `seq` already written replaces it) in
/// multi-row statements, retried like snapshots; `lines` is left empty.
async fn write_lines(pool: &AnyPool, sqlite: bool, lines: &mut Vec<(String, TranscriptLine)>) {
    if lines.is_empty() {
        return;
    }
    // A correction queued with its line: the later one wins (one statement may not touch a
    // row twice).
    let keep: Vec<bool> = {
        let mut last = std::collections::HashMap::with_capacity(lines.len());
        for (i, (sid, l)) in lines.iter().enumerate() {
            last.insert((sid.as_str(), l.seq), i);
        }
        lines
            .iter()
            .enumerate()
            .map(|(i, (sid, l))| last.get(&(sid.as_str(), l.seq)) == Some(&i))
            .collect()
    };
    let mut keep = keep.into_iter();
    lines.retain(|_| keep.next().unwrap_or(true));
    for chunk in lines.chunks(LINES_PER_STATEMENT) {
        retry(
            || upsert_lines(pool, sqlite, chunk),
            |e, attempt| {
                warn!(error = %e, attempt, lines = chunk.len(), "transcript write failed");
            },
        )
        .await;
    }
    lines.clear();
}

/// The statement writing `rows` transcript lines: `?` parameters on SQLite, `$n` on PostgreSQL.
///
/// SQLite takes `$n` for a named parameter: it looks each one up by name in a list while
/// parsing, and sqlx looks each one's name up again while binding, so a statement of 500 rows
/// (3,000 parameters) cost millions of string comparisons. Anonymous `?` parameters need neither.
fn lines_statement(sqlite: bool, rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(140 + rows * 40);
    sql.push_str("INSERT INTO transcript (call_sid, seq, role, text, event_id, at_ms) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        if sqlite {
            sql.push_str("(?, ?, ?, ?, ?, ?)");
        } else {
            let p = i * 6;
            let _ = write!(
                sql,
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                p + 6
            );
        }
    }
    sql.push_str(" ON CONFLICT (call_sid, seq) DO UPDATE SET text = excluded.text");
    sql
}

async fn upsert_lines(
    pool: &AnyPool,
    sqlite: bool,
    lines: &[(String, TranscriptLine)],
) -> Result<(), RecordsError> {
    let sql = lines_statement(sqlite, lines.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for l in lines {
        let (sid, TranscriptLine { seq, entry }) = l;
        q = q
            .bind(sid.clone())
            .bind(i64::from(*seq))
            .bind(entry.role.clone())
            .bind(entry.text.clone())
            .bind(entry.event_id)
            .bind(i64::try_from(entry.at_ms).unwrap_or(i64::MAX));
    }
    // Not kept prepared: the statement differs with the number of rows, and a cache of up to 100
    // of them held ~2 MB at 250 calls.
    q.persistent(false).execute(pool).await?;
    Ok(())
}

async fn read_transcript(
    pool: &AnyPool,
    call_sid: &str,
) -> Result<Vec<TranscriptEntry>, RecordsError> {
    let rows = sqlx::query(
        "SELECT role, text, event_id, at_ms FROM transcript WHERE call_sid = $1 ORDER BY seq",
    )
    .bind(call_sid)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let at: i64 = r.try_get("at_ms")?;
        out.push(TranscriptEntry {
            role: r.try_get("role")?,
            text: r.try_get("text")?,
            event_id: r.try_get("event_id")?,
            at_ms: u64::try_from(at).unwrap_or(0),
        });
    }
    Ok(out)
}

async fn delete_transcript(pool: &AnyPool, call_sid: &str) -> Result<(), RecordsError> {
    sqlx::query("DELETE FROM transcript WHERE call_sid = $1")
        .bind(call_sid)
        .execute(pool)
        .await?;
    Ok(())
}

async fn upsert(pool: &AnyPool, node: &str, r: &CallRecord) -> Result<(), RecordsError> {
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
                            to_number, conversation_id, end_cause, record, node)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
    .bind(node)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite gets anonymous `?` parameters (a `$n` is a name it looks up in a list, quadratic
    /// in a 500-row statement); PostgreSQL gets `$1`… in order, each once.
    #[test]
    fn transcript_statement_parameters_suit_the_database() {
        let sql = lines_statement(true, 500);
        assert_eq!(sql.matches('?').count(), 3000);
        assert!(!sql.contains('$'), "named parameters for SQLite");
        let sql = lines_statement(false, 3);
        let params: Vec<&str> = sql
            .split(|c: char| !(c == '$' || c.is_ascii_digit()))
            .filter(|p| p.starts_with('$'))
            .collect();
        let want: Vec<String> = (1..=18).map(|n| format!("${n}")).collect();
        assert_eq!(params, want);
        assert!(!sql.contains('?'));
    }

    fn temp_db(name: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("trunkline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let url = format!("sqlite://{}", dir.join("t.db").display());
        (dir, url)
    }

    #[tokio::test]
    async fn daily_counts_survive_a_restart() {
        let (dir, url) = temp_db("daily");
        let store = RecordStore::open(&url).await.expect("open");
        store.count_destination(20_000, "+33612345678");
        store.count_destination(20_000, "+33612345678");
        store.count_destination(20_000, "+33612345679");
        store.count_destination(19_990, "+33612345678");
        store.flush().await;
        drop(store);
        let store = RecordStore::open(&url).await.expect("reopen");
        let mut counts = store.daily_counts(20_000).await.expect("counts");
        counts.sort();
        assert_eq!(
            counts,
            vec![("+33612345678".into(), 2), ("+33612345679".into(), 1)]
        );
        // Old days are gone.
        assert!(store.daily_counts(19_990).await.expect("counts").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn calls_left_open_by_this_node_are_failed_at_restart() {
        let (dir, url) = temp_db("recover");
        let store = RecordStore::open_as(&url, "node-a").await.expect("open");
        let mut open = Vec::new();
        for (i, status) in ["initiated", "ringing", "in-progress"].iter().enumerate() {
            let mut r = CallRecord::new(format!("CA{i}"), "outbound", "+1".into(), "+2".into());
            r.status = (*status).into();
            r.timestamps.created_ms = Some(1000 + i as u64);
            store.save_now(&r).await.expect("save");
            open.push(r.call_sid);
        }
        let mut done = CallRecord::new("CAdone".into(), "outbound", "+1".into(), "+2".into());
        done.status = "completed".into();
        done.end_cause = Some(EndCause::RemoteHangup);
        done.timestamps.ended_ms = Some(5000);
        store.save_now(&done).await.expect("save");
        drop(store);
        let other = RecordStore::open_as(&url, "node-b").await.expect("open b");
        let mut theirs = CallRecord::new("CAb".into(), "inbound", "+1".into(), "+2".into());
        theirs.status = "in-progress".into();
        other.save_now(&theirs).await.expect("save");
        drop(other);

        // Restart node-a.
        let store = RecordStore::open_as(&url, "node-a").await.expect("reopen");
        let recovered = store.recover_interrupted().await.expect("recover");
        assert_eq!(recovered.len(), 3);
        for sid in &open {
            let r = store.get(sid).await.expect("record");
            assert_eq!(r.status, "failed", "{sid}");
            assert_eq!(r.end_cause, Some(EndCause::GatewayRestart), "{sid}");
            assert_eq!(r.timestamps.ended_ms, None, "{sid}: end time unknown");
        }
        assert_eq!(store.get("CAdone").await.expect("done"), done);
        let failed = store
            .list(&ListQuery {
                status: Some("failed".into()),
                ..ListQuery::default()
            })
            .await;
        assert_eq!(failed.len(), 3);
        // Another node's open call is its own business.
        assert_eq!(store.get("CAb").await.expect("b").status, "in-progress");
        // Idempotent.
        assert!(store.recover_interrupted().await.expect("again").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

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
