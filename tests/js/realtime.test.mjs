// The realtime protocol (docs/realtime.md) driven by the official Socket.IO client against one
// caas process. Run by workloads/caas/tests/realtime.rs (it starts `caas standalone` with a small
// replay window so that recovery is exercised both from memory and from the log).

import { after, test } from "node:test";
import assert from "node:assert/strict";
import {
  admin, closeAll, connect, conversation, emit, received, refused, rest, sleep, tenant, uid, uploaded, waitFor,
} from "./lib.mjs";
import { png } from "./png.mjs";

after(closeAll);

const EXPIRED = process.env.CAAS_EXPIRED_TOKEN;

async function setup() {
  const t = await tenant();
  const [ann, bob, carol] = await Promise.all(["ann", "bob", "carol"].map((u) => t.token(u)));
  const group = await conversation(ann, "group", ["bob"], "g");
  const channel = await conversation(ann, "channel", ["bob"], "c");
  return { t, ann, bob, carol, group, channel };
}

test("handshake refusals carry stable codes", async () => {
  assert.equal(await refused(undefined), "unauthenticated");
  assert.equal(await refused("not-a-token"), "token_invalid");
  assert.ok(EXPIRED, "CAAS_EXPIRED_TOKEN is set by the Rust test");
  assert.equal(await refused(EXPIRED), "token_expired");

  const t = await tenant();
  const tok = await t.token("ann");
  await admin("POST", `/admin/v1/tenants/${t.id}/suspend`, undefined, 200);
  // The suspension reaches the authenticator at once on this process.
  assert.equal(await refused(tok), "tenant_suspended");

  const t2 = await tenant();
  const tok2 = await t2.token("ann");
  await admin("POST", `/admin/v1/tenants/${t2.id}/users/ann/revoke-tokens`, undefined, 204);
  assert.equal(await refused(tok2), "token_revoked");

  // The token is checked before the cursor.
  assert.equal(await refused(tok, { cursor: "v1.garbage" }), "tenant_suspended");
});

test("a bad cursor is refused after the handshake with invalid_cursor", async () => {
  const t = await tenant();
  const tok = await t.token("ann");
  assert.equal(await refused(tok, { cursor: "v1.garbage" }), "invalid_cursor");
  assert.equal(await refused(tok, { cursor: "v9.1.2" }), "invalid_cursor");
});

test("the per-tenant connection quota holds", async () => {
  const t = await tenant({ max_connections: 2 });
  const [a, b] = await Promise.all([t.token("ann"), t.token("bob")]);
  const s1 = await connect(a);
  const s2 = await connect(b);
  assert.equal(await refused(a), "quota_exceeded");
  s1.close();
  // A closed connection frees its slot.
  await waitFor("a free slot", async () => {
    try {
      const s3 = await connect(a);
      s3.close();
      return true;
    } catch (e) {
      assert.equal(e.message, "quota_exceeded");
      return false;
    }
  });
  s2.close();
});

test("send is acked durable, fans out to members, and a retried send is one message", async () => {
  const { ann, bob, group } = await setup();
  const sa = await connect(ann);
  const sb = await connect(bob);
  const cid = uid("c-");
  const ack = await emit(sa, "message.send", { conversation_id: group, text: "hello @bob", client_msg_id: cid });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.ok(ack.message_id && Number.isInteger(ack.position) && Number.isInteger(ack.partition) && ack.server_time);
  const got = await waitFor("bob's copy", () => received(sb, "message.created", (m) => m.message_id === ack.message_id)[0]);
  assert.equal(got.text, "hello @bob");
  assert.equal(got.conversation_id, group);
  assert.equal(got.sender_id, "ann");
  assert.equal(got.position, ack.position);
  assert.match(got.html, /mention/);
  assert.ok(got.cursor.startsWith("v1."));
  // The sender's own socket gets it too.
  await waitFor("ann's copy", () => received(sa, "message.created", (m) => m.message_id === ack.message_id)[0]);

  const again = await emit(sa, "message.send", { conversation_id: group, text: "hello @bob", client_msg_id: cid });
  assert.equal(again.ok, true);
  assert.equal(again.message_id, ack.message_id);
  assert.equal(again.position, ack.position);
  // A later message proves the retry was not published: exactly one copy before it.
  const marker = await emit(sa, "message.send", { conversation_id: group, text: "marker" });
  await waitFor("marker", () => received(sb, "message.created", (m) => m.message_id === marker.message_id)[0]);
  assert.equal(received(sb, "message.created", (m) => m.message_id === ack.message_id).length, 1);
  // Stored once.
  const list = await rest("GET", `/v1/conversations/${group}/messages`, bob, undefined, 200);
  assert.equal(list.messages.filter((m) => m.id === ack.message_id).length, 1);
  sa.close();
  sb.close();
});

test("bad client events get coded acks, never a crash", async () => {
  const { ann, group } = await setup();
  const s = await connect(ann);
  const cases = [
    [{}, "invalid_argument"],
    // A missing text is an empty one (a message may carry only files).
    [{ conversation_id: group }, "text_empty"],
    [{ conversation_id: group, text: "" }, "text_empty"],
    [{ conversation_id: group, text: "x".repeat(4001) }, "text_too_long"],
    [{ conversation_id: group, text: "x", extra: 1 }, "invalid_argument"],
    [{ conversation_id: "../etc", text: "x" }, "invalid_argument"],
    [{ conversation_id: uid("nope"), text: "x" }, "not_found"],
  ];
  for (const [payload, code] of cases) {
    const ack = await emit(s, "message.send", payload);
    assert.equal(ack.ok, false, JSON.stringify(payload));
    assert.equal(ack.error.code, code, JSON.stringify({ payload, ack }));
  }
  const noPayload = await s.timeout(5000).emitWithAck("message.edit");
  assert.equal(noPayload.error.code, "invalid_argument");
  // Still connected and working.
  const ok = await emit(s, "message.send", { conversation_id: group, text: "still here" });
  assert.equal(ok.ok, true);
  s.close();
});

test("files ride on messages: sent over the socket and REST, fanned out, refused with invalid_attachment", async () => {
  const { ann, bob, group, channel } = await setup();
  const sa = await connect(ann);
  const sb = await connect(bob);
  const picture = await uploaded(ann, group, "dot.png", "image/png", png(24, 16));
  const notes = await uploaded(ann, group, "notes.txt", "text/plain", Buffer.from("notes\n"));
  assert.ok(picture.thumbnail, JSON.stringify(picture));
  const expect = (a, file) => {
    assert.equal(a.id, file.id);
    assert.equal(a.name, file.name);
    assert.equal(a.content_type, file.content_type);
    assert.equal(a.size, file.size);
    assert.equal(a.width, file.width);
    assert.equal(a.height, file.height);
    assert.equal(a.has_thumbnail, Boolean(file.thumbnail));
  };

  // Over the socket, with text: the ack's message and bob's message.created carry both files.
  const ack = await emit(sa, "message.send", { conversation_id: group, text: "two files", attachments: [picture.id, notes.id] });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.message.attachments.length, 2);
  expect(ack.message.attachments[0], picture);
  expect(ack.message.attachments[1], notes);
  const got = await waitFor("bob's copy", () => received(sb, "message.created", (m) => m.message_id === ack.message_id)[0]);
  assert.deepEqual(got.attachments, ack.message.attachments);
  assert.equal(got.attachments[0].width, 24);
  assert.equal(got.attachments[0].height, 16);

  // Files only (empty text) over the socket; empty text without files stays text_empty.
  const only = await uploaded(ann, group, "only.png", "image/png", png(4, 4));
  const filesOnly = await emit(sa, "message.send", { conversation_id: group, text: "", attachments: [only.id] });
  assert.equal(filesOnly.ok, true, JSON.stringify(filesOnly));
  const gotOnly = await waitFor("files only", () => received(sb, "message.created", (m) => m.message_id === filesOnly.message_id)[0]);
  assert.equal(gotOnly.text, "");
  expect(gotOnly.attachments[0], only);
  // Stored (not only fanned out): the list has both, with their files.
  const list = await rest("GET", `/v1/conversations/${group}/messages`, bob, undefined, 200);
  assert.deepEqual(list.messages.find((m) => m.id === ack.message_id)?.attachments, ack.message.attachments);
  assert.deepEqual(list.messages.find((m) => m.id === filesOnly.message_id)?.attachments, gotOnly.attachments);
  const empty = await emit(sa, "message.send", { conversation_id: group, text: "", attachments: [] });
  assert.equal(empty.error?.code, "text_empty", JSON.stringify(empty));

  // Sent over REST, the socket event carries them too.
  const third = await uploaded(ann, group, "third.png", "image/png", png(8, 8));
  const sent = await rest("POST", `/v1/conversations/${group}/messages`, ann, { text: "", attachments: [third.id] }, 201);
  const viaRest = await waitFor("REST message over the socket", () => received(sb, "message.created", (m) => m.message_id === sent.message.id)[0]);
  expect(viaRest.attachments[0], third);

  // Refusals, one code: bob's file, a file of another conversation, another tenant's, a deleted
  // one, the same twice, eleven, garbage.
  const bobs = await uploaded(bob, group, "bob.txt", "text/plain", Buffer.from("bob\n"));
  const elsewhere = await uploaded(ann, channel, "c.txt", "text/plain", Buffer.from("channel\n"));
  const other = await tenant();
  const otherAnn = await other.token("ann");
  const otherConv = await conversation(otherAnn, "group", [], "o");
  const foreign = await uploaded(otherAnn, otherConv, "o.txt", "text/plain", Buffer.from("other\n"));
  const gone = await uploaded(ann, group, "gone.txt", "text/plain", Buffer.from("gone\n"));
  await rest("DELETE", `/v1/media/files/${gone.id}`, ann, undefined, 204);
  const many = [];
  for (let i = 0; i < 11; i++) many.push((await uploaded(ann, group, `f${i}.txt`, "text/plain", Buffer.from(`f${i}\n`))).id);
  const refusals = [
    ["another user's file", [bobs.id]],
    ["another conversation's file", [elsewhere.id]],
    ["another tenant's file", [foreign.id]],
    ["a deleted file", [gone.id]],
    ["the same file twice", [picture.id, picture.id]],
    ["eleven files", many],
    ["garbage", ["nope"]],
  ];
  for (const [what, ids] of refusals) {
    const r = await emit(sa, "message.send", { conversation_id: group, text: "x", attachments: ids });
    assert.equal(r.ok, false, what);
    assert.equal(r.error.code, "invalid_attachment", `${what}: ${JSON.stringify(r)}`);
    const overRest = await rest("POST", `/v1/conversations/${group}/messages`, ann, { text: "", attachments: ids }, 400);
    assert.equal(overRest.error.code, "invalid_attachment", `${what} over REST`);
  }
  const bad = await emit(sa, "message.send", { conversation_id: group, text: "x", attachments: "nope" });
  assert.equal(bad.error.code, "invalid_argument");
  assert.equal((await emit(sa, "message.send", { conversation_id: group, text: "ten", attachments: many.slice(0, 10) })).ok, true);
  sa.close();
  sb.close();
});

test("edit, delete and reactions fan out; REST-originated messages arrive like socket ones", async () => {
  const { ann, bob, group } = await setup();
  const sb = await connect(bob);
  const sa = await connect(ann);
  const sent = await rest("POST", `/v1/conversations/${group}/messages`, ann, { text: "from REST" }, 201);
  const id = sent.message.id;
  const m = await waitFor("REST message over the socket", () => received(sb, "message.created", (x) => x.message_id === id)[0]);
  assert.equal(m.text, "from REST");
  assert.equal(m.position, sent.position);

  const edit = await emit(sa, "message.edit", { conversation_id: group, message_id: id, text: "edited" });
  assert.equal(edit.ok, true, JSON.stringify(edit));
  const up = await waitFor("update", () => received(sb, "message.updated", (x) => x.message_id === id)[0]);
  assert.equal(up.text, "edited");

  const r = await emit(sb, "reaction.add", { conversation_id: group, message_id: id, kind: "👍" });
  assert.equal(r.ok, true, JSON.stringify(r));
  const ra = await waitFor("reaction", () => received(sa, "reaction.added", (x) => x.message_id === id)[0]);
  assert.equal(ra.user_id, "bob");
  assert.equal(ra.kind, "👍");
  const rr = await emit(sb, "reaction.remove", { conversation_id: group, message_id: id, kind: "👍" });
  assert.equal(rr.ok, true);
  await waitFor("reaction removed", () => received(sa, "reaction.removed", (x) => x.message_id === id)[0]);

  // Bob may not edit or delete Ann's message.
  const denied = await emit(sb, "message.edit", { conversation_id: group, message_id: id, text: "mine" });
  assert.equal(denied.error.code, "forbidden");
  const del = await emit(sa, "message.delete", { conversation_id: group, message_id: id });
  assert.equal(del.ok, true, JSON.stringify(del));
  await waitFor("delete", () => received(sb, "message.deleted", (x) => x.message_id === id)[0]);

  // Order: the log order is the order of arrival.
  const kinds = sb.state.events.filter((e) => e.payload && e.payload.message_id === id).map((e) => e.event);
  assert.deepEqual(kinds, ["message.created", "message.updated", "reaction.added", "reaction.removed", "message.deleted"]);
  sa.close();
  sb.close();
});

test("typing and read markers reach members only", async () => {
  const { ann, bob, carol, group } = await setup();
  const sa = await connect(ann);
  const sb = await connect(bob);
  const sc = await connect(carol);
  const t = await emit(sa, "typing.start", { conversation_id: group });
  assert.equal(t.ok, true, JSON.stringify(t));
  const ty = await waitFor("typing", () => received(sb, "typing", (x) => x.conversation_id === group)[0]);
  assert.deepEqual([ty.user_id, ty.typing], ["ann", true]);
  await emit(sa, "typing.stop", { conversation_id: group });
  await waitFor("typing stop", () => received(sb, "typing", (x) => x.typing === false)[0]);

  // Carol is not a member of the group: she can neither send typing nor see it.
  const ct = await emit(sc, "typing.start", { conversation_id: group });
  assert.equal(ct.ok, false);
  assert.equal(ct.error.code, "not_found");
  const cs = await emit(sc, "message.send", { conversation_id: group, text: "let me in" });
  assert.equal(cs.error.code, "not_found");
  const cp = await emit(sc, "presence.get", { conversation_id: group });
  assert.equal(cp.error.code, "not_found");
  // Nor join its room: only channels are open to joining.
  const cj = await emit(sc, "channel.join", { conversation_id: group });
  assert.equal(cj.ok, false);
  assert.equal(cj.error.code, "not_found");

  const m = await emit(sa, "message.send", { conversation_id: group, text: "read me" });
  const read = await emit(sb, "read.mark", { conversation_id: group });
  assert.equal(read.ok, true, JSON.stringify(read));
  assert.equal(read.unread_count, 0);
  assert.ok(read.last_read_position >= m.position);
  const ru = await waitFor("read marker", () => received(sa, "read.updated", (x) => x.user_id === "bob")[0]);
  assert.equal(ru.position, read.last_read_position);

  await sleep(300);
  assert.equal(received(sc, "typing").length, 0, "carol saw typing");
  assert.equal(received(sc, "message.created").length, 0, "carol saw a message");
  assert.equal(received(sc, "read.updated").length, 0, "carol saw a read marker");
  sa.close();
  sb.close();
  sc.close();
});

test("presence: online and offline of conversation peers", async () => {
  const { ann, bob, group } = await setup();
  const sa = await connect(ann);
  const sb = await connect(bob);
  await waitFor("bob online", () => received(sa, "presence", (p) => p.user_id === "bob" && p.online)[0]);
  const p = await emit(sa, "presence.get", { conversation_id: group });
  assert.equal(p.ok, true, JSON.stringify(p));
  assert.deepEqual([...p.online].sort(), ["ann", "bob"]);
  sb.close();
  await waitFor("bob offline", () => received(sa, "presence", (x) => x.user_id === "bob" && !x.online)[0]);
  const p2 = await emit(sa, "presence.get", { conversation_id: group });
  assert.deepEqual(p2.online, ["ann"]);
  sa.close();
});

test("joining and leaving a channel moves the socket in and out of its room", async () => {
  const { ann, carol, channel } = await setup();
  const sa = await connect(ann);
  const sc = await connect(carol);
  const j = await emit(sc, "channel.join", { conversation_id: channel });
  assert.equal(j.ok, true, JSON.stringify(j));
  await waitFor("carol's own member.added", () => received(sc, "member.added", (x) => x.user_id === "carol")[0]);
  const m = await emit(sa, "message.send", { conversation_id: channel, text: "welcome carol" });
  await waitFor("channel message", () => received(sc, "message.created", (x) => x.message_id === m.message_id)[0]);
  const l = await emit(sc, "channel.leave", { conversation_id: channel });
  assert.equal(l.ok, true, JSON.stringify(l));
  await waitFor("carol's own member.removed", () => received(sc, "member.removed", (x) => x.user_id === "carol")[0]);
  const after = await emit(sa, "message.send", { conversation_id: channel, text: "carol left" });
  const marker = await emit(sa, "message.send", { conversation_id: channel, text: "marker" });
  await waitFor("ann sees marker", () => received(sa, "message.created", (x) => x.message_id === marker.message_id)[0]);
  await sleep(200);
  assert.equal(received(sc, "message.created", (x) => x.message_id === after.message_id).length, 0);
  sa.close();
  sc.close();
});

test("tenants never see each other's events", async () => {
  const a = await tenant();
  const b = await tenant();
  // Same user ids, same conversation id, two tenants.
  const [a1, a2, b1, b2] = await Promise.all([a.token("ann"), a.token("bob"), b.token("ann"), b.token("bob")]);
  const convId = uid("shared-");
  await rest("POST", "/v1/conversations", a1, { kind: "group", id: convId, members: ["bob"] }, 201);
  await rest("POST", "/v1/conversations", b1, { kind: "group", id: convId, members: ["bob"] }, 201);
  const sa = await connect(a2);
  const sb = await connect(b2);
  const ma = await rest("POST", `/v1/conversations/${convId}/messages`, a1, { text: "tenant A only" }, 201);
  const mb = await rest("POST", `/v1/conversations/${convId}/messages`, b1, { text: "tenant B only" }, 201);
  await waitFor("A gets A", () => received(sa, "message.created", (x) => x.message_id === ma.message.id)[0]);
  await waitFor("B gets B", () => received(sb, "message.created", (x) => x.message_id === mb.message.id)[0]);
  await sleep(200);
  assert.deepEqual(received(sa, "message.created").map((x) => x.text), ["tenant A only"]);
  assert.deepEqual(received(sb, "message.created").map((x) => x.text), ["tenant B only"]);
  sa.close();
  sb.close();
});

test("recovery after a forced disconnect while messages keep flowing: nothing missed, nothing twice", async () => {
  const { ann, bob, group } = await setup();
  const sa = await connect(ann);
  const sb = await connect(bob, { io: { reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 200 } });
  const N = 300;
  const sentIds = [];
  let stop = false;
  const sender = (async () => {
    for (let i = 0; i < N && !stop; i++) {
      const ack = await emit(sa, "message.send", { conversation_id: group, text: `n${i}`, client_msg_id: `rec-${i}` });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      sentIds.push(ack.message_id);
      if (i % 10 === 0) await sleep(5);
    }
  })();
  // Drop bob's transport three times mid-stream (not a clean disconnect): the client
  // reconnects by itself with the newest cursor (auth is a function).
  for (let k = 0; k < 3; k++) {
    await waitFor("some traffic", () => received(sb, "message.created").length > (k + 1) * 40, 30000);
    sb.io.engine.close();
    await sleep(k === 1 ? 600 : 50); // once long enough to fall out of the replay window
  }
  await sender;
  await waitFor("everything", () => received(sb, "message.created", (m) => m.conversation_id === group).length >= N, 30000);
  await sleep(300);
  const got = received(sb, "message.created", (m) => m.conversation_id === group).map((m) => m.message_id);
  assert.equal(new Set(got).size, got.length, "a message arrived twice");
  assert.deepEqual(got, sentIds, "missing or out of order");
  assert.ok(sb.state.sessions.length >= 4, "reconnected with sessions");
  assert.ok(sb.state.sessions.slice(1).some((s) => s.replayed > 0), "something was replayed");
  sa.close();
  sb.close();
});

test("a cursor from an earlier connection replays what was missed, then live", async () => {
  const { ann, bob, group } = await setup();
  const sb = await connect(bob);
  const cursor = sb.state.cursor;
  sb.close();
  const ids = [];
  for (let i = 0; i < 40; i++) {
    const r = await rest("POST", `/v1/conversations/${group}/messages`, ann, { text: `away ${i}` }, 201);
    ids.push(r.message.id);
  }
  const back = await connect(bob, { cursor });
  const s = back.state.sessions[0];
  assert.equal(s.gap, false);
  assert.equal(s.replayed, 40);
  // Everything missed came before `session`.
  const beforeSession = back.state.events.slice(0, back.state.events.findIndex((e) => e.event === "session"));
  assert.deepEqual(beforeSession.filter((e) => e.event === "message.created").map((e) => e.payload.message_id), ids);
  const live = await rest("POST", `/v1/conversations/${group}/messages`, ann, { text: "live" }, 201);
  await waitFor("live", () => received(back, "message.created", (m) => m.message_id === live.message.id)[0]);
  // Reconnecting with the newest cursor replays nothing.
  const last = back.state.cursor;
  back.close();
  const again = await connect(bob, { cursor: last });
  assert.equal(again.state.sessions[0].replayed, 0);
  again.close();
});

test("an idle connection is closed when its tenant is suspended", async () => {
  const t = await tenant();
  const tok = await t.token("ann");
  const s = await connect(tok);
  const gone = new Promise((resolve) => s.on("disconnect", resolve));
  await admin("POST", `/admin/v1/tenants/${t.id}/suspend`, undefined, 200);
  const err = await waitFor("the error event", () => received(s, "error")[0]);
  assert.equal(err.code, "tenant_suspended");
  assert.equal(await gone, "io server disconnect");
});
