//! A SpiderLightning HTTP app: serves on 0.0.0.0:3000 (slight apps choose their own address)
//! `GET /hello`, `PUT /kv/:key` and `GET /kv/:key` over the `my-container` store, and `GET
//! /fetch`, which requests `UPSTREAM` (from `configs.envvars`) with slight's http-client. Built
//! both ways slight apps were: a command (`slight-http.wasm`, its `main` starts the server) and
//! a library (`slight_http.wasm`, slight calls its `on-server-init`).

use abi02::slight::{Configs, KeyValue, Router};
use abi02::{Request, Response};

abi02::allocator!();
abi02::slight_handler!("handle-hello", hello);
abi02::slight_handler!("handle-put", put);
abi02::slight_handler!("handle-get", get);
abi02::slight_handler!("handle-fetch", fetch);

abi02::slight_on_server_init!(start);

/// Sets up the routes and starts serving them.
pub fn start() -> Result<(), String> {
    let routes = Router::new()
        .and_then(|r| r.get("/hello", "handle_hello"))
        .and_then(|r| r.put("/kv/:key", "handle_put"))
        .and_then(|r| r.get("/kv/:key", "handle_get"))
        .and_then(|r| r.get("/fetch", "handle_fetch"));
    let router = routes.map_err(|e| e.to_string())?;
    abi02::slight::serve("0.0.0.0:3000", &router).map_err(|e| e.to_string())?;
    println!("serving on 0.0.0.0:3000");
    Ok(())
}

fn text(status: u16, body: String) -> Result<Response, String> {
    Ok(Response {
        status,
        headers: Some(vec![("content-type".into(), "text/plain".into())]),
        body: Some(body.into_bytes()),
    })
}

fn param<'a>(request: &'a Request, name: &str) -> &'a str {
    let found = request.params.iter().find(|(k, _)| k == name);
    found.map(|(_, v)| v.as_str()).unwrap_or_default()
}

fn hello(request: Request) -> Result<Response, String> {
    text(
        200,
        format!(
            "hello from slight: {} {}\n",
            abi02::METHODS[request.method],
            request.uri
        ),
    )
}

fn put(request: Request) -> Result<Response, String> {
    let store = KeyValue::open("my-container").map_err(|e| e.to_string())?;
    let key = param(&request, "key");
    store
        .set(key, request.body.as_deref().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    text(201, format!("stored {key}\n"))
}

fn get(request: Request) -> Result<Response, String> {
    let store = KeyValue::open("my-container").map_err(|e| e.to_string())?;
    match store.get(param(&request, "key")) {
        Ok(value) => text(200, String::from_utf8_lossy(&value).into_owned()),
        Err(error) if error.case == "key-not-found" => text(404, format!("{error}\n")),
        Err(error) => Err(error.to_string()),
    }
}

fn fetch(_: Request) -> Result<Response, String> {
    let env = Configs::open("env").map_err(|e| e.to_string())?;
    let upstream = env.get("UPSTREAM").map_err(|e| e.to_string())?;
    let request = Request {
        uri: String::from_utf8(upstream).map_err(|e| e.to_string())?,
        ..Request::default()
    };
    match abi02::slight::request(&request) {
        Ok(response) => text(
            200,
            format!(
                "upstream said {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body.unwrap_or_default())
            ),
        ),
        Err(error) => text(502, format!("{error}\n")),
    }
}
