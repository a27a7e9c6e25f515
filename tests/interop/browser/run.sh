#!/usr/bin/env bash
# Browser interop harness: installs Debian Chromium and Firefox ESR if missing, installs the pinned
# npm packages (Bandwidth's unmodified browser SDK, esbuild, playwright-core and puppeteer-core,
# neither of which downloads a browser),
# bundles page/, then runs selftest.mjs and every *.test.mjs here with node's test runner.
# Needs target/debug/patchbay (`cargo build`) and, for phone.test.mjs, the test phone
# target/debug/examples/phone, which it builds if missing (`cargo build --example phone`), and for
# switchboard.test.mjs the demo backend target/debug/examples/switchboard and for demo.test.mjs
# target/debug/examples/demo (built likewise).
# Exits non-zero on any failure, and also when no test ran.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PHONE_BIN:-}" ] && [ ! -x ../../../target/debug/examples/phone ]; then
  echo "=== building the test phone (examples/phone.rs)"
  (cd ../../.. && cargo build --example phone)
fi
if [ -z "${DEMO_BIN:-}" ] && [ ! -x ../../../target/debug/examples/demo ]; then
  echo "=== building the demo backend (examples/demo.rs)"
  (cd ../../.. && cargo build --example demo)
fi
if [ -z "${SWITCHBOARD_BIN:-}" ] && [ ! -x ../../../target/debug/examples/switchboard ]; then
  echo "=== building the switchboard demo backend (examples/switchboard.rs)"
  (cd ../../.. && cargo build --example switchboard)
fi

export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM_PATH" ]; then
  echo "=== installing chromium (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
"$CHROMIUM_PATH" --version 2>/dev/null | grep -i chromium || true

# The softphone of softphone.test.mjs (baresip.mjs builds its small module with cc).
if ! command -v "${BARESIP_BIN:-baresip}" >/dev/null 2>&1; then
  echo "=== installing baresip-core (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq baresip-core >/dev/null
fi

# nginx for cluster_loss.test.mjs (balancer.mjs runs it unprivileged in a temporary prefix).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "=== installing nginx (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nginx >/dev/null
fi

# ip, tc and nft for thin_link.test.mjs, lossy_link.test.mjs and one_viewer.test.mjs (netns.mjs: a
# network namespace with a shaped or lossy veth; each fails, saying why, without them or without root).
if ! command -v nft >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  echo "=== installing iproute2 and nftables (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iproute2 nftables >/dev/null
fi

# Firefox ESR for firefox.test.mjs (driven over WebDriver BiDi by puppeteer-core).
export FIREFOX_PATH=${FIREFOX_PATH:-/usr/bin/firefox-esr}
if [ ! -x "$FIREFOX_PATH" ]; then
  echo "=== installing firefox-esr (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq firefox-esr >/dev/null
fi
"$FIREFOX_PATH" --version 2>/dev/null || true

# npm packages; skip `npm ci` when node_modules already matches the lock file.
stamp=node_modules/.patchbay-lock.sha256
if [ -f package-lock.json ]; then
  want=$(sha256sum package-lock.json package.json | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "=== npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
  fi
else
  echo "=== npm install (no package-lock.json yet)"
  npm install --no-audit --no-fund --loglevel=error
fi

echo "=== bundling page/ with esbuild"
npm run --silent build

shopt -s nullglob
tests=(selftest.mjs ./*.test.mjs)
echo "=== node --test ${tests[*]}"
tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
status=0
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination="$tap" "${tests[@]}" || status=$?

count() { sed -n "s/^# $1 \([0-9][0-9]*\)$/\1/p" "$tap" | tail -n1; }
total=$(count tests)
passed=$(count pass)
failed=$(count fail)
cancelled=$(count cancelled)
total=${total:-0} passed=${passed:-0} failed=${failed:-0} cancelled=${cancelled:-0}
failed=$((failed + cancelled))
echo "browser-interop: $passed passed, $failed failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ]; then
  exit "$((status ? status : 1))"
fi
if [ "$total" -eq 0 ] || [ "$passed" -eq 0 ]; then
  echo "no test ran" >&2
  exit 1
fi
