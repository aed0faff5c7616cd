//! The workload configurations of the local stack (`deploy/compose/*.yaml`, used by
//! docker-compose.yml, which cannot run here) load with the real configuration loader: no
//! unknown or misspelt key, every section of the right shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[test]
fn compose_configs_load() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/compose");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/compose") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let cfg = caas_kit::config::load(Some(&path))
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(
                matches!(cfg.bus, caas_config::BusConfig::Kafka(_)),
                "{}",
                path.display()
            );
            seen.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, ["gateway", "media", "pipeline", "search", "socket"]);
}
