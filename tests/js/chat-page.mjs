// The try-out chat page of `caas standalone` in headless Chromium (Debian's `chromium`, driven
// by playwright-core): two pages as ann and bob chat in #general; the test checks history over
// REST, presence both ways, the typing indicator, live messages both ways, that text is shown
// as text, a live unread count, a reconnect with the stored cursor that brings exactly the
// message sent meanwhile, and files: ann attaches a PNG (bob sees its thumbnail, and its signed
// link works without a token) and sends a text file alone (bob gets a download link).
// Screenshots go to tests/artifacts/.
//
// Usage: node tests/js/chat-page.mjs <base url of a running standalone> [--restarts]
// Run by `cargo test -p caas --test chat_page`, which starts the server and passes --restarts:
// then the script also has the server stopped and started again, asking the harness on stdout
// (`PAUSE stop`, `PAUSE start`) and waiting for its answer on stdin (`done stop`, `done start`).
// Exits non-zero on the first failed step, with the pages' console, errors and screenshots of
// the moment.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { png } from "./png.mjs";

const base = process.argv[2];
const restarts = process.argv.includes("--restarts");
if (!base) {
  console.error("usage: node tests/js/chat-page.mjs <base url> [--restarts]");
  process.exit(2);
}
const artifacts = resolve(dirname(fileURLToPath(import.meta.url)), "../artifacts");
mkdirSync(artifacts, { recursive: true });
const RUN = Date.now().toString(36); // makes this run's messages unique on a reused server
const WAIT = 30_000; // per condition: generous, the machine is shared
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

const log = [];
const problems = [];
// While the server is down on purpose, failed connections are expected.
let serverDown = false;
const networkNoise = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED|Failed to load resource/;
async function open(user) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("console", (m) => {
    log.push(`[${user} console.${m.type()}] ${m.text()}`);
    if (m.type() === "error" && !(serverDown && networkNoise.test(m.text()))) problems.push(`${user}: console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`${user}: page error: ${e.message}`));
  await page.goto(`${base}/`, { waitUntil: "domcontentloaded" });
  await page.locator(`#users button[data-user="${user}"]`).click();
  await page.locator('#conn[data-state="online"]').waitFor();
  return page;
}

let step = "start";
const control = restarts ? createInterface({ input: process.stdin }) : null;
const harness = control?.[Symbol.asyncIterator]();
async function pause(what) {
  console.log(`PAUSE ${what}`);
  const { value, done } = await harness.next();
  if (done || value.trim() !== `done ${what}`) throw new Error(`the harness answered ${JSON.stringify(value)} to ${what}`);
}
const ok = (what) => console.log(`ok: ${what}`);
// A conversation in the list by its exact label.
const conv = (page, label) =>
  page.locator("#convs li.conv").filter({ has: page.locator(".label", { hasText: new RegExp(`^${label}$`) }) });
const message = (page, text) => page.locator("#messages li.msg:not(.pending)", { hasText: text });
// Polls `f` (a check in the page) until it is true; the page redraws its messages, so element
// handles do not last.
async function until(what, f) {
  const end = Date.now() + WAIT;
  for (;;) {
    if (await f().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
// Fetches a URL from the page, without a token: status, content type and text.
const fetchIn = (page, url) => page.evaluate(async (u) => {
  const r = await fetch(u);
  return { status: r.status, type: r.headers.get("content-type"), text: await r.text() };
}, url);

let ann;
let bob;
try {
  step = "ann and bob log in and connect";
  ann = await open("ann");
  bob = await open("bob");
  ok(step);

  step = "both open #general and see its history (REST)";
  for (const page of [ann, bob]) {
    await page.locator('#convs li[data-id="general"]').click();
    await page.locator("#room-title", { hasText: "# General" }).waitFor();
    await message(page, "Welcome to caas").waitFor();
  }
  ok(step);

  step = "presence: each sees the other online";
  await ann.locator('#members li[data-user="bob"] .dot[data-online="true"]').waitFor();
  await bob.locator('#members li[data-user="ann"] .dot[data-online="true"]').waitFor();
  ok(step);

  step = "bob sees ann typing";
  const typed = `Hello bob ${RUN} <b>not bold</b> & <script>x</script>`;
  await ann.locator("#text").pressSequentially(typed, { delay: 15 });
  await bob.locator("#typing").filter({ hasText: "Ann Archer is typing…" }).waitFor();
  ok(step);

  step = "ann sends; bob receives it live, as text";
  await ann.locator("#text").press("Enter");
  const got = message(bob, `Hello bob ${RUN}`);
  await got.waitFor();
  const shown = await got.locator(".text").textContent();
  if (!shown.includes("<b>not bold</b>") || !shown.includes("<script>x</script>")) {
    throw new Error(`the message text was not shown as text: ${JSON.stringify(shown)}`);
  }
  if ((await got.locator(".text b, .text script").count()) !== 0) {
    throw new Error("markup in a message became elements");
  }
  await message(ann, `Hello bob ${RUN}`).waitFor(); // acked: no longer pending
  // The message ends the typing indicator.
  await bob.waitForFunction(() => document.querySelector("#typing").textContent === "");
  ok(step);

  step = "bob answers; ann receives it live";
  await bob.locator("#text").fill(`Hi Ann, loud and clear ${RUN}`);
  await bob.locator("#send").click();
  await message(ann, `Hi Ann, loud and clear ${RUN}`).waitFor();
  await message(bob, `Hi Ann, loud and clear ${RUN}`).waitFor();
  ok(step);

  step = "a message in the direct conversation shows as unread for bob";
  await conv(ann, "Bob Baker").click();
  await ann.locator("#room-title", { hasText: "Bob Baker" }).waitFor();
  const unread = conv(bob, "Ann Archer").locator(".unread");
  const before = (await unread.count()) ? Number(await unread.textContent()) : 0;
  await ann.locator("#text").fill(`Psst, lunch later? ${RUN}`);
  await ann.locator("#text").press("Enter");
  await message(ann, `Psst, lunch later? ${RUN}`).waitFor();
  await unread.filter({ hasText: new RegExp(`^${before + 1}$`) }).waitFor();
  await ann.locator('#convs li[data-id="general"]').click();
  await message(ann, `Hi Ann, loud and clear ${RUN}`).waitFor();
  ok(step);

  step = "bob goes offline; ann sees it and writes meanwhile";
  await bob.locator("#toggle", { hasText: "Go offline" }).click();
  await bob.locator('#conn[data-state="offline"]').waitFor();
  await ann.locator('#members li[data-user="bob"] .dot[data-online="false"]').waitFor();
  await ann.locator("#text").fill(`While you were away: the build is green ${RUN}`);
  await ann.locator("#text").press("Enter");
  await message(ann, `While you were away: the build is green ${RUN}`).waitFor();
  ok(step);

  step = "bob reconnects with his cursor and gets exactly the missed message";
  await bob.locator("#toggle", { hasText: "Reconnect" }).click();
  await bob.locator('#conn[data-state="online"]').waitFor();
  await message(bob, `While you were away: the build is green ${RUN}`).waitFor();
  await ann.locator('#members li[data-user="bob"] .dot[data-online="true"]').waitFor();
  const once = [[bob, `While you were away: the build is green ${RUN}`], [bob, `Hello bob ${RUN}`], [ann, `Hi Ann, loud and clear ${RUN}`]];
  for (const [page, text] of once) {
    const n = await message(page, text).count();
    if (n !== 1) throw new Error(`"${text}" is shown ${n} times`);
  }
  ok(step);

  step = "bob has read #general (the page marks what it shows as read); the direct one stays unread";
  await conv(bob, "# General").locator(".unread").waitFor({ state: "detached" });
  await conv(bob, "Ann Archer").locator(".unread").waitFor();
  ok(step);

  step = "bob renames himself through the API; ann's page shows the new name live (user.updated)";
  {
    const t = await fetch(`${base}/demo/token`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: "bob" }),
    }).then((r) => r.json());
    const r = await fetch(`${base}/v1/users/bob`, {
      method: "PUT",
      headers: { "content-type": "application/json", authorization: `Bearer ${t.token}` },
      body: JSON.stringify({ name: `Bobby Tables ${RUN}` }),
    });
    if (r.status !== 200) throw new Error(`rename: ${r.status} ${await r.text()}`);
    await ann.locator('#members li[data-user="bob"]', { hasText: `Bobby Tables ${RUN}` }).waitFor();
  }
  ok(step);

  if (restarts) {
    step = "the server stops; both pages notice, and ann writes while it is down";
    serverDown = true;
    await pause("stop");
    for (const page of [ann, bob]) await page.locator('#conn:not([data-state="online"])').waitFor();
    await ann.locator("#text").fill(`Sent while the server was down ${RUN}`);
    await ann.locator("#text").press("Enter");
    await ann.locator("#messages li.msg.pending", { hasText: `Sent while the server was down ${RUN}` }).waitFor();
    ok(step);

    step = "the server starts again; both pages reconnect by themselves, the queued send goes out once";
    await pause("start");
    for (const page of [ann, bob]) await page.locator('#conn[data-state="online"]').waitFor();
    serverDown = false;
    await message(ann, `Sent while the server was down ${RUN}`).waitFor();
    await message(bob, `Sent while the server was down ${RUN}`).waitFor();
    await ann.locator("#messages li.msg.pending").waitFor({ state: "detached" });
    await bob.locator("#text").fill(`Back online ${RUN}`);
    await bob.locator("#text").press("Enter");
    await message(ann, `Back online ${RUN}`).waitFor();
    for (const page of [ann, bob]) {
      for (const text of [`Sent while the server was down ${RUN}`, `Back online ${RUN}`, `Hello bob ${RUN}`]) {
        const n = await message(page, text).count();
        if (n !== 1) throw new Error(`"${text}" is shown ${n} times`);
      }
    }
    ok(step);
  }

  step = "ann attaches a picture; bob sees its thumbnail live, and its signed link works";
  const sunset = (x, y) => [255 - y, 110 + x / 3 - y / 2, 70 + y * 1.6];
  await ann.locator("#file").setInputFiles({ name: `sunset-${RUN}.png`, mimeType: "image/png", buffer: png(160, 100, sunset) });
  await ann.locator('#staged li[data-state="ready"]').waitFor();
  await ann.locator("#text").fill(`A picture for you ${RUN}`);
  await ann.locator("#text").press("Enter");
  await ann.locator("#staged").waitFor({ state: "hidden" });
  const pic = message(bob, `A picture for you ${RUN}`);
  await pic.waitFor();
  const thumb = pic.locator("a.file.image img.thumb");
  await until("bob's thumbnail to load", () =>
    thumb.evaluate((el) => el.complete && el.naturalWidth > 0 && el.src.startsWith("blob:")));
  await until("ann's own thumbnail to load", () => message(ann, `A picture for you ${RUN}`)
    .locator("img.thumb").evaluate((el) => el.complete && el.naturalWidth > 0));
  let href = null;
  await until("the picture's signed link", async () => (href = await pic.locator("a.file.image").getAttribute("href")));
  if (!href.includes("/v1/media/signed/")) throw new Error(`not a signed URL: ${href}`);
  const full = await fetchIn(bob, href);
  if (full.status !== 200 || full.type !== "image/png") throw new Error(`the signed link answered ${JSON.stringify({ ...full, text: undefined })}`);
  ok(step);

  step = "ann sends a text file alone; bob gets a download link";
  const notes = `notes-${RUN}.txt`;
  await ann.locator("#attach").waitFor();
  await ann.locator("#file").setInputFiles({ name: notes, mimeType: "text/plain", buffer: Buffer.from(`Minutes ${RUN}\n`) });
  await ann.locator('#staged li[data-state="ready"]').waitFor();
  await ann.locator("#text").press("Enter"); // no text: files only
  const doc = message(bob, notes).locator("a.file.doc");
  await doc.waitFor();
  let docHref = null;
  await until("the file's signed link", async () => (docHref = await doc.getAttribute("href")));
  if ((await doc.getAttribute("download")) !== notes) throw new Error("the link does not download under the file's name");
  const download = await fetchIn(bob, docHref);
  if (download.status !== 200 || download.text !== `Minutes ${RUN}\n`) throw new Error(`the download answered ${download.status}: ${download.text}`);
  await message(ann, notes).waitFor();
  if ((await message(bob, notes).locator(".text:not([hidden])").count()) !== 0) throw new Error("an empty text is shown");
  ok(step);

  if (problems.length) throw new Error(`the pages reported problems:\n${problems.join("\n")}`);

  step = "screenshots";
  await ann.screenshot({ path: resolve(artifacts, "chat-page.png") });
  await bob.screenshot({ path: resolve(artifacts, "chat-page-bob.png") });
  console.log(`screenshots: ${resolve(artifacts, "chat-page.png")}, ${resolve(artifacts, "chat-page-bob.png")}`);
  await browser.close();
  console.log("chat page: all steps passed");
  control?.close(); // stdin would keep the process alive
} catch (e) {
  console.error(`FAILED at step "${step}": ${e.message}`);
  for (const [name, page] of [["ann", ann], ["bob", bob]]) {
    if (!page) continue;
    const path = resolve(artifacts, `chat-page-failed-${name}.png`);
    await page.screenshot({ path }).then(() => console.error(`screenshot: ${path}`), () => {});
    const status = await page.locator("#conn").textContent().catch(() => "?");
    console.error(`${name}: connection "${status}"`);
  }
  if (problems.length) console.error(problems.join("\n"));
  console.error(log.slice(-60).join("\n"));
  await browser.close();
  control?.close();
  process.exit(1);
}
