#!/usr/bin/env bash
# Media load benchmark: a server with a fresh state per run, and examples/media_load.rs against
# it (synthetic SDK-like devices over real WebSockets + UDP), plus the raw UDP relay ceiling
# measured by the same run of the tool, right after the server's phase.
#
#   benches/media_load.sh                     # patchbay and the relay, all variants, 20 s each
#   VARIANTS="20av-4video" benches/media_load.sh
#   SERVERS="patchbay janus relay" REPS=3 benches/media_load.sh   # side by side with Janus
#
# Variants (sessions × participants, video publishers per session):
#   20av          1 × 20, every participant publishes audio+video (the issue's target mix)
#   20av-4video   1 × 20, all publish audio, 4 publish video (lighter: the tool shares the CPU)
#   2x20av        2 × 20, all audio+video: two full sessions at once (one per shard)
#   4x5av         4 × 5, every participant publishes audio+video
#   8x5av         8 × 5, every participant publishes audio+video
#   5av           1 × 5, every participant publishes audio+video (small: debug builds)
#
# SERVERS (default "patchbay relay"): `patchbay` is the release server; `janus` is Debian's
# Janus (`apt-get install -y janus`) with the configuration in benches/janus/ (VideoRoom plugin
# and WebSocket transport only, `event_loops` = JANUS_EVENT_LOOPS, default the number of
# cores; the tool creates one room per session); `relay` has every run of the tool measure
# the raw UDP relay after the server's phase (RELAY_DURATION seconds), otherwise it is
# skipped. REPS repetitions (default 1); within a repetition each variant runs every server,
# in the listed order on odd repetitions and reversed on even ones, a fresh server each time.
# With more than one run, a table of medians per variant and server follows the raw results.
#
# Network namespace (NETNS=1, the default when SERVERS has janus; needs root): Janus 1.1.2
# skips loopback interfaces when gathering ICE candidates, so every server, the tool and the
# relay run inside a fresh network namespace holding a veth pair with the address NETNS_IP
# (default 10.213.0.1/24, no route out), and all media uses that address; signalling stays on
# the namespace's 127.0.0.1. The namespace is deleted on exit, failure or interrupt.
#
# Environment: DURATION (seconds, default 20), WARMUP (default 3), RELAY_DURATION (default
# 10), VARIANTS, REPS, SERVERS, LOAD_ARGS (extra tool arguments), SERVER_ARGS (extra patchbay
# arguments, e.g. "--media-shards 1"), SERVER_RUST_LOG (default warn), JANUS_EVENT_LOOPS,
# NETNS, NETNS_IP, SKIP_BUILD=1 (reuse binaries), PROFILE (target/PROFILE holds the binaries;
# default release). LOAD_ARGS=--tcp has the devices use ICE over TCP instead of UDP (issue
# #11; patchbay only).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
RELAY_DURATION=${RELAY_DURATION:-10}
VARIANTS=${VARIANTS:-"20av 20av-4video 4x5av"}
SERVERS=${SERVERS:-"patchbay relay"}
REPS=${REPS:-1}
SERVER_ARGS=${SERVER_ARGS:-}
SERVER_RUST_LOG=${SERVER_RUST_LOG:-warn}
LOAD_ARGS=${LOAD_ARGS:-}
JANUS_EVENT_LOOPS=${JANUS_EVENT_LOOPS:-$(nproc)}
NETNS_IP=${NETNS_IP:-10.213.0.1/24}

RUN_SERVERS=()
MEASURE_RELAY=0
for s in $SERVERS; do
    case $s in
        patchbay | janus) RUN_SERVERS+=("$s") ;;
        relay) MEASURE_RELAY=1 ;;
        *) echo "unknown server $s (patchbay, janus, relay)" >&2; exit 1 ;;
    esac
done
[[ ${#RUN_SERVERS[@]} -gt 0 ]] || { echo "SERVERS names no server (patchbay, janus)" >&2; exit 1; }
[[ $MEASURE_RELAY == 1 ]] || RELAY_DURATION=0
HAS_JANUS=0
[[ " ${RUN_SERVERS[*]} " == *" janus "* ]] && HAS_JANUS=1
NETNS=${NETNS:-$HAS_JANUS}
if [[ $HAS_JANUS == 1 && $NETNS != 1 ]]; then
    echo "janus needs NETNS=1 (it never gathers loopback candidates)" >&2
    exit 1
fi

PROFILE=${PROFILE:-release}
if [[ -z "${SKIP_BUILD:-}" ]]; then
    # target/debug is cargo's `dev` profile.
    cargo build --profile "$([[ $PROFILE == debug ]] && echo dev || echo "$PROFILE")" \
        --example media_load --bin patchbay
fi
BIN=target/$PROFILE/patchbay
LOAD=target/$PROFILE/examples/media_load
[[ -x $BIN && -x $LOAD ]] || { echo "missing $BIN or $LOAD" >&2; exit 1; }
JANUS_LIB=/usr/lib/x86_64-linux-gnu/janus
if [[ $HAS_JANUS == 1 ]]; then
    command -v janus >/dev/null || { echo "janus is not installed (apt-get install -y janus)" >&2; exit 1; }
    [[ -f $JANUS_LIB/plugins/libjanus_videoroom.so && -f $JANUS_LIB/transports/libjanus_websockets.so ]] ||
        { echo "janus's VideoRoom plugin or WebSocket transport is missing under $JANUS_LIB" >&2; exit 1; }
fi

WORK=$(mktemp -d /tmp/pb_media_load.XXXXXX)
SERVER_PID=""
NS=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
teardown() {
    cleanup
    if [[ -n $NS ]]; then
        ip netns del "$NS" 2>/dev/null || true
        NS=""
    fi
    rm -rf "$WORK"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# Prefix that runs a command in the namespace when there is one (`ip netns exec` execs the
# command, so `$!` is the server's own pid).
IN_NS=()
MEDIA_IP=127.0.0.1
VETH=""
if [[ $NETNS == 1 ]]; then
    NS=pbml$$
    VETH=pbml$$
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    ip link add "${VETH}a" netns "$NS" type veth peer name "${VETH}b" netns "$NS"
    ip -n "$NS" addr add "$NETNS_IP" dev "${VETH}a"
    ip -n "$NS" link set "${VETH}a" up
    ip -n "$NS" link set "${VETH}b" up
    MEDIA_IP=${NETNS_IP%/*}
    IN_NS=(ip netns exec "$NS")
    echo "network namespace $NS: ${VETH}a $NETNS_IP (veth to ${VETH}b, no route out); media on $MEDIA_IP"
fi

# Starts patchbay; sets SERVER_PID, URL, AUTH_ARGS.
start_patchbay() {
    local tag=$1
    local out="$WORK/server-$tag.out" err="$WORK/server-$tag.err"
    # shellcheck disable=SC2086
    RUST_LOG=$SERVER_RUST_LOG "${IN_NS[@]}" "$BIN" serve --data-dir "$WORK/data-$tag" --listen 127.0.0.1:0 \
        --media-listen "$MEDIA_IP:0" --sip-listen 127.0.0.1:0 --rtp-ports 0-0 $SERVER_ARGS >"$out" 2>"$err" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$out" | head -n1)
        [[ -n $URL ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    local username password
    username=$(sed -n 's/^ *username: *//p' "$out" | head -n1)
    password=$(sed -n 's/^ *password: *//p' "$out" | head -n1)
    if [[ -z $URL || -z $username || -z $password ]]; then
        echo "patchbay did not start (or printed no dev credentials):" >&2
        cat "$out" "$err" >&2
        exit 1
    fi
    AUTH_ARGS=(--server patchbay --username "$username" --password "$password")
}

# Starts Janus with benches/janus/ (placeholders filled in); sets SERVER_PID, URL, AUTH_ARGS.
start_janus() {
    local tag=$1
    local conf="$WORK/janus-$tag" lib="$WORK/janus-lib" port=8188
    mkdir -p "$conf" "$lib"/{plugins,transports,events,loggers}
    ln -sf "$JANUS_LIB/plugins/libjanus_videoroom.so" "$lib/plugins/"
    ln -sf "$JANUS_LIB/transports/libjanus_websockets.so" "$lib/transports/"
    for f in benches/janus/*.jcfg; do
        sed -e "s#@LIB@#$lib#g; s#@CONF@#$conf#g; s#@EVENT_LOOPS@#$JANUS_EVENT_LOOPS#g" \
            -e "s#@IFACE@#${VETH}a#g; s#@IP@#$MEDIA_IP#g; s#@WS_PORT@#$port#g" "$f" >"$conf/$(basename "$f")"
    done
    "${IN_NS[@]}" janus -F "$conf" -C "$conf/janus.jcfg" >"$WORK/server-$tag.out" 2>"$WORK/server-$tag.err" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 100); do
        if "${IN_NS[@]}" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            URL=ws://127.0.0.1:$port
            break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z $URL ]]; then
        echo "janus did not start:" >&2
        cat "$WORK/server-$tag.out" "$WORK/server-$tag.err" >&2
        exit 1
    fi
    AUTH_ARGS=(--server janus)
}

RESULTS=()
for rep in $(seq 1 "$REPS"); do
    order=("${RUN_SERVERS[@]}")
    if ((rep % 2 == 0)); then
        order=()
        for ((i = ${#RUN_SERVERS[@]} - 1; i >= 0; i--)); do order+=("${RUN_SERVERS[i]}"); done
    fi
    for variant in $VARIANTS; do
        case $variant in
            20av) ARGS="--sessions 1 --participants 20" ;;
            2x20av) ARGS="--sessions 2 --participants 20" ;;
            20av-4video) ARGS="--sessions 1 --participants 20 --video-publishers 4" ;;
            4x5av) ARGS="--sessions 4 --participants 5" ;;
            5av) ARGS="--sessions 1 --participants 5" ;;
            8x5av) ARGS="--sessions 8 --participants 5" ;;
            *) echo "unknown variant $variant" >&2; exit 1 ;;
        esac
        for server in "${order[@]}"; do
            tag="$variant-$server-$rep"
            echo
            echo "=== rep $rep/$REPS, $variant on $server: $ARGS, ${DURATION}s (warmup ${WARMUP}s), relay ${RELAY_DURATION}s ==="
            "start_$server" "$tag"
            echo "$server pid $SERVER_PID at $URL; loadavg before: $(cat /proc/loadavg)"
            set +e
            # shellcheck disable=SC2086
            "${IN_NS[@]}" "$LOAD" --url "$URL" "${AUTH_ARGS[@]}" --media-ip "$MEDIA_IP" \
                --duration "${DURATION}s" --warmup "${WARMUP}s" --relay-duration "${RELAY_DURATION}s" \
                --server-pid "$SERVER_PID" --label "$variant" $ARGS $LOAD_ARGS | tee "$WORK/load-$tag.txt"
            STATUS=${PIPESTATUS[0]}
            set -e
            echo "loadavg after: $(cat /proc/loadavg); server RSS: $(awk '/VmRSS/ {print $2, $3}' "/proc/$SERVER_PID/status" 2>/dev/null)"
            ERR="$WORK/server-$tag.err"
            [[ $server == janus ]] && ERR="$WORK/server-$tag.out"
            echo "server log: $(wc -l <"$ERR") lines, warnings/errors: $(grep -c -E 'WARN|ERR' "$ERR" || true)"
            grep -E 'WARN|ERR' "$ERR" | head -n 5 || true
            cleanup
            [[ $STATUS -eq 0 ]] || echo "load tool exited with status $STATUS" >&2
            RESULTS+=("$(grep '^RESULT ' "$WORK/load-$tag.txt" || echo "RESULT {\"label\":\"$variant\",\"server\":\"$server\",\"failed\":true}")")
        done
    done
done

echo
echo "=== results (${DURATION}s each) ==="
for r in "${RESULTS[@]}"; do
    echo "$r"
done
if [[ ${#RESULTS[@]} -gt 1 ]]; then
    echo
    printf '%s\n' "${RESULTS[@]}" | python3 -c '
import json, statistics, sys
runs = [json.loads(l.split(" ", 1)[1]) for l in sys.stdin if l.startswith("RESULT ")]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def fmt(v, f):
    return "–" if v is None else f.format(v)
print("medians per variant and server (n = runs that produced a RESULT):")
print("| variant | server | n | fwd pkt/s | fwd pkts / server CPU-s | relay pkts / CPU-s | ratio | pkt loss | audio p50 / p99 | video p99 | server RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
seen = []
for r in runs:
    k = (r.get("label"), r.get("server", "patchbay"))
    if k not in seen:
        seen.append(k)
for label, server in seen:
    rs = [r for r in runs if r.get("label") == label and r.get("server", "patchbay") == server and server in r]
    g = lambda f: med([f(r) for r in rs])
    s = lambda key: g(lambda r: r[server].get(key))
    relay = g(lambda r: (r.get("relay") or {}).get("relayed_pkts_per_cpu_s"))
    rss = s("server_rss_kb")
    print("| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |".format(
        label, server, len(rs),
        fmt(s("forwarded_pps"), "{:,.0f}"), fmt(s("fwd_pkts_per_server_cpu_s"), "{:,.0f}"),
        fmt(relay, "{:,.0f}"), fmt(g(lambda r: r.get("ratio_per_cpu") or None), "{:.2f}"),
        fmt(s("pkt_loss_pct"), "{:.2f} %"),
        fmt(g(lambda r: r[server]["latency_audio"]["p50_ms"]), "{:.1f}"),
        fmt(g(lambda r: r[server]["latency_audio"]["p99_ms"]), "{:.1f} ms"),
        fmt(g(lambda r: r[server]["latency_video"]["p99_ms"]), "{:.1f} ms"),
        fmt(None if rss is None else rss / 1024, "{:.0f} MB")))
'
fi
echo "loadavg: $(cat /proc/loadavg)"
