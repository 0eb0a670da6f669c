#!/usr/bin/env bash
# Installs the benchmarks' engine baseline, wasmtime-cli at the wasmtime version wasmcell links
# (`cargo install --locked`, built once and kept under $WASMCELL_TOOLS), and prints its path.
# A first install builds the wasmtime stack: 15-20 minutes on a 2-core machine.
set -euo pipefail

version=48.0.8
tools=${WASMCELL_TOOLS:-$HOME/.cache/wasmcell/tools}
root="$tools/wasmtime-cli-$version"

if [ ! -x "$root/bin/wasmtime" ]; then
  printf 'wasmtime-cli: building %s into %s (15-20 minutes the first time)\n' "$version" "$root" >&2
  # Its own target directory under the tools, so an interrupted build resumes.
  CARGO_TARGET_DIR="$tools/wasmtime-cli-target" \
    cargo install --locked --quiet --root "$root" --version "$version" wasmtime-cli
  rm -rf "$tools/wasmtime-cli-target"
fi
echo "$root/bin/wasmtime"
