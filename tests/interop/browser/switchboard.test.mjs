// The switchboard demo (examples/switchboard.rs + examples/switchboard/) driven in headless
// Chromium: a real patchbay, the real example backend (webhooks signed and checked), three
// participant tabs of the demo's own page (Bandwidth's unmodified SDK) each sending a test tone,
// and the operator page. The operator clicks "Whisper"; what each page DECODES decides the
// test: the caller's page has no trace of the supervisor's tone, the agent's has both others.
// Leave deletes the participant.
//
//   cargo build && cargo build --example switchboard && cd tests/interop/browser && bash run.sh
//   node --test switchboard.test.mjs                       # this file (after run.sh once)
//   SWITCHBOARD_SCREENSHOT=../../../docs/switchboard.png node --test switchboard.test.mjs
//
// The pages are bundled here with this folder's esbuild and SDK (the same pinned versions as
// examples/switchboard/package.json). The operator page's screenshot goes to
// $SWITCHBOARD_SCREENSHOT, else to the temp dir.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, chromiumPath, instrumentPeerConnections, receivedAudioSpectra, anyCarries, withTimeout } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "../../..");
const PAGES = path.join(ROOT, "examples/switchboard");
const BIN = process.env.SWITCHBOARD_BIN || path.join(ROOT, "target/debug/examples/switchboard");
const T = 20000; // bound for every "eventually" condition
const HZ = { caller: 440, agent: 1000, supervisor: 700 };
const NAMES = { caller: "Carol (caller)", agent: "Adam (agent)", supervisor: "Sue (supervisor)" };
const ALL = Object.values(HZ);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await pred();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await sleep(250);
  }
}

/** Starts the example backend against pb; resolves once it prints its URL. */
async function startSwitchboard(pb) {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build --example switchboard\` (or set SWITCHBOARD_BIN)`);
  const args = ["--patchbay", pb.url, "--account", pb.account, "--username", pb.username, "--password", pb.password,
    "--webhook-secret", pb.webhookSecret, "--listen", "127.0.0.1:0", "--sip", pb.sip ?? "127.0.0.1:5060"];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  let output = "";
  const collect = (d) => {
    output += d;
    if (output.length > 200000) output = output.slice(-100000);
  };
  child.stderr.setEncoding("utf8").on("data", collect);
  child.stdout.setEncoding("utf8");
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on("data", (d) => {
        collect(d);
        const m = output.match(/operator page (http:\/\/\S+?)\/? /);
        if (m) resolve(m[1] + "/");
      });
      child.once("exit", (code) => reject(new Error(`switchboard exited (code ${code}):\n${output}`)));
    }),
    T,
    "switchboard start"
  );
  return {
    url,
    output: () => output,
    state: async () => (await fetch(url + "api/state")).json(),
    async stop() {
      child.kill("SIGTERM");
      process.off("exit", killOnExit);
    },
  };
}

let pb;
let sb;
let browser;

before(async () => {
  // the demo's pages, bundled as examples/switchboard/package.json does
  await build({
    entryPoints: [path.join(PAGES, "participant.js"), path.join(PAGES, "operator.js")],
    bundle: true,
    format: "iife",
    platform: "browser",
    target: "chrome100",
    outdir: path.join(PAGES, "dist"),
    nodePaths: [path.join(here, "node_modules")],
    logLevel: "warning",
  });
  pb = await startPatchbay();
  assert.match(pb.webhookSecret ?? "", /^whsec_/, "patchbay printed the dev account's webhook secret");
  sb = await startSwitchboard(pb);
  browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS, timeout: 30000 });
});

after(async () => {
  await browser?.close().catch(() => {});
  await sb?.stop();
  await pb?.stop();
});

/** Opens the demo's participant page for a role, with its tone, and presses Join. */
async function participant(role) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (err) => console.error(`${role} page: ${err.message}`));
  const q = new URLSearchParams({ name: NAMES[role], role, tone: String(HZ[role]) });
  await page.goto(`${sb.url}participant.html?${q}`, { waitUntil: "load" });
  await instrumentPeerConnections(page); // before Join, so every peer connection is seen
  await page.click("#join");
  await page.waitForSelector('#status[data-state="joined"]', { timeout: T });
  return { role, page, context };
}

const memberNamed = (state, role) => state.members.find((m) => m.name === NAMES[role]);

test("operator applies whisper: the caller's page decodes no supervisor, the agent's both; cell and alias clicks re-wire; Leave deletes (seats freed)", { timeout: 180000 }, async (t) => {
  const pages = [];
  const pageErrors = [];
  try {
    for (const role of ["caller", "agent", "supervisor"]) pages.push(await participant(role));
    const [caller, agent, supervisor] = pages;
    const operator = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
    operator.on("pageerror", (err) => pageErrors.push(`operator: ${err.message}`));
    await operator.goto(sb.url, { waitUntil: "load" });

    // live state from signed webhooks: all three connected and publishing "voice"
    const ready = await until(
      async () => {
        const s = await sb.state();
        const ok = s.members.length === 3 && s.members.every((m) => m.connected && m.streams.some((x) => x.alias === "voice"));
        return { ok, s };
      },
      T,
      "three connected, publishing members on the switchboard"
    );
    assert.equal(ready.s.webhooks.verified, true);
    assert.equal(ready.s.webhooks.rejected, 0, "every webhook passed the signature check");
    const ids = Object.fromEntries(["caller", "agent", "supervisor"].map((r) => [r, memberNamed(ready.s, r).id]));

    // the operator page shows them by name, and the matrix cells exist
    await operator.waitForFunction(() => document.body.dataset.members === "3", null, { timeout: T });
    for (const role of Object.keys(NAMES)) assert.ok(await operator.locator("#people").getByText(NAMES[role]).count(), `${role} listed by name`);

    // Before: everyone hears everyone, so the caller's page does decode the supervisor.
    await until(async () => ({ ok: anyCarries(await receivedAudioSpectra(caller.page, ALL, { durationMs: 1000 }), HZ.supervisor) }), T, "the caller hearing the supervisor before the whisper");

    // The operator clicks Whisper.
    await operator.click("#preset-whisper");
    await operator.waitForFunction(() => /^whisper(:| failed)/.test(document.getElementById("preset-status").textContent), null, { timeout: T });
    assert.equal(await operator.textContent("#preset-status"), "whisper: applied");
    const cell = (listener, speaker) => `td.cell[data-listener="${ids[listener]}"][data-speaker="${ids[speaker]}"]`;
    await operator.waitForSelector(`${cell("caller", "supervisor")}[data-on="false"]`, { timeout: T });
    await operator.waitForSelector(`${cell("agent", "supervisor")}[data-on="true"]`, { timeout: T });
    await operator.waitForSelector(`${cell("supervisor", "caller")}[data-on="true"]`, { timeout: T });

    // The supervisor's tone leaves the caller's page (renegotiation), then a fixed window in which
    // the caller decodes no trace of it while the agent, measured the same way, decodes both.
    await until(async () => ({ ok: !anyCarries(await receivedAudioSpectra(caller.page, ALL, { durationMs: 1000 }), HZ.supervisor) }), T, "the supervisor's tone gone from the caller's page");
    const [atCaller, atAgent] = await Promise.all([receivedAudioSpectra(caller.page, ALL), receivedAudioSpectra(agent.page, ALL)]);
    assert.ok(anyCarries(atAgent, HZ.caller) && anyCarries(atAgent, HZ.supervisor), `the agent hears caller and supervisor: ${JSON.stringify(atAgent)}`);
    assert.ok(anyCarries(atCaller, HZ.agent), `the caller hears the agent: ${JSON.stringify(atCaller)}`);
    for (const s of atCaller) assert.ok(s.bands[HZ.supervisor] < 0.01, `the caller's track ${s.trackId} has energy at the supervisor's ${HZ.supervisor} Hz: ${JSON.stringify(s)}`);

    // the rules behind it, as patchbay has them
    const callerRules = await pb.rest("GET", `/sessions/${ready.s.sessionId}/participants/${ids.caller}/subscriptions`);
    assert.deepEqual(callerRules.participants.map((p) => p.participantId), [ids.agent], JSON.stringify(callerRules));

    const shot = process.env.SWITCHBOARD_SCREENSHOT || path.join(os.tmpdir(), "switchboard.png");
    await sleep(1500); // let the talking lights settle (cosmetic only)
    await operator.screenshot({ path: shot, fullPage: true });
    t.diagnostic(`operator page screenshot: ${shot}`);

    // Clicking: the caller's chip for the supervisor's "voice" wires that stream alias only (a
    // streamAlias rule, heard again), and the cell's button unwires the whole participant.
    const routeOf = async (listener, speaker) => {
      const r = await pb.routes(ready.s.sessionId);
      return r.subscribers.find((x) => x.participantId === ids[listener]).receives.find((x) => x.publisherId === ids[speaker]) ?? null;
    };
    await operator.click(`${cell("caller", "supervisor")} button.chip:text-is("voice")`);
    await operator.waitForSelector(`${cell("caller", "supervisor")}[data-on="true"]`, { timeout: T });
    const aliasRoute = await routeOf("caller", "supervisor");
    assert.equal(aliasRoute?.cause, "streamAlias", JSON.stringify(aliasRoute));
    assert.deepEqual(aliasRoute.streamAliases, ["voice"]);
    await until(async () => ({ ok: anyCarries(await receivedAudioSpectra(caller.page, ALL, { durationMs: 1000 }), HZ.supervisor) }), T, "the caller hearing the supervisor's voice alias");
    await operator.click(`${cell("caller", "supervisor")} button.wire`);
    await operator.waitForSelector(`${cell("caller", "supervisor")}[data-on="false"]`, { timeout: T });
    assert.equal(await routeOf("caller", "supervisor"), null);
    assert.ok(await routeOf("caller", "agent"), "the caller still hears the agent");

    // Leave deletes the participant: its seat is freed and its token revoked.
    await supervisor.page.click("#leave");
    await supervisor.page.waitForSelector('#status[data-state="left"]', { timeout: T });
    await assert.rejects(pb.rest("GET", `/participants/${ids.supervisor}`), (e) => e.status === 404);
    await until(async () => ({ ok: (await sb.state()).members.length === 2 }), T, "the operator's list without the supervisor");

    // Seats are freed: 25 more joins and leaves through the backend, in a session of at most 20.
    for (let i = 0; i < 25; i++) {
      const res = await fetch(sb.url + "api/join", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: `guest ${i}`, role: "caller" }) });
      assert.equal(res.status, 200, `join ${i}: ${await res.clone().text()}`);
      const { participantId } = await res.json();
      const left = await fetch(sb.url + "api/leave", { method: "POST", body: JSON.stringify({ participantId }) });
      assert.equal(left.status, 204, `leave ${i}`);
    }
    assert.equal((await pb.listParticipants(ready.s.sessionId)).length, 2);

    // A webhook with a wrong signature is refused.
    const forged = await fetch(sb.url + "webhooks", {
      method: "POST",
      headers: { "content-type": "application/json", "webhook-id": "msg_x", "webhook-timestamp": String(Math.floor(Date.now() / 1000)), "webhook-signature": "v1,AAAA" },
      body: JSON.stringify({ event: "onConnect", participantId: ids.caller, deviceId: "forged" }),
    });
    assert.equal(forged.status, 401);
  } catch (e) {
    if (e.code !== "ERR_ASSERTION") e = new Error(e.message, { cause: e });
    e.message += `\n--- page errors: ${JSON.stringify(pageErrors)}\n--- switchboard output:\n${sb.output().slice(-3000)}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const p of pages) await p.context.close().catch(() => {});
  }
});
