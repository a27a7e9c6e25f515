// Stream-alias-level forwarding in Chromium with Bandwidth's unmodified browser SDK (issue 13,
// item 5). A presenter publishes two MediaStreams with the SDK's publish(stream, handler, alias):
// "camera" (a 440 Hz tone and a red canvas) and "screen" (a 1000 Hz tone and a blue canvas). A
// viewer is subscribed by REST to the presenter's "camera" alias only, then re-wired to "screen",
// to both, and back to "camera"; a watcher subscribed to the whole session is the positive
// control (both streams flow all along, measured the same way).
//
// Evidence is what the viewer's page DECODES: the tone frequency (WebAudio FFT) and the colour of
// the painted video frames (canvas sampling), over every track the page's peer connections
// receive, not only the streams the SDK announced. Each phase first waits for the renegotiation to
// take effect, then holds a fixed window in which the unsubscribed stream's tone and colour must
// be absent from every received track while the subscribed ones are present.
//
//   cargo build && cd tests/interop/browser && bash run.sh           # everything
//   cd tests/interop/browser && node --test alias.test.mjs            # this file (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser, instrumentPeerConnections, receivedAudioSpectra, anyCarries, carries } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const T = 15000; // bound for every "eventually" condition
const TOL_HZ = 30;
const STREAMS = {
  camera: { hz: 440, rgb: [220, 30, 30], name: "red" },
  screen: { hz: 1000, rgb: [30, 30, 220], name: "blue" },
};
const ALIASES = Object.keys(STREAMS);
const ALL_HZ = ALIASES.map((a) => STREAMS[a].hz);

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

// Publishes a MediaStream of a tone and a canvas painted `rgb` (repainted 30 times a second, a
// corner pixel alternating so that every capture is a new frame) with `alias`, through the SDK.
function publishToneAndColour(page, alias, { hz, rgb }) {
  return page.evaluate(
    async ({ alias, hz, rgb, timeoutMs }) => {
      const canvas = document.createElement("canvas");
      canvas.width = 320;
      canvas.height = 240;
      document.body.appendChild(canvas);
      const g = canvas.getContext("2d");
      let n = 0;
      const paint = () => {
        g.fillStyle = `rgb(${rgb.join(",")})`;
        g.fillRect(0, 0, canvas.width, canvas.height);
        g.fillStyle = n++ % 2 ? "rgb(0,0,0)" : "rgb(255,255,255)";
        g.fillRect(0, 0, 2, 2);
      };
      paint();
      (window.__painters = window.__painters || []).push(setInterval(paint, 33));
      const video = canvas.captureStream(30).getVideoTracks()[0];
      const tone = window.harness.localStreamObject(window.harness.localToneMediaStream(hz));
      const stream = new MediaStream([...tone.getAudioTracks(), video]);
      return window.harness.publishStream(stream, alias, { timeoutMs });
    },
    { alias, hz, rgb, timeoutMs: T }
  );
}

// For every video track the page's peer connections currently receive (transceiver direction
// recvonly/sendrecv): the mean colour of one frame painted after the call, sampled on a canvas.
// -> [{ trackId, mid, painted, rgb }]; painted false when no frame came within waitMs.
function receivedVideoColours(page, { waitMs = 3000 } = {}) {
  return page.evaluate(
    async ({ waitMs }) => {
      const box = document.getElementById("media") || document.body;
      const out = [];
      const probes = [];
      for (const pc of window.__pcs || []) {
        if (pc.connectionState === "closed") continue;
        for (const tr of pc.getTransceivers()) {
          const t = tr.receiver.track;
          if (!t || t.kind !== "video" || t.readyState !== "live") continue;
          if (!["recvonly", "sendrecv"].includes(tr.currentDirection)) continue;
          probes.push(
            (async () => {
              const el = document.createElement("video");
              el.muted = true;
              el.playsInline = true;
              el.srcObject = new MediaStream([t]);
              box.appendChild(el);
              el.play().catch(() => {});
              // Two painted frames: the first may predate the call (a held last frame).
              const painted = await new Promise((resolve) => {
                let frames = 0;
                const timer = setTimeout(() => resolve(false), waitMs);
                const onFrame = () => {
                  if (++frames >= 2) {
                    clearTimeout(timer);
                    resolve(true);
                  } else el.requestVideoFrameCallback(onFrame);
                };
                el.requestVideoFrameCallback(onFrame);
              });
              let rgb = null;
              if (painted && el.videoWidth > 0) {
                const c = document.createElement("canvas");
                c.width = 32;
                c.height = 24;
                const g = c.getContext("2d", { willReadFrequently: true });
                g.drawImage(el, 0, 0, c.width, c.height);
                const px = g.getImageData(0, 0, c.width, c.height).data;
                const sum = [0, 0, 0];
                for (let i = 0; i < px.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += px[i + k];
                rgb = sum.map((s) => Math.round(s / (px.length / 4)));
              }
              el.srcObject = null;
              el.remove();
              out.push({ trackId: t.id, mid: tr.mid, painted, rgb });
            })()
          );
        }
      }
      await Promise.all(probes);
      return out;
    },
    { waitMs }
  );
}

// A decoded frame "shows" a stream's colour when its mean is within 60 of it on every channel.
const shows = (sample, { rgb }) => sample.rgb !== null && sample.rgb.every((v, k) => Math.abs(v - rgb[k]) <= 60);
const anyShows = (samples, stream) => samples.some((s) => shows(s, stream));

// The streams the page's SDK currently holds as available (after onStreamAvailable and before
// onStreamUnavailable), as {alias: streamId}.
async function availableByAlias(page) {
  const state = new Map();
  for (const e of await page.events()) {
    if (e.type === "available") state.set(e.streamId, e);
    else if (e.type === "unavailable") state.delete(e.streamId);
  }
  return Object.fromEntries([...state.values()].map((e) => [e.alias, e]));
}

test("alias subscription: the viewer decodes the subscribed alias only, across re-wires (camera, screen, both, camera)", { timeout: 240000 }, async (t) => {
  const pages = [];
  const session = await pb.createSession("alias");
  const t0 = Date.now();
  try {
    const join = async (tag) => {
      const { participant, token } = await pb.createParticipant({ tag });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await instrumentPeerConnections(page);
      page.participantId = participant.id;
      return { id: participant.id, token, page };
    };
    const presenter = await join("presenter");
    const viewer = await join("viewer");
    const watcher = await join("watcher");
    const only = (aliases) => ({ participants: [{ participantId: presenter.id, streamAliases: aliases }] });
    await pb.addParticipant(session.id, presenter.id); // member, subscribed to nothing
    await pb.addParticipant(session.id, watcher.id, { sessionId: session.id });
    await pb.addParticipant(session.id, viewer.id, only(["camera"]));
    await Promise.all([presenter, viewer, watcher].map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T })));

    for (const alias of ALIASES) {
      const pub = await publishToneAndColour(presenter.page, alias, STREAMS[alias]);
      assert.equal(pub.alias, alias, JSON.stringify(pub));
      assert.deepEqual([...pub.mediaTypes].sort(), ["AUDIO", "VIDEO"], JSON.stringify(pub));
    }

    // The watcher (whole session) receives both streams, announced with their aliases, and
    // decodes each one's tone and colour: the measurement works and both streams flow.
    for (const alias of ALIASES) {
      const ev = await watcher.page.waitForStream({ participantId: presenter.id, alias, timeoutMs: T });
      await watcher.page.expectTone(ev.streamId, STREAMS[alias].hz, { toleranceHz: TOL_HZ, timeoutMs: T });
      await watcher.page.expectVideo(ev.streamId, { minFrames: 10, timeoutMs: T });
    }
    await until(
      async () => {
        const v = await receivedVideoColours(watcher.page);
        return { ok: ALIASES.every((a) => anyShows(v, STREAMS[a])), v };
      },
      T,
      "the watcher decoding both colours"
    );

    const phases = [["camera"], ["screen"], ["camera", "screen"], ["camera"]];
    for (const [i, wanted] of phases.entries()) {
      const unwanted = ALIASES.filter((a) => !wanted.includes(a));
      const label = `phase ${i + 1} (${wanted.join("+")})`;
      if (i > 0) await pb.updateSubscriptions(session.id, viewer.id, only(wanted));
      const rules = await pb.getSubscriptions(session.id, viewer.id);
      assert.deepEqual(rules.participants, [{ participantId: presenter.id, streamAliases: wanted }], `${label}: ${JSON.stringify(rules)}`);

      // The SDK holds exactly the wanted streams (announced with the presenter and alias).
      const avail = await until(
        async () => {
          const a = await availableByAlias(viewer.page);
          return { ok: JSON.stringify(Object.keys(a).sort()) === JSON.stringify([...wanted].sort()), a };
        },
        T,
        `${label}: the viewer's SDK holding ${wanted}`
      );
      for (const alias of wanted) {
        const ev = avail.a[alias];
        assert.equal(ev.participantId, presenter.id, JSON.stringify(ev));
        assert.deepEqual([...ev.mediaTypes].sort(), ["AUDIO", "VIDEO"], JSON.stringify(ev));
        await viewer.page.expectTone(ev.streamId, STREAMS[alias].hz, { toleranceHz: TOL_HZ, timeoutMs: T });
        await viewer.page.expectVideo(ev.streamId, { minFrames: 10, timeoutMs: T });
      }
      // The unwanted stream's tone and colour leave every received track (renegotiation) ...
      await until(
        async () => {
          const [s, v] = await Promise.all([receivedAudioSpectra(viewer.page, ALL_HZ, { durationMs: 1000 }), receivedVideoColours(viewer.page)]);
          const ok = unwanted.every((a) => !anyCarries(s, STREAMS[a].hz) && !anyShows(v, STREAMS[a])) && wanted.every((a) => anyShows(v, STREAMS[a]));
          return { ok, s, v };
        },
        T,
        `${label}: only ${wanted} decoded at the viewer`
      );
      // ... then a fixed window: the viewer decodes the wanted tones and colours and no trace of
      // the others, while the watcher, measured the same way, decodes both.
      const [atViewer, atWatcher] = await Promise.all([receivedAudioSpectra(viewer.page, ALL_HZ), receivedAudioSpectra(watcher.page, ALL_HZ)]);
      const [colViewer, colWatcher] = await Promise.all([receivedVideoColours(viewer.page), receivedVideoColours(watcher.page)]);
      for (const alias of ALIASES) {
        const { hz, name } = STREAMS[alias];
        assert.ok(anyCarries(atWatcher, hz), `${label}: control, the watcher hears ${alias} (${hz} Hz): ${JSON.stringify(atWatcher)}`);
        assert.ok(anyShows(colWatcher, STREAMS[alias]), `${label}: control, the watcher sees ${alias} (${name}): ${JSON.stringify(colWatcher)}`);
        if (wanted.includes(alias)) {
          assert.ok(anyCarries(atViewer, hz), `${label}: the viewer hears ${alias} (${hz} Hz): ${JSON.stringify(atViewer)}`);
          assert.ok(anyShows(colViewer, STREAMS[alias]), `${label}: the viewer sees ${alias} (${name}): ${JSON.stringify(colViewer)}`);
        } else {
          for (const s of atViewer) assert.ok(s.bands[hz] < 0.01, `${label}: the viewer's track ${s.trackId} has energy at ${alias}'s ${hz} Hz: ${JSON.stringify(s)}`);
          assert.ok(!colViewer.some((s) => shows(s, STREAMS[alias])), `${label}: the viewer decodes ${alias}'s ${name}: ${JSON.stringify(colViewer)}`);
        }
      }
      // Each wanted tone and colour on exactly one received track: no stream doubled, none mixed.
      for (const alias of wanted) {
        const { hz } = STREAMS[alias];
        assert.equal(atViewer.filter((s) => carries(s, hz)).length, 1, `${label}: ${alias}'s tone on one track: ${JSON.stringify(atViewer)}`);
        assert.equal(colViewer.filter((s) => shows(s, STREAMS[alias])).length, 1, `${label}: ${alias}'s colour on one track: ${JSON.stringify(colViewer)}`);
      }
      if (i === 0) {
        // Before any re-wire the screen was never the viewer's: never announced, let alone decoded.
        const screenEvents = (await viewer.page.events()).filter((e) => e.type === "available" && e.alias === "screen");
        assert.deepEqual(screenEvents, [], `${label}: the viewer was offered the screen`);
      }
      const stats = await viewer.page.rtpStats("subscribe");
      t.diagnostic(`${label}: viewer colours ${JSON.stringify(colViewer.map((c) => c.rgb))}, at ${Date.now() - t0} ms`);
      assert.ok(stats && stats.connectionState === "connected", `${label}: ${JSON.stringify(stats)}`);
    }
    // The viewer never got a stream of anyone but the presenter, nor one without an alias.
    for (const e of (await viewer.page.events()).filter((x) => x.type === "available")) {
      assert.equal(e.participantId, presenter.id, JSON.stringify(e));
      assert.ok(ALIASES.includes(e.alias), JSON.stringify(e));
    }
  } catch (e) {
    const diag = [];
    for (const p of pages) {
      const events = await p.events().catch(() => []);
      const stats = await p.rtpStats("subscribe").catch(() => null);
      diag.push(`--- page ${p.name} (participant ${p.participantId})`, `events: ${JSON.stringify(events)}`, `subscribe pc: ${JSON.stringify(stats)}`, `console (last 15): ${p.console.slice(-15).join(" | ")}`);
    }
    e.message += `\n\n[after ${Date.now() - t0} ms]\n${diag.join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
    t.diagnostic(`alias test: ${Date.now() - t0} ms`);
  }
});
