//! Call recordings on disk: where a call's file goes, and retention (`recording.retention_days`):
//! files older than that are deleted at start and then hourly, counted in
//! `trunkline_recording_deleted_total`. The writer itself is `trunkline_call::recording`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use trunkline_call::recording::{RecordingFormat, RecordingStats};

/// How often retention runs after the start.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The file of call `sid` in `dir`.
pub fn path_for(dir: &Path, sid: &str, format: RecordingFormat) -> PathBuf {
    dir.join(format!("{sid}.{}", format.extension()))
}

/// Whether a file last modified at `mtime` is past `retention_days` at `now` (0: never).
pub fn expired(mtime: SystemTime, now: SystemTime, retention_days: u32) -> bool {
    if retention_days == 0 {
        return false;
    }
    let keep = Duration::from_secs(u64::from(retention_days) * 86_400);
    now.duration_since(mtime).is_ok_and(|age| age > keep)
}

/// Delete the recordings in `dir` past `retention_days` at `now`; how many were deleted. Only
/// `*.wav` / `*.ogg` files directly in `dir` are considered.
pub fn sweep(dir: &Path, retention_days: u32, now: SystemTime) -> u64 {
    if retention_days == 0 {
        return 0;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "recording retention: cannot list");
            return 0;
        }
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "wav" || e == "ogg");
        let Ok(meta) = entry.metadata() else { continue };
        if !ours || !meta.is_file() {
            continue;
        }
        let Ok(mtime) = meta.modified() else { continue };
        if expired(mtime, now, retention_days) {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "recording retention: cannot delete");
                }
            }
        }
    }
    if deleted > 0 {
        tracing::info!(dir = %dir.display(), deleted, "recordings past retention deleted");
    }
    deleted
}

/// Run [`sweep`] now and every [`SWEEP_EVERY`] (off the async runtime's threads).
pub fn spawn_retention(dir: PathBuf, retention_days: u32, stats: Arc<RecordingStats>) {
    if retention_days == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let d = dir.clone();
            #[allow(clippy::disallowed_methods)] // the task owns the clock
            let n =
                tokio::task::spawn_blocking(move || sweep(&d, retention_days, SystemTime::now()))
                    .await
                    .unwrap_or(0);
            stats.deleted.fetch_add(n, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_by_whole_days_and_zero_keeps() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let old = now - Duration::from_secs(30 * 86_400 + 1);
        let young = now - Duration::from_secs(30 * 86_400 - 1);
        assert!(expired(old, now, 30));
        assert!(!expired(young, now, 30));
        assert!(!expired(old, now, 0));
        // A file from the future (clock change) is kept.
        assert!(!expired(now + Duration::from_secs(10), now, 1));
    }

    #[test]
    fn sweep_deletes_old_recordings_only() {
        let dir = std::env::temp_dir().join(format!("trunkline-ret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        let mk = |name: &str, age_days: u64| {
            let p = dir.join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(now - Duration::from_secs(age_days * 86_400))
                .unwrap();
            p
        };
        let old = mk("CAold.wav", 40);
        let fresh = mk("CAnew.wav", 2);
        let other = mk("notes.txt", 400);
        assert_eq!(sweep(&dir, 30, now), 1);
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(other.exists());
        assert_eq!(sweep(&dir, 0, now), 0);
        assert_eq!(sweep(&dir, 1, now), 1);
        assert!(!fresh.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
