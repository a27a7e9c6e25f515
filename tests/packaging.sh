#!/usr/bin/env bash
# The container image's contents, checked on the host (no image registry is reachable here, so
# the image itself is not built): runs the Dockerfile's steps as written in it (the build
# stage's `cargo build`, the runtime stage's COPY into a scratch root, its ENV and CMD), checks
# the binary is stripped and needs only what the runtime image has (libc and libopus0), starts
# it with the image's default command (data directory inside the scratch root, ports 0 instead
# of the image's fixed ones), calls /readyz, stops it with SIGTERM, and verifies the systemd
# unit. Prints `packaging: N passed, M failed`; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok: $name"
  else
    failed=$((failed + 1))
    echo "FAILED: $name"
  fi
}

scratch=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# --- the build stage ------------------------------------------------------------------------
build=$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' Dockerfile)
[ -n "$build" ] || { echo "no cargo build step in the Dockerfile" >&2; exit 1; }
echo "build: $build"
$build

# --- the image's EXPOSE names the ports its ENV makes the server use -----------------------------
exposes_its_ports() {
  local expose env_of missing=0
  expose=" $(sed -n 's/^EXPOSE //p' Dockerfile) "
  env_of() { sed -n "s/^ENV $1=//p" Dockerfile; }
  local http media sip rtp
  http=$(env_of PATCHBAY_LISTEN); media=$(env_of PATCHBAY_MEDIA_LISTEN)
  sip=$(env_of PATCHBAY_SIP_LISTEN); rtp=$(env_of PATCHBAY_RTP_PORTS)
  for want in "${http##*:}/tcp" "${media##*:}-[0-9]*/udp" "${media##*:}-[0-9]*/tcp" \
    "${sip##*:}/udp" "${sip##*:}/tcp" "$rtp/udp"; do
    if ! grep -Eq " $want " <<<"$expose"; then
      echo "  EXPOSE lacks $want"
      missing=1
    fi
  done
  return $missing
}
check "EXPOSE names HTTP, media (UDP and TCP), SIP (UDP and TCP) and the RTP range of the ENV" exposes_its_ports

# --- the runtime stage: COPY --from=build into the scratch root -------------------------------
read -r src dest < <(sed -n 's|^COPY --from=build /src/\([^ ]*\) \([^ ]*\)$|\1 \2|p' Dockerfile)
install -D -m 0755 "$src" "$scratch$dest"
bin="$scratch$dest"

stripped() { ! readelf -S "$bin" | grep -Eq '\.symtab|\.debug_'; }
check "the shipped binary is stripped" stripped

# Every setting the shipped files name (deploy/patchbay.env, set or commented out, and the
# image's ENV) is one the binary reads: a misspelt name would be ignored without a word.
names_known_settings() {
  local help name ok=0
  help=$("$bin" serve --help)
  for name in $(grep -Eo '^#?PATCHBAY_[A-Z_]+=' deploy/patchbay.env | tr -d '#=') \
    $(sed -n 's/^ENV \(PATCHBAY_[A-Z_]*\)=.*/\1/p' Dockerfile); do
    if ! grep -Eq "\[env: $name(=|\])" <<<"$help"; then
      echo "  $name is not a setting of \`patchbay serve\`"
      ok=1
    fi
  done
  return $ok
}
check "deploy/patchbay.env and the image's ENV name only settings the binary reads" names_known_settings

# Everything the binary links must be in debian:bookworm-slim (libc6, libgcc-s1) or libopus0.
only_runtime_libraries() {
  local lib ok=0
  for lib in $(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    case "$lib" in
      libc.so.* | libm.so.* | libgcc_s.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux*) ;;
      libopus.so.0) ;;
      *) echo "  needs $lib, which the runtime image does not install" ; ok=1 ;;
    esac
  done
  return $ok
}
check "the binary needs only libc and libopus0" only_runtime_libraries

# --- start it as the image does: its ENV, its CMD --------------------------------------------
declare -A image_env
while IFS='=' read -r name value; do
  image_env[$name]=$value
done < <(sed -n 's/^ENV \([A-Z_]*\)=\(.*\)$/\1=\2/p' Dockerfile)
# The image's data directory, inside the scratch root; ports 0 where the image has fixed ones
# (they may be taken on this machine).
data_dir="$scratch${image_env[PATCHBAY_DATA_DIR]}"
image_env[PATCHBAY_DATA_DIR]=$data_dir
image_env[PATCHBAY_LISTEN]=127.0.0.1:0
image_env[PATCHBAY_MEDIA_LISTEN]=${image_env[PATCHBAY_MEDIA_LISTEN]%:*}:0
image_env[PATCHBAY_SIP_LISTEN]=127.0.0.1:0
image_env[PATCHBAY_RTP_PORTS]=0-0
mapfile -t cmd < <(sed -n 's/^CMD \(\[.*\]\)$/\1/p' Dockerfile | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')
env_args=()
for name in "${!image_env[@]}"; do env_args+=("$name=${image_env[$name]}"); done
echo "start: ${cmd[*]} (${env_args[*]})"
env -i "PATH=$scratch/usr/local/bin:/usr/bin:/bin" "${env_args[@]}" "${cmd[@]}" \
  >"$scratch/stdout" 2>"$scratch/stderr" &
server_pid=$!

http=
for _ in $(seq 100); do
  http=$(sed -n 's|^patchbay listening on http://\(.*\)$|\1|p' "$scratch/stdout")
  [ -n "$http" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
check "the image's command starts and says where it listens" test -n "$http"
if [ -n "$http" ]; then
  check "/readyz answers ready" bash -c "curl -fsS 'http://$http/readyz' | grep -q '\"ready\"'"
  check "startup names the media address of every shard" grep -q '^patchbay media shard 0: UDP' "$scratch/stdout"
  check "without a public IP, startup warns that only this machine can reach a call" \
    grep -q 'WARNING: the media socket listens on every interface' "$scratch/stdout"
  check "the image creates no dev account and prints no password (PATCHBAY_DEV_ACCOUNT=false)" \
    bash -c "! grep -q -e 'created the account' -e 'password:' '$scratch/stdout'"
  check "the data directory is created private (0700)" \
    test "$(stat -c %a "$data_dir")" = 700
  kill -TERM "$server_pid"
  stopped=0
  wait "$server_pid" || stopped=$?
  server_pid=
  check "SIGTERM stops it cleanly (exit 0)" test "$stopped" = 0
else
  echo "--- stdout"; cat "$scratch/stdout"; echo "--- stderr"; cat "$scratch/stderr"
fi

# --- the systemd unit -------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
  unit="$scratch/patchbay.service"
  sed "s|^ExecStart=/usr/local/bin/patchbay|ExecStart=$bin|; s|^EnvironmentFile=.*|EnvironmentFile=$PWD/deploy/patchbay.env|" \
    deploy/patchbay.service >"$unit"
  check "systemd-analyze verify accepts the unit" systemd-analyze verify "$unit"
else
  echo "skipped: systemd-analyze is not installed"
fi

echo "packaging: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
