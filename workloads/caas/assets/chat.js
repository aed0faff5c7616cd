// The try-out chat page of `caas standalone`: plain JavaScript, no build step, talking to caas
// like any app's client would: REST (docs/api.md) for history and lists, the official Socket.IO
// client (socket.io.min.js) for live events (docs/realtime.md). Tokens come from the standalone
// demo endpoint `POST /demo/token`, which plays the app's backend.
//
// Everything from the server is put on the page with textContent, except a message's `html`,
// which the server renders from the text and sanitizes.
//
// Files (docs/media.md): a chosen file is uploaded at once through the media API
// (`POST /v1/media/conversations/{id}/files`) and the message is sent with the ids of the uploaded
// files. A message's files are shown from what it carries: an image as its thumbnail (fetched with
// the token, shown from a blob: URL), everything as a link to a signed URL
// (`POST /v1/media/files/{id}/url`), which a browser follows without an Authorization header.
"use strict";

const ACK_TIMEOUT_MS = 8000; // a send without an ack by then is retried with the same client_msg_id
const TYPING_EVERY_MS = 2500; // typing.start at most this often while typing
const TYPING_IDLE_MS = 3000; // typing.stop after this long without a key
const RETRYABLE = new Set([
  "rate_limited", "quota_exceeded", "unavailable", "overloaded", "conflict", "internal",
  "token_expired", "token_revoked", "token_invalid", "unauthenticated",
]);
const MAX_FILES = 10; // the most files one message may carry
const THUMB_BOX = [240, 180]; // the largest an image is shown in a message
const TOKEN_CODES = new Set([
  "unauthenticated", "token_invalid", "token_expired", "token_not_yet_valid", "token_revoked",
]);

const S = {
  me: null,
  token: null,
  socket: null,
  cursor: undefined, // resume point: the cursor of the last event (or session) seen
  synced: false, // the first session arrived and the conversations were loaded
  draining: false, // the server asked us to move; a reconnect is scheduled
  attempts: 0, // refused connections in a row (backoff)
  names: new Map(), // user id -> display name
  convs: new Map(), // conversation id -> {conversation, membership}, most recent first
  members: new Map(), // conversation id -> [user id]
  current: null, // the conversation on screen
  msgs: new Map(), // conversation id -> Map(message id -> message)
  older: new Map(), // conversation id -> whether older messages may exist
  pending: new Map(), // client_msg_id -> {conversation_id, text, files, state, error}
  staged: [], // files chosen for the next message: {conversation_id, name, state, upload, error}
  media: new Map(), // media id -> {link, expires, thumb}: signed URL and thumbnail object URL
  typing: new Map(), // "conversation\nuser" -> timer
  online: new Set(), // user ids
  typingConv: null, // the conversation we announced typing in
  typingSentAt: 0,
  typingIdle: null,
};

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const name = (id) => S.names.get(id) || id;

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

// A client message id: 32 hex characters (crypto.randomUUID needs a secure context).
function newClientMsgId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return "web-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// REST

async function fetchToken() {
  const res = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user_id: S.me }),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.error?.code || `HTTP ${res.status}`);
  S.token = data.token;
}

// A request with the user token; a token refused as expired or revoked is renewed once.
async function authed(path, init = {}, retried = false) {
  const res = await fetch(path, { ...init, headers: { ...init.headers, authorization: `Bearer ${S.token}` } });
  if (res.status === 401 && !retried) {
    const data = await res.clone().json().catch(() => null);
    if (TOKEN_CODES.has(data?.error?.code)) {
      await fetchToken();
      return authed(path, init, true);
    }
  }
  return res;
}

async function api(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "content-type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const res = await authed(path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.error?.code || `HTTP ${res.status}`);
  return data;
}

const convPath = (id) => `/v1/conversations/${encodeURIComponent(id)}`;

async function loadConversations() {
  const data = await api("GET", "/v1/conversations?limit=100");
  S.convs = new Map(data.conversations.map((v) => [v.conversation.id, v]));
  await Promise.all(
    [...S.convs.values()]
      .filter((v) => v.conversation.kind === "direct" && !S.members.has(v.conversation.id))
      .map((v) => loadMembers(v.conversation.id)),
  );
  if (S.current && !S.convs.has(S.current)) S.current = null;
  renderConvs();
  askPresence();
  if (!S.current && S.convs.size) await select(S.convs.keys().next().value);
}

async function loadMembers(id) {
  const data = await api("GET", `${convPath(id)}/members?limit=200`);
  S.members.set(id, data.members.map((m) => m.user_id));
  await Promise.all(
    data.members
      .filter((m) => !S.names.has(m.user_id))
      .map((m) =>
        api("GET", `/v1/users/${encodeURIComponent(m.user_id)}`)
          .then((u) => S.names.set(u.id, u.name))
          .catch(() => S.names.set(m.user_id, m.user_id)),
      ),
  );
}

// One page of history: the newest, or the one before `before`, or the one after `after`.
async function loadHistory(id, { before, after } = {}) {
  const q = new URLSearchParams({ limit: "50" });
  if (before !== undefined) q.set("before", before);
  if (after !== undefined) q.set("after", after);
  const data = await api("GET", `${convPath(id)}/messages?${q}`);
  for (const m of data.messages) addMessage(m);
  if (after === undefined) S.older.set(id, data.has_more);
  return data;
}

// After a reconnect that could not replay everything (session.gap): page forward over REST.
async function catchUp(id) {
  const known = [...(S.msgs.get(id)?.values() || [])];
  let after = known.length ? Math.max(...known.map((m) => m.position)) : undefined;
  if (after === undefined) return loadHistory(id);
  for (;;) {
    const page = await loadHistory(id, { after });
    if (!page.has_more || !page.messages.length) return;
    after = page.messages[page.messages.length - 1].position;
  }
}

// ---------------------------------------------------------------------------------------------
// Files

// Uploads a file to a conversation (one request: the body is the file); resolves with its metadata.
async function uploadFile(conversation_id, file) {
  const q = new URLSearchParams({ name: file.name });
  const res = await authed(`/v1/media/conversations/${encodeURIComponent(conversation_id)}/files?${q}`, {
    method: "POST",
    headers: { "content-type": file.type || "application/octet-stream" },
    body: file,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.error?.code || `HTTP ${res.status}`);
  return data;
}

function stage(file) {
  if (!S.current) return;
  const f = { conversation_id: S.current, name: file.name, state: "uploading" };
  f.upload = S.staged.filter((x) => x.state !== "failed").length < MAX_FILES
    ? uploadFile(f.conversation_id, file)
    : Promise.reject(new Error(`at most ${MAX_FILES} files a message`));
  f.upload
    .then((m) => { f.state = "ready"; f.media = m; }, (e) => { f.state = "failed"; f.error = e.message; })
    .finally(renderStaged);
  S.staged.push(f);
  renderStaged();
}

// Takes a file out of the next message; an uploaded one is deleted again.
function unstage(f) {
  S.staged = S.staged.filter((x) => x !== f);
  f.upload.then((m) => api("DELETE", `/v1/media/files/${encodeURIComponent(m.id)}`)).catch(() => {});
  renderStaged();
}

function renderStaged() {
  const label = (f) => (f.state === "uploading" ? "uploading…" : f.state === "failed" ? `failed: ${f.error}` : "ready");
  $("staged").replaceChildren(...S.staged.map((f) =>
    h("li", { class: `staged ${f.state}`, "data-state": f.state },
      h("span", { class: "name", text: f.name }),
      h("span", { class: "state", text: label(f) }),
      h("button", { type: "button", "aria-label": `Remove ${f.name}`, text: "✕", onclick: () => unstage(f) }))));
  $("staged").hidden = !S.staged.length;
}

// What the page knows to show a file: a signed download URL and, for images with one, the
// thumbnail as an object URL. Loaded once per file (the link again when it is about to expire);
// the messages are drawn again when it arrives.
function mediaFor(a) {
  let e = S.media.get(a.id);
  if (e && (e.loading || e.failed || e.expires - Date.now() > 60_000)) return e;
  e = { ...e, loading: true };
  S.media.set(a.id, e);
  const id = encodeURIComponent(a.id);
  const link = api("POST", `/v1/media/files/${id}/url`).then((u) => {
    e.link = u.url;
    e.expires = Date.parse(u.expires_at);
  });
  const thumb = a.has_thumbnail && !e.thumb
    ? authed(`/v1/media/files/${id}/thumbnail`)
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => { e.thumb = URL.createObjectURL(b); })
    : null;
  Promise.all([link, thumb])
    .catch(() => { e.failed = true; })
    .finally(() => {
      e.loading = false;
      if (S.current) renderMessages();
    });
  return e;
}

// Width and height of an image shown within THUMB_BOX (its size is reserved before it loads).
function fit(width, height) {
  if (!width || !height) return [undefined, undefined];
  const k = Math.min(1, THUMB_BOX[0] / width, THUMB_BOX[1] / height);
  return [Math.round(width * k), Math.round(height * k)];
}

function sizeText(n) {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function filesOf(m) {
  if (m.deleted_at || !m.attachments?.length) return null;
  return h("div", { class: "files" }, ...m.attachments.map((a) => {
    const e = mediaFor(a);
    if (a.content_type.startsWith("image/")) {
      const [width, height] = fit(a.width, a.height);
      return h("a", { class: "file image", href: e.link, target: "_blank", rel: "noopener", title: a.name, "data-media": a.id },
        h("img", { class: "thumb", alt: a.name, width, height, src: e.thumb || (a.has_thumbnail ? null : e.link) }));
    }
    return h("a", { class: "file doc", href: e.link, download: a.name, "data-media": a.id },
      h("span", { class: "name", text: `↓ ${a.name}` }), h("span", { class: "size", text: sizeText(a.size) }));
  }));
}

// ---------------------------------------------------------------------------------------------
// Messages

function addMessage(m) {
  if (m.parent_id) return; // thread replies are not shown in this small page
  let map = S.msgs.get(m.conversation_id);
  if (!map) S.msgs.set(m.conversation_id, (map = new Map()));
  map.set(m.id, { ...map.get(m.id), ...m });
}

function fromEvent(e) {
  return {
    id: e.message_id,
    conversation_id: e.conversation_id,
    position: e.position,
    sender_id: e.sender_id,
    text: e.text,
    html: e.html,
    created_at: e.created_at,
    client_msg_id: e.client_msg_id,
    parent_id: e.parent_id,
    attachments: e.attachments || [],
    reactions: {},
  };
}

function messageItem(m) {
  const body = h("div", { class: "text" });
  if (m.deleted_at) {
    body.classList.add("deleted");
    body.textContent = m.rejected ? `not delivered (${m.rejected})` : "message deleted";
  } else if (m.html) {
    body.innerHTML = m.html; // rendered and sanitized by the server
  } else {
    body.textContent = m.text;
  }
  if (!m.deleted_at && !m.text) body.hidden = true; // files only
  const when = m.created_at
    ? new Date(m.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : "";
  const reactions = Object.entries(m.reactions || {}).filter(([, users]) => users.length);
  return h(
    "li",
    { class: m.sender_id === S.me ? "msg mine" : "msg", "data-id": m.id, "data-position": m.position },
    h("div", { class: "meta" },
      h("span", { class: "sender", text: name(m.sender_id) }),
      h("time", { datetime: m.created_at, text: when }),
      m.edited_at ? h("span", { class: "edited", text: "(edited)" }) : null),
    body,
    filesOf(m),
    reactions.length
      ? h("div", { class: "reactions" },
        ...reactions.map(([k, users]) => h("span", { class: "reaction", title: users.map(name).join(", "), text: `${k} ${users.length}` })))
      : null,
  );
}

function renderMessages() {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  const items = [...(S.msgs.get(S.current)?.values() || [])].sort((a, b) => a.position - b.position);
  const frag = document.createDocumentFragment();
  for (const m of items) frag.append(messageItem(m));
  for (const [id, p] of S.pending) {
    if (p.conversation_id !== S.current) continue;
    const label = p.state === "failed" ? `not sent: ${p.error}`
      : p.state === "retrying" ? "retrying…" : p.state === "uploading" ? "uploading…" : "sending…";
    frag.append(h("li", { class: `msg mine pending ${p.state}`, "data-client-id": id },
      h("div", { class: "meta" }, h("span", { class: "sender", text: name(S.me) }), h("span", { class: "state", text: label })),
      p.text ? h("div", { class: "text", text: p.text }) : null,
      p.files.length ? h("div", { class: "files" }, ...p.files.map((f) => h("span", { class: "file doc", text: `↑ ${f}` }))) : null));
  }
  list.replaceChildren(frag);
  $("older").hidden = !S.older.get(S.current);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// Sends a message with the files staged for it (their uploads finish first).
async function send(text, staged = []) {
  const conversation_id = S.current;
  const client_msg_id = newClientMsgId();
  const p = { conversation_id, text, files: staged.map((f) => f.name), state: staged.length ? "uploading" : "sending" };
  S.pending.set(client_msg_id, p);
  renderMessages();
  $("messages").scrollTop = $("messages").scrollHeight;
  const payload = { conversation_id, text, client_msg_id };
  if (staged.length) {
    try {
      payload.attachments = (await Promise.all(staged.map((f) => f.upload))).map((m) => m.id);
    } catch (e) {
      p.state = "failed";
      p.error = `upload ${e.message}`;
      if (conversation_id === S.current) renderMessages();
      return;
    }
    p.state = "sending";
  }
  for (let attempt = 0; S.pending.has(client_msg_id); attempt++) {
    if (!S.socket.connected) await new Promise((r) => S.socket.once("connect", r));
    let ack = null;
    try {
      ack = await S.socket
        .timeout(ACK_TIMEOUT_MS)
        .emitWithAck("message.send", payload);
    } catch {
      // No ack in time (or the connection dropped): retry with the same client_msg_id, which
      // the server stores once whatever happened to the first attempt.
    }
    if (ack?.ok) {
      S.pending.delete(client_msg_id);
      addMessage({ ...ack.message, position: ack.position });
      break;
    }
    if (ack && !RETRYABLE.has(ack.error?.code)) {
      p.state = "failed";
      p.error = ack.error?.code || "error";
      break;
    }
    if (!S.pending.has(client_msg_id)) break; // its message.created arrived meanwhile
    p.state = "retrying";
    renderMessages();
    const wait = ack?.error?.retry_after ? ack.error.retry_after * 1000 : Math.min(500 * 2 ** attempt, 8000);
    await sleep(wait);
  }
  if (conversation_id === S.current) renderMessages();
}

let readTimer = null;
function markRead() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const id = S.current;
    if (!id || !S.socket?.connected) return;
    S.socket.timeout(ACK_TIMEOUT_MS).emit("read.mark", { conversation_id: id }, (err, ack) => {
      const v = S.convs.get(id);
      if (!err && ack?.ok && v?.membership) {
        v.membership.unread_count = ack.unread_count;
        renderConvs();
      }
    });
  }, 200);
}

// ---------------------------------------------------------------------------------------------
// Conversations, members, presence, typing

function convLabel(v) {
  const c = v.conversation;
  if (c.kind === "direct") {
    const others = (S.members.get(c.id) || []).filter((u) => u !== S.me);
    return others.length ? others.map(name).join(", ") : "direct";
  }
  return c.kind === "channel" ? `# ${c.name || c.id}` : c.name || c.id;
}

function dot(user) {
  const on = S.online.has(user);
  return h("span", { class: on ? "dot on" : "dot", title: on ? "online" : "offline", "data-user": user, "data-online": on ? "true" : "false" });
}

function renderConvs() {
  const frag = document.createDocumentFragment();
  for (const [id, v] of S.convs) {
    // The open conversation is being read (a read marker is on its way): no badge for it.
    const unread = id === S.current ? 0 : v.membership?.unread_count || 0;
    const last = v.conversation.last_message;
    const other = v.conversation.kind === "direct" ? (S.members.get(id) || []).find((u) => u !== S.me) : null;
    frag.append(h("li", {
      class: id === S.current ? "conv active" : "conv",
      "data-id": id,
      tabindex: 0,
      role: "button",
      onclick: () => select(id),
      onkeydown: (e) => { if (e.key === "Enter") select(id); },
    },
    h("div", { class: "conv-head" },
      other ? dot(other) : null,
      h("span", { class: "label", text: convLabel(v) }),
      unread ? h("span", { class: "unread", title: "unread", text: String(unread) }) : null),
    last ? h("div", { class: "preview", text: `${name(last.sender_id)}: ${last.text || "(files)"}` }) : null));
  }
  $("convs").replaceChildren(frag);
}

function renderMembers() {
  const members = S.members.get(S.current) || [];
  $("members").replaceChildren(...members.map((u) =>
    h("li", { "data-user": u }, dot(u), h("span", { text: u === S.me ? `${name(u)} (you)` : name(u) }))));
}

function renderTyping() {
  const who = [];
  for (const key of S.typing.keys()) {
    const [conv, user] = key.split("\n");
    if (conv === S.current) who.push(name(user));
  }
  $("typing").textContent = !who.length ? ""
    : who.length === 1 ? `${who[0]} is typing…`
      : `${who.slice(0, -1).join(", ")} and ${who[who.length - 1]} are typing…`;
}

function setTyping(conv, user, on, ms) {
  const key = `${conv}\n${user}`;
  clearTimeout(S.typing.get(key));
  if (on) S.typing.set(key, setTimeout(() => setTyping(conv, user, false), ms || 5000));
  else S.typing.delete(key);
  renderTyping();
}

function askPresence() {
  if (!S.socket?.connected) return;
  for (const id of [...S.convs.keys()].slice(0, 20)) {
    S.socket.timeout(ACK_TIMEOUT_MS).emit("presence.get", { conversation_id: id }, (err, ack) => {
      if (err || !ack?.ok) return;
      const online = new Set(ack.online);
      for (const u of S.members.get(id) || []) if (!online.has(u)) S.online.delete(u);
      for (const u of online) S.online.add(u);
      renderConvs();
      renderMembers();
    });
  }
}

async function select(id) {
  if (S.typingConv && S.typingConv !== id) stopTyping();
  // Files are uploaded to one conversation: the ones staged for another are dropped.
  for (const f of S.staged.filter((x) => x.conversation_id !== id)) unstage(f);
  S.current = id;
  const v = S.convs.get(id);
  $("room-title").textContent = v ? convLabel(v) : id;
  $("room-title").title = v?.conversation.topic || "";
  $("text").disabled = $("send").disabled = $("attach").disabled = false;
  renderConvs();
  renderTyping();
  renderMessages();
  try {
    await loadMembers(id);
    if (S.current !== id) return;
    renderMembers();
    if (!S.msgs.has(id)) {
      await loadHistory(id);
      if (!S.msgs.has(id)) S.msgs.set(id, new Map());
    }
    if (S.current !== id) return;
    renderMessages();
    $("messages").scrollTop = $("messages").scrollHeight;
    markRead();
    askPresence();
  } catch (e) {
    setConn($("conn").dataset.state, `${$("conn").textContent} · load failed: ${e.message}`);
  }
}

function onInput() {
  if (!S.current || !S.socket?.connected) return;
  if (S.typingConv !== S.current || Date.now() - S.typingSentAt > TYPING_EVERY_MS) {
    if (S.typingConv && S.typingConv !== S.current) stopTyping();
    S.typingConv = S.current;
    S.typingSentAt = Date.now();
    S.socket.emit("typing.start", { conversation_id: S.current }, () => {});
  }
  clearTimeout(S.typingIdle);
  S.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(S.typingIdle);
  if (!S.typingConv) return;
  if (S.socket?.connected) S.socket.emit("typing.stop", { conversation_id: S.typingConv }, () => {});
  S.typingConv = null;
  S.typingSentAt = 0;
}

// ---------------------------------------------------------------------------------------------
// The socket

function keep(e) {
  if (e?.cursor) S.cursor = e.cursor;
}

function moveToTop(id) {
  const v = S.convs.get(id);
  if (!v) return;
  S.convs.delete(id);
  S.convs = new Map([[id, v], ...S.convs]);
}

function onMessageCreated(e) {
  keep(e);
  setTyping(e.conversation_id, e.sender_id, false);
  if (e.client_msg_id && e.sender_id === S.me) S.pending.delete(e.client_msg_id);
  addMessage(fromEvent(e));
  const v = S.convs.get(e.conversation_id);
  if (!v) {
    loadConversations().catch(() => {});
    return;
  }
  if (!e.parent_id) {
    v.conversation.last_message = {
      id: e.message_id, sender_id: e.sender_id, text: e.text.slice(0, 200), position: e.position, created_at: e.created_at,
    };
    moveToTop(e.conversation_id);
    if (e.conversation_id === S.current) markRead();
    else if (e.sender_id !== S.me && v.membership) v.membership.unread_count += 1;
  }
  renderConvs();
  if (e.conversation_id === S.current) renderMessages();
}

function onMessageChanged(e, change) {
  keep(e);
  const m = S.msgs.get(e.conversation_id)?.get(e.message_id);
  if (!m) return;
  change(m);
  if (e.conversation_id === S.current) renderMessages();
}

function onReaction(e, add) {
  onMessageChanged(e, (m) => {
    const users = new Set(m.reactions?.[e.kind] || []);
    add ? users.add(e.user_id) : users.delete(e.user_id);
    m.reactions = { ...m.reactions, [e.kind]: [...users] };
  });
}

async function onSession(e) {
  keep(e);
  S.attempts = 0;
  setConn("online", "online");
  $("toggle").hidden = false;
  $("toggle").textContent = "Go offline";
  try {
    if (!S.synced) {
      await loadConversations();
      S.synced = true;
      return;
    }
    // Reconnected: everything missed was replayed before this session, unless the log no longer
    // had it (gap): then page forward over REST.
    if (e.gap) for (const id of S.msgs.keys()) await catchUp(id);
    await loadConversations();
    if (S.current) {
      renderMessages();
      markRead();
    }
  } catch (err) {
    setConn("online", `online · load failed: ${err.message}`);
  }
}

function retryLater() {
  S.attempts += 1;
  const wait = Math.min(1000 * 2 ** Math.min(S.attempts, 4), 15000) * (0.5 + Math.random() / 2);
  setTimeout(() => S.socket.connect(), wait);
}

async function onConnectError(err) {
  const code = err.message;
  if (S.socket.active) {
    setConn("offline", `reconnecting… (${code})`); // a transport error: the client retries
    return;
  }
  if (code === "tenant_suspended") {
    setConn("offline", "refused: the tenant is suspended");
    return;
  }
  setConn("offline", `refused (${code}), retrying…`);
  if (TOKEN_CODES.has(code)) {
    try {
      await fetchToken();
    } catch (e) {
      setConn("offline", `no token (${e.message}), retrying…`);
    }
  }
  retryLater();
}

function connect() {
  // `auth` as a function: read again at every (re)connection, so the newest cursor is sent.
  const socket = io({
    transports: ["websocket"],
    auth: (cb) => cb({ token: S.token, cursor: S.cursor }),
  });
  S.socket = socket;
  setConn("connecting", "connecting…");
  socket.on("connect", () => setConn("syncing", "syncing…"));
  socket.on("connect_error", onConnectError);
  socket.on("session", onSession);
  socket.on("error", (e) => {
    // Told after the handshake (the server closes the connection next).
    if (e?.code === "invalid_cursor") S.cursor = undefined;
    setConn("offline", `error: ${e?.code || "unknown"}`);
  });
  socket.on("disconnect", (reason) => {
    for (const key of [...S.typing.keys()]) setTyping(...key.split("\n"), false);
    if (reason === "io client disconnect") return;
    setConn("offline", `offline (${reason}), reconnecting…`);
    // The client does not reconnect by itself after a server-side disconnect (after
    // server.draining the scheduled reconnect does it).
    if (reason === "io server disconnect" && !S.draining) retryLater();
  });
  socket.on("server.draining", ({ reconnect_in_ms }) => {
    S.draining = true;
    setConn("syncing", "server restarting, moving…");
    setTimeout(() => {
      S.draining = false;
      socket.disconnect();
      socket.connect();
    }, reconnect_in_ms || 0);
  });
  socket.on("message.created", onMessageCreated);
  socket.on("message.updated", (e) => onMessageChanged(e, (m) => Object.assign(m, {
    text: e.text, html: e.html, edited_at: e.edited_at || new Date().toISOString(),
  })));
  socket.on("message.deleted", (e) => onMessageChanged(e, (m) => Object.assign(m, {
    text: "", html: "", attachments: [], deleted_at: e.deleted_at || new Date().toISOString(),
  })));
  // The pipeline refused a message shown from the log (e.g. its sender had just left): it was
  // never stored.
  socket.on("message.rejected", (e) => onMessageChanged(e, (m) => Object.assign(m, {
    text: "", html: "", attachments: [], deleted_at: e.at || new Date().toISOString(), rejected: e.code,
  })));
  socket.on("reaction.added", (e) => onReaction(e, true));
  socket.on("reaction.removed", (e) => onReaction(e, false));
  socket.on("read.updated", (e) => {
    keep(e);
    const v = S.convs.get(e.conversation_id);
    const last = v?.conversation.last_message;
    if (e.user_id === S.me && v?.membership && last && e.position >= last.position) {
      v.membership.unread_count = 0;
      renderConvs();
    }
  });
  for (const t of ["member.added", "member.removed", "member.updated", "conversation.updated"]) {
    socket.on(t, (e) => {
      keep(e);
      if (t === "member.updated") return;
      S.members.delete(e.conversation_id);
      loadConversations()
        .then(() => (e.conversation_id === S.current ? select(S.current) : null))
        .catch(() => {});
    });
  }
  // A member renamed themselves: names on screen follow.
  socket.on("user.updated", (e) => {
    keep(e);
    if (S.names.get(e.user_id) === e.name) return;
    S.names.set(e.user_id, e.name);
    renderConvs();
    renderMembers();
    if (S.current) renderMessages();
  });
  socket.on("typing", (t) => {
    if (t.user_id !== S.me) setTyping(t.conversation_id, t.user_id, t.typing, t.expires_in_ms);
  });
  socket.on("presence", (p) => {
    p.online ? S.online.add(p.user_id) : S.online.delete(p.user_id);
    renderConvs();
    renderMembers();
  });
}

// ---------------------------------------------------------------------------------------------
// Start

async function login(user) {
  S.me = user;
  try {
    await fetchToken();
  } catch (e) {
    $("login-error").textContent = `Could not get a token for ${user}: ${e.message}`;
    S.me = null;
    return;
  }
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = name(user);
  document.title = `${name(user)} · caas try-out chat`;
  connect();
}

async function start() {
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text").value;
    const staged = S.staged.filter((f) => f.state !== "failed" && f.conversation_id === S.current);
    if (!S.current || (!text.trim() && !staged.length)) return;
    $("text").value = "";
    S.staged = [];
    renderStaged();
    stopTyping();
    send(text.trim() ? text : "", staged);
  });
  $("attach").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => {
    for (const file of $("file").files) stage(file);
    $("file").value = "";
  });
  $("text").addEventListener("input", onInput);
  $("older").addEventListener("click", async () => {
    const id = S.current;
    const first = Math.min(...[...(S.msgs.get(id)?.values() || [])].map((m) => m.position));
    await loadHistory(id, { before: first }).catch(() => {});
    if (id === S.current) renderMessages();
  });
  $("toggle").addEventListener("click", () => {
    if (S.socket.connected) {
      stopTyping();
      S.socket.disconnect();
      setConn("offline", "offline (you went offline)");
      $("toggle").textContent = "Reconnect";
    } else {
      S.socket.connect();
    }
  });
  try {
    const res = await fetch("/demo/users");
    const { users } = await res.json();
    for (const u of users) {
      S.names.set(u.id, u.name);
      $("users").append(h("button", { type: "button", "data-user": u.id, text: u.name, onclick: () => login(u.id) }));
    }
    const preset = new URLSearchParams(location.search).get("user");
    if (preset && S.names.has(preset)) login(preset);
  } catch (e) {
    $("login-error").textContent = `Could not load the demo users: ${e.message}`;
  }
}

start();
