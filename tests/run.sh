#!/usr/bin/env bash
# Runs every test of patchbay, from a fresh machine: installs what the tests need, starts the
# services they use, then runs style checks, unit/integration/property tests (SQLite and
# PostgreSQL), the media engine tests, the kill -9 restart test, and the interop tests with
# Bandwidth's own clients: the Python server SDK, and the browser SDK in headless Chromium
# against the real server. Exits non-zero on any failure; the last line sums up the counts.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
logdir=$(mktemp -d)
step() { printf '\n=== %s\n' "$*"; }

# --- what the tests need --------------------------------------------------------------------
# Debian packages the build and the tests use: libopus (the SIP bridge's Opus codec, found by
# pkg-config), sipp (package sip-tester) for the SIP tests, Chromium for the browser tests.
apt_packages=(python3-venv postgresql-client chromium pkg-config libopus-dev sip-tester)
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

# PostgreSQL for the Postgres half of the store and restart tests (local, trust auth).
export PATCHBAY_TEST_POSTGRES=${PATCHBAY_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  step "starting PostgreSQL"
  if [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is required at 127.0.0.1:5432" >&2; exit 1; }
fi

# --- Rust: style, lints, tests --------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test (unit, store conformance on SQLite+Postgres, API, property, restart)"
cargo test --locked --workspace --all-targets 2>&1 | tee "$logdir/cargo-test.log"

step "end to end over real UDP: str0m devices against the running server"
PATCHBAY_BIN="$root/target/debug/patchbay" bash tests/e2e/media_udp.sh 2>&1 | tee "$logdir/e2e.log"

# --- interop with Bandwidth's unmodified clients ----------------------------------------------
step "interop: bandwidth-sdk==14.5.3 (Python server SDK)"
export PATCHBAY_BIN="$root/target/debug/patchbay"
bash tests/interop/server_sdk/run.sh 2>&1 | tee "$logdir/server-sdk.log"

step "interop: sipp (SIP dial-in) against the server"
bash tests/interop/sip/run.sh 2>&1 | tee "$logdir/sip.log"

step "interop: Chromium + @bandwidth/webrtc-browser (official browser SDK) against the server"
cargo build --locked --example phone # the test phone of phone.test.mjs
bash tests/interop/browser/run.sh 2>&1 | tee "$logdir/browser.log"

# --- summary ----------------------------------------------------------------------------------
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$logdir/cargo-test.log" | awk '{s+=$4} END {print s+0}')
py_passed=$(grep -Eo '[0-9]+ passed' "$logdir/server-sdk.log" | tail -n1 | awk '{print $1+0}')
browser_passed=$(grep -Eo '^browser-interop: [0-9]+ passed' "$logdir/browser.log" | tail -n1 | awk '{print $2+0}')
sip_passed=$(grep -Eo '^sip-interop: [0-9]+ passed' "$logdir/sip.log" | tail -n1 | awk '{print $2+0}')
e2e_passed=$(grep -Eo '^media_load check: [0-9]+ passed' "$logdir/e2e.log" | awk '{s+=$3} END {print s+0}')
total=$((passed + ${py_passed:-0} + ${browser_passed:-0} + ${e2e_passed:-0} + ${sip_passed:-0}))
if [ "$total" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
echo
echo "patchbay: $total passed, 0 failed"
