// Self-test of the browser harness, runnable without patchbay:  node --test selftest.mjs
//
// Proves that (1) the bundled, unmodified Bandwidth SDK loads in the page, (2) the measurements
// read DECODED media correctly and can also fail (tones and fake-camera video are sent through
// a real RTCPeerConnection pair inside the page, so they go through WebRTC encode/decode;
// silence reads as silence), (3) connect() is bounded in time against a dead port, and (4) the
// SDK wrappers (connect/publish/events/unpublish/disconnect) work end to end against a mock
// signalling server whose media plane is a set of RTCPeerConnections in another page.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { once } from "node:events";
import { WebSocketServer } from "ws";
import { launchBrowser } from "./runner.mjs";

const LEVEL_THRESHOLD = 0.01; // RMS; the 0.3-gain tones read ~0.2, silence reads 0
const FREQ_TOLERANCE_HZ = 30;

let b;
before(async () => {
  b = await launchBrowser();
});
after(async () => {
  await b?.close();
});

function fakeToken(claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${enc({ alg: "HS256", typ: "JWT" })}.${enc({ v: "v3", ...claims })}.c2lnbmF0dXJl`;
}

async function freePort() {
  const srv = createServer();
  srv.listen(0, "127.0.0.1");
  await once(srv, "listening");
  const { port } = srv.address();
  srv.close();
  await once(srv, "close");
  return port;
}

test("the bundled, unmodified SDK loads on the page", { timeout: 30000 }, async () => {
  const p = await b.newParticipant("loader");
  const info = await p.evaluate(() => {
    const rtc = new window.BandwidthRtcClass();
    return {
      classType: typeof window.BandwidthRtcClass,
      v3Type: typeof window.BandwidthRtcV3Class,
      version: window.BANDWIDTH_SDK_VERSION,
      methods: ["connect", "publish", "unpublish", "disconnect", "onStreamAvailable", "onStreamUnavailable"].filter(
        (m) => typeof rtc[m] === "function"
      ),
      secure: window.isSecureContext,
      origin: location.origin,
    };
  });
  assert.equal(info.classType, "function");
  assert.equal(info.v3Type, "function");
  assert.equal(info.version, "0.12.0-beta.1");
  assert.equal(info.methods.length, 6, JSON.stringify(info));
  assert.equal(info.secure, true, "page must be a secure context for getUserMedia");
  assert.match(info.origin, /^http:\/\/127\.0\.0\.1:\d+$/);
  await p.close();
});

test("440 Hz and 1000 Hz tones are measured after a WebRTC encode/decode loop", { timeout: 60000 }, async () => {
  const p = await b.newParticipant("tones");
  const a = await p.localToneMediaStream(440);
  const c = await p.localToneMediaStream(1000);
  const got = await p.loopback([a, c]);
  assert.deepEqual(got.sort(), [a, c].sort());
  for (const [id, hz] of [
    [a, 440],
    [c, 1000],
  ]) {
    const r = await p.expectTone(id, hz, { toleranceHz: FREQ_TOLERANCE_HZ, minLevel: LEVEL_THRESHOLD, timeoutMs: 10000 });
    assert.equal(r.origin, "loopback", "must measure the received (decoded) stream, not the local one");
    assert.ok(Math.abs(r.peakHz - hz) <= FREQ_TOLERANCE_HZ, `${hz}: ${JSON.stringify(r)}`);
    assert.ok(r.rms > LEVEL_THRESHOLD, `${hz}: ${JSON.stringify(r)}`);
    assert.ok(Math.abs((await p.dominantFrequency(id)) - hz) <= FREQ_TOLERANCE_HZ);
    assert.ok((await p.audioLevel(id)) > LEVEL_THRESHOLD);
  }
  await p.close();
});

test("a silent track measures below the threshold (the measurement can fail)", { timeout: 60000 }, async () => {
  const p = await b.newParticipant("silence");
  const s = await p.localSilentMediaStream();
  const ref = await p.localToneMediaStream(440);
  await p.loopback([s, ref]);
  await p.expectTone(ref, 440); // the loop works, so silence below is really silence
  const r = await p.analyse(s, { durationMs: 1000 });
  assert.equal(r.origin, "loopback");
  assert.ok(r.rms < LEVEL_THRESHOLD, JSON.stringify(r));
  assert.equal(await p.dominantFrequency(s), null);
  await assert.rejects(p.expectTone(s, 440, { timeoutMs: 1500 }), /did not carry 440 Hz/);
  await assert.rejects(p.expectTone(ref, 1000, { timeoutMs: 1500 }), /did not carry 1000 Hz/);
  await p.close();
});

test("fake-camera video is decoded after a WebRTC loop (frames and 640x480)", { timeout: 60000 }, async () => {
  const p = await b.newParticipant("video");
  const v = await p.localCameraMediaStream();
  await p.loopback([v]);
  const r = await p.expectVideo(v, { minFrames: 10, timeoutMs: 10000 });
  // expectVideo returns as soon as 10 frames are decoded: 10 is a pass
  assert.ok(r.frames >= 10, JSON.stringify(r));
  assert.ok(r.totalVideoFrames >= 10, JSON.stringify(r));
  assert.ok(Math.abs(r.width - 640) <= 64 && Math.abs(r.height - 480) <= 48, JSON.stringify(r));
  // an audio-only stream has no video to decode
  const a = await p.localToneMediaStream(440);
  await p.loopback([a]);
  await assert.rejects(p.expectVideo(a, { timeoutMs: 1000 }), /too few video frames/);
  await p.close();
});

test("connect() against a closed port fails in bounded time and stops retrying", { timeout: 30000 }, async () => {
  const p = await b.newParticipant("deadport");
  const port = await freePort();
  const token = fakeToken({ p: "nobody" });
  const t0 = Date.now();
  await assert.rejects(p.connect({ websocketUrl: `ws://127.0.0.1:${port}`, token, timeoutMs: 3000 }), /timed out after 3000 ms/);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 8000, `took ${elapsed} ms`);
  const log = await p.wsLog();
  const creates = log.filter((e) => e.event === "create");
  assert.ok(creates.length >= 2, "the SDK retries every second: " + JSON.stringify(log));
  assert.equal(creates[0].url.split("?")[0], `ws://127.0.0.1:${port}/v3/`);
  await new Promise((r) => setTimeout(r, 2500));
  const after = (await p.wsLog()).filter((e) => e.event === "create").length;
  assert.equal(after, creates.length, "harness must stop the SDK's reconnect loop after a failed connect");
  assert.equal(await p.evaluate(() => window.harness.connected()), false);
  // a token that is not a JWT fails at once (jwt-decode), before any socket
  await assert.rejects(p.connect({ websocketUrl: `ws://127.0.0.1:${port}`, token: "not-a-jwt", timeoutMs: 3000 }), /Invalid token/i);
  await p.close();
});

// ---------------------------------------------------------------------------------------------
// Mock signalling (Node, ws) + mock media plane (RTCPeerConnections in a page, window.mockSfu).

async function startMockSignalling(sfuPage) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await once(wss, "listening");
  const conns = new Map();
  let n = 0;
  const sfu = (fn, ...args) => sfuPage.evaluate(([f, a]) => window.mockSfu[f](...a), [fn, args]);

  async function renegotiate(c) {
    if (c.closed) return;
    if (c.awaitingAnswer) {
      c.dirty = true;
      return;
    }
    c.awaitingAnswer = true;
    c.dirty = false;
    const offer = await sfu("offerFor", c.id);
    if (!offer) {
      c.awaitingAnswer = false;
      return;
    }
    c.ws.send(JSON.stringify({ jsonrpc: "2.0", method: "sdpOffer", params: offer }));
  }
  const fanout = () => Promise.all([...conns.values()].map((c) => renegotiate(c).catch((e) => (c.error = String(e)))));

  wss.on("connection", (ws, req) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const claims = JSON.parse(Buffer.from(url.searchParams.get("token").split(".")[1], "base64url"));
    const c = { id: `c${++n}`, ws, path: url.pathname, query: Object.fromEntries(url.searchParams), participantId: claims.p, received: [] };
    conns.set(c.id, c);
    const reply = (id, result) => ws.send(JSON.stringify({ jsonrpc: "2.0", result, id }));
    ws.on("message", async (data) => {
      const m = JSON.parse(String(data));
      c.received.push(m);
      try {
        switch (m.method) {
          case "setMediaPreferences":
          case "ping":
            return reply(m.id, {});
          case "offerSdp": {
            const r = await sfu("answerPublish", c.id, c.participantId, m.params.sdpOffer, m.params.mediaMetadata);
            reply(m.id, r);
            return fanout();
          }
          case "answerSdp":
            await sfu("acceptAnswer", c.id, m.params.sdpAnswer);
            reply(m.id, {});
            c.awaitingAnswer = false;
            if (c.dirty) return renegotiate(c);
            return;
          default:
            if (m.id !== undefined) ws.send(JSON.stringify({ jsonrpc: "2.0", error: { code: -32601, message: "Method not found" }, id: m.id }));
        }
      } catch (e) {
        c.error = String(e);
      }
    });
    ws.on("close", (code) => {
      c.closed = true;
      c.closeCode = code;
      sfu("drop", c.id)
        .then(fanout)
        .catch(() => {});
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}`,
    conns,
    close: () => {
      for (const ws of wss.clients) ws.terminate(); // wss.close() alone waits for open sockets
      return new Promise((r) => wss.close(() => r()));
    },
  };
}

async function until(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("SDK wrappers work end to end against a mock server (connect, publish, events, media, unpublish, leave)", { timeout: 90000 }, async () => {
  const sfuPage = await b.newParticipant("mock-sfu");
  const mock = await startMockSignalling(sfuPage.page);
  try {
    const alice = await b.newParticipant("alice");
    const bob = await b.newParticipant("bob");
    await alice.connect({ websocketUrl: mock.url, token: fakeToken({ p: "alice", a: "9900000" }) });
    await bob.connect({ websocketUrl: mock.url, token: fakeToken({ p: "bob", a: "9900000" }) });

    // the URL and first call the SDK makes
    const [ca, cb] = [...mock.conns.values()];
    assert.equal(ca.path, "/v3/");
    assert.deepEqual(Object.keys(ca.query).sort(), ["client", "sdkVersion", "token", "uniqueId"]);
    assert.equal(ca.query.client, "browser");
    assert.equal(ca.query.sdkVersion, "0.12.0-beta.1");
    assert.match(ca.query.uniqueId, /^[0-9a-f-]{36}$/);
    assert.deepEqual(ca.received[0], { jsonrpc: "2.0", method: "setMediaPreferences", params: { protocol: "WEBRTC" }, id: 1 });

    const pubA = await alice.publishTone({ freqHz: 440, alias: "alice-tone" });
    const pubB = await bob.publishTone({ freqHz: 1000, alias: "bob-cam", video: true });
    assert.deepEqual(pubA.mediaTypes, ["AUDIO"]);
    assert.deepEqual(pubB.mediaTypes, ["AUDIO", "VIDEO"]);
    const offers = ca.received.filter((m) => m.method === "offerSdp");
    assert.equal(offers.length, 2, "first publish = data-channel offer + media offer");
    assert.deepEqual(offers[0].params.mediaMetadata.mediaStreams, {});
    assert.deepEqual(offers[1].params.mediaMetadata.mediaStreams, { [pubA.streamId]: { alias: "alice-tone" } });

    const evAtBob = await bob.waitForStream({ alias: "alice-tone", timeoutMs: 15000 });
    const evAtAlice = await alice.waitForStream({ alias: "bob-cam", timeoutMs: 15000 });
    assert.equal(evAtBob.participantId, "alice");
    assert.equal(evAtBob.streamId, pubA.streamId);
    assert.deepEqual(evAtBob.mediaTypes, ["AUDIO"]);
    assert.equal(evAtAlice.participantId, "bob");
    assert.deepEqual(evAtAlice.mediaTypes, ["AUDIO", "VIDEO"]);
    assert.deepEqual(evAtAlice.tracks.sort(), ["audio", "video"]);

    await bob.expectTone(evAtBob.streamId, 440, { timeoutMs: 15000 });
    await alice.expectTone(evAtAlice.streamId, 1000, { timeoutMs: 15000 });
    const vid = await alice.expectVideo(evAtAlice.streamId, { timeoutMs: 15000 });
    assert.ok(vid.width > 0 && vid.height > 0);
    const stats = await bob.rtpStats("subscribe");
    assert.equal(stats.connectionState, "connected");
    assert.ok(stats.rtp.some((s) => s.type === "inbound-rtp" && s.kind === "audio" && s.packets > 0), JSON.stringify(stats));

    // unpublish -> the subscriber sees onStreamUnavailable
    await alice.unpublish(pubA.streamId);
    await bob.waitForStreamUnavailable(pubA.streamId, { timeoutMs: 15000 });

    // disconnect -> leave, deviceDiagnostics, close 1000
    assert.equal(await alice.disconnect(), true);
    await until(() => ca.closed, 5000, "alice's socket to close");
    assert.equal(ca.closeCode, 1000);
    const tail = ca.received.slice(-2).map((m) => m.method);
    assert.deepEqual(tail, ["leave", "deviceDiagnostics"]);
    assert.equal("params" in ca.received.at(-2), false, "browser leave carries no params");
    assert.equal(ca.error, undefined);
    assert.equal(cb.error, undefined);
  } finally {
    await mock.close();
  }
});
