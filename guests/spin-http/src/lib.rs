//! A Spin HTTP component written with Spin's own SDK, as Spin users write them. One binary
//! plays several components of the test apps (`guests/spin-apps`), chosen by its `ROLE`
//! environment variable (the manifest's `environment`):
//!
//! - `web` (the default): `GET /hello` greets with the `greeting` variable and echoes Spin's
//!   request headers; `GET|PUT|DELETE /kv/KEY` use the `default` key-value store; `POST /orders`
//!   adds the body to the `default` SQLite database and `GET /orders` lists them; `POST /sql`
//!   runs the body as one statement there, as a hostile component would (its rows, one a line,
//!   or 500 with Spin's error);
//!   `GET /fetch?URL` relays an outbound request (status and body, or 502 with the error);
//!   `POST /mqtt?ADDRESS` publishes the body to topic `telemetry` of the MQTT broker at
//!   ADDRESS (at least once): 200 `published`, or 502 with Spin's error;
//!   `GET /handle?URL` calls `wasi:http/outgoing-handler.handle` itself, as Spin's
//!   conformance suite does: 500 with `handle`'s error (`ErrorCode::HttpRequestDenied`), or
//!   200 `handle accepted it` when it returned a response to come;
//!   `GET /private` calls the private component through `http://private.spin.internal`;
//!   `GET /files/NAME` reads `/NAME` from the files it was given; `GET /env` prints its
//!   environment.
//!   Spin 3's interfaces, as the SDK's newer modules use them: `POST|GET /v3/orders` with
//!   `sqlite3` (a POST answers with the new row's id and the rows changed);
//!   `GET|PUT /wasi-kv/BUCKET/KEY` with `wasi:keyvalue` (403 for a bucket not granted);
//!   `POST /wasi-kv/BUCKET/KEY/increment?DELTA`, `PUT /wasi-kv/BUCKET/KEY/swap` (a
//!   compare-and-swap against the value it read), `GET /wasi-kv/BUCKET/many?K1,K2`;
//!   `GET /config/NAME` and `GET /config` with `wasi:config`.
//!   Raw `wasi:sockets`, as a guest that ignores Spin's outbound interfaces tries them:
//!   `GET /tcp?ADDR` connects and writes a line, `GET /udp?ADDR` sends a datagram,
//!   `GET /listen?ADDR` listens, `GET /lookup?NAME` resolves a name: 200 with what happened,
//!   or 502 with the error.
//! - `admin`: answers every request with the path below its route.
//!
//! Every role writes `ROLE out: PATH` to stdout and `ROLE err: PATH` to stderr per request.
//! - `private`: answers with a secret only the app itself can ask for.

use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::sqlite::{Connection, Value};

#[http_component]
async fn handle(request: Request) -> anyhow::Result<Response> {
    let header = |name: &str| {
        request
            .header(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let role = std::env::var("ROLE").unwrap_or_else(|_| "web".to_owned());
    // Each request is logged on stdout and stderr, by role, for the tests of output.
    println!("{role} out: {}", request.path());
    eprintln!("{role} err: {}", request.path());
    match role.as_str() {
        "admin" => Ok(text(200, format!("admin: {}\n", header("spin-path-info")))),
        "private" => Ok(text(200, "private: the secret is 42\n".to_owned())),
        _ => web(&request, header).await,
    }
}

async fn web(request: &Request, header: impl Fn(&str) -> String) -> anyhow::Result<Response> {
    let path = request.path().to_owned();
    let method = request.method().clone();
    if path == "/hello" {
        let greeting = spin_sdk::variables::get("greeting")?;
        let mut body = format!("{greeting}, Spin!\n");
        for name in [
            "spin-full-url",
            "spin-path-info",
            "spin-matched-route",
            "spin-raw-component-route",
            "spin-component-route",
            "spin-base-path",
            "spin-client-addr",
        ] {
            body.push_str(&format!("{name}: {}\n", header(name)));
        }
        return Ok(text(200, body));
    }
    if let Some(key) = path.strip_prefix("/kv/") {
        let store = Store::open_default()?;
        return Ok(match method {
            Method::Get => match store.get(key)? {
                Some(value) => Response::new(200, value),
                None => text(404, format!("no key {key}\n")),
            },
            Method::Put | Method::Post => {
                store.set(key, request.body())?;
                text(
                    201,
                    format!("stored {key} ({} bytes)\n", request.body().len()),
                )
            }
            Method::Delete => {
                store.delete(key)?;
                text(200, format!("deleted {key}\n"))
            }
            _ => text(405, "GET, PUT or DELETE\n".to_owned()),
        });
    }
    if path == "/orders" {
        let db = Connection::open_default()?;
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
            &[],
        )?;
        if method == Method::Post {
            let item = String::from_utf8_lossy(request.body()).into_owned();
            db.execute("INSERT INTO orders (item) VALUES (?)", &[Value::Text(item)])?;
        }
        let rows = db.execute("SELECT id, item FROM orders ORDER BY id", &[])?;
        let mut body = String::new();
        for row in &rows.rows {
            if let [Value::Integer(id), Value::Text(item)] = row.values.as_slice() {
                body.push_str(&format!("{id} {item}\n"));
            }
        }
        return Ok(text(200, body));
    }
    if path == "/sql" && method == Method::Post {
        return Ok(sql(&String::from_utf8_lossy(request.body())));
    }
    if path == "/v3/orders" {
        return orders_v3(request, &method);
    }
    if let Some(rest) = path.strip_prefix("/wasi-kv/") {
        return Ok(wasi_kv(request, &method, rest).unwrap_or_else(|e| e));
    }
    if let Some(rest) = path.strip_prefix("/config") {
        use spin_sdk::wit::wasi::config::store as config;
        return Ok(match rest.strip_prefix('/') {
            Some(name) => match config::get(name) {
                Ok(Some(value)) => text(200, format!("{value}\n")),
                Ok(None) => text(404, format!("no config {name}\n")),
                Err(error) => text(500, format!("{error:?}\n")),
            },
            None => match config::get_all() {
                Ok(all) => text(200, all.iter().map(|(k, v)| format!("{k}={v}\n")).collect()),
                Err(error) => text(500, format!("{error:?}\n")),
            },
        });
    }
    if path == "/fetch" {
        let url = request.query().to_owned();
        return Ok(relay(Request::get(url).build()).await);
    }
    if path == "/mqtt" {
        let published = spin_sdk::mqtt::Connection::open(request.query(), "user", "password", 30)
            .and_then(|broker| {
                broker.publish("telemetry", request.body(), spin_sdk::mqtt::Qos::AtLeastOnce)
            });
        return Ok(match published {
            Ok(()) => text(200, "published\n".to_owned()),
            Err(error) => text(502, format!("{error:?}\n")),
        });
    }
    if path == "/handle" {
        return Ok(raw_handle(request.query()));
    }
    if path == "/private" {
        return Ok(relay(Request::get("http://private.spin.internal/secret").build()).await);
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return Ok(match std::fs::read(format!("/{name}")) {
            Ok(bytes) => Response::new(200, bytes),
            Err(error) => text(404, format!("/{name}: {error}\n")),
        });
    }
    if let Some(answer) = sockets(&path, request.query()) {
        return Ok(match answer {
            Ok(done) => text(200, format!("{done}\n")),
            Err(error) => text(502, format!("{error}\n")),
        });
    }
    if path == "/env" {
        let env: String = std::env::vars()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        return Ok(text(200, env));
    }
    Ok(text(404, format!("no such page {path}\n")))
}

/// `outgoing-handler.handle` of a GET to `url`, as a guest that uses `wasi:http` directly sees
/// it: a denial is `handle`'s own error, not the response's.
fn raw_handle(url: &str) -> Response {
    use spin_sdk::wit::wasi::http0_2_0::{outgoing_handler, types};
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = types::OutgoingRequest::new(types::Fields::new());
    let scheme = match scheme {
        "https" => types::Scheme::Https,
        _ => types::Scheme::Http,
    };
    let set = request
        .set_scheme(Some(&scheme))
        .and(request.set_authority(Some(authority)))
        .and(request.set_path_with_query(Some(if path.is_empty() { "/" } else { path })));
    if set.is_err() {
        return text(400, format!("cannot make a request to {url}\n"));
    }
    match outgoing_handler::handle(request, None) {
        Ok(_) => text(200, "handle accepted it\n".to_owned()),
        Err(error) => text(500, format!("{error:?}\n")),
    }
}

/// Runs `statement` on the `default` database: its rows, values `|`-separated, or 500 with
/// the error as Spin's SDK reports it.
fn sql(statement: &str) -> Response {
    let result = Connection::open_default().and_then(|db| db.execute(statement, &[]));
    match result {
        Ok(result) => {
            let rows: String = result
                .rows
                .iter()
                .map(|row| {
                    let values: Vec<String> = row
                        .values
                        .iter()
                        .map(|value| match value {
                            Value::Integer(i) => i.to_string(),
                            Value::Real(r) => r.to_string(),
                            Value::Text(t) => t.clone(),
                            Value::Blob(b) => format!("<{} bytes>", b.len()),
                            Value::Null => "NULL".to_owned(),
                        })
                        .collect();
                    values.join("|") + "\n"
                })
                .collect();
            text(200, rows)
        }
        Err(error) => text(500, format!("{error:?}\n")),
    }
}

/// `spin_sdk::sqlite3`: the orders table, with the new row's id and the rows changed.
fn orders_v3(request: &Request, method: &Method) -> anyhow::Result<Response> {
    use spin_sdk::sqlite3::{Connection, Value};
    let db = Connection::open_default()?;
    db.execute(
        "CREATE TABLE IF NOT EXISTS orders3 (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
        &[],
    )?;
    let mut body = String::new();
    if *method == Method::Post {
        let item = String::from_utf8_lossy(request.body()).into_owned();
        db.execute(
            "INSERT INTO orders3 (item) VALUES (?)",
            &[Value::Text(item)],
        )?;
        body.push_str(&format!(
            "id {}, changed {}\n",
            db.last_insert_rowid(),
            db.changes()
        ));
    }
    let rows = db.execute("SELECT id, item FROM orders3 ORDER BY id", &[])?;
    for row in &rows.rows {
        if let [Value::Integer(id), Value::Text(item)] = row.values.as_slice() {
            body.push_str(&format!("{id} {item}\n"));
        }
    }
    Ok(text(200, body))
}

/// `wasi:keyvalue`: BUCKET/KEY get and put, BUCKET/KEY/increment, BUCKET/KEY/swap,
/// BUCKET/many. Errors are the responses.
fn wasi_kv(request: &Request, method: &Method, rest: &str) -> Result<Response, Response> {
    use spin_sdk::wit::wasi::keyvalue::{atomics, batch, store};
    let failed = |e: store::Error| match e {
        store::Error::AccessDenied => text(403, "access denied\n".to_owned()),
        other => text(500, format!("{other:?}\n")),
    };
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = store::open(name).map_err(failed)?;
    let response = match (method, rest.split_once('/')) {
        (Method::Post, Some((key, "increment"))) => {
            let delta = request.query().parse().unwrap_or(1);
            let value = atomics::increment(&bucket, key, delta).map_err(failed)?;
            text(200, format!("{value}\n"))
        }
        (Method::Put, Some((key, "swap"))) => {
            let cas = atomics::Cas::new(&bucket, key).map_err(failed)?;
            let before = cas.current().map_err(failed)?;
            match atomics::swap(cas, request.body()) {
                Ok(()) => text(200, format!("swapped {key} from {before:?}\n")),
                Err(atomics::CasError::CasFailed(_)) => text(409, "changed meanwhile\n".to_owned()),
                Err(atomics::CasError::StoreError(e)) => return Err(failed(e)),
            }
        }
        (Method::Get, None) if rest == "many" => {
            let keys: Vec<String> = request.query().split(',').map(str::to_owned).collect();
            let values = batch::get_many(&bucket, &keys).map_err(failed)?;
            let mut body = String::new();
            for (key, value) in values {
                let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                body.push_str(&format!(
                    "{key}={}\n",
                    value.unwrap_or_else(|| "-".to_owned())
                ));
            }
            text(200, body)
        }
        (Method::Put, None) => {
            bucket.set(rest, request.body()).map_err(failed)?;
            text(201, format!("stored {rest}\n"))
        }
        (_, None) => match bucket.get(rest).map_err(failed)? {
            Some(value) => Response::new(200, value),
            None => text(404, format!("no key {rest}\n")),
        },
        _ => text(404, "no such operation\n".to_owned()),
    };
    Ok(response)
}

/// What `path` (one of the socket routes) did with `target`, or `None` for another route.
fn sockets(path: &str, target: &str) -> Option<std::io::Result<String>> {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
    Some(match path {
        "/tcp" => TcpStream::connect(target)
            .and_then(|mut stream| stream.write_all(b"hello from the guest\n"))
            .map(|()| format!("connected to {target}")),
        "/udp" => UdpSocket::bind("0.0.0.0:0")
            .and_then(|socket| socket.send_to(b"hello from the guest\n", target))
            .map(|_| format!("sent to {target}")),
        "/listen" => TcpListener::bind(target).map(|_| format!("listening on {target}")),
        "/lookup" => (target, 80)
            .to_socket_addrs()
            .map(|addrs| format!("{target} is {:?}", addrs.collect::<Vec<_>>())),
        _ => return None,
    })
}

/// An outbound request's status and body, or 502 with why it failed.
async fn relay(request: Request) -> Response {
    match spin_sdk::http::send::<_, Response>(request).await {
        Ok(response) => Response::new(*response.status(), response.body().to_vec()),
        Err(error) => text(502, format!("outbound request failed: {error}\n")),
    }
}

fn text(status: u16, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build()
}
