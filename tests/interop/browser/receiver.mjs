// A real webhook receiver for the browser tests: an HTTP server on a free loopback port that
// checks each delivery's Standard Webhooks signature with the account's secret, can fail the
// first attempts of every event on purpose (a 500, then no answer until the sender's attempt
// timeout has passed), and records what it accepted, in order of arrival.
//
//   import { startReceiver } from "./receiver.mjs";
//   const rx = await startReceiver({ secret: pb.webhookSecret, flaky: true, hangMs: 2500 });
//   ... participants created with callbackUrl: rx.url ...
//   await rx.waitFor((accepted) => accepted.length >= 4, 30000, "four events");
//   rx.accepted   // [{ id, body (raw text), json, attempt, at }], in order of acceptance
//   rx.attempts   // Map id -> number of attempts seen
//   rx.rejected   // deliveries whose signature did not verify (answered 401)
//   await rx.close();

import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";

/** The Standard Webhooks check: `v1,` + base64 HMAC-SHA256(key, "id.timestamp.body"). */
export function verifySignature(secret, headers, body, { toleranceS = 300, nowS = Date.now() / 1000 } = {}) {
  const id = headers["webhook-id"];
  const ts = headers["webhook-timestamp"];
  const sigs = headers["webhook-signature"];
  if (!id || !ts || !sigs || !secret || !secret.startsWith("whsec_")) return false;
  if (!/^\d+$/.test(ts) || Math.abs(nowS - Number(ts)) > toleranceS) return false;
  const key = Buffer.from(secret.slice("whsec_".length), "base64");
  const mac = createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest("base64");
  const expected = Buffer.from(`v1,${mac}`);
  return sigs.split(" ").some((s) => {
    const got = Buffer.from(s);
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * flaky: the first attempt of each event id gets a 500, the second no answer for hangMs (set it
 * above the server's --webhook-attempt-timeout), later ones 204.
 */
export async function startReceiver({ secret, flaky = false, hangMs = 3000 } = {}) {
  const accepted = [];
  const attempts = new Map();
  const rejected = [];
  const sockets = new Set();
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      if (req.method !== "POST" || !verifySignature(rx.secret, req.headers, body)) {
        rejected.push({ method: req.method, headers: req.headers, body: body.toString("utf8") });
        res.writeHead(401).end();
        return;
      }
      const id = req.headers["webhook-id"];
      const n = (attempts.get(id) || 0) + 1;
      attempts.set(id, n);
      if (flaky && n === 1) {
        res.writeHead(500, { "content-type": "text/plain" }).end("failing on purpose");
        return;
      }
      if (flaky && n === 2) {
        await sleep(hangMs);
        if (!res.destroyed) res.writeHead(204).end();
        return;
      }
      const text = body.toString("utf8");
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {}
      accepted.push({ id, body: text, json, attempt: n, at: Date.now(), contentType: req.headers["content-type"] });
      res.writeHead(204).end();
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  const rx = {
    secret,
    url: `http://127.0.0.1:${port}/hook`,
    accepted,
    attempts,
    rejected,
    /** The accepted events' JSON bodies of one participant, in order of arrival. */
    of: (participantId) => accepted.filter((d) => d.json && d.json.participantId === participantId),
    /** Polls until done(accepted) is true; throws with what arrived. */
    async waitFor(done, timeoutMs, what) {
      const deadline = Date.now() + timeoutMs;
      while (!done(accepted)) {
        if (Date.now() > deadline) {
          throw new Error(`receiver: timed out after ${timeoutMs} ms waiting for ${what}; accepted: ${accepted.map((d) => d.body).join("\n")}`);
        }
        await sleep(100);
      }
    },
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  return rx;
}
