#![allow(clippy::unwrap_used)]
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

use super::*;

fn member(site: &str) -> ArkNode {
    ArkNode {
        site: site.into(),
        peer_addr: format!("{site}:1"),
        client_addr: format!("{site}:2"),
    }
}

fn lid(term: u64, leader: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, leader), index)
}

/// A stopped node's data dir: a 3-voter membership at index 0, then blank entries up to
/// `last` of term 2, a vote of term 2.
fn three_voter_disk(dir: &Path, last: u64) {
    let db = open_database(dir).unwrap();
    let (mut wal, _, _) = open_wal(dir, &db).unwrap();
    let m: Entry<TypeConfig> = Entry {
        log_id: lid(1, 1, 0),
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, member("a")), (2, member("b")), (3, member("c"))]),
        )),
    };
    wal.append(m.log_id, &encode(&m).unwrap()).unwrap();
    for i in 1..=last {
        let e: Entry<TypeConfig> = Entry {
            log_id: lid(2, 2, i),
            payload: EntryPayload::Blank,
        };
        wal.append(e.log_id, &encode(&e).unwrap()).unwrap();
    }
    wal.commit().unwrap();
    write_value_durably(&db, META, KEY_VOTE, Some(&Vote::<NodeId>::new_committed(2, 2))).unwrap();
}

fn inspect(dir: &Path, id: NodeId) -> Inspection {
    Disk::open(dir, Some(id)).unwrap().inspect().unwrap()
}

/// Inspects and recovers in one opening, as `arkd recover` does.
fn recover(dir: &Path, id: NodeId, tamper: impl FnOnce(&mut Inspection)) -> Result<ForcedRecovery, RecoverError> {
    let mut disk = Disk::open(dir, Some(id)).unwrap();
    let mut me = disk.inspect().unwrap();
    tamper(&mut me);
    disk.force_new_cluster(&me, member("fallback"), false, vec!["x".into()])
}

#[test]
fn the_recovered_log_ends_in_a_membership_of_this_node_alone_under_a_new_term() {
    let d = tempfile::tempdir().unwrap();
    three_voter_disk(d.path(), 7);
    let before = inspect(d.path(), 3);
    assert_eq!(before.voters, vec![1, 2, 3]);
    assert_eq!(before.last_log_id, Some(lid(2, 2, 7)));
    assert_eq!(before.unapplied(), 7, "nothing applied: every entry is only held");

    let rec = recover(d.path(), 3, |_| ()).unwrap();
    assert_eq!(
        rec.new_entry,
        lid(3, 3, 8),
        "after the last entry, in a term above any seen"
    );
    assert_eq!(rec.previous_voters, vec![1, 2, 3]);

    // What openraft will find at start: the last membership entry is this node alone, the
    // old entries are all still there, and the vote is of the new term but not a leader's.
    let after = inspect(d.path(), 3);
    assert_eq!(after.voters, vec![3]);
    assert!(after.learners.is_empty());
    assert_eq!(after.membership_log_id, Some(lid(3, 3, 8)));
    assert_eq!(after.nodes.get(&3), Some(&member("c")), "its own address kept");
    assert_eq!(after.last_log_id, Some(lid(3, 3, 8)));
    assert_eq!(after.vote, Some(Vote::new(3, 3)));
    assert!(!after.vote.unwrap().is_committed());
    assert_eq!(after.recoveries, vec![rec]);
    // The old members other than this node are told to stop if they contact it.
    let db = open_database(d.path()).unwrap();
    assert_eq!(fenced_ids(&db, 3).unwrap(), BTreeSet::from([1, 2]));
    drop(db);
    let db = open_database(d.path()).unwrap();
    let (wal, _, _) = open_wal(d.path(), &db).unwrap();
    let mut kept = Vec::new();
    wal.shared()
        .read()
        .unwrap()
        .read_range(0, 100, |i, _| {
            kept.push(i);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        kept,
        (0..=8).collect::<Vec<u64>>(),
        "every old entry is kept, the new one after them"
    );
}

#[test]
fn a_vote_above_the_last_entry_raises_the_new_term() {
    let d = tempfile::tempdir().unwrap();
    three_voter_disk(d.path(), 2);
    let db = open_database(d.path()).unwrap();
    write_value_durably(&db, META, KEY_VOTE, Some(&Vote::<NodeId>::new(9, 1))).unwrap();
    drop(db);
    let rec = recover(d.path(), 1, |_| ()).unwrap();
    assert_eq!(rec.new_entry, lid(10, 1, 3));
}

#[test]
fn a_changed_log_is_not_rewritten() {
    let d = tempfile::tempdir().unwrap();
    three_voter_disk(d.path(), 4);
    let e = recover(d.path(), 1, |stale| stale.last_log_id = Some(lid(2, 2, 3)));
    assert!(e.is_err());
    let now = inspect(d.path(), 1);
    assert_eq!(now.voters, vec![1, 2, 3], "membership unchanged");
    assert_eq!(now.vote, Some(Vote::new_committed(2, 2)), "vote unchanged");
    assert_eq!(now.last_log_id, Some(lid(2, 2, 4)));
    let db = open_database(d.path()).unwrap();
    assert!(fenced_ids(&db, 1).unwrap().is_empty(), "no recovery, nobody fenced");
    assert!(now.recoveries.is_empty());
}

fn insp(id: NodeId, last: Option<u64>, voters: &[NodeId]) -> Inspection {
    Inspection {
        node_id: Some(id),
        data_dir: PathBuf::from(format!("/d{id}")),
        last_log_id: last.map(|i| lid(2, 2, i)),
        last_purged: None,
        applied: last.map(|i| lid(2, 2, i.saturating_sub(2))),
        vote: None,
        voters: voters.to_vec(),
        learners: vec![],
        membership_log_id: None,
        nodes: BTreeMap::new(),
        damage: None,
        recoveries: vec![],
        namespaces: vec![],
    }
}

#[test]
fn the_most_advanced_voter_compared_with_every_other_voter_passes() {
    let me = insp(1, Some(10), &[1, 2, 3]);
    let v = check(&me, &[insp(2, Some(10), &[1, 2, 3]), insp(3, Some(9), &[1, 2, 3])]);
    assert!(v.refusals.is_empty(), "{v:?}");
    assert!(
        v.may_lose
            .iter()
            .any(|l| l.contains("2 entries after the applied index 8")),
        "{v:?}"
    );
}

#[test]
fn a_later_log_elsewhere_refuses() {
    let me = insp(1, Some(9), &[1, 2, 3]);
    let v = check(&me, &[insp(2, Some(10), &[1, 2, 3]), insp(3, Some(9), &[1, 2, 3])]);
    assert_eq!(v.refusals.len(), 1, "{v:?}");
    assert!(v.refusals[0].contains("node 2"), "{v:?}");
}

#[test]
fn without_comparison_or_with_a_voter_left_out_it_refuses() {
    let me = insp(1, Some(10), &[1, 2, 3]);
    let alone = check(&me, &[]);
    assert!(alone.refusals.iter().any(|r| r.contains("cannot know")), "{alone:?}");
    let partial = check(&me, &[insp(2, Some(3), &[1, 2, 3])]);
    assert!(partial.refusals.iter().any(|r| r.contains("[3]")), "{partial:?}");
}

#[test]
fn a_damaged_log_a_learner_or_an_empty_log_refuses() {
    let others = [insp(2, Some(1), &[1, 2, 3]), insp(3, Some(1), &[1, 2, 3])];
    let mut damaged = insp(1, Some(10), &[1, 2, 3]);
    damaged.damage = Some(LogDamage {
        first_lost: 4,
        detail: "crc".into(),
    });
    assert!(check(&damaged, &others).refusals.iter().any(|r| r.contains("damaged")));
    let learner = insp(4, Some(10), &[1, 2, 3]);
    assert!(check(&learner, &others)
        .refusals
        .iter()
        .any(|r| r.contains("not a voter")));
    let empty = insp(1, None, &[1, 2, 3]);
    assert!(check(&empty, &others)
        .refusals
        .iter()
        .any(|r| r.contains("no log entry")));
}
