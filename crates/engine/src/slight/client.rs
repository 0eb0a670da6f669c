//! slight's `http-client` interface: one `request`, sent as the app's plain components send
//! theirs (wasmtime-wasi-http's client: HTTP and HTTPS, the container's network), if the
//! slightfile declares `http-client` and the container has a network.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::{Caller, Linker};

use super::instance;
use crate::core_abi::{Abi, METHODS, Response, Ret, define};
use crate::engine::ModuleState;

type Host<'a> = Caller<'a, ModuleState>;

/// `http-error`'s cases.
const INVALID_URL: u8 = 0;
const TIMEOUT: u8 = 1;
const PROTOCOL: u8 = 2;
const UNEXPECTED: u8 = 4;

/// How long a request may take, connecting to the end of the response.
const DEADLINE: Duration = Duration::from_secs(60);

pub(super) fn add_to_linker(linker: &mut Linker<ModuleState>) -> wasmtime::Result<()> {
    define!(
        linker,
        "http-client",
        "request",
        request,
        method,
        uri,
        uri_len,
        headers,
        headers_len,
        params,
        params_len,
        has_body,
        body,
        body_len,
        ret
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn request(
    caller: &mut Host<'_>,
    method: i32,
    uri: i32,
    uri_len: i32,
    headers: i32,
    headers_len: i32,
    _params: i32,
    _params_len: i32,
    has_body: i32,
    body: i32,
    body_len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let method = METHODS
        .get(method as usize)
        .cloned()
        .ok_or_else(|| wasmtime::format_err!("http-client: {method} is not a method case"))?;
    let uri = abi.string(&*caller, uri, uri_len)?;
    let headers = abi.pairs(&*caller, headers, headers_len)?;
    let body = match has_body {
        0 => Vec::new(),
        _ => abi.bytes(&*caller, body, body_len)?,
    };
    let host = instance(caller)?.host.clone();
    let result = if !host.app.http_client {
        let why = "request: slightfile.toml declares no `http-client` capability: add a [[capability]] with resource = \"http-client\"";
        host.refuse(UNEXPECTED, why.to_owned()).into()
    } else if !host.network {
        let why = "request: the app has no network to send requests on";
        host.refuse(UNEXPECTED, why.to_owned()).into()
    } else {
        match tokio::time::timeout(DEADLINE, send(method, &uri, headers, body)).await {
            Ok(Ok(response)) => Ret::Response(response),
            Ok(Err(error)) => error,
            Err(_) => Ret::Error(
                TIMEOUT,
                format!("{uri}: no response within {} s", DEADLINE.as_secs()),
            ),
        }
    };
    abi.ret(caller, ret, result).await
}

async fn send(
    method: http::Method,
    uri: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> Result<Response, Ret> {
    let mut request = http::Request::builder().method(method).uri(uri);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {});
    let request = request
        .body(body)
        .map_err(|e| Ret::Error(INVALID_URL, format!("{uri}: {e}")))?;
    let protocol = |e: &dyn std::fmt::Display| Ret::Error(PROTOCOL, format!("{uri}: {e}"));
    let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
        .await
        .map_err(|e| protocol(&e))?;
    // The connection is driven on its own while the body is read; it ends with the response.
    tokio::spawn(io);
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| protocol(&e))?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        headers: Some(crate::core_abi::header_pairs(&parts.headers)),
        body: Some(body.to_vec()),
    })
}
