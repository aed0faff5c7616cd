//! Where the bytes live: an `object_store` backend, S3 (or any S3-compatible server) in
//! production and a local directory by default. Keys come from [`crate::model`] (tenant first,
//! never from client input) and are put under the configured prefix.
//!
//! Chunked uploads map onto S3 multipart uploads ([`MultipartStore`]: parts in any order, a part
//! uploaded again replaces the earlier one, abort discards them). The local directory has no
//! such API, so there each part is an object of its own and completing concatenates them.

use caas_config::{MediaBackend, S3Config};
use futures::stream::BoxStream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResultPayload, MultipartId, ObjectStore, ObjectStoreExt as _,
    PutPayload, RetryConfig, WriteMultipart,
};
use std::ops::Range;
use std::sync::Arc;

/// Chunk size of streamed writes (S3's smallest part).
pub const WRITE_CHUNK: usize = 5 * 1024 * 1024;

#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Native multipart uploads (S3).
    multipart: Option<Arc<AmazonS3>>,
    prefix: String,
    kind: &'static str,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Bytes read from a local file per step.
const LOCAL_READ: usize = 256 * 1024;

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(e),
    }
}

/// `range` of a local file as a stream of [`LOCAL_READ`]-sized chunks.
async fn local_stream(file: std::fs::File, range: Range<u64>) -> object_store::Result<ByteStream> {
    use futures::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut file = tokio::fs::File::from_std(file);
    file.seek(std::io::SeekFrom::Start(range.start))
        .await
        .map_err(io_error)?;
    let reader = file.take(range.end - range.start);
    Ok(
        tokio_util::io::ReaderStream::with_capacity(reader, LOCAL_READ)
            .map(|r| r.map_err(io_error))
            .boxed(),
    )
}

/// A byte stream of an object.
pub type ByteStream = BoxStream<'static, object_store::Result<bytes::Bytes>>;

impl Blobs {
    /// Builds the configured backend (creating the local directory when missing).
    pub fn from_config(backend: &MediaBackend) -> anyhow::Result<Self> {
        match backend {
            MediaBackend::Local { dir } => Self::local(dir),
            MediaBackend::S3(s3) => Self::s3(s3),
        }
    }

    pub fn local(dir: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(fs),
            multipart: None,
            prefix: String::new(),
            kind: "local",
        })
    }

    pub fn s3(c: &S3Config) -> anyhow::Result<Self> {
        anyhow::ensure!(!c.bucket.is_empty(), "media.backend.bucket is empty");
        // Fail a request within about half a minute when S3 is down (the default retries for
        // three minutes); a body that breaks mid-download is resumed from where it stopped.
        let retry = RetryConfig {
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(30),
            ..RetryConfig::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_retry(retry)
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_virtual_hosted_style_request(!c.path_style)
            .with_allow_http(c.allow_http);
        if !c.endpoint.is_empty() {
            b = b.with_endpoint(&c.endpoint);
        }
        if !c.access_key.is_empty() {
            b = b
                .with_access_key_id(&c.access_key)
                .with_secret_access_key(&c.secret_key);
        }
        let s3 = Arc::new(b.build()?);
        Ok(Self {
            store: s3.clone(),
            multipart: Some(s3),
            prefix: c.prefix.clone(),
            kind: "s3",
        })
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether parts are native multipart parts (S3) rather than objects of their own.
    pub fn native_multipart(&self) -> bool {
        self.multipart.is_some()
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// A streaming writer of a new object; nothing is visible until it is finished.
    pub async fn writer(&self, key: &str) -> object_store::Result<WriteMultipart> {
        let upload = self.store.put_multipart(&self.path(key)).await?;
        Ok(WriteMultipart::new_with_chunk_size(upload, WRITE_CHUNK))
    }

    pub async fn put(&self, key: &str, payload: PutPayload) -> object_store::Result<()> {
        self.store.put(&self.path(key), payload).await.map(|_| ())
    }

    /// The bytes of `range` (all when `None`) as a stream, and the object's size.
    pub async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> object_store::Result<(ByteStream, u64)> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let r = self.store.get_opts(&self.path(key), opts).await?;
        let size = r.meta.size;
        let range = r.range.clone();
        let stream = match r.payload {
            // object_store reads local files 8 KiB at a time, each read a blocking task; read
            // 256 KiB at a time instead (about twice the download throughput, docs/benchmarks.md).
            GetResultPayload::File(file, _) => local_stream(file, range).await?,
            GetResultPayload::Stream(s) => s,
        };
        Ok((stream, size))
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> object_store::Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn exists(&self, key: &str) -> object_store::Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts a native multipart upload of `key` (S3 only); `None` on the local backend.
    pub async fn create_multipart(&self, key: &str) -> object_store::Result<Option<MultipartId>> {
        match &self.multipart {
            Some(s3) => s3.create_multipart(&self.path(key)).await.map(Some),
            None => Ok(None),
        }
    }

    /// Stores part `number` (1-based). S3: a multipart part (an earlier one with the same number
    /// is replaced); local: an object of its own. Returns the part's id (S3 ETag; empty locally).
    pub async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        part_object_key: &str,
        number: u32,
        payload: PutPayload,
    ) -> object_store::Result<String> {
        match &self.multipart {
            Some(s3) => {
                let idx = number.saturating_sub(1) as usize;
                let id = s3
                    .put_part(&self.path(key), &upload_id.to_string(), idx, payload)
                    .await?;
                Ok(id.content_id)
            }
            None => {
                self.put(part_object_key, payload).await?;
                Ok(String::new())
            }
        }
    }

    /// Completes a native multipart upload from part ids in order (S3 only).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: Vec<String>,
    ) -> object_store::Result<()> {
        match &self.multipart {
            Some(s3) => {
                let parts = etags
                    .into_iter()
                    .map(|content_id| PartId { content_id })
                    .collect();
                s3.complete_multipart(&self.path(key), &upload_id.to_string(), parts)
                    .await
                    .map(|_| ())
            }
            None => Err(object_store::Error::NotSupported {
                source: "the local backend has no native multipart uploads".into(),
            }),
        }
    }

    /// Aborts a native multipart upload (S3); nothing to do locally.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> object_store::Result<()> {
        match &self.multipart {
            Some(s3) if !upload_id.is_empty() => {
                match s3
                    .abort_multipart(&self.path(key), &upload_id.to_string())
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        }
    }

    /// How many objects there are under `prefix` (tests and diagnostics).
    pub async fn count(&self, prefix: &str) -> object_store::Result<usize> {
        use futures::TryStreamExt as _;
        let prefix = self.path(prefix);
        let all: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(all.len())
    }

    /// A round trip to the backend, for readiness.
    pub async fn ping(&self) -> object_store::Result<()> {
        self.exists("health-probe").await.map(|_| ())
    }
}
