//! Loading the configuration: defaults, then an optional YAML or JSON file, then environment
//! variables `CAAS_<SECTION>__<FIELD>` (e.g. `CAAS_STORE__URI`, `CAAS_SERVER__BODY_LIMIT_BYTES`),
//! which is how Secrets reach a pod without being written into its ConfigMap. Field names in the
//! environment are snake_case; in files camelCase, as the operator renders them.

use caas_config::Config;
use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized, Yaml};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Loads the configuration from `file` (when given) and the environment.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(file, Env::prefixed("CAAS_"))
}

fn load_with_env(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
    // Defaults come from serde (`#[serde(default)]` everywhere), not from a merged default
    // document: merging would mix fields of different variants of a tagged enum (store kinds).
    let mut fig = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!("{} does not exist", path.display())));
        }
        fig = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => fig.merge(Json::file(path)),
            _ => fig.merge(Yaml::file(path)),
        };
    }
    // figment's own key mapping lower-cases keys after mapping, which loses camelCase: build
    // the nested values ourselves.
    for (key, value) in env.iter() {
        // Only `CAAS_<SECTION>__<FIELD>`: other `CAAS_*` variables (e.g. `CAAS_TEST_*`) are
        // not configuration.
        if !key.as_str().contains("__") {
            continue;
        }
        let path = snake_to_camel_path(&key.as_str().to_ascii_lowercase().replace("__", "."));
        let value: figment::value::Value = value
            .parse()
            .unwrap_or_else(|_| figment::value::Value::from(value));
        fig = fig.merge(Serialized::global(&path, value));
    }
    fig.extract().map_err(|e| ConfigError(e.to_string()))
}

/// `server.body_limit_bytes` -> `server.bodyLimitBytes`.
fn snake_to_camel_path(key: &str) -> String {
    key.split('.')
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            let mut upper = false;
            for c in seg.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
mod tests {
    use super::*;
    use caas_config::StoreConfig;

    #[test]
    fn file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.yaml",
                "server:\n  bodyLimitBytes: 1000\nstore:\n  kind: mongodb\n  database: chat\n",
            )?;
            jail.set_env("CAAS_STORE__URI", "mongodb://secret@h");
            jail.set_env("CAAS_SERVER__REQUEST_TIMEOUT_MS", "77");
            let c = load_with_env(Some(Path::new("c.yaml")), Env::prefixed("CAAS_"))
                .map_err(|e| e.to_string())?;
            assert_eq!(c.server.body_limit_bytes, 1000);
            assert_eq!(c.server.request_timeout_ms, 77);
            assert_eq!(
                c.store,
                StoreConfig::Mongodb {
                    uri: "mongodb://secret@h".into(),
                    database: "chat".into()
                }
            );
            Ok(())
        });
    }

    #[test]
    fn typos_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.yaml", "server:\n  bodyLimit: 1\n")?;
            let e = load_with_env(Some(Path::new("c.yaml")), Env::prefixed("CAAS_")).unwrap_err();
            assert!(e.to_string().contains("bodyLimit"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn snake_to_camel() {
        assert_eq!(
            snake_to_camel_path("server.body_limit_bytes"),
            "server.bodyLimitBytes"
        );
        assert_eq!(snake_to_camel_path("store.uri"), "store.uri");
    }
}
