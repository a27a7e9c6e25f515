// A call survives a server restart: two pages in headless Chromium with Bandwidth's unmodified
// browser SDK are in a call through patchbay (each publishes its own tone and the fake camera, each is
// subscribed to the session); the server process is stopped and a new one is started with the
// same arguments (the same fixed HTTP, media UDP/ICE-TCP, SIP and RTP ports, the same data dir or
// database), and WITHOUT reloading the pages the media must come back, both ways, audio and
// video. Four cases: {embedded SQLite in a data dir of the case's own, PostgreSQL in a database
// of the case's own} x {kill -9 (SIGKILL), graceful stop (SIGTERM, waiting for the exit)}.
// Three more cases do the same for a PHONE call (the test phone, target/debug/examples/phone,
// with a page in its session): see "Phone calls survive a restart too" below.
//
// Evidence is only what the pages DECODE, measured the same way before and after the restart:
// every audio track a page's peer connections receive is analysed with WebAudio (the other
// page's tone frequency: A sends 440 Hz, B 1000 Hz), and every received video track is played
// in a fresh <video> whose painted frames are counted (requestVideoFrameCallback) over a window.
// "Back" means seen in windows that began after the new process printed its listening line. While no process runs, the same measurement must
// show nothing (proof that it is not stale). Server state is never used as evidence.
//
// Per case it prints one line, e.g.
//   restart: sqlite SIGKILL media back both ways after 3.4 s (audio A<-B 2.1 s, audio B<-A 3.0 s, video A<-B 2.1 s, video B<-A 3.4 s; stop took 0.0 s)
// with the times measured from the new process's listening line to the end of the first
// measurement window (1 s each) that showed each direction, and "both ways" to the first window
// that showed all four at once (no timing is asserted); a failure says which direction/kind did
// not come back, with each page's signalling (the subscribe offers' sdpRevisions) and the log.
// The graceful stop uses --drain-timeout 2 (the default 20 s only makes the case longer).
//
// PostgreSQL: $PATCHBAY_TEST_POSTGRES (tests/run.sh sets it; e.g.
// postgres://postgres@127.0.0.1:5432/test) is the admin connection; each case creates a fresh
// database pb_restart_<random> with psql (and its account with `patchbay account create`: only
// the default SQLite database gets one on first start) and drops it at the end. Without the
// variable the PostgreSQL cases fail (they never skip).
//
//   cargo build && cd tests/interop/browser && bash run.sh            # everything
//   cd tests/interop/browser && node --test restart.test.mjs           # this file (after run.sh once)
//   RUST_LOG=debug PATCHBAY_KEEP_LOGS=1 node --test restart.test.mjs   # keep each case's server.log
//   PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test node --test restart.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { existsSync } from "node:fs";
import { launchBrowser, instrumentPeerConnections, receivedAudioSpectra, anyCarries, withTimeout } from "./runner.mjs";
import { startPatchbay, freePortBlock, createAccount, createPostgresDatabase } from "./server.mjs";
import { dialPhone, PHONE_BIN } from "./phone.mjs";

const HZ = { A: 440, B: 1000 };
const SHARDS = 2; // media shards: UDP (and ICE-TCP) ports media .. media + SHARDS - 1
const DRAIN_S = 2; // --drain-timeout: the graceful stop's drain, short to keep the case short
const SETUP_MS = 20000; // bound for the call to carry media both ways before the restart
const BACK_MS = 60000; // bound, from the new process's listening line, for the media to come back
const STOP_MS = 30000; // bound for the process to exit after the signal
const WINDOW_MS = 1000; // one measurement window (audio and video, both pages at once)
const SETTLE_MS = 1000; // after the old process exited, before the "nothing while down" window
const MIN_FRAMES = 5; // painted frames in one window that count as "video is flowing" (~30 fps sent)
const MAX_FRAMES_DOWN = 1; // painted frames tolerated in the window while no server runs

const DIRECTIONS = ["audio A<-B", "audio B<-A", "video A<-B", "video B<-A"];

let b; // one Chromium for the file

before(async () => {
  b = await launchBrowser();
});
after(async () => {
  await b?.close();
});

// ---------------------------------------------------------------------------------------------
// Measurements: what a page decodes, over every track its peer connections receive.

// For every video track the page's peer connections currently receive, the frames painted in a
// fresh muted <video> playing it over durationMs. -> [{ trackId, mid, muted, frames, width, height }]
function receivedVideoFrames(p, { durationMs = WINDOW_MS } = {}) {
  return p.evaluate(
    async ({ durationMs }) => {
      const box = document.getElementById("media") || document.body;
      const probes = [];
      for (const pc of window.__pcs || []) {
        if (pc.connectionState === "closed") continue;
        for (const tr of pc.getTransceivers()) {
          const t = tr.receiver.track;
          if (!t || t.kind !== "video" || t.readyState !== "live") continue;
          if (!["recvonly", "sendrecv"].includes(tr.currentDirection)) continue;
          const el = document.createElement("video");
          el.muted = true;
          el.autoplay = true;
          el.playsInline = true;
          el.srcObject = new MediaStream([t]);
          box.appendChild(el);
          const pr = { t, tr, el, frames: 0, width: 0, height: 0, done: false };
          const onFrame = (_now, md) => {
            if (pr.done) return;
            pr.frames++;
            pr.width = md.width;
            pr.height = md.height;
            el.requestVideoFrameCallback(onFrame);
          };
          el.requestVideoFrameCallback(onFrame);
          el.play().catch(() => {});
          probes.push(pr);
        }
      }
      await new Promise((r) => setTimeout(r, durationMs));
      return probes.map((pr) => {
        pr.done = true;
        pr.el.srcObject = null;
        pr.el.remove();
        return { trackId: pr.t.id, mid: pr.tr.mid, muted: pr.t.muted, frames: pr.frames, width: pr.width, height: pr.height };
      });
    },
    { durationMs }
  );
}

const videoFlows = (frames) => frames.some((v) => v.frames >= MIN_FRAMES && v.width > 0 && v.height > 0);

// One window on both pages at once. -> { at (Date.now() at its end), ok: {direction: bool}, readings }
async function measure(A, B) {
  const bound = WINDOW_MS + 15000;
  const [audioAtA, audioAtB, videoAtA, videoAtB] = await Promise.all([
    withTimeout(receivedAudioSpectra(A.page, [HZ.A, HZ.B], { durationMs: WINDOW_MS }), bound, "A: received audio"),
    withTimeout(receivedAudioSpectra(B.page, [HZ.A, HZ.B], { durationMs: WINDOW_MS }), bound, "B: received audio"),
    withTimeout(receivedVideoFrames(A.page), bound, "A: received video"),
    withTimeout(receivedVideoFrames(B.page), bound, "B: received video"),
  ]);
  return {
    at: Date.now(),
    ok: {
      "audio A<-B": anyCarries(audioAtA, HZ.B),
      "audio B<-A": anyCarries(audioAtB, HZ.A),
      "video A<-B": videoFlows(videoAtA),
      "video B<-A": videoFlows(videoAtB),
    },
    readings: { audioAtA, audioAtB, videoAtA, videoAtB },
  };
}

// Measures window after window (each starting after `since`) until one shows all four
// directions at once, or until `since + timeoutMs`. -> { all: ms or null, first: {direction: ms}, last }
async function watch(A, B, { since, timeoutMs }) {
  const first = {};
  let last;
  for (;;) {
    last = await measure(A, B);
    const at = last.at - since;
    for (const d of DIRECTIONS) if (last.ok[d] && first[d] === undefined) first[d] = at;
    if (DIRECTIONS.every((d) => last.ok[d])) return { all: at, first, last };
    if (last.at >= since + timeoutMs) return { all: null, first, last };
  }
}

const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const fmtFirst = (first) => DIRECTIONS.map((d) => `${d} ${first[d] === undefined ? "never" : secs(first[d])}`).join(", ");

// One signalling log entry, short: the subscribe offers' sdpRevision instead of their SDP.
function brief(x) {
  const out = { at: x.at, s: x.socket, ev: x.event, m: x.method, id: x.id, code: x.code };
  let msg = null;
  try {
    msg = x.raw ? JSON.parse(x.raw) : null;
  } catch {}
  if (msg?.params?.sdpRevision !== undefined) out.sdpRevision = msg.params.sdpRevision;
  else if (msg?.error) out.error = msg.error;
  else if (x.raw && !/sdp(Offer|Answer)/.test(x.raw)) out.raw = x.raw.slice(0, 160);
  return out;
}

function readingsText({ readings }) {
  const a = (xs) => JSON.stringify(xs.map((s) => ({ mid: s.mid, muted: s.muted, rms: +s.rms.toFixed(4), bands: Object.fromEntries(Object.entries(s.bands).map(([k, v]) => [k, +v.toFixed(3)])) })));
  const v = (xs) => JSON.stringify(xs.map((f) => ({ mid: f.mid, muted: f.muted, frames: f.frames, size: `${f.width}x${f.height}` })));
  return `audio at A ${a(readings.audioAtA)}; audio at B ${a(readings.audioAtB)}; video at A ${v(readings.videoAtA)}; video at B ${v(readings.videoAtB)}`;
}

// ---------------------------------------------------------------------------------------------
// One case

async function restartCase(t, { store, signal }) {
  const label = `${store} ${signal}`;
  const t0 = Date.now();
  const pages = [];
  let pb = null;
  let db = null;
  let phase = "setup";
  let restartedAt = null; // Date.now() when the new process was listening
  try {
    const env = {};
    let databaseUrl = null;
    let account = null;
    if (store === "postgres") {
      db = await createPostgresDatabase("pb_restart");
      databaseUrl = db.url;
      account = await createAccount({ databaseUrl }); // only the default SQLite gets one on first start
    } else {
      env.DATABASE_URL = undefined; // the default: SQLite in the case's own data dir
    }
    const base = await freePortBlock(SHARDS + 4);
    const ports = { http: base, sip: base + 1, media: base + 2, rtp: [base + 2 + SHARDS, base + 3 + SHARDS] };
    pb = await startPatchbay({
      ports,
      databaseUrl,
      account,
      env,
      args: ["--media-shards", String(SHARDS), "--media-tcp-listen", "same", "--drain-timeout", String(DRAIN_S)],
    });
    const session = await pb.createSession(`restart ${label}`);
    const join = async (tag) => {
      const { participant, token } = await pb.createParticipant({ tag, publishPermissions: ["AUDIO", "VIDEO"] });
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      const page = await b.newParticipant(`${tag} (${label})`);
      pages.push(page);
      await instrumentPeerConnections(page);
      page.participantId = participant.id;
      return { id: participant.id, token, page };
    };
    const A = await join("A");
    const B = await join("B");
    await Promise.all([A, B].map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: 15000 })));
    await Promise.all([
      A.page.publishTone({ freqHz: HZ.A, alias: "A", video: true, timeoutMs: 15000 }),
      B.page.publishTone({ freqHz: HZ.B, alias: "B", video: true, timeoutMs: 15000 }),
    ]);
    await Promise.all([
      A.page.waitForStream({ participantId: B.id, timeoutMs: SETUP_MS }),
      B.page.waitForStream({ participantId: A.id, timeoutMs: SETUP_MS }),
    ]);

    // 1. The call carries media both ways.
    phase = "before the restart";
    const setupFrom = Date.now();
    const setup = await watch(A, B, { since: setupFrom, timeoutMs: SETUP_MS });
    assert.ok(
      setup.all !== null,
      `before the restart (${label}) the call never carried media both ways within ${SETUP_MS} ms: ` +
        `${DIRECTIONS.filter((d) => !setup.last.ok[d]).join(", ")} missing (first seen: ${fmtFirst(setup.first)}); last: ${readingsText(setup.last)}`
    );

    // 2. Stop the process; while none runs, the pages decode nothing (the measurement is fresh).
    phase = `stopping (${signal})`;
    const stopped = await pb.kill(signal, { timeoutMs: STOP_MS });
    if (signal === "SIGKILL") assert.equal(stopped.signal, "SIGKILL", `the process was killed: ${JSON.stringify(stopped)}`);
    phase = "server down";
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const down = await measure(A, B);
    const leaked = ["audio A<-B", "audio B<-A"].filter((d) => down.ok[d]);
    const downFrames = [...down.readings.videoAtA, ...down.readings.videoAtB].reduce((m, v) => Math.max(m, v.frames), 0);
    assert.deepEqual(leaked, [], `with no server running (${label}) the pages still decoded the other's tone: the measurement is stale; ${readingsText(down)}`);
    assert.ok(downFrames <= MAX_FRAMES_DOWN, `with no server running (${label}) a page still painted ${downFrames} video frames in ${WINDOW_MS} ms: ${readingsText(down)}`);

    // 3. A new process with the same arguments; the pages are left as they are.
    phase = "restarting";
    const again = await pb.startAgain();
    restartedAt = again.readyAt;
    assert.equal(again.url, pb.url, "the new process listens on the same HTTP address");
    assert.deepEqual(again.media, pb.media, "the new process has the same media candidates (UDP and ICE-TCP)");
    assert.equal(again.sip, pb.sip, "the new process has the same SIP address");

    // 4. The media comes back, both ways, audio and video, measured from its listening line.
    phase = "after the restart";
    const back = await watch(A, B, { since: again.readyAt, timeoutMs: BACK_MS });
    if (back.all === null) {
      const missing = DIRECTIONS.filter((d) => back.first[d] === undefined);
      const notNow = DIRECTIONS.filter((d) => back.first[d] !== undefined && !back.last.ok[d]);
      console.log(`restart: ${label} media NOT back within ${secs(BACK_MS)} of the new process listening (${fmtFirst(back.first)})`);
      assert.fail(
        `after the restart (${label}) the media did not come back within ${BACK_MS} ms of the new process listening: ` +
          (missing.length ? `never came back: ${missing.join(", ")}` : "") +
          (missing.length && notNow.length ? "; " : "") +
          (notNow.length ? `came back but not all at once: ${notNow.join(", ")}` : "") +
          ` (first seen: ${fmtFirst(back.first)}); last window: ${readingsText(back.last)}`
      );
    }
    const line = `restart: ${label} media back both ways after ${secs(back.all)} (${fmtFirst(back.first)}; stop took ${secs(stopped.ms)})`;
    console.log(line);
  } catch (e) {
    const diag = [];
    for (const p of pages) {
      const events = await p.events().catch(() => []);
      const ws = await p.wsLog().catch(() => []);
      const sub = await p.rtpStats("subscribe").catch(() => null);
      const pub = await p.rtpStats("publish").catch(() => null);
      // The sdpRevision of every subscribe offer the page got, "|" where the new process listened.
      const revs = [];
      for (const x of ws) {
        const r = brief(x);
        if (restartedAt !== null && x.at >= restartedAt && !revs.includes("|")) revs.push("|");
        if (r.m === "sdpOffer" && r.ev === "recv") revs.push(r.sdpRevision);
      }
      diag.push(
        `--- page ${p.name} (participant ${p.participantId})`,
        `events: ${JSON.stringify(events)}`,
        `subscribe offers' sdpRevision, in order ("|": the new process listening): ${revs.join(" ")}`,
        `publish pc: ${JSON.stringify(pub)}`,
        `subscribe pc: ${JSON.stringify(sub)}`,
        `signalling (last 15): ${JSON.stringify(ws.slice(-15).map(brief))}`,
        `console (last 10): ${p.console.slice(-10).join(" | ")}`
      );
    }
    let extra = `\n\n[${label}, during "${phase}", after ${Date.now() - t0} ms]\n${diag.join("\n")}`;
    if (pb) {
      const tail = pb.stderrLines().filter((l) => !/^\S+\s+(DEBUG|TRACE) /.test(l)).slice(-40);
      extra += `\n--- patchbay stderr (last 40 lines above DEBUG; log ${pb.logPath}${process.env.PATCHBAY_KEEP_LOGS ? ", kept" : ""}):\n${tail.join("\n")}`;
    }
    e.message += extra;
    // The spec reporter prints the stack, which holds the message as it was when thrown.
    if (typeof e.stack === "string") {
      const at = e.stack.indexOf("\n    at ");
      e.stack = `${e.name}: ${e.message}${at >= 0 ? e.stack.slice(at) : ""}`;
    }
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb?.stop().catch(() => {});
    if (db) await db.drop().catch((e) => console.error(`restart: could not drop database ${db.name}: ${e.message}`));
    t.diagnostic(`${t.name}: ${Date.now() - t0} ms`);
  }
}

// ---------------------------------------------------------------------------------------------

const CASE_TIMEOUT = 300000; // above the sum of the bounds inside; a passing case takes ~20 s, a failing one ~70 s

test("restart: SQLite (data dir), kill -9: the call's media comes back both ways", { timeout: CASE_TIMEOUT }, (t) =>
  restartCase(t, { store: "sqlite", signal: "SIGKILL" })
);

test("restart: SQLite (data dir), graceful stop (SIGTERM): the call's media comes back both ways", { timeout: CASE_TIMEOUT }, (t) =>
  restartCase(t, { store: "sqlite", signal: "SIGTERM" })
);

test("restart: PostgreSQL, kill -9: the call's media comes back both ways", { timeout: CASE_TIMEOUT }, (t) =>
  restartCase(t, { store: "postgres", signal: "SIGKILL" })
);

test("restart: PostgreSQL, graceful stop (SIGTERM): the call's media comes back both ways", { timeout: CASE_TIMEOUT }, (t) =>
  restartCase(t, { store: "postgres", signal: "SIGTERM" })
);

// ---------------------------------------------------------------------------------------------
// Phone calls survive a restart too. A page (publishing PHONE_HZ.page, subscribed to the
// session) and the test phone (target/debug/examples/phone with --commands: it sends
// PHONE_HZ.phone as µ-law RTP, prints on `report` what it heard since the last report, and on
// `hangup` a final line with the methods of the requests the server sent it) are in one session.
// The phone never re-dials: after the restart it is the same process and the same SIP call, its
// RTP still going to the same server port. Evidence, per measurement window (WINDOW_MS): the
// page's WebAudio spectra of every audio track it receives (anyCarries PHONE_HZ.phone) and the
// phone's report over the same window (dominant frequency near PHONE_HZ.page, share of power
// there). Three cases:
//   - SQLite, kill -9: media back both ways, and no request at all from the server (no BYE);
//   - PostgreSQL, SIGTERM: the graceful stop sends the phone no BYE (it is still in the call
//     after the stop), media back both ways, and no request at all from the server;
//   - SQLite, kill -9 with every port of --rtp-ports bound by the test before the new process
//     starts: it cannot take the call over, so the phone gets a BYE (within BYE_MS).
// Each prints one line, e.g.
//   restart: phone sqlite SIGKILL media back both ways after 2.3 s (page<-phone 1.1 s, phone<-page 2.3 s; stop took 0.0 s)
// with the times from the new process's listening line (no timing is asserted).

const PHONE_HZ = { page: 440, phone: 1000 };
const PHONE_BACK_MS = 45000; // bound, from the new process's listening line, for the media to come back
const BYE_MS = 20000; // bound, from the new process's listening line, for the BYE of a call not taken over
const PHONE_TOL_HZ = 15; // the phone's dominant-frequency scan has 10 Hz steps
// The phone's report over one window: the page's tone (gain 0.3) has RMS ~6950 when it arrives
// for the whole window; its share of the power is ~0.5 for a clean tone and lower with every
// concealed or skipped frame (phone.test.mjs); absent frequencies measure ~1e-7.
const PHONE_MIN_SAMPLES = 1600; // 0.2 s of the window heard
const PHONE_MIN_RMS = 300;
const PHONE_MIN_SHARE = 0.02;
const PHONE_DIRECTIONS = ["page<-phone", "phone<-page"];

const near = (hz, want, tol) => typeof hz === "number" && Math.abs(hz - want) <= tol;
const phoneHears = (r, hz) =>
  !!r && r.samples >= PHONE_MIN_SAMPLES && r.rms > PHONE_MIN_RMS && near(r.dominant_hz, hz, PHONE_TOL_HZ) && (r.share?.[String(hz)] ?? 0) > PHONE_MIN_SHARE;
const briefReport = (r) =>
  r ? JSON.stringify({ samples: r.samples, rms: Math.round(r.rms), dominant_hz: r.dominant_hz, share: Object.fromEntries(Object.entries(r.share || {}).map(([k, v]) => [k, +v.toPrecision(3)])) }) : "none (the phone is gone)";

// One window: the page's received audio and the phone's report over the same time (a report
// just before it clears what the phone heard until then). -> { at, ok: {direction: bool}, spectra, heard }
async function measurePhone(A, ph) {
  await withTimeout(ph.report(), 10000, "phone: report");
  const spectra = await withTimeout(receivedAudioSpectra(A.page, [PHONE_HZ.page, PHONE_HZ.phone], { durationMs: WINDOW_MS }), WINDOW_MS + 15000, "page: received audio");
  const heard = await withTimeout(ph.report(), 10000, "phone: report");
  return {
    at: Date.now(),
    ok: { "page<-phone": anyCarries(spectra, PHONE_HZ.phone), "phone<-page": phoneHears(heard, PHONE_HZ.page) },
    spectra,
    heard,
  };
}

// Window after window until one shows both directions, or until since + timeoutMs.
async function watchPhone(A, ph, { since, timeoutMs }) {
  const first = {};
  let last;
  for (;;) {
    last = await measurePhone(A, ph);
    const at = last.at - since;
    for (const d of PHONE_DIRECTIONS) if (last.ok[d] && first[d] === undefined) first[d] = at;
    if (PHONE_DIRECTIONS.every((d) => last.ok[d])) return { all: at, first, last };
    if (last.at >= since + timeoutMs) return { all: null, first, last };
  }
}

const fmtPhoneFirst = (first) => PHONE_DIRECTIONS.map((d) => `${d} ${first[d] === undefined ? "never" : secs(first[d])}`).join(", ");
const phoneReadings = (m) =>
  `page's received audio ${JSON.stringify(m.spectra.map((s) => ({ mid: s.mid, muted: s.muted, rms: +s.rms.toFixed(4), bands: Object.fromEntries(Object.entries(s.bands).map(([k, v]) => [k, +v.toFixed(3)])) })))}; ` +
  `phone heard ${briefReport(m.heard)}`;

// Binds UDP on every port low..high (0.0.0.0, as the server binds its RTP ports) so that no
// process can. -> { close() }
async function occupyUdpPorts(low, high) {
  const socks = [];
  const close = () => Promise.all(socks.map((s) => new Promise((r) => { try { s.close(r); } catch { r(); } })));
  try {
    for (let port = low; port <= high; port++) {
      const s = dgram.createSocket({ type: "udp4", reuseAddr: false });
      await new Promise((resolve, reject) => {
        s.once("error", (e) => reject(new Error(`cannot occupy UDP port ${port}: ${e.message}`)));
        s.bind(port, "0.0.0.0", resolve);
      });
      s.on("error", () => {});
      socks.push(s);
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { ports: socks.map((s) => s.address().port), close };
}

async function phoneRestartCase(t, { store, signal, occupyRtp = false }) {
  const label = `phone ${store} ${signal}${occupyRtp ? " (RTP ports taken)" : ""}`;
  const t0 = Date.now();
  const pages = [];
  let pb = null;
  let db = null;
  let ph = null;
  let occupied = null;
  let phase = "setup";
  let restartedAt = null;
  try {
    assert.ok(existsSync(PHONE_BIN), `test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
    const env = {};
    let databaseUrl = null;
    let account = null;
    if (store === "postgres") {
      db = await createPostgresDatabase("pb_restart");
      databaseUrl = db.url;
      account = await createAccount({ databaseUrl });
    } else {
      env.DATABASE_URL = undefined;
    }
    const base = await freePortBlock(SHARDS + 4);
    const ports = { http: base, sip: base + 1, media: base + 2, rtp: [base + 2 + SHARDS, base + 3 + SHARDS] };
    pb = await startPatchbay({
      ports,
      databaseUrl,
      account,
      env,
      args: ["--media-shards", String(SHARDS), "--media-tcp-listen", "same", "--drain-timeout", String(DRAIN_S)],
    });
    assert.ok(pb.sip, `patchbay did not print "patchbay SIP on ..." (${pb.logPath})`);
    const session = await pb.createSession(`restart ${label}`);

    // The page: publishes its tone, subscribed to the session.
    const a = await pb.createParticipant({ tag: "page", publishPermissions: ["AUDIO"] });
    await pb.addParticipant(session.id, a.participant.id, { sessionId: session.id });
    const page = await b.newParticipant(`page (${label})`);
    pages.push(page);
    await instrumentPeerConnections(page);
    page.participantId = a.participant.id;
    const A = { id: a.participant.id, page };
    await page.connect({ websocketUrl: pb.websocketUrl, token: a.token, timeoutMs: 15000 });
    await page.publishTone({ freqHz: PHONE_HZ.page, alias: "page", timeoutMs: 15000 });

    // The phone: subscribed to the session, dials with its token and stays on through the restart.
    const p = await pb.createParticipant({ tag: "phone", publishPermissions: ["AUDIO"] });
    await pb.addParticipant(session.id, p.participant.id, { sessionId: session.id });
    ph = dialPhone({ sip: pb.sip, token: p.token, toneHz: PHONE_HZ.phone, probe: [PHONE_HZ.page, PHONE_HZ.phone], seconds: 600 });
    let phoneEnded = false;
    ph.done.then(() => (phoneEnded = true));
    assert.ok(await withTimeout(ph.answered, 15000, "phone: answered"), `the phone's call was not answered: ${ph.describe()}`);
    await page.waitForStream({ participantId: p.participant.id, timeoutMs: SETUP_MS });

    // 1. The call carries the tones both ways.
    phase = "before the restart";
    const setup = await watchPhone(A, ph, { since: Date.now(), timeoutMs: SETUP_MS });
    assert.ok(
      setup.all !== null,
      `before the restart (${label}) the call never carried the tones both ways within ${SETUP_MS} ms: ` +
        `${PHONE_DIRECTIONS.filter((d) => !setup.last.ok[d]).join(", ")} missing (first seen: ${fmtPhoneFirst(setup.first)}); last: ${phoneReadings(setup.last)}`
    );

    // 2. Stop the process. A graceful stop leaves the call up: the phone gets no BYE (it would
    //    end its call on one). While no process runs, neither side hears the other.
    phase = `stopping (${signal})`;
    const stopped = await pb.kill(signal, { timeoutMs: STOP_MS });
    if (signal === "SIGKILL") assert.equal(stopped.signal, "SIGKILL", `the process was killed: ${JSON.stringify(stopped)}`);
    phase = "server down";
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    assert.ok(!phoneEnded, `the phone's call ended when the server stopped (${label}): ${ph.describe()}`);
    const down = await measurePhone(A, ph);
    const leaked = PHONE_DIRECTIONS.filter((d) => down.ok[d]);
    assert.deepEqual(leaked, [], `with no server running (${label}) a side still heard the other: the measurement is stale; ${phoneReadings(down)}`);
    assert.ok(!phoneEnded, `the phone's call ended while no server ran (${label}): ${ph.describe()}`);

    // 3. The call cannot be taken over: its RTP port (every port of the range) is taken.
    if (occupyRtp) {
      phase = "occupying the RTP ports";
      occupied = await occupyUdpPorts(ports.rtp[0], ports.rtp[1]);
    }

    // 4. A new process with the same arguments; the page and the phone are left as they are.
    phase = "restarting";
    const again = await pb.startAgain();
    restartedAt = again.readyAt;
    assert.equal(again.sip, pb.sip, "the new process has the same SIP address");

    if (occupyRtp) {
      // 5a. The phone gets a BYE: its call ends, its final line lists it.
      phase = "waiting for the BYE";
      const left = Math.max(0, again.readyAt + BYE_MS - Date.now());
      let timer;
      const r = await Promise.race([ph.done, new Promise((res) => (timer = setTimeout(() => res(null), left)))]).finally(() => clearTimeout(timer));
      const byeAt = Date.now() - again.readyAt;
      if (r === null) {
        console.log(`restart: ${label} NO BYE within ${secs(BYE_MS)} of the new process listening`);
        assert.fail(`the new process (${label}) could not re-bind the call's RTP port (${occupied.ports.join(", ")} held by the test) but the phone got no BYE within ${BYE_MS} ms of it listening: ${ph.describe()}`);
      }
      assert.ok(r.final, `the phone printed no final line: ${ph.describe()}`);
      assert.equal(r.final.bye_from_server, true, `the phone's call ended without a BYE from the server: ${ph.describe()}`);
      assert.ok(r.final.server_requests.includes("BYE"), `the phone's final line lists no BYE: ${ph.describe()}`);
      console.log(`restart: ${label} BYE to the phone after ${secs(byeAt)} (server requests ${JSON.stringify(r.final.server_requests)}; stop took ${secs(stopped.ms)})`);
      return;
    }

    // 5b. The media comes back both ways, measured from the new process's listening line.
    phase = "after the restart";
    const back = await watchPhone(A, ph, { since: again.readyAt, timeoutMs: PHONE_BACK_MS });
    if (back.all === null) {
      console.log(`restart: ${label} media NOT back within ${secs(PHONE_BACK_MS)} of the new process listening (${fmtPhoneFirst(back.first)})`);
      assert.fail(
        `after the restart (${label}) the tones did not come back both ways within ${PHONE_BACK_MS} ms of the new process listening ` +
          `(first seen: ${fmtPhoneFirst(back.first)}; phone's call ${phoneEnded ? "ENDED" : "still up"}); last window: ${phoneReadings(back.last)}`
      );
    }

    // 6. The same call all along: the phone hangs up now; the server sent it nothing (no BYE).
    phase = "hanging up";
    assert.ok(!phoneEnded, `the phone's call ended (${label}): ${ph.describe()}`);
    const final = await ph.hangup();
    const answers = (ph.describe().match(/phone: answered/g) || []).length;
    assert.equal(answers, 1, `the phone answered ${answers} times: ${ph.describe()}`);
    assert.equal(final.bye_from_server, false, `the server hung up on the phone (${label}): ${ph.describe()}`);
    assert.deepEqual(final.server_requests, [], `the server sent the phone requests during the call (${label}): ${ph.describe()}`);
    console.log(`restart: ${label} media back both ways after ${secs(back.all)} (${fmtPhoneFirst(back.first)}; stop took ${secs(stopped.ms)}; server requests to the phone ${JSON.stringify(final.server_requests)})`);
  } catch (e) {
    const diag = [];
    if (ph) {
      ph.kill();
      await ph.done;
      diag.push(`--- ${ph.describe()}`);
    }
    for (const p of pages) {
      const events = await p.events().catch(() => []);
      const ws = await p.wsLog().catch(() => []);
      const sub = await p.rtpStats("subscribe").catch(() => null);
      diag.push(
        `--- page ${p.name} (participant ${p.participantId})`,
        `events: ${JSON.stringify(events)}`,
        `subscribe pc: ${JSON.stringify(sub)}`,
        `signalling (last 15): ${JSON.stringify(ws.slice(-15).map(brief))}`,
        `console (last 10): ${p.console.slice(-10).join(" | ")}`
      );
    }
    let extra = `\n\n[${label}, during "${phase}", after ${Date.now() - t0} ms${restartedAt ? `, ${Date.now() - restartedAt} ms after the new process listened` : ""}]\n${diag.join("\n")}`;
    if (pb) {
      const lines = pb.stderrLines();
      const phoneLines = lines.filter((l) => /phone call|SIP|stored phone|# server\.mjs/.test(l)).slice(-30);
      const tail = lines.filter((l) => !/^\S+\s+(DEBUG|TRACE) /.test(l)).slice(-40);
      extra += `\n--- patchbay stderr, phone/SIP lines (last 30):\n${phoneLines.join("\n")}`;
      extra += `\n--- patchbay stderr (last 40 lines above DEBUG; log ${pb.logPath}${process.env.PATCHBAY_KEEP_LOGS ? ", kept" : ""}):\n${tail.join("\n")}`;
    }
    e.message += extra;
    if (typeof e.stack === "string") {
      const at = e.stack.indexOf("\n    at ");
      e.stack = `${e.name}: ${e.message}${at >= 0 ? e.stack.slice(at) : ""}`;
    }
    throw e;
  } finally {
    if (ph) {
      ph.kill();
      await ph.done;
    }
    for (const p of pages) await p.close().catch(() => {});
    await pb?.stop().catch(() => {});
    await occupied?.close().catch(() => {});
    if (db) await db.drop().catch((e) => console.error(`restart: could not drop database ${db.name}: ${e.message}`));
    t.diagnostic(`${t.name}: ${Date.now() - t0} ms`);
  }
}

test("restart: phone call, SQLite (data dir), kill -9: taken over, the tones come back both ways, no BYE", { timeout: CASE_TIMEOUT }, (t) =>
  phoneRestartCase(t, { store: "sqlite", signal: "SIGKILL" })
);

test("restart: phone call, PostgreSQL, graceful stop (SIGTERM): no BYE, taken over, the tones come back both ways", { timeout: CASE_TIMEOUT }, (t) =>
  phoneRestartCase(t, { store: "postgres", signal: "SIGTERM" })
);

test("restart: phone call, SQLite (data dir), kill -9, its RTP port taken: the new process sends the phone a BYE", { timeout: CASE_TIMEOUT }, (t) =>
  phoneRestartCase(t, { store: "sqlite", signal: "SIGKILL", occupyRtp: true })
);
