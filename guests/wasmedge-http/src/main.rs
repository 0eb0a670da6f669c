//! An HTTP server as the WasmEdge examples write one: `GET /` greets, `POST /echo` answers with
//! the request body and its content type, anything else is 404. Listens on `0.0.0.0:$PORT`
//! (8080 by default). Built for wasm32-wasip1 it calls WasmEdge's socket extension; built for
//! the host it is the same server natively.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::server::conn::Http;
use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode, header};
use tokio::net::TcpListener;

async fn handle(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/") => Response::new(Body::from("Hello from a WasmEdge-style server\n")),
        (&Method::POST, "/echo") => {
            let mut response = Response::builder();
            if let Some(kind) = request.headers().get(header::CONTENT_TYPE) {
                response = response.header(header::CONTENT_TYPE, kind.clone());
            }
            let body = hyper::body::to_bytes(request.into_body())
                .await
                .unwrap_or_default();
            response.body(Body::from(body)).expect("a valid response")
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("not found\n"))
            .expect("a valid response"),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::task::spawn(async move {
            if let Err(error) = Http::new()
                .serve_connection(stream, service_fn(handle))
                .await
            {
                eprintln!("connection: {error}");
            }
        });
    }
}
