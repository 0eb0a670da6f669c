//! The store types guests run in, generic over what a capability keeps per instance (`H`):
//! WasmEdge's sockets, a Spin component's grants, a slight app's handles, or nothing. The
//! capability implements its host interfaces on its own instantiation of these types
//! (`ComponentState<Arc<SpinHost>>`, ...), so the kernel never names one, as
//! `wasmtime-wasi` is generic over its embedder's store through `WasiView`.

use wasmtime::Linker;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::RequestOptions;
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::error::Error;
use crate::outbound::{HttpHooks, uri_of};
use crate::store::{Budget, HasBudget};

/// The store state of a core module (WASI preview 1).
pub struct ModuleState<H> {
    /// Its WASI preview 1 context.
    pub wasi: WasiP1Ctx,
    /// Its limits and its part in the epoch clock.
    pub budget: Budget,
    /// What the capability that linked the module keeps per instance.
    pub host: H,
}

/// The store state of a component (WASI 0.2, with `wasi:http`).
pub struct ComponentState<H> {
    /// Its WASI context.
    pub wasi: WasiCtx,
    /// Its resources: WASI's and every capability's.
    pub table: ResourceTable,
    /// Its `wasi:http` context.
    pub http: WasiHttpCtx,
    /// Where its outgoing requests may go.
    pub hooks: HttpHooks,
    /// Its limits and its part in the epoch clock.
    pub budget: Budget,
    /// What the capability that linked the component keeps per instance.
    pub host: H,
}

impl<H> ComponentState<H> {
    /// A fresh component state: an empty resource table and `wasi:http` context.
    pub fn new(wasi: WasiCtx, hooks: HttpHooks, budget: Budget, host: H) -> ComponentState<H> {
        ComponentState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks,
            budget,
            host,
        }
    }
}

impl<H: Send + 'static> HasBudget for ModuleState<H> {
    fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }
}

impl<H: Send + 'static> HasBudget for ComponentState<H> {
    fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }
}

impl<H: Send> WasiView for ComponentState<H> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl<H: Send> WasiHttpView for ComponentState<H> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The linker for preview 1 modules.
pub fn module_linker<H: Send + 'static>(
    engine: &wasmtime::Engine,
) -> Result<Linker<ModuleState<H>>, Error> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut ModuleState<H>| {
        &mut state.wasi
    })
    .map_err(Error::Engine)?;
    Ok(linker)
}

/// The linker for components: all of WASI 0.2 (Rust's std on wasm32-wasip2 imports
/// `wasi:cli/environment`, `exit` and `terminal-*` even in an HTTP handler) and `wasi:http`,
/// its `outgoing-handler.handle` refusing what the instance's outbound policy does not permit
/// with `HTTP-request-denied` (see `crate::outbound`).
pub fn component_linker<H: Send + 'static>(
    engine: &wasmtime::Engine,
) -> Result<wasmtime::component::Linker<ComponentState<H>>, Error> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(Error::Engine)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(Error::Engine)?;
    // WASI 0.3 (`@0.3.0` names, beside 0.2's): the same grants, through the same views and
    // hooks (an outgoing 0.3 request goes through the policy's `send_request`).
    wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(Error::Engine)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(Error::Engine)?;
    linker.allow_shadowing(true);
    linker
        .instance(OUTGOING_HANDLER)
        .and_then(|mut handler| handler.func_wrap("handle", checked_handle::<H>))
        .map_err(Error::Engine)?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// The name wasmtime-wasi-http links `outgoing-handler` by: its WIT's version, which a guest's
/// import of any 0.2 version matches.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

/// `outgoing-handler.handle`: wasmtime-wasi-http's, after the instance's policy permitted the
/// request; otherwise `HTTP-request-denied`, and the request is consumed as `handle` consumes it.
#[allow(clippy::type_complexity)] // The interface's signature.
fn checked_handle<H: Send + 'static>(
    mut store: wasmtime::StoreContextMut<'_, ComponentState<H>>,
    (request, options): (
        Resource<HostOutgoingRequest>,
        Option<Resource<RequestOptions>>,
    ),
) -> wasmtime::Result<(Result<Resource<HostFutureIncomingResponse>, ErrorCode>,)> {
    let state = store.data_mut();
    // Fails closed: a request whose URI cannot be made is refused before any policy sees it.
    let refused = match uri_of(state.table.get(&request)?) {
        None => Some(ErrorCode::HttpRequestUriInvalid),
        Some(uri) if !state.hooks.permits(&uri) => Some(ErrorCode::HttpRequestDenied),
        Some(_) => None,
    };
    if let Some(code) = refused {
        state.table.delete(request)?;
        return Ok((Err(code),));
    }
    let mut view = state.http();
    match outgoing_handler::Host::handle(&mut view, request, options) {
        Ok(response) => Ok((Ok(response),)),
        Err(error) => Ok((Err(error.downcast()?),)),
    }
}
