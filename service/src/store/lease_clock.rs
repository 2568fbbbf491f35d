//! When each lease runs out, as this node sees it. Every node tracks every lease from
//! the entries it applies (a grant or keepalive starts its TTL again when applied),
//! so a new leader already knows the deadlines; only the leader acts on them, by
//! proposing the expiry through the Raft log. Deadlines are local `Instant`s, never
//! wall-clock times, and a node applies an entry no sooner than the client sent it, so
//! no node's deadline comes before the one the client can count on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::types::Lease;

#[derive(Default)]
pub struct LeaseClock {
    leases: Mutex<HashMap<u64, Tracked>>,
}

struct Tracked {
    deadline: Instant,
    ttl: Duration,
    /// The revision of the grant or keepalive the deadline counts from.
    renewed: u64,
    /// When this node last proposed the lease's expiry, if it did.
    proposed: Option<Instant>,
}

impl LeaseClock {
    /// A lease granted or kept alive now: its TTL starts again.
    pub fn track(&self, lease: &Lease) {
        let ttl = Duration::from_secs(lease.ttl_seconds);
        self.lock().insert(
            lease.id,
            Tracked {
                deadline: Instant::now() + ttl,
                ttl,
                renewed: lease.renewed,
                proposed: None,
            },
        );
    }

    pub fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Replaces every deadline with the leases as the store holds them, each with its
    /// full TTL from now (after a start or a snapshot install: never earlier than a
    /// deadline another node keeps).
    pub fn reset(&self, leases: &[Lease]) {
        let mut tracked = self.lock();
        tracked.clear();
        drop(tracked);
        for lease in leases {
            self.track(lease);
        }
    }

    /// What is left of lease `id`'s TTL (zero once past), if this node tracks it.
    pub fn remaining(&self, id: u64) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .get(&id)
            .map(|t| t.deadline.saturating_duration_since(now))
    }

    /// On becoming leader: no lease runs out within `grace` (an election timeout), so
    /// that a client whose keepalive went to the old leader has time to reach the new
    /// one.
    pub fn extend_all(&self, grace: Duration) {
        let at_least = Instant::now() + grace;
        for tracked in self.lock().values_mut() {
            tracked.deadline = tracked.deadline.max(at_least);
        }
    }

    /// The leases past their deadline as `(id, renewed)`, those proposed within
    /// `retry_after` left out (their expiry is on its way), marked proposed now.
    pub fn due(&self, retry_after: Duration) -> Vec<(u64, u64)> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (id, tracked) in self.lock().iter_mut() {
            let waiting = tracked
                .proposed
                .is_some_and(|at| now.duration_since(at) < retry_after);
            if tracked.deadline <= now && !waiting {
                tracked.proposed = Some(now);
                due.push((*id, tracked.renewed));
            }
        }
        due.sort_unstable();
        due
    }

    /// The TTL a lease was granted with, if tracked.
    pub fn ttl(&self, id: u64) -> Option<Duration> {
        self.lock().get(&id).map(|t| t.ttl)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64, ttl_seconds: u64, renewed: u64) -> Lease {
        Lease {
            id,
            ttl_seconds,
            renewed,
        }
    }

    #[test]
    fn a_lease_is_due_once_past_its_deadline_and_proposed_once() {
        let clock = LeaseClock::default();
        clock.track(&lease(1, 0, 1));
        clock.track(&lease(2, 3600, 2));
        assert_eq!(clock.due(Duration::from_secs(60)), vec![(1, 1)]);
        // Proposed: not again until the retry pause has passed.
        assert!(clock.due(Duration::from_secs(60)).is_empty());
        assert_eq!(clock.due(Duration::ZERO), vec![(1, 1)]);
        // Kept alive: a new deadline and revision.
        clock.track(&lease(1, 3600, 9));
        assert!(clock.due(Duration::ZERO).is_empty());
        assert!(clock.remaining(2).unwrap() > Duration::from_secs(3500));
        clock.forget(2);
        assert_eq!(clock.remaining(2), None);
    }

    #[test]
    fn a_new_leader_gives_every_lease_at_least_the_grace() {
        let clock = LeaseClock::default();
        clock.reset(&[lease(1, 0, 1), lease(2, 3600, 2)]);
        clock.extend_all(Duration::from_secs(60));
        assert!(clock.due(Duration::ZERO).is_empty());
        assert!(clock.remaining(1).unwrap() > Duration::from_secs(59));
        assert!(clock.remaining(2).unwrap() > Duration::from_secs(3500));
        assert_eq!(clock.len(), 2);
    }
}
