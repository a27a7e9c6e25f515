#!/usr/bin/env bash
# Metrics and request logging overhead (issue 12): the REST and media load benchmarks with both
# on (the defaults: --metrics true, RUST_LOG=info) and both off (--metrics false, RUST_LOG=warn:
# no recorder, and the INFO request span is never created), alternating in one sitting, ROUNDS
# times each (the order of on/off flips every round). Prints every run's figures, then the
# medians and the on/off ratios.
#
#   bash benches/metrics_overhead.sh                 # builds release first
#   SKIP_BUILD=1 ROUNDS=5 bash benches/metrics_overhead.sh
#
# Environment: ROUNDS (default 3), REST_RATE (default 1000), REST_DURATION (default 15),
# MEDIA_VARIANT (default 4x5av), MEDIA_DURATION (default 15), SKIP_BUILD=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
REST_RATE=${REST_RATE:-1000}
REST_DURATION=${REST_DURATION:-15}
MEDIA_VARIANT=${MEDIA_VARIANT:-4x5av}
MEDIA_DURATION=${MEDIA_DURATION:-15}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release --bin patchbay --example rest_load --example media_load
fi
OUT=$(mktemp -d /tmp/pb_metrics_overhead.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

run() { # run MODE KIND
    local mode=$1 kind=$2 args log
    if [[ $mode == on ]]; then args=""; log=info; else args="--metrics false"; log=warn; fi
    if [[ $kind == rest ]]; then
        SKIP_BUILD=1 BACKENDS=sqlite RATE=$REST_RATE DURATION=$REST_DURATION \
            SERVER_ARGS="$args" SERVER_RUST_LOG=$log bash benches/rest_load.sh >"$OUT/run.txt" 2>&1 || true
        grep '^RESULT ' "$OUT/run.txt" | tail -n1 | sed "s/^RESULT /$mode rest /" >>"$OUT/results.txt"
    else
        SKIP_BUILD=1 VARIANTS=$MEDIA_VARIANT DURATION=$MEDIA_DURATION RELAY_DURATION=0 \
            SERVER_ARGS="$args" SERVER_RUST_LOG=$log bash benches/media_load.sh >"$OUT/run.txt" 2>&1 || true
        grep '^RESULT ' "$OUT/run.txt" | tail -n1 | sed "s/^RESULT /$mode media /" >>"$OUT/results.txt"
    fi
    tail -n1 "$OUT/results.txt" | cut -c1-160
}

for round in $(seq 1 "$ROUNDS"); do
    if (( round % 2 )); then order="on off"; else order="off on"; fi
    for kind in rest media; do
        for mode in $order; do
            echo "round $round: $kind $mode (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
            run "$mode" "$kind"
        done
    done
done

python3 - "$OUT/results.txt" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, kind, payload = line.split(" ", 2)
    r = json.loads(payload)
    if kind == "rest":
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
    print(f"\n{kind}: median of {len(modes.get('on', []))} on / {len(modes.get('off', []))} off runs")
    keys = next(iter(modes.values()))[0].keys()
    for k in keys:
        med = {}
        for mode in ("on", "off"):
            xs = [v[k] for v in modes.get(mode, []) if isinstance(v.get(k), (int, float))]
            med[mode] = statistics.median(xs) if xs else None
        ratio = (med["on"] / med["off"]) if med["on"] is not None and med["off"] else None
        ratio_s = f"{ratio:.3f}" if ratio is not None else "-"
        print(f"  {k}: on {med['on']}  off {med['off']}  on/off {ratio_s}")
EOF
