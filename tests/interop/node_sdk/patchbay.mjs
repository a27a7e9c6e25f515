// Starts a real `patchbay serve` for the Node server SDK interop tests. Self-contained (node's
// standard library only; nothing from ../browser).
//
//   const pb = await startPatchbay();  // fresh temp --data-dir, free loopback ports for everything
//   pb.url        "http://127.0.0.1:PORT" (no trailing slash)
//   pb.sip        "127.0.0.1:PORT" (UDP and TCP)
//   pb.main       { accountId, username, password }: the dev account created on first start
//   await pb.createAccount("other")  // `patchbay account create ID --json --data-dir DIR`, while serving
//   pb.stderrTail()                  // the server's log, for failure messages
//   await pb.stop()                  // SIGTERM (SIGKILL after 10 s), data dir removed
//
// The binary is $PATCHBAY_BIN (default ../../../target/debug/patchbay from this folder). Nothing
// here skips: a missing binary or a server that does not print its credentials and listening
// line within the timeout throws. The process is also SIGKILLed if node exits without stop().

import { execFile, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const DEFAULT_BIN = path.resolve(here, "../../../target/debug/patchbay");

export function patchbayBin() {
  const raw = process.env.PATCHBAY_BIN || DEFAULT_BIN;
  return path.isAbsolute(raw) ? raw : path.resolve(here, "../../..", raw);
}

export async function startPatchbay({ startTimeoutMs = 60000 } = {}) {
  const bin = patchbayBin();
  if (!existsSync(bin)) throw new Error(`patchbay binary not found at ${bin}: run \`cargo build\` or set PATCHBAY_BIN`);
  const dataDir = await mkdtemp(path.join(os.tmpdir(), "patchbay-node-sdk-"));
  const args = ["serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--media-listen", "127.0.0.1:0",
    "--media-shards", "1", "--sip-listen", "127.0.0.1:0", "--rtp-ports", "0-0"];
  const child = spawn(bin, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));

  const stderr = [];
  let errBuf = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d) => {
    errBuf += d;
    const lines = errBuf.split("\n");
    errBuf = lines.pop();
    stderr.push(...lines);
    if (stderr.length > 5000) stderr.splice(0, 1000);
  });
  const stderrTail = (n = 60) => stderr.slice(-n).join("\n");

  let stdout = "";
  child.stdout.setEncoding("utf8");
  const ready = new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => {
      stdout += d;
      const url = stdout.match(/^patchbay listening on (http:\/\/127\.0\.0\.1:\d+)\s*$/m);
      const user = stdout.match(/^\s*username:\s*(\S+)\s*$/m);
      const pass = stdout.match(/^\s*password:\s*(\S+)\s*$/m);
      const account = stdout.match(/^patchbay created the account "([^"]+)"/m);
      const sip = stdout.match(/^patchbay SIP on (\S+) /m);
      if (url && user && pass && account && sip) {
        resolve({ url: url[1], sip: sip[1], main: { accountId: account[1], username: user[1], password: pass[1] } });
      }
    });
    exited.then(({ code, signal }) =>
      reject(new Error(`patchbay exited before it was ready (code ${code}, signal ${signal})\nstdout:\n${stdout}\nstderr:\n${stderrTail()}`)));
    child.once("error", reject);
  });
  let timer;
  let info;
  try {
    info = await Promise.race([
      ready,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`patchbay did not print its credentials and listening line within ${startTimeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderrTail()}`)), startTimeoutMs);
      }),
    ]);
  } catch (e) {
    child.kill("SIGKILL");
    await exited;
    process.off("exit", killOnExit);
    await rm(dataDir, { recursive: true, force: true });
    throw e;
  } finally {
    clearTimeout(timer);
  }

  let stopped = false;
  return {
    ...info,
    dataDir,
    stderrTail,
    running: () => child.exitCode === null && child.signalCode === null,
    /** `patchbay account create ID --json --data-dir DIR` while the server runs. */
    createAccount(id) {
      return new Promise((resolve, reject) =>
        execFile(bin, ["account", "create", id, "--json", "--data-dir", dataDir], { timeout: 60000 }, (err, out, errOut) => {
          if (err) return reject(new Error(`patchbay account create ${id} failed: ${err.message}\n${errOut}`));
          const lines = out.split("\n").filter((l) => l.trim());
          if (lines.length !== 1) return reject(new Error(`account create --json must print one JSON line, got: ${out}`));
          const a = JSON.parse(lines[0]);
          resolve({ accountId: a.accountId, username: a.username, password: a.password });
        }));
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 10000);
        await exited;
        clearTimeout(t);
      }
      process.off("exit", killOnExit);
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
