//! `wasmcell`: the CLI and, under their link names, the containerd shims.
//!
//! One binary serves every role so a node maps one copy of its pages for all shims:
//! invoked as `containerd-shim-<runtime>-v1` it is that shim; re-executed as the shim daemon it
//! finds its runtime in `WASMCELL_SHIM_RUNTIME`; started as `wasmcell-sandbox` it is a shim's
//! sandbox process; otherwise it is the CLI.

mod build;
mod cache;
mod compile;
mod containers;
mod flags;
mod images;
mod install;
mod manual;
mod names;
mod node;
mod precompile;
mod run;
mod up;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use wasmcell_shim::{RUNTIME_ENV, Runtime};

/// Exit status for wasmcell's own failures, before a guest runs (as `docker run` uses 125).
const FAILURE_STATUS: u8 = 125;

/// What `--version` prints after the name: the release, the commit built and the wasmtime linked.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WASMCELL_COMMIT"),
    ", wasmtime ",
    env!("WASMCELL_WASMTIME_VERSION"),
    ")"
);

/// Run WebAssembly apps as containers: with no container engine, or under containerd, Docker
/// and Kubernetes through the shims this binary also provides.
#[derive(Parser)]
#[command(name = "wasmcell", version = VERSION, propagate_version = true)]
#[command(
    after_help = "Examples:\n  wasmcell run app.wasm hello world\n  wasmcell build app.wasm --tag example.com/app:latest --output app.tar\n  wasmcell run app.tar\n  wasmcell build app.wasm --tag 127.0.0.1:5000/app:latest --format artifact --push\n  wasmcell run 127.0.0.1:5000/app:latest\n  wasmcell up -f spin.toml --listen 127.0.0.1:3000\n  wasmcell cache ls\n  wasmcell install --prefix /usr/local\n  wasmcell install --containerd --restart   # a Kubernetes node"
)]
struct Cli {
    /// Print wasmcell's own diagnostics on stderr (--verbose: info, twice: debug; or set
    /// WASMCELL_LOG to a tracing filter such as `wasmtime_wasi=warn`). By default stderr is
    /// the guest's. (-v is `run`'s volume flag, as in `docker run`.)
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::RunArgs),
    Up(up::UpArgs),
    Build(build::BuildArgs),
    Push(images::PushArgs),
    Pull(images::PullArgs),
    Images(images::ImagesArgs),
    Rmi(images::RmiArgs),
    Cache(cache::CacheArgs),
    Install(install::InstallArgs),
    /// Print the version, the commit it was built from and the wasmtime it links (as
    /// --version does).
    Version,
    /// List the containerd runtime names the shims answer to, and what each runs.
    Runtimes,
    Completions(manual::CompletionsArgs),
    Ps(containers::PsArgs),
    Logs(containers::LogsArgs),
    Stop(containers::StopArgs),
    Rm(containers::RmArgs),
    /// Supervise the detached container whose state is in DIR (what `run -d` starts).
    #[command(hide = true)]
    Supervise {
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if name == wasmcell_sandbox::SANDBOX_ARG0 {
        return wasmcell_sandbox::main();
    }
    if name == wasmcell_engine::COMPILER_ARG0 {
        return wasmcell_engine::compiler_main();
    }
    if let Some(runtime) = shim_runtime(&name) {
        // What containerd's own shims answer to `-v` (`containerd-shim-runc-v2 -v`).
        if std::env::args()
            .skip(1)
            .any(|arg| arg == "-v" || arg == "-version")
        {
            println!(
                "{}:\n  Version:  {}\n  Revision: {}\n  Runtime:  {} (wasmcell, wasmtime {})",
                runtime.binary_name(),
                env!("CARGO_PKG_VERSION"),
                env!("WASMCELL_COMMIT"),
                runtime.id(),
                env!("WASMCELL_WASMTIME_VERSION"),
            );
            return ExitCode::SUCCESS;
        }
        wasmcell_shim::main(runtime);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    // wasmcell's own diagnostics share stderr with the guest's: none unless asked for, and
    // coloured only on a terminal.
    let asked = match cli.verbose {
        0 => "off",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMCELL_LOG")
                .unwrap_or_else(|_| asked.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Up(args) => up::up(args),
        Command::Build(args) => build::build(args).map(|()| ExitCode::SUCCESS),
        Command::Push(args) => images::push(args).map(|()| ExitCode::SUCCESS),
        Command::Pull(args) => images::pull(args).map(|()| ExitCode::SUCCESS),
        Command::Images(args) => images::images(args).map(|()| ExitCode::SUCCESS),
        Command::Rmi(args) => images::rmi(args).map(|()| ExitCode::SUCCESS),
        Command::Cache(args) => cache::cache(args).map(|()| ExitCode::SUCCESS),
        Command::Install(args) => {
            install::install(args, Cli::command()).map(|()| ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("wasmcell {VERSION}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Runtimes => {
            manual::runtimes();
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(args) => {
            manual::completions(args, Cli::command());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps(args) => containers::ps(args).map(|()| ExitCode::SUCCESS),
        Command::Logs(args) => containers::logs(args).map(|()| ExitCode::SUCCESS),
        Command::Stop(args) => containers::stop(args).map(|()| ExitCode::SUCCESS),
        Command::Rm(args) => containers::rm(args).map(|()| ExitCode::SUCCESS),
        Command::Supervise { dir } => containers::supervise(&dir).map(ExitCode::from),
    };
    result.unwrap_or_else(|error| {
        eprintln!("wasmcell: error: {error:#}");
        ExitCode::from(FAILURE_STATUS)
    })
}

/// The shim runtime this process serves, if it is a shim: by its link name, or (as the daemon
/// re-executed from `/proc/self/exe`) by the variable its `start` step set.
fn shim_runtime(arg0_name: &str) -> Option<Runtime> {
    Runtime::from_binary_name(arg0_name).or_else(|| {
        std::env::var(RUNTIME_ENV)
            .ok()
            .and_then(|name| Runtime::from_binary_name(&name))
    })
}
