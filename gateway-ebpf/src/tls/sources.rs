//! How many handshakes each client address holds, so that one address cannot fill the handshake table and
//! lock every other client out (the agent's `--tls-max-pending-per-source`, in `Config`). The kernel counts a
//! handshake in at its SYN and out when it ends; the agent rewrites the counts from the handshake table at every
//! sweep, which also counts out the handshakes it expires.
use aya_ebpf::{macros::map, maps::HashMap};
use core::intrinsics::{atomic_xadd, AtomicOrdering};

/// Pending handshakes by client address (network byte order). Signed: two CPUs ending handshakes of one address
/// while the agent rewrites its count may take it below zero until the next sweep, which must not read as a
/// huge count that refuses the address.
#[map]
pub static TLS_PENDING_SOURCES: HashMap<u32, i64> = HashMap::pinned(4096, 0);

const BPF_NOEXIST: u64 = 1;

/// Counts a new handshake of `src` in, unless the address already holds `limit` of them (0: no limit). Two CPUs
/// admitting the same address at once may both pass the check: the limit is exceeded by at most a CPU count.
#[inline(always)]
pub fn admit(src: u32, limit: u32) -> bool {
    if let Some(count) = TLS_PENDING_SOURCES.get_ptr_mut(src) {
        // SAFETY: pointer from a successful lookup; the value lives while the map does.
        if limit != 0 && unsafe { count.read_volatile() } >= i64::from(limit) {
            return false;
        }
        add(count, 1);
        return true;
    }
    // First handshake of this address: another CPU may have inserted it meanwhile, then count on that entry.
    TLS_PENDING_SOURCES.insert(src, 1, BPF_NOEXIST).is_ok()
        || TLS_PENDING_SOURCES.get_ptr_mut(src).is_some_and(|count| {
            add(count, 1);
            true
        })
}

/// Counts a handshake of `src` out. The address's last handshake removes its entry: entries left at zero until
/// the agent's next sweep (up to 10 s apart with large tables) would let many distinct clients fill the table
/// and refuse new addresses while the handshake table has room. A CPU admitting the same address at that instant
/// may count into the removed entry: the address is then under-counted by one until the next sweep.
#[inline(always)]
pub fn release(src: u32) {
    if let Some(count) = TLS_PENDING_SOURCES.get_ptr_mut(src) {
        // SAFETY: as in `admit`.
        if unsafe { count.read_volatile() } > 1 {
            add(count, -1);
        } else {
            let _ = TLS_PENDING_SOURCES.remove(src);
        }
    }
}

/// An atomic add whose result is not used: the BPF backend's `lock xadd`, the only read-modify-write it has
/// without the `fetch` variants (core's `Atomic*` types are not available on this target).
#[inline(always)]
fn add(count: *mut i64, n: i64) {
    // SAFETY: `count` points into a map value (aligned i64) that other CPUs update only through this add and
    // the agent through whole-value map updates.
    unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(count, n) };
}
