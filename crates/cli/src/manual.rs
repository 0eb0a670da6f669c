//! What a shell and `man` know of wasmcell: completion scripts (clap_complete) and man pages
//! (clap_mangen), generated from the same definitions as `--help`, so they never disagree
//! with it. `wasmcell completions SHELL` prints a script; `wasmcell install` writes them all
//! where the shells and `man` look under its prefix.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;
use wasmcell_shim::Runtime;

/// Print the completion script for a shell.
///
/// `wasmcell install` puts them where bash-completion, zsh and fish find them; this is for a
/// shell of your own setup.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    source <(wasmcell completions bash)\n  \
    wasmcell completions zsh > ~/.zfunc/_wasmcell")]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

pub fn completions(args: CompletionsArgs, mut command: clap::Command) {
    clap_complete::generate(args.shell, &mut command, "wasmcell", &mut std::io::stdout());
}

/// Which runtime name runs what: the names containerd, Docker and Kubernetes take.
pub fn runtimes() {
    println!("{:<28} {:<30} RUNS", "RUNTIME", "SHIM BINARY");
    for runtime in Runtime::ALL {
        println!(
            "{:<28} {:<30} {}",
            runtime.id(),
            runtime.binary_name(),
            runs(runtime)
        );
    }
}

/// What a runtime name runs, in a line.
fn runs(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Wasmtime => {
            "any Wasm image: WASI preview 1 modules, 0.2 and 0.3 components, HTTP handlers"
        }
        Runtime::Wasmedge => "the same, with WasmEdge's socket extension for modules built for it",
        Runtime::SpinV1 | Runtime::SpinV2 => {
            "Spin apps (spin.toml in the image, or `spin registry push`'s format)"
        }
        Runtime::SlightV1 => "SpiderLightning apps (slightfile.toml in the image)",
    }
}

/// The files `wasmcell install` writes under `prefix` from `command`: each completion script
/// and each man page (`wasmcell.1` and one per subcommand, `wasmcell-run.1`, ...), with their
/// contents.
pub fn files(prefix: &Path, command: &clap::Command) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let share = prefix.join("share");
    let mut files = Vec::new();
    for (shell, path) in [
        (Shell::Bash, "bash-completion/completions/wasmcell"),
        (Shell::Zsh, "zsh/site-functions/_wasmcell"),
        (Shell::Fish, "fish/vendor_completions.d/wasmcell.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), "wasmcell", &mut script);
        files.push((share.join(path), script));
    }
    let man = share.join("man/man1");
    let mut page = |command: clap::Command, name: &str| -> Result<()> {
        let mut text = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut text)
            .context("cannot render a man page")?;
        files.push((man.join(format!("{name}.1")), text));
        Ok(())
    };
    page(command.clone(), "wasmcell")?;
    for sub in command.get_subcommands() {
        let name = format!("wasmcell-{}", sub.get_name());
        page(
            sub.clone()
                .display_name(name.clone())
                .bin_name(name.clone()),
            &name,
        )?;
    }
    Ok(files)
}
