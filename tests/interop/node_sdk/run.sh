#!/usr/bin/env bash
# Interop test: drive patchbay with Bandwidth's own, unmodified Node server SDK
# (@bandwidth/webrtc, the version pinned in package.json, Environment.Custom): every REST
# method it offers with its response validation on (rest.test.mjs, both base URLs), the exact
# requests it sends (wire.test.mjs, through a recording proxy), and its transfer-BXML helpers
# dialled into patchbay's SIP listener (transfer.test.mjs). Each test file starts its own
# `patchbay serve` on loopback in a temporary data dir and stops it at the end.
#
# Usage (from anywhere):  tests/interop/node_sdk/run.sh [extra node --test args]
# Env:
#   PATCHBAY_BIN  path to the patchbay binary (default: target/debug/patchbay, relative to the
#                 repo root)
#
# Installs with `npm ci` (skipped while node_modules matches the lock). Test output goes to
# stderr; on success stdout has exactly one line, `node-sdk: N passed`. Exits non-zero on any
# failure, cancellation or skip, and when no test ran.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"

PATCHBAY_BIN="${PATCHBAY_BIN:-target/debug/patchbay}"
case "$PATCHBAY_BIN" in
  /*) ;;
  *) PATCHBAY_BIN="$ROOT/$PATCHBAY_BIN" ;;
esac
if [ ! -x "$PATCHBAY_BIN" ]; then
  echo "node-sdk: patchbay binary not found or not executable: $PATCHBAY_BIN" >&2
  echo "  build it first (cargo build) or set PATCHBAY_BIN" >&2
  exit 1
fi
export PATCHBAY_BIN

for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "node-sdk: $tool is required" >&2; exit 1; }
done

cd "$HERE"

# --- npm packages: `npm ci` unless node_modules already matches the lock --------------------
stamp=node_modules/.patchbay-lock.sha256
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "=== npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$want" >"$stamp"
fi
node -e 'require("@bandwidth/webrtc")' \
  || { echo "node-sdk: @bandwidth/webrtc does not load" >&2; rm -f "$stamp"; exit 1; }

# --- run --------------------------------------------------------------------------------------
shopt -s nullglob
tests=(./*.test.mjs)
if [ "${#tests[@]}" -eq 0 ]; then
  echo "node-sdk: no *.test.mjs in $HERE" >&2
  exit 1
fi
tap=$(mktemp -t node_sdk_tap.XXXXXX)
trap 'rm -f "$tap"' EXIT

echo "=== node --test ${tests[*]} (@bandwidth/webrtc $(node -p 'require("@bandwidth/webrtc/package.json").version'), $PATCHBAY_BIN)" >&2
status=0
node --test --test-concurrency=1 \
  --test-reporter=spec --test-reporter-destination=stderr \
  --test-reporter=tap --test-reporter-destination="$tap" \
  "$@" "${tests[@]}" || status=$?

# The TAP reporter ends with "# tests N", "# pass N", "# fail N", "# cancelled N",
# "# skipped N", "# todo N".
count() { sed -n "s/^# $1 \([0-9][0-9]*\)$/\1/p" "$tap" | tail -n1; }
total=$(count tests)
passed=$(count pass)
failed=$(count fail)
cancelled=$(count cancelled)
skipped=$(count skipped)
todo=$(count todo)
total=${total:-0} passed=${passed:-0} failed=${failed:-0} cancelled=${cancelled:-0} skipped=${skipped:-0} todo=${todo:-0}

if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$cancelled" -ne 0 ]; then
  echo "node-sdk: $passed passed, $((failed + cancelled)) failed (node --test exited $status)" >&2
  exit "$((status ? status : 1))"
fi
if [ "$skipped" -ne 0 ] || [ "$todo" -ne 0 ]; then
  echo "node-sdk: $skipped skipped and $todo todo tests: a skip is not a pass" >&2
  exit 1
fi
if [ "$total" -eq 0 ] || [ "$passed" -eq 0 ] || [ "$passed" -ne "$total" ]; then
  echo "node-sdk: no test ran (tests=$total, passed=$passed)" >&2
  exit 1
fi
echo "node-sdk: $passed passed"
