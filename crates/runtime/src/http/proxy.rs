//! `wasi:http/proxy` components as request handlers: a fresh instance per request, its
//! `incoming-handler` called with the request, within the deadline and limits.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Request, Response};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::{Failure, Handler, HandlerFuture, Routes, Server, is_pool_exhausted};
use crate::error::Error;
use crate::outbound::HttpHooks;
use crate::state::ComponentState;
use crate::stdio::Outputs;
use crate::store::{Budget, new_store};
use crate::wasi::{add_preopens, wasi_base};
use wasmcell_workload::WorkloadSpec;

/// What each instance of a handler starts from besides its framework's grants.
#[derive(Clone)]
pub struct Start {
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its preopened directories, opened once. They are `O_PATH` descriptors, which carry no
    /// offset or other state one request's guest could change for the next; opening them per
    /// request was a path walk through `/proc/self/fd` for each.
    pub preopens: WasiFilesystemCtx,
}

impl Start {
    /// The spec's args, env and preopens: what a workload's one component starts from.
    pub fn of_spec(spec: &WorkloadSpec) -> Result<Start, Error> {
        let mut preopens = WasiCtxBuilder::new();
        add_preopens(&mut preopens, spec)?;
        Ok(Start {
            env: spec.env.clone(),
            args: spec.args.clone(),
            preopens: preopens.build().filesystem().clone(),
        })
    }

    /// A fresh instance's state on `server`, holding `host`: these args, env and preopens, the
    /// server's working directory, network and outgoing-request policy, `outputs`, and its
    /// budget.
    pub fn state<H>(
        &self,
        server: &Server,
        outputs: &Outputs,
        host: H,
    ) -> Result<ComponentState<H>, Failure> {
        let wasi = self.wasi(wasi_base(server.spec()), outputs);
        let hooks = HttpHooks::new(server.spec().network);
        Ok(ComponentState::new(wasi, hooks, server.budget()?, host))
    }

    /// An instance's WASI context: `base` (the working directory, the network as its
    /// framework grants it) with these args, env and preopens, and `outputs` as its stdout and
    /// stderr.
    pub fn wasi(&self, mut base: WasiCtxBuilder, outputs: &Outputs) -> wasmtime_wasi::WasiCtx {
        base.args(&self.args).envs(&self.env);
        outputs.attach(&mut base);
        let mut wasi = base.build();
        *wasi.filesystem() = self.preopens.clone();
        wasi
    }
}

/// A `wasi:http/proxy` component whose instances hold `host` (their capability's grants, or
/// nothing), and get the workload's working directory, network and outgoing requests.
pub struct Proxy<H: Send + 'static> {
    /// The component, linked.
    pub pre: ProxyPre<ComponentState<H>>,
    /// What its instances start from.
    pub start: Start,
    /// What each instance holds for its capability.
    pub host: H,
}

impl<H: Clone + Send + Sync + 'static> Handler for Proxy<H> {
    fn handle<'a>(
        &'a self,
        server: &'a Arc<Server>,
        outputs: &'a Arc<Outputs>,
        request: Request<wasmtime_wasi_http::WasiBody>,
        _peer: SocketAddr,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let state = self.start.state(server, outputs, self.host.clone())?;
            run_proxy(server, &self.pre, state, request).await
        })
    }
}

/// Every path to one handler.
pub struct AllPaths(pub Arc<dyn Handler>);

impl Routes for AllPaths {
    fn route(
        &self,
        _spec: &WorkloadSpec,
        _request: &mut http::request::Parts,
        _client: SocketAddr,
    ) -> Result<Arc<dyn Handler>, Box<Response<HyperOutgoingBody>>> {
        Ok(self.0.clone())
    }
}

/// Instantiates `pre` in a store of `state` and calls its `incoming-handler` with `request`,
/// within the spec's deadline. The handler runs on as its own task after it sets the response:
/// it streams the body.
pub async fn run_proxy<H: Send + 'static>(
    server: &Server,
    pre: &ProxyPre<ComponentState<H>>,
    state: ComponentState<H>,
    request: Request<wasmtime_wasi_http::WasiBody>,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let failed = |error: &dyn std::fmt::Display| Failure::Failed(error.to_string());
    let timeout = server.spec().http.timeout;
    let mut store = new_store(server.engine(), state, server.controls());
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let view = store.data_mut();
    let request = view
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(|e| failed(&e))?;
    let out = view
        .http()
        .new_response_outparam(sender)
        .map_err(|e| failed(&e))?;
    let pre = pre.clone();
    let task = tokio::spawn(async move {
        let result = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
        }
        .await;
        failure_of(result, &store.data().budget)
    });
    answered(timeout, receiver, task).await
}

/// The failure of a handler that answered with an error code instead of a response.
pub(super) fn answered_with(code: impl std::fmt::Debug) -> Failure {
    Failure::Failed(format!("the handler answered with an error: {code:?}"))
}

/// What a handler's run came to when it set no response (or after): the memory limit, a full
/// pool, or a failure.
pub(super) fn failure_of(result: wasmtime::Result<()>, budget: &Budget) -> Result<(), Failure> {
    match result {
        Ok(()) => Ok(()),
        Err(_) if budget.limiter.exceeded() => Err(Failure::OutOfMemory),
        Err(error) if is_pool_exhausted(&error) => Err(Failure::Busy),
        Err(error) => Err(Failure::Failed(format!("the handler failed: {error:?}"))),
    }
}

/// Waits, within `timeout`, for what the handler running as `task` answers on `answer`: its
/// response, its error code, or (the channel dropped) why its task ended without one. Past the
/// deadline the task is aborted. One deadline for a handler computing in wasm (it yields at
/// every epoch tick, so the timer fires and the abort lands at its next tick) and for one
/// waiting in a host call.
pub(super) async fn answered<E: std::fmt::Debug>(
    timeout: std::time::Duration,
    answer: tokio::sync::oneshot::Receiver<Result<Response<HyperOutgoingBody>, E>>,
    task: tokio::task::JoinHandle<Result<(), Failure>>,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let Ok(answer) = tokio::time::timeout(timeout, answer).await else {
        task.abort();
        return Err(Failure::TimedOut(timeout));
    };
    match answer {
        Ok(answer) => answer.map_err(answered_with),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(Failure::Failed(
                "the handler returned without setting a response".to_owned(),
            )),
            Ok(Err(failure)) => Err(failure),
            Err(join) => Err(Failure::Failed(format!(
                "the handler's task failed: {join}"
            ))),
        },
    }
}
