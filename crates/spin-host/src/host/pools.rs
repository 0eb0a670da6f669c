//! A component's connection pools to outbound databases, one per address, kept between
//! requests as Spin keeps them.

/// How many addresses a component keeps a pool for (the least recently used one goes; its
/// connections close as their handles are dropped).
const POOLS: usize = 16;

/// Pools of type `P` (a cheap handle to a shared pool), by address, most recently used last.
pub(crate) struct Pools<P>(std::sync::Mutex<Vec<(String, P)>>);

impl<P> Default for Pools<P> {
    fn default() -> Self {
        Pools(Default::default())
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
            .0
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
}
