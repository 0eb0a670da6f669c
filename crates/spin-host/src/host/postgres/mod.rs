//! Outbound PostgreSQL: `fermyon:spin/postgres@2.0.0`, `spin:postgres/postgres@3.0.0` and
//! `@4.0.0`, on one implementation of 4.0.0 (the older interfaces' values converted in
//! `values`).
//!
//! As in Spin, a component's sessions are pooled per address and kept between requests; a
//! handle is one session from `open` to its drop (so `pg_backend_pid()` and a transaction hold
//! across its calls), and a session goes back to the pool rolled back and cleaned
//! (deadpool's `Clean`: temporary tables, prepared statements, settings and locks gone).
//! Every host and `hostaddr` of an address must be granted by `allowed_outbound_hosts`
//! (`postgres://HOST:PORT`): Spin checks the hosts only, so `hostaddr` could take a granted
//! name to any address.
//!
//! TLS as Spin's: `sslmode=prefer` (the default) asks the server for TLS and goes on in plain
//! TCP only when the server has none; `require` insists; `disable` never asks. The server's
//! certificate is always checked, against Mozilla's roots, the node's trust store and the CA
//! roots a component gives (4.1.0's `connection-builder.set-ca-root`), so a server with a
//! self-signed certificate needs its CA given or installed on the node, or `sslmode=disable`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures_util::TryStreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::OwnedSemaphorePermit;
use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
use tokio_postgres_rustls::MakeRustlsConnect;
use wasmtime::component::Resource;

use super::fermyon::spin2_0_0::{postgres as v2, rdbms_types};
use super::services::no_network;
use super::spin::postgres3_0_0::postgres as v3;
use super::spin::postgres4_2_0::postgres as v4;
use super::{Outcome, SpinHost, SpinState};
use wasmcell_stores::MAX_RESULT_BYTES;

mod values;

pub(in crate::host) use values::size;

/// How many sessions a component keeps open to one address, at most.
const SESSIONS: usize = 16;

/// How long connecting, and waiting for a session when all are in use, may take.
const WAIT: Duration = Duration::from_secs(30);

/// PostgreSQL's port when an address names none.
const PORT: u16 = 5432;

/// A connection being described (4.1.0's `connection-builder`): its address and the CA roots
/// its server's certificate may chain to besides Mozilla's.
pub struct PgBuilder {
    address: String,
    ca_root: Option<CaRoot>,
}

impl PgBuilder {
    pub(super) fn new(address: String) -> PgBuilder {
        PgBuilder {
            address,
            ca_root: None,
        }
    }

    /// Trusts the certificates of `pem` too; a text that holds none is refused, saying why.
    pub(super) fn set_ca_root(&mut self, pem: String) -> Result<(), String> {
        self.ca_root = Some(CaRoot::parse(pem)?);
        Ok(())
    }

    /// What `build` opens: the address, and the CA roots given.
    pub(super) fn target(&self) -> (String, Option<CaRoot>) {
        (self.address.clone(), self.ca_root.clone())
    }
}

/// CA certificates a component trusts for its server: as it gave them (PEM), and parsed.
#[derive(Clone)]
pub struct CaRoot {
    pem: String,
    certificates: Vec<CertificateDer<'static>>,
}

impl CaRoot {
    fn parse(pem: String) -> Result<CaRoot, String> {
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the CA root is not PEM certificates: {e}"))?;
        if certificates.is_empty() {
            return Err(
                "the CA root holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            );
        }
        Ok(CaRoot { pem, certificates })
    }
}

/// The TLS a session negotiates: the server's certificate checked against Mozilla's roots, the
/// node's (see [`super::trust`]) and `ca_root`'s.
fn tls(ca_root: Option<&CaRoot>) -> Result<MakeRustlsConnect, String> {
    let mut roots = super::trust::roots();
    for certificate in ca_root.iter().flat_map(|ca| &ca.certificates) {
        roots
            .add(certificate.clone())
            .map_err(|e| format!("the CA root cannot be used: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// An open handle: one session, shared by the handle and the async calls in progress on it
/// (Spin 4's `query-async` runs while the instance goes on).
#[derive(Clone)]
pub struct PgHandle(Arc<Session>);

impl std::ops::Deref for PgHandle {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.0
    }
}

/// One session, rolled back when its handle is dropped; and its place among the component's
/// open handles.
pub struct Session {
    session: Option<deadpool_postgres::Object>,
    /// How its statements are cancelled: over the same TLS.
    tls: MakeRustlsConnect,
    _admitted: OwnedSemaphorePermit,
}

impl Session {
    fn session(&self) -> &deadpool_postgres::Object {
        self.session
            .as_ref()
            .expect("a handle holds its session until dropped")
    }
}

impl Drop for Session {
    /// Ends a transaction the guest left open before the session goes back to the pool
    /// (deadpool's clean-up runs inside one otherwise); a session that does not answer within
    /// [`WAIT`] is closed instead.
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && !session.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let rolled_back = tokio::time::timeout(WAIT, session.batch_execute("ROLLBACK"));
                if !matches!(rolled_back.await, Ok(Ok(()))) {
                    drop(deadpool_postgres::Object::take(session));
                }
            });
        }
    }
}

/// A component's session pools, by address.
pub(crate) type Pools = super::pools::Pools<Pool>;

/// A pool of sessions to the server `config` names, over `tls`.
fn pool(config: Config, tls: MakeRustlsConnect) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Clean,
        },
    );
    let timeouts = Timeouts {
        wait: Some(WAIT),
        create: Some(WAIT),
        recycle: Some(WAIT),
    };
    Pool::builder(manager)
        .max_size(SESSIONS)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}

/// Opens a session to `address` for the component `host`.
pub(super) async fn open(
    host: &SpinHost,
    address: &str,
    ca_root: Option<&CaRoot>,
) -> Result<PgHandle, v4::Error> {
    let config: Config = address
        .parse()
        .map_err(|e| v4::Error::ConnectionFailed(format!("invalid PostgreSQL address: {e}")))?;
    permitted(host, &config).map_err(v4::Error::ConnectionFailed)?;
    let tls = tls(ca_root).map_err(v4::Error::ConnectionFailed)?;
    let admitted = host
        .postgres
        .admit()
        .await
        .map_err(v4::Error::ConnectionFailed)?;
    // A pool per address and CA root: sessions trust what their `open` asked them to.
    let key = match ca_root {
        Some(ca) => format!("{address}\n{}", ca.pem),
        None => address.to_owned(),
    };
    let pool = host
        .postgres
        .get(&key, || pool(config, tls.clone()))
        .map_err(v4::Error::Other)?;
    match pool.get().await {
        Ok(session) => Ok(PgHandle(Arc::new(Session {
            session: Some(session),
            tls,
            _admitted: admitted,
        }))),
        Err(e) => Err(v4::Error::ConnectionFailed(format!(
            "cannot connect to PostgreSQL: {}",
            chain(&e)
        ))),
    }
}

/// `error` and its causes, each after a colon: deadpool's and tokio-postgres's own messages
/// name only the step that failed ("error performing TLS handshake"), their causes why.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = error.source();
    }
    text
}

/// Whether the component may connect to every host (and `hostaddr`) `config` names, each
/// with its port (one port for all, or one each; 5432 when none is given).
fn permitted(host: &SpinHost, config: &Config) -> Result<(), String> {
    let ports = config.get_ports();
    let port = |at: usize| match ports {
        [one] => *one,
        ports => ports.get(at).copied().unwrap_or(PORT),
    };
    let mut targets = Vec::new();
    for (at, host) in config.get_hosts().iter().enumerate() {
        match host {
            Host::Tcp(name) => targets.push((name.to_ascii_lowercase(), port(at))),
            Host::Unix(_) => {
                return Err("Unix sockets are not supported: give a host name or address".into());
            }
        }
    }
    for (at, address) in config.get_hostaddrs().iter().enumerate() {
        targets.push((address.to_string(), port(at)));
    }
    if targets.is_empty() {
        return Err("the address names no host".to_owned());
    }
    for (name, port) in targets {
        if !host.allowed_hosts.allows("postgres", &name, port) {
            let shown = match name.contains(':') {
                true => format!("[{name}]"),
                false => name,
            };
            let entry = format!("postgres://{shown}:{port}");
            host.report_denied(&entry, &entry);
            // As Spin names it: the port only if the address gave one.
            return Err(match ports.is_empty() {
                true => format!("address postgres://{shown} is not permitted"),
                false => format!("address {entry} is not permitted"),
            });
        }
    }
    Ok(())
}

/// A statement on its way: if its call is dropped before it ends (the request's deadline
/// passed), the server is asked to cancel it, so that it does not run on and hold the session.
struct InFlight(Option<(tokio_postgres::CancelToken, MakeRustlsConnect)>);

impl InFlight {
    fn start(handle: &PgHandle) -> InFlight {
        InFlight(Some((handle.session().cancel_token(), handle.tls.clone())))
    }

    fn ended(mut self) {
        self.0 = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((token, tls)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(WAIT, token.cancel_query(tls)).await;
            });
        }
    }
}

/// The statement's parameters, ready to send, or the first that is not a value of its kind.
fn parameters(params: Vec<v4::ParameterValue>) -> Result<Vec<values::Parameter>, String> {
    params.into_iter().map(values::parameter).collect()
}

/// Why a query's rows were not read: its own failure, or the result limit (the statement
/// still running at the server).
enum Unread {
    Failed(v4::Error),
    OverLimit,
}

impl From<v4::Error> for Unread {
    fn from(error: v4::Error) -> Unread {
        Unread::Failed(error)
    }
}

/// Runs `statement` and reads its rows, at most [`MAX_RESULT_BYTES`] of them.
pub(super) async fn query(
    handle: &PgHandle,
    statement: &str,
    params: Vec<v4::ParameterValue>,
) -> Result<v4::RowSet, v4::Error> {
    let in_flight = InFlight::start(handle);
    let result = read_rows(handle, statement, params).await;
    // Rows left unread: the server is told to stop sending them (`in_flight` dropped).
    if !matches!(result, Err(Unread::OverLimit)) {
        in_flight.ended();
    }
    result.map_err(|unread| match unread {
        Unread::Failed(error) => error,
        Unread::OverLimit => v4::Error::QueryFailed(v4::QueryError::Text(format!(
            "query result exceeds limit of {MAX_RESULT_BYTES} bytes"
        ))),
    })
}

async fn read_rows(
    handle: &PgHandle,
    statement: &str,
    params: Vec<v4::ParameterValue>,
) -> Result<v4::RowSet, Unread> {
    let params = parameters(params).map_err(v4::Error::BadParameter)?;
    let session = handle.session();
    let prepared = session.prepare(statement).await.map_err(failed)?;
    let rows = session
        .query_raw(
            &prepared,
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        )
        .await
        .map_err(|e| bad_parameter(e, v4::Error::BadParameter))?;
    let columns = prepared
        .columns()
        .iter()
        .map(|column| v4::Column {
            name: column.name().to_owned(),
            data_type: values::data_type(column.type_()),
        })
        .collect();
    let mut read = Vec::new();
    let mut size = 0;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await.map_err(failed)? {
        let row = (0..row.len())
            .map(|index| values::value(&row, index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        size += row.iter().map(values::size).sum::<usize>();
        if size > MAX_RESULT_BYTES {
            return Err(Unread::OverLimit);
        }
        read.push(row);
    }
    Ok(v4::RowSet {
        columns,
        rows: read,
    })
}

/// Runs `statement`; how many rows it affected.
pub(super) async fn execute(
    handle: &PgHandle,
    statement: &str,
    params: Vec<v4::ParameterValue>,
) -> Result<u64, v4::Error> {
    let params = parameters(params).map_err(v4::Error::ValueConversionFailed)?;
    let session = handle.session();
    let in_flight = InFlight::start(handle);
    let prepared = session.prepare(statement).await.map_err(failed);
    let result = match prepared {
        Ok(prepared) => session
            .execute_raw(
                &prepared,
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
            )
            .await
            .map_err(|e| bad_parameter(e, v4::Error::ValueConversionFailed)),
        Err(error) => Err(error),
    };
    in_flight.ended();
    result
}

/// A parameter the statement's type for it does not take is the guest's parameter error
/// (`as_error`, as Spin reports it); any other failure is the statement's.
fn bad_parameter(error: tokio_postgres::Error, as_error: fn(String) -> v4::Error) -> v4::Error {
    let wrong_type = std::error::Error::source(&error)
        .is_some_and(|cause| cause.is::<tokio_postgres::types::WrongType>());
    match wrong_type {
        true => as_error(error.to_string()),
        false => failed(error),
    }
}

/// A failed statement: PostgreSQL's own error (SQLSTATE, message, detail and the rest) when it
/// sent one, else what went wrong.
fn failed(error: tokio_postgres::Error) -> v4::Error {
    v4::Error::QueryFailed(match error.as_db_error() {
        Some(db) => {
            // tokio-postgres says only "db error"; the server's own words follow.
            let as_text = format!("{error}: {db}");
            let line = db.line().map(|line| line.to_string());
            let extras = [
                ("column", db.column()),
                ("constraint", db.constraint()),
                ("routine", db.routine()),
                ("hint", db.hint()),
                ("table", db.table()),
                ("datatype", db.datatype()),
                ("schema", db.schema()),
                ("file", db.file()),
                ("line", line.as_deref()),
                ("where_", db.where_()),
            ];
            v4::QueryError::DbError(v4::DbError {
                as_text,
                severity: db.severity().to_owned(),
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                extras: extras
                    .into_iter()
                    .filter_map(|(key, value)| Some((key.to_owned(), value?.to_owned())))
                    .collect(),
            })
        }
        None => v4::QueryError::Text(error.to_string()),
    })
}

/// 4.0.0's error as the older interfaces have it (a query's failure as text).
macro_rules! older_error {
    ($error:ty) => {
        impl From<v4::Error> for $error {
            fn from(error: v4::Error) -> $error {
                match error {
                    v4::Error::ConnectionFailed(why) => <$error>::ConnectionFailed(why),
                    v4::Error::BadParameter(why) => <$error>::BadParameter(why),
                    v4::Error::QueryFailed(v4::QueryError::Text(why)) => <$error>::QueryFailed(why),
                    v4::Error::QueryFailed(v4::QueryError::DbError(db)) => {
                        <$error>::QueryFailed(db.as_text)
                    }
                    v4::Error::ValueConversionFailed(why) => <$error>::ValueConversionFailed(why),
                    v4::Error::Other(why) => <$error>::Other(why),
                }
            }
        }
    };
}

older_error!(v3::Error);
older_error!(rdbms_types::Error);

impl v4::Host for SpinState {}
impl v3::Host for SpinState {}
impl v2::Host for SpinState {}

/// One version's `connection` resource: `open` and `drop` as 4.0.0's, `query` and `execute`
/// converting parameters in (`$params`, which may refuse one), rows (`$rows`) and errors out.
macro_rules! connection {
    ($module:ident, $error:ty, $params:expr, $rows:expr) => {
        impl $module::HostConnection for SpinState {
            async fn open(&mut self, address: String) -> Outcome<Resource<PgHandle>, $error> {
                if let Some(why) = no_network(self) {
                    return Ok(Err(v4::Error::ConnectionFailed(why).into()));
                }
                let host = self.host.clone();
                Ok(match open(&host, &address, None).await {
                    Ok(handle) => Ok(self.table.push(handle)?),
                    Err(error) => Err(error.into()),
                })
            }

            async fn query(
                &mut self,
                this: Resource<PgHandle>,
                statement: String,
                params: Vec<$module::ParameterValue>,
            ) -> Outcome<$module::RowSet, $error> {
                let params = match params.into_iter().map($params).collect() {
                    Ok(params) => params,
                    Err(why) => return Ok(Err(<$error>::ValueConversionFailed(why))),
                };
                let handle = self.table.get(&this)?;
                Ok(query(handle, &statement, params)
                    .await
                    .map($rows)
                    .map_err(Into::into))
            }

            async fn execute(
                &mut self,
                this: Resource<PgHandle>,
                statement: String,
                params: Vec<$module::ParameterValue>,
            ) -> Outcome<u64, $error> {
                let params = match params.into_iter().map($params).collect() {
                    Ok(params) => params,
                    Err(why) => return Ok(Err(<$error>::ValueConversionFailed(why))),
                };
                let handle = self.table.get(&this)?;
                Ok(execute(handle, &statement, params)
                    .await
                    .map_err(Into::into))
            }

            async fn drop(&mut self, this: Resource<PgHandle>) -> wasmtime::Result<()> {
                self.table.delete(this)?;
                Ok(())
            }
        }
    };
}

connection!(v4, v4::Error, Ok::<_, String>, |rows| rows);
connection!(
    v3,
    v3::Error,
    |p| Ok::<_, String>(values::from_v3(p)),
    values::to_v3
);
connection!(v2, rdbms_types::Error, values::from_v2, values::to_v2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::tests::spin_host;

    fn checked(granted: &[&str], address: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let host = spin_host(dir.path(), granted, &[], &[], &Default::default());
        permitted(&host, &address.parse().unwrap())
    }

    /// Every host an address names is checked, with its own port; a denied one is named as
    /// Spin names it.
    #[test]
    fn every_host_of_an_address_is_checked() {
        let granted = ["postgres://db.example:5433", "postgres://db.example"];
        for address in [
            "postgres://u:p@DB.example:5433/app",
            "host=db.example user=spin",
            "host=db.example,db.example port=5432,5433 user=spin",
        ] {
            assert_eq!(checked(&granted, address), Ok(()), "{address}");
        }
        assert_eq!(
            checked(&granted, "host=db.example port=6000"),
            Err("address postgres://db.example:6000 is not permitted".into())
        );
        assert_eq!(
            checked(&granted, "host=db.example,other.example user=spin"),
            Err("address postgres://other.example is not permitted".into())
        );
        assert_eq!(
            checked(&["postgres://[::1]:5432"], "postgres://[::1]/app"),
            Ok(())
        );
    }

    /// `hostaddr` is where tokio-postgres connects, whatever the host's name: a granted name
    /// does not take a connection to an address that is not granted.
    #[test]
    fn hostaddr_cannot_take_a_granted_name_elsewhere() {
        let granted = ["postgres://db.example:5432"];
        assert_eq!(
            checked(&granted, "host=db.example hostaddr=10.1.2.3 user=spin"),
            Err("address postgres://10.1.2.3 is not permitted".into())
        );
        let both = ["postgres://db.example:5432", "postgres://10.1.2.3:5432"];
        assert_eq!(
            checked(&both, "host=db.example hostaddr=10.1.2.3 user=spin"),
            Ok(())
        );
    }

    /// A Unix socket is a path on the node: never.
    #[test]
    fn unix_sockets_are_refused() {
        for address in ["host=/var/run/postgresql user=postgres", "user=postgres"] {
            let refused = checked(&["postgres://*:*"], address).unwrap_err();
            assert!(
                refused.contains("Unix sockets") || refused.contains("no host"),
                "{address}: {refused}"
            );
        }
    }
}
