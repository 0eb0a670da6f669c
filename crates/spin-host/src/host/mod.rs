//! Spin's host interfaces, as a component's grants allow them: `fermyon:spin@2.0.0`'s
//! key-value, variables, SQLite and outbound Redis (`spin2`), and Spin 3's additions (`spin3`)
//! over the same handles; the grants themselves ([`SpinHost`]) are here. A component asking for a store, database or
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

use spin2::execute;
use wasmcell_runtime::state::ComponentState;
use wasmcell_runtime::stdio::Outputs;
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
        "fermyon:spin/mqtt.connection": mqtt_client::MqttHandle,
        "fermyon:spin/mysql.connection": mysql::MysqlHandle,
        "fermyon:spin/postgres.connection": postgres::PgHandle,
        "spin:postgres/postgres@3.0.0.connection": postgres::PgHandle,
        "spin:postgres/postgres@4.2.0.connection": postgres::PgHandle,
        "spin:postgres/postgres@4.2.0.connection-builder": postgres::PgBuilder,
        "spin:sqlite/sqlite.connection": DatabaseHandle,
        "spin:key-value/key-value.store": StoreHandle,
        "spin:redis/redis.connection": RedisHandle,
        "spin:mqtt/mqtt.connection": mqtt_client::MqttHandle,
        "spin:mysql/mysql.connection": mysql::SharedMysql,
        "wasi:keyvalue/store.bucket": StoreHandle,
        "wasi:keyvalue/atomics.cas": spin3::CasHandle,
    },
});

mod mqtt_client;
mod mysql;
mod pools;
mod postgres;
mod services;
mod spin2;
mod spin3;
mod spin4;
#[cfg(test)]
pub(crate) mod tests;
mod trust;

use fermyon::spin2_0_0::{key_value, sqlite};

/// The store state of a Spin component: WASI, `wasi:http`, and its grants, which Spin's
/// interfaces read.
pub(crate) type SpinState = ComponentState<Arc<SpinHost>>;

/// What one component of an app is granted, shared by all its instances.
pub(crate) struct SpinHost {
    /// The component's id, for messages.
    pub(crate) id: String,
    /// The LLM models it may use.
    pub(crate) ai_models: Vec<String>,
    /// Whether its output is discarded (`wasmcell up --follow` named other components).
    pub(crate) silenced: bool,
    variables: BTreeMap<String, String>,
    /// Where its outbound requests may go.
    pub(crate) allowed_hosts: AllowedHosts,
    /// Where its complaints go (a denied host): the container's stderr.
    diagnostics: wasmcell_runtime::stdio::Diagnostics,
    stores: BTreeMap<String, (StoreConfig, Arc<OnceCell<KeyValue>>)>,
    databases: BTreeMap<String, (DatabaseConfig, Arc<OnceCell<Sqlite>>)>,
    places: Arc<Places>,
    /// Its sessions to PostgreSQL servers, kept between requests.
    postgres: postgres::Pools,
    /// Its connections to MySQL servers, likewise.
    mysql: mysql::Pools,
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
            ai_models: component.ai_models.clone(),
            silenced: component.silenced,
            variables: component.variables.clone(),
            allowed_hosts: component.allowed_hosts.clone(),
            diagnostics,
            stores,
            databases,
            places,
            postgres: Default::default(),
            mysql: Default::default(),
        }
    }
}

impl SpinHost {
    /// Where the component's instances write: `outputs`, unless its output is discarded.
    pub(crate) fn outputs<'a>(&self, outputs: &'a Outputs) -> &'a Outputs {
        static SILENT: Outputs = Outputs::null();
        match self.silenced {
            true => &SILENT,
            false => outputs,
        }
    }

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
    /// WASI component gets the container's network instead (`wasmcell_runtime::wasi::wasi_base`).
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
    pub(super) db: Arc<OnceCell<Sqlite>>,
    /// The row id of the last insert (Spin 3's `last-insert-rowid`).
    pub(super) last_insert_rowid: i64,
    /// How many rows the last statement changed (Spin 3's `changes`).
    pub(super) changes: u64,
}

impl DatabaseHandle {
    /// Runs `statement` and keeps what it did (its insert row id and changes).
    pub(super) async fn execute(
        &mut self,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> Result<sqlite::QueryResult, SqlError> {
        let (result, rowid, changes) = run_sql(self.db.clone(), statement, parameters).await?;
        self.last_insert_rowid = rowid;
        self.changes = changes;
        Ok(result)
    }
}

/// Runs `statement` on `db` (off the request's thread; see [`Sqlite::run`]): its result, and
/// its insert row id and changes, read in the same turn on the connection, so another
/// request's statement cannot come between.
pub(super) async fn run_sql(
    db: Arc<OnceCell<Sqlite>>,
    statement: String,
    parameters: Vec<sqlite::Value>,
) -> Result<(sqlite::QueryResult, i64, u64), SqlError> {
    let db = db
        .get()
        .expect("a handle exists only for an opened database");
    db.run(move |db| {
        let result = execute(db, &statement, parameters)?;
        Ok((result, db.last_insert_rowid(), db.changes()))
    })
    .await
}

/// An open connection to a Redis server.
#[derive(Clone)]
pub struct RedisHandle(pub(super) ::redis::aio::ConnectionManager);

/// Adds the Spin interfaces to a component linker.
pub(crate) fn add_to_linker(linker: &mut Linker<SpinState>) -> wasmtime::Result<()> {
    Host_::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |state| state)
}

pub(super) type Outcome<T, E> = wasmtime::Result<Result<T, E>>;

/// What Spin's interfaces do with a component's state besides its grants: open a handle
/// into its resource table, or look one up.
pub(crate) trait SpinStateExt {
    /// Opens the component's store `label`, for either component interface.
    async fn open_store(
        &mut self,
        label: String,
    ) -> Outcome<Resource<StoreHandle>, key_value::Error>;
    /// Opens the component's database `database`, for either interface.
    async fn open_database(
        &mut self,
        database: String,
    ) -> Outcome<Resource<DatabaseHandle>, sqlite::Error>;
    fn redis(
        &mut self,
        this: &Resource<RedisHandle>,
    ) -> wasmtime::Result<::redis::aio::ConnectionManager>;
}

impl SpinStateExt for SpinState {
    /// Opens the component's store `label`, for either component interface.
    async fn open_store(
        &mut self,
        label: String,
    ) -> Outcome<Resource<StoreHandle>, key_value::Error> {
        let spin = self.host.clone();
        Ok(match spin.open_store(label).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }
    /// Opens the component's database `database`, for either interface.
    async fn open_database(
        &mut self,
        database: String,
    ) -> Outcome<Resource<DatabaseHandle>, sqlite::Error> {
        let spin = self.host.clone();
        Ok(match spin.open_database(database).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }
    fn redis(
        &mut self,
        this: &Resource<RedisHandle>,
    ) -> wasmtime::Result<::redis::aio::ConnectionManager> {
        Ok(self.table.get(this)?.0.clone())
    }
}
