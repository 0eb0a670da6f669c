//! `wasmcell run`: a `.wasm` file, an image archive or an image reference, with no container
//! engine.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use wasmcell_engine::{
    Access, App, CompilePolicy, Exit, HttpServe, Input, Limits, ModuleSource, NameFiles, Network,
    Output, Preopen, Prepared, Stdio, WorkloadSpec,
};
use wasmcell_oci::{Archive, Entrypoint, FileKind, ImageContents};

use crate::flags;
use crate::images::{RegistryArgs, pull_into_store, store, stored_name};

/// Run a Wasm module or component, a Wasm image archive, or an image by reference (from the
/// local store, pulled when missing), as a sandboxed process.
///
/// The guest gets exactly what a container would: its arguments, the image's environment plus
/// --env, and the image's rootfs as / (for an image) or the --dir directories. Nothing else of the
/// host: not its environment, files or network (unless --net). The exit status is the guest's.
///
/// A component exporting wasi:http/incoming-handler is served over HTTP, a fresh instance per
/// request: on 127.0.0.1:8080, or where --publish says (`-p 8080:8080` for every interface, as
/// with `docker run`). Ctrl-C stops it after the requests in flight.
///
/// With --slightfile, a core module built for SpiderLightning (slight) runs as slight ran it:
/// `wasmcell run --slightfile slightfile.toml app.wasm`, with the capabilities the slightfile
/// declares (key-value stores kept in .slight/ beside the module). An app that starts an HTTP
/// server listens where it asks to (or at WASMCELL_HTTP_ADDR from --env) until Ctrl-C.
///
/// Compiled code is cached (see --cache-dir), so later runs of the same binary start at once.
#[derive(Args)]
pub struct RunArgs {
    /// Set an environment variable in the guest (repeatable): KEY=VALUE, or KEY alone for the
    /// value it has here, as with `docker run -e`.
    #[arg(long = "env", short = 'e', value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from FILE (repeatable), as `docker run --env-file`: a
    /// KEY=VALUE or a bare KEY per line, `#` comments; --env wins over it.
    #[arg(long = "env-file", value_name = "FILE")]
    env_files: Vec<PathBuf>,
    /// Give the guest a host directory: HOST[:GUEST][:ro] (repeatable; GUEST defaults to HOST;
    /// docker's -v/--volume HOST:GUEST and wasmtime's --dir HOST::GUEST both work).
    #[arg(
        long = "dir",
        short = 'v',
        visible_alias = "volume",
        value_name = "HOST[:GUEST][:ro]"
    )]
    dirs: Vec<String>,
    /// The guest's working directory, an absolute path inside a directory it is given
    /// [default: the image's WorkingDir, else /], told to the guest as wasi:cli's initial-cwd.
    /// A guest whose libc starts at / whatever it is told (wasi-libc today, and every preview 1
    /// module: preview 1 cannot say) stays at /, as under wasmtime.
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Give the guest the image's root filesystem read-only, as `docker run --read-only`
    /// (--dir directories keep their own :ro or read-write).
    #[arg(long)]
    read_only: bool,
    /// Limit the guest's memory (its linear memories and tables) to SIZE, such as 64m or 1g;
    /// growing past it ends the guest with status 137, as `docker run --memory` does.
    #[arg(long, short = 'm', value_name = "SIZE")]
    memory: Option<String>,
    /// Limit the guest to N CPUs' worth of time, such as 0.5, as `docker run --cpus` does.
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Call FUNCTION, an export of a core module, instead of _start, as `wasmtime run --invoke`
    /// (the same as TARGET#FUNCTION).
    #[arg(long, value_name = "FUNCTION")]
    invoke: Option<String>,
    /// Run in the background, as `docker run -d`: prints the container's name; `wasmcell ps`,
    /// `logs`, `stop` and `rm` take it from there.
    #[arg(long, short = 'd')]
    detach: bool,
    /// The name of a detached container [default: the target's name and a number].
    #[arg(long, requires = "detach")]
    name: Option<String>,
    /// With -d, remove the container when it ends, as `docker run --rm`; in the foreground
    /// nothing is kept anyway.
    #[arg(long)]
    rm: bool,
    /// Accepted as `docker run -i` is typed: the guest reads this process's stdin anyway.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Refused: a Wasm guest has no terminal (WASI has none). Its stdin, stdout and stderr are
    /// this process's; leave -t out.
    #[arg(long, short = 't', hide_short_help = true)]
    tty: bool,
    /// Serve an HTTP component on the host's [IP:]PORT (IP defaults to 0.0.0.0). The container
    /// port must be the one the component serves on (8080).
    #[arg(long = "publish", short = 'p', value_name = "[IP:]PORT:8080")]
    publish: Option<String>,
    /// Give the guest the host's network: WASI sockets and outgoing HTTP requests.
    #[arg(long)]
    net: bool,
    /// The compile cache directory [default: $WASMCELL_CACHE_DIR, /var/lib/wasmcell/cache for root,
    /// else ~/.cache/wasmcell]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// When to compile optimised code: `tiered` (a server not yet in the compile cache starts
    /// at once on baseline code and moves to the optimised code when it is compiled; a
    /// command waits for it), `optimized` (always wait) or `baseline` (never) [default:
    /// $WASMCELL_COMPILE, else tiered]
    #[arg(long, value_name = "POLICY")]
    compile: Option<CompilePolicy>,
    /// When to pull an image reference: always, missing (not in the local store) or never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Run the .wasm file as a SpiderLightning app with this slightfile's capabilities.
    #[arg(long, value_name = "FILE")]
    slightfile: Option<PathBuf>,
    /// A .wasm file (append #FUNCTION to call a module export other than _start), an image
    /// archive from `wasmcell build`, or an image reference (e.g. 127.0.0.1:5000/app:latest),
    /// from the local store or pulled.
    target: String,
    /// Arguments for the guest (for an image: they replace its Cmd, as with `docker run`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `--pull`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum PullPolicy {
    Always,
    Missing,
    Never,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    if args.tty {
        bail!(
            "-t/--tty: a Wasm guest has no terminal to attach (WASI has none). Leave -t out: the guest's stdin, stdout and stderr are this shell's already"
        );
    }
    // `-i` asks for what a run always does: the guest reads this process's stdin.
    let _ = args.interactive;
    let limits = Limits {
        memory: args.memory.as_deref().map(flags::memory).transpose()?,
        cpu: args.cpus.as_deref().map(flags::cpus).transpose()?,
    };
    let workdir = args.workdir.as_deref().map(flags::workdir).transpose()?;
    let mut env_flags = Vec::new();
    for file in &args.env_files {
        env_flags.extend(flags::env_file(file)?);
    }
    env_flags.extend(args.env.iter().cloned());
    let env_flags = flags::env_flags(&env_flags)?;
    let mut preopens = args
        .dirs
        .iter()
        .map(|dir| flags::dir(dir))
        .collect::<Result<Vec<_>>>()?;
    let addr = listen_addr(args.publish.as_deref())?;
    let target = target_kind(&args.target)?;
    if args.detach && std::env::var_os(crate::containers::DETACHED_ENV).is_none() {
        // What can be checked is, before detaching, as `docker run -d` fails at once on a bad
        // flag, a missing image (pulled here when the policy says so) or a taken port.
        if let Target::Image(reference) = &target {
            stored_image(reference, args.pull, &args.registry)?;
        }
        if args.publish.is_some() {
            port_free(addr, "-p/--publish [IP:]PORT:8080")?;
        }
        crate::containers::detach(args.name.as_deref(), &args.target, &args.args, args.rm)?;
        return Ok(ExitCode::SUCCESS);
    }
    let engine = crate::compile::engine(args.cache_dir.clone(), args.compile, &args.target)?;
    let stdio = Stdio {
        stdin: Input::Inherit,
        stdout: Output::Inherit,
        stderr: Output::Inherit,
    };
    let network = if args.net {
        Network::Inherit
    } else {
        Network::None
    };
    // With the host's network, the host's name lookup configuration, as `docker run` copies it.
    let names = match network {
        Network::Inherit => NameFiles {
            hosts: Some("/etc/hosts".into()),
            resolv_conf: Some("/etc/resolv.conf".into()),
        },
        Network::None => NameFiles::default(),
    };
    // Kept alive until the guest is done: the unpacked image rootfs.
    let mut rootfs_dir = None;
    let spec = match target {
        Target::Wasm { path, function } => {
            let mut argv = vec![file_name(&path)];
            argv.extend(args.args.iter().cloned());
            let env = env_flags;
            let http = HttpServe {
                addr,
                ..HttpServe::from_env(&env)?
            };
            let app = match &args.slightfile {
                Some(file) => {
                    if args.publish.is_some() {
                        bail!(
                            "--publish applies to HTTP components; a slight app listens where it asks to (set WASMCELL_HTTP_ADDR with --env to move it)"
                        );
                    }
                    let lookup = |name: &str| {
                        env.iter()
                            .rev()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    };
                    let app = wasmcell_slight::from_file(file, &lookup)?;
                    Some(App::Slight(Box::new(app)))
                }
                None => None,
            };
            WorkloadSpec {
                module: ModuleSource::File(path),
                function: invoked(args.invoke.as_deref(), function)?,
                args: argv,
                env,
                cwd: workdir.unwrap_or_else(|| "/".to_owned()),
                preopens,
                stdio,
                limits,
                network,
                http,
                names,
                app,
            }
        }
        Target::Archive(_) | Target::Image(_) if args.slightfile.is_some() => {
            bail!(
                "--slightfile runs a .wasm file; an image holding /slightfile.toml runs as a slight app under io.containerd.slight.v1"
            );
        }
        Target::Archive(_) | Target::Image(_) => {
            let (path, image, dir) = unpack(target, args.pull, &args.registry)?;
            if image.spin_app().is_some() || wasmcell_spin::is_app(dir.path()) {
                bail!(
                    "{} is a Spin app: `wasmcell up {}` runs it (under containerd, runtime io.containerd.spin.v2)",
                    path.display(),
                    args.target
                );
            }
            let (entrypoint, cmd) = image.command();
            let command: Vec<String> = entrypoint
                .into_iter()
                .chain(if args.args.is_empty() {
                    cmd
                } else {
                    args.args.clone()
                })
                .collect();
            let Some(arg0) = command.first() else {
                bail!(
                    "{} has no Entrypoint or Cmd, and no command was given",
                    path.display()
                );
            };
            let entry = Entrypoint::parse(arg0);
            let mut argv = vec![entry.path.clone()];
            argv.extend(command[1..].iter().cloned());
            let mut env = parse_image_env(&image.env())?;
            for (key, value) in env_flags {
                env.retain(|(k, _)| *k != key);
                env.push((key, value));
            }
            preopens.insert(
                0,
                Preopen {
                    host: dir.path().to_owned(),
                    guest: "/".to_owned(),
                    access: match args.read_only {
                        true => Access::ReadOnly,
                        false => Access::ReadWrite,
                    },
                },
            );
            let http = HttpServe {
                addr,
                ..HttpServe::from_env(&env)?
            };
            let spec = WorkloadSpec {
                module: ModuleSource::Rootfs {
                    root: dir.path().to_owned(),
                    path: entry.path,
                },
                function: invoked(args.invoke.as_deref(), entry.function)?,
                args: argv,
                env,
                cwd: workdir.unwrap_or_else(|| image.working_dir()),
                preopens,
                stdio,
                limits,
                network,
                http,
                names,
                app: None,
            };
            rootfs_dir = Some(dir);
            spec
        }
    };

    let prepared = engine.prepare(spec)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if prepared.stops_gracefully() && args.slightfile.is_none() {
        port_free(addr, "-p/--publish [IP:]PORT:8080")?;
    }
    if let Some(publish) = &args.publish
        && !prepared.stops_gracefully()
    {
        eprintln!(
            "wasmcell: warning: --publish {publish} has nothing to publish: {} serves no HTTP (it exports no wasi:http handler); it runs as a command",
            args.target
        );
    }
    let exit = tokio.block_on(until_done(&prepared))?;
    drop(rootfs_dir);
    Ok(ExitCode::from(exit.status() as u8))
}

/// The export to call: `--invoke`'s, or the one TARGET#FUNCTION (or the image's entrypoint)
/// names; both at once must agree.
fn invoked(invoke: Option<&str>, named: Option<String>) -> Result<Option<String>> {
    match (invoke, named) {
        (Some(invoke), Some(named)) if invoke != named => {
            bail!("--invoke {invoke} and #{named} name different functions: give one of them")
        }
        (Some(invoke), _) => Ok(Some(invoke.to_owned())),
        (None, named) => Ok(named),
    }
}

/// Runs the guest to its end. A server is asked to stop on SIGINT or SIGTERM and finishes the
/// requests in flight; a command keeps the default handling (the signal ends the process).
pub(crate) async fn until_done(prepared: &Prepared) -> Result<Exit> {
    let controls = prepared.controls();
    let run = prepared.run(&controls);
    if !prepared.stops_gracefully() {
        return Ok(run.await?);
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::pin!(run);
    loop {
        tokio::select! {
            exit = &mut run => return Ok(exit?),
            _ = interrupt.recv() => controls.terminate(),
            _ = terminate.recv() => controls.terminate(),
        }
    }
}

/// Fails, naming `flag` as the way out, when something already listens on `addr`: before the
/// server starts, so the error comes once and before any line that says it serves.
pub(crate) fn port_free(addr: SocketAddr, flag: &str) -> Result<()> {
    // std's listener sets SO_REUSEADDR, as the server's does: a port whose last connections
    // are in TIME_WAIT is free to it.
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use: stop what listens there, or choose another address with {flag}"
        ),
        Err(e) => bail!("cannot listen on {addr}: {e} (choose another address with {flag})"),
    }
}

/// Where an HTTP component listens: `-p [IP:]PORT:8080` on the host, else only locally.
fn listen_addr(publish: Option<&str>) -> Result<SocketAddr> {
    let Some(publish) = publish else {
        return Ok(SocketAddr::from((
            [127, 0, 0, 1],
            HttpServe::default().addr.port(),
        )));
    };
    let bad = || {
        anyhow::anyhow!(
            "--publish {publish}: expected [IP:]PORT:8080, e.g. -p 8080:8080 or -p 127.0.0.1:9000:8080"
        )
    };
    let (host, container) = publish.rsplit_once(':').ok_or_else(bad)?;
    let container: u16 = container.parse().map_err(|_| bad())?;
    let served = HttpServe::default().addr.port();
    if container != served {
        bail!(
            "--publish {publish}: HTTP components serve on port {served} in the container; publish it as [IP:]PORT:{served}"
        );
    }
    let (ip, port) = match host.rsplit_once(':') {
        Some((ip, port)) => (
            ip.trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| bad())?,
            port,
        ),
        None => (std::net::IpAddr::from([0, 0, 0, 0]), host),
    };
    Ok(SocketAddr::new(ip, port.parse().map_err(|_| bad())?))
}

/// An image archive or reference (not a `.wasm` file): its name for messages, its contents,
/// and its rootfs unpacked into a directory that lives as long as the returned handle.
pub(crate) fn unpack(
    target: Target,
    pull: PullPolicy,
    registry: &RegistryArgs,
) -> Result<(PathBuf, ImageContents, tempfile::TempDir)> {
    let (path, image) = match target {
        Target::Archive(path) => {
            let image = Archive::read(&path)?;
            (path, image)
        }
        Target::Image(reference) => {
            let image = stored_image(&reference, pull, registry)?;
            (PathBuf::from(reference), image)
        }
        Target::Wasm { path, .. } => bail!("{} is a Wasm binary, not an image", path.display()),
    };
    let dir = tempfile::Builder::new()
        .prefix("wasmcell-rootfs-")
        .tempdir()
        .context("cannot create a rootfs directory")?;
    image.unpack(dir.path())?;
    Ok((path, image, dir))
}

pub(crate) enum Target {
    Wasm {
        path: PathBuf,
        function: Option<String>,
    },
    Archive(PathBuf),
    /// An image reference: from the local store, pulled as `--pull` says.
    Image(String),
}

/// A Wasm binary or an image archive (a tar, by its `ustar` magic); anything else is refused
/// with what it is.
pub(crate) fn target_kind(target: &str) -> Result<Target> {
    let (path, function) = if Path::new(target).exists() {
        (PathBuf::from(target), None)
    } else {
        let entry = Entrypoint::parse(target);
        if !Path::new(&entry.path).exists() && (looks_like_reference(target) || stored(target)) {
            return Ok(Target::Image(target.to_owned()));
        }
        (PathBuf::from(entry.path), entry.function)
    };
    let mut header = Vec::with_capacity(512);
    std::fs::File::open(&path)
        .and_then(|f| f.take(512).read_to_end(&mut header))
        .with_context(|| {
            let file_like = path.exists()
                || target.starts_with(['/', '.'])
                || target.ends_with(".wasm")
                || target.ends_with(".tar");
            match file_like {
                true => format!("cannot read {}", path.display()),
                false => format!(
                    "{target} is neither a file nor an image in the local store (`wasmcell images` lists them)"
                ),
            }
        })?;
    match FileKind::detect(&header) {
        FileKind::Wasm(_) => Ok(Target::Wasm { path, function }),
        _ if header.get(257..262) == Some(b"ustar") => Ok(Target::Archive(path)),
        other => bail!(
            "{} is {other}; give a .wasm file or an image archive from `wasmcell build`",
            path.display()
        ),
    }
}

/// Whether `target` names an image in the local store (`myapp`, as `docker run myapp` finds
/// what `docker build -t myapp` made).
fn stored(target: &str) -> bool {
    let found = || -> Result<bool> {
        let store = store()?;
        Ok(store.resolve(&stored_name(&store, target)?)?.is_some())
    };
    found().unwrap_or(false)
}

/// Whether a target that is not a file names an image: `[REGISTRY/]REPO[:TAG]` with a
/// registry host or a tag, never a `.wasm` path.
pub(crate) fn looks_like_reference(target: &str) -> bool {
    !target.ends_with(".wasm")
        && !target.ends_with(".tar")
        && (target.contains(':') || target.split('/').count() > 1)
        && wasmcell_registry::parse_reference(target).is_ok()
}

/// The image `reference` names, from the local store, pulling it as `pull` says.
fn stored_image(
    reference: &str,
    pull: PullPolicy,
    registry: &RegistryArgs,
) -> Result<ImageContents> {
    let store = store()?;
    let name = stored_name(&store, reference)?;
    let have = store.resolve(&name)?.is_some();
    match (pull, have) {
        (PullPolicy::Missing, false) if crate::names::is_short(reference) => bail!(
            "no image {name} in the local store (`wasmcell images` lists them); a name without a registry is not pulled from Docker Hub unasked: `wasmcell pull {reference}` pulls docker.io's"
        ),
        (PullPolicy::Always, _) | (PullPolicy::Missing, false) => {
            pull_into_store(reference, None, registry)?;
        }
        (PullPolicy::Never, false) => bail!(
            "no image {name} in the local store, and --pull never: `wasmcell pull {reference}` first"
        ),
        _ => {}
    }
    Ok(ImageContents::from_layout(&store, &name)?)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// An image's `Env`: its `KEY=VALUE`s. A bare name is nothing (the process would see no value
/// for it), and never the host's value.
fn parse_image_env(vars: &[String]) -> Result<Vec<(String, String)>> {
    flags::env_with(vars, |_| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image's bare name is nothing, never the host's value.
    #[test]
    fn an_images_env_names_no_host_variable() {
        assert!(parse_image_env(&["HOME".into()]).unwrap().is_empty());
    }

    #[test]
    fn publish_forms() {
        let addr = |publish| listen_addr(publish).map(|a| a.to_string());
        assert_eq!(addr(None).unwrap(), "127.0.0.1:8080");
        assert_eq!(addr(Some("8080:8080")).unwrap(), "0.0.0.0:8080");
        assert_eq!(addr(Some("127.0.0.1:9000:8080")).unwrap(), "127.0.0.1:9000");
        assert_eq!(addr(Some("[::1]:9000:8080")).unwrap(), "[::1]:9000");
        assert!(
            addr(Some("9000:80"))
                .unwrap_err()
                .to_string()
                .contains("PORT:8080")
        );
        assert!(addr(Some("eighty")).is_err());
    }
}
