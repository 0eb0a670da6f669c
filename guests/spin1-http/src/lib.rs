//! A Spin 1 HTTP component: `GET .../hello` greets with the `greeting` variable and echoes
//! Spin's `spin-path-info` header and the client's address; `PUT .../kv/KEY` stores the body in
//! the default store and `GET .../kv/KEY` reads it back; `GET .../fetch/allowed` requests the
//! `upstream` variable's URL with Spin 1's outbound-http, `.../fetch/denied` a host the
//! manifest does not allow.

use abi02::spin1::{Store, get_config, send_request};
use abi02::{METHODS, Request, Response};

abi02::allocator!();
abi02::spin1_handler!(handle);

fn text(status: u16, body: String) -> Response {
    Response {
        status,
        headers: Some(vec![("content-type".into(), "text/plain".into())]),
        body: Some(body.into_bytes()),
    }
}

fn handle(request: Request) -> Response {
    let header = |name: &str| {
        let found = request.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let path = header("spin-path-info");
    let method = METHODS[request.method];
    if path == "/hello" {
        let greeting = get_config("greeting").unwrap_or_else(|e| e.to_string());
        let client = request
            .client_addr
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return text(
            200,
            format!("{greeting} from Spin 1: {method} {path} from {client}\n"),
        );
    }
    if let Some(which) = path.strip_prefix("/fetch/") {
        // `allowed` is the `upstream` variable, which the manifest allows; `denied` is not.
        let uri = match which {
            "allowed" => get_config("upstream").unwrap_or_default(),
            _ => "http://127.0.0.1:2/".to_owned(),
        };
        let request = Request {
            uri,
            ..Request::default()
        };
        return match send_request(&request) {
            Ok(response) => {
                let body = String::from_utf8_lossy(&response.body.unwrap_or_default()).into_owned();
                text(200, format!("upstream said {}: {body}", response.status))
            }
            Err(error) => text(502, format!("{}\n", error.case)),
        };
    }
    let Some(key) = path.strip_prefix("/kv/") else {
        return text(404, format!("no route for {path}\n"));
    };
    let store = match Store::open("default") {
        Ok(store) => store,
        Err(error) => return text(500, format!("{error}\n")),
    };
    match (method, request.body) {
        ("PUT", body) => match store.set(key, &body.unwrap_or_default()) {
            Ok(()) => text(201, format!("stored {key}\n")),
            Err(error) => text(500, format!("{error}\n")),
        },
        (_, _) => match store.get(key) {
            Ok(value) => text(200, String::from_utf8_lossy(&value).into_owned()),
            Err(error) => text(404, format!("{error}\n")),
        },
    }
}
