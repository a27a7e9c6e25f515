#!/usr/bin/env bash
# Smoke run of the load tool's Janus mode (examples/media_load.rs --server janus) next to
# patchbay, through benches/media_load.sh: 1 session of 5 audio+video participants (3 of them
# subscribed late), 3 s measured, each server in the bench's network namespace (a veth address;
# Janus never gathers loopback candidates), with the tool's --check: every device connects,
# every (publisher, subscriber) pair receives media, every late subscriber gets media, no
# client error. Fails unless both servers' runs pass the check.
#
# Needs root (ip netns) and Debian's janus (`apt-get install -y janus`); without them it says
# SKIPPED and exits 77 (not a pass). Uses target/$PROFILE binaries (default debug), brought up to date
# by cargo first.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $(id -u) -ne 0 ]] || ! command -v janus >/dev/null || ! command -v ip >/dev/null; then
    echo "media_janus: SKIPPED (needs root, iproute2 and Debian's janus)"
    exit 77
fi
PROFILE=${PROFILE:-debug}
# Always through cargo (a no-op when current): a stale tool from an older tree lacks the mode.
cargo build --profile "$([[ $PROFILE == debug ]] && echo dev || echo "$PROFILE")" \
    --example media_load --bin patchbay
out=$(mktemp)
trap 'rm -f "$out"' EXIT
SERVERS="patchbay janus" VARIANTS=5av REPS=1 DURATION=3 WARMUP=1 RELAY_DURATION=0 \
    PROFILE=$PROFILE SKIP_BUILD=1 LOAD_ARGS=--check bash benches/media_load.sh >"$out" 2>&1 || true
grep -v '^RESULT' "$out" | grep -E '^(===|---|publishers sent|frames:|media_load|load tool|all devices|WARNING)' || true
passed=$(grep -c '^media_load check: 1 passed' "$out" || true)
echo "media_janus: $passed of 2 runs passed the check (patchbay, janus)"
if [[ $passed -ne 2 ]]; then
    echo "--- output"
    tail -n 60 "$out"
    exit 1
fi
