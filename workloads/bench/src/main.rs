//! `caas-bench`: benchmarks the real `caas standalone` binary over HTTP, as a client would see
//! it. It starts the server on free ports in a temporary data directory (pinned with
//! `taskset -c <--server-cpus>` when `taskset` exists), sets up users and group conversations
//! through the public API, then measures:
//!
//! 1. REST send latency and throughput at fixed offered loads (open loop: sends start on a
//!    schedule whatever the server does, and latency counts from the scheduled start, so a slow
//!    server is not hidden by a slow generator — no coordinated omission);
//! 2. persisted messages per second: a burst of sends as fast as the server takes them, timed
//!    until the pipeline's `caas_pipeline_processed_total` shows every one in the store, then
//!    checked through the API (every acknowledged position listed once);
//! 3. history page latency: paging a conversation of ≥ 10k messages with `before` cursors.
//!
//! Run the generator on other cores than the server: `taskset -c 1 caas-bench` (the server
//! gets `--server-cpus`, default `0`). Results are printed as Markdown tables.

#![forbid(unsafe_code)]

mod api;
mod load;
mod server;

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "caas-bench", about = "Benchmark of caas standalone over HTTP")]
pub struct Args {
    /// The caas binary. Default: $CARGO_TARGET_DIR/release/caas (or target/release/caas).
    #[arg(long)]
    caas: Option<PathBuf>,
    /// Offered loads (messages per second), each run for --duration.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,4000")]
    rates: Vec<u32>,
    /// Seconds per offered load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unreported load (at the first rate) before the measured runs.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Users (token exchanges); every one is a member of every conversation.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Group conversations the offered load is spread over (round robin).
    #[arg(long, default_value_t = 1)]
    conversations: usize,
    /// Most sends in flight at once; beyond it scheduled sends queue in the generator (their
    /// queueing time counts as latency).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Messages of the persistence burst, which also fills the history conversation.
    #[arg(long, default_value_t = 12_000)]
    burst: usize,
    /// Concurrent senders during the burst (closed loop).
    #[arg(long, default_value_t = 128)]
    burst_concurrency: usize,
    /// Times the history conversation is paged through, newest to oldest.
    #[arg(long, default_value_t = 3)]
    history_passes: usize,
    /// Messages per history page.
    #[arg(long, default_value_t = 50)]
    page_size: u32,
    /// `taskset -c` list for the server; empty: do not pin.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Keep the default per-user limit (60 messages/min) instead of turning it off with
    /// CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER=0. Offered loads then need many users.
    #[arg(long)]
    keep_user_limit: bool,
    /// Send without `client_msg_id` (skips the de-duplication reservation).
    #[arg(long)]
    no_client_msg_id: bool,
    /// Keep the server's data directory.
    #[arg(long)]
    keep_data: bool,
}

fn default_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("release").join("caas")
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let model = sh("lscpu", &[])
        .lines()
        .find(|l| l.starts_with("Model name:"))
        .map(|l| l["Model name:".len()..].trim().to_string())
        .unwrap_or_else(|| "?".into());
    let mem_kib = server::proc_status_kib("/proc/meminfo", "MemTotal:");
    format!(
        "{} CPUs ({}), {:.1} GiB RAM, {}",
        sh("nproc", &["--all"]).trim(),
        model,
        mem_kib as f64 / 1024.0 / 1024.0,
        sh("uname", &["-sr"]).trim()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args.caas.clone().unwrap_or_else(default_binary);
    let mut env = vec![
        ("CAAS_LOG__LEVEL".to_string(), "warn".to_string()),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ];
    if !args.keep_user_limit {
        env.push((
            "CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER".into(),
            "0".into(),
        ));
    }
    let launch = server::Launch {
        binary: binary.clone(),
        cpus: args.server_cpus.clone(),
        env: env.clone(),
        keep_data: args.keep_data,
    };
    let srv = server::Server::start(&launch).await?;
    println!("# caas-bench");
    println!();
    println!("- machine: {}", machine());
    println!(
        "- server: `{}` pid {}, CPUs {} ({}), data dir {}",
        binary.display(),
        srv.pid,
        server::cpus_allowed(&srv.pid.to_string()),
        match &srv.pinned {
            Some(c) => format!("taskset -c {c}"),
            None => "not pinned".into(),
        },
        srv.data_dir.display()
    );
    println!("- load average at start: {}", loadavg());
    println!(
        "- generator: pid {}, CPUs {}",
        std::process::id(),
        server::cpus_allowed("self")
    );
    println!(
        "- server env: {}",
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "- load: {} users, all members of {} send conversation(s) and of the history conversation; client_msg_id {}; tenant quota messages_per_minute set to 0 (unlimited) through the admin API",
        args.users,
        args.conversations,
        if args.no_client_msg_id { "off" } else { "on" }
    );
    println!();

    let http = api::client(args.max_in_flight.max(args.burst_concurrency))?;
    let api = api::Api {
        http,
        info: srv.info.clone(),
    };
    let result = run(&args, &api, &srv).await;
    println!("## Data directory after the run");
    println!();
    println!("| file | bytes |");
    println!("| --- | ---: |");
    for (f, n) in srv.data_sizes() {
        println!("| {f} | {n} |");
    }
    println!();
    let log = std::fs::read_to_string(srv.data_dir.join("server.log")).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .count();
    println!(
        "Server log: {} lines, {warnings} warnings or errors.",
        log.lines().count()
    );
    for l in log
        .lines()
        .filter(|l| !l.starts_with("  ") && !l.starts_with("caas standalone"))
        .take(5)
    {
        println!("    {l}");
    }
    println!("Load average at the end: {}.", loadavg());
    let rss = srv.rss_kib();
    let (took, status) = srv.stop().await?;
    println!(
        "Server RSS before shutdown: {:.1} MiB. SIGTERM -> exit: {} ms ({status}).",
        rss as f64 / 1024.0,
        took.as_millis()
    );
    result
}

async fn run(args: &Args, api: &api::Api, srv: &server::Server) -> anyhow::Result<()> {
    // Setup through the public API.
    api.set_quotas(serde_json::json!({"messages_per_minute": 0}))
        .await
        .context("raising the tenant quota")?;
    let mut users = Vec::with_capacity(args.users);
    for i in 0..args.users.max(2) {
        users.push(api.token(&format!("bench-u{i}")).await?);
    }
    let convs: Vec<String> = (0..args.conversations.max(1))
        .map(|i| format!("bench-send-{i}"))
        .collect();
    for c in &convs {
        api.group(&users[0], c, &users[1..]).await?;
    }
    let history = "bench-history".to_string();
    api.group(&users[0], &history, &users[1..]).await?;
    load::wait_quiet(api).await?;

    let cfg = load::LoadConfig {
        max_in_flight: args.max_in_flight,
        client_msg_id: !args.no_client_msg_id,
    };
    // 1. Offered loads.
    if args.warmup > 0.0
        && let Some(&first) = args.rates.first()
    {
        load::offered(
            api,
            srv,
            &users,
            &convs,
            first,
            Duration::from_secs_f64(args.warmup),
            &cfg,
            "warmup",
        )
        .await;
        load::wait_quiet(api).await?;
    }
    println!("## REST send at fixed offered loads (open loop)");
    println!();
    println!("{}", load::OfferedResult::header());
    // Every send of the whole run has its own client_msg_id: the tag names the step.
    for (step, &rate) in args.rates.iter().enumerate() {
        let r = load::offered(
            api,
            srv,
            &users,
            &convs,
            rate,
            Duration::from_secs_f64(args.duration),
            &cfg,
            &format!("s{step}-r{rate}"),
        )
        .await;
        println!("{}", r.row());
        load::wait_quiet(api).await?;
    }
    println!();

    // 2. Persistence burst (fills the history conversation).
    let burst = load::burst(
        api,
        srv,
        &users,
        &history,
        args.burst,
        args.burst_concurrency,
        &cfg,
    )
    .await?;
    println!(
        "## Persisted messages per second (burst of {} sends, {} concurrent senders, one conversation)",
        args.burst, args.burst_concurrency
    );
    println!();
    println!("{}", burst.table());
    load::wait_quiet(api).await?;

    // 3. History paging.
    let h = load::history(
        api,
        &users[1],
        &history,
        args.history_passes,
        args.page_size,
        burst.ok,
    )
    .await?;
    println!(
        "## History pages (`GET .../messages?limit={}&before=...`, {} messages, {} passes newest to oldest)",
        args.page_size, burst.ok, args.history_passes
    );
    println!();
    println!("{}", h.table());
    Ok(())
}
