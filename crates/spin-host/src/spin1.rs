//! Spin 1 components: core modules built with spin-sdk 1.x, before the component model, with
//! wit-bindgen 0.2's ABI ([`wasmcell_runtime::core_abi`]). The HTTP trigger calls their
//! `handle-http-request` export on a fresh instance per request (on the servers' pooling
//! engine, as Spin 2 components run), with the `request` record (and Spin 1.5's `client-addr`
//! when the export takes it) and Spin's headers; they get `spin-config` (the component's
//! variables) and `key-value` (its stores), over the same grants as a Spin 2 component's.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::Response;
use wasmtime::{Caller, InstancePre, Linker};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::host::{SpinHost, StoreHandle, check_value, fermyon::spin2_0_0::key_value};
use wasmcell_runtime::core_abi::{Abi, HttpRequest, METHODS, Ret, SendError};
use wasmcell_runtime::define_import as define;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::http::{
    Failure, Handler, HandlerFuture, HttpEngine, Server, is_pool_exhausted,
};
use wasmcell_runtime::state::{ModuleState, module_linker};
use wasmcell_runtime::stdio::Outputs;
use wasmcell_runtime::store::new_store;

/// The store state of a Spin 1 module: WASI preview 1 and its open stores.
type Spin1State = ModuleState<Spin1Instance>;

/// The export Spin 1's HTTP trigger calls.
pub(crate) const HANDLER: &str = "handle-http-request";

/// Whether `module` is a Spin 1 HTTP component: a core module exporting Spin 1's handler.
pub(crate) fn is_spin1(module: &[u8]) -> bool {
    wasmparser::Parser::new(0)
        .parse_all(module)
        .any(|payload| match payload {
            Ok(wasmparser::Payload::ExportSection(exports)) => exports
                .into_iter()
                .any(|export| export.is_ok_and(|e| e.name == HANDLER)),
            _ => false,
        })
}

/// A Spin 1 component ready to handle requests.
pub(crate) struct Spin1Pre {
    pre: InstancePre<Spin1State>,
    /// Whether its handler takes `client-addr` (Spin 1.5 and later's SDKs).
    client_addr: bool,
    /// Its files: (host directory, guest path), granted read-only.
    mounts: Vec<(std::path::PathBuf, String)>,
}

/// One instance's open stores, by the handles the guest holds.
pub(crate) struct Spin1Instance {
    host: Arc<SpinHost>,
    stores: Vec<Option<StoreHandle>>,
    /// Whether requests may leave (the container's network).
    network: bool,
}

impl Spin1Pre {
    /// Links `module` (loaded into the servers' `engine`) with WASI preview 1 and Spin 1's
    /// interfaces, and checks its handler's shape.
    pub(crate) fn new(
        http: &HttpEngine,
        module: &wasmtime::Module,
        mounts: Vec<(std::path::PathBuf, String)>,
    ) -> Result<Spin1Pre, String> {
        let client_addr = match module.get_export(HANDLER) {
            Some(wasmtime::ExternType::Func(ty)) if ty.results().len() == 1 => {
                match ty.params().len() {
                    10 => false,
                    12 => true,
                    _ => return Err(format!("its `{HANDLER}` is not Spin 1's handler")),
                }
            }
            _ => return Err(format!("it exports no `{HANDLER}` function")),
        };
        let linker = http
            .linkers()
            .get(|| {
                let mut linker = module_linker(http.engine())?;
                add_to_linker(&mut linker).map_err(Error::Engine)?;
                Ok(linker)
            })
            .map_err(|e| e.to_string())?;
        let pre = linker.instantiate_pre(module).map_err(|e| {
            format!(
                "cannot be linked: {e}. wasmcell provides Spin 1's spin-config, key-value and outbound-http to Spin 1 modules; outbound-redis, postgres and mysql are not provided: rebuild it with a current Spin SDK"
            )
        })?;
        Ok(Spin1Pre {
            pre,
            client_addr,
            mounts,
        })
    }
}

fn add_to_linker(linker: &mut Linker<Spin1State>) -> wasmtime::Result<()> {
    define!(
        linker,
        "spin-config",
        "get-config",
        get_config,
        key,
        len,
        ret
    );
    define!(linker, "key-value", "open", open, name, len, ret);
    define!(linker, "key-value", "get", get, store, key, len, ret);
    define!(
        linker,
        "key-value",
        "set",
        set,
        store,
        key,
        len,
        value,
        value_len,
        ret
    );
    define!(linker, "key-value", "delete", delete, store, key, len, ret);
    define!(linker, "key-value", "exists", exists, store, key, len, ret);
    define!(linker, "key-value", "get-keys", get_keys, store, ret);
    define!(linker, "key-value", "close", close, store);
    define!(
        linker,
        "outbound-http",
        "send-request",
        send_request,
        request
    );
    Ok(())
}

type Host<'a> = Caller<'a, Spin1State>;

fn instance<'a>(caller: &'a mut Host<'_>) -> &'a mut Spin1Instance {
    &mut caller.data_mut().host
}

/// `spin-config`'s `error::invalid-key`.
const INVALID_KEY: u8 = 1;

async fn get_config(caller: &mut Host<'_>, key: i32, len: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let key = abi.string(&*caller, key, len)?;
    let result = match instance(caller).host.variable(&key) {
        Some(value) => Ret::Bytes(value.clone().into_bytes()),
        None => Ret::Error(
            INVALID_KEY,
            format!("no variable {key:?} in the component's [component.ID.variables]"),
        ),
    };
    abi.ret(caller, ret, result).await
}

/// `key-value`'s `error` cases.
const NO_SUCH_STORE: u8 = 1;
const ACCESS_DENIED: u8 = 2;
const INVALID_STORE: u8 = 3;
const NO_SUCH_KEY: u8 = 4;
const IO: u8 = 5;

impl From<key_value::Error> for Ret {
    fn from(error: key_value::Error) -> Ret {
        match error {
            key_value::Error::NoSuchStore => Ret::Case(NO_SUCH_STORE),
            key_value::Error::AccessDenied => Ret::Case(ACCESS_DENIED),
            key_value::Error::StoreTableFull => Ret::Case(0),
            key_value::Error::Other(why) => Ret::Error(IO, why),
        }
    }
}

async fn open(caller: &mut Host<'_>, name: i32, len: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let label = abi.string(&*caller, name, len)?;
    let host = instance(caller).host.clone();
    let result = match host.open_store(label).await {
        Ok(handle) => {
            let stores = &mut instance(caller).stores;
            stores.push(Some(handle));
            Ret::Handle(stores.len() as i32 - 1)
        }
        Err(error) => error.into(),
    };
    abi.ret(caller, ret, result).await
}

/// The store behind `handle`, if it is open.
fn store(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<Option<StoreHandle>> {
    let stores = &instance(caller).stores;
    Ok(stores.get(handle as usize).cloned().flatten())
}

/// A `key-value` function on the store behind `handle` and the key at `key`/`len`: `op`'s
/// answer, or `invalid-store` for a handle that is not open.
async fn on_key<F>(
    caller: &mut Host<'_>,
    handle: i32,
    (key, len): (i32, i32),
    ret: i32,
    op: impl FnOnce(StoreHandle, String) -> F,
) -> wasmtime::Result<()>
where
    F: Future<Output = Ret>,
{
    let abi = Abi::of_caller(caller)?;
    let key = abi.string(&*caller, key, len)?;
    let result = match store(caller, handle)? {
        None => Ret::Case(INVALID_STORE),
        Some(store) => op(store, key).await,
    };
    abi.ret(caller, ret, result).await
}

async fn get(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    on_key(caller, handle, (key, len), ret, |store, key| async move {
        match store.get(&key).await {
            Ok(Some(value)) => Ret::Bytes(value),
            Ok(None) => Ret::Case(NO_SUCH_KEY),
            Err(why) => Ret::Error(IO, why),
        }
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn set(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    value: i32,
    value_len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let key = abi.string(&*caller, key, len)?;
    let value = abi.bytes(&*caller, value, value_len)?;
    let result = match (store(caller, handle)?, check_value(&value)) {
        (None, _) => Ret::Case(INVALID_STORE),
        (_, Err(too_large)) => Ret::Error(IO, too_large),
        (Some(store), Ok(())) => match store.set(&key, &value).await {
            Ok(()) => Ret::Unit,
            Err(why) => Ret::Error(IO, why),
        },
    };
    abi.ret(caller, ret, result).await
}

async fn delete(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    on_key(caller, handle, (key, len), ret, |store, key| async move {
        match store.delete(&key).await {
            Ok(()) => Ret::Unit,
            Err(why) => Ret::Error(IO, why),
        }
    })
    .await
}

async fn exists(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    on_key(caller, handle, (key, len), ret, |store, key| async move {
        match store.get(&key).await {
            Ok(value) => Ret::Bool(value.is_some()),
            Err(why) => Ret::Error(IO, why),
        }
    })
    .await
}

async fn get_keys(caller: &mut Host<'_>, handle: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let result = match store(caller, handle)? {
        None => Ret::Case(INVALID_STORE),
        Some(store) => match store.keys().await {
            Ok(keys) => Ret::Strings(keys),
            Err(why) => Ret::Error(IO, why),
        },
    };
    abi.ret(caller, ret, result).await
}

async fn close(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<()> {
    if let Some(slot) = instance(caller).stores.get_mut(handle as usize) {
        *slot = None;
    }
    Ok(())
}

/// `outbound-http`'s `http-error` cases (an enum).
const DESTINATION_NOT_ALLOWED: u8 = 1;
const INVALID_URL: u8 = 2;
const REQUEST_ERROR: u8 = 3;

/// `outbound-http`'s `send-request`: to a host the component's `allowed_outbound_hosts`
/// allows, or refused with a line on stderr saying what to add, as for Spin 2 components.
async fn send_request(caller: &mut Host<'_>, record: [i32; 10], ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let outgoing = abi.outgoing(&*caller, record)?;
    let Spin1Instance { host, network, .. } = instance(caller);
    let (host, network) = (host.clone(), *network);
    let result = match outgoing.uri.parse::<http::Uri>() {
        Err(_) => Ret::Case(INVALID_URL),
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("http").to_owned();
            let name = uri.host().unwrap_or_default().to_ascii_lowercase();
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            if !network || !host.allowed_hosts.allows(&scheme, &name, port) {
                let target = format!("{scheme}://{name}:{port}");
                host.report_denied(&target, &target);
                Ret::Case(DESTINATION_NOT_ALLOWED)
            } else {
                match wasmcell_runtime::core_abi::send(outgoing).await {
                    Ok(response) => Ret::Response(response),
                    Err(SendError::InvalidUrl(_)) => Ret::Case(INVALID_URL),
                    Err(SendError::Protocol(why) | SendError::Timeout(why)) => {
                        tracing::warn!(component = %host.id, "outbound-http: {why}");
                        Ret::Case(REQUEST_ERROR)
                    }
                }
            }
        }
    };
    abi.ret(caller, ret, result).await
}

/// A Spin 1 component as its HTTP trigger calls it.
pub(crate) struct Spin1Handler {
    pub(crate) pre: Spin1Pre,
    pub(crate) host: Arc<SpinHost>,
    pub(crate) env: Vec<(String, String)>,
}

impl Handler for Spin1Handler {
    fn handle<'a>(
        &'a self,
        server: &'a Arc<Server>,
        outputs: &'a Arc<Outputs>,
        request: hyper::Request<wasmtime_wasi_http::WasiBody>,
        peer: std::net::SocketAddr,
    ) -> HandlerFuture<'a> {
        Box::pin(handle(server, outputs, self, request, peer))
    }
}

/// One request to a Spin 1 component: a fresh instance of its module, its
/// `handle-http-request` called with the request (its Spin headers already set), its
/// `response` returned.
async fn handle(
    server: &Server,
    outputs: &Outputs,
    Spin1Handler { pre, host, env }: &Spin1Handler,
    request: hyper::Request<wasmtime_wasi_http::WasiBody>,
    client: std::net::SocketAddr,
) -> Result<Response<HyperOutgoingBody>, Failure> {
    let timeout = server.spec().http.timeout;
    let failed = |error: &dyn std::fmt::Display| Failure::Failed(error.to_string());
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| failed(&e))?.to_bytes();
    let request = HttpRequest {
        method: METHODS
            .iter()
            .position(|m| *m == parts.method)
            .ok_or_else(|| {
                Failure::Failed(format!("Spin 1 handlers take no {} requests", parts.method))
            })? as i32,
        uri: parts.uri.to_string(),
        headers: wasmcell_runtime::core_abi::header_pairs(&parts.headers),
        params: Vec::new(),
        client_addr: pre.client_addr.then(|| client.to_string()),
        body,
    };
    let mut wasi = host.wasi_base(server.spec().network);
    wasi.envs(env);
    host.outputs(outputs).attach(&mut wasi);
    for (dir, guest) in &pre.mounts {
        wasi.preopened_dir(dir, guest, wasmtime_wasi::FsPerms::ReadOnly)
            .map_err(|e| failed(&e))?;
    }
    let state = ModuleState {
        wasi: wasi.build_p1(),
        budget: server.budget()?,
        host: Spin1Instance {
            host: host.clone(),
            stores: Vec::new(),
            network: server.spec().network == wasmcell_workload::Network::Inherit,
        },
    };
    let mut store = new_store(server.engine(), state, server.controls());
    let call = async {
        let instance = pre.pre.instantiate_async(&mut store).await?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call_async(&mut store, ()).await?;
        }
        let abi = Abi::of_instance(&mut store, &instance)?;
        let args = abi.request(&mut store, &request).await?;
        let func = instance
            .get_func(&mut store, HANDLER)
            .ok_or_else(|| wasmtime::format_err!("no `{HANDLER}`"))?;
        let mut ret = [wasmtime::Val::I32(0)];
        func.call_async(&mut store, &args, &mut ret).await?;
        abi.response(&store, ret[0].unwrap_i32())
    };
    let response = match tokio::time::timeout(timeout, call).await {
        Err(_) => return Err(Failure::TimedOut(timeout)),
        Ok(Ok(response)) => response,
        Ok(Err(_)) if store.data().budget.limiter.exceeded() => return Err(Failure::OutOfMemory),
        Ok(Err(error)) if is_pool_exhausted(&error) => return Err(Failure::Busy),
        Ok(Err(error)) => return Err(Failure::Failed(format!("the handler failed: {error:?}"))),
    };
    let response = response
        .into_http()
        .map_err(|why| Failure::Failed(format!("the handler failed: {why}")))?;
    Ok(response.map(|body| body.map_err(|never| match never {}).boxed_unsync()))
}
