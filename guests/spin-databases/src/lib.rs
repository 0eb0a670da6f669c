//! A Spin HTTP component that uses PostgreSQL through all three of Spin's interfaces, at the
//! address in its `PG_ADDRESS` environment variable, and MySQL at `MYSQL_ADDRESS`. Each route
//! answers with what it read, a value a line in the SDK's `Debug` form, so the tests compare
//! exactly what a guest sees:
//!
//! - `GET /v4/types`: a temporary table of every type 4.0.0 has a case for, one row written
//!   with SQL literals and one with parameters, read back (and the column types).
//! - `GET /v4/session`: `pg_backend_pid()` twice on one handle (`same PID` or not), then the PID.
//! - `GET /v4/error`: a query of a table that does not exist: the error.
//! - `GET /v4/sleep`: a query that sleeps ten minutes (the tests' request deadline ends it).
//! - `POST /v4/abandon`: inserts into `visits` inside a transaction it never commits.
//! - `POST /v4/visit`: inserts into `visits`; `GET /v4/visits`: how many there are.
//! - `GET /v3/types` and `GET /v2/types`: dates, a UUID and text through the older interfaces
//!   (what they cannot hold comes back `Unsupported`); `GET /v2/unsigned`: an unsigned
//!   parameter, which PostgreSQL has no type for.
//! - `GET /denied`: opens `host=db.invalid`: the error.
//! - `GET /mysql/types`: a temporary table of MySQL's types, one row written with literals and
//!   one with parameters, read back; `GET /mysql/error`: a query of a table that does not
//!   exist; `GET /mysql/denied`: opens `mysql://db.invalid/x`; `GET /mysql/sleep`: a query
//!   that computes for hours.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::{mysql, pg, pg3, pg4};

fn address() -> String {
    std::env::var("PG_ADDRESS").unwrap_or_default()
}

fn lines<T: std::fmt::Debug>(values: impl IntoIterator<Item = T>) -> String {
    values.into_iter().map(|v| format!("{v:?}\n")).collect()
}

#[http_component]
fn handle(request: Request) -> Response {
    let answer: Result<String, String> = match request.path() {
        "/v4/types" => v4_types().map_err(|e| format!("{e:?}")),
        "/v4/session" => v4_session().map_err(|e| format!("{e:?}")),
        "/v4/error" => v4_error().map_err(|e| format!("{e:?}")),
        "/v4/sleep" => pg4::Connection::open(&address())
            .and_then(|db| db.query("SELECT pg_sleep(600)", &[]))
            .map(|_| "slept\n".to_owned())
            .map_err(|e| format!("{e:?}")),
        "/v4/abandon" => v4_abandon().map_err(|e| format!("{e:?}")),
        "/v4/visit" => v4_visit().map_err(|e| format!("{e:?}")),
        "/v4/visits" => v4_visits().map_err(|e| format!("{e:?}")),
        "/v3/types" => v3_types().map_err(|e| format!("{e:?}")),
        "/v2/types" => v2_types().map_err(|e| format!("{e:?}")),
        "/v2/unsigned" => v2_unsigned().map_err(|e| format!("{e:?}")),
        "/mysql/types" => mysql_types().map_err(|e| format!("{e:?}")),
        "/mysql/error" => mysql_error().map_err(|e| format!("{e:?}")),
        "/mysql/sleep" => mysql::Connection::open(&mysql_address())
            .and_then(|db| db.query("SELECT BENCHMARK(100000000000, MD5('x'))", &[]))
            .map(|_| "slept\n".to_owned())
            .map_err(|e| format!("{e:?}")),
        "/mysql/denied" => Ok(format!(
            "{:?}\n",
            mysql::Connection::open("mysql://x@db.invalid/x").err()
        )),
        "/denied" => Ok(format!("{:?}\n", pg4::Connection::open("host=db.invalid user=x").err())),
        _ => return Response::new(404, "no such route\n"),
    };
    match answer {
        Ok(body) => Response::new(200, body),
        Err(error) => Response::new(500, format!("{error}\n")),
    }
    .into_response()
}

fn v4_types() -> Result<String, pg4::PgError> {
    use pg4::{Interval, ParameterValue as P, RangeBoundKind::*};
    let db = pg4::Connection::open(&address())?;
    db.execute(
        "CREATE TEMPORARY TABLE every_type (n int2, b bool, i2 int2, i4 int4, i8 int8, \
         f4 float4, f8 float8, t text, vc varchar(10), bin bytea, d date, tm time, \
         ts timestamp, tz timestamptz, u uuid, j jsonb, dec numeric, r4 int4range, \
         r8 int8range, rn numrange, a4 int4[], a8 int8[], an numeric[], at text[], \
         iv interval, other inet, nothing text)",
        &[],
    )?;
    db.execute(
        "INSERT INTO every_type VALUES (1, true, -2, 4, 8000000000, 1.5, 2.25, 'text', \
         'varchar', '\\x0001ff', '2525-12-25', '04:05:06.789', '1989-11-24 01:02:03', \
         '2001-02-03 04:05:06+02', '12345678-1234-1234-1234-123456789abc', \
         '{\"s\": \"hello\", \"n\": 123}', 123456789.123456789, '[1,10)', '(,5]', \
         '[1.5,2.5]', '{1,NULL,3}', '{8000000000}', '{1.25,NULL}', '{a,NULL,\"b c\"}', \
         '1 year 2 days 00:00:03', '10.0.0.1', NULL)",
        &[],
    )?;
    let written = db.execute(
        "INSERT INTO every_type VALUES (2, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, NULL, $25)",
        &[
            P::Boolean(false),
            P::Int16(-3),
            P::Int32(5),
            P::Int64(-9000000000),
            P::Floating32(0.5),
            P::Floating64(-1.125),
            P::Str("from params".into()),
            P::Str("vc".into()),
            P::Binary(vec![9, 8, 7]),
            P::Date((2024, 2, 29)),
            P::Time((14, 15, 16, 17000)),
            P::Datetime((1999, 12, 31, 23, 59, 58, 123456000)),
            P::Timestamp(1000000000),
            P::Uuid("fedcba98-fedc-fedc-fedc-fedcba987654".into()),
            P::Jsonb(br#"{"world": [1, 2]}"#.to_vec()),
            P::Decimal("-0.001".into()),
            P::RangeInt32((Some((2, Inclusive)), Some((4, Inclusive)))),
            P::RangeInt64((None, Some((7, Exclusive)))),
            P::RangeDecimal((Some(("0.5".into(), Exclusive)), None)),
            P::ArrayInt32(vec![Some(7), None]),
            P::ArrayInt64(vec![None]),
            P::ArrayDecimal(vec![Some("3.14".into())]),
            P::ArrayStr(vec![Some("x".into()), None]),
            P::Interval(Interval { micros: 1_500_000, days: 3, months: 14 }),
            P::DbNull,
        ],
    )?;
    let rows = db.query("SELECT * FROM every_type ORDER BY n", &[])?;
    let mut out = format!("written {written}\n");
    out += &lines(rows.columns.iter().map(|c| (&c.name, &c.data_type)));
    for row in &rows.rows {
        out += "row\n";
        out += &lines(row);
    }
    Ok(out)
}

fn pid(db: &pg4::Connection) -> Result<pg4::DbValue, pg4::PgError> {
    Ok(db.query("SELECT pg_backend_pid()", &[])?.rows[0][0].clone())
}

fn v4_session() -> Result<String, pg4::PgError> {
    let db = pg4::Connection::open(&address())?;
    let (first, second) = (pid(&db)?, pid(&db)?);
    let (first, second) = (format!("{first:?}"), format!("{second:?}"));
    let same = if first == second { "same PID" } else { "different PIDs" };
    Ok(format!("{same}\n{first}\n"))
}

fn v4_error() -> Result<String, pg4::PgError> {
    let db = pg4::Connection::open(&address())?;
    Ok(format!("{:?}\n", db.query("SELECT * FROM no_such_table", &[]).err()))
}

fn visits_table(db: &pg4::Connection) -> Result<(), pg4::PgError> {
    db.execute("CREATE TABLE IF NOT EXISTS visits (at timestamptz DEFAULT now())", &[])?;
    Ok(())
}

fn v4_abandon() -> Result<String, pg4::PgError> {
    let db = pg4::Connection::open(&address())?;
    visits_table(&db)?;
    db.execute("BEGIN", &[])?;
    db.execute("INSERT INTO visits DEFAULT VALUES", &[])?;
    Ok("left uncommitted\n".into())
}

fn v4_visit() -> Result<String, pg4::PgError> {
    let db = pg4::Connection::open(&address())?;
    visits_table(&db)?;
    Ok(format!("{}\n", db.execute("INSERT INTO visits DEFAULT VALUES", &[])?))
}

fn v4_visits() -> Result<String, pg4::PgError> {
    let db = pg4::Connection::open(&address())?;
    visits_table(&db)?;
    let rows = db.query("SELECT count(*) FROM visits", &[])?;
    Ok(lines(&rows.rows[0]))
}

fn v3_types() -> Result<String, pg3::PgError> {
    use pg3::ParameterValue as P;
    let db = pg3::Connection::open(&address())?;
    let rows = db.query(
        "SELECT $1::date, $2::time, $3::timestamp, $4::timestamptz, \
         '12345678-1234-1234-1234-123456789abc'::uuid, $5::text",
        &[
            P::Date((2525, 12, 25)),
            P::Time((4, 5, 6, 789000000)),
            P::Datetime((1989, 11, 24, 1, 2, 3, 4000)),
            P::Timestamp(0),
            P::DbNull,
        ],
    )?;
    let mut out = lines(rows.columns.iter().map(|c| &c.data_type));
    out += &lines(&rows.rows[0]);
    Ok(out)
}

fn v2_types() -> Result<String, pg::PgError> {
    use pg::ParameterValue as P;
    let db = pg::Connection::open(&address())?;
    let rows = db.query(
        "SELECT $1::int4 + 1, $2::text, current_date, $3::bytea",
        &[P::Int32(41), P::Str("two".into()), P::Binary(vec![1, 2])],
    )?;
    let mut out = lines(rows.columns.iter().map(|c| &c.data_type));
    out += &lines(&rows.rows[0]);
    Ok(out)
}

fn v2_unsigned() -> Result<String, pg::PgError> {
    let db = pg::Connection::open(&address())?;
    Ok(format!("{:?}\n", db.query("SELECT $1", &[pg::ParameterValue::Uint8(1)]).err()))
}

fn mysql_address() -> String {
    std::env::var("MYSQL_ADDRESS").unwrap_or_default()
}

fn mysql_types() -> Result<String, mysql::MysqlError> {
    use mysql::ParameterValue as P;
    let db = mysql::Connection::open(&mysql_address())?;
    db.execute(
        "CREATE TEMPORARY TABLE every_type (n int, t tinyint, tu tinyint unsigned, s smallint, \
         i int, bu bigint unsigned, f float, d double, vc varchar(20), tx text, vb varbinary(8), \
         bl blob, dec_ decimal(10,2), dt date, dtm datetime(6), tm time, js json, nothing int)",
        &[],
    )?;
    db.execute(
        "INSERT INTO every_type VALUES (1, -8, 200, -300, 70000, 18446744073709551615, 1.5, \
         -2.25, 'varchar', 'text', x'00ff', x'0102', 12.50, '2024-02-29', \
         '1999-12-31 23:59:58.000120', '-26:03:04', '{\"a\": 1}', NULL)",
        &[],
    )?;
    db.execute(
        "INSERT INTO every_type VALUES (2, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            P::Int8(-1),
            P::Uint8(255),
            P::Int16(-32768),
            P::Int32(42),
            P::Uint64(7),
            P::Floating32(0.25),
            P::Floating64(1e100),
            P::Str("from params".into()),
            P::Str("ünïcode".into()),
            P::Binary(vec![9, 8]),
            P::Binary(vec![]),
            P::Str("-0.5".into()),
            P::Str("2000-01-01".into()),
            P::Str("2000-01-01 00:00:00".into()),
            P::Str("12:00:00".into()),
            P::Str("[true]".into()),
            P::DbNull,
        ],
    )?;
    let rows = db.query("SELECT * FROM every_type WHERE n > ? ORDER BY n", &[P::Int32(0)])?;
    let mut out = lines(rows.columns.iter().map(|c| (&c.name, &c.data_type)));
    for row in &rows.rows {
        out += "row\n";
        out += &lines(row);
    }
    Ok(out)
}

fn mysql_error() -> Result<String, mysql::MysqlError> {
    let db = mysql::Connection::open(&mysql_address())?;
    Ok(format!("{:?}\n", db.query("SELECT * FROM no_such_table", &[]).err()))
}
