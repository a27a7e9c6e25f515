// A thin subscriber (issue 21, audio first), in Chromium with Bandwidth's unmodified SDK:
// a publisher (the 440 Hz tone and the fake camera) and two subscribers, all subscribed
// session-wide; the thin one is a page of a second Chromium inside a network namespace whose
// veth delivers 300 kbit/s toward it once media flows (netns.mjs: `tc tbf`, 200 ms of queue). patchbay runs with
// --subscriber-bwe true (each subscriber's link estimated; off by default).
//
// What must hold, from what the pages' own connections counted (getStats()):
// - the thin subscriber's audio comes through: under 3 % of it concealed over 30 s, where
//   sending it everything conceals 4.5–6.7 % (BENCHMARKS.md, "A thin subscriber");
// - the publisher is not made to send keyframes for it: at most 4 in those 30 s, where
//   passing its requests on makes 9–10;
// - the clean subscriber keeps decoding video in every 5 s of the window.
// And, from REST, that this is the allocation at work: the thin subscriber's video is paused and
// its quality level reads poor; the clean subscriber's is not paused; /metrics counts the pause.
// The backend, which opted in, hears onQualityChanged from good to poor for the thin one.
//
// Needs root, `ip`, `tc` and `nft` (run.sh installs iproute2 and nftables); it fails, saying
// why, without them. Everything it adds to the system is removed after, also on failure.
//
//   cd tests/interop/browser && node --test thin_link.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { instrumentPeerConnections, launchBrowser } from "./runner.mjs";
import { startReceiver } from "./receiver.mjs";
import { netnsUnavailable } from "./netns.mjs";
import { joinSession, metricTotal, of, openPageInNamespace, pageStats, publisherFigures, sleep, startLinkServer, subscriberFigures, sum, until } from "./linkstats.mjs";

const T = 30000; // bound for every "eventually" condition
const WINDOW_S = 30;
const SLICE_S = 5;

test("a thin subscriber gets its audio, the publisher no keyframe storm, the clean subscriber its video", { timeout: 240000 }, async () => {
  const why = netnsUnavailable();
  assert.equal(why, null, `this test needs a network namespace: ${why}`);
  const cleanup = [];
  try {
    const { ns, pb } = await startLinkServer({ queueMs: 200 }, { args: ["--subscriber-bwe", "true"] }, cleanup);
    const host = await launchBrowser();
    cleanup.push(() => host.close());

    // The backend asks for onQualityChanged; the webhooks go to a real receiver.
    const rx = await startReceiver({ secret: pb.webhookSecret });
    cleanup.push(() => rx.close());
    await pb.rest("PUT", "/webhooks", { qualityEvents: true });

    const session = await pb.createSession("thin-link");
    const join = (tag) => joinSession(pb, session, tag, { callbackUrl: rx.url });
    const [pubP, cleanP, thinP] = [await join("publisher"), await join("clean"), await join("thin")];
    const quality = (p) => pb.rest("GET", `/sessions/${session.id}/participants/${p.id}/quality`);

    const pub = await host.newParticipant("publisher");
    const clean = await host.newParticipant("clean");
    for (const p of [pub, clean]) await instrumentPeerConnections(p);

    // The thin page loads and connects over the unshaped link; the shaping starts once media
    // flows and its quality level has read good (the scenario's window starts after the pause).
    const thin = await openPageInNamespace(ns, pb, { tag: "thin", token: thinP.token, timeoutMs: T }, cleanup);
    await clean.connect({ websocketUrl: pb.websocketUrl, token: cleanP.token, timeoutMs: T });
    await pub.connect({ websocketUrl: pb.websocketUrl, token: pubP.token, timeoutMs: T });

    await pub.publishTone({ freqHz: 440, alias: "publisher", video: true, timeoutMs: T });
    const atClean = await clean.waitForStream({ participantId: pubP.id, timeoutMs: T });
    await clean.expectTone(atClean.streamId, 440, { toleranceHz: 30, timeoutMs: T });
    await clean.expectVideo(atClean.streamId, { minFrames: 10, timeoutMs: T });
    await thin.waitForStream({ participantId: pubP.id, timeoutMs: T });

    // Before the link thins, the thin subscriber's level reads good long enough for the
    // process's 5 s sampling to have taken it (the first level measured is no change).
    let goodSince = null;
    await until(
      async () => {
        const q = await quality(thinP);
        goodSince = q.level === "good" ? (goodSince ?? Date.now()) : null;
        return { ok: goodSince !== null && Date.now() - goodSince > 11000, seen: { level: q.level } };
      },
      60000,
      "the thin subscriber's level good for 11 s on the unshaped link"
    );
    await ns.setRate({ rateIn: 300_000 });

    // The allocation notices the thin link: its video is paused, its level poor.
    await until(
      async () => {
        const q = await quality(thinP);
        return { ok: q.subscribe?.pausedVideoTracks >= 1 && q.level === "poor", seen: q.subscribe && { level: q.level, estimateBps: q.subscribe.estimateBps, paused: q.subscribe.pausedVideoTracks, loss: q.subscribe.lossFraction } };
      },
      T,
      "the thin subscriber's video paused and its level poor"
    );

    // The window: what every page counted over 30 s, the clean page sampled every 5 s.
    const pages = { publisher: pub, clean, thin };
    const snap = async () => Object.fromEntries(await Promise.all(Object.entries(pages).map(async ([k, p]) => [k, await pageStats(p)])));
    const s0 = await snap();
    const cleanFrames = (s) => sum(of(s.inbound, "video"), "framesDecoded");
    const slices = [];
    let previous = s0.clean;
    for (let i = 0; i < WINDOW_S / SLICE_S; i++) {
      await sleep(SLICE_S * 1000);
      const now = await pageStats(clean);
      slices.push(cleanFrames(now) - cleanFrames(previous));
      previous = now;
    }
    const s1 = await snap();
    const thinFig = subscriberFigures(s0.thin, s1.thin, WINDOW_S);
    const pubFig = publisherFigures(s0.publisher, s1.publisher, WINDOW_S, []);
    const cleanQ = await quality(cleanP);
    const figures = JSON.stringify({ thin: thinFig, publisher: pubFig, cleanFramesPer5s: slices, cleanSubscribe: cleanQ.subscribe && { paused: cleanQ.subscribe.pausedVideoTracks, estimateBps: cleanQ.subscribe.estimateBps } });

    assert.ok(thinFig.audioSamples > 0, `the thin subscriber received audio: ${figures}`);
    assert.ok(thinFig.audioConcealment < 0.03, `the thin subscriber's audio comes through (under 3 % concealed): ${figures}`);
    assert.ok(pubFig.keyFramesEncoded <= 4, `the publisher sent at most 4 keyframes in ${WINDOW_S} s: ${figures}`);
    assert.ok(slices.every((n) => n > 0), `the clean subscriber decoded video in every ${SLICE_S} s: ${figures}`);
    assert.equal(cleanQ.subscribe?.pausedVideoTracks, 0, `the clean subscriber's video is not paused: ${figures}`);
    // The operator sees it too: the shards count the pause and the requests held back.
    const pauses = await metricTotal(pb, "patchbay_media_video_pauses_total");
    assert.ok(pauses >= 1, `a pause counted in /metrics: patchbay_media_video_pauses_total ${pauses}`);
    console.log(`thin link figures: ${figures}`);

    // The backend, which opted in, heard the thin subscriber's level go from good to poor
    // (onQualityChanged, from the process's 5 s sampling once two samples agree).
    const changes = () => rx.accepted.filter((a) => a.json?.event === "onQualityChanged" && a.json.participantId === thinP.id).map((a) => a.json);
    await rx.waitFor(() => changes().some((e) => e.previousLevel === "good" && e.level === "poor"), T, "onQualityChanged from good to poor for the thin subscriber");
    const change = changes().find((e) => e.level === "poor");
    assert.equal(change.sessionId, session.id, JSON.stringify(change));
    assert.ok(!rx.accepted.some((a) => a.json?.event === "onQualityChanged" && a.json.participantId === cleanP.id && a.json.level === "poor"), "the clean subscriber was never reported poor");
  } finally {
    for (const f of cleanup.reverse()) await f().catch((e) => console.error(`cleanup: ${e.message}`));
  }
});
