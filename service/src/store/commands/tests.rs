use super::*;
use crate::types::{Compare, CompareOp, Operand};

fn meta(create_revision: u64, mod_revision: u64, version: u64, lease: u64) -> KeyMeta {
    KeyMeta {
        create_revision,
        mod_revision,
        version,
        lease,
    }
}

fn put_if(key: &str, value: &str, condition: Option<Condition>) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
        ttl_seconds: None,
        condition,
    }
}

fn put_on(key: &str, lease: u64) -> Command {
    Command::Put {
        key: key.into(),
        value: "v".into(),
        lease: Some(lease),
        ttl_seconds: None,
        condition: None,
    }
}

fn stored(result: CommandResult) -> KeyMeta {
    match result {
        CommandResult::Put { meta, .. } => meta,
        other => panic!("expected a put, got {other:?}"),
    }
}

#[test]
fn revisions_follow_creation_writes_and_deletes() {
    let mut data = Memory::default();
    assert_eq!(
        stored(apply(&mut data, 5, &Command::put("k", "a")).unwrap()),
        meta(5, 5, 1, 0)
    );
    assert_eq!(
        stored(apply(&mut data, 9, &Command::put("k", "b")).unwrap()),
        meta(5, 9, 2, 0)
    );
    assert_eq!(
        apply(&mut data, 10, &Command::delete("k")).unwrap(),
        CommandResult::Deleted {
            existed: true,
            revision: 10
        }
    );
    assert_eq!(
        apply(&mut data, 11, &Command::delete("k")).unwrap(),
        CommandResult::Deleted {
            existed: false,
            revision: 11
        }
    );
    // Created again: a new life, counted from 1.
    assert_eq!(
        stored(apply(&mut data, 12, &Command::put("k", "c")).unwrap()),
        meta(12, 12, 1, 0)
    );
    assert_eq!(data.records["k"].value, "c");
}

#[test]
fn conditions_are_decided_on_the_key_as_it_is() {
    let mut data = Memory::default();
    let absent = Some(Condition::Absent);
    assert_eq!(
        stored(apply(&mut data, 3, &put_if("k", "1", absent)).unwrap()),
        meta(3, 3, 1, 0)
    );
    // Create-only again: the key exists now.
    assert_eq!(
        apply(&mut data, 4, &put_if("k", "2", absent)).unwrap(),
        CommandResult::PreconditionFailed {
            current: Some(meta(3, 3, 1, 0))
        }
    );
    // A stale revision fails and changes nothing; the current one succeeds.
    let stale = Some(Condition::ModRevision(2));
    assert!(matches!(
        apply(&mut data, 5, &put_if("k", "x", stale)).unwrap(),
        CommandResult::PreconditionFailed { .. }
    ));
    assert_eq!(data.records["k"].value, "1");
    let current = Some(Condition::ModRevision(3));
    assert_eq!(
        stored(apply(&mut data, 6, &put_if("k", "2", current)).unwrap()),
        meta(3, 6, 2, 0)
    );
    // Deletes take conditions too; on an absent key `Exists` fails with no current.
    let delete = |condition| Command::Delete {
        key: "k".into(),
        condition: Some(condition),
    };
    assert!(matches!(
        apply(&mut data, 7, &delete(Condition::ModRevision(3))).unwrap(),
        CommandResult::PreconditionFailed { .. }
    ));
    assert_eq!(
        apply(&mut data, 8, &delete(Condition::ModRevision(6))).unwrap(),
        CommandResult::Deleted {
            existed: true,
            revision: 8
        }
    );
    assert_eq!(
        apply(&mut data, 9, &delete(Condition::Exists)).unwrap(),
        CommandResult::PreconditionFailed { current: None }
    );
}

fn compare(key: &str, op: CompareOp, operand: Operand) -> Compare {
    Compare {
        key: key.into(),
        op,
        operand,
    }
}

#[test]
fn a_transaction_runs_one_branch_at_one_revision() {
    let mut data = Memory::default();
    apply(&mut data, 2, &Command::put("lock", "a")).unwrap();
    let txn = |rev| {
        Command::Txn(Txn {
            compare: vec![compare("lock", CompareOp::Equal, Operand::ModRevision(rev))],
            success: vec![
                TxnOp::Put {
                    key: "lock".into(),
                    value: "b".into(),
                    lease: None,
                },
                TxnOp::Put {
                    key: "other".into(),
                    value: "c".into(),
                    lease: None,
                },
                TxnOp::Get {
                    key: "other".into(),
                },
            ],
            failure: vec![TxnOp::Get { key: "lock".into() }],
        })
    };
    let CommandResult::Txn {
        succeeded, results, ..
    } = apply(&mut data, 7, &txn(2)).unwrap()
    else {
        panic!("expected a txn result");
    };
    assert!(succeeded);
    assert_eq!(
        results[..2],
        [
            OpResult::Put {
                key: "lock".into(),
                meta: meta(2, 7, 2, 0)
            },
            OpResult::Put {
                key: "other".into(),
                meta: meta(7, 7, 1, 0)
            },
        ]
    );
    // A later operation sees the earlier ones' writes.
    assert!(matches!(&results[2], OpResult::Get { record: Some(r), .. } if r.value == "c"));
    // The same comparison again fails: the failure branch runs, nothing is written.
    let CommandResult::Txn {
        succeeded, results, ..
    } = apply(&mut data, 8, &txn(2)).unwrap()
    else {
        panic!("expected a txn result");
    };
    assert!(!succeeded);
    assert!(
        matches!(&results[0], OpResult::Get { record: Some(r), .. } if r.meta.mod_revision == 7)
    );
    assert_eq!(data.records["lock"].value, "b");
}

#[test]
fn comparisons_on_absent_keys_see_zeros_and_no_value() {
    let absent = None;
    let holds = |op, operand| compare("k", op, operand).holds(absent);
    assert!(holds(CompareOp::Equal, Operand::CreateRevision(0)));
    assert!(holds(CompareOp::Equal, Operand::Version(0)));
    assert!(holds(CompareOp::Less, Operand::ModRevision(1)));
    assert!(!holds(CompareOp::Equal, Operand::Value(String::new())));
    assert!(!holds(CompareOp::NotEqual, Operand::Value("x".into())));
    let record = Record {
        value: "b".into(),
        meta: meta(1, 4, 2, 0),
    };
    let holds = |op, operand| compare("k", op, operand).holds(Some(&record));
    assert!(holds(CompareOp::Greater, Operand::Value("a".into())));
    assert!(holds(CompareOp::NotEqual, Operand::Version(1)));
    assert!(!holds(CompareOp::Greater, Operand::ModRevision(4)));
}

#[test]
fn a_transaction_naming_a_missing_lease_changes_nothing() {
    let mut data = Memory::default();
    let txn = Command::Txn(Txn {
        compare: vec![],
        success: vec![
            TxnOp::Put {
                key: "a".into(),
                value: "1".into(),
                lease: None,
            },
            TxnOp::Put {
                key: "b".into(),
                value: "1".into(),
                lease: Some(99),
            },
        ],
        failure: vec![],
    });
    assert_eq!(
        apply(&mut data, 3, &txn).unwrap(),
        CommandResult::LeaseNotFound { id: 99 }
    );
    assert!(data.records.is_empty() && data.changes.is_empty());
}

#[test]
fn a_range_in_a_transaction_says_whether_there_is_more() {
    let mut data = Memory::default();
    for (i, key) in ["a/1", "a/2", "a/3", "b"].iter().enumerate() {
        apply(&mut data, i as u64 + 1, &Command::put(*key, "v")).unwrap();
    }
    let range = |limit| {
        Command::Txn(Txn {
            compare: vec![],
            success: vec![TxnOp::Range {
                start: "a/".into(),
                end: Some("a0".into()),
                limit,
            }],
            failure: vec![],
        })
    };
    for (limit, keys, more) in [
        (2, vec!["a/1", "a/2"], true),
        (3, vec!["a/1", "a/2", "a/3"], false),
    ] {
        let CommandResult::Txn { results, .. } = apply(&mut data, 9, &range(limit)).unwrap() else {
            panic!("expected a txn result");
        };
        let OpResult::Range { pairs, more: got } = &results[0] else {
            panic!("expected a range");
        };
        let got_keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!((got_keys, *got), (keys, more), "limit {limit}");
    }
}

#[test]
fn leases_are_granted_kept_and_revoked_with_their_keys() {
    let mut data = Memory::default();
    let CommandResult::Lease { lease } =
        apply(&mut data, 4, &Command::LeaseGrant { ttl_seconds: 10 }).unwrap()
    else {
        panic!("expected a lease");
    };
    assert_eq!(
        lease,
        Lease {
            id: 4,
            ttl_seconds: 10,
            renewed: 4
        }
    );
    assert_eq!(
        stored(apply(&mut data, 5, &put_on("a", 4)).unwrap()).lease,
        4
    );
    apply(&mut data, 6, &put_on("b", 4)).unwrap();
    // Written again without the lease: detached, survives the revoke.
    apply(&mut data, 7, &Command::put("b", "free")).unwrap();
    apply(&mut data, 8, &Command::put("c", "other")).unwrap();
    assert_eq!(
        apply(&mut data, 9, &put_on("d", 77)).unwrap(),
        CommandResult::LeaseNotFound { id: 77 }
    );
    assert!(!data.records.contains_key("d"));
    let kept = apply(&mut data, 10, &Command::LeaseKeepAlive { id: 4 }).unwrap();
    assert_eq!(
        kept,
        CommandResult::Lease {
            lease: Lease {
                id: 4,
                ttl_seconds: 10,
                renewed: 10
            }
        }
    );
    assert_eq!(
        apply(&mut data, 11, &Command::LeaseRevoke { id: 4 }).unwrap(),
        CommandResult::LeaseRevoked { id: 4, deleted: 1 }
    );
    let keys: Vec<&str> = data.records.keys().map(String::as_str).collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(
        apply(&mut data, 12, &Command::LeaseRevoke { id: 4 }).unwrap(),
        CommandResult::LeaseNotFound { id: 4 }
    );
    assert_eq!(
        apply(&mut data, 13, &Command::LeaseKeepAlive { id: 4 }).unwrap(),
        CommandResult::LeaseNotFound { id: 4 }
    );
}

#[test]
fn an_expiry_spares_a_lease_renewed_after_the_leader_decided() {
    let mut data = Memory::default();
    apply(&mut data, 1, &Command::LeaseGrant { ttl_seconds: 1 }).unwrap();
    apply(&mut data, 2, &Command::LeaseGrant { ttl_seconds: 1 }).unwrap();
    apply(&mut data, 3, &put_on("x", 1)).unwrap();
    apply(&mut data, 4, &put_on("y", 2)).unwrap();
    // The leader saw both last renewed at their grants; lease 2 was kept alive since.
    apply(&mut data, 5, &Command::LeaseKeepAlive { id: 2 }).unwrap();
    let expire = Command::LeaseExpire {
        leases: vec![(1, 1), (2, 2), (3, 3)],
    };
    assert_eq!(
        apply(&mut data, 6, &expire).unwrap(),
        CommandResult::LeasesExpired {
            ids: vec![1],
            deleted: 1
        }
    );
    assert!(!data.records.contains_key("x") && data.records.contains_key("y"));
}

#[test]
fn a_put_with_a_ttl_gets_a_lease_of_its_own_in_the_same_entry() {
    let mut data = Memory::default();
    let command = Command::Put {
        key: "session".into(),
        value: "v".into(),
        lease: None,
        ttl_seconds: Some(30),
        condition: None,
    };
    let CommandResult::Put { meta, granted } = apply(&mut data, 8, &command).unwrap() else {
        panic!("expected a put");
    };
    assert_eq!(meta.lease, 8);
    assert_eq!(
        granted,
        Some(Lease {
            id: 8,
            ttl_seconds: 30,
            renewed: 8
        })
    );
    assert_eq!(data.leases[&8].ttl_seconds, 30);
}

#[test]
fn what_a_command_reads_is_named_before_it_is_applied() {
    let txn = Command::Txn(Txn {
        compare: vec![compare("c", CompareOp::Equal, Operand::Version(1))],
        success: vec![TxnOp::Put {
            key: "p".into(),
            value: "v".into(),
            lease: Some(5),
        }],
        failure: vec![TxnOp::Range {
            start: "r".into(),
            end: None,
            limit: 10,
        }],
    });
    let reads = reads(&txn);
    assert_eq!(reads.keys, ["c", "p"]);
    assert_eq!(reads.leases, [5]);
    assert_eq!(reads.ranges[0].limit, 11);
    let expire = super::reads(&Command::LeaseExpire {
        leases: vec![(1, 1)],
    });
    assert_eq!((expire.leases, expire.lease_keys), (vec![1], vec![1]));
}
