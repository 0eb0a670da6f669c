//! Recognising Wasm binaries, and naming what a file is when it is not one.

use std::fmt;

/// The two kinds of Wasm binary: they need different linkers and entry conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasmKind {
    /// A core module (binary version 1): WASI preview 1, entry `_start` or a named export.
    Module,
    /// A component (any other binary version/layer): WASI preview 2, entry `wasi:cli/run`.
    Component,
}

impl WasmKind {
    /// Reads the kind from the 8-byte header: `\0asm`, then version `01 00 00 00` for a module;
    /// components use the same magic with another version and layer.
    pub fn detect(bytes: &[u8]) -> Option<WasmKind> {
        match bytes {
            [0x00, b'a', b's', b'm', 1, 0, 0, 0, ..] => Some(WasmKind::Module),
            [0x00, b'a', b's', b'm', _, _, _, _, ..] => Some(WasmKind::Component),
            _ => None,
        }
    }

    /// The name used in image annotations and messages: `module` or `component`.
    pub fn as_str(self) -> &'static str {
        match self {
            WasmKind::Module => "module",
            WasmKind::Component => "component",
        }
    }
}

impl fmt::Display for WasmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a file is, from its first bytes: a Wasm binary, or the nearest description of what
/// it is instead, so an error can say "is an ELF executable" rather than "invalid magic".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A Wasm binary of the given kind.
    Wasm(WasmKind),
    /// A native Linux executable or library.
    Elf,
    /// A script with a `#!` interpreter line (e.g. `#!/bin/sh`).
    Script(String),
    /// WebAssembly text format, which must be compiled to a binary first.
    WasmText,
    /// An empty file.
    Empty,
    /// Anything else.
    Unknown,
}

impl FileKind {
    /// Classifies a file from (at least) its first few hundred bytes.
    pub fn detect(bytes: &[u8]) -> FileKind {
        if let Some(kind) = WasmKind::detect(bytes) {
            return FileKind::Wasm(kind);
        }
        if bytes.is_empty() {
            return FileKind::Empty;
        }
        if bytes.starts_with(b"\x7fELF") {
            return FileKind::Elf;
        }
        if let Some(rest) = bytes.strip_prefix(b"#!") {
            let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
            return FileKind::Script(String::from_utf8_lossy(line).trim().to_owned());
        }
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
        if text.trim_start().starts_with("(module") || text.trim_start().starts_with("(component") {
            return FileKind::WasmText;
        }
        FileKind::Unknown
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Wasm(kind) => write!(f, "a Wasm {kind}"),
            FileKind::Elf => {
                f.write_str("a native ELF executable, not Wasm (run it with runc instead)")
            }
            FileKind::Script(interpreter) => write!(f, "a script for `{interpreter}`, not Wasm"),
            FileKind::WasmText => f.write_str(
                "WebAssembly text (.wat), not a binary: compile it with `wasm-tools parse`",
            ),
            FileKind::Empty => f.write_str("an empty file, not Wasm"),
            FileKind::Unknown => f.write_str("not a Wasm binary (it does not start with `\\0asm`)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_and_component_headers() {
        assert_eq!(
            WasmKind::detect(b"\0asm\x01\0\0\0rest"),
            Some(WasmKind::Module)
        );
        assert_eq!(
            WasmKind::detect(b"\0asm\x0d\0\x01\0"),
            Some(WasmKind::Component)
        );
        assert_eq!(
            WasmKind::detect(b"\0asm"),
            None,
            "a truncated header is not wasm"
        );
    }

    #[test]
    fn non_wasm_files_are_named() {
        assert_eq!(FileKind::detect(b"\x7fELF\x02\x01"), FileKind::Elf);
        assert_eq!(
            FileKind::detect(b"#!/bin/sh\necho hi\n"),
            FileKind::Script("/bin/sh".into())
        );
        assert_eq!(FileKind::detect(b"  (module (func))"), FileKind::WasmText);
        assert_eq!(FileKind::detect(b""), FileKind::Empty);
        assert_eq!(FileKind::detect(b"PK\x03\x04"), FileKind::Unknown);
        assert!(FileKind::Elf.to_string().contains("ELF"));
    }
}
