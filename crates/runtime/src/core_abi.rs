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
mod tests {
    use super::*;

    /// A guest as wit-bindgen 0.2 builds one: one page of memory and a bump allocator that
    /// hands out aligned blocks from 1024 up, with "hello" and two bytes that are not UTF-8 at 16.
    const GUEST: &str = r#"
        (module
          (memory (export "memory") 1)
          (global $next (mut i32) (i32.const 1024))
          (func (export "canonical_abi_realloc") (param i32 i32 i32 i32) (result i32)
            (local $ptr i32)
            (local.set $ptr
              (i32.and
                (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
                (i32.sub (i32.const 0) (local.get 2))))
            (global.set $next (i32.add (local.get $ptr) (local.get 3)))
            (local.get $ptr))
          (data (i32.const 16) "hello\ff\fe"))
    "#;

    /// Where [`GUEST`]'s allocator starts: everything it gives is at or past it.
    const HEAP: i32 = 1024;

    /// A return area the tests' results are written to, below the heap.
    const RET: i32 = 256;

    async fn instance(wat: &str) -> (Store<()>, Instance) {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Instance::new_async(&mut store, &module, &[]).await.unwrap();
        (store, instance)
    }

    async fn instantiate(wat: &str) -> (Store<()>, Abi) {
        let (mut store, instance) = instance(wat).await;
        let abi = Abi::of_instance(&mut store, &instance).unwrap();
        (store, abi)
    }

    async fn guest() -> (Store<()>, Abi) {
        instantiate(GUEST).await
    }

    fn word(area: &[u8], at: usize) -> i32 {
        i32::from_le_bytes(area[at..at + 4].try_into().unwrap())
    }

    fn is_out_of_bounds(error: &wasmtime::Error) -> bool {
        error.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::MemoryOutOfBounds)
    }

    #[tokio::test]
    async fn reads_bytes_and_strings_from_guest_memory() {
        let (store, abi) = guest().await;
        assert_eq!(abi.bytes(&store, 16, 5).unwrap(), b"hello");
        assert_eq!(abi.string(&store, 16, 5).unwrap(), "hello");
        assert_eq!(abi.string(&store, 16, 0).unwrap(), "");
    }

    #[tokio::test]
    async fn a_pointer_or_length_outside_memory_traps() {
        let (store, abi) = guest().await;
        let page = 65536;
        // Ends one byte past the memory.
        let error = abi.bytes(&store, page - 4, 5).unwrap_err();
        assert!(is_out_of_bounds(&error), "{error:?}");
        // A negative pointer is an address near 4 GiB, not an index from the end.
        assert!(is_out_of_bounds(&abi.bytes(&store, -1, 2).unwrap_err()));
        // A negative length is a huge one: it must not wrap around to a small range.
        assert!(is_out_of_bounds(&abi.string(&store, 16, -1).unwrap_err()));
        assert!(is_out_of_bounds(
            &abi.pairs(&store, page - 8, 1).unwrap_err()
        ));
        // The last byte is still in bounds.
        assert_eq!(abi.bytes(&store, page - 1, 1).unwrap(), [0]);
    }

    #[tokio::test]
    async fn a_string_that_is_not_utf8_is_an_error() {
        let (store, abi) = guest().await;
        let error = abi.string(&store, 16, 7).unwrap_err();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
        // The same bytes are fine as bytes.
        assert_eq!(abi.bytes(&store, 16, 7).unwrap(), b"hello\xff\xfe");
    }

    #[tokio::test]
    async fn give_copies_into_memory_the_guest_allocated() {
        let (mut store, abi) = guest().await;
        let first = abi.give(&mut store, 1, b"abc").await.unwrap();
        let second = abi.give(&mut store, 4, b"defgh").await.unwrap();
        assert_eq!(first, HEAP);
        // The guest's allocator placed it: aligned, after the first block.
        assert_eq!(second, HEAP + 4);
        assert_eq!(abi.bytes(&store, first, 3).unwrap(), b"abc");
        assert_eq!(abi.bytes(&store, second, 5).unwrap(), b"defgh");
    }

    #[tokio::test]
    async fn give_pairs_reads_back_as_the_same_pairs() {
        let (mut store, abi) = guest().await;
        let pairs = vec![
            ("content-type".to_string(), "text/plain".to_string()),
            ("x-empty".to_string(), String::new()),
            ("x-ünïcode".to_string(), "värde".to_string()),
        ];
        let (ptr, len) = abi.give_pairs(&mut store, &pairs).await.unwrap();
        assert_eq!(len, 3);
        assert_eq!(ptr % 4, 0, "a list of pairs is 4-aligned");
        assert_eq!(abi.pairs(&store, ptr, len).unwrap(), pairs);
    }

    #[tokio::test]
    async fn give_without_the_guests_allocator_is_an_error() {
        let (mut store, abi) = instantiate(r#"(module (memory (export "memory") 1))"#).await;
        let error = abi.give(&mut store, 1, b"x").await.unwrap_err();
        assert!(
            error.to_string().contains("canonical_abi_realloc"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_module_without_memory_has_no_abi() {
        let (mut store, instance) = instance("(module)").await;
        assert!(Abi::of_instance(&mut store, &instance).is_err());
    }

    /// Writes `value` at [`RET`] over a return area filled with 0xaa; the area's 32 bytes after.
    async fn ret(value: Ret) -> (Store<()>, Abi, Vec<u8>) {
        let (mut store, abi) = guest().await;
        abi.memory.data_mut(&mut store)[RET as usize..RET as usize + 32].fill(0xaa);
        abi.ret(&mut store, RET, value).await.unwrap();
        let area = abi.bytes(&store, RET, 32).unwrap();
        (store, abi, area)
    }

    #[tokio::test]
    async fn ret_ok_writes_tag_zero_and_the_payload_at_4() {
        let (_, _, area) = ret(Ret::Unit).await;
        assert_eq!(area[0], 0);
        let (_, _, area) = ret(Ret::Handle(7)).await;
        assert_eq!((area[0], word(&area, 4)), (0, 7));
        let (_, _, area) = ret(Ret::Bool(true)).await;
        assert_eq!((area[0], area[4]), (0, 1));
        // A result other than a response writes 16 bytes, no more: the guest's area may end there.
        assert!(area[16..].iter().all(|byte| *byte == 0xaa));
    }

    #[tokio::test]
    async fn ret_bytes_and_strings_are_lists_at_4_and_8() {
        let (store, abi, area) = ret(Ret::Bytes(b"value".to_vec())).await;
        assert_eq!(area[0], 0);
        assert_eq!(word(&area, 8), 5);
        assert_eq!(abi.bytes(&store, word(&area, 4), 5).unwrap(), b"value");

        let (store, abi, area) = ret(Ret::Strings(vec!["a".into(), "bc".into()])).await;
        assert_eq!((area[0], word(&area, 8)), (0, 2));
        let list = abi.bytes(&store, word(&area, 4), 16).unwrap();
        assert_eq!(
            abi.string(&store, word(&list, 0), word(&list, 4)).unwrap(),
            "a"
        );
        assert_eq!(
            abi.string(&store, word(&list, 8), word(&list, 12)).unwrap(),
            "bc"
        );
    }

    #[tokio::test]
    async fn ret_error_writes_tag_one_the_case_at_4_and_its_string_at_8() {
        let (store, abi, area) = ret(Ret::Error(3, "no such key".into())).await;
        assert_eq!((area[0], area[4]), (1, 3));
        assert_eq!(
            abi.string(&store, word(&area, 8), word(&area, 12)).unwrap(),
            "no such key"
        );
        let (_, _, area) = ret(Ret::Case(2)).await;
        assert_eq!((area[0], area[4]), (1, 2));
    }

    #[tokio::test]
    async fn ret_response_reads_back_as_the_same_record() {
        let headers = vec![("content-type".to_string(), "text/plain".to_string())];
        let response = Response {
            status: 201,
            headers: Some(headers.clone()),
            body: Some(b"made".to_vec()),
        };
        let (store, abi, area) = ret(Ret::Response(response)).await;
        assert_eq!(area[0], 0);
        // The record is the payload, at +4.
        let read = abi.response(&store, RET + 4).unwrap();
        assert_eq!(read.status, 201);
        assert_eq!(read.headers, Some(headers));
        assert_eq!(read.body.as_deref(), Some(&b"made"[..]));

        let bare = Response {
            status: 204,
            headers: None,
            body: None,
        };
        let (store, abi, _) = ret(Ret::Response(bare)).await;
        let read = abi.response(&store, RET + 4).unwrap();
        assert_eq!((read.status, read.headers, read.body), (204, None, None));
    }

    #[tokio::test]
    async fn ret_to_an_area_outside_memory_traps() {
        let (mut store, abi) = guest().await;
        let error = abi.ret(&mut store, 65536 - 8, Ret::Unit).await.unwrap_err();
        assert!(is_out_of_bounds(&error), "{error:?}");
    }

    #[tokio::test]
    async fn outgoing_reads_the_flattened_request_record() {
        let (mut store, abi) = guest().await;
        let uri = abi
            .give(&mut store, 1, b"http://example.test/a")
            .await
            .unwrap();
        let pairs = [("accept".to_string(), "*/*".to_string())];
        let (headers, headers_len) = abi.give_pairs(&mut store, &pairs).await.unwrap();
        let body = abi.give(&mut store, 1, b"payload").await.unwrap();
        let args = [1, uri, 21, headers, headers_len, 0, 0, 1, body, 7];
        let outgoing = abi.outgoing(&store, args).unwrap();
        assert_eq!(outgoing.method, http::Method::POST);
        assert_eq!(outgoing.uri, "http://example.test/a");
        assert_eq!(outgoing.headers, pairs);
        assert_eq!(outgoing.body, b"payload");

        // No body when its option's tag is 0, whatever the pointer says.
        let bodiless = abi.outgoing(&store, [0, uri, 21, 0, 0, 0, 0, 0, -1, -1]);
        assert!(bodiless.unwrap().body.is_empty());
        // A method past the enum's cases is refused.
        assert!(
            abi.outgoing(&store, [7, uri, 21, 0, 0, 0, 0, 0, 0, 0])
                .is_err()
        );
    }

    #[tokio::test]
    async fn request_lays_out_a_handlers_arguments_with_client_addr_only_when_given() {
        let (mut store, abi) = guest().await;
        let mut request = HttpRequest {
            method: 1,
            uri: "/cart?item=3".into(),
            headers: vec![("host".into(), "shop.test".into())],
            params: vec![("item".into(), "3".into())],
            client_addr: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        let words = |args: Vec<wasmtime::Val>| -> Vec<i32> {
            args.iter().map(|arg| arg.unwrap_i32()).collect()
        };
        let args = words(abi.request(&mut store, &request).await.unwrap());
        let [
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
        ] = args[..]
        else {
            panic!("{} arguments without a client address", args.len());
        };
        assert_eq!(method, 1);
        assert_eq!(abi.string(&store, uri, uri_len).unwrap(), "/cart?item=3");
        assert_eq!(
            abi.pairs(&store, headers, headers_len).unwrap(),
            request.headers
        );
        assert_eq!(
            abi.pairs(&store, params, params_len).unwrap(),
            request.params
        );
        assert_eq!(has_body, 1);
        assert_eq!(abi.bytes(&store, body, body_len).unwrap(), b"{}");

        // Spin 1's `client-addr` comes after the params, before the body.
        request.client_addr = Some("10.0.0.5:4000".into());
        let args = words(abi.request(&mut store, &request).await.unwrap());
        assert_eq!(args.len(), 12);
        assert_eq!(
            abi.string(&store, args[7], args[8]).unwrap(),
            "10.0.0.5:4000"
        );
        assert_eq!(abi.bytes(&store, args[10], args[11]).unwrap(), b"{}");
    }

    #[test]
    fn into_http_keeps_status_headers_and_body() {
        let response = Response {
            status: 404,
            headers: Some(vec![("x-a".into(), "1".into())]),
            body: Some(b"gone".to_vec()),
        };
        let http = response.into_http().unwrap();
        assert_eq!(http.status(), http::StatusCode::NOT_FOUND);
        assert_eq!(http.headers()["x-a"], "1");
    }

    #[test]
    fn into_http_refuses_a_status_that_is_not_http() {
        for status in [0, 99, 1000] {
            let response = Response {
                status,
                headers: None,
                body: None,
            };
            let error = response.into_http().unwrap_err();
            assert!(error.contains(&status.to_string()), "{error}");
        }
    }

    #[test]
    fn into_http_refuses_a_header_name_http_does_not_allow() {
        for name in ["bad name", "", "colon:"] {
            let response = Response {
                status: 200,
                headers: Some(vec![(name.into(), "v".into())]),
                body: None,
            };
            assert!(response.into_http().is_err(), "{name:?} was accepted");
        }
        let response = Response {
            status: 200,
            headers: Some(vec![("x-a".into(), "line\nbreak".into())]),
            body: None,
        };
        assert!(response.into_http().is_err(), "a value with a newline");
    }
}
