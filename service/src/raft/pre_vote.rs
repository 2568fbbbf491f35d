//! Counting Pre-Vote rounds and what became of them.
//!
//! openraft runs the rounds but reports none of them, so they are counted where they
//! leave the node: the network client. A round sends one Pre-Vote to every other voter
//! at once, so the k-th Pre-Vote to any one peer belongs to the k-th round. A round led
//! to an election when this node then asks for real votes at the round's term (openraft
//! does that as soon as a majority would grant); it did not when the next round starts
//! first, or when no election follows within the round's time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::counter;

use crate::telemetry::metrics::{PRE_VOTE_ELECTION, PRE_VOTE_NO_ELECTION, PRE_VOTE_ROUNDS};

/// The rounds this node has run; shared by its network clients.
pub struct PreVoteRounds {
    state: Mutex<Rounds>,
    /// After this long without an election a round is over: openraft waits for Pre-Vote
    /// answers for the minimum election timeout and elects at once on a majority.
    round_time: Duration,
}

#[derive(Default)]
struct Rounds {
    /// Pre-Votes sent to each peer so far.
    sent: HashMap<u64, u64>,
    /// Rounds started so far.
    started: u64,
    /// The latest round, while its outcome is unknown: (its number, its term).
    open: Option<(u64, u64)>,
}

impl PreVoteRounds {
    pub fn new(round_time: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            round_time,
        })
    }

    /// A Pre-Vote for `term` is on its way to `target`.
    pub fn pre_vote_sent(self: &Arc<Self>, target: u64, term: u64) {
        let mut state = self.lock();
        let sent = state.sent.entry(target).or_default();
        *sent += 1;
        let sent = *sent;
        if sent <= state.started {
            return; // another peer of a round already counted
        }
        state.started = sent;
        if state.open.take().is_some() {
            record(Outcome::NoElection);
        }
        state.open = Some((sent, term));
        drop(state);
        let rounds = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(rounds.round_time).await;
            let mut state = rounds.lock();
            if state.open.is_some_and(|(number, _)| number == sent) {
                state.open = None;
                record(Outcome::NoElection);
            }
        });
    }

    /// A real vote request for `term` is on its way: if a round at that term is open,
    /// it led to this election.
    pub fn vote_sent(&self, term: u64) {
        let mut state = self.lock();
        if state.open.is_some_and(|(_, t)| t == term) {
            state.open = None;
            record(Outcome::Election);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Election,
    NoElection,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Election => PRE_VOTE_ELECTION,
            Outcome::NoElection => PRE_VOTE_NO_ELECTION,
        }
    }
}

fn record(outcome: Outcome) {
    counter!(PRE_VOTE_ROUNDS, "outcome" => outcome.label()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(rounds: &PreVoteRounds) -> (u64, Option<(u64, u64)>) {
        let state = rounds.lock();
        (state.started, state.open)
    }

    #[tokio::test]
    async fn one_round_per_broadcast_and_its_outcome() {
        let rounds = PreVoteRounds::new(Duration::from_secs(60));
        // Round 1 at term 5, to peers 2 and 3; then an election at term 5.
        rounds.pre_vote_sent(2, 5);
        rounds.pre_vote_sent(3, 5);
        assert_eq!(outcomes(&rounds), (1, Some((1, 5))));
        rounds.vote_sent(5);
        assert_eq!(outcomes(&rounds), (1, None));
        // Rounds 2 and 3 at term 7: the second closes the first.
        rounds.pre_vote_sent(3, 7);
        rounds.pre_vote_sent(2, 7);
        rounds.pre_vote_sent(2, 7);
        assert_eq!(outcomes(&rounds), (3, Some((3, 7))));
        // A vote at another term (a leadership transfer) is not this round's election.
        rounds.vote_sent(9);
        assert_eq!(outcomes(&rounds), (3, Some((3, 7))));
    }

    #[tokio::test]
    async fn a_round_without_an_election_closes_after_its_time() {
        let rounds = PreVoteRounds::new(Duration::from_millis(50));
        rounds.pre_vote_sent(2, 5);
        assert_eq!(outcomes(&rounds), (1, Some((1, 5))));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while outcomes(&rounds).1.is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the round never closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // An election at its term after it closed is not counted for it.
        rounds.vote_sent(5);
        assert_eq!(outcomes(&rounds), (1, None));
    }
}
