// Cross-browser call (issue 23): Bandwidth's unmodified browser SDK in headless Firefox ESR
// (driven over WebDriver BiDi by puppeteer-core, see firefox.mjs) and in headless Chromium
// (Playwright, see runner.mjs), both against a real patchbay server, in one call.
//
// Each page publishes a WebAudio tone of its own frequency plus its browser's fake camera, and
// is subscribed to the other. Every assertion is about what a page actually DECODED: the tone
// frequency measured with WebAudio on the received stream, and video frames painted from it
// (requestVideoFrameCallback), with their size.
//
//   cd tests/interop/browser && node --test firefox.test.mjs     (after run.sh once)
//   FIREFOX_PATH=/path/to/firefox HARNESS_VERBOSE=1 node --test firefox.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, instrumentPeerConnections } from "./runner.mjs";
import { launchFirefox } from "./firefox.mjs";
import { startPatchbay } from "./server.mjs";

const T = 20000; // bound for every "eventually" condition
const TOL_HZ = 30;
// Neither tone is near the other nor near 1000 Hz (Firefox's fake microphone, not published here).
const HZ = { firefox: 700, chromium: 1500 };

let pb; // patchbay
let chromium; // runner.mjs launchBrowser()
let firefox; // firefox.mjs launchFirefox()

before(async () => {
  const [p, c, f] = await Promise.allSettled([startPatchbay(), launchBrowser(), launchFirefox()]);
  pb = p.value;
  chromium = c.value;
  firefox = f.value;
  const failed = [p, c, f].find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
});

after(async () => {
  await Promise.allSettled([firefox?.close(), chromium?.close()]);
  await pb?.stop();
});

// Every SDP the page's SDK sent or received, in order (from the page's signalling log).
async function sdps(page) {
  const out = [];
  for (const x of await page.wsLog().catch(() => [])) {
    let m;
    try {
      m = JSON.parse(x.raw);
    } catch {
      continue;
    }
    const p = m.params || {};
    const r = m.result || {};
    for (const [what, sdp] of [
      [`${x.event} ${m.method || `result of #${m.id}`} sdpOffer`, p.sdpOffer],
      [`${x.event} ${m.method || `result of #${m.id}`} sdpAnswer`, p.sdpAnswer ?? r.sdpAnswer],
    ]) {
      if (typeof sdp === "string") out.push(`>>> ${what}\n${sdp.trim()}`);
    }
  }
  return out.join("\n");
}

// The codecs of the RTP that reached the page: for every inbound-rtp stream with packets on the
// page's peer connections (recorded by instrumentPeerConnections), "kind mimeType".
function receivedCodecs(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const pc of window.__pcs || []) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || !s.packetsReceived) return;
        const c = s.codecId && stats.get(s.codecId);
        out.push(`${s.kind} ${c ? c.mimeType : "?"}`);
      });
    }
    return out.sort();
  });
}

async function diagnostics(pages) {
  const diag = [];
  for (const p of pages) {
    diag.push(
      `--- page ${p.name} (participant ${p.participantId})`,
      `events: ${JSON.stringify(await p.events().catch((e) => String(e)))}`,
      `remote streams: ${JSON.stringify(await p.remoteStreams().catch((e) => String(e)))}`,
      `publish pc: ${JSON.stringify(await p.rtpStats("publish").catch((e) => String(e)))}`,
      `subscribe pc: ${JSON.stringify(await p.rtpStats("subscribe").catch((e) => String(e)))}`,
      `console (last 20): ${p.console.slice(-20).join(" | ")}`,
      `SDP:\n${await sdps(p)}`
    );
  }
  return diag.join("\n");
}

test("Firefox and Chromium in one call: each hears the other's tone and decodes its video", { timeout: 120000 }, async (t) => {
  t.diagnostic(`${firefox.version}; chromium/${chromium.browser.version()}`);
  const session = await pb.createSession("firefox-chromium");
  const pages = [];
  const t0 = Date.now();
  try {
    const join = async (browser, tag) => {
      const { participant, token } = await pb.createParticipant({ tag });
      const page = await browser.newParticipant(tag);
      page.participantId = participant.id;
      pages.push(page);
      await instrumentPeerConnections(page);
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      return { id: participant.id, token, page };
    };
    const ff = await join(firefox, "firefox");
    const cr = await join(chromium, "chromium");

    // The Firefox page really is Firefox, and the Chromium page Chromium.
    const ua = async (p) => p.page.evaluate(() => navigator.userAgent);
    assert.match(await ua(ff), /Firefox\/\d+/, "firefox page's user agent");
    assert.doesNotMatch(await ua(cr), /Firefox/, "chromium page's user agent");

    await Promise.all([ff, cr].map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T })));
    const [pubF, pubC] = await Promise.all([
      ff.page.publishTone({ freqHz: HZ.firefox, alias: "firefox-cam", video: true, timeoutMs: T }),
      cr.page.publishTone({ freqHz: HZ.chromium, alias: "chromium-cam", video: true, timeoutMs: T }),
    ]);
    assert.deepEqual([...pubF.mediaTypes].sort(), ["AUDIO", "VIDEO"], `firefox publish(): ${JSON.stringify(pubF)}`);
    assert.deepEqual([...pubC.mediaTypes].sort(), ["AUDIO", "VIDEO"], `chromium publish(): ${JSON.stringify(pubC)}`);

    const [atChromium, atFirefox] = await Promise.all([
      cr.page.waitForStream({ participantId: ff.id, timeoutMs: T }),
      ff.page.waitForStream({ participantId: cr.id, timeoutMs: T }),
    ]);
    for (const [ev, from, alias] of [
      [atChromium, ff, "firefox-cam"],
      [atFirefox, cr, "chromium-cam"],
    ]) {
      assert.equal(ev.participantId, from.id, JSON.stringify(ev));
      assert.equal(ev.alias, alias, JSON.stringify(ev));
      assert.deepEqual([...ev.mediaTypes].sort(), ["AUDIO", "VIDEO"], JSON.stringify(ev));
    }

    // Decoded audio: each page hears the other's tone (and it is not its own).
    const [toneAtChromium, toneAtFirefox] = await Promise.all([
      cr.page.expectTone(atChromium.streamId, HZ.firefox, { toleranceHz: TOL_HZ, timeoutMs: T }),
      ff.page.expectTone(atFirefox.streamId, HZ.chromium, { toleranceHz: TOL_HZ, timeoutMs: T }),
    ]);
    t.diagnostic(`chromium hears firefox: ${JSON.stringify(toneAtChromium)}`);
    t.diagnostic(`firefox hears chromium: ${JSON.stringify(toneAtFirefox)}`);

    // Decoded video: frames painted from the other browser's camera.
    const [videoAtChromium, videoAtFirefox] = await Promise.all([
      cr.page.expectVideo(atChromium.streamId, { minFrames: 10, timeoutMs: T }),
      ff.page.expectVideo(atFirefox.streamId, { minFrames: 10, timeoutMs: T }),
    ]);
    for (const v of [videoAtChromium, videoAtFirefox]) assert.ok(v.frames >= 10 && v.width > 0 && v.height > 0, JSON.stringify(v));
    t.diagnostic(`chromium sees firefox: ${JSON.stringify(videoAtChromium)}`);
    t.diagnostic(`firefox sees chromium: ${JSON.stringify(videoAtFirefox)}`);
    t.diagnostic(`codecs received: chromium ${JSON.stringify(await receivedCodecs(cr.page))}, firefox ${JSON.stringify(await receivedCodecs(ff.page))}`);

    // The frames keep coming (not a burst that stopped): more are painted a while later.
    const [later, laterF] = await Promise.all([
      cr.page.videoFramesDecoded(atChromium.streamId, { durationMs: 1000 }),
      ff.page.videoFramesDecoded(atFirefox.streamId, { durationMs: 1000 }),
    ]);
    assert.ok(later.frames > videoAtChromium.frames, `chromium's video from firefox stalled: ${JSON.stringify([videoAtChromium, later])}`);
    assert.ok(laterF.frames > videoAtFirefox.frames, `firefox's video from chromium stalled: ${JSON.stringify([videoAtFirefox, laterF])}`);

    // Nobody receives its own stream back.
    for (const x of [ff, cr]) {
      const own = (await x.page.events()).filter((e) => e.type === "available" && e.participantId === x.id);
      assert.deepEqual(own, [], `${x.page.name} got its own stream`);
    }
  } catch (e) {
    e.message += `\n\n[after ${Date.now() - t0} ms]\n${await diagnostics(pages)}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
