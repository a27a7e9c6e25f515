#!/usr/bin/env bash
# SIP bridge load benchmark: the release server with a fresh data dir, K phone participants in
# sessions of 4 (each subscribed to its whole session, so every phone's mix has 3 sources),
# and K concurrent sipp calls (sip/scenarios/dialin.xml) each playing a PCMU 1 kHz tone for
# DURATION seconds. Reports the server's CPU over the window when all K calls are up (from
# /proc/PID/stat: utime+stime in clock ticks), as % of one core per call and as calls per
# core, and the jitter/underrun counters summed over the server's per-call
# `SIP call ended ... stats=PhoneStats { ... }` lines.
#
#   benches/sip_load.sh                   # K=40 then K=80, 20 s each
#   K=80 DURATION=30 benches/sip_load.sh  # one variant
#
# Environment: K (calls; one or more, space-separated; default "40 80"), DURATION (seconds
# each call stays up, default 20), RATE (calls set up per second, default 20), SKIP_BUILD=1
# (reuse target/release/patchbay), SIPP (default sipp), KEEP_LOGS=DIR. A fresh server per
# variant, run with RUST_LOG=info (the per-call stats are logged at INFO).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
KS=${K:-"40 80"}
DURATION=${DURATION:-20}
RATE=${RATE:-20}
SIPP=${SIPP:-sipp}
PER_SESSION=4

if [[ -z ${SKIP_BUILD:-} ]]; then
    cargo build --release --bin patchbay
fi
BIN=$root/target/release/patchbay
[[ -x $BIN ]] || { echo "missing $BIN" >&2; exit 1; }
command -v "$SIPP" >/dev/null || { echo "sipp is required (Debian: sip-tester)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/pb_sip_load.XXXXXX)
SERVER_PID=""
SIPP_PID=""
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    [[ -n $SIPP_PID ]] && kill "$SIPP_PID" 2>/dev/null || true
    stop_server
    if [[ -n ${KEEP_LOGS:-} ]]; then mkdir -p "$KEEP_LOGS" && cp -r "$WORK"/. "$KEEP_LOGS"/; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime (fields 14, 15)
# machine_ticks: `idle total` clock ticks of all CPUs (idle includes iowait)
machine_ticks() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t}' /proc/stat; }
# thread_ticks PID: `tid ticks` per thread (the busiest one shows a single task's ceiling)
thread_ticks() { for t in /proc/"$1"/task/*; do echo "${t##*/} $(awk '{print $14 + $15}' "$t/stat")"; done; }
now() { date +%s.%N; }

# The tone lasts the whole call (plus a second), so every phone talks until its BYE.
python3 tests/interop/sip/make_tone_pcap.py "$WORK/tone.pcap" --seconds $((DURATION + 1)) 2>/dev/null

RESULTS=()
for k in $KS; do
    sessions=$(((k + PER_SESSION - 1) / PER_SESSION))
    calls=$((sessions * PER_SESSION))
    ramp=$(awk -v c="$calls" -v r="$RATE" 'BEGIN {printf "%.2f", c / r}')
    # CPU window: from 1 s after the last call was set up to 1 s before the first BYE.
    win_start=$(awk -v r="$ramp" 'BEGIN {printf "%.2f", r + 1}')
    win_len=$(awk -v r="$ramp" -v d="$DURATION" 'BEGIN {printf "%.2f", d - r - 2}')
    if awk -v w="$win_len" 'BEGIN {exit !(w < 3)}'; then
        echo "DURATION=$DURATION is too short for $calls calls at $RATE/s" >&2
        exit 1
    fi
    echo
    echo "=== K=$calls: $sessions sessions × $PER_SESSION, ${DURATION}s per call, set up at $RATE/s ==="
    DATA=$WORK/data-$calls
    OUT=$WORK/server-$calls.out
    ERR=$WORK/server-$calls.err
    RUST_LOG=info "$BIN" serve --data-dir "$DATA" --listen 127.0.0.1:0 \
        --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 --rtp-ports 0-0 >"$OUT" 2>"$ERR" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1 300); do
        URL=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$OUT" | head -n1)
        [[ -n $URL ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    SIP=$(sed -n 's/^patchbay SIP on \([^ ]*\).*/\1/p' "$OUT" | head -n1)
    USERNAME=$(sed -n 's/^ *username: *//p' "$OUT" | head -n1)
    PASSWORD=$(sed -n 's/^ *password: *//p' "$OUT" | head -n1)
    if [[ -z $URL || -z $SIP || -z $USERNAME || -z $PASSWORD ]]; then
        echo "server did not start (or printed no dev credentials):" >&2
        cat "$OUT" "$ERR" >&2
        exit 1
    fi
    python3 tests/interop/sip/provision.py --url "$URL" --username "$USERNAME" \
        --password "$PASSWORD" --sessions "$sessions" --per-session "$PER_SESSION" \
        --csv "$WORK/calls-$calls.csv"
    echo "server pid $SERVER_PID, SIP $SIP; loadavg before: $(cat /proc/loadavg)"

    t0=$(now)
    c0=$(cpu_ticks "$SERVER_PID")
    "$SIPP" -key tone_pcap "$WORK/tone.pcap" -sf sip/scenarios/dialin.xml \
        -inf "$WORK/calls-$calls.csv" -i 127.0.0.1 -mi 127.0.0.1 -nostdin \
        -l "$calls" -m "$calls" -r "$RATE" -d $((DURATION * 1000)) -timeout $((DURATION + 60))s \
        -trace_err -error_file "$WORK/sipp-$calls.errors" \
        -trace_screen -screen_file "$WORK/sipp-$calls.screen" \
        "$SIP" >"$WORK/sipp-$calls.stdout" 2>&1 &
    SIPP_PID=$!
    sleep "$win_start"
    w0=$(now)
    s0=$(cpu_ticks "$SERVER_PID")
    thread_ticks "$SERVER_PID" >"$WORK/threads0"
    read -r idle0 all0 < <(machine_ticks)
    p0=$(cpu_ticks "$SIPP_PID" 2>/dev/null || echo 0)
    sleep "$win_len"
    w1=$(now)
    s1=$(cpu_ticks "$SERVER_PID")
    thread_ticks "$SERVER_PID" >"$WORK/threads1"
    read -r idle1 all1 < <(machine_ticks)
    p1=$(cpu_ticks "$SIPP_PID" 2>/dev/null || echo 0)
    set +e
    wait "$SIPP_PID"
    sipp_rc=$?
    set -e
    SIPP_PID=""
    t1=$(now)
    c1=$(cpu_ticks "$SERVER_PID")
    sleep 1 # the last end-of-call lines
    stop_server

    ok=$(awk -F'|' '$1 ~ /^ *Successful call *$/ {gsub(/ /, "", $3); v=$3} END {print v+0}' "$WORK/sipp-$calls.screen")
    failed=$(awk -F'|' '$1 ~ /^ *Failed call *$/ {gsub(/ /, "", $3); v=$3} END {print v+0}' "$WORK/sipp-$calls.screen")
    peak=$(sed -n 's/.*Peak was \([0-9]*\) calls.*/\1/p' "$WORK/sipp-$calls.screen" | tail -n1)
    # Sum the PhoneStats counters over the calls.
    stats=$(grep -a "SIP call ended" "$ERR" | sed -n 's/.*PhoneStats { \(.*\) }.*/\1/p' | awk '
        { n++; for (i = 1; i < NF; i += 2) { k = $i; sub(/:$/, "", k); v = $(i + 1); sub(/,$/, "", v); s[k] += v } }
        END {
            printf "calls_ended=%d", n
            split("rtp_received rtp_sent g711_packets_decoded uplink_frames_encoded downlink_frames_decoded uplink_underruns late_packets lost_packets duplicate_packets jitter_resets downlink_late downlink_concealed mixer_underruns mixer_trimmed_samples downlink_refused downlink_decode_errors", f, " ")
            for (j = 1; j in f; j++) printf " %s=%d", f[j], s[f[j]]
            printf "\n"
        }')
    busiest=$(join <(sort "$WORK/threads0") <(sort "$WORK/threads1") | awk '{d = $3 - $2; if (d > m) m = d} END {print m + 0}')
    report=$(awk -v tck="$TCK" -v k="$calls" -v s0="$s0" -v s1="$s1" -v w0="$w0" -v w1="$w1" \
        -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v p0="$p0" -v p1="$p1" -v busy="$busiest" \
        -v idle="$((idle1 - idle0))" -v all="$((all1 - all0))" -v ncpu="$(nproc)" 'BEGIN {
        win = w1 - w0; cpu = (s1 - s0) / tck; core = cpu / win
        printf "window %.1f s with all calls up: server CPU %.2f s = %.1f%% of a core", win, cpu, 100 * core
        printf " → %.2f%% of a core per call, %.0f calls per core at this load\n", 100 * core / k, (core > 0 ? k / core : 0)
        # Tokio moves tasks between worker threads: a busy thread is a hint, not a proof.
        printf "busiest server thread in the window: %.1f%% of a core; machine idle %.1f%% of %d CPUs\n", 100 * busy / tck / win, (all > 0 ? 100 * idle / all : 0), ncpu
        printf "whole run %.1f s: server CPU %.2f s; sipp CPU in the window %.1f%% of a core\n", t1 - t0, (c1 - c0) / tck, 100 * (p1 - p0) / tck / win
    }')
    echo "sipp: exit $sipp_rc, $ok successful, $failed failed, peak ${peak:-?} concurrent"
    echo "$report"
    echo "counters (one call ≈ $((DURATION * 50)) packets each way): $stats"
    RESULTS+=("K=$calls ok=$ok failed=$failed peak=${peak:-?} | $(head -n1 <<<"$report") | $stats")
done

echo
echo "=== summary (DURATION=${DURATION}s, RATE=$RATE/s, sessions of $PER_SESSION, CLK_TCK=$TCK, $(nproc) CPUs) ==="
printf '%s\n' "${RESULTS[@]}"
