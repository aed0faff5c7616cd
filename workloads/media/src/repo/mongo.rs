//! The production metadata adapter: MongoDB (driver 3.x), collections of its own in the store's
//! database: `media_uploads`, `media_parts`, `media_files`, `media_usage`. Keys are tenant
//! first (`_id` = `"<tenant>/<id>"`, parts `"<tenant>/<upload>/<number>"`; ids cannot contain
//! `/`), and every secondary index starts with `tenant_id`, except the two upkeep indexes
//! (upload expiry, deletion time) that the janitor reads across tenants. A record is kept as a
//! JSON string (`doc`) next to the fields it is queried by; numbers are read leniently (some
//! wire-compatible servers return a small Int64 as Int32).
//!
//! The quota counter is one document per tenant; [`MediaRepo::reserve`] is a single
//! `findOneAndUpdate` whose filter says "usage + n <= limit", so concurrent reservations are
//! serialised by the server.

use super::{MediaRepo, RepoError, Result};
use crate::model::{Media, Part, Upload, UploadState};
use async_trait::async_trait;
use caas_domain::TenantId;
use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use std::time::Duration;
use time::OffsetDateTime;

const DUPLICATE_KEY: i32 = 11000;
/// `deleted_ms` of a live file: a number, not null, so that both "live" and "deleted before"
/// are plain comparisons (null matching differs between wire-compatible servers).
const NOT_DELETED: i64 = 0;

#[derive(Clone)]
pub struct MongoRepo {
    uploads: Collection<Document>,
    parts: Collection<Document>,
    files: Collection<Document>,
    usage: Collection<Document>,
}

impl std::fmt::Debug for MongoRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoRepo").finish_non_exhaustive()
    }
}

fn db_err(e: mongodb::error::Error) -> RepoError {
    use mongodb::error::ErrorKind;
    match *e.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => RepoError::Unavailable(e.to_string()),
        _ => RepoError::Internal(e.to_string()),
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| RepoError::Internal(e.to_string()))
}

fn from_doc<T: serde::de::DeserializeOwned>(d: &Document) -> Result<T> {
    let s = d
        .get_str("doc")
        .map_err(|e| RepoError::Internal(e.to_string()))?;
    serde_json::from_str(s).map_err(|e| RepoError::Internal(e.to_string()))
}

fn num(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

fn i64_of(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| RepoError::Internal("size out of range".into()))
}

fn key(tenant: &TenantId, id: &str) -> String {
    format!("{tenant}/{id}")
}

impl MongoRepo {
    /// Connects and creates the indexes.
    pub async fn connect(uri: &str, database: &str) -> Result<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(db_err)?;
        if options.app_name.is_none() {
            options.app_name = Some("caas-media".into());
        }
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(Duration::from_secs(10));
        }
        let client = Client::with_options(options).map_err(db_err)?;
        let db = client.database(database);
        let repo = Self {
            uploads: db.collection("media_uploads"),
            parts: db.collection("media_parts"),
            files: db.collection("media_files"),
            usage: db.collection("media_usage"),
        };
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        repo.uploads
            .create_index(index(doc! {"expires_ms": 1}, "expiry"))
            .await
            .map_err(db_err)?;
        repo.uploads
            .create_index(index(doc! {"tenant_id": 1, "owner_id": 1}, "tenant_owner"))
            .await
            .map_err(db_err)?;
        repo.parts
            .create_index(index(
                doc! {"tenant_id": 1, "upload_id": 1, "number": 1},
                "tenant_upload_number",
            ))
            .await
            .map_err(db_err)?;
        repo.files
            .create_index(index(doc! {"deleted_ms": 1}, "deleted"))
            .await
            .map_err(db_err)?;
        repo.files
            .create_index(index(
                doc! {"tenant_id": 1, "conversation_id": 1},
                "tenant_conversation",
            ))
            .await
            .map_err(db_err)?;
        Ok(repo)
    }
}

#[async_trait]
impl MediaRepo for MongoRepo {
    async fn ping(&self) -> Result<()> {
        self.usage
            .find_one(doc! {"_id": "\u{0}ping"})
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_upload(&self, u: &Upload) -> Result<()> {
        let d = doc! {
            "_id": key(&u.tenant_id, &u.id),
            "tenant_id": u.tenant_id.as_str(),
            "owner_id": u.owner_id.as_str(),
            "state": u.state.as_str(),
            "expires_ms": ms(u.expires_at),
            "doc": to_json(u)?,
        };
        match self.uploads.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(RepoError::AlreadyExists),
            Err(e) => Err(db_err(e)),
        }
    }

    async fn get_upload(&self, tenant: &TenantId, id: &str) -> Result<Option<Upload>> {
        let d = self
            .uploads
            .find_one(doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        d.map(|d| from_doc(&d)).transpose()
    }

    async fn set_upload_state(
        &self,
        tenant: &TenantId,
        id: &str,
        from: UploadState,
        to: UploadState,
    ) -> Result<bool> {
        let Some(mut upload) = self.get_upload(tenant, id).await? else {
            return Ok(false);
        };
        upload.state = to;
        let before = self
            .uploads
            .find_one_and_update(
                doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str(), "state": from.as_str()},
                doc! {"$set": {"state": to.as_str(), "doc": to_json(&upload)?}},
            )
            .await
            .map_err(db_err)?;
        Ok(before.is_some())
    }

    async fn delete_upload(&self, tenant: &TenantId, id: &str) -> Result<()> {
        self.parts
            .delete_many(doc! {"tenant_id": tenant.as_str(), "upload_id": id})
            .await
            .map_err(db_err)?;
        self.uploads
            .delete_one(doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn put_part(&self, tenant: &TenantId, upload_id: &str, part: &Part) -> Result<()> {
        let id = format!("{tenant}/{upload_id}/{}", part.number);
        self.parts
            .replace_one(
                doc! {"_id": &id},
                doc! {
                    "_id": &id,
                    "tenant_id": tenant.as_str(),
                    "upload_id": upload_id,
                    "number": i64::from(part.number),
                    "doc": to_json(part)?,
                },
            )
            .upsert(true)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_parts(&self, tenant: &TenantId, upload_id: &str) -> Result<Vec<Part>> {
        let docs: Vec<Document> = self
            .parts
            .find(doc! {"tenant_id": tenant.as_str(), "upload_id": upload_id})
            .sort(doc! {"number": 1})
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        let mut parts: Vec<Part> = docs.iter().map(from_doc).collect::<Result<_>>()?;
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Upload>> {
        let docs: Vec<Document> = self
            .uploads
            .find(doc! {"expires_ms": {"$lt": ms(now)}})
            .sort(doc! {"expires_ms": 1})
            .limit(i64::from(limit))
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        docs.iter().map(from_doc).collect()
    }

    async fn insert_media(&self, m: &Media) -> Result<()> {
        let d = doc! {
            "_id": key(&m.tenant_id, &m.id),
            "tenant_id": m.tenant_id.as_str(),
            "conversation_id": m.conversation_id.as_str(),
            "deleted_ms": m.deleted_at.map_or(NOT_DELETED, ms),
            "doc": to_json(m)?,
        };
        match self.files.insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(RepoError::AlreadyExists),
            Err(e) => Err(db_err(e)),
        }
    }

    async fn get_media(&self, tenant: &TenantId, id: &str) -> Result<Option<Media>> {
        let d = self
            .files
            .find_one(doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        d.map(|d| from_doc(&d)).transpose()
    }

    async fn mark_deleted(
        &self,
        tenant: &TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Media>> {
        let Some(mut media) = self.get_media(tenant, id).await? else {
            return Ok(None);
        };
        if media.deleted_at.is_some() {
            return Ok(None);
        }
        media.deleted_at = Some(at);
        // Only the first of concurrent deletes matches `deleted_ms: NOT_DELETED`.
        let before = self
            .files
            .find_one_and_update(
                doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str(), "deleted_ms": NOT_DELETED},
                doc! {"$set": {"deleted_ms": ms(at), "doc": to_json(&media)?}},
            )
            .await
            .map_err(db_err)?;
        Ok(before.map(|_| media))
    }

    async fn purgeable(&self, before: OffsetDateTime, limit: u32) -> Result<Vec<Media>> {
        let docs: Vec<Document> = self
            .files
            .find(doc! {"deleted_ms": {"$gt": NOT_DELETED, "$lt": ms(before)}})
            .sort(doc! {"deleted_ms": 1})
            .limit(i64::from(limit))
            .await
            .map_err(db_err)?
            .try_collect()
            .await
            .map_err(db_err)?;
        docs.iter().map(from_doc).collect()
    }

    async fn remove_media(&self, tenant: &TenantId, id: &str) -> Result<()> {
        self.files
            .delete_one(doc! {"_id": key(tenant, id), "tenant_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn reserve(&self, tenant: &TenantId, bytes: u64, limit: u64) -> Result<bool> {
        let (n, limit) = (i64_of(bytes)?, i64_of(limit)?);
        if n > limit {
            return Ok(false);
        }
        let id = tenant.as_str();
        self.usage
            .update_one(
                doc! {"_id": id},
                doc! {"$setOnInsert": {"tenant_id": id, "bytes": 0_i64}},
            )
            .upsert(true)
            .await
            .map_err(db_err)?;
        let r = self
            .usage
            .find_one_and_update(
                doc! {"_id": id, "bytes": {"$lte": limit - n}},
                doc! {"$inc": {"bytes": n}},
            )
            .await
            .map_err(db_err)?;
        Ok(r.is_some())
    }

    async fn release(&self, tenant: &TenantId, bytes: u64) -> Result<()> {
        let n = i64_of(bytes)?;
        self.usage
            .update_one(doc! {"_id": tenant.as_str()}, doc! {"$inc": {"bytes": -n}})
            .await
            .map_err(db_err)?;
        // Never below zero (a release after a crash-restart could double count).
        self.usage
            .update_one(
                doc! {"_id": tenant.as_str(), "bytes": {"$lt": 0_i64}},
                doc! {"$set": {"bytes": 0_i64}},
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn usage(&self, tenant: &TenantId) -> Result<u64> {
        let d = self
            .usage
            .find_one(doc! {"_id": tenant.as_str()})
            .await
            .map_err(db_err)?;
        Ok(d.map(|d| num(d.get("bytes")).max(0) as u64).unwrap_or(0))
    }
}
