#!/usr/bin/env bash
# Builds everything (release) and runs the benchmarks:
#   bench/run.sh [ctr-run|cli|all|density|parallel|pod|soak|soak-exec|registry] [N]
#                | cold [N] [SECONDS]
#                | http|spin|slight|wasmedge-http|stress|soak-pod [SECONDS]
#                | sandbox-cost OLD_WASMCELL [N] | fuzz [SECONDS]
# Every figure is printed with its baseline from the same run. Needs root (containerd, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "${1:-}" = fuzz ]; then
  exec ./scripts/fuzz.sh "${2:-60}"
fi
./scripts/build-guests.sh >/dev/null
# The benches' containerd logs at info: at debug every shim logs each frame it exchanges with
# containerd, which slows what is measured (the tests keep debug).
export WASMCELL_CONTAINERD_LOG_LEVEL=info
# Release: what users run. The first build of the wasmtime stack takes 15-20 minutes here.
cargo build --quiet --release --workspace --bins
# The engine baseline (wasmtime-cli, built once and cached) for the benchmarks that use it.
case "${1:-all}" in
  cli|all|http) WASMTIME_CLI=$(./scripts/wasmtime-cli.sh); export WASMTIME_CLI ;;
esac
# The WasmEdge-style server built natively: the limit its Wasm figures are measured against.
case "${1:-all}" in
  all|wasmedge-http)
    (cd guests && CARGO_TARGET_DIR=$PWD/target cargo build --quiet --release -p wasmedge-http)
    export WASMEDGE_HTTP_NATIVE=$PWD/guests/target/release/wasmedge-http ;;
esac
exec "${CARGO_TARGET_DIR:-target}/release/wasmcell-bench" "$@"
