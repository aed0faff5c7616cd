//! `caas-operator`: `crd` prints the CustomResourceDefinitions; `run` starts the controllers
//! with a `/metrics` + `/health` port. Flags have `CAAS_OPERATOR_*` environment equivalents
//! (the Helm chart sets those). The cluster comes from the kubeconfig or the in-cluster config.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use caas_operator::admin_api::HttpTenantAdmin;
use caas_operator::controller::{self, Context, WatchScope};
use caas_operator::leader::{self, LeaseConfig};
use clap::{Parser, Subcommand};
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::Reporter;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(name = "caas-operator", version, about = "The caas control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd {
        /// Write one file per CRD into this directory instead of printing one stream.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
    /// Reconcile ChatPlatforms until SIGTERM.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Comma-separated namespaces to watch; empty: all namespaces.
    #[arg(
        long,
        env = "CAAS_OPERATOR_WATCH_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Address of the /metrics and /health listener.
    #[arg(
        long,
        env = "CAAS_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// The namespace the operator runs in (NetworkPolicies admit it to the admin port).
    #[arg(long, env = "POD_NAMESPACE", default_value = "caas-system")]
    namespace: String,
    /// This replica's name, for events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// An EnvFilter directive.
    #[arg(long, env = "CAAS_OPERATOR_LOG", default_value = "info")]
    log: String,
    /// `json` or `pretty`.
    #[arg(long, env = "CAAS_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Reconcile only while holding the leader Lease (for several replicas).
    #[arg(long, env = "CAAS_OPERATOR_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader Lease (in `--namespace`).
    #[arg(
        long,
        env = "CAAS_OPERATOR_LEASE_NAME",
        default_value = "caas-operator"
    )]
    lease_name: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir: None } => {
            print!("{}", caas_operator::crd::crds_yaml()?);
            Ok(())
        }
        Command::Crd { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (stem, yaml) in caas_operator::crd::crd_files()? {
                let path = dir.join(format!("{stem}.yaml"));
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run(args)),
    }
}

fn init_tracing(args: &RunArgs) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("parsing the log filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "pretty" {
        builder.try_init().map_err(|e| anyhow::anyhow!(e))
    } else {
        builder.json().try_init().map_err(|e| anyhow::anyhow!(e))
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "Failed to listen for SIGTERM; stopping on Ctrl-C only.");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let reporter = Reporter {
        controller: "caas-operator".into(),
        instance: args.pod_name.clone(),
    };
    let admin = Arc::new(HttpTenantAdmin::new().context("building the admin API client")?);
    let ctx = Arc::new(
        Context::new(client, args.namespace.clone(), reporter, admin)
            .context("registering metrics")?,
    );
    let metrics = ctx.metrics.clone();
    let namespaces: Vec<String> = args
        .watch_namespaces
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    let scope = if namespaces.is_empty() {
        WatchScope::All
    } else {
        WatchScope::Namespaces(namespaces)
    };
    tracing::info!(scope = ?scope, metrics = %args.metrics_listen, "Starting the caas operator.");

    let shutdown = shutdown_signal().boxed().shared();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, caas_operator::http::router(metrics))
            .with_graceful_shutdown(http_shutdown)
            .await
    });
    if args.leader_election {
        let identity = args
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("caas-operator-{}", std::process::id()));
        let lease = LeaseConfig::new(&args.lease_name, &args.namespace, identity);
        let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &args.namespace);
        tokio::select! {
            _ = leader::acquire(&leases, &lease) => {}
            _ = shutdown.clone() => return Ok(()),
        }
        let lost = tokio::select! {
            _ = controller::run(ctx.clone(), scope, shutdown.clone()) => false,
            _ = leader::hold(&leases, &lease) => true,
        };
        if lost {
            // Exit so the pod restarts as a candidate; never two leaders.
            anyhow::bail!("lost the leader lease {}", lease.name);
        }
        if let Err(error) = leader::release(&leases, &lease).await {
            tracing::warn!(error = %error, "Failed to release the leader lease.");
        }
    } else {
        controller::run(ctx, scope, shutdown).await;
    }
    http.await
        .context("joining the HTTP server")?
        .context("serving /metrics")?;
    tracing::info!("Stopped.");
    Ok(())
}
