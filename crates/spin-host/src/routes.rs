//! Where a request to a Spin app goes: Spin's routes (the router is
//! [`wasmcell_spin::Router`]), to a component or a static response, with the headers Spin sets
//! on a routed request; and a component by id, for `http://ID.spin.internal`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Response, StatusCode};
use wasmcell_runtime::http::{Handler, Routes, plain};
use wasmcell_spin::{App, HttpHandler, RouteMatch, StaticResponse};
use wasmcell_workload::WorkloadSpec;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A Spin app's HTTP routes.
pub(crate) struct SpinRoutes {
    pub(crate) app: Arc<App>,
    /// By the app's component index: what handles its requests, for a component an HTTP
    /// trigger uses.
    pub(crate) handlers: Vec<Option<Arc<dyn Handler>>>,
}

impl Routes for SpinRoutes {
    fn route(
        &self,
        spec: &WorkloadSpec,
        request: &mut http::request::Parts,
        client: SocketAddr,
    ) -> Result<Arc<dyn Handler>, Box<Response<HyperOutgoingBody>>> {
        let not_found = || Box::new(plain(StatusCode::NOT_FOUND, "Not Found\n".to_owned()));
        let Some(matched) = self.app.router.route(request.uri.path()) else {
            return Err(not_found());
        };
        let component = match &self.app.http[matched.index].handler {
            HttpHandler::Static(response) => return Err(Box::new(static_response(response))),
            HttpHandler::Component(component) => *component,
        };
        let handler = self.handlers[component].clone().ok_or_else(not_found)?;
        let host = request
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| spec.http.addr.to_string());
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let full_url = format!("http://{host}{path}");
        set_headers(&mut request.headers, &matched, &full_url, client);
        Ok(handler)
    }

    fn named(&self, id: &str) -> Option<Arc<dyn Handler>> {
        let index = self.app.components.iter().position(|c| c.id == id)?;
        self.handlers[index].clone()
    }
}

/// A static route's answer.
fn static_response(response: &StaticResponse) -> Response<HyperOutgoingBody> {
    let body = response.body.clone().unwrap_or_default();
    let mut answer = plain(
        StatusCode::from_u16(response.status_code.unwrap_or(200)).unwrap_or(StatusCode::OK),
        body,
    );
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::try_from(name.as_str()),
            hyper::header::HeaderValue::try_from(value.as_str()),
        ) {
            answer.headers_mut().insert(name, value);
        }
    }
    answer
}

/// Sets the request headers Spin sets for a routed request (`spin-full-url`,
/// `spin-path-info`, ...), in place: names are static, values made once each.
fn set_headers(
    headers: &mut http::HeaderMap,
    matched: &RouteMatch,
    full_url: &str,
    client: std::net::SocketAddr,
) {
    use http::header::{HeaderName, HeaderValue};
    let value = |text: &str| HeaderValue::from_str(text).ok();
    let route = value(&matched.route);
    let fixed = [
        ("spin-full-url", value(full_url)),
        ("spin-path-info", value(&matched.path_info)),
        ("spin-matched-route", route.clone()),
        ("spin-raw-component-route", route),
        ("spin-component-route", value(&matched.component_route)),
        ("spin-base-path", Some(HeaderValue::from_static("/"))),
        ("spin-client-addr", value(&client.to_string())),
    ];
    for (name, value) in fixed {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    // Spin names a parameter's header with `-` for each `_` of its name (`:path_segment` is
    // `spin-path-match-path-segment`).
    for (name, param) in &matched.params {
        let name = HeaderName::try_from(format!("spin-path-match-{}", name.replace('_', "-")));
        if let (Ok(name), Some(param)) = (name, value(param)) {
            headers.insert(name, param);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers a request to `url` gets when it matches `route`.
    fn headers_for(route: &str, path: &str, url: &str) -> http::HeaderMap {
        let router = wasmcell_spin::Router::new([(route, 0)]).unwrap();
        let matched = router.route(path).expect("the route matches");
        let mut headers = http::HeaderMap::new();
        set_headers(
            &mut headers,
            &matched,
            url,
            "127.0.0.1:53152".parse().unwrap(),
        );
        headers
    }

    /// Spin's documented example (the HTTP trigger's "Additional request information"):
    /// `/users/...` requested as `/users/1/2`.
    #[test]
    fn a_wildcard_route_gets_spins_headers() {
        let url = "http://localhost:3000/users/1/2?sort=asc";
        let headers = headers_for("/users/...", "/users/1/2", url);
        for (name, value) in [
            ("spin-full-url", url),
            ("spin-path-info", "/1/2"),
            ("spin-matched-route", "/users/..."),
            ("spin-raw-component-route", "/users/..."),
            ("spin-component-route", "/users"),
            ("spin-base-path", "/"),
            ("spin-client-addr", "127.0.0.1:53152"),
        ] {
            assert_eq!(
                headers.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{name}"
            );
        }
    }

    #[test]
    fn an_exact_route_has_an_empty_path_info() {
        let headers = headers_for("/cart", "/cart", "http://localhost:3000/cart");
        assert_eq!(headers["spin-path-info"], "");
        assert_eq!(headers["spin-component-route"], "/cart");
        assert_eq!(headers["spin-matched-route"], "/cart");
    }

    #[test]
    fn each_single_segment_wildcard_is_a_path_match_header() {
        let headers = headers_for(
            "/users/:id/posts/:post",
            "/users/42/posts/7",
            "http://localhost:3000/users/42/posts/7",
        );
        assert_eq!(headers["spin-path-match-id"], "42");
        assert_eq!(headers["spin-path-match-post"], "7");
        let underscored = headers_for("/a/:path_segment", "/a/b", "http://localhost:3000/a/b");
        assert_eq!(underscored["spin-path-match-path-segment"], "b");
        assert!(!underscored.contains_key("spin-path-match-path_segment"));
        assert_eq!(headers["spin-matched-route"], "/users/:id/posts/:post");
    }

    /// A client's own `spin-*` header must not pass for the one the host sets.
    #[test]
    fn the_hosts_values_replace_a_clients() {
        let router = wasmcell_spin::Router::new([("/...", 0)]).unwrap();
        let matched = router.route("/a").unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("spin-path-info", "/forged".parse().unwrap());
        headers.insert("spin-client-addr", "10.0.0.1:1".parse().unwrap());
        let client = "[::1]:8080".parse().unwrap();
        set_headers(&mut headers, &matched, "http://h/a", client);
        assert_eq!(headers.get_all("spin-path-info").iter().count(), 1);
        assert_eq!(headers["spin-path-info"], "/a");
        assert_eq!(headers["spin-client-addr"], "[::1]:8080");
    }
}
