// A thin subscriber (issue 21): measurement, not a test (today's figures miss the goals).
//
//   cargo build && cd tests/interop/browser && npm ci && npm run build     # once
//   node thin_link.bench.mjs --runs 3                                      # as root
//
// Each "thin" run: one session with a publisher (the 440 Hz tone plus Chromium's fake camera,
// as media.test.mjs publishes) and two subscribers, all subscribed session-wide. The publisher
// and the clean subscriber are pages of one Chromium on the host; the thin subscriber is a page
// of a second Chromium started inside a network namespace (netns.mjs) whose veth delivers
// --rate-kbps (default 300) toward it, queueing at most --queue-ms (default 200) ms. Each
// "baseline" run is the same without the thin subscriber. Runs alternate thin, baseline, ...
//
// The thin page loads and connects over an unshaped link (the 1.2 MB page would take 35 s at
// 300 kbit/s); the shaping starts before the publisher publishes, so every media packet crosses
// it. After media flows (the clean subscriber decodes the tone and video, the thin one received
// audio), the window is --seconds (default 30) of call; the figures are the getStats() counters'
// differences over the window, read from every RTCPeerConnection of each page:
//   thin.audioConcealment     concealedSamples / totalSamplesReceived (audio, inbound)
//   thin.video*               framesDecoded, keyFramesDecoded, freezeCount, totalFreezesDuration,
//                             and the pliCount / nackCount / firCount it sent
//   clean.fps ...             framesDecoded / window, freezeCount, totalFreezesDuration, and the
//                             longest gap between painted frames (requestVideoFrameCallback)
//   publisher.keyFramesEncoded, the PLIs/FIRs/NACKs it received, its outbound targetBitrate
//                             (sampled each second) and qualityLimitationReason
//   link                      the shaper's sent bytes and drops toward the namespace
// One JSON line per run on stdout, then one with the medians ({"kind":"summary"}); progress on
// stderr. Options: --runs N (pairs, default 3), --seconds S, --rate-kbps K, --queue-ms Q,
// --only thin|baseline, --bwe (patchbay with --subscriber-bwe true). Env: CHROMIUM_PATH, PATCHBAY_BIN (default ../../../target/debug/patchbay),
// HARNESS_VERBOSE=1 (page consoles). Needs root, `ip`, `tc` and `nft` (netns.mjs says which is
// missing). patchbay runs on the host with its media socket on 0.0.0.0 (startPatchbay's mediaHost)
// and advertises 127.0.0.1 and the host side of the veth (--public-ip), so both Chromiums reach it;
// the thin page reaches the page server and patchbay's HTTP/WebSocket through TCP forwarders on
// the host side of the veth.

import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { instrumentPeerConnections, launchBrowser } from "./runner.mjs";
import { netnsUnavailable } from "./netns.mjs";
import { frameGaps, joinSession, median, of, openPageInNamespace, pageStats, publisherFigures, r3, sleep, startLinkServer, subscriberFigures, sum } from "./linkstats.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const T = 30000;
const log = (...a) => process.stderr.write(`[thin_link ${new Date().toISOString().slice(11, 19)}] ${a.join(" ")}\n`);

function parseArgs(argv) {
  const o = { runs: 3, seconds: 30, rateKbps: 300, queueMs: 200, only: null, bwe: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => argv[++i];
    if (a === "--runs") o.runs = Number(v());
    else if (a === "--seconds") o.seconds = Number(v());
    else if (a === "--rate-kbps") o.rateKbps = Number(v());
    else if (a === "--queue-ms") o.queueMs = Number(v());
    else if (a === "--only") o.only = v();
    else if (a === "--bwe") o.bwe = true; // patchbay --subscriber-bwe true
    else if (a === "-h" || a === "--help") o.help = true;
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// One run.

async function oneRun(kind, index, opts) {
  const thin = kind === "thin";
  const cleanup = [];
  const t0 = Date.now();
  try {
    // The namespace exists in both kinds, so that patchbay runs with the same arguments.
    const { ns, pb } = await startLinkServer({ queueMs: opts.queueMs }, { args: ["--subscriber-bwe", String(opts.bwe)] }, cleanup);
    log(`${kind} #${index}: patchbay ${pb.url}, media ${JSON.stringify(pb.media.udp)}, namespace ${ns.name} (${ns.nsIp} -> ${ns.hostIp})`);

    const host = await launchBrowser();
    cleanup.push(() => host.close());
    const session = await pb.createSession(`thin-link-${kind}-${index}`);
    const join = (tag) => joinSession(pb, session, tag);
    const pubP = await join("publisher");
    const cleanP = await join("clean");
    const pub = await host.newParticipant("publisher");
    const clean = await host.newParticipant("clean");
    for (const p of [pub, clean]) await instrumentPeerConnections(p);

    let thinPage = null;
    let thinP = null;
    if (thin) {
      thinP = await join("thin");
      thinPage = await openPageInNamespace(ns, pb, { tag: "thin", token: thinP.token, timeoutMs: T }, cleanup);
    }
    await clean.connect({ websocketUrl: pb.websocketUrl, token: cleanP.token, timeoutMs: T });
    await pub.connect({ websocketUrl: pb.websocketUrl, token: pubP.token, timeoutMs: T });
    await ns.setRate({ rateIn: opts.rateKbps * 1000 }); // both kinds: same shaper, unused in baseline

    await pub.publishTone({ freqHz: 440, alias: "publisher", video: true, timeoutMs: T });
    const atClean = await clean.waitForStream({ participantId: pubP.id, timeoutMs: T });
    await clean.expectTone(atClean.streamId, 440, { toleranceHz: 30, timeoutMs: T });
    await clean.expectVideo(atClean.streamId, { minFrames: 10, timeoutMs: T });
    if (thin) {
      await thinPage.waitForStream({ participantId: pubP.id, timeoutMs: T });
      const deadline = Date.now() + T;
      for (;;) {
        const s = await pageStats(thinPage);
        if (sum(of(s.inbound, "audio"), "packetsReceived") > 0) break;
        if (Date.now() > deadline) throw new Error(`the thin subscriber received no audio packet within ${T} ms: ${JSON.stringify(s.inbound)}`);
        await sleep(200);
      }
    }
    const flowingAfterMs = Date.now() - t0;
    log(`${kind} #${index}: media flows; measuring ${opts.seconds} s`);

    await frameGaps(clean, true);
    const pages = { publisher: pub, clean, ...(thin ? { thin: thinPage } : {}) };
    const snap = async () => Object.fromEntries(await Promise.all(Object.entries(pages).map(async ([k, p]) => [k, await pageStats(p)])));
    const s0 = await snap();
    const link0 = await ns.stats();
    const started = Date.now();
    const bitrates = [];
    while (Date.now() - started < opts.seconds * 1000) {
      await sleep(1000);
      const s = await pageStats(pub);
      bitrates.push({
        target: of(s.outbound, "video")[0]?.targetBitrate ?? 0,
        available: s.pairs.find((p) => p.sends)?.availableOutgoingBitrate ?? 0,
      });
    }
    const s1 = await snap();
    const seconds = (Date.now() - started) / 1000;
    const gaps = await frameGaps(clean);
    const link1 = await ns.stats();

    const result = {
      kind,
      run: index,
      seconds: r3(seconds),
      rateKbps: thin ? opts.rateKbps : null,
      queueMs: thin ? opts.queueMs : null,
      subscriberBwe: opts.bwe,
      flowingAfterMs,
      loadAvg1m: r3(os.loadavg()[0]),
      publisher: publisherFigures(s0.publisher, s1.publisher, seconds, bitrates),
      clean: { ...subscriberFigures(s0.clean, s1.clean, seconds), maxFrameGapMs: gaps.length ? Math.max(...gaps.map((g) => g.maxGapMs)) : null },
    };
    if (thin) {
      result.thin = subscriberFigures(s0.thin, s1.thin, seconds);
      // whole call, from the first packet: the thin page's counters since connect
      const all = subscriberFigures({ inbound: [], outbound: [], pairs: [] }, s1.thin, 1);
      result.thin.sinceStart = { audioConcealment: all.audioConcealment, videoFramesDecoded: all.videoFramesDecoded, pliSent: all.pliSent };
      const li = (k) => (link1.in?.[k] ?? 0) - (link0.in?.[k] ?? 0);
      // the shaper toward the thin subscriber over the window (bytes with Ethernet headers)
      result.link = { sentKbps: Math.round((li("sentBytes") * 8) / seconds / 1000), sentPackets: li("sentPackets"), dropped: li("dropped") };
    }
    return result;
  } finally {
    for (const f of cleanup.reverse()) await f().catch((e) => log(`cleanup: ${e.message}`));
    log(`${kind} #${index}: done in ${Math.round((Date.now() - t0) / 1000)} s`);
  }
}

function summarise(results, opts) {
  const pick = (kind, f) => median(results.filter((r) => r.kind === kind).map(f));
  return {
    kind: "summary",
    runs: { thin: results.filter((r) => r.kind === "thin").length, baseline: results.filter((r) => r.kind === "baseline").length },
    rateKbps: opts.rateKbps,
    queueMs: opts.queueMs,
    seconds: opts.seconds,
    subscriberBwe: opts.bwe,
    median: {
      thinAudioConcealment: pick("thin", (r) => r.thin.audioConcealment),
      thinVideoFramesDecoded: pick("thin", (r) => r.thin.videoFramesDecoded),
      thinFreezeCount: pick("thin", (r) => r.thin.freezeCount),
      thinTotalFreezesDuration: pick("thin", (r) => r.thin.totalFreezesDuration),
      thinPliSent: pick("thin", (r) => r.thin.pliSent),
      thinNackSent: pick("thin", (r) => r.thin.nackSent),
      thinFirSent: pick("thin", (r) => r.thin.firSent),
      cleanFps: { thin: pick("thin", (r) => r.clean.fps), baseline: pick("baseline", (r) => r.clean.fps) },
      cleanFreezeCount: { thin: pick("thin", (r) => r.clean.freezeCount), baseline: pick("baseline", (r) => r.clean.freezeCount) },
      cleanTotalFreezesDuration: { thin: pick("thin", (r) => r.clean.totalFreezesDuration), baseline: pick("baseline", (r) => r.clean.totalFreezesDuration) },
      cleanMaxFrameGapMs: { thin: pick("thin", (r) => r.clean.maxFrameGapMs), baseline: pick("baseline", (r) => r.clean.maxFrameGapMs) },
      keyFramesEncoded: { thin: pick("thin", (r) => r.publisher.keyFramesEncoded), baseline: pick("baseline", (r) => r.publisher.keyFramesEncoded) },
      publisherPliReceived: { thin: pick("thin", (r) => r.publisher.pliReceived), baseline: pick("baseline", (r) => r.publisher.pliReceived) },
      targetBitrateKbps: { thin: pick("thin", (r) => r.publisher.targetBitrateKbps.median), baseline: pick("baseline", (r) => r.publisher.targetBitrateKbps.median) },
    },
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.help) {
    console.log("usage: node thin_link.bench.mjs [--runs N] [--seconds S] [--rate-kbps K] [--queue-ms Q] [--only thin|baseline] [--bwe]  (as root; see the top of the file)");
    return 0;
  }
  const why = netnsUnavailable();
  if (why) {
    console.error(`thin_link.bench.mjs cannot run here: ${why}`);
    return 2;
  }
  const kinds = opts.only ? [opts.only] : ["thin", "baseline"];
  const results = [];
  for (let i = 1; i <= opts.runs; i++) {
    for (const kind of kinds) {
      try {
        const r = await oneRun(kind, i, opts);
        results.push(r);
        console.log(JSON.stringify(r));
      } catch (e) {
        log(`${kind} #${i} FAILED: ${e.stack || e}`);
        console.log(JSON.stringify({ kind, run: i, error: String(e.message || e).slice(0, 2000) }));
      }
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
