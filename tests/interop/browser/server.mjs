// Starts a real patchbay server for the browser interop tests and talks REST to it.
//
//   import { startPatchbay } from "./server.mjs";
//   const pb = await startPatchbay();            // fresh temp data dir, any free ports
//   const s = await pb.createSession("call");
//   const { participant, token } = await pb.createParticipant({ tag: "alice" });
//   await pb.addParticipant(s.id, participant.id, { sessionId: s.id });
//   ... browser connects to pb.websocketUrl with token ...
//   await pb.stop();
//
// The binary is $PATCHBAY_BIN, or ../../../target/debug/patchbay relative to this folder
// (build it with `cargo build`). It listens on loopback only, on free ports for everything: HTTP,
// media, SIP (`--sip-listen 127.0.0.1:0`, UDP and TCP) and phones' RTP (`--rtp-ports 0-0`). Its
// stdout gives the dev account's credentials and webhook secret (pb.webhookSecret; printed on
// first start, so the data dir is always a fresh temporary one), the SIP address (pb.sip,
// "127.0.0.1:PORT") and the listening URL; its stderr is kept (RUST_LOG passes through, default
// "info") and is available as stderrTail() for failure messages. PATCHBAY_KEEP_LOGS=1 keeps the
// data dir (with server.log) after stop().
//
// TLS: startPatchbay({ tls: { cert, key, ca } }) passes --tls-cert/--tls-key (PEM file paths);
// the server then serves https and wss (pb.url https://…, pb.websocketUrl wss://…), and REST
// calls verify its certificate against `ca` (PEM text, e.g. the self-signed certificate itself).
//
// startPatchbay({ args }) appends server flags; pb.media is { udp, tcp }: per shard, the ICE
// candidates ("HOST:PORT") the server printed at startup.

import { spawn } from "node:child_process";
import https from "node:https";
import { mkdtemp, rm } from "node:fs/promises";
import { createWriteStream, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_BIN = path.resolve(here, "../../../target/debug/patchbay");

export class RestError extends Error {
  constructor(method, url, status, body) {
    super(`${method} ${url} -> ${status} ${body}`);
    this.status = status;
    this.body = body;
  }
}

// One HTTPS request verifying the server against `ca` (Node's fetch takes no CA option).
function httpsRequest(url, { method, headers, body }, ca) {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, ca }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (text += d));
      res.on("end", () => resolve({ ok: res.statusCode >= 200 && res.statusCode < 300, status: res.statusCode, text: async () => text }));
    });
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

export async function startPatchbay({ bin = process.env.PATCHBAY_BIN || DEFAULT_BIN, startTimeoutMs = 30000, env = {}, tls = null, args: extraArgs = [] } = {}) {
  if (!existsSync(bin)) throw new Error(`patchbay binary not found at ${bin}: run \`cargo build\` (or set PATCHBAY_BIN)`);
  const dataDir = await mkdtemp(path.join(os.tmpdir(), "patchbay-browser-"));
  const logPath = path.join(dataDir, "server.log");
  const log = createWriteStream(logPath);
  const args = ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--media-listen", "127.0.0.1:0",
    "--sip-listen", "127.0.0.1:0", "--rtp-ports", "0-0", ...extraArgs];
  if (tls) args.push("--tls-cert", tls.cert, "--tls-key", tls.key);
  const child = spawn(bin, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);

  const stderrLines = [];
  let stderrBuf = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d) => {
    log.write(d);
    stderrBuf += d;
    const lines = stderrBuf.split("\n");
    stderrBuf = lines.pop();
    for (const l of lines) stderrLines.push(l.replace(/\x1b\[[0-9;]*m/g, ""));
    if (stderrLines.length > 20000) stderrLines.splice(0, 5000);
  });

  let stdout = "";
  child.stdout.setEncoding("utf8");
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => {
      log.write(d);
      stdout += d;
      const user = stdout.match(/^\s*username:\s*(\S+)\s*$/m);
      const pass = stdout.match(/^\s*password:\s*(\S+)\s*$/m);
      const url = stdout.match(/patchbay listening on (https?:\/\/\S+)/);
      // printed before the "listening on" line
      const sip = stdout.match(/^patchbay SIP on (\S+) /m);
      const secret = stdout.match(/^\s*webhook secret:\s*(\S+)\s*$/m);
      if (user && pass && url)
        resolve({ username: user[1], password: pass[1], url: url[1].replace(/\/$/, ""), sip: sip ? sip[1] : null, webhookSecret: secret ? secret[1] : null });
    });
    exited.then(({ code, signal }) =>
      reject(new Error(`patchbay exited before it was ready (code ${code}, signal ${signal})\nstdout:\n${stdout}\nstderr:\n${stderrLines.slice(-40).join("\n")}`))
    );
    child.once("error", reject);
  });
  let timer;
  let info;
  try {
    info = await Promise.race([
      ready,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`patchbay did not print its credentials and URL within ${startTimeoutMs} ms; stdout so far:\n${stdout}`)), startTimeoutMs);
      }),
    ]);
  } catch (e) {
    child.kill("SIGKILL");
    process.off("exit", killOnExit);
    throw e;
  } finally {
    clearTimeout(timer);
  }
  const account = (stdout.match(/created the account "([^"]+)"/) || [])[1] || "dev";
  // The media candidates printed at startup, per shard: "HOST:PORT" strings.
  const candidates = (kind) =>
    [...stdout.matchAll(new RegExp(`^patchbay media shard (\\d+): ${kind}\\b.*?ICE candidates (.+)$`, "gm"))].map((m) => m[2].trim().split(/\s+/));
  const media = { udp: candidates("UDP"), tcp: candidates("TCP") };
  const auth = "Basic " + Buffer.from(`${info.username}:${info.password}`).toString("base64");
  const base = `${info.url}/v1/accounts/${account}`;

  async function rest(method, rel, body) {
    const url = base + rel;
    const headers = { authorization: auth, accept: "application/json" };
    const init = { method, headers };
    if (body !== undefined) {
      headers["content-type"] = "application/json; charset=utf-8";
      init.body = JSON.stringify(body);
    }
    const res = tls ? await httpsRequest(url, init, tls.ca) : await fetch(url, init);
    const text = await res.text();
    if (!res.ok) throw new RestError(method, url, res.status, text);
    return text ? JSON.parse(text) : null;
  }

  let stopped = false;
  const pb = {
    ...info,
    account,
    media,
    dataDir,
    logPath,
    websocketUrl: info.url.replace(/^http/, "ws"),
    pid: child.pid,
    rest,
    /** Last n lines of the server's stderr (ANSI colours stripped). */
    stderrTail: (n = 60) => stderrLines.slice(-n).join("\n"),
    stderrLines: () => stderrLines.slice(),
    exited,

    createSession: (tag) => rest("POST", "/sessions", tag === undefined ? undefined : { tag }),
    deleteSession: (s) => rest("DELETE", `/sessions/${s}`),
    /** -> { participant: { id, ... }, token } */
    createParticipant: (body) => rest("POST", "/participants", body),
    deleteParticipant: (p) => rest("DELETE", `/participants/${p}`),
    /** body undefined = no body (member only, no subscriptions). */
    addParticipant: (s, p, body) => rest("PUT", `/sessions/${s}/participants/${p}`, body),
    removeParticipant: (s, p) => rest("DELETE", `/sessions/${s}/participants/${p}`),
    listParticipants: (s) => rest("GET", `/sessions/${s}/participants`),
    getSubscriptions: (s, p) => rest("GET", `/sessions/${s}/participants/${p}/subscriptions`),
    /** Full replace; body undefined = no body (clears every subscription). */
    updateSubscriptions: (s, p, body) => rest("PUT", `/sessions/${s}/participants/${p}/subscriptions`, body),
    routes: (s) => rest("GET", `/sessions/${s}/routes`),
    /** The participant's webhook delivery log: { attempts: [...] }, newest first. */
    webhookLog: (p) => rest("GET", `/participants/${p}/webhooks`),

    async stop({ keep = !!process.env.PATCHBAY_KEEP_LOGS } = {}) {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
      process.off("exit", killOnExit);
      await new Promise((r) => log.end(r));
      if (!keep) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return pb;
}
