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
cargo test --workspace
