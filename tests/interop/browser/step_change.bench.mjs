// A step change on a subscriber's link (issue 21, "2 Mbit/s → 300 kbit/s → 2 Mbit/s: down within
// 2 s, back to full quality within 10 s, at most two pause/resume cycles per minute"):
// measurement, not a test.
//
//   cargo build && cd tests/interop/browser && npm ci && npm run build     # once
//   node step_change.bench.mjs --runs 3                                    # as root
//
// Each run: one session with a publisher (the 440 Hz tone plus Chromium's fake camera) and two
// subscribers, all subscribed session-wide, with patchbay run with --subscriber-bwe true (the
// allocation that pauses video only works then). The publisher and the clean subscriber are
// pages of one Chromium on the host; the stepped subscriber is a page of a second Chromium inside
// a network namespace (netns.mjs) whose veth delivers --high-kbps (2000) toward it, then
// --low-kbps (300), then --high-kbps again (`tc tbf`, at most --queue-ms 200 ms queued), for
// --phases 20,30,40 seconds. The page loads and connects over the unshaped link; the 2 Mbit/s
// shaping starts before the publisher publishes. The timeline starts once the stepped page
// decodes video and has for --settle 5 s more.
//
// Every --sample-ms (500) ms through the timeline it reads, at once: REST `GET …/participants/{p}/
// quality` of both subscribers (`pausedVideoTracks`, `level`, `estimateBps`; patchbay samples
// these once a second, so a REST time is late by up to about 1 s plus the sampling period),
// /metrics (`patchbay_media_video_pauses_total` / `_resumes_total`, every shard summed), and
// getStats() of both subscriber pages (video framesDecoded, audio concealedSamples /
// totalSamplesReceived), plus the publisher's keyFramesEncoded at each phase boundary.
// patchbay runs with its allocation's debug lines on (RUST_LOG ...,patchbay::media::relay=debug),
// whose timestamps give when each pause and resume was decided. Derived, per run:
//   pausedAfterMs         drop → the first "video paused" in the server's log after it
//   resumedAfterMs        restore → the first "video resumed" in the log after it
//   allocationLog         every pause / resume in the log over the timeline (s from its start)
//   restPausedAfterMs     drop → the first sample whose REST shows the stepped video paused
//   lastFrameAfterDropMs  drop → the last sample in which the stepped page decoded a frame before
//                         that pause (what the viewer sees: the picture stops)
//   restResumedAfterMs    restore → the first sample whose REST shows nothing paused
//   framesAfterMs         restore → the first sample in which the stepped page decoded frames
//   fullRateAfterMs       restore → the first sample from which on the stepped page's frame rate
//                         over the last 2 s stays at ≥ 90 % of the clean page's for 3 s
//   pauses / resumes      /metrics counters over the timeline (and per phase); a cycle is a
//                         pause, and cyclesPerMinute = pauses / timeline minutes
//   audioConcealment      the stepped page's concealedSamples / totalSamplesReceived per phase
//   estimateTimeline      each second: [s, the stepped subscriber's estimateBps in kbit/s, paused tracks]
// One JSON line per run on stdout, then one with the medians ({"kind":"summary"}); progress on
// stderr. Options: --runs N, --high-kbps, --low-kbps, --phases A,B,C, --queue-ms, --settle S,
// --sample-ms, --bwe false (patchbay without estimation, for comparison). Env: CHROMIUM_PATH,
// PATCHBAY_BIN, HARNESS_VERBOSE=1. Needs root, `ip`, `tc` and `nft` (netns.mjs says which is
// missing).

import os from "node:os";
import { instrumentPeerConnections, launchBrowser } from "./runner.mjs";
import { netnsUnavailable } from "./netns.mjs";
import { joinSession, median, metricTotal, startLinkServer, of, openPageInNamespace, pageStats, r3, sleep, sum, until } from "./linkstats.mjs";

const T = 30000;
const log = (...a) => process.stderr.write(`[step_change ${new Date().toISOString().slice(11, 19)}] ${a.join(" ")}\n`);

function parseArgs(argv) {
  const o = { runs: 3, highKbps: 2000, lowKbps: 300, phases: [20, 30, 40], queueMs: 200, settle: 5, sampleMs: 500, bwe: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => argv[++i];
    if (a === "--runs") o.runs = Number(v());
    else if (a === "--high-kbps") o.highKbps = Number(v());
    else if (a === "--low-kbps") o.lowKbps = Number(v());
    else if (a === "--phases") o.phases = v().split(",").map(Number);
    else if (a === "--queue-ms") o.queueMs = Number(v());
    else if (a === "--settle") o.settle = Number(v());
    else if (a === "--sample-ms") o.sampleMs = Number(v());
    else if (a === "--bwe") o.bwe = v() !== "false";
    else if (a === "-h" || a === "--help") o.help = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (o.phases.length !== 3 || !o.phases.every((s) => s > 0)) throw new Error("--phases takes three positive durations in seconds: high,low,high");
  return o;
}

// /metrics: the sum over shards of each counter named.
async function metricTotals(pb, names) {
  const out = {};
  for (const n of names) out[n] = await metricTotal(pb, n);
  return out;
}
const DEFAULT_LOG_FILTER = "info,is::stun=error"; // patchbay's own default (src/app/request_log.rs)

// The allocation's decisions from the server's log: [{ at (epoch ms), what: "paused"|"resumed", device }]
function allocationEvents(pb) {
  const out = [];
  for (const line of pb.stderrLines()) {
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z).*video (paused|resumed)/.exec(line);
    if (m) out.push({ at: Date.parse(m[1]), what: m[2], device: /device=(\S+)/.exec(line)?.[1] ?? null });
  }
  return out;
}
const PAUSES = "patchbay_media_video_pauses_total";
const RESUMES = "patchbay_media_video_resumes_total";

const frames = (s) => sum(of(s.inbound, "video"), "framesDecoded");
const audio = (s) => ({ concealed: sum(of(s.inbound, "audio"), "concealedSamples"), total: sum(of(s.inbound, "audio"), "totalSamplesReceived") });
const keyframes = (s) => sum(of(s.outbound, "video"), "keyFramesEncoded");
const concealment = (a0, a1) => (a1.total - a0.total > 0 ? r3((a1.concealed - a0.concealed) / (a1.total - a0.total)) : null);

// ---------------------------------------------------------------------------------------------
// One run.

async function oneRun(index, opts) {
  const cleanup = [];
  const t0 = Date.now();
  try {
    // The allocation's debug lines ("video paused" / "video resumed") time each decision to the
    // microsecond in the server's log.
    const { ns, pb } = await startLinkServer(
      { queueMs: opts.queueMs },
      {
        args: ["--subscriber-bwe", String(opts.bwe)],
        env: { RUST_LOG: process.env.RUST_LOG || `${DEFAULT_LOG_FILTER},patchbay::media::relay=debug` },
      },
      cleanup
    );
    log(`#${index}: patchbay ${pb.url}, namespace ${ns.name} (${ns.nsIp} -> ${ns.hostIp})`);
    const host = await launchBrowser();
    cleanup.push(() => host.close());
    const session = await pb.createSession(`step-change-${index}`);
    const pubP = await joinSession(pb, session, "publisher");
    const cleanP = await joinSession(pb, session, "clean");
    const stepP = await joinSession(pb, session, "stepped");
    const quality = (p) => pb.rest("GET", `/sessions/${session.id}/participants/${p.id}/quality`);

    const pub = await host.newParticipant("publisher");
    const clean = await host.newParticipant("clean");
    for (const p of [pub, clean]) await instrumentPeerConnections(p);
    const step = await openPageInNamespace(ns, pb, { tag: "stepped", token: stepP.token, timeoutMs: T }, cleanup);
    await clean.connect({ websocketUrl: pb.websocketUrl, token: cleanP.token, timeoutMs: T });
    await pub.connect({ websocketUrl: pb.websocketUrl, token: pubP.token, timeoutMs: T });
    const [high, low] = [opts.highKbps * 1000, opts.lowKbps * 1000];
    await ns.setRate({ rateIn: high });

    await pub.publishTone({ freqHz: 440, alias: "publisher", video: true, timeoutMs: T });
    const atClean = await clean.waitForStream({ participantId: pubP.id, timeoutMs: T });
    await clean.expectVideo(atClean.streamId, { minFrames: 10, timeoutMs: T });
    const atStep = await step.waitForStream({ participantId: pubP.id, timeoutMs: T });
    await step.expectVideo(atStep.streamId, { minFrames: 10, timeoutMs: T });
    await until(
      async () => {
        const q = await quality(stepP);
        return { ok: q.subscribe?.estimateBps > 0 || !opts.bwe, seen: q.subscribe };
      },
      T,
      "an estimate for the stepped subscriber"
    );
    await sleep(opts.settle * 1000);
    log(`#${index}: media flows; timeline ${opts.phases.join(" + ")} s at ${opts.highKbps} / ${opts.lowKbps} / ${opts.highKbps} kbit/s`);

    // The timeline.
    const samples = [];
    const boundaries = [];
    const sample = async () => {
      const at = Date.now();
      const [qs, qc, ss, sc, m] = await Promise.all([quality(stepP), quality(cleanP), pageStats(step), pageStats(clean), metricTotals(pb, [PAUSES, RESUMES])]);
      samples.push({
        at,
        stepPaused: qs.subscribe?.pausedVideoTracks ?? null,
        stepLevel: qs.level,
        stepEstimateBps: qs.subscribe?.estimateBps ?? null,
        cleanPaused: qc.subscribe?.pausedVideoTracks ?? null,
        cleanEstimateBps: qc.subscribe?.estimateBps ?? null,
        stepFrames: frames(ss),
        cleanFrames: frames(sc),
        stepAudio: audio(ss),
        pauses: m[PAUSES],
        resumes: m[RESUMES],
      });
    };
    const rates = [high, low, high];
    const start = Date.now();
    for (let ph = 0; ph < 3; ph++) {
      await ns.setRate({ rateIn: rates[ph] });
      const begin = Date.now();
      const [ps, ss, m] = await Promise.all([pageStats(pub), pageStats(step), metricTotals(pb, [PAUSES, RESUMES])]);
      boundaries.push({ at: begin, keyframes: keyframes(ps), stepAudio: audio(ss), pauses: m[PAUSES], resumes: m[RESUMES] });
      const end = begin + opts.phases[ph] * 1000;
      while (Date.now() < end) {
        const next = Date.now() + opts.sampleMs;
        await sample();
        await sleep(Math.max(0, Math.min(next, end) - Date.now()));
      }
    }
    const [ps, ss, m] = await Promise.all([pageStats(pub), pageStats(step), metricTotals(pb, [PAUSES, RESUMES])]);
    boundaries.push({ at: Date.now(), keyframes: keyframes(ps), stepAudio: audio(ss), pauses: m[PAUSES], resumes: m[RESUMES] });
    const stepVideo = of(ss.inbound, "video")[0] || {};

    // Derived figures.
    const [, tDrop, tRestore] = boundaries.map((b) => b.at);
    const rel = (t, from) => (t == null ? null : t - from);
    const inLow = samples.filter((s) => s.at >= tDrop && s.at < tRestore);
    const afterRestore = samples.filter((s) => s.at >= tRestore);
    const firstPaused = inLow.find((s) => s.stepPaused >= 1);
    // the last sample before that pause (or, with none, in the low phase) in which frames were decoded
    let lastFrame = null;
    for (let i = 1; i < samples.length; i++) {
      const s = samples[i];
      if (s.at < tDrop || s.at >= (firstPaused?.at ?? tRestore)) continue;
      if (s.stepFrames > samples[i - 1].stepFrames) lastFrame = s;
    }
    const resumed = afterRestore.find((s) => s.stepPaused === 0);
    let framesBack = null;
    for (let i = 1; i < samples.length && !framesBack; i++) if (samples[i].at >= tRestore && samples[i].stepFrames > samples[i - 1].stepFrames) framesBack = samples[i];
    // frame rates over the last 2 s at each sample; "full" from the first sample after the
    // restore from which the stepped page stays at >= 90 % of the clean page's for 3 s
    const fps = samples.map((s, i) => {
      let j = i;
      while (j > 0 && s.at - samples[j].at < 2000) j--;
      const dt = (s.at - samples[j].at) / 1000;
      return dt > 0 ? { at: s.at, step: (s.stepFrames - samples[j].stepFrames) / dt, clean: (s.cleanFrames - samples[j].cleanFrames) / dt } : null;
    });
    const ok = (f) => f && f.clean > 0 && f.step >= 0.9 * f.clean;
    let full = null;
    for (let i = 0; i < fps.length && !full; i++) {
      if (!fps[i] || fps[i].at < tRestore || !ok(fps[i])) continue;
      const run = fps.slice(i).filter((f) => f && f.at <= fps[i].at + 3000);
      if (run.every(ok) && run[run.length - 1].at - fps[i].at >= 2500) full = fps[i];
    }
    const phaseNames = ["high1", "low", "high2"];
    const perPhase = {};
    for (let ph = 0; ph < 3; ph++) {
      const [b0, b1] = [boundaries[ph], boundaries[ph + 1]];
      const secs = (b1.at - b0.at) / 1000;
      const inPhase = samples.filter((s) => s.at >= b0.at && s.at < b1.at);
      const f0 = inPhase[0];
      const f1 = inPhase[inPhase.length - 1];
      perPhase[phaseNames[ph]] = {
        seconds: r3(secs),
        stepAudioConcealment: concealment(b0.stepAudio, b1.stepAudio),
        stepFps: f0 && f1 && f1.at > f0.at ? r3((f1.stepFrames - f0.stepFrames) / ((f1.at - f0.at) / 1000)) : null,
        cleanFps: f0 && f1 && f1.at > f0.at ? r3((f1.cleanFrames - f0.cleanFrames) / ((f1.at - f0.at) / 1000)) : null,
        pauses: b1.pauses - b0.pauses,
        resumes: b1.resumes - b0.resumes,
        keyframesEncoded: b1.keyframes - b0.keyframes,
        stepEstimateKbps: { median: Math.round((median(inPhase.map((s) => s.stepEstimateBps)) ?? 0) / 1000), min: Math.round(Math.min(...inPhase.map((s) => s.stepEstimateBps ?? Infinity)) / 1000) },
        stepPausedSamples: inPhase.filter((s) => s.stepPaused >= 1).length,
        samples: inPhase.length,
      };
    }
    // REST-observed pause/resume transitions of the stepped subscriber (1 s granularity)
    const transitions = [];
    for (let i = 1; i < samples.length; i++) {
      const [a, b] = [samples[i - 1].stepPaused >= 1, samples[i].stepPaused >= 1];
      if (a !== b) transitions.push(`${b ? "pause" : "resume"}@${r3((samples[i].at - start) / 1000)}s`);
    }
    const events = allocationEvents(pb).filter((e) => e.at >= boundaries[0].at && e.at <= boundaries[3].at);
    const logPause = events.find((e) => e.what === "paused" && e.at >= tDrop);
    const logResume = events.find((e) => e.what === "resumed" && e.at >= tRestore);
    const minutes = (boundaries[3].at - boundaries[0].at) / 60000;
    const pauses = boundaries[3].pauses - boundaries[0].pauses;
    return {
      kind: "step",
      run: index,
      subscriberBwe: opts.bwe,
      rateKbps: [opts.highKbps, opts.lowKbps, opts.highKbps],
      phases: opts.phases,
      queueMs: opts.queueMs,
      loadAvg1m: r3(os.loadavg()[0]),
      samples: samples.length,
      pausedAfterMs: rel(logPause?.at, tDrop),
      resumedAfterMs: rel(logResume?.at, tRestore),
      allocationLog: events.map((e) => `${e.what}@${r3((e.at - start) / 1000)}s device ${e.device}`),
      restPausedAfterMs: rel(firstPaused?.at, tDrop),
      lastFrameAfterDropMs: rel(lastFrame?.at, tDrop),
      restResumedAfterMs: rel(resumed?.at, tRestore),
      framesAfterMs: rel(framesBack?.at, tRestore),
      fullRateAfterMs: rel(full?.at, tRestore),
      pauses,
      resumes: boundaries[3].resumes - boundaries[0].resumes,
      cyclesPerMinute: r3(pauses / minutes),
      cleanEverPaused: samples.some((s) => s.cleanPaused >= 1),
      restTransitions: transitions,
      // [s from the timeline's start, the stepped subscriber's estimate in kbit/s, its paused video tracks], each second
      estimateTimeline: samples.filter((_, i) => i % Math.max(1, Math.round(1000 / opts.sampleMs)) === 0).map((x) => [Math.round((x.at - start) / 100) / 10, x.stepEstimateBps == null ? null : Math.round(x.stepEstimateBps / 1000), x.stepPaused]),
      perPhase,
      stepVideoSizeAtEnd: `${stepVideo.frameWidth ?? 0}x${stepVideo.frameHeight ?? 0}`,
      link: await ns.stats(),
    };
  } finally {
    for (const f of cleanup.reverse()) await f().catch((e) => log(`cleanup: ${e.message}`));
    log(`#${index}: done in ${Math.round((Date.now() - t0) / 1000)} s`);
  }
}

function summarise(results, opts) {
  const pick = (f) => median(results.map(f));
  return {
    kind: "summary",
    runs: results.length,
    subscriberBwe: opts.bwe,
    rateKbps: [opts.highKbps, opts.lowKbps, opts.highKbps],
    phases: opts.phases,
    median: {
      pausedAfterMs: pick((r) => r.pausedAfterMs),
      restPausedAfterMs: pick((r) => r.restPausedAfterMs),
      lastFrameAfterDropMs: pick((r) => r.lastFrameAfterDropMs),
      resumedAfterMs: pick((r) => r.resumedAfterMs),
      restResumedAfterMs: pick((r) => r.restResumedAfterMs),
      framesAfterMs: pick((r) => r.framesAfterMs),
      fullRateAfterMs: pick((r) => r.fullRateAfterMs),
      pauses: pick((r) => r.pauses),
      cyclesPerMinute: pick((r) => r.cyclesPerMinute),
      stepAudioConcealment: Object.fromEntries(["high1", "low", "high2"].map((p) => [p, pick((r) => r.perPhase[p].stepAudioConcealment)])),
      stepFps: Object.fromEntries(["high1", "low", "high2"].map((p) => [p, pick((r) => r.perPhase[p].stepFps)])),
      cleanFps: Object.fromEntries(["high1", "low", "high2"].map((p) => [p, pick((r) => r.perPhase[p].cleanFps)])),
    },
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    console.log("usage: node step_change.bench.mjs [--runs N] [--high-kbps K] [--low-kbps K] [--phases A,B,C] [--queue-ms Q] [--settle S] [--sample-ms MS] [--bwe true|false]  (as root; see the top of the file)");
    return 0;
  }
  const why = netnsUnavailable();
  if (why) {
    console.error(`step_change.bench.mjs cannot run here: ${why}`);
    return 2;
  }
  const results = [];
  for (let i = 1; i <= opts.runs; i++) {
    try {
      const r = await oneRun(i, opts);
      results.push(r);
      console.log(JSON.stringify(r));
    } catch (e) {
      log(`#${i} FAILED: ${e.stack || e}`);
      console.log(JSON.stringify({ kind: "step", run: i, error: String(e.message || e).slice(0, 2000) }));
    }
  }
  console.log(JSON.stringify(summarise(results, opts)));
  return results.length ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  }
);
