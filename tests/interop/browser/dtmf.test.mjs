// DTMF with real devices, both directions:
// - keys pressed in Chromium through Bandwidth's unmodified SDK (`sendDtmf`, i.e. the browser's
//   RTCDTMFSender sending RFC 4733 telephone-events on its published audio) arrive at the test
//   phone (examples/phone) once each, in order, as the phone itself counts them;
// - keys pressed on the phone (RFC 4733 from examples/phone, each held 100 ms, its end packet
//   sent three times) arrive once each at a real webhook receiver (receiver.mjs, checking
//   signatures) as `onDtmf` with the digit and `durationMs`.
//
//   cargo build --bin patchbay --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test dtmf.test.mjs        # after run.sh once

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { startReceiver } from "./receiver.mjs";
import { dialPhone, PHONE_BIN } from "./phone.mjs";

const T = 15000;

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

test("DTMF: browser keys reach the phone once each; phone keys reach the webhook receiver once each with durationMs", { timeout: 120000 }, async (t) => {
  const session = await pb.createSession("dtmf");
  let page;
  let call;
  try {
    const { participant: agent, token: agentToken } = await pb.createParticipant({ tag: "agent" });
    const { participant: caller, token: callerToken } = await pb.createParticipant({
      tag: "caller",
      publishPermissions: ["AUDIO"],
      callbackUrl: rx.url,
    });
    await pb.addParticipant(session.id, agent.id, { sessionId: session.id });
    await pb.addParticipant(session.id, caller.id, { sessionId: session.id });
    page = await b.newParticipant("agent");
    await page.connect({ websocketUrl: pb.websocketUrl, token: agentToken, timeoutMs: T });
    const pub = await page.publishTone({ freqHz: 440, alias: "agent-mic", timeoutMs: T });

    call = dialPhone({ sip: pb.sip, token: callerToken, toneHz: 1000, probe: [440] });
    assert.ok(await call.answered, `the phone's call was answered: ${call.describe()}`);
    // media flows both ways before any key is pressed
    const fromPhone = await page.waitForStream({ participantId: caller.id, timeoutMs: T });
    await page.expectTone(fromPhone.streamId, 1000, { timeoutMs: T });

    // Browser -> phone: the SDK's sendDtmf, one key at a time (RTCDTMFSender queues them:
    // 100 ms each, 70 ms apart).
    const browserKeys = "147#";
    await page.call("sendDtmf", [browserKeys, pub.streamId]);
    // Phone -> webhooks.
    const phoneKeys = "2580*";
    call.press(phoneKeys);

    await rx.waitFor((acc) => acc.filter((d) => d.json.event === "onDtmf").length >= phoneKeys.length, T, `${phoneKeys.length} onDtmf events`);
    // The phone counts the browser's keys as they come (its reports list them so far).
    const deadline = Date.now() + T;
    let heard;
    do {
      await sleep(200);
      heard = await call.report();
    } while (heard && heard.digits.length < browserKeys.length && Date.now() < deadline);
    // A repeat of the last key's end packets (sent within ~40 ms of each other) would be
    // counted within this time.
    await sleep(500);
    const final = await call.hangup();
    await rx.waitFor((acc) => acc.some((d) => d.json.event === "onCallEnded"), T, "onCallEnded");

    t.diagnostic(`the phone received ${JSON.stringify(final.digits)}`);
    assert.deepEqual(
      final.digits.map((d) => d.digit).join(""),
      browserKeys,
      `each browser key once, in order, at the phone: ${JSON.stringify(final.digits)}`
    );
    for (const d of final.digits) assert.ok(d.ms >= 40 && d.ms <= 1000, `a browser key lasts about 100 ms at the phone: ${JSON.stringify(d)}`);

    assert.deepEqual(rx.rejected, [], "every delivery is signed");
    const dtmf = rx.of(caller.id).filter((d) => d.json.event === "onDtmf");
    t.diagnostic(`the receiver got ${dtmf.map((d) => d.body).join(" ")}`);
    assert.equal(dtmf.map((d) => d.json.digit).join(""), phoneKeys, "each phone key once, in order, at the receiver");
    for (const d of dtmf) {
      assert.equal(
        d.body,
        JSON.stringify({ event: "onDtmf", timestamp: d.json.timestamp, participantId: caller.id, tag: "caller", digit: d.json.digit, durationMs: 100 }),
        "the test phone holds each key 100 ms"
      );
    }
    assert.equal(new Set(rx.of(caller.id).map((d) => d.id)).size, rx.of(caller.id).length, "one webhook-id per event");
  } catch (e) {
    const diag = [];
    if (call) {
      call.kill();
      await call.done;
      diag.push(`--- ${call.describe()}`);
    }
    if (page) diag.push(`--- page console (last 15): ${page.console.slice(-15).join(" | ")}`);
    diag.push(`--- receiver: ${rx.accepted.map((d) => d.body).join("\n")}`);
    e.message += `\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    if (call) {
      call.kill();
      await call.done;
    }
    await page?.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
