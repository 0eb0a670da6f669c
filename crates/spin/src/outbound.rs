//! `allowed_outbound_hosts`: where a component's outbound requests (HTTP, Redis) and its own
//! `wasi:sockets` connections may go, in Spin's grammar. Nothing is allowed unless listed.
//!
//! Each entry is `scheme://host[:port]`, with an optional trailing `/`:
//! - scheme: a name of letters (`https`, `redis`, `tcp`, `udp`, ...) or `*` for any;
//! - host: a name (`example.com`), `*.example.com` for the names below a domain, `*` for any,
//!   an address (`10.0.0.1`, `[::1]`) or a range of them in CIDR form (`10.0.0.0/8`,
//!   `ff00::/8`, `[fd00::]/8`); `self` (or `self.alt`) for the component's own app by path;
//! - port: a number, a half-open range (`8000..8100` is 8000 to 8099, as a Rust range), `*`
//!   for any, or nothing for the scheme's default (`https` 443, `redis` 6379, ...; `*`, `tcp`
//!   and `udp` have none, so they need one). `self` alone means `http://self`.
//!
//! `{{ variable }}`s are resolved before an entry is parsed. Lists (`{a,b}`) are refused, as
//! Spin refuses them. `http://NAME.spin.internal` reaches the app's component NAME.
//!
//! A socket is matched as Spin matches it: its scheme is `tcp` or `udp`, its host the address
//! itself, so only `*`, address and CIDR hosts ever grant one; a name grants HTTP and Redis,
//! whose host resolves the name, never a socket.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A component's outbound rules, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedHosts {
    rules: Vec<Rule>,
}

/// An entry of `allowed_outbound_hosts` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed_outbound_hosts entry {entry:?} is not valid: {why}")]
pub struct InvalidEntry {
    /// The entry as written (templates resolved).
    pub entry: String,
    /// What is wrong with it, and how to write it.
    pub why: &'static str,
}

/// The transport of a `wasi:sockets` socket: the scheme its address is checked under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection: `tcp://` (or `*://`) entries.
    Tcp,
    /// UDP datagrams: `udp://` (or `*://`) entries.
    Udp,
}

impl Transport {
    /// The scheme an entry names it by.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rule {
    /// `None`: any scheme.
    scheme: Option<String>,
    host: Host,
    ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Host {
    Any,
    /// `*.example.com`, kept as `.example.com`: any name ending in it.
    Subdomains(String),
    /// A name, lowercased; `self` for the app itself.
    Name(String),
    /// An address (a range of one) or a CIDR range.
    Net(Net),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Ports {
    Any,
    One(u16),
    /// Half-open, as Spin reads `start..end`: `end` itself is not included.
    Range {
        start: u16,
        end: u16,
    },
}

/// An IP range: the addresses whose first `prefix` bits are `addr`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// Where an outbound request or socket goes: an address, or a name the host resolves.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Ip(IpAddr),
    Name(&'a str),
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
    pub fn parse(outbound: &[String], http_hosts: &[String]) -> Result<AllowedHosts, InvalidEntry> {
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

    /// Whether `scheme://host:port` may be reached: `host` as a URL holds it, a name or an
    /// address (`[::1]` or `::1`).
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let lowered;
        let target = match host.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip),
            Err(_) => {
                lowered = host.to_ascii_lowercase();
                Target::Name(&lowered)
            }
        };
        self.rules
            .iter()
            .any(|rule| rule.allows(scheme, target, port))
    }

    /// Whether a `wasi:sockets` socket may connect or send to `addr`.
    pub fn allows_socket(&self, transport: Transport, addr: SocketAddr) -> bool {
        let target = Target::Ip(addr.ip());
        self.rules
            .iter()
            .any(|rule| rule.allows(transport.scheme(), target, addr.port()))
    }

    /// Whether the component may call its own app by path (`self`, `http://self`).
    pub fn allows_self(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(&rule.host, Host::Name(name) if name == "self"))
    }
}

impl Rule {
    fn parse(entry: &str) -> Result<Rule, InvalidEntry> {
        let bad = |why: &'static str| InvalidEntry {
            entry: entry.to_owned(),
            why,
        };
        let text = entry.trim();
        if text == "self" {
            return Rule::parse("http://self");
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port], e.g. https://example.com, or *://*:* for everything"))?;
        if [scheme, rest].iter().any(|part| part.contains(['{', '}'])) {
            return Err(bad(
                "lists ({a,b}) are not supported: write one entry for each",
            ));
        }
        let scheme = match scheme {
            "*" => None,
            "" => return Err(bad("no scheme")),
            name if !name.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(bad("a scheme is letters only, or `*`"));
            }
            name => Some(name.to_ascii_lowercase()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_port(authority);
        let host = Host::parse(host).map_err(bad)?;
        let ports = match port {
            Some(port) => Ports::parse(port).map_err(bad)?,
            None => match scheme.as_deref().and_then(default_port) {
                Some(port) => Ports::One(port),
                None if host == Host::Name("self".into()) => Ports::Any,
                None => return Err(bad("give a port (or `*`): the scheme has no default one")),
            },
        };
        Ok(Rule {
            scheme,
            host,
            ports,
        })
    }

    fn allows(&self, scheme: &str, target: Target, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.ports.allow(port)
            && self.host.allows(target)
    }
}

/// Splits `host[:port]`. An IPv6 host is in brackets (`[::1]:80`, `[fd00::]/8:80`), or bare
/// where Spin takes the last `:` as the port's (`ff00::/8:80`); a bare address with no port
/// (`::1`, `fd00::/8`) is read whole, its last `:` being part of it.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[')
        && let Some(close) = authority.find(']')
    {
        let (host, after) = authority.split_at(close + 1);
        return match after.rsplit_once(':') {
            Some((prefix, port)) => (&authority[..host.len() + prefix.len()], Some(port)),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

impl Host {
    fn parse(text: &str) -> Result<Host, &'static str> {
        let text = text.trim();
        Ok(match text {
            "" => return Err("no host"),
            "*" => Host::Any,
            "self" | "self.alt" => Host::Name("self".into()),
            _ => match Net::parse(text)? {
                Some(net) => Host::Net(net),
                None if text.contains('/') => {
                    return Err("a path is not allowed, only scheme://host[:port]");
                }
                None if text.contains(['@', '?', '#', '\\', '[', ']', ' ']) => {
                    return Err("the host is not a name, an address or a CIDR range");
                }
                None => match text.strip_prefix("*.") {
                    Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                        Host::Subdomains(format!(".{}", domain.to_ascii_lowercase()))
                    }
                    _ if text.contains('*') => {
                        return Err("`*` stands for a whole host or a leading `*.` only");
                    }
                    _ => Host::Name(text.to_ascii_lowercase()),
                },
            },
        })
    }

    fn allows(&self, target: Target) -> bool {
        match (self, target) {
            (Host::Any, _) => true,
            (Host::Net(net), Target::Ip(ip)) => net.contains(ip),
            (Host::Name(name), Target::Name(host)) => name == host,
            // `domain` keeps its leading dot: `a.example.org` ends in `.example.org`.
            (Host::Subdomains(domain), Target::Name(host)) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|sub| !sub.is_empty()),
            // A name never grants an address, nor an address a name.
            (Host::Net(_), Target::Name(_))
            | (Host::Name(_) | Host::Subdomains(_), Target::Ip(_)) => false,
        }
    }
}

impl Net {
    /// An address (`10.0.0.1`, `[::1]`, `::1`) or a CIDR range (`10.0.0.0/8`, `[fd00::]/8`,
    /// `fd00::/8`; bits below the prefix are ignored, as Spin ignores them); `None` for what
    /// is neither (a name), an error for a range whose prefix is not one.
    fn parse(text: &str) -> Result<Option<Net>, &'static str> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return Ok(None);
        };
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= bits => prefix,
                _ => {
                    return Err(
                        "a CIDR range's prefix is a number of bits (0-32, or 0-128 for IPv6)",
                    );
                }
            },
        };
        Ok(Some(Net { addr, prefix }))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address it reaches. A
        // prefix longer than the address (only from data not made by `parse`) is the address.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(self.prefix.into()))
                    .unwrap_or(0);
                (u32::from(net) ^ u32::from(ip)) & mask == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(self.prefix.into()))
                    .unwrap_or(0);
                (u128::from(net) ^ u128::from(ip)) & mask == 0
            }
            _ => false,
        }
    }
}

impl Ports {
    fn parse(text: &str) -> Result<Ports, &'static str> {
        let number = |text: &str| {
            text.parse::<u16>()
                .map_err(|_| "the port is a number, a range start..end, or `*`")
        };
        if text.contains('/') {
            return Err("a path is not allowed, only scheme://host[:port]");
        }
        Ok(match text {
            "*" => Ports::Any,
            range if range.contains("..") => {
                let (start, end) = range.split_once("..").expect("contains ..");
                Ports::Range {
                    start: number(start)?,
                    end: number(end)?,
                }
            }
            port => Ports::One(number(port)?),
        })
    }

    fn allow(self, port: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::One(one) => one == port,
            Ports::Range { start, end } => (start..end).contains(&port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        AllowedHosts::parse(&entries, &[]).unwrap()
    }

    fn rule(entry: &str) -> Result<Rule, InvalidEntry> {
        Rule::parse(entry)
    }

    fn net(addr: &str, prefix: u8) -> Host {
        Host::Net(Net {
            addr: addr.parse().unwrap(),
            prefix,
        })
    }

    fn socket(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
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
            ("http", "api.local", 8010, false),
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
        assert!(hosts(&["http://self.alt"]).allows_self());
        let v1 =
            AllowedHosts::parse(&[], &["example.com".into(), "localhost:3001".into()]).unwrap();
        assert!(v1.allows("https", "example.com", 443) && v1.allows("http", "example.com", 80));
        assert!(v1.allows("http", "localhost", 3001) && !v1.allows("http", "localhost", 80));
        let all = AllowedHosts::parse(&[], &["insecure:allow-all".into()]).unwrap();
        assert!(all.allows("http", "anything", 1));
    }

    /// Spin's own cases (`outbound-networking-config`'s `allowed_hosts.rs`), as they parse.
    #[test]
    fn entries_parse_as_spin_parses_them() {
        let name = |n: &str| Host::Name(n.into());
        let scheme = |s: &str| Some(s.to_owned());
        for (entry, expected_scheme, expected_host, expected_ports) in [
            (
                "http://spin.fermyon.dev",
                scheme("http"),
                name("spin.fermyon.dev"),
                Ports::One(80),
            ),
            (
                "http://spin.fermyon.dev/",
                scheme("http"),
                name("spin.fermyon.dev"),
                Ports::One(80),
            ),
            (
                "https://spin.fermyon.dev",
                scheme("https"),
                name("spin.fermyon.dev"),
                Ports::One(443),
            ),
            (
                "http://spin.fermyon.dev:4444",
                scheme("http"),
                name("spin.fermyon.dev"),
                Ports::One(4444),
            ),
            (
                "http://spin.fermyon.dev:4444/",
                scheme("http"),
                name("spin.fermyon.dev"),
                Ports::One(4444),
            ),
            (
                "http://spin.fermyon.dev:4444..5555",
                scheme("http"),
                name("spin.fermyon.dev"),
                Ports::Range {
                    start: 4444,
                    end: 5555,
                },
            ),
            (
                "*://spin.fermyon.dev:7777",
                None,
                name("spin.fermyon.dev"),
                Ports::One(7777),
            ),
            ("http://self", scheme("http"), name("self"), Ports::One(80)),
            (
                "http://localhost",
                scheme("http"),
                name("localhost"),
                Ports::One(80),
            ),
            (
                "http://localhost:3001",
                scheme("http"),
                name("localhost"),
                Ports::One(3001),
            ),
            (
                "http://*.example.com",
                scheme("http"),
                Host::Subdomains(".example.com".into()),
                Ports::One(80),
            ),
            (
                "http://192.168.1.1",
                scheme("http"),
                net("192.168.1.1", 32),
                Ports::One(80),
            ),
            (
                "http://192.168.1.1:3002",
                scheme("http"),
                net("192.168.1.1", 32),
                Ports::One(3002),
            ),
            (
                "http://[::1]:8001",
                scheme("http"),
                net("::1", 128),
                Ports::One(8001),
            ),
            (
                "*://127.0.0.0/24:80",
                None,
                net("127.0.0.0", 24),
                Ports::One(80),
            ),
            ("*://ff00::/8:80", None, net("ff00::", 8), Ports::One(80)),
            ("*://*:*", None, Host::Any, Ports::Any),
            (
                "mysql://xyz.com",
                scheme("mysql"),
                name("xyz.com"),
                Ports::One(3306),
            ),
        ] {
            assert_eq!(
                rule(entry).unwrap(),
                Rule {
                    scheme: expected_scheme,
                    host: expected_host,
                    ports: expected_ports
                },
                "{entry}"
            );
        }
        // Spin's refusals.
        for entry in [
            "spin.fermyon.dev",
            "spin.fermyon.dev:80",
            "localhost",
            "localhost:3001",
            "*://127.0.0.0/24",
            "http://spin.fermyon.dev/a",
            "http://spin.fermyon.dev:6666/a/b",
            "http://*.fermyon.dev/a",
            "insecure:allow-all",
            "example.com",
        ] {
            assert!(rule(entry).is_err(), "{entry} parsed");
        }
        // Spin's matches.
        let specific = hosts(&["*://spin.fermyon.dev:443", "http://example.com:8383"]);
        assert!(specific.allows("http", "example.com", 8383));
        assert!(specific.allows("https", "spin.fermyon.dev", 443));
        assert!(!specific.allows("http", "example.com", 80));
        assert!(!specific.allows("http", "google.com", 80));
        let wildcards = hosts(&["http://*.example.com", "http://*.example2.com:8383"]);
        assert!(wildcards.allows("http", "a.example.com", 80));
        assert!(wildcards.allows("http", "a.b.example.com", 80));
        assert!(wildcards.allows("http", "a.b.example2.com", 8383));
        assert!(!wildcards.allows("http", "a.b.example2.com", 80));
        assert!(!wildcards.allows("http", "example.com", 80));
        assert!(!wildcards.allows("http", "example.com", 8383));
        assert!(!wildcards.allows("http", "myexample.com", 80));
        let cidr = hosts(&["*://127.0.0.1/24:63551"]);
        assert!(cidr.allows_socket(Transport::Tcp, socket("127.0.0.1:63551")));
    }

    #[test]
    fn cidr_ranges_cover_their_addresses_only() {
        let ranges = hosts(&[
            "*://10.0.0.0/8:5432",
            "tcp://[fd00::]/16:*",
            "udp://192.168.1.7/31:53",
            "*://0.0.0.0/0:9",
        ]);
        for (transport, addr, expected) in [
            (Transport::Tcp, "10.1.2.3:5432", true),
            (Transport::Udp, "10.255.255.255:5432", true),
            (Transport::Tcp, "11.0.0.1:5432", false),
            (Transport::Tcp, "10.1.2.3:5433", false),
            (Transport::Tcp, "[fd00:1::2]:1", true),
            (Transport::Udp, "[fd00:1::2]:1", false),
            (Transport::Tcp, "[fd01::2]:1", false),
            (Transport::Udp, "192.168.1.6:53", true),
            (Transport::Udp, "192.168.1.5:53", false),
            (Transport::Tcp, "192.168.1.6:53", false),
            (Transport::Tcp, "203.0.113.9:9", true),
            (Transport::Tcp, "[2001:db8::1]:9", false),
            // The IPv4 address an IPv4-mapped IPv6 address reaches.
            (Transport::Tcp, "[::ffff:10.0.0.1]:5432", true),
            (Transport::Tcp, "[::ffff:11.0.0.1]:5432", false),
        ] {
            assert_eq!(
                ranges.allows_socket(transport, socket(addr)),
                expected,
                "{transport:?} {addr}"
            );
        }
        assert!(ranges.allows("postgres", "10.9.9.9", 5432));
        assert!(
            !ranges.allows("https", "[fd00::1]", 443),
            "a tcp:// range is not HTTPS"
        );
        assert!(hosts(&["*://[::1]/128:80"]).allows_socket(Transport::Tcp, socket("[::1]:80")));
        assert!(hosts(&["http://fd00::/8"]).allows("http", "fd12::1", 80));
        let overlong = Net {
            addr: "10.0.0.1".parse().unwrap(),
            prefix: 200,
        };
        assert!(overlong.contains("10.0.0.1".parse().unwrap()));
        assert!(!overlong.contains("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn sockets_are_granted_by_addresses_never_by_names() {
        let names = hosts(&[
            "*://localhost:*",
            "*://*.example.com:*",
            "tcp://db.internal:5432",
            "http://127.0.0.1:80",
        ]);
        for addr in [
            "127.0.0.1:80",
            "127.0.0.1:5432",
            "[::1]:80",
            "93.184.216.34:443",
        ] {
            assert!(
                !names.allows_socket(Transport::Tcp, socket(addr)),
                "{addr} was granted by a name or another scheme"
            );
        }
        assert!(!hosts(&[]).allows_socket(Transport::Tcp, socket("127.0.0.1:80")));
        let tcp = hosts(&["tcp://127.0.0.1:6379", "*://*:443"]);
        assert!(tcp.allows_socket(Transport::Tcp, socket("127.0.0.1:6379")));
        assert!(!tcp.allows_socket(Transport::Udp, socket("127.0.0.1:6379")));
        assert!(tcp.allows_socket(Transport::Udp, socket("8.8.8.8:443")));
        // A wildcard domain matches names, not addresses that happen to end the same way.
        assert!(!hosts(&["http://*.0.0.1"]).allows("http", "127.0.0.1", 80));
    }

    #[test]
    fn malformed_entries_are_refused_naming_them() {
        for entry in [
            "example.com",
            "https://",
            "foo://host",
            "tcp://10.0.0.1",
            "*://10.0.0.0/8",
            "h2://host:80",
            "https://a*b.com",
            "https://*.",
            "https://x/path",
            "http://h:port",
            "http://10.0.0.0/33:80",
            "http://[::1]/129:80",
            "{http,https}://example.com",
            "https://{a,b}.com",
            "http://example.com:{80,443}",
            "http://user@example.com",
        ] {
            let error = AllowedHosts::parse(&[entry.to_owned()], &[]).unwrap_err();
            assert!(error.to_string().contains(&format!("{entry:?}")), "{error}");
        }
    }
}
