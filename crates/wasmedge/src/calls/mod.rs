//! The host functions of WasmEdge's socket ABI, each an async fn of the caller and its `i32`
//! arguments returning the guest's errno: sockets (`sockets`), name lookups (`lookup`), the
//! descriptor calls that may name a socket (`descriptors`) and `poll_oneoff` (`poll`).

mod descriptors;
mod lookup;
mod poll;
mod sockets;

use wasmtime::{Caller, Extern, Memory};

use crate::memory::{Errno, Mem};
use crate::socket::GuestSocket;
use crate::{WasmEdge, WasmEdgeView};

pub(crate) use descriptors::*;
pub(crate) use lookup::*;
pub(crate) use poll::poll_oneoff;
pub(crate) use sockets::*;

pub(crate) type Host<'a, T> = Caller<'a, T>;

/// The guest's memory: looked up by name at the first call of a store, not at every call.
pub(crate) fn guest_memory(caller: &mut Host<'_, impl WasmEdgeView>) -> Option<Memory> {
    if let Some(memory) = caller.data_mut().wasmedge().and_then(|state| state.memory) {
        return Some(memory);
    }
    let memory = caller.get_export("memory").and_then(Extern::into_memory)?;
    if let Some(state) = caller.data_mut().wasmedge() {
        state.memory = Some(memory);
    }
    Some(memory)
}

/// Runs `f` with the guest's memory and this ABI's state.
pub(crate) fn with<R>(
    caller: &mut Host<'_, impl WasmEdgeView>,
    f: impl FnOnce(&mut Mem<'_>, &mut WasmEdge) -> Result<R, Errno>,
) -> Result<R, Errno> {
    let memory = guest_memory(caller).ok_or(Errno::FAULT)?;
    let (bytes, state) = memory.data_and_store_mut(&mut *caller);
    let state = state.wasmedge().ok_or(Errno::NOTSUP)?;
    f(&mut Mem(bytes), state)
}

/// The socket `fd` names.
fn socket(
    caller: &mut Host<'_, impl WasmEdgeView>,
    fd: u32,
) -> Result<std::sync::Arc<GuestSocket>, Errno> {
    with(caller, |_, state| state.sockets.socket(fd))
}

/// Calls wasmtime-wasi's own preview 1 function (for a descriptor that is not a socket) as
/// its linker would: with the store's WASI context and the guest's memory.
macro_rules! wasi {
    ($caller:expr, $function:ident($($arg:expr),*) $(.$await:tt)?) => {{
        let caller = &mut *$caller;
        let memory = $crate::calls::guest_memory(caller)
            .ok_or_else(|| wasmtime::format_err!("missing required memory export"))?;
        let (bytes, state) = memory.data_and_store_mut(&mut *caller);
        let mut memory = wiggle::GuestMemory::Unshared(bytes);
        wasmtime_wasi::p1::wasi_snapshot_preview1::$function(
            state.wasi(),
            &mut memory,
            $($arg as i32),*
        ) $(.$await)?
    }};
}
pub(crate) use wasi;

fn is_socket(caller: &mut Host<'_, impl WasmEdgeView>, fd: u32) -> bool {
    caller
        .data_mut()
        .wasmedge()
        .is_some_and(|state| state.sockets.get(fd).is_some())
}
