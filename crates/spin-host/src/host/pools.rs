//! A component's connection pools to outbound databases, one per address, kept between
//! requests as Spin keeps them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many addresses a component keeps a pool for (the least recently used one goes; its
/// connections close as their handles are dropped).
const POOLS: usize = 16;

/// How many connections a component may hold open at once through one interface's handles,
/// whatever addresses they go to (each address's pool bounds its own too).
const HANDLES: usize = 64;

/// How long `open` waits for a handle when the component holds [`HANDLES`].
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Pools of type `P` (a cheap handle to a shared pool), by address, most recently used last;
/// and the permits for open handles.
pub(crate) struct Pools<P> {
    pools: std::sync::Mutex<Vec<(String, P)>>,
    handles: Arc<Semaphore>,
}

impl<P> Default for Pools<P> {
    fn default() -> Self {
        Pools {
            pools: Default::default(),
            handles: Arc::new(Semaphore::new(HANDLES)),
        }
    }
}

impl<P> Pools<P> {
    /// A permit for one more open handle (held as long as the handle), waiting at most
    /// [`WAIT`] for one to be dropped: addresses that differ only in their options would
    /// otherwise each get a pool, and connections without bound.
    pub(crate) async fn admit(&self) -> Result<OwnedSemaphorePermit, String> {
        match tokio::time::timeout(WAIT, self.handles.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(format!(
                "too many connections: the component holds {HANDLES} open handles"
            )),
        }
    }
}

impl<P: Clone> Pools<P> {
    /// The pool for `address`, made by `make` on first use.
    pub(crate) fn get(
        &self,
        address: &str,
        make: impl FnOnce() -> Result<P, String>,
    ) -> Result<P, String> {
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(at) = pools.iter().position(|(a, _)| a == address) {
            let entry = pools.remove(at);
            let pool = entry.1.clone();
            pools.push(entry);
            return Ok(pool);
        }
        let pool = make()?;
        if pools.len() == POOLS {
            pools.remove(0);
        }
        pools.push((address.to_owned(), pool.clone()));
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool is made once per address and reused; past the bound the least recently used
    /// address's pool is the one made again.
    #[test]
    fn pools_are_reused_and_the_least_recently_used_goes() {
        let pools = Pools::default();
        let made = std::cell::Cell::new(0);
        let get = |address: &str| {
            pools
                .get(address, || {
                    made.set(made.get() + 1);
                    Ok(made.get())
                })
                .unwrap()
        };
        assert_eq!(get("a"), 1);
        assert_eq!(get("a"), 1);
        for n in 0..POOLS - 1 {
            get(&n.to_string());
        }
        assert_eq!(get("a"), 1, "a was used last of all but one");
        get("one more");
        assert_eq!(made.get(), POOLS + 1);
        assert_eq!(get("0"), POOLS + 2, "0 was the least recently used");
    }

    /// A handle past the bound waits until one is dropped.
    #[tokio::test]
    async fn open_handles_are_bounded() {
        let pools = Pools::<()>::default();
        let mut held = Vec::new();
        for _ in 0..HANDLES {
            held.push(pools.admit().await.unwrap());
        }
        let mut waiting = std::pin::pin!(pools.admit());
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        held.pop();
        assert!(waiting.await.is_ok());
    }
}
