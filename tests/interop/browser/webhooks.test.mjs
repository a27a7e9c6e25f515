// Webhooks end to end with real devices: Bandwidth's unmodified browser SDK in headless Chromium
// and the test phone (examples/phone over SIP) connect, leave, lose their connection and are
// deleted, while a real HTTP receiver in this process (receiver.mjs) checks every delivery's
// Standard Webhooks signature against the dev account's secret (printed by the server on its
// first start) and fails the first two attempts of every event on purpose: a 500, then no answer
// until the server's attempt timeout has passed.
//
// Asserted from what the receiver accepted: each event exactly once (one webhook-id each, three
// attempts each), every participant's events exactly in the order they happened, Bandwidth's
// exact body for onConnect/onLeave/onDisconnect (reference §5: `timestamp` epoch milliseconds as a
// string, `tag` omitted when the participant has none), patchbay's own events where they belong,
// nothing for a participant without callbackUrl, and the failed attempts in the REST delivery log.
//
//   cargo build --bin patchbay --example phone && cd tests/interop/browser && bash run.sh
//   cd tests/interop/browser && node --test webhooks.test.mjs        # after run.sh once

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { launchBrowser, withTimeout } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { startReceiver } from "./receiver.mjs";
import { dialPhone, PHONE_BIN } from "./phone.mjs";

const T = 15000; // bound for every "eventually" condition
// Delivery of one event takes three attempts here: a 500, a hang cut by the 1 s attempt
// timeout, then the 204; with 100 ms (doubling, jittered) between them.
const SERVER_ENV = { PATCHBAY_WEBHOOK_FIRST_RETRY_MS: "100", PATCHBAY_WEBHOOK_ATTEMPT_TIMEOUT: "1" };
const HANG_MS = 2500;
const DELIVERY_T = 90000; // bound for all events of the scenario to be accepted

let b;
let pb;
let rx;

before(async () => {
  if (!existsSync(PHONE_BIN)) throw new Error(`test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  [pb, b] = await Promise.all([startPatchbay({ env: SERVER_ENV }), launchBrowser()]);
  if (!pb.sip) throw new Error(`patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
  assert.match(pb.webhookSecret || "", /^whsec_[A-Za-z0-9+/=]+$/, "the server printed the dev account's webhook secret");
  rx = await startReceiver({ secret: pb.webhookSecret, flaky: true, hangMs: HANG_MS });
});
after(async () => {
  await b?.close();
  await pb?.stop();
  await rx?.close();
});

const names = (events) => events.map((e) => e.json.event);

/** The exact body Bandwidth sends for its three events (reference §5), field order included. */
function bandwidthBody(d, { participantId, deviceId, tag }) {
  const v = d.json;
  assert.match(v.timestamp, /^\d{13}$/, `timestamp is epoch ms as a string: ${d.body}`);
  const body = { event: v.event, timestamp: v.timestamp, participantId, deviceId };
  if (tag !== undefined) body.tag = tag;
  return JSON.stringify(body);
}

test("webhooks: browsers and phones connect, leave, drop and are deleted; each event once, in order, signed, Bandwidth's bodies", { timeout: 240000 }, async (t) => {
  const session = await pb.createSession("webhooks");
  const pages = [];
  const phones = [];
  const t0 = Date.now();
  const mk = async (body) => {
    const { participant, token } = await pb.createParticipant(body);
    await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
    return { id: participant.id, token, tag: body.tag };
  };
  const page = async (name) => {
    const p = await b.newParticipant(name);
    pages.push(p);
    return p;
  };
  try {
    const hook = { callbackUrl: rx.url };
    // alice (browser, tagged): connects, publishes, leaves through the SDK (`leave`).
    // bob (browser, no tag): connects, and his browser goes away without a word.
    // erin (browser, tagged): connects, and her participant is deleted by REST.
    // carol (phone, tagged): is answered, publishes, hangs up (BYE).
    // dave (phone, no tag): is answered, and his participant is deleted by REST (BYE from us).
    // frank (browser, no callbackUrl): connects and leaves; nothing is sent for him.
    const alice = await mk({ ...hook, tag: "agent-alice" });
    const bob = await mk({ ...hook });
    const erin = await mk({ ...hook, tag: "erin" });
    const carol = await mk({ ...hook, tag: "caller", publishPermissions: ["AUDIO"] });
    const dave = await mk({ ...hook, publishPermissions: ["AUDIO"] });
    const frank = await mk({});

    const [pa, pbob, pe, pf] = await Promise.all([page("alice"), page("bob"), page("erin"), page("frank")]);
    const connect = (p, x) => p.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T });
    await Promise.all([connect(pa, alice), connect(pbob, bob), connect(pe, erin), connect(pf, frank)]);
    const [devAlice, devBob, devErin] = await Promise.all([pa, pbob, pe].map((p) => p.call("uniqueId")));
    assert.ok(devAlice && devBob && devErin, "the SDK put a uniqueId in its signalling URL");
    const published = await pa.publishTone({ freqHz: 440, alias: "alice-mic", timeoutMs: T });

    const callCarol = dialPhone({ sip: pb.sip, token: carol.token, toneHz: 1000 });
    const callDave = dialPhone({ sip: pb.sip, token: dave.token, toneHz: 700 });
    phones.push(callCarol, callDave);
    assert.ok(await callCarol.answered, `carol's call was answered: ${callCarol.describe()}`);
    assert.ok(await callDave.answered, `dave's call was answered: ${callDave.describe()}`);
    // both phones are heard in the session before anything ends (their streams are published)
    await pa.waitForStream({ participantId: carol.id, timeoutMs: T });
    await pa.waitForStream({ participantId: dave.id, timeoutMs: T });

    // the endings
    await pa.disconnect(); // the SDK says `leave`, then closes
    await pf.disconnect();
    await pbob.context.close(); // the page is gone: no `leave`
    await pb.deleteParticipant(erin.id);
    const carolFinal = await callCarol.hangup();
    await pb.deleteParticipant(dave.id);
    const daveEnd = await withTimeout(callDave.done, T, "dave's phone ends its call after the server's BYE");
    assert.equal(carolFinal.bye_from_server, false, `carol hung up herself: ${callCarol.describe()}`);
    assert.ok(daveEnd.final && daveEnd.final.bye_from_server, `deleting dave's participant hangs up his call: ${callDave.describe()}`);

    // What the receiver must end up with, per participant. The device and call events come
    // from one path each and must arrive exactly in this order; a stream's events come from the
    // media plane and may fall on either side of its device's start or end (the order they
    // happened in is checked below from their timestamps).
    const device = {
      [alice.id]: ["onConnect", "onLeave"],
      [bob.id]: ["onConnect", "onDisconnect"],
      [erin.id]: ["onConnect", "onDisconnect"],
      [carol.id]: ["onConnect", "onCallAnswered", "onLeave", "onCallEnded"],
      [dave.id]: ["onConnect", "onCallAnswered", "onDisconnect", "onCallEnded"],
    };
    // A deleted participant's streams end without onStreamUnpublished (control forgets what it
    // published: the participant is gone); its last events are its device's end.
    const STREAM_EVENTS = ["onStreamPublished", "onStreamUnpublished"];
    const streamEvents = { [alice.id]: STREAM_EVENTS, [carol.id]: STREAM_EVENTS, [dave.id]: ["onStreamPublished"] };
    const want = Object.fromEntries(Object.entries(device).map(([p, w]) => [p, [...w, ...(streamEvents[p] || [])]]));
    const total = Object.values(want).reduce((n, w) => n + w.length, 0);
    await rx.waitFor((acc) => acc.length >= total, DELIVERY_T, `${total} events`);
    // Anything late (a duplicate, an event for frank) would show up within this time.
    await new Promise((r) => setTimeout(r, 1500));
    // An event still being retried (the receiver fails each twice) must finish before counting.
    await rx.waitFor(() => [...rx.attempts.keys()].every((id) => rx.accepted.some((d) => d.id === id)), DELIVERY_T, "every attempted event delivered");
    t.diagnostic(`${rx.accepted.length} events accepted ${Date.now() - t0} ms after the start`);
    // Dave is deleted while his call is up: his stream may be withdrawn by the media plane
    // before control has forgotten him (then onStreamUnpublished is sent) or after (then not).
    const daveUnpublished = rx.of(dave.id).some((d) => d.json.event === "onStreamUnpublished");
    if (daveUnpublished) streamEvents[dave.id] = STREAM_EVENTS;
    const expected = total + (daveUnpublished ? 1 : 0);

    assert.deepEqual(rx.rejected, [], "every delivery carries a valid signature");
    assert.equal(rx.accepted.length, expected, `exactly the expected events: ${rx.accepted.map((d) => d.body).join("\n")}`);
    const ids = new Set(rx.accepted.map((d) => d.id));
    assert.equal(ids.size, expected, "one webhook-id per event, each accepted once");
    for (const [id, n] of rx.attempts) assert.equal(n, 3, `${id}: a 500, a timeout, then the acknowledged attempt`);
    for (const d of rx.accepted) {
      assert.match(d.contentType || "", /^application\/json/, `content type of ${d.body}`);
      assert.match(d.id, /^msg_/, `webhook-id of ${d.body}`);
      assert.ok(Number(d.json.timestamp) >= t0 - 1000 && Number(d.json.timestamp) <= Date.now(), `timestamp within the test: ${d.body}`);
    }
    assert.equal(rx.of(frank.id).length, 0, "no callbackUrl, no webhooks");
    for (const [p, w] of Object.entries(device)) {
      const got = names(rx.of(p));
      assert.deepEqual(got.filter((n) => !STREAM_EVENTS.includes(n)), w, `device events of participant ${p}, in order: ${got}`);
      // A browser publishes over its connection; a phone's media is set up while its call is
      // being answered, so its onStreamPublished may come just before its onConnect.
      if (![carol.id, dave.id].includes(p)) assert.equal(got[0], "onConnect", `participant ${p} is connected first: ${got}`);
      const streams = got.filter((n) => STREAM_EVENTS.includes(n));
      assert.deepEqual(streams, streamEvents[p] || [], `stream events of participant ${p}, in order: ${got}`);
    }
    // Arrival order is the order the events happened: their timestamps never go back within a
    // participant (while the receiver failed every event twice, the next one waited).
    for (const p of Object.keys(want)) {
      const ts = rx.of(p).map((d) => Number(d.json.timestamp));
      assert.deepEqual(ts, [...ts].sort((x, y) => x - y), `timestamps of ${p} in arrival order`);
    }

    // Bandwidth's three events, byte for byte.
    const exact = (x, deviceId) => {
      for (const d of rx.of(x.id).filter((d) => ["onConnect", "onLeave", "onDisconnect"].includes(d.json.event))) {
        assert.equal(d.body, bandwidthBody(d, { participantId: x.id, deviceId, tag: x.tag }));
      }
    };
    exact(alice, devAlice);
    exact(bob, devBob);
    exact(erin, devErin);
    const callDevice = (x) => rx.of(x.id).find((d) => d.json.event === "onCallAnswered").json.deviceId;
    assert.ok(callDevice(carol) && callDevice(carol) !== callDevice(dave), "each call has its own device id");
    exact(carol, callDevice(carol));
    exact(dave, callDevice(dave));
    assert.ok(!("tag" in rx.of(bob.id)[0].json) && !("tag" in rx.of(dave.id)[0].json), "no tag: the field is omitted");

    // patchbay's own events.
    const ev = (x, name) => rx.of(x.id).find((d) => d.json.event === name).json;
    assert.deepEqual(ev(alice, "onStreamPublished"), {
      event: "onStreamPublished",
      timestamp: ev(alice, "onStreamPublished").timestamp,
      participantId: alice.id,
      tag: "agent-alice",
      streamId: published.streamId,
      alias: "alice-mic",
      mediaTypes: ["AUDIO"],
    });
    assert.equal(ev(alice, "onStreamUnpublished").streamId, published.streamId);
    assert.deepEqual(ev(carol, "onStreamPublished").mediaTypes, ["AUDIO"]);
    assert.equal(ev(carol, "onCallEnded").reason, "hangup", "carol hung up");
    assert.equal(ev(dave, "onCallEnded").reason, "ended", "the server ended dave's call");
    assert.equal(ev(carol, "onCallEnded").deviceId, callDevice(carol));

    // The delivery log over REST shows the failed attempts (alice's participant still exists).
    const log = (await pb.webhookLog(alice.id)).attempts;
    assert.equal(log.length, 3 * want[alice.id].length, JSON.stringify(log));
    assert.equal(log.filter((a) => a.status === 500).length, want[alice.id].length, JSON.stringify(log));
    assert.equal(log.filter((a) => a.status === null && /timed out/.test(a.error)).length, want[alice.id].length, JSON.stringify(log));
    assert.equal(log.filter((a) => a.status === 204).length, want[alice.id].length, JSON.stringify(log));
    const acceptedIds = new Set(rx.of(alice.id).map((d) => d.id));
    assert.ok(log.every((a) => acceptedIds.has(a.eventId)), "the log names the events the receiver got");
  } catch (e) {
    const diag = [`--- receiver accepted:`, ...rx.accepted.map((d) => `${d.id} ${d.body}`)];
    for (const ph of phones) {
      ph.kill();
      diag.push(`--- ${(await ph.done) && ph.describe()}`);
    }
    for (const p of pages) diag.push(`--- page ${p.name}: console (last 10): ${p.console.slice(-10).join(" | ")}`);
    e.message += `\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const ph of phones) ph.kill();
    await Promise.all(phones.map((ph) => ph.done));
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
