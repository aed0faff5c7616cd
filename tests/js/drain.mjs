// Graceful shutdown, seen from clients: run by workloads/caas/tests/realtime.rs, which sends
// SIGTERM to the server once this script prints READY. Every client must be told
// `server.draining`, spread over time (not all at once), a send made on that signal must still
// be acked, new handshakes must be refused with `unavailable`, and then each client is
// disconnected by the server. Prints a JSON summary; exits non-zero when anything is missing.

import { connect, conversation, emit, tenant } from "./lib.mjs";

const N = Number(process.env.CAAS_DRAIN_CLIENTS || 20);
const SPREAD = Number(process.env.CAAS_DRAIN_SPREAD_MS || 2000);

const t = await tenant();
const owner = await t.token("owner");
const users = Array.from({ length: N }, (_, i) => `u${i}`);
const tokens = await Promise.all(users.map((u) => t.token(u)));
const g = await conversation(owner, "group", users, "drain");

const sockets = await Promise.all(tokens.map((tok) => connect(tok)));
const start = Date.now();
const done = sockets.map(
  (s, i) =>
    new Promise((resolve) => {
      const r = { i, draining: null, disconnected: null, reason: null, ack: null, refused: null };
      let acked = Promise.resolve();
      s.on("server.draining", () => {
        r.draining = Date.now() - start;
        // Made after the signal: still answered before the server hangs up.
        acked = emit(s, "message.send", { conversation_id: g, text: `bye ${i}` }).then(
          (ack) => { r.ack = ack.ok ? "ok" : ack.error.code; },
          (e) => { r.ack = `no ack: ${e.message}`; },
        );
        if (i === 0) {
          acked = acked.then(() => connect(tokens[0]).then(
            (x) => { x.close(); r.refused = "accepted"; },
            (e) => { r.refused = e.message; },
          ));
        }
      });
      s.on("disconnect", (reason) => {
        r.disconnected = Date.now() - start;
        r.reason = reason;
        acked.then(() => resolve(r));
      });
    }),
);
console.log("READY");
const timeout = setTimeout(() => { console.log("TIMEOUT"); process.exit(2); }, 60000);
const results = await Promise.all(done);
clearTimeout(timeout);
const times = results.map((r) => r.draining).filter((x) => x !== null).sort((a, b) => a - b);
const summary = {
  clients: N,
  told: times.length,
  spread_ms: times.length ? times[times.length - 1] - times[0] : 0,
  acks: results.filter((r) => r.ack === "ok").length,
  server_disconnects: results.filter((r) => r.reason === "io server disconnect").length,
  refused_while_draining: results[0].refused,
  not_ok: results.filter((r) => r.ack !== "ok" || r.reason !== "io server disconnect"),
};
console.log(JSON.stringify(summary));
const ok =
  summary.told === N &&
  summary.acks === N &&
  summary.server_disconnects === N &&
  summary.refused_while_draining === "unavailable" &&
  // Spread over the window, not all at once: the last is told well after the first.
  summary.spread_ms >= SPREAD / 3;
process.exit(ok ? 0 : 1);
