//! kvstore under faults, in containers: a three-node cluster ([`cluster`]), a workload
//! that records every request ([`workload`], [`history`]), a linearizability checker
//! ([`checker`]), the elections seen meanwhile ([`leadership`]) and a report per
//! scenario ([`report`]).
//!
//! A scenario is a [`Run`]: start the cluster and the workload, inject faults while
//! the workload runs, then [`Run::finish`] checks the history and writes the report.

pub mod checker;
pub mod cluster;
pub mod counter;
pub mod history;
pub mod leadership;
pub mod ports;
pub mod report;
pub mod workload;

pub use ports::free_port;

use std::time::{Duration, Instant};

use anyhow::Result;

use cluster::{Backend, Cluster};
use history::Outcome;
use leadership::Sampler;
use report::Report;
use workload::Workload;

/// What a scenario must achieve besides linearizability: a cluster that refuses
/// everything must not pass.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Successful operations over the whole run.
    pub ok: usize,
    /// Successful operations after the last fault was healed.
    pub ok_after_heal: usize,
}

/// A scenario in progress: the cluster, the workload against it, and what was done
/// when.
pub struct Run {
    pub name: String,
    pub cluster: Cluster,
    workload: Workload,
    leadership: Sampler,
    timeline: Vec<(u64, String)>,
    healed_at_us: u64,
}

impl Run {
    /// Starts the cluster and the workload; `None` when Docker is not available.
    pub async fn start(name: &str, backend: Backend) -> Result<Option<Run>> {
        Run::start_with(name, backend, workload::Config::default()).await
    }

    pub async fn start_with(
        name: &str,
        backend: Backend,
        config: workload::Config,
    ) -> Result<Option<Run>> {
        let Some(cluster) = Cluster::start(name, backend).await? else {
            return Ok(None);
        };
        let workload = Workload::start(cluster.endpoints.clone(), config);
        let leadership = Sampler::start(
            cluster.endpoints.clone(),
            Instant::now() - workload.elapsed(),
        );
        let pre_vote = if cluster.pre_vote { "on" } else { "off" };
        let mut run = Run {
            name: name.into(),
            cluster,
            workload,
            leadership,
            timeline: Vec::new(),
            healed_at_us: 0,
        };
        run.note(format!(
            "cluster ready ({backend:?}, Pre-Vote {pre_vote}); workload started"
        ));
        Ok(Some(run))
    }

    fn now_us(&self) -> u64 {
        self.workload.elapsed().as_micros() as u64
    }

    /// Records a step of the scenario in the report's timeline (and prints it).
    pub fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        let at = self.now_us();
        eprintln!("[{}] {:>7.3} s  {what}", self.name, at as f64 / 1e6);
        self.timeline.push((at, what));
    }

    /// Marks the fault as over: from here on the cluster must serve again.
    pub fn healed(&mut self, what: impl Into<String>) {
        self.note(what);
        self.healed_at_us = self.now_us();
    }

    /// Lets the workload run for `d`.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Stops the workload, checks the history, writes the report (and, when the
    /// scenario failed, the containers' logs) under `target/integration-tests/<name>`,
    /// removes the cluster, and panics unless the history is linearizable and the
    /// floor was reached.
    pub async fn finish(self, floor: Floor) {
        let (report, history, cluster, healed_at_us) = self.stop().await;
        let ok_after_heal = history
            .iter()
            .filter(|op| op.outcome == Outcome::Ok && op.invoke_us >= healed_at_us)
            .count();
        let mut problems = Vec::new();
        if !report.linearizable() {
            problems.push(format!(
                "the history is not linearizable ({} keys)",
                report.violations.len()
            ));
        }
        if report.counts.ok < floor.ok {
            problems.push(format!(
                "only {} operations succeeded; the floor is {}",
                report.counts.ok, floor.ok
            ));
        }
        if ok_after_heal < floor.ok_after_heal {
            problems.push(format!(
                "only {ok_after_heal} operations succeeded after the fault was healed; the \
                 floor is {}",
                floor.ok_after_heal
            ));
        }
        let dir = report.write(&history).expect("write the report").to_owned();
        if !problems.is_empty() {
            if let Err(e) = cluster.save_logs(&dir).await {
                eprintln!("could not save the containers' logs: {e}");
            }
        }
        cluster.teardown().await;
        println!("{}", report.render());
        println!("report: {}", dir.display());
        assert!(
            problems.is_empty(),
            "scenario {} failed: {}; see {}",
            report.scenario,
            problems.join("; "),
            dir.display()
        );
    }

    /// Stops the workload, checks the history, writes the report and removes the
    /// cluster; returns the report without judging it.
    pub async fn finish_report(self) -> Report {
        let (report, history, cluster, _) = self.stop().await;
        report.write(&history).expect("write the report");
        cluster.teardown().await;
        println!("{}", report.render());
        report
    }

    async fn stop(mut self) -> (Report, Vec<history::Op>, Cluster, u64) {
        self.note("workload stopping; final reads of every key from every node");
        let leadership = self.leadership.finish().await;
        let history = self.workload.finish().await;
        let end_us = history.iter().map(|op| op.return_us).max().unwrap_or(0);
        let mut report = Report::new(&self.name, &history, end_us, self.timeline);
        report.leadership = Some(leadership);
        (report, history, self.cluster, self.healed_at_us)
    }
}
