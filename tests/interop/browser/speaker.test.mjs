// Who is speaking (issue 21, step 5) with Bandwidth's unmodified browser SDK in headless
// Chromium and the test phone over SIP (target/debug/examples/phone), in one session of a real
// patchbay server. Chromium puts the RFC 6464 audio-level header extension on the Opus it
// sends; the phone sends G.711, whose level the server's SIP bridge measures. Two browsers and
// the phone take turns (a tone, the others silent: a browser's track disabled, the phone not
// yet dialled); `GET …/sessions/{s}/activeSpeaker` must follow each turn (bounded by a generous
// deadline, not timed), and `onActiveSpeaker` (opted in by the account) must arrive once per
// change, naming the browsers and then the phone.
//
//   cargo build && cargo build --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test speaker.test.mjs        # this file (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { startReceiver } from "./receiver.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const PHONE_BIN = process.env.PHONE_BIN || path.resolve(here, "../../../target/debug/examples/phone");
const T = 15000; // bound for every "eventually" condition

let b;
let pb;
let rx;

before(async () => {
  if (!existsSync(PHONE_BIN)) throw new Error(`test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
  if (!pb.sip) throw new Error(`patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
  rx = await startReceiver({ secret: pb.webhookSecret });
});
after(async () => {
  await b?.close();
  await pb?.stop();
  await rx?.close();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last.ok) return last;
    await sleep(100);
  }
  throw new Error(`still not true after ${timeoutMs} ms: ${what} (last: ${JSON.stringify(last)})`);
}

test("two browsers and a phone take turns: the dominant speaker follows, one onActiveSpeaker per change", { timeout: 120000 }, async (t) => {
  const session = await pb.createSession("speaker");
  const pages = [];
  let phone = null;
  try {
    const settings = await pb.rest("PUT", "/webhooks", { activeSpeakerEvents: true });
    assert.equal(settings.activeSpeakerEvents, true, JSON.stringify(settings));

    const browser = async (tag, hz) => {
      const { participant, token } = await pb.createParticipant({ tag, callbackUrl: rx.url });
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await page.connect({ websocketUrl: pb.websocketUrl, token, timeoutMs: T });
      const local = await page.localToneMediaStream(hz);
      await page.publishStream(local, tag, { timeoutMs: T });
      // Silent until its turn: a disabled track sends silence.
      const talk = (on) => page.evaluate(([id, on]) => harness.localStreamObject(id).getAudioTracks().forEach((tr) => (tr.enabled = on)), [local, on]);
      await talk(false);
      return { id: participant.id, talk };
    };
    const alice = await browser("alice", 440);
    const bob = await browser("bob", 700);
    const { participant: ph, token: phoneToken } = await pb.createParticipant({ tag: "phone", publishPermissions: ["AUDIO"], callbackUrl: rx.url });
    await pb.addParticipant(session.id, ph.id, { sessionId: session.id });

    const speaker = () => pb.rest("GET", `/sessions/${session.id}/activeSpeaker`);
    // `from`: when the turn began (this process's clock, the server's is the same machine's):
    // the time to `since` is how long the server took to follow, for BENCHMARKS.md (reported,
    // not asserted: the machine is shared).
    const follows = async (who, name, isPhone, from) => {
      const got = await until(async () => {
        const s = await speaker();
        return { ok: s.participantId === who, s };
      }, T, `the dominant speaker becomes ${name}`);
      assert.equal(got.s.phone, isPhone, JSON.stringify(got.s));
      t.diagnostic(`${name} is the dominant speaker: ${JSON.stringify(got.s)}; followed ${got.s.since - from} ms after the turn began`);
    };

    let turn = Date.now();
    await alice.talk(true);
    await follows(alice.id, "alice", false, turn);
    await sleep(1500);
    await alice.talk(false);
    turn = Date.now();
    await bob.talk(true);
    await follows(bob.id, "bob", false, turn);
    await sleep(1500);
    await bob.talk(false);
    // The phone dials in with a tone of its own.
    turn = Date.now(); // the phone's turn begins with its dialling: call set-up is included
    phone = spawn(PHONE_BIN, ["--sip", pb.sip, "--token", phoneToken, "--tone", "1000", "--seconds", "8", "--probe", "440"], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let phoneErr = "";
    phone.stderr.setEncoding("utf8").on("data", (d) => (phoneErr += d));
    try {
      await follows(ph.id, "the phone", true, turn);
    } catch (e) {
      e.message += `\nphone stderr: ${phoneErr.slice(-1500)}`;
      throw e;
    }
    // Silence keeps the last speaker.
    await sleep(2000);
    assert.equal((await speaker()).participantId, ph.id);

    const announced = () => rx.accepted.filter((d) => d.json && d.json.event === "onActiveSpeaker");
    await rx.waitFor(() => announced().length >= 3, T, "three onActiveSpeaker");
    // Anything more would be a duplicate: give it the time a delivery takes here.
    await sleep(2000);
    const got = announced().map((d) => d.json);
    assert.deepEqual(
      got.map((j) => [j.participantId, j.phone, j.sessionId]),
      [
        [alice.id, false, session.id],
        [bob.id, false, session.id],
        [ph.id, true, session.id],
      ],
      JSON.stringify(got)
    );
  } catch (e) {
    e.message += `\n--- patchbay stderr (tail):\n${pb.stderrTail(30)}`;
    throw e;
  } finally {
    if (phone && phone.exitCode === null) phone.kill("SIGKILL");
    for (const p of pages) await p.close().catch(() => {});
    await pb.rest("PUT", "/webhooks", { activeSpeakerEvents: false }).catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
