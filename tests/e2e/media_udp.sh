#!/usr/bin/env bash
# End to end over real UDP: a running `patchbay serve` and synthetic devices built on str0m
# (examples/media_load.rs) that speak signalling v3 over WebSockets like the browser SDK.
# 1 session × 4 participants with audio+video, one of them subscribed late by REST; fails
# unless every device connects, every (publisher, subscriber) pair receives media, and the late
# subscriber gets media after its PUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${PATCHBAY_BIN:-target/debug/patchbay}
load=${MEDIA_LOAD_BIN:-target/debug/examples/media_load}
[ -x "$load" ] || cargo build --example media_load
dir=$(mktemp -d)
out="$dir/stdout"
"$bin" serve --data-dir "$dir" --listen 127.0.0.1:0 --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 >"$out" 2>"$dir/stderr" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
url=$(sed -n 's/^patchbay listening on //p' "$out")
user=$(awk '/username:/ {print $2}' "$out")
pass=$(awk '/password:/ {print $2}' "$out")
[ -n "$url" ] && [ -n "$user" ] || { echo "server did not start"; cat "$dir/stderr"; exit 1; }
"$load" --url "$url" --username "$user" --password "$pass" --server-pid "$pid" \
  --sessions 1 --participants 4 --late 1 --duration 3s --warmup 1s --relay-duration 0s \
  --setup-timeout 30s --label e2e --check | grep -v '^RESULT' || { echo "--- server stderr"; tail -40 "$dir/stderr"; exit 1; }
