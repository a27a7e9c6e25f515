// Browser <-> phone interop: Bandwidth's unmodified browser SDK in headless Chromium and a SIP
// phone (target/debug/examples/phone: examples/phone.rs + tests/support/phone_ua.rs) in the same
// session of a real patchbay server (started by server.mjs with its SIP bridge on a free
// loopback port).
//
// The phone dials in with its participant's token in User-To-User, sends a µ-law tone for a
// fixed time and reports what it decoded (dominant frequency, share of power at probe
// frequencies: ~0.5 for a pure tone, ~0.25 each for two equal tones, ~0 when absent). Pages
// measure the tones they decode with WebAudio. As in media.test.mjs, only decoded media is
// evidence; server state (routes) is never used.
//
//   cargo build && cargo build --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test phone.test.mjs        # this file (after run.sh once)
//   PHONE_BIN=/path/to/phone PATCHBAY_KEEP_LOGS=1 node --test phone.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const PHONE_BIN = process.env.PHONE_BIN || path.resolve(here, "../../../target/debug/examples/phone");

const T = 10000; // bound for every "eventually" condition on the browser side
const TOL_HZ = 30; // browser-side FFT tolerance (as media.test.mjs)
const PHONE_TOL_HZ = 15; // phone-side dominant frequency tolerance (10 Hz scan steps)
// How long each phone stays in the call. It reports what it heard from 1 s after the answer to
// its hang-up. The pages' checks of its stream run while it is still calling: they start about
// 1-2 s after the dial and are bounded by IN_CALL_T, so a failure shows what was decoded then.
const PHONE_SECONDS = 8;
const IN_CALL_T = 5000;
// The phone's report over its whole listening window (7 s at 8 kHz). A page's tone has RMS ~6950
// there (gain 0.3). Its share is 0.5 when the tone arrives phase-coherent for the whole window;
// every concealed or skipped frame on the way (Chromium or the server's jitter buffer, on a busy
// machine) shifts the phase and lowers it: 0.15..0.5 observed. Frequencies absent from the
// mix measure ~1e-7.
const MIN_RMS = 1000;
const MIN_SHARE = 0.02;

let b; // one Chromium for the file
let pb; // one patchbay for the file

before(async () => {
  if (!existsSync(PHONE_BIN)) throw new Error(`test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
  if (!pb.sip) throw new Error(`patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
});
after(async () => {
  await b?.close();
  await pb?.stop();
});

// ---------------------------------------------------------------------------------------------
// The phone: one process per call.

/**
 * Starts `phone --sip pb.sip --token ... --tone ... --seconds ... --probe ...`.
 * -> { answered: Promise (its "answered" line on stderr), done: Promise<{ code, signal, report, stdout, stderr }>, kill() }
 * `report` is the parsed JSON line ({samples, rms, dominant_hz, share: {hz: x}, bye_from_server}
 * or {refused, reason}).
 */
function callPhone({ token, toneHz, seconds = PHONE_SECONDS, probe }) {
  const args = ["--sip", pb.sip, "--token", token, "--tone", String(toneHz), "--seconds", String(seconds), "--probe", probe.join(",")];
  const child = spawn(PHONE_BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
  let stdout = "";
  let stderr = "";
  let onAnswer;
  const answered = new Promise((resolve) => (onAnswer = resolve));
  child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d) => {
    stderr += d;
    if (/phone: answered/.test(stderr)) onAnswer(true);
  });
  const killTimer = setTimeout(() => child.kill("SIGKILL"), (seconds + 30) * 1000);
  const done = new Promise((resolve) => {
    child.once("error", (e) => resolve({ code: null, signal: null, report: null, stdout, stderr: stderr + String(e) }));
    child.once("exit", (code, signal) => {
      clearTimeout(killTimer);
      onAnswer(false);
      const line = stdout.trim().split("\n").filter(Boolean).pop();
      let report = null;
      try {
        report = line ? JSON.parse(line) : null;
      } catch {}
      resolve({ code, signal, report, stdout, stderr });
    });
  });
  return { args, answered, done, kill: () => child.exitCode === null && child.kill("SIGKILL") };
}

/** Waits for the call's end and checks it was answered and heard something. -> report */
async function phoneReport(call) {
  const r = await call.done;
  const desc = `phone ${call.args.join(" ")} -> code ${r.code} signal ${r.signal}\nstdout: ${r.stdout}\nstderr: ${r.stderr.slice(-2000)}`;
  assert.equal(r.code, 0, desc);
  assert.ok(r.report && r.report.share, desc);
  // at least half of the listening window (the phone listens for seconds - 1) was heard
  assert.ok(r.report.samples >= ((PHONE_SECONDS - 1) * 8000) / 2, `the phone heard too few samples: ${desc}`);
  return r.report;
}

/** Reports the server's "SIP call ended ... stats=PhoneStats {...}" line of the participant's call
 * (late, concealed, trimmed frames explain a share below 0.5). */
function callStats(t, participantId) {
  const line = pb.stderrLines().filter((l) => l.includes("SIP call ended") && l.includes(participantId)).pop();
  const stats = line && line.match(/stats=PhoneStats \{([^}]*)\}/);
  if (stats) t.diagnostic(`server's call stats: ${stats[1].trim()}`);
}

// ---------------------------------------------------------------------------------------------
// Scenario scaffolding: each test gets its own session, pages and phones; failures carry
// diagnostics (page events and signalling, the phones' output, the server's log).

async function scenario(t, fn) {
  const ctx = {
    pages: [],
    calls: [],
    session: await pb.createSession(t.name.slice(0, 50)),
    /** A browser participant: REST participant + page. -> { id, token, page } */
    async browser(tag) {
      const { participant, token } = await pb.createParticipant({ tag });
      const page = await b.newParticipant(tag);
      ctx.pages.push(page);
      page.participantId = participant.id;
      return { id: participant.id, token, page };
    },
    /** A phone participant (REST only; it dials later). -> { id, token } */
    async phone(tag) {
      const { participant, token } = await pb.createParticipant({ tag, publishPermissions: ["AUDIO"] });
      return { id: participant.id, token };
    },
    async connect(...ps) {
      await Promise.all(ps.map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T })));
    },
    dial(opts) {
      const c = callPhone(opts);
      ctx.calls.push(c);
      return c;
    },
  };
  const t0 = Date.now();
  try {
    await fn(ctx);
  } catch (e) {
    const diag = [];
    for (const c of ctx.calls) {
      c.kill();
      const r = await c.done;
      diag.push(`--- phone ${c.args.join(" ")}: code ${r.code} signal ${r.signal}`, `stdout: ${r.stdout.trim()}`, `stderr: ${r.stderr.trim().slice(-1500)}`);
    }
    for (const p of ctx.pages) {
      const events = await p.events().catch(() => []);
      const ws = await p.wsLog().catch(() => []);
      const stats = await p.rtpStats("subscribe").catch(() => null);
      diag.push(
        `--- page ${p.name} (participant ${p.participantId})`,
        `events: ${JSON.stringify(events)}`,
        `subscribe pc: ${JSON.stringify(stats)}`,
        `signalling (last 12): ${JSON.stringify(ws.slice(-12).map((x) => ({ ev: x.event, m: x.method, id: x.id, raw: x.raw && x.raw.slice(0, 200) })))}`,
        `console (last 15): ${p.console.slice(-15).join(" | ")}`
      );
    }
    e.message += `\n\n[after ${Date.now() - t0} ms]\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const c of ctx.calls) c.kill();
    await Promise.all(ctx.calls.map((c) => c.done));
    for (const p of ctx.pages) await p.close().catch(() => {});
    await pb.deleteSession(ctx.session.id).catch(() => {});
    t.diagnostic(`${t.name}: ${Date.now() - t0} ms`);
  }
}

function assertAvailable(ev, { participantId, alias, mediaTypes }) {
  assert.equal(ev.participantId, participantId, `participantId in ${JSON.stringify(ev)}`);
  assert.equal(ev.alias, alias, `alias in ${JSON.stringify(ev)}`);
  if (mediaTypes) assert.deepEqual([...ev.mediaTypes].sort(), mediaTypes, `mediaTypes in ${JSON.stringify(ev)}`);
}

const near = (hz, want, tol) => typeof hz === "number" && Math.abs(hz - want) <= tol;

// ---------------------------------------------------------------------------------------------

test("browser and phone: the phone hears the browser (not itself), the browser hears the phone", { timeout: 60000 }, (t) =>
  scenario(t, async ({ session, browser, phone, connect, dial }) => {
    const HZ = { alice: 440, phone: 1000 };
    const alice = await browser("alice");
    const ph = await phone("phone");
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    await pb.addParticipant(session.id, ph.id, { sessionId: session.id });
    await connect(alice);
    await alice.page.publishTone({ freqHz: HZ.alice, alias: "alice-tone", timeoutMs: T });

    const call = dial({ token: ph.token, toneHz: HZ.phone, probe: [HZ.alice, HZ.phone] });
    // while the phone is in the call: the browser receives its stream and decodes its tone
    const ev = await alice.page.waitForStream({ participantId: ph.id, timeoutMs: T });
    assertAvailable(ev, { participantId: ph.id, alias: "phone", mediaTypes: ["AUDIO"] });
    await alice.page.expectTone(ev.streamId, HZ.phone, { toleranceHz: TOL_HZ, timeoutMs: IN_CALL_T });
    assert.ok(await call.answered, "the phone's call was answered");

    const heard = await phoneReport(call);
    const desc = `phone heard ${JSON.stringify(heard)}`;
    t.diagnostic(desc);
    callStats(t, ph.id);
    assert.ok(heard.share[HZ.phone] < 0.01, `the phone hears itself: ${desc}`);
    assert.ok(heard.rms > MIN_RMS, `the phone hears (almost) nothing: ${desc}`);
    assert.ok(near(heard.dominant_hz, HZ.alice, PHONE_TOL_HZ), `the phone's dominant frequency is not alice's ${HZ.alice} Hz: ${desc}`);
    assert.ok(heard.share[HZ.alice] > MIN_SHARE, `the phone does not hear alice: ${desc}`);
    assert.ok(heard.share[HZ.alice] > 100 * heard.share[HZ.phone], `share at ${HZ.alice} Hz not >> share at ${HZ.phone} Hz: ${desc}`);
    assert.equal(heard.bye_from_server, false, `the server hung up on the phone: ${desc}`);
  })
);

test("whisper with a phone as the caller: the phone never hears the supervisor", { timeout: 60000 }, (t) =>
  scenario(t, async ({ session, browser, phone, connect, dial }) => {
    const HZ = { caller: 1000, agent: 440, supervisor: 700 };
    const caller = await phone("caller");
    const agent = await browser("agent");
    const supervisor = await browser("supervisor");
    const only = (...ps) => ({ participants: ps.map((p) => ({ participantId: p.id })) });
    await pb.addParticipant(session.id, caller.id, only(agent));
    await pb.addParticipant(session.id, agent.id, only(caller, supervisor));
    await pb.addParticipant(session.id, supervisor.id, only(caller, agent));
    await connect(agent, supervisor);
    await Promise.all([
      agent.page.publishTone({ freqHz: HZ.agent, alias: "agent", timeoutMs: T }),
      supervisor.page.publishTone({ freqHz: HZ.supervisor, alias: "supervisor", timeoutMs: T }),
    ]);

    const call = dial({ token: caller.token, toneHz: HZ.caller, probe: Object.values(HZ) });
    // while the phone is in the call: the agent decodes both the phone's and the supervisor's
    // tones (so the supervisor's audio is flowing while the phone listens); the supervisor
    // decodes the phone and the agent.
    const expectFrom = async (rx, tx, alias, hz) => {
      const ev = await rx.page.waitForStream({ participantId: tx.id, timeoutMs: T });
      assertAvailable(ev, { participantId: tx.id, alias, mediaTypes: ["AUDIO"] });
      await rx.page.expectTone(ev.streamId, hz, { toleranceHz: TOL_HZ, timeoutMs: IN_CALL_T });
    };
    await Promise.all([
      expectFrom(agent, caller, "phone", HZ.caller),
      expectFrom(agent, supervisor, "supervisor", HZ.supervisor),
      expectFrom(supervisor, caller, "phone", HZ.caller),
      expectFrom(supervisor, agent, "agent", HZ.agent),
    ]);
    assert.ok(await call.answered, "the phone's call was answered");

    const heard = await phoneReport(call);
    const desc = `caller (phone) heard ${JSON.stringify(heard)}`;
    t.diagnostic(desc);
    callStats(t, caller.id);
    assert.ok(
      heard.share[HZ.supervisor] < 0.01 * heard.share[HZ.agent],
      `the caller hears the supervisor (share at ${HZ.supervisor} Hz not below 1% of the share at ${HZ.agent} Hz): ${desc}`
    );
    assert.ok(heard.share[HZ.caller] < 0.01, `the caller hears itself: ${desc}`);
    assert.ok(heard.rms > MIN_RMS, `the caller hears (almost) nothing: ${desc}`);
    assert.ok(near(heard.dominant_hz, HZ.agent, PHONE_TOL_HZ), `the caller's dominant frequency is not the agent's ${HZ.agent} Hz: ${desc}`);
    assert.ok(heard.share[HZ.agent] > MIN_SHARE, `the caller does not hear the agent: ${desc}`);
  })
);
