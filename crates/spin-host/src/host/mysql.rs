//! Outbound MySQL (`fermyon:spin/mysql@2.0.0`), with mysql_async.
//!
//! A handle is one connection from the component's pool for its address (kept between
//! requests; mysql_async resets a connection when it goes back, ending its transaction). The
//! address must be granted as `mysql://HOST:PORT`. Connections are plain TCP to that host:
//! mysql_async's `prefer_socket` (which would switch a connection to 127.0.0.1 over to the
//! server's Unix socket, a path on the node) is off and a `socket=` address is refused;
//! `LOAD DATA LOCAL` finds no handler, so the server cannot read the host's files.
//!
//! TLS as Spin reads the address: `ssl-mode` (or `sslmode`) `disabled`, or none, is plain TCP;
//! `preferred` asks for TLS and stays plain only when the server has none (MySQL's meaning;
//! Spin insists on TLS for it); `required`, `verify_ca`, `verify_identity` (and mysql_async's
//! `require_ssl=true`) insist. Whatever the mode says, the server's certificate and name are
//! checked, against Mozilla's roots and the node's trust store ([`super::trust`]), as Spin's
//! native TLS checks them: MySQL's own `required` would take any certificate, and with it any
//! server in the middle.
//!
//! Values as Spin maps them: integers by size and signedness, floats, text (`str`) and bytes
//! (`binary`, for the `binary` character set). Where Spin fails a query for a column it has no
//! type for (a date, a decimal, JSON), its values come back as the text MySQL writes them
//! (in a column of type `other`).

use std::time::Duration;

use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{
    Column, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, SslOpts, Value,
};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::Resource;

use super::fermyon::spin2_0_0::mysql;
use super::fermyon::spin2_0_0::rdbms_types::{
    self, Column as SpinColumn, DbDataType, DbValue, Error, ParameterValue, RowSet,
};
use super::services::{MYSQL, no_network, permitted};
use super::{Outcome, SpinHost, SpinState};
use wasmcell_stores::MAX_RESULT_BYTES;

/// What a query over [`MAX_RESULT_BYTES`] answers.
const OVER_LIMIT: &str = "query result exceeds limit of";

/// How many connections a component keeps open to one address, at most.
const CONNECTIONS: usize = 16;

/// How long connecting (or waiting for a connection when all are in use) may take.
const WAIT: Duration = Duration::from_secs(30);

/// The largest packet (so the largest row) a connection takes from the server.
const MAX_PACKET: usize = 64 << 20;

/// How long the server keeps an idle connection (MySQL's default).
const IDLE_SECONDS: usize = 28_800;

/// Prepared statements a connection keeps (mysql_async's default, whatever the address asks).
const STATEMENT_CACHE: usize = 32;

/// MySQL's character set number for bytes that are not text.
const BINARY_CHARSET: u16 = 63;

/// An open handle: one connection, back to its pool when dropped.
pub struct MysqlHandle {
    connection: mysql_async::Conn,
    pool: Pool,
    _admitted: OwnedSemaphorePermit,
}

/// A statement on its way: if its call is dropped before it ends (the request's deadline
/// passed), the server is told to kill it (`KILL QUERY`, on another connection of the pool),
/// so that it does not run on and hold its connection.
struct InFlight(Option<(Pool, u32)>);

impl InFlight {
    fn start(handle: &MysqlHandle) -> InFlight {
        InFlight(Some((handle.pool.clone(), handle.connection.id())))
    }

    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((pool, id)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(tokio::time::timeout(WAIT, async move {
                if let Ok(mut killer) = pool.get_conn().await {
                    let _ = killer.query_drop(format!("KILL QUERY {id}")).await;
                }
            }));
        }
    }
}

/// A component's pools, by address.
pub(crate) type Pools = super::pools::Pools<Pool>;

/// Opens a connection to `address` for the component `host`.
pub(super) async fn open(host: &SpinHost, address: &str) -> Result<MysqlHandle, Error> {
    permitted(host, address, MYSQL).map_err(Error::ConnectionFailed)?;
    let (opts, tls) = options(address).map_err(Error::ConnectionFailed)?;
    let admitted = host.mysql.admit().await.map_err(Error::ConnectionFailed)?;
    let pool = host
        .mysql
        .get(address, || Ok(Pool::new(trusting(opts.clone()))))
        .map_err(Error::Other)?;
    let (connection, pool) = match connect(&pool).await {
        Ok(connection) => (connection, pool),
        // `preferred` and a server without TLS: this connection in plain TCP, from a pool of
        // its own (the next one asks for TLS again).
        Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer))
            if tls == Tls::Preferred =>
        {
            let plain = host
                .mysql
                .get(&format!("{address}#plain"), || {
                    Ok(Pool::new(OptsBuilder::from_opts(opts).ssl_opts(None)))
                })
                .map_err(Error::Other)?;
            (connect(&plain).await.map_err(connect_error)?, plain)
        }
        Err(e) => return Err(connect_error(e)),
    };
    Ok(MysqlHandle {
        connection,
        pool,
        _admitted: admitted,
    })
}

/// `opts` with the node's CA roots beside the built-in ones, when they ask for TLS.
fn trusting(opts: Opts) -> Opts {
    let Some(ssl) = opts.ssl_opts().cloned() else {
        return opts;
    };
    let node = super::trust::node_roots().iter();
    let ssl = ssl.with_root_certs(node.map(|c| c.to_vec().into()).collect());
    OptsBuilder::from_opts(opts).ssl_opts(ssl).into()
}

/// A connection from `pool`, within [`WAIT`].
async fn connect(pool: &Pool) -> Result<mysql_async::Conn, mysql_async::Error> {
    match tokio::time::timeout(WAIT, pool.get_conn()).await {
        Ok(connected) => connected,
        Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {WAIT:?}"),
            ),
        ))),
    }
}

fn connect_error(e: mysql_async::Error) -> Error {
    let mut message = format!("cannot connect to MySQL: {e}");
    // A TLS failure's cause (an unknown issuer, a wrong name) is in its sources.
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    Error::ConnectionFailed(message)
}

/// What an address asks of TLS, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tls {
    /// Plain TCP.
    Off,
    /// TLS when the server has it.
    Preferred,
    /// TLS, or no connection.
    Required,
}

/// mysql_async's options for `address` (TCP only) and what it asks of TLS.
fn options(address: &str) -> Result<(Opts, Tls), String> {
    let mut url = url::Url::parse(address).map_err(|e| format!("invalid MySQL address: {e}"))?;
    let mut ssl_modes = Vec::new();
    // mysql_async does not know `ssl-mode`, and its own TLS parameters (`verify_ca=false`...)
    // could turn the certificate check off: both are taken out of what it reads.
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, value)| {
            let ssl = key.eq_ignore_ascii_case("ssl-mode") || key.eq_ignore_ascii_case("sslmode");
            if ssl {
                ssl_modes.push(value.to_ascii_lowercase());
            }
            !ssl && !matches!(&**key, "verify_ca" | "verify_identity" | "built_in_roots")
        })
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    let opts = Opts::from_url(url.as_str()).map_err(|e| format!("invalid MySQL address: {e}"))?;
    if opts.socket().is_some() {
        return Err("Unix sockets are not supported: give a host name or address".to_owned());
    }
    // Whatever else the address says, the strictest of what it asks holds: `require_ssl=true`
    // beside `ssl-mode=disabled`, or two `ssl-mode`s, never mean plain TCP.
    let mut tls = match opts.ssl_opts() {
        Some(_) => Tls::Required,
        None => Tls::Off,
    };
    for mode in ssl_modes {
        tls = tls.max(match mode.as_str() {
            "disabled" => Tls::Off,
            "preferred" => Tls::Preferred,
            "required" | "verify_ca" | "verify_identity" => Tls::Required,
            other => {
                return Err(format!(
                    "ssl-mode={other} is not a MySQL ssl-mode: use disabled, preferred, required, \
                     verify_ca or verify_identity"
                ));
            }
        });
    }
    // The node's roots are added when a pool is made (see `trusting`), not on every open.
    let ssl = (tls != Tls::Off).then(SslOpts::default);
    let constraints = PoolConstraints::new(0, CONNECTIONS).expect("0 <= the maximum");
    // The packet size and idle timeout are set here, not read from the server: a value the
    // server sends back is otherwise trusted (a huge packet size lets one row take all memory).
    let opts = OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .ssl_opts(ssl)
        .max_allowed_packet(Some(MAX_PACKET))
        .wait_timeout(Some(IDLE_SECONDS))
        .stmt_cache_size(Some(STATEMENT_CACHE))
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    Ok((opts.into(), tls))
}

fn parameter(value: ParameterValue) -> Value {
    match value {
        ParameterValue::Boolean(v) => Value::Int(v.into()),
        ParameterValue::Int8(v) => Value::Int(v.into()),
        ParameterValue::Int16(v) => Value::Int(v.into()),
        ParameterValue::Int32(v) => Value::Int(v.into()),
        ParameterValue::Int64(v) => Value::Int(v),
        ParameterValue::Uint8(v) => Value::UInt(v.into()),
        ParameterValue::Uint16(v) => Value::UInt(v.into()),
        ParameterValue::Uint32(v) => Value::UInt(v.into()),
        ParameterValue::Uint64(v) => Value::UInt(v),
        ParameterValue::Floating32(v) => Value::Float(v),
        ParameterValue::Floating64(v) => Value::Double(v),
        ParameterValue::Str(v) => Value::Bytes(v.into_bytes()),
        ParameterValue::Binary(v) => Value::Bytes(v),
        ParameterValue::DbNull => Value::NULL,
    }
}

/// The Spin type of `column`.
fn data_type(column: &Column) -> DbDataType {
    let signed = !column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let by_sign = |signed_type, unsigned_type| match signed {
        true => signed_type,
        false => unsigned_type,
    };
    match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY => by_sign(DbDataType::Int8, DbDataType::Uint8),
        ColumnType::MYSQL_TYPE_SHORT => by_sign(DbDataType::Int16, DbDataType::Uint16),
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG => {
            by_sign(DbDataType::Int32, DbDataType::Uint32)
        }
        ColumnType::MYSQL_TYPE_LONGLONG => by_sign(DbDataType::Int64, DbDataType::Uint64),
        ColumnType::MYSQL_TYPE_FLOAT => DbDataType::Floating32,
        ColumnType::MYSQL_TYPE_DOUBLE => DbDataType::Floating64,
        ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB => match column.character_set() {
            BINARY_CHARSET => DbDataType::Binary,
            _ => DbDataType::Str,
        },
        _ => DbDataType::Other,
    }
}

/// `value`, of a column of Spin type `ty` (MySQL type `column`), as Spin's value.
fn value(value: Value, ty: DbDataType, column: ColumnType) -> Result<DbValue, String> {
    fn int<T: mysql_async::prelude::FromValue>(value: Value) -> Result<T, String> {
        mysql_async::from_value_opt(value).map_err(|e| e.to_string())
    }
    Ok(match (ty, value) {
        (_, Value::NULL) => DbValue::DbNull,
        (DbDataType::Int8, v) => DbValue::Int8(int(v)?),
        (DbDataType::Int16, v) => DbValue::Int16(int(v)?),
        (DbDataType::Int32, v) => DbValue::Int32(int(v)?),
        (DbDataType::Int64, v) => DbValue::Int64(int(v)?),
        (DbDataType::Uint8, v) => DbValue::Uint8(int(v)?),
        (DbDataType::Uint16, v) => DbValue::Uint16(int(v)?),
        (DbDataType::Uint32, v) => DbValue::Uint32(int(v)?),
        (DbDataType::Uint64, v) => DbValue::Uint64(int(v)?),
        (DbDataType::Floating32, v) => DbValue::Floating32(int(v)?),
        (DbDataType::Floating64, v) => DbValue::Floating64(int(v)?),
        (DbDataType::Str, Value::Bytes(bytes)) => {
            DbValue::Str(String::from_utf8(bytes).map_err(|_| "text that is not UTF-8".to_owned())?)
        }
        (DbDataType::Binary, Value::Bytes(bytes)) => DbValue::Binary(bytes),
        (_, value) => match text(value, column) {
            Some(text) => DbValue::Str(text),
            None => DbValue::Unsupported,
        },
    })
}

/// A value of a type Spin has no case for, as MySQL writes it.
fn text(value: Value, column: ColumnType) -> Option<String> {
    Some(match value {
        Value::Bytes(bytes) => String::from_utf8(bytes).ok()?,
        Value::Int(v) => v.to_string(),
        Value::UInt(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Double(v) => v.to_string(),
        Value::Date(y, mo, d, ..) if column == ColumnType::MYSQL_TYPE_DATE => {
            format!("{y:04}-{mo:02}-{d:02}")
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            format!(
                "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
                fraction(us)
            )
        }
        Value::Time(negative, days, h, m, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if negative { "-" } else { "" };
            format!("{sign}{hours:02}:{m:02}:{s:02}{}", fraction(us))
        }
        Value::NULL => return None,
    })
}

fn fraction(micros: u32) -> String {
    match micros {
        0 => String::new(),
        us => format!(".{us:06}"),
    }
}

/// About how much memory `value` takes, to bound what a query reads.
pub(super) fn size(value: &DbValue) -> usize {
    size_of::<DbValue>()
        + match value {
            DbValue::Str(v) => v.len(),
            DbValue::Binary(v) => v.len(),
            _ => 0,
        }
}

/// Runs `statement` and reads the rows of its first result, at most [`MAX_RESULT_BYTES`].
async fn query(
    connection: &mut mysql_async::Conn,
    statement: &str,
    params: Vec<ParameterValue>,
) -> Result<RowSet, Error> {
    let params = Params::Positional(params.into_iter().map(parameter).collect());
    let mut result = connection
        .exec_iter(statement, params)
        .await
        .map_err(|e| Error::QueryFailed(e.to_string()))?;
    let columns: Vec<Column> = result.columns().map(|c| c.to_vec()).unwrap_or_default();
    let types: Vec<DbDataType> = columns.iter().map(data_type).collect();
    let mut rows = Vec::new();
    let mut size_read = 0;
    while let Some(row) = result
        .next()
        .await
        .map_err(|e| Error::Other(e.to_string()))?
    {
        let row = row
            .unwrap()
            .into_iter()
            .zip(columns.iter().zip(&types))
            .map(|(v, (column, ty))| {
                value(v, *ty, column.column_type()).map_err(|why| {
                    Error::ValueConversionFailed(format!("column {}: {why}", column.name_str()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        size_read += row.iter().map(size).sum::<usize>();
        if size_read > MAX_RESULT_BYTES {
            return Err(Error::Other(format!(
                "{OVER_LIMIT} {MAX_RESULT_BYTES} bytes"
            )));
        }
        rows.push(row);
    }
    Ok(RowSet {
        columns: columns
            .iter()
            .zip(types)
            .map(|(column, data_type)| SpinColumn {
                name: column.name_str().into_owned(),
                data_type,
            })
            .collect(),
        rows,
    })
}

impl MysqlHandle {
    /// Runs `statement` and reads the rows of its first result, at most
    /// [`MAX_RESULT_BYTES`]; a statement whose call is dropped is killed at the server.
    pub(super) async fn query(
        &mut self,
        statement: &str,
        params: Vec<ParameterValue>,
    ) -> Result<RowSet, Error> {
        let in_flight = InFlight::start(self);
        let result = query(&mut self.connection, statement, params).await;
        // Rows left unread (over the limit): the server is told to stop (`in_flight` dropped).
        if !matches!(&result, Err(Error::Other(why)) if why.starts_with(OVER_LIMIT)) {
            in_flight.ended();
        }
        result
    }

    /// Runs `statement`, its results discarded.
    pub(super) async fn execute(
        &mut self,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Result<(), Error> {
        let params = Params::Positional(params.into_iter().map(parameter).collect());
        let in_flight = InFlight::start(self);
        let result = self.connection.exec_drop(statement, params).await;
        in_flight.ended();
        result.map_err(|e| Error::QueryFailed(e.to_string()))
    }
}

/// A connection of Spin 4's `spin:mysql@3.0.0`, whose async calls use it while the instance
/// goes on: one statement at a time, as a connection runs them.
pub type SharedMysql = std::sync::Arc<tokio::sync::Mutex<MysqlHandle>>;

impl rdbms_types::Host for SpinState {}
impl mysql::Host for SpinState {}

impl mysql::HostConnection for SpinState {
    async fn open(&mut self, address: String) -> Outcome<Resource<MysqlHandle>, Error> {
        if let Some(why) = no_network(self) {
            return Ok(Err(Error::ConnectionFailed(why)));
        }
        let host = self.host.clone();
        Ok(match open(&host, &address).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }

    async fn query(
        &mut self,
        this: Resource<MysqlHandle>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Outcome<RowSet, Error> {
        Ok(self.table.get_mut(&this)?.query(&statement, params).await)
    }

    async fn execute(
        &mut self,
        this: Resource<MysqlHandle>,
        statement: String,
        params: Vec<ParameterValue>,
    ) -> Outcome<(), Error> {
        Ok(self.table.get_mut(&this)?.execute(statement, params).await)
    }

    async fn drop(&mut self, this: Resource<MysqlHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TCP to the host the address names, and nothing else: no Unix socket, by name or by
    /// mysql_async's preference.
    #[test]
    fn addresses_give_tcp_options_only() {
        let (opts, tls) = options("mysql://spin:pw@127.0.0.1:3307/db?ssl-mode=DISABLED").unwrap();
        assert_eq!(
            (opts.ip_or_hostname(), opts.tcp_port()),
            ("127.0.0.1", 3307)
        );
        assert!(!opts.prefer_socket());
        assert_eq!(opts.db_name(), Some("db"));
        assert_eq!(tls, Tls::Off);
        assert!(opts.ssl_opts().is_none());
        let refused = options("mysql://spin@db/x?socket=/run/mysqld/mysqld.sock").unwrap_err();
        assert!(refused.contains("Unix sockets"), "{refused}");
        let (opts, _) = options("mysql://spin@db/x?stmt_cache_size=100000").unwrap();
        assert_eq!(opts.stmt_cache_size(), STATEMENT_CACHE);
        assert_eq!(opts.max_allowed_packet(), Some(MAX_PACKET));
        assert!(options("not a url").is_err());
    }

    /// Each ssl-mode as Spin and MySQL name them; whatever the address says, a TLS connection
    /// checks the server's certificate and name against the built-in roots too.
    #[test]
    fn ssl_modes_ask_for_tls_and_never_turn_the_checks_off() {
        let tls = |address: &str| options(address).map(|(opts, tls)| (tls, opts));
        assert_eq!(tls("mysql://spin@db/x").unwrap().0, Tls::Off);
        assert_eq!(
            tls("mysql://spin@db/x?ssl-mode=PREFERRED").unwrap().0,
            Tls::Preferred
        );
        for required in [
            "sslMode=REQUIRED",
            "ssl-mode=verify_ca",
            "ssl-mode=VERIFY_IDENTITY",
            "require_ssl=true",
            "require_ssl=true&verify_ca=false&verify_identity=false&built_in_roots=false",
        ] {
            let (tls, opts) = tls(&format!("mysql://spin@db/x?{required}")).unwrap();
            assert_eq!(tls, Tls::Required, "{required}");
            let ssl = opts.ssl_opts().expect("TLS options");
            assert!(!ssl.accept_invalid_certs(), "{required}");
            assert!(!ssl.skip_domain_validation(), "{required}");
            assert!(!ssl.disable_built_in_roots(), "{required}");
        }
        // The strictest of what an address asks holds.
        for conflicting in [
            "ssl-mode=disabled&require_ssl=true",
            "ssl-mode=preferred&ssl-mode=required",
            "ssl-mode=required&ssl-mode=disabled",
        ] {
            let (tls, _) = tls(&format!("mysql://spin@db/x?{conflicting}")).unwrap();
            assert_eq!(tls, Tls::Required, "{conflicting}");
        }
        let refused = tls("mysql://spin@db/x?ssl-mode=sometimes").unwrap_err();
        assert!(
            refused.contains("use disabled, preferred, required"),
            "{refused}"
        );
    }

    #[test]
    fn values_of_types_spin_lacks_are_text() {
        let date = Value::Date(2024, 2, 29, 0, 0, 0, 0);
        assert_eq!(
            text(date, ColumnType::MYSQL_TYPE_DATE).unwrap(),
            "2024-02-29"
        );
        let datetime = Value::Date(1999, 12, 31, 23, 59, 58, 120);
        assert_eq!(
            text(datetime, ColumnType::MYSQL_TYPE_DATETIME).unwrap(),
            "1999-12-31 23:59:58.000120"
        );
        let time = Value::Time(true, 1, 2, 3, 4, 0);
        assert_eq!(
            text(time, ColumnType::MYSQL_TYPE_TIME).unwrap(),
            "-26:03:04"
        );
        let decimal = value(
            Value::Bytes(b"12.50".to_vec()),
            DbDataType::Other,
            ColumnType::MYSQL_TYPE_NEWDECIMAL,
        );
        assert!(matches!(decimal, Ok(DbValue::Str(text)) if text == "12.50"));
        let too_big = value(
            Value::Int(300),
            DbDataType::Int8,
            ColumnType::MYSQL_TYPE_TINY,
        );
        assert!(too_big.is_err());
    }
}
