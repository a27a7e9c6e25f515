// TLS interop: Bandwidth's unmodified browser SDK in headless Chromium joins a patchbay started
// with --tls-cert/--tls-key over wss://, and both parties decode each other's tone (FFT) and
// video (painted frames).
//
// The certificate is made at test time (openssl CLI, a self-signed P-256 certificate for
// 127.0.0.1 and localhost). Chromium trusts exactly that certificate, by its public key
// (--ignore-certificate-errors-spki-list), not every certificate; REST calls from Node verify it
// as their CA.
//
//   cargo build && cd tests/interop/browser && bash run.sh          # everything
//   cd tests/interop/browser && node --test tls.test.mjs             # this file (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { launchBrowser } from "./runner.mjs";
import { startPatchbay } from "./server.mjs";

const T = 15000; // bound for every "eventually" condition
const TOL_HZ = 30;

let certDir;
let b;
let pb;

/** A self-signed certificate and key in `dir`; -> { cert, key, ca, spki } (spki: base64 SHA-256). */
function makeCert(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], { stdio: ["ignore", "ignore", "pipe"] });
  const spkiDer = execFileSync("openssl", ["x509", "-in", cert, "-noout", "-pubkey"]);
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "DER"], { input: spkiDer });
  const spki = execFileSync("openssl", ["dgst", "-sha256", "-binary"], { input: der }).toString("base64");
  return { cert, key, ca: readFileSync(cert, "utf8"), spki };
}

before(async () => {
  certDir = mkdtempSync(path.join(os.tmpdir(), "patchbay-tls-"));
  const tls = makeCert(certDir);
  [pb, b] = await Promise.all([
    startPatchbay({ tls }),
    launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${tls.spki}`] }),
  ]);
});
after(async () => {
  await b?.close();
  await pb?.stop();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
});

test("two-party call over wss://: each hears and sees the other", { timeout: 90000 }, async () => {
  assert.match(pb.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  assert.match(pb.websocketUrl, /^wss:\/\/127\.0\.0\.1:\d+$/);
  const session = await pb.createSession("tls");
  const pages = [];
  try {
    const join = async (tag) => {
      const { participant, token } = await pb.createParticipant({ tag });
      await pb.addParticipant(session.id, participant.id, { sessionId: session.id });
      const page = await b.newParticipant(tag);
      pages.push(page);
      await page.connect({ websocketUrl: pb.websocketUrl, token, timeoutMs: T });
      return { id: participant.id, page };
    };
    const alice = await join("alice");
    const bob = await join("bob");
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
    for (const v of videos) assert.ok(v.frames >= 10 && v.width > 0 && v.height > 0, JSON.stringify(v));
  } catch (e) {
    e.message += `\n--- patchbay stderr (tail):\n${pb.stderrTail(40)}`;
    throw e;
  } finally {
    for (const p of pages) await p.close().catch(() => {});
    await pb.deleteSession(session.id).catch(() => {});
  }
});
