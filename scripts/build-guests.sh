#!/usr/bin/env bash
# Builds the test guests in guests/ and prints the directory holding the .wasm files.
#
# wasm32-wasip1: every guest. wasm32-wasip2: hello again, as a component (`hello.component.wasm`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${WASMCELL_GUESTS:-$root/guests/target/wasm}
cd "$root/guests"
export CARGO_TARGET_DIR=$root/guests/target
cargo build --quiet --release --target wasm32-wasip1
cargo build --quiet --release --target wasm32-wasip2 -p hello
mkdir -p "$out"
for wasm in target/wasm32-wasip1/release/*.wasm; do cp "$wasm" "$out/"; done
cp target/wasm32-wasip2/release/hello.wasm "$out/hello.component.wasm"
echo "$out"
