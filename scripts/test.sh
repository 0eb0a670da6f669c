#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: set-up, lint, unit and end-to-end tests.
# CI runs exactly this (.ci/run). End-to-end tests start private containerd instances: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/build-guests.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets

# cargo prints one result line per test binary, the last for doc tests (often none); end with
# the totals so the closing line says how many tests ran.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
