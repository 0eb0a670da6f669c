//! SpiderLightning's interfaces (`keyvalue`, `configs`, `http-server`, `http-client`) as slight
//! apps import them: module = the WIT file's stem, field = `resource::function`, arguments and
//! results laid out by wit-bindgen 0.2's canonical ABI. Written by hand for the test guests;
//! a real slight app has the same imports from slight's generated bindings.
//!
//! Each app calls [`allocator!`] once (the host hands it data through its
//! `canonical_abi_realloc`) and [`handler!`] for each HTTP handler it names in a route.

use std::alloc::{Layout, alloc, dealloc};
use std::fmt;

#[doc(hidden)]
pub mod raw {
    #[link(wasm_import_module = "keyvalue")]
    unsafe extern "C" {
        #[link_name = "keyvalue::open"]
        pub fn keyvalue_open(name: i32, len: i32, ret: i32);
        #[link_name = "keyvalue::get"]
        pub fn keyvalue_get(store: i32, key: i32, len: i32, ret: i32);
        #[link_name = "keyvalue::set"]
        pub fn keyvalue_set(store: i32, key: i32, len: i32, value: i32, value_len: i32, ret: i32);
        #[link_name = "keyvalue::keys"]
        pub fn keyvalue_keys(store: i32, ret: i32);
        #[link_name = "keyvalue::delete"]
        pub fn keyvalue_delete(store: i32, key: i32, len: i32, ret: i32);
    }
    #[link(wasm_import_module = "configs")]
    unsafe extern "C" {
        #[link_name = "configs::open"]
        pub fn configs_open(name: i32, len: i32, ret: i32);
        #[link_name = "configs::get"]
        pub fn configs_get(configs: i32, key: i32, len: i32, ret: i32);
        #[link_name = "configs::set"]
        pub fn configs_set(configs: i32, key: i32, len: i32, value: i32, value_len: i32, ret: i32);
    }
    #[link(wasm_import_module = "http-server")]
    unsafe extern "C" {
        #[link_name = "router::new"]
        pub fn router_new(ret: i32);
        #[link_name = "router::get"]
        pub fn router_get(
            router: i32,
            route: i32,
            len: i32,
            handler: i32,
            handler_len: i32,
            ret: i32,
        );
        #[link_name = "router::put"]
        pub fn router_put(
            router: i32,
            route: i32,
            len: i32,
            handler: i32,
            handler_len: i32,
            ret: i32,
        );
        #[link_name = "server::serve"]
        pub fn server_serve(address: i32, len: i32, router: i32, ret: i32);
    }
    #[link(wasm_import_module = "http-client")]
    unsafe extern "C" {
        pub fn request(
            method: i32,
            uri: i32,
            uri_len: i32,
            headers: i32,
            headers_len: i32,
            params: i32,
            params_len: i32,
            has_body: i32,
            body: i32,
            body_len: i32,
            ret: i32,
        );
    }
    #[link(wasm_import_module = "canonical_abi")]
    unsafe extern "C" {
        pub fn resource_drop_keyvalue(handle: i32);
        pub fn resource_drop_configs(handle: i32);
        pub fn resource_drop_router(handle: i32);
    }
}

/// An error a slight interface returned: its variant's case and message.
#[derive(Debug)]
pub struct Error {
    /// The case's name (e.g. `key-not-found`).
    pub case: &'static str,
    /// Its payload.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.case, self.message)
    }
}

const KEYVALUE_ERRORS: &[&str] = &[
    "key-not-found",
    "invalid-key",
    "invalid-value",
    "connection-error",
    "authentication-error",
    "timeout-error",
    "io-error",
    "unexpected-error",
];
const CONFIGS_ERRORS: &[&str] = &[
    "not-found",
    "invalid-value",
    "permission-denied",
    "io-error",
    "unexpected-error",
];
const HTTP_ERRORS: &[&str] = &[
    "invalid-url",
    "timeout-error",
    "protocol-error",
    "status-error",
    "unexpected-error",
];

/// A return area, as wit-bindgen 0.2 declares one per call.
#[repr(C, align(4))]
struct Ret([u8; 32]);

impl Ret {
    fn new() -> Ret {
        Ret([0; 32])
    }

    fn ptr(&mut self) -> i32 {
        self.0.as_mut_ptr() as i32
    }

    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.0[at..at + 4].try_into().unwrap())
    }

    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.0[at..at + 2].try_into().unwrap())
    }

    /// `expected<_, E>`: the error if it is one.
    fn error(&self, cases: &[&'static str]) -> Result<(), Error> {
        match self.0[0] {
            0 => Ok(()),
            _ => Err(Error {
                case: cases.get(self.0[4] as usize).copied().unwrap_or("?"),
                message: match cases.get(self.0[4] as usize) {
                    Some(&"status-error") => self.u16(8).to_string(),
                    _ => unsafe { string(self.i32(8), self.i32(12)) },
                },
            }),
        }
    }
}

/// Takes ownership of the bytes the host allocated.
unsafe fn bytes(ptr: i32, len: i32) -> Vec<u8> {
    unsafe { Vec::from_raw_parts(ptr as *mut u8, len as usize, len as usize) }
}

unsafe fn string(ptr: i32, len: i32) -> String {
    String::from_utf8(unsafe { bytes(ptr, len) }).expect("the host gave a string that is not UTF-8")
}

/// Takes ownership of a `list<string>` the host allocated.
unsafe fn strings(ptr: i32, len: i32) -> Vec<String> {
    let list = unsafe { std::slice::from_raw_parts(ptr as *const i32, 2 * len as usize) };
    let strings = list
        .chunks(2)
        .map(|s| unsafe { string(s[0], s[1]) })
        .collect();
    if len != 0 {
        unsafe {
            dealloc(
                ptr as *mut u8,
                Layout::from_size_align(8 * len as usize, 4).unwrap(),
            )
        };
    }
    strings
}

/// Takes ownership of a `list<tuple<string, string>>` the host allocated.
unsafe fn pairs(ptr: i32, len: i32) -> Vec<(String, String)> {
    let flat = unsafe { strings(ptr, 2 * len) };
    flat.chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

/// The guest's allocator for the host: `canonical_abi_realloc` as wit-bindgen 0.2 exports it.
pub unsafe fn realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    let layout = Layout::from_size_align(new_len, align).unwrap();
    unsafe {
        match old_len {
            0 => alloc(layout),
            _ => std::alloc::realloc(
                old,
                Layout::from_size_align(old_len, align).unwrap(),
                new_len,
            ),
        }
    }
}

/// Exports `canonical_abi_realloc` and `canonical_abi_free`.
#[macro_export]
macro_rules! allocator {
    () => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn canonical_abi_realloc(
            old: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            unsafe { $crate::realloc(old, old_len, align, new_len) }
        }

        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn canonical_abi_free(ptr: *mut u8, len: usize, align: usize) {
            if len != 0 {
                let layout = std::alloc::Layout::from_size_align(len, align).unwrap();
                unsafe { std::alloc::dealloc(ptr, layout) };
            }
        }
    };
}

/// A key-value store (`keyvalue.*`).
pub struct KeyValue(i32);

impl KeyValue {
    pub fn open(name: &str) -> Result<KeyValue, Error> {
        let mut ret = Ret::new();
        unsafe { raw::keyvalue_open(name.as_ptr() as i32, name.len() as i32, ret.ptr()) };
        ret.error(KEYVALUE_ERRORS).map(|()| KeyValue(ret.i32(4)))
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let mut ret = Ret::new();
        unsafe { raw::keyvalue_get(self.0, key.as_ptr() as i32, key.len() as i32, ret.ptr()) };
        ret.error(KEYVALUE_ERRORS)?;
        Ok(unsafe { bytes(ret.i32(4), ret.i32(8)) })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let mut ret = Ret::new();
        unsafe {
            raw::keyvalue_set(
                self.0,
                key.as_ptr() as i32,
                key.len() as i32,
                value.as_ptr() as i32,
                value.len() as i32,
                ret.ptr(),
            )
        };
        ret.error(KEYVALUE_ERRORS)
    }

    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut ret = Ret::new();
        unsafe { raw::keyvalue_keys(self.0, ret.ptr()) };
        ret.error(KEYVALUE_ERRORS)?;
        Ok(unsafe { strings(ret.i32(4), ret.i32(8)) })
    }

    pub fn delete(&self, key: &str) -> Result<(), Error> {
        let mut ret = Ret::new();
        unsafe { raw::keyvalue_delete(self.0, key.as_ptr() as i32, key.len() as i32, ret.ptr()) };
        ret.error(KEYVALUE_ERRORS)
    }
}

impl Drop for KeyValue {
    fn drop(&mut self) {
        unsafe { raw::resource_drop_keyvalue(self.0) }
    }
}

/// A config source (`configs.*`).
pub struct Configs(i32);

impl Configs {
    pub fn open(name: &str) -> Result<Configs, Error> {
        let mut ret = Ret::new();
        unsafe { raw::configs_open(name.as_ptr() as i32, name.len() as i32, ret.ptr()) };
        ret.error(CONFIGS_ERRORS).map(|()| Configs(ret.i32(4)))
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let mut ret = Ret::new();
        unsafe { raw::configs_get(self.0, key.as_ptr() as i32, key.len() as i32, ret.ptr()) };
        ret.error(CONFIGS_ERRORS)?;
        Ok(unsafe { bytes(ret.i32(4), ret.i32(8)) })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let mut ret = Ret::new();
        unsafe {
            raw::configs_set(
                self.0,
                key.as_ptr() as i32,
                key.len() as i32,
                value.as_ptr() as i32,
                value.len() as i32,
                ret.ptr(),
            )
        };
        ret.error(CONFIGS_ERRORS)
    }
}

impl Drop for Configs {
    fn drop(&mut self) {
        unsafe { raw::resource_drop_configs(self.0) }
    }
}

/// An HTTP route table (`http`).
pub struct Router(i32);

impl Router {
    pub fn new() -> Result<Router, Error> {
        let mut ret = Ret::new();
        unsafe { raw::router_new(ret.ptr()) };
        ret.error(HTTP_ERRORS).map(|()| Router(ret.i32(4)))
    }

    /// A router with `GET route` added, served by the export `handler` names.
    pub fn get(&self, route: &str, handler: &str) -> Result<Router, Error> {
        self.add(raw::router_get, route, handler)
    }

    /// A router with `PUT route` added.
    pub fn put(&self, route: &str, handler: &str) -> Result<Router, Error> {
        self.add(raw::router_put, route, handler)
    }

    fn add(
        &self,
        import: unsafe extern "C" fn(i32, i32, i32, i32, i32, i32),
        route: &str,
        handler: &str,
    ) -> Result<Router, Error> {
        let mut ret = Ret::new();
        unsafe {
            import(
                self.0,
                route.as_ptr() as i32,
                route.len() as i32,
                handler.as_ptr() as i32,
                handler.len() as i32,
                ret.ptr(),
            )
        };
        ret.error(HTTP_ERRORS).map(|()| Router(ret.i32(4)))
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        unsafe { raw::resource_drop_router(self.0) }
    }
}

/// Starts serving `router` on `address` once the app's main returns; the server's handle.
pub fn serve(address: &str, router: &Router) -> Result<i32, Error> {
    let mut ret = Ret::new();
    unsafe {
        raw::server_serve(
            address.as_ptr() as i32,
            address.len() as i32,
            router.0,
            ret.ptr(),
        )
    };
    ret.error(HTTP_ERRORS).map(|()| ret.i32(4))
}

/// slight's HTTP `method` enum, by case.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// An HTTP request: a handler's argument, or what [`request`] sends.
#[derive(Debug, Default)]
pub struct Request {
    pub method: usize,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub params: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// An HTTP response: a handler's result, or what [`request`] got.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Option<Vec<(String, String)>>,
    pub body: Option<Vec<u8>>,
}

/// `http-client`'s `request`.
pub fn request(req: &Request) -> Result<Response, Error> {
    let headers: Vec<[i32; 4]> = req
        .headers
        .iter()
        .map(|(k, v)| {
            [
                k.as_ptr() as i32,
                k.len() as i32,
                v.as_ptr() as i32,
                v.len() as i32,
            ]
        })
        .collect();
    let body = req.body.as_deref();
    let mut ret = Ret::new();
    unsafe {
        raw::request(
            req.method as i32,
            req.uri.as_ptr() as i32,
            req.uri.len() as i32,
            headers.as_ptr() as i32,
            headers.len() as i32,
            0,
            0,
            body.is_some() as i32,
            body.map_or(0, |b| b.as_ptr() as i32),
            body.map_or(0, |b| b.len() as i32),
            ret.ptr(),
        )
    };
    ret.error(HTTP_ERRORS)?;
    Ok(Response {
        status: ret.u16(4),
        headers: (ret.0[8] != 0).then(|| unsafe { pairs(ret.i32(12), ret.i32(16)) }),
        body: (ret.0[20] != 0).then(|| unsafe { bytes(ret.i32(24), ret.i32(28)) }),
    })
}

/// Where a handler's result is left for the host, as wit-bindgen 0.2's exports leave it.
static mut RESPONSE: Ret = Ret([0; 32]);

/// The body of a handler export: the request from its flattened arguments, `f`'s response
/// (or error, as `unexpected-error`) in the return area; the area's address.
#[allow(clippy::too_many_arguments)]
pub unsafe fn handle(args: [i32; 10], f: impl FnOnce(Request) -> Result<Response, String>) -> i32 {
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
    ] = args;
    let request = unsafe {
        Request {
            method: method as usize,
            uri: string(uri, uri_len),
            headers: pairs(headers, headers_len),
            params: pairs(params, params_len),
            body: (has_body != 0).then(|| bytes(body, body_len)),
        }
    };
    let mut area = [0u8; 32];
    let mut put = |at: usize, value: &[u8]| area[at..at + value.len()].copy_from_slice(value);
    // Given to the host, which reads them after this returns: they are left allocated.
    let give = |bytes: Vec<u8>| {
        let bytes = bytes.leak();
        (bytes.as_ptr() as i32, bytes.len() as i32)
    };
    match f(request) {
        Ok(response) => {
            put(4, &response.status.to_le_bytes());
            if let Some(headers) = response.headers {
                let mut list = Vec::new();
                for (k, v) in headers {
                    let (k, kl) = give(k.into_bytes());
                    let (v, vl) = give(v.into_bytes());
                    for word in [k, kl, v, vl] {
                        list.extend(word.to_le_bytes());
                    }
                }
                let len = list.len() as i32 / 16;
                let aligned: Vec<u32> = list
                    .chunks(4)
                    .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
                    .collect();
                let aligned = aligned.leak();
                put(8, &[1]);
                put(12, &(aligned.as_ptr() as i32).to_le_bytes());
                put(16, &len.to_le_bytes());
            }
            if let Some(body) = response.body {
                let (ptr, len) = give(body);
                put(20, &[1]);
                put(24, &ptr.to_le_bytes());
                put(28, &len.to_le_bytes());
            }
        }
        Err(message) => {
            let (ptr, len) = give(message.into_bytes());
            put(0, &[1]);
            put(4, &[4]);
            put(8, &ptr.to_le_bytes());
            put(12, &len.to_le_bytes());
        }
    }
    unsafe {
        let ret = &raw mut RESPONSE;
        (*ret).0 = area;
        (*ret).0.as_ptr() as i32
    }
}

/// Exports `$f(Request) -> Result<Response, String>` as the HTTP handler `$export` (a route's
/// handler name with `_` as `-`, as slight calls it).
#[macro_export]
macro_rules! handler {
    ($export:literal, $f:path) => {
        const _: () = {
            #[unsafe(export_name = $export)]
            pub unsafe extern "C" fn handler(
                a0: i32,
                a1: i32,
                a2: i32,
                a3: i32,
                a4: i32,
                a5: i32,
                a6: i32,
                a7: i32,
                a8: i32,
                a9: i32,
            ) -> i32 {
                unsafe { $crate::handle([a0, a1, a2, a3, a4, a5, a6, a7, a8, a9], $f) }
            }
        };
    };
}
