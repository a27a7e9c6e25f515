#!/usr/bin/env bash
# End to end over real UDP: a running `patchbay serve` with two media shards, and synthetic
# devices built on str0m (examples/media_load.rs) that speak signalling v3 over WebSockets like
# the browser SDK. Two runs, each failing unless every device connects, every (publisher,
# subscriber) pair receives media and each late subscriber gets media after its REST PUT:
# 1. 2 sessions × 3 participants with audio+video, one subscribed late;
# 2. a lobby: 3 sessions × 4 devices connect and publish before joining their session, so
#    devices placed on one shard must move to their session's shard with media flowing (the
#    server's log must show that they moved);
# 3. ICE over TCP: the devices of run 1 with active TCP candidates only (`--tcp`), so all media
#    crosses the server's passive TCP candidates (the server's log must show answered ICE-TCP
#    connections).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${PATCHBAY_BIN:-target/debug/patchbay}
load=${MEDIA_LOAD_BIN:-target/debug/examples/media_load}
[ -n "${MEDIA_LOAD_BIN:-}" ] || cargo build --example media_load # a no-op when current; never a stale tool
dir=$(mktemp -d)
out="$dir/stdout"
RUST_LOG=info,patchbay::runtime::media=debug "$bin" serve --data-dir "$dir" --listen 127.0.0.1:0 \
  --media-listen 127.0.0.1:0 --media-shards ${MEDIA_SHARDS:-2} --sip-listen 127.0.0.1:0 >"$out" 2>"$dir/stderr" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; [ -n "${KEEP_LOGS:-}" ] && cp "$dir/stderr" "$KEEP_LOGS"; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
url=$(sed -n 's/^patchbay listening on //p' "$out")
user=$(awk '/username:/ {print $2}' "$out")
pass=$(awk '/password:/ {print $2}' "$out")
[ -n "$url" ] && [ -n "$user" ] || { echo "server did not start"; cat "$dir/stderr"; exit 1; }
check() {
  "$load" --url "$url" --username "$user" --password "$pass" --server-pid "$pid" \
    --duration 5s --warmup 2s --relay-duration 0s --setup-timeout 30s --check "$@" |
    grep -v '^RESULT' || { echo "--- server stderr"; grep -v DEBUG "$dir/stderr" | tail -40; exit 1; }
}
check --sessions 2 --participants 3 --late 1 --label e2e
check --sessions 3 --participants 4 --late 1 --label e2e-lobby --lobby
check --sessions 2 --participants 3 --late 1 --label e2e-tcp --tcp
tcp=$(grep -ac "ICE-TCP connection answered" "$dir/stderr" || true)
echo "ICE-TCP connections answered: $tcp"
if [ "$tcp" -eq 0 ]; then
  echo "the --tcp run made no ICE-TCP connection: the TCP path was not exercised" >&2
  exit 1
fi
moves=$(grep -ac "device moves" "$dir/stderr" || true)
echo "devices moved between shards: $moves"
if [ "$moves" -eq 0 ]; then
  echo "the lobby run moved no device: shard placement was not exercised" >&2
  exit 1
fi
