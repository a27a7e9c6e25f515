// A real softphone for the browser interop tests: Debian's baresip (package baresip-core),
// run headless with file audio, dialling patchbay with a participant token in User-To-User.
//
//   import { startBaresip, readWav, analyseTone } from "./baresip.mjs";
//   const phone = await startBaresip({ toneHz: 1300 });   // config in a temp dir, ctrl_tcp up
//   await phone.dial(`sip:webrtc@${pb.sip}`, { uui: `${token};encoding=jwt` });
//   await phone.established({ timeoutMs: 10000 });         // its CALL_ESTABLISHED event
//   const heard = analyseTone(readWav(await phone.recordingPath()).samples, 8000, { probe: [440] });
//   await phone.hangup();                                  // BYE; resolves on CALL_CLOSED
//   await phone.quit();                                    // /quit, waits for the exit (SIGKILL after a timeout)
//   await phone.cleanup();                                 // removes the temp dir (PATCHBAY_KEEP_LOGS=1 keeps it)
//
// Audio, no sound card: the source is aufile (a 16-bit mono WAV of one sine tone at the codec's
// 8 kHz, written here, longer than any call: baresip ends the call when the file runs out), the
// player is an aubridge device with no source on the other side (it never pulls, so nothing is
// played), and the sndfile filter records what the call decodes (dump-<time>-dec.wav, written as
// RTP arrives) and what it encodes (dump-<time>-enc.wav) in <dir>/snd. Codecs: g711 (PCMU, PCMA)
// and telephone-event. Control: the ctrl_tcp module on a free loopback port (JSON netstrings: the
// same long commands as baresip's menu, responses and UA events such as CALL_ESTABLISHED,
// CALL_CLOSED). SIP runs over UDP from 127.0.0.1 (net_interface 127.0.0.1, sip_listen port 0), and
// baresip's -s SIP trace goes to its log (phone.log(), phone.sipMessages()).
//
// User-To-User: baresip 1.0.0 (Debian 12) has no command or setting that adds a header to an
// INVITE; the `/uaaddheader` menu command came in baresip 2.0.1. Its C API has had
// ua_set_custom_hdrs() since before 1.0.0, and the INVITE carries whatever a UA's custom headers
// are. So this helper compiles a small module (UUI_MODULE_C below, with `cc`, against the symbols
// the baresip binary exports) that adds one command, `uui <value>`, setting the current UA's
// User-To-User header; dial() sends it just before `dial`. Everything else (SIP, SDP offer/answer,
// RTP, codecs, BYE) is baresip's own.
//
// BARESIP_BIN (default "baresip") and BARESIP_MODULES (default /usr/lib/baresip/modules) override
// where baresip and its modules are; CC (default "cc") the C compiler.

import { execFile, spawn } from "node:child_process";
import { mkdtemp, mkdir, rm, symlink, writeFile, readdir } from "node:fs/promises";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { freePortBlock } from "./server.mjs";

export const BARESIP_BIN = process.env.BARESIP_BIN || "baresip";
export const BARESIP_MODULES = process.env.BARESIP_MODULES || "/usr/lib/baresip/modules";
const MODULES = ["g711", "aufile", "aubridge", "sndfile", "account", "menu", "ctrl_tcp"];

// The module behind `uui <value>`. Only the few baresip/libre declarations it needs are written
// out (baresip's headers are not packaged in Debian); their layouts are those of baresip 1.0.0 and
// libre 1.1.0 (struct list is two pointers; struct cmd_arg starts with key, then prm; struct cmd
// and struct mod_export as in baresip.h and re_mod.h). The module's symbol must be `exports`.
export const UUI_MODULE_C = `/* uui: a baresip command setting the User-To-User header of the current UA's requests */
#include <stddef.h>
struct re_printf;
struct ua;
struct commands;
struct list { void *head, *tail; };
struct cmd_arg { char key; char *prm; };
struct cmd {
	const char *name; char key; int flags; const char *desc;
	int (*h)(struct re_printf *pf, void *arg);
};
struct mod_export {
	const char *name; const char *type; int (*init)(void); int (*close)(void);
};
extern struct ua *uag_current(void);
extern int ua_set_custom_hdrs(struct ua *ua, struct list *hdrs);
extern int custom_hdrs_add(struct list *hdrs, const char *name, const char *fmt, ...);
extern void list_flush(struct list *list);
extern struct commands *baresip_commands(void);
extern int cmd_register(struct commands *c, const struct cmd *cmdv, size_t cmdc);
extern void cmd_unregister(struct commands *c, const struct cmd *cmdv);
extern int re_hprintf(struct re_printf *pf, const char *fmt, ...);

static int uui_handler(struct re_printf *pf, void *arg)
{
	const struct cmd_arg *carg = arg;
	struct list hdrs = {NULL, NULL};
	struct ua *ua = uag_current();
	int err;

	if (!ua || !carg || !carg->prm || !carg->prm[0]) {
		re_hprintf(pf, "uui: no user agent or no value");
		return 22; /* EINVAL */
	}
	err = custom_hdrs_add(&hdrs, "User-To-User", "%s", carg->prm);
	if (!err)
		err = ua_set_custom_hdrs(ua, &hdrs);
	list_flush(&hdrs);
	re_hprintf(pf, err ? "uui: failed" : "uui: set");
	return err;
}

static const struct cmd cmdv[] = {
	{"uui", 0, 1 /* CMD_PRM */, "Set the User-To-User header of INVITEs", uui_handler},
};

static int uui_init(void)
{
	return cmd_register(baresip_commands(), cmdv, sizeof(cmdv) / sizeof(cmdv[0]));
}

static int uui_close(void)
{
	cmd_unregister(baresip_commands(), cmdv);
	return 0;
}

const struct mod_export exports = {"uui", "application", uui_init, uui_close};
`;

const run = (cmd, args, opts = {}) =>
  new Promise((resolve, reject) =>
    execFile(cmd, args, { timeout: 60000, ...opts }, (err, stdout, stderr) => {
      if (err) {
        const why = err.code === "ENOENT" ? `${cmd} not found` : `${err.message}\n${stderr}`;
        reject(new Error(`${cmd} ${args.join(" ")}: ${why}`));
      } else resolve({ stdout, stderr });
    })
  );

/** baresip's version line ("baresip v1.0.0 ..."), or throws saying how to install it. */
export async function baresipVersion(bin = BARESIP_BIN) {
  // `baresip -h` prints its usage and exits non-zero
  const out = await new Promise((resolve, reject) => {
    execFile(bin, ["-h"], { timeout: 10000 }, (err, stdout, stderr) => {
      if (err && err.code === "ENOENT") reject(new Error(`${bin} not found: apt-get install -y baresip-core (or set BARESIP_BIN)`));
      else resolve(`${stdout}${stderr}`);
    });
  });
  const m = out.match(/baresip v(\S+)/);
  if (!m) throw new Error(`${bin} -h printed no version: ${out.slice(0, 300)}`);
  return m[0];
}

// ---------------------------------------------------------------------------------------------
// WAV files and tone analysis

/** Writes a 16-bit mono PCM WAV of a sine tone. */
export function writeToneWav(file, { freqHz, seconds, sampleRate = 8000, amplitude = 8000 }) {
  const n = Math.round(seconds * sampleRate);
  const buf = Buffer.alloc(44 + 2 * n);
  buf.write("RIFF", 0, "ascii");
  buf.writeUInt32LE(36 + 2 * n, 4);
  buf.write("WAVEfmt ", 8, "ascii");
  buf.writeUInt32LE(16, 16); // fmt chunk size
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(sampleRate, 24);
  buf.writeUInt32LE(sampleRate * 2, 28); // byte rate
  buf.writeUInt16LE(2, 32); // block align
  buf.writeUInt16LE(16, 34); // bits per sample
  buf.write("data", 36, "ascii");
  buf.writeUInt32LE(2 * n, 40);
  for (let i = 0; i < n; i++) buf.writeInt16LE(Math.round(amplitude * Math.sin((2 * Math.PI * freqHz * i) / sampleRate)), 44 + 2 * i);
  writeFileSync(file, buf);
}

/**
 * Reads a 16-bit PCM WAV (mono, or the first channel). A file still being written (its sizes not
 * yet filled in, as libsndfile leaves them until it closes the file) is read up to its end.
 * -> { sampleRate, channels, samples: Int16Array }
 */
export function readWav(file) {
  const b = readFileSync(file);
  if (b.length < 12 || b.toString("ascii", 0, 4) !== "RIFF" || b.toString("ascii", 8, 12) !== "WAVE") throw new Error(`${file}: not a WAV file`);
  let off = 12;
  let fmt = null;
  while (off + 8 <= b.length) {
    const id = b.toString("ascii", off, off + 4);
    const size = b.readUInt32LE(off + 4);
    const body = off + 8;
    if (id === "fmt ") {
      fmt = { format: b.readUInt16LE(body), channels: b.readUInt16LE(body + 2), sampleRate: b.readUInt32LE(body + 4), bits: b.readUInt16LE(body + 14) };
    } else if (id === "data") {
      if (!fmt) throw new Error(`${file}: data before fmt`);
      if (fmt.format !== 1 || fmt.bits !== 16) throw new Error(`${file}: not 16-bit PCM (${JSON.stringify(fmt)})`);
      const end = size === 0 || body + size > b.length ? b.length : body + size;
      const frames = Math.floor((end - body) / (2 * fmt.channels));
      const samples = new Int16Array(frames);
      for (let i = 0; i < frames; i++) samples[i] = b.readInt16LE(body + 2 * fmt.channels * i);
      return { sampleRate: fmt.sampleRate, channels: fmt.channels, samples };
    }
    off = body + size + (size & 1);
  }
  if (fmt) return { sampleRate: fmt.sampleRate, channels: fmt.channels, samples: new Int16Array(0) };
  throw new Error(`${file}: no fmt/data chunk`);
}

// |X(f)|^2 of x (already windowed) at frequency f (any f, not only bins): Goertzel.
function power(x, f, sampleRate) {
  const w = (2 * Math.PI * f) / sampleRate;
  const c = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  for (let i = 0; i < x.length; i++) {
    const s0 = x[i] + c * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return s1 * s1 + s2 * s2 - c * s1 * s2;
}

/**
 * What a recording holds, measured over Hann-windowed frames of windowMs:
 * -> { seconds, voicedSeconds (frames with RMS above minRms), rms, dominantHz (the scan frequency,
 *      scanStepHz apart in [scanFromHz, scanToHz], with the most power over all frames, or null
 *      in silence), share: { hz: fraction of all power within ±bandHz of hz } }
 * A pure tone at hz has a share of ~1 there (two equal tones ~0.5 each), absent ones ~0; the
 * shares are power-weighted over the frames, so silent stretches do not count.
 */
export function analyseTone(samples, sampleRate, { probe = [], windowMs = 500, bandHz = 10, scanFromHz = 100, scanToHz = 3900, scanStepHz = 10, minRms = 300 } = {}) {
  const n = Math.round((sampleRate * windowMs) / 1000);
  const hann = new Float64Array(n);
  for (let i = 0; i < n; i++) hann[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1));
  const binHz = sampleRate / n;
  const scan = [];
  for (let f = scanFromHz; f <= scanToHz; f += scanStepHz) scan.push(f);
  const scanPower = new Float64Array(scan.length);
  const band = Object.fromEntries(probe.map((hz) => [hz, 0]));
  let total = 0; // sum over frames of sum_k |X_k|^2 = n * sum (x w)^2 (Parseval)
  let sumSq = 0;
  let voiced = 0;
  const x = new Float64Array(n);
  for (let start = 0; start + n <= samples.length; start += n) {
    let frameSq = 0;
    let wSq = 0;
    for (let i = 0; i < n; i++) {
      const v = samples[start + i];
      frameSq += v * v;
      x[i] = v * hann[i];
      wSq += x[i] * x[i];
    }
    sumSq += frameSq;
    if (Math.sqrt(frameSq / n) > minRms) voiced++;
    if (wSq === 0) continue;
    total += n * wSq;
    for (let j = 0; j < scan.length; j++) scanPower[j] += power(x, scan[j], sampleRate);
    for (const hz of probe) {
      // the DFT bins within ±bandHz of hz, counted twice (the negative frequency too)
      for (let k = Math.ceil((hz - bandHz) / binHz); k * binHz <= hz + bandHz; k++) if (k > 0) band[hz] += 2 * power(x, k * binHz, sampleRate);
    }
  }
  const frames = Math.floor(samples.length / n);
  let best = -1;
  for (let j = 0; j < scan.length; j++) if (best < 0 || scanPower[j] > scanPower[best]) best = j;
  const share = {};
  for (const hz of probe) share[hz] = total > 0 ? band[hz] / total : 0;
  return {
    seconds: samples.length / sampleRate,
    voicedSeconds: (voiced * windowMs) / 1000,
    rms: frames > 0 ? Math.sqrt(sumSq / (frames * n)) : 0,
    dominantHz: total > 0 && best >= 0 ? scan[best] : null,
    share,
  };
}

// ---------------------------------------------------------------------------------------------
// The softphone

/**
 * Writes baresip's config in a fresh temp dir, compiles the uui module, starts `baresip -f dir -s`
 * and connects to its ctrl_tcp. Throws (and kills baresip) when it cannot.
 * toneHz/toneSeconds/amplitude: the WAV it sends; codecs (its offer's order) and ptime: its
 * account's audio_codecs and ptime. -> the phone (see the top of this file).
 */
export async function startBaresip({ toneHz, toneSeconds = 180, amplitude = 8000, codecs = "PCMU,PCMA", ptime = 20, bin = BARESIP_BIN, modules = BARESIP_MODULES, startTimeoutMs = 15000 } = {}) {
  if (!toneHz) throw new Error("startBaresip: toneHz is required");
  const version = await baresipVersion(bin);
  for (const m of MODULES) {
    if (!existsSync(path.join(modules, `${m}.so`))) throw new Error(`baresip module ${m}.so not found in ${modules} (apt-get install -y baresip-core, or set BARESIP_MODULES)`);
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), "patchbay-baresip-"));
  const cleanupDir = () => (process.env.PATCHBAY_KEEP_LOGS ? Promise.resolve() : rm(dir, { recursive: true, force: true }));
  let child = null;
  try {
    const modDir = path.join(dir, "modules");
    const sndDir = path.join(dir, "snd");
    await mkdir(modDir);
    await mkdir(sndDir);
    for (const m of MODULES) await symlink(path.join(modules, `${m}.so`), path.join(modDir, `${m}.so`));
    await writeFile(path.join(dir, "uui.c"), UUI_MODULE_C);
    await run(process.env.CC || "cc", ["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", path.join(modDir, "uui.so"), path.join(dir, "uui.c")]);
    const tonePath = path.join(dir, "tone.wav");
    writeToneWav(tonePath, { freqHz: toneHz, seconds: toneSeconds, amplitude });
    const ctrlPort = await freePortBlock(1);
    // Only the keys this needs; baresip's defaults for the rest (jitter buffer, RTP ports...).
    const config = [
      "poll_method epoll",
      "sip_listen 127.0.0.1:0",
      "net_interface 127.0.0.1",
      `audio_source aufile,${tonePath}`,
      "audio_player aubridge,sink",
      "audio_alert aubridge,alert",
      `module_path ${modDir}`,
      "module g711.so",
      "module aufile.so",
      "module aubridge.so",
      "module sndfile.so",
      `snd_path ${sndDir}`,
      "module_tmp account.so",
      "module_app menu.so",
      "module_app ctrl_tcp.so",
      "module_app uui.so",
      `ctrl_tcp_listen 127.0.0.1:${ctrlPort}`,
      "",
    ].join("\n");
    await writeFile(path.join(dir, "config"), config);
    // one account, never registering; the AOR's user is the From user
    await writeFile(path.join(dir, "accounts"), `<sip:phone@127.0.0.1>;regint=0;audio_codecs=${codecs};ptime=${ptime}\n`);
    await writeFile(path.join(dir, "contacts"), "");

    const args = ["-f", dir, "-s"];
    child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
    const killOnExit = () => child.kill("SIGKILL");
    process.on("exit", killOnExit);
    let output = "";
    const onOut = (d) => {
      output += d;
      if (output.length > 4e6) output = output.slice(-2e6);
    };
    child.stdout.setEncoding("utf8").on("data", onOut);
    child.stderr.setEncoding("utf8").on("data", onOut);
    const exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        process.off("exit", killOnExit);
        resolve({ code, signal });
      })
    );
    const spawnError = new Promise((_, reject) => child.once("error", (e) => reject(new Error(`${bin}: ${e.message}`))));
    spawnError.catch(() => {});
    // without colours, and without the menu's call status line (rewritten in place with \r
    // several times a second: "[0:00:03] audio=0/0 (bit/s)")
    const log = () => output.replace(/\x1b\[[0-9;]*m/g, "").replace(/\[\d+:\d\d:\d\d\] audio=[^\r\n]*?\(bit\/s\) *\r*/g, "");

    // ctrl_tcp: connect once baresip listens ("baresip is ready." comes after the modules load).
    const deadline = Date.now() + startTimeoutMs;
    let sock = null;
    while (!sock) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`baresip exited before its ctrl_tcp listened (code ${child.exitCode}, signal ${child.signalCode})\n${log().slice(-3000)}`);
      if (Date.now() > deadline) throw new Error(`baresip's ctrl_tcp did not accept on 127.0.0.1:${ctrlPort} within ${startTimeoutMs} ms\n${log().slice(-3000)}`);
      sock = await Promise.race([
        new Promise((resolve) => {
          const s = net.connect({ host: "127.0.0.1", port: ctrlPort });
          s.once("connect", () => resolve(s));
          s.once("error", () => resolve(null));
        }),
        spawnError,
      ]);
      if (!sock) await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((resolve, reject) => {
      const t = setInterval(() => {
        if (/baresip is ready/.test(output)) resolve();
        else if (child.exitCode !== null || child.signalCode !== null) reject(new Error(`baresip exited (code ${child.exitCode}, signal ${child.signalCode})\n${log().slice(-3000)}`));
        else if (Date.now() > deadline) reject(new Error(`baresip did not print "baresip is ready" within ${startTimeoutMs} ms\n${log().slice(-3000)}`));
        else return;
        clearInterval(t);
      }, 50);
    });
    return makePhone({ child, sock, exited, log, dir, sndDir, tonePath, toneHz, version, args, ctrlPort, cleanupDir });
  } catch (e) {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    e.message += process.env.PATCHBAY_KEEP_LOGS ? `\n(baresip dir kept: ${dir})` : "";
    await cleanupDir();
    throw e;
  }
}

function makePhone({ child, sock, exited, log, dir, sndDir, tonePath, toneHz, version, args, ctrlPort, cleanupDir }) {
  const events = []; // every ctrl_tcp event, in order, with `at` (Date.now())
  const waiters = new Map(); // token -> resolve(response)
  const eventWaiters = new Set();
  let nextToken = 1;
  let rx = Buffer.alloc(0);
  let sockClosed = false;
  sock.on("data", (d) => {
    rx = Buffer.concat([rx, d]);
    // netstrings: <decimal length>:<payload>,
    for (;;) {
      const colon = rx.indexOf(0x3a);
      if (colon < 0) break;
      const len = Number(rx.toString("ascii", 0, colon));
      if (!Number.isInteger(len)) {
        rx = Buffer.alloc(0);
        break;
      }
      if (rx.length < colon + 1 + len + 1) break;
      const payload = rx.toString("utf8", colon + 1, colon + 1 + len);
      rx = rx.subarray(colon + 1 + len + 1);
      let msg;
      try {
        msg = JSON.parse(payload);
      } catch {
        continue;
      }
      if (msg.response) {
        const w = waiters.get(String(msg.token));
        if (w) {
          waiters.delete(String(msg.token));
          w(msg);
        }
      } else if (msg.event) {
        events.push({ ...msg, at: Date.now() });
        for (const w of [...eventWaiters]) w();
      }
    }
  });
  sock.on("error", () => {});
  sock.on("close", () => {
    sockClosed = true;
    for (const w of waiters.values()) w(null);
    waiters.clear();
    for (const w of [...eventWaiters]) w();
  });

  const running = () => child.exitCode === null && child.signalCode === null;
  const describe = () => `baresip ${args.join(" ")} (${version}, ctrl_tcp 127.0.0.1:${ctrlPort}, dir ${dir})\nevents: ${JSON.stringify(events.map((e) => ({ type: e.type, param: e.param })))}\nlog (tail):\n${log().slice(-4000)}`;

  /** Sends one long command (as typed after "/" in baresip's menu). -> { ok, data } */
  function command(cmd, params, { timeoutMs = 10000 } = {}) {
    if (sockClosed || !running()) return Promise.reject(new Error(`baresip is not running (command ${cmd}): ${describe()}`));
    const token = String(nextToken++);
    const body = JSON.stringify(params === undefined ? { command: cmd, token } : { command: cmd, params, token });
    const frame = `${Buffer.byteLength(body)}:${body},`;
    let timer;
    return Promise.race([
      new Promise((resolve, reject) => {
        waiters.set(token, (msg) => (msg ? resolve({ ok: msg.ok, data: msg.data }) : reject(new Error(`baresip's ctrl_tcp closed before answering ${cmd}: ${describe()}`))));
        sock.write(frame);
      }),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`baresip did not answer ${cmd} within ${timeoutMs} ms: ${describe()}`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  /** Resolves with the first event (from `from`, an index into events) matching pred. */
  function waitForEvent(pred, { timeoutMs = 10000, from = 0, what = "event" } = {}) {
    return new Promise((resolve, reject) => {
      let timer;
      const check = () => {
        const e = events.slice(from).find(pred);
        if (e) {
          done();
          resolve(e);
        } else if (sockClosed || !running()) {
          done();
          reject(new Error(`baresip went away waiting for ${what}: ${describe()}`));
        }
      };
      const done = () => {
        clearTimeout(timer);
        eventWaiters.delete(check);
      };
      eventWaiters.add(check);
      timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} from baresip within ${timeoutMs} ms: ${describe()}`));
      }, timeoutMs);
      check();
    });
  }

  const dumps = async (kind) => (await readdir(sndDir)).filter((f) => f.endsWith(`-${kind}.wav`)).sort().map((f) => path.join(sndDir, f));
  let dialledAt = null;

  const phone = {
    version,
    dir,
    tonePath,
    toneHz,
    events,
    log,
    describe,
    command,
    waitForEvent,
    running,
    exited,
    /** Sets the INVITE's User-To-User value (the uui module), then dials uri. */
    async dial(uri, { uui } = {}) {
      if (uui !== undefined) {
        const r = await command("uui", uui);
        if (!r.ok || !/uui: set/.test(r.data)) throw new Error(`baresip's uui command failed: ${JSON.stringify(r)}: ${describe()}`);
      }
      dialledAt = events.length;
      const r = await command("dial", uri);
      if (!r.ok) throw new Error(`baresip's dial ${uri} failed: ${JSON.stringify(r)}: ${describe()}`);
      return r;
    },
    /** The call's CALL_ESTABLISHED event; throws on CALL_CLOSED first (e.g. a refusal). */
    async established({ timeoutMs = 10000 } = {}) {
      const e = await waitForEvent((x) => x.type === "CALL_ESTABLISHED" || x.type === "CALL_CLOSED", { timeoutMs, from: dialledAt ?? 0, what: "CALL_ESTABLISHED" });
      if (e.type !== "CALL_ESTABLISHED") throw new Error(`the call closed before it was established (${e.param}): ${describe()}`);
      return e;
    },
    /** The CALL_CLOSED event of the call, if there is one yet. */
    closedEvent: () => events.slice(dialledAt ?? 0).find((x) => x.type === "CALL_CLOSED") || null,
    /** Hangs up (BYE) and resolves with the CALL_CLOSED event. */
    async hangup({ timeoutMs = 10000 } = {}) {
      const from = events.length;
      const r = await command("hangup");
      if (!r.ok) throw new Error(`baresip's hangup failed: ${JSON.stringify(r)}: ${describe()}`);
      return waitForEvent((x) => x.type === "CALL_CLOSED", { timeoutMs, from, what: "CALL_CLOSED after hangup" });
    },
    /** The WAV of what the call decoded (the newest), or null before the call has audio. */
    async recordingPath() {
      return (await dumps("dec")).pop() || null;
    },
    /** The WAV of what the call encoded (sent), or null. */
    async sentPath() {
      return (await dumps("enc")).pop() || null;
    },
    /**
     * SIP messages of the -s trace (each as sent or received, CRLF as LF) whose start line matches
     * re (e.g. /^INVITE /). -> [text]
     */
    sipMessages(re = /.*/) {
      // The trace prints "#", a "UDP src -> dst" line, then the message; other log lines follow
      // its body, so each message is cut at its start line and at its Content-Length.
      const text = log();
      const starts = [...text.matchAll(/^(?:[A-Z]+ sips?:\S+ SIP\/2\.0|SIP\/2\.0 \d{3} [^\r\n]*)\r?$/gm)];
      const out = [];
      for (let i = 0; i < starts.length; i++) {
        const rest = text.slice(starts[i].index, i + 1 < starts.length ? starts[i + 1].index : undefined);
        // headers end at the first empty line; the body is Content-Length bytes (CRLFs included)
        const blank = rest.match(/\r?\n\r?\n/);
        let msg = rest;
        if (blank) {
          const bodyAt = blank.index + blank[0].length;
          const cl = Number((rest.slice(0, blank.index).match(/^Content-Length:\s*(\d+)/im) || [])[1] || 0);
          msg = Buffer.from(rest.slice(bodyAt)).subarray(0, cl).toString();
          msg = rest.slice(0, bodyAt) + msg;
        }
        msg = msg.replace(/\r\n/g, "\n");
        if (re.test(msg.split("\n")[0])) out.push(msg.trimEnd());
      }
      return out;
    },
    /** Sends /quit and waits for the exit; SIGKILL after timeoutMs. -> { code, signal, killed } */
    async quit({ timeoutMs = 10000 } = {}) {
      if (running() && !sockClosed) await command("quit", undefined, { timeoutMs: 3000 }).catch(() => {});
      let timer;
      const late = await Promise.race([exited.then(() => false), new Promise((r) => (timer = setTimeout(() => r(true), timeoutMs)))]);
      clearTimeout(timer);
      if (late) child.kill("SIGKILL");
      const ex = await exited;
      sock.destroy();
      return { ...ex, killed: late };
    },
    kill() {
      if (running()) child.kill("SIGKILL");
      sock.destroy();
    },
    /** Removes the temp dir (config, WAVs), unless PATCHBAY_KEEP_LOGS is set. Kills baresip first if it runs. */
    async cleanup() {
      phone.kill();
      await exited;
      await cleanupDir();
    },
  };
  return phone;
}
