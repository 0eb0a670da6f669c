#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, builds wasmcell and runs the example guest with `wasmcell run`.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
guests=$(./scripts/build-guests.sh)
cargo build --quiet -p wasmcell
wasmcell="${CARGO_TARGET_DIR:-target}/debug/wasmcell"
set -x
"$wasmcell" run "$guests/hello.wasm" hello world
