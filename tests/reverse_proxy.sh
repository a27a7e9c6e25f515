#!/usr/bin/env bash
# The reverse-proxy alternative to --tls-cert, as docs/deploy.md documents it: nginx (Debian's
# package, installed if missing) runs deploy/nginx.conf, the very text the docs show (checked
# here), in front of a real patchbay, as a non-daemon with its own prefix, on free ports and a
# self-signed certificate made now for the documented name (call.example.com). Only the port,
# the certificate paths and patchbay's address are substituted. Through it: a REST call
# (create a session and a participant), and a WebSocket upgrade on /v3 with the participant's
# token that answers a ping with a pong. Then deploy/nginx-cluster.conf in front of two processes
# on a fresh PostgreSQL database ($PATCHBAY_TEST_POSTGRES): two device WebSockets balanced to
# different processes meet on the session's host. Prints `reverse-proxy: N passed, M failed`;
# exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${PATCHBAY_BIN:-$root/target/debug/patchbay}
[ -x "$bin" ] || { echo "no patchbay binary at $bin: cargo build --bin patchbay" >&2; exit 1; }

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "=== installing nginx (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nginx >/dev/null
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)

passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok: $name"
  else
    failed=$((failed + 1))
    echo "FAILED: $name"
  fi
}

work=$(mktemp -d)
chmod 755 "$work" # nginx's workers (user nobody when started as root) use its temp dirs
server_pid=
nginx_pid=
cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# nginx as a non-daemon with its own prefix, serving the site config SITE on PORT (waited for):
# its files are $work/NAME.conf, NAME.err, NAME-error.log and NAME-access.log (in FORMAT, declared
# by DECLARE, when given). Sets started_nginx_pid.
start_nginx() {
  local name=$1 site=$2 port=$3 declare=${4:-} format=${5:-}
  cat >"$work/$name.conf" <<EOF
pid $work/$name.pid;
error_log $work/$name-error.log;
events {}
http {
    $declare
    access_log $work/$name-access.log $format;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    include $site;
}
EOF
  "$nginx" -p "$work" -c "$work/$name.conf" -g 'daemon off;' 2>"$work/$name.err" &
  started_nginx_pid=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$started_nginx_pid" 2>/dev/null || { cat "$work/$name.err" "$work/$name-error.log" >&2; exit 1; }
    sleep 0.1
  done
}

# --- the documented snippet is the tested one ---------------------------------------------------
snippet_in_docs() {
  # The ```nginx block of docs/deploy.md, byte for byte deploy/nginx.conf.
  awk '/^```nginx$/ {on=1; next} on && /^```$/ {exit} on {print}' docs/deploy.md >"$work/from-docs.conf"
  cmp -s "$work/from-docs.conf" deploy/nginx.conf
}
check "docs/deploy.md shows deploy/nginx.conf as it is" snippet_in_docs

# --- patchbay -----------------------------------------------------------------------------------
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 --media-listen 127.0.0.1:0 \
  --sip-listen 127.0.0.1:0 --rtp-ports 0-0 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q '^patchbay listening on' "$work/server.out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
  sleep 0.1
done
upstream=$(sed -n 's|^patchbay listening on http://\(.*\)$|\1|p' "$work/server.out")
user=$(sed -n 's/^ *username: *//p' "$work/server.out")
pass=$(sed -n 's/^ *password: *//p' "$work/server.out")
[ -n "$upstream" ] && [ -n "$user" ] || { echo "patchbay did not start" >&2; cat "$work/server.out" "$work/server.err" >&2; exit 1; }

# --- nginx with the documented site -------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=call.example.com -addext subjectAltName=DNS:call.example.com \
  -keyout "$work/privkey.pem" -out "$work/fullchain.pem" 2>/dev/null
port=$(free_port)
sed -e "s|listen 443 ssl;|listen 127.0.0.1:$port ssl;|" \
  -e "s|/etc/letsencrypt/live/call.example.com/|$work/|" \
  -e "s|http://127.0.0.1:8080;|http://$upstream;|" deploy/nginx.conf >"$work/patchbay.conf"
mkdir -p "$work/tmp"
start_nginx nginx "$work/patchbay.conf" "$port"
nginx_pid=$started_nginx_pid
https() { curl -sS --max-time 30 --cacert "$work/fullchain.pem" --resolve "call.example.com:$port:127.0.0.1" "$@"; }

# --- through the proxy --------------------------------------------------------------------------
ready() { [ "$(https -o /dev/null -w '%{http_code}' https://call.example.com:$port/readyz)" = 200 ]; }
check "GET /readyz over https through nginx" ready
unpublished() {
  [ "$(https -o /dev/null -w '%{http_code}' https://call.example.com:$port/metrics)" = 404 ] &&
    curl -fsS -o "$work/metrics.txt" "http://$upstream/metrics" &&
    grep -q '^patchbay_build_info' "$work/metrics.txt"
}
check "/metrics is served by patchbay but not published by nginx" unpublished

base="https://call.example.com:$port/v1/accounts/dev"
rest_calls() {
  session=$(https -u "$user:$pass" -X POST -H 'content-type: application/json' -d '{"tag":"proxy"}' \
    "$base/sessions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') &&
    participant=$(https -u "$user:$pass" -X POST -H 'content-type: application/json' \
      -d '{"publishPermissions":["AUDIO"]}' "$base/participants") &&
    token=$(printf '%s' "$participant" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') &&
    [ -n "$session" ] && [ -n "$token" ]
}
check "REST through nginx: a session and a participant with its token" rest_calls

websocket() {
  python3 - "$port" "$work/fullchain.pem" "$token" <<'PY'
# A WebSocket client on a raw TLS socket: the upgrade on /v3 must answer 101, then a ping must
# come back as a pong (so frames cross the proxy both ways on the upgraded connection).
import base64, os, socket, ssl, sys
port, ca, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", port), timeout=30)
s = ctx.wrap_socket(raw, server_hostname="call.example.com")
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /v3?token={token}&client=proxy-test HTTP/1.1\r\nHost: call.example.com\r\n"
           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit(f"closed during the upgrade: {head!r}")
    head += chunk
status = head.split(b"\r\n", 1)[0]
if not status.startswith(b"HTTP/1.1 101"):
    sys.exit(f"upgrade refused: {head!r}")
buf = head.split(b"\r\n\r\n", 1)[1]
payload, mask = b"patchbay", os.urandom(4)
s.sendall(bytes([0x89, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
def read(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("closed before the pong")
        buf += chunk
    out, buf = buf[:n], buf[n:]
    return out
while True:
    b0, b1 = read(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(read(2), "big")
    elif n == 127:
        n = int.from_bytes(read(8), "big")
    data = read(n)
    opcode = b0 & 0x0F
    if opcode == 0x8:
        sys.exit(f"closed by the server: {data!r}")
    if opcode == 0xA:
        if data != payload:
            sys.exit(f"pong with {data!r}")
        break
print("websocket: 101, ping answered")
PY
}
check "WebSocket upgrade on /v3 through nginx, ping answered by a pong" websocket

# --- several processes behind nginx (issue 20): deploy/nginx-cluster.conf -----------------------
cluster_in_docs() {
  # The second ```nginx block of docs/deploy.md, byte for byte deploy/nginx-cluster.conf.
  awk '/^```nginx$/ {n++; if (n == 2) {on=1; next}} on && /^```$/ {exit} on {print}' docs/deploy.md >"$work/cluster-from-docs.conf"
  cmp -s "$work/cluster-from-docs.conf" deploy/nginx-cluster.conf
}
check "docs/deploy.md shows deploy/nginx-cluster.conf as it is" cluster_in_docs

: "${PATCHBAY_TEST_POSTGRES:?the cluster case needs PostgreSQL (tests/run.sh sets PATCHBAY_TEST_POSTGRES)}"
cluster_db="pb_proxy_$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
node_pids=()
cluster_cleanup() {
  for pid in "${node_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${cluster_nginx_pid:-}" ] && kill "$cluster_nginx_pid" 2>/dev/null || true
  cleanup # stops the first part's server and nginx too, then waits for every child
  psql "$PATCHBAY_TEST_POSTGRES" -qc "DROP DATABASE IF EXISTS $cluster_db WITH (FORCE)" ||
    echo "cannot drop $cluster_db" >&2
}
trap cluster_cleanup EXIT
psql "$PATCHBAY_TEST_POSTGRES" -qc "CREATE DATABASE $cluster_db" >/dev/null
cluster_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path="/" + sys.argv[2]).geturl())' "$PATCHBAY_TEST_POSTGRES" "$cluster_db")
creds=$("$bin" account create dev --json --database-url "$cluster_url")
cuser=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])')
cpass=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
nodes=()
for n in 1 2; do
  "$bin" serve --database-url "$cluster_url" --data-dir "$work/node$n" --listen 127.0.0.1:0 \
    --cluster-address 127.0.0.1 --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 --rtp-ports 0-0 \
    >"$work/node$n.out" 2>"$work/node$n.err" &
  node_pids+=($!)
  for _ in $(seq 1 300); do
    grep -q '^patchbay listening on' "$work/node$n.out" 2>/dev/null && break
    kill -0 "${node_pids[-1]}" 2>/dev/null || { cat "$work/node$n.err" >&2; exit 1; }
    sleep 0.1
  done
  nodes+=("$(sed -n 's|^patchbay listening on http://\(.*\)$|\1|p' "$work/node$n.out")")
done
cport=$(free_port)
# The documented file with its upstream servers replaced by the two processes.
servers=$(printf '    server %s max_fails=1 fail_timeout=5s;\n' "${nodes[@]}")
awk -v servers="$servers" '
  /^upstream patchbay \{$/ { print; printf "%s", servers; skip = 1; next }
  skip && /^\}$/ { skip = 0 }
  !skip { print }
' deploy/nginx-cluster.conf | sed -e "s|listen 443 ssl;|listen 127.0.0.1:$cport ssl;|" \
  -e "s|/etc/letsencrypt/live/call.example.com/|$work/|" >"$work/cluster-site.conf"
start_nginx cluster "$work/cluster-site.conf" "$cport" "log_format upstreams '\$request_uri \$upstream_addr';" upstreams
cluster_nginx_pid=$started_nginx_pid

chttps() { curl -sS --fail --max-time 30 --cacert "$work/fullchain.pem" --resolve "call.example.com:$cport:127.0.0.1" -u "$cuser:$cpass" -H 'content-type: application/json' "$@"; }
cluster_devices_meet() {
  local cbase="https://call.example.com:$cport/v1/accounts/dev" csession tokens=() p pid
  csession=$(chttps -X POST -d '{"tag":"cluster"}' "$cbase/sessions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || return 1
  for tag in a b; do
    p=$(chttps -X POST -d "{\"tag\":\"$tag\",\"publishPermissions\":[\"AUDIO\"]}" "$cbase/participants") || return 1
    pid=$(printf '%s' "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["participant"]["id"])')
    tokens+=("$(printf '%s' "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')")
    chttps -X PUT -d "{\"sessionId\":\"$csession\"}" "$cbase/sessions/$csession/participants/$pid" >/dev/null || return 1
  done
  python3 - "$cport" "$work/fullchain.pem" "$bin" "$cluster_url" "$work/cluster-access.log" "${tokens[@]}" <<'PY'
# Both members' device WebSockets through the balancer, whose round robin sends them to
# different processes. Passes when the operator's view shows both devices on ONE process (the
# session's host: the other process carried its device there) and nginx's log shows the two
# upgrades went to two different processes.
import base64, json, os, socket, ssl, subprocess, sys, time
port, ca, bin_, db, log = sys.argv[1:6]
tokens = sys.argv[6:]
ctx = ssl.create_default_context(cafile=ca)
def upgrade(token, n):
    raw = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
    s = ctx.wrap_socket(raw, server_hostname="call.example.com")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v3?token={token}&uniqueId=dev-{n} HTTP/1.1\r\nHost: call.example.com\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"closed during the upgrade: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit(f"upgrade refused: {head!r}")
    return s
sockets = [upgrade(t, n) for n, t in enumerate(tokens)]
deadline = time.time() + 30
status = None
while True:
    status = json.loads(subprocess.run([bin_, "cluster", "status", "--json", "--database-url", db],
                                       check=True, capture_output=True, text=True).stdout)
    if any(p["devices"] == 2 and p["sessions"] == 1 for p in status):
        break
    if time.time() > deadline:
        sys.exit(f"the two devices never met on one process: {json.dumps(status)}")
    time.sleep(0.2)
if len([p for p in status if p["state"] == "alive"]) != 2:
    sys.exit(f"two processes alive expected: {json.dumps(status)}")
# nginx logs an upgraded request when it ends.
for s in sockets:
    s.close()
deadline = time.time() + 30
while True:
    upgrades = [line.split() for line in open(log) if line.startswith("/v3?")]
    if len(upgrades) >= 2 or time.time() > deadline:
        break
    time.sleep(0.2)
upstreams = {u[1] for u in upgrades if len(u) > 1}
if len(upstreams) != 2:
    sys.exit(f"nginx sent the two upgrades to {upstreams}: the carry was not exercised")
print(f"cluster: two devices entered through {sorted(upstreams)} and met on one host")
PY
}
check "two device WebSockets balanced to two processes meet on the session's host" cluster_devices_meet

echo "reverse-proxy: $passed passed, $failed failed"
if [ "$failed" -ne 0 ]; then
  echo "--- nginx error log" >&2
  cat "$work/nginx-error.log" "$work/nginx.err" >&2 || true
  echo "--- patchbay stderr (tail)" >&2
  tail -n 30 "$work/server.err" >&2 || true
  for f in "$work"/node*.err "$work/cluster-error.log" "$work/cluster-access.log"; do
    [ -f "$f" ] && { echo "--- $f (tail)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
fi
