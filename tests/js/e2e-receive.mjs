// The kind suite's Socket.IO step (tests/e2e/run.sh): bob connects to the socket Service, alice
// sends over REST through the gateway, bob must receive it live.
// Usage: node e2e-receive.mjs <gateway url> <socket url> <alice token> <bob token> <conversation>
import { io } from "socket.io-client";

const [api, socketUrl, alice, bob, conv] = process.argv.slice(2);
const fail = (m) => { console.error(`FAILED: ${m}`); process.exit(1); };
if (!conv) fail("usage: e2e-receive.mjs <gateway> <socket> <alice token> <bob token> <conversation>");
setTimeout(() => fail("no message.created within 60 s"), 60000);

const s = io(socketUrl, { transports: ["websocket"], auth: { token: bob }, reconnection: false });
s.on("connect_error", (e) => fail(`connect_error ${e.message}`));
s.on("session", async () => {
  const text = `live ${Date.now()}`;
  s.on("message.created", (m) => {
    if (m.conversation_id === conv && m.text === text) {
      console.log(`received ${m.message_id} at position ${m.position} (cursor ${m.cursor})`);
      s.close();
      process.exit(0);
    }
  });
  const r = await fetch(`${api}/v1/conversations/${conv}/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${alice}`, "content-type": "application/json" },
    body: JSON.stringify({ text }),
  });
  if (r.status !== 201) fail(`send: ${r.status} ${await r.text()}`);
});
