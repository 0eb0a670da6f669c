//! A `wasi:http/proxy` component, the HTTP example from the README.
//!
//! `GET /` answers with a greeting, `POST /echo` with the request body under the request's
//! content type, anything else with 404. Each request runs in a fresh instance. Test-only
//! routes exercise the host's limits: `/trap` traps, `/spin` never returns, `/stdout` writes
//! a log line.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HelloHttp;

impl Guest for HelloHttp {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match (request.method(), path.as_str()) {
            (Method::Get, "/") => respond(out, 200, "text/plain", b"Hello from a Wasm container!\n"),
            (Method::Post, "/echo") => {
                let content_type = request
                    .headers()
                    .get("content-type")
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| b"application/octet-stream".to_vec());
                let body = read_body(&request);
                respond(out, 200, &String::from_utf8_lossy(&content_type), &body);
            }
            (_, "/trap") => panic!("this route traps, on purpose"),
            (_, "/spin") => loop {
                std::hint::spin_loop();
            },
            (_, "/stdout") => {
                println!("hello-http: a log line");
                respond(out, 200, "text/plain", b"logged\n");
            }
            _ => respond(out, 404, "text/plain", b"not found\n"),
        }
    }
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the body is consumed once");
    let stream = body.stream().expect("the stream is taken once");
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[("content-type".to_owned(), content_type.as_bytes().to_vec())])
        .expect("valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is taken once");
    for chunk in body.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("the client is there");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("the body is complete");
}

wasip2::http::proxy::export!(HelloHttp);
