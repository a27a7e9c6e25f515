// What a page's RTCPeerConnections measured, for the thin-link bench (thin_link.bench.mjs) and
// test (thin_link.test.mjs): getStats() of every connection the page used
// (runner.mjs's instrumentPeerConnections), the gaps between painted frames (and the times frames
// were painted, for one_viewer.test.mjs), and the figures
// the two derive from them over a window; a participant page opened in a network namespace; and
// the small helpers the link tests and benches share (sleep, until, joinSession, startLinkServer,
// metricTotal).

import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, Participant, chromiumPath, instrumentPeerConnections, startStaticServer } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";
import { createNetns } from "./netns.mjs";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `pred` (async, -> { ok, seen }) every 250 ms until it returns ok, or throws after
 * timeoutMs naming `what` and the last `seen`. -> the last result.
 */
export async function until(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await pred();
    if (last && last.ok) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${JSON.stringify(last?.seen ?? last)}`);
    await sleep(250);
  }
}

/**
 * Creates a participant tagged `tag` on patchbay `pb` (extra fields of the create call in
 * `create`, e.g. a callbackUrl) and adds it to `session`, subscribed session-wide. -> { id, token }
 */
export async function joinSession(pb, session, tag, create = {}) {
  const { participant, token } = await pb.createParticipant({ tag, ...create });
  await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
  return { id: participant.id, token };
}

/**
 * A network namespace (netns.mjs `createNetns(netnsOptions)`) and a patchbay whose media is
 * reachable from it (its media socket on 0.0.0.0, advertised on loopback and the veth's host
 * address), started with the extra `args` and `env`. Both are pushed on `cleanup`. -> { ns, pb }
 */
export async function startLinkServer(netnsOptions, { args = [], env } = {}, cleanup) {
  const ns = await createNetns(netnsOptions);
  cleanup.push(() => ns.close());
  const pb = await startPatchbay({ mediaHost: "0.0.0.0", args: ["--public-ip", `127.0.0.1,${ns.hostIp}`, ...args], env });
  cleanup.push(() => pb.stop());
  return { ns, pb };
}

/** The sum over shards (and any other labels) of the counter `name` in patchbay's /metrics. */
export async function metricTotal(pb, name) {
  const text = await (await fetch(`${pb.url}/metrics`)).text();
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))].reduce((a, m) => a + Number(m[1]), 0);
}

/**
 * Opens a participant page in a Chromium started inside the namespace `ns` (netns.mjs), connects
 * it to patchbay `pb` with `token` and instruments its peer connections. The page is served, and
 * patchbay's HTTP/WebSocket reached, through TCP forwarders on the host side of the veth. Each
 * thing to close is pushed on `cleanup` (close in reverse order). `beforeConnect(page)`, when
 * given, runs after the instrumentation and before the connect (e.g. to wrap the page's
 * RTCPeerConnection). -> the Participant.
 */
export async function openPageInNamespace(ns, pb, { tag, token, timeoutMs, beforeConnect }, cleanup) {
  const web = await startStaticServer();
  cleanup.push(() => web.close());
  const webFwd = await ns.forwardTcp(web.port);
  const httpFwd = await ns.forwardTcp(Number(new URL(pb.url).port));
  const origin = `http://${webFwd.host}:${webFwd.port}`;
  const browser = await chromium.launch({
    executablePath: await ns.chromiumWrapper(chromiumPath()),
    headless: true,
    // The page is served over plain http on the veth address: a secure context only by flag.
    args: [...CHROMIUM_ARGS, `--unsafely-treat-insecure-origin-as-secure=${origin}`],
    timeout: timeoutMs,
  });
  cleanup.push(() => browser.close());
  const page = await Participant.open(browser, `${origin}/`, tag, { verbose: !!process.env.HARNESS_VERBOSE });
  cleanup.push(() => page.close());
  await instrumentPeerConnections(page);
  if (beforeConnect) await beforeConnect(page);
  await page.connect({ websocketUrl: `ws://${httpFwd.host}:${httpFwd.port}`, token, timeoutMs });
  return page;
}

export function pageStats(p) {
  return p.evaluate(async () => {
    const out = { inbound: [], outbound: [], pairs: [] };
    for (const pc of window.__pcs || []) {
      if (pc.connectionState === "closed") continue;
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      let sends = false;
      stats.forEach((s) => {
        if (s.type === "inbound-rtp") out.inbound.push(s);
        else if (s.type === "outbound-rtp") {
          out.outbound.push(s);
          sends = true;
        }
      });
      // the selected candidate pair of the connection, with its local address
      stats.forEach((s) => {
        const pair = s.type === "transport" && s.selectedCandidatePairId && byId.get(s.selectedCandidatePairId);
        if (!pair) return;
        const local = byId.get(pair.localCandidateId) || {};
        const remote = byId.get(pair.remoteCandidateId) || {};
        out.pairs.push({ sends, rtt: pair.currentRoundTripTime, availableOutgoingBitrate: pair.availableOutgoingBitrate, local: `${local.address}:${local.port}`, remote: `${remote.address}:${remote.port}` });
      });
    }
    return JSON.parse(JSON.stringify(out));
  });
}

// The longest gap between painted frames of each <video> on the page since the last call of
// frameGaps(p, true), via requestVideoFrameCallback. -> [{ frames, maxGapMs }]
export function frameGaps(p, reset = false) {
  return p.evaluate((reset) => {
    const vids = [...document.querySelectorAll("video")];
    window.__gaps = window.__gaps || new Map();
    for (const v of vids) {
      if (!window.__gaps.has(v)) {
        const g = { last: null, maxGapMs: 0, frames: 0 };
        window.__gaps.set(v, g);
        const cb = (now) => {
          if (g.last !== null) g.maxGapMs = Math.max(g.maxGapMs, now - g.last);
          g.last = now;
          g.frames++;
          v.requestVideoFrameCallback(cb);
        };
        v.requestVideoFrameCallback(cb);
      }
    }
    const out = [];
    for (const [v, g] of window.__gaps) {
      if (!v.isConnected) continue;
      // a gap still open counts too
      const open = g.last === null ? 0 : performance.now() - g.last;
      out.push({ frames: g.frames, maxGapMs: Math.round(Math.max(g.maxGapMs, open)) });
      if (reset) {
        g.maxGapMs = 0;
        g.frames = 0;
      }
    }
    return out;
  }, reset);
}

// The times (the page's performance.now(), ms) at which any <video> on the page painted a frame
// since the last call, via requestVideoFrameCallback (each call watches the videos added since),
// and the page's clock when it answered: { now, times }. Unlike frameGaps, the caller can then
// measure the gaps within any stretch of time (longestGap), e.g. one known only afterwards.
export function framePaints(p) {
  return p.evaluate(() => {
    const rec = (window.__paints = window.__paints || { times: [], watched: new WeakSet() });
    for (const v of document.querySelectorAll("video")) {
      if (rec.watched.has(v)) continue;
      rec.watched.add(v);
      const cb = (now) => {
        rec.times.push(now);
        v.requestVideoFrameCallback(cb);
      };
      v.requestVideoFrameCallback(cb);
    }
    const times = rec.times;
    rec.times = [];
    return { now: performance.now(), times };
  });
}

/**
 * The longest stretch of [from, to] without a painted frame (ms; `times` from framePaints, on
 * the same clock): the stretches from `from` to the first frame and from the last to `to` count.
 */
export function longestGap(times, from, to) {
  let last = from;
  let max = 0;
  for (const t of [...times].sort((a, b) => a - b)) {
    if (t <= from || t > to) continue;
    max = Math.max(max, t - last);
    last = t;
  }
  return Math.max(max, to - last);
}

export const sum = (xs, f) => xs.reduce((a, x) => a + (Number(x[f]) || 0), 0);
export const of = (list, kind) => list.filter((s) => s.kind === kind);
export const delta = (a, b, kind, fields) => {
  const o = {};
  for (const f of fields) o[f] = sum(of(b, kind), f) - sum(of(a, kind), f);
  return o;
};
export const median = (xs) => {
  const v = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
export const r3 = (x) => (x === null || x === undefined || !Number.isFinite(x) ? x : Math.round(x * 1000) / 1000);

// The receiving connection's selected pair (a subscriber's subscribe connection).
const recv = (s) => s.pairs.find((p) => !p.sends);

export function subscriberFigures(s0, s1, seconds) {
  const a = delta(s0.inbound, s1.inbound, "audio", ["concealedSamples", "silentConcealedSamples", "totalSamplesReceived", "packetsReceived", "packetsLost", "jitterBufferDelay", "jitterBufferEmittedCount", "bytesReceived"]);
  const v = delta(s0.inbound, s1.inbound, "video", ["framesDecoded", "framesReceived", "keyFramesDecoded", "framesDropped", "freezeCount", "totalFreezesDuration", "pliCount", "nackCount", "firCount", "packetsReceived", "packetsLost", "bytesReceived", "retransmittedPacketsReceived"]);
  const vIn = of(s1.inbound, "video");
  return {
    audioConcealment: a.totalSamplesReceived > 0 ? r3(a.concealedSamples / a.totalSamplesReceived) : null,
    audioConcealedSamples: a.concealedSamples,
    audioSilentConcealedSamples: a.silentConcealedSamples,
    audioSamples: a.totalSamplesReceived,
    audioPacketsReceived: a.packetsReceived,
    audioPacketsLost: a.packetsLost,
    audioJitterBufferMs: a.jitterBufferEmittedCount > 0 ? Math.round((a.jitterBufferDelay / a.jitterBufferEmittedCount) * 1000) : null,
    audioKbps: Math.round((a.bytesReceived * 8) / seconds / 1000),
    videoFramesDecoded: v.framesDecoded,
    videoFramesReceived: v.framesReceived,
    videoKeyFramesDecoded: v.keyFramesDecoded,
    videoFramesDropped: v.framesDropped,
    fps: r3(v.framesDecoded / seconds),
    freezeCount: v.freezeCount,
    totalFreezesDuration: r3(v.totalFreezesDuration),
    pliSent: v.pliCount,
    nackSent: v.nackCount,
    firSent: v.firCount,
    videoPacketsReceived: v.packetsReceived,
    videoPacketsLost: v.packetsLost,
    videoRetransmittedPacketsReceived: v.retransmittedPacketsReceived,
    videoKbps: Math.round((v.bytesReceived * 8) / seconds / 1000),
    videoSize: vIn.length ? `${vIn[0].frameWidth ?? 0}x${vIn[0].frameHeight ?? 0}` : null,
    inboundStreams: { audio: of(s1.inbound, "audio").length, video: vIn.length },
    rttMs: recv(s1) && recv(s1).rtt !== undefined ? Math.round(recv(s1).rtt * 1000) : null,
    path: recv(s1) ? `${recv(s1).local} -> ${recv(s1).remote}` : null,
  };
}

export function publisherFigures(s0, s1, seconds, bitrates) {
  const v = delta(s0.outbound, s1.outbound, "video", ["keyFramesEncoded", "framesEncoded", "pliCount", "firCount", "nackCount", "bytesSent", "retransmittedBytesSent"]);
  const out = of(s1.outbound, "video")[0] || {};
  const q0 = of(s0.outbound, "video")[0]?.qualityLimitationDurations || {};
  const q1 = out.qualityLimitationDurations || {};
  const qd = {};
  for (const k of Object.keys(q1)) {
    const d = (q1[k] || 0) - (q0[k] || 0);
    if (d > 0.05) qd[k] = r3(d);
  }
  const targets = bitrates.map((b) => b.target).filter((x) => x > 0);
  const available = bitrates.map((b) => b.available).filter((x) => x > 0);
  return {
    keyFramesEncoded: v.keyFramesEncoded,
    pliReceived: v.pliCount,
    firReceived: v.firCount,
    nackReceived: v.nackCount,
    framesEncoded: v.framesEncoded,
    fps: r3(v.framesEncoded / seconds),
    videoKbps: Math.round((v.bytesSent * 8) / seconds / 1000),
    retransmittedKbps: Math.round((v.retransmittedBytesSent * 8) / seconds / 1000),
    targetBitrateKbps: {
      median: targets.length ? Math.round(median(targets) / 1000) : null,
      min: targets.length ? Math.round(Math.min(...targets) / 1000) : null,
      last: targets.length ? Math.round(targets[targets.length - 1] / 1000) : null,
    },
    availableOutgoingKbps: available.length ? Math.round(median(available) / 1000) : null,
    qualityLimitationReason: out.qualityLimitationReason ?? null,
    qualityLimitationSeconds: qd,
    videoSize: `${out.frameWidth ?? 0}x${out.frameHeight ?? 0}`,
    encoder: out.encoderImplementation ?? null,
  };
}

