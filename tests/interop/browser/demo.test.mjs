// The README's first demo (examples/demo.rs + examples/demo/) in headless Chromium: a real
// patchbay, the real example backend, two tabs of its page (Bandwidth's unmodified SDK). Each
// tab labels the other's stream with the name it joined with (not an id); Leave deletes the
// participant, and so does the page going away (pagehide: a closed, reloaded or navigated tab;
// the seat is freed: no leak towards the 20-member cap).
//
//   cargo build && cargo build --example demo && cd tests/interop/browser && bash run.sh
//   node --test demo.test.mjs                              # this file (after run.sh once)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, chromiumPath, withTimeout } from "./runner.mjs";
import { startPatchbay, RestError } from "./server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "../../..");
const PAGE = path.join(ROOT, "examples/demo");
const BIN = process.env.DEMO_BIN || path.join(ROOT, "target/debug/examples/demo");
const T = 20000; // bound for every "eventually" condition

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(pred, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await pred();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(250);
  }
}

/** Starts the demo backend against pb; resolves with its URL once it prints it. */
async function startDemo(pb) {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`cargo build --example demo\` (or set DEMO_BIN)`);
  const args = ["--patchbay", pb.url, "--account", pb.account, "--username", pb.username, "--password", pb.password,
    "--listen", "127.0.0.1:0"];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.on("exit", killOnExit);
  let output = "";
  child.stderr.setEncoding("utf8").on("data", (d) => (output += d));
  child.stdout.setEncoding("utf8");
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      child.stdout.on("data", (d) => {
        output += d;
        const m = output.match(/demo: open (http:\/\/\S+) in two tabs/);
        if (m) resolve(m[1] + "/");
      });
      child.once("exit", (code) => reject(new Error(`demo exited (code ${code}):\n${output}`)));
    }),
    T,
    "demo start"
  );
  return {
    url,
    output: () => output,
    names: async () => (await fetch(url + "names")).json(),
    stop() {
      child.kill("SIGTERM");
      process.off("exit", killOnExit);
    },
  };
}

let pb;
let demo;
let browser;

before(async () => {
  // the page, bundled as examples/demo/package.json does
  await build({
    entryPoints: [path.join(PAGE, "app.js")],
    bundle: true,
    format: "iife",
    platform: "browser",
    target: "chrome100",
    outfile: path.join(PAGE, "dist/app.js"),
    nodePaths: [path.join(here, "node_modules")],
    logLevel: "warning",
  });
  pb = await startPatchbay();
  demo = await startDemo(pb);
  browser = await chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_ARGS, timeout: 30000 });
});

after(async () => {
  await browser?.close().catch(() => {});
  demo?.stop();
  await pb?.stop();
});

/** Opens a tab of the demo, joins as `name`; the tab and its context. */
async function join(name, errors) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("pageerror", (err) => errors.push(`${name}: ${err.message}`));
  await page.goto(demo.url, { waitUntil: "load" });
  await page.fill("#name", name);
  await page.click("#join");
  await page.waitForFunction((n) => document.getElementById("status").textContent === `in the room as ${n}`, name, { timeout: T });
  return { page, context };
}

/** Whether patchbay still has the participant. */
async function exists(id) {
  try {
    await pb.rest("GET", `/participants/${id}`);
    return true;
  } catch (e) {
    if (e instanceof RestError && e.status === 404) return false;
    throw e;
  }
}

test("demo: tabs label each other by name; Leave and a page going away delete the participant", { timeout: 120000 }, async () => {
  const errors = [];
  const ann = await join("Ann", errors);
  const bob = await join("Bob", errors);
  // Each tab labels the other's stream with its name.
  for (const [tab, other] of [[ann, "Bob"], [bob, "Ann"]]) {
    await tab.page.waitForFunction(
      (n) => [...document.querySelectorAll("figcaption")].some((c) => c.textContent.startsWith(`${n} (`)),
      other,
      { timeout: T }
    );
  }
  const names = await demo.names();
  const idOf = (n) => Object.keys(names).find((id) => names[id] === n);
  const [annId, bobId] = [idOf("Ann"), idOf("Bob")];
  assert.ok(annId && bobId, `the backend knows both: ${JSON.stringify(names)}`);
  assert.ok((await exists(annId)) && (await exists(bobId)));

  // Leave deletes Bob's participant.
  await bob.page.click("#leave");
  await until(async () => !(await exists(bobId)), T, "Bob's participant deleted after Leave");
  assert.ok(await exists(annId), "Ann is still there");

  // Ann's tab leaving the page (navigating away: the same pagehide as a closed tab, with a
  // browser left to send the beacon; a headless context torn down at once may drop it) deletes
  // hers.
  await ann.page.goto("about:blank");
  await until(async () => !(await exists(annId)), T, "Ann's participant deleted when her page went away");
  await ann.context.close();
  await bob.context.close();
  assert.deepEqual(errors, []);
});
