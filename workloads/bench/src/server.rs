//! The server under test: a real `caas standalone` process on free ports in a temporary data
//! directory, pinned to its own cores with `taskset` when available, and what `/proc` says about
//! it (CPU time, resident memory). Nothing here talks the caas API; that is [`crate::api`].

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// What `caas standalone` writes to `<data-dir>/standalone.json`.
#[derive(Debug, Clone)]
pub struct Info {
    pub api: String,
    pub admin: String,
    pub metrics: String,
    pub admin_token: String,
    pub app_id: String,
    pub app_secret: String,
    pub tenant_id: String,
}

impl Info {
    fn parse(v: &serde_json::Value) -> anyhow::Result<Self> {
        let s = |p: &str| -> anyhow::Result<String> {
            v.pointer(p)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("standalone.json has no {p}"))
        };
        Ok(Self {
            api: s("/api")?,
            admin: s("/admin")?,
            metrics: s("/metrics")?,
            admin_token: s("/admin_token")?,
            app_id: s("/demo/app_id")?,
            app_secret: s("/demo/app_secret")?,
            tenant_id: s("/demo/tenant_id")?,
        })
    }
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct Launch {
    pub binary: PathBuf,
    /// `taskset -c` list for the server; empty: not pinned.
    pub cpus: String,
    /// Extra `CAAS_*` environment.
    pub env: Vec<(String, String)>,
    /// Keep the data directory (its path is printed) instead of deleting it.
    pub keep_data: bool,
}

/// A running `caas standalone`.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub info: Info,
    pub data_dir: PathBuf,
    pub pinned: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

pub fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Server {
    pub async fn start(l: &Launch) -> anyhow::Result<Self> {
        anyhow::ensure!(
            l.binary.exists(),
            "{} does not exist: build it with `cargo build --release -p caas` or pass --caas",
            l.binary.display()
        );
        let tmp = tempfile::Builder::new().prefix("caas-bench.").tempdir()?;
        let data_dir = tmp.path().to_path_buf();
        let pinned = (!l.cpus.is_empty() && has_taskset()).then(|| l.cpus.clone());
        let mut cmd = match &pinned {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&l.binary);
                c
            }
            None => Command::new(&l.binary),
        };
        let log = std::fs::File::create(data_dir.join("server.log"))?;
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--internal-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", l.binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let info_path = data_dir.join("standalone.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        let info = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "caas standalone exited ({status}) before it was ready; log: {}",
                    tail(&data_dir.join("server.log"))
                );
            }
            if let Ok(s) = std::fs::read_to_string(&info_path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&s)
            {
                break Info::parse(&v)?;
            }
            if Instant::now() > deadline {
                bail!(
                    "caas standalone did not write {} within 60 s",
                    info_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let keep = l.keep_data;
        Ok(Self {
            child,
            pid,
            info,
            data_dir,
            pinned,
            _dir: if keep {
                let _ = tmp.keep();
                None
            } else {
                Some(tmp)
            },
        })
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu(&self) -> Duration {
        proc_cpu(&format!("/proc/{}/stat", self.pid))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(&format!("/proc/{}/status", self.pid), "VmRSS:")
    }

    /// Sizes of the files in the data directory.
    pub fn data_sizes(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.data_dir) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    out.push((e.file_name().to_string_lossy().into_owned(), m.len()));
                }
            }
        }
        out.sort();
        out
    }

    /// SIGTERM, then waits for the exit. Returns how long the graceful shutdown took.
    pub async fn stop(mut self) -> anyhow::Result<(Duration, String)> {
        let start = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {} failed", self.pid);
        let status = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(s) => s?.to_string(),
            Err(_) => {
                self.child.kill().await?;
                "killed after 60 s".into()
            }
        };
        Ok((start.elapsed(), status))
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a `/proc/<pid>/stat` file.
pub fn proc_cpu(path: &str) -> Duration {
    let Ok(s) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_micros(ticks * 1_000_000 / clock_ticks().max(1))
}

/// A `kB` field of a `/proc/<pid>/status` file.
pub fn proc_status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `Cpus_allowed_list` of a process.
pub fn cpus_allowed(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .map(|l| l["Cpus_allowed_list:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}
