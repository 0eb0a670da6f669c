//! What a prepared workload runs: the seam between the kernel, which starts, meters and stops
//! runs, and what each kind of workload does in one (a command's entry, a server, a Spin app's
//! triggers).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::controls::Controls;
use crate::error::Error;
use crate::exit::Exit;
use crate::http::{HttpEngine, Routes, Serving, TierUp, serve};
use wasmcell_workload::WorkloadSpec;

/// What a run is awaited as.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Exit, Error>> + Send + 'a>>;

/// One prepared workload's run: compiled and linked once, run as often as it is started.
pub trait Run: Send + Sync {
    /// Runs it once under `controls`, to its exit. Dropping the future stops its guests at
    /// their next epoch tick or host call.
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a>;

    /// Whether it can end gracefully when asked ([`Controls::terminate`], sent for SIGTERM):
    /// servers stop accepting and finish their requests; commands cannot handle signals.
    fn stops_gracefully(&self) -> bool;

    /// Whether it counts its own threads' CPU (a server, see `crate::usage`); otherwise the
    /// caller's thread is metered while it runs.
    fn meters_itself(&self) -> bool {
        false
    }

    /// What its HTTP server serves, if it has one: how a tier-up of the same workload hands
    /// its optimised routes to the server that started on baseline code.
    fn serving(&self) -> Option<Serving> {
        None
    }

    /// Gives its server the means to switch to optimised code ([`crate::codegen`]), taken by
    /// the next run. What serves nothing drops it.
    fn tier_up(&self, tier_up: TierUp) {
        drop(tier_up);
    }
}

/// What a workload's server serves, and the [`TierUp`] that will move it to optimised code:
/// once moved, this holds the optimised serving instead, so that nothing keeps the baseline
/// code (a Python component's, ~30 MiB resident) once its last request has ended.
pub struct Tiers {
    serving: Arc<Mutex<Serving>>,
    tier_up: Mutex<Option<TierUp>>,
}

impl Tiers {
    /// Serving `serving`, with no tier-up yet.
    pub fn new(serving: Serving) -> Tiers {
        Tiers {
            serving: Arc::new(Mutex::new(serving)),
            tier_up: Mutex::new(None),
        }
    }

    /// What it serves now.
    pub fn serving(&self) -> Serving {
        self.serving.lock().expect("serving lock").clone()
    }

    /// Sets the tier-up the next run takes.
    pub fn set_tier_up(&self, tier_up: TierUp) {
        *self.tier_up.lock().expect("tier-up lock") = Some(tier_up);
    }

    /// What a run serves, and the tier-up it takes (whose serving then becomes this one's).
    pub fn for_run(&self) -> (Serving, Option<TierUp>) {
        let tier_up = self.tier_up.lock().expect("tier-up lock").take();
        let tier_up = tier_up.map(|tier_up| {
            let home = self.serving.clone();
            Box::new(move || {
                let (serving, kept) = tier_up()?;
                *home.lock().expect("serving lock") = serving.clone();
                Ok((serving, kept))
            }) as TierUp
        });
        (self.serving(), tier_up)
    }
}

/// A server as what a workload runs: served until terminated.
pub struct Served(Tiers);

impl Served {
    /// `routes` served on `http`.
    pub fn new(http: Arc<HttpEngine>, routes: Arc<dyn Routes>) -> Served {
        Served(Tiers::new(Serving { http, routes }))
    }
}

impl Run for Served {
    fn run<'a>(&'a self, spec: &'a Arc<WorkloadSpec>, controls: &'a Controls) -> RunFuture<'a> {
        let (serving, tier_up) = self.0.for_run();
        Box::pin(serve(serving, tier_up, spec, controls))
    }

    fn serving(&self) -> Option<Serving> {
        Some(self.0.serving())
    }

    fn tier_up(&self, tier_up: TierUp) {
        self.0.set_tier_up(tier_up);
    }

    fn stops_gracefully(&self) -> bool {
        true
    }

    /// Its threads count their own CPU (see `crate::usage`).
    fn meters_itself(&self) -> bool {
        true
    }
}
