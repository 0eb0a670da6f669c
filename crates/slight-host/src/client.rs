//! slight's `http-client` interface: one `request`, sent as the app's plain components send
//! theirs ([`wasmcell_runtime::core_abi::send`]: HTTP and HTTPS, the container's network), if the
//! slightfile declares `http-client` and the container has a network.

use wasmtime::{Caller, Linker};

use super::instance;
use crate::SlightState;
use wasmcell_runtime::core_abi::{Abi, Ret, SendError};
use wasmcell_runtime::define_import as define;

type Host<'a> = Caller<'a, SlightState>;

/// `http-error`'s cases.
const INVALID_URL: u8 = 0;
const TIMEOUT: u8 = 1;
const PROTOCOL: u8 = 2;
const UNEXPECTED: u8 = 4;

pub(super) fn add_to_linker(linker: &mut Linker<SlightState>) -> wasmtime::Result<()> {
    define!(linker, "http-client", "request", request, request);
    Ok(())
}

async fn request(caller: &mut Host<'_>, record: [i32; 10], ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let outgoing = abi.outgoing(&*caller, record)?;
    let host = instance(caller).host.clone();
    let result = if !host.app.http_client {
        let why = "request: slightfile.toml declares no `http-client` capability: add a [[capability]] with resource = \"http-client\"";
        host.refuse(UNEXPECTED, why.to_owned()).into()
    } else if !host.network {
        let why = "request: the app has no network to send requests on";
        host.refuse(UNEXPECTED, why.to_owned()).into()
    } else {
        match wasmcell_runtime::core_abi::send(outgoing).await {
            Ok(response) => Ret::Response(response),
            Err(SendError::InvalidUrl(why)) => Ret::Error(INVALID_URL, why),
            Err(SendError::Protocol(why)) => Ret::Error(PROTOCOL, why),
            Err(SendError::Timeout(why)) => Ret::Error(TIMEOUT, why),
        }
    };
    abi.ret(caller, ret, result).await
}
