//! Retry policy: `pve-api` classifies an error once (`is_transient`), felhom decides what to
//! do with it here: transient → exponential backoff with full jitter inside a step deadline;
//! permanent → stop the job and roll back.

use std::time::Duration;

use pve_api::{ApiError, TaskFailure};
use rand::Rng;

/// Exponential backoff with full jitter (AWS architecture blog's "full jitter"): the n-th
/// wait is uniform in `[0, min(cap, base·2ⁿ)]`, so many guests retrying one lock spread out
/// instead of colliding again in lock-step.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts per step before a transient error is treated as permanent.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            max_attempts: 12,
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before attempt `n` (1-based retry count).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX));
        exp.min(self.cap)
    }
    pub fn delay(&self, n: u32) -> Duration {
        let ceil = self.ceiling(n);
        let ms = rand::thread_rng().gen_range(0..=ceil.as_millis().max(1) as u64);
        Duration::from_millis(ms.max(self.base.as_millis() as u64 / 4))
    }
}

/// Whether an API error is worth another try. Beyond `pve-api`'s own classification, a task
/// that failed on the config lock (or another `got timeout` in its exit status) is transient
/// too: the task never got to act (reference §4.1).
pub fn is_transient(err: &ApiError) -> bool {
    match err {
        ApiError::TaskFailed { kind, .. } => {
            matches!(
                kind,
                TaskFailure::LockTimeout { .. } | TaskFailure::Timeout | TaskFailure::NoQuorum
            )
        }
        other => other.is_transient(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_timed_out_on_a_lock_is_transient() {
        let failed = |exitstatus: String| ApiError::TaskFailed {
            upid: "U".into(),
            kind: TaskFailure::of(&exitstatus),
            exitstatus,
            log_tail: vec![],
        };
        let lock = pve_api::texts::lock_timeout(&pve_api::texts::config_lock_file(101));
        assert!(is_transient(&failed(pve_api::texts::unable_to_restore(
            101, &lock
        ))));
        assert!(is_transient(&failed(
            "command 'x' failed: got timeout".into()
        )));
        assert!(!is_transient(&failed(pve_api::texts::locked("backup"))));
        assert!(!is_transient(&failed("boom".into())));
    }

    #[test]
    fn ceiling_grows_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(60), Duration::from_secs(5));
        for n in 0..20 {
            assert!(b.delay(n) <= b.ceiling(n).max(Duration::from_millis(25)));
        }
    }
}
