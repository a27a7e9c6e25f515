// Library + CLI: drives Bandwidth's unmodified browser SDK in headless Debian Chromium.
//
//   import { launchBrowser } from "./runner.mjs";
//   const b = await launchBrowser();
//   const alice = await b.newParticipant("alice");
//   await alice.connect({ websocketUrl: "ws://127.0.0.1:8443", token });
//   const pub = await alice.publishTone({ freqHz: 440, alias: "alice-tone" });
//   const ev = await bob.waitForStream({ alias: "alice-tone" });
//   await bob.expectTone(ev.streamId, 440);
//   await b.close();
//
// CLI (see usage()):
//   node runner.mjs smoke --websocket-url ws://127.0.0.1:PORT --token JWT1 --token JWT2
//   node runner.mjs serve
//
// The page (page/index.html + page/dist/bundle.js, built by `npm run build`) is served by a tiny
// static server on http://127.0.0.1:<free port>: a secure context, so getUserMedia works.

import { createServer } from "node:http";
import { readFile, stat } from "node:fs/promises";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const PAGE_DIR = path.join(here, "page");

// Chromium honours only the LAST --disable-features switch, and Playwright passes its own list
// first (it does not merge ours into it). So ours repeats Playwright 1.65's list (several of which
// stop start-up requests to Google hosts) after the one feature we need off: mDNS hiding of host
// ICE candidates. Update this list when bumping playwright-core.
const PLAYWRIGHT_DISABLED_FEATURES = [
  "AvoidUnnecessaryBeforeUnloadCheckSync",
  "DestroyProfileOnBrowserClose",
  "HttpsUpgrades",
  "HttpsFirstBalancedModeAutoEnable",
  "LensOverlay",
  "MediaRouter",
  "PaintHolding",
  "ThirdPartyStoragePartitioning",
  "AvoidCorsURLLoaderRestartOnRedirect",
  "OptimizationHints",
  "NetworkTimeServiceQuerying",
  "AimEnabled",
  "PreconnectToSearch",
];

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--headless=new",
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection",
  `--disable-features=${["WebRtcHideLocalIpsWithMdns", ...PLAYWRIGHT_DISABLED_FEATURES].join(",")}`,
  "--autoplay-policy=no-user-gesture-required",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-quic",
];

export function chromiumPath() {
  const candidates = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no Chromium found (tried ${candidates.join(", ")}); apt-get install -y chromium`);
  return found;
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Static server for page/

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
  ".css": "text/css",
};

export async function startStaticServer(root = PAGE_DIR) {
  if (!existsSync(path.join(root, "dist", "bundle.js"))) {
    throw new Error(`${root}/dist/bundle.js is missing: run \`npm run build\` in ${here}`);
  }
  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, "http://127.0.0.1");
      let rel = decodeURIComponent(url.pathname);
      if (rel.endsWith("/")) rel += "index.html";
      const file = path.normalize(path.join(root, rel));
      if (!file.startsWith(root + path.sep)) throw Object.assign(new Error("forbidden"), { status: 403 });
      if (!(await stat(file)).isFile()) throw Object.assign(new Error("not a file"), { status: 404 });
      const body = await readFile(file);
      res.writeHead(200, {
        "content-type": TYPES[path.extname(file)] || "application/octet-stream",
        "cache-control": "no-store",
      });
      res.end(body);
    } catch (e) {
      res.writeHead(e.status || 404, { "content-type": "text/plain" });
      res.end(String(e.message || e));
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

// ---------------------------------------------------------------------------------------------
// Browser + participants

/**
 * Launches Debian Chromium (never a downloaded browser) with fake media devices and a fresh
 * temporary profile (Playwright's launch() makes a new user-data-dir and deletes it on close).
 * Returns { browser, baseUrl, newParticipant(name?), participants, close() }.
 */
export async function launchBrowser({ executablePath = chromiumPath(), args = [], headless = true, verbose = !!process.env.HARNESS_VERBOSE } = {}) {
  const web = await startStaticServer();
  let browser;
  try {
    browser = await chromium.launch({
      executablePath,
      headless,
      args: [...CHROMIUM_ARGS, ...args],
      timeout: 30000,
    });
  } catch (e) {
    await web.close();
    throw e;
  }
  const participants = [];
  const b = {
    browser,
    baseUrl: web.url,
    participants,
    async newParticipant(name = `p${participants.length + 1}`) {
      const p = await Participant.open(browser, web.url, name, { verbose });
      participants.push(p);
      return p;
    },
    async close() {
      for (const p of participants) await p.close().catch(() => {});
      await browser.close().catch(() => {});
      await web.close();
    },
  };
  return b;
}

export class Participant {
  static async open(browser, baseUrl, name, { verbose = false } = {}) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const p = new Participant(name, context, page, verbose);
    await page.goto(baseUrl + "index.html", { waitUntil: "load", timeout: 15000 });
    await page.waitForFunction(() => window.harnessReady === true, null, { timeout: 15000 });
    return p;
  }

  constructor(name, context, page, verbose) {
    this.name = name;
    this.context = context;
    this.page = page;
    this.console = [];
    const keep = (line) => {
      this.console.push(line);
      if (this.console.length > 5000) this.console.splice(0, 1000);
      if (verbose) process.stderr.write(`[${name}] ${line}\n`);
    };
    page.on("console", (m) => keep(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => keep(`pageerror: ${e.message}`));
    page.on("crash", () => keep("page crashed"));
  }

  /** Calls window.harness[method](...args) in the page; bounded in time. */
  async call(method, args = [], timeoutMs = 60000) {
    return withTimeout(
      this.page.evaluate(([m, a]) => window.harness[m](...a), [method, args]),
      timeoutMs,
      `${this.name}.${method}`
    );
  }

  /** Runs fn(arg) in the page (fn sees window.harness, window.mockSfu...). */
  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  // --- the SDK ---
  connect(opts) {
    return this.call("connect", [opts], (opts?.timeoutMs ?? 15000) + 5000);
  }
  publish(opts = {}) {
    return this.call("publish", [opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  publishStream(localStreamId, alias, opts = {}) {
    return this.call("publishStream", [localStreamId, alias, opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  publishTone(opts = {}) {
    return this.call("publishTone", [opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  unpublish(streamId, opts = {}) {
    return this.call("unpublish", [streamId, opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  disconnect() {
    return this.call("disconnect");
  }
  events() {
    return this.call("events");
  }
  waitForStream(opts = {}) {
    return this.call("waitForStream", [opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  waitForStreamUnavailable(streamId, opts = {}) {
    return this.call("waitForStreamUnavailable", [streamId, opts], (opts.timeoutMs ?? 15000) + 5000);
  }
  remoteStreams() {
    return this.call("remoteStreams");
  }
  wsLog() {
    return this.call("wsLog");
  }
  rtpStats(which = "subscribe") {
    return this.call("rtpStats", [which]);
  }

  // --- measurements ---
  audioLevel(streamId, opts) {
    return this.call("audioLevel", [streamId, opts]);
  }
  dominantFrequency(streamId, opts) {
    return this.call("dominantFrequency", [streamId, opts]);
  }
  analyse(streamId, opts) {
    return this.call("analyse", [streamId, opts]);
  }
  videoFramesDecoded(streamId, opts) {
    return this.call("videoFramesDecoded", [streamId, opts]);
  }

  /** Polls until streamId carries freqHz (±toleranceHz) above minLevel RMS; throws with the last reading. */
  async expectTone(streamId, freqHz, { toleranceHz = 30, minLevel = 0.01, timeoutMs = 10000, durationMs = 500 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    do {
      last = await this.analyse(streamId, { durationMs });
      if (last.rms >= minLevel && last.peakHz !== null && Math.abs(last.peakHz - freqHz) <= toleranceHz) return last;
    } while (Date.now() < deadline);
    throw new Error(`${this.name}: stream ${streamId} did not carry ${freqHz} Hz within ${timeoutMs} ms; last reading ${JSON.stringify(last)}`);
  }

  /** Polls until streamId has decoded at least minFrames video frames. */
  async expectVideo(streamId, { minFrames = 10, timeoutMs = 10000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    do {
      last = await this.videoFramesDecoded(streamId);
      if (last.frames >= minFrames && last.width > 0 && last.height > 0) return last;
      await sleep(200);
    } while (Date.now() < deadline);
    throw new Error(`${this.name}: stream ${streamId} decoded too few video frames within ${timeoutMs} ms: ${JSON.stringify(last)}`);
  }

  // --- local media (ids of MediaStreams that live in the page) ---
  localToneMediaStream(freqHz, opts) {
    return this.call("localToneMediaStream", [freqHz, opts]);
  }
  localSilentMediaStream() {
    return this.call("localSilentMediaStream");
  }
  localCameraMediaStream(opts) {
    return this.call("localCameraMediaStream", [opts]);
  }
  combineStreams(...ids) {
    return this.call("combineStreams", ids);
  }
  loopback(streamIds, opts) {
    return this.call("loopback", [streamIds, opts]);
  }

  async close() {
    await this.page.evaluate(() => window.harness && window.harness.disconnect()).catch(() => {});
    await this.context.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Page-side instrumentation for tests (the SDK and page stay as they are). Each function takes
// anything with evaluate(fn, arg): a Participant or a Playwright Page.

// Records every RTCPeerConnection the SDK uses, so that negative checks can look at everything
// the page receives, whether or not the SDK raised onStreamAvailable for it.
export async function instrumentPeerConnections(p) {
  await p.evaluate(() => {
    if (window.__pcs) return;
    window.__pcs = new Set();
    const orig = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = function (...args) {
      window.__pcs.add(this);
      return orig.apply(this, args);
    };
  });
}

// For every audio track the page's peer connections currently receive (transceiver direction
// recvonly/sendrecv), measures over durationMs: RMS and the fraction of spectral power within
// ±bandHz of each frequency in `freqs`. -> [{ trackId, mid, streams, rms, windows, bands: {hz: fraction} }]
export function receivedAudioSpectra(p, freqs, { durationMs = 3000, bandHz = 25 } = {}) {
  return p.evaluate(
    async ({ freqs, durationMs, bandHz }) => {
      const c = (window.__specCtx = window.__specCtx || new AudioContext());
      if (c.state !== "running") await c.resume().catch(() => {});
      const box = document.getElementById("media") || document.body;
      const probes = [];
      for (const pc of window.__pcs || []) {
        if (pc.connectionState === "closed") continue;
        for (const tr of pc.getTransceivers()) {
          const t = tr.receiver.track;
          if (!t || t.kind !== "audio" || t.readyState !== "live") continue;
          if (!["recvonly", "sendrecv"].includes(tr.currentDirection)) continue;
          const ms = new MediaStream([t]);
          // Chromium feeds a remote track to WebAudio only while a media element plays it.
          const el = document.createElement("audio");
          el.muted = true;
          el.srcObject = ms;
          box.appendChild(el);
          el.play().catch(() => {});
          const src = c.createMediaStreamSource(ms);
          const an = c.createAnalyser();
          an.fftSize = 8192;
          an.smoothingTimeConstant = 0;
          const sink = c.createGain();
          sink.gain.value = 0;
          src.connect(an);
          an.connect(sink);
          sink.connect(c.destination);
          probes.push({ t, tr, el, src, an, sink, power: new Float64Array(an.frequencyBinCount), sumSq: 0, n: 0, windows: 0 });
        }
      }
      const td = new Float32Array(8192);
      const fd = new Float32Array(4096);
      const deadline = performance.now() + durationMs;
      do {
        await new Promise((r) => setTimeout(r, 150));
        for (const pr of probes) {
          pr.an.getFloatTimeDomainData(td);
          for (let i = 0; i < td.length; i++) pr.sumSq += td[i] * td[i];
          pr.n += td.length;
          pr.an.getFloatFrequencyData(fd);
          for (let i = 0; i < fd.length; i++) if (Number.isFinite(fd[i])) pr.power[i] += Math.pow(10, fd[i] / 10);
          pr.windows++;
        }
      } while (performance.now() < deadline);
      const binHz = c.sampleRate / 8192;
      const out = probes.map((pr) => {
        let total = 0;
        for (let i = Math.ceil(50 / binHz); i < pr.power.length; i++) total += pr.power[i];
        const bands = {};
        for (const f of freqs) {
          let s = 0;
          for (let i = Math.max(0, Math.floor((f - bandHz) / binHz)); i <= Math.ceil((f + bandHz) / binHz); i++) s += pr.power[i] || 0;
          bands[f] = total > 0 ? s / total : 0;
        }
        try {
          pr.src.disconnect();
          pr.sink.disconnect();
        } catch {}
        pr.el.srcObject = null;
        pr.el.remove();
        return {
          trackId: pr.t.id,
          mid: pr.tr.mid,
          muted: pr.t.muted,
          rms: Math.sqrt(pr.sumSq / Math.max(1, pr.n)),
          windows: pr.windows,
          bands,
        };
      });
      return out;
    },
    { freqs, durationMs, bandHz }
  );
}

// A track "carries" hz when it is audible and most of its power sits at hz.
export const carries = (spectrum, hz) => spectrum.rms > 0.005 && spectrum.bands[hz] > 0.05;
export const anyCarries = (spectra, hz) => spectra.some((s) => carries(s, hz));


// ---------------------------------------------------------------------------------------------
// CLI

function usage() {
  return `usage:
  node runner.mjs smoke --websocket-url ws://127.0.0.1:PORT --token JWT [--token JWT ...] [--video] [--timeout-ms N]
      Each token becomes a participant that connects, publishes a tone (440, 1000, 700, 1500 ... Hz;
      plus the fake camera with --video) and expects every other participant's tone (and video)
      back as decoded media. Prints a JSON report; exits 1 on any failure.
  node runner.mjs serve
      Serves the page and prints its URL (for poking at it with another browser); Ctrl-C stops.
  env: CHROMIUM_PATH (default /usr/bin/chromium), HARNESS_VERBOSE=1 (echo page console)`;
}

function parseArgs(argv) {
  const out = { _: [], token: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--token") out.token.push(argv[++i]);
    else if (a === "--websocket-url") out.websocketUrl = argv[++i];
    else if (a === "--timeout-ms") out.timeoutMs = Number(argv[++i]);
    else if (a === "--video") out.video = true;
    else if (a === "-h" || a === "--help") out.help = true;
    else out._.push(a);
  }
  return out;
}

export const TONES = [440, 1000, 700, 1500, 550, 1250, 850, 1750];

export async function smoke({ websocketUrl, tokens, video = false, timeoutMs = 20000 }) {
  const b = await launchBrowser();
  const report = { websocketUrl, participants: [] };
  try {
    const ps = [];
    for (let i = 0; i < tokens.length; i++) ps.push(await b.newParticipant(`p${i + 1}`));
    for (let i = 0; i < ps.length; i++) await ps[i].connect({ websocketUrl, token: tokens[i], timeoutMs });
    const pubs = [];
    for (let i = 0; i < ps.length; i++) {
      pubs.push(await ps[i].publishTone({ freqHz: TONES[i % TONES.length], alias: `smoke-${i + 1}`, video, timeoutMs }));
    }
    let ok = true;
    for (let i = 0; i < ps.length; i++) {
      const r = { name: ps[i].name, published: pubs[i], received: [] };
      for (let j = 0; j < ps.length; j++) {
        if (i === j) continue;
        const got = { from: ps[j].name, alias: `smoke-${j + 1}` };
        try {
          const ev = await ps[i].waitForStream({ alias: got.alias, timeoutMs });
          got.event = ev;
          got.tone = await ps[i].expectTone(ev.streamId, TONES[j % TONES.length], { timeoutMs });
          if (video) got.video = await ps[i].expectVideo(ev.streamId, { timeoutMs });
          got.ok = true;
        } catch (e) {
          got.ok = ok = false;
          got.error = String(e.message || e);
          got.wsLog = (await ps[i].wsLog().catch(() => [])).map((x) => ({ ...x, raw: x.raw && x.raw.slice(0, 300) }));
          got.console = ps[i].console.slice(-50);
        }
        r.received.push(got);
      }
      report.participants.push(r);
    }
    report.ok = ok;
    return report;
  } finally {
    await b.close();
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cmd = args._[0];
  if (args.help || !cmd) {
    console.log(usage());
    return args.help ? 0 : 2;
  }
  if (cmd === "serve") {
    const web = await startStaticServer();
    console.log(web.url);
    await new Promise(() => {});
  }
  if (cmd === "smoke") {
    if (!args.websocketUrl || args.token.length < 1) {
      console.error(usage());
      return 2;
    }
    const report = await smoke({ websocketUrl: args.websocketUrl, tokens: args.token, video: args.video, timeoutMs: args.timeoutMs });
    console.log(JSON.stringify(report, null, 2));
    return report.ok ? 0 : 1;
  }
  console.error(usage());
  return 2;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      console.error(e);
      process.exit(1);
    }
  );
}
