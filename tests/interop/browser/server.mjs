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
//
// Restarts (restart.test.mjs): startPatchbay({ ports: { http, media, sip, rtp: [low, high] } })
// listens on those fixed loopback ports instead of free ones (each one left out stays 0; pick
// them with freePortBlock()), and startPatchbay({ databaseUrl }) passes --database-url (default:
// SQLite in the data dir; only that default database gets the dev account on first start, so
// with databaseUrl pass account: the credentials createAccount() printed). pb.kill(signal) sends SIGKILL (default) or SIGTERM and waits for the
// process to exit; pb.startAgain() then runs a new process with exactly the same arguments (same
// ports, data dir, database) and resolves once it prints its listening line, with the time it
// did (readyAt, Date.now()) and what it printed (url, sip, media). Credentials, the account and
// the webhook secret are those of the first start (printed only then) or of `account`. pb.pid and pb.exited
// follow the current process; server.log and stderrTail() hold every process's output, with a
// "# server.mjs: ..." line where a process was started or stopped.

import { execFile, spawn } from "node:child_process";
import https from "node:https";
import { mkdtemp, rm } from "node:fs/promises";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import net from "node:net";
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

// Is `port` free on host for TCP (a listener) and, with udp, for UDP too?
function portFree(port, { host = "127.0.0.1", udp = true } = {}) {
  const tcp = new Promise((resolve) => {
    const srv = net.createServer();
    srv.once("error", () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
  const u = !udp
    ? Promise.resolve(true)
    : new Promise((resolve) => {
        const sock = dgram.createSocket("udp4");
        sock.once("error", () => {
          sock.close();
          resolve(false);
        });
        sock.bind(port, host, () => sock.close(() => resolve(true)));
      });
  return Promise.all([tcp, u]).then(([a, b]) => a && b);
}

// The local ephemeral port range (ports the kernel hands out for port 0 and outgoing sockets).
function ephemeralRange() {
  try {
    const [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (lo > 0 && hi >= lo) return [lo, hi];
  } catch {}
  return [32768, 60999];
}

/**
 * The first port of `count` consecutive ports that are free on host for TCP and UDP, picked at
 * random below the ephemeral range (so no port-0 socket of another process, e.g. a browser's
 * ICE candidate, takes one of them while a server restarts). Free when checked, not reserved.
 */
export async function freePortBlock(count = 1, { host = "127.0.0.1", low = 10000, attempts = 200 } = {}) {
  const high = Math.min(ephemeralRange()[0], 65536) - count;
  for (let i = 0; i < attempts; i++) {
    const base = low + Math.floor(Math.random() * Math.max(1, high - low));
    let ok = true;
    for (let p = base; ok && p < base + count; p++) ok = await portFree(p, { host });
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free TCP+UDP ports on ${host} in ${low}..${high + count} after ${attempts} tries`);
}

/**
 * `patchbay account create ID --json --database-url URL` (the server need not run; the database
 * must exist). -> { accountId, username, password, webhookSecret }, for startPatchbay({ account }).
 */
export function createAccount({ databaseUrl, id = "dev", bin = process.env.PATCHBAY_BIN || DEFAULT_BIN }) {
  return new Promise((resolve, reject) =>
    execFile(bin, ["account", "create", id, "--json", "--database-url", databaseUrl], { timeout: 60000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`patchbay account create ${id} --database-url ${databaseUrl} failed: ${err.message}\n${stderr}`));
      try {
        resolve(JSON.parse(stdout));
      } catch (e) {
        reject(new Error(`patchbay account create printed no JSON: ${stdout}\n${stderr}`));
      }
    })
  );
}

export async function startPatchbay({
  bin = process.env.PATCHBAY_BIN || DEFAULT_BIN,
  startTimeoutMs = 30000,
  env = {},
  tls = null,
  args: extraArgs = [],
  ports = {},
  databaseUrl = null,
  account: givenAccount = null,
  // The media socket's address: loopback unless a test's browser reaches it another way (a
  // network namespace through a veth: "0.0.0.0", with the veth address in --public-ip).
  mediaHost = "127.0.0.1",
} = {}) {
  if (!existsSync(bin)) throw new Error(`patchbay binary not found at ${bin}: run \`cargo build\` (or set PATCHBAY_BIN)`);
  const dataDir = await mkdtemp(path.join(os.tmpdir(), "patchbay-browser-"));
  const logPath = path.join(dataDir, "server.log");
  const log = createWriteStream(logPath);
  const addr = (port) => `127.0.0.1:${port ?? 0}`;
  const rtpPorts = ports.rtp ? `${ports.rtp[0]}-${ports.rtp[1]}` : "0-0";
  // Test webhook receivers listen on this machine: deliveries there must be allowed.
  const args = ["serve", "--data-dir", dataDir, "--listen", addr(ports.http), "--media-listen", `${mediaHost}:${ports.media ?? 0}`,
    "--webhook-allow-network", "127.0.0.1",
    "--sip-listen", addr(ports.sip), "--rtp-ports", rtpPorts];
  if (databaseUrl) args.push("--database-url", databaseUrl);
  args.push(...extraArgs);
  if (tls) args.push("--tls-cert", tls.cert, "--tls-key", tls.key);

  const stderrLines = [];
  const note = (line) => {
    log.write(`# server.mjs: ${line}\n`);
    stderrLines.push(`# server.mjs: ${line}`);
  };

  // One server process; resolves once it printed its listening line (and, on the first start
  // without `account`, the dev account's credentials). -> { proc, info, stdout, readyAt }
  async function launch(first) {
    const wantCredentials = first && !givenAccount;
    const child = spawn(bin, args, {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", NO_COLOR: "1", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const killOnExit = () => child.kill("SIGKILL");
    process.on("exit", killOnExit);

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
    const exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        process.off("exit", killOnExit);
        resolve({ code, signal });
      })
    );
    // 'close': the process exited and its stdout/stderr are drained (nothing more gets logged).
    const closed = new Promise((resolve) => child.once("close", () => resolve()));
    const proc = { child, exited, closed };
    let readyAt = null;
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
        if (url && readyAt === null) readyAt = Date.now();
        if (url && (!wantCredentials || (user && pass))) {
          resolve({
            username: user ? user[1] : null,
            password: pass ? pass[1] : null,
            url: url[1].replace(/\/$/, ""),
            sip: sip ? sip[1] : null,
            webhookSecret: secret ? secret[1] : null,
          });
        }
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
          timer = setTimeout(() => reject(new Error(`patchbay did not print ${wantCredentials ? "its credentials and URL" : "its URL"} within ${startTimeoutMs} ms; stdout so far:\n${stdout}`)), startTimeoutMs);
        }),
      ]);
    } catch (e) {
      child.kill("SIGKILL");
      throw Object.assign(e, { proc });
    } finally {
      clearTimeout(timer);
    }
    return { proc, info, stdout, readyAt };
  }

  // The media candidates printed at startup, per shard: "HOST:PORT" strings.
  const candidates = (stdout, kind) =>
    [...stdout.matchAll(new RegExp(`^patchbay media shard (\\d+): ${kind}\\b.*?ICE candidates (.+)$`, "gm"))].map((m) => m[2].trim().split(/\s+/));

  let proc;
  let first;
  try {
    first = await launch(true);
  } catch (e) {
    await e.proc?.closed;
    await new Promise((r) => log.end(r));
    if (process.env.PATCHBAY_KEEP_LOGS) e.message += `\n(log kept: ${logPath})`;
    else await rm(dataDir, { recursive: true, force: true });
    throw e;
  }
  proc = first.proc;
  const { info, stdout } = first;
  if (givenAccount) {
    info.username = givenAccount.username;
    info.password = givenAccount.password;
    info.webhookSecret = givenAccount.webhookSecret ?? info.webhookSecret;
  }
  const account = givenAccount?.accountId || (stdout.match(/created the account "([^"]+)"/) || [])[1] || "dev";
  const media = { udp: candidates(stdout, "UDP"), tcp: candidates(stdout, "TCP") };
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
    /** The current process's pid / exit promise ({ code, signal }); they change on startAgain(). */
    get pid() {
      return proc.child.pid;
    },
    get exited() {
      return proc.exited;
    },
    /** Is the current process still running? */
    running: () => proc.child.exitCode === null && proc.child.signalCode === null,
    rest,
    /** Last n lines of the server's stderr (ANSI colours stripped). */
    stderrTail: (n = 60) => stderrLines.slice(-n).join("\n"),
    stderrLines: () => stderrLines.slice(),

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

    /**
     * Sends `signal` (SIGKILL: no shutdown at all; SIGTERM: the graceful stop, which drains for
     * up to --drain-timeout) and waits for the process to exit. A process still running after
     * timeoutMs is SIGKILLed and this throws. -> { code, signal, ms } (ms: signal to exit).
     */
    async kill(signal = "SIGKILL", { timeoutMs = 30000 } = {}) {
      const { child, exited, closed } = proc;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`patchbay (pid ${child.pid}) is not running`);
      const t0 = Date.now();
      note(`sending ${signal} to pid ${child.pid}`);
      child.kill(signal);
      let timer;
      const late = await Promise.race([
        exited.then(() => false),
        new Promise((r) => (timer = setTimeout(() => r(true), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (late) {
        child.kill("SIGKILL");
        await exited;
        await closed;
        note(`pid ${child.pid} still ran ${timeoutMs} ms after ${signal}: SIGKILLed`);
        throw new Error(`patchbay (pid ${child.pid}) did not exit within ${timeoutMs} ms of ${signal}; stderr tail:\n${stderrLines.slice(-30).join("\n")}`);
      }
      const ex = await exited;
      await closed;
      const ms = Date.now() - t0;
      note(`pid ${child.pid} exited (code ${ex.code}, signal ${ex.signal}) ${ms} ms after ${signal}`);
      return { ...ex, ms };
    },

    /**
     * Starts a new process with the first one's arguments (same ports, data dir, database) after
     * the previous one exited (see kill()). Resolves when it printed its listening line:
     * -> { pid, readyAt (Date.now() when the listening line arrived), url, sip, media, stdout }.
     */
    async startAgain() {
      if (stopped) throw new Error("patchbay was stopped");
      if (pb.running()) throw new Error(`patchbay (pid ${proc.child.pid}) is still running`);
      note(`starting again: ${bin} ${args.join(" ")}`);
      let r;
      try {
        r = await launch(false);
      } catch (e) {
        if (e.proc) {
          proc = e.proc;
          await proc.exited;
          await proc.closed;
        }
        throw e;
      }
      proc = r.proc;
      note(`pid ${proc.child.pid} listening`);
      return {
        pid: proc.child.pid,
        readyAt: r.readyAt,
        url: r.info.url,
        sip: r.info.sip,
        media: { udp: candidates(r.stdout, "UDP"), tcp: candidates(r.stdout, "TCP") },
        stdout: r.stdout,
      };
    },

    async stop({ keep = !!process.env.PATCHBAY_KEEP_LOGS } = {}) {
      if (stopped) return;
      stopped = true;
      const { child, exited, closed } = proc;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
      await closed;
      await new Promise((r) => log.end(r));
      if (!keep) await rm(dataDir, { recursive: true, force: true });
    },
  };
  return pb;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: a fresh database per case, through psql on $PATCHBAY_TEST_POSTGRES.

function psql(url, sql) {
  return new Promise((resolve, reject) =>
    execFile("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], { timeout: 30000 }, (err, stdout, stderr) => {
      if (err) {
        const why = err.code === "ENOENT" ? "psql not found (apt-get install postgresql-client)" : stderr.trim() || err.message;
        reject(new Error(`psql ${url.replace(/\/\/[^@/]*@/, "//…@")} -c ${JSON.stringify(sql)}: ${why}`));
      } else resolve(stdout);
    })
  );
}

// A fresh database named <prefix>_<random> on $PATCHBAY_TEST_POSTGRES (the admin connection;
// tests/run.sh sets it). Without the variable this throws: PostgreSQL cases never skip.
// -> { name, url, drop() }
export async function createPostgresDatabase(prefix) {
  const admin = process.env.PATCHBAY_TEST_POSTGRES;
  if (!admin) {
    throw new Error(
      "PATCHBAY_TEST_POSTGRES is not set: PostgreSQL cases need an admin connection URL " +
        "(tests/run.sh sets it; e.g. PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test)"
    );
  }
  const name = `${prefix}_${randomBytes(8).toString("hex")}`;
  await psql(admin, `CREATE DATABASE ${name}`);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return { name, url: url.toString(), drop: () => psql(admin, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}
