// patchbay driven by Bandwidth's unmodified Node server SDK (@bandwidth/webrtc), every REST
// method, the SDK's response validation on. Contract: /work/shared/reference/bandwidth-webrtc.md
// sections 1, 2 and 10. Every test runs twice: with baseUrl http://127.0.0.1:PORT/v1 and with
// http://127.0.0.1:PORT (Environment.Custom appends /accounts/... to either).
//
// A success means: the status the contract gives, and a body that passed the SDK's own schema
// (callAsJson) — a ResponseValidationError or a JSON parse error fails the test as it would fail
// a customer's call. `res.body` is the raw text off the wire, checked where the SDK's mapping
// would hide the wire value (absent vs empty, token never present on reads).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startPatchbay } from "./patchbay.mjs";
import {
  ApiError,
  DeviceApiVersionEnum,
  PublishPermissionEnum,
  assertNoContent,
  assertRequestError,
  b64urlJson,
  expectStatus,
  isUuid,
  makeController,
  raw,
  sorted,
} from "./sdk.mjs";

const MAX_TOKEN_LEN = 186;
const SESSION_CAP = 20;
// The longest account id (12 chars) gives the longest token.
const LIVE_ACCOUNT_ID = "pb_sdk-live1";

let pb;
let live;
before(async () => {
  pb = await startPatchbay();
  live = await pb.createAccount(LIVE_ACCOUNT_ID);
});
after(async () => {
  const died = pb && !pb.running();
  const tail = pb?.stderrTail();
  await pb?.stop();
  if (died) throw new Error(`patchbay exited during the tests; stderr tail:\n${tail}`);
});

for (const [label, suffix] of [["base /v1", "/v1"], ["base root", ""]]) {
  describe(label, () => {
    const base = () => pb.url + suffix;
    const mainApi = () => makeController(base(), pb.main.username, pb.main.password);
    const acct = () => pb.main.accountId;

    async function newParticipant(api, account, body = { publishPermissions: ["AUDIO", "VIDEO"], deviceApiVersion: "V3" }) {
      const res = await api.createParticipant(account, body);
      assert.equal(res.statusCode, 200, res.body);
      return res.result.participant.id;
    }
    async function newSession(api, account, tag) {
      const res = await api.createSession(account, tag === undefined ? undefined : { tag });
      assert.equal(res.statusCode, 200, res.body);
      return res.result.id;
    }
    async function memberIds(api, account, sid) {
      const res = await api.listSessionParticipants(account, sid);
      assert.equal(res.statusCode, 200, `list must be 200 with a JSON array, got ${res.statusCode} ${res.body}`);
      assert.ok(Array.isArray(res.result), res.body);
      return sorted(res.result.map((p) => p.id));
    }
    async function subsOf(api, account, sid, pid) {
      const res = await api.getParticipantSubscriptions(account, sid, pid);
      assert.equal(res.statusCode, 200, `get subscriptions must be 200 with JSON, got ${res.statusCode} ${res.body}`);
      return res;
    }
    const subIds = (subs) => (subs.participants || []).map((p) => p.participantId);
    async function assertNoSubscriptions(api, account, sid, pid) {
      const res = await subsOf(api, account, sid, pid);
      assert.deepEqual(raw(res), {}, `no subscriptions must read back as {}: ${res.body}`);
      assert.deepEqual(res.result, {});
    }

    // ------------------------------------------------------------------ participants

    test("createParticipant: 200, the SDK-mapped participant, and a v3 device token", async () => {
      const api = mainApi();
      const before = Math.floor(Date.now() / 1000);
      const res = await api.createParticipant(acct(), {
        publishPermissions: [PublishPermissionEnum.AUDIO, PublishPermissionEnum.VIDEO],
        tag: "alice-sdk",
        deviceApiVersion: DeviceApiVersionEnum.V3,
      });
      assert.equal(res.statusCode, 200, res.body);
      const p = res.result.participant;
      assert.ok(isUuid(p.id), `participant id must be a UUID: ${p.id}`);
      assert.deepEqual(p.sessions, []);
      assert.deepEqual(sorted(p.publishPermissions), ["AUDIO", "VIDEO"]);
      assert.equal(p.tag, "alice-sdk");
      assert.equal(p.deviceApiVersion, "V3");
      assert.deepEqual(p.subscriptions, {});
      assert.equal(p.callbackUrl, undefined);

      const wire = raw(res);
      assert.deepEqual(sorted(Object.keys(wire)), ["participant", "token"]);
      assert.deepEqual(wire.participant.subscriptions, {}, `subscriptions on create must be {}: ${res.body}`);
      assert.ok(!("callbackUrl" in wire.participant), `no callbackUrl given: omitted, not null: ${res.body}`);
      for (const [k, v] of Object.entries(wire.participant)) assert.notEqual(v, null, `${k} is null: ${res.body}`);

      const token = res.result.token;
      assert.equal(token, wire.token);
      assert.ok(token.length <= MAX_TOKEN_LEN, `token is ${token.length} chars: ${token}`);
      assert.match(token, /^[A-Za-z0-9_.-]+$/, "token must be URL-safe");
      const parts = token.split(".");
      assert.equal(parts.length, 3);
      const header = b64urlJson(parts[0]);
      const payload = b64urlJson(parts[1]);
      assert.equal(header.alg, "HS256");
      assert.equal(payload.v, "v3");
      assert.equal(payload.p, p.id);
      assert.equal(payload.a, acct());
      assert.equal(typeof payload.exp, "number");
      assert.ok(payload.exp > before, `token already expired: exp=${payload.exp} now=${before}`);
    });

    test("createParticipant: every call gives a fresh id", async () => {
      const api = mainApi();
      const a = await newParticipant(api, acct(), { tag: "same" });
      const b = await newParticipant(api, acct(), { tag: "same" });
      assert.notEqual(a, b);
    });

    test("createParticipant without a body: defaults (AUDIO+VIDEO, V3, no tag)", async () => {
      const res = await mainApi().createParticipant(acct());
      assert.equal(res.statusCode, 200, res.body);
      const p = res.result.participant;
      assert.ok(isUuid(p.id));
      assert.deepEqual(p.sessions, []);
      assert.deepEqual(sorted(p.publishPermissions), ["AUDIO", "VIDEO"]);
      assert.equal(p.deviceApiVersion, "V3");
      assert.ok(!("tag" in raw(res).participant), res.body);
      assert.equal(b64urlJson(res.result.token.split(".")[1]).v, "v3");
    });

    test("createParticipant with {} and with only a tag: the Node SDK sends no deviceApiVersion, V3 is the default", async () => {
      const api = mainApi();
      const empty = await api.createParticipant(acct(), {});
      assert.equal(empty.result.participant.deviceApiVersion, "V3");
      assert.deepEqual(sorted(empty.result.participant.publishPermissions), ["AUDIO", "VIDEO"]);
      const tagged = await api.createParticipant(acct(), { tag: "defaults" });
      assert.equal(tagged.result.participant.tag, "defaults");
      assert.equal(tagged.result.participant.deviceApiVersion, "V3");
    });

    for (const version of ["V2", "V3"]) {
      test(`deviceApiVersion ${version} is echoed on create and get; the token is v3 anyway`, async () => {
        const api = mainApi();
        const res = await api.createParticipant(acct(), { publishPermissions: ["AUDIO"], deviceApiVersion: version });
        assert.equal(res.result.participant.deviceApiVersion, version, res.body);
        assert.equal(b64urlJson(res.result.token.split(".")[1]).v, "v3", "tokens are always v3");
        const got = await api.getParticipant(acct(), res.result.participant.id);
        assert.equal(got.result.deviceApiVersion, version, got.body);
      });
    }

    test("createParticipant: publishPermissions [AUDIO] and [] round-trip", async () => {
      const api = mainApi();
      const audio = await api.createParticipant(acct(), { publishPermissions: ["AUDIO"] });
      assert.deepEqual(audio.result.participant.publishPermissions, ["AUDIO"]);
      const none = await api.createParticipant(acct(), { publishPermissions: [] });
      assert.deepEqual(none.result.participant.publishPermissions, [], none.body);
      const got = await api.getParticipant(acct(), none.result.participant.id);
      assert.deepEqual(got.result.publishPermissions, [], got.body);
    });

    test("createParticipant: callbackUrl round-trips; callbackUrl null is no callback", async () => {
      const api = mainApi();
      const url = "https://example.com/patchbay/callback?x=1";
      const res = await api.createParticipant(acct(), { callbackUrl: url, tag: "hooked" });
      assert.equal(res.result.participant.callbackUrl, url, res.body);
      const got = await api.getParticipant(acct(), res.result.participant.id);
      assert.equal(got.result.callbackUrl, url, got.body);

      const nul = await api.createParticipant(acct(), { callbackUrl: null, tag: "no-hook" });
      assert.equal(nul.statusCode, 200, nul.body);
      assert.ok(nul.result.participant.callbackUrl == null, nul.body);
    });

    // The SDK types createParticipant's body as the full Participant model, so a caller can send
    // its read-only fields (the SDK forwards id, sessions, subscriptions as given).
    test("createParticipant: the model's read-only fields, empty (a copied template), are accepted", async () => {
      const api = mainApi();
      const res = await api.createParticipant(acct(), {
        sessions: [],
        subscriptions: {},
        tag: "template",
        publishPermissions: ["AUDIO"],
        deviceApiVersion: "V3",
      });
      assert.equal(res.statusCode, 200, res.body);
      const p = res.result.participant;
      assert.ok(isUuid(p.id));
      assert.deepEqual(p.sessions, []);
      assert.deepEqual(p.subscriptions, {});
      assert.equal(p.tag, "template");
    });

    test("createParticipant: read-only fields with values are refused with a 400 naming the field", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const other = await newParticipant(api, acct());
      const forgedId = "00000000-0000-4000-8000-000000000001";
      const cases = [
        ["id", { id: forgedId }],
        ["sessions", { sessions: [sid] }],
        ["subscriptions", { subscriptions: { sessionId: sid, participants: [{ participantId: other }] } }],
      ];
      for (const [field, extra] of cases) {
        const body = { tag: `ro-${field}`, publishPermissions: ["AUDIO"], ...extra };
        const err = await expectStatus(400, api, "createParticipant", acct(), body);
        assertRequestError(err);
        assert.ok(err.json.error.startsWith(`${field}: is read-only`), `the error must name ${field}: ${err.body}`);
      }
      assert.deepEqual(await memberIds(api, acct(), sid), []);
      await expectStatus(404, api, "getParticipant", acct(), forgedId);
    });

    test("getParticipant: the created participant read back, without a token", async () => {
      const api = mainApi();
      const created = await api.createParticipant(acct(), { publishPermissions: ["AUDIO"], tag: "bob", deviceApiVersion: "V3" });
      const pid = created.result.participant.id;
      const res = await api.getParticipant(acct(), pid);
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(res.result, {
        id: pid,
        publishPermissions: ["AUDIO"],
        sessions: [],
        subscriptions: {},
        tag: "bob",
        deviceApiVersion: "V3",
      });
      const wire = raw(res);
      assert.ok(!("token" in wire), `GET participant must not include a token: ${res.body}`);
      for (const [k, v] of Object.entries(wire)) assert.notEqual(v, null, `${k} is null: ${res.body}`);
      assert.deepEqual(res.result, created.result.participant, "get equals what create returned");
    });

    test("deleteParticipant: 204, then get and delete are 404 (Not Found)", async () => {
      const api = mainApi();
      const pid = await newParticipant(api, acct(), { tag: "doomed" });
      assertNoContent(await api.deleteParticipant(acct(), pid), "delete participant");
      const e = await expectStatus(404, api, "getParticipant", acct(), pid);
      assertRequestError(e);
      await expectStatus(404, api, "deleteParticipant", acct(), pid);
    });

    test("a deleted member leaves its session", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct(), "del-member");
      const a = await newParticipant(api, acct());
      const b = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid, a));
      assertNoContent(await api.addParticipantToSession(acct(), sid, b, { sessionId: sid }));
      assert.deepEqual(await memberIds(api, acct(), sid), sorted([a, b]));
      assertNoContent(await api.deleteParticipant(acct(), a));
      assert.deepEqual(await memberIds(api, acct(), sid), [b]);
    });

    // ------------------------------------------------------------------ sessions

    test("createSession / getSession / deleteSession, then 404s", async () => {
      const api = mainApi();
      const res = await api.createSession(acct(), { tag: "standup" });
      assert.equal(res.statusCode, 200, res.body);
      assert.equal(typeof res.result.id, "string");
      assert.ok(res.result.id.length > 0);
      assert.deepEqual(res.result, { id: res.result.id, tag: "standup" });

      const got = await api.getSession(acct(), res.result.id);
      assert.equal(got.statusCode, 200, got.body);
      assert.deepEqual(got.result, { id: res.result.id, tag: "standup" });

      assertNoContent(await api.deleteSession(acct(), res.result.id), "delete session");
      assertRequestError(await expectStatus(404, api, "getSession", acct(), res.result.id));
      await expectStatus(404, api, "deleteSession", acct(), res.result.id);
      await expectStatus(404, api, "listSessionParticipants", acct(), res.result.id);
    });

    test("createSession without a body and with {}: no tag, fresh ids", async () => {
      const api = mainApi();
      const a = await api.createSession(acct());
      assert.equal(a.statusCode, 200, a.body);
      assert.deepEqual(raw(a), { id: a.result.id }, "no tag: omitted, not null");
      const b = await api.createSession(acct(), {});
      assert.deepEqual(raw(b), { id: b.result.id });
      assert.notEqual(a.result.id, b.result.id);
      assert.deepEqual((await api.getSession(acct(), a.result.id)).result, { id: a.result.id });
    });

    test("createSession: an id in the body is refused with a 400 naming it", async () => {
      const api = mainApi();
      const forged = "00000000-0000-4000-8000-0000000000aa";
      const err = await expectStatus(400, api, "createSession", acct(), { id: forged, tag: "forged" });
      assertRequestError(err);
      assert.ok(err.json.error.startsWith("id: is read-only"), err.body);
      await expectStatus(404, api, "getSession", acct(), forged);
    });

    test("deleteSession releases its members", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct(), "ending");
      const pid = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid, pid));
      assertNoContent(await api.deleteSession(acct(), sid));
      assert.deepEqual((await api.getParticipant(acct(), pid)).result.sessions, []);
      const sid2 = await newSession(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid2, pid), "join another session after delete");
      assert.deepEqual(await memberIds(api, acct(), sid2), [pid]);
    });

    // ------------------------------------------------------------------ membership

    test("listSessionParticipants / addParticipantToSession / removeParticipantFromSession", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct(), "room");
      const empty = await api.listSessionParticipants(acct(), sid);
      assert.equal(empty.statusCode, 200, empty.body);
      assert.equal(empty.body.trim(), "[]");
      assert.deepEqual(empty.result, []);

      const a = await newParticipant(api, acct(), { tag: "a", publishPermissions: ["AUDIO"] });
      const b = await newParticipant(api, acct(), { tag: "b" });

      // No body: member only, no subscriptions.
      assertNoContent(await api.addParticipantToSession(acct(), sid, a), "add without body");
      await assertNoSubscriptions(api, acct(), sid, a);

      // Session-wide form.
      assertNoContent(await api.addParticipantToSession(acct(), sid, b, { sessionId: sid }), "add session-wide");
      const subsB = await subsOf(api, acct(), sid, b);
      assert.deepEqual(subsB.result, { sessionId: sid }, subsB.body);

      const listed = await api.listSessionParticipants(acct(), sid);
      assert.equal(listed.statusCode, 200);
      const byId = Object.fromEntries(listed.result.map((p) => [p.id, p]));
      assert.deepEqual(sorted(Object.keys(byId)), sorted([a, b]));
      assert.equal(byId[a].tag, "a");
      assert.deepEqual(byId[a].publishPermissions, ["AUDIO"]);
      assert.equal(byId[b].tag, "b");
      assert.deepEqual(byId[a].sessions, [sid]);
      assert.deepEqual(byId[b].sessions, [sid]);
      assert.deepEqual(byId[a].subscriptions, {});
      assert.deepEqual(byId[b].subscriptions, { sessionId: sid }, "Participant.subscriptions reflects what was set");
      assert.ok(raw(listed).every((p) => !("token" in p)), listed.body);

      assert.deepEqual((await api.getParticipant(acct(), a)).result.sessions, [sid]);

      assertNoContent(await api.removeParticipantFromSession(acct(), sid, b), "remove");
      assert.deepEqual(await memberIds(api, acct(), sid), [a]);
      await expectStatus(404, api, "getParticipantSubscriptions", acct(), sid, b);
      assert.deepEqual((await api.getParticipant(acct(), b)).result.sessions, []);
      await expectStatus(404, api, "removeParticipantFromSession", acct(), sid, b);

      // Still a valid participant: it can join another session.
      const sid2 = await newSession(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid2, b));
      assert.deepEqual((await api.getParticipant(acct(), b)).result.sessions, [sid2]);
    });

    test("addParticipantToSession with a participant list and streamAliases (the Node model has them)", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const [a, b, c] = [await newParticipant(api, acct()), await newParticipant(api, acct()), await newParticipant(api, acct())];
      assertNoContent(await api.addParticipantToSession(acct(), sid, b));
      assertNoContent(await api.addParticipantToSession(acct(), sid, c));

      assertNoContent(await api.addParticipantToSession(acct(), sid, a, {
        participants: [{ participantId: b, streamAliases: ["camera", "mic"] }, { participantId: c }],
      }));
      let got = await subsOf(api, acct(), sid, a);
      const byPid = Object.fromEntries(got.result.participants.map((p) => [p.participantId, p]));
      assert.deepEqual(sorted(Object.keys(byPid)), sorted([b, c]), got.body);
      assert.deepEqual(sorted(byPid[b].streamAliases), ["camera", "mic"], got.body);
      assert.ok(!byPid[c].streamAliases || byPid[c].streamAliases.length === 0, got.body);
      assert.ok(got.result.sessionId === undefined || got.result.sessionId === sid, got.body);

      // updateParticipantSubscriptions with sessionId + participants + aliases.
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, a, {
        sessionId: sid,
        participants: [{ participantId: c, streamAliases: ["screen"] }],
      }));
      got = await subsOf(api, acct(), sid, a);
      assert.equal(got.result.participants.length, 1, got.body);
      assert.equal(got.result.participants[0].participantId, c);
      assert.deepEqual(got.result.participants[0].streamAliases, ["screen"]);
      assert.ok(got.result.sessionId === undefined || got.result.sessionId === sid, got.body);

      // The participant's own view carries the same subscriptions.
      const pa = await api.getParticipant(acct(), a);
      assert.deepEqual(pa.result.subscriptions, got.result, pa.body);
    });

    test("re-adding a member to its own session is 204 and replaces its subscriptions", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const a = await newParticipant(api, acct());
      const b = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid, b));
      assertNoContent(await api.addParticipantToSession(acct(), sid, a, { participants: [{ participantId: b }] }));
      assert.deepEqual(subIds((await subsOf(api, acct(), sid, a)).result), [b]);

      assertNoContent(await api.addParticipantToSession(acct(), sid, a, { sessionId: sid }));
      assert.deepEqual((await subsOf(api, acct(), sid, a)).result, { sessionId: sid });
      assert.deepEqual(await memberIds(api, acct(), sid), sorted([a, b]));
    });

    // ------------------------------------------------------------------ subscriptions

    test("updateParticipantSubscriptions: full replace, session-wide, cleared by no body and by {}", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const [s, b, c] = [await newParticipant(api, acct()), await newParticipant(api, acct()), await newParticipant(api, acct())];
      for (const pid of [s, b, c]) assertNoContent(await api.addParticipantToSession(acct(), sid, pid));
      await assertNoSubscriptions(api, acct(), sid, s);

      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { participants: [{ participantId: b }] }), "update");
      assert.deepEqual((await subsOf(api, acct(), sid, s)).result, { participants: [{ participantId: b }] });

      // A second PUT replaces; it does not merge.
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { participants: [{ participantId: c }] }));
      assert.deepEqual(subIds((await subsOf(api, acct(), sid, s)).result), [c]);

      // Session-wide replaces the explicit list.
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { sessionId: sid }));
      assert.deepEqual((await subsOf(api, acct(), sid, s)).result, { sessionId: sid });

      // No body at all: everything removed.
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s), "update without body");
      await assertNoSubscriptions(api, acct(), sid, s);

      // {} clears too.
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { participants: [{ participantId: b }] }));
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, {}));
      await assertNoSubscriptions(api, acct(), sid, s);

      // An empty participants list with sessionId means session-wide (reference 1.6).
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { sessionId: sid, participants: [] }));
      const wide = await subsOf(api, acct(), sid, s);
      assert.equal(wide.result.sessionId, sid, wide.body);
      assert.equal(subIds(wide.result).length, 0, wide.body);

      // Others' subscriptions untouched throughout.
      await assertNoSubscriptions(api, acct(), sid, b);
      await assertNoSubscriptions(api, acct(), sid, c);
    });

    test("a subscription to a participant not yet in the session is stored", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const s = await newParticipant(api, acct());
      const later = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid, s));
      assertNoContent(await api.updateParticipantSubscriptions(acct(), sid, s, { participants: [{ participantId: later }] }));
      assert.deepEqual(subIds((await subsOf(api, acct(), sid, s)).result), [later]);
    });

    test("subscription body errors: 400 (Bad Request on update; the SDK's ApiError on add)", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const otherSid = await newSession(api, acct());
      const s = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), sid, s));

      // sessionId in the body differs from the path.
      assertRequestError(await expectStatus(400, api, "updateParticipantSubscriptions", acct(), sid, s, { sessionId: otherSid }));
      // An unknown participant id in the list.
      assertRequestError(await expectStatus(400, api, "updateParticipantSubscriptions", acct(), sid, s,
        { participants: [{ participantId: "0b5e2a9c-1111-4222-8333-444455556666" }] }));
      // The same rules on add; 400 is not declared there, so the SDK's own ApiError.
      const t = await newParticipant(api, acct());
      const e = await expectStatus(400, api, "addParticipantToSession", acct(), sid, t, { sessionId: otherSid });
      assertRequestError(e);
      assert.ok(e instanceof ApiError);
      // Nothing changed.
      await assertNoSubscriptions(api, acct(), sid, s);
      assert.deepEqual(await memberIds(api, acct(), sid), [s], "a rejected add must not make the participant a member");
    });

    test("subscriptions of a non-member are 404", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const outsider = await newParticipant(api, acct());
      await expectStatus(404, api, "getParticipantSubscriptions", acct(), sid, outsider);
      await expectStatus(404, api, "updateParticipantSubscriptions", acct(), sid, outsider, { sessionId: sid });
    });

    // ------------------------------------------------------------------ errors & limits

    // 11 failures for the main username per base URL, 22 in all: under patchbay's default
    // budget of 30 failed authentications per username per minute (then 429).
    test("wrong credentials are 401 (Unauthorized) on every method", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct());
      const pid = await newParticipant(api, acct());
      const bad = makeController(base(), pb.main.username, pb.main.password + "x");
      const e = await expectStatus(401, bad, "createParticipant", acct(), { tag: "nope" });
      assert.equal(typeof e.json.message, "string", e.body);
      await expectStatus(401, bad, "getParticipant", acct(), pid);
      await expectStatus(401, bad, "deleteParticipant", acct(), pid);
      await expectStatus(401, bad, "createSession", acct(), { tag: "x" });
      await expectStatus(401, bad, "getSession", acct(), sid);
      await expectStatus(401, bad, "deleteSession", acct(), sid);
      await expectStatus(401, bad, "listSessionParticipants", acct(), sid);
      await expectStatus(401, bad, "addParticipantToSession", acct(), sid, pid);
      await expectStatus(401, bad, "removeParticipantFromSession", acct(), sid, pid);
      await expectStatus(401, bad, "getParticipantSubscriptions", acct(), sid, pid);
      await expectStatus(401, bad, "updateParticipantSubscriptions", acct(), sid, pid, { sessionId: sid });
      const unknownUser = makeController(base(), "no-such-user", "whatever");
      await expectStatus(401, unknownUser, "createSession", acct(), { tag: "x" });
      // Nothing happened.
      assert.ok((await api.getParticipant(acct(), pid)).result.id === pid);
      assert.deepEqual(await memberIds(api, acct(), sid), []);
    });

    test("the 21st participant of a session is 409 (the SDK's ApiError: undeclared)", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct(), "full");
      const pids = [];
      for (let i = 0; i <= SESSION_CAP; i++) pids.push(await newParticipant(api, acct()));
      for (const pid of pids.slice(0, SESSION_CAP)) assertNoContent(await api.addParticipantToSession(acct(), sid, pid));
      const e = await expectStatus(409, api, "addParticipantToSession", acct(), sid, pids[SESSION_CAP]);
      assertRequestError(e);
      assert.ok(e instanceof ApiError);
      assert.deepEqual(await memberIds(api, acct(), sid), sorted(pids.slice(0, SESSION_CAP)));
      assert.deepEqual((await api.getParticipant(acct(), pids[SESSION_CAP])).result.sessions, []);
      // Re-adding an existing member of a full session is fine.
      assertNoContent(await api.addParticipantToSession(acct(), sid, pids[0]));
    });

    test("50 concurrent adds to one session: exactly 20 succeed, 30 are 409", async () => {
      const api = mainApi();
      const sid = await newSession(api, acct(), "race");
      const pids = [];
      for (let i = 0; i < 50; i++) pids.push(await newParticipant(api, acct()));
      const codes = await Promise.all(pids.map(async (pid) => {
        const c = makeController(base(), pb.main.username, pb.main.password);
        try {
          return (await c.addParticipantToSession(acct(), sid, pid)).statusCode;
        } catch (e) {
          assert.ok(e instanceof ApiError, `${e.constructor.name}: ${e.message}`);
          return e.statusCode;
        }
      }));
      assert.equal(codes.filter((c) => c === 204).length, SESSION_CAP, codes.join(","));
      assert.equal(codes.filter((c) => c === 409).length, 50 - SESSION_CAP, codes.join(","));
      assert.equal((await memberIds(api, acct(), sid)).length, SESSION_CAP);
    });

    test("a member of another session is 409", async () => {
      const api = mainApi();
      const s1 = await newSession(api, acct());
      const s2 = await newSession(api, acct());
      const pid = await newParticipant(api, acct());
      assertNoContent(await api.addParticipantToSession(acct(), s1, pid));
      assertRequestError(await expectStatus(409, api, "addParticipantToSession", acct(), s2, pid));
      assert.deepEqual(await memberIds(api, acct(), s2), []);
      assert.deepEqual((await api.getParticipant(acct(), pid)).result.sessions, [s1]);
    });

    test("unknown ids are 404 (Not Found) on every method that takes one", async () => {
      const api = mainApi();
      const ghost = "6f1a2b3c-0000-4000-8000-00000000dead";
      const sid = await newSession(api, acct());
      const pid = await newParticipant(api, acct());
      await expectStatus(404, api, "getParticipant", acct(), ghost);
      await expectStatus(404, api, "deleteParticipant", acct(), ghost);
      await expectStatus(404, api, "addParticipantToSession", acct(), sid, ghost);
      await expectStatus(404, api, "removeParticipantFromSession", acct(), sid, ghost);
      await expectStatus(404, api, "getParticipantSubscriptions", acct(), sid, ghost);
      await expectStatus(404, api, "updateParticipantSubscriptions", acct(), sid, ghost);
      await expectStatus(404, api, "getSession", acct(), ghost);
      await expectStatus(404, api, "deleteSession", acct(), ghost);
      await expectStatus(404, api, "listSessionParticipants", acct(), ghost);
      await expectStatus(404, api, "addParticipantToSession", acct(), ghost, pid);
      await expectStatus(404, api, "getParticipantSubscriptions", acct(), ghost, pid);
      await expectStatus(404, api, "removeParticipantFromSession", acct(), sid, pid); // not a member
      // A malformed id: 400 or 404 are both fine (400 is undeclared on getParticipant).
      let err;
      try {
        await api.getParticipant(acct(), "not-a-uuid");
      } catch (e) {
        err = e;
      }
      assert.ok(err && [400, 404].includes(err.statusCode), `malformed id: ${err?.statusCode} ${err?.body}`);
      assert.equal(typeof err.body, "string");
    });

    // ------------------------------------------------------------------ accounts

    test("an account created while serving works", async () => {
      const api = makeController(base(), live.username, live.password);
      const pid = await newParticipant(api, live.accountId, { tag: "live" });
      const sid = await newSession(api, live.accountId, "live");
      assertNoContent(await api.addParticipantToSession(live.accountId, sid, pid));
      assert.deepEqual(await memberIds(api, live.accountId, sid), [pid]);
      const created = await api.createParticipant(live.accountId, { tag: "t" });
      assert.equal(b64urlJson(created.result.token.split(".")[1]).a, live.accountId);
      assert.ok(created.result.token.length <= MAX_TOKEN_LEN, `${created.result.token.length} chars with a 12-char account id`);
    });

    test("accounts are isolated: 401 on another's path, 404 for another's ids", async () => {
      const api = mainApi();
      const apiLive = makeController(base(), live.username, live.password);
      const pid = await newParticipant(api, acct());
      const sid = await newSession(api, acct());
      await expectStatus(401, apiLive, "getParticipant", acct(), pid);
      await expectStatus(401, apiLive, "createSession", acct(), { tag: "x" });
      await expectStatus(404, apiLive, "getParticipant", live.accountId, pid);
      await expectStatus(404, apiLive, "getSession", live.accountId, sid);
      await expectStatus(404, apiLive, "deleteParticipant", live.accountId, pid);
      await expectStatus(404, apiLive, "deleteSession", live.accountId, sid);
      const livePid = await newParticipant(apiLive, live.accountId);
      await expectStatus(404, apiLive, "addParticipantToSession", live.accountId, sid, livePid);
      await expectStatus(404, api, "addParticipantToSession", acct(), sid, livePid);
      // Still there for their owner.
      assert.equal((await api.getParticipant(acct(), pid)).result.id, pid);
      assert.equal((await api.getSession(acct(), sid)).result.id, sid);
    });

    // ------------------------------------------------------------------ input validation

    test("tags: 50 characters round-trip, 51 are 400 (Bad Request) naming the field", async () => {
      const api = mainApi();
      const tag50 = "é".repeat(50); // 50 characters, 100 bytes: the limit counts characters
      const p = await api.createParticipant(acct(), { tag: tag50, deviceApiVersion: "V3" });
      assert.equal(p.result.participant.tag, tag50);
      assert.equal((await api.getParticipant(acct(), p.result.participant.id)).result.tag, tag50);
      const s = await api.createSession(acct(), { tag: tag50 });
      assert.equal((await api.getSession(acct(), s.result.id)).result.tag, tag50);

      let e = await expectStatus(400, api, "createParticipant", acct(), { tag: "a".repeat(51) });
      assertRequestError(e);
      assert.match(e.json.error, /tag/, e.body);
      e = await expectStatus(400, api, "createSession", acct(), { tag: "a".repeat(51) });
      assertRequestError(e);
      assert.match(e.json.error, /tag/, e.body);
    });

    test("a malformed callbackUrl is 400 (Bad Request) naming the field", async () => {
      const e = await expectStatus(400, mainApi(), "createParticipant", acct(), { callbackUrl: "not a url" });
      assertRequestError(e);
      assert.match(e.json.error, /callbackUrl/, e.body);
    });
  });
}
