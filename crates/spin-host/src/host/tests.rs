use super::fermyon::spin2_0_0::variables;
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
        ai_models: vec!["llama2-chat".into()],
        silenced: false,
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
        postgres: Default::default(),
        mysql: Default::default(),
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

/// A Spin component's store state over `host`, as an instance of it starts.
pub(crate) fn spin_state(host: SpinHost) -> SpinState {
    use wasmcell_runtime::controls::Controls;
    use wasmcell_runtime::epoch::Ticker;
    use wasmcell_runtime::outbound::HttpHooks;
    use wasmcell_runtime::store::Budget;
    let engine = wasmtime::Engine::new(&wasmcell_runtime::config()).unwrap();
    let clock = Ticker::new(&engine).store_clock().unwrap();
    let budget = Budget::new(&Controls::new(&Default::default()), clock);
    let hooks = HttpHooks::new(Network::Inherit);
    ComponentState::new(WasiCtxBuilder::new().build(), hooks, budget, Arc::new(host))
}

/// Spin's conformance suite: a Redis address the component may not reach is
/// `invalid-address`, before any connection is tried.
#[tokio::test]
async fn a_redis_address_not_allowed_is_an_invalid_address() {
    use super::fermyon::spin2_0_0::redis::{Error, HostConnection};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let output = wasmcell_workload::Output::File(log.clone());
    let host = spin_host(dir.path(), &["redis://127.0.0.1:6379"], &[], &[], &output);
    let mut state = spin_state(host);
    for address in ["redis://127.0.0.1:6380", "redis://denied.invalid:6379"] {
        let opened = HostConnection::open(&mut state, address.into())
            .await
            .unwrap();
        assert!(matches!(opened, Err(Error::InvalidAddress)), "{address}");
    }
    let opened = HostConnection::open(&mut state, "not a url".into())
        .await
        .unwrap();
    assert!(matches!(opened, Err(Error::InvalidAddress)));
    state.host.diagnostics_flushed().await;
    let reported = std::fs::read_to_string(&log).unwrap();
    assert!(
        reported.contains("add \"redis://127.0.0.1:6380\""),
        "{reported}"
    );
}

/// A Redis server that cannot be reached is an error within seconds, not a handler that hangs
/// past its deadline while the client retries.
#[tokio::test]
async fn a_redis_server_that_refuses_is_an_error_at_once() {
    use super::fermyon::spin2_0_0::redis::{Error, HostConnection};
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let output = wasmcell_workload::Output::Null;
    let host = spin_host(dir.path(), &["redis://127.0.0.1:*"], &[], &[], &output);
    let mut state = spin_state(host);
    let address = format!("redis://127.0.0.1:{port}");
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        HostConnection::open(&mut state, address),
    )
    .await
    .expect("open gave up within 30 s")
    .unwrap();
    assert!(matches!(opened, Err(Error::Other(_))), "{opened:?}");
}
