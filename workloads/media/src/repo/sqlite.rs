//! The embedded metadata adapter: a SQLite file of its own (`media.db`), WAL with
//! `synchronous=FULL`, one connection serialising every statement on Tokio's blocking pool.
//! Records are JSON documents next to the columns they are queried by; every key starts with
//! the tenant.

use super::{MediaRepo, RepoError, Result};
use crate::model::{Media, Part, Upload, UploadState};
use async_trait::async_trait;
use caas_domain::TenantId;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS media_uploads (
    tenant_id TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, expires_ms INTEGER NOT NULL,
    doc TEXT NOT NULL, PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS media_uploads_expiry ON media_uploads (expires_ms);
CREATE TABLE IF NOT EXISTS media_parts (
    tenant_id TEXT NOT NULL, upload_id TEXT NOT NULL, number INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (tenant_id, upload_id, number)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS media_files (
    tenant_id TEXT NOT NULL, id TEXT NOT NULL, deleted_ms INTEGER, doc TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS media_files_deleted ON media_files (deleted_ms)
    WHERE deleted_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS media_usage (
    tenant_id TEXT NOT NULL PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID;
";

#[derive(Clone)]
pub struct SqliteRepo {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteRepo").finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> RepoError {
    RepoError::Internal(e.to_string())
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn to_doc<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(err)
}

fn from_doc<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(err)
}

fn i64_of(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| RepoError::Internal("size out of range".into()))
}

impl SqliteRepo {
    /// Opens (creating when missing) the metadata file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(err)?
    }

    /// The document of one row of `table` (a media table keyed by tenant and id).
    async fn get_doc<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<T>> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            let doc: Option<String> = c
                .query_row(
                    &format!("SELECT doc FROM {table} WHERE tenant_id = ?1 AND id = ?2"),
                    params![t, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            doc.map(|d| from_doc(&d)).transpose()
        })
        .await
    }
}

#[async_trait]
impl MediaRepo for SqliteRepo {
    async fn ping(&self) -> Result<()> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |_| Ok(())).map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn create_upload(&self, upload: &Upload) -> Result<()> {
        let doc = to_doc(upload)?;
        let (t, id, state, exp) = (
            upload.tenant_id.to_string(),
            upload.id.clone(),
            upload.state.as_str(),
            ms(upload.expires_at),
        );
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO media_uploads (tenant_id, id, state, expires_ms, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![t, id, state, exp, doc],
                )
                .map_err(err)?;
            if n == 0 {
                return Err(RepoError::AlreadyExists);
            }
            Ok(())
        })
        .await
    }

    async fn get_upload(&self, tenant: &TenantId, id: &str) -> Result<Option<Upload>> {
        self.get_doc("media_uploads", tenant, id).await
    }

    async fn set_upload_state(
        &self,
        tenant: &TenantId,
        id: &str,
        from: UploadState,
        to: UploadState,
    ) -> Result<bool> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE media_uploads SET state = ?4, doc = json_set(doc, '$.state', ?4)
                     WHERE tenant_id = ?1 AND id = ?2 AND state = ?3",
                    params![t, id, from.as_str(), to.as_str()],
                )
                .map_err(err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_upload(&self, tenant: &TenantId, id: &str) -> Result<()> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            let tx = c.transaction().map_err(err)?;
            tx.execute(
                "DELETE FROM media_parts WHERE tenant_id = ?1 AND upload_id = ?2",
                params![t, id],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM media_uploads WHERE tenant_id = ?1 AND id = ?2",
                params![t, id],
            )
            .map_err(err)?;
            tx.commit().map_err(err)
        })
        .await
    }

    async fn put_part(&self, tenant: &TenantId, upload_id: &str, part: &Part) -> Result<()> {
        let doc = to_doc(part)?;
        let (t, u, n) = (tenant.to_string(), upload_id.to_string(), part.number);
        self.with(move |c| {
            c.execute(
                "INSERT INTO media_parts (tenant_id, upload_id, number, doc) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, upload_id, number) DO UPDATE SET doc = excluded.doc",
                params![t, u, n, doc],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn list_parts(&self, tenant: &TenantId, upload_id: &str) -> Result<Vec<Part>> {
        let (t, u) = (tenant.to_string(), upload_id.to_string());
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT doc FROM media_parts WHERE tenant_id = ?1 AND upload_id = ?2
                     ORDER BY number",
                )
                .map_err(err)?;
            let docs = st
                .query_map(params![t, u], |r| r.get::<_, String>(0))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            docs.iter().map(|d| from_doc(d)).collect()
        })
        .await
    }

    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Upload>> {
        let now = ms(now);
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT doc FROM media_uploads WHERE expires_ms < ?1 ORDER BY expires_ms
                     LIMIT ?2",
                )
                .map_err(err)?;
            let docs = st
                .query_map(params![now, limit], |r| r.get::<_, String>(0))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            docs.iter().map(|d| from_doc(d)).collect()
        })
        .await
    }

    async fn insert_media(&self, media: &Media) -> Result<()> {
        let doc = to_doc(media)?;
        let (t, id, del) = (
            media.tenant_id.to_string(),
            media.id.clone(),
            media.deleted_at.map(ms),
        );
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO media_files (tenant_id, id, deleted_ms, doc)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![t, id, del, doc],
                )
                .map_err(err)?;
            if n == 0 {
                return Err(RepoError::AlreadyExists);
            }
            Ok(())
        })
        .await
    }

    async fn get_media(&self, tenant: &TenantId, id: &str) -> Result<Option<Media>> {
        self.get_doc("media_files", tenant, id).await
    }

    async fn mark_deleted(
        &self,
        tenant: &TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Media>> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            let tx = c.transaction().map_err(err)?;
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM media_files
                     WHERE tenant_id = ?1 AND id = ?2 AND deleted_ms IS NULL",
                    params![t, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            let mut media: Media = from_doc(&doc)?;
            media.deleted_at = Some(at);
            tx.execute(
                "UPDATE media_files SET deleted_ms = ?3, doc = ?4 WHERE tenant_id = ?1 AND id = ?2",
                params![t, id, ms(at), to_doc(&media)?],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(Some(media))
        })
        .await
    }

    async fn purgeable(&self, before: OffsetDateTime, limit: u32) -> Result<Vec<Media>> {
        let before = ms(before);
        self.with(move |c| {
            let mut st = c
                .prepare(
                    "SELECT doc FROM media_files WHERE deleted_ms IS NOT NULL AND deleted_ms < ?1
                     ORDER BY deleted_ms LIMIT ?2",
                )
                .map_err(err)?;
            let docs = st
                .query_map(params![before, limit], |r| r.get::<_, String>(0))
                .map_err(err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            docs.iter().map(|d| from_doc(d)).collect()
        })
        .await
    }

    async fn remove_media(&self, tenant: &TenantId, id: &str) -> Result<()> {
        let (t, id) = (tenant.to_string(), id.to_string());
        self.with(move |c| {
            c.execute(
                "DELETE FROM media_files WHERE tenant_id = ?1 AND id = ?2",
                params![t, id],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn reserve(&self, tenant: &TenantId, bytes: u64, limit: u64) -> Result<bool> {
        let (t, n, limit) = (tenant.to_string(), i64_of(bytes)?, i64_of(limit)?);
        self.with(move |c| {
            let tx = c.transaction().map_err(err)?;
            tx.execute(
                "INSERT OR IGNORE INTO media_usage (tenant_id, bytes) VALUES (?1, 0)",
                params![t],
            )
            .map_err(err)?;
            let changed = tx
                .execute(
                    "UPDATE media_usage SET bytes = bytes + ?2
                     WHERE tenant_id = ?1 AND bytes + ?2 <= ?3",
                    params![t, n, limit],
                )
                .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release(&self, tenant: &TenantId, bytes: u64) -> Result<()> {
        let (t, n) = (tenant.to_string(), i64_of(bytes)?);
        self.with(move |c| {
            c.execute(
                "UPDATE media_usage SET bytes = max(bytes - ?2, 0) WHERE tenant_id = ?1",
                params![t, n],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn usage(&self, tenant: &TenantId) -> Result<u64> {
        let t = tenant.to_string();
        self.with(move |c| {
            let n: Option<i64> = c
                .query_row(
                    "SELECT bytes FROM media_usage WHERE tenant_id = ?1",
                    params![t],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)?;
            Ok(n.unwrap_or(0).max(0) as u64)
        })
        .await
    }
}
