// ICE over TCP (issue #11): with every UDP datagram to the server's media ports dropped by an
// nftables rule on this machine, two Chromium parties with Bandwidth's unmodified browser SDK
// still hear (a tone, decoded and measured by frequency) and see (decoded video frames) each
// other, over the server's passive TCP candidates (RFC 6544, RFC 4571 framing).
//
// Evidence that the media went over TCP, from three sides:
// - the rule's own counter: Chromium's UDP checks to the media ports were dropped (so the rule
//   really was in the path);
// - each page's selected ICE candidate pair: protocol "tcp", to one of the server's TCP ports;
// - the server's log: each ICE-TCP connection, when it closes, says how many frames it carried
//   each way; the publishing connections carried media in, the subscribing ones media out.
//
// Needs root (nftables); installs nftables with apt when `nft` is missing. The rule lives in a
// table of its own (patchbay_icetcp_test), deleted in `after` and on exit, also on failure.
//
//   cd tests/interop/browser && node --test icetcp.test.mjs    (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const T = 30000; // bound for every "eventually" condition (ICE over TCP starts after UDP fails)
const TOL_HZ = 30;
const TABLE = "patchbay_icetcp_test";
// Audio packets each page receives before the evidence is collected (about 3 s of audio), and
// the frames a connection that carried media moved in its media direction, at least (a
// connection Chromium only checked carries 3 each way).
const AUDIO_PACKETS = 150;
const MEDIA_FRAMES = 100;

let b;
let pb;
let tableAdded = false;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const portOf = (hostPort) => Number(hostPort.slice(hostPort.lastIndexOf(":") + 1));

function nft(...args) {
  return execFileSync("nft", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function ensureNft() {
  if (existsSync("/usr/sbin/nft") || existsSync("/sbin/nft")) return;
  execFileSync("apt-get", ["install", "-y", "-qq", "nftables"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
}

function dropTable() {
  if (!tableAdded) return;
  try {
    nft("delete", "table", "inet", TABLE);
  } catch {}
  tableAdded = false;
}

// Packets the drop rule has dropped so far.
function droppedPackets() {
  const out = nft("list", "table", "inet", TABLE);
  const m = out.match(/counter packets (\d+) bytes \d+ drop/);
  return m ? Number(m[1]) : 0;
}

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

// Waits until the page's subscribe connection has received `n` audio packets (media keeps
// flowing for a while, so the counters below are well clear of a connectivity check's).
async function receivedAudio(page, n) {
  return until(
    async () => {
      const stats = await page.rtpStats("subscribe");
      const packets = (stats?.rtp || []).filter((s) => s.type === "inbound-rtp" && s.kind === "audio").reduce((a, s) => a + (s.packets || 0), 0);
      return { ok: packets >= n, packets };
    },
    T,
    `${page.name} to receive ${n} audio packets`
  );
}

before(async () => {
  ensureNft();
  [pb, b] = await Promise.all([startPatchbay(), launchBrowser()]);
  const udp = pb.media.udp.flat().map(portOf);
  assert.ok(udp.length > 0, `no UDP media ports printed by the server`);
  assert.ok(pb.media.tcp.flat().length > 0, `no TCP media candidates printed by the server (ICE over TCP is on by default)`);
  process.on("exit", dropTable);
  dropTable();
  try {
    nft("delete", "table", "inet", TABLE); // left over by a killed run
  } catch {}
  nft("add", "table", "inet", TABLE);
  tableAdded = true;
  nft("add", "chain", "inet", TABLE, "input", "{ type filter hook input priority -10 ; policy accept ; }");
  nft("add", "rule", "inet", TABLE, "input", "udp", "dport", `{ ${udp.join(", ")} }`, "counter", "drop");
});

after(async () => {
  dropTable();
  await b?.close();
  await pb?.stop();
});

test("UDP to the media ports dropped: two parties hear and see each other over ICE-TCP", { timeout: 120000 }, async (t) => {
  const session = await pb.createSession("icetcp");
  const pages = [];
  const tcpPorts = new Set(pb.media.tcp.flat().map(portOf));
  try {
    const join = async (tag) => {
      const { participant, token } = await pb.createParticipant({ tag });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      return { id: participant.id, token, page };
    };
    const alice = await join("alice");
    const bob = await join("bob");
    await Promise.all([alice, bob].map((x) => x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T })));
    await Promise.all([
      alice.page.publishTone({ freqHz: 440, alias: "alice-cam", video: true, timeoutMs: T }),
      bob.page.publishTone({ freqHz: 1000, alias: "bob-cam", video: true, timeoutMs: T }),
    ]);
    const [atBob, atAlice] = await Promise.all([
      bob.page.waitForStream({ participantId: alice.id, timeoutMs: T }),
      alice.page.waitForStream({ participantId: bob.id, timeoutMs: T }),
    ]);
    await Promise.all([
      bob.page.expectTone(atBob.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T }),
      alice.page.expectTone(atAlice.streamId, 1000, { toleranceHz: TOL_HZ, timeoutMs: T }),
    ]);
    const videos = await Promise.all([
      bob.page.expectVideo(atBob.streamId, { minFrames: 10, timeoutMs: T }),
      alice.page.expectVideo(atAlice.streamId, { minFrames: 10, timeoutMs: T }),
    ]);
    for (const v of videos) assert.ok(v.frames >= 10 && v.width > 0, JSON.stringify(v));

    await Promise.all([receivedAudio(alice.page, AUDIO_PACKETS), receivedAudio(bob.page, AUDIO_PACKETS)]);

    // Both peer connections of both pages run on a TCP pair to one of the server's TCP ports.
    for (const p of [alice.page, bob.page]) {
      const paths = await p.call("selectedPaths");
      for (const which of ["publish", "subscribe"]) {
        const path = paths[which];
        assert.ok(path && path.local && path.remote, `${p.name} ${which}: no selected pair: ${JSON.stringify(paths)}`);
        assert.equal(path.local.protocol, "tcp", `${p.name} ${which} path: ${JSON.stringify(path)}`);
        assert.equal(path.remote.protocol, "tcp", `${p.name} ${which} path: ${JSON.stringify(path)}`);
        assert.ok(tcpPorts.has(path.remote.port), `${p.name} ${which}: remote port ${path.remote.port} is not a server TCP port ${[...tcpPorts]}`);
      }
    }
    // The rule was in the path: Chromium's UDP checks to the media ports were dropped.
    const dropped = droppedPackets();
    assert.ok(dropped > 0, `the nftables rule dropped no UDP packet (${dropped}): UDP was not blocked`);

    // The server's side: connections that carried media in (publish) and out (subscribe).
    for (const p of pages) await p.close();
    pages.length = 0;
    const closed = await until(
      () => {
        const lines = pb.stderrLines().filter((l) => l.includes("ICE-TCP connection closed"));
        const counts = lines
          .map((l) => l.match(/(\d+) frames in, (\d+) frames out/))
          .filter(Boolean)
          .map((m) => ({ in: Number(m[1]), out: Number(m[2]) }));
        const carriedIn = counts.filter((c) => c.in >= MEDIA_FRAMES).length;
        const carriedOut = counts.filter((c) => c.out >= MEDIA_FRAMES).length;
        return { ok: carriedIn >= 2 && carriedOut >= 2, counts };
      },
      T,
      "the server to log two ICE-TCP connections that carried media in and two that carried media out"
    );
    t.diagnostic(`ICE-TCP connections (frames in/out): ${JSON.stringify(closed.counts)}; UDP packets dropped: ${dropped}`);
  } catch (e) {
    const diag = [];
    for (const p of pages) {
      const paths = await p.call("selectedPaths").catch((x) => String(x));
      diag.push(`--- ${p.name}: paths ${JSON.stringify(paths)} console: ${p.console.slice(-10).join(" | ")}`);
    }
    e.message += `\n${diag.join("\n")}\n--- nft:\n${(() => { try { return nft("list", "table", "inet", TABLE); } catch (x) { return String(x); } })()}\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
