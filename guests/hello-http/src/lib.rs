//! A `wasi:http/proxy` component, the HTTP example from the README.
//!
//! `GET /` answers with a greeting, `POST /echo` with the request body under the request's
//! content type, anything else with 404. Each request runs in a fresh instance. Test-only
//! routes exercise the host: `/trap` traps, `/spin` never returns, `/stdout` writes a log
//! line, `/slow` answers after half a second, `/fetch?http://HOST:PORT/PATH` relays an
//! outgoing request's status and body (which needs the network grant), `/state` reports what a
//! request can see of the ones before it (nothing, in a fresh instance), `/files` lists the
//! root directory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct HelloHttp;

impl Guest for HelloHttp {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        match (request.method(), path.as_str()) {
            (Method::Get, "/") => {
                respond(out, 200, "text/plain", b"Hello from a Wasm container!\n")
            }
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
            (_, "/slow") => {
                std::thread::sleep(std::time::Duration::from_millis(500));
                respond(out, 200, "text/plain", b"slow and steady\n");
            }
            (_, fetch) if fetch.starts_with("/fetch?") => match relay(&fetch["/fetch?".len()..]) {
                Ok((status, body)) => respond(out, status, "text/plain", &body),
                Err(why) => respond(out, 502, "text/plain", why.as_bytes()),
            },
            (_, "/state") => respond(out, 200, "text/plain", state().as_bytes()),
            (_, "/files") => match list_root() {
                Ok(names) => respond(out, 200, "text/plain", names.as_bytes()),
                Err(why) => respond(out, 500, "text/plain", why.to_string().as_bytes()),
            },
            (_, "/stdout") => {
                println!("hello-http: a log line");
                respond(out, 200, "text/plain", b"logged\n");
            }
            _ => respond(out, 404, "text/plain", b"not found\n"),
        }
    }
}

/// A counter in the data segment, starting at 41.
static COUNTER: AtomicU32 = AtomicU32::new(41);
/// 64 KiB of zero-initialised memory, marked by every request.
static MARKS: [AtomicU64; 8192] = [const { AtomicU64::new(0) }; 8192];
/// Past the memory the host keeps resident per instance slot (1 MiB), so the part of the slot
/// it releases is checked too.
const HEAP: usize = 4 << 20;
/// A word per 8 KiB of 320 KiB: written one in two host pages, each request leaves 40 separate
/// runs of written pages here and 40 in [`SCATTERED_BSS`]. The host finds them 32 runs at a time
/// (vendor/README.md), so this is its reset past the first 32.
const SCATTERED: usize = 40;
const WORDS_PER_RUN: usize = 8192 / 8;
/// Every word of [`SCATTERED_DATA`] at the start.
const SCATTERED_INITIAL: u64 = 0x5157_a7e5_5157_a7e5;
/// In the data segment: reset means the image's contents copied back.
static SCATTERED_DATA: [AtomicU64; SCATTERED * WORDS_PER_RUN] =
    [const { AtomicU64::new(SCATTERED_INITIAL) }; SCATTERED * WORDS_PER_RUN];
/// Zero-initialised: reset means zeroes.
static SCATTERED_BSS: [AtomicU64; SCATTERED * WORDS_PER_RUN] =
    [const { AtomicU64::new(0) }; SCATTERED * WORDS_PER_RUN];

/// Reads, then writes, state that a reused instance or an imperfectly reset slot would carry
/// from one request to the next: every request in a fresh instance sees
/// `counter=42 bss=clean heap=clean scattered=clean pages=N` with the same N.
fn state() -> String {
    let pages = core::arch::wasm32::memory_size(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let bss = MARKS
        .iter()
        .all(|mark| mark.swap(0xabab, Ordering::Relaxed) == 0);
    let scattered = (0..SCATTERED).all(|run| {
        let word = run * WORDS_PER_RUN;
        let data =
            SCATTERED_DATA[word].swap(!SCATTERED_INITIAL, Ordering::Relaxed) == SCATTERED_INITIAL;
        let bss = SCATTERED_BSS[word].swap(0xabab, Ordering::Relaxed) == 0;
        data & bss
    });
    // Fresh pages from memory.grow, which the allocator hands out as zeroed.
    let mut heap = vec![0u8; HEAP];
    let heap_clean = heap.iter().all(|&byte| byte == 0);
    heap.fill(0xab);
    std::hint::black_box(&heap);
    let word = |clean| if clean { "clean" } else { "dirty" };
    format!(
        "counter={counter} bss={} heap={} scattered={} pages={pages}\n",
        word(bss),
        word(heap_clean),
        word(scattered)
    )
}

/// The names in `/`, one per line, sorted.
fn list_root() -> std::io::Result<String> {
    let mut names = std::fs::read_dir("/")?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names.iter().map(|name| format!("{name}\n")).collect())
}

/// GETs `url` (`http://authority/path`) through `wasi:http/outgoing-handler`.
fn relay(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "authority")?;
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(|()| "path")?;
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}\n"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken")?
        .map_err(|e| format!("{e:?}\n"))?;
    let body = response.consume().map_err(|()| "body")?;
    Ok((response.status(), read_all(body)))
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    read_all(request.consume().expect("the body is consumed once"))
}

fn read_all(body: IncomingBody) -> Vec<u8> {
    let stream = body.stream().expect("the stream is taken once");
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    drop(stream);
    IncomingBody::finish(body);
    bytes
}

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_owned(), content_type.as_bytes().to_vec())])
            .expect("valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is taken once");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("the client is there");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("the body is complete");
}

wasip2::http::proxy::export!(HelloHttp);
