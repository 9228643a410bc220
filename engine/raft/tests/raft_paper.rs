//! Tests named after the sentences of the Raft paper's §5 they check.

mod harness;

use bytes::Bytes;
use harness::Cluster;
use smr_raft::{Message, MessageBody, Role};

/// These scenarios script elections by hand; without CheckQuorum's leader lease followers
/// answer a candidate at once instead of waiting out an election timeout first.
fn no_lease(cfg: &mut smr_raft::Config) {
    cfg.pre_vote = false;
    cfg.check_quorum = false;
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { group: 1, from, to, term, body }
}

/// §5.1: "If a server receives a request with a stale term number, it rejects the request."
#[test]
fn a_request_with_a_stale_term_is_rejected() {
    let mut c = Cluster::with_config(3, no_lease);
    c.elect(1);
    c.elect(2);
    let term = c.node(2).term();
    assert!(term >= 3);
    // An append from the deposed leader's term changes nothing on node 3.
    let before = c.node(3).last_index();
    c.deliver(msg(
        1,
        3,
        2,
        MessageBody::Append { prev_log_index: before, prev_log_term: 2, commit_index: 0, entries: vec![] },
    ));
    assert_eq!(c.node(3).term(), term);
    assert_eq!(c.node(3).last_index(), before);
    assert_eq!(c.node(3).leader(), Some(2));
}

/// §5.1: "If one server's current term is smaller than the other's, then it updates its current
/// term to the larger value. If a candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state."
#[test]
fn a_leader_that_sees_a_higher_term_reverts_to_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.node_mut(1).step(msg(2, 1, term + 5, MessageBody::HeartbeatResponse { read_round: 0 })).unwrap();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), term + 5);
}

/// §5.2: "Each server will vote for at most one candidate in a given term, on a
/// first-come-first-served basis."
#[test]
fn a_server_votes_for_at_most_one_candidate_per_term() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    let (index, term) = (c.node(3).last_index(), c.node(3).last_term());
    let vote = |from| {
        msg(from, 3, 5, MessageBody::Vote { last_log_index: index, last_log_term: term, leadership_transfer: false })
    };
    c.node_mut(3).step(vote(1)).unwrap();
    c.node_mut(3).step(vote(2)).unwrap();
    let rd = c.node_mut(3).ready();
    let granted: Vec<u64> = rd
        .messages
        .iter()
        .chain(&rd.persisted_messages)
        .filter(|m| matches!(m.body, MessageBody::VoteResponse { granted: true }))
        .map(|m| m.to)
        .collect();
    assert_eq!(granted, vec![1]);
    assert_eq!(rd.hard_state.unwrap().vote, Some(1));
    // The grant waits for the vote to be durable.
    assert!(rd.messages.iter().all(|m| !matches!(m.body, MessageBody::VoteResponse { granted: true })));
}

/// §5.2: "A candidate wins an election if it receives votes from a majority of the servers in
/// the full cluster for the same term."
#[test]
fn a_candidate_with_a_majority_of_votes_becomes_leader() {
    let mut c = Cluster::new(5);
    c.isolate(4);
    c.isolate(5);
    c.elect(1);
    assert_eq!(c.node(1).role(), Role::Leader);
}

/// §5.2, the other side: without a majority there is no leader.
#[test]
fn a_candidate_without_a_majority_does_not_become_leader() {
    let mut c = Cluster::new(5);
    for id in [3, 4, 5] {
        c.isolate(id);
    }
    c.campaign(1);
    assert_ne!(c.node(1).role(), Role::Leader);
}

/// §5.2: "If the AppendEntries RPC is from a leader whose term is at least as large as the
/// candidate's current term, then the candidate recognizes the leader as legitimate and returns
/// to follower state."
#[test]
fn a_candidate_that_hears_from_a_legitimate_leader_returns_to_follower() {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
    c.isolate(3);
    c.campaign(3);
    assert_eq!(c.node(3).role(), Role::Candidate);
    let term = c.node(3).term();
    c.node_mut(3).step(msg(1, 3, term, MessageBody::Heartbeat { commit_index: 0, read_round: 0 })).unwrap();
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), Some(1));
}

/// §5.2: "Raft uses randomized election timeouts to ensure that split votes are rare."
#[test]
fn election_timeouts_are_randomized_between_one_and_two_timeouts() {
    let mut fired = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut cfg = harness::config(1);
        cfg.seed = seed;
        let mut r = smr_raft::Replica::bootstrap(cfg, &[1, 2, 3]).unwrap();
        let mut ticks = 0;
        while r.role() == Role::Follower {
            r.tick();
            ticks += 1;
        }
        assert!((10..20).contains(&ticks), "timeout {ticks} outside [election_ticks, 2 * election_ticks)");
        fired.insert(ticks);
    }
    assert!(fired.len() > 3, "timeouts are not spread: {fired:?}");
}

/// §5.3: "When sending an AppendEntries RPC, the leader includes the index and term of the entry
/// in its log that immediately precedes the new entries. If the follower does not find an entry
/// in its log with the same index and term, then it refuses the new entries."
#[test]
fn a_follower_refuses_entries_that_do_not_follow_its_log() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(3).term();
    let last = c.node(3).last_index();
    c.node_mut(3)
        .step(msg(
            1,
            3,
            term,
            MessageBody::Append { prev_log_index: last + 5, prev_log_term: term, commit_index: 0, entries: vec![] },
        ))
        .unwrap();
    let rd = c.node_mut(3).ready();
    assert!(rd.messages.iter().any(
        |m| matches!(m.body, MessageBody::AppendResponse { success: false, hint_index, .. } if hint_index == last)
    ));
    assert_eq!(c.node(3).last_index(), last);
}

/// §5.3: "the leader handles inconsistencies by forcing the followers' logs to duplicate its
/// own": a conflicting suffix is truncated and replaced.
#[test]
fn a_conflicting_suffix_is_truncated_and_replaced_by_the_leaders_entries() {
    let mut c = Cluster::with_config(3, no_lease);
    c.elect(1);
    // Node 1 appends entries only it has, then loses leadership.
    c.isolate(1);
    c.propose(1, b"lost-1");
    c.propose(1, b"lost-2");
    c.drop_in_flight();
    c.heal();
    c.isolate(1);
    c.elect(2);
    c.propose(2, b"kept");
    c.deliver_all();
    c.heal();
    c.tick_all(30);
    let on_1: Vec<_> = c.normal_entries(1).into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(on_1, vec![Bytes::from_static(b"kept")]);
    assert_eq!(c.normal_entries(1), c.normal_entries(2));
}

/// §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
/// candidate."
#[test]
fn a_voter_denies_its_vote_to_a_candidate_with_an_older_log() {
    let mut c = Cluster::with_config(3, no_lease);
    c.elect(1);
    c.isolate(3);
    c.propose(1, b"x");
    c.deliver_all();
    c.heal();
    c.isolate(1);
    // Node 3 missed the entry: node 2 must refuse it.
    c.campaign(3);
    assert_ne!(c.node(3).role(), Role::Leader);
    c.campaign(2);
    assert_eq!(c.node(2).role(), Role::Leader);
}

/// §5.4.2: "Raft never commits log entries from previous terms by counting replicas. Only log
/// entries from the leader's current term are committed by counting replicas" (Figure 8).
#[test]
fn entries_of_earlier_terms_are_not_committed_by_counting_replicas() {
    // One entry per append, so an earlier-term entry and the new leader's no-op are acknowledged
    // separately.
    let mut c = Cluster::with_config(3, |cfg| {
        no_lease(cfg);
        cfg.append_bytes_max = 1;
    });
    c.elect(1);
    // Term 2: node 1 appends X at index 3 and nobody else gets it.
    c.isolate(1);
    let x = c.propose(1, b"x");
    assert_eq!((x.index, x.term), (3, 2));
    c.drop_in_flight();
    c.heal();
    // Node 1 learns of a newer term and steps down, then is elected again in the term after it
    // (its log is the most up to date) and appends its no-op at index 4.
    c.node_mut(1).step(msg(2, 1, 3, MessageBody::HeartbeatResponse { read_round: 0 })).unwrap();
    c.process(1);
    while c.node(1).role() != Role::Candidate {
        c.tick(1);
    }
    // Deliver everything except the acknowledgements of index 4: X (term 2) reaches a majority,
    // the no-op (term 4) does not.
    let mut held = Vec::new();
    while let Some(m) = c.in_flight.pop_front() {
        if matches!(m.body, MessageBody::AppendResponse { success: true, index: 4, .. }) {
            held.push(m);
        } else {
            c.deliver(m);
        }
    }
    assert_eq!((c.node(1).role(), c.node(1).term()), (Role::Leader, 4));
    assert_eq!(c.node(1).entry(4).map(|e| e.term), Some(4));
    assert!(c.node(2).entry(3).is_some_and(|e| e.term == 2), "X reached node 2");
    assert!(
        c.node(1).commit_index() < 3,
        "X (term 2) was committed by counting replicas: commit {}",
        c.node(1).commit_index()
    );
    // Once the no-op of term 4 is acknowledged by a majority, X commits with it.
    for m in held {
        c.deliver(m);
    }
    c.deliver_all();
    assert_eq!(c.node(1).commit_index(), 4);
}
