#!/usr/bin/env node
// A contact centre's backend, in miniature, against a real patchbay server: a caller, an agent,
// a supervisor who whispers to the agent and then barges in, and a transfer of the caller to
// another agent. It drives patchbay over REST only, receives patchbay's webhooks (checking
// their Standard Webhooks signature) and prints them as they come.
//
// Everybody here is a phone: the test phone (examples/phone.rs, `--commands`), each playing its
// own tone and reporting what it hears, so the walkthrough shows who hears whom from decoded
// audio. See README.md in this folder for the commands.
//
//   node backend.mjs --url http://127.0.0.1:8080 --account dev --username U --password P \
//       --secret whsec_... --sip 127.0.0.1:5060 [--phone target/release/examples/phone] [--step]
//
// --step waits for Enter before each step. Lines printed:
//   step <name>: <what the backend does>
//   webhook <participant tag> <JSON body>          (each delivery, as received)
//   hears <JSON {step, who, hears: [...], silent: [...], ok}>   (each phone, each step)
//   done: ok | done: NOT as expected
// Exit status 0 when every phone heard exactly what it should at every step.

import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const out = { phone: path.resolve(here, "../../target/release/examples/phone"), step: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    if (a === "--url") out.url = next().replace(/\/$/, "");
    else if (a === "--account") out.account = next();
    else if (a === "--username") out.username = next();
    else if (a === "--password") out.password = next();
    else if (a === "--secret") out.secret = next();
    else if (a === "--sip") out.sip = next();
    else if (a === "--phone") out.phone = next();
    else if (a === "--step") out.step = true;
    else throw new Error(`unknown argument ${a}`);
  }
  for (const k of ["url", "account", "username", "password", "secret", "sip"]) {
    if (!out[k]) throw new Error(`--${k} is required (see README.md)`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- REST ---------------------------------------------------------------------------------------

const auth = "Basic " + Buffer.from(`${args.username}:${args.password}`).toString("base64");
async function rest(method, rel, body) {
  const url = `${args.url}/v1/accounts/${args.account}${rel}`;
  const init = { method, headers: { authorization: auth } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${url} -> ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
/** Subscriptions to the given participants only. */
const hearing = (...ps) => ({ participants: ps.map((p) => ({ participantId: p.id })) });

// ---- webhooks -----------------------------------------------------------------------------------

function signed(headers, body) {
  const id = headers["webhook-id"];
  const ts = headers["webhook-timestamp"];
  const sigs = headers["webhook-signature"];
  if (!id || !ts || !sigs || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const key = Buffer.from(args.secret.replace(/^whsec_/, ""), "base64");
  const expected = Buffer.from("v1," + createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest("base64"));
  return sigs.split(" ").some((s) => Buffer.from(s).length === expected.length && timingSafeEqual(Buffer.from(s), expected));
}

const tags = new Map(); // participantId -> tag, for printing
const received = []; // webhook bodies, in order of arrival
const seen = new Set(); // webhook-ids (deliveries are at least once: deduplicate)
const receiver = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    if (!signed(req.headers, body)) {
      console.log(`webhook REJECTED (bad signature) ${body}`);
      res.writeHead(401).end();
      return;
    }
    res.writeHead(204).end();
    if (seen.has(req.headers["webhook-id"])) return;
    seen.add(req.headers["webhook-id"]);
    const event = JSON.parse(body);
    received.push(event);
    console.log(`webhook ${tags.get(event.participantId) || event.participantId} ${body}`);
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const callbackUrl = `http://127.0.0.1:${receiver.address().port}/webhooks`;

// ---- phones -------------------------------------------------------------------------------------

const TONES = { caller: 1000, "agent-1": 440, supervisor: 700, "agent-2": 1300 };
const PROBE = Object.values(TONES);

function dial(person) {
  const child = spawn(args.phone, ["--sip", args.sip, "--token", person.token, "--tone", String(TONES[person.tag]), "--seconds", "600", "--probe", PROBE.join(","), "--commands"], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const waiting = [];
  let final = null;
  createInterface({ input: child.stdout }).on("line", (line) => {
    let v;
    try {
      v = JSON.parse(line);
    } catch {
      return;
    }
    if (v.report) waiting.shift()?.(v.report);
    else final = v;
  });
  const exited = new Promise((r) => child.once("exit", r));
  child.stdin.on("error", () => {});
  person.phone = {
    report() {
      const p = new Promise((r) => waiting.push(r));
      child.stdin.write("report\n");
      return p;
    },
    async hangup() {
      child.stdin.write("hangup\n");
      await exited;
      return final;
    },
    kill: () => child.kill("SIGKILL"),
  };
}

const PRESENT = 0.05; // share of the heard power at a tone that is there (~0.15..0.5 observed)
const ABSENT = 0.005; // and at one that is not (~1e-7 observed)
let allOk = true;

/** Polls each phone until it hears exactly `want[tag]` (among the other tones), or 20 s pass. */
async function expectHearing(step, people, want) {
  const deadline = Date.now() + 20000;
  const pending = new Set(Object.keys(want));
  const last = {};
  for (const tag of pending) await people[tag].phone.report(); // forget what came before
  while (pending.size && Date.now() < deadline) {
    await sleep(1000);
    for (const tag of [...pending]) {
      const r = await people[tag].phone.report();
      const others = Object.keys(TONES).filter((t) => t !== tag);
      const hears = others.filter((t) => r.share[TONES[t]] > PRESENT);
      const silent = others.filter((t) => r.share[TONES[t]] < ABSENT);
      last[tag] = { hears, silent };
      const ok = want[tag].every((t) => hears.includes(t)) && others.filter((t) => !want[tag].includes(t)).every((t) => silent.includes(t));
      if (ok) pending.delete(tag);
    }
  }
  for (const tag of Object.keys(want)) {
    const ok = !pending.has(tag);
    allOk &&= ok;
    console.log(`hears ${JSON.stringify({ step, who: tag, hears: last[tag]?.hears ?? [], silent: last[tag]?.silent ?? [], ok })}`);
  }
}

async function step(name, what) {
  if (args.step) {
    process.stdout.write(`\n[Enter] ${name}: ${what} `);
    await new Promise((r) => process.stdin.once("data", r));
  }
  console.log(`step ${name}: ${what}`);
}

// ---- the walkthrough ----------------------------------------------------------------------------

const people = {};
const sessions = [];
try {
  for (const tag of Object.keys(TONES)) {
    const { participant, token } = await rest("POST", "/participants", { tag, callbackUrl, publishPermissions: ["AUDIO"] });
    people[tag] = { id: participant.id, token, tag };
    tags.set(participant.id, tag);
  }
  const { caller, supervisor } = people;
  const agent1 = people["agent-1"];
  const agent2 = people["agent-2"];

  await step("talk", "the caller and agent-1 in session call-1, hearing each other");
  const call1 = await rest("POST", "/sessions", { tag: "call-1" });
  sessions.push(call1);
  await rest("PUT", `/sessions/${call1.id}/participants/${caller.id}`, hearing(agent1));
  await rest("PUT", `/sessions/${call1.id}/participants/${agent1.id}`, hearing(caller));
  dial(caller);
  dial(agent1);
  await expectHearing("talk", people, { caller: ["agent-1"], "agent-1": ["caller"] });

  await step("whisper", "the supervisor joins: hears both; agent-1 hears the supervisor; the caller does not");
  await rest("PUT", `/sessions/${call1.id}/participants/${supervisor.id}`, hearing(caller, agent1));
  await rest("PUT", `/sessions/${call1.id}/participants/${agent1.id}/subscriptions`, hearing(caller, supervisor));
  dial(supervisor);
  await expectHearing("whisper", people, { caller: ["agent-1"], "agent-1": ["caller", "supervisor"], supervisor: ["caller", "agent-1"] });

  await step("barge", "the supervisor barges in: the caller hears the supervisor too");
  await rest("PUT", `/sessions/${call1.id}/participants/${caller.id}/subscriptions`, hearing(agent1, supervisor));
  await expectHearing("barge", people, { caller: ["agent-1", "supervisor"], "agent-1": ["caller", "supervisor"], supervisor: ["caller", "agent-1"] });

  await step("transfer", "the caller moves to session call-2 with agent-2 (same call, no new INVITE)");
  const call2 = await rest("POST", "/sessions", { tag: "call-2" });
  sessions.push(call2);
  await rest("PUT", `/sessions/${call2.id}/participants/${agent2.id}`, hearing(caller));
  dial(agent2);
  await rest("DELETE", `/sessions/${call1.id}/participants/${caller.id}`);
  await rest("PUT", `/sessions/${call2.id}/participants/${caller.id}`, hearing(agent2));
  await expectHearing("transfer", people, { caller: ["agent-2"], "agent-2": ["caller"], "agent-1": ["supervisor"], supervisor: ["agent-1"] });

  await step("end", "everybody hangs up; the backend cleans up as Bandwidth's samples do");
  for (const p of Object.values(people)) {
    const final = await p.phone.hangup();
    if (final && final.bye_from_server) {
      allOk = false;
      console.log(`${p.tag}'s call was hung up by the server`);
    }
  }
  const deadline = Date.now() + 20000;
  const ended = () => Object.values(people).every((p) => received.some((e) => e.participantId === p.id && e.event === "onCallEnded"));
  while (!ended() && Date.now() < deadline) await sleep(100);
  if (!ended()) {
    allOk = false;
    console.log("not every onCallEnded arrived within 20 s");
  }
} catch (e) {
  allOk = false;
  console.log(`error: ${e.stack || e}`);
} finally {
  for (const p of Object.values(people)) p.phone?.kill();
  for (const s of sessions) await rest("DELETE", `/sessions/${s.id}`).catch(() => {});
  for (const p of Object.values(people)) await rest("DELETE", `/participants/${p.id}`).catch(() => {});
  receiver.close();
  receiver.closeAllConnections?.();
}
console.log(`done: ${allOk ? "ok" : "NOT as expected"}`);
process.exit(allOk ? 0 : 1);
