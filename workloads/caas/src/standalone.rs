//! `caas standalone`: the gateway and the pipeline in one process on embedded defaults, with
//! everything a newcomer needs created on first start under the data directory: signing keys,
//! the admin token, and a demo tenant with app credentials. Addresses and credentials are
//! printed and written to `<data-dir>/standalone.json`.

use crate::run::{self, Parts};
use anyhow::Context as _;
use caas_config::{BusConfig, Config, StoreConfig};
use caas_domain::TenantId;
use caas_domain::model::{AppCredential, Quotas, Tenant, TenantStatus};
use caas_kit::auth::{KeySet, write_private};
use caas_kit::random;
use caas_kit::shutdown::{self, CancellationToken};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where the store, the log, keys and credentials live.
    #[arg(long, default_value = "caas-data")]
    pub data_dir: PathBuf,
    /// REST API, /health, /ready.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Tenant admin API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub internal_listen: String,
    /// Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics_listen: String,
    /// Log lines for a terminal instead of JSON (the default when stdout is a terminal and no
    /// config file is given).
    #[arg(long)]
    pub pretty: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            data_dir: "caas-data".into(),
            listen: "127.0.0.1:8080".into(),
            internal_listen: "127.0.0.1:8081".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            pretty: false,
        }
    }
}

/// The demo tenant's credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demo {
    pub tenant_id: String,
    pub app_id: String,
    pub app_secret: String,
}

#[derive(Debug, Serialize)]
struct Info<'a> {
    api: String,
    admin: String,
    metrics: String,
    admin_token: &'a str,
    demo: &'a Demo,
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub async fn run(config: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cfg: Config = match config {
        Some(_) => caas_kit::config::load(config)?,
        None => {
            let mut c = caas_kit::config::load(None)?;
            c.store = StoreConfig::Embedded {
                path: path_str(&dir.join("store.db")),
            };
            if let BusConfig::Embedded { path, .. } = &mut c.bus {
                *path = path_str(&dir.join("log.db"));
            }
            c.auth.keys_dir = path_str(&dir.join("keys"));
            c.admin.token_file = path_str(&dir.join("admin-token"));
            c.media.metadata_path = path_str(&dir.join("media.db"));
            c.media.signing_key_file = path_str(&dir.join("media-signing-key"));
            c.media.backend = caas_config::MediaBackend::Local {
                dir: path_str(&dir.join("media")),
            };
            c.search.index_dir = path_str(&dir.join("search"));
            c
        }
    };
    cfg.server.listen = args.listen.clone();
    cfg.server.internal_listen = args.internal_listen.clone();
    cfg.server.metrics_listen = args.metrics_listen.clone();
    if cfg.server.socket_urls.is_empty() {
        // In one process the realtime endpoint shares the API's port.
        cfg.server.socket_urls = vec![format!("http://{}", args.listen)];
    }
    // A person at a terminal gets readable lines; pipes and files get JSON.
    if args.pretty || (config.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout())) {
        cfg.log.format = caas_config::LogFormat::Pretty;
    }
    caas_kit::telemetry::init(&cfg.log);

    // Keys and the admin token, made once.
    let keys = Path::new(&cfg.auth.keys_dir);
    let has_key = std::fs::read_dir(keys)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".pem"))
        })
        .unwrap_or(false);
    if !has_key {
        let kid = KeySet::generate_into(keys)?;
        tracing::info!(kid, "Generated a token signing key.");
    }
    let token_file = Path::new(&cfg.admin.token_file);
    if !token_file.exists() {
        write_private(token_file, random::secret("adm_").as_bytes())?;
    }
    let admin_token = std::fs::read_to_string(token_file)?.trim().to_string();
    let demo = demo_tenant(&cfg, dir).await?;

    let stop = CancellationToken::new();
    shutdown::on_signals(stop.clone());
    let info_path = dir.join("standalone.json");
    run::start_with(
        cfg,
        Parts {
            gateway: true,
            pipeline: true,
            socket: true,
        },
        Some(crate::demo::extra(demo.clone())),
        stop,
        |b| {
            let socket_base = format!("http://{}", b.api);
            let info = Info {
                api: socket_base.clone(),
                admin: format!("http://{}", b.internal),
                metrics: format!("http://{}/metrics", b.metrics),
                admin_token: &admin_token,
                demo: &demo,
            };
            write_private(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())?;
            println!("caas standalone is running.");
            println!(
                "  REST API      {}/v1   (OpenAPI: {}/v1/openapi.json)",
                info.api, info.api
            );
            println!(
                "  Admin API     {}/admin/v1   (bearer: {})",
                info.admin, admin_token
            );
            println!("  Metrics       {}", info.metrics);
            println!(
                "  Demo tenant   {}   app_id {}   app_secret {}",
                demo.tenant_id, demo.app_id, demo.app_secret
            );
            println!("  Written to    {}", info_path.display());
            Ok(())
        },
    )
    .await
}

/// Creates the demo tenant and its credentials on first start; reads them afterwards.
async fn demo_tenant(cfg: &Config, dir: &Path) -> anyhow::Result<Demo> {
    let file = dir.join("demo-credentials.json");
    if let Ok(s) = std::fs::read_to_string(&file) {
        return serde_json::from_str(&s).context("reading demo-credentials.json");
    }
    let store = crate::wire::store(&cfg.store).await?;
    let id = TenantId::parse("demo")?;
    let now = OffsetDateTime::now_utc();
    let tenant = Tenant {
        id: id.clone(),
        name: "Demo".into(),
        status: TenantStatus::Active,
        quotas: Quotas::default(),
        features: vec![],
        created_at: now,
        updated_at: now,
    };
    match store.create_tenant(&tenant).await {
        Ok(()) | Err(caas_store::StoreError::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let demo = Demo {
        tenant_id: id.to_string(),
        app_id: random::id("app_"),
        app_secret: random::secret("sk_"),
    };
    store
        .put_credential(&AppCredential {
            app_id: demo.app_id.clone(),
            tenant_id: id,
            secret_hash: random::hash_secret(&demo.app_secret),
            created_at: now,
            expires_at: None,
        })
        .await?;
    write_private(&file, serde_json::to_string_pretty(&demo)?.as_bytes())?;
    Ok(demo)
}
