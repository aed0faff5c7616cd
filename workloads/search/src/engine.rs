//! The search engine of one process: the current index generation, the indexer loop that keeps
//! it current from the log, and rebuilds from the store.
//!
//! Rebuild (at first start, when the index version or analyzer changed, or on request through
//! the admin API), online:
//! 1. read the store's persistence progress `P` (per partition, everything before it is stored);
//! 2. create a new generation and fill it from the store (users, conversations, messages of
//!    every tenant), commit it with positions `P`;
//! 3. catch up from the log with a temporary consumer group that never commits (so it pins no
//!    log retention) from `P` to the heads `T` read after the scan; events between `P` and the
//!    scan are applied again on top of what the scan saw, which converges because every event is
//!    an upsert or delete of the whole document in log order;
//! 4. the live indexer pauses between two batches, the new generation catches up to the live
//!    one's positions, `state.json` is switched to it, and the old one is deleted.
//!
//! Queries keep reading the old generation until step 4. Only a first start (or a version
//! change) has no usable generation: `/ready` reports it and queries answer 503 until then.

use crate::index::{self, Generation, Op};
use crate::indexer::{self, BatchReport, BatchSettings, IndexerError};
use crate::metrics::SearchMetrics;
use caas_bus::{Consumer, DynBus, last_positions, topics};
use caas_config::SearchConfig;
use caas_store::{DynStore, PERSIST_CONSUMER};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tantivy::tokenizer::Language;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Pages read from the store during a rebuild.
const SCAN_PAGE: u32 = 1_000;

/// Progress of the last (or running) rebuild, as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildStatus {
    /// `idle`, `scanning`, `catching_up`, `switching`, `done` or `failed`.
    pub state: String,
    /// Why it ran: `first_start`, `version_changed`, `admin`.
    pub reason: Option<String>,
    pub generation: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub tenants_total: u64,
    pub tenants_done: u64,
    /// Documents written from the store.
    pub documents: u64,
    /// Log records still to index before the switch (catching up).
    pub lag_records: Option<i64>,
    pub error: Option<String>,
}

impl RebuildStatus {
    pub fn running(&self) -> bool {
        matches!(
            self.state.as_str(),
            "scanning" | "catching_up" | "switching"
        )
    }
}

/// A generation built and caught up, waiting for the live indexer to switch to it.
struct Swap {
    generation: Arc<Generation>,
    consumer: Box<dyn Consumer>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("a rebuild is already running")]
    AlreadyRunning,
    #[error("the indexer is not running")]
    NotRunning,
    #[error("unknown search language {0:?}")]
    Language(String),
}

/// Shared by the indexer, the rebuild and the query handlers.
pub struct Engine {
    pub cfg: SearchConfig,
    pub group_id: String,
    root: PathBuf,
    language: Language,
    store: DynStore,
    bus: DynBus,
    current: RwLock<Option<Arc<Generation>>>,
    status: Mutex<RebuildStatus>,
    failing: Mutex<Option<String>>,
    pub metrics: SearchMetrics,
    swap_tx: mpsc::Sender<Swap>,
    swap_rx: Mutex<Option<mpsc::Receiver<Swap>>>,
    stop: Mutex<Option<CancellationToken>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// `{hostname}` in a group id becomes `HOSTNAME` (a StatefulSet pod's stable name, so every
/// replica has a group of its own and indexes everything). Without `HOSTNAME` (a developer's
/// shell, standalone) `-{hostname}` is dropped.
pub fn resolve_group(group: &str) -> String {
    resolve_group_with(group, std::env::var("HOSTNAME").ok().as_deref())
}

fn resolve_group_with(group: &str, host: Option<&str>) -> String {
    match host.map(str::trim).filter(|h| !h.is_empty()) {
        Some(h) => group.replace("{hostname}", h),
        None => group.replace("-{hostname}", "").replace("{hostname}", ""),
    }
}

impl Engine {
    pub fn new(
        cfg: SearchConfig,
        store: DynStore,
        bus: DynBus,
        metrics: SearchMetrics,
    ) -> Result<Arc<Self>, EngineError> {
        let language = crate::schema::language(&cfg.language)
            .ok_or_else(|| EngineError::Language(cfg.language.clone()))?;
        let (swap_tx, swap_rx) = mpsc::channel(1);
        Ok(Arc::new(Self {
            group_id: resolve_group(&cfg.group_id),
            root: PathBuf::from(&cfg.index_dir),
            language,
            cfg,
            store,
            bus,
            current: RwLock::new(None),
            status: Mutex::new(RebuildStatus {
                state: "idle".into(),
                ..RebuildStatus::default()
            }),
            failing: Mutex::new(None),
            metrics,
            swap_tx,
            swap_rx: Mutex::new(Some(swap_rx)),
            stop: Mutex::new(None),
        }))
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The generation queries read; `None` until the first one is built.
    pub fn current(&self) -> Option<Arc<Generation>> {
        self.current.read().clone()
    }

    pub fn status(&self) -> RebuildStatus {
        self.status.lock().clone()
    }

    pub(crate) fn set_failing(&self, reason: Option<String>) {
        *self.failing.lock() = reason;
    }

    /// Readiness: an index to read and an indexer that is not stuck.
    pub fn check(&self) -> Result<(), String> {
        if self.current.read().is_none() {
            return Err("the search index is being built".into());
        }
        if let Some(reason) = self.failing.lock().clone() {
            return Err(format!("indexing is failing: {reason}"));
        }
        Ok(())
    }

    fn settings(&self) -> BatchSettings {
        BatchSettings {
            max: self.cfg.batch_max_events.max(1),
            linger: Duration::from_millis(self.cfg.commit_interval_ms),
        }
    }

    fn update_status(&self, f: impl FnOnce(&mut RebuildStatus)) {
        f(&mut self.status.lock());
    }

    /// Opens the current generation if it is usable with this version and language.
    async fn open_current(&self) -> Result<Option<Arc<Generation>>, IndexerError> {
        let (root, language, mem) = (self.root.clone(), self.language, self.cfg.writer_memory_mb);
        tokio::task::spawn_blocking(move || -> Result<_, index::IndexError> {
            std::fs::create_dir_all(&root)?;
            let Some(id) = index::current_id(&root)? else {
                index::remove_other_generations(&root, None)?;
                return Ok((None, "first_start"));
            };
            let g = Generation::open(&root, &id, language, mem)?;
            // Generations that are not current are interrupted rebuilds.
            let keep = g.as_ref().map(|g| g.id.clone());
            let removed = index::remove_other_generations(&root, keep.as_deref())?;
            if removed > 0 {
                tracing::info!(
                    removed,
                    "Removed index generations left by an interrupted rebuild."
                );
            }
            Ok((g.map(Arc::new), "version_changed"))
        })
        .await
        .map_err(|e| IndexerError::Join(e.to_string()))?
        .map(|(g, reason)| {
            if g.is_none() {
                self.update_status(|s| s.reason = Some(reason.into()));
            }
            g
        })
        .map_err(Into::into)
    }

    /// Asks for a rebuild from the store (admin API). Runs in the background; progress in
    /// [`Engine::status`].
    pub fn request_rebuild(self: &Arc<Self>) -> Result<RebuildStatus, EngineError> {
        let stop = self.stop.lock().clone().ok_or(EngineError::NotRunning)?;
        {
            let mut s = self.status.lock();
            if s.running() || self.current.read().is_none() {
                return Err(EngineError::AlreadyRunning);
            }
            *s = RebuildStatus {
                state: "scanning".into(),
                reason: Some("admin".into()),
                started_at: Some(OffsetDateTime::now_utc()),
                ..RebuildStatus::default()
            };
        }
        let engine = self.clone();
        tokio::spawn(async move {
            match engine.build(&stop).await {
                Ok(Some((generation, consumer))) => {
                    engine.update_status(|s| s.state = "switching".into());
                    if engine
                        .swap_tx
                        .send(Swap {
                            generation,
                            consumer,
                        })
                        .await
                        .is_err()
                    {
                        engine.fail("the indexer stopped before the switch".into());
                    }
                }
                Ok(None) => engine.fail("stopped by shutdown".into()),
                Err(e) => engine.fail(e.to_string()),
            }
        });
        Ok(self.status())
    }

    fn fail(&self, error: String) {
        tracing::warn!(error = %error, "Search index rebuild failed.");
        self.metrics.errors.with_label_values(&["rebuild"]).inc();
        self.update_status(|s| {
            s.state = "failed".into();
            s.error = Some(error);
            s.finished_at = Some(OffsetDateTime::now_utc());
        });
    }

    /// Steps 1-3 of a rebuild. `None` when stopped first.
    async fn build(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<(Arc<Generation>, Box<dyn Consumer>)>, IndexerError> {
        let progress = self.store.progress(PERSIST_CONSUMER).await?;
        let (root, language, mem) = (self.root.clone(), self.language, self.cfg.writer_memory_mb);
        let g = Arc::new(
            tokio::task::spawn_blocking(move || Generation::create(&root, language, mem))
                .await
                .map_err(|e| IndexerError::Join(e.to_string()))??,
        );
        self.update_status(|s| s.generation = Some(g.id.clone()));
        tracing::info!(generation = %g.id, "Building a search index generation from the store.");
        if !self.scan_store(&g, progress, stop).await? {
            return Ok(None);
        }
        self.update_status(|s| s.state = "catching_up".into());
        let target = indexer::heads(&self.bus).await?;
        let lag: i64 = target
            .iter()
            .map(|(p, t)| t - g.positions().get(p).copied().unwrap_or(0))
            .filter(|d| *d > 0)
            .sum();
        self.update_status(|s| s.lag_records = Some(lag));
        let mut consumer = self
            .bus
            .consumer(
                &format!("{}-catchup-{}", self.group_id, g.id),
                &[topics::CONVERSATION_EVENTS],
            )
            .await?;
        if !indexer::catch_up(
            self,
            &g,
            &self.store,
            consumer.as_mut(),
            &target,
            &self.settings(),
            stop,
        )
        .await?
        {
            return Ok(None);
        }
        self.update_status(|s| s.lag_records = Some(0));
        Ok(Some((g, consumer)))
    }

    /// Step 2: every tenant's users, conversations and (not deleted) messages.
    async fn scan_store(
        &self,
        g: &Arc<Generation>,
        progress: BTreeMap<i32, i64>,
        stop: &CancellationToken,
    ) -> Result<bool, IndexerError> {
        let mut tenants = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.list_tenants(after.as_ref(), 100).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            tenants.extend(page.into_iter().map(|t| t.id));
        }
        self.update_status(|s| s.tenants_total = tenants.len() as u64);
        for t in &tenants {
            let mut after = None;
            loop {
                let page = self.store.list_users(t, after.as_ref(), SCAN_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let ops: Vec<Op> = page
                    .iter()
                    .map(|u| Op::User(indexer::user_doc(u)))
                    .collect();
                self.write(g, ops).await?;
            }
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list_conversations(t, after.as_ref(), SCAN_PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id.clone());
                let ops: Vec<Op> = page
                    .iter()
                    .map(|c| Op::Conversation(indexer::conversation_doc(c)))
                    .collect();
                self.write(g, ops).await?;
            }
            let mut after = None;
            loop {
                if stop.is_cancelled() {
                    return Ok(false);
                }
                let page = self
                    .store
                    .scan_messages(t, after.as_ref(), SCAN_PAGE)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                let ops: Vec<Op> = page
                    .iter()
                    .filter(|m| m.deleted_at.is_none())
                    .map(|m| Op::Message(crate::query::message_doc_of(m)))
                    .collect();
                self.write(g, ops).await?;
            }
            self.update_status(|s| s.tenants_done += 1);
        }
        let g2 = g.clone();
        tokio::task::spawn_blocking(move || g2.commit(progress))
            .await
            .map_err(|e| IndexerError::Join(e.to_string()))??;
        Ok(true)
    }

    async fn write(&self, g: &Arc<Generation>, ops: Vec<Op>) -> Result<(), IndexerError> {
        let n = ops.len() as u64;
        let g = g.clone();
        tokio::task::spawn_blocking(move || g.apply(&ops))
            .await
            .map_err(|e| IndexerError::Join(e.to_string()))??;
        self.update_status(|s| s.documents += n);
        self.metrics.rebuild_documents.inc_by(n);
        Ok(())
    }

    /// Makes `g` the current generation (state file first, then memory) and drops the others.
    async fn install(&self, g: Arc<Generation>) -> Result<(), IndexerError> {
        let (root, id) = (self.root.clone(), g.id.clone());
        tokio::task::spawn_blocking(move || index::set_current(&root, &id))
            .await
            .map_err(|e| IndexerError::Join(e.to_string()))??;
        let old = self.current.write().replace(g.clone());
        drop(old);
        let (root, id) = (self.root.clone(), g.id.clone());
        if let Err(e) =
            tokio::task::spawn_blocking(move || index::remove_other_generations(&root, Some(&id)))
                .await
                .map_err(|e| IndexerError::Join(e.to_string()))?
        {
            tracing::warn!(error = %e, "Failed to delete an old index generation.");
        }
        self.update_status(|s| {
            s.state = "done".into();
            s.finished_at = Some(OffsetDateTime::now_utc());
        });
        tracing::info!(generation = %g.id, "Search index generation is current.");
        Ok(())
    }

    /// Step 4, inside the live indexer between two batches.
    async fn switch(&self, mut swap: Swap, stop: &CancellationToken) -> Result<bool, IndexerError> {
        if let Some(live) = self.current() {
            let target = live.positions();
            if !indexer::catch_up(
                self,
                &swap.generation,
                &self.store,
                swap.consumer.as_mut(),
                &target,
                &self.settings(),
                stop,
            )
            .await?
            {
                return Ok(false);
            }
        }
        if let Err(e) = swap.consumer.close().await {
            tracing::debug!(error = %e, "Failed to close the catch-up consumer.");
        }
        self.install(swap.generation).await?;
        Ok(true)
    }

    /// The indexer: opens (or builds) the index, then indexes the log until `stop`. The batch in
    /// hand is committed (index, then consumer offsets) before it returns.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<(), IndexerError> {
        *self.stop.lock() = Some(stop.clone());
        let mut swaps = self
            .swap_rx
            .lock()
            .take()
            .ok_or_else(|| IndexerError::Join("the indexer runs once per engine".into()))?;
        if self.current().is_none() {
            match self.open_current().await? {
                Some(g) => {
                    *self.current.write() = Some(g);
                }
                None => {
                    self.update_status(|s| {
                        s.state = "scanning".into();
                        s.started_at = Some(OffsetDateTime::now_utc());
                    });
                    let built = loop {
                        match self.build(&stop).await {
                            Ok(b) => break b,
                            Err(e) if e.is_transient() => {
                                self.fail(e.to_string());
                                tokio::select! {
                                    _ = stop.cancelled() => return Ok(()),
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                }
                            }
                            Err(e) => {
                                self.fail(e.to_string());
                                return Err(e);
                            }
                        }
                    };
                    let Some((g, mut consumer)) = built else {
                        return Ok(());
                    };
                    if let Err(e) = consumer.close().await {
                        tracing::debug!(error = %e, "Failed to close the catch-up consumer.");
                    }
                    self.install(g).await?;
                }
            }
        }
        let mut consumer = self
            .bus
            .consumer(&self.group_id, &[topics::CONVERSATION_EVENTS])
            .await?;
        tracing::info!(group = %self.group_id, "Search indexer started.");
        let settings = self.settings();
        let mut gauges_at = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            if gauges_at.elapsed() >= Duration::from_secs(5) {
                self.refresh_gauges().await;
                gauges_at = std::time::Instant::now();
            }
            if let Ok(swap) = swaps.try_recv()
                && !self.switch(swap, &stop).await.unwrap_or_else(|e| {
                    self.fail(e.to_string());
                    true
                })
            {
                break;
            }
            let batch = tokio::select! {
                _ = stop.cancelled() => break,
                b = consumer.next_batch(settings.max, settings.linger) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    self.metrics.errors.with_label_values(&["consume"]).inc();
                    tracing::warn!(error = %e, "Failed to read from the log; retrying.");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            self.metrics.received.inc_by(batch.len() as u64);
            let Some(g) = self.current() else { break };
            let Some(_report): Option<BatchReport> =
                indexer::index_with_retry(&self, &g, &self.store, &batch, &stop).await
            else {
                break; // stopped while failing: nothing committed, replayed next start
            };
            if let Err(e) = consumer.commit(&last_positions(&batch)).await {
                // The index has it (and its positions): the replay will be skipped.
                self.metrics.errors.with_label_values(&["commit"]).inc();
                tracing::warn!(error = %e, "Failed to commit consumer offsets.");
            }
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "Failed to leave the consumer group cleanly.");
        }
        tracing::info!("Search indexer stopped.");
        Ok(())
    }

    /// Documents, size and lag gauges.
    pub async fn refresh_gauges(&self) {
        let Some(g) = self.current() else { return };
        if let Ok(heads) = indexer::heads(&self.bus).await {
            let pos = g.positions();
            let lag: i64 = heads
                .iter()
                .map(|(p, h)| h - pos.get(p).copied().unwrap_or(0))
                .filter(|d| *d > 0)
                .sum();
            self.metrics.lag_records.set(lag);
        }
        let g2 = g.clone();
        if let Ok((docs, bytes)) =
            tokio::task::spawn_blocking(move || (g2.num_docs(), g2.size_bytes())).await
        {
            self.metrics.docs.set(docs as i64);
            self.metrics.index_bytes.set(bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_name_the_replica() {
        assert_eq!(
            resolve_group_with("caas-search-{hostname}", Some("caas-search-1")),
            "caas-search-caas-search-1"
        );
        assert_eq!(
            resolve_group_with("caas-search-{hostname}", None),
            "caas-search"
        );
        assert_eq!(resolve_group_with("fixed", Some("h")), "fixed");
    }
}
