// A lossy subscriber link (issue 21, "3 % random loss (nftables): NACK/RTX keep freezes under
// 0.5 s per minute; keyframe requests bounded"), in Chromium with Bandwidth's unmodified SDK:
// a publisher (the 440 Hz tone and the fake camera) on the host and one subscriber, a page of a
// second Chromium inside a network namespace that drops 3 % of the packets it receives at
// random (netns.mjs `lossIn: 3`, an nftables `numgen random` rule; no rate shaping). patchbay
// runs with its default flags: no subscriber estimation; lost video packets are resent over RTX
// from a 1 s window per subscriber, always.
//
// After the call has settled (the subscriber decodes the tone and video, then 10 s more), over
// 60 s of call, from what the pages' own connections counted (getStats()):
// - the subscriber's video keeps playing: it decodes at least 90 % of the frames the publisher
//   encoded, and its totalFreezesDuration grows by under 2 s (FREEZE_MAX_S: the goal
//   is 0.5 s, met in every run measured; the test keeps a margin for a CPU-starved Chromium on
//   a shared 2-core machine, and still fails by twenty times without NACK);
// - NACK/RTX is what repairs it: the subscriber sent NACKs and received retransmitted packets
//   (inbound-rtp retransmittedPacketsReceived, which this Chromium reports);
// - keyframe requests stay bounded: the publisher encodes at most 6 keyframes in the minute
//   (see KEYFRAMES_MAX for the figures this bound comes from);
// - the audio, which is not retransmitted, conceals under 6 % of its samples (AUDIO_CONCEALED_MAX);
// - the loss rule really dropped packets toward the subscriber (its nftables counter).
//
// Showing it can fail (not part of a normal run): LOSSY_LINK_NO_NACK=1 removes the plain
// `a=rtcp-fb:PT nack` lines (not `nack pli`) from every offer the subscriber page receives, so
// its Chromium never NACKs and must ask for keyframes instead: measured 42.9 and 48.9 s of
// freezes a minute, 238-311 of 1,200 frames decoded, 14-16 keyframes; the test fails on the
// freeze assertion. With NACK/RTX (seven runs): 0, 0, 0, 0, 0.21, 0.28 and 0.42 s of freezes,
// 1,199-1,201 of 1,200 frames decoded, 95-131 retransmitted packets received. LOSSY_LINK_LOSS=P sets another loss percentage
// (0 gives the figures of a clean link; the loss and NACK assertions then fail by design).
//
// Needs root, `ip`, `tc` and `nft` (run.sh installs iproute2 and nftables); it fails, saying
// why, without them. Everything it adds to the system is removed after, also on failure.
//
//   cd tests/interop/browser && node --test lossy_link.test.mjs

import { test } from "node:test";
import assert from "node:assert/strict";
import { instrumentPeerConnections, launchBrowser } from "./runner.mjs";
import { netnsUnavailable } from "./netns.mjs";
import { frameGaps, joinSession, of, openPageInNamespace, pageStats, publisherFigures, sleep, startLinkServer, subscriberFigures } from "./linkstats.mjs";

const T = 30000; // bound for every "eventually" condition
const LOSS_PERCENT = process.env.LOSSY_LINK_LOSS === undefined ? 3 : Number(process.env.LOSSY_LINK_LOSS);
const NO_NACK = process.env.LOSSY_LINK_NO_NACK === "1";
const SETTLE_S = 10;
const WINDOW_S = 60;
// Per minute. The issue's goal is 0.5 s: seven runs here gave 0-0.42 s (BENCHMARKS.md, "A
// lossy link"), too close to the goal for a test on a shared machine whose Chromium is starved
// of CPU now and then; without NACK the freezes are 43-49 s, so 2 s still tells the two apart.
const FREEZE_MAX_S = 2;
// The publisher's keyframes per minute. Measured on this machine (2026-12-07, debug build, one
// run each unless said): 0 over a clean link (LOSSY_LINK_LOSS=0); 0 in each of seven runs at 3 %
// loss with NACK/RTX; 14 and 16 with NACK removed (LOSSY_LINK_NO_NACK=1: every frame with a lost
// packet waits for a keyframe). The publisher's Chromium also encodes the odd keyframe nobody
// asked for (thin_link.bench.mjs baselines: 0-2 per 30 s, BENCHMARKS.md), so up to about 4 a
// minute can come without any request; 6 leaves that room plus a PLI or two that NACK could not
// save, and is well under the 14-16 of a loss-driven keyframe storm.
const KEYFRAMES_MAX = 6;
// Audio is not retransmitted, so each lost packet is concealed. Measured 2.7-3.4 % concealed at
// 3 % loss (seven runs), 0.1 % on a clean link; 6 % (twice the loss rate) catches a jitter buffer
// that conceals well beyond what was lost.
const AUDIO_CONCEALED_MAX = 0.06;
const FRAMES_DECODED_MIN = 0.9; // of the frames the publisher encoded over the window

/** Removes plain NACK feedback from every remote description the page applies (LOSSY_LINK_NO_NACK). */
function withoutNack(page) {
  return page.evaluate(() => {
    window.__nackLinesRemoved = 0;
    const orig = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
      if (desc && typeof desc.sdp === "string") {
        const sdp = desc.sdp.replace(/^a=rtcp-fb:\d+ nack\r?\n/gm, () => {
          window.__nackLinesRemoved++;
          return "";
        });
        desc = { type: desc.type, sdp };
      }
      return orig.call(this, desc, ...rest);
    };
  });
}

test(`a subscriber losing ${LOSS_PERCENT} % of its packets: NACK/RTX keep its video, the publisher no keyframe storm`, { timeout: 300000 }, async () => {
  const why = netnsUnavailable();
  assert.equal(why, null, `this test needs a network namespace: ${why}`);
  const cleanup = [];
  try {
    const { ns, pb } = await startLinkServer({ lossIn: LOSS_PERCENT }, {}, cleanup);
    const host = await launchBrowser();
    cleanup.push(() => host.close());

    const session = await pb.createSession("lossy-link");
    const pubP = await joinSession(pb, session, "publisher");
    const subP = await joinSession(pb, session, "lossy");

    const pub = await host.newParticipant("publisher");
    await instrumentPeerConnections(pub);
    const sub = await openPageInNamespace(ns, pb, { tag: "lossy", token: subP.token, timeoutMs: T, beforeConnect: NO_NACK ? withoutNack : undefined }, cleanup);
    await pub.connect({ websocketUrl: pb.websocketUrl, token: pubP.token, timeoutMs: T });

    await pub.publishTone({ freqHz: 440, alias: "publisher", video: true, timeoutMs: T });
    const atSub = await sub.waitForStream({ participantId: pubP.id, timeoutMs: T });
    await sub.expectTone(atSub.streamId, 440, { toleranceHz: 30, timeoutMs: T });
    await sub.expectVideo(atSub.streamId, { minFrames: 10, timeoutMs: T });
    if (NO_NACK) {
      const removed = await sub.evaluate(() => window.__nackLinesRemoved);
      assert.ok(removed > 0, "LOSSY_LINK_NO_NACK=1 removed no nack line from the subscriber's offers");
    }
    await sleep(SETTLE_S * 1000);

    // The window: what both pages counted over 60 s, and what the loss rule dropped.
    const s0 = { pub: await pageStats(pub), sub: await pageStats(sub) };
    const link0 = await ns.stats();
    await frameGaps(sub, true);
    await sleep(WINDOW_S * 1000);
    const gaps = await frameGaps(sub);
    const s1 = { pub: await pageStats(pub), sub: await pageStats(sub) };
    const link1 = await ns.stats();
    const subFig = subscriberFigures(s0.sub, s1.sub, WINDOW_S);
    const pubFig = publisherFigures(s0.pub, s1.pub, WINDOW_S, []);
    const lossDropped = link1.lossDropped.in - link0.lossDropped.in;
    const rtxReported = of(s1.sub.inbound, "video").some((s) => s.retransmittedPacketsReceived !== undefined);
    const q = await pb.rest("GET", `/sessions/${session.id}/participants/${subP.id}/quality`);
    const figures = JSON.stringify({
      lossPercent: LOSS_PERCENT,
      noNack: NO_NACK,
      lossDropped,
      subscriber: { ...subFig, maxFrameGapMs: gaps.length ? Math.max(...gaps.map((g) => g.maxGapMs)) : null },
      publisher: pubFig,
      patchbaySubscribe: q.subscribe && { nacksReceived: q.subscribe.nacksReceived, plisReceived: q.subscribe.plisReceived, keyframeRequestsForwarded: q.subscribe.keyframeRequestsForwarded, keyframeRequestsSuppressed: q.subscribe.keyframeRequestsSuppressed, lossFraction: q.subscribe.lossFraction, packetsLost: q.subscribe.packetsLost },
    });
    console.log(`lossy link figures: ${figures}`);

    assert.ok(lossDropped > 0, `the loss rule dropped packets toward the subscriber: ${figures}`);
    assert.ok(pubFig.framesEncoded > 0, `the publisher encoded video: ${figures}`);
    assert.ok(subFig.totalFreezesDuration < FREEZE_MAX_S, `the subscriber's video froze under ${FREEZE_MAX_S} s in ${WINDOW_S} s: ${figures}`);
    assert.ok(subFig.videoFramesDecoded >= FRAMES_DECODED_MIN * pubFig.framesEncoded, `the subscriber decoded at least ${FRAMES_DECODED_MIN * 100} % of the frames encoded: ${figures}`);
    assert.ok(subFig.nackSent > 0, `the subscriber sent NACKs: ${figures}`);
    if (rtxReported) assert.ok(subFig.videoRetransmittedPacketsReceived > 0, `the subscriber received retransmissions: ${figures}`);
    else console.log("lossy link: this Chromium does not report retransmittedPacketsReceived; not asserted");
    assert.ok(pubFig.keyFramesEncoded <= KEYFRAMES_MAX, `the publisher encoded at most ${KEYFRAMES_MAX} keyframes in ${WINDOW_S} s: ${figures}`);
    assert.ok(subFig.audioSamples > 0, `the subscriber received audio: ${figures}`);
    assert.ok(subFig.audioConcealment < AUDIO_CONCEALED_MAX, `the subscriber's audio concealed under ${AUDIO_CONCEALED_MAX * 100} %: ${figures}`);
  } finally {
    for (const f of cleanup.reverse()) await f().catch((e) => console.error(`cleanup: ${e.message}`));
  }
});
