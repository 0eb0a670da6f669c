//! The host's side of wit-bindgen 0.2's canonical ABI over a core module, for any store, the ABI of the apps
//! built before the component model: SpiderLightning's (all of them) and Spin 1's.
//!
//! - Strings and lists are `(pointer, length)` pairs in the guest's `memory`. What the host
//!   hands the guest it allocates with the guest's `canonical_abi_realloc(0, 0, align, size)`;
//!   the guest then owns it.
//! - An import whose result does not fit one value takes a return pointer as its last
//!   argument; an export returns one. `expected<T, E>` there is a tag byte at +0 (0 ok, 1
//!   error) and its payload at +4; every error type slight defines is a variant whose tag is at
//!   +4 and whose string (`pointer`, `length`), if it has one, is at +8.
//! - A resource is an `i32` handle; `canonical_abi::resource_drop_NAME` releases it.
//!
//! A guest that hands the host a pointer outside its memory, or a string that is not UTF-8,
//! traps, as the canonical ABI has it.

use http_body_util::{BodyExt, Full};
use wasmtime::{AsContext, AsContextMut, Caller, Extern, Instance, Memory, Store, TypedFunc};

type Realloc = TypedFunc<(i32, i32, i32, i32), i32>;

/// A guest's memory and allocator, as wit-bindgen 0.2 exports them.
#[derive(Clone)]
pub struct Abi {
    memory: Memory,
    realloc: Option<Realloc>,
}

impl Abi {
    /// The calling guest's.
    pub fn of_caller<T>(caller: &mut Caller<'_, T>) -> wasmtime::Result<Abi> {
        let memory = match caller.get_export("memory") {
            Some(Extern::Memory(memory)) => memory,
            _ => wasmtime::bail!("the module exports no `memory`, which slight's interfaces need"),
        };
        let realloc = match caller.get_export("canonical_abi_realloc") {
            Some(Extern::Func(func)) => func.typed(&caller).ok(),
            _ => None,
        };
        Ok(Abi { memory, realloc })
    }

    /// `instance`'s.
    pub fn of_instance<T>(store: &mut Store<T>, instance: &Instance) -> wasmtime::Result<Abi> {
        let memory = instance.get_memory(&mut *store, "memory").ok_or_else(|| {
            wasmtime::format_err!("the module exports no `memory`, which slight's interfaces need")
        })?;
        let realloc = instance
            .get_typed_func(&mut *store, "canonical_abi_realloc")
            .ok();
        Ok(Abi { memory, realloc })
    }

    /// `len` bytes at `ptr`.
    pub fn bytes(&self, store: impl AsContext, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
        let (start, len) = (ptr as u32 as usize, len as u32 as usize);
        start
            .checked_add(len)
            .and_then(|end| self.memory.data(&store).get(start..end))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                out_of_bounds(format!(
                    "the guest passed {len} bytes at {start:#x}, outside its memory"
                ))
            })
    }

    /// The UTF-8 string of `len` bytes at `ptr`.
    pub fn string(&self, store: impl AsContext, ptr: i32, len: i32) -> wasmtime::Result<String> {
        String::from_utf8(self.bytes(store, ptr, len)?)
            .map_err(|_| wasmtime::format_err!("the guest passed a string that is not UTF-8"))
    }

    /// A `list<tuple<string, string>>` (headers, parameters) of `len` elements at `ptr`.
    pub fn pairs(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        let raw = self.bytes(&store, ptr, len.saturating_mul(16))?;
        raw.chunks_exact(16)
            .map(|pair| {
                let word = |at: usize| i32::from_le_bytes(pair[at..at + 4].try_into().unwrap());
                Ok((
                    self.string(&store, word(0), word(4))?,
                    self.string(&store, word(8), word(12))?,
                ))
            })
            .collect()
    }

    fn write(&self, mut store: impl AsContextMut, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
        let start = ptr as u32 as usize;
        start
            .checked_add(bytes.len())
            .and_then(|end| self.memory.data_mut(&mut store).get_mut(start..end))
            .map(|place| place.copy_from_slice(bytes))
            .ok_or_else(|| {
                out_of_bounds(format!(
                    "the guest's return area at {start:#x} is outside its memory"
                ))
            })
    }

    /// Copies `bytes` into memory the guest allocates (and then owns); their address.
    pub async fn give(
        &self,
        mut store: impl AsContextMut<Data = impl Send + 'static>,
        align: i32,
        bytes: &[u8],
    ) -> wasmtime::Result<i32> {
        let realloc = self.realloc.as_ref().ok_or_else(|| {
            wasmtime::format_err!(
                "the module exports no `canonical_abi_realloc`, which slight's interfaces need to return data: build it with wit-bindgen 0.2 as slight's SDK does"
            )
        })?;
        let len = i32::try_from(bytes.len())
            .map_err(|_| wasmtime::format_err!("{} bytes do not fit in a guest", bytes.len()))?;
        let ptr = realloc.call_async(&mut store, (0, 0, align, len)).await?;
        self.write(&mut store, ptr, bytes)?;
        Ok(ptr)
    }

    /// Gives the guest each of `strings` and the list of them; the list's address.
    async fn give_strings(
        &self,
        mut store: impl AsContextMut<Data = impl Send + 'static>,
        strings: &[&str],
    ) -> wasmtime::Result<i32> {
        let mut list = Vec::new();
        for string in strings {
            let ptr = self.give(&mut store, 1, string.as_bytes()).await?;
            list.extend(ptr.to_le_bytes());
            list.extend((string.len() as i32).to_le_bytes());
        }
        self.give(&mut store, 4, &list).await
    }

    /// Gives the guest a `list<tuple<string, string>>`: its address and length.
    pub async fn give_pairs(
        &self,
        mut store: impl AsContextMut<Data = impl Send + 'static>,
        pairs: &[(String, String)],
    ) -> wasmtime::Result<(i32, i32)> {
        let flat: Vec<&str> = pairs
            .iter()
            .flat_map(|(a, b)| [a.as_str(), b.as_str()])
            .collect();
        let ptr = self.give_strings(&mut store, &flat).await?;
        Ok((ptr, pairs.len() as i32))
    }

    /// Writes `value` to the guest's return area at `ret`.
    pub async fn ret(
        &self,
        mut store: impl AsContextMut<Data = impl Send + 'static>,
        ret: i32,
        value: Ret,
    ) -> wasmtime::Result<()> {
        let mut area = Area::default();
        // Only the result type's own size is written: the guest's area may be no larger.
        let size = match value {
            Ret::Response(_) => 32,
            _ => 16,
        };
        match value {
            Ret::Unit => {}
            Ret::Handle(handle) => area.i32(4, handle),
            Ret::Bool(value) => area.u8(4, value.into()),
            Ret::Case(case) => {
                area.u8(0, 1);
                area.u8(4, case);
            }
            Ret::Bytes(bytes) => {
                let ptr = self.give(&mut store, 1, &bytes).await?;
                area.i32(4, ptr);
                area.i32(8, bytes.len() as i32);
            }
            Ret::Strings(strings) => {
                let strings: Vec<&str> = strings.iter().map(String::as_str).collect();
                let ptr = self.give_strings(&mut store, &strings).await?;
                area.i32(4, ptr);
                area.i32(8, strings.len() as i32);
            }
            Ret::Response(response) => {
                area.u16(4, response.status);
                if let Some(headers) = &response.headers {
                    let (ptr, len) = self.give_pairs(&mut store, headers).await?;
                    area.u8(8, 1);
                    area.i32(12, ptr);
                    area.i32(16, len);
                }
                if let Some(body) = &response.body {
                    let ptr = self.give(&mut store, 1, body).await?;
                    area.u8(20, 1);
                    area.i32(24, ptr);
                    area.i32(28, body.len() as i32);
                }
            }
            Ret::Error(case, message) => {
                let ptr = self.give(&mut store, 1, message.as_bytes()).await?;
                area.u8(0, 1);
                area.u8(4, case);
                area.i32(8, ptr);
                area.i32(12, message.len() as i32);
            }
        }
        self.write(&mut store, ret, &area.0[..size])
    }

    /// Reads the `response` record at `ptr` (slight's and Spin 1's, the same record).
    pub fn response(&self, store: impl AsContext, ptr: i32) -> wasmtime::Result<Response> {
        let area = self.bytes(&store, ptr, 28)?;
        let word = |at: usize| i32::from_le_bytes(area[at..at + 4].try_into().unwrap());
        Ok(Response {
            status: u16::from_le_bytes([area[0], area[1]]),
            headers: match area[4] {
                0 => None,
                _ => Some(self.pairs(&store, word(8), word(12))?),
            },
            body: match area[16] {
                0 => None,
                _ => Some(self.bytes(&store, word(20), word(24))?),
            },
        })
    }

    /// The request an import's flattened `request` record (`method`, `uri`, `headers`,
    /// `params`, `body`) passes; its params are not sent.
    pub fn outgoing(&self, store: impl AsContext, args: [i32; 10]) -> wasmtime::Result<Outgoing> {
        let [
            method,
            uri,
            uri_len,
            headers,
            headers_len,
            _,
            _,
            has_body,
            body,
            body_len,
        ] = args;
        let method = METHODS
            .get(method as usize)
            .cloned()
            .ok_or_else(|| wasmtime::format_err!("{method} is not a case of `method`"))?;
        Ok(Outgoing {
            method,
            uri: self.string(&store, uri, uri_len)?,
            headers: self.pairs(&store, headers, headers_len)?,
            body: match has_body {
                0 => Vec::new(),
                _ => self.bytes(&store, body, body_len)?,
            },
        })
    }

    /// Lays `request` out in the guest's memory as the arguments of a handler export taking a
    /// `request` record (with Spin 1's `client-addr` when it has one).
    pub async fn request(
        &self,
        mut store: impl AsContextMut<Data = impl Send + 'static>,
        request: &HttpRequest,
    ) -> wasmtime::Result<Vec<wasmtime::Val>> {
        let uri = self.give(&mut store, 1, request.uri.as_bytes()).await?;
        let (headers, headers_len) = self.give_pairs(&mut store, &request.headers).await?;
        let (params, params_len) = self.give_pairs(&mut store, &request.params).await?;
        let mut args = vec![
            request.method,
            uri,
            request.uri.len() as i32,
            headers,
            headers_len,
            params,
            params_len,
        ];
        if let Some(client) = &request.client_addr {
            let ptr = self.give(&mut store, 1, client.as_bytes()).await?;
            args.extend([ptr, client.len() as i32]);
        }
        let body = self.give(&mut store, 1, &request.body).await?;
        args.extend([1, body, request.body.len() as i32]);
        Ok(args.into_iter().map(wasmtime::Val::I32).collect())
    }
}

/// A request a guest sends (slight's `http-client`, Spin 1's `outbound-http`), from the
/// `request` record it passed.
pub struct Outgoing {
    /// Its method.
    pub method: http::Method,
    /// Where it goes.
    pub uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Why an outgoing request got no response.
pub enum SendError {
    /// The URL is not one a request can be sent to.
    InvalidUrl(String),
    /// The connection or the exchange failed.
    Protocol(String),
    /// No whole response within the deadline.
    Timeout(String),
}

/// How long an outgoing request may take, connecting to the end of the response.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Sends `outgoing` as plain components' requests are sent (wasmtime-wasi-http's client:
/// HTTP and HTTPS, this process's network) and reads the whole response.
pub async fn send(outgoing: Outgoing) -> Result<Response, SendError> {
    let uri = outgoing.uri.clone();
    let exchange = async {
        let mut request = http::Request::builder()
            .method(outgoing.method)
            .uri(&outgoing.uri);
        for (name, value) in &outgoing.headers {
            request = request.header(name, value);
        }
        let body = Full::new(bytes::Bytes::from(outgoing.body)).map_err(|never| match never {});
        let request = request
            .body(body)
            .map_err(|e| SendError::InvalidUrl(format!("{uri}: {e}")))?;
        let protocol = |e: &dyn std::fmt::Display| SendError::Protocol(format!("{uri}: {e}"));
        let (response, io) = wasmtime_wasi_http::default_send_request(request, None)
            .await
            .map_err(|e| protocol(&e))?;
        // The connection is driven on its own while the body is read; it ends with the response.
        tokio::spawn(io);
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| protocol(&e))?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: Some(header_pairs(&parts.headers)),
            body: Some(body.to_vec()),
        })
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(SendError::Timeout(format!(
                "{uri}: no response within {} s",
                DEADLINE.as_secs()
            )))
        })
}

/// A trap (the guest ends as one that trapped does, status 134), saying what was out of bounds.
fn out_of_bounds(what: String) -> wasmtime::Error {
    wasmtime::Error::new(wasmtime::Trap::MemoryOutOfBounds).context(what)
}

/// An HTTP request as the `request` record of slight and Spin 1 holds it.
pub struct HttpRequest {
    /// The `method` enum's case (see [`METHODS`]).
    pub method: i32,
    /// The path and query the client asked for.
    pub uri: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// The route's parameters (Spin 1 passes none).
    pub params: Vec<(String, String)>,
    /// Spin 1's `client-addr`, for handlers that take it.
    pub client_addr: Option<String>,
    /// The whole body.
    pub body: bytes::Bytes,
}

/// The `method` enum of slight and Spin 1, by case.
pub const METHODS: [http::Method; 7] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
    http::Method::HEAD,
    http::Method::OPTIONS,
];

/// An `expected<T, E>` result for the guest.
pub enum Ret {
    /// `ok(unit)`.
    Unit,
    /// `ok(resource)`.
    Handle(i32),
    /// `ok(list<u8>)`.
    Bytes(Vec<u8>),
    /// `ok(list<string>)`.
    Strings(Vec<String>),
    /// `ok(response)`.
    Response(Response),
    /// `ok(bool)`.
    Bool(bool),
    /// `err(CASE(string))`.
    Error(u8, String),
    /// `err(CASE)`, a case without a payload.
    Case(u8),
}

/// The `response` record of slight and Spin 1.
#[derive(Debug)]
pub struct Response {
    /// The status code, as the guest gave it (checked by [`Response::into_http`]).
    pub status: u16,
    /// Its headers, if any.
    pub headers: Option<Vec<(String, String)>>,
    /// Its body, if any.
    pub body: Option<Vec<u8>>,
}

impl Response {
    /// The HTTP response a handler's record stands for, or why it stands for none.
    pub fn into_http(self) -> Result<http::Response<Full<bytes::Bytes>>, String> {
        let status = http::StatusCode::from_u16(self.status).map_err(|_| {
            format!(
                "it returned status {}, which is not an HTTP status",
                self.status
            )
        })?;
        let mut built = http::Response::builder().status(status);
        for (name, value) in self.headers.unwrap_or_default() {
            built = built.header(name, value);
        }
        built
            .body(Full::new(bytes::Bytes::from(self.body.unwrap_or_default())))
            .map_err(|e| format!("it returned a header HTTP does not allow: {e}"))
    }
}

/// Headers as the records' `list<tuple<string, string>>` holds them (values that are not
/// UTF-8, lossily).
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A return area being filled: 32 bytes, the largest slight's results take (a response);
/// every other result takes 16.
#[derive(Default)]
struct Area([u8; 32]);

impl Area {
    fn u8(&mut self, at: usize, value: u8) {
        self.0[at] = value;
    }

    fn u16(&mut self, at: usize, value: u16) {
        self.0[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn i32(&mut self, at: usize, value: i32) {
        self.0[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;

/// Defines `$name` of import module `$module` as `$f(caller, i32, ...)`: every function of
/// this ABI takes only `i32`s (pointers, lengths, handles and the return area) and returns
/// nothing, or traps. With `request` for the arguments, the import takes a `request` record
/// (see `Abi::outgoing`) and a return area: `$f(caller, record, ret)`. The store type is the
/// linker's; `?` returns the linker's error.
#[macro_export]
macro_rules! define_import {
    ($linker:expr, $module:expr, $name:expr, $f:path, request) => {
        $linker.func_wrap_async(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, _>,
             (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, ret): (
                i32, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32,
            )| {
                let record = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9];
                Box::new(async move { $f(&mut caller, record, ret).await })
            },
        )?
    };
    ($linker:expr, $module:expr, $name:expr, $f:path, $($arg:ident),+) => {
        $linker.func_wrap_async(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, _>, ($($arg,)+): ($($crate::define_import!(@i32 $arg),)+)| {
                Box::new(async move { $f(&mut caller, $($arg),+).await })
            },
        )?
    };
    (@i32 $arg:ident) => { i32 };
}
