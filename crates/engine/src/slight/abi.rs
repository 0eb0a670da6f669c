//! The host's side of wit-bindgen 0.2's canonical ABI over a core module, the only ABI
//! SpiderLightning apps were ever built with (it predates the component model's).
//!
//! - Strings and lists are `(pointer, length)` pairs in the guest's `memory`. What the host
//!   hands the guest it allocates with the guest's `canonical_abi_realloc(0, 0, align, size)`;
//!   the guest then owns it.
//! - An import whose result does not fit one value takes a return pointer as its last
//!   argument; an export returns one. `expected<T, E>` there is a tag byte at +0 (0 ok, 1
//!   error) and its payload at +4; every error type slight defines is a variant whose tag is at
//!   +4 and whose string (`pointer`, `length`) is at +8, or `status-error`'s `u16`.
//! - A resource is an `i32` handle; `canonical_abi::resource_drop_NAME` releases it.
//!
//! A guest that hands the host a pointer outside its memory, or a string that is not UTF-8,
//! traps, as the canonical ABI has it.

use wasmtime::{AsContext, AsContextMut, Caller, Extern, Instance, Memory, Store, TypedFunc};

use crate::engine::ModuleState;

type Realloc = TypedFunc<(i32, i32, i32, i32), i32>;

/// A guest's memory and allocator, as wit-bindgen 0.2 exports them.
#[derive(Clone)]
pub(super) struct Abi {
    memory: Memory,
    realloc: Option<Realloc>,
}

impl Abi {
    /// The calling guest's.
    pub(super) fn of_caller(caller: &mut Caller<'_, ModuleState>) -> wasmtime::Result<Abi> {
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
    pub(super) fn of_instance(
        store: &mut Store<ModuleState>,
        instance: &Instance,
    ) -> wasmtime::Result<Abi> {
        let memory = instance.get_memory(&mut *store, "memory").ok_or_else(|| {
            wasmtime::format_err!("the module exports no `memory`, which slight's interfaces need")
        })?;
        let realloc = instance
            .get_typed_func(&mut *store, "canonical_abi_realloc")
            .ok();
        Ok(Abi { memory, realloc })
    }

    /// `len` bytes at `ptr`.
    pub(super) fn bytes(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
    ) -> wasmtime::Result<Vec<u8>> {
        let (start, len) = (ptr as u32 as usize, len as u32 as usize);
        start
            .checked_add(len)
            .and_then(|end| self.memory.data(&store).get(start..end))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                wasmtime::format_err!(
                    "the guest passed {len} bytes at {start:#x}, outside its memory"
                )
            })
    }

    /// The UTF-8 string of `len` bytes at `ptr`.
    pub(super) fn string(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
    ) -> wasmtime::Result<String> {
        String::from_utf8(self.bytes(store, ptr, len)?)
            .map_err(|_| wasmtime::format_err!("the guest passed a string that is not UTF-8"))
    }

    /// A `list<tuple<string, string>>` (headers, parameters) of `len` elements at `ptr`.
    pub(super) fn pairs(
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
                wasmtime::format_err!("the guest's return area at {start:#x} is outside its memory")
            })
    }

    /// Copies `bytes` into memory the guest allocates (and then owns); their address.
    pub(super) async fn give(
        &self,
        mut store: impl AsContextMut<Data = ModuleState>,
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
        mut store: impl AsContextMut<Data = ModuleState>,
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
    pub(super) async fn give_pairs(
        &self,
        mut store: impl AsContextMut<Data = ModuleState>,
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
    pub(super) async fn ret(
        &self,
        mut store: impl AsContextMut<Data = ModuleState>,
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

    /// Reads the `expected<response, http-error>` an HTTP handler returned at `ret`.
    pub(super) fn response(
        &self,
        store: impl AsContext,
        ret: i32,
    ) -> wasmtime::Result<Result<Response, String>> {
        let area = self.bytes(&store, ret, 32)?;
        let word = |at: usize| i32::from_le_bytes(area[at..at + 4].try_into().unwrap());
        let half = |at: usize| u16::from_le_bytes(area[at..at + 2].try_into().unwrap());
        if area[0] != 0 {
            return Ok(Err(match area[4] {
                HTTP_STATUS_ERROR => format!("status-error({})", half(8)),
                case => format!(
                    "{}: {}",
                    HTTP_ERRORS.get(case as usize).unwrap_or(&"error"),
                    String::from_utf8_lossy(&self.bytes(&store, word(8), word(12))?)
                ),
            }));
        }
        Ok(Ok(Response {
            status: half(4),
            headers: match area[8] {
                0 => None,
                _ => Some(self.pairs(&store, word(12), word(16))?),
            },
            body: match area[20] {
                0 => None,
                _ => Some(self.bytes(&store, word(24), word(28))?),
            },
        }))
    }
}

/// The cases of slight's `http-error`, by tag.
pub(super) const HTTP_ERRORS: [&str; 5] = [
    "invalid-url",
    "timeout-error",
    "protocol-error",
    "status-error",
    "unexpected-error",
];
const HTTP_STATUS_ERROR: u8 = 3;

/// An `expected<T, E>` result for the guest.
pub(super) enum Ret {
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
    /// `err(CASE(string))`.
    Error(u8, String),
}

/// slight's `response` record.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) headers: Option<Vec<(String, String)>>,
    pub(super) body: Option<Vec<u8>>,
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
