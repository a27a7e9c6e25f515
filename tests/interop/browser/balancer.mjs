// nginx as the balancer in front of several patchbay processes, for the browser tests: the
// site is deploy/nginx-cluster.conf itself (the file docs/deploy.md shows), with only what a
// test must change substituted: its upstream servers become the given processes (each with the
// parameters the file gives its first server, e.g. `max_fails=1 fail_timeout=5s`), it listens
// on a free loopback port in plain http (so the pages' WebSocket URL is ws://), and the TLS
// certificate lines go. Everything else (proxy_next_upstream, the connect timeout, the upgrade
// headers, the read timeouts) is the deployed text. nginx runs unprivileged as a non-daemon
// with its own prefix in a temporary directory, as tests/reverse_proxy.sh runs it.
//
//   import { startBalancer } from "./balancer.mjs";
//   const lb = await startBalancer({ upstreams: nodes.map((n) => new URL(n.url).host) });
//   lb.url            // http://127.0.0.1:PORT
//   lb.websocketUrl   // ws://127.0.0.1:PORT
//   const rest = lb.rest(account);  // REST through the balancer (account: createAccount()'s)
//   await rest("POST", "/sessions", { tag: "x" });
//   lb.upstreamsOf("/v3")  // [upstream address] of each finished request whose URI starts so
//   await lb.stop();

import { spawn } from "node:child_process";
import { mkdtemp, mkdir, readFile, writeFile, rm, chmod } from "node:fs/promises";
import { existsSync, readFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePortBlock, RestError } from "./server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLUSTER_SITE = path.resolve(here, "../../../deploy/nginx-cluster.conf");

export function nginxPath() {
  const candidates = [process.env.NGINX_BIN, "/usr/sbin/nginx", "/usr/bin/nginx"].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no nginx found (tried ${candidates.join(", ")}); apt-get install -y nginx`);
  return found;
}

/**
 * deploy/nginx-cluster.conf with its upstream servers replaced by `upstreams` ("HOST:PORT"),
 * `listen 443 ssl;` by `listen 127.0.0.1:PORT;` and its ssl_certificate lines removed. Throws
 * when the file no longer has the shape this relies on (so a changed deploy file is noticed).
 */
export function clusterSite(text, { upstreams, port }) {
  const block = text.match(/^upstream patchbay \{\n([\s\S]*?)^\}$/m);
  if (!block) throw new Error(`${CLUSTER_SITE}: no "upstream patchbay { ... }" block`);
  const first = block[1].match(/^\s*server\s+\S+\s*([^;]*);/m);
  if (!first) throw new Error(`${CLUSTER_SITE}: the upstream block has no server line`);
  const params = first[1].trim();
  const servers = upstreams.map((u) => `    server ${u}${params ? " " + params : ""};\n`).join("");
  let site = text.replace(block[0], `upstream patchbay {\n${servers}}`);
  if (!/^\s*listen 443 ssl;$/m.test(site)) throw new Error(`${CLUSTER_SITE}: no "listen 443 ssl;" line`);
  site = site.replace(/^(\s*)listen 443 ssl;$/m, `$1listen 127.0.0.1:${port};`);
  site = site.replace(/^\s*ssl_certificate(_key)?\s[^\n]*\n/gm, "");
  return site;
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
function waitForPort(port, { timeoutMs, exited, what }) {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (exited()) return reject(new Error(`${what} exited before listening`));
      const s = net.connect({ port, host: "127.0.0.1" });
      s.once("connect", () => {
        s.destroy();
        resolve();
      });
      s.once("error", () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`${what} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`));
        else setTimeout(attempt, 100);
      });
    };
    attempt();
  });
}

export async function startBalancer({ upstreams, bin = nginxPath(), startTimeoutMs = 30000 }) {
  if (!upstreams?.length) throw new Error("startBalancer: no upstreams");
  const dir = await mkdtemp(path.join(os.tmpdir(), "patchbay-nginx-"));
  await chmod(dir, 0o755); // nginx's workers (user nobody when started as root) use its temp dirs
  await mkdir(path.join(dir, "tmp"), { recursive: true });
  const port = await freePortBlock(1, { low: 20000 });
  const site = clusterSite(await readFile(CLUSTER_SITE, "utf8"), { upstreams, port });
  await writeFile(path.join(dir, "site.conf"), site);
  const conf = `pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events {}
http {
    log_format upstreams '$msec $request_method $request_uri $status $upstream_addr $upstream_status';
    access_log ${dir}/access.log upstreams;
    client_body_temp_path ${dir}/tmp/body;
    proxy_temp_path ${dir}/tmp/proxy;
    fastcgi_temp_path ${dir}/tmp/fastcgi;
    uwsgi_temp_path ${dir}/tmp/uwsgi;
    scgi_temp_path ${dir}/tmp/scgi;
    include ${dir}/site.conf;
}
`;
  await writeFile(path.join(dir, "nginx.conf"), conf);
  let stderr = "";
  const child = spawn(bin, ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const errorLog = () => {
    try {
      return readFileSync(path.join(dir, "error.log"), "utf8");
    } catch {
      return "";
    }
  };
  try {
    await waitForPort(port, { timeoutMs: startTimeoutMs, exited: () => child.exitCode !== null || child.signalCode !== null, what: "nginx" });
  } catch (e) {
    child.kill("SIGKILL");
    await exited;
    process.off("exit", killOnExit);
    const why = `${e.message}\nnginx stderr: ${stderr}\nerror.log: ${errorLog()}\nsite:\n${site}`;
    await rm(dir, { recursive: true, force: true });
    throw new Error(why);
  }
  const url = `http://127.0.0.1:${port}`;

  const lb = {
    url,
    websocketUrl: `ws://127.0.0.1:${port}`,
    port,
    dir,
    site,
    /** nginx's error log so far. */
    errorLog,
    /** The access log's lines: { at (ms), method, uri, status, upstream, upstreamStatus }. */
    accessLog() {
      let text = "";
      try {
        text = readFileSync(path.join(dir, "access.log"), "utf8");
      } catch {}
      return text
        .split("\n")
        .filter(Boolean)
        .map((l) => {
          const [msec, method, uri, status, upstream, upstreamStatus] = l.split(" ");
          return { at: Math.round(Number(msec) * 1000), method, uri, status: Number(status), upstream, upstreamStatus };
        });
    },
    /** The upstream address(es) of each finished request whose URI starts with `prefix`. */
    upstreamsOf(prefix) {
      return lb
        .accessLog()
        .filter((r) => r.uri.startsWith(prefix))
        .map((r) => r.upstream);
    },
    /**
     * A REST client through the balancer for account ({ accountId, username, password }):
     * rest(method, rel, body, { timeoutMs }) -> parsed JSON (null for an empty body); a non-2xx
     * answer throws RestError.
     */
    rest(account) {
      const auth = "Basic " + Buffer.from(`${account.username}:${account.password}`).toString("base64");
      const base = `${url}/v1/accounts/${account.accountId}`;
      return async (method, rel, body, { timeoutMs = 30000 } = {}) => {
        const headers = { authorization: auth, accept: "application/json" };
        const init = { method, headers, signal: AbortSignal.timeout(timeoutMs) };
        if (body !== undefined) {
          headers["content-type"] = "application/json; charset=utf-8";
          init.body = JSON.stringify(body);
        }
        const res = await fetch(base + rel, init);
        const text = await res.text();
        if (!res.ok) throw new RestError(method, base + rel, res.status, text);
        return text ? JSON.parse(text) : null;
      };
    },
    async stop({ keep = !!process.env.PATCHBAY_KEEP_LOGS } = {}) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
      process.off("exit", killOnExit);
      if (!keep) await rm(dir, { recursive: true, force: true });
    },
  };
  return lb;
}
