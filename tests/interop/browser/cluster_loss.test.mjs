// A node's loss under browsers behind a balancer (issue 20, "Node loss"): three patchbay
// processes on one fresh PostgreSQL database, nginx in front of them (deploy/nginx-cluster.conf
// itself, through balancer.mjs), two pages in headless Chromium with Bandwidth's unmodified
// browser SDK given the BALANCER's WebSocket URL, and the test phone dialled into the SIP
// address of the process that hosts their session. That process is killed (kill -9); the pages
// are left as they are (no reload). Asserted, each with a generous bound (no timing asserted):
//
//   - REST never fails meanwhile: GET of the session every 200 ms through the balancer and on
//     each surviving process directly, from before the kill until the end of the recovery;
//   - the loss is seen: a surviving process claims the dead one (server_instances.reaped_by),
//     then its rows go;
//   - the pages' media comes back both ways, audio (each decodes the other's tone) and video
//     (painted frames), on a live process that hosts the session now;
//   - the phone: no media reaches it any more, and the process that claims the loss hangs its
//     call up (a BYE in the dead process's dialog; the test would end it itself after 5 s
//     without RTP, and then fails for want of the BYE), then redials with
//     the same token through a live process that does not host the session, which sends the
//     INVITE on to the session's new host (a stateless proxy); the new host answers it (the
//     phone's dialog goes there), and the pages and the phone hear each other;
//   - webhooks: each browser device's onConnect/onDisconnect alternate (every onConnect after
//     the first follows an end: a backend counting connections stays right), and the phone's
//     lost call gets onDisconnect and onCallEnded once, its redial onConnect/onCallAnswered;
//     every event delivered once;
//   - no orphan rows: nothing in server_instances, live_devices, live_streams or session_hosts
//     names the dead process; each browser has one live device row, on the new host; the
//     stored phone call is the new one.
//
// It prints what it measured (no timing is asserted), e.g.
//   cluster-loss: media back after 18.5 s (alice hears bob), 18.5 s (bob hears alice); video 18.5 s (alice sees bob), 18.5 s (bob sees alice); all four by 18.5 s after the kill
//   cluster-loss: loss seen after 7.5 s (accounted for by http://127.0.0.1:PORT), its row gone after 7.5 s
//   cluster-loss: REST balancer: 237 requests answered, 0 failed
// the media times from the kill to the END of the first 1 s measurement window that showed it.
//
// PostgreSQL: $PATCHBAY_TEST_POSTGRES is the admin connection (tests/run.sh sets it); a fresh
// database pb_cluster_loss_<random> is made and dropped. Without the variable the case fails.
//
// The kill comes as soon as the call is set up, a few seconds after the processes started: a
// process accounts at once for one that dies beside it (it waits 30 s only for processes that
// were dead before it started; docs/architecture.md, "A process's loss").
//
// The checks after the recovery (REST, webhooks, rows) all run; their failures are reported
// together. Per page, one line says what it went through after the kill (its WebSocket's
// reconnects and their close codes, offers, its peer connections' states).
//
//   cargo build && cargo build --example phone && cd tests/interop/browser && bash run.sh
//   PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test node --test cluster_loss.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { launchBrowser, instrumentPeerConnections, receivedAudioSpectra, anyCarries, withTimeout } from "./runner.mjs";
import { startPatchbay, createAccount, createPostgresDatabase } from "./server.mjs";
import { startBalancer } from "./balancer.mjs";
import { startReceiver } from "./receiver.mjs";
import { dialPhone, PHONE_BIN } from "./phone.mjs";

const HZ = { alice: 440, bob: 1000, phone: 700 };
const T = 30000; // bound for each step of the setup (a busy 2-core machine)
const BACK_MS = 90000; // bound, from the kill, for the media to come back / the loss to be seen
const WINDOW_MS = 1000; // one measurement window
const MIN_FRAMES = 5; // painted frames in one window that count as video flowing
const POLL_MS = 200; // the REST probes' period
const RTP_TIMEOUT_MS = 5000; // the phone ends a call that received no RTP for this long
// The phone's report over a window (as restart.test.mjs): a page's tone has RMS ~6950 at the
// phone; two pages' tones mixed, each has a share ~0.25 when clean (lower with concealment).
const PHONE_MIN_SAMPLES = 1600; // 0.2 s heard
const PHONE_MIN_RMS = 300;
const PHONE_MIN_SHARE = 0.02;
const PHONE_TOL_HZ = 15;

const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let b; // one Chromium for the file

before(async () => {
  b = await launchBrowser();
});
after(async () => {
  await b?.close();
});

// ---------------------------------------------------------------------------------------------
// The database, read directly (the operator's view; the media evidence is only what is decoded).

function sql(url, query) {
  return new Promise((resolve, reject) =>
    execFile("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAtF", "\t", "-c", query], { timeout: 30000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`psql -c ${JSON.stringify(query)}: ${stderr.trim() || err.message}`));
      else resolve(stdout.split("\n").filter((l) => l !== "").map((l) => l.split("\t")));
    })
  );
}
const quote = (s) => `'${String(s).replace(/'/g, "''")}'`;

/** The session's host: { instance, epoch, cluster, sip } or null. */
async function hostOf(dbUrl, sessionId) {
  const rows = await sql(
    dbUrl,
    `SELECT h.instance_id, h.epoch, coalesce(i.cluster_address, ''), coalesce(i.sip_address, '') FROM session_hosts h ` +
      `LEFT JOIN server_instances i ON i.id = h.instance_id WHERE h.session_id = ${quote(sessionId)}`
  );
  if (!rows.length) return null;
  const [instance, epoch, cluster, sip] = rows[0];
  return { instance, epoch: Number(epoch), cluster, sip };
}

/** live_devices rows: [{ instance, participant, device, kind }]. */
async function liveDevices(dbUrl) {
  const rows = await sql(dbUrl, "SELECT instance_id, participant_id, device, kind FROM live_devices ORDER BY connected_at");
  return rows.map(([instance, participant, device, kind]) => ({ instance, participant, device, kind }));
}

/** The node whose HTTP port a cluster address ("ws://127.0.0.1:PORT", "127.0.0.1:PORT") names. */
function nodeOfCluster(nodes, cluster) {
  const port = (String(cluster).match(/:(\d+)\/?$/) || [])[1];
  return nodes.find((n) => new URL(n.url).port === port) || null;
}

// ---------------------------------------------------------------------------------------------
// What the pages decode

// Painted frames so far of every video stream the page's SDK made available (the harness's
// counters: requestVideoFrameCallback on the element playing it). -> { streamId: { frames, width, height, participantId } }
function videoCounters(page) {
  return page.evaluate(async () => {
    const out = {};
    for (const s of window.harness.remoteStreams()) {
      if (!s.tracks.some((t) => t.kind === "video")) continue;
      const v = await window.harness.videoFramesDecoded(s.streamId);
      out[s.streamId] = { frames: v.frames, width: v.width, height: v.height, participantId: s.participantId };
    }
    return out;
  });
}

// Frames painted during a window, of the streams of participant `from`.
function framesFrom(before, after, from) {
  let frames = 0;
  let size = false;
  for (const [id, a] of Object.entries(after)) {
    if (a.participantId !== from) continue;
    frames = Math.max(frames, a.frames - (before[id]?.frames ?? 0));
    size ||= a.width > 0 && a.height > 0;
  }
  return { frames, size };
}

const DIRECTIONS = ["alice hears bob", "bob hears alice", "alice sees bob", "bob sees alice"];

// One window on both pages at once. -> { at (end), ok: {direction: bool}, readings }
async function measure(A, B) {
  const bound = WINDOW_MS + 20000;
  const [va0, vb0] = await Promise.all([withTimeout(videoCounters(A.page), bound, "alice: video"), withTimeout(videoCounters(B.page), bound, "bob: video")]);
  const [audioA, audioB] = await Promise.all([
    withTimeout(receivedAudioSpectra(A.page, [HZ.alice, HZ.bob, HZ.phone], { durationMs: WINDOW_MS }), bound, "alice: audio"),
    withTimeout(receivedAudioSpectra(B.page, [HZ.alice, HZ.bob, HZ.phone], { durationMs: WINDOW_MS }), bound, "bob: audio"),
  ]);
  const [va1, vb1] = await Promise.all([withTimeout(videoCounters(A.page), bound, "alice: video"), withTimeout(videoCounters(B.page), bound, "bob: video")]);
  const vA = framesFrom(va0, va1, B.id);
  const vB = framesFrom(vb0, vb1, A.id);
  return {
    at: Date.now(),
    ok: {
      "alice hears bob": anyCarries(audioA, HZ.bob),
      "bob hears alice": anyCarries(audioB, HZ.alice),
      "alice sees bob": vA.frames >= MIN_FRAMES && vA.size,
      "bob sees alice": vB.frames >= MIN_FRAMES && vB.size,
    },
    phoneHeard: { alice: anyCarries(audioA, HZ.phone), bob: anyCarries(audioB, HZ.phone) },
    readings: { audioA, audioB, videoA: vA, videoB: vB },
  };
}

function readingsText(m) {
  const a = (xs) => JSON.stringify(xs.map((s) => ({ mid: s.mid, muted: s.muted, rms: +s.rms.toFixed(4), bands: Object.fromEntries(Object.entries(s.bands).map(([k, v]) => [k, +v.toFixed(3)])) })));
  return `audio at alice ${a(m.readings.audioA)}; audio at bob ${a(m.readings.audioB)}; frames alice<-bob ${JSON.stringify(m.readings.videoA)}, bob<-alice ${JSON.stringify(m.readings.videoB)}`;
}

// Windows until one shows every direction (and, with `phone`, both pages hearing the phone), or
// until since + timeoutMs. -> { all: ms or null, first: {direction: ms}, last }
async function watch(A, B, { since, timeoutMs, phone = false }) {
  const first = {};
  let last;
  for (;;) {
    last = await measure(A, B);
    const at = last.at - since;
    for (const d of DIRECTIONS) if (last.ok[d] && first[d] === undefined) first[d] = at;
    const done = DIRECTIONS.every((d) => last.ok[d]) && (!phone || (last.phoneHeard.alice && last.phoneHeard.bob));
    if (done) return { all: at, first, last };
    if (last.at >= since + timeoutMs) return { all: null, first, last };
  }
}
const fmtFirst = (first) => DIRECTIONS.map((d) => `${d} ${first[d] === undefined ? "never" : secs(first[d])}`).join(", ");

// Logs every state change of the page's peer connections from now on (window.__pcLog).
function watchPcStates(page) {
  return page.evaluate(() => {
    window.__pcLog = [];
    for (const pc of window.__pcs || []) {
      const name = pc.getTransceivers().some((t) => t.direction === "sendonly") ? "publish" : "subscribe";
      const log = () => window.__pcLog.push({ at: Date.now(), pc: name, ice: pc.iceConnectionState, conn: pc.connectionState });
      pc.addEventListener("iceconnectionstatechange", log);
      pc.addEventListener("connectionstatechange", log);
    }
  });
}

// What a page went through after `since`, one line: its WebSocket (reconnects refused with a
// code are counted), the subscribe offers it got, the publish offers it sent, and its peer
// connections' state changes, in order.
async function timeline(page, since) {
  const ws = (await page.wsLog()).filter((e) => e.at >= since);
  const pcs = (await page.evaluate(() => window.__pcLog || [])).filter((e) => e.at >= since);
  const items = [];
  for (const e of ws) {
    if (e.event === "close") items.push({ at: e.at, what: `ws closed ${e.code}${e.reason ? ` "${e.reason}"` : ""}` });
    else if (e.event === "open") items.push({ at: e.at, what: "ws open" });
    else if (e.event === "recv" && e.method === "sdpOffer") items.push({ at: e.at, what: "subscribe offer" });
    else if (e.event === "send" && e.method === "offerSdp") items.push({ at: e.at, what: "publish offer sent" });
    else if (e.event === "recv" && e.hasResult && /sdpAnswer/.test(e.raw || "")) items.push({ at: e.at, what: "publish answer" });
  }
  for (const e of pcs) items.push({ at: e.at, what: `${e.pc} pc ice=${e.ice} conn=${e.conn}` });
  items.sort((a, b) => a.at - b.at);
  // Runs of "ws open" + "ws closed 1013 ..." folded into one item.
  const out = [];
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    if (it.what === "ws open" && items[i + 1]?.what.startsWith("ws closed 1013")) {
      const why = items[i + 1].what;
      let j = i;
      let n = 0;
      while (items[j]?.what === "ws open" && items[j + 1]?.what === why) {
        n++;
        j += 2;
      }
      out.push(`${secs(it.at - since)}..${secs(items[j - 1].at - since)} ${n} reconnect(s) ${why.replace("ws closed", "closed")}`);
      i = j - 1;
      continue;
    }
    out.push(`${secs(it.at - since)} ${it.what}`);
  }
  return out.join("; ");
}

// ---------------------------------------------------------------------------------------------
// The phone

const near = (hz, want) => typeof hz === "number" && Math.abs(hz - want) <= PHONE_TOL_HZ;
// The phone hears both pages (their tones mixed): enough signal, each tone present, the
// strongest frequency one of them.
const phoneHearsPages = (r) =>
  !!r &&
  r.samples >= PHONE_MIN_SAMPLES &&
  r.rms > PHONE_MIN_RMS &&
  (near(r.dominant_hz, HZ.alice) || near(r.dominant_hz, HZ.bob)) &&
  (r.share?.[String(HZ.alice)] ?? 0) > PHONE_MIN_SHARE &&
  (r.share?.[String(HZ.bob)] ?? 0) > PHONE_MIN_SHARE;
const briefReport = (r) =>
  r ? JSON.stringify({ samples: r.samples, rms: Math.round(r.rms), dominant_hz: r.dominant_hz, share: Object.fromEntries(Object.entries(r.share || {}).map(([k, v]) => [k, +Number(v).toPrecision(3)])) }) : "none (the phone is gone)";

// Reports (each over ~WINDOW_MS) until the phone hears both pages; -> the report, or throws.
async function phoneHearsBoth(ph, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  await withTimeout(ph.report(), 10000, "phone: report");
  let last;
  do {
    await sleep(WINDOW_MS);
    last = await withTimeout(ph.report(), 10000, "phone: report");
    if (phoneHearsPages(last)) return last;
  } while (Date.now() < deadline);
  throw new Error(`${what}: the phone did not hear both pages (${HZ.alice} and ${HZ.bob} Hz) within ${timeoutMs} ms; last report ${briefReport(last)}; ${ph.describe()}`);
}

// ---------------------------------------------------------------------------------------------
// REST probes: GET of the session every POLL_MS until stopped; every failure kept.

function probe(name, get) {
  const r = { name, ok: 0, failures: [], stopped: false };
  r.done = (async () => {
    while (!r.stopped) {
      const t0 = Date.now();
      try {
        await withTimeout(get(), 10000, `${name}: GET`);
        r.ok++;
      } catch (e) {
        r.failures.push({ at: t0, error: String(e.message || e).slice(0, 300) });
      }
      await sleep(Math.max(0, POLL_MS - (Date.now() - t0)));
    }
  })();
  r.stop = async () => {
    r.stopped = true;
    await r.done;
    return r;
  };
  return r;
}

// ---------------------------------------------------------------------------------------------

test("node loss: two browsers and a phone on the killed host; REST never fails, the media comes back through the balancer without a reload, the webhooks pair up, the phone redials, no orphan rows", { timeout: 600000 }, async () => {
  assert.ok(existsSync(PHONE_BIN), `test phone not found at ${PHONE_BIN}: run \`cargo build --example phone\` (or set PHONE_BIN)`);
  const db = await createPostgresDatabase("pb_cluster_loss");
  const nodes = [];
  const pages = [];
  const phones = [];
  const probes = [];
  let lb = null;
  let rx = null;
  let phase = "setup";
  let killedAt = null;
  const t0 = Date.now();
  try {
    const account = await createAccount({ databaseUrl: db.url });
    rx = await startReceiver({ secret: account.webhookSecret });
    for (let i = 0; i < 3; i++) {
      nodes.push(await startPatchbay({ databaseUrl: db.url, account, args: ["--cluster-address", "127.0.0.1"] }));
    }
    const nodesStartedAt = Date.now();
    lb = await startBalancer({ upstreams: nodes.map((n) => new URL(n.url).host) });
    const rest = lb.rest(account);

    // The session and its members, through the balancer (each request may land anywhere).
    phase = "REST setup";
    const session = await rest("POST", "/sessions", { tag: "cluster-loss" });
    const member = async (tag, publishPermissions) => {
      const { participant, token } = await rest("POST", "/participants", { tag, publishPermissions, callbackUrl: rx.url });
      await rest("PUT", `/sessions/${session.id}/participants/${participant.id}`, { sessionId: session.id });
      return { id: participant.id, token, tag };
    };
    const alice = await member("alice", ["AUDIO", "VIDEO"]);
    const bob = await member("bob", ["AUDIO", "VIDEO"]);
    const phone = await member("phone", ["AUDIO"]);

    phase = "browsers connecting through the balancer";
    for (const x of [alice, bob]) {
      x.page = await b.newParticipant(x.tag);
      pages.push(x.page);
      await instrumentPeerConnections(x.page);
      await x.page.connect({ websocketUrl: lb.websocketUrl, token: x.token, timeoutMs: T });
      await x.page.publishTone({ freqHz: HZ[x.tag], alias: x.tag, video: true, timeoutMs: T });
      x.device = await x.page.call("uniqueId");
      assert.ok(x.device, `${x.tag}: the SDK put a uniqueId in its signalling URL`);
    }
    await Promise.all([
      alice.page.waitForStream({ participantId: bob.id, timeoutMs: T }),
      bob.page.waitForStream({ participantId: alice.id, timeoutMs: T }),
    ]);
    const host = await hostOf(db.url, session.id);
    assert.ok(host, "the session has a host once its devices arrived");
    const hostNode = nodeOfCluster(nodes, host.cluster);
    assert.ok(hostNode, `the host's cluster address ${host.cluster} is one of the nodes (${nodes.map((n) => n.url).join(", ")})`);
    const survivors = nodes.filter((n) => n !== hostNode);

    // The phone dials the host's SIP address.
    phase = "phone dialling the host";
    assert.ok(host.sip, `the host recorded its SIP address: ${JSON.stringify(host)}`);
    const ph1 = dialPhone({ sip: host.sip, token: phone.token, toneHz: HZ.phone, probe: [HZ.alice, HZ.bob, HZ.phone], seconds: 900 });
    phones.push(ph1);
    let ph1Ended = false;
    ph1.done.then(() => (ph1Ended = true));
    assert.ok(await withTimeout(ph1.answered, T, "phone: answered"), `the host did not answer the phone: ${ph1.describe()}`);

    // 1. Before the kill: everyone hears and sees everyone; all three devices on the host.
    phase = "before the kill";
    const setup = await watch(alice, bob, { since: Date.now(), timeoutMs: T, phone: true });
    assert.ok(setup.all !== null, `before the kill the call never carried everything (first seen: ${fmtFirst(setup.first)}; pages hear the phone: ${JSON.stringify(setup.last.phoneHeard)}); ${readingsText(setup.last)}`);
    await phoneHearsBoth(ph1, T, "before the kill");
    const devicesBefore = await liveDevices(db.url);
    const onHost = devicesBefore.filter((d) => d.instance === host.instance).map((d) => d.participant);
    for (const x of [alice, bob, phone]) assert.ok(onHost.includes(x.id), `${x.tag}'s device is on the host ${host.instance}: ${JSON.stringify(devicesBefore)}`);
    const phoneCall1 = devicesBefore.find((d) => d.participant === phone.id)?.device;
    console.log(`cluster-loss: host ${host.cluster} (sip ${host.sip}), devices ${JSON.stringify(devicesBefore.map((d) => [d.participant === alice.id ? "alice" : d.participant === bob.id ? "bob" : "phone", d.kind]))}`);

    // 2. REST probes: through the balancer and on each surviving process directly.
    probes.push(probe("balancer", () => rest("GET", `/sessions/${session.id}`, undefined, { timeoutMs: 10000 })));
    for (const n of survivors) probes.push(probe(`node ${n.url}`, () => n.rest("GET", `/sessions/${session.id}`)));
    await sleep(1000);

    await Promise.all([alice, bob].map((x) => watchPcStates(x.page)));

    // 3. kill -9 of the host, at once: the survivors started with it a few seconds ago, and
    //    account for a process that dies beside them without waiting for their own grace.
    phase = "killing the host";
    console.log(`cluster-loss: killing the host ${secs(Date.now() - nodesStartedAt)} after the nodes started`);
    await withTimeout(ph1.report(), 10000, "phone: report"); // clears what it heard until now
    killedAt = Date.now();
    const killed = await hostNode.kill("SIGKILL");
    assert.equal(killed.signal, "SIGKILL", `the host was killed: ${JSON.stringify(killed)}`);

    // What the phone hears after the kill, second by second (until its call is ended below).
    const phoneSeries = [];
    let phoneSeriesStop = false;
    const phoneSeriesDone = (async () => {
      while (!phoneSeriesStop && !ph1Ended) {
        await sleep(1000);
        if (phoneSeriesStop) break;
        const r = await withTimeout(ph1.report(), 10000, "phone: report").catch(() => null);
        phoneSeries.push({ at: Date.now() - killedAt, samples: r?.samples ?? null, rms: r ? Math.round(r.rms) : null, hz: r?.dominant_hz ?? null });
      }
    })();

    // The loss: a survivor claims the dead process; later its row goes.
    let lossSeen = null; // { ms, by }
    let rowsGone = null; // ms
    const lossWatch = (async () => {
      while (Date.now() < killedAt + BACK_MS && rowsGone === null) {
        const rows = await sql(db.url, `SELECT 'row', coalesce(reaped_by, '') FROM server_instances WHERE id = ${quote(host.instance)}`).catch(() => null);
        if (rows) {
          if (lossSeen === null && (rows.length === 0 || rows[0][1] !== "")) lossSeen = { ms: Date.now() - killedAt, by: rows[0]?.[1] || "?" };
          if (rows.length === 0) rowsGone = Date.now() - killedAt;
        }
        await sleep(250);
      }
    })();

    // 4. With the host gone, the pages decode nothing of each other (the measurement is fresh).
    phase = "host down";
    await sleep(1000);
    const down = await measure(alice, bob);
    const leaked = ["alice hears bob", "bob hears alice"].filter((d) => down.ok[d]);
    assert.deepEqual(leaked, [], `with the host dead the pages still decoded the other's tone: the measurement is stale; ${readingsText(down)}`);

    // 5. The media comes back, through the balancer, without a reload.
    phase = "waiting for the media to come back";
    const back = await watch(alice, bob, { since: killedAt, timeoutMs: BACK_MS });
    if (back.all === null) {
      console.log(`cluster-loss: media NOT back within ${secs(BACK_MS)} of the kill (${fmtFirst(back.first)})`);
      assert.fail(`the media did not come back within ${BACK_MS} ms of the kill (first seen: ${fmtFirst(back.first)}); last window: ${readingsText(back.last)}`);
    }
    const f = back.first;
    console.log(
      `cluster-loss: media back after ${secs(f["alice hears bob"])} (alice hears bob), ${secs(f["bob hears alice"])} (bob hears alice); ` +
        `video ${secs(f["alice sees bob"])} (alice sees bob), ${secs(f["bob sees alice"])} (bob sees alice); all four by ${secs(back.all)} after the kill`
    );

    for (const x of [alice, bob]) console.log(`cluster-loss: ${x.tag} after the kill: ${await timeline(x.page, killedAt)}`);

    // 6. The loss was seen, and the session lives on a live process now.
    phase = "waiting for the loss to be accounted for";
    await lossWatch;
    assert.ok(lossSeen, `no surviving process claimed the dead one (${host.instance}) within ${BACK_MS} ms of the kill`);
    assert.ok(rowsGone !== null, `the dead process's server_instances row was still there ${BACK_MS} ms after the kill`);
    // The claimant says so in its log (its claim and the removal are too quick to poll).
    const reapers = survivors.filter((n) => n.stderrLines().some((l) => l.includes(host.instance) && /a device of a process that died/.test(l)));
    console.log(`cluster-loss: loss seen after ${secs(lossSeen.ms)} (accounted for by ${reapers.map((n) => n.url).join(", ") || "?"}), its row gone after ${secs(rowsGone)}`);
    const newHost = await hostOf(db.url, session.id);
    assert.ok(newHost && newHost.instance !== host.instance, `the session was placed again on a live process: ${JSON.stringify(newHost)} (dead: ${host.instance})`);
    const newHostNode = nodeOfCluster(nodes, newHost.cluster);
    assert.ok(newHostNode && newHostNode !== hostNode && newHostNode.running(), `the new host ${newHost.cluster} is a surviving node`);
    console.log(`cluster-loss: session placed again on ${newHost.cluster} (epoch ${host.epoch} -> ${newHost.epoch})`);

    // 7. The old phone call: nothing reaches it after the kill, and the process that claims the
    //    loss sends it a BYE (before that fix, only the phone's own RTP timeout ended it).
    phase = "the phone's lost call";
    phoneSeriesStop = true;
    await phoneSeriesDone;
    const last = await withTimeout(ph1.report(), 10000, "phone: report").catch(() => null);
    phoneSeries.push({ at: Date.now() - killedAt, samples: last?.samples ?? null, rms: last ? Math.round(last.rms) : null, hz: last?.dominant_hz ?? null });
    const heardAfterKill = phoneSeries.reduce((n, r) => n + (r.samples ?? 0), 0);
    const series = phoneSeries.map((r) => `${secs(r.at)}: ${r.samples}${r.samples ? ` (rms ${r.rms}, ${r.hz} Hz)` : ""}`).join("; ");
    console.log(`cluster-loss: samples the lost call's phone received, per report after the kill: ${series}`);
    assert.ok(Date.now() - killedAt > RTP_TIMEOUT_MS, "the phone's silence is measured over more than its RTP timeout");
    const byeBefore = ph1Ended;
    const sinceKill = { samples: heardAfterKill };
    if (!ph1Ended) {
      // The first report may hold packets the dead host sent before the kill that the phone
      // (on a busy machine) read late; anything in a later one came from a live process.
      const late = phoneSeries.filter((r) => r.at > 1500 && r.samples > 0);
      assert.deepEqual(late, [], `the lost call's phone still received audio after its host was killed (per report: ${series})`);
    }
    const final1 = ph1Ended ? (await ph1.done).final : await ph1.hangup();
    // The process that claimed the loss hangs the call up in the dead process's dialog.
    assert.ok(byeBefore && final1?.bye_from_server === true, `the lost call got no BYE from the process that claimed its host's loss (server requests ${JSON.stringify(final1?.server_requests)})`);
    console.log(
      `cluster-loss: phone's call on the dead host: ${byeBefore ? "ended by a BYE" : `no BYE; ended by the phone after ${secs(Date.now() - killedAt)} without RTP`} ` +
        `(samples heard since the kill: ${sinceKill.samples}; server requests ${JSON.stringify(final1?.server_requests)})`
    );
    const oldCallId = final1?.call_id;

    // 8. The redial: a surviving process that does not host the session sends the INVITE on
    //    to the host (a stateless proxy); the new host answers it, and the pages and the
    //    phone hear each other.
    phase = "the phone redialling";
    const other = survivors.find((n) => n !== newHostNode);
    const ph2 = dialPhone({ sip: other.sip, token: phone.token, toneHz: HZ.phone, probe: [HZ.alice, HZ.bob, HZ.phone], seconds: 900 });
    phones.push(ph2);
    assert.ok(await withTimeout(ph2.answered, T, "phone (redial through a non-host): answered"), `the redial through the non-host ${other.sip} was not answered: ${ph2.describe()}`);
    assert.equal(ph2.answeredBy(), newHost.sip, `the redial through ${other.sip} is answered by the new host: ${ph2.describe()}`);
    const heard2 = await phoneHearsBoth(ph2, T, "the redial");
    const withPhone = await watch(alice, bob, { since: Date.now(), timeoutMs: T, phone: true });
    assert.ok(withPhone.all !== null, `after the redial the pages did not hear the phone (and each other): pages hear the phone ${JSON.stringify(withPhone.last.phoneHeard)}; ${readingsText(withPhone.last)}`);
    console.log(`cluster-loss: phone redialled through ${other.sip}, which proxied it to ${newHost.sip} (the new host); the phone hears ${briefReport(heard2)}`);

    // 9-11 are checked to the end, each failure kept, then reported together.
    const problems = [];
    const soft = async (what, fn) => {
      try {
        await fn();
      } catch (e) {
        problems.push(`${what}: ${e.message}`);
      }
    };

    // 9. REST never failed.
    phase = "REST probes";
    for (const p of probes) await p.stop();
    for (const p of probes) console.log(`cluster-loss: REST ${p.name}: ${p.ok} requests answered, ${p.failures.length} failed`);
    for (const p of probes) {
      await soft(`REST ${p.name}`, () =>
        assert.deepEqual(p.failures.map((x) => `${secs(x.at - killedAt)} after the kill: ${x.error}`), [], `REST ${p.name} failed during the outage (${p.ok} answered)`)
      );
    }

    // 10. Webhooks, once every event is delivered.
    phase = "webhooks";
    const pendingDeadline = Date.now() + T;
    for (;;) {
      const [[pending]] = await sql(db.url, "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'");
      if (Number(pending) === 0) break;
      assert.ok(Date.now() < pendingDeadline, `${pending} webhook events still pending ${T} ms after the recovery`);
      await sleep(250);
    }
    const ids = rx.accepted.map((d) => d.id);
    await soft("webhooks", () => assert.equal(new Set(ids).size, ids.length, `every event delivered once: ${ids.join(", ")}`));
    const deviceEvents = (x) => rx.of(x.id).map((d) => d.json).filter((e) => ["onConnect", "onDisconnect", "onLeave", "onCallAnswered", "onCallEnded"].includes(e.event));
    const seqText = (evs) => evs.map((e) => `${e.event}(${e.deviceId})`).join(", ");
    console.log(`cluster-loss: webhooks ${[alice, bob, phone].map((x) => `${x.tag} [${seqText(deviceEvents(x))}]`).join("; ")}`);
    for (const x of [alice, bob]) {
      await soft(`webhooks of ${x.tag}`, () => {
        const evs = deviceEvents(x);
        assert.ok(evs.length > 0 && evs[0].event === "onConnect", `${x.tag}: first event onConnect: ${seqText(evs)}`);
        for (const e of evs) assert.equal(e.deviceId, x.device, `${x.tag}: every device event names the SDK's uniqueId: ${seqText(evs)}`);
        // A backend counting connections must stay right: connects and ends alternate, and the
        // browser, connected now, was last reported connected.
        for (let i = 1; i < evs.length; i++) {
          const prevUp = evs[i - 1].event === "onConnect";
          const nowUp = evs[i].event === "onConnect";
          assert.notEqual(prevUp, nowUp, `${x.tag}'s device events do not alternate (a second ${evs[i].event} without ${nowUp ? "an end" : "an onConnect"} between): ${seqText(evs)}`);
        }
        assert.equal(evs[evs.length - 1].event, "onConnect", `${x.tag} is connected, its last device event says so: ${seqText(evs)}`);
      });
    }
    await soft("webhooks of the phone", () => {
      const evs = deviceEvents(phone);
      const d1 = evs.filter((e) => e.deviceId === phoneCall1).map((e) => e.event);
      assert.deepEqual(d1.slice(0, 2), ["onConnect", "onCallAnswered"], `the phone's first call: ${seqText(evs)}`);
      const ends = d1.filter((e) => e === "onDisconnect" || e === "onLeave");
      assert.deepEqual(ends, ["onDisconnect"], `the lost call gets one onDisconnect: ${seqText(evs)}`);
      assert.deepEqual(d1.filter((e) => e === "onCallEnded"), ["onCallEnded"], `the lost call gets one onCallEnded: ${seqText(evs)}`);
      const later = evs.filter((e) => e.deviceId !== phoneCall1).map((e) => e.event);
      assert.deepEqual(later.slice(0, 2), ["onConnect", "onCallAnswered"], `the redial's call: ${seqText(evs)}`);
    });

    // 11. No orphan rows.
    phase = "orphan rows";
    const dead = quote(host.instance);
    for (const [table, column] of [["server_instances", "id"], ["live_devices", "instance_id"], ["live_streams", "instance_id"], ["session_hosts", "instance_id"]]) {
      const rows = await sql(db.url, `SELECT * FROM ${table} WHERE ${column} = ${dead}`);
      await soft("orphan rows", () => assert.deepEqual(rows, [], `${table} still names the dead process ${host.instance}`));
    }
    const devicesAfter = await liveDevices(db.url);
    for (const x of [alice, bob]) {
      await soft("orphan rows", () => {
        const mine = devicesAfter.filter((d) => d.participant === x.id);
        assert.equal(mine.length, 1, `${x.tag} has one live device row: ${JSON.stringify(devicesAfter)}`);
        assert.equal(mine[0].instance, newHost.instance, `${x.tag}'s live device is on the new host: ${JSON.stringify(devicesAfter)}`);
      });
    }
    await soft("orphan rows", () => {
      const phoneRows = devicesAfter.filter((d) => d.participant === phone.id);
      assert.equal(phoneRows.length, 1, `the phone has one live device row (the redial): ${JSON.stringify(devicesAfter)}`);
      assert.notEqual(phoneRows[0].device, phoneCall1, `the phone's live row is the redial, not the lost call: ${JSON.stringify(devicesAfter)}`);
    });
    const stored = await sql(db.url, `SELECT participant_id, call FROM phone_calls`);
    await soft("orphan rows", () => assert.ok(!stored.some(([, call]) => call === phoneCall1), `the lost call's stored record is gone: ${JSON.stringify(stored)} (lost call ${phoneCall1}, its Call-ID ${oldCallId})`));
    const liveInstances = new Set((await sql(db.url, "SELECT id FROM server_instances")).map(([id]) => id));
    for (const d of devicesAfter) await soft("orphan rows", () => assert.ok(liveInstances.has(d.instance), `live device row of a process that is not registered: ${JSON.stringify(d)}`));

    // Where the balancer sent the device WebSockets (logged when they ended).
    console.log(`cluster-loss: balancer: /v3 upgrades went to ${JSON.stringify(lb.upstreamsOf("/v3"))}; nodes ${nodes.map((n) => new URL(n.url).host).join(", ")}, host ${new URL(hostNode.url).host}`);

    phase = "the checks after the recovery";
    assert.deepEqual(problems, [], `${problems.length} check(s) failed after the recovery:\n${problems.join("\n")}`);
  } catch (e) {
    const diag = [`[during "${phase}", ${Date.now() - t0} ms after the start${killedAt ? `, ${Date.now() - killedAt} ms after the kill` : ""}]`];
    for (const p of pages) {
      const events = await p.events().catch(() => []);
      const ws = await p.wsLog().catch(() => []);
      const sub = await p.rtpStats("subscribe").catch(() => null);
      const pub = await p.rtpStats("publish").catch(() => null);
      diag.push(
        `--- page ${p.name}`,
        `events: ${JSON.stringify(events)}`,
        `subscribe pc: ${JSON.stringify(sub)}`,
        `publish pc: ${JSON.stringify(pub)}`,
        `signalling (last 25): ${JSON.stringify(ws.slice(-25).map((x) => ({ at: killedAt ? x.at - killedAt : x.at, s: x.socket, ev: x.event, m: x.method, code: x.code, reason: x.reason, url: x.url && x.url.replace(/token=[^&]+/, "token=…"), err: x.error })))}`,
        `console (last 10): ${p.console.slice(-10).join(" | ")}`
      );
    }
    for (const ph of phones) diag.push(`--- ${ph.describe()}`);
    if (rx) diag.push(`--- webhooks: ${rx.accepted.map((d) => d.body).join("\n")}`);
    if (lb) diag.push(`--- balancer access log: ${JSON.stringify(lb.accessLog().filter((r) => !r.uri.includes("/sessions/")).slice(-40))}`, `--- balancer error log (tail): ${lb.errorLog().split("\n").slice(-20).join("\n")}`);
    for (const [i, node] of nodes.entries()) {
      const tail = node.stderrLines().filter((l) => !/^\S+\s+(DEBUG|TRACE) /.test(l)).slice(-60).join("\n");
      diag.push(`--- node ${i + 1} (${node.url}) log (tail):\n${tail}`);
    }
    e.message += `\n${diag.join("\n")}`;
    throw e;
  } finally {
    for (const p of probes) await p.stop().catch(() => {});
    for (const ph of phones) {
      ph.kill();
      await ph.done;
    }
    for (const p of pages) await p.close().catch(() => {});
    for (const node of nodes) await node.stop().catch(() => {});
    await lb?.stop().catch(() => {});
    await rx?.close().catch(() => {});
    await db.drop().catch((e) => console.error(`cluster-loss: could not drop database ${db.name}: ${e.message}`));
  }
});
