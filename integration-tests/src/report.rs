//! A scenario's report: operation counts, the longest unavailability window, the
//! elections seen, the checker's verdict, and the history, written under `target/integration-tests/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checker::{self, Violation};
use crate::history::{Kind, Op, Outcome};
use crate::leadership::Leadership;

#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub total: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
}

impl Counts {
    fn add(&mut self, op: &Op) {
        self.total += 1;
        match op.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

/// The longest stretch of the run in which no operation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_us: u64,
    pub to_us: u64,
}

impl Window {
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.to_us - self.from_us)
    }
}

/// The longest interval between consecutive successful operations, counting from the
/// start of the run to the first success and from the last success to the end.
pub fn longest_unavailability(history: &[Op], end_us: u64) -> Window {
    let mut done: Vec<u64> = history
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .map(|op| op.return_us)
        .collect();
    done.sort_unstable();
    let mut longest = Window {
        from_us: 0,
        to_us: 0,
    };
    let mut previous = 0;
    for t in done
        .into_iter()
        .chain(std::iter::once(end_us.max(previous)))
    {
        if t.saturating_sub(previous) > longest.to_us - longest.from_us {
            longest = Window {
                from_us: previous,
                to_us: t,
            };
        }
        previous = previous.max(t);
    }
    longest
}

pub struct Report {
    pub scenario: String,
    pub counts: Counts,
    pub by_kind: BTreeMap<&'static str, Counts>,
    /// Failures and unknowns by error code or cause.
    pub errors: BTreeMap<String, usize>,
    pub unavailable: Window,
    pub violations: Vec<Violation>,
    /// Terms and leaders seen while the workload ran.
    pub leadership: Option<Leadership>,
    /// What the scenario did, with times on the history's clock.
    pub timeline: Vec<(u64, String)>,
    pub dir: PathBuf,
}

impl Report {
    /// Checks `history` and builds the report; `end_us` is when the workload stopped.
    pub fn new(scenario: &str, history: &[Op], end_us: u64, timeline: Vec<(u64, String)>) -> Self {
        let mut counts = Counts::default();
        let mut by_kind: BTreeMap<&'static str, Counts> = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for op in history {
            counts.add(op);
            let kind = match op.kind {
                Kind::Put => "put",
                Kind::Get => "get",
                Kind::Delete => "delete",
                Kind::Cas => "cas",
            };
            by_kind.entry(kind).or_default().add(op);
            if op.outcome != Outcome::Ok {
                let cause = op.detail.clone().unwrap_or_else(|| "?".into());
                *errors.entry(cause).or_insert(0) += 1;
            }
        }
        Report {
            scenario: scenario.into(),
            counts,
            by_kind,
            errors,
            unavailable: longest_unavailability(history, end_us),
            violations: checker::check(history),
            leadership: None,
            timeline,
            dir: report_dir(scenario),
        }
    }

    pub fn linearizable(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn render(&self) -> String {
        let c = &self.counts;
        let mut out = String::new();
        let _ = writeln!(out, "scenario: {}", self.scenario);
        let _ = writeln!(
            out,
            "operations: {} ran, {} succeeded, {} failed, {} unknown",
            c.total, c.ok, c.fail, c.unknown
        );
        for (kind, c) in &self.by_kind {
            let _ = writeln!(
                out,
                "  {kind:<6} {} ran, {} succeeded, {} failed, {} unknown",
                c.total, c.ok, c.fail, c.unknown
            );
        }
        let w = self.unavailable;
        let _ = writeln!(
            out,
            "longest unavailability: {:.3} s (from {:.3} s to {:.3} s)",
            w.duration().as_secs_f64(),
            w.from_us as f64 / 1e6,
            w.to_us as f64 / 1e6
        );
        if let Some(leadership) = &self.leadership {
            let _ = writeln!(out, "leadership: {leadership}");
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "errors:");
            for (cause, n) in &self.errors {
                let _ = writeln!(out, "  {n:>6}  {cause}");
            }
        }
        let _ = writeln!(out, "timeline:");
        for (at, what) in &self.timeline {
            let _ = writeln!(out, "  {:>8.3} s  {what}", *at as f64 / 1e6);
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "linearizable: yes");
        } else {
            let _ = writeln!(out, "linearizable: NO ({} keys)", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(out, "{v}");
            }
        }
        out
    }

    /// Writes `report.txt` and `history.jsonl` (and, on a violation, each offending
    /// key's operations in `key-<name>.txt`); returns the directory.
    pub fn write(&self, history: &[Op]) -> std::io::Result<&Path> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join("report.txt"), self.render())?;
        let mut lines = String::new();
        for op in history {
            lines.push_str(&serde_json::to_string(op).expect("an op serializes"));
            lines.push('\n');
        }
        std::fs::write(self.dir.join("history.jsonl"), lines)?;
        for v in &self.violations {
            let mut text = String::new();
            for op in history.iter().filter(|op| op.key == v.key) {
                let _ = writeln!(text, "{}", op.describe());
            }
            std::fs::write(self.dir.join(format!("key-{}.txt", v.key)), text)?;
        }
        Ok(&self.dir)
    }
}

/// `target/integration-tests/<scenario>` of this workspace (or of `CARGO_TARGET_DIR`).
pub fn report_dir(scenario: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        });
    target.join("integration-tests").join(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailability_counts_the_edges_of_the_run() {
        let h = vec![
            Op::put(1, "a", "v1", 0, 1_000_000),
            Op::put(1, "a", "v2", 1_000_000, 1_500_000),
            Op::put(1, "a", "v3", 1_500_000, 4_000_000).with_outcome(Outcome::Unknown),
            Op::put(1, "a", "v4", 4_000_000, 4_200_000),
        ];
        let w = longest_unavailability(&h, 5_000_000);
        assert_eq!((w.from_us, w.to_us), (1_500_000, 4_200_000));
        let w = longest_unavailability(&h, 9_000_000);
        assert_eq!((w.from_us, w.to_us), (4_200_000, 9_000_000));
        let w = longest_unavailability(&[], 2_000_000);
        assert_eq!((w.from_us, w.to_us), (0, 2_000_000));
    }

    #[test]
    fn report_counts_outcomes_and_names_violations() {
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            Op::get(2, "a", None, 20, 30),
            Op::put(1, "b", "w1", 0, 10).with_outcome(Outcome::Fail),
        ];
        let r = Report::new("unit-report", &h, 40, vec![(0, "start".into())]);
        assert_eq!((r.counts.total, r.counts.ok, r.counts.fail), (3, 2, 1));
        assert!(!r.linearizable());
        let text = r.render();
        assert!(
            text.contains("3 ran, 2 succeeded, 1 failed, 0 unknown"),
            "{text}"
        );
        assert!(text.contains("linearizable: NO (1 keys)"), "{text}");
    }
}
