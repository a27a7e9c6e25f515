#!/usr/bin/env bash
# Runs every test of patchbay, from a fresh machine: installs what the tests need, starts the
# services they use, then runs style checks, unit/integration/property tests (SQLite and
# PostgreSQL), the media engine tests, the kill -9 restart test, and the interop tests with
# Bandwidth's own clients: the Python and Node server SDKs, and the browser SDK in headless Chromium
# against the real server. Exits non-zero on any failure; the last line sums up the counts.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
logdir=$(mktemp -d)
step() { printf '\n=== %s\n' "$*"; }

# --- what the tests need --------------------------------------------------------------------
# Debian packages the build and the tests use: libopus (the SIP bridge's Opus codec, found by
# pkg-config), sipp (package sip-tester) and baresip for the SIP tests, Chromium and Firefox ESR for the browser tests,
# coturn (STUN and TURN) for the reach tests, janus and iproute2 for the load tool's Janus mode
# (tests/e2e/media_janus.sh runs it in a network namespace).
apt_packages=(python3-venv postgresql-client chromium firefox-esr baresip-core pkg-config libopus-dev sip-tester coturn janus iproute2)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Node.js and npm for the browser interop tests (Debian's packages when missing).
if ! command -v npm >/dev/null 2>&1; then
  step "installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi

# PostgreSQL for the Postgres half of the store and restart tests. A server answering on
# 127.0.0.1:5432 with trust auth and a `test` database is used as it is; otherwise (or with
# PATCHBAY_TEST_OWN_POSTGRES=1) the script starts a throwaway cluster of its own: Debian's
# server package if missing, initdb with trust auth in a temporary directory, a free port,
# removed when the script ends.
own_pg=""
cleanup_pg() {
  if [ -n "$own_pg" ]; then
    su postgres -s /bin/sh -c "\"$pg_bin/pg_ctl\" -D '$own_pg/data' -m immediate stop" >/dev/null 2>&1 || true
    rm -rf "$own_pg"
  fi
}
trap cleanup_pg EXIT
default_pg=postgres://postgres@127.0.0.1:5432/test
if [ -z "${PATCHBAY_TEST_POSTGRES:-}" ] && [ -z "${PATCHBAY_TEST_OWN_POSTGRES:-}" ] &&
  pg_isready -q -h 127.0.0.1 -p 5432 && psql "$default_pg" -Atc 'select 1' >/dev/null 2>&1; then
  export PATCHBAY_TEST_POSTGRES=$default_pg
elif [ -z "${PATCHBAY_TEST_POSTGRES:-}" ]; then
  step "starting a PostgreSQL cluster of the tests' own"
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
  fi
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /nonexistent postgres
  own_pg=$(mktemp -d /tmp/patchbay-pg.XXXXXX)
  chown postgres "$own_pg"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  su postgres -s /bin/sh -c "\"$pg_bin/initdb\" -D '$own_pg/data' -U postgres --auth=trust -E UTF8 >/dev/null"
  su postgres -s /bin/sh -c "\"$pg_bin/pg_ctl\" -D '$own_pg/data' -l '$own_pg/log' -w -o \"-p $port -k '$own_pg' -c listen_addresses=127.0.0.1 -c max_connections=300\" start >/dev/null"
  psql "postgres://postgres@127.0.0.1:$port/postgres" -qc 'CREATE DATABASE test' >/dev/null
  export PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/test
fi
echo "PostgreSQL for the tests: $PATCHBAY_TEST_POSTGRES"

# --- Rust: style, lints, tests --------------------------------------------------------------
step "toolchain truth: rust-version against the locked dependencies and the toolchain"
bash tests/msrv.sh 2>&1 | tee "$logdir/msrv.log"

step "cargo deny: licenses, bans (one crypto library), sources"
bash tests/deny.sh 2>&1 | tee "$logdir/deny.log"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test (unit, store conformance on SQLite+Postgres, API, property, restart)"
cargo test --locked --workspace --all-targets 2>&1 | tee "$logdir/cargo-test.log"

step "end to end over real UDP: str0m devices against the running server"
PATCHBAY_BIN="$root/target/debug/patchbay" bash tests/e2e/media_udp.sh 2>&1 | tee "$logdir/e2e.log"
step "end to end: the load tool's Janus mode (Debian's janus, VideoRoom) next to patchbay"
bash tests/e2e/media_janus.sh 2>&1 | tee "$logdir/e2e-janus.log"

step "packaging: the container image's steps on the host"; bash tests/packaging.sh 2>&1 | tee "$logdir/packaging.log"
step "reverse proxy: nginx with deploy/nginx.conf in front of patchbay (https, wss)"
PATCHBAY_BIN="$root/target/debug/patchbay" bash tests/reverse_proxy.sh 2>&1 | tee "$logdir/reverse-proxy.log"
step "fuzz: every target, 20 s each"
bash fuzz/run.sh 2>&1 | tee "$logdir/fuzz.log"

# --- interop with Bandwidth's unmodified clients ----------------------------------------------
step "interop: bandwidth-sdk==14.5.3 (Python server SDK)"
export PATCHBAY_BIN="$root/target/debug/patchbay"
bash tests/interop/server_sdk/run.sh 2>&1 | tee "$logdir/server-sdk.log"

step "interop: @bandwidth/webrtc@1.3.1 (Node server SDK, its response validation on)"
bash tests/interop/node_sdk/run.sh 2>&1 | tee "$logdir/node-sdk.log"

step "interop: sipp (SIP dial-in) against the server"
bash tests/interop/sip/run.sh 2>&1 | tee "$logdir/sip.log"

step "interop: Chromium + @bandwidth/webrtc-browser (official browser SDK) against the server"
cargo build --locked --example phone --example switchboard --example demo # the test phone of phone.test.mjs; the demo backends of switchboard.test.mjs and demo.test.mjs
bash tests/interop/browser/run.sh 2>&1 | tee "$logdir/browser.log"

# --- summary ----------------------------------------------------------------------------------
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$logdir/cargo-test.log" | awk '{s+=$4} END {print s+0}')
py_passed=$(grep -Eo '[0-9]+ passed' "$logdir/server-sdk.log" | tail -n1 | awk '{print $1+0}')
node_sdk_passed=$(grep -Eo '^node-sdk: [0-9]+ passed' "$logdir/node-sdk.log" | tail -n1 | awk '{print $2+0}')
browser_passed=$(grep -Eo '^browser-interop: [0-9]+ passed' "$logdir/browser.log" | tail -n1 | awk '{print $2+0}')
sip_passed=$(grep -Eo '^sip-interop: [0-9]+ passed' "$logdir/sip.log" | tail -n1 | awk '{print $2+0}')
fuzz_passed=$(grep -Eo '^fuzz: [0-9]+ passed' "$logdir/fuzz.log" | tail -n1 | awk '{print $2+0}')
e2e_passed=$(grep -Eo '^media_load check: [0-9]+ passed' "$logdir/e2e.log" | awk '{s+=$3} END {print s+0}')
e2e_passed=$((e2e_passed + $(grep -Eo '^media_janus: [0-9]+ of' "$logdir/e2e-janus.log" | awk '{s+=$2} END {print s+0}')))
packaging_passed=$(grep -Eo '^packaging: [0-9]+ passed' "$logdir/packaging.log" | awk '{print $2+0}')
msrv_passed=$(grep -Eo '^msrv: [0-9]+ passed' "$logdir/msrv.log" | awk '{print $2+0}')
deny_passed=$(grep -Eo '^deny: [0-9]+ passed' "$logdir/deny.log" | awk '{print $2+0}')
proxy_passed=$(grep -Eo '^reverse-proxy: [0-9]+ passed' "$logdir/reverse-proxy.log" | awk '{print $2+0}')
total=$((passed + ${py_passed:-0} + ${node_sdk_passed:-0} + ${browser_passed:-0} + ${e2e_passed:-0} + ${sip_passed:-0} + ${packaging_passed:-0} + ${proxy_passed:-0} + ${msrv_passed:-0} + ${deny_passed:-0} + ${fuzz_passed:-0}))
if [ "$total" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
echo
echo "patchbay: $total passed, 0 failed"
