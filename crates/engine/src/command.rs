//! Guests that run once, from their entry to their exit: a core module's entry function (with
//! WasmEdge's sockets where it was built for them), or a component's `wasi:cli/run`.

use std::sync::Arc;

use wasmtime::InstancePre;
use wasmtime::component::Linker;
use wasmtime_wasi::p2::bindings::CommandPre;

use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::exit::Exit;
use wasmcell_runtime::http::exports;
use wasmcell_runtime::outbound::HttpHooks;
use wasmcell_runtime::run::{Run, RunFuture};
use wasmcell_runtime::state::{ComponentState, ModuleState};
use wasmcell_runtime::stdio;
use wasmcell_runtime::store::{Budget, new_store};
use wasmcell_runtime::wasi::wasi_builder;
use wasmcell_wasmedge::{WasmEdge, WasmEdgeState};
use wasmcell_workload::WorkloadSpec;

/// A core module's entry function.
pub(crate) struct ModuleCommand {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) ticker: Ticker,
    pub(crate) pre: InstancePre<WasmEdgeState>,
    pub(crate) function: String,
    /// Whether the module is built for WasmEdge's sockets.
    pub(crate) wasmedge: bool,
}

/// A component's `wasi:cli/run`, its instances holding `host` (a capability's grants, or
/// nothing).
pub(crate) struct ComponentCommand<H: Send + 'static> {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) ticker: Ticker,
    pub(crate) pre: RunExport<H>,
    pub(crate) host: H,
}

/// The `run` a component exports: WASI 0.2's, or 0.3's (an async function, called on the
/// store's event loop).
pub(crate) enum RunExport<H: Send + 'static> {
    P2(CommandPre<ComponentState<H>>),
    P3(wasmtime_wasi::p3::bindings::CommandPre<ComponentState<H>>),
}

/// The interface name whose export makes a component a WASI 0.3 command.
const RUN_P3: &str = "wasi:cli/run@0.3";

impl<H: Send + 'static> ComponentCommand<H> {
    /// Links `component` for `wasi:cli/run` with `linker`; `path` names it in errors.
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        ticker: &Ticker,
        linker: &Linker<ComponentState<H>>,
        component: &wasmtime::component::Component,
        path: &str,
        host: H,
    ) -> Result<ComponentCommand<H>, Error> {
        let link_err = |source| Error::Link {
            path: path.to_owned(),
            source,
        };
        let pre = linker.instantiate_pre(component).map_err(link_err)?;
        let pre = match exports(engine, component, RUN_P3) {
            true => {
                RunExport::P3(wasmtime_wasi::p3::bindings::CommandPre::new(pre).map_err(link_err)?)
            }
            false => RunExport::P2(CommandPre::new(pre).map_err(link_err)?),
        };
        Ok(ComponentCommand {
            engine: engine.clone(),
            ticker: ticker.clone(),
            pre,
            host,
        })
    }
}

/// A fresh run's WASI context (the spec's args, env, preopens and stdio), budget and outputs.
async fn start(
    spec: &WorkloadSpec,
    ticker: &Ticker,
    controls: &Controls,
) -> Result<(wasmtime_wasi::WasiCtxBuilder, Budget, stdio::Outputs), Error> {
    let mut wasi = wasi_builder(spec)?;
    let outputs = stdio::attach(&mut wasi, &spec.stdio).await?;
    let clock = ticker.store_clock().map_err(|e| Error::Engine(e.into()))?;
    Ok((wasi, Budget::new(controls, clock), outputs))
}

impl Run for ModuleCommand {
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a> {
        Box::pin(async move {
            let (mut wasi, budget, outputs) = start(spec, &self.ticker, controls).await?;
            let state = ModuleState {
                wasi: wasi.build_p1(),
                budget,
                host: self.wasmedge.then(|| Box::new(WasmEdge::new(spec))),
            };
            let mut store = new_store(&self.engine, state, controls);
            // Instantiation can fail like a run does (a start function traps, a data segment
            // passes the memory limit): both end as an `Exit`.
            let result = async {
                let instance = self.pre.instantiate_async(&mut store).await?;
                // A library module (WASI reactor) is initialised before its entry function.
                if self.function != "_start"
                    && let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize")
                {
                    init.call_async(&mut store, ()).await?;
                }
                let entry = instance.get_typed_func::<(), ()>(&mut store, &self.function)?;
                entry.call_async(&mut store, ()).await
            }
            .await;
            let exit = Exit::of(result, &store.data().budget.limiter);
            drop(store);
            outputs.written().await;
            Ok(exit)
        })
    }

    fn stops_gracefully(&self) -> bool {
        false
    }
}

impl<H: Clone + Send + Sync + 'static> Run for ComponentCommand<H> {
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a> {
        Box::pin(async move {
            let (mut wasi, budget, outputs) = start(spec, &self.ticker, controls).await?;
            let hooks = HttpHooks::new(spec.network);
            let state = ComponentState::new(wasi.build(), hooks, budget, self.host.clone());
            let mut store = new_store(&self.engine, state, controls);
            let result = match &self.pre {
                RunExport::P2(pre) => {
                    async {
                        let command = pre.instantiate_async(&mut store).await?;
                        command.wasi_cli_run().call_run(&mut store).await
                    }
                    .await
                }
                RunExport::P3(pre) => {
                    async {
                        let command = pre.instantiate_async(&mut store).await?;
                        store
                            .run_concurrent(async |accessor| {
                                command.wasi_cli_run().call_run(accessor).await
                            })
                            .await?
                    }
                    .await
                }
            };
            let exit = Exit::of_run(result, &store.data().budget.limiter);
            drop(store);
            outputs.written().await;
            Ok(exit)
        })
    }

    fn stops_gracefully(&self) -> bool {
        false
    }
}
