//! Live controls of a running guest: pausing it, its memory limit and its CPU quota; and what it
//! has used ([`Usage`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtime::UpdateDeadline;

use crate::epoch::EPOCH_TICK;
use crate::usage::{Meter, Usage};
use wasmcell_workload::{CpuQuota, Limits};

/// Changes what a running guest may do, from outside its run: shared by the run and whoever
/// serves `pause`, `resume` and `update`.
#[derive(Clone)]
pub struct Controls(Arc<Inner>);

struct Inner {
    paused: watch::Sender<bool>,
    /// Asked to end gracefully (SIGTERM to a server: stop accepting, finish what is in flight).
    terminating: watch::Sender<bool>,
    /// The memory limit in bytes; `u64::MAX` for none.
    memory_limit: AtomicU64,
    cpu: Mutex<Slicer>,
    /// What its runs have used.
    meter: Meter,
}

/// Epoch-based CPU time slicing: every tick at which the guest is found running wasm counts as
/// one tick of CPU; a guest that has used its quota in the current period waits for the next.
/// The sandbox's cgroup throttles the whole process; this throttles each guest within it, so
/// the containers of a pod each get their own quota.
struct Slicer {
    quota: Option<CpuQuota>,
    period_start: Instant,
    used: Duration,
}

impl Slicer {
    /// How long the guest must wait before running on, if it has used up its quota.
    fn charge_tick(&mut self) -> Option<Duration> {
        let quota = self.quota?;
        let period = Duration::from_micros(quota.period_us.max(1));
        let now = Instant::now();
        if now.duration_since(self.period_start) >= period {
            self.period_start = now;
            self.used = Duration::ZERO;
        }
        self.used += EPOCH_TICK;
        (self.used >= Duration::from_micros(quota.quota_us))
            .then(|| (self.period_start + period).saturating_duration_since(now))
    }
}

impl Controls {
    /// Controls starting from the spec's limits, not paused.
    pub fn new(limits: &Limits) -> Controls {
        let memory_limit = AtomicU64::new(limits.memory.unwrap_or(u64::MAX));
        let cpu = Mutex::new(Slicer {
            quota: limits.cpu,
            period_start: Instant::now(),
            used: Duration::ZERO,
        });
        Controls(Arc::new(Inner {
            paused: watch::channel(false).0,
            terminating: watch::channel(false).0,
            memory_limit,
            cpu,
            meter: Meter::default(),
        }))
    }

    /// Stops the guest at its next epoch tick (within 10 ms of running wasm). A host call in
    /// progress (a sleep, a read) completes first; the guest stops when it returns to wasm.
    pub fn pause(&self) {
        self.0.paused.send_replace(true);
    }

    /// Asks the guest to end gracefully. Only servers can (see [`crate::Prepared::stops_gracefully`]):
    /// they stop accepting and let requests in flight finish.
    pub fn terminate(&self) {
        self.0.terminating.send_replace(true);
    }

    /// Resolves once [`Controls::terminate`] has been called.
    pub async fn terminated(&self) {
        let mut terminating = self.0.terminating.subscribe();
        let _ = terminating.wait_for(|asked| *asked).await;
    }

    /// Whether the guest is to stay paused.
    pub fn is_paused(&self) -> bool {
        *self.0.paused.borrow()
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

    /// Changes the CPU quota; it applies from the next epoch tick.
    pub fn set_cpu_quota(&self, quota: Option<CpuQuota>) {
        self.0.cpu.lock().expect("slicer lock").quota = quota;
    }

    /// What the guest's runs have used so far (CPU, and the memory they hold now).
    pub fn usage(&self) -> Usage {
        self.0.meter.usage()
    }

    /// Where the guest's use is counted.
    pub fn meter(&self) -> &Meter {
        &self.0.meter
    }

    /// The memory limit now.
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.0.memory_limit.load(Ordering::Relaxed)).filter(|limit| *limit != u64::MAX)
    }

    /// What a guest does at each epoch tick: yield to the async runtime (so kills and other
    /// guests get their turn); past its CPU quota, wait for the next period; while paused, wait
    /// until resumed.
    pub fn at_epoch(&self) -> UpdateDeadline {
        if !self.is_paused() {
            return match self.0.cpu.lock().expect("slicer lock").charge_tick() {
                Some(wait) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(wait))),
                None => UpdateDeadline::Yield(1),
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A quota no guest uses up within a test: an hour per hour.
    const GENEROUS: CpuQuota = CpuQuota {
        quota_us: 3_600_000_000,
        period_us: 3_600_000_000,
    };

    /// A quota already used up at the first tick, for a period that outlasts the test.
    const SPENT: CpuQuota = CpuQuota {
        quota_us: 0,
        period_us: 3_600_000_000,
    };

    fn waits(deadline: &UpdateDeadline) -> bool {
        matches!(deadline, UpdateDeadline::YieldCustom(1, _))
    }

    #[test]
    fn a_running_guest_yields_one_tick_at_a_time() {
        let controls = Controls::new(&Limits::default());
        assert!(!controls.is_paused());
        assert!(matches!(controls.at_epoch(), UpdateDeadline::Yield(1)));
    }

    #[tokio::test]
    async fn a_paused_guest_waits_at_its_next_tick_until_resumed() {
        let controls = Controls::new(&Limits::default());
        controls.pause();
        assert!(controls.is_paused());
        let UpdateDeadline::YieldCustom(1, waiting) = controls.at_epoch() else {
            panic!("a paused guest went on");
        };
        let waiting = tokio::spawn(waiting);
        // Resumed from another handle, as `resume` is served.
        controls.clone().resume();
        waiting.await.unwrap();
        assert!(!controls.is_paused());
        assert!(matches!(controls.at_epoch(), UpdateDeadline::Yield(1)));
    }

    /// In a runtime, as guests run: the wait past a spent quota is a tokio timer.
    #[tokio::test]
    async fn the_cpu_quota_from_the_spec_and_its_updates_apply_at_the_next_tick() {
        let controls = Controls::new(&Limits {
            memory: None,
            cpu: Some(SPENT),
        });
        assert!(waits(&controls.at_epoch()), "a spent quota did not wait");
        controls.set_cpu_quota(Some(GENEROUS));
        assert!(matches!(controls.at_epoch(), UpdateDeadline::Yield(1)));
        controls.set_cpu_quota(Some(SPENT));
        assert!(waits(&controls.at_epoch()));
        controls.set_cpu_quota(None);
        assert!(matches!(controls.at_epoch(), UpdateDeadline::Yield(1)));
    }

    #[test]
    fn the_memory_limit_from_the_spec_can_be_changed_and_removed() {
        let controls = Controls::new(&Limits {
            memory: Some(64 << 20),
            cpu: None,
        });
        assert_eq!(controls.memory_limit(), Some(64 << 20));
        controls.clone().set_memory_limit(Some(128 << 20));
        assert_eq!(controls.memory_limit(), Some(128 << 20));
        controls.set_memory_limit(None);
        assert_eq!(controls.memory_limit(), None);
        assert_eq!(Controls::new(&Limits::default()).memory_limit(), None);
    }

    #[tokio::test]
    async fn terminate_wakes_those_waiting_and_those_who_ask_later() {
        let controls = Controls::new(&Limits::default());
        let waiting = tokio::spawn({
            let controls = controls.clone();
            async move { controls.terminated().await }
        });
        controls.terminate();
        waiting.await.unwrap();
        // Asked after the fact, it has already happened.
        controls.terminated().await;
        // Terminating is not pausing.
        assert!(!controls.is_paused());
    }
}
