#!/usr/bin/env bash
# Runs end-to-end tests inside a throw-away cgroup-v2-only VM (the team's cgroup2-vm.sh; this
# machine's own cgroup mounts stay as they are), e.g.
#   scripts/cgroup2-vm-tests.sh isolation::a_cpu_quota_holds_a_spinning_guest
#   CG2VM_INIT=systemd scripts/cgroup2-vm-tests.sh isolation::a_systemd_cgroups_path_puts_the_sandbox_in_a_scope_under_its_slice_with_its_limit
# Each argument is FILE::TEST (tests/e2e/tests/FILE.rs); all of them run in one boot. Build
# first (`cargo build --workspace --all-targets`). scripts/test.sh runs tests/e2e/tests/cgroup_v2.rs
# this way, once per driver. The VM is scripts/cgroup2-vm.sh (a copy of the team's tool, which
# installs qemu and debootstrap itself if missing and caches its image in $CG2VM_DIR, here
# ~/.cache/wasmcell/cg2vm by default: ~85 s to build from nothing). CG2VM_INIT=direct (no
# systemd) tests the cgroupfs layout, CG2VM_INIT=systemd (the default) the systemd driver's
# `slice:prefix:name` paths with systemd as PID 1: WASMCELL_CGROUP_V2_DRIVER tells the tests
# which, and they fail rather than skip if the VM is not what it should be. The VM shares one directory, so the tools, the test guests and this
# repository are linked into $CARGO_TARGET_DIR/cg2vm, shared with the target directory, and the
# repository is bind-mounted at its own path inside (the tests find it by their build path).
# The VM has no cargo: a stand-in lets build-guests.sh copy the prebuilt guests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=$(realpath "${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR}")
vm=${CG2VM:-$repo/scripts/cgroup2-vm.sh}
export CG2VM_DIR=${CG2VM_DIR:-$HOME/.cache/wasmcell/cg2vm}
# qemu's own deadline inside the VM script (scripts/test.sh also puts a timeout around it all)
export CG2VM_TIMEOUT=${CG2VM_TIMEOUT:-900}
case ${CG2VM_INIT:=systemd} in
  systemd) driver=systemd ;;
  direct) driver=cgroupfs ;;
  *) echo "CG2VM_INIT must be systemd or direct" >&2; exit 2 ;;
esac
export CG2VM_INIT
tools=${WASMCELL_TOOLS:-$HOME/.cache/wasmcell/tools}
stage=$target/cg2vm
(($#)) || { echo "usage: $0 FILE::TEST..." >&2; exit 2; }

rm -rf "$stage" && mkdir -p "$stage/bin"
cp -al "$tools" "$stage/tools"
mkdir -p "$stage/repo"
cp -al "$repo/scripts" "$repo/tests" "$repo/guests" "$stage/repo/"
printf '#!/bin/sh\nexit 0\n' > "$stage/bin/cargo" && chmod +x "$stage/bin/cargo"

runs=()
for spec in "$@"; do
  file=${spec%%::*} name=${spec#*::}
  exe=$(cd "$repo" && cargo test -p wasmcell-e2e --test "$file" --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -n "$exe" ] || { echo "no test binary for $file" >&2; exit 2; }
  runs+=("$exe" "$name")
done

cat > "$stage/run.sh" <<EOF
#!/bin/bash
mkdir -p '$repo' && mount --bind '$stage/repo' '$repo'
# The binaries every container start runs (containerd, ctr, the shim, the sandbox) are copied to
# the VM's own disk: run from the 9p share (cache=none) each exec reads its pages through it again,
# which made each container start take most of a minute.
mkdir -p /opt/wasmcell
cp '$target/debug/wasmcell' /opt/wasmcell/wasmcell
mkdir -p /opt/wasmcell/tools/usr/bin
cp '$stage/tools/usr/bin/containerd' '$stage/tools/usr/bin/ctr' /opt/wasmcell/tools/usr/bin/
export PATH='$stage/bin':\$PATH WASMCELL_TOOLS=/opt/wasmcell/tools WASMCELL_BIN=/opt/wasmcell/wasmcell \\
  WASMCELL_CGROUP_V2_DRIVER=$driver WASMCELL_CGROUP_V2_CACHE='$target/cg2vm-compile-cache'
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
  echo "cgroup2-vm-tests: the VM is not cgroup v2 only" >&2; exit 1
fi
echo "cgroup v2: \$(cat /sys/fs/cgroup/cgroup.controllers); PID 1: \$(cat /proc/1/comm); here: \$(cat /proc/self/cgroup); driver: $driver"
cd '$repo/tests/e2e'
failed=0
set -- $(printf "'%s' " "${runs[@]}")
while ((\$#)); do
  start=\$(date +%s)
  "\$1" --test-threads 1 --exact "\$2" --nocapture || failed=1
  echo "== \$2: \$(( \$(date +%s) - start ))s"
  shift 2
done
exit \$failed
EOF
chmod +x "$stage/run.sh"
CG2VM_SHARE=$target exec "$vm" "$stage/run.sh"
