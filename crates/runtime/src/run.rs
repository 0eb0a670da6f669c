//! What a prepared workload runs: the seam between the kernel, which starts, meters and stops
//! runs, and what each kind of workload does in one (a command's entry, a server, a Spin app's
//! triggers).

use std::pin::Pin;
use std::sync::Arc;

use crate::controls::Controls;
use crate::error::Error;
use crate::exit::Exit;
use crate::http::{Serving, TierUp};
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
