#!/usr/bin/env bash
# Builds the JavaScript Spin apps in guests/spin-apps-js/NAME (index.js, wit/, package.json with
# its package-lock.json, and spin.toml) and prints the directory holding them: each is assembled
# into `spin/NAME/` of the guests' directory (${WASMCELL_GUESTS:-guests/target/wasm}, as
# scripts/build-guests.sh, which calls this), its component `NAME.wasm` beside the app's files.
#
# The components are made by Spin's JS build tools from npm: @spinframework/build-tools 1.0.7
# (its `j2w`, which runs ComponentizeJS 0.19.3, StarlingMonkey) with
# @spinframework/wasi-http-proxy 1.0.1, whose WIT makes the component export
# wasi:http/incoming-handler@0.2.3 (WASI 0.2, as Spin 3 runs; not Spin 4's wasi:http 0.3), the
# newest (and only) releases of both. The app's own package.json pins them and its committed
# package-lock.json pins everything below them. It also pins @bytecodealliance/preview2-shim
# 0.17.9, which build-tools' WIT merger (lib/wit_tools.js, a jco-transpiled component) imports
# without declaring it: left to npm, it comes nested under jco 1.35 at 0.26, whose rewritten
# filesystem preopens nothing, and the merger fails with "failed to read path for WIT".
# Spin's SDK packages for key-value, variables and SQLite (@spinframework/spin-kv, ...) are not
# on the registry, so an app imports those interfaces by their WIT names from its own wit/.
#
# The packages are installed by `npm ci` into a directory of their own per app,
# $WASMCELL_TOOLS/js-guests-node_modules/NAME, again only when package.json or the lock file
# changed (~10 s, ~175 packages). One build takes ~6 s and writes ~12 MB, so an app is rebuilt
# only when the hash of its files (the lock file among them) and the build command differs from
# the stamp `NAME.wasm.stamp` beside its component; with every stamp
# current, npm and node are not run for it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${WASMCELL_GUESTS:-$root/guests/target/wasm}
tools=${WASMCELL_TOOLS:-$HOME/.cache/wasmcell/tools}
modules=$tools/js-guests-node_modules
# The app's entry point, given to j2w (which takes one JavaScript file, no bundler).
entry=index.js

log() { printf 'build-js-guests: %s\n' "$*" >&2; }

# Installs the packages the lock file of app $1 (named $2) pins into $modules/$2 when that
# directory's copy of package.json and package-lock.json differs from the app's.
setup_modules() {
  local app=$1 name=$2 dir=$modules/$2
  if [ -d "$dir/node_modules" ] && cmp -s "$app/package.json" "$dir/package.json" &&
    cmp -s "$app/package-lock.json" "$dir/package-lock.json"; then
    return
  fi
  log "installing $name's npm packages into $dir"
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$app/package.json" "$app/package-lock.json" "$dir/"
  # No package the lock names has an install script; --ignore-scripts keeps it so.
  npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
}

# The hash of the app in directory $1: its files (by name and content, the lock file that pins
# every package among them) and the build command. Computed without node: a machine that only
# runs the guests (the cgroup v2 VM) has none, and finds the components current.
app_hash() {
  {
    printf '%s\n' "j2w -i $entry"
    (cd "$1" && find . -type f ! -path './node_modules/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

# Copies the files of app $1 into directory $2 (made), without a node_modules of its own that
# `npm install` run by hand in the app may have left.
copy_app() {
  mkdir -p "$2" && (cd "$1" && tar --exclude=./node_modules -cf - .) | (cd "$2" && tar -xf -)
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
shopt -s nullglob
for app in "$root"/guests/spin-apps-js/*/; do
  name=$(basename "$app")
  dest=$out/spin/$name
  hash=$(app_hash "$app")
  if [ -f "$dest/$name.wasm" ] && [ "$(cat "$dest/$name.wasm.stamp" 2>/dev/null)" = "$hash" ]; then
    continue
  fi
  setup_modules "$app" "$name"
  log "building $name (@spinframework/build-tools, $(node --version))"
  # Built in a copy of the app, so neither the sources nor the output keep j2w's
  # precompiled-source.js and index.js.buildData.json (its own cache, which would skip the
  # build). The copy is made in $modules/NAME/app, below the installed node_modules, where j2w
  # finds the packages with WIT by package.json (the app's own wit/ too). The component is not
  # byte-for-byte reproducible: ComponentizeJS records a temporary directory of its own in it.
  work=$modules/$name/app
  rm -rf "$work" && copy_app "$app" "$work"
  (cd "$work" && node ../node_modules/@spinframework/build-tools/dist/index.js \
    -i "$entry" -o "$stage/$name.wasm") >&2
  rm -rf "$work"
  # j2w reports a failed build on stderr but exits 0: no component is the failure.
  [ -s "$stage/$name.wasm" ] || { log "$name: j2w wrote no component"; exit 1; }
  rm -rf "$dest" && copy_app "$app" "$dest"
  mv "$stage/$name.wasm" "$dest/$name.wasm"
  printf '%s\n' "$hash" >"$dest/$name.wasm.stamp"
done
echo "$out"
