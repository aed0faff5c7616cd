// Helpers for the tests that drive caas with the official Socket.IO client.
// The server comes from the environment (set by the Rust test that starts it):
//   CAAS_API (REST + Socket.IO), CAAS_ADMIN (internal admin API), CAAS_ADMIN_TOKEN.

import { io } from "socket.io-client";
import { randomUUID } from "node:crypto";

export const API = must("CAAS_API");
export const ADMIN = must("CAAS_ADMIN");
export const ADMIN_TOKEN = must("CAAS_ADMIN_TOKEN");

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through cargo (workloads/caas/tests/realtime.rs)`);
  return v;
}

export const uid = (p) => `${p}${randomUUID().replaceAll("-", "").slice(0, 12)}`;

async function call(base, method, path, token, body) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  return { status: r.status, body: json };
}

export async function rest(method, path, token, body, want) {
  const r = await call(API, method, path, token, body);
  if (want !== undefined && r.status !== want) {
    throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)} (wanted ${want})`);
  }
  return r.body;
}

/** Uploads a file to a conversation through the media API; resolves with `{status, body}`. */
export async function upload(token, conversation, name, contentType, bytes) {
  const r = await fetch(`${API}/v1/media/conversations/${encodeURIComponent(conversation)}/files?name=${encodeURIComponent(name)}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": contentType },
    body: bytes,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

/** Uploads a file and resolves with its metadata (fails unless 201). */
export async function uploaded(token, conversation, name, contentType, bytes) {
  const r = await upload(token, conversation, name, contentType, bytes);
  if (r.status !== 201) throw new Error(`upload ${name}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function admin(method, path, body, want) {
  const r = await call(ADMIN, method, path, ADMIN_TOKEN, body);
  if (want !== undefined && r.status !== want) {
    throw new Error(`admin ${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return r.body;
}

/** A fresh tenant with its credentials: `{ id, app_id, app_secret, token(user) }`. */
export async function tenant(quotas) {
  const id = uid("t");
  const body = { id, name: id };
  if (quotas) body.quotas = quotas;
  const t = await admin("POST", "/admin/v1/tenants", body, 201);
  const cred = t.credentials;
  return {
    id,
    app_id: cred.app_id,
    app_secret: cred.app_secret,
    async token(user_id) {
      const r = await rest("POST", "/v1/token", undefined, { app_id: cred.app_id, app_secret: cred.app_secret, user_id }, 200);
      return r.token;
    },
  };
}

export async function conversation(token, kind, members, name) {
  const body = { kind, members };
  if (name) body.name = name;
  const r = await rest("POST", "/v1/conversations", token, body);
  return (r.conversation || r).id;
}

/**
 * Connects a Socket.IO client. Resolves with the socket once `session` arrived (rooms joined),
 * or rejects with the connect_error message (the stable code).
 */
export const sockets = new Set();

/** Closes every socket a test left open (a failed assertion skips its own close). */
export function closeAll() {
  for (const s of sockets) s.close();
  sockets.clear();
}

export function connect(token, opts = {}) {
  const state = { cursor: opts.cursor, events: [], sessions: [] };
  const socket = io(opts.url || API, {
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    auth: (cb) => cb(state.cursor ? { token, cursor: state.cursor } : { token }),
    ...opts.io,
  });
  socket.state = state;
  sockets.add(socket);
  socket.onAny((event, payload) => {
    state.events.push({ event, payload });
    if (payload && typeof payload.cursor === "string" && event !== "typing" && event !== "presence") {
      state.cursor = payload.cursor;
    }
    if (event === "session") state.sessions.push(payload);
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error("no session within 15 s"));
    }, 15000);
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      socket.close();
      reject(new Error(err.message));
    });
    socket.once("session", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    const onError = (e) => {
      clearTimeout(timer);
      socket.close();
      reject(new Error(e.code));
    };
    socket.once("error", onError);
    socket.once("session", () => socket.off("error", onError));
  });
}

/** Connect, expecting a refusal; resolves with its code. */
export async function refused(token, opts) {
  try {
    const s = await connect(token, opts);
    s.close();
  } catch (e) {
    return e.message;
  }
  throw new Error("the connection was accepted");
}

export async function emit(socket, event, payload) {
  return socket.timeout(10000).emitWithAck(event, payload);
}

export async function waitFor(what, f, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Events named `event` a socket received (optionally filtered). */
export function received(socket, event, pred = () => true) {
  return socket.state.events.filter((e) => e.event === event && pred(e.payload)).map((e) => e.payload);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
