//! Serving HTTP: a listener, its connections, and one fresh instance per request from what a
//! framework routes it to.
//!
//! The kernel owns the server (the pooling engine, the accept loop, connection limits,
//! deadlines, a request's failures); frameworks plug in through three seams: [`Routes`] (where
//! a request goes: one component for every path, or Spin's routes), [`Handler`] (what runs
//! it: a `wasi:http/proxy` component, a Spin 1 module) and [`crate::outbound::Outbound`]
//! (where the guest's own requests may go).
//!
//! Servers get their own wasmtime engine with the pooling allocator: a request's instance
//! takes a preallocated slot (its memory image mapped copy-on-write) instead of fresh mappings,
//! which is most of what instantiation costs. Its configuration compiles the same code as the
//! compiler's ([`crate::config`]), so both share one cache entry. Everything that can go wrong
//! in a request (a trap, the memory limit, the deadline, a full pool) ends that request with a
//! 5xx and a line on the container's stderr; the server carries on.

mod proxy;
mod reuse;
mod server;
mod service;
#[cfg(test)]
mod tests;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime::component::Component;

use crate::epoch::Ticker;
use crate::error::Error;

pub use proxy::{AllPaths, Proxy, Start, run_proxy};
pub use server::{
    Failure, Handler, HandlerFuture, Routes, Server, Serving, TierUp, Worker, bind,
    is_pool_exhausted, plain, serve,
};
pub use service::{Service, run_service};

/// How much of a slot's dirtied memory (and table) is reset in place rather than released, per
/// slot: the memory an idle server keeps for each slot it has used. A hello-world request
/// dirties well under this; a larger working set has its excess released as before.
const KEEP_RESIDENT: usize = 1 << 20;

/// The interface name whose export makes a component an HTTP server.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// The interface name whose export makes a component a WASI 0.3 HTTP server.
pub const HANDLER: &str = "wasi:http/handler@0.3";

/// Whether `component` serves HTTP: it exports `wasi:http/incoming-handler` (any 0.2 version).
pub fn is_proxy(engine: &wasmtime::Engine, component: &Component) -> bool {
    exports(engine, component, INCOMING_HANDLER)
}

/// Whether `component` serves HTTP through WASI 0.3: it exports `wasi:http/handler@0.3.x`.
pub fn is_service(engine: &wasmtime::Engine, component: &Component) -> bool {
    exports(engine, component, HANDLER)
}

/// Whether `component` exports an interface whose name starts with `prefix`.
pub fn exports(engine: &wasmtime::Engine, component: &Component, prefix: &str) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name.starts_with(prefix))
}

/// Linkers made on one engine, one per type: each capability makes its own the first time a
/// guest needs it, and every later guest of the process reuses it (a linker with WASI and
/// `wasi:http` takes ~0.3 ms and 130 KiB to build). A store type's imports are fixed, so the
/// linker's type (its store type) names it.
#[derive(Default)]
pub struct Linkers(Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl Linkers {
    /// The linker of type `L`, made by `make` if this is its first use (or every use before
    /// failed).
    pub fn get<L: Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> Result<L, Error>,
    ) -> Result<Arc<L>, Error> {
        let mut made = self.0.lock().expect("linkers lock");
        if let Some(linker) = made.get(&TypeId::of::<L>()) {
            return Ok(Arc::clone(linker)
                .downcast::<L>()
                .expect("a linker is keyed by its type"));
        }
        let linker = Arc::new(make()?);
        made.insert(TypeId::of::<L>(), linker.clone());
        Ok(linker)
    }
}

/// The pooling engine servers run on, created by the first server a process prepares, and the
/// linkers made on it.
pub struct HttpEngine {
    engine: wasmtime::Engine,
    linkers: Linkers,
    ticker: Ticker,
    /// How many threads a server runs requests on (see [`HttpEngine::new`]).
    threads: usize,
}

impl HttpEngine {
    /// `cpus`: how many CPUs the process may use.
    pub fn new(mut config: wasmtime::Config, cpus: usize) -> Result<HttpEngine, Error> {
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
        Ok(HttpEngine {
            ticker: Ticker::new(&engine),
            engine,
            linkers: Linkers::default(),
            threads,
        })
    }

    /// The pooling engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Its epoch clock.
    pub fn ticker(&self) -> &Ticker {
        &self.ticker
    }

    /// The linkers made on it.
    pub fn linkers(&self) -> &Linkers {
        &self.linkers
    }

    /// How many threads a server runs requests on.
    pub fn threads(&self) -> usize {
        self.threads
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
