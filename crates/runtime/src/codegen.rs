//! Which compiler makes a workload's machine code, and when.
//!
//! Cranelift's optimised code is what a workload should run on, but a real component takes
//! seconds to compile with it (a 37 MB Python component: ~6 s on two cores), and a cache miss
//! pays that before the first request. Winch, wasmtime's baseline compiler, translates each
//! function in a single pass: the same component in ~1.7 s, its code slower to run. Under the
//! default [`CompilePolicy::Tiered`], a server's miss is compiled by Winch first and served at
//! once, while Cranelift compiles the optimised code in the background; its new requests
//! switch to it when it is ready. Both go to the compile cache, each under its own engine
//! fingerprint, so the next start finds the optimised code.

use std::fmt;
use std::str::FromStr;

/// The code one engine makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Codegen {
    /// Cranelift, optimising.
    Optimized,
    /// Winch, wasmtime's single-pass baseline compiler.
    Baseline,
}

impl Codegen {
    /// The engine configuration every process compiles and runs this code with: the
    /// compiler's child and every runner must agree on it, or artifacts would not load.
    pub fn config(self) -> wasmtime::Config {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // WASI 0.3 components: async functions, streams and futures.
        config.wasm_component_model_async(true);
        if self == Codegen::Baseline {
            config.strategy(wasmtime::Strategy::Winch);
        }
        config
    }
}

/// When each compiler runs: the `WASMCELL_COMPILE` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CompilePolicy {
    /// Optimised code only: a cache miss waits for Cranelift.
    Optimized,
    /// Baseline code only: the fastest start, the slowest code.
    Baseline,
    /// For a server: baseline code on a cache miss, replaced by optimised code compiled in
    /// the background, which its new requests run on once it is ready. A command (which runs
    /// once, to its end, on the code it started with) waits for the optimised code.
    #[default]
    Tiered,
}

impl CompilePolicy {
    /// The environment variable that sets the policy of a shim (from containerd's
    /// environment) or of the CLI (where `--compile` overrides it).
    pub const ENV: &'static str = "WASMCELL_COMPILE";

    /// The policy `WASMCELL_COMPILE` names, or the default when it is unset.
    pub fn from_env() -> Result<CompilePolicy, UnknownPolicy> {
        match std::env::var(Self::ENV) {
            Ok(value) if !value.trim().is_empty() => value.trim().parse(),
            _ => Ok(CompilePolicy::default()),
        }
    }

    /// The code a cache miss is first compiled to.
    pub fn first(self) -> Codegen {
        match self {
            CompilePolicy::Optimized => Codegen::Optimized,
            CompilePolicy::Baseline | CompilePolicy::Tiered => Codegen::Baseline,
        }
    }
}

impl FromStr for CompilePolicy {
    type Err = UnknownPolicy;

    fn from_str(value: &str) -> Result<CompilePolicy, UnknownPolicy> {
        match value {
            "optimized" => Ok(CompilePolicy::Optimized),
            "baseline" => Ok(CompilePolicy::Baseline),
            "tiered" => Ok(CompilePolicy::Tiered),
            other => Err(UnknownPolicy(other.to_owned())),
        }
    }
}

impl fmt::Display for CompilePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompilePolicy::Optimized => "optimized",
            CompilePolicy::Baseline => "baseline",
            CompilePolicy::Tiered => "tiered",
        })
    }
}

/// A compile policy that is none of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compile policy `{0}`: use `tiered` (the default: baseline code first, optimised code when it is ready), `optimized` or `baseline`"
)]
pub struct UnknownPolicy(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_as_written_and_an_unknown_one_names_the_three() {
        for policy in [
            CompilePolicy::Optimized,
            CompilePolicy::Baseline,
            CompilePolicy::Tiered,
        ] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
        let error = "winch".parse::<CompilePolicy>().unwrap_err().to_string();
        assert!(
            error.contains("`winch`") && error.contains("tiered"),
            "{error}"
        );
    }

    #[test]
    fn baseline_and_optimised_code_never_share_a_cache_entry() {
        use std::hash::{Hash, Hasher};
        let fingerprint = |codegen: Codegen| {
            let engine = wasmtime::Engine::new(&codegen.config()).unwrap();
            let mut hasher = std::hash::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        assert_ne!(
            fingerprint(Codegen::Optimized),
            fingerprint(Codegen::Baseline)
        );
    }
}
