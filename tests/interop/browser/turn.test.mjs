// TURN (issue #11): a coturn started here on loopback with the TURN REST shared secret, a
// patchbay given --turn-url/--turn-secret, and two Chromium parties with Bandwidth's unmodified
// browser SDK that may use relayed candidates only (iceTransportPolicy "relay"). The test's
// backend (this file, with the account's REST credentials) fetches each participant's ICE
// servers from GET /v1/accounts/{a}/participants/{p}/iceServers and the page passes that JSON
// unchanged as the SDK's `iceServers`. Both parties decode each other's tone.
//
// Evidence that the media went through the relay, from two sides:
// - each page's selected ICE candidate pair: its local candidate is of type "relay";
// - coturn's own accounting: when an allocation ends, coturn logs its peer usage (packets and
//   bytes it relayed from and to the peer, here patchbay, with the username patchbay minted);
//   allocations of both participants relayed media both ways.
//
// Needs coturn's `turnserver` (Debian package coturn; installed with apt when missing).
//
//   cd tests/interop/browser && node --test turn.test.mjs    (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import dgram from "node:dgram";
import { randomBytes } from "node:crypto";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const T = 30000;
const TOL_HZ = 30;
const SECRET = randomBytes(12).toString("hex");
// Audio packets each page receives before the evidence is collected (about 3 s of audio), and
// the packets an allocation relayed in its media direction, at least (a connectivity check
// moves a handful).
const AUDIO_PACKETS = 150;
const MEDIA_PACKETS = 100;

let b;
let pb;
let coturn;
let coturnLog = "";
let turnPort;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freeUdpPort() {
  const s = dgram.createSocket("udp4");
  await new Promise((r) => s.bind(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// Whether a STUN server answers a Binding request on 127.0.0.1:port within 500 ms.
async function stunAnswers(port) {
  const s = dgram.createSocket("udp4");
  const tx = randomBytes(12);
  const req = Buffer.concat([Buffer.from([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]), tx]);
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 500);
      s.on("message", (m) => {
        if (m.length >= 20 && m.readUInt16BE(0) === 0x0101 && m.subarray(8, 20).equals(tx)) {
          clearTimeout(timer);
          resolve(true);
        }
      });
      s.send(req, port, "127.0.0.1");
    });
  } finally {
    s.close();
  }
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

// coturn's "peer usage" lines, one per ended allocation: what it received from and sent to
// the peers through the relay ("peer usage: realm=<...>, username=<...>, rp=N, rb=N, sp=N, sb=N").
function usages() {
  return [...coturnLog.matchAll(/peer usage: realm=<[^>]*>, username=<([^>]*)>, rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)/g)].map((m) => ({
    username: m[1],
    rp: Number(m[2]),
    rb: Number(m[3]),
    sp: Number(m[4]),
    sb: Number(m[5]),
  }));
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
  if (!existsSync("/usr/bin/turnserver")) {
    execFileSync("apt-get", ["install", "-y", "-qq", "coturn"], { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  }
  turnPort = await freeUdpPort();
  // stdbuf: coturn writes its log with stdio, block-buffered into a pipe; line-buffered, the
  // usage lines arrive when written.
  coturn = spawn(
    "stdbuf",
    [
      "-oL",
      "turnserver",
      "-n",
      // -v: coturn logs each allocation's usage when it ends (its own counters).
      "-v",
      "--listening-ip=127.0.0.1",
      "--relay-ip=127.0.0.1",
      `--listening-port=${turnPort}`,
      "--use-auth-secret",
      `--static-auth-secret=${SECRET}`,
      "--realm=patchbay.test",
      "--no-tls",
      "--no-dtls",
      "--no-tcp",
      "--no-cli",
      // patchbay's media ports are on 127.0.0.1: coturn refuses loopback peers unless told.
      "--allow-loopback-peers",
      "--log-file=stdout",
    ],
    { stdio: ["ignore", "pipe", "pipe"] }
  );
  coturn.stdout.setEncoding("utf8");
  coturn.stderr.setEncoding("utf8");
  coturn.stdout.on("data", (d) => (coturnLog += d));
  coturn.stderr.on("data", (d) => (coturnLog += d));
  process.on("exit", () => coturn.kill("SIGKILL"));
  await until(async () => ({ ok: await stunAnswers(turnPort) }), 10000, `coturn to answer STUN on 127.0.0.1:${turnPort}`);
  [pb, b] = await Promise.all([
    startPatchbay({ args: ["--turn-url", `turn:127.0.0.1:${turnPort}?transport=udp`, "--turn-secret", SECRET] }),
    launchBrowser(),
  ]);
});

after(async () => {
  await b?.close();
  await pb?.stop();
  coturn?.kill("SIGTERM");
});

test("relay only: two parties hear each other through coturn with credentials minted by patchbay", { timeout: 120000 }, async (t) => {
  const session = await pb.createSession("turn");
  const pages = [];
  try {
    const join = async (tag) => {
      const { participant, token } = await pb.createParticipant({ tag });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      // What the application's backend does: fetch the participant's ICE servers, hand them on.
      const iceServers = await pb.rest("GET", `/participants/${participant.id}/iceServers`);
      return { id: participant.id, token, page, iceServers };
    };
    const alice = await join("alice");
    const bob = await join("bob");
    for (const x of [alice, bob]) {
      assert.equal(x.iceServers.length, 1, JSON.stringify(x.iceServers));
      assert.deepEqual(x.iceServers[0].urls, [`turn:127.0.0.1:${turnPort}?transport=udp`]);
      assert.ok(x.iceServers[0].username.endsWith(`:${x.id}`), JSON.stringify(x.iceServers));
    }
    await Promise.all(
      [alice, bob].map((x) =>
        x.page.connect({ websocketUrl: pb.websocketUrl, token: x.token, timeoutMs: T, iceServers: x.iceServers, iceTransportPolicy: "relay" })
      )
    );
    await Promise.all([
      alice.page.publishTone({ freqHz: 440, alias: "alice-tone", timeoutMs: T }),
      bob.page.publishTone({ freqHz: 1000, alias: "bob-tone", timeoutMs: T }),
    ]);
    const [atBob, atAlice] = await Promise.all([
      bob.page.waitForStream({ participantId: alice.id, timeoutMs: T }),
      alice.page.waitForStream({ participantId: bob.id, timeoutMs: T }),
    ]);
    await Promise.all([
      bob.page.expectTone(atBob.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T }),
      alice.page.expectTone(atAlice.streamId, 1000, { toleranceHz: TOL_HZ, timeoutMs: T }),
    ]);

    await Promise.all([receivedAudio(alice.page, AUDIO_PACKETS), receivedAudio(bob.page, AUDIO_PACKETS)]);

    // Every peer connection's selected pair starts at a relayed candidate.
    for (const p of [alice.page, bob.page]) {
      const paths = await p.call("selectedPaths");
      for (const which of ["publish", "subscribe"]) {
        const path = paths[which];
        assert.ok(path && path.local, `${p.name} ${which}: no selected pair: ${JSON.stringify(paths)}`);
        assert.equal(path.local.type, "relay", `${p.name} ${which} path: ${JSON.stringify(path)}`);
      }
    }

    // coturn's own accounting, written when the allocations end (the pages close them).
    for (const p of pages) await p.close();
    pages.length = 0;
    const seen = await until(
      () => {
        const u = usages();
        const of = (id) => u.filter((x) => x.username.endsWith(`:${id}`));
        // Publishing: media relayed to patchbay (sent to the peer); subscribing: from it.
        const both = (id) => of(id).some((x) => x.sp >= MEDIA_PACKETS) && of(id).some((x) => x.rp >= MEDIA_PACKETS);
        return { ok: both(alice.id) && both(bob.id), usages: u };
      },
      T,
      "coturn to report, for both participants, an allocation that relayed media to patchbay and one that relayed media from it"
    );
    t.diagnostic(`coturn usage: ${JSON.stringify(seen.usages)}`);
  } catch (e) {
    e.message += `\n--- coturn log (tail):\n${coturnLog.split("\n").slice(-30).join("\n")}\n--- patchbay stderr (tail):\n${pb.stderrTail(30)}`;
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
