#!/usr/bin/env bash
# Builds everything and runs the benchmarks: bench/run.sh [ctr-run|cli|all] [N].
# Every figure is printed with its baseline from the same run. Needs root (containerd, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build-guests.sh >/dev/null
cargo build --quiet --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/wasmcell-bench" "$@"
