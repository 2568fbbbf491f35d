//! Elections during a scenario, as the nodes report them: every node's `/status` is
//! sampled while the workload runs, and each term is noted with its leader, if any node
//! names one.
//!
//! Two numbers come out. *Terms started*: how far the highest term rose over the run;
//! every election attempt raises a term, and a raised term reaching a leader deposes it,
//! so this counts the disruptions exactly (terms only grow, and the last sample sees the
//! highest). *Leader changes*: the terms after the first sample in which some node was
//! seen leading or following a leader; one is missed only if a leader held its term for
//! less than a sampling interval on every node.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::workload::Endpoints;

const INTERVAL: Duration = Duration::from_millis(100);

/// What the samples showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// The highest term any node reported in the first round of samples that reached
    /// one, and in the whole run.
    pub first_term: u64,
    pub last_term: u64,
    /// Each term in which a leader was seen: its id, and when it was first seen
    /// (microseconds on the history's clock).
    pub leaders: BTreeMap<u64, (u64, u64)>,
}

impl Leadership {
    pub fn terms_started(&self) -> u64 {
        self.last_term - self.first_term
    }

    /// The leaders elected after the first sample.
    pub fn changes(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.leaders
            .range(self.first_term + 1..)
            .map(|(&term, &(leader, at))| (term, leader, at))
    }

    /// Notes one node's `/status` answer.
    fn observe(&mut self, status: &Json, at_us: u64, first_round: bool) {
        let Some(term) = status["term"].as_u64() else {
            return;
        };
        if first_round {
            self.first_term = self.first_term.max(term);
        }
        self.last_term = self.last_term.max(term);
        let leader = match status["role"].as_str() {
            Some("leader") => status["node_id"].as_u64(),
            _ => status["leader_id"].as_u64(),
        };
        if let Some(leader) = leader {
            self.leaders.entry(term).or_insert((leader, at_us));
        }
    }
}

impl fmt::Display for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "terms {} -> {} ({} started), {} leader changes",
            self.first_term,
            self.last_term,
            self.terms_started(),
            self.changes().count()
        )?;
        let changes: Vec<String> = self
            .changes()
            .map(|(term, leader, at)| {
                format!("node {leader} in term {term} at {:.3} s", at as f64 / 1e6)
            })
            .collect();
        if !changes.is_empty() {
            write!(f, " ({})", changes.join(", "))?;
        }
        Ok(())
    }
}

/// Samples every node until [`Sampler::finish`].
pub struct Sampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Leadership>,
}

impl Sampler {
    /// Starts sampling; `start` is the history's time zero.
    pub fn start(endpoints: Endpoints, start: Instant) -> Sampler {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let http = reqwest::Client::builder()
            .timeout(INTERVAL * 5)
            .connect_timeout(INTERVAL * 5)
            .build()
            .expect("HTTP client");
        let task = tokio::spawn(async move {
            let mut seen = Leadership::default();
            let mut first_round = true;
            loop {
                let at_us = start.elapsed().as_micros() as u64;
                let answers = futures::future::join_all((0..endpoints.len()).map(|node| {
                    let url = format!("{}/status", endpoints.get(node));
                    let http = http.clone();
                    async move { http.get(&url).send().await.ok()?.json::<Json>().await.ok() }
                }))
                .await;
                for status in answers.iter().flatten() {
                    seen.observe(status, at_us, first_round);
                }
                first_round &= answers.iter().all(Option::is_none);
                // One last round after the stop, so the final term is the run's.
                if *stopped.borrow() {
                    return seen;
                }
                let _ = tokio::time::timeout(INTERVAL, stopped.changed()).await;
            }
        });
        Sampler { stop, task }
    }

    pub async fn finish(self) -> Leadership {
        let _ = self.stop.send(true);
        self.task.await.expect("the leadership sampler panicked")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node: u64, role: &str, term: u64, leader: Option<u64>) -> Json {
        serde_json::json!({ "node_id": node, "role": role, "term": term, "leader_id": leader })
    }

    #[test]
    fn counts_terms_and_the_leaders_elected_after_the_first_sample() {
        let mut l = Leadership::default();
        l.observe(&status(1, "leader", 2, Some(1)), 0, true);
        l.observe(&status(2, "follower", 2, Some(1)), 0, true);
        // A node cut off: its term climbs, no leader.
        l.observe(&status(3, "candidate", 5, None), 100, false);
        l.observe(&status(3, "candidate", 9, None), 200, false);
        // Back: the leader is deposed; a new one in term 10, first seen by a follower.
        l.observe(&status(2, "follower", 10, Some(1)), 300, false);
        l.observe(&status(1, "leader", 10, None), 400, false);
        assert_eq!((l.first_term, l.last_term, l.terms_started()), (2, 10, 8));
        assert_eq!(l.changes().collect::<Vec<_>>(), vec![(10, 1, 300)]);
        assert_eq!(
            l.to_string(),
            "terms 2 -> 10 (8 started), 1 leader changes (node 1 in term 10 at 0.000 s)"
        );
    }

    #[test]
    fn a_quiet_run_has_no_changes() {
        let mut l = Leadership::default();
        l.observe(&status(1, "leader", 3, None), 0, true);
        l.observe(&status(1, "leader", 3, Some(1)), 5_000_000, false);
        assert_eq!(l.to_string(), "terms 3 -> 3 (0 started), 0 leader changes");
    }
}
