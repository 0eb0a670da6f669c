//! Spin 4's interfaces, which Spin 4's SDKs import (spin-sdk 5 for Python among them): the
//! async `spin:key-value@3.0.0`, `spin:variables@3.0.0`, `spin:redis@3.0.0`,
//! `spin:mqtt@3.0.0` and `spin:mysql@3.0.0`, and the async functions `spin:sqlite@3.1.0` and
//! `spin:postgres@4.2.0` added to their synchronous ones (4.1.0's `connection-builder` too).
//! They reach the same grants, stores and pools as Spin 2's and 3's.
//!
//! An async call runs concurrently with the instance's other calls, so it cannot hold the
//! instance's state while it waits: each takes what it needs from the state first (the grants,
//! a handle's shared parts), waits without it, and comes back to the state to keep a result.
//! Rows are read whole within the limits the synchronous functions have, then given to the
//! guest as the stream the interface returns, with the statement's outcome as its future.

use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use wasmcell_runtime::store::{Held, HeldBytes};
use wasmtime::StoreContextMut;
use wasmtime::component::{
    Accessor, Destination, FutureReader, HasSelf, Resource, StreamProducer, StreamReader,
    StreamResult, VecBuffer,
};

use super::fermyon::spin2_0_0::{
    key_value as kv2, mqtt as mqtt2, rdbms_types as rdbms, redis as redis2, variables as variables2,
};
use super::mqtt_client::{self, MqttHandle};
use super::mysql::{self, SharedMysql};
use super::postgres::{self, CaRoot, PgBuilder, PgHandle};
use super::services::no_network;
use super::spin::key_value::key_value as kv;
use super::spin::mqtt::mqtt;
use super::spin::mysql::mysql as mysql3;
use super::spin::postgres4_2_0::postgres as pg;
use super::spin::redis::redis;
use super::spin::sqlite::sqlite;
use super::spin::variables::variables;
use super::spin2::{flatten, redis_query};
use super::spin3::{from_v2, to_v2};
use super::{DatabaseHandle, Outcome, RedisHandle, SpinHost, SpinState, StoreHandle, check_value};

/// The state an async call's accessor reaches.
type Spin = HasSelf<SpinState>;

/// Runs `f` on the instance's state, between the waits of an async call.
fn with_state<T, R>(accessor: &Accessor<T, Spin>, f: impl FnOnce(&mut SpinState) -> R) -> R {
    accessor.with(|mut access| f(access.get()))
}

/// The component's grants, for a call to use while it waits.
fn grants<T>(accessor: &Accessor<T, Spin>) -> Arc<SpinHost> {
    with_state(accessor, |state| state.host.clone())
}

/// Puts `handle` in the instance's resource table.
fn push<T, H: Send + 'static>(
    accessor: &Accessor<T, Spin>,
    handle: H,
) -> wasmtime::Result<Resource<H>> {
    with_state(accessor, |state| Ok(state.table.push(handle)?))
}

/// A clone of the handle `this` (its shared parts), for a call to use while it waits.
fn shared<T, H: Clone + Send + 'static>(
    accessor: &Accessor<T, Spin>,
    this: &Resource<H>,
) -> wasmtime::Result<H> {
    with_state(accessor, |state| Ok(state.table.get(this)?.clone()))
}

/// A stream of rows (or keys) and the future of how reading them ended, as Spin 4's
/// interfaces return them.
type Streamed<I, E> = (StreamReader<I>, FutureReader<Result<(), E>>);

/// `items` (of `bytes` in all) as the stream an interface returns, with `outcome` as its
/// future; or, when the instance already holds as much unread as it may ([`Held`]), why not.
fn streamed<T, I, E>(
    accessor: &Accessor<T, Spin>,
    items: Vec<I>,
    bytes: usize,
    outcome: Result<(), E>,
) -> wasmtime::Result<Result<Streamed<I, E>, String>>
where
    I: wasmtime::component::Lower + wasmtime::component::Lift + Send + Sync + Unpin + 'static,
    E: wasmtime::component::Lower + wasmtime::component::Lift + Send + Sync + 'static,
{
    accessor.with(|mut access| {
        let held = match access.get().budget.held.take(bytes) {
            Ok(held) => held,
            Err(already) => {
                return Ok(Err(format!(
                    "a result of {bytes} bytes would pass what an instance may leave unread ({} bytes; {already} held): read or drop the streams of earlier results",
                    Held::MAX
                )));
            }
        };
        let unread = Unread {
            items: items.into_iter(),
            _held: held,
        };
        let stream = StreamReader::new(&mut access, unread)?;
        let future = FutureReader::new(
            &mut access,
            std::future::ready(Ok::<_, wasmtime::Error>(outcome)),
        )?;
        Ok(Ok((stream, future)))
    })
}

/// Rows (or keys) on their way to the guest, as many at each read as it has room for; until
/// the last is handed over they count as held for the instance.
struct Unread<I> {
    items: std::vec::IntoIter<I>,
    _held: HeldBytes,
}

impl<I, D> StreamProducer<D> for Unread<I>
where
    I: wasmtime::component::Lower + wasmtime::component::Lift + Send + Sync + Unpin + 'static,
{
    type Item = I;
    type Buffer = VecBuffer<I>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        mut store: StoreContextMut<'a, D>,
        mut destination: Destination<'a, I, VecBuffer<I>>,
        _finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let this = self.get_mut();
        let room = match destination.remaining(&mut store) {
            // A read that only waits for readiness: ready, and nothing buffered for it.
            Some(0) => return Poll::Ready(Ok(StreamResult::Completed)),
            Some(room) => room,
            None => usize::MAX,
        };
        let chunk: Vec<I> = this.items.by_ref().take(room).collect();
        destination.set_buffer(chunk.into());
        Poll::Ready(Ok(match this.items.len() {
            0 => StreamResult::Dropped,
            _ => StreamResult::Completed,
        }))
    }
}

// ---- spin:key-value@3.0.0

impl From<kv2::Error> for kv::Error {
    fn from(error: kv2::Error) -> kv::Error {
        match error {
            kv2::Error::StoreTableFull => kv::Error::StoreTableFull,
            kv2::Error::NoSuchStore => kv::Error::NoSuchStore,
            kv2::Error::AccessDenied => kv::Error::AccessDenied,
            kv2::Error::Other(why) => kv::Error::Other(why),
        }
    }
}

impl kv::Host for SpinState {}

impl kv::HostStore for SpinState {
    async fn drop(&mut self, this: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> kv::HostStoreWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Outcome<Resource<StoreHandle>, kv::Error> {
        Ok(match grants(accessor).open_store(label).await {
            Ok(handle) => Ok(push(accessor, handle)?),
            Err(error) => Err(error.into()),
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, kv::Error> {
        let store = shared(accessor, &this)?;
        Ok(store.get(&key).await.map_err(kv::Error::Other))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), kv::Error> {
        if let Err(too_large) = check_value(&value) {
            return Ok(Err(kv::Error::Other(too_large)));
        }
        let store = shared(accessor, &this)?;
        Ok(store.set(&key, &value).await.map_err(kv::Error::Other))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<(), kv::Error> {
        let store = shared(accessor, &this)?;
        Ok(store.delete(&key).await.map_err(kv::Error::Other))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<bool, kv::Error> {
        let store = shared(accessor, &this)?;
        Ok(store
            .get(&key)
            .await
            .map(|value| value.is_some())
            .map_err(kv::Error::Other))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        this: Resource<StoreHandle>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), kv::Error>>)> {
        let store = shared(accessor, &this)?;
        let (keys, outcome) = match store.keys().await {
            Ok(keys) => (keys, Ok(())),
            Err(why) => (Vec::new(), Err(kv::Error::Other(why))),
        };
        let bytes = keys.iter().map(|key| size_of::<String>() + key.len()).sum();
        match streamed(accessor, keys, bytes, outcome)? {
            Ok(streamed) => Ok(streamed),
            // The interface has no error for the call itself: the outcome says it.
            Err(why) => Ok(
                streamed(accessor, Vec::new(), 0, Err(kv::Error::Other(why)))?
                    .expect("an empty stream holds nothing"),
            ),
        }
    }
}

// ---- spin:variables@3.0.0

impl variables::Host for SpinState {}

impl<T> variables::HostWithStore<T> for Spin {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Outcome<String, variables::Error> {
        Ok(grants(accessor)
            .get_variable(name)
            .map_err(|error| match error {
                variables2::Error::InvalidName(why) => variables::Error::InvalidName(why),
                variables2::Error::Undefined(why) => variables::Error::Undefined(why),
                variables2::Error::Provider(why) => variables::Error::Provider(why),
                variables2::Error::Other(why) => variables::Error::Other(why),
            }))
    }
}

// ---- spin:redis@3.0.0

impl From<redis2::Error> for redis::Error {
    fn from(error: redis2::Error) -> redis::Error {
        match error {
            redis2::Error::InvalidAddress => redis::Error::InvalidAddress,
            redis2::Error::TooManyConnections => redis::Error::TooManyConnections,
            redis2::Error::TypeError => redis::Error::TypeError,
            redis2::Error::Other(why) => redis::Error::Other(why),
        }
    }
}

/// Runs `command` on the connection `this`.
async fn redis_call<T, R: ::redis::FromRedisValue>(
    accessor: &Accessor<T, Spin>,
    this: &Resource<RedisHandle>,
    command: &::redis::Cmd,
) -> Outcome<R, redis::Error> {
    let RedisHandle(connection) = shared(accessor, this)?;
    Ok(redis_query(connection, command).await.map_err(Into::into))
}

impl redis::Host for SpinState {}

impl redis::HostConnection for SpinState {
    async fn drop(&mut self, this: Resource<RedisHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> redis::HostConnectionWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Outcome<Resource<RedisHandle>, redis::Error> {
        let unreachable = with_state(accessor, |state| no_network(state));
        Ok(
            match grants(accessor).open_redis(unreachable, address).await {
                Ok(handle) => Ok(push(accessor, handle)?),
                Err(error) => Err(error.into()),
            },
        )
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        channel: String,
        payload: Vec<u8>,
    ) -> Outcome<(), redis::Error> {
        let command = ::redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        Ok(redis_call::<T, i64>(accessor, &this, &command)
            .await?
            .map(drop))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("GET").arg(key)).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("SET").arg(key).arg(value)).await
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<i64, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("INCR").arg(key)).await
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        keys: Vec<String>,
    ) -> Outcome<u32, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("DEL").arg(keys)).await
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("SADD").arg(key).arg(values)).await
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Vec<String>, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("SMEMBERS").arg(key)).await
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, redis::Error> {
        redis_call(accessor, &this, ::redis::cmd("SREM").arg(key).arg(values)).await
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        this: Resource<RedisHandle>,
        command: String,
        arguments: Vec<redis::RedisParameter>,
    ) -> Outcome<Vec<redis::RedisResult>, redis::Error> {
        let mut cmd = ::redis::cmd(&command);
        for argument in arguments {
            match argument {
                redis::RedisParameter::Int64(i) => cmd.arg(i),
                redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: ::redis::Value = match redis_call(accessor, &this, &cmd).await? {
            Ok(value) => value,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(flatten(value)
            .into_iter()
            .map(|result| match result {
                redis2::RedisResult::Nil => redis::RedisResult::Nil,
                redis2::RedisResult::Status(s) => redis::RedisResult::Status(s),
                redis2::RedisResult::Int64(i) => redis::RedisResult::Int64(i),
                redis2::RedisResult::Binary(b) => redis::RedisResult::Binary(b),
            })
            .collect()))
    }
}

// ---- spin:mqtt@3.0.0

impl From<mqtt2::Error> for mqtt::Error {
    fn from(error: mqtt2::Error) -> mqtt::Error {
        match error {
            mqtt2::Error::InvalidAddress => mqtt::Error::InvalidAddress,
            mqtt2::Error::TooManyConnections => mqtt::Error::TooManyConnections,
            mqtt2::Error::ConnectionFailed(why) => mqtt::Error::ConnectionFailed(why),
            mqtt2::Error::Other(why) => mqtt::Error::Other(why),
        }
    }
}

impl mqtt::Host for SpinState {}

impl mqtt::HostConnection for SpinState {
    async fn drop(&mut self, this: Resource<MqttHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> mqtt::HostConnectionWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Outcome<Resource<MqttHandle>, mqtt::Error> {
        let unreachable = with_state(accessor, |state| no_network(state));
        let host = grants(accessor);
        let connected = mqtt_client::connect(
            &host,
            unreachable,
            address,
            username,
            password,
            keep_alive_interval_in_secs,
        )
        .await;
        Ok(match connected {
            Ok(handle) => Ok(push(accessor, handle)?),
            Err(error) => Err(error.into()),
        })
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        this: Resource<MqttHandle>,
        topic: String,
        payload: Vec<u8>,
        qos: mqtt::Qos,
    ) -> Outcome<(), mqtt::Error> {
        let qos = match qos {
            mqtt::Qos::AtMostOnce => mqtt2::Qos::AtMostOnce,
            mqtt::Qos::AtLeastOnce => mqtt2::Qos::AtLeastOnce,
            mqtt::Qos::ExactlyOnce => mqtt2::Qos::ExactlyOnce,
        };
        let handle = shared(accessor, &this)?;
        Ok(handle
            .publish(topic, payload, qos)
            .await
            .map_err(Into::into))
    }
}

// ---- spin:mysql@3.0.0: Spin 2's `mysql` with its types in its own interface

/// Converts between two generated variants with the same cases: `$unit` without a payload,
/// `$payload` with one that converts itself.
macro_rules! same_cases {
    ($from:ident => $to:ident; $($unit:ident),*; $($payload:ident),*) => {
        impl From<$from> for $to {
            fn from(value: $from) -> $to {
                match value {
                    $($from::$unit => $to::$unit,)*
                    $($from::$payload(inner) => $to::$payload(inner.into()),)*
                }
            }
        }
    };
}

use mysql3::{
    DbDataType as DataType3, DbValue as Value3, Error as Error3, ParameterValue as Param3,
};
use rdbms::{
    DbDataType as DataType2, DbValue as Value2, Error as Error2, ParameterValue as Param2,
};

same_cases!(Error2 => Error3; ; ConnectionFailed, BadParameter, QueryFailed, ValueConversionFailed, Other);
same_cases!(DataType2 => DataType3; Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32,
    Uint64, Floating32, Floating64, Str, Binary, Other; );
same_cases!(Value2 => Value3; DbNull, Unsupported; Boolean, Int8, Int16, Int32, Int64, Uint8,
    Uint16, Uint32, Uint64, Floating32, Floating64, Str, Binary);
same_cases!(Param3 => Param2; DbNull; Boolean, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32,
    Uint64, Floating32, Floating64, Str, Binary);

impl mysql3::Host for SpinState {}

impl mysql3::HostConnection for SpinState {
    async fn drop(&mut self, this: Resource<SharedMysql>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> mysql3::HostConnectionWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Outcome<Resource<SharedMysql>, Error3> {
        if let Some(why) = with_state(accessor, |state| no_network(state)) {
            return Ok(Err(Error3::ConnectionFailed(why)));
        }
        let host = grants(accessor);
        Ok(match mysql::open(&host, &address).await {
            Ok(handle) => Ok(push(accessor, Arc::new(tokio::sync::Mutex::new(handle)))?),
            Err(error) => Err(error.into()),
        })
    }

    #[allow(clippy::type_complexity)] // The interface's signature.
    async fn query(
        accessor: &Accessor<T, Self>,
        this: Resource<SharedMysql>,
        statement: String,
        params: Vec<Param3>,
    ) -> Outcome<
        (
            Vec<mysql3::Column>,
            StreamReader<Vec<Value3>>,
            FutureReader<Result<(), Error3>>,
        ),
        Error3,
    > {
        let connection = shared(accessor, &this)?;
        let params = params.into_iter().map(Into::into).collect();
        let result = connection.lock().await.query(&statement, params).await;
        let set = match result {
            Ok(set) => set,
            Err(error) => return Ok(Err(error.into())),
        };
        let bytes = set.rows.iter().flatten().map(mysql::size).sum();
        let columns = set
            .columns
            .into_iter()
            .map(|column| mysql3::Column {
                name: column.name,
                data_type: column.data_type.into(),
            })
            .collect();
        let rows = set
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(Into::into).collect())
            .collect();
        Ok(match streamed(accessor, rows, bytes, Ok(()))? {
            Ok((rows, outcome)) => Ok((columns, rows, outcome)),
            Err(why) => Err(Error3::Other(why)),
        })
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        this: Resource<SharedMysql>,
        statement: String,
        params: Vec<Param3>,
    ) -> Outcome<(), Error3> {
        let connection = shared(accessor, &this)?;
        let params = params.into_iter().map(Into::into).collect();
        let result = connection.lock().await.execute(statement, params).await;
        Ok(result.map_err(Into::into))
    }
}

// ---- spin:sqlite@3.1.0's async functions

impl<T> sqlite::HostConnectionWithStore<T> for Spin {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        database: String,
    ) -> Outcome<Resource<DatabaseHandle>, sqlite::Error> {
        Ok(match grants(accessor).open_database(database).await {
            Ok(handle) => Ok(push(accessor, handle)?),
            Err(error) => Err(error.into()),
        })
    }

    #[allow(clippy::type_complexity)] // The interface's signature.
    async fn execute_async(
        accessor: &Accessor<T, Self>,
        this: Resource<DatabaseHandle>,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> Outcome<
        (
            Vec<String>,
            StreamReader<sqlite::RowResult>,
            FutureReader<Result<(), sqlite::Error>>,
        ),
        sqlite::Error,
    > {
        let db = with_state(accessor, |state| {
            Ok::<_, wasmtime::Error>(state.table.get(&this)?.db.clone())
        })?;
        let ran = super::run_sql(db, statement, to_v2(parameters)).await;
        let (result, rowid, changes) = match ran {
            Ok(ran) => ran,
            Err(error) => return Ok(Err(grants(accessor).sqlite_error(error).into())),
        };
        // What the statement did, for `last-insert-rowid` and `changes` (a handle dropped
        // meanwhile keeps nothing).
        with_state(accessor, |state| {
            if let Ok(handle) = state.table.get_mut(&this) {
                handle.last_insert_rowid = rowid;
                handle.changes = changes;
            }
        });
        let result = from_v2(result);
        let bytes = result
            .rows
            .iter()
            .flat_map(|row| &row.values)
            .map(sqlite_size)
            .sum();
        Ok(match streamed(accessor, result.rows, bytes, Ok(()))? {
            Ok((rows, outcome)) => Ok((result.columns, rows, outcome)),
            Err(why) => Err(sqlite::Error::Io(why)),
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<T, Self>,
        this: Resource<DatabaseHandle>,
    ) -> wasmtime::Result<i64> {
        with_state(accessor, |state| {
            Ok(state.table.get(&this)?.last_insert_rowid)
        })
    }

    async fn changes_async(
        accessor: &Accessor<T, Self>,
        this: Resource<DatabaseHandle>,
    ) -> wasmtime::Result<u64> {
        with_state(accessor, |state| Ok(state.table.get(&this)?.changes))
    }
}

/// The bytes a SQLite value holds: its slot, and its text or blob.
fn sqlite_size(value: &sqlite::Value) -> usize {
    size_of::<sqlite::Value>()
        + match value {
            sqlite::Value::Text(text) => text.len(),
            sqlite::Value::Blob(blob) => blob.len(),
            _ => 0,
        }
}

// ---- spin:postgres@4.2.0's async functions and 4.1.0's connection builder

impl pg::HostConnectionBuilder for SpinState {
    async fn new(&mut self, address: String) -> wasmtime::Result<Resource<PgBuilder>> {
        Ok(self.table.push(PgBuilder::new(address))?)
    }

    async fn set_ca_root(
        &mut self,
        this: Resource<PgBuilder>,
        certificate: String,
    ) -> Outcome<(), pg::Error> {
        let builder = self.table.get_mut(&this)?;
        Ok(builder
            .set_ca_root(certificate)
            .map_err(pg::Error::ConnectionFailed))
    }

    async fn build(&mut self, this: Resource<PgBuilder>) -> Outcome<Resource<PgHandle>, pg::Error> {
        let (address, ca_root) = self.table.get(&this)?.target();
        if let Some(why) = no_network(self) {
            return Ok(Err(pg::Error::ConnectionFailed(why)));
        }
        let host = self.host.clone();
        Ok(
            match postgres::open(&host, &address, ca_root.as_ref()).await {
                Ok(handle) => Ok(self.table.push(handle)?),
                Err(error) => Err(error),
            },
        )
    }

    async fn drop(&mut self, this: Resource<PgBuilder>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl<T> pg::HostConnectionBuilderWithStore<T> for Spin {
    async fn build_async(
        accessor: &Accessor<T, Self>,
        this: Resource<PgBuilder>,
    ) -> Outcome<Resource<PgHandle>, pg::Error> {
        let (address, ca_root) = with_state(accessor, |state| {
            Ok::<_, wasmtime::Error>(state.table.get(&this)?.target())
        })?;
        open_pg(accessor, address, ca_root).await
    }
}

/// Opens a session to `address`, its server's certificate also trusted if `ca_root` signed it.
async fn open_pg<T>(
    accessor: &Accessor<T, Spin>,
    address: String,
    ca_root: Option<CaRoot>,
) -> Outcome<Resource<PgHandle>, pg::Error> {
    if let Some(why) = with_state(accessor, |state| no_network(state)) {
        return Ok(Err(pg::Error::ConnectionFailed(why)));
    }
    let host = grants(accessor);
    Ok(
        match postgres::open(&host, &address, ca_root.as_ref()).await {
            Ok(handle) => Ok(push(accessor, handle)?),
            Err(error) => Err(error),
        },
    )
}

impl<T> pg::HostConnectionWithStore<T> for Spin {
    async fn open_async(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> Outcome<Resource<PgHandle>, pg::Error> {
        open_pg(accessor, address, None).await
    }

    #[allow(clippy::type_complexity)] // The interface's signature.
    async fn query_async(
        accessor: &Accessor<T, Self>,
        this: Resource<PgHandle>,
        statement: String,
        params: Vec<pg::ParameterValue>,
    ) -> Outcome<
        (
            Vec<pg::Column>,
            StreamReader<Vec<pg::DbValue>>,
            FutureReader<Result<(), pg::Error>>,
        ),
        pg::Error,
    > {
        let handle = shared(accessor, &this)?;
        let set = match postgres::query(&handle, &statement, params).await {
            Ok(set) => set,
            Err(error) => return Ok(Err(error)),
        };
        let bytes = set.rows.iter().flatten().map(postgres::size).sum();
        Ok(match streamed(accessor, set.rows, bytes, Ok(()))? {
            Ok((rows, outcome)) => Ok((set.columns, rows, outcome)),
            Err(why) => Err(pg::Error::Other(why)),
        })
    }

    async fn execute_async(
        accessor: &Accessor<T, Self>,
        this: Resource<PgHandle>,
        statement: String,
        params: Vec<pg::ParameterValue>,
    ) -> Outcome<u64, pg::Error> {
        let handle = shared(accessor, &this)?;
        Ok(postgres::execute(&handle, &statement, params).await)
    }
}
