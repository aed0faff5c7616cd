//! The behavioural suite ([`caas_store::suite`]) on the MongoDB adapter, against the server at
//! `CAAS_TEST_MONGODB_URI` (database `CAAS_TEST_MONGODB_DB`, default `caas_store_suite`).
//!
//! The variable is required: without it these tests fail rather than pass silently.
//! `scripts/test.sh` starts a server and sets it; by hand, for example:
//! `nx-27017 --db /tmp/nx-test.db --host 127.0.0.1 -p 27018` and
//! `CAAS_TEST_MONGODB_URI=mongodb://127.0.0.1:27018`. Every run uses tenants of its own, so a
//! database may be reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use caas_store::mongo::MongoStore;
use caas_store::{Store, StoreError};

fn uri() -> String {
    match std::env::var("CAAS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "CAAS_TEST_MONGODB_URI is not set: the MongoDB adapter is tested against a real \
             server. Run scripts/test.sh (it starts one and sets the variable), or start one \
             yourself (e.g. `nx-27017 --db /tmp/nx-test.db --host 127.0.0.1 -p 27018`) and \
             set CAAS_TEST_MONGODB_URI=mongodb://127.0.0.1:27018"
        ),
    }
}

fn database() -> String {
    std::env::var("CAAS_TEST_MONGODB_DB").unwrap_or_else(|_| "caas_store_suite".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_store_passes_the_suite() {
    let store = MongoStore::connect(&uri(), &database()).await.unwrap();
    caas_store::suite::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_twice_keeps_the_indexes_and_data() {
    let uri = uri();
    let first = MongoStore::connect(&uri, &database()).await.unwrap();
    caas_store::suite::tenants(&first).await;
    let second = MongoStore::connect(&uri, &database()).await.unwrap();
    caas_store::suite::credentials(&second).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Nothing listens on port 9 (discard) here; the short timeout keeps the test fast.
    let err = MongoStore::connect(
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300",
        "caas_unreachable",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn ping_reaches_the_server() {
    let store = MongoStore::connect(&uri(), &database()).await.unwrap();
    store.ping().await.unwrap();
}
