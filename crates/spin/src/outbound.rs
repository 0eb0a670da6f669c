//! `allowed_outbound_hosts`: where a component's outbound requests (HTTP, Redis, databases) may
//! go. Each entry is `scheme://host[:port]`: `*` for any scheme, host or port, `*.example.com`
//! for a domain's subdomains, a port range as `8000..8100`; a known scheme's port may be left
//! out (`https://example.com` is port 443). `self` (or `http://self`) lets the component call its
//! own app by a path (`/api/...`); `http://NAME.spin.internal` reaches the app's component NAME,
//! private ones included, without the network. Nothing is allowed unless listed.

use serde::{Deserialize, Serialize};

/// A component's outbound rules, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedHosts {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rule {
    /// `None`: any scheme.
    scheme: Option<String>,
    host: Host,
    /// Inclusive; `None`: any port.
    ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Host {
    Any,
    /// `*.example.com`: any name ending in `.example.com`.
    Subdomains(String),
    Exact(String),
}

/// The default port of the schemes Spin knows.
fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "redis" => 6379,
        "rediss" => 6380,
        "mysql" => 3306,
        "postgres" => 5432,
        "mqtt" => 1883,
        _ => return None,
    })
}

impl AllowedHosts {
    /// Parses a component's entries. `allowed_http_hosts` (manifest version 1: `host[:port]`,
    /// or `insecure:allow-all`) come in as HTTP and HTTPS entries.
    pub fn parse(outbound: &[String], http_hosts: &[String]) -> Result<AllowedHosts, String> {
        let mut rules = Vec::new();
        for entry in outbound {
            rules.push(Rule::parse(entry)?);
        }
        for host in http_hosts {
            if host == "insecure:allow-all" {
                rules.push(Rule::parse("*://*:*")?);
                continue;
            }
            for scheme in ["http", "https"] {
                rules.push(Rule::parse(&format!("{scheme}://{host}"))?);
            }
        }
        Ok(AllowedHosts { rules })
    }

    /// Whether `scheme://host:port` may be reached.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.rules.iter().any(|rule| {
            rule.scheme.as_deref().is_none_or(|s| s == scheme)
                && rule
                    .ports
                    .is_none_or(|(low, high)| (low..=high).contains(&port))
                && match &rule.host {
                    Host::Any => true,
                    Host::Exact(name) => *name == host,
                    // `domain` keeps its leading dot: `a.example.org` ends in `.example.org`.
                    Host::Subdomains(domain) => host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|sub| !sub.is_empty()),
                }
        })
    }

    /// Whether the component may call its own app by path (`self`, `http://self`).
    pub fn allows_self(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(&rule.host, Host::Exact(name) if name == "self"))
    }
}

impl Rule {
    fn parse(entry: &str) -> Result<Rule, String> {
        let bad = |why: &str| format!("allowed_outbound_hosts entry {entry:?} is not valid: {why}");
        if entry == "self" {
            return Rule::parse("http://self");
        }
        let (scheme, rest) = entry
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port], e.g. https://example.com"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a path is not allowed, only scheme://host[:port]"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
            _ => (rest, None),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let host = match host.as_str() {
            "" => return Err(bad("no host")),
            "*" => Host::Any,
            name if name.starts_with("*.") => Host::Subdomains(name[1..].to_owned()),
            name if name.contains('*') => {
                return Err(bad("`*` stands for a whole host or a leading `*.` only"));
            }
            name => Host::Exact(name.to_owned()),
        };
        let scheme = match scheme {
            "*" => None,
            "" => return Err(bad("no scheme")),
            name => Some(name.to_ascii_lowercase()),
        };
        let number = |text: &str| {
            text.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))
        };
        let ports = match port {
            Some("*") => None,
            Some(range) if range.contains("..") => {
                let (low, high) = range.split_once("..").expect("contains ..");
                Some((number(low)?, number(high)?))
            }
            Some(port) => {
                let port = number(port)?;
                Some((port, port))
            }
            None => {
                let known = scheme.as_deref().and_then(default_port);
                let self_host = host == Host::Exact("self".into());
                match known {
                    Some(port) => Some((port, port)),
                    None if self_host => None,
                    None => return Err(bad("give a port: the scheme has no default one")),
                }
            }
        };
        Ok(Rule {
            scheme,
            host,
            ports,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        AllowedHosts::parse(&entries, &[]).unwrap()
    }

    #[test]
    fn entries_allow_what_they_name_and_nothing_else() {
        let allowed = hosts(&[
            "https://example.com",
            "https://*.example.org:8443",
            "redis://cache:6379",
            "http://127.0.0.1:*",
            "http://api.local:8000..8010",
        ]);
        for (scheme, host, port, expected) in [
            ("https", "example.com", 443, true),
            ("https", "EXAMPLE.com", 443, true),
            ("http", "example.com", 80, false),
            ("https", "example.com", 8443, false),
            ("https", "a.example.org", 8443, true),
            ("https", "example.org", 8443, false),
            ("redis", "cache", 6379, true),
            ("http", "127.0.0.1", 31337, true),
            ("http", "api.local", 8005, true),
            ("http", "api.local", 8011, false),
            ("https", "evil.com", 443, false),
        ] {
            assert_eq!(
                allowed.allows(scheme, host, port),
                expected,
                "{scheme}://{host}:{port}"
            );
        }
        assert!(!allowed.allows_self());
        assert!(hosts(&[]).rules.is_empty());
        let everything = hosts(&["*://*:*"]);
        assert!(everything.allows("mysql", "db", 3306));
    }

    #[test]
    fn self_and_version_1_hosts() {
        assert!(hosts(&["self"]).allows_self());
        assert!(hosts(&["http://self"]).allows_self());
        let v1 =
            AllowedHosts::parse(&[], &["example.com".into(), "localhost:3001".into()]).unwrap();
        assert!(v1.allows("https", "example.com", 443) && v1.allows("http", "example.com", 80));
        assert!(v1.allows("http", "localhost", 3001) && !v1.allows("http", "localhost", 80));
        let all = AllowedHosts::parse(&[], &["insecure:allow-all".into()]).unwrap();
        assert!(all.allows("http", "anything", 1));
    }

    #[test]
    fn malformed_entries_are_refused_naming_them() {
        for entry in [
            "example.com",
            "https://",
            "foo://host",
            "https://a*b.com",
            "https://x/path",
            "http://h:port",
        ] {
            let error = AllowedHosts::parse(&[entry.to_owned()], &[]).unwrap_err();
            assert!(error.contains(&format!("{entry:?}")), "{error}");
        }
    }
}
