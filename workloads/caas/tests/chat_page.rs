//! The try-out chat page of `caas standalone`, through the real process:
//!
//! - its demo endpoints and seed over HTTP (the page and assets at `/`, tokens for demo users
//!   only, `#general` and the direct conversation created once, across restarts);
//! - the page itself in headless Chromium: `tests/js/chat-page.mjs` (playwright-core, Debian's
//!   `/usr/bin/chromium`) with two pages as ann and bob chatting live, and through a graceful
//!   restart of the server (stopped and started here when the script asks), then sharing files
//!   (a PNG shown as a thumbnail on the other page, a text file as a signed download link);
//!   screenshots land in `tests/artifacts/`. The browser, Node and `tests/js/node_modules` are required: this test
//!   fails, never skips, without them (`scripts/test.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, START_DEADLINE, Standalone, free_port, start_workload};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// How long the browser script may run before it is killed (its own waits are 30 s per step).
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

async fn demo_token(http: &Http, user: &str) -> (u16, Value) {
    let r = http
        .call(
            "POST",
            "/demo/token",
            None,
            Some(&json!({ "user_id": user })),
        )
        .await;
    (r.status, r.body)
}

/// The conversations of `token`'s user, as listed.
async fn conversations(http: &Http, token: &str) -> Vec<Value> {
    let r = http.get("/v1/conversations", token).await;
    r.expect(200, "list conversations")["conversations"]
        .as_array()
        .expect("conversations")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_endpoints_serve_the_page_and_seed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(dir.path(), &[]).await;

    // The page and its assets, with their types.
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/chat.js", "text/javascript; charset=utf-8"),
        ("/assets/chat.css", "text/css; charset=utf-8"),
        ("/assets/socket.io.min.js", "text/javascript; charset=utf-8"),
    ] {
        let r = s
            .http
            .client
            .get(format!("{}{path}", s.http.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        assert_eq!(r.headers()["content-type"], ty, "GET {path}");
        assert!(r.headers().contains_key("etag"), "GET {path}");
    }
    let users = s.http.call("GET", "/demo/users", None, None).await;
    let ids: Vec<&str> = users.expect(200, "demo users")["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ann", "bob", "carol"]);

    // Tokens for demo users only.
    let (status, body) = demo_token(&s.http, "mallory").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = demo_token(&s.http, "ann").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], "ann");
    assert_eq!(body["user"]["name"], "Ann Archer");
    assert_eq!(body["user"]["tenant_id"], s.info.demo_tenant.as_str());
    let ann = body["token"].as_str().unwrap().to_string();

    // The seed: #general with all three (one welcome message) and a direct ann-bob.
    let check_seed = |convs: Vec<Value>| {
        let kinds: Vec<(String, u64)> = convs
            .iter()
            .map(|c| {
                (
                    c["conversation"]["kind"].as_str().unwrap().to_string(),
                    c["conversation"]["member_count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(convs.len(), 2, "ann's conversations: {convs:?}");
        assert!(kinds.contains(&("channel".into(), 3)), "{kinds:?}");
        assert!(kinds.contains(&("direct".into(), 2)), "{kinds:?}");
    };
    check_seed(conversations(&s.http, &ann).await);
    let welcome = |http: Http, token: String| async move {
        let r = http.get("/v1/conversations/general/messages", &token).await;
        r.expect(200, "list #general")["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["text"].as_str().unwrap().starts_with("Welcome to caas"))
            .count()
    };
    assert_eq!(welcome(s.http.clone(), ann.clone()).await, 1);

    // Restarted on the same data: nothing seeded twice.
    s.proc.kill9();
    s.proc.restart().await;
    let (status, body) = demo_token(&s.http, "ann").await;
    assert_eq!(status, 200, "{body}");
    let ann = body["token"].as_str().unwrap().to_string();
    check_seed(conversations(&s.http, &ann).await);
    assert_eq!(welcome(s.http.clone(), ann).await, 1);
    s.proc.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caas_gateway_has_no_page_and_no_demo_endpoints() {
    // Standalone makes the keys, the admin token and the data; then `caas gateway` on them.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(dir.path(), &[]).await;
    s.proc.kill9();
    let data = s.data_dir.display().to_string();
    let (api, internal, metrics) = (free_port(), free_port(), free_port());
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:{api}\n  internalListen: 127.0.0.1:{internal}\n  \
             metricsListen: 127.0.0.1:{metrics}\nstore:\n  kind: embedded\n  path: {data}/store.db\n\
             bus:\n  kind: embedded\n  path: {data}/log.db\nauth:\n  keysDir: {data}/keys\n\
             admin:\n  tokenFile: {data}/admin-token\n"
        ),
    )
    .unwrap();
    let gw = start_workload(
        "gateway",
        dir.path(),
        "gateway",
        &config,
        api,
        internal,
        &[],
    )
    .await;
    let http = Http::new(&gw.api, &gw.internal, &s.info.admin_token);
    let r = http.call("GET", "/v1/openapi.json", None, None).await;
    r.expect(200, "the gateway serves its API");
    for (method, path, body) in [
        ("GET", "/", None),
        ("GET", "/assets/chat.js", None),
        ("GET", "/demo/users", None),
        ("POST", "/demo/token", Some(json!({"user_id": "ann"}))),
    ] {
        let r = http.call(method, path, None, body.as_ref()).await;
        assert_eq!(r.status, 404, "{method} {path} on caas gateway: {}", r.body);
    }
    gw.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_live_in_headless_chromium() {
    let root = repo_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install Debian's `chromium` (apt-get install -y chromium) \
         or run scripts/test.sh, which does"
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        node_ok,
        "`node` is not on PATH: the browser test needs Node.js"
    );
    assert!(
        root.join("tests/js/node_modules/playwright-core").is_dir(),
        "tests/js/node_modules is missing: run `npm ci` in tests/js (scripts/test.sh does)"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(dir.path(), &[]).await;
    let shot = root.join("tests/artifacts/chat-page.png");
    let started = SystemTime::now();

    // The script asks for the server to be stopped and started (`PAUSE stop|start` on stdout)
    // and waits for `done stop|start` on stdin.
    let err = dir.path().join("chat-page.err.log");
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/js/chat-page.mjs"))
        .arg(&s.proc.api)
        .arg("--restarts")
        .current_dir(&root)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let end = Instant::now() + BROWSER_DEADLINE;
    let script = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("chat-page.mjs: {line}");
            stdout.push_str(&line);
            stdout.push('\n');
            match line.as_str() {
                "PAUSE stop" => {
                    let pid = s.proc.pid().to_string();
                    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
                    assert!(kill.success(), "kill -TERM {pid}");
                    let status = common::wait_for("standalone to exit", START_DEADLINE, || {
                        let st = s.proc.exited();
                        async move { st }
                    })
                    .await;
                    assert!(
                        status.success(),
                        "standalone exited with {status} on SIGTERM"
                    );
                    s.proc.kill9(); // reaps: the process is gone
                    stdin.write_all(b"done stop\n").await.unwrap();
                }
                "PAUSE start" => {
                    s.proc.restart().await;
                    stdin.write_all(b"done start\n").await.unwrap();
                }
                _ => {}
            }
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout_at(end.into(), script).await;
    let output = format!(
        "---- stdout ----\n{stdout}\n---- stderr ----\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    match status {
        Ok(st) => assert!(st.success(), "chat-page.mjs failed ({st}):\n{output}"),
        Err(_) => panic!("chat-page.mjs still ran after {BROWSER_DEADLINE:?}:\n{output}"),
    }
    assert!(
        output.contains("chat page: all steps passed"),
        "chat-page.mjs did not finish its steps:\n{output}"
    );
    assert!(
        output.contains("ok: the server starts again"),
        "the restart steps did not run:\n{output}"
    );

    // The screenshot is this run's, and a PNG.
    let meta = std::fs::metadata(&shot).expect("tests/artifacts/chat-page.png");
    assert!(meta.modified().unwrap() >= started, "a stale screenshot");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    s.proc.assert_no_panics();
}
