// Test page for patchbay's browser interop tests.
//
// Bundled by esbuild into page/dist/bundle.js together with Bandwidth's UNMODIFIED browser SDK
// (@bandwidth/webrtc-browser, pinned in ../package.json). runner.mjs drives it through
// page.evaluate(): everything it needs is on `window.harness` (one participant) and
// `window.mockSfu` (a stand-in media server used only by selftest.mjs).
//
// Measurement principle: a received MediaStream is attached to a muted, playing <video>/<audio>
// element (Chromium feeds a remote WebRTC audio track to WebAudio only while a media element
// plays it), then analysed with WebAudio (RMS level, FFT peak) and requestVideoFrameCallback
// (frames actually decoded and painted, plus their size). All of that proves decoded media.

import * as sdk from "@bandwidth/webrtc-browser";
import sdkPackage from "@bandwidth/webrtc-browser/package.json";

// The SDK is CommonJS (`exports.default = BandwidthRtc`). Because this package is "type":
// "module", esbuild applies Node's interop and hands us module.exports as the default import, so
// unwrap it explicitly.
const BandwidthRtc = typeof sdk.default === "function" ? sdk.default : sdk.default.default;
const BandwidthRtcV3 = sdk.BandwidthRtcV3 || sdk.default.BandwidthRtcV3;

window.BandwidthRtcClass = BandwidthRtc;
window.BandwidthRtcV3Class = BandwidthRtcV3;
window.BANDWIDTH_SDK_VERSION = sdkPackage.version;

// ---------------------------------------------------------------------------------------------
// WebSocket spy: records what the SDK opens, sends and receives (it does not change anything).

const wsLog = [];
const WS_LOG_MAX = 2000;
function logWs(entry) {
  wsLog.push({ at: Date.now(), ...entry });
  if (wsLog.length > WS_LOG_MAX) wsLog.splice(0, wsLog.length - WS_LOG_MAX);
}
function summarize(text) {
  try {
    const m = JSON.parse(text);
    return { method: m.method, id: m.id, hasResult: "result" in m, error: m.error, raw: text };
  } catch {
    return { raw: String(text) };
  }
}
const NativeWebSocket = window.WebSocket;
class SpyWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const sid = (SpyWebSocket.count = (SpyWebSocket.count || 0) + 1);
    logWs({ socket: sid, event: "create", url: String(url) });
    this.addEventListener("open", () => logWs({ socket: sid, event: "open" }));
    this.addEventListener("error", () => logWs({ socket: sid, event: "error" }));
    this.addEventListener("close", (e) => logWs({ socket: sid, event: "close", code: e.code, reason: e.reason }));
    this.addEventListener("message", (e) =>
      logWs({ socket: sid, event: "recv", binary: typeof e.data !== "string", ...summarize(e.data) })
    );
    this._sid = sid;
  }
  send(data) {
    logWs({ socket: this._sid, event: "send", ...summarize(data) });
    return super.send(data);
  }
}
window.WebSocket = SpyWebSocket;

// ---------------------------------------------------------------------------------------------
// Helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function waitUntil(predicate, timeoutMs, what, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

let audioCtx = null;
function ctx() {
  if (!audioCtx) audioCtx = new AudioContext();
  if (audioCtx.state !== "running") audioCtx.resume().catch(() => {});
  return audioCtx;
}

// ---------------------------------------------------------------------------------------------
// Stream registry. `remote`: streams received (from the SDK or the local loopback); `local`:
// streams this page made (tones, camera). Measurements look in `remote` first, then `local`.

const remote = new Map(); // streamId -> Entry
const local = new Map(); // streamId -> MediaStream

function mediaContainer() {
  return document.getElementById("media") || document.body;
}

function attach(stream, meta = {}, map = remote) {
  let entry = map.get(stream.id);
  if (!entry) {
    entry = { stream, meta, el: null, audio: null, frames: 0, width: 0, height: 0, attachedAt: Date.now() };
    map.set(stream.id, entry);
  }
  entry.stream = stream;
  entry.meta = { ...entry.meta, ...meta };
  entry.available = true;
  const wantVideo = stream.getVideoTracks().length > 0;
  if (!entry.el || (wantVideo && entry.el.tagName !== "VIDEO")) {
    if (entry.el) entry.el.remove();
    const el = document.createElement(wantVideo ? "video" : "audio");
    el.muted = true; // muted still plays (and feeds WebAudio); nothing reaches the speakers
    el.autoplay = true;
    el.playsInline = true;
    el.dataset.streamId = stream.id;
    el.srcObject = stream;
    mediaContainer().appendChild(el);
    entry.el = el;
    entry.playError = null;
    el.play().catch((e) => (entry.playError = String(e)));
    if (wantVideo && "requestVideoFrameCallback" in el) {
      const onFrame = (_now, md) => {
        entry.frames++;
        entry.width = md.width;
        entry.height = md.height;
        if (entry.el === el) el.requestVideoFrameCallback(onFrame);
      };
      el.requestVideoFrameCallback(onFrame);
    }
  } else if (entry.el.srcObject !== stream) {
    entry.el.srcObject = stream;
    entry.el.play().catch((e) => (entry.playError = String(e)));
  }
  return entry;
}

function lookup(streamId) {
  const e = remote.get(streamId);
  if (e) return e;
  const s = local.get(streamId);
  if (s) return attach(s, { origin: "local" }, localEntries);
  throw new Error(`unknown stream ${streamId}; known remote: ${[...remote.keys()].join(", ")}`);
}
const localEntries = new Map();

// (Re)builds the WebAudio graph of an entry when its audio track changed.
function analyserFor(entry) {
  const tracks = entry.stream.getAudioTracks().filter((t) => t.readyState === "live");
  if (tracks.length === 0) return null;
  const key = tracks.map((t) => t.id).join(",");
  if (entry.audio && entry.audio.key === key) return entry.audio.analyser;
  if (entry.audio) {
    try {
      entry.audio.source.disconnect();
      entry.audio.sink.disconnect();
    } catch {}
  }
  const c = ctx();
  const source = c.createMediaStreamSource(new MediaStream(tracks.slice(0, 1)));
  const analyser = c.createAnalyser();
  analyser.fftSize = 8192; // ~5.9 Hz bins at 48 kHz
  analyser.smoothingTimeConstant = 0;
  const sink = c.createGain();
  sink.gain.value = 0; // keep the graph pulled without making sound
  source.connect(analyser);
  analyser.connect(sink);
  sink.connect(c.destination);
  entry.audio = { key, source, analyser, sink };
  return analyser;
}

// Collects `durationMs` of analyser windows. Returns {rms, peakHz, peakPower, sampleRate}.
async function analyse(streamId, { durationMs = 600, minHz = 50 } = {}) {
  const entry = lookup(streamId);
  const analyser = analyserFor(entry);
  if (!analyser) return { rms: 0, peakHz: null, peakPower: 0, windows: 0, noAudioTrack: true };
  const c = ctx();
  const n = analyser.fftSize;
  const td = new Float32Array(n);
  const fd = new Float32Array(analyser.frequencyBinCount);
  const power = new Float64Array(analyser.frequencyBinCount);
  let sumSq = 0;
  let count = 0;
  let windows = 0;
  const windowMs = (n / c.sampleRate) * 1000;
  const deadline = performance.now() + durationMs;
  do {
    await sleep(Math.max(20, windowMs * 0.9));
    analyser.getFloatTimeDomainData(td);
    for (let i = 0; i < n; i++) sumSq += td[i] * td[i];
    count += n;
    analyser.getFloatFrequencyData(fd);
    for (let i = 0; i < fd.length; i++) if (Number.isFinite(fd[i])) power[i] += Math.pow(10, fd[i] / 10);
    windows++;
  } while (performance.now() < deadline);
  const rms = Math.sqrt(sumSq / Math.max(1, count));
  const binHz = c.sampleRate / n;
  let best = -1;
  for (let i = Math.max(1, Math.ceil(minHz / binHz)); i < power.length - 1; i++) {
    if (best < 0 || power[i] > power[best]) best = i;
  }
  let peakHz = null;
  if (best > 0 && power[best] > 0) {
    // parabolic interpolation on log power
    const a = Math.log(power[best - 1] || 1e-30);
    const b = Math.log(power[best]);
    const g = Math.log(power[best + 1] || 1e-30);
    const denom = a - 2 * b + g;
    const delta = denom !== 0 ? (0.5 * (a - g)) / denom : 0;
    peakHz = (best + Math.max(-0.5, Math.min(0.5, delta))) * binHz;
  }
  return { origin: entry.meta.origin, rms, peakHz, peakPower: best > 0 ? power[best] / windows : 0, windows, sampleRate: c.sampleRate, contextState: c.state };
}

// ---------------------------------------------------------------------------------------------
// Local media

function localToneMediaStream(freqHz = 440, { gain = 0.3, type = "sine" } = {}) {
  const c = ctx();
  const dest = c.createMediaStreamDestination();
  if (freqHz > 0 && gain > 0) {
    const osc = c.createOscillator();
    osc.type = type;
    osc.frequency.value = freqHz;
    const g = c.createGain();
    g.gain.value = gain;
    osc.connect(g);
    g.connect(dest);
    osc.start();
  }
  // freqHz 0 (or gain 0): a live audio track carrying digital silence.
  local.set(dest.stream.id, dest.stream);
  return dest.stream;
}

async function localCameraMediaStream({ audio = false, video = true } = {}) {
  const s = await navigator.mediaDevices.getUserMedia({ audio, video });
  local.set(s.id, s);
  return s;
}

function combine(...streams) {
  const s = new MediaStream(streams.flatMap((x) => x.getTracks()));
  local.set(s.id, s);
  return s;
}

function resolveLocal(streamOrId) {
  if (streamOrId instanceof MediaStream) return streamOrId;
  const s = local.get(streamOrId);
  if (!s) throw new Error(`unknown local stream ${streamOrId}`);
  return s;
}

function describeStream(s) {
  return { id: s.id, tracks: s.getTracks().map((t) => ({ kind: t.kind, id: t.id, readyState: t.readyState })) };
}

// ---------------------------------------------------------------------------------------------
// The participant: one BandwidthRtc instance per page.

const events = [];
let rtc = null;
const published = new Map(); // streamId -> RtcStream returned by publish()

function onStreamAvailable(rtcStream) {
  const s = rtcStream.mediaStream;
  const ev = {
    type: "available",
    at: Date.now(),
    streamId: rtcStream.endpointId,
    mediaStreamId: s && s.id,
    participantId: rtcStream.participantId,
    alias: rtcStream.alias,
    mediaTypes: rtcStream.mediaTypes,
    tracks: s ? s.getTracks().map((t) => t.kind) : [],
  };
  events.push(ev);
  if (s) attach(s, { origin: "sdk", participantId: ev.participantId, alias: ev.alias, mediaTypes: ev.mediaTypes });
}

function onStreamUnavailable(streamId) {
  events.push({ type: "unavailable", at: Date.now(), streamId });
  const e = remote.get(streamId);
  if (e) e.available = false;
}

function stopReconnecting(instance) {
  // Harness hygiene only: after a failed connect the SDK's rpc-websockets client keeps
  // reconnecting every second, and the SDK's disconnect() neither stops that nor survives a
  // socket that is not open. Reach into the (JS-visible) client to stop the loop.
  try {
    const ws = instance && instance.delegate && instance.delegate.signaling && instance.delegate.signaling.ws;
    if (ws) {
      ws.setAutoReconnect(false);
      clearTimeout(ws.reconnect_timer_id);
    }
  } catch {}
}

const harness = {
  sdkVersion: sdkPackage.version,

  async connect({ websocketUrl, token, timeoutMs = 15000, logLevel = "warn", iceServers, iceTransportPolicy } = {}) {
    if (rtc) throw new Error("already connected; call disconnect() first");
    if (!token) throw new Error("connect: token is required");
    const instance = new BandwidthRtc(logLevel);
    instance.onStreamAvailable(onStreamAvailable);
    instance.onStreamUnavailable(onStreamUnavailable);
    const options = {};
    if (websocketUrl) options.websocketUrl = websocketUrl;
    if (iceServers) options.iceServers = iceServers;
    if (iceTransportPolicy) options.iceTransportPolicy = iceTransportPolicy;
    const started = performance.now();
    rtc = instance;
    try {
      await withTimeout(instance.connect({ deviceToken: token }, options), timeoutMs, "BandwidthRtc.connect");
    } catch (e) {
      stopReconnecting(instance);
      try {
        instance.disconnect();
      } catch {}
      stopReconnecting(instance);
      rtc = null;
      // jwt-decode's InvalidTokenError does not survive page.evaluate's error serialisation
      throw new Error(`${(e && e.name) || "Error"}: ${(e && e.message) || e}`);
    }
    return { ms: Math.round(performance.now() - started) };
  },

  // Publishes the fake camera/mic (getUserMedia inside the SDK).
  async publish({ audio = true, video = true, alias, timeoutMs = 15000 } = {}) {
    if (!rtc) throw new Error("not connected");
    const r = await withTimeout(rtc.publish({ audio, video }, undefined, alias), timeoutMs, "BandwidthRtc.publish");
    published.set(r.endpointId, r);
    return { streamId: r.endpointId, mediaTypes: r.mediaTypes, alias: r.alias, ...describeStream(r.mediaStream) };
  },

  // Publishes a MediaStream this page made (or its id from localToneMediaStream etc.).
  async publishStream(streamOrId, alias, { timeoutMs = 15000 } = {}) {
    if (!rtc) throw new Error("not connected");
    const s = resolveLocal(streamOrId);
    const r = await withTimeout(rtc.publish(s, undefined, alias), timeoutMs, "BandwidthRtc.publish");
    published.set(r.endpointId, r);
    return { streamId: r.endpointId, mediaTypes: r.mediaTypes, alias: r.alias, ...describeStream(r.mediaStream) };
  },

  // A tone (optionally plus the fake camera) published in one call.
  async publishTone({ freqHz = 440, alias, video = false, gain = 0.3, timeoutMs = 15000 } = {}) {
    const tone = localToneMediaStream(freqHz, { gain });
    const s = video ? combine(tone, await localCameraMediaStream({ video: true })) : tone;
    return harness.publishStream(s, alias, { timeoutMs });
  },

  async unpublish(streamId, { timeoutMs = 15000 } = {}) {
    if (!rtc) throw new Error("not connected");
    const ids = streamId ? [streamId] : [];
    await withTimeout(rtc.unpublish(...ids), timeoutMs, "BandwidthRtc.unpublish");
    if (streamId) published.delete(streamId);
    else published.clear();
  },

  // DTMF through the SDK (RTCDTMFSender: RFC 4733 telephone-events on the published audio).
  sendDtmf(tone, streamId) {
    if (!rtc) throw new Error("not connected");
    rtc.sendDtmf(tone, streamId);
    return true;
  },

  // The `uniqueId` the SDK put in its signalling URL (the device id patchbay reports).
  uniqueId() {
    const created = wsLog.filter((e) => e.event === "create").pop();
    return created ? new URL(created.url).searchParams.get("uniqueId") : null;
  },

  disconnect() {
    if (!rtc) return false;
    const instance = rtc;
    rtc = null;
    try {
      instance.disconnect();
    } finally {
      stopReconnecting(instance);
    }
    return true;
  },

  connected: () => rtc !== null,
  events: () => events.slice(),
  published: () => [...published.keys()],
  wsLog: () => wsLog.slice(),
  remoteStreams: () =>
    [...remote.values()].map((e) => ({
      streamId: e.stream.id,
      available: e.available,
      ...e.meta,
      tracks: e.stream.getTracks().map((t) => ({ kind: t.kind, readyState: t.readyState, muted: t.muted })),
      playError: e.playError,
    })),

  // Resolves with the first "available" event matching all given fields.
  async waitForStream({ alias, participantId, streamId, mediaType, timeoutMs = 15000 } = {}) {
    const match = (e) =>
      e.type === "available" &&
      (alias === undefined || e.alias === alias) &&
      (participantId === undefined || e.participantId === participantId) &&
      (streamId === undefined || e.streamId === streamId) &&
      (mediaType === undefined || (e.mediaTypes || []).includes(mediaType));
    return waitUntil(() => events.find(match), timeoutMs, `stream ${JSON.stringify({ alias, participantId, streamId, mediaType })}`);
  },

  async waitForStreamUnavailable(streamId, { timeoutMs = 15000 } = {}) {
    return waitUntil(
      () => events.find((e) => e.type === "unavailable" && e.streamId === streamId),
      timeoutMs,
      `onStreamUnavailable(${streamId})`
    );
  },

  // --- measurements (work on any stream id known to the page) ---
  async audioLevel(streamId, opts) {
    return (await analyse(streamId, opts)).rms;
  },
  async dominantFrequency(streamId, opts) {
    const a = await analyse(streamId, opts);
    return a.rms > 1e-4 ? a.peakHz : null;
  },
  analyse,
  async videoFramesDecoded(streamId, { durationMs = 0 } = {}) {
    const e = lookup(streamId);
    if (durationMs) await sleep(durationMs);
    const q = e.el && e.el.getVideoPlaybackQuality ? e.el.getVideoPlaybackQuality() : null;
    return {
      frames: e.frames,
      totalVideoFrames: q ? q.totalVideoFrames : 0,
      droppedVideoFrames: q ? q.droppedVideoFrames : 0,
      width: e.width || (e.el ? e.el.videoWidth : 0),
      height: e.height || (e.el ? e.el.videoHeight : 0),
      videoTracks: e.stream.getVideoTracks().length,
    };
  },

  // Inbound/outbound RTP stats of the SDK's own peer connections (read-only introspection).
  async rtpStats(which = "subscribe") {
    const d = rtc && rtc.delegate;
    const pc = d && (which === "publish" ? d.publishingPeerConnection : d.subscribingPeerConnection);
    if (!pc) return null;
    const out = [];
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" || s.type === "outbound-rtp") {
        out.push({
          type: s.type,
          kind: s.kind,
          packets: s.packetsReceived ?? s.packetsSent,
          bytes: s.bytesReceived ?? s.bytesSent,
          framesDecoded: s.framesDecoded,
          framesEncoded: s.framesEncoded,
          totalSamplesReceived: s.totalSamplesReceived,
          audioLevel: s.audioLevel,
        });
      }
    });
    return { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState, rtp: out };
  },

  // The ICE path each of the SDK's peer connections uses now: the selected candidate pair's
  // local and remote candidates (protocol, type, address, port; relayProtocol for a relay).
  async selectedPaths() {
    const d = rtc && rtc.delegate;
    const out = {};
    for (const [name, pc] of [
      ["publish", d && d.publishingPeerConnection],
      ["subscribe", d && d.subscribingPeerConnection],
    ]) {
      if (!pc) continue;
      const stats = await pc.getStats();
      const byId = new Map();
      stats.forEach((s) => byId.set(s.id, s));
      let pair = null;
      stats.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId) || pair;
      });
      const cand = (id) => {
        const c = id && byId.get(id);
        return c ? { protocol: c.protocol, type: c.candidateType, address: c.address, port: c.port, relayProtocol: c.relayProtocol, tcpType: c.tcpType } : null;
      };
      out[name] = pair
        ? { state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived, local: cand(pair.localCandidateId), remote: cand(pair.remoteCandidateId) }
        : { state: pc.iceConnectionState };
    }
    return out;
  },

  // --- local media ---
  localToneMediaStream: (freqHz, opts) => localToneMediaStream(freqHz, opts).id,
  localSilentMediaStream: () => localToneMediaStream(0).id,
  localCameraMediaStream: async (opts) => (await localCameraMediaStream(opts)).id,
  combineStreams: (...ids) => combine(...ids.map(resolveLocal)).id,
  localStreamObject: resolveLocal,

  // --- self-test: send local streams through an in-page RTCPeerConnection pair ---
  async loopback(streamIds, { timeoutMs = 10000 } = {}) {
    const pc1 = new RTCPeerConnection();
    const pc2 = new RTCPeerConnection();
    pc1.onicecandidate = (e) => e.candidate && pc2.addIceCandidate(e.candidate).catch(() => {});
    pc2.onicecandidate = (e) => e.candidate && pc1.addIceCandidate(e.candidate).catch(() => {});
    const received = new Map();
    pc2.ontrack = (e) => {
      for (const s of e.streams) received.set(s.id, s);
    };
    for (const id of streamIds) {
      const s = resolveLocal(id);
      for (const t of s.getTracks()) pc1.addTrack(t, s);
    }
    const offer = await pc1.createOffer();
    await pc1.setLocalDescription(offer);
    await pc2.setRemoteDescription(offer);
    const answer = await pc2.createAnswer();
    await pc2.setLocalDescription(answer);
    await pc1.setRemoteDescription(answer);
    await waitUntil(() => pc2.connectionState === "connected", timeoutMs, "loopback connection");
    (window.__loopbacks = window.__loopbacks || []).push([pc1, pc2]);
    // msid is kept, so the received stream has the sender's id
    for (const s of received.values()) attach(s, { origin: "loopback" });
    return [...received.keys()];
  },
};

window.harness = harness;

// ---------------------------------------------------------------------------------------------
// mockSfu: a stand-in for the media plane, used by selftest.mjs to exercise the SDK end to end
// without patchbay. A Node WebSocket server speaks the signalling; this page terminates the
// SDK's peer connections with real RTCPeerConnections and forwards received tracks.

function parseMsids(sdp) {
  // -> { msid: Set(kinds) } for live (port != 0, not inactive/recvonly) m-sections
  const out = {};
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const [kind, port] = section.split(" ");
    if (port === "0" || /\na=(inactive|recvonly)/.test(section)) continue;
    const m = section.match(/\na=msid:(\S+) /);
    if (!m || m[1] === "-") continue;
    (out[m[1]] = out[m[1]] || new Set()).add(kind.toUpperCase());
  }
  return out;
}

async function gathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return;
  await waitUntil(() => pc.iceGatheringState === "complete", timeoutMs, "ICE gathering", 20);
}

const sfu = {
  pubs: new Map(), // connId -> {pc}
  subs: new Map(), // connId -> {pc, rev, sent: Map(msid -> transceivers)}
  streams: new Map(), // msid -> {stream, participantId, alias, mediaTypes, connId}

  async answerPublish(connId, participantId, sdpOffer, mediaMetadata) {
    let p = sfu.pubs.get(connId);
    if (!p) {
      const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
      p = { pc, incoming: new Map() };
      pc.ontrack = (e) => {
        for (const s of e.streams) {
          p.incoming.set(s.id, s);
          // Chromium pulls a remote audio track only while a media element plays it; without
          // this the forwarded audio would be silence.
          attach(s, { origin: "sfu" });
        }
      };
      sfu.pubs.set(connId, p);
    }
    await p.pc.setRemoteDescription({ type: "offer", sdp: sdpOffer });
    const answer = await p.pc.createAnswer();
    await p.pc.setLocalDescription(answer);
    await gathered(p.pc);
    const live = parseMsids(sdpOffer);
    const streamMetadata = {};
    for (const [msid, kinds] of Object.entries(live)) {
      const meta = {
        endpointId: `ep-${msid}`,
        mediaTypes: [...kinds].sort(),
        participantId,
        ...(mediaMetadata.mediaStreams[msid] && mediaMetadata.mediaStreams[msid].alias
          ? { alias: mediaMetadata.mediaStreams[msid].alias }
          : {}),
      };
      streamMetadata[msid] = meta;
      const stream = p.incoming.get(msid);
      if (stream) sfu.streams.set(msid, { ...meta, stream, connId });
    }
    for (const [msid, s] of sfu.streams) if (s.connId === connId && !live[msid]) sfu.streams.delete(msid);
    return { sdpAnswer: p.pc.localDescription.sdp, endpointId: `pub-${connId}`, streamMetadata };
  },

  // Builds the next subscribe offer for connId carrying every stream not published by connId.
  // Returns null when nothing changed.
  async offerFor(connId) {
    let s = sfu.subs.get(connId);
    if (!s) {
      const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
      pc.createDataChannel("__heartbeat__", { id: 0, negotiated: true, protocol: "udp" });
      pc.createDataChannel("__diagnostics__", { id: 1, negotiated: true, protocol: "udp" });
      s = { pc, rev: 0, sent: new Map() };
      sfu.subs.set(connId, s);
    }
    const want = [...sfu.streams.entries()].filter(([, v]) => v.connId !== connId);
    let changed = s.rev === 0;
    for (const [msid, v] of want) {
      if (s.sent.has(msid)) continue;
      const trs = v.stream.getTracks().map((t) => s.pc.addTransceiver(t, { direction: "sendonly", streams: [v.stream] }));
      s.sent.set(msid, trs);
      changed = true;
    }
    for (const [msid, trs] of s.sent) {
      if (want.some(([m]) => m === msid)) continue;
      trs.forEach((t) => t.stop());
      s.sent.delete(msid);
      changed = true;
    }
    if (!changed) return null;
    const offer = await s.pc.createOffer();
    await s.pc.setLocalDescription(offer);
    await gathered(s.pc);
    const streamMetadata = {};
    for (const [msid, v] of want) {
      streamMetadata[msid] = { endpointId: v.endpointId, mediaTypes: v.mediaTypes, participantId: v.participantId };
      if (v.alias) streamMetadata[msid].alias = v.alias;
    }
    s.rev++;
    return { sdpOffer: s.pc.localDescription.sdp, sdpRevision: s.rev, endpointId: `sub-${connId}`, streamMetadata };
  },

  async acceptAnswer(connId, sdpAnswer) {
    const s = sfu.subs.get(connId);
    if (!s) throw new Error(`no subscribe pc for ${connId}`);
    await s.pc.setRemoteDescription({ type: "answer", sdp: sdpAnswer });
    return true;
  },

  drop(connId) {
    for (const m of [sfu.pubs, sfu.subs]) {
      const x = m.get(connId);
      if (x) x.pc.close();
      m.delete(connId);
    }
    for (const [msid, v] of sfu.streams) if (v.connId === connId) sfu.streams.delete(msid);
  },
};

window.mockSfu = sfu;
window.harnessReady = true;
