//! Two `caas socket` processes sharing Redis behave as one server: a gateway, a pipeline and two
//! socket processes on MongoDB, Kafka and Redis (`scripts/test.sh` starts them), driven by the
//! official Socket.IO client (`tests/js/two-nodes.test.mjs`): messages, typing and presence cross
//! nodes, the tenant's connection quota holds across both, a client resumes on the other node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{required_env, start, write_secrets};
use common::unique;
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_socket_nodes_behave_as_one() {
    let mongo = required_env("CAAS_TEST_MONGODB_URI");
    let brokers = required_env("CAAS_TEST_KAFKA_BROKERS");
    let redis = required_env("CAAS_TEST_REDIS_URL");
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    assert!(
        js.join("node_modules/socket.io-client").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test.sh does)",
        js.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let run = unique("rt");
    let admin_token = write_secrets(dir.path());
    let env = [
        ("CAAS_STORE__URI", mongo.as_str()),
        ("CAAS_REDIS__URL", redis.as_str()),
    ];
    let extra = "limits:\n  messagesPerMinutePerUser: 100000\n";
    let d = dir.path();
    let pipeline = start("pipeline", "pipeline", d, &run, &brokers, extra, &env).await;
    let gateway = start("gateway", "gateway", d, &run, &brokers, extra, &env).await;
    let (a, b) = tokio::join!(
        start("socket-a", "socket", d, &run, &brokers, extra, &env),
        start("socket-b", "socket", d, &run, &brokers, extra, &env),
    );
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-timeout=120000"])
        .arg("two-nodes.test.mjs")
        .current_dir(&js)
        .env("CAAS_API", &gateway.api)
        .env("CAAS_ADMIN", &gateway.internal)
        .env("CAAS_ADMIN_TOKEN", &admin_token)
        .env("CAAS_SOCKET_A", &a.api)
        .env("CAAS_SOCKET_B", &b.api)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "two-nodes.test.mjs failed:\n{stdout}\n{stderr}\n--- socket-a:\n{}\n--- socket-b:\n{}\n--- gateway:\n{}",
        a.log_tail(30),
        b.log_tail(30),
        gateway.log_tail(30)
    );
    for p in [&pipeline, &gateway, &a, &b] {
        p.assert_no_panics();
    }
}
