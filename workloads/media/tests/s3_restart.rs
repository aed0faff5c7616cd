//! An upload survives a restart of the S3 server: parts sent before the restart are still part
//! of the multipart upload after it, the upload completes, and files stored before are still
//! served. The test starts its own `s3s-fs` (installed by scripts/test.sh; required) on a
//! directory of its own, kills it (SIGKILL) and starts it again on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use caas_config::S3Config;
use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn s3s_fs() -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join("s3s-fs"))
        .chain([std::path::Path::new(&home).join(".cargo/bin/s3s-fs")])
        .collect::<Vec<_>>();
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs not found on PATH or in ~/.cargo/bin: this test runs its own S3 server. \
             Install it with `cargo install s3s-fs --version 0.14.1 --locked --features binary` \
             (scripts/test.sh does)"
            )
        })
}

struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

const AK: &str = "restartak";
const SK: &str = "restart-secret-key-0123456789";

fn start(dir: &std::path::Path, port: u16) -> Child {
    Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", AK, "--secret-key", SK])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    fn new(dir: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(dir.join("bucket")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = start(&dir, port);
        wait_listening(port);
        Self { child, port, dir }
    }

    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = start(&self.dir, self.port);
        wait_listening(self.port);
    }

    fn config(&self) -> S3Config {
        S3Config {
            bucket: "bucket".into(),
            endpoint: format!("http://127.0.0.1:{}", self.port),
            access_key: AK.into(),
            secret_key: SK.into(),
            allow_http: true,
            ..S3Config::default()
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_files_survive_an_s3_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path().join("s3"));
    let h = harness(
        Backend::S3,
        Opts {
            s3: Some(server.config()),
            ..Opts::default()
        },
    )
    .await;
    // A stored file and a chunked upload with its first part.
    let small = b"%PDF-1.4\nbefore the restart\n".to_vec();
    let r = h
        .upload("alice", "a.pdf", "application/pdf", small.clone(), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let stored = r.json()["id"].as_str().unwrap().to_string();
    let five = 5 * MIB as usize;
    let file = noise(five + 4321, 11);
    let r = h
        .initiate(
            "alice",
            json!({"name": "big.bin", "size": file.len(), "sha256": sha256(&file)}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let up = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.part("alice", &up, 1, file[..five].to_vec(), None)
            .await
            .status,
        200
    );

    server.restart();

    // The rest of the upload, then complete: part 1 is still in the multipart upload.
    let r = h.part("alice", &up, 2, file[five..].to_vec(), None).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = h.complete("alice", &up, json!({})).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = h
        .get(&format!("/v1/media/files/{id}/content"), Some("bob"), &[])
        .await;
    assert_eq!((r.status, sha256(&r.body)), (200, sha256(&file)));
    let r = h
        .get(
            &format!("/v1/media/files/{stored}/content"),
            Some("bob"),
            &[],
        )
        .await;
    assert_eq!((r.status, r.body.as_ref()), (200, small.as_slice()));
}
