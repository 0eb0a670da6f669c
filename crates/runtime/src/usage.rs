//! What a workload uses, for container stats: the CPU time its guests ran for and the linear
//! memory its live instances hold.
//!
//! Measured per workload rather than read from a cgroup because the containers of a pod are
//! instances in one sandbox process, which shares one cgroup: the cgroup tells the pod's total
//! (CRI reads it for pod stats), this tells each container's part.
//!
//! - CPU of a command: the thread CPU time of every poll of its run, host calls included. A
//!   poll costs two `clock_gettime` calls (about 1 us each on this project's VMs), paid only
//!   when the guest resumes after waiting, or every 10 ms epoch tick while it computes.
//! - CPU of an HTTP server: the CPU clocks of its own threads, read when asked, so a request
//!   pays nothing for being measured.
//! - Memory: the current size of every linear memory of the workload's live instances, as the
//!   engine grows them; an HTTP server between requests holds none.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

/// A workload's use so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time, in nanoseconds, since the workload started (never decreases).
    pub cpu_ns: u64,
    /// Bytes of linear memory its live instances hold now.
    pub memory_bytes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu_ns: self.cpu_ns + other.cpu_ns,
            memory_bytes: self.memory_bytes + other.memory_bytes,
        }
    }
}

/// The running count behind [`Usage`], shared by a workload's runs and whoever asks.
#[derive(Default)]
pub struct Meter {
    /// CPU of finished polls and of ended threads.
    cpu_ns: AtomicU64,
    memory_bytes: AtomicU64,
    /// The CPU clocks of live threads that serve this workload alone.
    threads: Mutex<Vec<libc::clockid_t>>,
}

impl Meter {
    /// The use so far, live threads read now.
    pub fn usage(&self) -> Usage {
        let live: u64 = self
            .threads
            .lock()
            .expect("thread clocks")
            .iter()
            .map(|clock| clock_ns(*clock))
            .sum();
        Usage {
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed) + live,
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
        }
    }

    /// An instance's memories grew by `bytes` (or were created that large).
    pub fn grew(&self, bytes: u64) {
        self.memory_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An instance holding `bytes` of memory was dropped.
    pub fn released(&self, bytes: u64) {
        self.memory_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Counts every poll of `future` (on whatever thread polls it) as this workload's CPU.
    pub fn metered<F: Future>(&self, future: F) -> Metered<'_, F> {
        Metered {
            meter: self,
            future: Box::pin(future),
        }
    }

    /// Counts the calling thread's CPU, from its start, as this workload's until the returned
    /// guard is dropped (on the same thread, at its end).
    pub fn own_thread(&self) -> ThreadShare<'_> {
        let clock = this_thread_clock();
        self.threads.lock().expect("thread clocks").push(clock);
        ThreadShare { meter: self, clock }
    }
}

/// A future whose polls are counted in a [`Meter`].
pub struct Metered<'m, F> {
    meter: &'m Meter,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        let polled = self.future.as_mut().poll(cx);
        let spent = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(start);
        self.meter.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        polled
    }
}

/// A thread whose CPU counts for one workload; see [`Meter::own_thread`].
pub struct ThreadShare<'m> {
    meter: &'m Meter,
    clock: libc::clockid_t,
}

impl Drop for ThreadShare<'_> {
    fn drop(&mut self) {
        let mut threads = self.meter.threads.lock().expect("thread clocks");
        threads.retain(|clock| *clock != self.clock);
        // Under the lock, so a reader never sees this thread's time twice or not at all.
        self.meter
            .cpu_ns
            .fetch_add(clock_ns(self.clock), Ordering::Relaxed);
    }
}

/// The CPU clock of the calling thread, readable from any thread of the process while it lives.
fn this_thread_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the calling thread, alive for the call; `clock` is a valid
    // out-pointer. It fails only for a thread that does not exist.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc == 0 {
        clock
    } else {
        libc::CLOCK_THREAD_CPUTIME_ID
    }
}

/// A clock's reading in nanoseconds (0 if it cannot be read: a thread that ended).
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_and_threads_are_counted_and_memory_follows_instances() {
        let meter = Meter::default();
        let busy = async {
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_millis(20) {
                std::hint::black_box(0u64);
            }
        };
        poll_to_end(meter.metered(busy));
        let after_poll = meter.usage().cpu_ns;
        assert!(after_poll > 0, "a busy poll counts: {after_poll}");

        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _share = meter.own_thread();
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(20) {
                    std::hint::black_box(0u64);
                }
            });
        });
        let after_thread = meter.usage().cpu_ns;
        assert!(after_thread > after_poll, "{after_thread} > {after_poll}");
        assert!(meter.threads.lock().unwrap().is_empty());

        meter.grew(65536);
        meter.grew(131072);
        assert_eq!(meter.usage().memory_bytes, 196608);
        meter.released(196608);
        assert_eq!(meter.usage().memory_bytes, 0);
    }

    /// Polls a future that never waits to its end.
    fn poll_to_end<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }
}
