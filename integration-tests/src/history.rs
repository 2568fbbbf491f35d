//! What the workload did and saw: one [`Op`] per request, with invoke and return times
//! from one monotonic clock.

use serde::{Deserialize, Serialize};

/// The operation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Put,
    Get,
    Delete,
    /// A conditional put: writes `value` only if the key holds `expected` (`None`: only
    /// if the key is absent).
    Cas,
}

/// How a request ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The server answered with the operation's result.
    Ok,
    /// The operation certainly did not take effect (refused before it was proposed, or
    /// the connection could not be opened).
    Fail,
    /// It may or may not have taken effect: a timeout, a dropped connection, or an
    /// answer that says the outcome is unknown.
    Unknown,
}

/// One request in a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client that sent it; a client has at most one request in flight.
    pub client: u32,
    /// The node (1-based) it was sent to.
    pub node: u32,
    pub kind: Kind,
    pub key: String,
    /// For a put, the value written (unique in the history); for a get that returned
    /// Ok, the value read (`None`: the key did not exist).
    pub value: Option<String>,
    /// For a delete that returned Ok: whether the key existed.
    pub found: Option<bool>,
    /// For a compare-and-set: the value the key had to hold for the write to apply
    /// (`None`: the key had to be absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// For a compare-and-set that returned Ok: whether it was applied (`false`: the
    /// server refused it because the key did not hold `expected`, HTTP 412). A refused
    /// compare-and-set is still an observation and is linearized like a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// The key's `mod_revision`: for a get that returned Ok, the revision it read; for a
    /// compare-and-set, the revision it was conditioned on (`If-Match`). Informational:
    /// the checker works on values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Microseconds since the workload started, when the request was sent...
    pub invoke_us: u64,
    /// ...and when the client saw the outcome (or gave up waiting).
    pub return_us: u64,
    pub outcome: Outcome,
    /// The error code or message when the outcome is not Ok.
    pub detail: Option<String>,
}

impl Op {
    /// A put that completed with Ok.
    pub fn put(client: u32, key: &str, value: &str, invoke_us: u64, return_us: u64) -> Op {
        Op {
            client,
            node: 1,
            kind: Kind::Put,
            key: key.into(),
            value: Some(value.into()),
            found: None,
            expected: None,
            applied: None,
            revision: None,
            invoke_us,
            return_us,
            outcome: Outcome::Ok,
            detail: None,
        }
    }

    /// A get that completed with Ok and read `value`.
    pub fn get(client: u32, key: &str, value: Option<&str>, invoke_us: u64, return_us: u64) -> Op {
        Op {
            kind: Kind::Get,
            value: value.map(Into::into),
            ..Op::put(client, key, "", invoke_us, return_us)
        }
    }

    /// A delete that completed with Ok; `found`: whether the key existed.
    pub fn delete(client: u32, key: &str, found: bool, invoke_us: u64, return_us: u64) -> Op {
        Op {
            kind: Kind::Delete,
            value: None,
            found: Some(found),
            ..Op::put(client, key, "", invoke_us, return_us)
        }
    }

    /// A compare-and-set that completed with Ok: `value` replaced `expected` if
    /// `applied`, else the server answered that the key did not hold `expected`.
    pub fn cas(
        client: u32,
        key: &str,
        expected: Option<&str>,
        value: &str,
        applied: bool,
        invoke_us: u64,
        return_us: u64,
    ) -> Op {
        Op {
            kind: Kind::Cas,
            expected: expected.map(Into::into),
            applied: Some(applied),
            ..Op::put(client, key, value, invoke_us, return_us)
        }
    }

    /// The same operation with another outcome (results cleared unless Ok).
    pub fn with_outcome(mut self, outcome: Outcome) -> Op {
        self.outcome = outcome;
        if outcome != Outcome::Ok {
            if !matches!(self.kind, Kind::Put | Kind::Cas) {
                self.value = None;
            }
            self.found = None;
            self.applied = None;
        }
        self
    }

    /// Whether this operation may have changed the key to `value`: a put or an applied
    /// compare-and-set that did not fail, or one whose outcome is unknown.
    pub fn may_write(&self) -> bool {
        match (self.kind, self.outcome) {
            (_, Outcome::Fail) => false,
            (Kind::Put, _) => true,
            (Kind::Cas, Outcome::Unknown) => true,
            (Kind::Cas, Outcome::Ok) => self.applied == Some(true),
            _ => false,
        }
    }

    /// One line describing the operation, for reports.
    pub fn describe(&self) -> String {
        let result = match (self.outcome, self.kind) {
            (Outcome::Ok, Kind::Put) => "ok".to_string(),
            (Outcome::Ok, Kind::Get) => match &self.value {
                Some(v) => format!("-> {v:?}"),
                None => "-> not found".into(),
            },
            (Outcome::Ok, Kind::Delete) => match self.found {
                Some(true) => "-> deleted".into(),
                _ => "-> not found".into(),
            },
            (Outcome::Ok, Kind::Cas) => match self.applied {
                Some(true) => "ok".into(),
                _ => "-> precondition failed (412)".into(),
            },
            (Outcome::Fail, _) => format!("FAIL {}", self.detail.as_deref().unwrap_or("")),
            (Outcome::Unknown, _) => format!("UNKNOWN {}", self.detail.as_deref().unwrap_or("")),
        };
        let call = match self.kind {
            Kind::Put => format!(
                "put({}, {:?})",
                self.key,
                self.value.as_deref().unwrap_or("")
            ),
            Kind::Get => format!("get({})", self.key),
            Kind::Delete => format!("delete({})", self.key),
            Kind::Cas => format!(
                "cas({}, {} -> {:?})",
                self.key,
                match &self.expected {
                    Some(v) => format!("{v:?}"),
                    None => "absent".into(),
                },
                self.value.as_deref().unwrap_or("")
            ),
        };
        format!(
            "[{:>10.3} ms .. {:>10.3} ms] client {:>2} node {} {call} {result}",
            self.invoke_us as f64 / 1000.0,
            self.return_us as f64 / 1000.0,
            self.client,
            self.node,
        )
    }
}
