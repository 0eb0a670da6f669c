//! Compiling in a child process, bounded in CPU time and memory.
//!
//! An image's module is hostile input to the compiler: a module built to be slow to compile
//! ran 100 CPU-seconds and 340 MiB in a shim, outside every container's cgroup, before this.
//! A shim therefore compiles each cache miss in a child (its own binary started as
//! [`COMPILER_ARG0`]) whose `RLIMIT_CPU` and `RLIMIT_AS` bound what one image may take from the
//! node (see [`CompileBounds`]); the child also gives every page of Cranelift's working set back when it exits, which a
//! long-lived process's allocator would not, so a server that compiled weighs what one started
//! from the cache weighs. The child receives the binary on stdin (one byte first: its kind and
//! which code to make) and answers with the artifact on stdout, or why not on stderr.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use wasmcell_oci::WasmKind;

use crate::codegen::Codegen;
use crate::functions::{FunctionCache, Remote, serve};

/// The `argv[0]` of a compiling child; the `wasmcell` binary dispatches on it.
pub const COMPILER_ARG0: &str = "wasmcell-compile";

/// How much of the node one compile may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBounds {
    /// CPU time, in seconds (its threads together).
    pub cpu_seconds: u64,
    /// Address space, in bytes.
    pub memory_bytes: u64,
}

impl Default for CompileBounds {
    /// 600 s of CPU and 6 GiB of address space: a 40 MB component compiles in well under a
    /// minute of CPU here, and Cranelift's peak for the largest real components measured is
    /// under 1.5 GiB; the rest of the address space covers thread stacks and allocator arenas.
    fn default() -> CompileBounds {
        CompileBounds {
            cpu_seconds: 600,
            memory_bytes: 6 << 30,
        }
    }
}

impl CompileBounds {
    /// The defaults, with what the process's environment sets instead:
    /// `WASMCELL_COMPILE_CPU_SECONDS` and `WASMCELL_COMPILE_MEMORY_MIB` (a shim has
    /// containerd's environment). A value that is not a positive number is ignored.
    pub fn from_env() -> CompileBounds {
        let number = |name| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let default = CompileBounds::default();
        CompileBounds {
            cpu_seconds: number("WASMCELL_COMPILE_CPU_SECONDS").unwrap_or(default.cpu_seconds),
            memory_bytes: number("WASMCELL_COMPILE_MEMORY_MIB")
                .map_or(default.memory_bytes, |mib| mib.saturating_mul(1 << 20)),
        }
    }
}

/// The descriptor on which a compiling child reaches its parent's function cache, when it is
/// given one (see [`crate::functions`]).
const FUNCTION_CACHE_FD: RawFd = 3;

/// Compiles `bytes` to `codegen`'s code in a child started from `exe`, within `bounds`,
/// reusing and filling `functions` (optimised code only). The error says which bound was hit,
/// or carries the compiler's own message.
pub fn in_child(
    exe: &Path,
    bounds: CompileBounds,
    codegen: Codegen,
    kind: WasmKind,
    bytes: &[u8],
    functions: Option<&FunctionCache>,
) -> Result<Vec<u8>, String> {
    let functions = functions.filter(|_| codegen == Codegen::Optimized);
    let link = match functions {
        Some(_) => Some(
            std::os::unix::net::UnixStream::pair()
                .map_err(|e| format!("cannot reach the function cache: {e}"))?,
        ),
        None => None,
    };
    let theirs = link.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    let CompileBounds {
        cpu_seconds,
        memory_bytes,
    } = bounds;
    let mut command = Command::new(exe);
    command
        .arg0(COMPILER_ARG0)
        .env_clear()
        // One allocator arena per thread reserves 64 MiB of address space each.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only calls setrlimit and unshare, which
    // are async-signal-safe, on values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            let limit = |resource, soft: u64, hard: u64| {
                let value = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &value) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SIGXCPU at the soft limit, SIGKILL shortly after should it be caught.
            limit(libc::RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)?;
            limit(libc::RLIMIT_AS, memory_bytes, memory_bytes)?;
            limit(libc::RLIMIT_CORE, 0, 0)?;
            // The function cache's socket at a known number, open across exec.
            if let Some(fd) = theirs {
                if fd == FUNCTION_CACHE_FD {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, FUNCTION_CACHE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing of the node's network, mounts or IPC: the child's own namespaces, where
            // it then roots itself in an empty directory (`child_main`).
            if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS | libc::CLONE_NEWIPC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The child is not waited for: a shim's reaper collects every child of the shim, so its
    // exit status may be gone before anyone asks. The child says how it ended instead: a
    // trailer after the artifact when it succeeded, and on stderr why when it did not (its
    // handler for the CPU limit's SIGXCPU, the allocator's message at the memory limit).
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the compiler {}: {e}", exe.display()))?;
    // Only the child holds its end now: its exit ends the service.
    let ours = link.map(|(ours, _)| ours);
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut stdout = child.stdout.take().expect("piped stdout");
    // The CPU limit does not count time the child spends stopped or waiting: a wall-clock
    // deadline ends it too, through a pidfd (its PID may be reaped and reused by then).
    let pidfd = pidfd_open(child.id());
    let wall = Duration::from_secs(cpu_seconds.saturating_mul(2).saturating_add(10));
    let (finished, deadline) = std::sync::mpsc::channel::<()>();
    let timed_out = AtomicBool::new(false);
    let most = artifact_bound(bytes.len());
    let (output, message) = std::thread::scope(|scope| {
        let (timed_out, pidfd) = (&timed_out, &pidfd);
        if let (Some(functions), Some(ours)) = (functions, ours) {
            scope.spawn(move || serve(functions, ours));
        }
        scope.spawn(move || {
            if deadline.recv_timeout(wall) == Err(RecvTimeoutError::Timeout) {
                timed_out.store(true, Ordering::Relaxed);
                if let Ok(pidfd) = pidfd {
                    pidfd_kill(pidfd);
                }
            }
        });
        scope.spawn(move || {
            // A child that dies early closes its end: what it wrote says why.
            let _ = stdin
                .write_all(&[header(codegen, kind, functions.is_some())])
                .and_then(|()| stdin.write_all(bytes));
        });
        let message = scope.spawn(move || {
            let mut message = String::new();
            let _ = stderr.by_ref().take(64 << 10).read_to_string(&mut message);
            message
        });
        let mut output = Vec::new();
        // One byte past the most a sound answer holds tells an oversized one.
        let read = stdout.by_ref().take(most + 8 + 1).read_to_end(&mut output);
        if output.len() as u64 > most + 8
            && let Ok(pidfd) = pidfd
        {
            pidfd_kill(pidfd);
        }
        let message = message.join().unwrap_or_default();
        let _ = finished.send(());
        (read.map(|_| output), message)
    });
    let output = output.map_err(|e| format!("cannot read the compiled code: {e}"))?;
    if output.len() as u64 > most + 8 {
        return Err(format!(
            "its compiled code is larger than {} MiB, the most a module of its size may have",
            most >> 20
        ));
    }
    if let Some(artifact) = complete(output) {
        return Ok(artifact);
    }
    let message = message.trim();
    Err(if timed_out.load(Ordering::Relaxed) {
        format!(
            "compiling it took more than {} s, the most one image may take",
            wall.as_secs()
        )
    } else if message.contains(CPU_LIMIT_LINE.trim_end()) {
        format!(
            "compiling it took more than {cpu_seconds} s of CPU time, the most one image may use (WASMCELL_COMPILE_CPU_SECONDS)"
        )
    } else if message.contains("memory allocation") {
        format!(
            "compiling it needed more than {} MiB of memory, the most one image may use (WASMCELL_COMPILE_MEMORY_MIB)",
            memory_bytes >> 20
        )
    } else if message.is_empty() {
        "the compiler ended before it finished".to_owned()
    } else {
        message.to_owned()
    })
}

/// The largest compiled artifact a shim takes from a child for a module of `size` bytes (and
/// then holds while writing it to the cache): 16 times the module, at least 64 MiB and at most
/// 2 GiB. Real components compile to 2-4 times their size (a 40 MB Python component, ~150 MB).
fn artifact_bound(size: usize) -> u64 {
    (size as u64).saturating_mul(16).clamp(64 << 20, 2 << 30)
}

/// A pidfd for process `pid`, to signal it without racing the reuse of its PID.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Kills the process behind `pidfd`; one already gone is no error.
fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal reads the descriptor and the signal number; no siginfo is passed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// What the child prints when it reaches its CPU time limit.
const CPU_LIMIT_LINE: &str = "wasmcell-compile: CPU time limit reached\n";

/// The artifact in `output`, if the child wrote it whole: its length follows it, as 8 bytes
/// little-endian.
fn complete(mut output: Vec<u8>) -> Option<Vec<u8>> {
    let trailer = output.len().checked_sub(8)?;
    let length = u64::from_le_bytes(output[trailer..].try_into().ok()?);
    (length == trailer as u64).then(|| {
        output.truncate(trailer);
        output
    })
}

/// Writes `artifact` and its length after it (see [`complete`]) to stdout.
fn write_artifact(artifact: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(artifact)?;
    out.write_all(&(artifact.len() as u64).to_le_bytes())?;
    out.flush()
}

/// The child's handler for `SIGXCPU`, which the kernel sends at the soft CPU limit.
extern "C" fn on_cpu_limit(_: libc::c_int) {
    // SAFETY: write and _exit are async-signal-safe, and the line is static.
    unsafe {
        libc::write(2, CPU_LIMIT_LINE.as_ptr().cast(), CPU_LIMIT_LINE.len());
        libc::_exit(3);
    }
}

/// The user a compiling child runs as: `nobody`, which owns nothing, so a compiler tricked into
/// writing a file can write none of the node's.
const NOBODY: libc::uid_t = 65534;

/// A libc call's result: 0 is success, anything else the errno.
fn check(result: libc::c_int) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Roots the child in an empty, read-only tmpfs of its own mount namespace (made by the
/// parent's `unshare`), so that nothing it is tricked into opening names a file of the node.
fn root_in_nothing() -> std::io::Result<()> {
    // SAFETY: plain syscalls on static NUL-terminated strings; they change only this process's
    // own mount namespace and root.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(());
        }
        let none = std::ptr::null::<libc::c_char>();
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        let sealed = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            sealed,
            c"size=4k".as_ptr().cast(),
        ))?;
        check(libc::chroot(c"/tmp".as_ptr()))?;
        check(libc::chdir(c"/".as_ptr()))
    }
}

/// Becomes [`NOBODY`] (which also empties every capability set) with `no_new_privs`, before
/// reading a byte of the binary: all the child needs is its stdin and stdout. The kernel
/// forgets the parent-death signal when the uid changes, so it is set again after.
fn drop_privileges() -> std::io::Result<()> {
    // SAFETY: these calls change only this process's credentials and flags, from arguments
    // that are plain integers and an empty group list.
    unsafe {
        if libc::geteuid() == 0 {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(NOBODY, NOBODY, NOBODY))?;
            check(libc::setresuid(NOBODY, NOBODY, NOBODY))?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        // The child must not outlive the shim that waits for it; if the shim is already gone
        // (the child was handed to init), nobody will read the answer.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return Err(std::io::Error::other("the shim that started it is gone"));
    }
    Ok(())
}

/// The byte the binary follows: bit 0 its kind (set: a component), bit 1 the code to make
/// (set: baseline), bit 2 whether [`FUNCTION_CACHE_FD`] reaches a function cache.
fn header(codegen: Codegen, kind: WasmKind, functions: bool) -> u8 {
    let kind = match kind {
        WasmKind::Module => 0,
        WasmKind::Component => 1,
    };
    let codegen = match codegen {
        Codegen::Optimized => 0,
        Codegen::Baseline => 2,
    };
    kind | codegen | if functions { 4 } else { 0 }
}

/// The compiling child's entry point (the `wasmcell` binary calls it when started as
/// [`COMPILER_ARG0`]): compiles what arrives on stdin with the engine's settings and writes the
/// artifact to stdout.
pub fn child_main() -> ExitCode {
    // SAFETY: the handler only calls async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGXCPU,
            on_cpu_limit as *const () as libc::sighandler_t,
        )
    };
    if let Err(error) = root_in_nothing().and_then(|()| drop_privileges()) {
        eprintln!("cannot confine the compiler: {error}");
        return ExitCode::FAILURE;
    }
    let mut input = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("cannot read the binary to compile: {error}");
        return ExitCode::FAILURE;
    }
    let Some((&header, bytes)) = input.split_first() else {
        eprintln!("nothing to compile");
        return ExitCode::FAILURE;
    };
    let codegen = match header & 2 {
        0 => Codegen::Optimized,
        _ => Codegen::Baseline,
    };
    let mut config = codegen.config();
    if header & 4 != 0 {
        // SAFETY: the parent placed the socket at this number for this process alone, and
        // nothing else in it uses the descriptor.
        let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(FUNCTION_CACHE_FD) };
        if let Err(error) = config.enable_incremental_compilation(Arc::new(Remote::new(stream))) {
            eprintln!("cannot use the function cache: {error}");
            return ExitCode::FAILURE;
        }
    }
    let compiled = wasmtime::Engine::new(&config).and_then(|engine| match header & 1 {
        0 => engine.precompile_module(bytes),
        _ => engine.precompile_component(bytes),
    });
    match compiled {
        Ok(artifact) => match write_artifact(&artifact) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cannot write the compiled code: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            // The whole chain, as wasmtime's Display of a validation error is only its head.
            eprintln!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
