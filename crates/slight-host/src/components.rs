//! slight's capabilities for components (WASI 0.2) under the slight runtime, as the standard
//! successors of its interfaces: `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) over the
//! same stores the core-module ABI opens (a bucket is a key-value capability, by name), and
//! `wasi:config@0.2.0-rc.1` (wasmtime-wasi-config) over the configs the slightfile declares.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi_config::WasiConfig;

use super::{Refusal, SlightComponentState};
use wasmcell_stores::KeyValue;

wasmtime::component::bindgen!({
    path: "wit/slight",
    world: "wasmcell:slight/components",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store.bucket": Bucket,
    },
});

use wasi::keyvalue::{atomics, batch, store};

/// An open bucket: a store and the name it was opened as (its keys' namespace).
pub struct Bucket {
    name: String,
    store: Arc<KeyValue>,
}

type Outcome<T> = wasmtime::Result<Result<T, store::Error>>;

/// Adds wasi:keyvalue and wasi:config to a component linker.
pub(crate) fn add_to_linker(linker: &mut Linker<SlightComponentState>) -> wasmtime::Result<()> {
    type State = SlightComponentState;
    Components::add_to_linker::<State, HasSelf<State>>(linker, |state| state)?;
    wasmtime_wasi_config::add_to_linker(linker, |state: &mut State| {
        WasiConfig::from(&state.host.config)
    })
}

fn other(why: String) -> store::Error {
    store::Error::Other(why)
}

impl store::Host for SlightComponentState {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        let host = self.host.clone();
        match host.open_store(&identifier).await {
            Ok(store) => {
                let bucket = Bucket {
                    name: identifier,
                    store,
                };
                Ok(Ok(self.table.push(bucket)?))
            }
            Err(Refusal(super::KV_UNDECLARED, _)) => Ok(Err(store::Error::NoSuchStore)),
            Err(Refusal(_, why)) => Ok(Err(other(why))),
        }
    }
}

impl store::HostBucket for SlightComponentState {
    async fn get(&mut self, this: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let bucket = self.table.get(&this)?;
        Ok(bucket.store.get(&bucket.name, &key).await.map_err(other))
    }

    async fn set(&mut self, this: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let bucket = self.table.get(&this)?;
        Ok(bucket
            .store
            .set(&bucket.name, &key, &value)
            .await
            .map_err(other))
    }

    async fn delete(&mut self, this: Resource<Bucket>, key: String) -> Outcome<()> {
        let bucket = self.table.get(&this)?;
        Ok(bucket.store.delete(&bucket.name, &key).await.map_err(other))
    }

    async fn exists(&mut self, this: Resource<Bucket>, key: String) -> Outcome<bool> {
        let bucket = self.table.get(&this)?;
        let value = bucket.store.get(&bucket.name, &key).await;
        Ok(value.map(|v| v.is_some()).map_err(other))
    }

    /// Every key at once: the cursor is never needed.
    async fn list_keys(
        &mut self,
        this: Resource<Bucket>,
        _cursor: Option<u64>,
    ) -> Outcome<store::KeyResponse> {
        let bucket = self.table.get(&this)?;
        let keys = bucket.store.keys(&bucket.name).await;
        Ok(keys
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(other))
    }

    async fn drop(&mut self, this: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl atomics::Host for SlightComponentState {
    async fn increment(&mut self, this: Resource<Bucket>, key: String, delta: u64) -> Outcome<u64> {
        let bucket = self.table.get(&this)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(other(format!("a delta of {delta} is too large"))));
        };
        let new = bucket.store.increment(&bucket.name, &key, delta).await;
        Ok(new
            .and_then(|n| u64::try_from(n).map_err(|_| format!("the counter at {key} is negative")))
            .map_err(other))
    }
}

impl batch::Host for SlightComponentState {
    async fn get_many(
        &mut self,
        this: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let bucket = self.table.get(&this)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match bucket.store.get(&bucket.name, &key).await {
                Ok(value) => values.push(value.map(|v| (key, v))),
                Err(why) => return Ok(Err(other(why))),
            }
        }
        Ok(Ok(values))
    }

    async fn set_many(
        &mut self,
        this: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let bucket = self.table.get(&this)?;
        for (key, value) in key_values {
            if let Err(why) = bucket.store.set(&bucket.name, &key, &value).await {
                return Ok(Err(other(why)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(&mut self, this: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let bucket = self.table.get(&this)?;
        for key in keys {
            if let Err(why) = bucket.store.delete(&bucket.name, &key).await {
                return Ok(Err(other(why)));
            }
        }
        Ok(Ok(()))
    }
}
