//! Spin 1's interfaces (`fermyon:spin` before the component model, spin-sdk 1.x): the HTTP
//! trigger's `handle-http-request` export, `spin-config` and `key-value`.

use crate::Payload::{None as N, String as S};
use crate::{Error, Request, Response, Ret, bytes, pairs};

#[doc(hidden)]
pub mod raw {
    #[link(wasm_import_module = "spin-config")]
    unsafe extern "C" {
        #[link_name = "get-config"]
        pub fn get_config(key: i32, len: i32, ret: i32);
    }
    #[link(wasm_import_module = "outbound-http")]
    unsafe extern "C" {
        #[link_name = "send-request"]
        pub fn send_request(
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
    #[link(wasm_import_module = "key-value")]
    unsafe extern "C" {
        pub fn open(name: i32, len: i32, ret: i32);
        pub fn get(store: i32, key: i32, len: i32, ret: i32);
        pub fn set(store: i32, key: i32, len: i32, value: i32, value_len: i32, ret: i32);
    }
}

const CONFIG_ERRORS: &[(&str, crate::Payload)] = &[
    ("provider", S),
    ("invalid-key", S),
    ("invalid-schema", S),
    ("other", S),
];
const KEY_VALUE_ERRORS: &[(&str, crate::Payload)] = &[
    ("store-table-full", N),
    ("no-such-store", N),
    ("access-denied", N),
    ("invalid-store", N),
    ("no-such-key", N),
    ("io", S),
];

/// `outbound-http`'s `http-error`, an enum.
const HTTP_ERRORS: &[(&str, crate::Payload)] = &[
    ("success", N),
    ("destination-not-allowed", N),
    ("invalid-url", N),
    ("request-error", N),
    ("runtime-error", N),
    ("too-many-requests", N),
];

/// `outbound-http`'s `send-request`.
pub fn send_request(req: &Request) -> Result<Response, Error> {
    crate::send(raw::send_request, req, HTTP_ERRORS)
}

/// A variable of the component (`spin-config`'s `get-config`).
pub fn get_config(key: &str) -> Result<String, Error> {
    let mut ret = Ret::new();
    unsafe { raw::get_config(key.as_ptr() as i32, key.len() as i32, ret.ptr()) };
    ret.error(CONFIG_ERRORS)?;
    Ok(unsafe { crate::string(ret.i32(4), ret.i32(8)) })
}

/// A key-value store the component may open, by its handle.
pub struct Store(i32);

impl Store {
    pub fn open(name: &str) -> Result<Store, Error> {
        let mut ret = Ret::new();
        unsafe { raw::open(name.as_ptr() as i32, name.len() as i32, ret.ptr()) };
        ret.error(KEY_VALUE_ERRORS).map(|()| Store(ret.i32(4)))
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, Error> {
        let mut ret = Ret::new();
        unsafe { raw::get(self.0, key.as_ptr() as i32, key.len() as i32, ret.ptr()) };
        ret.error(KEY_VALUE_ERRORS)?;
        Ok(unsafe { bytes(ret.i32(4), ret.i32(8)) })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        let mut ret = Ret::new();
        unsafe {
            raw::set(
                self.0,
                key.as_ptr() as i32,
                key.len() as i32,
                value.as_ptr() as i32,
                value.len() as i32,
                ret.ptr(),
            )
        };
        ret.error(KEY_VALUE_ERRORS)
    }
}

/// The body of `handle-http-request`: the request (with Spin 1's `client-addr`) from its
/// flattened arguments, `f`'s `response` record in the return area; the area's address.
pub unsafe fn handle(args: [i32; 12], f: impl FnOnce(Request) -> Response) -> i32 {
    let [
        method,
        uri,
        uri_len,
        headers,
        headers_len,
        params,
        params_len,
        client,
        client_len,
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
            client_addr: crate::string(client, client_len),
            body: (has_body != 0).then(|| bytes(body, body_len)),
        }
    };
    let mut area = [0u8; 32];
    crate::put_response(&mut area, 0, f(request));
    crate::leave(area)
}

/// Exports `$f(Request) -> Response` as Spin 1's `handle-http-request`.
#[macro_export]
macro_rules! spin1_handler {
    ($f:path) => {
        #[unsafe(export_name = "handle-http-request")]
        pub unsafe extern "C" fn handle_http_request(
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
            a10: i32,
            a11: i32,
        ) -> i32 {
            unsafe { $crate::spin1::handle([a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11], $f) }
        }
    };
}
