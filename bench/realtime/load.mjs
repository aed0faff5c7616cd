// One load-generator process of the realtime benchmark (started by bench.mjs over an IPC
// channel; see scripts/bench-realtime.sh). It opens the websocket connections of its slice of
// the plan with the official Socket.IO client, then, on command, sends `message.send` at a fixed
// offered rate (open loop) from random connections of its slice and records, for every
// `message.created` received, the send -> receive latency (the sender's timestamp is the text).
//
// Messages from the parent: {cmd: "run", rate, seconds, drainMs, record} and {cmd: "exit"}.
// To the parent: {ready, connected, failed, ms}, {done, sent, acked, ackErrors, received,
// lat (samples, ms; only when record)}.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(new URL("../../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const [planPath, fromS, toS] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planPath, "utf8"));
const from = Number(fromS);
const to = Number(toS);
const now = () => performance.timeOrigin + performance.now();

const sockets = [];
let received = 0;
let recording = false;
let lat = [];
let disconnects = 0;
let errors = {};

function open(u) {
  return new Promise((resolve) => {
    const auth = plan.mode === "caas" ? { token: u.token } : { room: u.room };
    const s = io(u.url || plan.url, {
      transports: ["websocket"],
      auth,
      forceNew: true,
      reconnection: false,
      timeout: 60000,
    });
    s.room = u.room;
    let done = false;
    const ok = () => {
      if (!done) { done = true; resolve(true); }
    };
    s.on(plan.mode === "caas" ? "session" : "connect", ok);
    s.on("connect_error", (e) => {
      errors[e.message] = (errors[e.message] || 0) + 1;
      if (!done) { done = true; resolve(false); }
    });
    s.on("disconnect", () => { disconnects++; });
    s.on("message.created", (m) => {
      received++;
      if (recording) lat.push(now() - Number(m.text));
    });
    sockets.push(s);
  });
}

async function connectAll() {
  const t0 = Date.now();
  let next = from;
  let connected = 0;
  let failed = 0;
  const inflight = plan.connectConcurrency || 100;
  async function lane() {
    while (next < to) {
      const u = plan.users[next++];
      if (await open(u)) connected++;
      else failed++;
    }
  }
  await Promise.all(Array.from({ length: inflight }, lane));
  process.send({ ready: true, connected, failed, errors, ms: Date.now() - t0 });
}

async function run({ rate, seconds, drainMs, record }) {
  const live = sockets.filter((s) => s.connected);
  let sent = 0, acked = 0, ackErrors = 0;
  const ackCodes = {};
  received = 0;
  lat = [];
  recording = record;
  const start = now();
  const total = Math.round(rate * seconds);
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((now() - start) * rate) / 1000));
      while (sent < due) {
        const s = live[Math.floor(Math.random() * live.length)];
        sent++;
        const payload = plan.mode === "caas"
          ? { conversation_id: s.room, text: String(now()) }
          : { room: s.room, text: String(now()) };
        s.timeout(10000).emit("message.send", payload, (err, ack) => {
          if (!err && ack && ack.ok) acked++;
          else {
            ackErrors++;
            const c = err ? "timeout" : ack?.error?.code || "bad_ack";
            ackCodes[c] = (ackCodes[c] || 0) + 1;
          }
        });
      }
      if (sent >= total) resolve();
      else setTimeout(tick, 2);
    };
    tick();
  });
  await new Promise((r) => setTimeout(r, drainMs));
  recording = false;
  process.send({
    done: true, sent, acked, ackErrors, ackCodes, received, disconnects,
    lat: record ? lat : [],
  });
}

process.on("message", (m) => {
  if (m.cmd === "run") run(m);
  if (m.cmd === "exit") {
    for (const s of sockets) s.close();
    setTimeout(() => process.exit(0), 200);
  }
});
process.on("disconnect", () => process.exit(0));
connectAll();
