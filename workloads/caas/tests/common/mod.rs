//! Shared helpers of the end-to-end tests: start the real `caas` binary as a child process on
//! free ports in its own directory, wait for it with deadlines (never sleeps as
//! synchronisation), kill it when the test ends (also on panic), and talk to it over HTTP only.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

pub mod cluster;
mod http;

#[allow(unused_imports)] // each test binary uses a subset
pub use http::{Http, Resp};

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `caas` binary under test.
pub const CAAS: &str = env!("CARGO_BIN_EXE_caas");

/// How long a process may take to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A short random name, for unique tenants, databases, topics and keys.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A running `caas` child process. Killed (SIGKILL) and reaped on drop; on a failing test the
/// end of its logs is printed.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log_dir: PathBuf,
    /// Base URL of the public API, e.g. `http://127.0.0.1:1234`.
    pub api: String,
    /// Base URL of the internal (admin) API.
    pub internal: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    starts: u32,
}

impl Proc {
    fn stdout_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.stdout.log", self.name))
    }
    fn stderr_path(&self) -> PathBuf {
        self.log_dir.join(format!("{}.stderr.log", self.name))
    }

    /// Everything the process (all of its starts) wrote to stdout and stderr.
    pub fn logs(&self) -> String {
        let out = std::fs::read_to_string(self.stdout_path()).unwrap_or_default();
        let err = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        format!("{out}\n{err}")
    }

    /// The last `n` lines of the logs.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Asserts that no start of the process logged a panic.
    pub fn assert_no_panics(&self) {
        let logs = self.logs();
        let hits: Vec<&str> = logs.lines().filter(|l| l.contains("panicked")).collect();
        assert!(
            hits.is_empty(),
            "{} logged a panic:\n{}",
            self.name,
            hits.join("\n")
        );
    }

    /// Spawns the binary with `args`, logs appended to files in `log_dir`.
    fn spawn(&mut self) {
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let stdout: File = open(self.stdout_path());
        let stderr: File = open(self.stderr_path());
        let mut cmd = Command::new(CAAS);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Configuration comes only from what the test says.
        for (k, _) in std::env::vars() {
            if k.starts_with("CAAS_") && k.contains("__") {
                cmd.env_remove(&k);
            }
        }
        cmd.env_remove("CAAS_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.starts += 1;
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {CAAS} {:?}: {e}", self.args));
        self.child = Some(child);
    }

    /// The process id of the running child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    /// Whether the child exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same command again (same data, same ports) and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running process");
        self.spawn();
        self.wait_ready().await;
    }

    /// Polls `GET /ready` on the public port until 200.
    pub async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let url = format!("{}/ready", self.api);
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited with {status} before it was ready; logs:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} was not ready within {START_DEADLINE:?}; logs:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- last log lines of {} ({} start(s)) ----\n{}\n----",
                self.name,
                self.starts,
                self.log_tail(30)
            );
        }
        self.kill9();
    }
}

/// What `caas standalone` writes to `<data-dir>/standalone.json`.
#[derive(Debug, Clone)]
pub struct Info {
    pub admin_token: String,
    pub demo_tenant: String,
    pub demo_app_id: String,
    pub demo_app_secret: String,
}

/// A `caas standalone` process with its own data directory.
pub struct Standalone {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub info: Info,
    pub http: Http,
}

impl Standalone {
    /// Starts `caas standalone --data-dir <dir>` on free ports with extra environment `env`, and
    /// waits for `standalone.json` and `/ready`.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Standalone {
        let mut last_logs = String::new();
        // Free ports can be taken by someone else between probing and binding: retry.
        for _ in 0..3 {
            let data_dir = dir.join("data");
            let (api, internal, metrics) = (free_port(), free_port(), free_port());
            let args = vec![
                "standalone".to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{api}"),
                "--internal-listen".into(),
                format!("127.0.0.1:{internal}"),
                "--metrics-listen".into(),
                format!("127.0.0.1:{metrics}"),
            ];
            let mut proc = Proc {
                name: "standalone".into(),
                child: None,
                log_dir: dir.to_path_buf(),
                api: format!("http://127.0.0.1:{api}"),
                internal: format!("http://127.0.0.1:{internal}"),
                args,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                starts: 0,
            };
            let info_path = data_dir.join("standalone.json");
            let _ = std::fs::remove_file(&info_path);
            proc.spawn();
            let end = Instant::now() + START_DEADLINE;
            let info = loop {
                if let Some(status) = proc.exited() {
                    break Err(status);
                }
                if let Ok(s) = std::fs::read_to_string(&info_path)
                    && let Ok(v) = serde_json::from_str::<Value>(&s)
                {
                    break Ok(v);
                }
                assert!(
                    Instant::now() < end,
                    "standalone.json did not appear within {START_DEADLINE:?}; logs:\n{}",
                    proc.log_tail(40)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let info = match info {
                Ok(v) => v,
                Err(status) => {
                    last_logs = proc.log_tail(40);
                    proc.child = None;
                    if last_logs.contains("in use") {
                        continue;
                    }
                    panic!("caas standalone exited with {status}; logs:\n{last_logs}");
                }
            };
            assert_eq!(
                info["api"].as_str(),
                Some(proc.api.as_str()),
                "standalone.json names the API address: {info}"
            );
            proc.wait_ready().await;
            let s = |v: &Value| v.as_str().expect("string in standalone.json").to_string();
            let info = Info {
                admin_token: s(&info["admin_token"]),
                demo_tenant: s(&info["demo"]["tenant_id"]),
                demo_app_id: s(&info["demo"]["app_id"]),
                demo_app_secret: s(&info["demo"]["app_secret"]),
            };
            let http = Http::new(&proc.api, &proc.internal, &info.admin_token);
            return Standalone {
                proc,
                data_dir,
                info,
                http,
            };
        }
        panic!("caas standalone could not bind free ports; logs:\n{last_logs}");
    }

    /// The data directory's signing keys: `(kid, PKCS#8 PEM)`.
    pub fn signing_key(&self) -> (String, String) {
        let dir = self.data_dir.join("keys");
        let mut keys: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let kid = name.strip_suffix(".pem")?.to_string();
                (!kid.ends_with(".pub")).then(|| {
                    (
                        kid,
                        std::fs::read_to_string(e.path()).expect("read key file"),
                    )
                })
            })
            .collect();
        keys.sort();
        keys.pop().expect("a private key in DIR/keys")
    }
}

/// Starts a `caas <subcommand> --config FILE` process on the ports named in the file.
pub async fn start_workload(
    name: &str,
    log_dir: &Path,
    subcommand: &str,
    config: &Path,
    api_port: u16,
    internal_port: u16,
    env: &[(&str, &str)],
) -> Proc {
    let mut proc = Proc {
        name: name.into(),
        child: None,
        log_dir: log_dir.to_path_buf(),
        api: format!("http://127.0.0.1:{api_port}"),
        internal: format!("http://127.0.0.1:{internal_port}"),
        args: vec![
            subcommand.to_string(),
            "--config".into(),
            config.display().to_string(),
        ],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        starts: 0,
    };
    proc.spawn();
    proc.wait_ready().await;
    proc
}

/// A PNG of `width` x `height` pixels (a colour gradient), for uploads.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            160,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode PNG");
    out.into_inner()
}

/// Asserts positions strictly increase and ids are unique; returns id -> position.
#[track_caller]
pub fn check_order(what: &str, messages: &[Value]) -> BTreeMap<String, i64> {
    let mut seen = BTreeMap::new();
    let mut last = i64::MIN;
    for m in messages {
        let id = m["id"].as_str().expect("id").to_string();
        let pos = m["position"].as_i64().expect("position");
        assert!(
            pos > last,
            "{what}: positions not strictly increasing ({last} then {pos} for {id})"
        );
        last = pos;
        assert!(
            seen.insert(id.clone(), pos).is_none(),
            "{what}: message {id} listed twice"
        );
    }
    seen
}
