// The switchboard demo (examples/switchboard.rs + examples/switchboard/) driven in headless
// Chromium: a real patchbay, the real example backend (webhooks signed and checked), three
// participant tabs of the demo's own page (Bandwidth's unmodified SDK) each sending a test tone,
// and the operator page. The operator clicks "Whisper"; what each page DECODES decides the
// test: the caller's page has no trace of the supervisor's tone, the agent's has both others.
// Leave deletes the participant. Then, each with its own backend (its own session):
// - a cell click is a change on top of the listener's session-wide rule: the listener still
//   hears a participant who joins later (decoded), not the speaker switched off, and its matrix
//   row says "everyone + 1 change";
// - Monitor stays in force for a caller who joins during it: the caller's page decodes no
//   supervisor, the supervisor's decodes the caller; the Monitor button is pressed until a cell
//   click makes the wiring custom (and pressed again when the click is undone);
// - a tab closed without its beacon (and without the SDK's `leave`) disappears from the
//   operator page once patchbay says onDisconnect and `--forget-after 2` passed; a phone that
//   hangs up (onLeave) disappears at once.
//
//   cargo build && cargo build --example switchboard --example phone && cd tests/interop/browser && bash run.sh
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
import { dialPhone, PHONE_BIN } from "./phone.mjs";

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

/** Starts the example backend against pb (with `extra` arguments); resolves once it prints its URL. */
async function startSwitchboard(pb, extra = []) {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build --example switchboard\` (or set SWITCHBOARD_BIN)`);
  const args = ["--patchbay", pb.url, "--account", pb.account, "--username", pb.username, "--password", pb.password,
    "--webhook-secret", pb.webhookSecret, "--listen", "127.0.0.1:0", "--sip", pb.sip ?? "127.0.0.1:5060", ...extra];
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

/** Opens the demo's participant page of switchboard `board` as `name` with `role`, sending a
 * tone at `hz`, and presses Join. */
async function join(board, { name, role, hz }) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (err) => console.error(`${name} page: ${err.message}`));
  const q = new URLSearchParams({ name, role, tone: String(hz) });
  await page.goto(`${board.url}participant.html?${q}`, { waitUntil: "load" });
  await instrumentPeerConnections(page); // before Join, so every peer connection is seen
  await page.click("#join");
  await page.waitForSelector('#status[data-state="joined"]', { timeout: T });
  return { name, role, hz, page, context };
}

/** One of the three contact-centre seats of the first test, on the shared backend. */
const participant = (role) => join(sb, { name: NAMES[role], role, hz: HZ[role] });

const memberNamed = (state, role) => state.members.find((m) => m.name === NAMES[role]);

/** Waits until `board` lists exactly `names`, each connected and publishing "voice";
 * -> { s: its state, ids: name -> participant id }. */
async function untilMembers(board, names) {
  const { s } = await until(
    async () => {
      const s = await board.state();
      const ok =
        s.members.length === names.length &&
        names.every((n) => s.members.some((m) => m.name === n && m.connected && m.streams.some((x) => x.alias === "voice")));
      return { ok, s };
    },
    T,
    `${names.join(", ")} connected and publishing on the switchboard`
  );
  return { s, ids: Object.fromEntries(s.members.map((m) => [m.name, m.id])) };
}

/** The operator page of `board`; its errors go to `errors`. */
async function operatorOf(board, errors) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => errors.push(`operator: ${err.message}`));
  await page.goto(board.url, { waitUntil: "load" });
  return { page, context };
}

/** Waits until what `p`'s page decodes carries (or, with `present` false, no longer carries) hz. */
const untilDecodes = (p, hz, freqs, present = true) =>
  until(async () => ({ ok: anyCarries(await receivedAudioSpectra(p.page, freqs, { durationMs: 1000 }), hz) === present }), T, `${p.name} ${present ? "decoding" : "no longer decoding"} ${hz} Hz`);

/** Adds the pages' and both servers' output to an error. */
function explain(e, board, pageErrors) {
  if (e.code !== "ERR_ASSERTION") e = new Error(e.message, { cause: e });
  e.message += `\n--- page errors: ${JSON.stringify(pageErrors)}\n--- switchboard output:\n${board.output().slice(-3000)}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
  return e;
}

const presetPressed = (operator) =>
  operator.page.evaluate(() => Object.fromEntries(["monitor", "whisper", "barge"].map((p) => {
    const b = document.getElementById(`preset-${p}`);
    return [p, { pressed: b.getAttribute("aria-pressed"), active: b.classList.contains("active") }];
  })));

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

    // patchbay's quality level of each member reaches the backend and the page (which level a
    // loaded machine's loopback earns is not this test's business: tests/quality and
    // thin_link.test.mjs check the levels themselves)
    const LEVELS = ["good", "fair", "poor"];
    await until(async () => ({ ok: (await sb.state()).members.every((m) => LEVELS.includes(m.quality)) }), T, "every member's quality level on the switchboard");
    await operator.waitForFunction(() => document.querySelectorAll("#people .badge.q-good, #people .badge.q-fair, #people .badge.q-poor").length === 3, null, { timeout: T });

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
    // The dominant speaker as patchbay decides it (every page sends a tone: one of them) is the
    // one row lit "speaking".
    await until(async () => {
      const speaker = await pb.rest("GET", `/sessions/${ready.s.sessionId}/activeSpeaker`);
      const lit = await operator.$$eval("tr[data-participant]", (rows) => rows.filter((r) => r.querySelector(".badge.talk")).map((r) => r.dataset.participant));
      return { ok: !!speaker.participantId && lit.length === 1 && lit[0] === speaker.participantId, speaker, lit };
    }, T, "the operator page lighting patchbay's dominant speaker");
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
    throw explain(e, sb, pageErrors);
  } finally {
    for (const p of pages) await p.context.close().catch(() => {});
  }
});

test("a cell click keeps the listener's session-wide default: it hears a participant who joins later (decoded), still not the speaker switched off, and its row says so", { timeout: 180000 }, async () => {
  const board = await startSwitchboard(pb);
  const pages = [];
  const pageErrors = [];
  let operator;
  const FREQS = [440, 1000, 1500];
  try {
    const carol = await join(board, { name: "Carol (caller)", role: "caller", hz: 440 });
    pages.push(carol);
    const adam = await join(board, { name: "Adam (agent)", role: "agent", hz: 1000 });
    pages.push(adam);
    const { s, ids } = await untilMembers(board, [carol.name, adam.name]);
    operator = await operatorOf(board, pageErrors);
    const cell = (listener, speaker) => `td.cell[data-listener="${ids[listener.name]}"][data-speaker="${ids[speaker.name]}"]`;
    const row = (listener) => `th.listener[data-listener="${ids[listener.name]}"]`;
    await operator.page.waitForSelector(`${cell(carol, adam)}[data-on="true"]`, { timeout: T });
    await untilDecodes(carol, adam.hz, FREQS);
    // Before any click everyone hears everyone: Barge is the preset in force (read from the draw
    // that showed the cell on; checked at the end, after what the pages decode).
    const before = await operator.page.evaluate((sel) => ({ barge: document.querySelector("#preset-barge")?.getAttribute("aria-pressed"), rule: document.querySelector(sel)?.textContent ?? null }), `${row(carol)} .rule`);

    // The operator switches Adam off for Carol: the cell goes off, Adam's tone leaves Carol's page.
    await operator.page.click(`${cell(carol, adam)} button.wire`);
    await operator.page.waitForSelector(`${cell(carol, adam)}[data-on="false"]`, { timeout: T });
    await untilDecodes(carol, adam.hz, FREQS, false);

    // Nina joins after the click and sends her tone: Carol's page decodes her, and in a fixed
    // window measured after that it decodes no trace of Adam.
    const nina = await join(board, { name: "Nina (agent, joins later)", role: "agent", hz: 1500 });
    pages.push(nina);
    Object.assign(ids, (await untilMembers(board, [carol.name, adam.name, nina.name])).ids);
    await untilDecodes(carol, nina.hz, FREQS);
    const atCarol = await receivedAudioSpectra(carol.page, FREQS);
    assert.ok(anyCarries(atCarol, nina.hz), `Carol hears the later joiner: ${JSON.stringify(atCarol)}`);
    for (const t of atCarol) assert.ok(t.bands[adam.hz] < 0.01, `Carol's track ${t.trackId} has energy at Adam's ${adam.hz} Hz: ${JSON.stringify(t)}`);
    // ... and the newcomer, joining as everyone does before any preset, hears both.
    await untilDecodes(nina, carol.hz, FREQS);
    await untilDecodes(nina, adam.hz, FREQS);

    // The rule behind it, as patchbay has it, and the operator's view of it.
    const rules = await pb.getSubscriptions(s.sessionId, ids[carol.name]);
    assert.deepEqual(rules.participants?.map((p) => p.participantId), [ids[nina.name]], JSON.stringify(rules));
    const after = await board.state();
    const carolRule = after.members.find((m) => m.id === ids[carol.name]).rule;
    assert.equal(carolRule.default, "barge", JSON.stringify(carolRule));
    assert.equal(carolRule.sessionWide, false);
    assert.deepEqual(carolRule.changes.map((c) => [c.speaker, c.hears]), [[ids[adam.name], "nothing"]]);
    assert.equal(after.members.find((m) => m.id === ids[adam.name]).rule.summary, "everyone (session-wide)");
    await operator.page.waitForSelector(`${row(carol)}[data-session-wide="false"][data-changes="1"]`, { timeout: T });
    assert.equal(await operator.page.textContent(`${row(carol)} .rule`), "everyone + 1 change");
    assert.match(await operator.page.getAttribute(`${row(carol)} .rule`, "title"), /hears later joiners[\s\S]*nothing of Adam \(agent\)/);
    await operator.page.waitForSelector(`${row(adam)}[data-session-wide="true"]`, { timeout: T });
    assert.equal(await operator.page.textContent(`${row(adam)} .rule`), "everyone (session-wide)");
    assert.deepEqual(before, { barge: "true", rule: "everyone (session-wide)" }, "before the click");
    // no preset is in force any more
    assert.deepEqual(Object.values(await presetPressed(operator)).map((b) => b.pressed), ["false", "false", "false"]);
    assert.match(await operator.page.textContent("#preset-active"), /^active: custom/);
  } catch (e) {
    throw explain(e, board, pageErrors);
  } finally {
    for (const p of pages) await p.context.close().catch(() => {});
    await operator?.context.close().catch(() => {});
    await board.stop();
  }
});

test("Monitor stays in force for a caller who joins during it: the caller decodes no supervisor, the supervisor decodes the caller; the Monitor button is pressed until a cell click", { timeout: 180000 }, async () => {
  const board = await startSwitchboard(pb);
  const pages = [];
  const pageErrors = [];
  let operator;
  try {
    const sue = await join(board, { name: NAMES.supervisor, role: "supervisor", hz: HZ.supervisor });
    pages.push(sue);
    const adam = await join(board, { name: NAMES.agent, role: "agent", hz: HZ.agent });
    pages.push(adam);
    await untilMembers(board, [sue.name, adam.name]);
    operator = await operatorOf(board, pageErrors);
    await operator.page.waitForFunction(() => document.body.dataset.members === "2", null, { timeout: T });
    await operator.page.click("#preset-monitor");
    await operator.page.waitForFunction(() => /^monitor(:| failed)/.test(document.getElementById("preset-status").textContent), null, { timeout: T });
    assert.equal(await operator.page.textContent("#preset-status"), "monitor: applied");
    await untilDecodes(adam, sue.hz, ALL, false);

    // Carol calls in while Monitor is in force.
    const carol = await join(board, { name: NAMES.caller, role: "caller", hz: HZ.caller });
    pages.push(carol);
    const { s, ids } = await untilMembers(board, [sue.name, adam.name, carol.name]);
    // She hears the agent and, in a fixed window measured after that, no trace of the
    // supervisor; the supervisor and the agent hear her.
    await untilDecodes(carol, adam.hz, ALL);
    const atCarol = await receivedAudioSpectra(carol.page, ALL);
    assert.ok(anyCarries(atCarol, adam.hz), `Carol hears Adam: ${JSON.stringify(atCarol)}`);
    for (const t of atCarol) assert.ok(t.bands[sue.hz] < 0.01, `Carol's track ${t.trackId} has energy at the supervisor's ${sue.hz} Hz: ${JSON.stringify(t)}`);
    await untilDecodes(sue, carol.hz, ALL);
    await untilDecodes(adam, carol.hz, ALL);
    const atAdam = await receivedAudioSpectra(adam.page, ALL);
    for (const t of atAdam) assert.ok(t.bands[sue.hz] < 0.01, `Adam's track ${t.trackId} has energy at the supervisor's ${sue.hz} Hz: ${JSON.stringify(t)}`);
    const carolRules = await pb.getSubscriptions(s.sessionId, ids[carol.name]);
    assert.deepEqual(carolRules.participants?.map((p) => p.participantId), [ids[adam.name]], JSON.stringify(carolRules));

    // Monitor is still the preset in force, and the page presses its button (only its).
    assert.equal((await board.state()).preset, "monitor");
    await operator.page.waitForFunction(() => document.body.dataset.members === "3", null, { timeout: T });
    await operator.page.waitForSelector('#preset-monitor.active[aria-pressed="true"]', { timeout: T });
    assert.deepEqual(await presetPressed(operator), {
      monitor: { pressed: "true", active: true },
      whisper: { pressed: "false", active: false },
      barge: { pressed: "false", active: false },
    });
    assert.equal(await operator.page.textContent("#preset-active"), "active: Monitor");
    const row = (p) => `th.listener[data-listener="${ids[p.name]}"]`;
    assert.equal(await operator.page.textContent(`${row(carol)} .rule`), "by role: monitor");

    // A cell click (the supervisor stops hearing Carol) makes the wiring custom ...
    const cell = `td.cell[data-listener="${ids[sue.name]}"][data-speaker="${ids[carol.name]}"]`;
    await operator.page.click(`${cell} button.wire`);
    await operator.page.waitForSelector(`${cell}[data-on="false"]`, { timeout: T });
    await operator.page.waitForSelector('#preset-monitor[aria-pressed="false"]', { timeout: T });
    assert.deepEqual(Object.values(await presetPressed(operator)), [
      { pressed: "false", active: false },
      { pressed: "false", active: false },
      { pressed: "false", active: false },
    ]);
    assert.match(await operator.page.textContent("#preset-active"), /^active: custom .*Monitor/);
    assert.equal(await operator.page.textContent(`${row(sue)} .rule`), "by role: monitor + 1 change");
    assert.equal((await board.state()).preset, null);
    // ... and undoing it makes Monitor the preset in force again.
    await operator.page.click(`${cell} button.wire`);
    await operator.page.waitForSelector(`${cell}[data-on="true"]`, { timeout: T });
    await operator.page.waitForSelector('#preset-monitor.active[aria-pressed="true"]', { timeout: T });
  } catch (e) {
    throw explain(e, board, pageErrors);
  } finally {
    for (const p of pages) await p.context.close().catch(() => {});
    await operator?.context.close().catch(() => {});
    await board.stop();
  }
});

test("participants gone leave no row: a tab closed without its beacon is deleted --forget-after seconds after its onDisconnect, a phone that hangs up at once", { timeout: 180000 }, async (t) => {
  const board = await startSwitchboard(pb, ["--forget-after", "2"]);
  const pages = [];
  const pageErrors = [];
  let operator;
  let phone;
  try {
    const carol = await join(board, { name: "Carol (stays)", role: "caller", hz: 440 });
    pages.push(carol);
    const gus = await join(board, { name: "Gus (closes the tab)", role: "agent", hz: 1000 });
    pages.push(gus);
    const { ids } = await untilMembers(board, [carol.name, gus.name]);
    operator = await operatorOf(board, pageErrors);
    const personRow = (id) => `#people tr[data-participant="${id}"]`;
    await operator.page.waitForSelector(personRow(ids[gus.name]), { timeout: T });

    // Gus's tab goes away without a word: its beacon cannot leave (sendBeacon does nothing and
    // /api/leave is cut off), the SDK's `leave` on beforeunload does not run (closed without
    // before-unload handlers), so the backend hears only patchbay's onDisconnect.
    await gus.page.route("**/api/leave", (route) => route.abort());
    await gus.page.evaluate(() => Object.defineProperty(navigator, "sendBeacon", { value: () => true, configurable: true }));
    await gus.page.close({ runBeforeUnload: false });
    await gus.context.close();
    // patchbay says onDisconnect when the connection drops; the backend then waits its 2 s for
    // a reconnect (a new onConnect) that does not come
    const closedAt = Date.now();
    await operator.page.waitForSelector(personRow(ids[gus.name]), { state: "detached", timeout: 60000 });
    t.diagnostic(`the closed tab's row went ${Date.now() - closedAt} ms after the close`);
    await assert.rejects(pb.rest("GET", `/participants/${ids[gus.name]}`), (e) => e.status === 404);
    assert.equal(await operator.page.locator(`th.listener[data-listener="${ids[gus.name]}"]`).count(), 0, "no matrix row either");
    // Carol, still connected, stays.
    const left = await board.state();
    assert.deepEqual(left.members.map((m) => [m.name, m.connected]), [[carol.name, true]]);
    assert.match(board.output(), new RegExp(`deleted ${ids[gus.name]}: no device came back`));

    // A phone that hangs up (BYE: onLeave) is deleted at once.
    if (!pb.sip) throw new Error("patchbay printed no SIP address");
    if (!existsSync(PHONE_BIN)) throw new Error(`${PHONE_BIN} is missing: run \`cargo build --example phone\``);
    const res = await fetch(board.url + "api/phone", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "Pat (phone)", role: "caller" }) });
    assert.equal(res.status, 200, await res.clone().text());
    const made = await res.json();
    phone = dialPhone({ sip: pb.sip, token: made.token, toneHz: 700 });
    assert.equal(await phone.answered, true, phone.describe());
    await until(async () => {
      const s = await board.state();
      return { ok: s.members.some((m) => m.id === made.participantId && m.connected), s };
    }, T, "the phone connected on the switchboard");
    await operator.page.waitForSelector(personRow(made.participantId), { timeout: T });
    await phone.hangup();
    await operator.page.waitForSelector(personRow(made.participantId), { state: "detached", timeout: T });
    await assert.rejects(pb.rest("GET", `/participants/${made.participantId}`), (e) => e.status === 404);
    assert.match(board.output(), new RegExp(`deleted ${made.participantId}: it left`));
    assert.deepEqual((await board.state()).members.map((m) => m.name), [carol.name]);
  } catch (e) {
    throw explain(e, board, pageErrors);
  } finally {
    phone?.kill();
    for (const p of pages) await p.context.close().catch(() => {});
    await operator?.context.close().catch(() => {});
    await board.stop();
  }
});
