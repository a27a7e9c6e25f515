// Several patchbay processes on one PostgreSQL database (issue 20): two pages in headless
// Chromium with Bandwidth's unmodified browser SDK, each given the WebSocket URL of a DIFFERENT
// process (as two browsers behind a balancer land on different servers), are in one call: each
// hears the other's tone and sees the other's video. The session is created through one
// process, its participants through the other (REST anywhere). Without placement each process
// would forward only between its own devices, and the pages would never hear each other: the
// second page's WebSocket must be carried to the process that hosts the session. A third page,
// connected while its participant was in no session, moves to the host when it joins.
//
// Evidence is only what the pages DECODE (the tone's frequency with WebAudio, painted frames).
//
// PostgreSQL: $PATCHBAY_TEST_POSTGRES (tests/run.sh sets it) is the admin connection; the case
// creates a fresh database pb_cluster_<random> and drops it at the end. Without the variable the
// case fails (it never skips).
//
//   cargo build && cd tests/interop/browser && bash run.sh              # everything
//   PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test node --test cluster.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay, createAccount, createPostgresDatabase } from "./server.mjs";

const T = 20000; // bound for every "eventually" condition
const TOL_HZ = 30;

let b; // one Chromium for the file

before(async () => {
  b = await launchBrowser();
});
after(async () => {
  await b?.close();
});

test("two browsers entering through different processes hear and see each other", { timeout: 180000 }, async () => {
  const db = await createPostgresDatabase("pb_cluster");
  const nodes = [];
  const pages = [];
  try {
    const account = await createAccount({ databaseUrl: db.url });
    // Both on this machine: they reach each other on loopback (not a default: 127.0.0.1
    // reaches no other machine).
    const args = ["--cluster-address", "127.0.0.1"];
    for (let i = 0; i < 2; i++) nodes.push(await startPatchbay({ databaseUrl: db.url, account, args }));
    const [one, two] = nodes;
    assert.notEqual(one.websocketUrl, two.websocketUrl);

    const session = await one.createSession("cluster");
    const join = async (tag, hz, node) => {
      const { participant, token } = await two.createParticipant({ tag, publishPermissions: ["AUDIO", "VIDEO"] });
      await one.addParticipant(session.id, participant.id, { sessionId: session.id });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await page.connect({ websocketUrl: node.websocketUrl, token, timeoutMs: T });
      await page.publishTone({ freqHz: hz, alias: tag, video: true, timeoutMs: T });
      return { id: participant.id, page };
    };
    const alice = await join("alice", 440, one);
    const bob = await join("bob", 1000, two);

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
    for (const v of videos) assert.ok(v.frames >= 10 && v.width > 0 && v.height > 0, JSON.stringify(v));

    // Carol's page connects to the second process while she is in no session (nothing to
    // carry yet), publishes, then is added to the session, which the first process hosts:
    // her device is moved there (closed with 1013, the SDK reconnects, the door carries it),
    // and she and Alice hear each other.
    const { participant: carol, token: carolToken } = await two.createParticipant({ tag: "carol", publishPermissions: ["AUDIO"] });
    const carolPage = await b.newParticipant("carol");
    pages.push(carolPage);
    await carolPage.connect({ websocketUrl: two.websocketUrl, token: carolToken, timeoutMs: T });
    await carolPage.publishTone({ freqHz: 700, alias: "carol", video: false, timeoutMs: T });
    await two.addParticipant(session.id, carol.id, { sessionId: session.id });
    const [atCarol, carolAtAlice] = await Promise.all([
      carolPage.waitForStream({ participantId: alice.id, timeoutMs: T }),
      alice.page.waitForStream({ participantId: carol.id, timeoutMs: T }),
    ]);
    await Promise.all([
      carolPage.expectTone(atCarol.streamId, 440, { toleranceHz: TOL_HZ, timeoutMs: T }),
      alice.page.expectTone(carolAtAlice.streamId, 700, { toleranceHz: TOL_HZ, timeoutMs: T }),
    ]);
  } catch (e) {
    for (const [i, node] of nodes.entries()) {
      const tail = node.stderrTail(80);
      if (tail) e.message += `\n--- process ${i + 1} log (tail) ---\n${tail}`;
    }
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    for (const node of nodes) await node.stop().catch(() => {});
    await db.drop().catch(() => {});
  }
});
