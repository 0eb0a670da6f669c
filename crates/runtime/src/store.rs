//! What every store holds besides WASI, whatever runs in it: its limits (memory and tables,
//! counted in the workload's usage) and its part in the epoch clock; and the engine parts made
//! on first use.

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use crate::controls::Controls;
use crate::epoch::StoreClock;
use crate::error::Error;

/// The host bytes one table element is counted at against the memory limit: the largest
/// element wasmtime stores (a continuation reference, two words); a `funcref` is one word and an
/// `externref` or `anyref` half of one, so tables are counted at no less than they hold.
const TABLE_ELEMENT_BYTES: u64 = 2 * size_of::<usize>() as u64;

/// The most elements any one table may have, with or without a memory limit: far beyond what
/// compilers emit (a table holds a program's indirectly called functions, thousands), and a
/// bound on the host memory a guest with no limit can take through a table (160 MB at
/// [`TABLE_ELEMENT_BYTES`]).
const MAX_TABLE_ELEMENTS: usize = 10_000_000;

/// What a guest tried to hold past what it may; it ended as out of memory (status 137).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// Its memories and tables together past the memory limit, in bytes.
    MemoryLimit(u64),
    /// One table past the most elements any table may have (10 million, with or without a
    /// memory limit).
    TableElements,
}

impl std::fmt::Display for Overrun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overrun::MemoryLimit(limit) => write!(
                f,
                "it exceeded its memory limit of {limit} bytes (its memories and tables together)"
            ),
            Overrun::TableElements => write!(
                f,
                "it grew a table past {MAX_TABLE_ELEMENTS} elements, the most a table may have"
            ),
        }
    }
}

/// Enforces [`Limits`] on one store: its memories and tables together within the memory limit
/// (a store of a grouped container or a component has several), and each table within
/// [`MAX_TABLE_ELEMENTS`]. Remembers whether the guest overran them, and counts what the store
/// holds in the workload's [`Usage`](crate::Usage) for as long as it lives.
pub struct Limiter {
    controls: Controls,
    overrun: Option<Overrun>,
    /// Bytes of linear memory and table this store holds.
    held: u64,
}

impl Limiter {
    /// Limits under `controls`, nothing held yet.
    pub fn new(controls: Controls) -> Limiter {
        Limiter {
            controls,
            overrun: None,
            held: 0,
        }
    }

    /// Whether the guest tried to hold more than it may.
    pub fn exceeded(&self) -> bool {
        self.overrun.is_some()
    }

    /// What the guest tried to hold past what it may, if it did.
    pub fn overrun(&self) -> Option<Overrun> {
        self.overrun
    }

    /// The memory limit, if holding `bytes` more would pass it.
    fn limit_passed_by(&self, bytes: u64) -> Option<u64> {
        let limit = self.controls.memory_limit()?;
        (self.held.saturating_add(bytes) > limit).then_some(limit)
    }

    /// Grants growth by `bytes` (wasmtime calls this also when a memory or table is created,
    /// from 0), or ends the guest: an error rather than `Ok(false)`, so that it traps at once
    /// instead of carrying on with a failed allocation, and the run ends as out of memory.
    fn grow(&mut self, bytes: u64) -> wasmtime::Result<bool> {
        if let Some(limit) = self.limit_passed_by(bytes) {
            return Err(self.overran(Overrun::MemoryLimit(limit)));
        }
        self.held += bytes;
        self.controls.meter().grew(bytes);
        Ok(true)
    }

    fn overran(&mut self, overrun: Overrun) -> wasmtime::Error {
        self.overrun = Some(overrun);
        wasmtime::format_err!("{overrun}")
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past its declared maximum wasmtime fails the growth itself (`memory.grow` answers
        // -1): nothing is granted, so nothing is counted.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        self.grow(desired.saturating_sub(current) as u64)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let elements = desired.saturating_sub(current) as u64;
        let bytes = elements.saturating_mul(TABLE_ELEMENT_BYTES);
        // The memory limit, when the growth passes it too, is the reason the user can act on.
        if desired > MAX_TABLE_ELEMENTS && self.limit_passed_by(bytes).is_none() {
            return Err(self.overran(Overrun::TableElements));
        }
        self.grow(bytes)
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.controls.meter().released(self.held);
    }
}

/// What every store holds besides WASI: its limits and its part in the epoch clock.
pub struct Budget {
    /// Its memory and table limits, and whether the guest overran them.
    pub limiter: Limiter,
    /// Its part in the epoch clock: CPU time is counted while it runs wasm.
    pub clock: StoreClock,
    /// What the host holds for it until it reads it.
    pub held: Held,
}

impl Budget {
    /// A store's budget under `controls`, on `clock`.
    pub fn new(controls: &Controls, clock: StoreClock) -> Budget {
        Budget {
            limiter: Limiter::new(controls.clone()),
            clock,
            held: Held::default(),
        }
    }
}

/// What the host holds for one instance outside its memory until the guest reads it: a
/// query's rows handed over as a stream (WASI 0.3's async interfaces) wait in host memory,
/// counted against no memory limit, for as long as the guest leaves them unread. A guest that
/// asked for result after result without reading one would take the node's memory: the bytes
/// held are bounded per instance ([`Held::MAX`]), and what would pass the bound is refused.
#[derive(Clone, Default)]
pub struct Held(Arc<std::sync::atomic::AtomicUsize>);

impl Held {
    /// The most bytes an instance's unread results may hold: two of the largest result a
    /// statement may have (`MAX_RESULT_BYTES` of the stores, 32 MiB).
    pub const MAX: usize = 64 << 20;

    /// Counts `bytes` more as held until the returned token is dropped, unless that would pass
    /// [`Held::MAX`]: then how much is held already.
    pub fn take(&self, bytes: usize) -> Result<HeldBytes, usize> {
        use std::sync::atomic::Ordering;
        let mut held = self.0.load(Ordering::Relaxed);
        loop {
            let total = held.saturating_add(bytes);
            if total > Held::MAX {
                return Err(held);
            }
            match self
                .0
                .compare_exchange_weak(held, total, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(HeldBytes {
                        bytes,
                        held: self.0.clone(),
                    });
                }
                Err(now) => held = now,
            }
        }
    }

    /// The bytes held now.
    pub fn bytes(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Bytes counted as held, until dropped.
pub struct HeldBytes {
    bytes: usize,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.held
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Gives [`new_store`] the store's [`Budget`] whatever the binary kind.
pub trait HasBudget: Send + 'static {
    /// The store's budget.
    fn budget(&mut self) -> &mut Budget;
}

/// A store for one run: memory limits, the epoch clock, and at every epoch the controls'
/// decision (pause, CPU slice, go on).
pub fn new_store<T: HasBudget>(
    engine: &wasmtime::Engine,
    state: T,
    controls: &Controls,
) -> Store<T> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.budget().limiter);
    store.call_hook(|mut store, hook| {
        let budget = store.data_mut().budget();
        budget.clock.hook(hook);
        // The clock does not tick while guests wait in host calls, so a guest paused during one
        // would run on until a tick happened to land: stop it at its first epoch check instead.
        if !hook.entering_host() && budget.limiter.controls.is_paused() {
            store.set_epoch_deadline(0);
        }
        Ok(())
    });
    store.set_epoch_deadline(1);
    let at_epoch = controls.clone();
    store.epoch_deadline_callback(move |_| Ok(at_epoch.at_epoch()));
    store
}

/// A part of an engine made the first time a guest needs it and kept for the process's
/// life. A process mostly runs one kind of guest: a sandbox running modules never needs the
/// component linker (133 KiB of heap and 0.26 ms to build, measured), a server neither linker
/// of the default engine. A failed attempt is made again by the next caller.
pub struct OnFirstUse<T>(Mutex<Option<Arc<T>>>);

impl<T> Default for OnFirstUse<T> {
    fn default() -> Self {
        OnFirstUse(Mutex::new(None))
    }
}

impl<T> OnFirstUse<T> {
    /// The part, made by `make` if this is its first use (or every use before failed).
    pub fn get(&self, make: impl FnOnce() -> Result<T, Error>) -> Result<Arc<T>, Error> {
        let mut made = self.0.lock().expect("engine part lock");
        if let Some(part) = &*made {
            return Ok(part.clone());
        }
        let part = Arc::new(make()?);
        *made = Some(part.clone());
        Ok(part)
    }
}

#[cfg(test)]
mod tests {
    use wasmcell_workload::Limits;
    use wasmtime::ResourceLimiter;

    use super::*;

    #[test]
    fn held_bytes_are_bounded_and_released_when_dropped() {
        let held = Held::default();
        let first = held.take(Held::MAX / 2).unwrap();
        let second = held.take(Held::MAX / 2).unwrap();
        assert_eq!(held.take(1).err(), Some(Held::MAX));
        drop(first);
        assert_eq!(held.bytes(), Held::MAX / 2);
        let third = held.take(Held::MAX / 2).unwrap();
        assert_eq!(held.take(usize::MAX).err(), Some(Held::MAX));
        drop((second, third));
        assert_eq!(held.bytes(), 0);
    }

    const MIB: usize = 1 << 20;

    fn limiter(memory: Option<usize>) -> Limiter {
        Limiter::new(Controls::new(&Limits {
            memory: memory.map(|m| m as u64),
            cpu: None,
        }))
    }

    /// Issue 24: under a 64 MiB limit a grouped container grew 8 memories of 48 MiB each.
    #[test]
    fn a_stores_memories_count_together_against_the_limit() {
        let mut limiter = limiter(Some(64 * MIB));
        assert!(limiter.memory_growing(0, 48 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 8 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 16 * MIB, None).is_err());
        assert_eq!(limiter.overrun, Some(Overrun::MemoryLimit(64 * MIB as u64)));
    }

    /// Issue 24: a 40M-element table grew under a 64 MiB limit.
    #[test]
    fn table_elements_count_against_the_memory_limit() {
        let mut limiter = limiter(Some(64 * MIB));
        assert!(limiter.memory_growing(0, 32 * MIB, None).unwrap());
        // 1M elements: 16 MiB.
        assert!(limiter.table_growing(0, MIB, None).unwrap());
        // 2M more: 32 MiB, past the limit with the memory.
        assert!(limiter.table_growing(MIB, 3 * MIB, None).is_err());
        assert_eq!(limiter.overrun, Some(Overrun::MemoryLimit(64 * MIB as u64)));
    }

    #[test]
    fn tables_are_bounded_without_a_memory_limit() {
        let mut limiter = limiter(None);
        assert!(limiter.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(
            limiter
                .table_growing(MAX_TABLE_ELEMENTS, MAX_TABLE_ELEMENTS + 1, None)
                .is_err()
        );
        assert_eq!(limiter.overrun, Some(Overrun::TableElements));
    }

    #[test]
    fn growth_past_a_declared_maximum_fails_without_being_counted() {
        let mut limiter = limiter(Some(4 * MIB));
        for _ in 0..100 {
            assert!(!limiter.memory_growing(MIB, 2 * MIB, Some(MIB)).unwrap());
            assert!(!limiter.table_growing(10, 20, Some(10)).unwrap());
        }
        assert!(limiter.memory_growing(0, 4 * MIB, None).unwrap());
        assert_eq!(limiter.overrun, None);
    }
}
