//! The sandbox process itself: isolate, then run guests on the shim's requests.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use wasmcell_engine::{CompileCache, Engine, Exit, Prepared, error_chain};

use crate::protocol::{CONTROL_FD, Envelope, Message, Open, Request, Setup, apply_grants};
use crate::sys;

/// The sandbox's entry point (the `wasmcell` binary calls it when started as
/// [`crate::SANDBOX_ARG0`]).
pub fn main() -> ExitCode {
    // SAFETY: the shim started this process with its end of the control socket as CONTROL_FD
    // (see `sys::spawn`); nothing else in this process refers to that descriptor.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    sys::close_inherited_fds();
    let outbox = Outbox(Arc::new(control));
    let setup = match sys::recv(&outbox.0) {
        Ok(Some((packet, _))) => match serde_json::from_slice::<Setup>(&packet) {
            Ok(setup) => setup,
            Err(error) => return outbox.fail_setup(&format!("unreadable setup: {error}")),
        },
        _ => return ExitCode::FAILURE,
    };
    if let Err(error) = sys::isolate(&setup) {
        return outbox.fail_setup(&error_chain(&error));
    }
    // Threads start only now, after the seccomp filter (which they inherit).
    let engine = match Engine::new(CompileCache::new(&setup.cache_dir)) {
        Ok(engine) => Arc::new(engine),
        Err(error) => return outbox.fail_setup(&error_chain(&error)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return outbox.fail_setup(&format!("cannot start the async runtime: {error}"));
        }
    };
    outbox.send(&Message::Reply {
        seq: 0,
        error: None,
    });
    runtime.block_on(serve(engine, outbox));
    // The shim closed the socket: it is gone, and its guests go with it.
    ExitCode::SUCCESS
}

/// The sending half of the control socket, shared by the request loop and the guests' runners.
#[derive(Clone)]
struct Outbox(Arc<OwnedFd>);

impl Outbox {
    fn send(&self, message: &Message) {
        let packet = serde_json::to_vec(message).expect("messages serialize");
        // If the shim is gone there is nobody to tell; the request loop ends on its own.
        let _ = sys::send(&self.0, &packet, &[]);
    }

    fn fail_setup(&self, error: &str) -> ExitCode {
        self.send(&Message::Reply {
            seq: 0,
            error: Some(error.to_owned()),
        });
        ExitCode::FAILURE
    }
}

/// A container in the sandbox: its workload and, while it runs, the way to stop it.
struct Container {
    prepared: Arc<Prepared>,
    kill: Option<oneshot::Sender<u32>>,
    /// The directories and module its spec reaches through `/proc/self/fd`; closed when it is
    /// deleted.
    _reached: Vec<OwnedFd>,
    /// Its stdio: handed to the run at start and closed the moment the guest ends, as a
    /// process's stdio closes when it exits, so readers see end of file (Docker waits for it).
    stdio: Vec<OwnedFd>,
}

async fn serve(engine: Arc<Engine>, outbox: Outbox) {
    let (requests, mut inbox) = mpsc::unbounded_channel();
    let reader = outbox.0.try_clone().expect("dup control socket");
    std::thread::Builder::new()
        .name("wasmcell-control".into())
        .spawn(move || {
            while let Ok(Some(packet)) = sys::recv(&reader) {
                if requests.send(packet).is_err() {
                    break;
                }
            }
        })
        .expect("control thread");
    let mut containers: HashMap<String, Container> = HashMap::new();
    while let Some((packet, fds)) = inbox.recv().await {
        let (seq, result) = match serde_json::from_slice::<Envelope>(&packet) {
            Ok(Envelope { seq, request }) => (
                seq,
                handle(&engine, &outbox, &mut containers, request, fds).await,
            ),
            Err(error) => {
                tracing::error!("unreadable request: {error}");
                continue;
            }
        };
        outbox.send(&Message::Reply {
            seq,
            error: result.err(),
        });
    }
}

async fn handle(
    engine: &Arc<Engine>,
    outbox: &Outbox,
    containers: &mut HashMap<String, Container>,
    request: Request,
    fds: Vec<OwnedFd>,
) -> Result<(), String> {
    match request {
        Request::Create {
            id,
            mut spec,
            grants,
        } => {
            apply_grants(&mut spec, &grants, &fds)?;
            let (reached, stdio): (Vec<_>, Vec<_>) = grants
                .iter()
                .zip(fds)
                .partition(|(grant, _)| grant.open == Open::Reach);
            let (reached, stdio) = (
                reached.into_iter().map(|(_, fd)| fd).collect(),
                stdio.into_iter().map(|(_, fd)| fd).collect(),
            );
            let engine = engine.clone();
            let prepared = tokio::task::spawn_blocking(move || engine.prepare(*spec))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| error_chain(&e))?;
            containers.insert(
                id,
                Container {
                    prepared: Arc::new(prepared),
                    kill: None,
                    _reached: reached,
                    stdio,
                },
            );
            Ok(())
        }
        Request::Start { id } => {
            let container = containers
                .get_mut(&id)
                .ok_or_else(|| format!("no container {id}"))?;
            let (kill, killed) = oneshot::channel();
            container.kill = Some(kill);
            let prepared = container.prepared.clone();
            let stdio = std::mem::take(&mut container.stdio);
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let (status, oom) = tokio::select! {
                    exit = prepared.run() => match exit {
                        Ok(exit) => (exit.status(), matches!(exit, Exit::OutOfMemory { .. })),
                        // The engine has already said why on the guest's stderr.
                        Err(_) => (1, false),
                    },
                    Ok(signal) = killed => (128 + signal, false),
                };
                drop(stdio);
                outbox.send(&Message::Exited { id, status, oom });
            });
            Ok(())
        }
        Request::Kill { id, signal } => {
            let container = containers
                .get_mut(&id)
                .ok_or_else(|| format!("no container {id}"))?;
            match container.kill.take().map(|kill| kill.send(signal)) {
                Some(Ok(())) => Ok(()),
                _ => Err(format!("container {id} is not running")),
            }
        }
        Request::Delete { id } => {
            containers.remove(&id);
            Ok(())
        }
    }
}
