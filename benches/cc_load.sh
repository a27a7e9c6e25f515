#!/usr/bin/env bash
# Contact-centre load (issue #13 item 6): the release server with a fresh data dir and SIP on,
# and examples/cc_load.rs against it: N calls of caller / agent / supervisor with the whisper
# wiring, audio only (real Opus), PHONE_PERCENT % of the callers being phones through the SIP
# bridge. One fresh server per call count; the largest count with zero loss is reported as
# calls per core.
#
#   benches/cc_load.sh                          # CALLS="10 20 40 60 80", 20 s each
#   CALLS="40" PHONE_PERCENT=50 benches/cc_load.sh
#   MISWIRE=1 CALLS=4 benches/cc_load.sh        # self-test: the wiring check must fail
#
# Environment: CALLS (list), PHONE_PERCENT (default 25), DURATION (s, default 20), WARMUP
# (default 3), LOAD_ARGS (extra tool arguments), SERVER_ARGS (extra server arguments),
# SERVER_RUST_LOG (default warn), SKIP_BUILD=1 (reuse binaries), PROFILE (target/PROFILE holds
# the binaries; default release), STOP_AFTER_LOSS (default 1: stop the ramp after the first
# count with loss), MISWIRE=1 (pass --miswire: every run must then exit 1).
# Exit status: 1 if a run saw a wiring violation (or, with MISWIRE=1, if one did not).
set -euo pipefail

cd "$(dirname "$0")/.."
CALLS=${CALLS:-"10 20 40 60 80"}
PHONE_PERCENT=${PHONE_PERCENT:-25}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
SERVER_ARGS=${SERVER_ARGS:-}
SERVER_RUST_LOG=${SERVER_RUST_LOG:-warn}
LOAD_ARGS=${LOAD_ARGS:-}
STOP_AFTER_LOSS=${STOP_AFTER_LOSS:-1}
MISWIRE=${MISWIRE:-}

PROFILE=${PROFILE:-release}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    # target/debug is cargo's `dev` profile.
    cargo build --profile "$([[ $PROFILE == debug ]] && echo dev || echo "$PROFILE")" \
        --example cc_load --bin patchbay
fi
BIN=target/$PROFILE/patchbay
LOAD=target/$PROFILE/examples/cc_load
[[ -x $BIN && -x $LOAD ]] || { echo "missing $BIN or $LOAD" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_cc_load.XXXXXX)
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

CORES=$(nproc)
RESULTS=()
BEST=0
WIRING_FAILED=0
for calls in $CALLS; do
    phones=$(( (calls * PHONE_PERCENT + 50) / 100 ))
    echo
    echo "=== $calls calls ($phones phone callers), ${DURATION}s (warmup ${WARMUP}s) ==="
    DATA="$WORK/data-$calls"
    OUT="$WORK/server-$calls.out"
    ERR="$WORK/server-$calls.err"
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
    SIP=$(sed -n 's/^patchbay SIP on \([^ ]*\) .*/\1/p' "$OUT" | head -n1)
    USERNAME=$(sed -n 's/^ *username: *//p' "$OUT" | head -n1)
    PASSWORD=$(sed -n 's/^ *password: *//p' "$OUT" | head -n1)
    if [[ -z $URL || -z $SIP || -z $USERNAME || -z $PASSWORD ]]; then
        echo "server did not start (or printed no dev credentials or SIP address):" >&2
        cat "$OUT" "$ERR" >&2
        exit 1
    fi
    echo "server pid $SERVER_PID at $URL, SIP $SIP; loadavg before: $(cat /proc/loadavg)"

    set +e
    # shellcheck disable=SC2086
    "$LOAD" --url "$URL" --sip "$SIP" --account dev --username "$USERNAME" --password "$PASSWORD" \
        --duration "${DURATION}s" --warmup "${WARMUP}s" --server-pid "$SERVER_PID" \
        --calls "$calls" --phones "$phones" --label "cc-$calls" ${MISWIRE:+--miswire} $LOAD_ARGS \
        | tee "$WORK/load-$calls.txt"
    STATUS=${PIPESTATUS[0]}
    set -e
    echo "loadavg after: $(cat /proc/loadavg)"
    echo "server stderr: $(wc -l <"$ERR") lines, warnings/errors: $(grep -c -E 'WARN|ERROR' "$ERR" || true)"
    grep -E 'WARN|ERROR' "$ERR" | head -n 5 || true
    cleanup
    RESULT=$(sed -n 's/^RESULT //p' "$WORK/load-$calls.txt")
    if [[ -n $MISWIRE ]]; then
        if [[ $STATUS -eq 1 ]]; then
            echo "miswire self-test: the tool reported the violation (exit 1), as it must"
        else
            echo "miswire self-test FAILED: the tool exited $STATUS" >&2
            WIRING_FAILED=1
        fi
    elif [[ $STATUS -eq 1 ]]; then
        echo "WIRING VIOLATION at $calls calls" >&2
        WIRING_FAILED=1
    elif [[ $STATUS -ne 0 ]]; then
        echo "load tool failed with status $STATUS" >&2
    fi
    [[ -n $RESULT ]] || RESULT="{\"label\":\"cc-$calls\",\"calls\":$calls,\"failed\":true}"
    RESULTS+=("$RESULT")
    if [[ $(jq -r '.zero_loss // false' <<<"$RESULT") == true && $STATUS -eq 0 ]]; then
        BEST=$calls
    elif [[ $STOP_AFTER_LOSS == 1 && -z $MISWIRE ]]; then
        echo "loss at $calls calls: the ramp stops here"
        break
    fi
done

echo
echo "=== results (${DURATION}s each, $CORES cores shared by the server and the tool) ==="
printf '%s\n' "calls | phones | zero loss | violations | browser loss % | seq gaps | phone pkts short | underruns | server CPU % | rcvd pkts / server CPU-s | fwd pkts (server) / CPU-s | audio p50 / p99 ms | RSS MB | tool CPU s | tool skipped slots"
for r in "${RESULTS[@]}"; do
    jq -r '[.calls, .phone_callers, .zero_loss, .wiring_violations, .browser_loss_pct, .rtp_seq_gaps,
            .phones.pkts_short, ((.server.underruns_uplink // 0) + (.server.underruns_downlink // 0)),
            .server_cpu_pct, .received_pkts_per_server_cpu_s, .server_fwd_pkts_per_server_cpu_s,
            "\(.latency_audio_browser_to_browser.p50_ms) / \(.latency_audio_browser_to_browser.p99_ms)",
            .server_rss_mb, .tool_cpu_s, .tool_skipped_slots] | map(tostring) | join(" | ")' <<<"$r" 2>/dev/null || echo "$r"
done
for r in "${RESULTS[@]}"; do
    echo "RESULT $r"
done
if [[ -z $MISWIRE ]]; then
    echo "largest call count with zero loss: $BEST ($(awk -v b="$BEST" -v c="$CORES" 'BEGIN {printf "%.1f", b / c}') calls per core on $CORES cores, load tool on the same cores)"
fi
echo "loadavg: $(cat /proc/loadavg)"
exit $WIRING_FAILED
