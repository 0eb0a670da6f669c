#!/usr/bin/env bash
# Installs everything wasmcell's build, tests and benchmarks need on a fresh Debian 12 machine.
#
# Idempotent: each step checks before it acts, so the test command can call it every time.
# containerd 1.7 and Docker Engine 26 come from Debian trixie, downloaded with a private apt state (the
# machine's own sources are not touched) and extracted with `dpkg -x` into $WASMCELL_TOOLS.
set -euo pipefail

tools=${WASMCELL_TOOLS:-$HOME/.cache/wasmcell/tools}
apt_pkgs=(build-essential pkg-config curl ca-certificates runc busybox-static iproute2 iptables wrk skopeo protobuf-compiler
  containernetworking-plugins redis-server python3-venv)
trixie_pkgs=(containerd docker.io docker-cli)

# The cgroup v2 VM's host tools (qemu-system-x86, debootstrap, cpio, e2fsprogs, xz-utils) are
# installed by scripts/cgroup2-vm.sh itself when missing, with its image (~/.cache/wasmcell/cg2vm).

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# The Debian archive this machine's apt already uses (its own sources, as apt reads them), so the
# trixie packages come from the same mirror: never a host name of ours.
debian_mirror() {
  local codename uri
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
    awk -v c="$codename" '$2 == c { print $1; exit }')
  [ -n "$uri" ] || die "no apt source for Debian '$codename' in /etc/apt/sources.list{,.d}: add the Debian archive there (apt needs it too), then rerun"
  printf '%s\n' "${uri%/}"
}

# Node.js and npm, for the JavaScript test guests (scripts/build-js-guests.sh): Debian's, unless
# the machine has a node already.
command -v node >/dev/null && command -v npm >/dev/null || apt_pkgs+=(nodejs npm)

need_apt=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq || die "apt-get update failed: check the machine's apt sources and network"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null ||
    die "could not install ${need_apt[*]} from the machine's apt sources"
fi

for target in wasm32-wasip1 wasm32-wasip2; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
done

if [ ! -x "$tools/usr/bin/containerd" ] || [ ! -x "$tools/usr/sbin/dockerd" ]; then
  log "fetching ${trixie_pkgs[*]} from Debian trixie into $tools"
  apt_dir="$tools/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$tools/debs"
  mirror=$(debian_mirror)
  log "using the Debian mirror $mirror from this machine's apt sources"
  printf 'deb %s trixie main\n' "$mirror" >"$apt_dir/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update -qq || die "could not read Debian trixie's package lists from $mirror"
  rm -f "$tools"/debs/*.deb
  (cd "$tools/debs" && apt-get "${apt_opts[@]}" download "${trixie_pkgs[@]}") ||
    die "could not download ${trixie_pkgs[*]} from Debian trixie at $mirror"
  for deb in "$tools"/debs/*.deb; do dpkg -x "$deb" "$tools"; done
fi
# Debian's registry, for the image tests: extracted, not installed, so that no system service
# starts on port 5000; each test starts its own.
if [ ! -x "$tools/usr/bin/docker-registry" ]; then
  log "fetching docker-registry into $tools"
  mkdir -p "$tools/debs/registry"
  (cd "$tools/debs/registry" && rm -f ./*.deb && apt-get download docker-registry) ||
    die "could not download docker-registry from the machine's apt sources"
  dpkg -x "$tools"/debs/registry/docker-registry_*.deb "$tools"
fi
# Debian's MQTT broker and clients, for the outbound MQTT tests: extracted with the libraries
# Debian 12 does not ship by default, not installed, so that no broker starts on port 1883;
# each test starts its own (LD_LIBRARY_PATH=$tools/usr/lib/x86_64-linux-gnu).
if [ ! -x "$tools/usr/sbin/mosquitto" ] || [ ! -x "$tools/usr/bin/mosquitto_sub" ] ||
  [ ! -e "$tools/usr/lib/x86_64-linux-gnu/libwrap.so.0" ]; then
  log "fetching mosquitto into $tools"
  mkdir -p "$tools/debs/mosquitto"
  (cd "$tools/debs/mosquitto" && rm -f ./*.deb &&
    apt-get download mosquitto mosquitto-clients libmosquitto1 libcjson1 libdlt2 libwrap0) ||
    die "could not download mosquitto from the machine's apt sources"
  for deb in "$tools"/debs/mosquitto/*.deb; do dpkg -x "$deb" "$tools"; done
fi

# The libraries of programs extracted into $tools: Debian 12 ships some in /lib, some in /usr/lib.
tools_libs="$tools/usr/lib/x86_64-linux-gnu:$tools/lib/x86_64-linux-gnu"
# The libraries the given programs (paths in $tools) link that are found neither on the system nor
# in $tools, as the tests run them (LD_LIBRARY_PATH=$tools_libs); "missing" for a missing program.
tools_missing() {
  local bin
  for bin in "$@"; do
    if [ -x "$tools/$bin" ]; then
      LD_LIBRARY_PATH=$tools_libs ldd "$tools/$bin" 2>&1 | awk '/not found/ { print $1 }' || true
    else
      echo "$bin"
    fi
  done | sort -u | tr '\n' ' '
}
# Downloads the packages into $tools/debs/NAME and extracts them into $tools (not installed).
tools_extract() {
  local name=$1 deb
  shift
  log "fetching $name into $tools"
  mkdir -p "$tools/debs/$name"
  (cd "$tools/debs/$name" && rm -f ./*.deb && apt-get download "$@") ||
    die "could not download $* from the machine's apt sources"
  for deb in "$tools/debs/$name"/*.deb; do dpkg -x "$deb" "$tools"; done
}

# Debian 12's PostgreSQL 15 server and psql, for the outbound PostgreSQL tests: extracted, not
# installed, so that no cluster starts on port 5432; each test starts its own. postgres finds
# its share files (usr/share/postgresql/15) relative to its binary. With them, the libraries they
# link that a fresh Debian 12 (minbase) lacks; libssl3 comes with ca-certificates above.
pg_bins=(usr/lib/postgresql/15/bin/{initdb,postgres,psql})
if [ -n "$(tools_missing "${pg_bins[@]}")" ]; then
  tools_extract postgresql postgresql-15 postgresql-client-15 libpq5 libicu72 libxml2 \
    libldap-2.5-0 libsasl2-2 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 \
    libkeyutils1 libreadline8
  missing=$(tools_missing "${pg_bins[@]}")
  [ -z "$missing" ] || die "PostgreSQL in $tools still misses $missing"
fi
# Debian 12's MariaDB 10.11 server (mariadbd, and mariadb-install-db, which calls
# my_print_defaults, to make a data directory) and its client, for the outbound MySQL tests:
# extracted, not installed, so that no server starts on port 3306; each test starts its own.
# With them, the libraries they link that a fresh Debian 12 (minbase) lacks; libssl3 comes with
# ca-certificates above.
mariadb_bins=(usr/sbin/mariadbd usr/bin/{mariadb-install-db,my_print_defaults,mariadb})
if [ -n "$(tools_missing "${mariadb_bins[@]}")" ]; then
  tools_extract mariadb mariadb-server-core mariadb-client-core libaio1 libnuma1 liburing2 \
    libedit2 libbsd0 libncurses6
  missing=$(tools_missing "${mariadb_bins[@]}")
  [ -z "$missing" ] || die "MariaDB in $tools still misses $missing"
fi
log "containerd: $("$tools/usr/bin/containerd" --version)"
log "runc: $(runc --version | head -1)"
log "dockerd: $("$tools/usr/sbin/dockerd" --version)"
log "registry: $("$tools/usr/bin/docker-registry" --version), skopeo: $(skopeo --version)"
log "postgres: $(LD_LIBRARY_PATH=$tools_libs "$tools/usr/lib/postgresql/15/bin/postgres" --version)"
log "mariadbd: $(LD_LIBRARY_PATH=$tools_libs "$tools/usr/sbin/mariadbd" --version)"
