//! A Spin 4 HTTP component written with Spin's Rust SDK 7 (`#[http_service]`, an async handler
//! exported as `wasi:http/handler@0.3.0`), calling Spin's async `spin:*@3` interfaces,
//! `spin:sqlite@3.1.0` (its async functions) and `spin:postgres@4.2.0`.
//!
//! - `GET /hello`: 200 "<greeting>, Spin 4!\n" (variable `greeting`).
//! - `PUT /kv/KEY` (body): 201; `GET /kv/KEY`: 200 the value, or 404; `GET /kv-keys`: 200 the
//!   keys sorted, joined by ",", then "\n" (the default key-value store).
//! - `GET /sql`: the default SQLite database: create a table if missing, insert a row, count;
//!   200 "rows: N\n".
//! - `GET /pg`: PostgreSQL at variable `pg_address`: `SELECT $1::text || ' from Spin 4',
//!   $2::int4 + 2` with "hello" and 40; 200 "hello from Spin 4 42\n".
//! - `GET /pg-tls`: the same query on a connection from the 4.1/4.2 `connection-builder`
//!   (`set-ca-root` with the PEM in variable `pg_ca` unless it is empty, then `build-async`).
//! - `GET /redis`: Redis at variable `redis_address`: set "spin4", get it, incr "spin4-count";
//!   200 "<value> <count>\n".
//! - `GET /mysql`: MySQL at variable `mysql_address`: create table spin4 if missing, insert
//!   "hello" (a parameter), `SELECT COUNT(*), MAX(word)`; 200 "rows: N word: W\n".
//! - `POST /mqtt?topic=T`: MQTT at variable `mqtt_address`: publish the body at-least-once;
//!   200 "published\n".
//! - `GET /hoard?n=N` (N default 100, at most 1000): a guest-side attack on the host's memory:
//!   open the default SQLite database, then up to N times run `SELECT zeroblob(8000000)` and
//!   keep each result (the unread row stream and the outcome future) alive without reading a
//!   row, stopping at the first call that fails; 200 "held K\n", then the first error's Debug
//!   form and "\n" if one failed. Everything is dropped at the end.
//! - `GET /outbound?url=URL`: GET URL through `wasi:http/client@0.3.0`; 200 "<status>\n<body>".
//! - anything else: 404 "not found\n".
//!
//! A failing backend (or outbound request) gives 502 with the error's Debug form and "\n".

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{Method, Request, StatusCode};
use spin_sdk::{http_service, key_value, mqtt, mysql, pg, redis, sqlite, variables};

type Reply = (StatusCode, String);

fn reply(status: u16, body: impl Into<String>) -> Reply {
    (StatusCode::from_u16(status).expect("a valid status"), body.into())
}

fn bad_gateway(error: impl std::fmt::Debug) -> Reply {
    reply(502, format!("{error:?}\n"))
}

#[http_service]
async fn handle(request: Request) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    match (method, path.as_str()) {
        (Method::GET, "/hello") => hello().await,
        (Method::PUT, p) if p.starts_with("/kv/") => {
            let key = p["/kv/".len()..].to_string();
            match request.into_body().bytes().await {
                Ok(body) => kv_put(&key, &body).await,
                Err(e) => reply(400, format!("{e:?}\n")),
            }
        }
        (Method::GET, p) if p.starts_with("/kv/") => kv_get(&p["/kv/".len()..]).await,
        (Method::GET, "/kv-keys") => kv_keys().await,
        (Method::GET, "/sql") => sql().await,
        (Method::GET, "/pg") => postgres(false).await,
        (Method::GET, "/pg-tls") => postgres(true).await,
        (Method::GET, "/redis") => redis_route().await,
        (Method::GET, "/mysql") => mysql_route().await,
        (Method::POST, "/mqtt") => match query_param(&query, "topic") {
            Some(topic) => match request.into_body().bytes().await {
                Ok(body) => mqtt_route(&topic, body.to_vec()).await,
                Err(e) => reply(400, format!("{e:?}\n")),
            },
            None => reply(400, "usage: POST /mqtt?topic=T\n"),
        },
        (Method::GET, "/hoard") => {
            let n = query_param(&query, "n")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(100)
                .min(1000);
            hoard(n).await
        }
        (Method::GET, "/outbound") => match query_param(&query, "url") {
            Some(url) => outbound(&url).await,
            None => reply(400, "usage: /outbound?url=URL\n"),
        },
        _ => reply(404, "not found\n"),
    }
}

async fn hello() -> Reply {
    match variables::get("greeting").await {
        Ok(greeting) => reply(200, format!("{greeting}, Spin 4!\n")),
        Err(e) => reply(500, format!("{e:?}\n")),
    }
}

async fn kv_put(key: &str, value: &[u8]) -> Reply {
    let result = async {
        let store = key_value::Store::open_default().await?;
        store.set(key, value).await
    }
    .await;
    match result {
        Ok(()) => reply(201, ""),
        Err(e) => reply(500, format!("{e:?}\n")),
    }
}

async fn kv_get(key: &str) -> Reply {
    let result = async {
        let store = key_value::Store::open_default().await?;
        store.get(key).await
    }
    .await;
    match result {
        Ok(Some(value)) => reply(200, String::from_utf8_lossy(&value)),
        Ok(None) => reply(404, "no such key\n"),
        Err(e) => reply(500, format!("{e:?}\n")),
    }
}

async fn kv_keys() -> Reply {
    let result = async {
        let store = key_value::Store::open_default().await?;
        store.get_keys().await.collect().await
    }
    .await;
    match result {
        Ok(mut keys) => {
            keys.sort();
            reply(200, format!("{}\n", keys.join(",")))
        }
        Err(e) => reply(500, format!("{e:?}\n")),
    }
}

async fn sql() -> Reply {
    let result = async {
        let db = sqlite::Connection::open_default().await?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS spin4 (id INTEGER PRIMARY KEY, word TEXT)",
            [],
        )
        .await?
        .result()
        .await?;
        db.execute(
            "INSERT INTO spin4 (word) VALUES (?)",
            [sqlite::Value::text("hello")],
        )
        .await?
        .result()
        .await?;
        let rows = db
            .execute("SELECT COUNT(*) FROM spin4", [])
            .await?
            .collect()
            .await?;
        Ok::<_, sqlite::Error>(rows.first().and_then(|row| row.get::<i64>(0)))
    }
    .await;
    match result {
        Ok(Some(count)) => reply(200, format!("rows: {count}\n")),
        Ok(None) => reply(500, "no count\n"),
        Err(e) => reply(500, format!("{e:?}\n")),
    }
}

/// Runs `SELECT zeroblob(8000000)` up to `n` times, holding every result unread.
///
/// `sqlite::Connection::execute` is a thin wrapper over `spin:sqlite@3.1.0`
/// `connection.execute-async`: it awaits only the call itself and wraps the returned
/// `(columns, stream<row-result>, future<result<_, error>>)` in a `QueryResult` without reading
/// the stream, so each held `QueryResult` leaves its 8 MB row on the host's side.
async fn hoard(n: usize) -> Reply {
    let db = match sqlite::Connection::open_default().await {
        Ok(db) => db,
        Err(e) => return reply(500, format!("{e:?}\n")),
    };
    let mut held = Vec::new();
    let mut failure = None;
    for _ in 0..n {
        match db.execute("SELECT zeroblob(8000000)", []).await {
            Ok(result) => held.push(result.into_inner()),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut body = format!("held {}\n", held.len());
    if let Some(e) = failure {
        body.push_str(&format!("{e:?}\n"));
    }
    drop(held);
    drop(db);
    reply(200, body)
}

async fn postgres(builder: bool) -> Reply {
    let result = async {
        let address = variables::get("pg_address")
            .await
            .map_err(|e| pg::Error::PgError(pg::PgError::Other(format!("pg_address: {e:?}"))))?;
        let db = if builder {
            let ca = variables::get("pg_ca")
                .await
                .map_err(|e| pg::Error::PgError(pg::PgError::Other(format!("pg_ca: {e:?}"))))?;
            // open_with_options: ConnectionBuilder::new(address), set_ca_root(pem) when a
            // certificate is given, then build_async.
            let options = pg::OpenOptions {
                ca_root: (!ca.is_empty()).then(|| pg::Certificate::Text(ca)),
            };
            pg::Connection::open_with_options(&address, options).await?
        } else {
            pg::Connection::open(address).await?
        };
        let rows = db
            .query(
                "SELECT $1::text || ' from Spin 4', $2::int4 + 2",
                vec![
                    pg::ParameterValue::Str("hello".into()),
                    pg::ParameterValue::Int32(40),
                ],
            )
            .await?
            .collect()
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| pg::Error::Decode("no rows".into()))?;
        let text = <String as pg::Decode>::decode(&row[0])?;
        let number = <i32 as pg::Decode>::decode(&row[1])?;
        Ok::<_, pg::Error>(format!("{text} {number}\n"))
    }
    .await;
    match result {
        Ok(body) => reply(200, body),
        Err(e) => bad_gateway(e),
    }
}

async fn redis_route() -> Reply {
    let address = match variables::get("redis_address").await {
        Ok(address) => address,
        Err(e) => return bad_gateway(e),
    };
    let result = async {
        let conn = redis::Connection::open(address).await?;
        conn.set("spin4", b"from Spin 4").await?;
        let value = conn.get("spin4").await?.unwrap_or_default();
        let count = conn.incr("spin4-count").await?;
        Ok::<_, redis::Error>(format!("{} {count}\n", String::from_utf8_lossy(&value)))
    }
    .await;
    match result {
        Ok(body) => reply(200, body),
        Err(e) => bad_gateway(e),
    }
}

fn mysql_int(value: &mysql::DbValue) -> Option<i64> {
    use mysql::DbValue::*;
    match value {
        Int8(n) => Some((*n).into()),
        Int16(n) => Some((*n).into()),
        Int32(n) => Some((*n).into()),
        Int64(n) => Some(*n),
        Uint8(n) => Some((*n).into()),
        Uint16(n) => Some((*n).into()),
        Uint32(n) => Some((*n).into()),
        Uint64(n) => i64::try_from(*n).ok(),
        Str(s) => s.parse().ok(),
        _ => None,
    }
}

fn mysql_text(value: &mysql::DbValue) -> String {
    match value {
        mysql::DbValue::Str(s) => s.clone(),
        mysql::DbValue::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

async fn mysql_route() -> Reply {
    let address = match variables::get("mysql_address").await {
        Ok(address) => address,
        Err(e) => return bad_gateway(e),
    };
    let result = async {
        let db = mysql::Connection::open(address).await?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS spin4 (id INT AUTO_INCREMENT PRIMARY KEY, word VARCHAR(32))",
            vec![],
        )
        .await?;
        db.execute(
            "INSERT INTO spin4 (word) VALUES (?)",
            vec![mysql::ParameterValue::Str("hello".into())],
        )
        .await?;
        let rows = db
            .query("SELECT COUNT(*), MAX(word) FROM spin4", vec![])
            .await?
            .collect()
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| mysql::Error::Decode("no rows".into()))?;
        let count = mysql_int(&row[0])
            .ok_or_else(|| mysql::Error::Decode(format!("count: {:?}", row[0])))?;
        Ok::<_, mysql::Error>(format!("rows: {count} word: {}\n", mysql_text(&row[1])))
    }
    .await;
    match result {
        Ok(body) => reply(200, body),
        Err(e) => bad_gateway(e),
    }
}

async fn mqtt_route(topic: &str, payload: Vec<u8>) -> Reply {
    let address = match variables::get("mqtt_address").await {
        Ok(address) => address,
        Err(e) => return bad_gateway(e),
    };
    let result = async {
        let conn = mqtt::Connection::open(address, "", "", 30).await?;
        conn.publish(topic, payload, mqtt::Qos::AtLeastOnce).await
    }
    .await;
    match result {
        Ok(()) => reply(200, "published\n"),
        Err(e) => bad_gateway(e),
    }
}

async fn outbound(url: &str) -> Reply {
    let response = match spin_sdk::http::get(url).await {
        Ok(response) => response,
        Err(e) => return bad_gateway(e),
    };
    let status = response.status().as_u16();
    match response.into_body().bytes().await {
        Ok(body) => reply(200, format!("{status}\n{}", String::from_utf8_lossy(&body))),
        Err(e) => bad_gateway(e),
    }
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
