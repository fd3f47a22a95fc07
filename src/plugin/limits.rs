//! The memory cap of one plugin call, and a record of whether the plugin hit it
//! (so the host can report "out of memory" rather than the trap it causes).

use wasmtime::ResourceLimiter;

pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) memory_exhausted: bool,
}

/// Tables hold function references; no plugin of ours needs more.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl Limiter {
    pub(crate) fn new(memory_bytes: usize) -> Limiter {
        Limiter {
            memory_bytes,
            memory_exhausted: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_bytes && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.memory_exhausted = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
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
}
