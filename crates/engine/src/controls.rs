//! Live controls of a running guest: pausing it, and its memory limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use wasmtime::UpdateDeadline;

use crate::workload::Limits;

/// Changes what a running guest may do, from outside its run: shared by the run and whoever
/// serves `pause`, `resume` and `update`.
#[derive(Clone)]
pub struct Controls(Arc<Inner>);

struct Inner {
    paused: watch::Sender<bool>,
    /// The memory limit in bytes; `u64::MAX` for none.
    memory_limit: AtomicU64,
}

impl Controls {
    /// Controls starting from the spec's limits, not paused.
    pub fn new(limits: &Limits) -> Controls {
        let memory_limit = AtomicU64::new(limits.memory.unwrap_or(u64::MAX));
        Controls(Arc::new(Inner {
            paused: watch::channel(false).0,
            memory_limit,
        }))
    }

    /// Stops the guest at its next epoch tick (within 10 ms of running wasm). A host call in
    /// progress (a sleep, a read) completes first; the guest stops when it returns to wasm.
    pub fn pause(&self) {
        self.0.paused.send_replace(true);
    }

    /// Lets a paused guest go on.
    pub fn resume(&self) {
        self.0.paused.send_replace(false);
    }

    /// Changes the memory limit; it applies to the guest's next memory growth.
    pub fn set_memory_limit(&self, limit: Option<u64>) {
        self.0
            .memory_limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The memory limit now.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        Some(self.0.memory_limit.load(Ordering::Relaxed)).filter(|limit| *limit != u64::MAX)
    }

    /// What a guest does at each epoch tick: yield to the async runtime (so kills and other
    /// guests get their turn), and while paused, wait there until resumed.
    pub(crate) fn at_epoch(&self) -> UpdateDeadline {
        if !*self.0.paused.borrow() {
            return UpdateDeadline::Yield(1);
        }
        let mut paused = self.0.paused.subscribe();
        UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                let _ = paused.wait_for(|paused| !paused).await;
            }),
        )
    }
}
