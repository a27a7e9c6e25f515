// The SDK's two static helpers, ApiController.generateTransferBxml and
// generateTransferBxmlVerb, with real patchbay tokens, and what they are for: the `uui` of the
// BXML they produce is what Bandwidth Voice puts in the `User-To-User` header of the INVITE to
// the WebRTC SIP ingress (reference 4.2). Each form is dialled into patchbay's SIP listener
// over UDP (sip.mjs): answered with an SDP answer when the token is good, refused with the
// documented status otherwise.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { startPatchbay } from "./patchbay.mjs";
import { ApiController, assertNoContent, makeController } from "./sdk.mjs";
import { dial } from "./sip.mjs";

const CALL_ID = "c-93d6f3c0-be584596-0b74-4fa2-8015-d8ede84bd1a4";
const CALL_HEX = "93d6f3c0be5845960b744fa28015d8ede84bd1a4";
const UUI_MAX = 256; // Bandwidth Voice's limit on a SipUri uui, encodings included
const DEFAULT_SIP_URI = "sip:sipx.webrtc.bandwidth.com:5060";

let pb;
let api;
let acct;
before(async () => {
  pb = await startPatchbay();
  // The longest account id (12 characters) gives the longest token.
  const a = await pb.createAccount("pb_sdk-xfer1");
  acct = a.accountId;
  api = makeController(`${pb.url}/v1`, a.username, a.password);
});
after(async () => {
  const died = pb && !pb.running();
  const tail = pb?.stderrTail();
  await pb?.stop();
  if (died) throw new Error(`patchbay exited during the tests; stderr tail:\n${tail}`);
});

const unescapeXml = (s) => s.replace(/&quot;/g, '"').replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
function sipUriOf(bxml) {
  const m = bxml.match(/<SipUri uui="([^"]*)">([^<]*)<\/SipUri>/);
  assert.ok(m, `no <SipUri uui="...">...</SipUri> in ${bxml}`);
  return { uui: unescapeXml(m[1]), uri: unescapeXml(m[2]) };
}

/** A phone participant (AUDIO only) in a fresh session, subscribed to it. -> { pid, sid, token } */
async function phoneInSession() {
  const sid = (await api.createSession(acct, { tag: "dial-in" })).result.id;
  const created = await api.createParticipant(acct, { publishPermissions: ["AUDIO"], tag: "phone", deviceApiVersion: "V3" });
  const pid = created.result.participant.id;
  assertNoContent(await api.addParticipantToSession(acct, sid, pid, { sessionId: sid }));
  return { pid, sid, token: created.result.token };
}

describe("the BXML helpers with patchbay's tokens", () => {
  test("generateTransferBxml(token, callId): the exact document; the uui fits Voice's 256 characters", async () => {
    const { token } = await phoneInSession();
    const bxml = ApiController.generateTransferBxml(token, CALL_ID);
    assert.equal(bxml,
      '<?xml version="1.0" encoding="UTF-8" ?>\n<Response><Transfer>\n' +
      `\t<SipUri uui="${CALL_HEX};encoding=base64,${token};encoding=jwt">${DEFAULT_SIP_URI}</SipUri>\n` +
      "</Transfer></Response>");
    const { uui } = sipUriOf(bxml);
    assert.ok(uui.length <= UUI_MAX, `uui is ${uui.length} characters (token ${token.length}): ${uui}`);
  });

  test("generateTransferBxmlVerb(token) without a call id, and with a custom SIP URI", async () => {
    const { token } = await phoneInSession();
    assert.equal(ApiController.generateTransferBxmlVerb(token),
      `<Transfer>\n\t<SipUri uui="${token};encoding=jwt">${DEFAULT_SIP_URI}</SipUri>\n</Transfer>`);
    const custom = `sip:${pb.sip}`;
    assert.equal(ApiController.generateTransferBxmlVerb(token, "", custom),
      `<Transfer>\n\t<SipUri uui="${token};encoding=jwt">${custom}</SipUri>\n</Transfer>`);
    assert.equal(ApiController.generateTransferBxmlVerb(token, CALL_ID, custom),
      `<Transfer>\n\t<SipUri uui="${CALL_HEX};encoding=base64,${token};encoding=jwt">${custom}</SipUri>\n</Transfer>`);
  });
});

describe("dialling patchbay with the helpers' uui as User-To-User", () => {
  const forms = [
    ["generateTransferBxml (call id + JWT)", (token) => ApiController.generateTransferBxml(token, CALL_ID, `sip:${pb.sip}`)],
    ["generateTransferBxmlVerb (JWT only)", (token) => ApiController.generateTransferBxmlVerb(token, undefined, `sip:${pb.sip}`)],
  ];
  for (const [what, bxmlOf] of forms) {
    test(`${what}: answered (200 with a PCMU answer), the participant stays in its session, BYE 200`, async () => {
      const { pid, sid, token } = await phoneInSession();
      const { uui, uri } = sipUriOf(bxmlOf(token));
      assert.equal(uri, `sip:${pb.sip}`);
      const call = await dial({ server: pb.sip, requestUri: uri, uui });
      try {
        assert.equal(call.status, 200, `INVITE: ${call.status} ${call.final.reason} ${JSON.stringify(call.final.headers.reason || [])}`);
        assert.match(call.final.headers["content-type"]?.[0] || "", /^application\/sdp/i);
        assert.match(call.final.body, /^m=audio [1-9]\d* RTP\/AVP 0(\s|$)/m, `answer must pick PCMU: ${call.final.body}`);
        assert.match(call.final.body, /^c=IN IP4 \S+/m);
        const members = (await api.listSessionParticipants(acct, sid)).result.map((p) => p.id);
        assert.deepEqual(members, [pid]);
        assert.deepEqual((await api.getParticipant(acct, pid)).result.sessions, [sid]);
      } finally {
        const bye = await call.hangUp();
        assert.equal(bye?.status, 200, `BYE: ${bye?.status} ${bye?.reason}`);
      }
      // The call's end leaves the participant as it was.
      assert.deepEqual((await api.getParticipant(acct, pid)).result.sessions, [sid]);
    });
  }

  test("a deleted participant's token in the helper's uui: 404", async () => {
    const { pid, token } = await phoneInSession();
    assertNoContent(await api.deleteParticipant(acct, pid));
    const { uui, uri } = sipUriOf(ApiController.generateTransferBxml(token, CALL_ID, `sip:${pb.sip}`));
    const call = await dial({ server: pb.sip, requestUri: uri, uui });
    assert.equal(call.status, 404, `${call.status} ${call.final.reason}`);
  });

  test("a token with a forged signature in the helper's uui: 403", async () => {
    const { token } = await phoneInSession();
    const [h, p, sig] = token.split(".");
    const forged = `${h}.${p}.${sig.slice(0, -4)}${sig.endsWith("AAAA") ? "BBBB" : "AAAA"}`;
    const { uui, uri } = sipUriOf(ApiController.generateTransferBxml(forged, CALL_ID, `sip:${pb.sip}`));
    const call = await dial({ server: pb.sip, requestUri: uri, uui });
    assert.equal(call.status, 403, `${call.status} ${call.final.reason}`);
  });
});
