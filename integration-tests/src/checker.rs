//! A linearizability checker for key-value histories.
//!
//! The history is split per key (linearizability is compositional), and each key's
//! operations are searched as a register that starts absent, in the manner of
//! Wing & Gong with Lowe's memoisation: depth-first, at each step trying every pending
//! operation that could take effect next (one invoked before the earliest return of
//! any pending completed operation), remembering each (set of linearized operations,
//! value) already explored. The set is kept as "everything below a mark except a few
//! holes", so a state costs memory in proportion to the operations in flight, not to
//! the length of the history.
//!
//! Operations: put, get, delete, and compare-and-set (a put that applies only if the
//! key holds an expected value, or is absent). A compare-and-set that was refused
//! (the key did not hold the expected value) changed nothing but is an observation:
//! it is linearized like a read, at a point where the value was not the expected one.
//!
//! Outcomes:
//! - `Ok` operations must be linearized between their invoke and return.
//! - `Fail` operations never took effect and are left out.
//! - `Unknown` writes may take effect at any point after their invoke, or never; an
//!   unknown read is left out (it changed nothing and its answer was not seen). An
//!   unknown compare-and-set takes effect only at a point where the key holds its
//!   expected value (elsewhere it would change nothing, the same as never).
//!
//! Three reductions keep the search small without changing its verdict. When an
//! operation that changes nothing (a read, a refused compare-and-set, a delete that
//! found nothing) could come next and is consistent with the value, it is taken
//! without trying the others (see [`Search::choices`]). An unknown put
//! whose value no operation observed (no read returned it, no compare-and-set expected
//! it) is indistinguishable from any other such put on the key (it sets "some value
//! nobody saw"), and unknown deletes are indistinguishable from each other: within
//! each of these classes only the earliest-invoked pending operation is tried, so
//! orders that differ only by swapping them are explored once. Unknown
//! compare-and-sets are never in a class: whether one applies depends on the value
//! before it, so two of them are not interchangeable. The value an unobserved one
//! writes is "some value nobody saw" all the same (nothing compares against it).
//!
//! Two prunings count, per value, the pending operations that may still write it:
//! once the register does not hold a value and nothing left may write it, a pending
//! unknown compare-and-set that expects it is left out for good (it can no longer
//! apply), and a state where a completed operation still needs it (a read of it, a
//! compare-and-set applied on it) is abandoned at once rather than explored until that
//! operation's return blocks the search. Both matter for a counter: its values never
//! come back, and without them a violation after a few unknown writes took minutes to
//! establish.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::history::{Kind, Op, Outcome};

/// Gives up on a key after this many distinct search states (then reports that the
/// history could not be checked, which fails a test just like a violation).
const MAX_STATES: usize = 5_000_000;

/// Why a history is not linearizable (or could not be checked).
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    /// A readable account: what could be linearized, and which operations could not
    /// come next.
    pub explanation: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.explanation)
    }
}

/// Checks every key of `history`; returns the violations found (empty: linearizable).
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut per_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        per_key.entry(op.key.as_str()).or_default().push(op);
    }
    per_key
        .into_iter()
        .filter_map(|(key, ops)| check_key(key, &ops).err())
        .collect()
}

/// The register's value during the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Value {
    Absent,
    /// Written by an unknown put that no read observed.
    Unseen,
    /// The value with this index in the key's value table.
    Seen(u32),
}

/// What one operation does to the register, and what it saw.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Put(Value),
    Get(Value),
    /// `None`: the outcome (and so whether the key existed) is unknown.
    Delete(Option<bool>),
    /// Writes `new` if the value is `expected`. `applied`: `Some(true)` it did (so the
    /// value was `expected`), `Some(false)` it was refused (so the value was not
    /// `expected`), `None` unknown.
    Cas {
        expected: Value,
        new: Value,
        applied: Option<bool>,
    },
}

impl Effect {
    /// The value after this operation, if it is consistent with `before`.
    fn apply(self, before: Value) -> Option<Value> {
        match self {
            Effect::Put(v) => Some(v),
            Effect::Get(seen) => (seen == before).then_some(before),
            Effect::Delete(None) => Some(Value::Absent),
            Effect::Delete(Some(found)) => {
                (found == (before != Value::Absent)).then_some(Value::Absent)
            }
            // An unknown one that would find another value changes nothing there:
            // leaving it out (it is optional) covers that case.
            Effect::Cas {
                expected,
                new,
                applied: Some(true) | None,
            } => (before == expected).then_some(new),
            Effect::Cas {
                expected,
                applied: Some(false),
                ..
            } => (before != expected).then_some(before),
        }
    }
}

/// Interchangeable unknown operations (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Distinct,
    UnseenPut,
    UnknownDelete,
}

struct Entry<'a> {
    op: &'a Op,
    invoke: u64,
    /// `u64::MAX` for unknown operations: they may take effect at any later time.
    ret: u64,
    effect: Effect,
    class: Class,
}

/// A value some operation expects or returns that no write in the history may have
/// written: a violation, worded for the report.
fn unwritten(key: &str, ops: &[&Op], op: &Op, v: &str) -> Violation {
    let failed = ops
        .iter()
        .any(|w| matches!(w.kind, Kind::Put | Kind::Cas) && w.value.as_deref() == Some(v));
    let why = if failed {
        "a write that was reported as failed"
    } else {
        "no write in the history"
    };
    let what = match op.kind {
        Kind::Cas => "a compare-and-set was applied on",
        _ => "a read returned",
    };
    Violation {
        key: key.into(),
        explanation: format!(
            "{what} {v:?}, which was written by {why}:\n  {}",
            op.describe()
        ),
    }
}

impl Entry<'_> {
    fn required(&self) -> bool {
        self.ret != u64::MAX
    }

    /// The seen value this entry may write.
    fn writes(&self) -> Option<u32> {
        match self.effect {
            Effect::Put(Value::Seen(x))
            | Effect::Cas {
                new: Value::Seen(x),
                applied: Some(true) | None,
                ..
            } => Some(x),
            _ => None,
        }
    }

    /// The seen value that must be the register's when this completed entry is
    /// linearized.
    fn needs(&self) -> Option<u32> {
        match self.effect {
            Effect::Get(Value::Seen(x))
            | Effect::Cas {
                expected: Value::Seen(x),
                applied: Some(true),
                ..
            } if self.required() => Some(x),
            _ => None,
        }
    }

    /// For an unknown compare-and-set, the seen value it expects.
    fn expects_if_unknown(&self) -> Option<u32> {
        match self.effect {
            Effect::Cas {
                expected: Value::Seen(x),
                applied: None,
                ..
            } => Some(x),
            _ => None,
        }
    }
}

fn check_key(key: &str, ops: &[&Op]) -> Result<(), Violation> {
    // Every value a write may have written, and which values operations observed
    // (a read returned it, or a compare-and-set compared against it).
    let mut values: HashMap<&str, u32> = HashMap::new();
    for op in ops {
        if op.may_write() {
            if let Some(v) = op.value.as_deref() {
                let next = values.len() as u32;
                values.entry(v).or_insert(next);
            }
        }
    }
    let mut observed: HashSet<u32> = HashSet::new();
    for op in ops {
        if op.kind == Kind::Get && op.outcome == Outcome::Ok {
            if let Some(v) = op.value.as_deref() {
                match values.get(v) {
                    Some(id) => {
                        observed.insert(*id);
                    }
                    None => return Err(unwritten(key, ops, op, v)),
                }
            }
        }
    }
    for op in ops {
        if op.kind == Kind::Cas && op.outcome != Outcome::Fail {
            if let Some(v) = op.expected.as_deref() {
                let id = match values.get(v) {
                    Some(id) => *id,
                    // Only an applied one must have found it; for the others it is a
                    // value the key never holds.
                    None if op.outcome == Outcome::Ok && op.applied == Some(true) => {
                        return Err(unwritten(key, ops, op, v));
                    }
                    None => {
                        let next = values.len() as u32;
                        *values.entry(v).or_insert(next)
                    }
                };
                observed.insert(id);
            }
        }
    }

    let mut entries: Vec<Entry> = Vec::new();
    for op in ops {
        let unknown = op.outcome == Outcome::Unknown;
        let ret = if unknown { u64::MAX } else { op.return_us };
        // What a put or compare-and-set writes.
        let written = |op: &Op| {
            let id = values[op.value.as_deref().unwrap_or_default()];
            if unknown && !observed.contains(&id) {
                Value::Unseen
            } else {
                Value::Seen(id)
            }
        };
        let (effect, class) = match (op.outcome, op.kind) {
            (Outcome::Fail, _) | (Outcome::Unknown, Kind::Get) => continue,
            (_, Kind::Put) => match written(op) {
                Value::Unseen => (Effect::Put(Value::Unseen), Class::UnseenPut),
                seen => (Effect::Put(seen), Class::Distinct),
            },
            (_, Kind::Get) => {
                let seen = match op.value.as_deref() {
                    Some(v) => Value::Seen(values[v]),
                    None => Value::Absent,
                };
                (Effect::Get(seen), Class::Distinct)
            }
            (Outcome::Unknown, Kind::Delete) => (Effect::Delete(None), Class::UnknownDelete),
            (_, Kind::Delete) => (
                Effect::Delete(Some(op.found.unwrap_or(false))),
                Class::Distinct,
            ),
            (_, Kind::Cas) => {
                let expected = match op.expected.as_deref() {
                    Some(v) => Value::Seen(values[v]),
                    None => Value::Absent,
                };
                let applied = match op.outcome {
                    Outcome::Unknown => None,
                    _ => Some(op.applied.unwrap_or(false)),
                };
                // A refused one writes nothing, and its value need not be in the table.
                let new = match applied {
                    Some(false) => Value::Absent,
                    _ => written(op),
                };
                (
                    Effect::Cas {
                        expected,
                        new,
                        applied,
                    },
                    Class::Distinct,
                )
            }
        };
        entries.push(Entry {
            op,
            invoke: op.invoke_us,
            ret,
            effect,
            class,
        });
    }
    entries.sort_by_key(|e| (e.invoke, e.ret));
    Search::new(key, &entries, values.len()).run()
}

/// One level of the depth-first search.
struct Level {
    candidates: Vec<usize>,
    next: usize,
    value: Value,
    /// The entry linearized to get from this level to the next, and the unknown
    /// compare-and-sets retired with it.
    chosen: Option<(usize, Vec<usize>)>,
}

/// The linearized set, as a memo key: every entry below `mark` except `holes`.
type State = (u32, Box<[u32]>, Value);

struct Search<'e, 'a> {
    key: &'e str,
    entries: &'e [Entry<'a>],
    /// One past the highest linearized entry: none at or above it is linearized.
    mark: usize,
    /// The entries below `mark` not linearized.
    holes: BTreeSet<usize>,
    /// Completed operations not yet linearized.
    required_left: usize,
    /// Per seen value: the entries not yet linearized that may write it...
    writers_left: Vec<u32>,
    /// ...and the completed ones not yet linearized that must find it.
    needers_left: Vec<u32>,
    seen: HashSet<State>,
    /// The furthest the search got: how many operations it linearized, the value then,
    /// and the operations that could not come next.
    deepest: (usize, Value, Vec<usize>),
}

impl<'e, 'a> Search<'e, 'a> {
    fn new(key: &'e str, entries: &'e [Entry<'a>], values: usize) -> Self {
        let (mut writers_left, mut needers_left) = (vec![0; values], vec![0; values]);
        for e in entries {
            if let Some(x) = e.writes() {
                writers_left[x as usize] += 1;
            }
            if let Some(x) = e.needs() {
                needers_left[x as usize] += 1;
            }
        }
        Search {
            key,
            entries,
            mark: 0,
            holes: BTreeSet::new(),
            required_left: entries.iter().filter(|e| e.required()).count(),
            writers_left,
            needers_left,
            seen: HashSet::new(),
            deepest: (0, Value::Absent, Vec::new()),
        }
    }

    /// The pending entries that could take effect next, in invoke order.
    fn candidates(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut earliest_return = u64::MAX;
        let (mut unseen_put, mut unknown_delete) = (false, false);
        for i in self
            .holes
            .iter()
            .copied()
            .chain(self.mark..self.entries.len())
        {
            let e = &self.entries[i];
            if e.invoke >= earliest_return {
                break;
            }
            earliest_return = earliest_return.min(e.ret);
            let first_of_class = match e.class {
                Class::Distinct => true,
                Class::UnseenPut => !std::mem::replace(&mut unseen_put, true),
                Class::UnknownDelete => !std::mem::replace(&mut unknown_delete, true),
            };
            if first_of_class {
                out.push(i);
            }
        }
        out
    }

    /// The candidates worth trying at `value`: when one of them is an observation that
    /// changes nothing and is consistent with `value` (a read of it, a refused
    /// compare-and-set, a delete that found nothing), that one alone. Taking it first
    /// loses nothing: in any order that completes the history from here, it can be
    /// moved to the front (nothing pending had to return before it was invoked, since
    /// it is a candidate, and it leaves the value as it is for the others).
    fn choices(&self, value: Value) -> Vec<usize> {
        let candidates = self.candidates();
        let observation = candidates.iter().copied().find(|&i| {
            let effect = self.entries[i].effect;
            let pure = matches!(
                effect,
                Effect::Get(_)
                    | Effect::Delete(Some(false))
                    | Effect::Cas {
                        applied: Some(false),
                        ..
                    }
            );
            pure && effect.apply(value) == Some(value)
        });
        match observation {
            Some(i) => vec![i],
            None => candidates,
        }
    }

    /// Linearizes pending entry `i`.
    fn linearize(&mut self, i: usize) {
        if i >= self.mark {
            self.holes.extend(self.mark..i);
            self.mark = i + 1;
        } else {
            self.holes.remove(&i);
        }
        self.count(i, false);
    }

    /// Updates the counts of what is left when entry `i` is linearized (`back`: undone).
    fn count(&mut self, i: usize, back: bool) {
        let e = &self.entries[i];
        let step = |n: &mut u32| if back { *n += 1 } else { *n -= 1 };
        if let Some(x) = e.writes() {
            step(&mut self.writers_left[x as usize]);
        }
        if let Some(x) = e.needs() {
            step(&mut self.needers_left[x as usize]);
        }
        if e.required() {
            if back {
                self.required_left += 1;
            } else {
                self.required_left -= 1;
            }
        }
    }

    /// Takes out the pending unknown compare-and-sets that can no longer apply: the
    /// value they expect is not the current one and nothing left may write it. That is
    /// the same as leaving them out, which an unknown operation may always be. Returns
    /// them, in the order taken.
    fn retire_dead(&mut self, value: Value) -> Vec<usize> {
        let mut retired = Vec::new();
        loop {
            let dead: Vec<usize> = self
                .holes
                .iter()
                .copied()
                .filter(|&h| {
                    self.entries[h].expects_if_unknown().is_some_and(|x| {
                        self.writers_left[x as usize] == 0 && value != Value::Seen(x)
                    })
                })
                .collect();
            if dead.is_empty() {
                return retired;
            }
            for h in dead {
                self.holes.remove(&h);
                self.count(h, false);
                retired.push(h);
            }
        }
    }

    fn unretire(&mut self, retired: &[usize]) {
        for &h in retired.iter().rev() {
            self.holes.insert(h);
            self.count(h, true);
        }
    }

    /// A completed operation that needs a seen value the register can never hold
    /// again (it does not now, and nothing left may write it), if there is one among
    /// those that need `suspects`.
    fn doomed(&self, value: Value, suspects: impl IntoIterator<Item = u32>) -> Option<u32> {
        suspects.into_iter().find(|&x| {
            self.needers_left[x as usize] > 0
                && self.writers_left[x as usize] == 0
                && value != Value::Seen(x)
        })
    }

    /// The first pending completed entry that needs `x`.
    fn needer_of(&self, x: u32) -> Option<usize> {
        self.holes
            .iter()
            .copied()
            .chain(self.mark..self.entries.len())
            .find(|&i| self.entries[i].needs() == Some(x))
    }

    /// Undoes the latest [`Search::linearize`] still in effect, of entry `i`.
    fn unlinearize(&mut self, i: usize) {
        if i + 1 == self.mark {
            // Back to one past the highest entry still linearized.
            self.mark = i;
            while self.mark > 0 && self.holes.remove(&(self.mark - 1)) {
                self.mark -= 1;
            }
        } else {
            self.holes.insert(i);
        }
        self.count(i, true);
    }

    fn state(&self, value: Value) -> State {
        (
            self.mark as u32,
            self.holes.iter().map(|&h| h as u32).collect(),
            value,
        )
    }

    fn run(mut self) -> Result<(), Violation> {
        let mut depth = 0;
        let mut level = Level {
            candidates: self.choices(Value::Absent),
            next: 0,
            value: Value::Absent,
            chosen: None,
        };
        let mut stack: Vec<Level> = Vec::new();
        loop {
            if self.required_left == 0 {
                return Ok(());
            }
            if let Some(&i) = level.candidates.get(level.next) {
                level.next += 1;
                let Some(after) = self.entries[i].effect.apply(level.value) else {
                    continue;
                };
                self.linearize(i);
                let retired = self.retire_dead(after);
                // A value that may have just become unreachable: the one replaced, the
                // one written, those the retired entries would have written.
                let before = match level.value {
                    Value::Seen(x) if level.value != after => Some(x),
                    _ => None,
                };
                let suspects = before
                    .into_iter()
                    .chain(self.entries[i].writes())
                    .chain(retired.iter().filter_map(|&h| self.entries[h].writes()));
                if let Some(x) = self.doomed(after, suspects) {
                    if depth + 1 > self.deepest.0 {
                        let stuck = self.needer_of(x).into_iter().collect();
                        self.deepest = (depth + 1, after, stuck);
                    }
                    self.unretire(&retired);
                    self.unlinearize(i);
                    continue;
                }
                if !self.seen.insert(self.state(after)) {
                    self.unretire(&retired);
                    self.unlinearize(i);
                    continue;
                }
                if self.seen.len() > MAX_STATES {
                    return Err(Violation {
                        key: self.key.into(),
                        explanation: format!(
                            "gave up after exploring {MAX_STATES} states; the history could \
                             not be checked"
                        ),
                    });
                }
                level.chosen = Some((i, retired));
                stack.push(level);
                depth += 1;
                level = Level {
                    candidates: self.choices(after),
                    next: 0,
                    value: after,
                    chosen: None,
                };
                if depth > self.deepest.0 {
                    self.deepest = (depth, after, level.candidates.clone());
                }
            } else {
                if depth == 0 && self.deepest.0 == 0 {
                    self.deepest = (0, Value::Absent, level.candidates.clone());
                }
                let Some(mut parent) = stack.pop() else {
                    return Err(self.explain());
                };
                depth -= 1;
                let Some((i, retired)) = parent.chosen.take() else {
                    unreachable!("a parent level chose an entry");
                };
                self.unretire(&retired);
                self.unlinearize(i);
                level = parent;
            }
        }
    }

    fn explain(&self) -> Violation {
        let (depth, value, stuck) = &self.deepest;
        let shown = match value {
            Value::Absent => "absent".to_string(),
            Value::Unseen => "a value written by an unacknowledged write".to_string(),
            Value::Seen(id) => self
                .entries
                .iter()
                .find(|e| match e.effect {
                    Effect::Put(Value::Seen(v)) => v == *id,
                    Effect::Cas {
                        new: Value::Seen(v),
                        applied: Some(true) | None,
                        ..
                    } => v == *id,
                    _ => false,
                })
                .and_then(|e| e.op.value.clone())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
        };
        let mut text = format!(
            "not linearizable: at best {depth} of {} operations could be ordered; the \
             value was then {shown}, and none of the operations that could come next \
             is consistent with it:\n",
            self.entries.len()
        );
        for i in stuck {
            let _ = writeln!(text, "  {}", self.entries[*i].op.describe());
        }
        Violation {
            key: self.key.into(),
            explanation: text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(op: Op) -> Op {
        op.with_outcome(Outcome::Unknown)
    }

    fn failed(op: Op) -> Op {
        op.with_outcome(Outcome::Fail)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            Op::get(1, "a", None, 0, 10),
            Op::put(1, "a", "v1", 20, 30),
            Op::get(2, "a", Some("v1"), 40, 50),
            Op::delete(1, "a", true, 60, 70),
            Op::delete(2, "a", false, 80, 90),
            Op::get(1, "a", None, 100, 110),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            Op::put(1, "a", "v2", 20, 100),
            Op::get(2, "a", Some("v2"), 30, 40),
            Op::get(3, "a", Some("v1"), 25, 35),
            Op::get(2, "a", Some("v2"), 110, 120),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
    }

    #[test]
    fn planted_stale_read_is_rejected() {
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            Op::put(1, "a", "v2", 20, 30),
            Op::get(2, "a", Some("v1"), 40, 50),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].key, "a");
        assert!(v[0].explanation.contains("get(a)"), "{}", v[0]);
    }

    #[test]
    fn planted_lost_write_is_rejected() {
        let h = vec![Op::put(1, "a", "v1", 0, 10), Op::get(2, "a", None, 20, 30)];
        assert_eq!(check(&h).len(), 1);
        // A lost delete is a lost write too.
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            Op::delete(1, "a", true, 20, 30),
            Op::get(2, "a", Some("v1"), 40, 50),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_read_cannot_see_the_future() {
        let h = vec![
            Op::get(2, "a", Some("v1"), 0, 10),
            Op::put(1, "a", "v1", 20, 30),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn values_of_failed_or_unknown_writes() {
        // A failed put never takes effect: reading its value is a violation.
        let h = vec![
            failed(Op::put(1, "a", "v1", 0, 10)),
            Op::get(2, "a", Some("v1"), 20, 30),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].explanation.contains("reported as failed"), "{}", v[0]);
        // An unknown put may take effect, even long after the client gave up...
        let h = vec![
            unknown(Op::put(1, "a", "v1", 0, 10)),
            Op::get(2, "a", None, 20, 30),
            Op::get(2, "a", Some("v1"), 40, 50),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // ...or never, but not before it was sent.
        let h = vec![
            Op::get(2, "a", Some("v1"), 0, 10),
            unknown(Op::put(1, "a", "v1", 20, 30)),
        ];
        assert_eq!(check(&h).len(), 1);
        // Failed and unknown reads say nothing.
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            failed(Op::get(2, "a", Some("zzz"), 20, 30)),
            unknown(Op::get(2, "a", None, 40, 50)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
    }

    #[test]
    fn a_delete_reports_whether_the_key_existed() {
        let h = vec![Op::delete(1, "a", true, 0, 10)];
        assert_eq!(check(&h).len(), 1);
        // An unseen, unknown put can explain a delete that found the key.
        let h = vec![
            unknown(Op::put(1, "a", "v1", 0, 10)),
            Op::delete(2, "a", true, 20, 30),
            Op::get(2, "a", None, 40, 50),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // An unknown delete may or may not have happened.
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            unknown(Op::delete(1, "a", false, 20, 30)),
            Op::get(2, "a", Some("v1"), 40, 50),
            Op::get(2, "a", None, 60, 70),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            unknown(Op::delete(1, "a", false, 20, 30)),
            Op::get(2, "a", None, 40, 50),
            Op::get(2, "a", Some("v1"), 60, 70),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = vec![
            Op::put(1, "a", "v1", 0, 10),
            Op::put(1, "b", "w1", 20, 30),
            Op::get(2, "b", None, 40, 50),
            Op::get(2, "a", Some("v1"), 40, 50),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "b");
    }

    #[test]
    fn many_unknown_writes_are_checked_quickly() {
        // 100 puts in the void that nobody read, and 100 deletes, around reads that saw
        // only "v1": without the reduction this is 2^200 orders.
        let mut h = vec![Op::put(0, "a", "v1", 0, 10)];
        for i in 0..100u64 {
            h.push(unknown(Op::put(
                1 + i as u32,
                "a",
                &format!("x{i}"),
                20 + i,
                25 + i,
            )));
            h.push(unknown(Op::delete(
                400 + i as u32,
                "a",
                false,
                20 + i,
                25 + i,
            )));
        }
        h.push(Op::get(999, "a", Some("v1"), 15, 18));
        assert!(check(&h).is_empty());
        // The same with a read that no order can explain.
        h.push(Op::get(998, "a", Some("v1"), 400, 410));
        h.push(Op::get(998, "a", None, 420, 430));
        h.push(Op::get(998, "a", Some("v1"), 440, 450));
        assert_eq!(check(&h).len(), 1);
    }

    /// Histories produced by a real sequential register, with each operation's interval
    /// stretched around its linearization point, are always accepted; the same history
    /// with one read's answer changed to an older value is not.
    #[test]
    fn random_linearizable_histories_are_accepted() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..200 {
            let mut value: Option<String> = None;
            let mut h = Vec::new();
            let mut written: Vec<String> = Vec::new();
            for step in 0..60u64 {
                let at = step * 100 + 50;
                let invoke = at - rng.u64(0..50);
                let ret = at + rng.u64(1..250);
                let client = rng.u32(0..8);
                // Some writes end without an answer (they did take effect).
                let acknowledged = rng.u8(0..20) != 0;
                let op = match rng.u8(0..10) {
                    0..=3 => {
                        let v = format!("r{round}s{step}");
                        value = Some(v.clone());
                        if acknowledged {
                            written.push(v.clone());
                        }
                        Op::put(client, "k", &v, invoke, ret)
                    }
                    4 => {
                        let found = value.take().is_some();
                        Op::delete(client, "k", found, invoke, ret)
                    }
                    _ => Op::get(client, "k", value.as_deref(), invoke, ret),
                };
                let op = match acknowledged || op.kind == Kind::Get {
                    true => op,
                    false => unknown(op),
                };
                h.push(op);
            }
            assert!(check(&h).is_empty(), "round {round}: {:?}", check(&h));
            // Plant a stale read: after one more acknowledged write, read the value
            // of the last acknowledged put before it.
            if !written.is_empty() {
                let end = 60 * 100 + 1000;
                let last = written.last().unwrap().clone();
                h.push(Op::put(99, "k", &format!("final{round}"), end, end + 10));
                h.push(Op::get(98, "k", Some(&last), end + 20, end + 30));
                assert_eq!(check(&h).len(), 1, "round {round}: stale read accepted");
            }
        }
    }

    fn cas(client: u32, expected: Option<&str>, value: &str, applied: bool, at: (u64, u64)) -> Op {
        Op::cas(client, "c", expected, value, applied, at.0, at.1)
    }

    fn get(client: u32, value: Option<&str>, at: (u64, u64)) -> Op {
        Op::get(client, "c", value, at.0, at.1)
    }

    #[test]
    fn compare_and_set_histories_that_are_linearizable() {
        // Sequential: create from absent, increment, a refused one from a stale value.
        let h = vec![
            get(1, None, (0, 10)),
            cas(1, None, "1", true, (20, 30)),
            get(2, Some("1"), (40, 50)),
            cas(2, Some("1"), "2", true, (60, 70)),
            cas(1, Some("1"), "2", false, (80, 90)),
            cas(1, None, "1", false, (100, 110)),
            get(1, Some("2"), (120, 130)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // Two concurrent from the same value: one wins, the other is refused, whichever
        // order their intervals suggest.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            cas(1, Some("1"), "2", false, (20, 40)),
            cas(2, Some("1"), "2", true, (25, 50)),
            get(3, Some("2"), (60, 70)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // A refusal is fine while a concurrent write may already have changed the value.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            Op::put(1, "c", "x", 20, 100),
            cas(2, Some("1"), "2", false, (30, 40)),
            get(3, Some("1"), (35, 45)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
    }

    #[test]
    fn two_compare_and_sets_from_one_value_cannot_both_apply() {
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            cas(1, Some("1"), "2", true, (20, 40)),
            cas(2, Some("1"), "2", true, (25, 50)),
        ];
        assert_eq!(check(&h).len(), 1, "both applied from \"1\"");
        // The same with distinct new values, and sequential: the second found "2a".
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            cas(1, Some("1"), "2a", true, (20, 30)),
            cas(2, Some("1"), "2b", true, (40, 50)),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].explanation.contains("cas(c, \"1\" -> \"2b\")"),
            "{}",
            v[0]
        );
        // Creating from absent twice.
        let h = vec![
            cas(1, None, "1", true, (0, 40)),
            cas(2, None, "1", true, (10, 50)),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_refusal_when_the_value_was_surely_the_expected_one_is_rejected() {
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            cas(1, Some("1"), "2", false, (20, 30)),
            get(2, Some("1"), (40, 50)),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].explanation.contains("precondition failed"), "{}", v[0]);
        // Create-only on a key that was absent throughout.
        let h = vec![get(1, None, (0, 10)), cas(1, None, "1", false, (20, 30))];
        assert_eq!(check(&h).len(), 1);
        // Even with nothing read after it: nothing else wrote meanwhile.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            cas(1, Some("1"), "2", false, (20, 30)),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_lost_increment_is_rejected() {
        // Two increments applied in turn, then a read of the first one's value.
        let h = vec![
            cas(1, None, "1", true, (0, 10)),
            cas(2, Some("1"), "2", true, (20, 30)),
            cas(1, Some("2"), "3", true, (40, 50)),
            get(3, Some("2"), (60, 70)),
        ];
        assert_eq!(check(&h).len(), 1);
        // An increment applied on a value the key no longer held.
        let h = vec![
            cas(1, None, "1", true, (0, 10)),
            cas(2, Some("1"), "2", true, (20, 30)),
            cas(1, Some("1"), "2", true, (40, 50)),
        ];
        assert_eq!(check(&h).len(), 1);
        // An increment applied on a value nothing wrote.
        let h = vec![cas(1, Some("7"), "8", true, (0, 10))];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].explanation
                .contains("compare-and-set was applied on \"7\""),
            "{}",
            v[0]
        );
    }

    #[test]
    fn an_unknown_compare_and_set_applies_only_where_it_finds_its_value() {
        // It may apply late, after the client gave up...
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            unknown(cas(1, Some("1"), "2", true, (20, 30))),
            get(2, Some("1"), (40, 50)),
            get(2, Some("2"), (60, 70)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // ...or never.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            unknown(cas(1, Some("1"), "2", true, (20, 30))),
            cas(2, Some("1"), "2", true, (40, 50)),
            get(2, Some("2"), (60, 70)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // But not once the value has moved on: "2" after "x" means it applied before
        // "x" was written, and then "x" must be read after.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            unknown(cas(1, Some("1"), "2", true, (20, 30))),
            Op::put(2, "c", "x", 40, 50),
            get(3, Some("2"), (60, 70)),
        ];
        assert_eq!(check(&h).len(), 1);
        // An unknown one whose value nobody saw still cannot apply from another value:
        // the delete found the key only if it applied, and it cannot have.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            Op::delete(0, "c", true, 20, 30),
            unknown(cas(1, Some("1"), "2", true, (40, 50))),
            Op::delete(2, "c", true, 60, 70),
        ];
        assert_eq!(check(&h).len(), 1);
        // From absent it can, and the delete then found it.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            Op::delete(0, "c", true, 20, 30),
            unknown(cas(1, None, "2", true, (40, 50))),
            Op::delete(2, "c", true, 60, 70),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // A failed one never applied.
        let h = vec![
            Op::put(0, "c", "1", 0, 10),
            failed(cas(1, Some("1"), "2", true, (20, 30))),
            get(2, Some("2"), (40, 50)),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].explanation.contains("reported as failed"), "{}", v[0]);
    }

    #[test]
    fn an_unknown_compare_and_set_stays_possible_while_its_value_may_come_back() {
        let h = vec![
            Op::put(0, "c", "a", 0, 10),
            unknown(cas(1, Some("a"), "b", true, (5, 15))),
            Op::put(2, "c", "x", 20, 30),
            Op::put(2, "c", "a", 40, 50),
            get(3, Some("b"), (60, 70)),
        ];
        assert!(check(&h).is_empty(), "{:?}", check(&h));
        // Without the second "a", "b" cannot come after "x".
        let h = vec![
            Op::put(0, "c", "a", 0, 10),
            unknown(cas(1, Some("a"), "b", true, (5, 15))),
            Op::put(2, "c", "x", 20, 30),
            get(3, Some("b"), (60, 70)),
        ];
        assert_eq!(check(&h).len(), 1);
    }
}
