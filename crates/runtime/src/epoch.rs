//! The engine's epoch clock, which ticks only while some guest is executing wasm.
//!
//! Guests reach an epoch check every [`EPOCH_TICK`]; that is where they are time-sliced and
//! where a spinning guest can be stopped. A guest blocked in a host call (sleeping, waiting on a
//! socket) needs no ticks: dropping its future stops it at that call. Neither does a process
//! with no guest at all (a shim, which only compiles). On a node with hundreds of idle
//! containers a thread waking every 10 ms in each would be real CPU, so the clock follows
//! wasmtime's call hooks: each store counts how deep it is inside wasm, the process-wide sum
//! is kept in an atomic, and the ticker's thread sleeps on a condition variable while it is 0.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::CallHook;

/// How often running guests reach an epoch check, where they yield to the async runtime and
/// can be cancelled. Bounds how long a CPU-bound guest delays a kill.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Shared by an engine and everything prepared with it; the thread ends once all are gone.
#[derive(Clone)]
pub struct Ticker(Arc<Handle>);

struct Handle {
    engine: wasmtime::EngineWeak,
    shared: Arc<Shared>,
}

/// What the ticker's thread shares with the handles and the stores.
struct Shared {
    /// How many wasm activations are executing (or suspended in an epoch yield), over all stores.
    inside: AtomicUsize,
    /// The thread is waiting, or about to wait, for `inside` to leave 0.
    parked: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    spawned: bool,
    /// Every handle is gone: no store can enter wasm any more.
    orphaned: bool,
}

/// One store's part in the clock, kept in the store's data and driven by its call hook.
pub struct StoreClock {
    shared: Arc<Shared>,
    depth: usize,
}

impl Ticker {
    /// Starts ticking `engine`'s epoch.
    pub fn new(engine: &wasmtime::Engine) -> Ticker {
        Ticker(Arc::new(Handle {
            engine: engine.weak(),
            shared: Arc::new(Shared {
                inside: AtomicUsize::new(0),
                parked: AtomicBool::new(false),
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }))
    }

    /// The clock for a new store, spawning the ticker's thread the first time.
    pub fn store_clock(&self) -> std::io::Result<StoreClock> {
        let shared = &self.0.shared;
        let mut state = shared.state.lock().expect("ticker lock");
        if !state.spawned {
            let (engine, thread_shared) = (self.0.engine.clone(), shared.clone());
            std::thread::Builder::new()
                .name("wasmcell-epoch".into())
                .spawn(move || tick(&engine, &thread_shared))?;
            state.spawned = true;
        }
        Ok(StoreClock {
            shared: shared.clone(),
            depth: 0,
        })
    }
}

impl StoreClock {
    /// Follows the store into and out of wasm: install with `Store::call_hook`.
    pub fn hook(&mut self, hook: CallHook) {
        if hook.entering_host() {
            self.depth -= 1;
            self.shared.inside.fetch_sub(1, SeqCst);
        } else {
            self.depth += 1;
            if self.shared.inside.fetch_add(1, SeqCst) == 0 && self.shared.parked.load(SeqCst) {
                let _state = self.shared.state.lock().expect("ticker lock");
                self.shared.changed.notify_all();
            }
        }
    }
}

impl Drop for StoreClock {
    /// A store dropped inside wasm (a guest killed while computing) leaves the count with it.
    fn drop(&mut self) {
        self.shared.inside.fetch_sub(self.depth, SeqCst);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.state.lock().expect("ticker lock").orphaned = true;
        self.shared.changed.notify_all();
    }
}

fn tick(engine: &wasmtime::EngineWeak, shared: &Shared) {
    loop {
        if shared.inside.load(SeqCst) == 0 {
            let state = shared.state.lock().expect("ticker lock");
            // Set before checking under the lock: a store entering wasm after the check sees
            // it and notifies under the same lock, so no wake-up is lost.
            shared.parked.store(true, SeqCst);
            let state = shared
                .changed
                .wait_while(state, |s| shared.inside.load(SeqCst) == 0 && !s.orphaned)
                .expect("ticker lock");
            shared.parked.store(false, SeqCst);
            if state.orphaned {
                return;
            }
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.increment_epoch();
        drop(engine);
        std::thread::sleep(EPOCH_TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(ticker: &Ticker) -> usize {
        ticker.0.shared.inside.load(SeqCst)
    }

    #[test]
    fn stores_are_counted_inside_wasm_across_nested_calls() {
        let ticker = Ticker::new(&wasmtime::Engine::default());
        let (mut a, mut b) = (ticker.store_clock().unwrap(), ticker.store_clock().unwrap());
        a.hook(CallHook::CallingWasm);
        b.hook(CallHook::CallingWasm);
        // A host call from wasm, and wasm called back from it.
        a.hook(CallHook::CallingHost);
        assert_eq!(inside(&ticker), 1);
        a.hook(CallHook::ReturningFromHost);
        a.hook(CallHook::CallingWasm);
        assert_eq!(inside(&ticker), 3);
        a.hook(CallHook::ReturningFromWasm);
        a.hook(CallHook::ReturningFromWasm);
        b.hook(CallHook::ReturningFromWasm);
        assert_eq!(inside(&ticker), 0);
    }

    /// A guest killed while computing must not leave the clock ticking for ever.
    #[test]
    fn a_store_dropped_inside_wasm_leaves_the_count() {
        let ticker = Ticker::new(&wasmtime::Engine::default());
        let (mut killed, mut running) =
            (ticker.store_clock().unwrap(), ticker.store_clock().unwrap());
        killed.hook(CallHook::CallingWasm);
        killed.hook(CallHook::CallingWasm);
        running.hook(CallHook::CallingWasm);
        drop(killed);
        assert_eq!(inside(&ticker), 1);
        running.hook(CallHook::ReturningFromWasm);
        assert_eq!(inside(&ticker), 0);
    }

    #[test]
    fn the_thread_is_spawned_once_and_told_when_every_handle_is_gone() {
        let ticker = Ticker::new(&wasmtime::Engine::default());
        let shared = ticker.0.shared.clone();
        assert!(
            !shared.state.lock().unwrap().spawned,
            "spawned before any store"
        );
        let clocks = [
            ticker.store_clock().unwrap(),
            ticker.clone().store_clock().unwrap(),
        ];
        assert!(shared.state.lock().unwrap().spawned);
        drop(ticker);
        assert!(shared.state.lock().unwrap().orphaned);
        drop(clocks);
    }
}
