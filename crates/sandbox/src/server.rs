//! The sandbox process itself: isolate, then run guests on the shim's requests.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use wasmcell_engine::{CompileCache, Controls, Engine, Exit, Prepared, Usage, error_chain};

use crate::channel::{Channel, Incoming};
use crate::protocol::{
    Answer, CONTROL_FD, Grant, Message, Open, Request, Setup, UNSOLICITED, apply_grants,
};
use crate::sys;

/// The sandbox's entry point (the `wasmcell` binary calls it when started as
/// [`crate::SANDBOX_ARG0`]).
pub fn main() -> ExitCode {
    // SAFETY: the shim started this process with its end of the control socket as CONTROL_FD
    // (see `sys::spawn`); nothing else in this process refers to that descriptor.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    sys::close_inherited_fds();
    let outbox = Outbox(Arc::new(Channel::new(control)));
    let setup = match outbox.0.recv() {
        Ok(Some(Incoming {
            body: Ok((bytes, _)),
            ..
        })) => match serde_json::from_slice::<Setup>(&bytes) {
            Ok(setup) => setup,
            Err(error) => return outbox.fail_setup(&format!("unreadable setup: {error}")),
        },
        Ok(Some(Incoming {
            body: Err(broken), ..
        })) => {
            return outbox.fail_setup(&format!("unreadable setup: {broken}"));
        }
        _ => return ExitCode::FAILURE,
    };
    // Counted while the cgroup's quota is still readable (see `Engine::cpus`).
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if let Err(error) = sys::isolate(&setup) {
        return outbox.fail_setup(&error_chain(&error));
    }
    // Threads start only now, after the seccomp filter (which they inherit).
    let engine = match Engine::new(CompileCache::new(&setup.cache_dir), setup.compile) {
        Ok(engine) => Arc::new(engine.cpus(cpus).compiled_elsewhere()),
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
    outbox.reply(0, Ok(Answer::Done));
    runtime.block_on(serve(engine, outbox));
    // The shim closed the socket: it is gone, and its guests go with it.
    ExitCode::SUCCESS
}

/// The sending half of the control socket, shared by the request loop and the guests' runners.
#[derive(Clone)]
struct Outbox(Arc<Channel>);

impl Outbox {
    fn send(&self, tag: u64, message: &Message) {
        let bytes = serde_json::to_vec(message).expect("messages serialize");
        // If the shim is gone there is nobody to tell; the request loop ends on its own.
        let _ = self.0.send(tag, &bytes, &[]);
    }

    /// Answers request `seq`.
    fn reply(&self, seq: u64, result: Result<Answer, String>) {
        self.send(seq, &Message::Reply(result));
    }

    fn fail_setup(&self, error: &str) -> ExitCode {
        self.reply(0, Err(error.to_owned()));
        ExitCode::FAILURE
    }
}

/// A guest workload in the sandbox (a container's init process or an exec), by its key: the
/// container id, or `ID/EXEC`.
struct Workload {
    prepared: Arc<Prepared>,
    /// Pause and live limits, for its run.
    controls: Controls,
    /// The detached mounts its spec reaches through `/proc/self/fd`; closed when it is
    /// deleted.
    _reached: Vec<OwnedFd>,
    /// Its stdio: handed to the run at start and closed the moment the guest ends and its
    /// output is read, as a process's stdio closes when it exits, so readers see end of file
    /// (Docker waits for it).
    stdio: Stdio,
}

/// A workload's stdio descriptors, its output FIFOs apart.
#[derive(Default)]
struct Stdio {
    /// stdout and stderr FIFOs, whose client reads them.
    fifos: Vec<OwnedFd>,
    /// Everything else: stdin, `file://` logs.
    _others: Vec<OwnedFd>,
}

/// How long an exit waits for a client that reads none of the output the guest left in its
/// FIFOs (none at all after `ctr run -d`); a client that reads, however slowly, is waited for.
const OUTPUT_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest an exit waits for its client at all: a pipe holds at most 64 KiB, which any
/// client that reads drains in far less, and one that reads a byte now and then (never
/// stalling for [`OUTPUT_STALL`]) must not hold the exit for hours.
const OUTPUT_READ_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether an exit should still wait for its client to read its output: while bytes are
/// unread and the client has read some within [`OUTPUT_STALL`], for at most
/// [`OUTPUT_READ_MAX`] in all.
struct OutputWait {
    unread: usize,
    started: tokio::time::Instant,
    progressed_at: tokio::time::Instant,
}

impl OutputWait {
    fn new(now: tokio::time::Instant) -> OutputWait {
        OutputWait {
            unread: usize::MAX,
            started: now,
            progressed_at: now,
        }
    }

    fn goes_on(&mut self, unread: usize, now: tokio::time::Instant) -> bool {
        if unread < self.unread {
            self.unread = unread;
            self.progressed_at = now;
        }
        unread > 0
            && now.duration_since(self.progressed_at) < OUTPUT_STALL
            && now.duration_since(self.started) < OUTPUT_READ_MAX
    }
}

impl Stdio {
    fn of<'a>(granted: impl IntoIterator<Item = (&'a Grant, OwnedFd)>) -> Stdio {
        let (fifos, others): (Vec<_>, Vec<_>) = granted
            .into_iter()
            .partition(|(grant, _)| grant.open == Open::Write);
        Stdio {
            fifos: fifos.into_iter().map(|(_, fd)| fd).collect(),
            _others: others.into_iter().map(|(_, fd)| fd).collect(),
        }
    }

    /// Closes the descriptors once the client has read what the guest wrote to its output
    /// FIFOs, so the exit that follows cannot overtake the output: a client stops reading at
    /// the exit (`ctr` cancels a reader it has not yet opened, Docker waits 2 s for the
    /// streams), and output still in the pipe was lost (up to a pipe's worth of a long
    /// listing, under load). A client that stops reading delays the exit by [`OUTPUT_STALL`].
    async fn close_once_read(self) {
        let mut wait = OutputWait::new(tokio::time::Instant::now());
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let unread = self
                .fifos
                .iter()
                .map(|fd| sys::unread_bytes(fd).unwrap_or(0))
                .sum();
            if !wait.goes_on(unread, tokio::time::Instant::now()) {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }
}

/// Where the running workloads' signals go, by key; shared with their runners, which remove
/// their own entry when the guest ends.
type Running = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<u32>>>>;

async fn serve(engine: Arc<Engine>, outbox: Outbox) {
    let (requests, mut inbox) = mpsc::unbounded_channel();
    let channel = outbox.0.clone();
    std::thread::Builder::new()
        .name("wasmcell-control".into())
        .spawn(move || {
            while let Ok(Some(incoming)) = channel.recv() {
                if requests.send(incoming).is_err() {
                    break;
                }
            }
        })
        .expect("control thread");
    let mut workloads = Workloads::default();
    let running: Running = Arc::default();
    // A request that arrives broken or unreadable fails alone; the pod's other containers
    // never hear of it.
    while let Some(Incoming { tag: seq, body }) = inbox.recv().await {
        let result = match body {
            Err(broken) => Err(format!(
                "the sandbox could not receive the request: {broken}"
            )),
            Ok((bytes, fds)) => match serde_json::from_slice(&bytes) {
                Ok(request) => {
                    handle(&engine, &outbox, &mut workloads, &running, request, fds).await
                }
                Err(error) => Err(format!("the sandbox could not read the request: {error}")),
            },
        };
        outbox.reply(seq, result);
    }
}

/// The sandbox's workloads by key, and what deleted ones had used, by container: a
/// container's CPU time must not go back when one of its execs is deleted.
#[derive(Default)]
struct Workloads {
    live: HashMap<String, Workload>,
    retired: HashMap<String, Usage>,
}

impl Workloads {
    /// What container `id`'s processes have used, live and deleted.
    fn usage(&self, id: &str) -> Usage {
        let exec_prefix = format!("{id}/");
        let live = self
            .live
            .iter()
            .filter(|(key, _)| *key == id || key.starts_with(&exec_prefix))
            .map(|(_, workload)| workload.controls.usage())
            .fold(Usage::default(), |sum, usage| sum + usage);
        let retired = self.retired.get(id).copied().unwrap_or_default();
        Usage {
            cpu_ns: live.cpu_ns + retired.cpu_ns,
            memory_bytes: live.memory_bytes,
        }
    }

    /// Forgets workload `key`, keeping its CPU time in its container's total (until the
    /// container itself is deleted); returns it, to be dropped off the request loop.
    fn delete(&mut self, key: &str) -> Option<Workload> {
        let workload = self.live.remove(key)?;
        match key.split_once('/') {
            Some((container, _)) => {
                let retired = self.retired.entry(container.to_owned()).or_default();
                retired.cpu_ns += workload.controls.usage().cpu_ns;
            }
            None => {
                self.retired.remove(key);
            }
        }
        Some(workload)
    }
}

async fn handle(
    engine: &Arc<Engine>,
    outbox: &Outbox,
    workloads: &mut Workloads,
    running: &Running,
    request: Request,
    fds: Vec<OwnedFd>,
) -> Result<Answer, String> {
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
                .partition(|(grant, _)| matches!(grant.open, Open::Reach(_)));
            let engine = engine.clone();
            let prepared = tokio::task::spawn_blocking(move || engine.prepare(*spec))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| error_chain(&e))?;
            let workload = Workload {
                controls: prepared.controls(),
                prepared: Arc::new(prepared),
                _reached: reached.into_iter().map(|(_, fd)| fd).collect(),
                stdio: Stdio::of(stdio),
            };
            workloads.live.insert(id, workload);
            Ok(Answer::Done)
        }
        Request::Start { id } => {
            let workload = workloads
                .live
                .get_mut(&id)
                .ok_or_else(|| format!("no workload {id}"))?;
            let (kill, mut signals) = mpsc::unbounded_channel();
            running
                .lock()
                .expect("running lock")
                .insert(id.clone(), kill);
            let (prepared, controls) = (workload.prepared.clone(), workload.controls.clone());
            let stdio = std::mem::take(&mut workload.stdio);
            let (outbox, running) = (outbox.clone(), running.clone());
            tokio::spawn(async move {
                let mut run = Box::pin(prepared.run(&controls));
                let (status, oom, killed) = loop {
                    tokio::select! {
                        exit = &mut run => break match exit {
                            Ok(exit) => {
                                let oom = matches!(exit, Exit::OutOfMemory { .. });
                                (exit.status(), oom, false)
                            }
                            // The engine has already said why on the guest's stderr.
                            Err(_) => (1, false, false),
                        },
                        Some(signal) = signals.recv() => {
                            // A server asked to stop finishes its requests and exits by itself;
                            // anything else, or any other signal, ends the guest now.
                            let polite = [libc::SIGTERM, libc::SIGINT].contains(&(signal as i32));
                            if polite && prepared.stops_gracefully() {
                                controls.terminate();
                            } else {
                                break (128 + signal, false, true);
                            }
                        }
                    }
                };
                // The guest's own descriptors first, so that what stays open is ours alone.
                drop(run);
                // A guest ended by a signal is gone at once, as a killed process is: its exit is
                // not held for a reader (after `ctr run -d` there is none, and `ctr task kill`
                // would wait for nothing).
                if killed {
                    drop(stdio);
                } else {
                    stdio.close_once_read().await;
                }
                let mut running = running.lock().expect("running lock");
                running.remove(&id);
                if !id.contains('/') {
                    // An init process took its container's execs with it, as PID 1 does.
                    let execs: Vec<String> = running
                        .keys()
                        .filter(|k| k.starts_with(&format!("{id}/")))
                        .cloned()
                        .collect();
                    for exec in execs {
                        let _ = running
                            .remove(&exec)
                            .map(|kill| kill.send(libc::SIGKILL as u32));
                    }
                }
                drop(running);
                outbox.send(UNSOLICITED, &Message::Exited { id, status, oom });
            });
            Ok(Answer::Done)
        }
        Request::Kill { id, signal } => {
            let running = running.lock().expect("running lock");
            match running.get(&id).map(|kill| kill.send(signal)) {
                Some(Ok(())) => Ok(Answer::Done),
                _ => Err(format!("{id} is not running")),
            }
        }
        Request::Pause { id } => {
            controls_of(workloads, &id)?.pause();
            Ok(Answer::Done)
        }
        Request::Resume { id } => {
            controls_of(workloads, &id)?.resume();
            Ok(Answer::Done)
        }
        Request::Update { id, limits } => {
            let controls = controls_of(workloads, &id)?;
            controls.set_memory_limit(limits.memory);
            controls.set_cpu_quota(limits.cpu);
            Ok(Answer::Done)
        }
        Request::Delete { id } => {
            // Its grants may hold the last reference to its rootfs's mount, and dropping that
            // syncs the filesystem under it (milliseconds): not on the loop serving the pod.
            if let Some(workload) = workloads.delete(&id) {
                tokio::task::spawn_blocking(move || drop(workload));
            }
            Ok(Answer::Done)
        }
        Request::Usage { id } => Ok(Answer::Usage(workloads.usage(&id))),
    }
}

/// The live controls of workload `id`.
fn controls_of<'a>(workloads: &'a Workloads, id: &str) -> Result<&'a Controls, String> {
    workloads
        .live
        .get(id)
        .map(|workload| &workload.controls)
        .ok_or_else(|| format!("no workload {id}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_exit_waits_for_a_reader_that_reads_and_not_for_one_that_stopped() {
        let start = tokio::time::Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut wait = OutputWait::new(start);
        assert!(!OutputWait::new(start).goes_on(0, start), "nothing unread");
        // A slow reader: a little less unread each second, for longer than the stall bound.
        for (second, unread) in [(0, 60_000), (1, 50_000), (2, 40_000), (3, 30_000)] {
            assert!(wait.goes_on(unread, at(second * 1000 + 999)));
        }
        assert!(!wait.goes_on(0, at(4000)), "all read");

        // A client reading a byte a second never stalls, but holds the exit 30 s at most.
        let mut trickle = OutputWait::new(start);
        for second in 0..30 {
            assert!(trickle.goes_on(60_000 - second, at(second as u64 * 1000)));
        }
        assert!(!trickle.goes_on(59_970, at(30_000)), "the bound in all");

        let mut stalled = OutputWait::new(start);
        assert!(stalled.goes_on(1000, at(0)));
        assert!(stalled.goes_on(1000, at(1999)));
        assert!(!stalled.goes_on(1000, at(2000)), "no reader for the bound");
    }
}
