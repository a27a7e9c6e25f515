#!/usr/bin/env bash
# SIP dial-in against a real `patchbay serve`, with sipp as the phone (Debian: sip-tester) and
# the scenarios of sip/scenarios/. Self-contained: builds nothing, starts its own server on
# 127.0.0.1 in a temporary data dir and stops it on exit. Checks:
#  (a) dial-in with the transfer helper's UUI over UDP, with the JWT-only UUI, and over TCP:
#      sipp's call succeeds (INVITE → 200 with a PCMU answer → ACK → 3 s of RTP → BYE → 200)
#      and the server's end-of-call line shows RTP both ways;
#  (b) after each of these calls the participant still exists and is still in its session;
#  (c) refusals, each with its code and a Reason header naming it, ACKed: no UUI → 403,
#      malformed token → 403, forged JWT → 403, deleted participant → 404, participant in no
#      session → 480, second INVITE while the participant's call is up → 486, an offer of
#      G.729 only → 488;
#  (d) removing the phone's participant from its session by REST keeps the call up (the
#      participant exists in no session); deleting the participant makes the server send BYE
#      (which sipp answers), and dialing in again is refused with 404;
#  (e) 100 concurrent calls (5 sessions × 20 participants, each subscribed to its session)
#      playing the 5 s tone: 0 failed calls, 100 successful, a peak of 100 concurrent calls;
#      the server logged the end of all 100, sent RTP to every phone, and received the
#      phones' RTP and decoded the others' Opus for the mixes (in total; with STRICT_MEDIA=1
#      in every single call, which a debug build cannot keep up with: 19 sources per mix).
# Prints `sip-interop: N passed, M failed` and exits non-zero on any failure.
#
# Environment: PATCHBAY_BIN (default target/debug/patchbay), SIPP (default sipp),
# LOAD_CALLS (default 100; sessions of 20), STRICT_MEDIA=1 (see (e)), KEEP_LOGS=DIR (copy
# the logs there).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
scenarios=$root/sip/scenarios
here=$root/tests/interop/sip
bin=${PATCHBAY_BIN:-$root/target/debug/patchbay}
[[ $bin == /* ]] || bin=$PWD/$bin
sipp_bin=${SIPP:-sipp}
load_calls=${LOAD_CALLS:-100}

for tool in "$sipp_bin" python3 curl; do
    command -v "$tool" >/dev/null || { echo "sip-interop: $tool is required" >&2; exit 2; }
done
[[ -x $bin ]] || { echo "sip-interop: no server binary at $bin (cargo build --bin patchbay)" >&2; exit 2; }

work=$(mktemp -d /tmp/pb-sip-interop.XXXXXX)
server_pid=""
bg_pids=()
cleanup() {
    for p in "${bg_pids[@]}"; do # a backgrounded sipp_run: its `timeout` stops sipp
        pkill -TERM -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n ${KEEP_LOGS:-} ]]; then mkdir -p "$KEEP_LOGS" && cp -r "$work"/. "$KEEP_LOGS"/; fi
    rm -rf "$work"
}
trap cleanup EXIT
cd "$work" # sipp writes its own files into the current directory

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() {
    failed=$((failed + 1))
    echo "FAIL $1${2:+: $2}"
}

# --- the server ----------------------------------------------------------------------------
RUST_LOG=warn,patchbay::runtime::sip=info "$bin" serve --data-dir "$work/data" \
    --listen 127.0.0.1:0 --media-listen 127.0.0.1:0 --sip-listen 127.0.0.1:0 --rtp-ports 0-0 \
    >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 1 100); do
    grep -q "^patchbay listening on" "$work/server.out" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
url=$(sed -n 's/^patchbay listening on \(http:[^ ]*\).*/\1/p' "$work/server.out" | head -n1)
sip=$(sed -n 's/^patchbay SIP on \([^ ]*\).*/\1/p' "$work/server.out" | head -n1)
user=$(sed -n 's/^ *username: *//p' "$work/server.out" | head -n1)
pass_=$(sed -n 's/^ *password: *//p' "$work/server.out" | head -n1)
if [[ -z $url || -z $sip || -z $user || -z $pass_ ]]; then
    echo "sip-interop: the server did not start" >&2
    cat "$work/server.out" "$work/server.err" >&2
    exit 1
fi
api_base=$url/v1/accounts/dev
echo "server pid $server_pid: REST $url, SIP $sip"

# --- REST ------------------------------------------------------------------------------------
status=""
# api METHOD PATH [JSON]: the body lands in $work/body, the HTTP status in $status.
api() {
    local args=(-s -o "$work/body" -w '%{http_code}' -u "$user:$pass_" -X "$1" "$api_base$2")
    [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' -d "$3")
    status=$(curl "${args[@]}") || status=000
}
# json EXPR: evaluates a Python expression on the last body (bound to `j`).
json() { python3 -c "import json,sys; j=json.load(open('$work/body')); print($1)"; }

new_session() {
    api POST /sessions '{}'
    [[ $status == 200 || $status == 201 ]] || { echo "POST /sessions: $status" >&2; exit 1; }
    json 'j["id"]'
}
# new_participant VAR_ID VAR_TOKEN
new_participant() {
    api POST /participants '{"publishPermissions":["AUDIO"],"deviceApiVersion":"V3"}'
    [[ $status == 200 || $status == 201 ]] || { echo "POST /participants: $status" >&2; exit 1; }
    printf -v "$1" '%s' "$(json 'j["participant"]["id"]')"
    printf -v "$2" '%s' "$(json 'j["token"]')"
}
join_session() { # SESSION PARTICIPANT: member subscribed to the whole session
    api PUT "/sessions/$1/participants/$2" "{\"sessionId\":\"$1\"}"
    [[ $status == 2* ]] || { echo "PUT participant: $status" >&2; exit 1; }
}
# in_session PARTICIPANT SESSION: GET 200 and SESSION in its sessions ("" for none at all)
in_session() {
    api GET "/participants/$1"
    [[ $status == 200 ]] || { echo "GET /participants/$1: HTTP $status"; return 1; }
    local sessions
    sessions=$(json '" ".join(j.get("sessions") or [])')
    if [[ -z $2 ]]; then
        [[ -z $sessions ]] || { echo "still in session(s) $sessions"; return 1; }
    else
        [[ " $sessions " == *" $2 "* ]] || { echo "sessions are [$sessions], not $2"; return 1; }
    fi
}

correlation() { od -An -N20 -tx1 /dev/urandom | tr -d ' \n'; }
# csv FILE LINE...: a sipp injection file
csv() {
    local f=$1
    shift
    { echo SEQUENTIAL; printf '%s\n' "$@"; } >"$f"
}

# --- sipp ------------------------------------------------------------------------------------
python3 "$here/make_tone_pcap.py" "$work/tone.pcap" --seconds 5 2>/dev/null ||
    { echo "sip-interop: cannot write the tone pcap" >&2; exit 1; }

# sipp_run NAME SCENARIO CSV [sipp options]: runs sipp to completion; logs under $work/NAME.*
sipp_run() {
    local name=$1 scenario=$2 inf=$3
    shift 3
    timeout 120 "$sipp_bin" -key tone_pcap "$work/tone.pcap" -sf "$scenarios/$scenario" \
        -inf "$inf" -i 127.0.0.1 -mi 127.0.0.1 -nostdin -timeout 100s \
        -trace_err -error_file "$work/$name.errors" \
        -trace_screen -screen_file "$work/$name.screen" \
        -trace_msg -message_file "$work/$name.messages" \
        "$@" "$sip" >"$work/$name.stdout" 2>&1
}
# sipp_stat NAME "Successful call"|"Failed call": the cumulative count from the final screen
sipp_stat() {
    awk -F'|' -v k="$2" '$1 ~ "^ *"k" *$" {gsub(/ /, "", $3); v=$3} END {print v+0}' "$work/$1.screen"
}
sipp_peak() { sed -n 's/.*Peak was \([0-9]*\) calls.*/\1/p' "$work/$1.screen" | tail -n1; }
# Why a sipp run failed: its errors, the last messages, the server's view.
explain() {
    echo "  --- sipp $1 errors"
    tail -c 1500 "$work/$1.errors" 2>/dev/null | sed 's/^/  /'
    echo "  --- sipp $1 stdout"
    tail -n 5 "$work/$1.stdout" 2>/dev/null | sed 's/^/  /'
    echo "  --- server log"
    tail -n 8 "$work/server.err" | sed 's/^/  /'
}
# expect_calls NAME N: sipp exited 0 with N successful calls and none failed.
expect_calls() {
    local name=$1 want=$2 rc=$3 ok fail
    ok=$(sipp_stat "$name" "Successful call")
    fail=$(sipp_stat "$name" "Failed call")
    if [[ $rc -eq 0 && $ok -eq $want && $fail -eq 0 ]]; then
        return 0
    fi
    echo "  sipp exit $rc, $ok successful, $fail failed (want $want, 0)"
    explain "$name"
    return 1
}

# The server's end-of-call lines of a participant: `SIP call ended ... participant=P stats=…`.
call_stats() { grep -a "SIP call ended" "$work/server.err" | grep -a "participant=$1" | tail -n1; }
# stat_of LINE FIELD: a PhoneStats counter from such a line
stat_of() { sed -n "s/.*[ {]$2: \([0-9]*\).*/\1/p" <<<"$1"; }
# media_flowed PARTICIPANT: its last call received RTP from sipp and sent RTP to it.
media_flowed() {
    local line rx tx
    line=$(call_stats "$1")
    [[ -n $line ]] || { echo "no 'SIP call ended' line for $1"; return 1; }
    rx=$(stat_of "$line" rtp_received)
    tx=$(stat_of "$line" rtp_sent)
    if [[ ${rx:-0} -gt 0 && ${tx:-0} -gt 0 ]]; then return 0; fi
    echo "rtp_received=${rx:-?} rtp_sent=${tx:-?}"
    return 1
}

# --- (a) + (b): dial-in, three ways ------------------------------------------------------------
session=$(new_session)
new_participant phone phone_token
join_session "$session" "$phone"
n=0
for way in "helper udp" "jwt udp" "helper tcp"; do
    read -r form transport <<<"$way"
    n=$((n + 1))
    name=dialin-$form-$transport
    csv "$work/$name.csv" "$form;$(correlation);$phone_token;"
    extra=()
    [[ $transport == tcp ]] && extra=(-t t1)
    sipp_run "$name" dialin.xml "$work/$name.csv" -m 1 -d 3000 "${extra[@]}"
    rc=$?
    if why=$(expect_calls "$name" 1 "$rc"); then
        pass "(a) dial-in, $form UUI over $transport: INVITE/200/ACK, 3 s of RTP, BYE/200"
    else
        fail "(a) dial-in, $form UUI over $transport" "$why"
    fi
    sleep 0.3 # the end-of-call line follows the 200 to BYE
    if why=$(media_flowed "$phone"); then
        pass "(a) dial-in, $form UUI over $transport: RTP both ways (server's call stats)"
    else
        fail "(a) dial-in, $form UUI over $transport: RTP both ways" "$why"
    fi
    if why=$(in_session "$phone" "$session"); then
        pass "(b) after the $form/$transport call the participant exists, still in its session"
    else
        fail "(b) participant after the $form/$transport call" "$why"
    fi
done

# --- (c) refusals ------------------------------------------------------------------------------
# refuse LABEL CODE CSV-LINE [sipp options]
refuse() {
    local label=$1 code=$2 line=$3 name
    shift 3
    name=refused-$code-$(tr 'A-Z' 'a-z' <<<"$label" | tr -c 'a-z0-9' '-' | tr -s '-' | sed 's/-$//')
    csv "$work/$name.csv" "$line"
    sipp_run "$name" refused.xml "$work/$name.csv" -m 1 "$@"
    local rc=$?
    if why=$(expect_calls "$name" 1 "$rc"); then
        pass "(c) $label → $code with Reason, ACKed"
    else
        fail "(c) $label → $code" "$why"
    fi
}
refuse "no User-To-User header" 403 "none;$(correlation);-;403"
refuse "malformed token" 403 "helper;$(correlation);garbage;403"
# Three base64url segments, but not signed by the server.
forged=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhIjoiZGV2IiwicCI6IjAwMDAwMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMCIsInYiOiJ2MyIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJlLW5vdC1ieS1wYXRjaGJheQ
refuse "forged JWT" 403 "jwt;$(correlation);$forged;403"

new_participant gone gone_token
join_session "$session" "$gone"
api DELETE "/participants/$gone"
[[ $status == 2* ]] || fail "DELETE /participants/$gone" "HTTP $status"
refuse "deleted participant" 404 "helper;$(correlation);$gone_token;404"

new_participant lonely lonely_token
refuse "participant in no session" 480 "helper;$(correlation);$lonely_token;480"

new_participant codec codec_token
join_session "$session" "$codec"
name=refused-488-g729
csv "$work/$name.csv" "helper;$(correlation);$codec_token;"
sipp_run "$name" g729_only.xml "$work/$name.csv" -m 1
rc=$?
if why=$(expect_calls "$name" 1 "$rc"); then
    pass "(c) offer of G.729 only → 488 with Reason, ACKed"
else
    fail "(c) offer of G.729 only → 488" "$why"
fi

# --- 486 and (d): a call that the server ends ---------------------------------------------------
new_participant held held_token
join_session "$session" "$held"
name=server-bye
csv "$work/$name.csv" "helper;$(correlation);$held_token;"
sipp_run "$name" dialin_server_bye.xml "$work/$name.csv" -m 1 &
bye_pid=$!
bg_pids+=("$bye_pid")
up=""
for _ in $(seq 1 100); do
    if grep -aq "phone joined.*participant=$held" "$work/server.err"; then up=1; break; fi
    kill -0 "$bye_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ -z $up ]]; then
    fail "(d) the call to be ended by the server did not come up"
    explain "$name"
fi
# A second INVITE with the same token while that call is up.
refuse "second call of a connected participant" 486 "helper;$(correlation);$held_token;486" -mp 6100
sleep 1 # a little RTP first
api DELETE "/sessions/$session/participants/$held"
[[ $status == 2* ]] || fail "DELETE /sessions/…/participants/$held" "HTTP $status"
sleep 2 # time for a BYE, if one were (wrongly) sent
if kill -0 "$bye_pid" 2>/dev/null; then
    pass "(d) REST removal from the session keeps the call up"
else
    fail "(d) REST removal from the session ended the call"
fi
if why=$(in_session "$held" ""); then
    pass "(d) after the removal the participant exists and is in no session"
else
    fail "(d) participant after the removal" "$why"
fi
api DELETE "/participants/$held"
[[ $status == 2* ]] || fail "DELETE /participants/$held" "HTTP $status"
wait "$bye_pid"
rc=$?
bg_pids=()
if why=$(expect_calls "$name" 1 "$rc"); then
    pass "(d) deleting the participant → the server sends BYE, the phone answers 200"
else
    fail "(d) deleting the participant → BYE" "$why"
fi
refuse "dialing in again after the deletion" 404 "helper;$(correlation);$held_token;404"

# --- (e) concurrent calls with RTP ---------------------------------------------------------------
per_session=20
sessions=$(((load_calls + per_session - 1) / per_session))
name=load
if python3 "$here/provision.py" --url "$url" --username "$user" --password "$pass_" \
    --sessions "$sessions" --per-session "$per_session" --csv "$work/$name.csv" \
    --ids "$work/$name.ids" 2>"$work/provision.err"; then
    total=$((sessions * per_session))
    before=$(grep -ac "SIP call ended" "$work/server.err")
    sipp_run "$name" dialin.xml "$work/$name.csv" -m "$total" -l "$total" -r 100 -rp 1000 -d 5000
    rc=$?
    if why=$(expect_calls "$name" "$total" "$rc"); then
        pass "(e) $total concurrent calls ($sessions sessions × $per_session): 0 failed"
    else
        fail "(e) $total concurrent calls" "$why"
    fi
    peak=$(sipp_peak "$name")
    if [[ ${peak:-0} -eq $total ]]; then
        pass "(e) all $total calls were up at once (sipp's peak)"
    else
        fail "(e) all $total calls up at once" "sipp's peak was ${peak:-?}"
    fi
    # The server logs each call's end once its BYE is handled: wait for all of them (10 s).
    for _ in $(seq 1 100); do
        [[ $(grep -ac "SIP call ended" "$work/server.err") -ge $((before + total)) ]] && break
        sleep 0.1
    done
    # The server's view of the calls: RTP from the phone, RTP to it, Opus of the other phones
    # decoded for its mix (counters of the `SIP call ended` lines).
    summary=$(grep -a "SIP call ended" "$work/server.err" | tail -n +$((before + 1)) | awk '
        { n++; rx = tx = dec = 0
          for (i = 1; i <= NF; i++) {
              if ($i == "rtp_received:") rx = $(i + 1) + 0
              if ($i == "rtp_sent:") tx = $(i + 1) + 0
              if ($i == "downlink_frames_decoded:") dec = $(i + 1) + 0
          }
          srx += rx; stx += tx; sdec += dec
          if (rx > 0) wrx++; if (tx > 0) wtx++; if (dec > 0) wdec++ }
        END { printf "%d %d %d %d %d %d %d\n", n, wrx, wtx, wdec, srx, stx, sdec }')
    read -r ended wrx wtx wdec srx stx sdec <<<"$summary"
    echo "     server: $ended calls ended; RTP from the phone in $wrx ($srx packets," \
        "$((srx * 100 / (total * 250)))% of the tone), RTP to the phone in $wtx ($stx packets)," \
        "others' Opus decoded in $wdec ($sdec frames)"
    if [[ -n ${STRICT_MEDIA:-} ]]; then
        # Every single call (meant for a release server: a debug build falls behind).
        if [[ $ended -eq $total && $wrx -eq $total && $wtx -eq $total && $wdec -eq $total ]]; then
            pass "(e) every call sent and received RTP and mixed the others' audio"
        else
            fail "(e) media of every one of the $total calls" "see the counts above"
        fi
    elif [[ $ended -eq $total && $wtx -eq $total && $srx -gt 0 && $sdec -gt 0 ]]; then
        pass "(e) $total calls ended on the server, RTP sent to every phone, phones' RTP received and mixed"
    else
        fail "(e) media of the $total calls" "see the counts above"
    fi
else
    fail "(e) provisioning $load_calls participants" "$(tail -n 3 "$work/provision.err")"
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
    fail "the server exited during the run" "$(tail -n 5 "$work/server.err")"
fi
echo "sip-interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
