#!/usr/bin/env bash
# Metrics and request logging overhead (issue 12): the REST and media load benchmarks with both
# on and both off, alternating in one sitting, ROUNDS times each (the order of on/off flips
# every round). Prints every run's figures, then the medians and the on/off ratios.
#
#   "on"  = the defaults: --metrics true (a recorder, the per-route HTTP layer, the shard
#           meters publishing), RUST_LOG=info (INFO lines, each with its request's scope);
#   "off" = --metrics false (no recorder: every metric macro and shard-meter handle is a no-op,
#           no HTTP metrics layer) and RUST_LOG=warn (4xx lines are not written). The request-id
#           layers and the request's scope stay in both: the id is part of the API (the
#           `x-request-id` header and error bodies' `requestId`), not a log feature.
#
# Two modes:
#   MODE=wall (default): release binaries at full rate; server CPU % (REST) and forwarded
#     packets per server CPU-second (media). Noisy on a shared machine.
#   MODE=instructions: the server runs under `valgrind --tool=callgrind` and the figure is the
#     user-space instructions it executes per REST request / per forwarded media packet over a
#     window fixed by the script (`callgrind_control -z` at its start, `-d` at its end). The
#     load tools run natively. Repeatable under noise; counts no kernel time (syscalls).
#
#   bash benches/metrics_overhead.sh                 # builds release first
#   SKIP_BUILD=1 ROUNDS=5 bash benches/metrics_overhead.sh
#   SKIP_BUILD=1 MODE=instructions bash benches/metrics_overhead.sh
#
# Environment: ROUNDS (default 3), KINDS (default "rest media"), ARMS (default "on off"; also
# "metrics": metrics on, RUST_LOG=warn, and "logging": --metrics false, RUST_LOG=info), SKIP_BUILD=1, BIN (server binary, default
# target/release/patchbay; for named functions in the callgrind files give an unstripped one,
# e.g. built with `cargo rustc --release --bin patchbay -- -C strip=none`), KEEP=DIR (keep the
# callgrind files and logs there).
# wall: REST_RATE (default 1000), REST_DURATION (default 15), MEDIA_VARIANT (default 4x5av),
#   MEDIA_DURATION (default 15).
# instructions: IC_REST_RATE (req/s, default 60), IC_REST_DURATION (s, default 10),
#   IC_REST_ARGS (extra rest_load arguments; default "--sessions 10"), IC_MEDIA_ARGS (media_load
#   arguments; default "--sessions 1 --participants 4 --video-publishers 1 --late 0"),
#   IC_MEDIA_WINDOW (s, default 20).
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=${MODE:-wall}
ROUNDS=${ROUNDS:-3}
KINDS=${KINDS:-rest media}
ARMS=${ARMS:-on off}
REST_RATE=${REST_RATE:-1000}
REST_DURATION=${REST_DURATION:-15}
MEDIA_VARIANT=${MEDIA_VARIANT:-4x5av}
MEDIA_DURATION=${MEDIA_DURATION:-15}
IC_REST_RATE=${IC_REST_RATE:-60}
IC_REST_DURATION=${IC_REST_DURATION:-10}
IC_REST_ARGS=${IC_REST_ARGS:---sessions 10}
IC_MEDIA_ARGS=${IC_MEDIA_ARGS:---sessions 1 --participants 4 --video-publishers 1 --late 0}
IC_MEDIA_WINDOW=${IC_MEDIA_WINDOW:-20}
BIN=${BIN:-target/release/patchbay}
REST_LOAD=target/release/examples/rest_load
MEDIA_LOAD=target/release/examples/media_load
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin patchbay --example rest_load --example media_load
fi
OUT=$(mktemp -d /tmp/pb_metrics_overhead.XXXXXX)
SERVER_PID=""
LOAD_PID=""
stop_all() {
    for pid in $LOAD_PID $SERVER_PID; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PID=""
    LOAD_PID=""
}
trap 'stop_all; if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp -a "$OUT"/. "$KEEP"/; fi; rm -rf "$OUT"' EXIT

mode_args() { # sets SARGS and SLOG for an arm: on, off, metrics (only), logging (only)
    case $1 in
        on) SARGS=""; SLOG=info ;;
        off) SARGS="--metrics false"; SLOG=warn ;;
        metrics) SARGS=""; SLOG=warn ;;
        logging) SARGS="--metrics false"; SLOG=info ;;
        *) echo "unknown arm $1" >&2; exit 1 ;;
    esac
}

run_wall() { # run_wall on|off rest|media
    local mode=$1 kind=$2
    mode_args "$mode"
    if [[ $kind == rest ]]; then
        SKIP_BUILD=1 BACKENDS=sqlite RATE=$REST_RATE DURATION=$REST_DURATION \
            SERVER_ARGS="$SARGS" SERVER_RUST_LOG=$SLOG bash benches/rest_load.sh >"$OUT/run.txt" 2>&1 || true
    else
        SKIP_BUILD=1 VARIANTS=$MEDIA_VARIANT DURATION=$MEDIA_DURATION RELAY_DURATION=0 \
            SERVER_ARGS="$SARGS" SERVER_RUST_LOG=$SLOG bash benches/media_load.sh >"$OUT/run.txt" 2>&1 || true
    fi
    grep '^RESULT ' "$OUT/run.txt" | tail -n1 | sed "s/^RESULT /$mode $kind /" >>"$OUT/results.txt"
    tail -n1 "$OUT/results.txt" | cut -c1-160
}

# Waits (up to $2 seconds) for a line matching $3 in file $1; fails if the server died.
wait_for_line() {
    local file=$1 secs=$2 pattern=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        grep -q -E "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Starts the server under callgrind (counting from the start; the window is zeroed later).
start_callgrind() { # start_callgrind TAG RUST_LOG ARGS...
    local tag=$1 log=$2
    shift 2
    RUST_LOG=$log valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$tag.%p" \
        "$BIN" serve --listen 127.0.0.1:0 --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 \
        --rtp-ports 0-0 "$@" >"$OUT/$tag.out" 2>"$OUT/$tag.err" &
    SERVER_PID=$!
    if ! wait_for_line "$OUT/$tag.out" 300 '^patchbay listening on http'; then
        echo "server did not start:" >&2
        tail -n 20 "$OUT/$tag.err" >&2
        exit 1
    fi
    URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$OUT/$tag.out" | head -n1)
}

# Dumps the counters since the last zeroing and prints the dump's total instructions.
dump_ir() { # dump_ir TAG
    local tag=$1 file
    callgrind_control -d "$SERVER_PID" >/dev/null
    file=$(ls -t "$OUT"/cg."$tag"."$SERVER_PID".* 2>/dev/null | head -n1)
    [[ -n $file ]] || { echo "no callgrind dump" >&2; exit 1; }
    echo "$file" >"$OUT/last_dump"
    awk '/^summary:/ {print $2; exit}' "$file"
}

run_ic() { # run_ic on|off rest|media
    local mode=$1 kind=$2 tag="$1-$2-$3" ir t0 t1
    mode_args "$mode"
    if [[ $kind == rest ]]; then
        local db="sqlite://$OUT/$tag.db?mode=rwc" creds
        creds=$("$BIN" account create load --json --database-url "$db" 2>/dev/null)
        # shellcheck disable=SC2086
        start_callgrind "$tag" "$SLOG" --database-url "$db" $SARGS
        # shellcheck disable=SC2086
        "$REST_LOAD" --url "$URL" --account "$(jq -r .accountId <<<"$creds")" \
            --username "$(jq -r .username <<<"$creds")" --password "$(jq -r .password <<<"$creds")" \
            --rate "$IC_REST_RATE" --duration "${IC_REST_DURATION}s" --warmup 0s --timeout 60s \
            --drain 120s $IC_REST_ARGS >"$OUT/$tag.load" 2>&1 &
        LOAD_PID=$!
        wait_for_line "$OUT/$tag.load" 600 '^  pool: ' || { echo "pool not built" >&2; cat "$OUT/$tag.load" >&2; exit 1; }
        # The first request of the window is sent 50 ms after this line.
        callgrind_control -z "$SERVER_PID" >/dev/null
        wait "$LOAD_PID" || true
        LOAD_PID=""
        ir=$(dump_ir "$tag")
        local result
        result=$(grep '^RESULT ' "$OUT/$tag.load" | sed 's/^RESULT //')
        [[ -n $result ]] || { echo "no RESULT from rest_load" >&2; cat "$OUT/$tag.load" >&2; exit 1; }
        echo "$mode rest {\"ir\": $ir, \"dump\": \"$(cat "$OUT/last_dump")\", \"load\": $result}" >>"$OUT/results.txt"
    else
        # shellcheck disable=SC2086
        start_callgrind "$tag" "$SLOG" --data-dir "$OUT/$tag.data" $SARGS
        local user pass
        user=$(sed -n 's/^ *username: *//p' "$OUT/$tag.out" | head -n1)
        pass=$(sed -n 's/^ *password: *//p' "$OUT/$tag.out" | head -n1)
        # The tool's measured window starts 3 s after "all devices ... hearing everyone" and
        # lasts window + 8 s; the script's window is [that line + 5 s, + IC_MEDIA_WINDOW].
        # shellcheck disable=SC2086
        "$MEDIA_LOAD" --url "$URL" --account dev --username "$user" --password "$pass" \
            --duration "$((IC_MEDIA_WINDOW + 8))s" --warmup 3s --relay-duration 0s \
            --setup-timeout 600s $IC_MEDIA_ARGS >"$OUT/$tag.load" 2>&1 &
        LOAD_PID=$!
        wait_for_line "$OUT/$tag.load" 900 '^(all devices publishing|WARNING: not every device)' ||
            { echo "media never flowed" >&2; cat "$OUT/$tag.load" >&2; exit 1; }
        sleep 5
        # The window: from the zeroing's answer to the dump's request (each acts between its
        # request and its answer, so the two offsets roughly cancel).
        callgrind_control -z "$SERVER_PID" >/dev/null
        t0=$(date +%s.%N)
        sleep "$IC_MEDIA_WINDOW"
        t1=$(date +%s.%N)
        ir=$(dump_ir "$tag")
        wait "$LOAD_PID" || true
        LOAD_PID=""
        local result
        result=$(grep '^RESULT ' "$OUT/$tag.load" | sed 's/^RESULT //')
        [[ -n $result ]] || { echo "no RESULT from media_load" >&2; cat "$OUT/$tag.load" >&2; exit 1; }
        echo "$mode media {\"ir\": $ir, \"dump\": \"$(cat "$OUT/last_dump")\", \"window_s\": $(echo "$t1 - $t0" | bc), \"tool_s\": $((IC_MEDIA_WINDOW + 8)), \"load\": $result}" >>"$OUT/results.txt"
    fi
    stop_all
    tail -n1 "$OUT/results.txt" | cut -c1-160
}

if [[ $MODE == instructions ]]; then
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
        { echo "MODE=instructions needs valgrind (callgrind)" >&2; exit 1; }
fi
for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order=$ARMS; else order=$(tr ' ' '\n' <<<"$ARMS" | tac | xargs); fi
    for kind in $KINDS; do
        for mode in $order; do
            echo "round $round: $kind $mode (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
            if [[ $MODE == instructions ]]; then run_ic "$mode" "$kind" "$round"; else run_wall "$mode" "$kind"; fi
        done
    done
done

python3 - "$OUT/results.txt" "$MODE" <<'PY'
import json, re, statistics, subprocess, sys

# Instructions attributed to metrics and request logging: the inclusive cost of their entry
# points in the dump (needs a binary with symbols; all zero with a stripped one).
TRACK = (r"^<patchbay::runtime::metrics::TrackHttp<S> as "
         r"tower_service::Service<http::request::Request<axum_core::body::Body>>>::call")
def attribute(dump):
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=calling",
                          "--threshold=100", dump], capture_output=True, text=True).stdout
    funcs, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+([*>])\s+(.*?)(?: \(([\d,]+)x\))?(?: \[[^\]]*\])?$", line)
        if not m:
            continue
        n, name = int(m.group(1).replace(",", "")), re.sub(r"^\?\?\?:", "", m.group(3))
        if m.group(2) == "*":
            cur = funcs.setdefault(name, {"incl": n, "callees": {}})
        elif cur is not None:
            cur["callees"][name] = cur["callees"].get(name, 0) + n
    incl = lambda pat: sum(v["incl"] for k, v in funcs.items() if re.search(pat, k))
    # The layer's future, less the route's future it awaits.
    FUT = r"^<patchbay::runtime::metrics::TrackHttpFuture<F> as core::future::future::Future>::poll$"
    track_own = sum(v["incl"] - sum(c for ck, c in v["callees"].items()
                                    if re.search(r"Oneshot<S,Req>|RouteFuture<E> as|MapResponseFuture|map_response", ck))
                    for k, v in funcs.items() if re.search(FUT, k))
    return {
        "metrics: HTTP layer": track_own + incl(TRACK + "$") + incl(
            r"^core::ptr::drop_in_place<patchbay::runtime::metrics::TrackHttpFuture<"),
        "metrics: store-operation histogram": incl(r"QueryTimer as core::ops::drop::Drop"),
        # Taking a histogram's handle (each store operation; the HTTP layer only the first time).
        "metrics: histogram handle lookups": incl(
            r"^<metrics_exporter_prometheus::recorder::PrometheusRecorder as metrics::recorder::Recorder>::register_histogram$"),
        "metrics: recorder upkeep (every 5 s)": incl(r"^patchbay::runtime::metrics::spawn_upkeep::\{\{closure\}\}$"),
        "metrics: shard meter publish (every 1 s)": incl(r"^patchbay::runtime::metrics::ShardMeter::publish$"),
        "logging: tracing subscriber (spans, events)": incl(
            r"^<tracing_subscriber::fmt::Subscriber<N,E,F,W> as tracing_core::subscriber::Subscriber>::"),
    }

rows = {}
for line in open(sys.argv[1]):
    mode, kind, payload = line.split(" ", 2)
    r = json.loads(payload)
    if sys.argv[2] == "instructions":
        load = r["load"]
        if kind == "rest":
            done = load.get("completed") or 0
            vals = {"instructions per request": r["ir"] / done if done else None,
                    "requests": done, "errors": load.get("errors")}
            units = done
        else:
            pb = load.get("patchbay") or {}
            pkts = (pb.get("forwarded_pkts") or 0) + (pb.get("forwarded_rtx_pkts") or 0)
            # Forwarded RTP + RTX packets per second over the tool's window (which holds the
            # script's), times the script's window.
            rate = pkts / r["tool_s"]
            vals = {"instructions per forwarded packet": r["ir"] / (rate * r["window_s"]) if rate else None,
                    "fwd pkt/s": rate, "loss %": pb.get("pkt_loss_pct")}
            units = rate * r["window_s"]
        if units:
            for name, ir in attribute(r["dump"]).items():
                vals[name] = ir / units
    elif kind == "rest":
        lat = r.get("latency_ms") or {}
        vals = {"server CPU %": r.get("server_cpu_pct"), "p50 ms": lat.get("p50"),
                "p99 ms": lat.get("p99"), "errors": r.get("errors")}
    else:
        pb = r.get("patchbay") or {}
        vals = {"fwd pkt/s": pb.get("forwarded_pps"),
                "server CPU %": pb.get("server_cpu_pct"),
                "fwd pkts / CPU-s": pb.get("fwd_pkts_per_server_cpu_s"),
                "audio p50 ms": (pb.get("latency_audio") or {}).get("p50_ms")}
    rows.setdefault(kind, {}).setdefault(mode, []).append(vals)
    print(mode, kind, vals)
for kind, modes in rows.items():
    print(f"\n{kind}: medians (" + ", ".join(f"{len(v)} {m}" for m, v in modes.items()) + " runs), ratio to off")
    keys = next(iter(modes.values()))[0].keys()
    for k in keys:
        med = {}
        for mode, vs in modes.items():
            xs = [v[k] for v in vs if isinstance(v.get(k), (int, float))]
            med[mode] = statistics.median(xs) if xs else None
        parts = []
        for mode, m in med.items():
            ratio = m / med["off"] if m is not None and med.get("off") else None
            parts.append(f"{mode} {m:.6g}" + (f" (x{ratio:.4f})" if ratio is not None and mode != "off" else "") if m is not None else f"{mode} -")
        print(f"  {k}: " + "  ".join(parts))
PY
