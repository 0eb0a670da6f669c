use std::hash::{DefaultHasher, Hash, Hasher};

use http_body_util::BodyExt;
use wasmcell_workload::Network;
use wasmtime_wasi_http::WasiHttpHooks;

use super::*;
use crate::outbound::{HttpHooks, Outbound, ResponseFuture, no_io};

fn compatibility(engine: &wasmtime::Engine) -> u64 {
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

#[test]
fn servers_load_the_artifacts_the_compiler_caches() {
    // The shim compiles without knowing whether a component is a server; its sandbox loads
    // the entry into the pooling engine, so the two must agree on what the code is.
    let compiler = wasmtime::Engine::new(&crate::config()).unwrap();
    let http = HttpEngine::new(crate::config(), 2).unwrap();
    assert_eq!(compatibility(&compiler), compatibility(http.engine()));
}

#[test]
fn a_linker_is_made_once_per_type_and_again_after_a_failure() {
    let linkers = Linkers::default();
    let failed = linkers.get::<u32>(|| Err(Error::App("not yet".into())));
    assert!(failed.is_err());
    let first = linkers.get::<u32>(|| Ok(1)).unwrap();
    let again = linkers.get::<u32>(|| panic!("made twice")).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let other = linkers.get::<u64>(|| Ok(2)).unwrap();
    assert_eq!((*first, *other), (1, 2));
}

fn get(uri: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
    let body = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    http::Request::get(uri).body(body).unwrap()
}

#[tokio::test]
async fn a_guest_without_the_network_is_denied_every_request() {
    let mut hooks = HttpHooks::new(Network::None);
    let sent = Box::into_pin(hooks.send_request(get("http://127.0.0.1:1/"), None, no_io())).await;
    assert!(matches!(
        sent,
        Err(wasmtime_wasi_http::Error::HttpRequestDenied)
    ));
}

/// A policy that answers every request itself, saying what network it was asked on.
struct Answering;

impl Outbound for Answering {
    fn permits(&self, uri: &http::Uri, _network: Network) -> bool {
        uri.host() != Some("denied.example")
    }

    fn send(
        &self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        network: Network,
    ) -> ResponseFuture {
        let text = format!("{network:?}");
        Box::new(async move {
            let response = plain(http::StatusCode::OK, text);
            Ok((response.map(|body| body.boxed_unsync()), no_io()))
        })
    }
}

#[test]
fn a_request_is_permitted_by_the_policy_or_else_by_the_network() {
    let uri = |text: &str| text.parse::<http::Uri>().unwrap();
    assert!(!HttpHooks::new(Network::None).permits(&uri("http://a.example/")));
    assert!(HttpHooks::new(Network::Inherit).permits(&uri("http://a.example/")));
    let hooks = HttpHooks::with_policy(Network::None, Box::new(Answering));
    assert!(hooks.permits(&uri("http://a.example/")));
    assert!(!hooks.permits(&uri("http://denied.example/")));
}

#[tokio::test]
async fn a_frameworks_policy_decides_with_the_workloads_network() {
    for network in [Network::None, Network::Inherit] {
        let mut hooks = HttpHooks::with_policy(network, Box::new(Answering));
        let sent = Box::into_pin(hooks.send_request(get("http://x/"), None, no_io())).await;
        let (response, _io) = sent.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{network:?}").as_bytes());
    }
}

#[test]
fn each_failure_is_answered_with_its_status_and_reason() {
    for (failure, status) in [
        (Failure::Busy, 503),
        (Failure::TimedOut(std::time::Duration::from_secs(2)), 504),
        (Failure::OutOfMemory, 500),
        (Failure::Failed("the handler failed".into()), 500),
    ] {
        let response = failure.response();
        assert_eq!(response.status().as_u16(), status, "{failure:?}");
        assert!(!failure.status().1.is_empty());
    }
}

#[test]
fn a_requests_uri_is_made_from_its_parts_or_refused() {
    use crate::outbound::uri_of;
    use wasmtime_wasi_http::p2::bindings::http::types::{Method, Scheme};
    use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
    let request =
        |scheme: Option<Scheme>, authority: Option<&str>, path: Option<&str>| HostOutgoingRequest {
            method: Method::Get,
            scheme,
            authority: authority.map(str::to_owned),
            path_with_query: path.map(str::to_owned),
            headers: Default::default(),
            body: None,
        };
    let uri = |r| uri_of(&r).map(|u| u.to_string());
    assert_eq!(
        uri(request(
            Some(Scheme::Http),
            Some("a.example:8080"),
            Some("/x?y")
        )),
        Some("http://a.example:8080/x?y".to_owned())
    );
    // No scheme: checked as the https it is sent as.
    assert_eq!(
        uri(request(None, Some("a.example"), None)),
        Some("https://a.example/".to_owned())
    );
    // No authority: a path alone, which a framework may serve in-process.
    assert_eq!(
        uri(request(None, None, Some("/local"))),
        Some("/local".to_owned())
    );
    // Parts that make no URI are refused, never checked as something else.
    for authority in ["bad host", "a.example:99999", "a/b"] {
        assert_eq!(
            uri(request(Some(Scheme::Http), Some(authority), None)),
            None,
            "{authority}"
        );
    }
}
