//! Serving `wasi:http/proxy` components: HTTP/1.1 on a TCP listener, one fresh instance per
//! request from an `InstancePre`.
//!
//! Servers get their own wasmtime engine with the pooling allocator: a request's instance
//! takes a preallocated slot (its memory image mapped copy-on-write) instead of fresh mappings,
//! which is most of what instantiation costs. Its configuration compiles the same code as the
//! [`crate::Compiler`]'s, so both share one cache entry. Everything that can go wrong in a
//! request (a trap, the memory limit, the deadline, a full pool) ends that request with a 5xx
//! and a line on the container's stderr; the server carries on.

mod outbound;
mod server;

use std::sync::Arc;

use wasmtime::Linker;
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::engine::{ComponentState, ModuleState, OnFirstUse};
use wasmcell_runtime::cache::deserialize_component;
use wasmcell_runtime::epoch::Ticker;
use wasmcell_runtime::error::Error;

pub(crate) use outbound::*;
pub(crate) use server::*;

/// How much of a slot's dirtied memory (and table) is reset in place rather than released, per
/// slot: the memory an idle server keeps for each slot it has used. A hello-world request
/// dirties well under this; a larger working set has its excess released as before.
const KEEP_RESIDENT: usize = 1 << 20;

/// The interface name whose export makes a component an HTTP server.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// Whether `component` serves HTTP: it exports `wasi:http/incoming-handler` (any 0.2 version).
pub(crate) fn is_proxy(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// The pooling engine and its linkers, created by the first server a process prepares.
pub(crate) struct HttpEngine {
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<ComponentState>,
    /// WASI, `wasi:http` and Spin's interfaces: only Spin apps' components see the latter.
    spin_linker: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    /// WASI, `wasi:http` and slight's capabilities, for components under slight.
    slight_linker: OnFirstUse<wasmtime::component::Linker<ComponentState>>,
    /// WASI preview 1, for core modules.
    module_linker: OnFirstUse<Linker<ModuleState>>,
    ticker: Ticker,
    /// How many threads a server runs requests on (see [`HttpEngine::new`]).
    threads: usize,
}

impl HttpEngine {
    /// `cpus`: how many CPUs the process may use (see [`Engine::cpus`](crate::Engine::cpus)).
    pub(crate) fn new(mut config: wasmtime::Config, cpus: usize) -> Result<HttpEngine, Error> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // Concurrent requests per server; past this, requests get 503. Each slot reserves
        // address space only (a 4 GiB memory reservation), not memory.
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(2000)
            .total_stacks(1000);
        // A finished request's slot is reset for the next one. By default wasmtime `madvise`s
        // the whole memory away: a TLB flush per request, and page faults as the next guest
        // touches its pages again. Where the kernel has `PAGEMAP_SCAN` (Linux 6.7), wasmtime
        // finds the pages the guest dirtied and copies their original contents back instead,
        // up to a bound per slot; memory past it is still `madvise`d. Measured: 25-30% less CPU
        // per request (docs/performance.md). Without the ioctl, keeping memory resident means
        // a `memset` of the whole bound, which measured slower than `madvise`, so the defaults
        // stay.
        //
        // An `madvise` also interrupts every other CPU running one of the process's threads to
        // flush its TLB, so with `madvise` resets a server runs requests on one thread (measured
        // on 2 cores: 11-14k requests/s on one thread, 8.8k on two). Resets in place flush
        // nothing, and then requests run on a thread per CPU the process may use.
        let threads = if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(wasmtime::Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(KEEP_RESIDENT);
            cpus
        } else {
            1
        };
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(Error::Engine)?;
        let linker = crate::engine::component_linker(&engine)?;
        Ok(HttpEngine {
            ticker: Ticker::new(&engine),
            engine,
            linker,
            spin_linker: OnFirstUse::default(),
            slight_linker: OnFirstUse::default(),
            module_linker: OnFirstUse::default(),
            threads,
        })
    }

    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub(crate) fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    /// How many threads a server runs requests on.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// WASI preview 1 for core modules on this engine (slight apps, Spin 1 components).
    pub(crate) fn module_linker(&self) -> Result<Arc<Linker<ModuleState>>, Error> {
        self.module_linker
            .get(|| crate::engine::module_linker(&self.engine))
    }

    /// The linker Spin components are linked with.
    pub(crate) fn spin_linker(
        &self,
    ) -> Result<Arc<wasmtime::component::Linker<ComponentState>>, Error> {
        self.spin_linker.get(|| {
            let mut linker = crate::engine::component_linker(&self.engine)?;
            crate::spin::host::add_to_linker(&mut linker).map_err(Error::Engine)?;
            Ok(linker)
        })
    }

    /// Loads a compiled proxy component from the cache entry and pre-instantiates it, with
    /// slight's capabilities if it runs under slight.
    pub(crate) fn prepare(
        &self,
        entry: &std::path::Path,
        path: &str,
        slight: bool,
    ) -> Result<ProxyPre<ComponentState>, Error> {
        let link = |source| Error::Link {
            path: path.to_owned(),
            source,
        };
        let component =
            deserialize_component(&self.engine, entry).map_err(|source| Error::Compile {
                path: path.to_owned(),
                source,
            })?;
        let slight_linker;
        let linker = match slight {
            true => {
                slight_linker = self
                    .slight_linker
                    .get(|| crate::slight::component_linker(&self.engine))?;
                &*slight_linker
            }
            false => &self.linker,
        };
        let pre = linker.instantiate_pre(&component).map_err(link)?;
        ProxyPre::new(pre).map_err(link)
    }
}

/// Opens the `/proc/self/pagemap` handle that wasmtime keeps for the life of the process
/// ([`HttpEngine::new`] resets slots with it). A process that will take a non-root uid must
/// call this first: the change makes it non-dumpable, and its `/proc/self` files then belong
/// to root. Call it without `CAP_SYS_ADMIN` in effect, so the handle never shows physical page
/// frames.
pub fn open_pagemap() {
    wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use http_body_util::BodyExt;
    use wasmcell_workload::Network;

    use super::*;

    fn compatibility(engine: &wasmtime::Engine) -> u64 {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    /// A Spin component's outbound request to `uri` from a host granted `allowed`, on
    /// `network`; its complaints go to the file `diagnostics`.
    async fn send_from_spin(
        allowed: &[&str],
        network: Network,
        uri: &str,
        diagnostics: &std::path::Path,
    ) -> Result<http::StatusCode, wasmtime_wasi_http::Error> {
        let output = wasmcell_workload::Output::File(diagnostics.to_owned());
        let dir = tempfile::tempdir().unwrap();
        let host = Arc::new(crate::spin::host::tests::spin_host(
            dir.path(),
            allowed,
            &[],
            &[],
            &output,
        ));
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = http::Request::get(uri).body(body).unwrap();
        let sent = Box::into_pin(spin_request(host.clone(), None, network, request, None)).await;
        host.diagnostics_flushed().await;
        sent.map(|(response, _io)| response.status())
    }

    #[tokio::test]
    async fn a_spin_component_reaches_only_the_hosts_it_was_granted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await.unwrap();
            let reply = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
            stream.write_all(reply).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let granted = format!("http://127.0.0.1:{port}");
        let uri = format!("{granted}/");
        let sent = send_from_spin(&[&granted], Network::Inherit, &uri, &log).await;
        assert_eq!(sent.unwrap(), http::StatusCode::NO_CONTENT);
        server.await.unwrap();
        assert!(!log.exists(), "an allowed request was reported");
    }

    #[tokio::test]
    async fn a_spin_components_request_to_another_host_is_denied_before_connecting() {
        // The name resolves nowhere: a lookup would fail otherwise than with a denial.
        for (uri, entry) in [
            ("http://denied.invalid/path", "http://denied.invalid:80"),
            ("https://denied.invalid/", "https://denied.invalid:443"),
            // Another component of the app, and the app itself, need their own entries.
            ("http://other.spin.internal/", "http://other.spin.internal"),
            ("/local", "self"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("stderr");
            let sent = send_from_spin(&["http://127.0.0.1:1"], Network::Inherit, uri, &log).await;
            assert!(
                matches!(sent, Err(wasmtime_wasi_http::Error::HttpRequestDenied)),
                "{uri}: {sent:?}"
            );
            let reported = std::fs::read_to_string(&log).unwrap();
            let advice = format!("add \"{entry}\" to allowed_outbound_hosts in [component.web]");
            assert!(reported.contains(&advice), "{uri}: {reported}");
        }
    }

    #[tokio::test]
    async fn a_granted_host_is_denied_when_the_workload_has_no_network() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let sent = send_from_spin(
            &["http://127.0.0.1:1"],
            Network::None,
            "http://127.0.0.1:1/",
            &log,
        )
        .await;
        assert!(matches!(
            sent,
            Err(wasmtime_wasi_http::Error::HttpRequestDenied)
        ));
    }

    #[test]
    fn servers_load_the_artifacts_the_compiler_caches() {
        // The shim compiles without knowing whether a component is a server; its sandbox loads
        // the entry into the pooling engine, so the two must agree on what the code is.
        let compiler = wasmtime::Engine::new(&crate::engine::config()).unwrap();
        let http = HttpEngine::new(crate::engine::config(), 2).unwrap();
        assert_eq!(compatibility(&compiler), compatibility(&http.engine));
    }
}
