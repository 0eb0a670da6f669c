#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) and prints what each did:
# executions, and the crashes found (saved under fuzz/artifacts/TARGET/).
#
# cargo fuzz instruments with flags only nightly compilers take; this machine's toolchain is
# the stable one, so RUSTC_BOOTSTRAP lets it take them. cargo-fuzz comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
printf '| %-22s | %8s | %12s | %8s |\n' target seconds executions crashes
printf '|%s|%s|%s|%s|\n' ------------------------ ---------- -------------- ----------
status=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target" "artifacts/$target"
  log=$(mktemp)
  cargo fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=1
  runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  crashes=$(find "artifacts/$target" -type f | wc -l)
  printf '| %-22s | %8s | %12s | %8s |\n' "$target" "$seconds" "${runs:-?}" "$crashes"
  if [ "$crashes" -gt 0 ]; then grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" || true; fi
  rm -f "$log"
done
exit "$status"
