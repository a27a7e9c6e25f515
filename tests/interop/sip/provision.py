#!/usr/bin/env python3
"""Create phone participants on a running patchbay for sipp, over the REST API.

Makes SESSIONS sessions of PER_SESSION participants each (publish AUDIO, device API V3), puts
each participant into its session subscribed to the whole session (body {"sessionId": …}, so
every phone hears the mix of the others), and writes:
  --csv FILE   a sipp injection file for sip/scenarios/dialin*.xml, one call per participant:
               SEQUENTIAL, then `<form>;<correlation id>;<device token>;` lines
  --ids FILE   `<session id> <participant id>` lines, in the same order

    provision.py --url http://127.0.0.1:PORT --username U --password P \\
        --sessions 5 --per-session 20 --csv calls.csv [--ids ids.txt] [--form helper|jwt]

Only the Python standard library is used; one HTTP connection is reused for every request.
"""

import argparse
import base64
import http.client
import json
import os
import sys
import urllib.parse


class Api:
    def __init__(self, url, username, password, account):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
        self.prefix = parsed.path.rstrip("/") + f"/v1/accounts/{account}"
        creds = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {creds}"}

    def call(self, method, path, body=None):
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, self.prefix + path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.status >= 300:
            sys.exit(f"{method} {path}: HTTP {response.status}: {raw[:300]!r}")
        return json.loads(raw) if raw else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://HOST:PORT of the server")
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--account", default="dev")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--per-session", type=int, required=True)
    parser.add_argument("--csv", required=True, help="sipp injection file to write")
    parser.add_argument("--ids", help="file for `<session> <participant>` lines")
    parser.add_argument("--form", default="helper", choices=["helper", "jwt"])
    args = parser.parse_args()

    api = Api(args.url, args.username, args.password, args.account)
    rows = []
    for _ in range(args.sessions):
        session = api.call("POST", "/sessions", {})["id"]
        for _ in range(args.per_session):
            created = api.call(
                "POST",
                "/participants",
                {"publishPermissions": ["AUDIO"], "deviceApiVersion": "V3"},
            )
            participant = created["participant"]["id"]
            api.call(
                "PUT",
                f"/sessions/{session}/participants/{participant}",
                {"sessionId": session},
            )
            rows.append((session, participant, created["token"]))

    with open(args.csv, "w") as f:
        f.write("SEQUENTIAL\n")
        for _, _, token in rows:
            correlation = os.urandom(20).hex()  # like a voice call id without "c-" and dashes
            f.write(f"{args.form};{correlation};{token};\n")
    if args.ids:
        with open(args.ids, "w") as f:
            for session, participant, _ in rows:
                f.write(f"{session} {participant}\n")
    print(f"provisioned {len(rows)} participants in {args.sessions} sessions", file=sys.stderr)


if __name__ == "__main__":
    main()
