// A network namespace behind a shaped veth pair, for browsers on a thin or lossy link (issue 21).
//
//   import { createNetns, netnsUnavailable } from "./netns.mjs";
//   const why = netnsUnavailable();               // null, or why it cannot work here (skip with it)
//   const ns = await createNetns({ rateIn: 300_000 });   // 300 kbit/s toward the namespace
//   ns.hostIp, ns.nsIp                             // the /30: host side, namespace side
//   const exe = await ns.chromiumWrapper();       // `ip netns exec NS /usr/bin/chromium "$@"`
//   const fwd = await ns.forwardTcp(8080);         // ns reaches host 127.0.0.1:8080 at hostIp:fwd.port
//   await ns.setRate({ rateIn: 2_000_000 });       // step change while running
//   await ns.setLoss({ lossIn: 3 });               // 3 % random loss toward the namespace
//   await ns.close();                             // removes everything it added
//
// Directions are seen from the namespace: "in" is what a process inside RECEIVES (a thin
// subscriber), "out" what it SENDS (a thin publisher). Rates are bit/s (null: unshaped).
//
// How: `ip netns add pb-<pid>-<n>`, a veth pair pbh<pid>x<n> (host) / pbn<pid>x<n> (namespace)
// with the first free /30 of 10.213.0.0/16 that overlaps no address or route of the host. The
// "in" rate is a tc tbf qdisc on the host-side veth's egress, the "out" rate one on the
// namespace-side veth's egress; each queues at most queueMs of traffic at its rate (more is
// dropped, as at a real bottleneck). Loss is an nftables table `pbloss` inside the namespace,
// `numgen random mod 1000 < N drop` on its input ("in") and output ("out") hooks, with counters.
// This machine's kernel has no netem, so there is no added delay: the only delay is the queue.
//
// Cleanup: close() kills what still runs in the namespace (only processes started inside it),
// deletes the namespace (which takes the veth pair, the namespace-side qdisc and the nftables
// table with it), deletes the host veth if it outlived that, stops the TCP forwarders and removes
// the wrapper script. It tolerates a partial setup: createNetns() calls it itself when a step
// fails. Every open namespace is also removed synchronously on process exit, and on SIGINT /
// SIGTERM (then the process exits with 130 / 143).
//
// Needs root and iproute2's `ip` and `tc` plus `nft`; without them createNetns() throws an error
// saying which is missing (netnsUnavailable() returns the same reason without throwing).

import { execFile, spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { chmod, mkdtemp, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const SBIN = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/** Absolute path of `tool` on PATH or in the sbin directories, or null. */
function which(tool) {
  const dirs = [...(process.env.PATH || "").split(":").filter(Boolean), ...SBIN];
  for (const d of dirs) {
    const p = path.join(d, tool);
    if (existsSync(p)) return p;
  }
  return null;
}

const PACKAGE = { ip: "iproute2", tc: "iproute2", nft: "nftables" };

/** Why namespaces cannot be made here (a sentence), or null when they can. */
export function netnsUnavailable() {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    return `netns.mjs needs root to create network namespaces, veths, tc qdiscs and nftables tables (running as uid ${process.getuid()})`;
  }
  const missing = Object.keys(PACKAGE).filter((t) => !which(t));
  if (missing.length) {
    return `netns.mjs needs ${missing.map((t) => `\`${t}\``).join(", ")} (apt-get install ${[...new Set(missing.map((t) => PACKAGE[t]))].join(" ")})`;
  }
  return null;
}

function run(tool, args, { input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(which(tool) || tool, args, { timeout: 15000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${tool} ${args.join(" ")}: ${(stderr || "").trim() || err.message}`));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

function runSync(tool, args) {
  return spawnSync(which(tool) || tool, args, { timeout: 15000, encoding: "utf8" });
}

// ---------------------------------------------------------------------------------------------
// Addresses: the first /30 in 10.213.0.0/16 (starting at one picked from pid and counter, so that
// parallel processes rarely race for the same one) overlapping nothing the host has.

const ip4 = (s) => s.split(".").reduce((a, o) => a * 256 + Number(o), 0);
const dotted = (n) => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");

async function usedPrefixes() {
  const out = [];
  const add = (cidr) => {
    const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(cidr);
    if (!m) return;
    const len = m[2] === undefined ? 32 : Number(m[2]);
    const size = 2 ** (32 - len);
    const base = Math.floor(ip4(m[1]) / size) * size;
    out.push([base, base + size - 1]);
  };
  for (const line of (await run("ip", ["-4", "-o", "addr", "show"])).split("\n")) {
    const m = /\binet (\S+)/.exec(line);
    if (m) add(m[1]);
  }
  for (const line of (await run("ip", ["-4", "route", "show", "table", "all"])).split("\n")) {
    const first = line.trim().split(/\s+/);
    const dst = ["local", "broadcast", "unicast", "blackhole", "unreachable", "prohibit"].includes(first[0]) ? first[1] : first[0];
    if (dst && dst !== "default") add(dst);
  }
  return out;
}

async function pickSubnet(seed) {
  const used = await usedPrefixes();
  const base = ip4("10.213.0.0");
  const slots = 65536 / 4;
  for (let i = 0; i < slots; i++) {
    const net_ = base + ((seed + i) % slots) * 4;
    if (!used.some(([lo, hi]) => lo <= net_ + 3 && net_ <= hi)) return { hostIp: dotted(net_ + 1), nsIp: dotted(net_ + 2) };
  }
  throw new Error("netns.mjs: no free /30 left in 10.213.0.0/16");
}

// ---------------------------------------------------------------------------------------------
// Cleanup on exit and signals.

const live = new Set();
let counter = 0;
let handlersOn = false;

function cleanupAllSync() {
  for (const ns of [...live]) ns.closeSync();
}
function onExit() {
  cleanupAllSync();
}
function onSignal(sig) {
  cleanupAllSync();
  process.exit(sig === "SIGINT" ? 130 : 143);
}
function armHandlers() {
  if (handlersOn) return;
  handlersOn = true;
  process.on("exit", onExit);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}
function disarmHandlers() {
  if (!handlersOn || live.size) return;
  handlersOn = false;
  process.off("exit", onExit);
  process.off("SIGINT", onSignal);
  process.off("SIGTERM", onSignal);
}

// ---------------------------------------------------------------------------------------------

/** tc arguments for a tbf of `bps` bit/s queueing at most `queueMs` ms. */
function tbfArgs(bps, queueMs) {
  // The bucket holds at least two full frames (a veth frame is up to 1514 bytes) and 10 ms at
  // the rate, so that timer granularity does not lower the rate at higher speeds.
  const burst = Math.max(3028, Math.ceil((bps / 8) * 0.01));
  return ["tbf", "rate", `${Math.round(bps)}bit`, "burst", String(burst), "latency", `${queueMs}ms`];
}

/**
 * Creates the namespace and veth pair, shaped and lossy as asked. Options: rateIn / rateOut
 * (bit/s, null = unshaped), lossIn / lossOut (percent, 0-100, 0.1 steps), queueMs (default 200).
 * Throws (after removing whatever it added) when a step fails, or when netnsUnavailable() says why.
 */
export async function createNetns({ rateIn = null, rateOut = null, lossIn = 0, lossOut = 0, queueMs = 200 } = {}) {
  const why = netnsUnavailable();
  if (why) throw new Error(why);
  // A name no other process of this machine uses (ip netns add fails on a taken one).
  let n;
  let name;
  for (;;) {
    n = counter++;
    name = `pb-${process.pid}-${n}`;
    if (!existsSync(`/run/netns/${name}`)) break;
  }
  const hostIf = `pbh${process.pid}x${n}`.slice(0, 15);
  const nsIf = `pbn${process.pid}x${n}`.slice(0, 15);
  const forwarders = new Set();
  const state = { rateIn: null, rateOut: null, lossIn: 0, lossOut: 0, queueMs };
  let wrapperDir = null;
  let closed = false;

  const ns = {
    name,
    hostIf,
    nsIf,
    hostIp: null,
    nsIp: null,
    get state() {
      return { ...state };
    },

    /** Runs a command inside the namespace (ip netns exec). -> stdout */
    exec: (cmd, args = []) => run("ip", ["netns", "exec", name, cmd, ...args]),

    /** Sets (or with null removes) the shaping of either direction; the others stay. */
    async setRate({ rateIn = state.rateIn, rateOut = state.rateOut, queueMs: q = state.queueMs } = {}) {
      for (const [bps, dev, inNs, key] of [
        [rateIn, hostIf, false, "rateIn"],
        [rateOut, nsIf, true, "rateOut"],
      ]) {
        const pre = inNs ? ["-n", name] : [];
        if (bps === state[key] && q === state.queueMs) continue;
        if (bps == null) {
          if (state[key] != null) await run("tc", [...pre, "qdisc", "del", "dev", dev, "root"]);
        } else {
          if (!(bps > 0)) throw new Error(`netns.mjs: ${key} must be a positive bit/s number or null, got ${bps}`);
          await run("tc", [...pre, "qdisc", "replace", "dev", dev, "root", ...tbfArgs(bps, q)]);
        }
        state[key] = bps;
      }
      state.queueMs = q;
    },

    /** Sets the random loss of either direction, in percent (0: none); the other stays. */
    async setLoss({ lossIn = state.lossIn, lossOut = state.lossOut } = {}) {
      for (const [pct, key] of [
        [lossIn, "lossIn"],
        [lossOut, "lossOut"],
      ]) {
        if (!(pct >= 0 && pct <= 100)) throw new Error(`netns.mjs: ${key} must be a percentage 0-100, got ${pct}`);
      }
      const permille = (p) => Math.round(p * 10);
      const rule = (chain, pct) => (permille(pct) > 0 ? `add rule inet pbloss ${chain} numgen random mod 1000 < ${permille(pct)} counter drop\n` : "");
      // One atomic nft transaction: (re)create the table with both chains, then the rules.
      const script =
        "table inet pbloss {}\ndelete table inet pbloss\n" +
        "table inet pbloss {\n" +
        "  chain in { type filter hook input priority 0; policy accept; }\n" +
        "  chain out { type filter hook output priority 0; policy accept; }\n" +
        "}\n" +
        rule("in", lossIn) +
        rule("out", lossOut);
      await run("ip", ["netns", "exec", name, which("nft"), "-f", "-"], { input: script });
      state.lossIn = lossIn;
      state.lossOut = lossOut;
    },

    /**
     * The path of a script that runs `chromium` inside this namespace (`ip netns exec NAME
     * chromium "$@"`): the executablePath for Playwright. Removed on close().
     */
    async chromiumWrapper(chromium = process.env.CHROMIUM_PATH || "/usr/bin/chromium") {
      if (!wrapperDir) wrapperDir = await mkdtemp(path.join(os.tmpdir(), `${name}-`));
      const file = path.join(wrapperDir, "chromium");
      await writeFile(file, `#!/bin/sh\nexec ${which("ip")} netns exec ${name} ${chromium} "$@"\n`);
      await chmod(file, 0o755);
      return file;
    },

    /**
     * Makes host TCP port targetPort (on targetHost, default 127.0.0.1, which the namespace
     * cannot reach) reachable from the namespace at hostIp:port. -> { host, port, close() }
     */
    async forwardTcp(targetPort, targetHost = "127.0.0.1") {
      const sockets = new Set();
      const server = net.createServer((client) => {
        const upstream = net.connect(targetPort, targetHost);
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.setNoDelay(true);
          s.on("close", () => sockets.delete(s));
          s.on("error", () => {
            client.destroy();
            upstream.destroy();
          });
        }
        client.pipe(upstream);
        upstream.pipe(client);
      });
      await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(0, ns.hostIp, resolve);
      });
      const f = {
        host: ns.hostIp,
        port: server.address().port,
        close: () =>
          new Promise((r) => {
            forwarders.delete(f);
            for (const s of sockets) s.destroy();
            server.close(() => r());
          }),
        closeSync: () => {
          forwarders.delete(f);
          for (const s of sockets) s.destroy();
          server.close();
        },
      };
      forwarders.add(f);
      return f;
    },

    /** Queue and drop counters: { in: {sentBytes, sentPackets, dropped, overlimits}, out, lossDropped: {in, out} }. */
    async stats() {
      const parse = (text) => {
        const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/.exec(text);
        return m ? { sentBytes: Number(m[1]), sentPackets: Number(m[2]), dropped: Number(m[3]), overlimits: Number(m[4]) } : null;
      };
      const out = {
        in: parse(await run("tc", ["-s", "qdisc", "show", "dev", hostIf])),
        out: parse(await run("tc", ["-n", name, "-s", "qdisc", "show", "dev", nsIf])),
        lossDropped: { in: 0, out: 0 },
      };
      const rules = await run("ip", ["netns", "exec", name, which("nft"), "list", "table", "inet", "pbloss"]).catch(() => "");
      let chain = null;
      for (const line of rules.split("\n")) {
        const c = /chain (in|out)\b/.exec(line);
        if (c) chain = c[1];
        const m = /counter packets (\d+)/.exec(line);
        if (m && chain) out.lossDropped[chain] += Number(m[1]);
      }
      return out;
    },

    /** Removes everything; safe to call twice and after a partial setup. */
    async close() {
      if (closed) return;
      closed = true;
      live.delete(ns);
      for (const f of [...forwarders]) await f.close().catch(() => {});
      const pids = (await run("ip", ["netns", "pids", name]).catch(() => "")).split(/\s+/).filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {}
      }
      await run("ip", ["netns", "del", name]).catch(() => {});
      // The veth pair goes with the namespace once nothing runs in it; make sure.
      await run("ip", ["link", "del", hostIf]).catch(() => {});
      if (wrapperDir) rmSync(wrapperDir, { recursive: true, force: true });
      disarmHandlers();
    },

    /** close() for process exit: synchronous. */
    closeSync() {
      if (closed) return;
      closed = true;
      live.delete(ns);
      for (const f of [...forwarders]) f.closeSync();
      const pids = (runSync("ip", ["netns", "pids", name]).stdout || "").split(/\s+/).filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {}
      }
      runSync("ip", ["netns", "del", name]);
      runSync("ip", ["link", "del", hostIf]);
      if (wrapperDir) rmSync(wrapperDir, { recursive: true, force: true });
    },
  };

  live.add(ns);
  armHandlers();
  try {
    const { hostIp, nsIp } = await pickSubnet((process.pid * 64 + n) % 16384);
    ns.hostIp = hostIp;
    ns.nsIp = nsIp;
    await run("ip", ["netns", "add", name]);
    await run("ip", ["link", "add", hostIf, "type", "veth", "peer", "name", nsIf]);
    await run("ip", ["link", "set", nsIf, "netns", name]);
    await run("ip", ["addr", "add", `${hostIp}/30`, "dev", hostIf]);
    await run("ip", ["link", "set", hostIf, "up"]);
    await run("ip", ["-n", name, "addr", "add", `${nsIp}/30`, "dev", nsIf]);
    await run("ip", ["-n", name, "link", "set", nsIf, "up"]);
    await run("ip", ["-n", name, "link", "set", "lo", "up"]);
    await run("ip", ["-n", name, "route", "add", "default", "via", hostIp]);
    await ns.setRate({ rateIn, rateOut, queueMs });
    if (lossIn || lossOut) await ns.setLoss({ lossIn, lossOut });
  } catch (e) {
    await ns.close();
    throw new Error(`netns.mjs: setting up ${name} failed (everything added was removed): ${e.message}`);
  }
  return ns;
}
