// What Bandwidth's Node server SDK (@bandwidth/webrtc) puts on the wire, recorded by a proxy
// between the SDK and a real patchbay: request line, the headers that matter, and the exact
// body bytes of every method, with each body form the SDK's models allow. Also: what the SDK
// refuses to send at all (its argument validation), and a check that the SDK's response
// validation is live in this harness (so rest.test.mjs would catch a response that does not
// match the SDK's schema).
//
// SDK facts shown here: bodies are the SDK's schema `unmap` of the argument, so only fields of
// the model are sent (unknown keys are dropped), in the model's field order, only when set
// (undefined is left out, null is sent as null where the model allows it: callbackUrl). No
// defaults are added (unlike the Python SDK, no deviceApiVersion unless given). A method called
// without a body sends no body (Content-Length 0) but still `Content-Type: application/json`.

import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";

import { startPatchbay } from "./patchbay.mjs";
import { startRecorder } from "./recorder.mjs";
import { ArgumentsValidationError, ResponseValidationError, makeController } from "./sdk.mjs";

let pb;
let rec;
let api;
let acct;
let basic;
before(async () => {
  pb = await startPatchbay();
  rec = await startRecorder(pb.url);
  api = makeController(`${rec.url}/v1`, pb.main.username, pb.main.password);
  acct = pb.main.accountId;
  basic = "Basic " + Buffer.from(`${pb.main.username}:${pb.main.password}`).toString("base64");
});
after(async () => {
  await rec?.stop();
  await pb?.stop();
});

const JSON_ACCEPT = "application/json"; // methods whose result the SDK parses (callAsJson)
const ANY_ACCEPT = "application/json, text/plain, */*"; // void methods: axios' default

/** Runs fn, then requires exactly one recorded request and checks it; -> the request. */
async function one(fn, { method, path, accept, body, status }) {
  rec.take();
  let outcome;
  try {
    outcome = await fn();
  } catch (e) {
    outcome = e;
  }
  const seen = rec.take();
  assert.equal(seen.length, 1, `expected exactly one request, got ${JSON.stringify(seen)}`);
  const r = seen[0];
  assert.equal(r.method, method);
  assert.equal(r.path, path);
  assert.equal(r.headers.authorization, basic, "HTTP Basic with the configured credentials");
  assert.equal(r.headers["user-agent"], "APIMATIC 2.0");
  assert.equal(r.headers.accept, accept);
  if (body === undefined) {
    assert.equal(r.body, "", `no body expected, got ${r.body}`);
  } else {
    assert.equal(r.body, body, "the exact body bytes");
    assert.equal(r.headers["content-length"], String(Buffer.byteLength(body)));
  }
  if (method === "POST" || method === "PUT") {
    assert.equal(r.headers["content-type"], "application/json", "POST/PUT always carry a JSON content type, body or not");
    if (body === undefined) assert.equal(r.headers["content-length"], "0");
  } else {
    assert.equal(r.headers["content-type"], undefined, `${method} has no content type`);
  }
  if (status !== undefined) {
    const got = outcome?.statusCode;
    assert.equal(got, status, `patchbay answered ${got}: ${outcome?.body ?? outcome}`);
  }
  return { request: r, outcome };
}

describe("request bodies and headers, per method", () => {
  let pid;
  let pid2;
  let sid;

  test("createParticipant: no body, {}, every field of the model, unknown keys, null callbackUrl", async () => {
    const base = `/v1/accounts/${acct}/participants`;
    const post = { method: "POST", path: base, accept: JSON_ACCEPT };
    let r = await one(() => api.createParticipant(acct), { ...post, body: undefined, status: 200 });
    pid = r.outcome.result.participant.id;
    r = await one(() => api.createParticipant(acct, {}), { ...post, body: "{}", status: 200 });
    pid2 = r.outcome.result.participant.id;
    await one(() => api.createParticipant(acct, { tag: "only-tag" }), { ...post, body: '{"tag":"only-tag"}', status: 200 });
    await one(() => api.createParticipant(acct, { callbackUrl: null }), { ...post, body: '{"callbackUrl":null}', status: 200 });
    // The usual call: keys in the model's order whatever the caller's order.
    await one(() => api.createParticipant(acct, { deviceApiVersion: "V3", tag: "t", publishPermissions: ["AUDIO", "VIDEO"], callbackUrl: "https://example.com/cb" }), {
      ...post,
      body: '{"callbackUrl":"https://example.com/cb","publishPermissions":["AUDIO","VIDEO"],"tag":"t","deviceApiVersion":"V3"}',
      status: 200,
    });
    // Every field the Participant model has, plus keys it does not have (dropped by the SDK).
    // patchbay's answer to the read-only fields is rest.test.mjs's business; here: the bytes.
    await one(() => api.createParticipant(acct, {
      foo: 1,
      deviceApiVersion: "V2",
      tag: "all",
      subscriptions: { participants: [{ participantId: pid, streamAliases: ["mic"], extra: true }], sessionId: "s-1", other: 2 },
      sessions: ["s-1"],
      publishPermissions: ["VIDEO"],
      callbackUrl: "https://example.com/cb",
      id: "p-1",
      token: "not-a-model-field",
    }), {
      ...post,
      body: `{"id":"p-1","callbackUrl":"https://example.com/cb","publishPermissions":["VIDEO"],"sessions":["s-1"],"subscriptions":{"sessionId":"s-1","participants":[{"participantId":"${pid}","streamAliases":["mic"]}]},"tag":"all","deviceApiVersion":"V2"}`,
    });
  });

  test("getParticipant / deleteParticipant: no body", async () => {
    await one(() => api.getParticipant(acct, pid2), { method: "GET", path: `/v1/accounts/${acct}/participants/${pid2}`, accept: JSON_ACCEPT, status: 200 });
    await one(() => api.deleteParticipant(acct, pid2), { method: "DELETE", path: `/v1/accounts/${acct}/participants/${pid2}`, accept: ANY_ACCEPT, status: 204 });
  });

  test("createSession: no body, {}, {tag}, {id, tag}, unknown keys dropped", async () => {
    const post = { method: "POST", path: `/v1/accounts/${acct}/sessions`, accept: JSON_ACCEPT };
    const r = await one(() => api.createSession(acct), { ...post, body: undefined, status: 200 });
    sid = r.outcome.result.id;
    await one(() => api.createSession(acct, {}), { ...post, body: "{}", status: 200 });
    await one(() => api.createSession(acct, { tag: "standup", name: "x" }), { ...post, body: '{"tag":"standup"}', status: 200 });
    await one(() => api.createSession(acct, { tag: "t", id: "s-1" }), { ...post, body: '{"id":"s-1","tag":"t"}' });
  });

  test("getSession / listSessionParticipants: no body", async () => {
    await one(() => api.getSession(acct, sid), { method: "GET", path: `/v1/accounts/${acct}/sessions/${sid}`, accept: JSON_ACCEPT, status: 200 });
    await one(() => api.listSessionParticipants(acct, sid), { method: "GET", path: `/v1/accounts/${acct}/sessions/${sid}/participants`, accept: JSON_ACCEPT, status: 200 });
  });

  test("addParticipantToSession: no body, {}, {sessionId}, {participants}, both, unknown keys dropped", async () => {
    const put = { method: "PUT", path: `/v1/accounts/${acct}/sessions/${sid}/participants/${pid}`, accept: ANY_ACCEPT };
    await one(() => api.addParticipantToSession(acct, sid, pid), { ...put, body: undefined, status: 204 });
    await one(() => api.addParticipantToSession(acct, sid, pid, {}), { ...put, body: "{}", status: 204 });
    await one(() => api.addParticipantToSession(acct, sid, pid, { sessionId: sid }), { ...put, body: `{"sessionId":"${sid}"}`, status: 204 });
    const other = (await api.createParticipant(acct)).result.participant.id;
    await one(() => api.addParticipantToSession(acct, sid, pid, { participants: [{ participantId: other }] }), {
      ...put, body: `{"participants":[{"participantId":"${other}"}]}`, status: 204,
    });
    await one(() => api.addParticipantToSession(acct, sid, pid, { participants: [{ streamAliases: ["a", "b"], participantId: other, x: 1 }], sessionId: sid, y: 2 }), {
      ...put, body: `{"sessionId":"${sid}","participants":[{"participantId":"${other}","streamAliases":["a","b"]}]}`, status: 204,
    });
  });

  test("getParticipantSubscriptions / updateParticipantSubscriptions: the same body forms", async () => {
    const path = `/v1/accounts/${acct}/sessions/${sid}/participants/${pid}/subscriptions`;
    await one(() => api.getParticipantSubscriptions(acct, sid, pid), { method: "GET", path, accept: JSON_ACCEPT, status: 200 });
    const put = { method: "PUT", path, accept: ANY_ACCEPT };
    await one(() => api.updateParticipantSubscriptions(acct, sid, pid), { ...put, body: undefined, status: 204 });
    await one(() => api.updateParticipantSubscriptions(acct, sid, pid, {}), { ...put, body: "{}", status: 204 });
    await one(() => api.updateParticipantSubscriptions(acct, sid, pid, { sessionId: sid }), { ...put, body: `{"sessionId":"${sid}"}`, status: 204 });
    await one(() => api.updateParticipantSubscriptions(acct, sid, pid, { participants: [] }), { ...put, body: '{"participants":[]}', status: 204 });
  });

  test("removeParticipantFromSession / deleteSession: no body", async () => {
    await one(() => api.removeParticipantFromSession(acct, sid, pid), { method: "DELETE", path: `/v1/accounts/${acct}/sessions/${sid}/participants/${pid}`, accept: ANY_ACCEPT, status: 204 });
    await one(() => api.deleteSession(acct, sid), { method: "DELETE", path: `/v1/accounts/${acct}/sessions/${sid}`, accept: ANY_ACCEPT, status: 204 });
  });

  test("a baseUrl with a trailing slash gives the same paths (the SDK collapses //)", async () => {
    const slashed = makeController(`${rec.url}/v1/`, pb.main.username, pb.main.password);
    await one(() => slashed.createSession(acct), { method: "POST", path: `/v1/accounts/${acct}/sessions`, accept: JSON_ACCEPT, body: undefined, status: 200 });
    const root = makeController(`${rec.url}/`, pb.main.username, pb.main.password);
    await one(() => root.createSession(acct), { method: "POST", path: `/accounts/${acct}/sessions`, accept: JSON_ACCEPT, body: undefined, status: 200 });
  });
});

describe("what the SDK refuses to send (ArgumentsValidationError, no request)", () => {
  const cases = [
    ["deviceApiVersion 'v3' in lower case (the SDK README's own example)", () => api.createParticipant(acct, { deviceApiVersion: "v3" })],
    ["an unknown publish permission", () => api.createParticipant(acct, { publishPermissions: ["SCREEN"] })],
    ["a numeric tag", () => api.createSession(acct, { tag: 5 })],
    ["a subscription without participantId", () => api.updateParticipantSubscriptions(acct, "s", "p", { participants: [{ streamAliases: ["a"] }] })],
    ["a null sessionId", () => api.addParticipantToSession(acct, "s", "p", { sessionId: null })],
    ["a non-string account id", () => api.getSession(42, "s")],
  ];
  for (const [what, call] of cases) {
    test(what, async () => {
      rec.take();
      await assert.rejects(call(), (e) => e instanceof ArgumentsValidationError, what);
      assert.deepEqual(rec.take(), [], "nothing may reach the server");
    });
  }
});

// A stand-in server answering fixed bodies: shows that the SDK's response validation is on in
// this harness, so the same mismatch from patchbay would fail rest.test.mjs.
describe("the harness: the SDK's response validation is live", () => {
  let fake;
  let fakeApi;
  let answer = { status: 200, body: "{}" };
  before(async () => {
    fake = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(answer.status, answer.body === "" ? {} : { "content-type": "application/json" });
        res.end(answer.body);
      });
    });
    await new Promise((r) => fake.listen(0, "127.0.0.1", r));
    fakeApi = makeController(`http://127.0.0.1:${fake.address().port}/v1`, "u", "p");
  });
  after(() => new Promise((r) => {
    fake.closeAllConnections?.();
    fake.close(() => r());
  }));

  const mismatches = [
    ["a null tag", "getSession", ["a", "s"], '{"id":"s","tag":null}'],
    ["a numeric id", "getSession", ["a", "s"], '{"id":5}'],
    ["a lower-case deviceApiVersion", "getParticipant", ["a", "p"], '{"id":"p","deviceApiVersion":"v3"}'],
    ["an unknown publish permission", "getParticipant", ["a", "p"], '{"id":"p","publishPermissions":["SCREEN"]}'],
    ["sessions as a string", "getParticipant", ["a", "p"], '{"id":"p","sessions":"s"}'],
    ["a subscription without participantId", "getParticipantSubscriptions", ["a", "s", "p"], '{"participants":[{}]}'],
    ["an object where the list is an array", "listSessionParticipants", ["a", "s"], "{}"],
    ["a token that is not a string", "createParticipant", ["a"], '{"participant":{"id":"p"},"token":1}'],
  ];
  for (const [what, method, args, body] of mismatches) {
    test(`${method}: ${what} is a ResponseValidationError`, async () => {
      answer = { status: 200, body };
      await assert.rejects(fakeApi[method](...args), (e) => e instanceof ResponseValidationError && e.statusCode === 200, what);
    });
  }
  test("an empty 204 where a JSON result is expected is an Error", async () => {
    answer = { status: 204, body: "" };
    await assert.rejects(fakeApi.listSessionParticipants("a", "s"), /The response body is empty/);
    await assert.rejects(fakeApi.getParticipantSubscriptions("a", "s", "p"), /The response body is empty/);
  });
  test("extra properties are accepted and dropped", async () => {
    answer = { status: 200, body: '{"id":"s","tag":"t","createdAt":"x"}' };
    const res = await fakeApi.getSession("a", "s");
    assert.deepEqual(res.result, { id: "s", tag: "t" });
  });
});
