//! The realtime protocol driven by the official Socket.IO client (Node, `tests/js/`) against a
//! real `caas standalone` process: handshake refusals and their codes, send/ack, de-duplication,
//! edit/delete/react fan-out, typing, read markers, presence, channel join/leave, tenant and
//! membership isolation, REST-originated messages over the socket, and recovery after forced
//! disconnects while messages keep flowing (from the replay window and from the log: the
//! window is made small here so both paths run).
//!
//! Needs `node` and `tests/js/node_modules` (`scripts/test.sh` runs `npm ci` there). Without them
//! the test fails with a message saying so; it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Standalone;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "{}/node_modules is missing: run `npm ci` there (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// Runs `node --test <file>` with the server's addresses; fails with its output.
pub fn node_test(file: &str, env: &[(&str, String)]) {
    let dir = js_dir();
    let out = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg("--test-timeout=120000")
        .arg(file)
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "node --test {file} failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_protocol_with_the_official_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sa = Standalone::start(
        dir.path(),
        &[
            ("CAAS_SOCKET__REPLAY_WINDOW", "16"),
            ("CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER", "100000"),
        ],
    )
    .await;

    // An expired token signed with the server's own key: only the expiry is wrong.
    let (kid, pem) = sa.signing_key();
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).expect("encoding key");
    let t = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("caas-user+jwt".into());
    h.kid = Some(kid);
    let expired = jsonwebtoken::encode(
        &h,
        &json!({"iss": "caas", "aud": "caas-api", "sub": "ann", "tid": sa.info.demo_tenant,
                "iat": t - 600, "nbf": t - 600, "exp": t, "jti": "x"}),
        &key,
    )
    .expect("sign");

    node_test(
        "realtime.test.mjs",
        &[
            ("CAAS_API", sa.proc.api.clone()),
            ("CAAS_ADMIN", sa.proc.internal.clone()),
            ("CAAS_ADMIN_TOKEN", sa.info.admin_token.clone()),
            ("CAAS_EXPIRED_TOKEN", expired),
        ],
    );
    sa.proc.assert_no_panics();
}
