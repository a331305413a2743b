//! Per-CPU counters: every decision the program takes is counted, so nothing is dropped silently.
use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other program instance touches it concurrently.
        unsafe { *slot += 1 };
    }
}
