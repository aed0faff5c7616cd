//! `caas`: one binary for every workload. `caas gateway`, `caas pipeline`, `caas socket`, or
//! `caas standalone` (the default): the whole platform in one process on embedded defaults.

#![forbid(unsafe_code)]

mod demo;
mod media;
mod run;
mod search;
mod standalone;
mod wire;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "caas", version, about = "Chat as a service")]
struct Cli {
    /// Configuration file (YAML or JSON); `CAAS_<SECTION>__<FIELD>` variables override it.
    #[arg(long, env = "CAAS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The REST API and the tenant admin API.
    Gateway,
    /// The message pipeline: persists the conversation-events log.
    Pipeline,
    /// The realtime server: Socket.IO for apps' clients (docs/realtime.md).
    Socket,
    /// The media API: uploads, downloads, signed URLs, thumbnails (docs/media.md).
    Media,
    /// The search workload: indexes the log, answers /v1/search (docs/search.md).
    Search,
    /// Everything in one process on embedded defaults (the default command).
    Standalone(standalone::Args),
    /// Prints the OpenAPI document of the REST API.
    Openapi,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli
        .command
        .unwrap_or(Command::Standalone(standalone::Args::default()))
    {
        Command::Openapi => match serde_json::to_string_pretty(&run::openapi()) {
            Ok(s) => {
                println!("{s}");
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Gateway => {
            run::workload(
                cli.config.as_deref(),
                run::Parts {
                    gateway: true,
                    pipeline: false,
                    socket: false,
                },
            )
            .await
        }
        Command::Pipeline => {
            run::workload(
                cli.config.as_deref(),
                run::Parts {
                    gateway: false,
                    pipeline: true,
                    socket: false,
                },
            )
            .await
        }
        Command::Socket => {
            run::workload(
                cli.config.as_deref(),
                run::Parts {
                    gateway: false,
                    pipeline: false,
                    socket: true,
                },
            )
            .await
        }
        Command::Media => media::run(cli.config.as_deref()).await,
        Command::Search => search::run(cli.config.as_deref()).await,
        Command::Standalone(args) => standalone::run(cli.config.as_deref(), args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "caas failed.");
            eprintln!("caas: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
