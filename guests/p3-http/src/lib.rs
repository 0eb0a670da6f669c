//! A WASI 0.3 HTTP handler: exports `wasi:http/handler@0.3.0` (an async `handle`), written with
//! wit-bindgen's async support. Bodies are component-model streams written after `handle` has
//! returned its response, by tasks spawned with `wit_bindgen::spawn_local`.
//!
//! - `GET /hello`: 200 "hello from a wasi 0.3 handler\n", `content-type: text/plain`.
//! - `POST /echo`: 200, the request body streamed back as it arrives, then the trailer
//!   `x-echo-bytes: N` (the byte count).
//! - `GET /wait?MS`: waits MS milliseconds (`wasi:clocks/monotonic-clock@0.3.0#wait-for`), then
//!   200 "waited\n".
//! - `GET /forever`: never answers (awaits a component-model future nobody writes).
//! - `GET /trap`: panics, so the instance traps.
//! - `GET /fetch?URL`: GETs the http(s) URL through `wasi:http/client@0.3.0#send`; 200 with a
//!   header `x-upstream-status: N` and a body of "upstream N\n" then the upstream body, or 502
//!   with the error code's Debug form.
//! - anything else: 404.
//!
//! Rust's std is still linked (allocator, panic messages), so the component may also import some
//! `@0.2.x` interfaces through wasi-libc; everything this code calls is 0.3.0.

wit_bindgen::generate!({ path: "wit", world: "p3-http", generate_all });

use exports::wasi::http::handler::Guest;
use wasi::clocks::monotonic_clock;
use wasi::http::client;
use wasi::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wit_bindgen::{StreamResult, spawn_local};

struct Handler;

export!(Handler);

impl Guest for Handler {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let method = request.get_method();
        let path_with_query = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (path_with_query.clone(), None),
        };
        Ok(match (method, path.as_str()) {
            (Method::Get, "/hello") => text(200, "hello from a wasi 0.3 handler\n"),
            (Method::Post, "/echo") => echo(request),
            (Method::Get, "/wait") => match query.as_deref().map(str::parse::<u64>) {
                Some(Ok(ms)) => {
                    monotonic_clock::wait_for(ms * 1_000_000).await;
                    text(200, "waited\n")
                }
                _ => text(400, "usage: /wait?MS\n"),
            },
            (Method::Get, "/forever") => {
                // A future whose writer is never written nor dropped (leaked): it never resolves,
                // and awaiting it blocks this task in the host, not in a guest-side spin.
                let (writer, reader) = wit_future::new::<Result<(), ErrorCode>>(|| Ok(()));
                std::mem::forget(writer);
                let _ = reader.await;
                unreachable!("the forever future resolved")
            }
            (Method::Get, "/trap") => panic!("GET /trap"),
            (Method::Get, "/fetch") => match query {
                Some(url) => fetch(&url).await,
                None => text(400, "usage: /fetch?URL\n"),
            },
            _ => text(404, "not found\n"),
        })
    }
}

/// A response with `status`, the given headers and trailers, and `body`, which a spawned task
/// writes once the host reads the body (after `handle` returns).
fn respond(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .expect("a valid header");
    }
    let (mut writer, reader) = wit_stream::new();
    let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (response, sent) = Response::new(fields, Some(reader), trailers_reader);
    response.set_status_code(status).expect("a valid status");
    spawn_local(async move {
        writer.write_all(body).await;
        drop(writer);
        drop(trailers); // writes the default: no trailers
        let _ = sent.await;
    });
    response
}

fn text(status: u16, body: &str) -> Response {
    respond(
        status,
        &[("content-type", "text/plain")],
        body.as_bytes().to_vec(),
    )
}

/// Streams the request body back as it arrives, then sends the trailer `x-echo-bytes`.
fn echo(request: Request) -> Response {
    let content_type = request.get_headers().get("content-type");
    let (consumed, consumed_reader) = wit_future::new(|| Ok(()));
    let (mut input, request_trailers) = Request::consume_body(request, consumed_reader);

    let fields = Fields::new();
    for value in content_type {
        fields
            .append("content-type", &value)
            .expect("a valid header");
    }
    let (mut output, reader) = wit_stream::new();
    let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (response, sent) = Response::new(fields, Some(reader), trailers_reader);
    spawn_local(async move {
        let mut total = 0usize;
        loop {
            let (status, chunk) = input.read(Vec::with_capacity(16 * 1024)).await;
            total += chunk.len();
            if !chunk.is_empty() && !output.write_all(chunk).await.is_empty() {
                break; // the client went away
            }
            if !matches!(status, StreamResult::Complete(_)) {
                break;
            }
        }
        drop(input);
        let _ = request_trailers.await;
        drop(consumed); // reports Ok(()): the request body was handled
        drop(output);
        let echo_trailers = Fields::new();
        echo_trailers
            .append("x-echo-bytes", total.to_string().as_bytes())
            .expect("a valid trailer");
        let _ = trailers.write(Ok(Some(echo_trailers))).await;
        let _ = sent.await;
    });
    response
}

/// GETs `url` through `wasi:http/client` and answers with what came back.
async fn fetch(url: &str) -> Response {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return text(400, "fetch: the URL must start with http:// or https://\n");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };

    let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, trailers_reader, None);
    drop(trailers); // no body, no trailers
    let valid = request.set_method(&Method::Get).is_ok()
        && request.set_scheme(Some(&scheme)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(path)).is_ok();
    if !valid {
        return text(400, "fetch: invalid URL\n");
    }
    let upstream = match client::send(request).await {
        Ok(response) => response,
        Err(error) => return text(502, &format!("{error:?}\n")),
    };
    let status = upstream.get_status_code();
    let (consumed, consumed_reader) = wit_future::new(|| Ok(()));
    let (body, upstream_trailers) = Response::consume_body(upstream, consumed_reader);
    let body = body.collect().await;
    if let Err(error) = upstream_trailers.await {
        return text(502, &format!("{error:?}\n"));
    }
    drop(consumed);
    let mut answer = format!("upstream {status}\n").into_bytes();
    answer.extend_from_slice(&body);
    let status = status.to_string();
    respond(
        200,
        &[
            ("content-type", "text/plain"),
            ("x-upstream-status", &status),
        ],
        answer,
    )
}
