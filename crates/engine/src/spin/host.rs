//! Spin's host interfaces (`fermyon:spin@2.0.0`): key-value, variables, SQLite and outbound
//! Redis, as a component's grants allow them; the bindings of Spin 3's additions too, which
//! `spin3` implements over the same handles. A component asking for a store, database or
//! host it was not granted gets Spin's own error for it (`access-denied`, `no-such-store`),
//! never a trap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::OnceCell;
use wasmcell_spin::{AllowedHosts, DatabaseConfig, StoreConfig, Transport};
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::engine::{ComponentState, Grants};
use wasmcell_stores::{KeyValue, MAX_RESULT_BYTES, Places, SqlError, Sqlite};
use wasmcell_workload::Network;

wasmtime::component::bindgen!({
    path: "wit/spin",
    world: "fermyon:spin/host@2.0.0",
    imports: { default: async | trappable },
    with: {
        "fermyon:spin/key-value.store": StoreHandle,
        "fermyon:spin/sqlite.connection": DatabaseHandle,
        "fermyon:spin/redis.connection": RedisHandle,
        "spin:sqlite/sqlite.connection": DatabaseHandle,
        "wasi:keyvalue/store.bucket": StoreHandle,
        "wasi:keyvalue/atomics.cas": super::spin3::CasHandle,
    },
});

use fermyon::spin2_0_0::{key_value, redis as outbound_redis, sqlite, variables};

/// What one component of an app is granted, shared by all its instances.
pub(crate) struct SpinHost {
    /// The component's id, for messages.
    pub(crate) id: String,
    variables: BTreeMap<String, String>,
    /// Where its outbound requests may go.
    pub(crate) allowed_hosts: AllowedHosts,
    /// Where its complaints go (a denied host): the container's stderr.
    diagnostics: wasmcell_runtime::stdio::Diagnostics,
    stores: BTreeMap<String, (StoreConfig, Arc<OnceCell<KeyValue>>)>,
    databases: BTreeMap<String, (DatabaseConfig, Arc<OnceCell<Sqlite>>)>,
    places: Arc<Places>,
}

impl SpinHost {
    pub(crate) fn new(
        component: &wasmcell_spin::Component,
        app: &wasmcell_spin::App,
        opened: &wasmcell_stores::Opened,
        places: Arc<Places>,
        diagnostics: wasmcell_runtime::stdio::Diagnostics,
    ) -> SpinHost {
        let stores = component
            .key_value_stores
            .iter()
            .filter_map(|label| {
                let config = app.key_value_stores.get(label)?.clone();
                Some((label.clone(), (config, opened.stores.get(label)?.clone())))
            })
            .collect();
        let databases = component
            .sqlite_databases
            .iter()
            .filter_map(|label| {
                let config = app.sqlite_databases.get(label)?.clone();
                Some((
                    label.clone(),
                    (config, opened.databases.get(label)?.clone()),
                ))
            })
            .collect();
        SpinHost {
            id: component.id.clone(),
            variables: component.variables.clone(),
            allowed_hosts: component.allowed_hosts.clone(),
            diagnostics,
            stores,
            databases,
            places,
        }
    }
}

impl SpinHost {
    /// The component's variable `name`, resolved.
    pub(super) fn variable(&self, name: &str) -> Option<&String> {
        self.variables.get(name)
    }

    /// Every variable of the component, resolved.
    pub(super) fn all_variables(&self) -> Vec<(String, String)> {
        self.variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The WASI context each instance of the component starts from, its sockets governed by
    /// its `allowed_outbound_hosts` as Spin governs them: where the workload has a network at
    /// all, TCP connects and UDP datagrams reach only the addresses and ports an entry grants
    /// (`tcp://`, `udp://` or `*://` with an address, a CIDR range or `*`, see
    /// [`wasmcell_spin::outbound`]); nothing is accepted (no listen, no bind to a chosen TCP
    /// address); and names are not looked up (`ip-name-lookup` is denied, as in Spin, so a
    /// name entry grants HTTP and Redis, whose host resolves it, never a socket). A plain
    /// WASI component gets the container's network instead ([`crate::engine::wasi_base`]).
    pub(crate) fn wasi_base(self: &Arc<Self>, network: Network) -> WasiCtxBuilder {
        let mut wasi = WasiCtxBuilder::new();
        if network == Network::Inherit {
            let host = self.clone();
            wasi.allow_tcp(true)
                .allow_udp(true)
                .socket_addr_check(move |addr, used| {
                    let allowed = allows_socket(&host.allowed_hosts, addr, used, |target| {
                        host.report_denied(target, target)
                    });
                    Box::pin(async move { allowed })
                });
        }
        wasi
    }

    /// Says on the container's stderr that the component asked for a host it was not
    /// granted, and how to grant it.
    /// `entry` is what `allowed_outbound_hosts` would need to hold.
    pub(crate) fn report_denied(&self, target: &str, entry: &str) {
        let message = format!(
            "component {id}: outbound request to {target} denied: add \"{entry}\" to allowed_outbound_hosts in [component.{id}] of spin.toml",
            id = self.id
        );
        self.diagnostics.report(&message);
    }

    /// A failed statement as Spin's error: `access-denied` for one the authorizer refused,
    /// explained on the container's stderr (where the user looks, as the guest gets no
    /// message with it); `io` with the message for any other.
    pub(super) fn sqlite_error(&self, error: SqlError) -> sqlite::Error {
        match error {
            SqlError::Refused(_) => {
                self.diagnostics
                    .report(&format!("component {}: SQLite {error}", self.id));
                sqlite::Error::AccessDenied
            }
            other => sqlite::Error::Io(other.to_string()),
        }
    }
}

/// Whether a Spin component granted `hosts` may use `addr` for `used` (what wasmtime-wasi
/// asks before each socket operation); a connect or send it may not make goes to `denied`, as
/// the entry that would grant it (`tcp://ADDR`).
fn allows_socket(
    hosts: &AllowedHosts,
    addr: SocketAddr,
    used: SocketAddrUse,
    denied: impl FnOnce(&str),
) -> bool {
    let reported = |transport: Transport| {
        let allowed = hosts.allows_socket(transport, addr);
        if !allowed {
            denied(&format!("{}://{addr}", transport.scheme()));
        }
        allowed
    };
    match used {
        // The wildcard address a connect, a first send or a UDP bind without an address binds
        // implicitly: the OS picks the port, nothing is opened to the outside.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
            if addr.ip().is_unspecified() && addr.port() == 0 =>
        {
            true
        }
        SocketAddrUse::TcpBind | SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        // Spin checks a UDP bind's address as it checks a peer's; datagrams from a peer the
        // component may not send to are dropped unseen.
        SocketAddrUse::UdpBind | SocketAddrUse::UdpReceive => {
            hosts.allows_socket(Transport::Udp, addr)
        }
        SocketAddrUse::TcpConnect => reported(Transport::Tcp),
        SocketAddrUse::UdpSend => reported(Transport::Udp),
    }
}

/// The largest value a key-value store takes: Redis takes 512 MiB, but a value is read whole
/// into the guest's memory and the host's, so a store is not a file system.
const MAX_VALUE: usize = 16 << 20;

/// Refuses a value larger than a store takes, saying so.
pub(super) fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!(
            "a value of {} bytes is larger than a key-value store takes ({MAX_VALUE} bytes)",
            value.len()
        ));
    }
    Ok(())
}

/// An open key-value store (a Spin 2 store, or a `wasi:keyvalue` bucket): its label and the
/// store itself.
#[derive(Clone)]
pub struct StoreHandle {
    label: String,
    store: Arc<OnceCell<KeyValue>>,
}

impl StoreHandle {
    fn store(&self) -> &KeyValue {
        self.store
            .get()
            .expect("a handle exists only for an opened store")
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store().get(&self.label, key).await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.store().set(&self.label, key, value).await
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), String> {
        self.store().delete(&self.label, key).await
    }

    pub(super) async fn keys(&self) -> Result<Vec<String>, String> {
        self.store().keys(&self.label).await
    }

    pub(super) async fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.store().increment(&self.label, key, delta).await
    }

    pub(super) async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, String> {
        self.store().swap(&self.label, key, expected, value).await
    }
}

/// An open SQLite database, and what its last statement through this handle did.
pub struct DatabaseHandle {
    db: Arc<OnceCell<Sqlite>>,
    /// The row id of the last insert (Spin 3's `last-insert-rowid`).
    pub(super) last_insert_rowid: i64,
    /// How many rows the last statement changed (Spin 3's `changes`).
    pub(super) changes: u64,
}

impl DatabaseHandle {
    /// Runs `statement` (off the request's thread; see [`Sqlite::run`]); its insert row id and
    /// changes are read in the same turn on the connection, so another request's statement
    /// cannot come between.
    pub(super) async fn execute(
        &mut self,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> Result<sqlite::QueryResult, SqlError> {
        let db = self
            .db
            .get()
            .expect("a handle exists only for an opened database");
        let (result, rowid, changes) = db
            .run(move |db| {
                let result = execute(db, &statement, parameters)?;
                Ok((result, db.last_insert_rowid(), db.changes()))
            })
            .await?;
        self.last_insert_rowid = rowid;
        self.changes = changes;
        Ok(result)
    }
}

/// An open connection to a Redis server.
pub struct RedisHandle(::redis::aio::ConnectionManager);

/// Adds the Spin interfaces to a component linker.
pub(crate) fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    Host_::add_to_linker::<ComponentState, HasSelf<ComponentState>>(linker, |state| state)
}

impl ComponentState {
    pub(super) fn spin(&self) -> wasmtime::Result<&Arc<SpinHost>> {
        match &self.grants {
            Some(Grants::Spin(spin)) => Ok(spin),
            _ => Err(wasmtime::format_err!(
                "Spin interfaces called outside a Spin app"
            )),
        }
    }
}

pub(super) type Outcome<T, E> = wasmtime::Result<Result<T, E>>;

impl key_value::Host for ComponentState {}

impl SpinHost {
    /// Opens the component's store `label` (once per server), for every interface.
    pub(super) async fn open_store(&self, label: String) -> Result<StoreHandle, key_value::Error> {
        let Some((config, cell)) = self.stores.get(&label) else {
            return Err(key_value::Error::AccessDenied);
        };
        if let Err(error) = cell
            .get_or_try_init(|| KeyValue::open(config, &self.places))
            .await
        {
            tracing::warn!(component = %self.id, "key-value store {label}: {error}");
            return Err(key_value::Error::Other(format!(
                "key-value store {label}: {error}"
            )));
        }
        Ok(StoreHandle {
            label,
            store: cell.clone(),
        })
    }
}

impl ComponentState {
    /// Opens the component's store `label`, for either component interface.
    pub(super) async fn open_store(
        &mut self,
        label: String,
    ) -> Outcome<Resource<StoreHandle>, key_value::Error> {
        let spin = self.spin()?.clone();
        Ok(match spin.open_store(label).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }
}

impl key_value::HostStore for ComponentState {
    async fn open(&mut self, label: String) -> Outcome<Resource<StoreHandle>, key_value::Error> {
        self.open_store(label).await
    }

    async fn get(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.get(&key).await.map_err(key_value::Error::Other))
    }

    async fn set(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), key_value::Error> {
        if let Err(too_large) = check_value(&value) {
            return Ok(Err(key_value::Error::Other(too_large)));
        }
        let handle = self.table.get(&this)?;
        Ok(handle
            .set(&key, &value)
            .await
            .map_err(key_value::Error::Other))
    }

    async fn delete(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<(), key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.delete(&key).await.map_err(key_value::Error::Other))
    }

    async fn exists(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<bool, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle
            .get(&key)
            .await
            .map(|v| v.is_some())
            .map_err(key_value::Error::Other))
    }

    async fn get_keys(
        &mut self,
        this: Resource<StoreHandle>,
    ) -> Outcome<Vec<String>, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.keys().await.map_err(key_value::Error::Other))
    }

    async fn drop(&mut self, this: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl variables::Host for ComponentState {
    async fn get(&mut self, name: String) -> Outcome<String, variables::Error> {
        Ok(self.spin()?.get_variable(name))
    }
}

impl SpinHost {
    /// The component's variable `name` as Spin's `variables.get` answers: an invalid name
    /// and one the component does not declare are errors the guest sees.
    fn get_variable(&self, name: String) -> Result<String, variables::Error> {
        let valid = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or(variables::Error::Undefined(format!(
                "component {} has no variable {name}: add it to [component.{}.variables]",
                self.id, self.id
            )))
    }
}

impl sqlite::Host for ComponentState {}

impl SpinHost {
    /// Opens the component's database `database` (once per server), for either interface.
    async fn open_database(&self, database: String) -> Result<DatabaseHandle, sqlite::Error> {
        let Some((config, cell)) = self.databases.get(&database) else {
            return Err(sqlite::Error::AccessDenied);
        };
        if let Err(error) = cell
            .get_or_try_init(|| wasmcell_stores::open_database(config, &self.places))
            .await
        {
            tracing::warn!(component = %self.id, "SQLite database {database}: {error}");
            return Err(sqlite::Error::Io(format!(
                "SQLite database {database}: {error}"
            )));
        }
        Ok(DatabaseHandle {
            db: cell.clone(),
            last_insert_rowid: 0,
            changes: 0,
        })
    }
}

impl ComponentState {
    /// Opens the component's database `database`, for either interface.
    pub(super) async fn open_database(
        &mut self,
        database: String,
    ) -> Outcome<Resource<DatabaseHandle>, sqlite::Error> {
        let spin = self.spin()?.clone();
        Ok(match spin.open_database(database).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }
}

impl sqlite::HostConnection for ComponentState {
    async fn open(&mut self, database: String) -> Outcome<Resource<DatabaseHandle>, sqlite::Error> {
        self.open_database(database).await
    }

    async fn execute(
        &mut self,
        this: Resource<DatabaseHandle>,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> Outcome<sqlite::QueryResult, sqlite::Error> {
        let spin = self.spin()?.clone();
        let handle = self.table.get_mut(&this)?;
        Ok(handle
            .execute(statement, parameters)
            .await
            .map_err(|e| spin.sqlite_error(e)))
    }

    async fn drop(&mut self, this: Resource<DatabaseHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// Runs `statement` with `parameters`, its rows as Spin's values, refusing a result past
/// [`MAX_RESULT_BYTES`] as it is read.
fn execute(
    db: &rusqlite::Connection,
    statement: &str,
    parameters: Vec<sqlite::Value>,
) -> Result<sqlite::QueryResult, SqlError> {
    use rusqlite::types::{Value as Sql, ValueRef};
    let mut prepared = db.prepare(statement)?;
    let columns: Vec<String> = prepared
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let parameters = parameters.into_iter().map(|v| match v {
        sqlite::Value::Integer(i) => Sql::Integer(i),
        sqlite::Value::Real(r) => Sql::Real(r),
        sqlite::Value::Text(t) => Sql::Text(t),
        sqlite::Value::Blob(b) => Sql::Blob(b),
        sqlite::Value::Null => Sql::Null,
    });
    let mut rows = prepared.query(rusqlite::params_from_iter(parameters))?;
    let mut results = Vec::new();
    let mut held = 0;
    while let Some(row) = rows.next()? {
        held += size_of::<sqlite::RowResult>();
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let value = row.get_ref(i)?;
            held += size_of::<sqlite::Value>()
                + match value {
                    ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.len(),
                    _ => 0,
                };
            if held > MAX_RESULT_BYTES {
                return Err(SqlError::ResultTooLarge);
            }
            values.push(match value {
                ValueRef::Null => sqlite::Value::Null,
                ValueRef::Integer(i) => sqlite::Value::Integer(i),
                ValueRef::Real(r) => sqlite::Value::Real(r),
                ValueRef::Text(t) => sqlite::Value::Text(String::from_utf8_lossy(t).into()),
                ValueRef::Blob(b) => sqlite::Value::Blob(b.to_vec()),
            });
        }
        results.push(sqlite::RowResult { values });
    }
    Ok(sqlite::QueryResult {
        columns,
        rows: results,
    })
}

impl outbound_redis::Host for ComponentState {}

impl ComponentState {
    fn redis(
        &mut self,
        this: &Resource<RedisHandle>,
    ) -> wasmtime::Result<::redis::aio::ConnectionManager> {
        Ok(self.table.get(this)?.0.clone())
    }
}

async fn redis_query<T: ::redis::FromRedisValue>(
    mut connection: ::redis::aio::ConnectionManager,
    command: &::redis::Cmd,
) -> Result<T, outbound_redis::Error> {
    command.query_async(&mut connection).await.map_err(|e| {
        if e.kind() == ::redis::ErrorKind::TypeError {
            outbound_redis::Error::TypeError
        } else {
            outbound_redis::Error::Other(e.to_string())
        }
    })
}

impl outbound_redis::HostConnection for ComponentState {
    async fn open(
        &mut self,
        address: String,
    ) -> Outcome<Resource<RedisHandle>, outbound_redis::Error> {
        let spin = self.spin()?.clone();
        let Ok(client) = ::redis::Client::open(address.as_str()) else {
            return Ok(Err(outbound_redis::Error::InvalidAddress));
        };
        let (scheme, host, port) = match &client.get_connection_info().addr {
            ::redis::ConnectionAddr::Tcp(host, port) => ("redis", host.clone(), *port),
            ::redis::ConnectionAddr::TcpTls { host, port, .. } => ("rediss", host.clone(), *port),
            _ => return Ok(Err(outbound_redis::Error::InvalidAddress)),
        };
        if !spin.allowed_hosts.allows(scheme, &host, port) {
            let target = format!("{scheme}://{host}:{port}");
            spin.report_denied(&target, &target);
            return Ok(Err(outbound_redis::Error::Other(format!(
                "{scheme}://{host}:{port} is not in the component's allowed_outbound_hosts"
            ))));
        }
        match ::redis::aio::ConnectionManager::new(client).await {
            Ok(manager) => Ok(Ok(self.table.push(RedisHandle(manager))?)),
            Err(error) => Ok(Err(outbound_redis::Error::Other(error.to_string()))),
        }
    }

    async fn publish(
        &mut self,
        this: Resource<RedisHandle>,
        channel: String,
        payload: Vec<u8>,
    ) -> Outcome<(), outbound_redis::Error> {
        let connection = self.redis(&this)?;
        let command = ::redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        Ok(redis_query::<i64>(connection, &command).await.map(drop))
    }

    async fn get(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("GET").arg(key)).await)
    }

    async fn set(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SET").arg(key).arg(value)).await)
    }

    async fn incr(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<i64, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("INCR").arg(key)).await)
    }

    async fn del(
        &mut self,
        this: Resource<RedisHandle>,
        keys: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("DEL").arg(keys)).await)
    }

    async fn sadd(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SADD").arg(key).arg(values)).await)
    }

    async fn smembers(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Vec<String>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SMEMBERS").arg(key)).await)
    }

    async fn srem(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SREM").arg(key).arg(values)).await)
    }

    async fn execute(
        &mut self,
        this: Resource<RedisHandle>,
        command: String,
        arguments: Vec<outbound_redis::RedisParameter>,
    ) -> Outcome<Vec<outbound_redis::RedisResult>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        let mut cmd = ::redis::cmd(&command);
        for argument in arguments {
            match argument {
                outbound_redis::RedisParameter::Int64(i) => cmd.arg(i),
                outbound_redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: ::redis::Value = match redis_query(connection, &cmd).await {
            Ok(value) => value,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(flatten(value)))
    }

    async fn drop(&mut self, this: Resource<RedisHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// A Redis reply as Spin's `redis-result` list: arrays flattened, scalars one element.
fn flatten(value: ::redis::Value) -> Vec<outbound_redis::RedisResult> {
    use ::redis::Value;
    use outbound_redis::RedisResult as R;
    match value {
        Value::Nil => vec![R::Nil],
        Value::Int(i) => vec![R::Int64(i)],
        Value::BulkString(b) => vec![R::Binary(b)],
        Value::SimpleString(s) => vec![R::Status(s)],
        Value::Okay => vec![R::Status("OK".to_owned())],
        Value::Array(items) | Value::Set(items) => items.into_iter().flat_map(flatten).collect(),
        other => vec![R::Binary(format!("{other:?}").into_bytes())],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A component `web` of an app in `dir`, granted `allowed_outbound_hosts`, `variables`
    /// (already resolved) and a SQLite key-value store and database for each of `labels`,
    /// its complaints written to `diagnostics`: what `SpinApp::prepare` builds, without an app.
    pub(crate) fn spin_host(
        dir: &std::path::Path,
        allowed_outbound_hosts: &[&str],
        variables: &[(&str, &str)],
        labels: &[&str],
        diagnostics: &wasmcell_workload::Output,
    ) -> SpinHost {
        let allowed: Vec<String> = allowed_outbound_hosts
            .iter()
            .map(|h| h.to_string())
            .collect();
        SpinHost {
            id: "web".into(),
            variables: variables
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            allowed_hosts: AllowedHosts::parse(&allowed, &[]).unwrap(),
            diagnostics: wasmcell_runtime::stdio::Diagnostics::new(diagnostics),
            stores: labels
                .iter()
                .map(|label| {
                    let config = StoreConfig::Sqlite {
                        path: format!("{label}-kv.db"),
                    };
                    (label.to_string(), (config, Default::default()))
                })
                .collect(),
            databases: labels
                .iter()
                .map(|label| {
                    let config = DatabaseConfig {
                        path: format!("{label}-sql.db"),
                    };
                    (label.to_string(), (config, Default::default()))
                })
                .collect(),
            places: Arc::new(Places::new(dir, &[])),
        }
    }

    impl SpinHost {
        /// Once every complaint reported so far is written.
        pub(crate) async fn diagnostics_flushed(&self) {
            self.diagnostics
                .flush(std::time::Duration::from_secs(60))
                .await;
        }
    }

    fn host(dir: &std::path::Path, labels: &[&str]) -> SpinHost {
        let variables = [("api_url", "https://api.test"), ("empty", "")];
        spin_host(dir, &[], &variables, labels, &Default::default())
    }

    #[tokio::test]
    async fn a_granted_key_value_store_gets_sets_deletes_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &["default"]);
        let store = host.open_store("default".into()).await.unwrap();
        assert_eq!(store.get("missing").await.unwrap(), None);
        store.set("a", b"1").await.unwrap();
        store.set("b", b"").await.unwrap();
        store.set("a", b"2").await.unwrap();
        assert_eq!(store.get("a").await.unwrap().as_deref(), Some(&b"2"[..]));
        // An empty value exists: `exists` is `get` returning some.
        assert_eq!(store.get("b").await.unwrap().as_deref(), Some(&b""[..]));
        let mut keys = store.keys().await.unwrap();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        store.delete("a").await.unwrap();
        // Deleting what is not there is no error, as in Spin.
        store.delete("a").await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), None);
        assert_eq!(store.keys().await.unwrap(), ["b"]);
    }

    #[tokio::test]
    async fn a_store_keeps_its_values_across_opens_of_its_label() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &["default", "other"]);
        let first = host.open_store("default".into()).await.unwrap();
        first.set("k", b"v").await.unwrap();
        let again = host.open_store("default".into()).await.unwrap();
        assert_eq!(again.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        let other = host.open_store("other".into()).await.unwrap();
        assert_eq!(other.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_store_the_component_was_not_granted_is_access_denied() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &["default"]);
        let refused = host.open_store("secrets".into()).await.err();
        assert!(matches!(refused, Some(key_value::Error::AccessDenied)));
        let refused = host.open_database("secrets".into()).await.err();
        assert!(matches!(refused, Some(sqlite::Error::AccessDenied)));
    }

    #[test]
    fn a_value_larger_than_a_store_takes_is_refused() {
        assert!(check_value(&vec![0; MAX_VALUE]).is_ok());
        let error = check_value(&vec![0; MAX_VALUE + 1]).unwrap_err();
        assert!(
            error.contains("larger than a key-value store takes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_granted_database_runs_statements_with_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &["default"]);
        let mut db = host.open_database("default".into()).await.unwrap();
        db.execute(
            "CREATE TABLE t (n INTEGER, s TEXT, b BLOB, r REAL)".into(),
            vec![],
        )
        .await
        .unwrap();
        let row = vec![
            sqlite::Value::Integer(7),
            sqlite::Value::Text("seven".into()),
            sqlite::Value::Blob(vec![0, 7]),
            sqlite::Value::Null,
        ];
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?)".into(), row)
            .await
            .unwrap();
        assert_eq!((db.last_insert_rowid, db.changes), (1, 1));
        let result = db
            .execute(
                "SELECT n, s, b, r FROM t WHERE n = ?".into(),
                vec![sqlite::Value::Integer(7)],
            )
            .await
            .unwrap();
        assert_eq!(result.columns, ["n", "s", "b", "r"]);
        assert_eq!(result.rows.len(), 1);
        assert!(matches!(
            result.rows[0].values.as_slice(),
            [
                sqlite::Value::Integer(7),
                sqlite::Value::Text(s),
                sqlite::Value::Blob(b),
                sqlite::Value::Null,
            ] if s == "seven" && b == &[0, 7]
        ));
        // A bad statement is Spin's `io` error with SQLite's message, not a trap.
        let error = db.execute("SELEKT".into(), vec![]).await.unwrap_err();
        assert!(matches!(host.sqlite_error(error), sqlite::Error::Io(m) if m.contains("syntax")));
    }

    #[test]
    fn a_declared_variable_is_its_resolved_value() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        assert_eq!(
            host.get_variable("api_url".into()).unwrap(),
            "https://api.test"
        );
        assert_eq!(host.get_variable("empty".into()).unwrap(), "");
    }

    #[test]
    fn an_undeclared_variable_is_undefined_and_says_where_to_declare_it() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        let Err(variables::Error::Undefined(message)) = host.get_variable("token".into()) else {
            panic!("an undeclared variable resolved");
        };
        assert!(message.contains("[component.web.variables]"), "{message}");
    }

    #[test]
    fn a_variable_name_spin_does_not_allow_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let host = host(dir.path(), &[]);
        // Spin's names: lowercase letters, digits and underscores, starting with a letter.
        for name in ["", "API_URL", "1st", "_x", "api-url", "api.url"] {
            assert!(
                matches!(host.get_variable(name.into()), Err(variables::Error::InvalidName(n)) if n == name),
                "{name:?}"
            );
        }
    }

    /// Issue 24: a result is built in host memory, outside the guest's limit.
    #[tokio::test]
    async fn r24_a_result_larger_than_the_host_holds_for_a_guest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig {
            path: "app.db".into(),
        };
        let places = Places::new(dir.path(), &[]);
        let db = wasmcell_stores::open_database(&config, &places)
            .await
            .unwrap();
        let query = |sql: String| db.run(move |db| execute(db, &sql, Vec::new()));
        // Each row fits; together they do not.
        let rows = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 40)
             SELECT zeroblob({}) FROM n",
            1 << 20
        );
        assert!(matches!(query(rows).await, Err(SqlError::ResultTooLarge)));
        // One value past the bound is not even made.
        let one = format!("SELECT zeroblob({})", MAX_RESULT_BYTES + 1);
        let Err(SqlError::Sqlite(error)) = query(one).await else {
            panic!("a value past the bound was made");
        };
        assert_eq!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::TooBig));
        // Within it, a result is whole.
        let fits = query("SELECT 1, 'two', zeroblob(3), NULL".to_owned())
            .await
            .unwrap();
        assert_eq!(fits.rows.len(), 1);
        assert_eq!(fits.rows[0].values.len(), 4);
    }

    /// Every use wasmtime-wasi checks, for a component granted one range's port by
    /// `*://127.0.0.0/24:6379`: what it may do, and what it is told it was refused.
    #[test]
    fn a_spin_components_sockets_connect_where_granted_and_never_accept() {
        let hosts = AllowedHosts::parse(&["*://127.0.0.0/24:6379".to_owned()], &[]).unwrap();
        let ask = |addr: &str, used: SocketAddrUse| {
            let mut reported = None;
            let allowed = allows_socket(&hosts, addr.parse().unwrap(), used, |target| {
                reported = Some(target.to_owned())
            });
            (allowed, reported)
        };
        use SocketAddrUse::*;
        for (addr, used, allowed) in [
            ("127.0.0.9:6379", TcpConnect, true),
            ("127.0.0.9:6379", UdpSend, true),
            ("127.0.0.9:6379", UdpReceive, true),
            // The implicit bind before a connect or a first send.
            ("0.0.0.0:0", TcpBind, true),
            ("[::]:0", TcpBind, true),
            ("0.0.0.0:0", UdpBind, true),
            // Accepting anything: refused, granted address or not.
            ("127.0.0.9:6379", TcpBind, false),
            ("0.0.0.0:6379", TcpBind, false),
            ("0.0.0.0:0", TcpListen, false),
            ("127.0.0.9:6379", TcpListen, false),
            ("127.0.0.9:6379", TcpAccept, false),
            ("0.0.0.0:6379", UdpBind, false),
            ("10.0.0.1:6379", UdpReceive, false),
        ] {
            assert_eq!(ask(addr, used), (allowed, None), "{used:?} {addr}");
        }
        assert_eq!(
            ask("127.0.1.1:6379", TcpConnect),
            (false, Some("tcp://127.0.1.1:6379".to_owned()))
        );
        assert_eq!(
            ask("[::1]:6379", UdpSend),
            (false, Some("udp://[::1]:6379".to_owned()))
        );
    }
}
