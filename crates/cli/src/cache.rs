//! `wasmcell cache ls` and `cache prune`: the compile cache, which keeps each distinct
//! module's compiled form and collects itself within a size bound.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use wasmcell_engine::{CachedEntry, CompileCache, MAX_SIZE_ENV, Prune, parse_size};

use crate::compile::open;

use crate::images::human;

/// List or prune the compile cache.
///
/// Every distinct module run (by `wasmcell run`, `up`, or a shim) leaves its compiled form
/// in the cache, so that the next start skips compiling. After each compile, the least recently
/// used artifacts are removed until the cache is within its bound: WASMCELL_CACHE_MAX_SIZE
/// (such as 512M or 2G), by default 2G. Artifacts in use by a running guest are never
/// removed. Shims read the variable from containerd's environment.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  wasmcell cache ls\n  wasmcell cache prune                  # down to the bound\n  wasmcell cache prune --max-size 500M\n  wasmcell cache prune --older-than 7d\n  wasmcell cache prune --all\n  sudo wasmcell cache ls                # the shims' cache, /var/lib/wasmcell/cache"
)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    Ls(LsArgs),
    Prune(PruneArgs),
}

/// The compile cache directory, as `run` takes it.
#[derive(Args)]
struct CacheDir {
    /// The compile cache directory [default: $WASMCELL_CACHE_DIR, /var/lib/wasmcell/cache for
    /// root, else ~/.cache/wasmcell]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

/// List the compiled artifacts, least recently used first, and their total size.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  wasmcell cache ls\n  WASMCELL_CACHE_DIR=/tmp/cache wasmcell cache ls"
)]
struct LsArgs {
    #[command(flatten)]
    dir: CacheDir,
}

/// Remove compiled artifacts, least recently used first.
///
/// By default, down to the cache's bound (WASMCELL_CACHE_MAX_SIZE, default 2G). Artifacts in
/// use by a running guest are kept. A removed artifact is compiled again when its module next
/// runs.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  wasmcell cache prune                  # down to the bound\n  wasmcell cache prune --max-size 500M  # down to 500 MiB\n  wasmcell cache prune --older-than 7d  # unused for a week (also s, m, h)\n  wasmcell cache prune --all            # everything not in use"
)]
struct PruneArgs {
    /// Remove every artifact not in use.
    #[arg(long, conflicts_with = "max_size")]
    all: bool,
    /// Remove least recently used artifacts until the cache takes at most SIZE (bytes, or
    /// with K, M, G or T: 500M, 2G) [default: $WASMCELL_CACHE_MAX_SIZE, else 2G]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Also remove artifacts not used for DURATION (a number with s, m, h or d: 12h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    older_than: Option<Duration>,
    #[command(flatten)]
    dir: CacheDir,
}

pub fn cache(args: CacheArgs) -> Result<()> {
    match args.command {
        CacheCommand::Ls(args) => ls(args),
        CacheCommand::Prune(args) => prune(args),
    }
}

fn ls(args: LsArgs) -> Result<()> {
    let cache = open(args.dir.cache_dir)?;
    let entries = cache
        .entries()
        .with_context(|| format!("cannot list the compile cache {}", cache.dir().display()))?;
    println!(
        "{:<26} {:<19} {:>10}  LAST USED",
        "ENGINE", "MODULE", "SIZE"
    );
    let now = SystemTime::now();
    for entry in &entries {
        println!(
            "{} {:>10}  {}",
            name(entry),
            human(entry.size),
            ago(now, entry.last_used)
        );
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!(
        "Total: {} artifact{}, {} ({total} bytes) in {}",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        human(total),
        cache.dir().display()
    );
    Ok(())
}

fn prune(args: PruneArgs) -> Result<()> {
    let cache = open(args.dir.cache_dir)?;
    let max_size = match (args.all, args.max_size) {
        (true, _) => 0,
        (false, Some(bytes)) => bytes,
        (false, None) => CompileCache::max_size_from_env().context(MAX_SIZE_ENV)?,
    };
    let pruned = cache
        .prune(Prune {
            max_size,
            older_than: args.older_than,
        })
        .with_context(|| format!("cannot prune the compile cache {}", cache.dir().display()))?;
    if !pruned.evicted.is_empty() {
        println!("Deleted compiled artifacts:");
        for entry in &pruned.evicted {
            println!("{} {:>10}", name(entry), human(entry.size));
        }
    }
    for entry in &pruned.in_use {
        println!("Kept (in use): {}", name(entry));
    }
    // `--all` also empties the apps' function caches (each already bounded on its own).
    let functions = cache.dir().join("functions");
    if args.all && functions.exists() {
        std::fs::remove_dir_all(&functions)
            .with_context(|| format!("cannot delete {}", functions.display()))?;
        println!(
            "Deleted the apps' function caches ({})",
            functions.display()
        );
    }
    println!(
        "\nTotal reclaimed space: {} ({} remaining)",
        human(pruned.reclaimed()),
        human(pruned.remaining)
    );
    Ok(())
}

/// An entry's engine and module, in columns: the module's digest shortened as `images` does.
fn name(entry: &CachedEntry) -> String {
    let module = format!("sha256:{}", entry.module);
    format!(
        "{:<26} {:<19}",
        entry.engine,
        module.get(..19).unwrap_or(&module)
    )
}

/// How long before `now` `then` was, roughly: "3 minutes ago".
fn ago(now: SystemTime, then: SystemTime) -> String {
    let seconds = now.duration_since(then).unwrap_or_default().as_secs();
    let (count, unit) = match seconds {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86400 => (s / 3600, "hour"),
        s => (s / 86400, "day"),
    };
    format!("{count} {unit}{} ago", if count == 1 { "" } else { "s" })
}

/// Parses `--older-than`: a whole number with `s`, `m`, `h` or `d`.
fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            bail!("`{text}` is not a duration: give a number with s, m, h or d, such as 12h or 7d")
        }
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("`{text}` is not a duration: such as 12h or 7d"))?;
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}
