//! The behavioural suite ([`caas_store::suite`]) on the embedded SQLite adapter, in a fresh
//! temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use caas_store::sqlite::SqliteStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("caas.db")).unwrap();
    caas_store::suite::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("caas.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        caas_store::suite::tenants(&store).await;
    }
    let store = SqliteStore::open(&path).unwrap();
    caas_store::suite::run_all(&store).await;
}
