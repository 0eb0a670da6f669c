//! Errors preparing or running a workload. Each names the object that failed; causes hang
//! below as sources.

use std::path::PathBuf;

use wasmcell_oci::FileKind;

/// Why a workload could not be prepared or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workload names no program.
    #[error(
        "no entrypoint: the process args are empty; set the image's Entrypoint or give a command"
    )]
    NoEntrypoint,
    /// The entrypoint file is missing or unreadable, would escape the rootfs, is not a regular
    /// file or is too large.
    #[error(
        "cannot read the entrypoint `{path}`{} (check the image's Entrypoint, or the command given)",
        in_root(root)
    )]
    ReadEntrypoint {
        /// The path as written in the spec.
        path: String,
        /// The rootfs it was resolved in, if any.
        root: Option<PathBuf>,
        /// The cause.
        #[source]
        source: wasmcell_oci::rootfs::ReadError,
    },
    /// The entrypoint is not a Wasm binary.
    #[error("the entrypoint `{path}` is {kind}")]
    NotWasm {
        /// The path as written in the spec.
        path: String,
        /// What it is instead.
        kind: FileKind,
    },
    /// The entrypoint is another framework's app, run by another runtime name or command.
    #[error("the entrypoint `{path}` is {what}: {fix}")]
    OtherApp {
        /// The path as written in the spec.
        path: String,
        /// What it is.
        what: String,
        /// What runs it.
        fix: &'static str,
    },
    /// The binary failed validation or compilation.
    #[error("the entrypoint `{path}` is not a valid Wasm binary")]
    Compile {
        /// The path as written in the spec.
        path: String,
        /// The cause.
        #[source]
        source: wasmtime::Error,
    },
    /// The binary imports something the host does not provide.
    #[error(
        "the entrypoint `{path}` cannot be linked (it imports something wasmcell does not provide)"
    )]
    Link {
        /// The path as written in the spec.
        path: String,
        /// The cause.
        #[source]
        source: wasmtime::Error,
    },
    /// The module imports functions no linker here defines.
    #[error(
        "the entrypoint `{path}` cannot be linked: it imports what wasmcell does not provide: {imports}. {provided}"
    )]
    MissingImports {
        /// The path as written in the spec.
        path: String,
        /// The missing imports, with their types.
        imports: String,
        /// What the linker it was linked with does provide.
        provided: &'static str,
    },
    /// The `#function` entry does not exist or has the wrong type.
    #[error("the entrypoint `{path}` has no usable function `{function}`: {reason}")]
    EntryFunction {
        /// The path as written in the spec.
        path: String,
        /// The function named.
        function: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An app (Spin, slight) cannot be prepared or run: the message names the component and
    /// the fix.
    #[error("{0}")]
    App(String),
    /// The compile cache could not be used.
    #[error(
        "compile cache {} cannot be used (make room there, or point WASMCELL_CACHE_DIR or --cache-dir at a writable directory)",
        dir.display()
    )]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The compile cache holds no code for `path` (yet), and this cache does not compile
    /// ([`crate::cache::Miss`]): a tiered start asking whether the optimised code is there, or a
    /// sandbox that waited for its shim's compile in vain.
    #[error("the compile cache holds no compiled code for `{path}`")]
    NotCached {
        /// The binary's path.
        path: String,
    },
    /// A preopened directory could not be opened.
    #[error("cannot give the guest {} at `{guest}`", host.display())]
    Preopen {
        /// The host directory.
        host: PathBuf,
        /// Where the guest would see it.
        guest: String,
        /// The cause.
        #[source]
        source: wasmtime::Error,
    },
    /// An HTTP server could not listen where its spec says.
    #[error(
        "cannot serve HTTP on {addr} (is another server there? WASMCELL_HTTP_ADDR chooses the address)"
    )]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A standard stream could not be opened.
    #[error("cannot open the guest's {stream} at {}", path.display())]
    Stdio {
        /// `stdin`, `stdout` or `stderr`.
        stream: &'static str,
        /// The FIFO or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be created.
    #[error("cannot create the Wasm engine")]
    Engine(#[source] wasmtime::Error),
}

fn in_root(root: &Option<PathBuf>) -> String {
    match root {
        Some(root) => format!(" in the container rootfs {}", root.display()),
        None => String::new(),
    }
}

/// An error and its causes on one line, `outer: cause: root cause`: for messages that leave the
/// process (containerd shows them as they are) or go to a guest's stderr.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
