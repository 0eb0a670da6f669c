#!/usr/bin/env bash
# Builds the test guests in guests/ and prints the directory holding the .wasm files.
#
# wasm32-wasip1: every command guest. wasm32-wasip2: hello again, as a component
# (`hello.component.wasm`), the HTTP example `hello-http.wasm` (a wasi:http/proxy component),
# `echo-server.wasm` (wasi:sockets through std::net), `slight-component.wasm` (wasi:keyvalue
# and wasi:config, for the slight runtime), and the WASI 0.3 components `p3-cli.wasm` (a
# wasi:cli/run@0.3.0 command) and `p3-http.wasm` (a wasi:http/handler@0.3.0 service), which
# are built for wasm32-wasip2 only. SpiderLightning apps' modules are `slight-*.wasm`
# (wasm32-wasip1); `slight/router/` is the example app as its image holds it (`app.wasm`, from
# slight-http, beside its `slightfile.toml`). Spin apps: guests/spin-apps/NAME with the
# Spin SDK components they name (and `spin_preview1.wasm`, a Spin 3 SDK core module for
# wasm32-wasip1, `spin1_http.wasm`, a Spin 1 module, and `spin4_rust.wasm`, a Spin 4 SDK
# component (WASI 0.3, wasi:http/handler@0.3.0) built for wasm32-wasip2), assembled into
# `spin/NAME/` (the app's directory). Python Spin apps (guests/spin-apps-python/NAME) are built
# last, into `spin/NAME/` too, by scripts/build-python-guests.sh (componentize-py, cached by a
# stamp), and then the JavaScript ones (guests/spin-apps-js/NAME) by scripts/build-js-guests.sh
# (Spin's JS build tools from npm, cached by a stamp).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${WASMCELL_GUESTS:-$root/guests/target/wasm}
cd "$root/guests"
export CARGO_TARGET_DIR=$root/guests/target
cargo build --quiet --release --target wasm32-wasip1 --workspace --exclude hello-http --exclude echo-server \
  --exclude spin-http --exclude spin-redis --exclude spin-databases --exclude slight-component \
  --exclude p3-cli --exclude p3-http --exclude spin4-rust
cargo build --quiet --release --target wasm32-wasip2 -p hello -p hello-http -p echo-server -p spin-http -p spin-redis -p spin-databases \
  -p slight-component -p p3-cli -p p3-http -p spin4-rust
mkdir -p "$out"
for wasm in target/wasm32-wasip1/release/*.wasm; do cp "$wasm" "$out/"; done
cp target/wasm32-wasip2/release/hello.wasm "$out/hello.component.wasm"
cp target/wasm32-wasip2/release/hello_http.wasm "$out/hello-http.wasm"
cp target/wasm32-wasip2/release/echo-server.wasm "$out/echo-server.wasm"
cp target/wasm32-wasip2/release/slight-component.wasm "$out/slight-component.wasm"
cp target/wasm32-wasip2/release/p3_cli.wasm "$out/p3-cli.wasm"
cp target/wasm32-wasip2/release/p3_http.wasm "$out/p3-http.wasm"
# The SpiderLightning example as a slight image holds it: app.wasm beside its slightfile.
mkdir -p "$out/slight/router"
cp target/wasm32-wasip1/release/slight-http.wasm "$out/slight/router/app.wasm"
cp slight-http/slightfile.toml "$out/slight/router/"
for app in spin-apps/*/; do
  name=$(basename "$app")
  rm -rf "$out/spin/$name" && mkdir -p "$out/spin/$name"
  cp -r "$app". "$out/spin/$name/"
  cp target/wasm32-wasip2/release/spin_http.wasm target/wasm32-wasip2/release/spin_redis.wasm \
    target/wasm32-wasip2/release/spin_databases.wasm target/wasm32-wasip1/release/spin_preview1.wasm \
    target/wasm32-wasip1/release/spin1_http.wasm target/wasm32-wasip2/release/spin4_rust.wasm "$out/spin/$name/"
done
WASMCELL_GUESTS=$out "$root/scripts/build-python-guests.sh" >/dev/null
WASMCELL_GUESTS=$out "$root/scripts/build-js-guests.sh" >/dev/null
echo "$out"
