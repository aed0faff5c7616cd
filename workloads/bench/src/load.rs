//! The measurements: open-loop offered load, the persistence burst, history paging, and
//! waiting for the server to be idle between them.

use crate::api::{Api, User};
use crate::server::{Server, proc_cpu};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

pub struct LoadConfig {
    pub max_in_flight: usize,
    pub client_msg_id: bool,
}

// Invariant: 1 µs .. 120 s with 3 significant figures is a valid histogram definition.
#[allow(clippy::expect_used)]
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

const TEXT: &str = "the quick brown fox jumps over the lazy dog, a benchmark message";

/// Waits until the pipeline has applied everything (its processed counter stops moving and
/// equals what it received minus duplicates and discards), at most 60 s.
pub async fn wait_quiet(api: &Api) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1.0;
    let mut still = 0;
    loop {
        let m = api.metrics().await?;
        let processed = m.get("caas_pipeline_processed_total")
            + m.get("caas_pipeline_duplicates_total")
            + m.get("caas_pipeline_discarded_total");
        let received = m.get("caas_pipeline_received_total");
        if processed == last && processed >= received {
            still += 1;
            if still >= 3 {
                return Ok(());
            }
        } else {
            still = 0;
        }
        last = processed;
        anyhow::ensure!(
            Instant::now() < deadline,
            "the pipeline did not settle within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct OfferedResult {
    rate: u32,
    scheduled: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    wall: Duration,
    hist: Histogram<u64>,
    server_cpu: Duration,
    gen_cpu: Duration,
}

impl OfferedResult {
    pub fn header() -> String {
        "| offered/s | sent | ok | errors | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU | server CPU µs/msg | generator CPU |\n\
         | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            .to_string()
    }

    pub fn row(&self) -> String {
        let h = &self.hist;
        let errors = if self.errors.is_empty() {
            "0".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{v}×{k}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let wall = self.wall.as_secs_f64().max(1e-9);
        format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} % | {:.0} | {:.0} % |",
            self.rate,
            self.scheduled,
            self.ok,
            errors,
            self.ok as f64 / wall,
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            100.0 * self.server_cpu.as_secs_f64() / wall,
            self.server_cpu.as_micros() as f64 / self.ok.max(1) as f64,
            100.0 * self.gen_cpu.as_secs_f64() / wall,
        )
    }
}

/// Offers `rate` sends per second for `duration`, open loop, round robin over conversations
/// and users.
#[allow(clippy::too_many_arguments)]
pub async fn offered(
    api: &Api,
    srv: &Server,
    users: &[User],
    convs: &[String],
    rate: u32,
    duration: Duration,
    cfg: &LoadConfig,
    tag: &str,
) -> OfferedResult {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let hist = Arc::new(Mutex::new(histogram()));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let ok = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let users: Arc<Vec<User>> = Arc::new(users.to_vec());
    let convs: Arc<Vec<String>> = Arc::new(convs.to_vec());
    let tag: Arc<str> = Arc::from(tag);
    let cpu0 = srv.cpu();
    let gen0 = proc_cpu("/proc/self/stat");
    let t0 = Instant::now() + Duration::from_millis(5);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0u64;
    while next < total {
        tick.tick().await;
        let now = Instant::now();
        if now < t0 {
            continue;
        }
        let due = (((now - t0).as_secs_f64() * f64::from(rate)) as u64 + 1).min(total);
        while next < due {
            let i = next;
            next += 1;
            let intended = t0 + Duration::from_secs_f64(i as f64 / f64::from(rate));
            let (api, hist, errors, ok, sem, users, convs, tag) = (
                api.clone(),
                hist.clone(),
                errors.clone(),
                ok.clone(),
                sem.clone(),
                users.clone(),
                convs.clone(),
                tag.clone(),
            );
            let cmid = cfg.client_msg_id.then(|| format!("{tag}-{i}"));
            tasks.spawn(async move {
                let Ok(_permit) = sem.acquire().await else {
                    return;
                };
                let conv = &convs[i as usize % convs.len()];
                let user = &users[(i as usize / convs.len()) % users.len()];
                let text = format!("{tag} #{i}: {TEXT}");
                let r = api.send(user, conv, &text, cmid.as_deref()).await;
                let took = intended.elapsed().as_micros() as u64;
                match r {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.lock().await.record(took.max(1));
                    }
                    Err(e) => *errors.lock().await.entry(e).or_default() += 1,
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let wall = t0.elapsed();
    let hist = hist.lock().await.clone();
    let errors = errors.lock().await.clone();
    OfferedResult {
        rate,
        scheduled: total,
        ok: ok.load(Ordering::Relaxed),
        errors,
        wall,
        hist,
        server_cpu: srv.cpu().saturating_sub(cpu0),
        gen_cpu: proc_cpu("/proc/self/stat").saturating_sub(gen0),
    }
}

pub struct BurstResult {
    pub ok: u64,
    errors: BTreeMap<String, u64>,
    acked_after: Duration,
    persisted_after: Option<Duration>,
    ack_hist: Histogram<u64>,
    batches: f64,
    batch_seconds: f64,
    applied: f64,
    server_cpu: Duration,
    verified: String,
}

impl BurstResult {
    pub fn table(&self) -> String {
        let mut out = String::from("| measure | value |\n| --- | ---: |\n");
        let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
        let n = self.ok as f64;
        row("sends acknowledged", format!("{}", self.ok));
        if !self.errors.is_empty() {
            row("send errors", format!("{:?}", self.errors));
        }
        row(
            "first send -> last ack",
            format!("{} ms", self.acked_after.as_millis()),
        );
        row(
            "accepted (acked) messages/s",
            format!("{:.0}", n / self.acked_after.as_secs_f64()),
        );
        row(
            "send latency p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                ms(self.ack_hist.value_at_quantile(0.5)),
                ms(self.ack_hist.value_at_quantile(0.99)),
                ms(self.ack_hist.max())
            ),
        );
        match self.persisted_after {
            Some(p) => {
                row(
                    "first send -> all persisted",
                    format!("{} ms", p.as_millis()),
                );
                row(
                    "**persisted messages/s** (end to end)",
                    format!("**{:.0}**", n / p.as_secs_f64()),
                );
                row(
                    "last ack -> all persisted (pipeline lag)",
                    format!("{} ms", p.saturating_sub(self.acked_after).as_millis()),
                );
            }
            None => row("first send -> all persisted", "not within 120 s".into()),
        }
        if self.batches > 0.0 {
            row(
                "pipeline batches / mean events per batch",
                format!("{:.0} / {:.1}", self.batches, self.applied / self.batches),
            );
            row(
                "store apply time / events per second of apply time",
                format!(
                    "{:.0} ms / {:.0}",
                    self.batch_seconds * 1000.0,
                    self.applied / self.batch_seconds.max(1e-9)
                ),
            );
        }
        row(
            "server CPU µs per message (send + persist)",
            format!("{:.0}", self.server_cpu.as_micros() as f64 / n.max(1.0)),
        );
        row("check through the API", self.verified.clone());
        out
    }
}

/// Sends `n` messages to one conversation as fast as `concurrency` closed-loop senders can,
/// and times them until the pipeline has stored them all; then pages through the conversation
/// with `after` cursors and checks that every acknowledged position is listed exactly once.
pub async fn burst(
    api: &Api,
    srv: &Server,
    users: &[User],
    conv: &str,
    n: usize,
    concurrency: usize,
    cfg: &LoadConfig,
) -> anyhow::Result<BurstResult> {
    let m0 = api.metrics().await?;
    let p0 = m0.get("caas_pipeline_processed_total");
    let b0 = m0.get("caas_pipeline_batch_seconds_count");
    let s0 = m0.get("caas_pipeline_batch_seconds_sum");
    let cpu0 = srv.cpu();
    let target = Arc::new(AtomicU64::new(n as u64));
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let hist = Arc::new(Mutex::new(histogram()));
    let users: Arc<Vec<User>> = Arc::new(users.to_vec());
    let t0 = Instant::now();

    let poller = {
        let api = api.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let deadline = t0 + Duration::from_secs(120);
            loop {
                if let Ok(m) = api.metrics().await
                    && m.get("caas_pipeline_processed_total") - p0
                        >= target.load(Ordering::Relaxed) as f64
                {
                    return Some(t0.elapsed());
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (api, next, acked, errors, hist, users, target) = (
            api.clone(),
            next.clone(),
            acked.clone(),
            errors.clone(),
            hist.clone(),
            users.clone(),
            target.clone(),
        );
        let conv = conv.to_string();
        let cmid = cfg.client_msg_id;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let user = &users[i % users.len()];
                let text = format!("history #{i}: {TEXT}");
                let id = cmid.then(|| format!("burst-{i}"));
                let start = Instant::now();
                match api.send(user, &conv, &text, id.as_deref()).await {
                    Ok(s) => {
                        let _ = hist
                            .lock()
                            .await
                            .record((start.elapsed().as_micros() as u64).max(1));
                        acked.lock().await.push((s.partition, s.position));
                    }
                    Err(e) => {
                        target.fetch_sub(1, Ordering::Relaxed);
                        *errors.lock().await.entry(e).or_default() += 1;
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let acked_after = t0.elapsed();
    let persisted_after = poller.await.ok().flatten();
    let server_cpu = srv.cpu().saturating_sub(cpu0);
    let m1 = api.metrics().await?;
    let acked = acked.lock().await.clone();
    let ok = acked.len() as u64;

    // Check: every acknowledged position is listed once, in order, nothing else.
    let verified = match acked.iter().map(|a| a.1).min() {
        None => "nothing acknowledged".to_string(),
        Some(first) => {
            let want: BTreeSet<i64> = acked.iter().map(|a| a.1).collect();
            let mut seen = Vec::with_capacity(want.len());
            let mut cursor = first - 1;
            let mut stale = 0;
            loop {
                let p = api
                    .page(&users[0], conv, &format!("after={cursor}"), 200)
                    .await?;
                stale += usize::from(!p.fresh);
                let Some(&last) = p.positions.last() else {
                    break;
                };
                seen.extend_from_slice(&p.positions);
                cursor = last;
                if !p.has_more {
                    break;
                }
            }
            let ordered = seen.windows(2).all(|w| w[0] < w[1]);
            let got: BTreeSet<i64> = seen.iter().copied().collect();
            if got == want && ordered && seen.len() == want.len() {
                format!(
                    "all {} acknowledged positions listed once, in order ({} pages of 200, {stale} stale)",
                    want.len(),
                    seen.len().div_ceil(200)
                )
            } else {
                format!(
                    "MISMATCH: {} acknowledged, {} listed ({} distinct), ordered: {ordered}",
                    want.len(),
                    seen.len(),
                    got.len()
                )
            }
        }
    };
    let errors = errors.lock().await.clone();
    let ack_hist = hist.lock().await.clone();
    Ok(BurstResult {
        ok,
        errors,
        acked_after,
        persisted_after,
        ack_hist,
        batches: m1.get("caas_pipeline_batch_seconds_count") - b0,
        batch_seconds: m1.get("caas_pipeline_batch_seconds_sum") - s0,
        applied: m1.get("caas_pipeline_processed_total") - p0,
        server_cpu,
        verified,
    })
}

pub struct HistoryResult {
    pages: u64,
    messages: u64,
    expected: u64,
    passes: usize,
    wall: Duration,
    hist: Histogram<u64>,
    stale: u64,
}

impl HistoryResult {
    pub fn table(&self) -> String {
        let h = &self.hist;
        format!(
            "| pages | messages per pass (expected) | pages/s (1 client) | p50 ms | p90 ms | p99 ms | max ms | stale answers |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {} ({}) | {:.0} | {} | {} | {} | {} | {} |\n",
            self.pages,
            self.messages / self.passes.max(1) as u64,
            self.expected,
            self.pages as f64 / self.wall.as_secs_f64(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            self.stale,
        )
    }
}

/// Pages `conv` from the newest message to the oldest with `before` cursors, `passes` times,
/// one request at a time.
pub async fn history(
    api: &Api,
    user: &User,
    conv: &str,
    passes: usize,
    page_size: u32,
    expected: u64,
) -> anyhow::Result<HistoryResult> {
    let mut hist = histogram();
    let (mut pages, mut messages, mut stale) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for _ in 0..passes.max(1) {
        let mut cursor = String::new();
        loop {
            let start = Instant::now();
            let p = api.page(user, conv, &cursor, page_size).await?;
            let _ = hist.record((start.elapsed().as_micros() as u64).max(1));
            pages += 1;
            stale += u64::from(!p.fresh);
            messages += p.positions.len() as u64;
            let Some(&first) = p.positions.first() else {
                break;
            };
            if !p.has_more {
                break;
            }
            cursor = format!("before={first}");
        }
    }
    Ok(HistoryResult {
        pages,
        messages,
        expected,
        passes: passes.max(1),
        wall: t0.elapsed(),
        hist,
        stale,
    })
}
