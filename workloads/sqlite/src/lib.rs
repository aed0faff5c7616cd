//! What the embedded SQLite files of caas share (the store, `caas-store`, and the log,
//! `caas-bus`): [`open`] with the durability settings both rely on, and [`checkpointer`], the
//! thread that folds the write-ahead log back into the database so that no commit has to.

use rusqlite::Connection;
use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

/// How often [`checkpointer`] runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Opens (creating when missing) a database file for durable writes: WAL, `synchronous=FULL`
/// (a committed transaction survives power loss), a 10 s busy timeout, a statement cache of 64,
/// and no automatic checkpoints — run [`checkpointer`] for the file.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.set_prepared_statement_cache_capacity(64);
    // Checkpoints run on a thread of their own ([`checkpointer`]), not inside a commit.
    c.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(c)
}

/// Checkpoints the WAL of `path` every 200 ms from a connection of its own for as long as
/// `owner` lives, so that no commit ever waits for a checkpoint (with SQLite's automatic
/// checkpoints the commit that crosses the threshold copies the WAL into the database).
/// PASSIVE: it never blocks the writer or readers, and catches up on the next round when a
/// reader holds an old snapshot. When the owner is gone it folds the WAL in completely
/// (TRUNCATE) and stops.
pub fn checkpointer<T: Send + Sync + 'static>(path: &Path, owner: Weak<T>) {
    let path = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("caas-checkpoint".into())
        .spawn(move || {
            let conn = match Connection::open(&path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "Failed to open the checkpoint connection.");
                    return;
                }
            };
            if let Err(e) = conn.busy_timeout(Duration::from_secs(1)) {
                tracing::warn!(error = %e, "Failed to set the checkpoint busy timeout.");
            }
            while owner.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying.");
                }
            }
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "Failed to start the checkpoint thread.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn wal_size(db: &Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn commits_leave_the_wal_to_the_checkpointer_which_folds_it_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let c = open(&db).unwrap();
        c.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let blob = vec![7u8; 4096];
        for _ in 0..3_000 {
            c.execute("INSERT INTO t VALUES (?1)", [&blob]).unwrap();
        }
        // No automatic checkpoint: the WAL holds every page written (~12 MB, far beyond the
        // 1,000-page default threshold of ~4 MB).
        assert!(wal_size(&db) > 8_000_000, "{}", wal_size(&db));

        let owner = Arc::new(());
        checkpointer(&db, Arc::downgrade(&owner));
        // Once a round has copied every page back, writes start the WAL from its beginning
        // again: the file stops growing. Without the rounds every write grows it (and this
        // times out).
        let mut written = 3_000;
        wait_until("writes to reuse the WAL", || {
            let size = wal_size(&db);
            for _ in 0..10 {
                c.execute("INSERT INTO t VALUES (?1)", [&blob]).unwrap();
            }
            written += 10;
            wal_size(&db) == size
        });
        // Its owner gone, the thread folds the WAL in completely and stops.
        drop(owner);
        wait_until("the WAL truncated", || wal_size(&db) == 0);
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, written);
    }
}
