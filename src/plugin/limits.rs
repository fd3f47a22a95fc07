//! The resource cap of one plugin call, counted over the whole store, and a
//! record of whether the plugin hit it (so the host can report "out of
//! memory" rather than the trap it causes).
//!
//! A component may hold several core instances, each with memories and
//! tables of its own. Capping each memory would hand such a component the cap
//! several times over, so the memory cap bounds the sum of every linear
//! memory in the store, and the number of instances, memories and tables is
//! bounded too (as Spin does).

use wasmtime::ResourceLimiter;

/// Core instances one store may create. A Rust, Python or JavaScript
/// component needs a handful (its module plus adapter shims).
pub(crate) const MAX_INSTANCES: usize = 64;
/// Linear memories in one store.
pub(crate) const MAX_MEMORIES: usize = 8;
/// Tables in one store.
pub(crate) const MAX_TABLES: usize = 32;
/// Table elements over every table of a store (function references).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

pub(crate) struct Limiter {
    memory_cap: usize,
    memory_in_use: usize,
    table_elements: usize,
    pub(crate) memory_exhausted: bool,
}

impl Limiter {
    pub(crate) fn new(memory_cap: usize) -> Limiter {
        Limiter {
            memory_cap,
            memory_in_use: 0,
            table_elements: 0,
            memory_exhausted: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.memory_in_use - current.min(self.memory_in_use)).saturating_add(desired);
        let allowed = total <= self.memory_cap && maximum.is_none_or(|max| desired <= max);
        if allowed {
            self.memory_in_use = total;
        } else {
            self.memory_exhausted = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total =
            (self.table_elements - current.min(self.table_elements)).saturating_add(desired);
        let allowed = total <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max);
        if allowed {
            self.table_elements = total;
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_growth_past_the_cap_and_remembers_it() {
        let mut limiter = Limiter::new(1024);
        assert!(limiter.memory_growing(0, 1024, None).unwrap());
        assert!(!limiter.memory_exhausted);
        assert!(!limiter.memory_growing(1024, 2048, None).unwrap());
        assert!(limiter.memory_exhausted);
        assert!(!limiter
            .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
            .unwrap());
    }

    #[test]
    fn the_cap_covers_every_memory_of_the_store_together() {
        let mut limiter = Limiter::new(1000);
        // Three memories of 400 each: the third would bring the store to 1200.
        assert!(limiter.memory_growing(0, 400, None).unwrap());
        assert!(limiter.memory_growing(0, 400, None).unwrap());
        assert!(!limiter.memory_growing(0, 400, None).unwrap());
        assert!(limiter.memory_exhausted);
        // Growing one memory counts only what it adds.
        let mut limiter = Limiter::new(1000);
        assert!(limiter.memory_growing(0, 300, None).unwrap());
        assert!(limiter.memory_growing(300, 900, None).unwrap());
        assert!(!limiter.memory_growing(900, 1001, None).unwrap());
    }

    #[test]
    fn table_elements_are_counted_over_every_table() {
        let mut limiter = Limiter::new(0);
        assert!(limiter
            .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
            .unwrap());
        assert!(limiter
            .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
            .unwrap());
        assert!(!limiter.table_growing(0, 1, None).unwrap());
    }
}
