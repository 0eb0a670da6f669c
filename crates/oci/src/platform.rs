//! The platforms a Wasm image may declare.
//!
//! containerd matches platform strings exactly, and the ecosystem has not settled on one
//! spelling, so images built here may carry any of os `wasi`/`wasip1`/`wasip2`/`wasip3` with
//! arch `wasm`/`wasm32`, and readers accept all of them. (A WASI 0.3 component defaults to
//! `wasip2`, which every reader matches; its artifact config names its 0.3 world.)

use std::fmt;
use std::str::FromStr;

/// A Wasm image platform, `os/arch`, e.g. `wasip1/wasm` or `wasi/wasm32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    os: &'static str,
    arch: &'static str,
}

const OSES: [&str; 4] = ["wasi", "wasip1", "wasip2", "wasip3"];
const ARCHES: [&str; 2] = ["wasm", "wasm32"];

/// A platform string that is not a Wasm platform.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported platform `{0}`: a Wasm image platform is OS/ARCH with OS one of wasi, wasip1, wasip2, wasip3 and ARCH one of wasm, wasm32 (e.g. wasip1/wasm or wasi/wasm32)"
)]
pub struct PlatformError(String);

impl Platform {
    /// `wasip1/wasm`: the CNCF artifact's default for core modules.
    pub const WASIP1: Platform = Platform {
        os: "wasip1",
        arch: "wasm",
    };
    /// `wasi/wasm`: the image format's default, as Docker's Wasm guide writes it.
    pub const WASI: Platform = Platform {
        os: "wasi",
        arch: "wasm",
    };
    /// `wasip2/wasm`: the CNCF artifact's default for components.
    pub const WASIP2: Platform = Platform {
        os: "wasip2",
        arch: "wasm",
    };

    /// Validates an `os` and `arch` pair, e.g. from an image config.
    pub fn new(os: &str, arch: &str) -> Result<Platform, PlatformError> {
        let known = |list: &[&'static str], value: &str| list.iter().copied().find(|k| *k == value);
        match (known(&OSES, os), known(&ARCHES, arch)) {
            (Some(os), Some(arch)) => Ok(Platform { os, arch }),
            _ => Err(PlatformError(format!("{os}/{arch}"))),
        }
    }

    /// The OS part: `wasi`, `wasip1`, `wasip2` or `wasip3`.
    pub fn os(&self) -> &'static str {
        self.os
    }

    /// The architecture part: `wasm` or `wasm32`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Platform, PlatformError> {
        let (os, arch) = s
            .split_once('/')
            .ok_or_else(|| PlatformError(s.to_owned()))?;
        Platform::new(os, arch)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_spelling_parses() {
        for os in OSES {
            for arch in ARCHES {
                let p: Platform = format!("{os}/{arch}").parse().unwrap();
                assert_eq!(p.to_string(), format!("{os}/{arch}"));
            }
        }
    }

    #[test]
    fn linux_and_malformed_platforms_are_refused() {
        for bad in ["linux/amd64", "wasi", "wasi/", "wasip4/wasm", "wasi/wasm64"] {
            let err = bad.parse::<Platform>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("wasip1/wasm"), "{err}");
        }
    }
}
