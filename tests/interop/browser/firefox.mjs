// Drives the same test page (page/index.html + Bandwidth's unmodified browser SDK) in headless
// Debian Firefox ESR, over WebDriver BiDi with puppeteer-core (which never downloads a browser:
// it only starts the executable it is given). Participants are runner.mjs's Participant, so a
// Firefox page has exactly the API of a Chromium one (connect, publishTone, expectTone, ...).
//
//   import { launchFirefox } from "./firefox.mjs";
//   const f = await launchFirefox();
//   const carol = await f.newParticipant("carol");
//   await carol.connect({ websocketUrl, token });
//   await f.close();
//
// env: FIREFOX_PATH (default /usr/bin/firefox-esr), HARNESS_VERBOSE=1 (echo page console),
//      FIREFOX_DUMPIO=1 (echo Firefox's own stdout/stderr).

import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";
import { Participant, startStaticServer, withTimeout } from "./runner.mjs";

// Preferences added to the fresh profile puppeteer makes for each launch (and deletes on close),
// on top of puppeteer's and Firefox's remote-agent defaults (no updates, telemetry, ...).
export const FIREFOX_PREFS = {
  // getUserMedia without a prompt, from Firefox's fake devices (a 1000 Hz tone for audio, a
  // moving test picture for video). The tests publish tones of their own made with WebAudio.
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  // Playback and AudioContexts start without a user gesture.
  "media.autoplay.default": 0,
  "media.autoplay.block-webaudio": false,
  // There is no sound device here (no /dev/snd, no PulseAudio): with a real cubeb backend an
  // AudioContext never leaves "suspended" (resume() never settles), so neither the page's
  // WebAudio tones nor its analysers would run. The mock backend is a device that consumes
  // audio in real time.
  "media.cubeb.force_mock_context": true,
  // ICE: gather and use loopback host candidates (patchbay's are on 127.0.0.1), unhidden by mDNS.
  // Firefox also gathers on the default-route interface ONLY (here eth0, never lo) unless the
  // page is capturing or its origin holds a camera/microphone permission, and the SDK creates
  // its first peer connection at connect(), before any capture: so launchFirefox() grants the
  // page's origin both permissions (see permissionPrefs), as a user who allowed them would have.
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
};

// Grants `origin` camera and microphone permission, through a default-permissions file (the
// format of Firefox's own defaults/permissions) that the permission manager loads at start-up.
// WebDriver BiDi's permissions.setPermission cannot do this: Firefox answers 'unsupported
// operation "descriptor.name" "camera" is currently unsupported'. Firefox keeps permissions
// per user context unless told not to, and each participant has a BrowserContext (a user
// context) of its own: so they are shared across user contexts here.
async function permissionPrefs(dir, origin) {
  const file = path.join(dir, "permissions");
  await writeFile(file, ["camera", "microphone"].map((type) => `origin\t${type}\t1\t${origin}\n`).join(""));
  return {
    "permissions.manager.defaultsUrl": pathToFileURL(file).href,
    "permissions.isolateBy.userContext": false,
  };
}

export function firefoxPath() {
  const candidates = [process.env.FIREFOX_PATH, "/usr/bin/firefox-esr", "/usr/bin/firefox"].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`no Firefox found (tried ${candidates.join(", ")}); apt-get install -y firefox-esr`);
  return found;
}

/**
 * Launches Firefox with a fresh temporary profile and a static server for page/.
 * Returns { browser, version, baseUrl, participants, newParticipant(name?), close() }.
 */
export async function launchFirefox({
  executablePath = firefoxPath(),
  headless = true,
  prefs = {},
  verbose = !!process.env.HARNESS_VERBOSE,
} = {}) {
  const web = await startStaticServer();
  const dir = await mkdtemp(path.join(os.tmpdir(), "patchbay-firefox-"));
  const cleanup = async () => {
    await web.close();
    await rm(dir, { recursive: true, force: true });
  };
  let browser;
  try {
    const grants = await permissionPrefs(dir, new URL(web.url).origin);
    browser = await puppeteer.launch({
      browser: "firefox",
      protocol: "webDriverBiDi",
      executablePath,
      headless,
      extraPrefsFirefox: { ...FIREFOX_PREFS, ...grants, ...prefs },
      dumpio: !!process.env.FIREFOX_DUMPIO,
      timeout: 60000,
    });
  } catch (e) {
    await cleanup();
    throw e;
  }
  const version = await browser.version().catch(() => "firefox (version unknown)");
  const participants = [];
  return {
    browser,
    version,
    baseUrl: web.url,
    participants,
    async newParticipant(name = `f${participants.length + 1}`) {
      const context = await browser.createBrowserContext();
      try {
        const page = await context.newPage();
        const p = new Participant(name, context, page, verbose);
        await page.goto(web.url + "index.html", { waitUntil: "load", timeout: 15000 });
        await page.waitForFunction(() => window.harnessReady === true, { timeout: 15000 });
        participants.push(p);
        return p;
      } catch (e) {
        await context.close().catch(() => {});
        throw e;
      }
    },
    async close() {
      for (const p of participants) await withTimeout(p.close(), 10000, `${p.name}.close`).catch(() => {});
      try {
        await withTimeout(browser.close(), 20000, "firefox close");
      } catch {
        browser.process()?.kill("SIGKILL");
      }
      await cleanup();
    },
  };
}
