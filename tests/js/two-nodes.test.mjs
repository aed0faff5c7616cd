// Two `caas socket` processes sharing Redis behave as one server (workloads/caas/tests/
// realtime_distributed.rs starts them with a gateway and a pipeline on MongoDB + Kafka + Redis):
// messages, typing and presence cross nodes; the connection quota holds across both.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { closeAll, connect, conversation, emit, received, refused, rest, sleep, tenant, waitFor } from "./lib.mjs";

after(closeAll);

const A = process.env.CAAS_SOCKET_A;
const B = process.env.CAAS_SOCKET_B;

test("a message sent on node A reaches a member on node B, in order, once", async () => {
  const t = await tenant();
  const [ann, bob] = await Promise.all([t.token("ann"), t.token("bob")]);
  const g = await conversation(ann, "group", ["bob"], "g");
  const sa = await connect(ann, { url: A });
  const sb = await connect(bob, { url: B });
  const ids = [];
  for (let i = 0; i < 30; i++) {
    const ack = await emit(sa, "message.send", { conversation_id: g, text: `m${i}`, client_msg_id: `x${i}` });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    ids.push(ack.message_id);
  }
  // And one over REST (the gateway): it reaches both nodes too.
  const r = await rest("POST", `/v1/conversations/${g}/messages`, ann, { text: "rest" }, 201);
  ids.push(r.message.id);
  await waitFor("all on B", () => received(sb, "message.created").length >= ids.length);
  await waitFor("all on A", () => received(sa, "message.created").length >= ids.length);
  await sleep(200);
  assert.deepEqual(received(sb, "message.created").map((m) => m.message_id), ids);
  assert.deepEqual(received(sa, "message.created").map((m) => m.message_id), ids);
});

test("typing and presence cross nodes; non-members see neither", async () => {
  const t = await tenant();
  const [ann, bob, carol] = await Promise.all([t.token("ann"), t.token("bob"), t.token("carol")]);
  const g = await conversation(ann, "group", ["bob"], "g");
  const sa = await connect(ann, { url: A });
  const sc = await connect(carol, { url: B });
  const sb = await connect(bob, { url: B });
  await waitFor("bob online on A", () => received(sa, "presence", (p) => p.user_id === "bob" && p.online)[0]);
  const p = await emit(sa, "presence.get", { conversation_id: g });
  assert.deepEqual([...p.online].sort(), ["ann", "bob"]);
  const ty = await emit(sb, "typing.start", { conversation_id: g });
  assert.equal(ty.ok, true, JSON.stringify(ty));
  await waitFor("typing on A", () => received(sa, "typing", (x) => x.user_id === "bob" && x.typing)[0]);
  sb.close();
  await waitFor("bob offline on A", () => received(sa, "presence", (x) => x.user_id === "bob" && !x.online)[0]);
  await sleep(200);
  assert.equal(received(sc, "typing").length, 0);
  assert.equal(received(sc, "presence", (x) => x.user_id === "bob").length, 0);
});

test("the tenant's connection quota holds across both nodes", async () => {
  const t = await tenant({ max_connections: 2 });
  const tok = await t.token("ann");
  const s1 = await connect(tok, { url: A });
  const s2 = await connect(tok, { url: B });
  assert.equal(await refused(tok, { url: A }), "quota_exceeded");
  assert.equal(await refused(tok, { url: B }), "quota_exceeded");
  s1.close();
  await waitFor("a slot", async () => {
    try {
      (await connect(tok, { url: B })).close();
      return true;
    } catch (e) {
      assert.equal(e.message, "quota_exceeded");
      return false;
    }
  });
  s2.close();
});

test("a client that moves from node A to node B resumes with its cursor", async () => {
  const t = await tenant();
  const [ann, bob] = await Promise.all([t.token("ann"), t.token("bob")]);
  const g = await conversation(ann, "group", ["bob"], "g");
  const sa = await connect(ann, { url: A });
  await emit(sa, "message.send", { conversation_id: g, text: "before" });
  const onA = await connect(bob, { url: A });
  const seen = await emit(sa, "message.send", { conversation_id: g, text: "seen on A" });
  await waitFor("seen", () => received(onA, "message.created", (m) => m.message_id === seen.message_id)[0]);
  const cursor = onA.state.cursor;
  onA.close();
  const missed = [];
  for (let i = 0; i < 10; i++) missed.push((await emit(sa, "message.send", { conversation_id: g, text: `missed ${i}` })).message_id);
  const onB = await connect(bob, { url: B, cursor });
  // Exactly what was missed (replayed before `session`, or live after it when node B had not
  // read that far yet), in order; nothing seen on A comes again.
  await waitFor("the missed ones", () => received(onB, "message.created").length >= missed.length);
  await sleep(200);
  assert.deepEqual(received(onB, "message.created").map((m) => m.message_id), missed);
});
