//! The metadata repository suite on both adapters: SQLite in a temporary directory, and MongoDB
//! at `CAAS_TEST_MONGODB_URI` (required: scripts/test.sh starts nx-27017 and sets it) in a fresh
//! database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use caas_media::repo::{mongo::MongoRepo, sqlite::SqliteRepo, suite};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_repo_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let repo = SqliteRepo::open(dir.path().join("media.db")).unwrap();
    suite::run_all(Arc::new(repo)).await;
    // Reopening keeps everything (the schema is created only when missing).
    use caas_media::repo::MediaRepo as _;
    let t = caas_domain::TenantId::parse("keep").unwrap();
    assert!(
        SqliteRepo::open(dir.path().join("media.db"))
            .unwrap()
            .reserve(&t, 7, 10)
            .await
            .unwrap()
    );
    let again = SqliteRepo::open(dir.path().join("media.db")).unwrap();
    assert_eq!(again.usage(&t).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_repo_passes_the_suite() {
    let uri = match std::env::var("CAAS_TEST_MONGODB_URI") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "CAAS_TEST_MONGODB_URI is not set: the MongoDB adapter is tested against a real server. \
             Run scripts/test.sh, or start nx-27017 and set the variable."
        ),
    };
    let db = format!("caas_media_suite_{}", uuid::Uuid::now_v7().simple());
    let repo = MongoRepo::connect(&uri, &db).await.unwrap();
    suite::run_all(Arc::new(repo)).await;
}
