"""patchbay driven by Bandwidth's unmodified Python server SDK (bandwidth-sdk 14.5.3).

Contract: shared reference bandwidth-webrtc.md sections 1, 2 and 10. Every test
runs twice, once with base_url http://127.0.0.1:PORT/v1 and once with
http://127.0.0.1:PORT (Environment.CUSTOM appends /accounts/... to either).

SDK facts this relies on (read from the installed package):
- WebRtcClient(environment=Environment.CUSTOM, base_url=..., web_rtc_basic_auth_user_name=...,
  web_rtc_basic_auth_password=...).client is an APIController whose methods return an
  ApiResponse (.status_code, .text, .body = decoded model).
- Argument orders: (account_id, session_id, participant_id[, body]) for #8-#11.
- Errors: statuses the endpoint declares raise APIException('Bad Request' / 'Unauthorized' /
  'Access Denied' / 'Not Found'); any other status outside 200..208 raises ErrorException
  (a subclass of APIException), e.g. the 409 of add_participant_to_session. Both carry
  .response_code and .response.text.
- Participant() always serialises deviceApiVersion (default 'V2'); Participant.from_dictionary
  turns an absent deviceApiVersion into 'V2' and `{}` subscriptions into None, so raw JSON
  (ApiResponse.text) is checked where the model would hide the wire value.
- ParticipantSubscription has no streamAliases field; a subclass (not a modification of the
  SDK) adds it so the SDK's own serialiser sends it.
"""

import base64
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bandwidth.exceptions.api_exception import APIException
from bandwidth.webrtc.exceptions.error_exception import ErrorException
from bandwidth.webrtc.models.participant import Participant
from bandwidth.webrtc.models.participant_subscription import ParticipantSubscription
from bandwidth.webrtc.models.session import Session
from bandwidth.webrtc.models.subscriptions import Subscriptions
from bandwidth.webrtc.models.publish_permission_enum import PublishPermissionEnum
from bandwidth.webrtc.models.device_api_version_enum import DeviceApiVersionEnum

MAX_TOKEN_LEN = 186
SESSION_CAP = 20


class AliasedParticipantSubscription(ParticipantSubscription):
    """ParticipantSubscription + streamAliases (the 2021 SDK model lacks the field)."""

    _names = dict(ParticipantSubscription._names, stream_aliases="streamAliases")

    def __init__(self, participant_id=None, stream_aliases=None):
        super().__init__(participant_id)
        self.stream_aliases = stream_aliases


# --------------------------------------------------------------------------- helpers

def is_uuid(s):
    try:
        return isinstance(s, str) and str(uuid.UUID(s)) == s.lower()
    except ValueError:
        return False


def b64url_json(part):
    assert re.fullmatch(r"[A-Za-z0-9_-]+", part), f"not base64url (unpadded): {part!r}"
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def raw(resp):
    """The response body as JSON, straight off the wire."""
    assert resp.text, f"expected a JSON body, got an empty one (status {resp.status_code})"
    return json.loads(resp.text)


def expect_status(status, fn, *args, exc_type=APIException):
    """Call an SDK method and require that the SDK raises for HTTP `status`."""
    with pytest.raises(APIException) as ei:
        fn(*args)
    e = ei.value
    body = getattr(e.response, "text", None)
    assert e.response_code == status, (
        f"{fn.__name__}{args!r}: expected HTTP {status}, got {e.response_code} ({e}); body={body!r}"
    )
    assert isinstance(e, exc_type), f"{fn.__name__}: expected {exc_type.__name__}, got {type(e).__name__}"
    return e


def error_json(e):
    try:
        return json.loads(e.response.text)
    except (TypeError, ValueError):
        pytest.fail(f"error body is not JSON: {e.response.text!r}")


def new_participant(api, account, tag=None, perms=None, version=DeviceApiVersionEnum.V3):
    body = Participant(publish_permissions=perms or [PublishPermissionEnum.AUDIO, PublishPermissionEnum.VIDEO],
                       tag=tag, device_api_version=version)
    resp = api.create_participant(account.account_id, body)
    assert resp.status_code == 200, resp.text
    return resp.body.participant.id


def new_session(api, account, tag=None):
    resp = api.create_session(account.account_id, Session(tag=tag) if tag is not None else None)
    assert resp.status_code == 200, resp.text
    return resp.body.id


def sub_ids(subs):
    return [p.participant_id for p in (subs.participants or [])]


def member_ids(api, account, session_id):
    resp = api.list_session_participants(account.account_id, session_id)
    assert resp.status_code == 200, f"list must be 200 with a JSON array, got {resp.status_code} {resp.text!r}"
    assert isinstance(raw(resp), list), resp.text
    return sorted(p.id for p in resp.body)


def assert_no_subscriptions(api, account, session_id, participant_id):
    resp = api.get_participant_subscriptions(account.account_id, session_id, participant_id)
    assert resp.status_code == 200, f"get-subscriptions must be 200 with JSON, got {resp.status_code} {resp.text!r}"
    wire = raw(resp)
    assert isinstance(wire, dict), resp.text
    assert not wire.get("sessionId") and not wire.get("participants"), f"expected no subscriptions, got {wire}"


# --------------------------------------------------------------------------- participants

def test_create_participant_and_token(api, account):
    before = int(time.time())
    body = Participant(
        publish_permissions=[PublishPermissionEnum.AUDIO, PublishPermissionEnum.VIDEO],
        tag="alice-sdk",
        device_api_version=DeviceApiVersionEnum.V3,
    )
    resp = api.create_participant(account.account_id, body)
    assert resp.status_code == 200, resp.text

    p = resp.body.participant
    assert p is not None, resp.text
    assert is_uuid(p.id), f"participant id must be a UUID: {p.id!r}"
    assert p.sessions == [], resp.text
    assert sorted(p.publish_permissions) == ["AUDIO", "VIDEO"], resp.text
    assert p.tag == "alice-sdk"
    assert p.device_api_version == "V3"

    wire = raw(resp)
    assert set(wire) >= {"participant", "token"}, wire
    assert wire["participant"].get("subscriptions") == {}, f"subscriptions on create must be {{}}: {wire}"
    assert wire["participant"].get("deviceApiVersion") == "V3", wire

    token = resp.body.token
    assert isinstance(token, str), resp.text
    assert len(token) <= MAX_TOKEN_LEN, f"token is {len(token)} chars (> {MAX_TOKEN_LEN}): {token}"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token), f"token must be URL-safe: {token!r}"
    parts = token.split(".")
    assert len(parts) == 3 and all(parts), f"token must be a 3-part JWT: {token!r}"
    header, payload = b64url_json(parts[0]), b64url_json(parts[1])
    assert header.get("alg") == "HS256", header
    assert payload.get("v") == "v3", payload
    assert payload.get("p") == p.id, payload
    assert payload.get("a") == account.account_id, payload
    exp = payload.get("exp")
    assert isinstance(exp, (int, float)) and not isinstance(exp, bool), f"exp must be numeric: {payload}"
    assert exp > before, f"token already expired: exp={exp} now={before}"


def test_create_participant_ids_are_fresh(api, account):
    a = new_participant(api, account, tag="same")
    b = new_participant(api, account, tag="same")
    assert a != b


def test_create_participant_without_body(api, account):
    """The SDK sends no body at all when body is None; defaults apply."""
    resp = api.create_participant(account.account_id)
    assert resp.status_code == 200, resp.text
    wire = raw(resp)["participant"]
    assert is_uuid(wire["id"]), wire
    assert wire.get("sessions") == [], wire
    assert sorted(wire.get("publishPermissions", [])) == ["AUDIO", "VIDEO"], f"default publishPermissions: {wire}"
    assert wire.get("deviceApiVersion", "V3") == "V3", wire
    assert b64url_json(resp.body.token.split(".")[1]).get("v") == "v3"


@pytest.mark.parametrize("sent,echoed", [("V2", "V2"), ("v3", "V3"), ("V3", "V3")])
def test_device_api_version_echo_and_token_always_v3(api, account, sent, echoed):
    resp = api.create_participant(account.account_id, Participant(publish_permissions=["AUDIO"], device_api_version=sent))
    assert resp.status_code == 200, resp.text
    assert raw(resp)["participant"].get("deviceApiVersion") == echoed, resp.text
    pid = resp.body.participant.id
    assert b64url_json(resp.body.token.split(".")[1]).get("v") == "v3", "tokens are always v3"
    got = api.get_participant(account.account_id, pid)
    assert raw(got).get("deviceApiVersion") == echoed, got.text


def test_sdk_default_participant_serialises_v2(api, account):
    """Participant() with only a tag: the old SDK still sends deviceApiVersion 'V2'."""
    resp = api.create_participant(account.account_id, Participant(tag="defaults"))
    assert resp.status_code == 200, resp.text
    p = resp.body.participant
    assert p.tag == "defaults"
    assert raw(resp)["participant"].get("deviceApiVersion") == "V2", resp.text
    assert sorted(p.publish_permissions) == ["AUDIO", "VIDEO"], resp.text


def test_get_participant_round_trip(api, account):
    created = api.create_participant(
        account.account_id,
        Participant(publish_permissions=[PublishPermissionEnum.AUDIO], tag="bob", device_api_version="V3"),
    )
    pid = created.body.participant.id

    resp = api.get_participant(account.account_id, pid)
    assert resp.status_code == 200, resp.text
    p = resp.body
    assert p.id == pid
    assert p.publish_permissions == ["AUDIO"]
    assert p.tag == "bob"
    assert p.device_api_version == "V3"
    assert p.sessions == []
    wire = raw(resp)
    assert "token" not in wire, f"GET participant must not include a token: {wire}"
    assert wire.get("subscriptions", {}) == {}, wire
    for k, v in wire.items():
        assert v is not None or k == "callbackUrl", f"absent optional fields are omitted, not null: {wire}"


def test_delete_participant(api, account):
    pid = new_participant(api, account, tag="doomed")
    resp = api.delete_participant(account.account_id, pid)
    assert resp.status_code == 204, f"delete participant: expected 204, got {resp.status_code} {resp.text!r}"
    assert resp.text in ("", None), resp.text
    e = expect_status(404, api.get_participant, account.account_id, pid)
    assert isinstance(error_json(e).get("error"), str), e.response.text
    expect_status(404, api.delete_participant, account.account_id, pid)


def test_deleted_member_leaves_its_session(api, account):
    sid = new_session(api, account, tag="del-member")
    a, b = new_participant(api, account), new_participant(api, account)
    api.add_participant_to_session(account.account_id, sid, a)
    api.add_participant_to_session(account.account_id, sid, b)
    assert member_ids(api, account, sid) == sorted([a, b])
    api.delete_participant(account.account_id, a)
    assert member_ids(api, account, sid) == [b]


# --------------------------------------------------------------------------- sessions

def test_session_create_get_delete(api, account):
    resp = api.create_session(account.account_id, Session(tag="standup"))
    assert resp.status_code == 200, resp.text
    s = resp.body
    assert isinstance(s.id, str) and s.id, resp.text
    assert s.tag == "standup"

    got = api.get_session(account.account_id, s.id)
    assert got.status_code == 200, got.text
    assert (got.body.id, got.body.tag) == (s.id, "standup")

    deleted = api.delete_session(account.account_id, s.id)
    assert deleted.status_code == 204, f"delete session: expected 204, got {deleted.status_code} {deleted.text!r}"
    expect_status(404, api.get_session, account.account_id, s.id)
    expect_status(404, api.delete_session, account.account_id, s.id)
    expect_status(404, api.list_session_participants, account.account_id, s.id)


def test_create_session_without_body(api, account):
    resp = api.create_session(account.account_id)
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.body.id, str) and resp.body.id
    assert api.get_session(account.account_id, resp.body.id).body.id == resp.body.id
    other = new_session(api, account)
    assert other != resp.body.id


def test_delete_session_releases_members(api, account):
    sid = new_session(api, account, tag="ending")
    pid = new_participant(api, account)
    api.add_participant_to_session(account.account_id, sid, pid)
    api.delete_session(account.account_id, sid)
    assert api.get_participant(account.account_id, pid).body.sessions == []
    # Free to join another session now (no 409).
    sid2 = new_session(api, account)
    assert api.add_participant_to_session(account.account_id, sid2, pid).status_code == 204
    assert member_ids(api, account, sid2) == [pid]


# --------------------------------------------------------------------------- membership

def test_list_add_remove(api, account):
    sid = new_session(api, account, tag="room")
    assert member_ids(api, account, sid) == []

    a = new_participant(api, account, tag="a", perms=["AUDIO"])
    b = new_participant(api, account, tag="b")

    # Without a body: membership only, no subscriptions.
    resp = api.add_participant_to_session(account.account_id, sid, a)
    assert resp.status_code == 204, f"add: expected 204, got {resp.status_code} {resp.text!r}"
    assert_no_subscriptions(api, account, sid, a)

    # Session-wide form.
    resp = api.add_participant_to_session(account.account_id, sid, b, Subscriptions(session_id=sid))
    assert resp.status_code == 204, resp.text
    subs = api.get_participant_subscriptions(account.account_id, sid, b).body
    assert subs.session_id == sid
    assert sub_ids(subs) == []

    listed = api.list_session_participants(account.account_id, sid)
    assert listed.status_code == 200
    by_id = {p.id: p for p in listed.body}
    assert sorted(by_id) == sorted([a, b])
    assert by_id[a].tag == "a" and by_id[a].publish_permissions == ["AUDIO"]
    assert by_id[b].tag == "b"
    assert by_id[a].sessions == [sid] and by_id[b].sessions == [sid]
    # Participant.subscriptions (read-only, reference 1.4) reflects what was set.
    assert by_id[b].subscriptions is not None and by_id[b].subscriptions.session_id == sid, listed.text
    assert all("token" not in p for p in raw(listed)), listed.text

    assert api.get_participant(account.account_id, a).body.sessions == [sid]

    # Remove.
    resp = api.remove_participant_from_session(account.account_id, sid, b)
    assert resp.status_code == 204, f"remove: expected 204, got {resp.status_code} {resp.text!r}"
    assert member_ids(api, account, sid) == [a]
    expect_status(404, api.get_participant_subscriptions, account.account_id, sid, b)
    assert api.get_participant(account.account_id, b).body.sessions == []
    expect_status(404, api.remove_participant_from_session, account.account_id, sid, b)

    # Still a valid participant: can join another session.
    sid2 = new_session(api, account)
    assert api.add_participant_to_session(account.account_id, sid2, b).status_code == 204
    assert api.get_participant(account.account_id, b).body.sessions == [sid2]


def test_add_with_participant_list_and_stream_aliases(api, account):
    sid = new_session(api, account)
    a, b, c = (new_participant(api, account) for _ in range(3))
    api.add_participant_to_session(account.account_id, sid, b)
    api.add_participant_to_session(account.account_id, sid, c)

    resp = api.add_participant_to_session(
        account.account_id, sid, a,
        Subscriptions(participants=[ParticipantSubscription(b), ParticipantSubscription(c)]),
    )
    assert resp.status_code == 204, resp.text
    got = api.get_participant_subscriptions(account.account_id, sid, a)
    assert got.status_code == 200
    assert sorted(sub_ids(got.body)) == sorted([b, c])
    assert got.body.session_id in (None, sid), got.text

    # streamAliases, sent through the SDK's own serialiser via a model subclass.
    resp = api.update_participant_subscriptions(
        account.account_id, sid, a,
        Subscriptions(session_id=sid, participants=[
            AliasedParticipantSubscription(b, ["camera", "mic"]),
            AliasedParticipantSubscription(c),
        ]),
    )
    assert resp.status_code == 204, resp.text
    got = api.get_participant_subscriptions(account.account_id, sid, a)
    wire = {p["participantId"]: p for p in raw(got).get("participants", [])}
    assert set(wire) == {b, c}, got.text
    assert sorted(wire[b].get("streamAliases", [])) == ["camera", "mic"], got.text
    assert not wire[c].get("streamAliases"), got.text


def test_readd_to_own_session_replaces_subscriptions(api, account):
    sid = new_session(api, account)
    a, b = new_participant(api, account), new_participant(api, account)
    api.add_participant_to_session(account.account_id, sid, b)
    api.add_participant_to_session(account.account_id, sid, a, Subscriptions(participants=[ParticipantSubscription(b)]))
    assert sub_ids(api.get_participant_subscriptions(account.account_id, sid, a).body) == [b]

    resp = api.add_participant_to_session(account.account_id, sid, a, Subscriptions(session_id=sid))
    assert resp.status_code == 204, resp.text
    subs = api.get_participant_subscriptions(account.account_id, sid, a).body
    assert subs.session_id == sid and sub_ids(subs) == []
    assert member_ids(api, account, sid) == sorted([a, b])


# --------------------------------------------------------------------------- subscriptions

def test_update_subscriptions_full_replace_and_clear(api, account):
    sid = new_session(api, account)
    s, b, c = (new_participant(api, account) for _ in range(3))
    for pid in (s, b, c):
        api.add_participant_to_session(account.account_id, sid, pid)
    assert_no_subscriptions(api, account, sid, s)

    resp = api.update_participant_subscriptions(
        account.account_id, sid, s, Subscriptions(participants=[ParticipantSubscription(b)]))
    assert resp.status_code == 204, f"update subs: expected 204, got {resp.status_code} {resp.text!r}"
    assert sub_ids(api.get_participant_subscriptions(account.account_id, sid, s).body) == [b]

    # Second PUT replaces, does not merge.
    api.update_participant_subscriptions(
        account.account_id, sid, s, Subscriptions(participants=[ParticipantSubscription(c)]))
    assert sub_ids(api.get_participant_subscriptions(account.account_id, sid, s).body) == [c]

    # Session-wide replaces the explicit list.
    api.update_participant_subscriptions(account.account_id, sid, s, Subscriptions(session_id=sid))
    subs = api.get_participant_subscriptions(account.account_id, sid, s).body
    assert subs.session_id == sid and sub_ids(subs) == []

    # No body at all -> everything removed.
    resp = api.update_participant_subscriptions(account.account_id, sid, s)
    assert resp.status_code == 204, resp.text
    assert_no_subscriptions(api, account, sid, s)

    # `{}` -> nothing, too.
    api.update_participant_subscriptions(
        account.account_id, sid, s, Subscriptions(participants=[ParticipantSubscription(b)]))
    api.update_participant_subscriptions(account.account_id, sid, s, Subscriptions())
    assert_no_subscriptions(api, account, sid, s)

    # Others' subscriptions untouched throughout.
    assert_no_subscriptions(api, account, sid, b)


def test_subscription_to_not_yet_member_is_stored(api, account):
    sid = new_session(api, account)
    s, later = new_participant(api, account), new_participant(api, account)
    api.add_participant_to_session(account.account_id, sid, s)
    resp = api.update_participant_subscriptions(
        account.account_id, sid, s, Subscriptions(participants=[ParticipantSubscription(later)]))
    assert resp.status_code == 204, resp.text
    assert sub_ids(api.get_participant_subscriptions(account.account_id, sid, s).body) == [later]


def test_subscription_body_errors(api, account):
    sid, other_sid = new_session(api, account), new_session(api, account)
    s = new_participant(api, account)
    api.add_participant_to_session(account.account_id, sid, s)

    # sessionId in the body differs from the path -> 400.
    expect_status(400, api.update_participant_subscriptions, account.account_id, sid, s,
                  Subscriptions(session_id=other_sid))
    # Unknown participant id in the list -> 400.
    expect_status(400, api.update_participant_subscriptions, account.account_id, sid, s,
                  Subscriptions(participants=[ParticipantSubscription(str(uuid.uuid4()))]))
    # Same rules on add (#8); the SDK surfaces the undeclared 400 as ErrorException.
    t = new_participant(api, account)
    e = expect_status(400, api.add_participant_to_session, account.account_id, sid, t,
                      Subscriptions(session_id=other_sid))
    body = error_json(e)
    assert isinstance(body.get("error"), str) and "requestId" in body, e.response.text
    # Nothing changed.
    assert_no_subscriptions(api, account, sid, s)
    assert member_ids(api, account, sid) == [s], "a rejected add must not make the participant a member"


def test_subscriptions_of_non_member_is_404(api, account):
    sid = new_session(api, account)
    outsider = new_participant(api, account)
    expect_status(404, api.get_participant_subscriptions, account.account_id, sid, outsider)
    expect_status(404, api.update_participant_subscriptions, account.account_id, sid, outsider,
                  Subscriptions(session_id=sid))


# --------------------------------------------------------------------------- errors & limits

def test_wrong_password_is_401(server, controller_factory, account):
    bad = controller_factory(server.main.username, server.main.password + "x")
    e = expect_status(401, bad.create_participant, account.account_id, Participant(tag="nope"))
    assert isinstance(error_json(e).get("message"), str), e.response.text
    expect_status(401, bad.get_session, account.account_id, str(uuid.uuid4()))
    expect_status(401, bad.list_session_participants, account.account_id, str(uuid.uuid4()))

    unknown_user = controller_factory("no-such-user", "whatever")
    expect_status(401, unknown_user.create_session, account.account_id, Session(tag="x"))


def test_session_full_21st_is_409(api, account):
    sid = new_session(api, account, tag="full")
    pids = [new_participant(api, account) for _ in range(SESSION_CAP + 1)]
    for pid in pids[:SESSION_CAP]:
        assert api.add_participant_to_session(account.account_id, sid, pid).status_code == 204
    e = expect_status(409, api.add_participant_to_session, account.account_id, sid, pids[SESSION_CAP],
                      exc_type=ErrorException)
    body = error_json(e)
    assert isinstance(body.get("error"), str) and "requestId" in body, e.response.text
    assert member_ids(api, account, sid) == sorted(pids[:SESSION_CAP])
    assert api.get_participant(account.account_id, pids[SESSION_CAP]).body.sessions == []
    # Re-adding an existing member of a full session is still fine.
    assert api.add_participant_to_session(account.account_id, sid, pids[0]).status_code == 204


def test_session_cap_under_concurrency(api, account, server, controller_factory):
    sid = new_session(api, account, tag="race")
    pids = [new_participant(api, account) for _ in range(50)]

    def add(pid):
        c = controller_factory(server.main.username, server.main.password)
        try:
            return c.add_participant_to_session(account.account_id, sid, pid).status_code
        except APIException as e:
            return e.response_code

    with ThreadPoolExecutor(max_workers=25) as pool:
        codes = list(pool.map(add, pids))
    assert codes.count(204) == SESSION_CAP, codes
    assert codes.count(409) == 50 - SESSION_CAP, codes
    assert len(member_ids(api, account, sid)) == SESSION_CAP


def test_member_of_another_session_is_409(api, account):
    s1, s2 = new_session(api, account), new_session(api, account)
    pid = new_participant(api, account)
    assert api.add_participant_to_session(account.account_id, s1, pid).status_code == 204
    e = expect_status(409, api.add_participant_to_session, account.account_id, s2, pid, exc_type=ErrorException)
    assert isinstance(error_json(e).get("error"), str), e.response.text
    assert member_ids(api, account, s2) == []
    assert api.get_participant(account.account_id, pid).body.sessions == [s1]


def test_unknown_ids_are_404(api, account):
    ghost = str(uuid.uuid4())
    sid = new_session(api, account)
    pid = new_participant(api, account)
    expect_status(404, api.get_participant, account.account_id, ghost)
    expect_status(404, api.delete_participant, account.account_id, ghost)
    expect_status(404, api.add_participant_to_session, account.account_id, sid, ghost)
    expect_status(404, api.remove_participant_from_session, account.account_id, sid, ghost)
    expect_status(404, api.get_participant_subscriptions, account.account_id, sid, ghost)
    expect_status(404, api.get_session, account.account_id, ghost)
    expect_status(404, api.delete_session, account.account_id, ghost)
    expect_status(404, api.list_session_participants, account.account_id, ghost)
    expect_status(404, api.add_participant_to_session, account.account_id, ghost, pid)
    expect_status(404, api.remove_participant_from_session, account.account_id, sid, pid)  # not a member
    with pytest.raises(APIException) as ei:  # malformed id: 400 or 404 are both fine
        api.get_participant(account.account_id, "not-a-uuid")
    assert ei.value.response_code in (400, 404), ei.value.response.text


# --------------------------------------------------------------------------- accounts

def test_account_created_while_serving_works(api_live, server):
    acct = server.live
    pid = new_participant(api_live, acct, tag="live")
    sid = new_session(api_live, acct, tag="live")
    assert api_live.add_participant_to_session(acct.account_id, sid, pid).status_code == 204
    assert member_ids(api_live, acct, sid) == [pid]
    created = api_live.create_participant(acct.account_id, Participant(tag="t"))
    assert b64url_json(created.body.token.split(".")[1]).get("a") == acct.account_id


def test_accounts_are_isolated(api, api_live, server):
    main, live = server.main, server.live
    pid = new_participant(api, main)
    sid = new_session(api, main)
    # Credentials of `live` on main's path -> 401.
    expect_status(401, api_live.get_participant, main.account_id, pid)
    expect_status(401, api_live.create_session, main.account_id, Session(tag="x"))
    # main's resources through live's own path -> 404 (existence not leaked).
    expect_status(404, api_live.get_participant, live.account_id, pid)
    expect_status(404, api_live.get_session, live.account_id, sid)
    live_pid = new_participant(api_live, live)
    expect_status(404, api_live.add_participant_to_session, live.account_id, sid, live_pid)
    expect_status(404, api.add_participant_to_session, main.account_id, sid, live_pid)


# --------------------------------------------------------------------------- input validation

def test_tag_length_limit(api, account):
    tag50 = "é" * 50  # 50 characters (100 bytes): the limit counts characters
    p = api.create_participant(account.account_id, Participant(tag=tag50, device_api_version="V3"))
    assert p.body.participant.tag == tag50
    assert api.get_participant(account.account_id, p.body.participant.id).body.tag == tag50
    s = api.create_session(account.account_id, Session(tag=tag50))
    assert api.get_session(account.account_id, s.body.id).body.tag == tag50

    e = expect_status(400, api.create_participant, account.account_id, Participant(tag="a" * 51))
    assert "tag" in error_json(e).get("error", ""), e.response.text
    e = expect_status(400, api.create_session, account.account_id, Session(tag="a" * 51))
    assert "tag" in error_json(e).get("error", ""), e.response.text


def test_unknown_enum_values_are_400(api, account):
    e = expect_status(400, api.create_participant, account.account_id,
                      Participant(publish_permissions=["AUDIO", "SCREEN"], device_api_version="V3"))
    assert "publishPermissions" in error_json(e).get("error", ""), e.response.text
    e = expect_status(400, api.create_participant, account.account_id,
                      Participant(publish_permissions=["AUDIO"], device_api_version="V4"))
    assert "deviceApiVersion" in error_json(e).get("error", ""), e.response.text
