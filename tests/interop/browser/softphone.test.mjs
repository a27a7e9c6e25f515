// A real softphone (Debian's baresip, baresip.mjs) dials into a real patchbay (server.mjs) with its
// participant's token in User-To-User, in the form Bandwidth's transfer helper sends
// (`<voice call id>;encoding=base64,<JWT>;encoding=jwt`), and meets Bandwidth's unmodified browser
// SDK in headless Chromium in the same session (issue 23).
//
// Evidence is decoded audio only, on both sides: the page measures the tone it decodes from the
// phone's stream with WebAudio (the frequency baresip plays from its WAV), and baresip's own
// recording of what its call decoded (sndfile's dump-*-dec.wav) is analysed here for the page's
// tone. Then baresip hangs up (its own BYE) and the page sees the phone's stream go away.
//
//   apt-get install -y baresip-core   # and a C compiler (cc) for baresip.mjs's uui module
//   cargo build && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test softphone.test.mjs        # this file (after run.sh once)
//   BARESIP_BIN=/path/to/baresip PATCHBAY_KEEP_LOGS=1 node --test softphone.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { analyseTone, baresipVersion, readWav, startBaresip } from "./baresip.mjs";

const T = 10000; // bound for every "eventually" condition
const TOL_HZ = 30; // page-side FFT tolerance (as media.test.mjs)
const PHONE_TOL_HZ = 15; // baresip's recording: dominant frequency on a 10 Hz scan
// How much of the page's tone baresip's recording must hold before it hangs up (seconds of frames
// with sound), and how long that may take at most.
const LISTEN_S = 4;
const LISTEN_T = 30000;
// baresip's recording, over 0.5 s Hann-windowed frames: a clean tone has ~all of the power within
// ±10 Hz of its frequency (share ~1). Concealed or skipped frames on the way (Chromium, the
// server's Opus decoding and mixing, on a busy machine) spread some of it; frequencies absent
// from the mix measure ~0.
const MIN_SHARE = 0.3;
const MAX_ABSENT = 0.01;
const MIN_RMS = 1000; // the page's tone (gain 0.3) arrives at ~6950 in 16-bit samples

let b; // one Chromium for the file
let pb; // one patchbay for the file

before(async () => {
  await baresipVersion(); // throws, saying how to install it, when baresip is missing
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
  if (!pb.sip) throw new Error(`patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
});
after(async () => {
  await b?.close();
  await pb?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const near = (hz, want, tol) => typeof hz === "number" && Math.abs(hz - want) <= tol;
const round = (r) => JSON.stringify(r, (k, v) => (typeof v === "number" ? +v.toPrecision(3) : v));

/** Analyses baresip's recording so far (null before its call decoded anything). */
async function heardSoFar(phone, probe) {
  const file = await phone.recordingPath();
  if (!file) return null;
  const wav = readWav(file);
  return { file, sampleRate: wav.sampleRate, ...analyseTone(wav.samples, wav.sampleRate, { probe }) };
}

test("baresip dials in with its token in User-To-User: the browser hears it, it hears the browser, its BYE ends its stream", { timeout: 120000 }, async (t) => {
  const HZ = { browser: 700, phone: 1300 };
  const probe = [HZ.browser, HZ.phone];
  const session = await pb.createSession("softphone");
  let page = null;
  let phone = null;
  const t0 = Date.now();
  try {
    // the browser participant: publishes its tone, subscribed to the whole session
    const { participant: alice, token: aliceToken } = await pb.createParticipant({ tag: "alice" });
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    page = await b.newParticipant("alice");
    await page.connect({ websocketUrl: pb.websocketUrl, token: aliceToken, timeoutMs: T });
    await page.publishTone({ freqHz: HZ.browser, alias: "alice-tone", timeoutMs: T });

    // the phone participant, subscribed to the whole session; baresip dials with its token
    const { participant: ph, token } = await pb.createParticipant({ tag: "baresip", publishPermissions: ["AUDIO"] });
    await pb.addParticipant(session.id, ph.id, { sessionId: session.id });
    phone = await startBaresip({ toneHz: HZ.phone });
    t.diagnostic(`${phone.version}`);
    // a Voice call id as the transfer helper puts it (40 hex digits: the id without its "c" and dashes)
    const voiceCallId = randomBytes(20).toString("hex");
    const uui = `${voiceCallId};encoding=base64,${token};encoding=jwt`;
    await phone.dial(`sip:webrtc@${pb.sip}`, { uui });
    await phone.established({ timeoutMs: T });

    // what baresip sent: the header must be in its INVITE exactly as given
    const invite = phone.sipMessages(/^INVITE /)[0];
    assert.ok(invite, `no INVITE in baresip's SIP trace: ${phone.describe()}`);
    assert.ok(invite.split("\n").includes(`User-To-User: ${uui}`), `baresip's INVITE lacks the User-To-User header:\n${invite}`);
    t.diagnostic(`baresip's INVITE:\n${invite}`);
    const answer = phone.sipMessages(/^SIP\/2\.0 200 /).find((m) => /^CSeq: \d+ INVITE$/m.test(m));
    t.diagnostic(`patchbay's 200 to it:\n${answer}`);

    // the page receives the phone's stream and decodes baresip's tone, while the call is up
    const ev = await page.waitForStream({ participantId: ph.id, timeoutMs: T });
    assert.equal(ev.participantId, ph.id, JSON.stringify(ev));
    assert.equal(ev.alias, "phone", JSON.stringify(ev));
    assert.deepEqual([...ev.mediaTypes].sort(), ["AUDIO"], JSON.stringify(ev));
    const pageHeard = await page.expectTone(ev.streamId, HZ.phone, { toleranceHz: TOL_HZ, timeoutMs: T });
    t.diagnostic(`the page decodes from baresip: ${round(pageHeard)}`);

    // baresip's recording fills with sound while the call is up: wait until it holds LISTEN_S
    // seconds of it (bounded), then hang up. What it holds is judged after the hang-up.
    const deadline = Date.now() + LISTEN_T;
    let soFar = null;
    for (;;) {
      soFar = await heardSoFar(phone, probe);
      if (soFar && soFar.voicedSeconds >= LISTEN_S) break;
      if (Date.now() > deadline) break;
      if (phone.closedEvent()) break;
      await sleep(500);
    }
    assert.equal(phone.closedEvent(), null, `the call ended before baresip hung up: ${phone.describe()}`);

    const closed = await phone.hangup({ timeoutMs: T });
    t.diagnostic(`baresip: ${closed.type} (${closed.param})`);
    // patchbay answers the BYE (baresip reports the call closed as it sends it, so wait for it)
    const byeAnswers = () => phone.sipMessages(/^SIP\/2\.0 [2-6]\d\d /).filter((m) => /^CSeq: \d+ BYE$/m.test(m));
    for (const until = Date.now() + T; byeAnswers().length === 0 && Date.now() < until; ) await sleep(100);
    const byeAnswer = byeAnswers()[0];
    assert.ok(byeAnswer && byeAnswer.startsWith("SIP/2.0 200 "), `patchbay's answer to baresip's BYE: ${byeAnswer || "none"}`);
    // the page sees the phone's stream end
    await page.waitForStreamUnavailable(ev.streamId, { timeoutMs: T });

    const q = await phone.quit();
    assert.deepEqual({ code: q.code, killed: q.killed }, { code: 0, killed: false }, `baresip did not quit cleanly: ${phone.describe()}`);

    // what baresip heard (its recording, closed now) and sent (its encoder's input)
    const heard = await heardSoFar(phone, probe);
    assert.ok(heard, `baresip recorded nothing: ${phone.describe()}`);
    const desc = `baresip heard ${round(heard)}`;
    t.diagnostic(desc);
    const sentFile = await phone.sentPath();
    const sentWav = sentFile && readWav(sentFile);
    const sent = sentWav && analyseTone(sentWav.samples, sentWav.sampleRate, { probe });
    t.diagnostic(`baresip sent ${round(sent)}`);
    assert.ok(sent && near(sent.dominantHz, HZ.phone, PHONE_TOL_HZ), `baresip did not send its WAV's ${HZ.phone} Hz: ${round(sent)}`);

    assert.equal(heard.sampleRate, 8000, desc);
    assert.ok(heard.voicedSeconds >= LISTEN_S, `baresip heard sound for less than ${LISTEN_S} s within ${LISTEN_T} ms: ${desc}`);
    assert.ok(heard.rms > MIN_RMS, `baresip heard (almost) nothing: ${desc}`);
    assert.ok(near(heard.dominantHz, HZ.browser, PHONE_TOL_HZ), `baresip's dominant frequency is not the browser's ${HZ.browser} Hz: ${desc}`);
    assert.ok(heard.share[HZ.browser] > MIN_SHARE, `baresip does not hear the browser's ${HZ.browser} Hz: ${desc}`);
    assert.ok(heard.share[HZ.phone] < MAX_ABSENT, `baresip hears itself (${HZ.phone} Hz): ${desc}`);

    // the server's own account of the call (diagnostic): how it ended and its media counters
    const ended = pb.stderrLines().filter((l) => l.includes("SIP call ended") && l.includes(ph.id)).pop();
    t.diagnostic(`patchbay: ${ended ? ended.replace(/^.*?SIP call ended/, "SIP call ended") : "(no 'SIP call ended' line)"}`);
  } catch (e) {
    const diag = [];
    if (page) {
      const events = await page.events().catch(() => []);
      const stats = await page.rtpStats("subscribe").catch(() => null);
      diag.push(`--- page alice`, `events: ${JSON.stringify(events)}`, `subscribe pc: ${JSON.stringify(stats)}`, `console (last 15): ${page.console.slice(-15).join(" | ")}`);
    }
    if (phone) diag.push(`--- ${phone.describe()}`);
    e.message += `\n\n[after ${Date.now() - t0} ms]\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    if (phone) {
      if (phone.running()) await phone.quit().catch(() => {});
      await phone.cleanup().catch(() => {});
    }
    if (page) await page.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
    t.diagnostic(`${Date.now() - t0} ms`);
  }
});
