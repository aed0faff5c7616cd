//! The media section of the configuration, as files and the environment give it: the S3 backend
//! can be chosen and filled from `CAAS_MEDIA__*` variables alone, and an empty configuration
//! keeps the local default. (Its own test binary: it sets process environment variables.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use caas_config::{Config, MediaBackend};

#[test]
fn s3_from_a_file_and_from_the_environment() {
    let c: Config = serde_json::from_str(
        r#"{"media": {"backend": {"kind": "s3", "bucket": "b", "endpoint": "http://s3:9000",
            "accessKey": "ak", "secretKey": "sk", "allowHttp": true}, "maxPartBytes": 8388608}}"#,
    )
    .unwrap();
    let MediaBackend::S3(s3) = &c.media.backend else {
        panic!("{:?}", c.media.backend)
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.access_key.as_str(), s3.allow_http),
        ("b", "ak", true)
    );
    assert!(s3.path_style, "path style by default");
    assert_eq!(c.media.max_part_bytes, 8 << 20);
    assert!(
        serde_json::from_str::<Config>(r#"{"media": {"backend": {"kind": "s3", "bucet": "b"}}}"#)
            .is_err()
    );

    let empty: Config = serde_json::from_str("{}").unwrap();
    assert!(matches!(empty.media.backend, MediaBackend::Local { .. }));

    // Through the environment: in a child process (setting variables here would race other
    // threads), which loads the configuration as every workload does.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--exact")
        .arg("child_prints_the_loaded_media_section")
        .arg("--nocapture")
        .env("CAAS_MEDIA_CONFIG_CHILD", "1")
        .env("CAAS_MEDIA__BACKEND__KIND", "s3")
        .env("CAAS_MEDIA__BACKEND__BUCKET", "env-bucket")
        .env("CAAS_MEDIA__BACKEND__ACCESS_KEY", "env-ak")
        .env("CAAS_MEDIA__BACKEND__SECRET_KEY", "env-sk")
        .env(
            "CAAS_MEDIA__SIGNING_KEY",
            "0123456789abcdef0123456789abcdef",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MEDIA s3 env-bucket env-ak 32"), "{stdout}");
}

/// Runs only as the child of the test above, with the environment it sets.
#[test]
fn child_prints_the_loaded_media_section() {
    if std::env::var("CAAS_MEDIA_CONFIG_CHILD").is_err() {
        return;
    }
    let c = caas_kit::config::load(None).unwrap();
    let MediaBackend::S3(s3) = &c.media.backend else {
        panic!("{:?}", c.media.backend)
    };
    let key = caas_media::signing_key(&c.media).unwrap();
    println!("MEDIA s3 {} {} {}", s3.bucket, s3.access_key, key.len());
}
