#!/usr/bin/env bash
# REST latency with one serving process and with three on one PostgreSQL database (issue 20),
# both behind the same nginx (round robin, HTTP/1.1 keep-alive to the upstreams), under
# examples/rest_load.rs's open-loop mixed load. One sitting: the modes alternate, ROUNDS times.
#
#   bash benches/cluster_rest.sh                  # 1000 req/s, 20 s, 2 rounds
#   RATE=500 ROUNDS=3 bash benches/cluster_rest.sh
#
# Environment: RATE (default 1000), DURATION (s, default 20), WARMUP (s, default 3), ROUNDS
# (default 2), PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432; a database is created
# per run from its `test` database and dropped after), SKIP_BUILD=1 (reuse the release
# binaries). Needs nginx, psql and jq.
set -euo pipefail

cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-2}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin patchbay --example rest_load
fi
BIN=target/release/patchbay
LOAD=target/release/examples/rest_load
[[ -x $BIN && -x $LOAD && -x $NGINX ]] || { echo "missing $BIN, $LOAD or nginx" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_cluster_rest.XXXXXX)
mkdir -p "$WORK/tmp"
PIDS=()
PG_DB=""
stop_all() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    if [[ -n $PG_DB ]]; then
        psql "$PG_ADMIN_URL/test" -q -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    PG_DB=""
}
trap 'stop_all; rm -rf "$WORK"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

RESULTS=()
run() {
    local nodes=$1 round=$2
    echo
    echo "=== $nodes process(es), round $round: ${RATE}/s for ${DURATION}s (warm-up ${WARMUP}s) ==="
    PG_DB="pb_cluster_rest_$(date +%s)_$$"
    psql "$PG_ADMIN_URL/test" -q -c "CREATE DATABASE $PG_DB" >/dev/null
    local db="$PG_ADMIN_URL/$PG_DB"
    local creds
    creds=$("$BIN" account create load --json --database-url "$db" 2>/dev/null)
    local upstreams=""
    for n in $(seq 1 "$nodes"); do
        # Every connection comes from nginx on 127.0.0.1: the per-address cap is the total.
        "$BIN" serve --database-url "$db" --data-dir "$WORK/node$n" --listen 127.0.0.1:0 \
            --cluster-address 127.0.0.1 --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 \
            --rtp-ports 0-0 --http-max-connections-per-ip 4096 \
            >"$WORK/node$n.out" 2>"$WORK/node$n.err" &
        PIDS+=($!)
        local url=""
        for _ in $(seq 1 300); do
            url=$(sed -n 's|^patchbay listening on http://\(.*\)$|\1|p' "$WORK/node$n.out" | head -n1)
            [[ -n $url ]] && break
            kill -0 "${PIDS[-1]}" 2>/dev/null || break
            sleep 0.1
        done
        [[ -n $url ]] || { cat "$WORK/node$n.err" >&2; exit 1; }
        upstreams+="        server $url;"$'\n'
    done
    local port
    port=$(free_port)
    cat >"$WORK/nginx.conf" <<EOF
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    upstream patchbay {
$upstreams        keepalive 256;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://patchbay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
EOF
    "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx.err" &
    PIDS+=($!)
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    echo "loadavg before: $(cat /proc/loadavg)"
    set +e
    "$LOAD" --url "http://127.0.0.1:$port" --account "$(jq -r .accountId <<<"$creds")" \
        --username "$(jq -r .username <<<"$creds")" --password "$(jq -r .password <<<"$creds")" \
        --rate "$RATE" --duration "${DURATION}s" --warmup "${WARMUP}s" \
        --label "nodes=$nodes round=$round" | tee "$WORK/load.txt"
    local status=${PIPESTATUS[0]}
    set -e
    echo "loadavg after: $(cat /proc/loadavg)"
    for n in $(seq 1 "$nodes"); do
        echo "node $n: $(grep -c -E 'WARN|ERROR' "$WORK/node$n.err" || true) warnings/errors"
    done
    stop_all
    [[ $status -eq 0 ]] || echo "load tool exited with status $status" >&2
    RESULTS+=("$(grep '^RESULT ' "$WORK/load.txt" || echo "RESULT {\"label\":\"nodes=$nodes round=$round\",\"failed\":true}")")
}

for round in $(seq 1 "$ROUNDS"); do
    run 1 "$round"
    run 3 "$round"
done

echo
echo "=== results (rate ${RATE}/s, ${DURATION}s) ==="
for r in "${RESULTS[@]}"; do
    echo "$r"
done
