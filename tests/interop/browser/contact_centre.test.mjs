// Runs the contact-centre walkthrough (examples/contact-centre/backend.mjs) against a real
// patchbay server with test phones, so its README stays true: every step's hearing checks pass
// (decoded audio at each phone), and the backend prints the signed webhooks it received for all
// four participants: each call's onConnect, onCallAnswered, onLeave and onCallEnded (hangup).
//
//   cargo build --bin patchbay --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test contact_centre.test.mjs        # after run.sh once

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startPatchbay } from "./server.mjs";
import { PHONE_BIN } from "./phone.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BACKEND = path.resolve(here, "../../../examples/contact-centre/backend.mjs");

let pb;
before(async () => {
  if (!existsSync(PHONE_BIN)) throw new Error(`test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  pb = await startPatchbay();
});
after(async () => {
  await pb?.stop();
});

test("contact-centre walkthrough: talk, whisper, barge, transfer; webhooks printed", { timeout: 180000 }, async (t) => {
  const args = [BACKEND, "--url", pb.url, "--account", pb.account, "--username", pb.username, "--password", pb.password,
    "--secret", pb.webhookSecret, "--sip", pb.sip, "--phone", PHONE_BIN];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  const code = await new Promise((r) => child.once("exit", r));
  const desc = `backend exit ${code}\nstdout:\n${stdout}\nstderr:\n${stderr.slice(-2000)}\n--- patchbay stderr (tail):\n${pb.stderrTail(30)}`;
  const lines = stdout.split("\n");
  const hears = lines.filter((l) => l.startsWith("hears ")).map((l) => JSON.parse(l.slice(6)));
  const webhooks = lines.filter((l) => l.startsWith("webhook ")).map((l) => {
    const [, tag, ...rest] = l.split(" ");
    return { tag, body: JSON.parse(rest.join(" ")) };
  });
  t.diagnostic(`${hears.length} hearing checks, ${webhooks.length} webhooks`);
  assert.equal(code, 0, desc);
  assert.ok(lines.includes("done: ok"), desc);
  const steps = [...new Set(hears.map((h) => h.step))];
  assert.deepEqual(steps, ["talk", "whisper", "barge", "transfer"], desc);
  assert.ok(hears.every((h) => h.ok), desc);
  const whisper = hears.find((h) => h.step === "whisper" && h.who === "caller");
  assert.ok(whisper.silent.includes("supervisor") && whisper.hears.includes("agent-1"), `whisper: ${JSON.stringify(whisper)}`);
  const barge = hears.find((h) => h.step === "barge" && h.who === "caller");
  assert.ok(barge.hears.includes("supervisor"), `barge: ${JSON.stringify(barge)}`);
  const moved = hears.find((h) => h.step === "transfer" && h.who === "caller");
  assert.deepEqual(moved.hears, ["agent-2"], `transfer: ${JSON.stringify(moved)}`);
  assert.ok(!lines.some((l) => l.startsWith("webhook REJECTED")), desc);
  for (const tag of ["caller", "agent-1", "supervisor", "agent-2"]) {
    const events = webhooks.filter((w) => w.tag === tag).map((w) => w.body.event).filter((e) => !e.startsWith("onStream"));
    assert.deepEqual(events, ["onConnect", "onCallAnswered", "onLeave", "onCallEnded"], `${tag}'s webhooks: ${desc}`);
  }
});
