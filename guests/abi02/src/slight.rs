//! SpiderLightning's `keyvalue`, `configs`, `http-server` and `http-client`, as slight apps
//! import them.

use crate::Payload::{String as S, U16};
use crate::{Error, Request, Response, Ret, bytes, pairs, strings};

const KEYVALUE_ERRORS: &[(&str, crate::Payload)] = &[
    ("key-not-found", S),
    ("invalid-key", S),
    ("invalid-value", S),
    ("connection-error", S),
    ("authentication-error", S),
    ("timeout-error", S),
    ("io-error", S),
    ("unexpected-error", S),
];
const CONFIGS_ERRORS: &[(&str, crate::Payload)] = &[
    ("not-found", S),
    ("invalid-value", S),
    ("permission-denied", S),
    ("io-error", S),
    ("unexpected-error", S),
];
const HTTP_ERRORS: &[(&str, crate::Payload)] = &[
    ("invalid-url", S),
    ("timeout-error", S),
    ("protocol-error", S),
    ("status-error", U16),
    ("unexpected-error", S),
];

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

/// `http-client`'s `request`.
pub fn request(req: &Request) -> Result<Response, Error> {
    crate::send(raw::request, req, HTTP_ERRORS)
}

/// The body of a slight handler export: the request from its flattened arguments, `f`'s
/// `expected<response, http-error>` (an error as `unexpected-error`) in the return area; the
/// area's address.
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
            uri: crate::string(uri, uri_len),
            headers: pairs(headers, headers_len),
            params: pairs(params, params_len),
            client_addr: String::new(),
            body: (has_body != 0).then(|| bytes(body, body_len)),
        }
    };
    let mut area = [0u8; 32];
    match f(request) {
        Ok(response) => crate::put_response(&mut area, 4, response),
        Err(message) => {
            let (ptr, len) = crate::give(message.into_bytes());
            area[0] = 1;
            area[4] = 4;
            area[8..12].copy_from_slice(&ptr.to_le_bytes());
            area[12..16].copy_from_slice(&len.to_le_bytes());
        }
    }
    crate::leave(area)
}

/// Exports `$f(Request) -> Result<Response, String>` as the slight HTTP handler `$export` (a
/// route's handler name with `_` as `-`, as slight calls it).
#[macro_export]
macro_rules! slight_handler {
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
                unsafe { $crate::slight::handle([a0, a1, a2, a3, a4, a5, a6, a7, a8, a9], $f) }
            }
        };
    };
}

/// The body of `on-server-init`, where an HTTP app built as a library (slight's
/// `#[on_server_init]`) starts its servers: `f`'s outcome as `expected<unit, string>`.
pub fn server_init(f: impl FnOnce() -> Result<(), String>) -> i32 {
    let mut area = [0u8; 32];
    if let Err(message) = f() {
        let (ptr, len) = crate::give(message.into_bytes());
        area[0] = 1;
        area[4..8].copy_from_slice(&ptr.to_le_bytes());
        area[8..12].copy_from_slice(&len.to_le_bytes());
    }
    crate::leave(area)
}

/// Exports `$f() -> Result<(), String>` as `on-server-init`.
#[macro_export]
macro_rules! slight_on_server_init {
    ($f:path) => {
        #[unsafe(export_name = "on-server-init")]
        pub extern "C" fn on_server_init() -> i32 {
            $crate::slight::server_init($f)
        }
    };
}
