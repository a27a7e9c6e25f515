#!/usr/bin/env bash
# REST load benchmark: for each backend, a fresh database, a fresh account, the release server,
# and examples/rest_load.rs at a fixed open-loop rate against it.
#
#   benches/rest_load.sh                          # sqlite and postgres, 1000 req/s, 20 s
#   RATE=2000 BACKENDS=sqlite benches/rest_load.sh
#
# Environment: RATE (req/s, default 1000), DURATION (seconds, default 20), WARMUP (seconds,
# default 3), BACKENDS (default "sqlite postgres"), PG_ADMIN_URL (default
# postgres://postgres@127.0.0.1:5432, trust auth; databases are created from its `test`
# database and dropped afterwards), LOAD_ARGS (extra arguments for the load tool),
# SERVER_RUST_LOG (server log filter, default info), SERVER_ARGS (extra server arguments, e.g.
# "--metrics false"), SKIP_BUILD=1 (reuse existing binaries).
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
BACKENDS=${BACKENDS:-"sqlite postgres"}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}
SERVER_RUST_LOG=${SERVER_RUST_LOG:-info}
LOAD_ARGS=${LOAD_ARGS:-}
SERVER_ARGS=${SERVER_ARGS:-}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --examples
fi
BIN=target/release/patchbay
LOAD=target/release/examples/rest_load
[[ -x $BIN && -x $LOAD ]] || { echo "missing $BIN or $LOAD" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_rest_load.XXXXXX)
SERVER_PID=""
PG_DB=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    if [[ -n $PG_DB ]]; then
        psql "$PG_ADMIN_URL/test" -q -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    PG_DB=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT

RESULTS=()
for backend in $BACKENDS; do
    echo
    echo "=== backend: $backend, rate ${RATE}/s, duration ${DURATION}s (warmup ${WARMUP}s) ==="
    case $backend in
        sqlite)
            DB_URL="sqlite://$WORK/load-$$.db?mode=rwc"
            ;;
        postgres)
            PG_DB="pb_load_$(date +%s)_$$"
            psql "$PG_ADMIN_URL/test" -q -c "CREATE DATABASE $PG_DB" >/dev/null
            DB_URL="$PG_ADMIN_URL/$PG_DB"
            ;;
        *)
            echo "unknown backend $backend" >&2
            exit 1
            ;;
    esac

    CREDS=$("$BIN" account create load --json --database-url "$DB_URL" 2>"$WORK/account-$backend.log")
    ACCOUNT=$(jq -r .accountId <<<"$CREDS")
    USERNAME=$(jq -r .username <<<"$CREDS")
    PASSWORD=$(jq -r .password <<<"$CREDS")

    OUT="$WORK/server-$backend.out"
    ERR="$WORK/server-$backend.err"
    # shellcheck disable=SC2086
    RUST_LOG=$SERVER_RUST_LOG "$BIN" serve --listen 127.0.0.1:0 \
        --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 \
        --database-url "$DB_URL" $SERVER_ARGS >"$OUT" 2>"$ERR" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$OUT" | head -n1)
        [[ -n $URL ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $URL ]]; then
        echo "server did not start:" >&2
        cat "$ERR" >&2
        exit 1
    fi
    echo "server pid $SERVER_PID at $URL; loadavg before run: $(cat /proc/loadavg)"

    set +e
    # shellcheck disable=SC2086
    "$LOAD" --url "$URL" --account "$ACCOUNT" --username "$USERNAME" --password "$PASSWORD" \
        --rate "$RATE" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --server-pid "$SERVER_PID" --label "$backend" $LOAD_ARGS | tee "$WORK/load-$backend.txt"
    STATUS=${PIPESTATUS[0]}
    set -e
    echo "loadavg after run: $(cat /proc/loadavg); server RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status" 2>/dev/null)"
    echo "server stderr: $(wc -l <"$ERR") lines, warnings/errors: $(grep -c -E 'WARN|ERROR' "$ERR" || true)"
    grep -E 'WARN|ERROR' "$ERR" | head -n 5 || true
    cleanup
    [[ $STATUS -eq 0 ]] || echo "load tool exited with status $STATUS" >&2
    RESULTS+=("$(grep '^RESULT ' "$WORK/load-$backend.txt" || echo "RESULT {\"label\":\"$backend\",\"failed\":true}")")
done

echo
echo "=== results (rate ${RATE}/s, ${DURATION}s) ==="
for r in "${RESULTS[@]}"; do
    echo "$r"
done
