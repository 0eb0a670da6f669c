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

# This machine is hybrid cgroup v1: the cgroup v2 checks (tests/e2e/tests/cgroup_v2.rs, which
# skips here) run in a throw-away cgroup-v2-only VM under qemu's emulation, once per driver:
# the cgroupfs layout without systemd, the systemd driver's paths with systemd as PID 1. The
# first run on a machine also builds the VM image (~100 s, cached in ~/.cache/wasmcell/cg2vm).
# A hung VM is ended by the timeout. WASMCELL_SKIP_VM_TESTS=1 leaves them out (not in CI).
# cgroup2-vm-tests.sh shares the target directory with the VM: cargo's default unless set.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
vm_tests=(cgroup_v2::cgroup_v2_limits_update_oom_pause_metrics_cleanup_and_pods_in_one_containerd)
vm_summary=()
if [ "${WASMCELL_SKIP_VM_TESTS:-0}" = 1 ]; then
  vm_summary+=("cgroup v2 VM: skipped (WASMCELL_SKIP_VM_TESTS=1)")
else
  for init in direct systemd; do
    vm_log=$(mktemp)
    began=$(date +%s)
    vm_status=0
    CG2VM_INIT=$init timeout -k 30 15m ./scripts/cgroup2-vm-tests.sh "${vm_tests[@]}" 2>&1 |
      tee "$vm_log" || vm_status=$?
    total=$(($(date +%s) - began))
    # Each test's own time is the runner's "== NAME: Ns" line; the rest is image, boot, staging.
    in_tests=$(awk '/^== .*: [0-9]+s$/ { sub(/s$/, "", $NF); t += $NF } END { print t + 0 }' "$vm_log")
    passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed/) p += $(i-1) } END { print p + 0 }' "$vm_log")
    # A test that never reported (the VM died or hung) counts as failed.
    failed=$((${#vm_tests[@]} - passed))
    if [ "$vm_status" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
    ((vm_status == 124)) && echo "cgroup v2 VM ($init): timed out after 15 minutes" >&2
    cat "$vm_log" >> "$log"
    rm -f "$vm_log"
    # A test that did not run (a wrong name runs none, and exits 0) fails the run too.
    if [ "$vm_status" != 0 ] || [ "$failed" != 0 ]; then status=1; fi
    vm_summary+=("cgroup v2 VM ($init): $passed passed, $failed failed, $((total - in_tests)) s set-up, $total s total")
  done
fi

# The VM's results are in the log too: the totals count them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
printf '%s\n' "${vm_summary[@]}"
exit "$status"
