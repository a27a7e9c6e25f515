#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS, default 20 s each) and prints, per
# target, the executions done and the crashes found, then `fuzz: N passed, 0 failed`. Exits
# non-zero on a crash; the crashing input is left in artifacts/<target>/ (replay it with
# `target/<host>/release/<target> artifacts/<target>/crash-…`).
#
# Stable Rust is enough: cargo-fuzz builds the targets with libFuzzer's coverage
# instrumentation (SanitizerCoverage, stable rustc flags) and no sanitizer (`-s none`: the
# address sanitizer would need nightly, and safe Rust panics where it would report).
# FUZZ_TOOLCHAIN picks another toolchain (e.g. nightly). cargo-fuzz is installed from
# crates.io when missing.
#
# Each target's corpus is corpus/<target>: the committed seed-* inputs plus whatever
# libFuzzer finds (not committed, see .gitignore), so later runs start where earlier ones
# stopped.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-20}
toolchain=${FUZZ_TOOLCHAIN:-stable}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo "+$toolchain" install cargo-fuzz --locked
fi

host=$(rustc "+$toolchain" -vV | sed -n 's/^host: //p')
cargo "+$toolchain" fuzz build -s none
targets=$(cargo "+$toolchain" fuzz list)

passed=0
failed=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  start_cpu=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)
  status=0
  "target/$host/release/$t" "corpus/$t" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 ||
    status=$?
  end_cpu=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)
  cpu=$(awk -v a="$start_cpu" -v b="$end_cpu" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz}')
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    echo "$t: ${runs:-?} executions in ${seconds} s (${cpu} s CPU), 0 crashes"
  else
    failed=$((failed + 1))
    echo "$t: CRASH after ${runs:-?} executions (exit $status):"
    grep -E 'panicked|ERROR|Test unit written|SUMMARY' "$log" | head -n 20
  fi
  rm -f "$log"
done

echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
