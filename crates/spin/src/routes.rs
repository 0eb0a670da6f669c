//! HTTP routes, matched as Spin matches them: exact paths (`/cart`), single-segment wildcards
//! (`/users/:id`), trailing wildcards (`/users/...`, which also matches `/users`). Where several
//! match, an exact route beats any trailing wildcard; among exact routes, and among trailing
//! wildcards, the one whose segments are the more specific wins (a literal before a `:name`
//! at the first place they differ), and among trailing wildcards the longer prefix. So
//! `/users/admin` beats `/users/:id`, which beats `/users/...`, which beats `/...`.

use serde::{Deserialize, Serialize};

/// A route claimed twice, or written wrongly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Two triggers name the same route.
    #[error("route {0} is claimed by two triggers; each route may have one")]
    Duplicate(String),
    /// Not a route.
    #[error("route {route:?} is not valid: {why}")]
    Invalid {
        /// The route.
        route: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// A route's path segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pattern {
    raw: String,
    segments: Vec<Segment>,
    /// Ends in `/...`.
    trailing: bool,
}

impl Pattern {
    fn parse(raw: &str) -> Result<Pattern, RouteError> {
        let invalid = |why| RouteError::Invalid {
            route: raw.to_owned(),
            why,
        };
        if !raw.starts_with('/') {
            return Err(invalid("a route starts with /"));
        }
        let (body, trailing) = match raw.strip_suffix("/...") {
            Some(body) => (body, true),
            None => (raw, false),
        };
        let mut segments = Vec::new();
        for part in body.split('/').filter(|s| !s.is_empty()) {
            if part == "..." {
                return Err(invalid("`...` may only end a route"));
            }
            segments.push(match part.strip_prefix(':') {
                Some("") => return Err(invalid("a `:` wildcard needs a name")),
                Some(name) => Segment::Param(name.to_owned()),
                None => Segment::Literal(part.to_owned()),
            });
        }
        Ok(Pattern {
            raw: raw.to_owned(),
            segments,
            trailing,
        })
    }

    /// The route without its trailing wildcard (`/users/...` -> `/users`).
    fn component_route(&self) -> String {
        match self.raw.strip_suffix("/...") {
            Some(base) => base.to_owned(),
            None => self.raw.clone(),
        }
    }

    /// Matches `path` (its segments), returning the parameters and the unmatched rest.
    fn matches(&self, path: &[&str]) -> Option<(Vec<(String, String)>, usize)> {
        if path.len() < self.segments.len() || (!self.trailing && path.len() != self.segments.len())
        {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(path) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), (*part).to_owned())),
            }
        }
        Some((params, self.segments.len()))
    }

    /// Whether the two routes match the same paths (wildcard names aside).
    fn same_paths(&self, other: &Pattern) -> bool {
        let shape = |p: &Pattern| {
            p.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(literal) => Some(literal.clone()),
                    Segment::Param(_) => None,
                })
                .collect::<Vec<_>>()
        };
        self.trailing == other.trailing && shape(self) == shape(other)
    }

    /// Precedence between two routes that both match a path: lower sorts first.
    fn precedence(&self, other: &Pattern) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        // Exact routes first; longer trailing prefixes before shorter ones.
        let by_kind = self.trailing.cmp(&other.trailing);
        let by_length = if self.trailing {
            other.segments.len().cmp(&self.segments.len())
        } else {
            Ordering::Equal
        };
        let by_specificity = || {
            for (a, b) in self.segments.iter().zip(&other.segments) {
                match (a, b) {
                    (Segment::Literal(_), Segment::Param(_)) => return Ordering::Less,
                    (Segment::Param(_), Segment::Literal(_)) => return Ordering::Greater,
                    _ => {}
                }
            }
            Ordering::Equal
        };
        by_kind.then(by_length).then_with(by_specificity)
    }
}

/// A request path matched to a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The index the route was given to [`Router::new`] with.
    pub index: usize,
    /// The route as written (`/users/:id/...`): Spin's `spin-matched-route` and
    /// `spin-raw-component-route`.
    pub route: String,
    /// The route without its trailing wildcard: `spin-component-route`.
    pub component_route: String,
    /// The path below the route's prefix (`/items/3` for `/cart/...` and `/cart/items/3`; empty
    /// for an exact route): `spin-path-info`.
    pub path_info: String,
    /// The single-segment wildcards' values: `spin-path-match-NAME`.
    pub params: Vec<(String, String)>,
}

/// The routes of an app's HTTP triggers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    /// By precedence, each with its index.
    routes: Vec<(Pattern, usize)>,
}

impl Router {
    /// The routes, each with the index a match reports.
    pub fn new<'a>(
        routes: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<Router, RouteError> {
        let mut parsed: Vec<(Pattern, usize)> = Vec::new();
        for (raw, index) in routes {
            let pattern = Pattern::parse(raw)?;
            if parsed.iter().any(|(p, _)| p.same_paths(&pattern)) {
                return Err(RouteError::Duplicate(raw.to_owned()));
            }
            parsed.push((pattern, index));
        }
        parsed.sort_by(|(a, _), (b, _)| a.precedence(b));
        Ok(Router { routes: parsed })
    }

    /// The route `path` (no query) goes to, if any.
    pub fn route(&self, path: &str) -> Option<RouteMatch> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.routes.iter().find_map(|(pattern, index)| {
            let (params, used) = pattern.matches(&parts)?;
            let path_info = if pattern.trailing {
                let mut rest: String = parts[used..].iter().map(|p| format!("/{p}")).collect();
                if path.ends_with('/') && !rest.is_empty() {
                    rest.push('/');
                }
                rest
            } else {
                String::new()
            };
            Some(RouteMatch {
                index: *index,
                route: pattern.raw.clone(),
                component_route: pattern.component_route(),
                path_info,
                params,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[&str]) -> Router {
        Router::new(routes.iter().enumerate().map(|(i, r)| (*r, i))).unwrap()
    }

    #[test]
    fn routes_resolve_as_spin_resolves_them() {
        let routes = [
            "/...",
            "/users/...",
            "/users/admin",
            "/users/:id",
            "/users/:id/cart/...",
            "/cart",
        ];
        let r = router(&routes);
        let to = |path: &str| r.route(path).map(|m| routes[m.index]);
        for (path, expected) in [
            ("/", Some("/...")),
            ("/anything/at/all", Some("/...")),
            ("/users", Some("/users/...")),
            ("/users/admin", Some("/users/admin")),
            ("/users/7", Some("/users/:id")),
            ("/users/7/edit", Some("/users/...")),
            ("/users/7/cart", Some("/users/:id/cart/...")),
            ("/users/7/cart/items/3", Some("/users/:id/cart/...")),
            ("/cart", Some("/cart")),
            ("/cart/checkout", Some("/...")),
        ] {
            assert_eq!(to(path), expected, "{path}");
        }
        let exact = router(&["/cart"]);
        assert_eq!(exact.route("/cart/checkout"), None);
        assert_eq!(exact.route("/"), None);
    }

    #[test]
    fn a_match_carries_spins_header_values() {
        let r = router(&["/users/:userid/cart/..."]);
        let m = r.route("/users/1/cart/items/3/edit").unwrap();
        assert_eq!(m.route, "/users/:userid/cart/...");
        assert_eq!(m.component_route, "/users/:userid/cart");
        assert_eq!(m.path_info, "/items/3/edit");
        assert_eq!(m.params, [("userid".to_owned(), "1".to_owned())]);
        let m = router(&["/hello"]).route("/hello").unwrap();
        assert_eq!(
            (m.path_info.as_str(), m.component_route.as_str()),
            ("", "/hello")
        );
    }

    #[test]
    fn duplicate_and_malformed_routes_are_refused() {
        let twice = Router::new([("/a/...", 0), ("/a/...", 1)]).unwrap_err();
        assert_eq!(twice, RouteError::Duplicate("/a/...".into()));
        assert!(Router::new([("/a/:x", 0), ("/a/:y", 1)]).is_err());
        assert!(Router::new([("no-slash", 0)]).is_err());
        assert!(Router::new([("/a/.../b", 0)]).is_err());
        assert!(Router::new([("/a/:", 0)]).is_err());
    }
}
