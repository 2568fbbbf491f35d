//! Admission of writes by their bytes. A count of requests (`server.max_in_flight`)
//! cannot bound a burst of large values: 64 writes of 1 MiB are few requests, but
//! reading, replicating and applying them takes long. A [`ByteBudget`] admits a write
//! only while the bytes of the writes already admitted leave room for it, and refuses
//! it at once otherwise, so the client gets 503 `OVERLOADED` and tries again later (as
//! etcd bounds each request with `--max-request-bytes` and pushes back on proposals).
//!
//! Two budgets of `server.max_in_flight_bytes` each: every node's client API charges
//! the bodies of the writes it is serving (before reading them), and the leader charges
//! every write it proposes to Raft, its own and those followers forward.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of writes that may be in flight at one place. Cheap to clone.
#[derive(Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    limit: usize,
}

/// Admitted bytes, given back when dropped (the write has finished).
pub struct Admitted {
    _bytes: OwnedSemaphorePermit,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Admits a write of `bytes`, or `None` at once when the budget has no room. A write
    /// larger than the whole budget is admitted when nothing else is in flight.
    pub fn admit(&self, bytes: usize) -> Option<Admitted> {
        let wanted = u32::try_from(bytes.clamp(1, self.limit)).unwrap_or(u32::MAX);
        let permit = self.bytes.clone().try_acquire_many_owned(wanted).ok()?;
        Some(Admitted { _bytes: permit })
    }

    /// Why a write was refused, for its error message.
    pub fn refusal(&self, place: &str) -> String {
        format!(
            "{} bytes of writes are in flight {place} (server.max_in_flight_bytes is {})",
            self.limit - self.bytes.available_permits(),
            self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_admitted_while_their_bytes_fit_and_refused_at_once_after() {
        let budget = ByteBudget::new(10);
        let first = budget.admit(6).expect("room for 6");
        assert!(budget.admit(5).is_none());
        assert!(budget
            .refusal("here")
            .starts_with("6 bytes of writes are in flight here"));
        let second = budget.admit(4).expect("room for 4");
        drop(first);
        assert!(budget.admit(6).is_some());
        drop(second);
        // A write larger than the whole budget waits for an empty one, not for ever.
        assert!(budget.admit(11).is_some());
    }
}
