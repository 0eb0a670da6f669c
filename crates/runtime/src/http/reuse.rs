//! Instances of a WASI 0.3 handler that serve several requests at once (the spec's
//! `instance_concurrency` past 1): an instance is a worker task that owns its store and runs
//! its event loop, each request a concurrent call of `handle` in it.
//!
//! A request goes to a worker with a free place (fewer than `instance_concurrency` requests in
//! it, fewer than [`SERVED`] in all), else to a new worker. A worker ends after [`IDLE`]
//! without a request, after [`SERVED`], or when its instance traps; its requests in flight then
//! fail with the trap. Requests in an instance share its memory, limits and fate: one past its
//! deadline ends the instance (as wasmtime's own server ends it), and the others in it with it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hyper::{Request, Response};
use tokio::sync::{Notify, mpsc, oneshot};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::{Service as Bound, ServicePre};

use super::proxy::{answered_with, failure_of};
use super::service::{Answer, answer};
use super::{Failure, Server};
use crate::state::ComponentState;
use crate::store::new_store;

/// Requests an instance serves before a fresh one takes its place (wasmtime serve's default):
/// whatever a guest leaks per request is bounded.
const SERVED: usize = 128;

/// How long an instance waits for its next request before it ends.
const IDLE: Duration = Duration::from_secs(1);

/// A request for a worker, and where its answer goes.
struct Job {
    request: Request<wasmtime_wasi_http::WasiBody>,
    answer: oneshot::Sender<Answer>,
}

/// One instance serving requests.
struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Requests given to it and not yet answered.
    in_flight: AtomicUsize,
    /// Requests given to it in all.
    taken: AtomicUsize,
    /// Set when it takes no more: idle, served its share, or failed.
    closed: AtomicBool,
    /// Why its instance ended, when it failed; and a signal when it ends.
    failure: OnceLock<Failure>,
    ended: Notify,
    task: OnceLock<tokio::task::AbortHandle>,
    /// The server thread it runs on (each has a runtime of its own, see `server::serve`).
    thread: std::thread::ThreadId,
}

impl Worker {
    /// Takes a place for a request, if it has one.
    fn take(&self, concurrency: usize) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= concurrency || self.taken.fetch_add(1, Ordering::AcqRel) >= SERVED {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Waits for its task to end; why, if it failed.
    async fn failure(&self) -> Failure {
        loop {
            let ended = self.ended.notified();
            if let Some(failure) = self.failure.get() {
                return failure.clone();
            }
            if self.task.get().is_some_and(|task| task.is_finished()) {
                return Failure::Failed("the instance ended without answering".to_owned());
            }
            ended.await;
        }
    }
}

/// The workers of one handler.
pub struct Workers<T: 'static> {
    pre: ServicePre<T>,
    workers: Mutex<Vec<Arc<Worker>>>,
}

impl<H: Send + 'static> Workers<ComponentState<H>> {
    /// Workers of instances of `pre`.
    pub fn new(pre: ServicePre<ComponentState<H>>) -> Self {
        Workers {
            pre,
            workers: Mutex::default(),
        }
    }

    /// Serves `request` in an instance with a free place, or in a new one made with `state`
    /// (made by the caller only when needed).
    pub async fn serve(
        &self,
        server: &Arc<Server>,
        state: impl FnOnce() -> Result<ComponentState<H>, Failure>,
        request: Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let concurrency = server.spec().http.instance_concurrency;
        let mut state = Some(state);
        let mut job = Job {
            request,
            answer: oneshot::channel().0,
        };
        let (worker, answered) = loop {
            let worker = self.place(server, concurrency, &mut state)?;
            let (answer, answered) = oneshot::channel();
            job.answer = answer;
            match worker.jobs.send(job) {
                Ok(()) => break (worker, answered),
                // It closed between taking the place and the send: another takes the job.
                Err(mpsc::error::SendError(unsent)) => {
                    worker.closed.store(true, Ordering::Release);
                    job = unsent;
                }
            }
        };
        let timeout = server.spec().http.timeout;
        let Ok(answer) = tokio::time::timeout(timeout, answered).await else {
            worker.closed.store(true, Ordering::Release);
            if let Some(task) = worker.task.get() {
                task.abort();
            }
            return Err(Failure::TimedOut(timeout));
        };
        match answer {
            Ok(answer) => answer.map_err(answered_with),
            Err(_) => Err(worker.failure().await),
        }
    }

    /// A worker with a place taken for a request: one with a free place, or a new one in a
    /// store of `state` (which only the first new worker may use: a later one fails).
    fn place(
        &self,
        server: &Arc<Server>,
        concurrency: usize,
        state: &mut Option<impl FnOnce() -> Result<ComponentState<H>, Failure>>,
    ) -> Result<Arc<Worker>, Failure> {
        let mut workers = self.workers.lock().expect("workers lock");
        workers.retain(|worker| !worker.closed.load(Ordering::Acquire));
        // Only a worker on this request's own thread: a job sent to another thread's worker
        // wakes that thread, and its answer wakes this one back.
        let here = std::thread::current().id();
        let mut here_workers = workers.iter().filter(|worker| worker.thread == here);
        if let Some(worker) = here_workers.find(|worker| worker.take(concurrency)) {
            return Ok(worker.clone());
        }
        let state = state
            .take()
            .ok_or_else(|| Failure::Failed("no instance could take the request".to_owned()))?;
        let worker = self.start(server, state()?);
        worker.take(concurrency);
        workers.push(worker.clone());
        Ok(worker)
    }

    /// Starts a worker: an instance in a store of `state`.
    fn start(&self, server: &Arc<Server>, state: ComponentState<H>) -> Arc<Worker> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker {
            jobs,
            in_flight: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            failure: OnceLock::new(),
            ended: Notify::new(),
            task: OnceLock::new(),
            thread: std::thread::current().id(),
        });
        let store = new_store(server.engine(), state, server.controls());
        let task = tokio::spawn(work(self.pre.clone(), store, queue, worker.clone()));
        let _ = worker.task.set(task.abort_handle());
        worker
    }
}

/// A worker's life: instantiate, serve what comes, end idle, full or failed.
async fn work<H: Send + 'static>(
    pre: ServicePre<ComponentState<H>>,
    mut store: wasmtime::Store<ComponentState<H>>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    worker: Arc<Worker>,
) {
    let result = async {
        let service = pre.instantiate_async(&mut store).await?;
        store
            .run_concurrent(async |accessor| {
                let mut calls = FuturesUnordered::new();
                loop {
                    tokio::select! {
                        job = queue.recv() => match job {
                            Some(job) => calls.push(call(accessor, &service, job, &worker)),
                            None => break,
                        },
                        Some(called) = calls.next(), if !calls.is_empty() => called?,
                        () = tokio::time::sleep(IDLE), if calls.is_empty() => break,
                    }
                    if worker.taken.load(Ordering::Acquire) >= SERVED {
                        worker.closed.store(true, Ordering::Release);
                    }
                }
                // No more requests come; those already sent are served.
                worker.closed.store(true, Ordering::Release);
                queue.close();
                while let Ok(job) = queue.try_recv() {
                    calls.push(call(accessor, &service, job, &worker));
                }
                while let Some(called) = calls.next().await {
                    called?;
                }
                // Bodies still streaming: run until the guest is done.
                std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                wasmtime::Result::<()>::Ok(())
            })
            .await?
    }
    .await;
    worker.closed.store(true, Ordering::Release);
    if let Err(failure) = failure_of(result, &store.data().budget) {
        let _ = worker.failure.set(failure);
    }
    worker.ended.notify_waiters();
}

/// One request, as a concurrent call of `handle`; its answer sent as soon as it has one.
async fn call<H: Send + 'static>(
    accessor: &wasmtime::component::Accessor<ComponentState<H>>,
    service: &Bound,
    job: Job,
    worker: &Worker,
) -> wasmtime::Result<()> {
    let answer = answer(accessor, service, job.request).await?;
    worker.in_flight.fetch_sub(1, Ordering::AcqRel);
    let _ = job.answer.send(answer);
    Ok(())
}
