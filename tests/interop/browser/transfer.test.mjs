// Transfer with real devices: the test phone (examples/phone over SIP), playing a tone in session
// A, is moved to session B by REST (removed from A, added to B), as a contact centre moves a
// caller from a queue to an agent. Each session has a Chromium page running Bandwidth's
// unmodified SDK and publishing its own tone.
//
// Evidence is decoded audio only: the phone's own FFT of what it hears (it reports on demand,
// examples/phone --commands) and the pages' WebAudio FFT. The call must be the same one: the
// phone's final report lists the requests the server sent it (no BYE, no re-INVITE) and it never
// dialled again (one process, one INVITE).
//
//   cargo build --bin patchbay --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test transfer.test.mjs        # after run.sh once

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { dialPhone, PHONE_BIN } from "./phone.mjs";

const T = 15000; // bound for every "eventually" condition
const TOL_HZ = 30; // browser-side FFT tolerance (as media.test.mjs)
// A tone that arrives has a share of about 0.15..0.5 of what the phone hears (phone.test.mjs);
// an absent one about 1e-7.
const PRESENT = 0.05;
const ABSENT = 0.005;

let b;
let pb;

before(async () => {
  if (!existsSync(PHONE_BIN)) throw new Error(`test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
  if (!pb.sip) throw new Error(`patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
});
after(async () => {
  await b?.close();
  await pb?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Takes the phone's reports (each covering ~windowMs) until ok(report) holds; -> that report. */
async function phoneHears(phone, ok, what, { timeoutMs = T, windowMs = 1000 } = {}) {
  await phone.report(); // forget what came before
  const deadline = Date.now() + timeoutMs;
  let last;
  do {
    await sleep(windowMs);
    last = await phone.report();
    if (last && last.samples > 0 && ok(last)) return last;
  } while (Date.now() < deadline);
  throw new Error(`the phone did not ${what} within ${timeoutMs} ms; last report ${JSON.stringify(last)}`);
}

/** Polls a page until the stream no longer carries hz (no audio track, or nothing near hz). */
async function pageStopsHearing(page, streamId, hz, { timeoutMs = T } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  do {
    last = await page.analyse(streamId, { durationMs: 500 });
    const carries = last.rms >= 0.01 && last.peakHz !== null && Math.abs(last.peakHz - hz) <= TOL_HZ;
    if (!carries) return last;
  } while (Date.now() < deadline);
  throw new Error(`${page.name} still decodes ${hz} Hz on ${streamId} after ${timeoutMs} ms: ${JSON.stringify(last)}`);
}

test("transfer: a phone moved from session A to B by REST keeps its call, hears B, is heard by B and no longer by A", { timeout: 120000 }, async (t) => {
  const HZ = { phone: 1000, a: 440, b: 700 };
  const probe = Object.values(HZ);
  const A = await pb.createSession("queue");
  const B = await pb.createSession("agent");
  const pages = [];
  let call;
  try {
    const mk = async (body) => {
      const { participant, token } = await pb.createParticipant(body);
      return { id: participant.id, token };
    };
    const inA = await mk({ tag: "queue-music" });
    const inB = await mk({ tag: "agent" });
    const caller = await mk({ tag: "caller", publishPermissions: ["AUDIO"] });
    await pb.addParticipant(A.id, inA.id, { sessionId: A.id });
    await pb.addParticipant(B.id, inB.id, { sessionId: B.id });
    await pb.addParticipant(A.id, caller.id, { sessionId: A.id });
    const [pa, pbB] = await Promise.all([b.newParticipant("A"), b.newParticipant("B")]);
    pages.push(pa, pbB);
    await Promise.all([
      pa.connect({ websocketUrl: pb.websocketUrl, token: inA.token, timeoutMs: T }),
      pbB.connect({ websocketUrl: pb.websocketUrl, token: inB.token, timeoutMs: T }),
    ]);
    await Promise.all([
      pa.publishTone({ freqHz: HZ.a, alias: "a-tone", timeoutMs: T }),
      pbB.publishTone({ freqHz: HZ.b, alias: "b-tone", timeoutMs: T }),
    ]);

    // In A: A's page decodes the phone's tone; the phone hears A and not B.
    call = dialPhone({ sip: pb.sip, token: caller.token, toneHz: HZ.phone, probe });
    assert.ok(await call.answered, `the phone's call was answered: ${call.describe()}`);
    const inAStream = await pa.waitForStream({ participantId: caller.id, timeoutMs: T });
    await pa.expectTone(inAStream.streamId, HZ.phone, { toleranceHz: TOL_HZ, timeoutMs: T });
    const heardA = await phoneHears(call, (r) => r.share[HZ.a] > PRESENT && r.share[HZ.b] < ABSENT, "hear A (and not B)");
    t.diagnostic(`in A the phone heard ${JSON.stringify(heardA)}`);

    // Out of A: the call stays up, in no session (silence: no hold tone configured).
    await pb.removeParticipant(A.id, caller.id);
    await pa.waitForStreamUnavailable(inAStream.streamId, { timeoutMs: T });
    const heardNone = await phoneHears(call, (r) => r.share[HZ.a] < ABSENT && r.share[HZ.b] < ABSENT, "stop hearing A");
    t.diagnostic(`in no session the phone heard ${JSON.stringify(heardNone)}`);

    // Into B by REST: the same call hears B, B's page decodes the phone, A's page does not.
    await pb.addParticipant(B.id, caller.id, { sessionId: B.id });
    const inBStream = await pbB.waitForStream({ participantId: caller.id, timeoutMs: T });
    await pbB.expectTone(inBStream.streamId, HZ.phone, { toleranceHz: TOL_HZ, timeoutMs: T });
    const heardB = await phoneHears(call, (r) => r.share[HZ.b] > PRESENT && r.share[HZ.a] < ABSENT, "hear B (and not A)");
    t.diagnostic(`in B the phone heard ${JSON.stringify(heardB)}`);
    const aAfter = await pageStopsHearing(pa, inAStream.streamId, HZ.phone);
    t.diagnostic(`A's page on the phone's old stream: ${JSON.stringify(aAfter)}`);
    const aEvents = (await pa.events()).filter((e) => e.type === "available" && e.participantId === caller.id);
    assert.equal(aEvents.length, 1, `A's page was offered the phone's stream once (before the transfer), never again: ${JSON.stringify(aEvents)}`);
    // B's page keeps decoding the phone while A's does not (both measured after the move).
    await pbB.expectTone(inBStream.streamId, HZ.phone, { toleranceHz: TOL_HZ, timeoutMs: T });

    // The same call throughout: the phone hangs up itself, and the server sent it nothing (no
    // BYE, no re-INVITE) during the whole transfer.
    const final = await call.hangup();
    assert.equal(final.bye_from_server, false, `the server hung up on the phone: ${call.describe()}`);
    assert.deepEqual(final.server_requests, [], `the server sent the phone SIP requests: ${call.describe()}`);
    assert.ok(final.call_id, "the phone reports its Call-ID");
    t.diagnostic(`one call throughout: Call-ID ${final.call_id}`);
  } catch (e) {
    const diag = [];
    if (call) {
      call.kill();
      await call.done;
      diag.push(`--- ${call.describe()}`);
    }
    for (const p of pages) {
      const events = await p.events().catch(() => []);
      diag.push(`--- page ${p.name}: events ${JSON.stringify(events)}`, `console (last 10): ${p.console.slice(-10).join(" | ")}`);
    }
    e.message += `\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    if (call) {
      call.kill();
      await call.done;
    }
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(A.id).catch(() => {});
    await pb.deleteSession(B.id).catch(() => {});
  }
});
