// Media-plane interop: Bandwidth's unmodified browser SDK in headless Chromium against a real
// patchbay server (started by server.mjs from $PATCHBAY_BIN or target/debug/patchbay).
//
// Every assertion is about what a page actually DECODES: each publisher sends its own tone
// (440 / 1000 / 700 Hz ...) and, where relevant, the fake camera; receivers measure the tone
// frequency with WebAudio and count painted video frames. Server state (routes etc.) is never
// used as evidence. Negative checks ("never receives X") look at everything the page's peer
// connections receive, not only at what the SDK chose to surface, over a fixed window that
// starts after the positive checks of the same page passed.
//
//   cargo build && cd tests/interop/browser && bash run.sh          # everything
//   cd tests/interop/browser && node --test media.test.mjs           # this file (after run.sh once)
//   RUST_LOG=debug PATCHBAY_KEEP_LOGS=1 node --test media.test.mjs   # keep the server log

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, instrumentPeerConnections as instrument, receivedAudioSpectra, anyCarries } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const T = 15000; // bound for every "eventually" condition
const QUIET_MS = 3000; // observation window of the negative checks
const TOL_HZ = 30;

let b; // one Chromium for the file
let pb; // one patchbay for the file

before(async () => {
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
});
after(async () => {
  await b?.close();
  await pb?.stop();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await pred();
    if (last && last.ok !== false) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------
// Scenario scaffolding: each test gets its own session and pages; failures carry diagnostics.

async function scenario(t, fn) {
  const ctx = {
    pages: [],
    session: await pb.createSession(t.name.slice(0, 50)),
    // Creates the REST participant and its page, connects the SDK. -> { id, token, page }
    async join(tag, { publishPermissions } = {}) {
      const body = { tag };
      if (publishPermissions) body.publishPermissions = publishPermissions;
      const { participant, token } = await pb.createParticipant(body);
      const page = await b.newParticipant(tag);
      ctx.pages.push(page);
      await instrument(page);
      page.participantId = participant.id;
      return { id: participant.id, token, page };
    },
    async connect(...ps) {
      await Promise.all(ps.map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T })));
    },
  };
  const t0 = Date.now();
  try {
    await fn(ctx);
  } catch (e) {
    const diag = [];
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

// ---------------------------------------------------------------------------------------------

test("two-party call: each hears and sees the other", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const alice = await join("alice");
    const bob = await join("bob");
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    await pb.addParticipant(session.id, bob.id, { sessionId: session.id });
    await connect(alice, bob);
    const [pubA, pubB] = await Promise.all([
      alice.page.publishTone({ freqHz: 440, alias: "alice-cam", video: true, timeoutMs: T }),
      bob.page.publishTone({ freqHz: 1000, alias: "bob-cam", video: true, timeoutMs: T }),
    ]);
    assert.deepEqual([...pubA.mediaTypes].sort(), ["AUDIO", "VIDEO"]);
    assert.deepEqual([...pubB.mediaTypes].sort(), ["AUDIO", "VIDEO"]);

    const [atBob, atAlice] = await Promise.all([
      bob.page.waitForStream({ participantId: alice.id, timeoutMs: T }),
      alice.page.waitForStream({ participantId: bob.id, timeoutMs: T }),
    ]);
    assertAvailable(atBob, { participantId: alice.id, alias: "alice-cam", mediaTypes: ["AUDIO", "VIDEO"] });
    assertAvailable(atAlice, { participantId: bob.id, alias: "bob-cam", mediaTypes: ["AUDIO", "VIDEO"] });

    await Promise.all([
      bob.page.expectTone(atBob.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T }),
      alice.page.expectTone(atAlice.streamId, 1000, { toleranceHz: TOL_HZ, timeoutMs: T }),
    ]);
    const [vBob, vAlice] = await Promise.all([
      bob.page.expectVideo(atBob.streamId, { minFrames: 10, timeoutMs: T }),
      alice.page.expectVideo(atAlice.streamId, { minFrames: 10, timeoutMs: T }),
    ]);
    for (const v of [vBob, vAlice]) assert.ok(v.frames >= 10 && v.width > 0 && v.height > 0, JSON.stringify(v));

    // nobody receives their own stream back
    for (const [p, own] of [
      [alice, alice.id],
      [bob, bob.id],
    ]) {
      const own_ = (await p.page.events()).filter((e) => e.type === "available" && e.participantId === own);
      assert.deepEqual(own_, [], `${p.page.name} got its own stream`);
    }
  })
);

test("three-party whisper: the caller never receives the supervisor", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const caller = await join("caller");
    const agent = await join("agent");
    const supervisor = await join("supervisor");
    const HZ = { caller: 440, agent: 1000, supervisor: 700 };
    const ALL = Object.values(HZ);
    await pb.addParticipant(session.id, agent.id, { sessionId: session.id });
    await pb.addParticipant(session.id, supervisor.id, { sessionId: session.id });
    await pb.addParticipant(session.id, caller.id, { participants: [{ participantId: agent.id }] });
    await connect(caller, agent, supervisor);
    await Promise.all([
      caller.page.publishTone({ freqHz: HZ.caller, alias: "caller", timeoutMs: T }),
      agent.page.publishTone({ freqHz: HZ.agent, alias: "agent", timeoutMs: T }),
      supervisor.page.publishTone({ freqHz: HZ.supervisor, alias: "supervisor", timeoutMs: T }),
    ]);

    // positive: every expected stream is announced with its metadata and carries its tone
    const expectFrom = async (rx, tx, name) => {
      const ev = await rx.page.waitForStream({ participantId: tx.id, timeoutMs: T });
      assertAvailable(ev, { participantId: tx.id, alias: name, mediaTypes: ["AUDIO"] });
      await rx.page.expectTone(ev.streamId, HZ[name], { toleranceHz: TOL_HZ, timeoutMs: T });
    };
    await Promise.all([
      expectFrom(agent, caller, "caller"),
      expectFrom(agent, supervisor, "supervisor"),
      expectFrom(supervisor, caller, "caller"),
      expectFrom(supervisor, agent, "agent"),
      expectFrom(caller, agent, "agent"),
    ]);

    // negative, over a fixed window, plus positive controls measured the same way: the agent's
    // and supervisor's pages DO show the supervisor's/caller's frequencies with this measurement.
    const [atCaller, atAgent, atSupervisor] = await Promise.all([
      receivedAudioSpectra(caller.page, ALL),
      receivedAudioSpectra(agent.page, ALL),
      receivedAudioSpectra(supervisor.page, ALL),
    ]);
    assert.ok(anyCarries(atAgent, HZ.supervisor) && anyCarries(atAgent, HZ.caller), `control, agent: ${JSON.stringify(atAgent)}`);
    assert.ok(anyCarries(atSupervisor, HZ.agent) && anyCarries(atSupervisor, HZ.caller), `control, supervisor: ${JSON.stringify(atSupervisor)}`);
    assert.ok(anyCarries(atCaller, HZ.agent), `caller hears the agent: ${JSON.stringify(atCaller)}`);
    assert.ok(!anyCarries(atCaller, HZ.supervisor), `caller's received audio has energy at the supervisor's ${HZ.supervisor} Hz: ${JSON.stringify(atCaller)}`);
    for (const s of atCaller) assert.ok(s.bands[HZ.supervisor] < 0.01, `caller track ${s.trackId}: ${JSON.stringify(s)}`);

    const callerEvents = await caller.page.events();
    const fromSupervisor = callerEvents.filter((e) => e.type === "available" && e.participantId === supervisor.id);
    assert.deepEqual(fromSupervisor, [], "caller got onStreamAvailable for the supervisor");
    const announced = callerEvents.filter((e) => e.type === "available").map((e) => e.participantId);
    assert.deepEqual([...new Set(announced)], [agent.id], `caller's announced publishers: ${JSON.stringify(callerEvents)}`);
    const stats = await caller.page.rtpStats("subscribe");
    const audioIn = stats.rtp.filter((s) => s.type === "inbound-rtp" && s.kind === "audio" && s.packets > 0);
    assert.equal(audioIn.length, 1, `caller's subscribe pc receives ${audioIn.length} audio streams: ${JSON.stringify(stats)}`);
  })
);

test("live re-wire by REST: nothing, then [alice], then nothing", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const alice = await join("alice");
    const bob = await join("bob");
    const watcher = await join("watcher"); // proves alice's tone is flowing while bob gets nothing
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    await pb.addParticipant(session.id, watcher.id, { sessionId: session.id });
    await pb.addParticipant(session.id, bob.id); // no body: member, no subscriptions
    await connect(alice, bob, watcher);
    await alice.page.publishTone({ freqHz: 440, alias: "alice-tone", timeoutMs: T });
    const atWatcher = await watcher.page.waitForStream({ participantId: alice.id, timeoutMs: T });
    await watcher.page.expectTone(atWatcher.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T });

    // 1. subscribed to nothing: bob receives nothing from alice
    const quiet = await receivedAudioSpectra(bob.page, [440]);
    assert.ok(!anyCarries(quiet, 440), `bob hears alice while subscribed to nothing: ${JSON.stringify(quiet)}`);
    assert.deepEqual((await bob.page.events()).filter((e) => e.type === "available"), [], "bob got a stream while subscribed to nothing");

    // 2. PUT [alice]: bob hears alice
    await pb.updateSubscriptions(session.id, bob.id, { participants: [{ participantId: alice.id }] });
    const ev = await bob.page.waitForStream({ participantId: alice.id, timeoutMs: T });
    assertAvailable(ev, { participantId: alice.id, alias: "alice-tone", mediaTypes: ["AUDIO"] });
    await bob.page.expectTone(ev.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T });

    // 3. PUT with no body (clear): alice's stream goes away at bob, and so does her tone
    await pb.updateSubscriptions(session.id, bob.id);
    await bob.page.waitForStreamUnavailable(ev.streamId, { timeoutMs: T });
    await until(
      async () => {
        const s = await receivedAudioSpectra(bob.page, [440], { durationMs: 600 });
        return { ok: !anyCarries(s, 440), s };
      },
      T,
      "alice's tone to stop reaching bob"
    );
    // the watcher is unaffected
    await watcher.page.expectTone(atWatcher.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T });
  })
);

test("AUDIO-only participant: her video is not forwarded", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const carol = await join("carol", { publishPermissions: ["AUDIO"] });
    const dave = await join("dave");
    await pb.addParticipant(session.id, carol.id, { sessionId: session.id });
    await pb.addParticipant(session.id, dave.id, { sessionId: session.id });
    await connect(carol, dave);
    const pub = await carol.page.publishTone({ freqHz: 700, alias: "carol-cam", video: true, timeoutMs: T });
    assert.deepEqual(
      pub.tracks.map((x) => x.kind).sort(),
      ["audio", "video"],
      "carol really offers audio+video"
    );
    assert.deepEqual(pub.mediaTypes, ["AUDIO"], `publish() result: ${JSON.stringify(pub)}`);

    const ev = await dave.page.waitForStream({ participantId: carol.id, timeoutMs: T });
    assertAvailable(ev, { participantId: carol.id, alias: "carol-cam", mediaTypes: ["AUDIO"] });
    await dave.page.expectTone(ev.streamId, 700, { toleranceHz: TOL_HZ, timeoutMs: T });

    await sleep(QUIET_MS); // observation window for the negative checks below
    const v = await dave.page.videoFramesDecoded(ev.streamId);
    assert.equal(v.videoTracks, 0, `dave's stream from carol has a video track: ${JSON.stringify(v)}`);
    assert.equal(v.frames, 0, `dave decoded video from carol: ${JSON.stringify(v)}`);
    const stats = await dave.page.rtpStats("subscribe");
    const videoIn = stats.rtp.filter((s) => s.type === "inbound-rtp" && s.kind === "video" && (s.packets > 0 || s.framesDecoded > 0));
    assert.deepEqual(videoIn, [], `dave's subscribe pc receives video: ${JSON.stringify(stats)}`);
    const evs = (await dave.page.events()).filter((e) => e.type === "available");
    for (const e of evs) assert.ok(!e.tracks.includes("video"), `video track announced: ${JSON.stringify(e)}`);
  })
);

test("removal: DELETE alice from the session makes her stream unavailable at bob", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const alice = await join("alice");
    const bob = await join("bob");
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    await pb.addParticipant(session.id, bob.id, { sessionId: session.id });
    await connect(alice, bob);
    await alice.page.publishTone({ freqHz: 440, alias: "alice-tone", timeoutMs: T });
    const ev = await bob.page.waitForStream({ participantId: alice.id, timeoutMs: T });
    assertAvailable(ev, { participantId: alice.id, alias: "alice-tone", mediaTypes: ["AUDIO"] });
    await bob.page.expectTone(ev.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T });

    await pb.removeParticipant(session.id, alice.id);
    await bob.page.waitForStreamUnavailable(ev.streamId, { timeoutMs: T });
    await until(
      async () => {
        const s = await receivedAudioSpectra(bob.page, [440], { durationMs: 600 });
        return { ok: !anyCarries(s, 440), s };
      },
      T,
      "alice's tone to stop reaching bob"
    );
  })
);

// The page's first subscribe offer fails to apply (its setRemoteDescription throws once, as it
// may in a browser under stress), so the SDK sends no answer: the server offers the same change
// again (a new sdpRevision) after its answer timeout, the SDK applies and answers that one, and
// the media arrives.
async function failFirstRemoteOffer(p) {
  await p.evaluate(() => {
    window.__failedOffers = 0;
    const orig = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
      if (window.__failedOffers === 0 && desc && desc.type === "offer") {
        window.__failedOffers += 1;
        return Promise.reject(new DOMException("injected by the test", "OperationError"));
      }
      return orig.call(this, desc, ...rest);
    };
  });
}

test("an unanswered subscribe offer: the server offers again and the media arrives", { timeout: 90000 }, (t) =>
  scenario(t, async ({ session, join, connect }) => {
    const alice = await join("alice");
    const bob = await join("bob");
    await failFirstRemoteOffer(bob.page);
    await pb.addParticipant(session.id, alice.id, { sessionId: session.id });
    await pb.addParticipant(session.id, bob.id, { sessionId: session.id });
    await connect(alice, bob);
    await alice.page.publishTone({ freqHz: 440, alias: "alice-cam", timeoutMs: T });
    // The repeat comes 10 s after the unanswered offer: allow for it on top of the usual bound.
    const atBob = await bob.page.waitForStream({ participantId: alice.id, timeoutMs: T + 12000 });
    await bob.page.expectTone(atBob.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T + 12000 });
    const failed = await bob.page.evaluate(() => window.__failedOffers);
    assert.equal(failed, 1, "the page failed one offer");
    const offers = (await bob.page.wsLog()).filter((x) => x.event === "recv" && x.method === "sdpOffer");
    assert.ok(offers.length >= 2, `offered again: ${offers.length} sdpOffer notifications`);
  })
);
