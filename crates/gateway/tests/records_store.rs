//! The call records store keeps a call's transcript out of the call's memory: lines are written
//! as they come, read back in order (a correction replaces its line), merged into a running
//! call's record, folded into the final record (and then deleted), and recovered after a crash.
//! On SQLite and, with `TRUNKLINE_TEST_DATABASE_URL`, on PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use common::pg;
use trunkline_call::CallRecord;
use trunkline_call::record::{EndCause, TranscriptEntry, TranscriptLine};
use trunkline_gateway::records::RecordStore;

fn line(seq: u32, role: &str, text: &str, event_id: Option<i64>) -> TranscriptLine {
    TranscriptLine {
        seq,
        entry: TranscriptEntry {
            role: role.into(),
            text: text.into(),
            event_id,
            at_ms: 1_700_000_000_000 + u64::from(seq) * 1000,
        },
    }
}

fn texts(t: &[TranscriptEntry]) -> Vec<&str> {
    t.iter().map(|e| e.text.as_str()).collect()
}

fn running(sid: &str) -> CallRecord {
    let mut r = CallRecord::new(sid.into(), "outbound", "+15550001".into(), "+33100".into());
    r.status = "in-progress".into();
    r.timestamps.created_ms = Some(1_700_000_000_000);
    r
}

async fn transcript_lines_round_trip(url: &str) {
    let store = RecordStore::open_as(url, "node-a").await.expect("open");

    // A running call: its lines, one corrected, read back in order without a flush (the read
    // waits for the lines queued before it).
    store.save(running("CAlive"));
    store.transcript_line(
        "CAlive",
        line(0, "agent", "Hello, how can I help?", Some(1)),
    );
    store.transcript_line("CAlive", line(1, "user", "A table for two", Some(2)));
    store.transcript_line("CAlive", line(2, "agent", "For which day?", Some(3)));
    store.transcript_line("CAlive", line(3, "user", "(unnumbered)", None));
    store.transcript_line("CAlive", line(2, "agent", "For which", Some(3)));
    let got = store.transcript("CAlive").await;
    assert_eq!(
        texts(&got),
        [
            "Hello, how can I help?",
            "A table for two",
            "For which",
            "(unnumbered)"
        ]
    );
    assert_eq!(got[1].role, "user");
    assert_eq!(got[1].event_id, Some(2));
    assert_eq!(got[3].event_id, None);
    assert_eq!(
        got[2].at_ms, 1_700_000_002_000,
        "a correction keeps its time"
    );
    // Read from the database as a running call: its lines so far.
    let rec = store.get("CAlive").await.expect("record");
    assert_eq!(rec.status, "in-progress");
    assert_eq!(rec.transcript, got);

    // Lines queued alone are written within a second, with no read or snapshot after them.
    store.save(running("CAtimer"));
    store.flush().await;
    store.transcript_line("CAtimer", line(0, "agent", "Hello", Some(1)));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let rec = store.get("CAtimer").await.expect("record");
    assert_eq!(texts(&rec.transcript), ["Hello"]);

    // Ordered by number, not as text (10 after 9), and many lines at once.
    for seq in 0..1200u32 {
        store.transcript_line("CAmany", line(seq, "user", &seq.to_string(), Some(1)));
    }
    let many = store.transcript("CAmany").await;
    assert_eq!(many.len(), 1200);
    assert!(
        many.iter()
            .enumerate()
            .all(|(i, e)| e.text == i.to_string())
    );

    // The final record carries the transcript; the lines are then deleted.
    let mut done = running("CAlive");
    done.status = "completed".into();
    done.end_cause = Some(EndCause::RemoteHangup);
    done.timestamps.ended_ms = Some(1_700_000_060_000);
    done.transcript = got.clone();
    store.save(done.clone());
    store.flush().await;
    assert!(store.transcript("CAlive").await.is_empty(), "lines deleted");
    assert_eq!(store.get("CAlive").await.expect("final"), done);

    // A crash mid-call: the record stays `in-progress` with its lines; the restarted node folds
    // them into the failed record.
    store.save(running("CAcrash"));
    store.transcript_line("CAcrash", line(0, "agent", "Hello", Some(1)));
    store.transcript_line("CAcrash", line(1, "user", "Hi", Some(2)));
    store.flush().await;
    drop(store);
    let store = RecordStore::open_as(url, "node-a").await.expect("reopen");
    let recovered = store.recover_interrupted().await.expect("recover");
    let crashed = recovered
        .iter()
        .find(|r| r.call_sid == "CAcrash")
        .expect("recovered");
    assert_eq!(crashed.end_cause, Some(EndCause::GatewayRestart));
    assert_eq!(texts(&crashed.transcript), ["Hello", "Hi"]);
    let rec = store.get("CAcrash").await.expect("record");
    assert_eq!(texts(&rec.transcript), ["Hello", "Hi"]);
    assert!(store.transcript("CAcrash").await.is_empty(), "lines folded");
}

#[tokio::test]
async fn transcript_lines_round_trip_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("trunkline-transcript-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("records.db").display());
    transcript_lines_round_trip(&url).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn transcript_lines_round_trip_on_postgresql() {
    let Some(url) = pg::database("transcript").await else {
        return;
    };
    transcript_lines_round_trip(&url).await;
}
