//! Spin apps using outbound PostgreSQL and MySQL (guests/spin-databases, Spin's Rust SDK)
//! against real servers: Debian's PostgreSQL 15 and MariaDB 10.11, private to each test.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use wasmcell_e2e::{
    Containerd, MariaDb, Postgres, Up, build_spin_image, curl, start_spin_detached, wait_http,
    wasmcell,
};

/// The app: one component with the databases at `pg` and `mysql`, granted `granted`.
fn app(dir: &Path, pg: &str, mysql: &str, granted: &[String]) -> Result<PathBuf> {
    let app = dir.join("db");
    std::fs::create_dir_all(&app)?;
    std::fs::copy(
        wasmcell_e2e::guest("spin/shop/spin_databases.wasm"),
        app.join("spin_databases.wasm"),
    )?;
    let granted: Vec<String> = granted.iter().map(|g| format!("{g:?}")).collect();
    std::fs::write(
        app.join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"db\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"db\"\n\
             [component.db]\nsource = \"spin_databases.wasm\"\n\
             allowed_outbound_hosts = [{}]\n\
             environment = {{ PG_ADDRESS = {pg:?}, MYSQL_ADDRESS = {mysql:?} }}\n",
            granted.join(", ")
        ),
    )?;
    Ok(app)
}

fn get(base: &str, path: &str) -> Result<(u16, String)> {
    let reply = curl(&["-X", "GET", &format!("{base}{path}")])?;
    Ok((reply.status, reply.body))
}

fn post(base: &str, path: &str) -> Result<(u16, String)> {
    let reply = curl(&["-X", "POST", &format!("{base}{path}")])?;
    Ok((reply.status, reply.body))
}

/// What `/v4/types` reads back: the row written with SQL literals, then the one written with
/// parameters, each value as PostgreSQL stored it (ranges of integers in PostgreSQL's
/// canonical `[a,b)` form; JSON as serde_json writes it, keys sorted; `timestamptz` in UTC).
const PG_TYPES: &str = r#"written 1
("n", DbDataType::Int16)
("b", DbDataType::Boolean)
("i2", DbDataType::Int16)
("i4", DbDataType::Int32)
("i8", DbDataType::Int64)
("f4", DbDataType::Floating32)
("f8", DbDataType::Floating64)
("t", DbDataType::Str)
("vc", DbDataType::Str)
("bin", DbDataType::Binary)
("d", DbDataType::Date)
("tm", DbDataType::Time)
("ts", DbDataType::Datetime)
("tz", DbDataType::Datetime)
("u", DbDataType::Uuid)
("j", DbDataType::Jsonb)
("dec", DbDataType::Decimal)
("r4", DbDataType::RangeInt32)
("r8", DbDataType::RangeInt64)
("rn", DbDataType::RangeDecimal)
("a4", DbDataType::ArrayInt32)
("a8", DbDataType::ArrayInt64)
("an", DbDataType::ArrayDecimal)
("at", DbDataType::ArrayStr)
("iv", DbDataType::Interval)
("other", DbDataType::Other("inet"))
("nothing", DbDataType::Str)
row
DbValue::Int16(1)
DbValue::Boolean(true)
DbValue::Int16(-2)
DbValue::Int32(4)
DbValue::Int64(8000000000)
DbValue::Floating32(1.5)
DbValue::Floating64(2.25)
DbValue::Str("text")
DbValue::Str("varchar")
DbValue::Binary([0, 1, 255])
DbValue::Date((2525, 12, 25))
DbValue::Time((4, 5, 6, 789000000))
DbValue::Datetime((1989, 11, 24, 1, 2, 3, 0))
DbValue::Datetime((2001, 2, 3, 2, 5, 6, 0))
DbValue::Uuid("12345678-1234-1234-1234-123456789abc")
DbValue::Jsonb([123, 34, 110, 34, 58, 49, 50, 51, 44, 34, 115, 34, 58, 34, 104, 101, 108, 108, 111, 34, 125])
DbValue::Decimal("123456789.123456789")
DbValue::RangeInt32((Some((1, RangeBoundKind::Inclusive)), Some((10, RangeBoundKind::Exclusive))))
DbValue::RangeInt64((None, Some((6, RangeBoundKind::Exclusive))))
DbValue::RangeDecimal((Some(("1.5", RangeBoundKind::Inclusive)), Some(("2.5", RangeBoundKind::Inclusive))))
DbValue::ArrayInt32([Some(1), None, Some(3)])
DbValue::ArrayInt64([Some(8000000000)])
DbValue::ArrayDecimal([Some("1.25"), None])
DbValue::ArrayStr([Some("a"), None, Some("b c")])
DbValue::Interval(Interval { micros: 3000000, days: 2, months: 12 })
DbValue::Unsupported([2, 32, 0, 4, 10, 0, 0, 1])
DbValue::DbNull
row
DbValue::Int16(2)
DbValue::Boolean(false)
DbValue::Int16(-3)
DbValue::Int32(5)
DbValue::Int64(-9000000000)
DbValue::Floating32(0.5)
DbValue::Floating64(-1.125)
DbValue::Str("from params")
DbValue::Str("vc")
DbValue::Binary([9, 8, 7])
DbValue::Date((2024, 2, 29))
DbValue::Time((14, 15, 16, 17000))
DbValue::Datetime((1999, 12, 31, 23, 59, 58, 123456000))
DbValue::Datetime((2001, 9, 9, 1, 46, 40, 0))
DbValue::Uuid("fedcba98-fedc-fedc-fedc-fedcba987654")
DbValue::Jsonb([123, 34, 119, 111, 114, 108, 100, 34, 58, 91, 49, 44, 50, 93, 125])
DbValue::Decimal("-0.001")
DbValue::RangeInt32((Some((2, RangeBoundKind::Inclusive)), Some((5, RangeBoundKind::Exclusive))))
DbValue::RangeInt64((None, Some((7, RangeBoundKind::Exclusive))))
DbValue::RangeDecimal((Some(("0.5", RangeBoundKind::Exclusive)), None))
DbValue::ArrayInt32([Some(7), None])
DbValue::ArrayInt64([None])
DbValue::ArrayDecimal([Some("3.14")])
DbValue::ArrayStr([Some("x"), None])
DbValue::Interval(Interval { micros: 1500000, days: 3, months: 14 })
DbValue::DbNull
DbValue::DbNull
"#;

/// Spin 3 reads dates and times as 4.0.0 does; a UUID, which it has no case for, is
/// `unsupported`.
const PG3_TYPES: &str = "DbDataType::Date\nDbDataType::Time\nDbDataType::Datetime\n\
DbDataType::Datetime\nDbDataType::Other\nDbDataType::Str\nDbValue::Date((2525, 12, 25))\n\
DbValue::Time((4, 5, 6, 789000000))\nDbValue::Datetime((1989, 11, 24, 1, 2, 3, 4000))\n\
DbValue::Datetime((1970, 1, 1, 0, 0, 0, 0))\nDbValue::Unsupported\nDbValue::DbNull\n";

/// Spin 2 has no dates at all.
const PG2_TYPES: &str = "DbDataType::Int32\nDbDataType::Str\nDbDataType::Other\n\
DbDataType::Binary\nDbValue::Int32(42)\nDbValue::Str(\"two\")\nDbValue::Unsupported\n\
DbValue::Binary([1, 2])\n";

/// The session a handle holds: the same backend for each call; and the PID.
fn session(base: &str) -> Result<String> {
    let (status, body) = get(base, "/v4/session")?;
    assert_eq!(status, 200, "{body}");
    let (same, pid) = body.split_once('\n').expect("two lines");
    assert_eq!(same, "same PID", "{body}");
    Ok(pid.to_owned())
}

/// Checks what the app at `base` reads and writes in the PostgreSQL server.
fn assert_uses_postgres(base: &str) -> Result<()> {
    assert_eq!(get(base, "/v4/types")?, (200, PG_TYPES.to_owned()));
    // The session goes back to the pool: the next request's handle is the same backend.
    assert_eq!(session(base)?, session(base)?);
    let (status, error) = get(base, "/v4/error")?;
    assert_eq!(status, 200);
    for part in [
        "QueryFailed(QueryError::DbError(DbError { as-text: \"db error: ERROR: relation \\\"no_such_table\\\" does not exist\"",
        "severity: \"ERROR\", code: \"42P01\"",
        "message: \"relation \\\"no_such_table\\\" does not exist\"",
    ] {
        assert!(error.contains(part), "{error}");
    }
    assert_eq!(get(base, "/v3/types")?, (200, PG3_TYPES.to_owned()));
    assert_eq!(get(base, "/v2/types")?, (200, PG2_TYPES.to_owned()));
    assert_eq!(
        get(base, "/v2/unsigned")?.1,
        "Some(Error::ValueConversionFailed(\"Postgres does not support unsigned integers\"))\n"
    );
    // A transaction a request leaves open is rolled back before its session is reused.
    assert_eq!(post(base, "/v4/abandon")?.0, 200);
    assert_eq!(post(base, "/v4/visit")?, (200, "1\n".to_owned()));
    assert_eq!(
        get(base, "/v4/visits")?,
        (200, "DbValue::Int64(1)\n".to_owned())
    );
    assert_eq!(
        get(base, "/denied")?.1,
        "Some(Error::ConnectionFailed(\"address postgres://db.invalid is not permitted\"))\n"
    );
    Ok(())
}

#[test]
fn a_spin_app_uses_postgres_through_spins_2_3_and_4_interfaces() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pg = Postgres::start()?;
    let granted = [format!("postgres://127.0.0.1:{}", pg.port())];
    let app = app(tmp.path(), &pg.address(), "", &granted)?;
    let up = Up::start(
        Command::new(wasmcell()).args(["up", "-f"]).arg(&app),
        "/nothing",
    )?;
    assert_uses_postgres(&up.base)?;
    let stderr = String::from_utf8(up.stop()?.stderr)?;
    assert!(
        stderr.contains(
            "add \"postgres://db.invalid:5432\" to allowed_outbound_hosts in [component.db]"
        ),
        "{stderr}"
    );
    // What the app wrote is in the server, as its own client reads it.
    assert_eq!(pg.psql("SELECT count(*) FROM visits")?.stdout.trim(), "1");

    // The same under the spin shim, in a fresh database.
    pg.psql("DROP TABLE visits")?;
    let archive = build_spin_image(&app, "example.com/pg:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let timeout = ["WASMCELL_HTTP_TIMEOUT=3"];
    let base = start_spin_detached(&containerd, "example.com/pg:1", "pg", &timeout)?;
    wait_http(&format!("{base}/nothing"))?;
    assert_uses_postgres(&base)?;
    // A statement still running when the request's deadline passes is cancelled at the
    // server, not left to hold its session.
    assert_eq!(get(&base, "/v4/sleep")?.0, 504);
    wasmcell_e2e::wait_for("the sleeping statement to be cancelled", || {
        let active = "SELECT count(*) FROM pg_stat_activity \
                      WHERE query = 'SELECT pg_sleep(600)' AND state = 'active'";
        Ok(pg.psql(active)?.stdout.trim() == "0")
    })?;
    assert!(session(&base)?.starts_with("DbValue::Int32("));
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "pg"])?
        .success()?;
    containerd.wait_status("pg", "STOPPED")?;
    Ok(())
}

/// What `/mysql/types` reads back: integers by size and sign, text and bytes by character
/// set, and the types Spin has no case for as the text MySQL writes.
const MYSQL_TYPES: &str = r#"("n", DbDataType::Int32)
("t", DbDataType::Int8)
("tu", DbDataType::Uint8)
("s", DbDataType::Int16)
("i", DbDataType::Int32)
("bu", DbDataType::Uint64)
("f", DbDataType::Floating32)
("d", DbDataType::Floating64)
("vc", DbDataType::Str)
("tx", DbDataType::Str)
("vb", DbDataType::Binary)
("bl", DbDataType::Binary)
("dec_", DbDataType::Other)
("dt", DbDataType::Other)
("dtm", DbDataType::Other)
("tm", DbDataType::Other)
("js", DbDataType::Str)
("nothing", DbDataType::Int32)
row
DbValue::Int32(1)
DbValue::Int8(-8)
DbValue::Uint8(200)
DbValue::Int16(-300)
DbValue::Int32(70000)
DbValue::Uint64(18446744073709551615)
DbValue::Floating32(1.5)
DbValue::Floating64(-2.25)
DbValue::Str("varchar")
DbValue::Str("text")
DbValue::Binary([0, 255])
DbValue::Binary([1, 2])
DbValue::Str("12.50")
DbValue::Str("2024-02-29")
DbValue::Str("1999-12-31 23:59:58.000120")
DbValue::Str("-26:03:04")
DbValue::Str("{\"a\": 1}")
DbValue::DbNull
row
DbValue::Int32(2)
DbValue::Int8(-1)
DbValue::Uint8(255)
DbValue::Int16(-32768)
DbValue::Int32(42)
DbValue::Uint64(7)
DbValue::Floating32(0.25)
DbValue::Floating64(1e100)
DbValue::Str("from params")
DbValue::Str("ünïcode")
DbValue::Binary([9, 8])
DbValue::Binary([])
DbValue::Str("-0.50")
DbValue::Str("2000-01-01")
DbValue::Str("2000-01-01 00:00:00")
DbValue::Str("12:00:00")
DbValue::Str("[true]")
DbValue::DbNull
"#;

fn assert_uses_mysql(base: &str) -> Result<()> {
    assert_eq!(get(base, "/mysql/types")?, (200, MYSQL_TYPES.to_owned()));
    assert_eq!(
        get(base, "/mysql/error")?.1,
        "Some(Error::QueryFailed(\"Server error: `ERROR 1146 (42S02): Table 'spin.no_such_table' doesn't exist'\"))\n"
    );
    assert_eq!(
        get(base, "/mysql/denied")?.1,
        "Some(Error::ConnectionFailed(\"address mysql://x@db.invalid/x is not permitted\"))\n"
    );
    Ok(())
}

#[test]
fn a_spin_app_uses_mysql() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mysql = MariaDb::start()?;
    let granted = [format!("mysql://127.0.0.1:{}", mysql.port())];
    // `preferred` asks for TLS, and a server without it is used in plain TCP.
    let app = app(
        tmp.path(),
        "",
        &format!("{}?ssl-mode=preferred", mysql.url()),
        &granted,
    )?;
    let up = Up::start(
        Command::new(wasmcell()).args(["up", "-f"]).arg(&app),
        "/nothing",
    )?;
    assert_uses_mysql(&up.base)?;
    let stderr = String::from_utf8(up.stop()?.stderr)?;
    assert!(
        stderr.contains("add \"mysql://db.invalid:3306\" to allowed_outbound_hosts"),
        "{stderr}"
    );

    let archive = build_spin_image(&app, "example.com/mysql:1", tmp.path())?;
    let containerd = Containerd::start()?;
    containerd.import(&archive)?;
    let timeout = ["WASMCELL_HTTP_TIMEOUT=3"];
    let base = start_spin_detached(&containerd, "example.com/mysql:1", "my", &timeout)?;
    wait_http(&format!("{base}/nothing"))?;
    assert_uses_mysql(&base)?;
    // A statement still running when the request's deadline passes is killed at the server.
    assert_eq!(get(&base, "/mysql/sleep")?.0, 504);
    wasmcell_e2e::wait_for("the runaway statement to be killed", || {
        let active = "SELECT count(*) FROM information_schema.processlist \
                      WHERE info LIKE 'SELECT BENCHMARK%'";
        Ok(mysql.sql(active)?.stdout.trim() == "0")
    })?;
    assert_uses_mysql(&base)?;
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "my"])?
        .success()?;
    containerd.wait_status("my", "STOPPED")?;
    Ok(())
}

/// MySQL over TLS, as Spin connects: with `ssl-mode=required`, an account the server admits
/// over TLS only is reached when the node trusts the server's CA (`SSL_CERT_FILE`), under
/// `wasmcell up` and in the spin shim's sandbox; a certificate the node does not trust is
/// refused, naming why; and that account is refused in plain TCP, so the first connection was
/// encrypted.
#[test]
fn a_spin_app_speaks_tls_to_mysql_and_checks_the_certificate() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mysql = MariaDb::start_tls()?;
    let ca = mysql.ca().expect("a TLS server's CA").to_owned();
    let address = |mode: &str| {
        format!(
            "mysql://{}:{}@127.0.0.1:{}/{}?ssl-mode={mode}",
            MariaDb::TLS_USER,
            MariaDb::PASSWORD,
            mysql.port(),
            MariaDb::DATABASE
        )
    };
    let granted = [format!("mysql://127.0.0.1:{}", mysql.port())];
    // `app` writes DIR/db: each call below remakes it.
    let required = app(tmp.path(), "", &address("required"), &granted)?;
    let trusted = Up::start(
        Command::new(wasmcell())
            .env("SSL_CERT_FILE", &ca)
            .args(["up", "-f"])
            .arg(&required),
        "/nothing",
    )?;
    assert_eq!(
        get(&trusted.base, "/mysql/types")?,
        (200, MYSQL_TYPES.to_owned())
    );
    trusted.stop()?;

    let untrusted = Up::start(
        Command::new(wasmcell()).args(["up", "-f"]).arg(&required),
        "/nothing",
    )?;
    let (status, refused) = get(&untrusted.base, "/mysql/types")?;
    assert_eq!(status, 500, "{refused}");
    assert!(
        refused.contains("ConnectionFailed") && refused.contains("UnknownIssuer"),
        "{refused}"
    );
    untrusted.stop()?;

    let plain = app(tmp.path(), "", &address("disabled"), &granted)?;
    let up = Up::start(
        Command::new(wasmcell()).args(["up", "-f"]).arg(&plain),
        "/nothing",
    )?;
    let (status, refused) = get(&up.base, "/mysql/types")?;
    assert_eq!(status, 500, "{refused}");
    assert!(refused.contains("Access denied"), "{refused}");
    up.stop()?;

    // In the shim's sandbox, the node's CA bundle (containerd's SSL_CERT_FILE) is trusted too.
    let tls = app(tmp.path(), "", &address("required"), &granted)?;
    let archive = build_spin_image(&tls, "example.com/mysql-tls:1", tmp.path())?;
    let ca = ca.to_str().expect("a UTF-8 path");
    let containerd = Containerd::start_with_env(&[("SSL_CERT_FILE", ca)])?;
    containerd.import(&archive)?;
    let base = start_spin_detached(&containerd, "example.com/mysql-tls:1", "tls", &[])?;
    wait_http(&format!("{base}/nothing"))?;
    assert_eq!(get(&base, "/mysql/types")?, (200, MYSQL_TYPES.to_owned()));
    containerd
        .ctr(&["task", "kill", "-s", "SIGKILL", "tls"])?
        .success()?;
    containerd.wait_status("tls", "STOPPED")?;
    Ok(())
}
