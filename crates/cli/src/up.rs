//! `wasmcell up`: a Spin app from its directory or an image, with no container engine, as
//! `spin up` runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use wasmcell_engine::{
    Access, CompilePolicy, HttpServe, Input, Limits, ModuleSource, NameFiles, Network, Output,
    Preopen, Stdio, WorkloadSpec,
};
use wasmcell_spin::{App, HttpHandler, RuntimeConfigSource};

use crate::flags;
use crate::images::RegistryArgs;
use crate::run::{PullPolicy, Target, target_kind, unpack, until_done};

/// Run a Spin app: its HTTP routes served on --listen, its Redis channels followed.
///
/// The app is read from spin.toml (-f, or the current directory), or from an image (an archive
/// or a reference) built with `wasmcell build --spin` or pushed with `spin registry push`. Each component gets exactly what its
/// manifest entry grants: its `files` read-only, its `environment`, the hosts in its
/// `allowed_outbound_hosts`, its key-value stores and SQLite databases (by default in .spin/
/// in the app's directory). Variables come from the manifest's defaults, then
/// SPIN_VARIABLE_<NAME> in --env or this shell's environment.
///
/// Ctrl-C stops the app after the requests in flight.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  wasmcell up -f guests/target/wasm/spin/shop   # built by scripts/build-guests.sh\n  SPIN_VARIABLE_GREETING=Hi wasmcell up --listen 0.0.0.0:3000\n  wasmcell up --key-value greeting=hi --sqlite @migration.sql\n  wasmcell up 127.0.0.1:5000/shop:latest\n  wasmcell up -f shop.tar --listen localhost:3000"
)]
pub struct UpArgs {
    /// The app's manifest, or the directory holding spin.toml [default: ./spin.toml]; an image
    /// (a reference or an archive) here is taken as the image, as `spin up -f REF` takes it.
    #[arg(
        long = "from",
        short = 'f',
        value_name = "MANIFEST|DIR",
        conflicts_with = "image"
    )]
    from: Option<PathBuf>,
    /// An image holding a Spin app (an archive or a reference), instead of -f.
    image: Option<String>,
    /// Where the HTTP trigger listens: IP:PORT, or HOST:PORT such as localhost:3000.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3000", value_parser = listen_addr)]
    listen: SocketAddr,
    /// The runtime config (key-value stores, SQLite databases) [default: runtime-config.toml
    /// beside the manifest, if there is one]
    #[arg(long, value_name = "FILE")]
    runtime_config_file: Option<PathBuf>,
    /// Set an environment variable in every component, and for SPIN_VARIABLE_* (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Set KEY to VALUE in the app's default key-value store before it starts, overwriting
    /// what is there (repeatable).
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    key_values: Vec<String>,
    /// Run a SQLite statement (such as a migration) against the app's default database before
    /// it starts; @FILE runs the statements in FILE (repeatable, in order).
    #[arg(long = "sqlite", value_name = "STATEMENT|@FILE")]
    sqlite: Vec<String>,
    /// Keep the app's local state (the key-value stores and databases Spin places in .spin/ by
    /// default) in DIR instead of .spin/ in the app's directory; created if missing.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print the output (stdout and stderr) of component ID only, discarding the others'
    /// (repeatable).
    #[arg(long, value_name = "ID")]
    follow: Vec<String>,
    /// Silence the app's output: its components' stdout and stderr, and wasmcell's lines about
    /// them (a denied request, a failed handler), which share their stream. The routes and
    /// errors that stop the app still show.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// The compile cache directory [default: as for `wasmcell run`]
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// When to compile optimised code: `tiered` (a server not yet in the compile cache starts
    /// at once on baseline code and moves to the optimised code when it is compiled; a
    /// command waits for it), `optimized` (always wait) or `baseline` (never) [default:
    /// $WASMCELL_COMPILE, else tiered]
    #[arg(long, value_name = "POLICY")]
    compile: Option<CompilePolicy>,
    /// When to pull an image reference: always, missing or never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn up(mut args: UpArgs) -> Result<ExitCode> {
    let env = flags::env(&args.env)?;
    // `spin up -f` takes an image too: a reference, or here an archive.
    if let Some(from) = args.from.as_deref().and_then(Path::to_str) {
        let image = match Path::new(from) {
            path if path.is_file() => matches!(target_kind(from), Ok(Target::Archive(_))),
            path => !path.exists() && crate::run::looks_like_reference(from),
        };
        if image {
            args.image = args.from.take().map(|from| from.display().to_string());
        }
    }
    // Kept until the app is done: an unpacked image, and the components' staged files.
    let mut unpacked = None;
    let mut locked = None;
    let dir = match &args.image {
        Some(image) => {
            let target = target_kind(image)?;
            if let Target::Wasm { path, .. } = &target {
                bail!(
                    "{} is a Wasm binary: `wasmcell run` runs it; `wasmcell up` runs Spin apps",
                    path.display()
                );
            }
            let (_, image, rootfs) = unpack(target, args.pull, &args.registry)?;
            let dir = rootfs.path().to_owned();
            unpacked = Some(rootfs);
            locked = image.spin_app().cloned();
            dir
        }
        None => app_dir(args.from.as_deref())?,
    };
    if let (Some(image), None) = (&args.image, &locked)
        && !wasmcell_spin::is_app(&dir)
    {
        bail!(
            "{image} is not a Spin app image (it holds no {}): `wasmcell run {image}` runs a Wasm image",
            wasmcell_spin::MANIFEST
        );
    }
    if locked.is_none() && !wasmcell_spin::is_app(&dir) {
        bail!(
            "no {} in {}: give the app's manifest with -f, or an image built with `wasmcell build --spin`",
            wasmcell_spin::MANIFEST,
            dir.display()
        );
    }
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let staging = tempfile::Builder::new()
        .prefix("wasmcell-spin-files-")
        .tempdir()
        .context("cannot create a directory for the components' files")?;
    let config = match &args.runtime_config_file {
        Some(file) => RuntimeConfigSource::File(file),
        None => RuntimeConfigSource::Beside,
    };
    let loaded = match &locked {
        // Spin's registry format: the content is written into the unpacked (empty) rootfs.
        Some(image) => wasmcell_spin::load_locked(
            &dir,
            &image.locked,
            &|digest| image.content(digest).map(<[u8]>::to_vec),
            config,
            &lookup,
            staging.path(),
        ),
        None => wasmcell_spin::load(&dir, config, &lookup, staging.path()),
    };
    let mut app = loaded.map_err(|why| anyhow::anyhow!("{}: {why}", dir.display()))?;
    for component in &mut app.components {
        component.environment.extend(env.iter().cloned());
    }
    if let Some(unknown) = args
        .follow
        .iter()
        .find(|id| !app.components.iter().any(|c| &c.id == *id))
    {
        let ids: Vec<&str> = app.components.iter().map(|c| c.id.as_str()).collect();
        bail!(
            "--follow {unknown}: the app has no such component; its components are {}",
            ids.join(", ")
        );
    }
    if !args.follow.is_empty() {
        for component in &mut app.components {
            component.silenced = !args.follow.contains(&component.id);
        }
    }
    // The state directory is granted to the stores at a path of its own, so that it is the
    // only host directory an image's stores reach besides its own files.
    let state = match &args.state_dir {
        Some(state) => {
            std::fs::create_dir_all(state)
                .with_context(|| format!("--state-dir {}: cannot create it", state.display()))?;
            app.move_local_state(STATE_DIR);
            Some(Preopen {
                host: std::path::absolute(state)
                    .with_context(|| format!("--state-dir {}", state.display()))?,
                guest: STATE_DIR.to_owned(),
                access: Access::ReadWrite,
            })
        }
        None => None,
    };
    // Store paths: relative ones in the app's directory (an image's unpacked rootfs, gone with
    // the run). Absolute ones are on the host, as `spin up` takes them, only when the user
    // wrote them: in their own app's runtime config, or the one they gave. An image's own
    // runtime config is its publisher's, so its absolute paths are in the image's rootfs, as
    // in a container, never the host's files (another app's stores, anything root may write).
    let stores_root = match (&args.image, &args.runtime_config_file) {
        (Some(_), None) => dir.clone(),
        _ => PathBuf::from("/"),
    };
    let routes = describe_routes(&app, args.listen);
    let mut preopens = vec![Preopen {
        host: stores_root,
        guest: "/".to_owned(),
        access: Access::ReadWrite,
    }];
    preopens.extend(state);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio.block_on(seed(&app, &dir, &preopens, &args.key_values, &args.sqlite))?;
    let output = match args.quiet {
        true => Output::Null,
        false => Output::Inherit,
    };
    let spec = WorkloadSpec {
        module: ModuleSource::Rootfs {
            root: dir.clone(),
            path: wasmcell_spin::MANIFEST.to_owned(),
        },
        function: None,
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".to_owned(),
        preopens,
        stdio: Stdio {
            stdin: Input::Null,
            stdout: output.clone(),
            stderr: output,
        },
        limits: Limits::default(),
        // Components reach only their allowed_outbound_hosts.
        network: Network::Inherit,
        http: HttpServe {
            addr: args.listen,
            ..HttpServe::default()
        },
        names: NameFiles {
            hosts: Some("/etc/hosts".into()),
            resolv_conf: Some("/etc/resolv.conf".into()),
        },
        app: Some(wasmcell_engine::App::Spin(Box::new(app))),
    };
    let app = match &args.image {
        Some(image) => image.clone(),
        None => dir.display().to_string(),
    };
    let engine = crate::compile::engine(args.cache_dir, args.compile, &app)?;
    let prepared = engine.prepare(spec)?;
    if prepared.stops_gracefully() {
        crate::run::port_free(args.listen, "--listen IP:PORT")?;
    }
    eprint!("{routes}");
    let exit = tokio.block_on(until_done(&prepared))?;
    drop((staging, unpacked));
    Ok(ExitCode::from(exit.status() as u8))
}

/// `--listen`: an address, or a host name and port (its first IPv4 address, else its first).
fn listen_addr(listen: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| format!("expected IP:PORT or HOST:PORT, such as 127.0.0.1:3000 ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{listen} has no address"))
}

/// Where the stores see `--state-dir`.
const STATE_DIR: &str = "/.wasmcell-state";

/// What `--key-value` and `--sqlite` put in the app's default store and database before it
/// starts, opened as its components open them (the same files, under the same hardening).
async fn seed(
    app: &App,
    dir: &Path,
    preopens: &[Preopen],
    key_values: &[String],
    statements: &[String],
) -> Result<()> {
    let places = wasmcell_stores::Places::new(dir, preopens);
    if !key_values.is_empty() {
        let Some(config) = app.key_value_stores.get("default") else {
            bail!(
                "--key-value: no component of the app uses the default key-value store: add key_value_stores = [\"default\"] to one"
            );
        };
        let store = wasmcell_stores::KeyValue::open(config, &places)
            .await
            .map_err(|why| anyhow::anyhow!("--key-value: the default store: {why}"))?;
        for pair in key_values {
            let Some((key, value)) = pair.split_once('=') else {
                bail!("--key-value {pair}: give KEY=VALUE");
            };
            store
                .set("default", key, value.as_bytes())
                .await
                .map_err(|why| anyhow::anyhow!("--key-value {key}: {why}"))?;
        }
    }
    if !statements.is_empty() {
        let Some(config) = app.sqlite_databases.get("default") else {
            bail!(
                "--sqlite: no component of the app uses the default database: add sqlite_databases = [\"default\"] to one"
            );
        };
        let database = wasmcell_stores::open_database(config, &places)
            .await
            .map_err(|why| anyhow::anyhow!("--sqlite: the default database: {why}"))?;
        for statement in statements {
            let sql = match statement.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("--sqlite @{file}: cannot read it"))?,
                None => statement.clone(),
            };
            database
                .execute_batch(sql)
                .await
                .map_err(|why| anyhow::anyhow!("--sqlite {statement}: {why}"))?;
        }
    }
    Ok(())
}

/// The app's directory from -f: a manifest's directory, or a directory.
fn app_dir(from: Option<&Path>) -> Result<PathBuf> {
    let from = from.unwrap_or(Path::new("."));
    let dir = if from.is_dir() {
        from.to_owned()
    } else if from
        .file_name()
        .is_some_and(|n| n == wasmcell_spin::MANIFEST)
    {
        from.parent().unwrap_or(Path::new(".")).to_owned()
    } else if from.exists() {
        bail!(
            "-f {}: the manifest must be named {} (Spin reads the app's directory)",
            from.display(),
            wasmcell_spin::MANIFEST
        );
    } else {
        bail!("-f {}: no such file or directory", from.display());
    };
    Ok(if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    })
}

/// What `spin up` prints: each route and what serves it.
fn describe_routes(app: &App, listen: SocketAddr) -> String {
    let mut text = format!(
        "wasmcell: serving Spin app {} on http://{listen}\n",
        app.name
    );
    for trigger in &app.http {
        let Some(route) = &trigger.route else {
            continue;
        };
        let by = match &trigger.handler {
            HttpHandler::Component(index) => app.components[*index].id.clone(),
            HttpHandler::Static(_) => "static response".to_owned(),
        };
        text.push_str(&format!("  {by}: http://{listen}{route}\n"));
    }
    for trigger in &app.redis {
        let id = &app.components[trigger.component].id;
        text.push_str(&format!(
            "  {id}: Redis channel {} at {}\n",
            trigger.channel, trigger.address
        ));
    }
    text
}
