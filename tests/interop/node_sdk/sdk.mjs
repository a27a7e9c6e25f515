// Bandwidth's unmodified Node server SDK (@bandwidth/webrtc, pinned in package.json), built the
// way a customer builds it, plus the assertions the tests share.
//
// SDK facts these helpers rely on (read from node_modules/@bandwidth/webrtc/dist, v1.3.1):
// - new Client({ environment: Environment.Custom, baseUrl, basicAuthUserName, basicAuthPassword });
//   Environment.Custom makes the base URL exactly `baseUrl`; every path (/accounts/...) is
//   appended to it. new ApiController(client) holds the eleven REST methods.
// - Methods resolve to an ApiResponse { statusCode, headers, body (raw text), result (the value
//   mapped by the SDK's schema), request }. Every response with a JSON result goes through
//   callAsJson(schema): JSON-parsed, then validated with @apimatic/schema; a mismatch throws
//   ResponseValidationError, an empty or non-JSON body throws a plain Error. Nothing here turns
//   that validation off (no requestOptions, no unstable_httpClientOptions).
// - Statuses a method declares (throwOn) reject with what @apimatic/core's ApiError builds,
//   message 'Bad Request' / 'Unauthorized' / 'Access Denied' / 'Not Found'. That class is
//   compiled to ES5 (`_super.call(this, message) || this` on Error), so the object thrown is a
//   plain Error (prototype Error.prototype) carrying statusCode, headers, body, result, request:
//   neither `instanceof` the SDK's ApiError nor core's is true for a 404 (an SDK quirk; callers
//   must look at err.statusCode). Any other status outside 200..299 rejects with the SDK's own
//   exported ApiError (a real subclass), message 'Response status code was not ok: N.' (e.g.
//   the 409 and 400 of addParticipantToSession).
// - Arguments are validated (and unknown body keys dropped) before anything is sent: a bad
//   argument rejects with ArgumentsValidationError and no request.

import assert from "node:assert/strict";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const sdk = require("@bandwidth/webrtc");

export const {
  ApiController,
  ApiError,
  ArgumentsValidationError,
  Client,
  DeviceApiVersionEnum,
  Environment,
  PublishPermissionEnum,
  ResponseValidationError,
} = sdk;
export const SDK_VERSION = require("@bandwidth/webrtc/package.json").version;

export function makeController(baseUrl, username, password) {
  const client = new Client({
    environment: Environment.Custom,
    baseUrl,
    basicAuthUserName: username,
    basicAuthPassword: password,
    timeout: 30000,
  });
  return new ApiController(client);
}

// The statuses each method declares (src/controllers/apiController.ts, throwOn), with the
// message the SDK gives them. Any other error status is "undeclared".
const DECLARED = {
  createParticipant: [400, 401, 403],
  getParticipant: [401, 403, 404],
  deleteParticipant: [401, 403, 404],
  createSession: [400, 401, 403],
  getSession: [401, 403, 404],
  deleteSession: [401, 403, 404],
  listSessionParticipants: [401, 403, 404],
  addParticipantToSession: [401, 403, 404],
  removeParticipantFromSession: [401, 403, 404],
  getParticipantSubscriptions: [401, 403, 404],
  updateParticipantSubscriptions: [400, 401, 403, 404],
};
const MESSAGE = { 400: "Bad Request", 401: "Unauthorized", 403: "Access Denied", 404: "Not Found" };

/**
 * Calls api[method](...args) and requires the SDK to reject with HTTP `status`, as the error
 * class and message the SDK gives that status for that method. -> the error, with .json (the
 * error body parsed).
 */
export async function expectStatus(status, api, method, ...args) {
  assert.ok(DECLARED[method], `unknown SDK method ${method}`);
  let err;
  try {
    const res = await api[method](...args);
    assert.fail(`${method}(${args.map((a) => JSON.stringify(a)).join(", ")}): expected HTTP ${status}, got ${res.statusCode} ${res.body}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    err = e;
  }
  const what = `${method}(${args.map((a) => JSON.stringify(a)).join(", ")})`;
  assert.equal(err.statusCode, status, `${what}: expected HTTP ${status}, got ${err.statusCode} ${err.constructor.name}: ${err.message} body=${err.body}`);
  if (DECLARED[method].includes(status)) {
    // @apimatic/core's ApiError as it really behaves: a plain Error with the response on it.
    assert.equal(Object.getPrototypeOf(err), Error.prototype, `${what}: declared ${status}: expected the plain Error core's ApiError builds, got ${err.constructor.name}: ${err.message}`);
    assert.equal(err.message, MESSAGE[status]);
    assert.ok(!(err instanceof ApiError));
  } else {
    assert.ok(err instanceof ApiError, `${what}: undeclared ${status} must be the SDK's ApiError, got ${err.constructor.name}: ${err.message}`);
    assert.equal(err.message, `Response status code was not ok: ${status}.`);
  }
  assert.equal(typeof err.body, "string", `${what}: error body`);
  try {
    err.json = JSON.parse(err.body);
  } catch {
    assert.fail(`${what}: error body is not JSON: ${JSON.stringify(err.body)}`);
  }
  assert.deepEqual(JSON.parse(JSON.stringify(err.result)), err.json, "the SDK's parsed error result is the body");
  return err;
}

/** The error body patchbay gives 400/404/409: {"error": "...", "requestId": "<uuid>"}. */
export function assertRequestError(err) {
  assert.equal(typeof err.json.error, "string", err.body);
  assert.ok(err.json.error.length > 0, err.body);
  assert.ok(isUuid(err.json.requestId), `requestId must be a UUID: ${err.body}`);
}

/** A void method's success: 204 with an empty body, nothing mapped. */
export function assertNoContent(res, what = "") {
  assert.equal(res.statusCode, 204, `${what}: expected 204, got ${res.statusCode} ${res.body}`);
  assert.equal(res.body, "", `${what}: 204 must have an empty body`);
  assert.equal(res.result, undefined);
}

export function isUuid(s) {
  return typeof s === "string" && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(s);
}

export function raw(res) {
  assert.equal(typeof res.body, "string");
  assert.notEqual(res.body, "", "expected a JSON body");
  return JSON.parse(res.body);
}

export function b64urlJson(part) {
  assert.match(part, /^[A-Za-z0-9_-]+$/, `not unpadded base64url: ${part}`);
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

export const sorted = (xs) => [...xs].sort();
