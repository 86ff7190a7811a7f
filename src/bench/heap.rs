//! The bench binary's global allocator counts live heap bytes (through
//! `stats_alloc`), so the index phase can measure what each disk-resident
//! entry costs in RAM. Every system runs under the same allocator, so the
//! small cost of counting is shared alike.

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes currently allocated on the heap by the whole process.
pub fn live_bytes() -> i64 {
    // A realloc's growth counts as allocated, its shrinking as deallocated.
    let s = ALLOCATOR.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}
