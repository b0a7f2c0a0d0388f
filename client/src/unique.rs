//! Identifiers that only need to be unique, not secret: request ids, default fence scopes,
//! temporary upload names and viewer ids. std's randomly keyed hasher gives us enough randomness
//! without a random-number dependency; a process-wide counter and the clock make collisions
//! impossible in practice even between clients created in the same nanosecond.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A 64-bit value that differs on every call (in this process and, with overwhelming
/// probability, across processes).
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(unix_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// The fence scope a client uses when none is configured: one fresh scope per client, so two
/// tetherctl invocations never share an epoch sequence by accident.
pub(crate) fn default_fence_scope() -> String {
    format!("tetherctl-{}-{}", std::process::id(), unix_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(random_u64()));
        }
    }

    #[test]
    fn default_scopes_differ_and_name_the_tool() {
        let a = default_fence_scope();
        let b = default_fence_scope();
        assert!(a.starts_with("tetherctl-"));
        assert_ne!(a, b);
    }
}
