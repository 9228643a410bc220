//! Scripted scenarios, one per failure mode the core must get through.

mod harness;

use bytes::Bytes;
use harness::Cluster;
use smr_raft::{ConfChange, ConfChangeOp, Error, Role};

#[test]
fn a_partitioned_node_rejoining_does_not_disrupt_the_leader_with_prevote() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    // Alone, node 3 pre-campaigns over and over but never bumps its term.
    c.tick_all(100);
    assert_eq!(c.node(3).term(), term, "PreVote keeps a partitioned node's term");
    c.heal();
    c.tick_all(30);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).term(), term, "the rejoining node did not force an election");
}

#[test]
fn without_prevote_a_rejoining_node_does_force_an_election() {
    // The control experiment for the test above: the disruption PreVote prevents is real.
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    c.tick_all(100);
    assert!(c.node(3).term() > term);
    c.heal();
    c.tick_all(30);
    assert!(c.node(1).term() > term);
}

#[test]
fn an_isolated_leader_steps_down_with_check_quorum() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.tick_all(25);
    assert_eq!(c.node(1).role(), Role::Follower, "a leader that cannot reach a quorum steps down");
    let new_leader = c.leader().expect("the majority elects a new leader");
    assert_ne!(new_leader, 1);
}

#[test]
fn leadership_transfer_hands_over_to_an_up_to_date_target() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a");
    c.deliver_all();
    c.node_mut(1).transfer_leadership(3).unwrap();
    c.process(1);
    assert!(matches!(c.node_mut(1).propose(Bytes::from_static(b"b")), Err(Error::TransferInProgress { target: 3 })));
    c.deliver_all();
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.node(1).role(), Role::Follower);
}

#[test]
fn leadership_transfer_to_a_non_voter_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node_mut(1).transfer_leadership(9), Err(Error::NotVoter(9)));
    assert!(matches!(c.node_mut(2).transfer_leadership(3), Err(Error::NotLeader { .. })));
}

#[test]
fn joint_consensus_adds_a_voter_and_leaves_the_joint_configuration() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_node(4);
    c.node_mut(1).propose_conf_change(ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(4)] }).unwrap();
    c.process(1);
    // Only one change at a time.
    let again = c.node_mut(1).propose_conf_change(ConfChange::Change { ops: vec![ConfChangeOp::Remove(2)] });
    assert!(matches!(again, Err(Error::ConfChangeInProgress { .. })));
    c.tick_all(10);
    for id in 1..=4 {
        let conf = c.node(id).conf();
        assert_eq!(conf.voters, vec![1, 2, 3, 4], "node {id}");
        assert!(!conf.is_joint(), "node {id} left the joint configuration");
    }
}

#[test]
fn removing_the_leader_commits_without_it_and_it_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node_mut(1).propose_conf_change(ConfChange::Change { ops: vec![ConfChangeOp::Remove(1)] }).unwrap();
    c.process(1);
    c.deliver_all();
    c.tick_all(5);
    assert_eq!(c.node(2).conf().voters, vec![2, 3]);
    assert!(!c.node(2).conf().is_joint());
    assert_ne!(c.node(1).role(), Role::Leader, "the removed leader stepped down");
    c.tick_all(40);
    let leader = c.leader().expect("the remaining voters elect a leader");
    assert!(leader == 2 || leader == 3);
    c.propose(leader, b"after");
    c.tick_all(3);
    assert_eq!(c.normal_entries(2), c.normal_entries(3));
}

#[test]
fn a_learner_catches_up_without_voting_and_is_then_promoted() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for _ in 0..5 {
        c.propose(1, b"data");
    }
    c.deliver_all();
    c.add_node(4);
    c.node_mut(1).propose_conf_change(ConfChange::Change { ops: vec![ConfChangeOp::AddLearner(4)] }).unwrap();
    c.process(1);
    c.tick_all(5);
    assert_eq!(c.node(4).conf().learners, vec![4]);
    assert_eq!(c.normal_entries(4), c.normal_entries(1), "the learner caught up");
    // A learner never campaigns.
    c.isolate(4);
    c.tick_all(50);
    assert_eq!(c.node(4).role(), Role::Follower);
    c.heal();
    c.tick_all(10);
    let leader = c.leader().unwrap();
    c.node_mut(leader).propose_conf_change(ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(4)] }).unwrap();
    c.process(leader);
    c.tick_all(10);
    assert_eq!(c.node(4).conf().voters, vec![1, 2, 3, 4]);
    assert!(c.node(4).conf().learners.is_empty());
}

#[test]
fn a_lagging_follower_receives_the_snapshot_in_chunks() {
    let mut c = Cluster::with_config(3, |cfg| cfg.snapshot_chunk_bytes_max = 4);
    c.elect(1);
    c.isolate(3);
    for _ in 0..10 {
        c.propose(1, b"entry");
    }
    c.deliver_all();
    let leader = c.node_mut(1);
    let applied = leader.commit_index();
    leader.on_applied(applied);
    leader.on_snapshot(applied, Bytes::from_static(b"snapshot-of-the-state")).unwrap();
    leader.compact(applied).unwrap();
    assert_eq!(leader.first_index(), applied + 1);
    c.heal();
    c.tick_all(20);
    assert_eq!(c.snapshots_installed.get(&3), Some(&1), "one snapshot installed on node 3");
    assert_eq!(c.node(3).snapshot_meta().index, applied);
    assert!(c.node(3).commit_index() >= applied);
    c.propose(1, b"after-snapshot");
    c.tick_all(3);
    assert_eq!(c.node(3).last_index(), c.node(1).last_index(), "replication resumed after the snapshot");
}

#[test]
fn compacting_beyond_the_snapshot_is_refused() {
    let mut c = Cluster::new(1);
    c.elect(1);
    c.propose(1, b"x");
    let r = c.node_mut(1);
    let commit = r.commit_index();
    assert!(matches!(r.compact(commit), Err(Error::CompactOutOfRange { .. })));
}

#[test]
fn read_index_is_served_only_after_a_quorum_confirms_leadership() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.node_mut(1).read_index(7).unwrap();
    c.process(1);
    c.drop_in_flight();
    let rd = c.node_mut(1).ready();
    assert!(rd.read_states.is_empty(), "no quorum answered: the read must wait");
    c.heal();
    c.tick_all(2);
    // The heartbeat round after the heal confirms leadership.
    let mut served = false;
    for _ in 0..5 {
        c.tick_all(1);
        served |= c.node(1).role() == Role::Leader;
    }
    assert!(served);
}

#[test]
fn a_busy_leader_refuses_proposals_beyond_its_uncommitted_limit() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.uncommitted_bytes_max = 1024;
        cfg.proposal_bytes_max = 512;
    });
    c.elect(1);
    c.isolate(1);
    let big = Bytes::from(vec![1u8; 400]);
    c.node_mut(1).propose(big.clone()).unwrap();
    c.node_mut(1).propose(big.clone()).unwrap();
    let err = c.node_mut(1).propose(big).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    let too_large = c.node_mut(1).propose(Bytes::from(vec![0u8; 513])).unwrap_err();
    assert_eq!(too_large, Error::ProposalTooLarge { bytes: 513, max: 512 });
}

#[test]
fn a_bad_config_is_refused_by_field_name() {
    let mut cfg = harness::config(1);
    cfg.election_ticks = 2;
    let err = smr_raft::Replica::bootstrap(cfg, &[1]).unwrap_err();
    assert!(err.to_string().contains("election_ticks"), "{err}");
}

#[test]
fn a_snapshot_the_follower_already_holds_does_not_truncate_its_newer_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    for _ in 0..5 {
        c.propose(1, b"e");
    }
    c.deliver_all();
    let last = c.node(2).last_index();
    let meta = smr_raft::SnapshotMeta {
        index: last - 2,
        term: c.node(1).entry(last - 2).unwrap().term,
        conf: c.node(1).conf().clone(),
    };
    // A late, duplicated snapshot chunk from the leader covering only a prefix of node 2's log.
    let term = c.node(1).term();
    let m = smr_raft::Message {
        group: 1,
        from: 1,
        to: 2,
        term,
        body: smr_raft::MessageBody::Snapshot {
            meta: Box::new(meta),
            offset: 0,
            data: Bytes::from_static(b"s"),
            last: true,
        },
    };
    c.deliver(m);
    assert_eq!(c.node(2).last_index(), last, "entries after the snapshot were kept");
    assert_eq!(c.snapshots_installed.get(&2), None, "nothing to install");
}

#[test]
fn status_shows_the_leaders_view_of_every_peer() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose(1, b"a");
    c.deliver_all();
    let status = c.node(1).status();
    assert_eq!((status.role, status.leader), (Role::Leader, Some(1)));
    let peer = |id: u64| status.peers.iter().find(|p| p.id == id).unwrap().clone();
    assert_eq!(peer(2).match_index, status.last_index);
    assert!(peer(3).match_index < status.last_index, "the isolated follower lags");
    assert!(c.node(2).status().peers.is_empty(), "followers track no peers");
}

#[test]
fn a_restart_with_entries_of_a_term_whose_hard_state_was_lost_resumes_in_that_term() {
    use smr_raft::{Entry, EntryKind, HardState, Replica, Restore};
    // The log kept entries of term 3 but the hard state file still says term 2 (crash between
    // the two writes, neither synced with the other).
    let entries: Vec<Entry> = (1..=3)
        .map(|i| Entry { index: i, term: if i == 1 { 1 } else { 3 }, kind: EntryKind::Noop, data: Bytes::new() })
        .collect();
    let restore =
        Restore { hard_state: HardState { term: 2, vote: Some(2), commit: 0 }, entries, ..Restore::default() };
    let mut r = Replica::restart(harness::config(1), restore).unwrap();
    assert_eq!(r.term(), 3);
    assert_eq!(r.vote(), None, "the vote of the older term does not carry over");
    let rd = r.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(3), "the resumed term is persisted");
    assert!(rd.sync);
}

#[test]
fn a_new_commit_index_reaches_followers_with_the_next_append_or_heartbeat_not_alone() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    let id = c.propose(1, b"a");
    c.process(1);
    // The append reaches both followers; their acknowledgements commit the entry on the leader.
    let appends: Vec<_> = c.in_flight.drain(..).collect();
    for m in appends {
        c.deliver(m);
    }
    let acks: Vec<_> = c.in_flight.drain(..).collect();
    for m in acks {
        c.deliver(m);
    }
    assert_eq!(c.node(1).commit_index(), id.index, "a quorum of acknowledgements commits the entry");
    // The commit alone sends nothing: no append without entries just to carry it.
    assert!(c.in_flight.is_empty(), "the leader sent {:?}", c.in_flight);
    assert!(c.node(2).commit_index() < id.index);
    // The next proposal's append carries it to the followers...
    let next = c.propose(1, b"b");
    c.process(1);
    for m in c.in_flight.drain(..).collect::<Vec<_>>() {
        assert!(matches!(m.body, smr_raft::MessageBody::Append { commit_index, .. } if commit_index == id.index));
        c.deliver(m);
    }
    assert_eq!(c.node(2).commit_index(), id.index);
    assert_eq!(c.node(3).commit_index(), id.index);
    // ...and when nothing more is proposed, the heartbeats do.
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), next.index);
    assert!(c.node(2).commit_index() < next.index);
    c.tick_all(2);
    assert_eq!(c.node(2).commit_index(), next.index, "a heartbeat carried the commit index");
    assert_eq!(c.node(3).commit_index(), next.index);
}
