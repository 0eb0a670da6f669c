//! slight's `keyvalue` and `configs` interfaces, and the drops of their resources.

use std::sync::Arc;

use wasmtime::{Caller, Linker};

use super::{Handle, instance};
use crate::SlightState;
use wasmcell_runtime::core_abi::{Abi, Ret};
use wasmcell_runtime::define_import as define;
use wasmcell_stores::KeyValue;

type Host<'a> = Caller<'a, SlightState>;

/// `keyvalue-error`'s cases.
const KEY_NOT_FOUND: u8 = 0;
const INVALID_KEY: u8 = 1;
const IO_ERROR: u8 = 6;

pub(super) fn add_to_linker(linker: &mut Linker<SlightState>) -> wasmtime::Result<()> {
    define!(
        linker,
        "keyvalue",
        "keyvalue::open",
        open_store,
        name,
        len,
        ret
    );
    define!(
        linker,
        "keyvalue",
        "keyvalue::get",
        get,
        store,
        key,
        len,
        ret
    );
    define!(
        linker,
        "keyvalue",
        "keyvalue::set",
        set,
        store,
        key,
        len,
        value,
        value_len,
        ret
    );
    define!(linker, "keyvalue", "keyvalue::keys", keys, store, ret);
    define!(
        linker,
        "keyvalue",
        "keyvalue::delete",
        delete,
        store,
        key,
        len,
        ret
    );
    define!(
        linker,
        "configs",
        "configs::open",
        open_configs,
        name,
        len,
        ret
    );
    define!(
        linker,
        "configs",
        "configs::get",
        get_config,
        configs,
        key,
        len,
        ret
    );
    define!(
        linker,
        "configs",
        "configs::set",
        set_config,
        configs,
        key,
        len,
        value,
        value_len,
        ret
    );
    for resource in ["keyvalue", "configs", "router", "server"] {
        let name = format!("resource_drop_{resource}");
        define!(linker, "canonical_abi", &name, drop_handle, handle);
    }
    Ok(())
}

async fn open_store(caller: &mut Host<'_>, name: i32, len: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let name = abi.string(&*caller, name, len)?;
    let host = instance(caller).host.clone();
    let result = match host.open_store(&name).await {
        Ok(store) => Ret::Handle(instance(caller).insert(Handle::Store { name, store })),
        Err(refusal) => refusal.into(),
    };
    abi.ret(caller, ret, result).await
}

/// The store behind `handle` and the name it was opened as (its keys' namespace).
fn store(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<(String, Arc<KeyValue>)> {
    match instance(caller).get(handle) {
        Some(Handle::Store { name, store }) => Ok((name.clone(), store.clone())),
        _ => wasmtime::bail!("keyvalue: handle {handle} is not an open store"),
    }
}

/// A `keyvalue` function on the store behind `handle` (opened as `name`, its keys'
/// namespace) and the key at `key`/`len`: `op(store, name, key)`'s answer, or `invalid-key`
/// for an empty key.
async fn on_key<F>(
    caller: &mut Host<'_>,
    handle: i32,
    (key, len): (i32, i32),
    ret: i32,
    op: impl FnOnce(Arc<KeyValue>, String, String) -> F,
) -> wasmtime::Result<()>
where
    F: Future<Output = Ret>,
{
    let abi = Abi::of_caller(caller)?;
    let (name, store) = store(caller, handle)?;
    let key = abi.string(&*caller, key, len)?;
    let result = match key.is_empty() {
        true => Ret::Error(INVALID_KEY, "a key may not be empty".to_owned()),
        false => op(store, name, key).await,
    };
    abi.ret(caller, ret, result).await
}

async fn get(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    on_key(
        caller,
        handle,
        (key, len),
        ret,
        |store, name, key| async move {
            match store.get(&name, &key).await {
                Ok(Some(value)) => Ret::Bytes(value),
                Ok(None) => Ret::Error(KEY_NOT_FOUND, key),
                Err(why) => Ret::Error(IO_ERROR, why),
            }
        },
    )
    .await
}

async fn set(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    value: i32,
    value_len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let value = Abi::of_caller(caller)?.bytes(&*caller, value, value_len)?;
    on_key(
        caller,
        handle,
        (key, len),
        ret,
        |store, name, key| async move {
            match store.set(&name, &key, &value).await {
                Ok(()) => Ret::Unit,
                Err(why) => Ret::Error(IO_ERROR, why),
            }
        },
    )
    .await
}

async fn keys(caller: &mut Host<'_>, handle: i32, ret: i32) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let (name, store) = store(caller, handle)?;
    let result = match store.keys(&name).await {
        Ok(keys) => Ret::Strings(keys),
        Err(why) => Ret::Error(IO_ERROR, why),
    };
    abi.ret(caller, ret, result).await
}

async fn delete(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    on_key(
        caller,
        handle,
        (key, len),
        ret,
        |store, name, key| async move {
            match store.delete(&name, &key).await {
                Ok(()) => Ret::Unit,
                Err(why) => Ret::Error(IO_ERROR, why),
            }
        },
    )
    .await
}

async fn open_configs(
    caller: &mut Host<'_>,
    name: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let name = abi.string(&*caller, name, len)?;
    let result = match instance(caller).host.configs(&name) {
        Ok(()) => Ret::Handle(instance(caller).insert(Handle::Configs { name })),
        Err(refusal) => refusal.into(),
    };
    abi.ret(caller, ret, result).await
}

/// The name the configs behind `handle` were opened as.
fn configs(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<String> {
    match instance(caller).get(handle) {
        Some(Handle::Configs { name }) => Ok(name.clone()),
        _ => wasmtime::bail!("configs: handle {handle} is not open configs"),
    }
}

async fn get_config(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let name = configs(caller, handle)?;
    let key = abi.string(&*caller, key, len)?;
    let result = match instance(caller).host.config(&name, &key) {
        Ok(value) => Ret::Bytes(value),
        Err(refusal) => refusal.into(),
    };
    abi.ret(caller, ret, result).await
}

async fn set_config(
    caller: &mut Host<'_>,
    handle: i32,
    key: i32,
    len: i32,
    value: i32,
    value_len: i32,
    ret: i32,
) -> wasmtime::Result<()> {
    let abi = Abi::of_caller(caller)?;
    let name = configs(caller, handle)?;
    let key = abi.string(&*caller, key, len)?;
    let value = abi.bytes(&*caller, value, value_len)?;
    let result = match instance(caller).host.set_config(&name, &key, value) {
        Ok(()) => Ret::Unit,
        Err(refusal) => refusal.into(),
    };
    abi.ret(caller, ret, result).await
}

async fn drop_handle(caller: &mut Host<'_>, handle: i32) -> wasmtime::Result<()> {
    instance(caller).drop_handle(handle);
    Ok(())
}
