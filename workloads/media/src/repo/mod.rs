//! Persistence of media metadata behind [`MediaRepo`]: uploads and their parts, files, and each
//! tenant's storage usage (the quota counter). Two adapters, [`sqlite::SqliteRepo`] (its own
//! file, for the embedded default) and [`mongo::MongoRepo`] (its own collections, tenant-first
//! keys), pass one behavioural suite ([`suite`]).
//!
//! The quota is a counter per tenant of bytes reserved or stored. [`MediaRepo::reserve`] is one
//! atomic conditional increment ("add n if the total stays within the limit"), so two uploads
//! racing for the last bytes cannot both get them.

pub mod mongo;
pub mod sqlite;
pub mod suite;

use crate::model::{Media, Part, Upload, UploadState};
use async_trait::async_trait;
use caas_domain::TenantId;
use std::sync::Arc;
use time::OffsetDateTime;

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("already exists")]
    AlreadyExists,
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store error: {0}")]
    Internal(String),
}

#[async_trait]
pub trait MediaRepo: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    async fn create_upload(&self, upload: &Upload) -> Result<()>;
    async fn get_upload(&self, tenant: &TenantId, id: &str) -> Result<Option<Upload>>;
    /// Moves an upload from `from` to `to`; `false` when it was not in `from` (or is gone).
    async fn set_upload_state(
        &self,
        tenant: &TenantId,
        id: &str,
        from: UploadState,
        to: UploadState,
    ) -> Result<bool>;
    /// Removes an upload and its parts.
    async fn delete_upload(&self, tenant: &TenantId, id: &str) -> Result<()>;
    /// Records a part, replacing an earlier one with the same number.
    async fn put_part(&self, tenant: &TenantId, upload_id: &str, part: &Part) -> Result<()>;
    /// The parts of an upload by number.
    async fn list_parts(&self, tenant: &TenantId, upload_id: &str) -> Result<Vec<Part>>;
    /// Uploads (of every tenant: upkeep) whose expiry is before `now`.
    async fn expired_uploads(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Upload>>;

    async fn insert_media(&self, media: &Media) -> Result<()>;
    async fn get_media(&self, tenant: &TenantId, id: &str) -> Result<Option<Media>>;
    /// Soft-deletes a file; returns it when this call deleted it (not when it already was).
    async fn mark_deleted(
        &self,
        tenant: &TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Media>>;
    /// Soft-deleted files (of every tenant: upkeep) deleted before `before`.
    async fn purgeable(&self, before: OffsetDateTime, limit: u32) -> Result<Vec<Media>>;
    /// Removes a file's record for good.
    async fn remove_media(&self, tenant: &TenantId, id: &str) -> Result<()>;

    /// Adds `bytes` to the tenant's usage if the result stays within `limit`. Atomic.
    async fn reserve(&self, tenant: &TenantId, bytes: u64, limit: u64) -> Result<bool>;
    /// Gives back `bytes` (never below zero).
    async fn release(&self, tenant: &TenantId, bytes: u64) -> Result<()>;
    /// Bytes reserved or stored by the tenant.
    async fn usage(&self, tenant: &TenantId) -> Result<u64>;
}

pub type DynRepo = Arc<dyn MediaRepo>;
