//! The open loop's schedule (`--rate N`): operation `i` is due at `start + i / N`,
//! whether or not a connection is free then.
//!
//! A free connection takes the next operation in order ([`Schedule::take`]), waits
//! until it is due if it is early, and sends it; its latency counts from when it was
//! due. When every connection is busy the due operations wait, and that waiting is
//! part of their latency (no coordinated omission). Operations due before the run's
//! end that no connection took by then are "behind" ([`Schedule::close`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Above any operation's number, so that taking after [`Schedule::close`] finds
/// nothing, and far from overflowing however many connections still try.
const CLOSED: u64 = u64::MAX / 2;

#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    /// The next operation a free connection takes.
    next: AtomicU64,
    /// Operations due before the end (warm-up plus duration): `0..total`.
    total: u64,
    /// The first operation due after the warm-up: `first_measured..total` are measured.
    first_measured: u64,
}

/// How many operations `0, 1, ...` are due before `after` at `rate` a second: those
/// with `i / rate < after`.
fn due_before(rate: f64, after: Duration) -> u64 {
    // Less a hair, so that a whole product (2 s at 100/s) is not rounded up by an
    // error in its last bit.
    (after.as_secs_f64() * rate - 1e-9).ceil().max(0.0) as u64
}

impl Schedule {
    pub fn new(start: Instant, rate: f64, warmup: Duration, duration: Duration) -> Self {
        Schedule {
            start,
            rate,
            next: AtomicU64::new(0),
            total: due_before(rate, warmup + duration),
            first_measured: due_before(rate, warmup),
        }
    }

    /// When operation `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The end of the run (of its measured part).
    pub fn end(&self, warmup: Duration, duration: Duration) -> Instant {
        self.start + warmup + duration
    }

    /// The next operation and when it is due; `None` once all are taken or the
    /// schedule is closed.
    pub fn take(&self) -> Option<(u64, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then(|| (i, self.due(i)))
    }

    /// Whether operation `i` is in the measured part of the run.
    pub fn measured(&self, i: u64) -> bool {
        i >= self.first_measured
    }

    /// Ends the schedule: no operation is taken after this. Returns how many were
    /// (call it once).
    pub fn close(&self) -> Taken {
        let taken = self.next.swap(CLOSED, Ordering::SeqCst).min(self.total);
        Taken {
            scheduled: self.total - self.first_measured,
            sent: taken.saturating_sub(self.first_measured),
            behind: self.total - taken,
        }
    }
}

/// What became of the measured part's operations when the schedule closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Taken {
    /// Due in the measured part.
    pub scheduled: u64,
    /// Of those, taken by a connection (sent, or about to be).
    pub sent: u64,
    /// Due before the end but not taken by then (all from the end of the run, as
    /// operations are taken in order).
    pub behind: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_due_every_period_and_counted_to_the_end() {
        let start = Instant::now();
        let s = Schedule::new(
            start,
            100.0,
            Duration::from_millis(500),
            Duration::from_secs(2),
        );
        assert_eq!(s.total, 250);
        assert_eq!(s.first_measured, 50);
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(150), start + Duration::from_millis(1500));
        let (i, due) = s.take().unwrap();
        assert_eq!((i, due), (0, start));
        assert!(!s.measured(49) && s.measured(50));
        for _ in 1..120 {
            s.take().unwrap();
        }
        assert_eq!(
            s.close(),
            Taken {
                scheduled: 200,
                sent: 70,
                behind: 130,
            }
        );
        assert_eq!(s.take(), None);
    }

    #[test]
    fn a_schedule_taken_to_its_end_has_nothing_behind() {
        let s = Schedule::new(Instant::now(), 3.0, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(s.total, 3);
        assert!(s.take().is_some() && s.take().is_some() && s.take().is_some());
        assert_eq!(s.take(), None);
        assert_eq!(
            s.close(),
            Taken {
                scheduled: 3,
                sent: 3,
                behind: 0
            }
        );
    }

    #[test]
    fn due_counts_round_up_but_not_whole_products() {
        assert_eq!(due_before(100.0, Duration::from_secs(2)), 200);
        assert_eq!(due_before(100.0, Duration::from_millis(2001)), 201);
        assert_eq!(due_before(3.0, Duration::from_millis(2300)), 7);
        assert_eq!(due_before(0.1, Duration::ZERO), 0);
    }
}
