#!/usr/bin/env bash
# Media load benchmark: the release server with a fresh data dir, and examples/media_load.rs
# against it (synthetic SDK-like devices over the real WebSocket + UDP on 127.0.0.1), plus the
# raw UDP relay ceiling measured in the same run of the tool.
#
#   benches/media_load.sh                     # all variants below, 20 s each
#   VARIANTS="20av-4video" benches/media_load.sh
#
# Variants (sessions × participants, video publishers per session):
#   20av          1 × 20, every participant publishes audio+video (the issue's target mix)
#   20av-4video   1 × 20, all publish audio, 4 publish video (lighter: the tool shares the CPU)
#   4x5av         4 × 5, every participant publishes audio+video
#   5av           1 × 5, every participant publishes audio+video (small: debug builds)
#
# Environment: DURATION (seconds, default 20), WARMUP (default 3), RELAY_DURATION (default
# 10), VARIANTS, LOAD_ARGS (extra tool arguments), SERVER_ARGS (extra server arguments, e.g.
# "--media-shards 1"), SERVER_RUST_LOG (default warn),
# SKIP_BUILD=1 (reuse binaries), PROFILE (target/PROFILE holds the binaries; default release).
# LOAD_ARGS=--tcp has the devices use ICE over TCP instead of UDP (issue #11). A fresh server
# per variant.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
RELAY_DURATION=${RELAY_DURATION:-10}
VARIANTS=${VARIANTS:-"20av 20av-4video 4x5av"}
SERVER_ARGS=${SERVER_ARGS:-}
SERVER_RUST_LOG=${SERVER_RUST_LOG:-warn}
LOAD_ARGS=${LOAD_ARGS:-}

PROFILE=${PROFILE:-release}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    # target/debug is cargo's `dev` profile.
    cargo build --profile "$([[ $PROFILE == debug ]] && echo dev || echo "$PROFILE")" \
        --example media_load --bin patchbay
fi
BIN=target/$PROFILE/patchbay
LOAD=target/$PROFILE/examples/media_load
[[ -x $BIN && -x $LOAD ]] || { echo "missing $BIN or $LOAD" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_media_load.XXXXXX)
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

RESULTS=()
for variant in $VARIANTS; do
    case $variant in
        20av) ARGS="--sessions 1 --participants 20" ;;
        20av-4video) ARGS="--sessions 1 --participants 20 --video-publishers 4" ;;
        4x5av) ARGS="--sessions 4 --participants 5" ;;
        5av) ARGS="--sessions 1 --participants 5" ;;
        8x5av) ARGS="--sessions 8 --participants 5" ;;
        *) echo "unknown variant $variant" >&2; exit 1 ;;
    esac
    echo
    echo "=== $variant: $ARGS, ${DURATION}s (warmup ${WARMUP}s), relay ${RELAY_DURATION}s ==="
    DATA="$WORK/data-$variant"
    OUT="$WORK/server-$variant.out"
    ERR="$WORK/server-$variant.err"
    RUST_LOG=$SERVER_RUST_LOG "$BIN" serve --data-dir "$DATA" --listen 127.0.0.1:0 \
        --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 --rtp-ports 0-0 $SERVER_ARGS >"$OUT" 2>"$ERR" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$OUT" | head -n1)
        [[ -n $URL ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    USERNAME=$(sed -n 's/^ *username: *//p' "$OUT" | head -n1)
    PASSWORD=$(sed -n 's/^ *password: *//p' "$OUT" | head -n1)
    if [[ -z $URL || -z $USERNAME || -z $PASSWORD ]]; then
        echo "server did not start (or printed no dev credentials):" >&2
        cat "$OUT" "$ERR" >&2
        exit 1
    fi
    echo "server pid $SERVER_PID at $URL; loadavg before: $(cat /proc/loadavg)"

    set +e
    # shellcheck disable=SC2086
    "$LOAD" --url "$URL" --account dev --username "$USERNAME" --password "$PASSWORD" \
        --duration "${DURATION}s" --warmup "${WARMUP}s" --relay-duration "${RELAY_DURATION}s" \
        --server-pid "$SERVER_PID" --label "$variant" $ARGS $LOAD_ARGS | tee "$WORK/load-$variant.txt"
    STATUS=${PIPESTATUS[0]}
    set -e
    echo "loadavg after: $(cat /proc/loadavg); server RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status" 2>/dev/null)"
    echo "server stderr: $(wc -l <"$ERR") lines, warnings/errors: $(grep -c -E 'WARN|ERROR' "$ERR" || true)"
    grep -E 'WARN|ERROR' "$ERR" | head -n 5 || true
    cleanup
    [[ $STATUS -eq 0 ]] || echo "load tool exited with status $STATUS" >&2
    RESULTS+=("$(grep '^RESULT ' "$WORK/load-$variant.txt" || echo "RESULT {\"label\":\"$variant\",\"failed\":true}")")
done

echo
echo "=== results (${DURATION}s each) ==="
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "loadavg: $(cat /proc/loadavg)"
