//! The realtime protocol driven by the official Socket.IO client (Node, `tests/js/`) against a
//! real `caas standalone` process: handshake refusals and their codes, send/ack, de-duplication,
//! edit/delete/react fan-out, typing, read markers, presence, channel join/leave, tenant and
//! membership isolation, REST-originated messages over the socket, files attached to messages
//! (sent, fanned out, refused), and recovery after forced
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
            ("CAAS_SOCKET__PRESENCE_HEARTBEAT_MS", "200"),
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

    // What happened is visible in the metrics.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sa.data_dir.join("standalone.json")).expect("standalone.json"),
    )
    .expect("json");
    let metrics = reqwest::get(info["metrics"].as_str().expect("metrics url"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for needle in [
        "caas_socket_connections{tenant=",
        "caas_socket_events_in_total{event=\"message.send\"}",
        "caas_socket_events_out_total{event=\"message.created\"}",
        "caas_socket_ack_seconds_bucket{event=\"message.send\"",
        "caas_socket_fanout_lag_seconds_count",
        "caas_socket_errors_total{code=\"text_empty\"}",
        "caas_socket_errors_total{code=\"invalid_attachment\"}",
        "caas_socket_refused_connections_total{code=\"quota_exceeded\"}",
        "caas_socket_refused_connections_total{code=\"token_invalid\"}",
        "caas_socket_replayed_events_total",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    let replayed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("caas_socket_replayed_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("replayed counter");
    assert!(replayed >= 40.0, "replays counted: {replayed}");
    sa.proc.assert_no_panics();
}

/// SIGTERM with clients connected: each is told `server.draining`, spread over
/// `socket.drainSpreadMs`; a send made on that signal is acked; new handshakes are refused with
/// `unavailable`; the server disconnects everyone and exits cleanly within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_clients_away_spread_over_time() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sa = Standalone::start(
        dir.path(),
        &[
            ("CAAS_SOCKET__DRAIN_SPREAD_MS", "2000"),
            ("CAAS_SERVER__DRAIN_DELAY_MS", "100"),
            ("CAAS_SERVER__SHUTDOWN_DEADLINE_MS", "20000"),
        ],
    )
    .await;
    let mut node = Command::new("node")
        .arg("drain.mjs")
        .current_dir(js_dir())
        .env("CAAS_API", &sa.proc.api)
        .env("CAAS_ADMIN", &sa.proc.internal)
        .env("CAAS_ADMIN_TOKEN", &sa.info.admin_token)
        .env("CAAS_DRAIN_CLIENTS", "20")
        .env("CAAS_DRAIN_SPREAD_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node (is Node.js installed?): {e}"));
    let stdout = node.stdout.take().expect("stdout");
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut ready_tx = Some(ready_tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("node output");
            if line == "READY"
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
            out.push(line);
        }
        out
    });
    let pid = sa.proc.pid();
    tokio::time::timeout(std::time::Duration::from_secs(60), ready)
        .await
        .expect("drain.mjs printed READY within 60 s")
        .expect("drain.mjs printed READY (it exited before)");
    let signalled = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = loop {
        if let Some(s) = sa.proc.exited() {
            break s;
        }
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(30),
            "the server did not exit within 30 s of SIGTERM; logs:\n{}",
            sa.proc.log_tail(40)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let node_status = tokio::task::spawn_blocking(move || node.wait())
        .await
        .expect("join")
        .expect("node wait");
    let lines = lines.await.expect("reader");
    assert!(
        node_status.success(),
        "drain.mjs: {}\nserver logs:\n{}",
        lines.join("\n"),
        sa.proc.log_tail(40)
    );
    assert!(exit.success(), "the server exited with {exit}");
}
