//! The runtime names wasmcell answers to, and which of them are built.

use std::fmt;

/// A containerd runtime served by the `wasmcell` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `io.containerd.wasmtime.v1`: WASI modules and components.
    Wasmtime,
    /// `io.containerd.wasmedge.v1`: WasmEdge-targeted apps, on the same engine: a module that
    /// imports WasmEdge's socket extension gets it under either name.
    Wasmedge,
    /// `io.containerd.spin.v1`: Spin apps, and plain WASI images.
    SpinV1,
    /// `io.containerd.spin.v2`: Spin apps, and plain WASI images.
    SpinV2,
    /// `io.containerd.slight.v1`: SpiderLightning apps, and plain WASI images.
    SlightV1,
}

impl Runtime {
    /// Every runtime, for installing the shim links.
    pub const ALL: [Runtime; 5] = [
        Runtime::Wasmtime,
        Runtime::Wasmedge,
        Runtime::SpinV1,
        Runtime::SpinV2,
        Runtime::SlightV1,
    ];

    /// containerd's name for the runtime, e.g. `io.containerd.wasmtime.v1`.
    pub fn id(self) -> &'static str {
        match self {
            Runtime::Wasmtime => "io.containerd.wasmtime.v1",
            Runtime::Wasmedge => "io.containerd.wasmedge.v1",
            Runtime::SpinV1 => "io.containerd.spin.v1",
            Runtime::SpinV2 => "io.containerd.spin.v2",
            Runtime::SlightV1 => "io.containerd.slight.v1",
        }
    }

    /// The shim binary containerd looks for on its PATH, e.g. `containerd-shim-wasmtime-v1`.
    pub fn binary_name(self) -> &'static str {
        match self {
            Runtime::Wasmtime => "containerd-shim-wasmtime-v1",
            Runtime::Wasmedge => "containerd-shim-wasmedge-v1",
            Runtime::SpinV1 => "containerd-shim-spin-v1",
            Runtime::SpinV2 => "containerd-shim-spin-v2",
            Runtime::SlightV1 => "containerd-shim-slight-v1",
        }
    }

    /// The runtimes a Kubernetes node gets, by the RuntimeClass handler CRI knows each by
    /// (`runtimeClassName` names a RuntimeClass, whose `handler` names the CRI runtime). Spin's
    /// handler is its current shim name's, `io.containerd.spin.v2`, as SpinKube's.
    pub const KUBERNETES: [(&'static str, Runtime); 4] = [
        ("wasmtime", Runtime::Wasmtime),
        ("wasmedge", Runtime::Wasmedge),
        ("spin", Runtime::SpinV2),
        ("slight", Runtime::SlightV1),
    ];

    /// The runtime a shim binary name (argv[0]'s file name) stands for.
    pub fn from_binary_name(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.binary_name() == name)
    }

    /// The runtime a containerd runtime id stands for.
    pub fn from_id(id: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.id() == id)
    }

    /// The app framework this runtime also runs, by the manifest its apps carry at the root
    /// of their rootfs. Images without one are plain WASI and run as under wasmtime, whatever
    /// the runtime name (as Docker's Wasm runtimes run them).
    pub fn app(self) -> Option<App> {
        match self {
            Runtime::Wasmtime | Runtime::Wasmedge => None,
            Runtime::SpinV1 | Runtime::SpinV2 => Some(App::Spin),
            Runtime::SlightV1 => Some(App::SpiderLightning),
        }
    }
}

/// An app framework a runtime name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Spin: `spin.toml`.
    Spin,
    /// SpiderLightning: `slightfile.toml`.
    SpiderLightning,
}

impl App {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            App::Spin => "Spin",
            App::SpiderLightning => "SpiderLightning",
        }
    }

    /// The manifest file its apps have at the root of their rootfs.
    pub fn manifest(self) -> &'static str {
        match self {
            App::Spin => wasmcell_spin::MANIFEST,
            App::SpiderLightning => "slightfile.toml",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for runtime in Runtime::ALL {
            assert_eq!(
                Runtime::from_binary_name(runtime.binary_name()),
                Some(runtime)
            );
            assert_eq!(Runtime::from_id(runtime.id()), Some(runtime));
        }
        assert_eq!(Runtime::from_binary_name("containerd-shim-runc-v2"), None);
    }
}
