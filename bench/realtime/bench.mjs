// The realtime benchmark's orchestrator (run it through scripts/bench-realtime.sh).
//
//   node bench.mjs --server caas|bare [--conns N] [--group 100] [--rate SENDS_PER_S]
//                  [--seconds 20] [--loadgens K] [--server-cpu 0] [--load-cpu 1] [--idle]
//
// 1. Starts the server under test pinned with `taskset -c <server-cpu>`: `caas standalone` on a
//    fresh data dir (per-user and token-exchange limits off, log level warn; the demo tenant's
//    quotas raised through the admin API), or the bare socketioxide server (bench/bare-socketio).
// 2. caas: exchanges a token per user and creates one group conversation per `group` users (all
//    of them members). bare: the room names only.
// 3. Reads the server's VmRSS, then starts K load generators (load.mjs, `taskset -c <load-cpu>`)
//    that open one websocket connection per user; waits 5 s after the last, reads VmRSS again:
//    memory per connection = difference / connections.
// 4. Unless --idle: a 3 s warm-up at the rate, then the measured run: utime+stime of the server
//    (/proc/<pid>/stat) before and after `seconds` of sends at `rate` msgs/s (split over the
//    generators, random senders) plus 2 s for the last deliveries; prints deliveries/s, CPU µs
//    per delivered message and send -> receive latency percentiles.
// Prints one JSON line `RESULT {...}` at the end.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, rmSync, existsSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer } from "node:net";
import { join } from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) {
      const next = all[i + 1];
      acc.push([a.slice(2), next === undefined || next.startsWith("--") ? "true" : next]);
    }
    return acc;
  }, []),
);
const server = args.server || "caas";
const conns = Number(args.conns || 10000);
const group = Number(args.group || 100);
const rate = Number(args.rate || 150);
const seconds = Number(args.seconds || 20);
const loadgens = Number(args.loadgens || Math.max(1, Math.ceil(conns / 9900)));
const serverCpu = args["server-cpu"] || "0";
const loadCpu = args["load-cpu"] || "1";
const idle = args.idle === "true";
const target = process.env.CARGO_TARGET_DIR || `${process.env.HOME}/.cache/caas-target`;
const caasBin = args.caas || `${target}/release/caas`;
const bareBin = args.bare || `${target}/release/bare-socketio`;
const here = new URL(".", import.meta.url).pathname;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log(`[${new Date().toISOString().slice(11, 19)}]`, ...a);
const ticks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());
function cpuSecs(pid) {
  const s = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / ticks; // utime, stime (fields 14, 15)
}
// The measured server processes: the one server, or both socket processes of the cluster.
const measured = () => (server === "cluster" ? info.sockets.map((x) => x.pid) : [proc.pid]);
const cpuAll = () => measured().reduce((a, p) => a + cpuSecs(p), 0);
const rssAll = () => measured().reduce((a, p) => a + rssKiB(p), 0);
function rssKiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/);
  return Number(m[1]);
}

const dir = mkdtempSync(join(tmpdir(), "caas-bench-rt."));
let proc;
let info;
const children = [];
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(1));
process.on("exit", () => {
  for (const c of children) try { c.kill("SIGKILL"); } catch {}
  if (proc) try { proc.kill("SIGKILL"); } catch {}
  for (const p of procs) try { p.kill("SIGKILL"); } catch {}
});

const freePort = () => new Promise((resolve) => {
  const srv = createServer().listen(0, "127.0.0.1", () => {
    const { port } = srv.address();
    srv.close(() => resolve(port));
  });
});

// The distributed shape (--server cluster): a gateway, a pipeline and two `caas socket`
// processes on the MongoDB, Kafka and Redis of CAAS_TEST_MONGODB_URI, CAAS_TEST_KAFKA_BROKERS,
// CAAS_TEST_REDIS_URL (scripts/test.sh starts them). The socket processes are pinned to
// <server-cpu>; the others are not. `proc` is socket-a; `procs` all four.
let procs = [];
async function startCluster() {
  const need = (k) => process.env[k] || (() => { throw new Error(`${k} is not set (run through scripts/test.sh)`); })();
  const mongo = need("CAAS_TEST_MONGODB_URI"), brokers = need("CAAS_TEST_KAFKA_BROKERS"), redis = need("CAAS_TEST_REDIS_URL");
  const run = `bench${Date.now().toString(36)}`;
  execFileSync("mkdir", ["-p", join(dir, "keys")]);
  execFileSync("openssl", ["genpkey", "-algorithm", "ed25519", "-out", join(dir, "keys", "k1.pem")]);
  const adminToken = `adm_${run}`;
  writeFileSync(join(dir, "admin-token"), adminToken);
  const env = { ...process.env, CAAS_STORE__URI: mongo, CAAS_REDIS__URL: redis };
  const one = async (name, sub, pin) => {
    const api = await freePort(), internal = await freePort(), metrics = await freePort();
    const cfg = join(dir, `${name}.yaml`);
    writeFileSync(cfg, `server:
  listen: "127.0.0.1:${api}"
  internalListen: "127.0.0.1:${internal}"
  metricsListen: "127.0.0.1:${metrics}"
log:
  level: warn
store:
  kind: mongodb
  database: "caas_${run}"
bus:
  kind: kafka
  brokers: "${brokers}"
  topicPrefix: "${run}."
  partitions: 3
  replicationFactor: 1
  createTopics: true
redis:
  keyPrefix: "${run}:"
auth:
  keysDir: "${join(dir, "keys")}"
admin:
  tokenFile: "${join(dir, "admin-token")}"
pipeline:
  groupId: "caas-pipeline-${run}"
limits:
  messagesPerMinutePerUser: 0
  tokenExchangesPerMinutePerApp: 0
`);
    const out = openSync(join(dir, `${name}.log`), "w");
    const argv = pin ? ["taskset", "-c", serverCpu, caasBin] : [caasBin];
    argv.push(sub, "--config", cfg);
    log(`${name}:`, argv.join(" "));
    const p = spawn(argv[0], argv.slice(1), { env, stdio: ["ignore", out, out] });
    procs.push(p);
    const base = { api: `http://127.0.0.1:${api}`, internal: `http://127.0.0.1:${internal}`, pid: p.pid };
    for (let i = 0; i < 600; i++) {
      try { if ((await fetch(`${base.api}/ready`)).ok) return base; } catch {}
      await sleep(200);
    }
    throw new Error(`${name} not ready; see ${join(dir, `${name}.log`)}`);
  };
  await one("pipeline", "pipeline", false);
  const gw = await one("gateway", "gateway", false);
  const [a, b] = await Promise.all([one("socket-a", "socket", true), one("socket-b", "socket", true)]);
  proc = procs[2];
  const t = await call(gw.internal, "POST", "/admin/v1/tenants", adminToken, {
    id: run, name: run, quotas: { max_connections: 1000000, messages_per_minute: 0 },
  });
  info = {
    api: gw.api, admin: gw.internal, admin_token: adminToken, sockets: [a, b],
    demo: { tenant_id: run, app_id: t.credentials.app_id, app_secret: t.credentials.app_secret },
  };
}

async function startServer() {
  const out = openSync(join(dir, "server.log"), "w");
  if (server === "cluster") {
    await startCluster();
  } else if (server === "caas") {
    const env = {
      ...process.env,
      CAAS_LIMITS__MESSAGES_PER_MINUTE_PER_USER: "0",
      CAAS_LIMITS__TOKEN_EXCHANGES_PER_MINUTE_PER_APP: "0",
      CAAS_LOG__LEVEL: process.env.CAAS_LOG__LEVEL || "warn",
    };
    const argv = ["-c", serverCpu, caasBin, "standalone", "--data-dir", dir,
      "--listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    log("server: taskset", argv.join(" "));
    proc = spawn("taskset", argv, { env, stdio: ["ignore", out, out] });
    const f = join(dir, "standalone.json");
    for (let i = 0; i < 600 && !existsSync(f); i++) await sleep(100);
    await sleep(200);
    info = JSON.parse(readFileSync(f, "utf8"));
  } else {
    const argv = ["-c", serverCpu, bareBin, "127.0.0.1:0"];
    log("server: taskset", argv.join(" "));
    proc = spawn("taskset", argv, { stdio: ["ignore", "pipe", out] });
    const addr = await new Promise((resolve) => {
      proc.stdout.on("data", (d) => {
        const m = d.toString().match(/listening (\S+)/);
        if (m) resolve(m[1]);
      });
    });
    info = { api: `http://${addr}` };
  }
  log(`server pid ${proc.pid}, ${info.api}, data ${dir}`);
}

async function call(base, method, path, token, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const r = await fetch(base + path, { method, headers, body: body && JSON.stringify(body) });
    const text = await r.text();
    if (r.ok) return text ? JSON.parse(text) : null;
    if (attempt < 5 && (r.status === 429 || r.status === 503)) { await sleep(500); continue; }
    throw new Error(`${method} ${path}: ${r.status} ${text}`);
  }
}

async function pool(n, conc, f) {
  let i = 0;
  await Promise.all(Array.from({ length: conc }, async () => {
    while (i < n) await f(i++);
  }));
}

async function setup() {
  const users = new Array(conns);
  const rooms = Math.ceil(conns / group);
  const t0 = Date.now();
  if (server !== "bare") {
    const d = info.demo;
    if (server === "caas") await call(info.admin, "PUT", `/admin/v1/tenants/${d.tenant_id}`, info.admin_token, {
      name: "Demo",
      quotas: { max_connections: 1000000, messages_per_minute: 0 },
    });
    await pool(conns, 32, async (i) => {
      const id = `u${i}`;
      const t = await call(info.api, "POST", "/v1/token", null, {
        app_id: d.app_id, app_secret: d.app_secret, user_id: id,
      });
      users[i] = { id, token: t.token, room: null };
      if (info.sockets) users[i].url = info.sockets[i % 2].api; // every room spans both nodes
    });
    await pool(rooms, 8, async (r) => {
      const members = [];
      for (let i = r * group; i < Math.min(conns, (r + 1) * group); i++) members.push(i);
      const conv = await call(info.api, "POST", "/v1/conversations", users[members[0]].token, {
        kind: "group", id: `room${r}`, name: `room${r}`,
        members: members.slice(1).map((i) => users[i].id),
      });
      for (const i of members) users[i].room = conv.id || `room${r}`;
    });
  } else {
    for (let i = 0; i < conns; i++) users[i] = { room: `room${Math.floor(i / group)}` };
  }
  log(`setup: ${conns} users, ${rooms} rooms of ${group} in ${Date.now() - t0} ms`);
  const planPath = join(dir, "plan.json");
  writeFileSync(planPath, JSON.stringify({ mode: server === "bare" ? "bare" : "caas", url: info.api, users }));
  return planPath;
}

function startLoad(planPath) {
  const per = Math.ceil(conns / loadgens);
  const gens = [];
  for (let k = 0; k < loadgens; k++) {
    const from = k * per, to = Math.min(conns, (k + 1) * per);
    const argv = ["-c", loadCpu, process.execPath, join(here, "load.mjs"), planPath, String(from), String(to)];
    log("load: taskset", argv.join(" "));
    const c = spawn("taskset", argv, { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    children.push(c);
    const g = { c, queue: [], waiters: [] };
    c.on("message", (m) => {
      const w = g.waiters.shift();
      if (w) w(m); else g.queue.push(m);
    });
    g.next = () => new Promise((r) => {
      const m = g.queue.shift();
      if (m) r(m); else g.waiters.push(r);
    });
    gens.push(g);
  }
  return gens;
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function phase(gens, secs, record) {
  const c0 = cpuAll();
  const t0 = performance.now();
  for (const g of gens) g.c.send({ cmd: "run", rate: rate / gens.length, seconds: secs, drainMs: 2000, record });
  const res = await Promise.all(gens.map((g) => g.next()));
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuAll() - c0;
  const sum = (k) => res.reduce((a, r) => a + r[k], 0);
  const lat = record ? res.flatMap((r) => r.lat).sort((a, b) => a - b) : [];
  const codes = {};
  for (const r of res) for (const [k, v] of Object.entries(r.ackCodes)) codes[k] = (codes[k] || 0) + v;
  return {
    sent: sum("sent"), acked: sum("acked"), ack_errors: sum("ackErrors"), ack_codes: codes,
    delivered: sum("received"), expected: sum("sent") * group, disconnects: sum("disconnects"),
    wall_s: +wall.toFixed(2), server_cpu_s: +cpu.toFixed(3),
    delivered_per_s: Math.round(sum("received") / secs),
    cpu_us_per_delivered: +((cpu * 1e6) / sum("received")).toFixed(2),
    server_cpu_pct: +((100 * cpu) / wall).toFixed(1),
    p50_ms: +pct(lat, 50).toFixed(2), p99_ms: +pct(lat, 99).toFixed(2),
    p999_ms: +pct(lat, 99.9).toFixed(2), max_ms: +(lat.at(-1) ?? NaN).toFixed(2),
  };
}

async function main() {
  log(`scenario: server=${server} conns=${conns} group=${group} rate=${rate}/s seconds=${seconds} loadgens=${loadgens} load=${(os => os)(uptimeLoad())}`);
  await startServer();
  const planPath = await setup();
  await sleep(2000);
  const rss0 = rssAll();
  const gens = startLoad(planPath);
  const ready = await Promise.all(gens.map((g) => g.next()));
  const connected = ready.reduce((a, r) => a + r.connected, 0);
  log(`connected ${connected}/${conns} in ${Math.max(...ready.map((r) => r.ms))} ms`, JSON.stringify(ready.map((r) => r.errors)));
  await sleep(5000);
  const rss1 = rssAll();
  if (server === "cluster") log("per socket process VmRSS KiB:", measured().map(rssKiB).join(", "), "pids", measured().join(", "));
  const result = {
    server, conns, connected, group, rate, seconds,
    rss_before_kib: rss0, rss_after_kib: rss1,
    kb_per_conn: +(((rss1 - rss0) * 1.024) / connected).toFixed(2), // KB (1000 B), as INFRA.md
    kib_per_conn: +((rss1 - rss0) / connected).toFixed(2),
  };
  log(`RSS ${rss0} KiB -> ${rss1} KiB: ${result.kib_per_conn} KiB (${result.kb_per_conn} KB) per connection`);
  {
    // What the idle connections cost (pings, presence heartbeats, the rest of the product).
    const c0 = cpuAll(), t0 = performance.now();
    await sleep(10000);
    result.idle_cpu_pct = +((100 * (cpuAll() - c0)) / ((performance.now() - t0) / 1000)).toFixed(1);
    log(`idle: server CPU ${result.idle_cpu_pct} % of a core with ${connected} idle connections`);
  }
  if (!idle) {
    await phase(gens, 3, false);
    let perf;
    if (args.perf) {
      const pargv = ["record", "-F", "499", "-g", "-o", args.perf, "-p", String(proc.pid), "--", "sleep", String(Math.max(1, seconds - 2))];
      log("perf", pargv.join(" "));
      const pp = spawn("perf", pargv, { stdio: "ignore" });
      perf = new Promise((r) => pp.on("exit", r));
    }
    const p = await phase(gens, seconds, true);
    if (perf) await perf;
    if (server === "caas" && info.metrics) {
      const text = await (await fetch(info.metrics)).text();
      const pick = (re) => text.split("\n").filter((l) => re.test(l)).join("\n");
      log("metrics:\n" + pick(/^caas_socket_(fanout_lag_seconds_(sum|count)|ack_seconds_(sum|count))/));
    }
    Object.assign(result, p);
    // CPU per delivered message above the idle cost of the connections.
    result.cpu_us_per_delivered_above_idle = +(
      ((p.server_cpu_s - (result.idle_cpu_pct / 100) * p.wall_s) * 1e6) / p.delivered
    ).toFixed(2);
    log(`run: ${JSON.stringify(p)}`);
  }
  result.load_avg = uptimeLoad();
  console.log("RESULT " + JSON.stringify(result));
  for (const g of gens) g.c.send({ cmd: "exit" });
  await sleep(500);
  proc.kill("SIGTERM");
  for (const p of procs) p.kill("SIGTERM");
  await sleep(300);
  if (!args["keep-data"]) rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}

function uptimeLoad() {
  return readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
}

main().catch((e) => { console.error(e); process.exit(1); });
