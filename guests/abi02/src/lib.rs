//! SpiderLightning's and Spin 1's interfaces as their apps import them, bound by hand with
//! wit-bindgen 0.2's canonical ABI (the ABI of both, before the component model; wit-bindgen
//! 0.2 itself exists only as a git dependency): module = the WIT file's stem, field = the
//! function (`resource::function` for a resource's), strings and lists as pointer and length,
//! results in a return area. For the test guests; real apps have the same imports from their
//! SDK's generated bindings.
//!
//! Each app calls [`allocator!`] once (the host hands it data through its
//! `canonical_abi_realloc`), and exports its HTTP handlers with [`slight_handler!`] or
//! [`spin1_handler!`].

use std::alloc::{Layout, alloc, dealloc};
use std::fmt;

pub mod slight;
pub mod spin1;

/// An error an interface returned: its variant's case and message.
#[derive(Debug)]
pub struct Error {
    /// The case's name (e.g. `key-not-found`).
    pub case: &'static str,
    /// Its payload, if it has one.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.case, self.message)
    }
}

/// A return area, as wit-bindgen 0.2 declares one per call.
#[repr(C, align(4))]
pub(crate) struct Ret(pub(crate) [u8; 32]);

/// What a case of an error variant carries.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Payload {
    None,
    String,
    U16,
}

impl Ret {
    pub(crate) fn new() -> Ret {
        Ret([0; 32])
    }

    pub(crate) fn ptr(&mut self) -> i32 {
        self.0.as_mut_ptr() as i32
    }

    pub(crate) fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.0[at..at + 4].try_into().unwrap())
    }

    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.0[at..at + 2].try_into().unwrap())
    }

    /// `expected<_, E>`: the error if it is one, `E` a variant with these cases.
    pub(crate) fn error(&self, cases: &[(&'static str, Payload)]) -> Result<(), Error> {
        if self.0[0] == 0 {
            return Ok(());
        }
        let (case, payload) = cases
            .get(self.0[4] as usize)
            .copied()
            .unwrap_or(("?", Payload::None));
        Err(Error {
            case,
            message: match payload {
                Payload::None => String::new(),
                Payload::String => unsafe { string(self.i32(8), self.i32(12)) },
                Payload::U16 => self.u16(8).to_string(),
            },
        })
    }
}

/// Takes ownership of the bytes the host allocated.
pub(crate) unsafe fn bytes(ptr: i32, len: i32) -> Vec<u8> {
    unsafe { Vec::from_raw_parts(ptr as *mut u8, len as usize, len as usize) }
}

pub(crate) unsafe fn string(ptr: i32, len: i32) -> String {
    String::from_utf8(unsafe { bytes(ptr, len) }).expect("the host gave a string that is not UTF-8")
}

/// Takes ownership of a `list<string>` the host allocated.
pub(crate) unsafe fn strings(ptr: i32, len: i32) -> Vec<String> {
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
pub(crate) unsafe fn pairs(ptr: i32, len: i32) -> Vec<(String, String)> {
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

/// The HTTP `method` enum of slight and Spin 1, by case.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// An HTTP request: a handler's argument, or what slight's client sends.
#[derive(Debug, Default)]
pub struct Request {
    pub method: usize,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub params: Vec<(String, String)>,
    /// Spin 1's `client-addr` (slight's request has none).
    pub client_addr: String,
    pub body: Option<Vec<u8>>,
}

/// An HTTP response: a handler's result, or what slight's client got.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Option<Vec<(String, String)>>,
    pub body: Option<Vec<u8>>,
}

/// Memory given to the host, which reads it after the export returns: left allocated.
fn give(bytes: Vec<u8>) -> (i32, i32) {
    let bytes = bytes.leak();
    (bytes.as_ptr() as i32, bytes.len() as i32)
}

/// `response` laid out as a `response` record, at `at` in `area`.
pub(crate) fn put_response(area: &mut [u8; 32], at: usize, response: Response) {
    let mut put = |offset: usize, value: &[u8]| {
        area[at + offset..at + offset + value.len()].copy_from_slice(value)
    };
    put(0, &response.status.to_le_bytes());
    if let Some(headers) = response.headers {
        let mut list: Vec<u32> = Vec::new();
        for (k, v) in headers {
            let (k, kl) = give(k.into_bytes());
            let (v, vl) = give(v.into_bytes());
            list.extend([k, kl, v, vl].map(|w| w as u32));
        }
        let len = list.len() as i32 / 4;
        let list = list.leak();
        put(4, &[1]);
        put(8, &(list.as_ptr() as i32).to_le_bytes());
        put(12, &len.to_le_bytes());
    }
    if let Some(body) = response.body {
        let (ptr, len) = give(body);
        put(16, &[1]);
        put(20, &ptr.to_le_bytes());
        put(24, &len.to_le_bytes());
    }
}

/// Where a handler's result is left for the host, as wit-bindgen 0.2's exports leave it.
static mut RESULT: Ret = Ret([0; 32]);

/// Leaves `area` where the host reads a handler's result; its address.
pub(crate) fn leave(area: [u8; 32]) -> i32 {
    unsafe {
        let ret = &raw mut RESULT;
        (*ret).0 = area;
        (*ret).0.as_ptr() as i32
    }
}

/// An import sending a `request` record and returning `expected<response, E>` (slight's
/// `http-client`, Spin 1's `outbound-http`).
pub(crate) type SendImport =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32);

/// Sends `req` through `import`, whose error variant has `cases`.
pub(crate) fn send(
    import: SendImport,
    req: &Request,
    cases: &[(&'static str, Payload)],
) -> Result<Response, Error> {
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
        import(
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
    ret.error(cases)?;
    Ok(Response {
        status: ret.u16(4),
        headers: (ret.0[8] != 0).then(|| unsafe { pairs(ret.i32(12), ret.i32(16)) }),
        body: (ret.0[20] != 0).then(|| unsafe { bytes(ret.i32(24), ret.i32(28)) }),
    })
}
