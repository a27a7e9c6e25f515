// The test phone (target/debug/examples/phone: examples/phone.rs + tests/support/phone_ua.rs)
// driven over stdin (`--commands`): it dials with a participant token, sends a tone, presses
// keys when told, prints what it heard since the last report on demand, and hangs up when told.
//
//   import { dialPhone } from "./phone.mjs";
//   const ph = dialPhone({ sip: pb.sip, token, toneHz: 1000, probe: [440, 1000] });
//   await ph.answered;             // true once the call is answered (false if it never was)
//   const r = await ph.report();   // { samples, rms, dominant_hz, share: { "440": x, ... } }
//   ph.press("12#");
//   const final = await ph.hangup(); // { ..., digits, call_id, server_requests, bye_from_server }

import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PHONE_BIN = process.env.PHONE_BIN || path.resolve(here, "../../../target/debug/examples/phone");

export function dialPhone({ sip, token, toneHz = 1000, probe = [], seconds = 300, bin = PHONE_BIN }) {
  const args = ["--sip", sip, "--token", token, "--tone", String(toneHz), "--seconds", String(seconds), "--commands"];
  if (probe.length) args.push("--probe", probe.join(","));
  const child = spawn(bin, args, { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  let pending = ""; // stdout not yet split into lines
  const waiters = []; // one per `report` command sent, in order
  let onAnswer;
  const answered = new Promise((resolve) => (onAnswer = resolve));
  child.stdout.setEncoding("utf8").on("data", (d) => {
    stdout += d;
    pending += d;
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      let v;
      try {
        v = JSON.parse(line);
      } catch {
        continue;
      }
      if (v && v.report) {
        const w = waiters.shift();
        if (w) w(v.report);
      }
    }
  });
  child.stderr.setEncoding("utf8").on("data", (d) => {
    stderr += d;
    // Only a whole line counts: stderr may arrive in pieces, and answeredBy() reads the rest.
    if (/phone: answered[^\n]*\n/.test(stderr)) onAnswer(true);
  });
  child.stdin.on("error", () => {}); // the phone may be gone already
  const done = new Promise((resolve) => {
    child.once("error", (e) => resolve({ code: null, signal: null, final: null, stdout, stderr: stderr + String(e) }));
    child.once("exit", (code, signal) => {
      onAnswer(false);
      for (const w of waiters.splice(0)) w(null);
      const last = stdout.trim().split("\n").filter(Boolean).pop();
      let final = null;
      try {
        final = last ? JSON.parse(last) : null;
      } catch {}
      if (final && final.report) final = null;
      resolve({ code, signal, final, stdout, stderr });
    });
  });
  const send = (line) => {
    if (child.exitCode === null && child.stdin.writable) child.stdin.write(line + "\n");
  };
  const describe = () => `phone ${args.join(" ")}\nstdout: ${stdout.trim()}\nstderr: ${stderr.trim().slice(-1500)}`;
  return {
    args,
    answered,
    done,
    describe,
    /** The server that answered (the 2xx's Contact, `host:port`), once answered. */
    answeredBy: () => /phone: answered by (\S+)[^\n]*\n/.exec(stderr)?.[1] ?? null,
    /** Presses keys (RFC 4733, each held 100 ms). */
    press: (keys) => send(`press ${keys}`),
    /** What was heard since the last report (or since 1 s after the answer). */
    report() {
      const p = new Promise((r) => waiters.push(r));
      send("report");
      return p;
    },
    /** Hangs up and resolves with the final report (throws if there was none). */
    async hangup({ timeoutMs = 30000 } = {}) {
      send("hangup");
      let timer;
      const r = await Promise.race([
        done,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`the phone did not end within ${timeoutMs} ms of "hangup": ${describe()}`)), timeoutMs);
        }),
      ]).finally(() => clearTimeout(timer));
      if (!r.final) throw new Error(`the phone printed no final report: ${describe()}`);
      return r.final;
    },
    kill: () => child.exitCode === null && child.kill("SIGKILL"),
  };
}
