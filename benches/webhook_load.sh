#!/usr/bin/env bash
# Webhook outbox benchmark (issue #10). For each backend: a fresh database and account, the
# server, then
#   1. throughput: examples/webhook_load.rs churns devices of participants with a callbackUrl
#      (onConnect + onDisconnect per cycle) towards its local receiver, and reports the events
#      per second delivered and how long the backlog took to drain;
#   2. REST p99: examples/rest_load.rs alone, then beside webhook_load's device churn with its
#      webhooks going to a live local receiver, then to a dead one (it accepts and never
#      answers, or a refused port): the last two runs differ only in the receiver.
#
#   benches/webhook_load.sh                            # sqlite and postgres, release build
#   PROFILE=debug BACKENDS=sqlite benches/webhook_load.sh
#
# Environment: PROFILE (release|debug, default release), BACKENDS (default "sqlite postgres"),
# DURATION (seconds of churn / of measured REST load, default 20), DEVICES (default 64),
# REST_RATE (req/s, default 1000), DEAD (hang|refuse, default hang), CHURN_RATE (cycles/s during
# the REST runs, default 100), PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432),
# SKIP_BUILD=1 (reuse existing binaries), SERVER_FLAGS (more flags for `patchbay serve`), MODES
# (the REST runs, default "quiet local $DEAD"; empty: throughput only).
set -euo pipefail

cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
BACKENDS=${BACKENDS:-"sqlite postgres"}
DURATION=${DURATION:-20}
DEVICES=${DEVICES:-64}
REST_RATE=${REST_RATE:-1000}
DEAD=${DEAD:-hang}
CHURN_RATE=${CHURN_RATE:-100}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}
SERVER_FLAGS=${SERVER_FLAGS:-}
MODES=${MODES-"quiet local $DEAD"}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    if [[ $PROFILE == release ]]; then
        cargo build --release --bin patchbay --example webhook_load --example rest_load
    else
        cargo build --bin patchbay --example webhook_load --example rest_load
    fi
fi
BIN=target/$PROFILE/patchbay
HOOKS=target/$PROFILE/examples/webhook_load
REST=target/$PROFILE/examples/rest_load
[[ -x $BIN && -x $HOOKS && -x $REST ]] || { echo "missing $BIN, $HOOKS or $REST" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_webhook_load.XXXXXX)
SERVER_PID=""
PG_DB=""
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    if [[ -n $PG_DB ]]; then
        psql "$PG_ADMIN_URL/test" -q -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    PG_DB=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

# start_server NAME: a fresh database and account, the server; sets URL, ACCOUNT, USERNAME, PASSWORD.
start_server() {
    local name=$1 db
    case $backend in
        sqlite) db="sqlite://$WORK/$name.db?mode=rwc" ;;
        postgres)
            PG_DB="pb_hooks_$(date +%s)_$$"
            psql "$PG_ADMIN_URL/test" -q -c "CREATE DATABASE $PG_DB" >/dev/null
            db="$PG_ADMIN_URL/$PG_DB"
            ;;
        *) echo "unknown backend $backend" >&2; exit 1 ;;
    esac
    local creds
    creds=$("$BIN" account create load --json --database-url "$db" 2>"$WORK/$name-account.log")
    ACCOUNT=$(jq -r .accountId <<<"$creds")
    USERNAME=$(jq -r .username <<<"$creds")
    PASSWORD=$(jq -r .password <<<"$creds")
    # The receivers are on this machine: deliveries to loopback must be allowed (issue 22).
    # shellcheck disable=SC2086
    RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:0 --media-listen 127.0.0.1:0 \
        --sip-listen 127.0.0.1:0 --database-url "$db" --webhook-allow-network 127.0.0.1 \
        $SERVER_FLAGS >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$WORK/$name.out" | head -n1)
        [[ -n $URL ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $URL ]] || { echo "server did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1; }
}
creds_args() { echo --url "$URL" --account "$ACCOUNT" --username "$USERNAME" --password "$PASSWORD"; }

RESULTS=()
for backend in $BACKENDS; do
    echo
    echo "=== $backend: throughput to a local receiver ($DEVICES devices churning for ${DURATION}s) ==="
    start_server "$backend-throughput"
    # shellcheck disable=SC2046
    "$HOOKS" $(creds_args) --receiver local --devices "$DEVICES" --duration "${DURATION}s" \
        --label "$backend" | tee "$WORK/throughput-$backend.txt" || true
    RESULTS+=("$(grep '^RESULT ' "$WORK/throughput-$backend.txt" || echo "RESULT {\"label\":\"$backend throughput\",\"failed\":true}")")
    cleanup

    # REST alone, then beside device churn whose webhooks go to a live receiver, then to a dead
    # one: the last two differ only in the receiver.
    for mode in $MODES; do
        echo
        echo "=== $backend: REST at ${REST_RATE}/s; webhooks: $mode ==="
        start_server "$backend-rest-$mode"
        CHURN=""
        if [[ $mode != quiet ]]; then
            # shellcheck disable=SC2046
            "$HOOKS" $(creds_args) --receiver "$mode" --devices "$DEVICES" --cycles-per-sec "$CHURN_RATE" \
                --duration "$((DURATION + 30))s" --drain-timeout 1s --label "$backend churn $mode" \
                >"$WORK/churn-$backend-$mode.txt" 2>&1 &
            CHURN=$!
            sleep 2
        fi
        # shellcheck disable=SC2046
        "$REST" $(creds_args) --rate "$REST_RATE" --duration "${DURATION}s" --warmup 3s \
            --server-pid "$SERVER_PID" --label "$backend REST, webhooks $mode" | tee "$WORK/rest-$backend-$mode.txt" || true
        RESULTS+=("$(grep '^RESULT ' "$WORK/rest-$backend-$mode.txt" || echo "RESULT {\"label\":\"$backend $mode\",\"failed\":true}")")
        if [[ -n $CHURN ]]; then
            wait "$CHURN" || true
            cat "$WORK/churn-$backend-$mode.txt"
            RESULTS+=("$(grep '^RESULT ' "$WORK/churn-$backend-$mode.txt" || echo "RESULT {\"label\":\"$backend churn $mode\",\"failed\":true}")")
        fi
        cleanup
    done
done

echo
echo "=== results ($PROFILE build; load average $(cut -d' ' -f1-3 /proc/loadavg)) ==="
for r in "${RESULTS[@]}"; do
    echo "$r"
done
