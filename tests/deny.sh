#!/usr/bin/env bash
# cargo-deny with deny.toml: licenses (allow-list), bans (ring, openssl: one crypto library) and
# sources (crates.io only) of what ships. Installs cargo-deny if missing (`cargo install
# cargo-deny --locked`: about 5 CPU-minutes, measured 18.6 min wall on a busy 2-core machine).
# The advisories check needs the RustSec database from GitHub: it runs only with
# PATCHBAY_DENY_ADVISORIES=1 (where GitHub is reachable); otherwise this script says it did not
# run. Prints `deny: N passed, M failed`; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  echo "=== installing cargo-deny"
  cargo install cargo-deny --locked --quiet
fi
checks=(licenses bans sources)
if [ "${PATCHBAY_DENY_ADVISORIES:-}" = 1 ]; then
  checks+=(advisories)
else
  echo "advisories: NOT CHECKED (set PATCHBAY_DENY_ADVISORIES=1 where github.com/RustSec/advisory-db is reachable)"
fi
passed=0
failed=0
for c in "${checks[@]}"; do
  if cargo deny --locked check "$c"; then
    passed=$((passed + 1))
    echo "ok: cargo deny check $c"
  else
    failed=$((failed + 1))
    echo "FAILED: cargo deny check $c"
  fi
done
echo "deny: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
