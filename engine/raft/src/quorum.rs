//! Quorum arithmetic for simple and joint configurations.
//!
//! Pure functions over slices, property-tested: the commit index a set of match indexes
//! allows, and the outcome of a vote. A joint configuration needs a majority of each half.

use crate::types::{Index, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// Not decided yet: some voters have not answered.
    Pending,
    Lost,
    Won,
}

/// The highest index that a majority of `voters` have reached, where `index_of` gives each
/// voter's index (0 when unknown). An empty set of voters imposes no constraint
/// (`Index::MAX`), which is what a joint configuration needs of a missing half.
pub(crate) fn majority_index(voters: &[NodeId], mut index_of: impl FnMut(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    // Stack space for the common sizes (clusters of up to 16 voters) keeps this off the heap on
    // the leader's commit path.
    let mut stack = [0 as Index; 16];
    let mut heap;
    let indexes: &mut [Index] = if voters.len() <= stack.len() {
        &mut stack[..voters.len()]
    } else {
        heap = vec![0; voters.len()];
        &mut heap
    };
    for (slot, &id) in indexes.iter_mut().zip(voters) {
        *slot = index_of(id);
    }
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, a majority is n / 2 + 1 of them; sorted descending, the (n / 2)-th (0-based)
    // index is reached by that many.
    indexes[voters.len() / 2]
}

/// The commit index allowed by a possibly joint configuration: the lower of the two majorities.
pub(crate) fn joint_index(
    incoming: &[NodeId],
    outgoing: &[NodeId],
    mut index_of: impl FnMut(NodeId) -> Index,
) -> Index {
    let a = majority_index(incoming, &mut index_of);
    let b = majority_index(outgoing, &mut index_of);
    a.min(b)
}

/// Counts the votes of one majority configuration. `vote_of` gives `Some(granted)` for voters
/// that answered.
pub(crate) fn majority_vote(voters: &[NodeId], mut vote_of: impl FnMut(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0usize, 0usize);
    for &id in voters {
        match vote_of(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts the votes of a possibly joint configuration: both halves must be won.
pub(crate) fn joint_vote(
    incoming: &[NodeId],
    outgoing: &[NodeId],
    mut vote_of: impl FnMut(NodeId) -> Option<bool>,
) -> VoteResult {
    let a = majority_vote(incoming, &mut vote_of);
    let b = majority_vote(outgoing, &mut vote_of);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force_majority(indexes: &[Index]) -> Index {
        // The largest candidate that strictly more than half of the voters have reached.
        let mut best = 0;
        for &candidate in indexes {
            let reached = indexes.iter().filter(|&&i| i >= candidate).count();
            if reached * 2 > indexes.len() {
                best = best.max(candidate);
            }
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn majority_index_is_reached_by_a_majority_and_is_the_highest_such(
            indexes in proptest::collection::vec(0u64..50, 1..12)
        ) {
            let voters: Vec<NodeId> = (1..=indexes.len() as u64).collect();
            let got = majority_index(&voters, |id| indexes[(id - 1) as usize]);
            prop_assert_eq!(got, brute_force_majority(&indexes));
        }

        #[test]
        fn joint_index_never_exceeds_either_half(
            a in proptest::collection::vec(0u64..50, 1..8),
            b in proptest::collection::vec(0u64..50, 0..8),
        ) {
            // Ids 1..=a.len() are the incoming half, the rest the outgoing half.
            let incoming: Vec<NodeId> = (1..=a.len() as u64).collect();
            let outgoing: Vec<NodeId> = (100..100 + b.len() as u64).collect();
            let index_of = |id: NodeId| if id >= 100 { b[(id - 100) as usize] } else { a[(id - 1) as usize] };
            let got = joint_index(&incoming, &outgoing, index_of);
            prop_assert!(got <= brute_force_majority(&a));
            if !b.is_empty() {
                prop_assert!(got <= brute_force_majority(&b));
                prop_assert_eq!(got, brute_force_majority(&a).min(brute_force_majority(&b)));
            } else {
                prop_assert_eq!(got, brute_force_majority(&a));
            }
        }

        #[test]
        fn a_vote_is_won_only_with_a_majority_and_lost_only_without_hope(
            votes in proptest::collection::vec(proptest::option::of(any::<bool>()), 1..12)
        ) {
            let voters: Vec<NodeId> = (1..=votes.len() as u64).collect();
            let result = majority_vote(&voters, |id| votes[(id - 1) as usize]);
            let granted = votes.iter().filter(|v| **v == Some(true)).count();
            let missing = votes.iter().filter(|v| v.is_none()).count();
            let n = votes.len();
            match result {
                VoteResult::Won => prop_assert!(granted * 2 > n),
                VoteResult::Lost => prop_assert!((granted + missing) * 2 <= n),
                VoteResult::Pending => {
                    prop_assert!(granted * 2 <= n);
                    prop_assert!((granted + missing) * 2 > n);
                }
            }
        }

        #[test]
        fn a_joint_vote_is_won_only_when_both_halves_are_won(
            a in proptest::collection::vec(proptest::option::of(any::<bool>()), 1..8),
            b in proptest::collection::vec(proptest::option::of(any::<bool>()), 1..8),
        ) {
            let incoming: Vec<NodeId> = (1..=a.len() as u64).collect();
            let outgoing: Vec<NodeId> = (100..100 + b.len() as u64).collect();
            let vote_of = |id: NodeId| if id >= 100 { b[(id - 100) as usize] } else { a[(id - 1) as usize] };
            let joint = joint_vote(&incoming, &outgoing, vote_of);
            let ra = majority_vote(&incoming, vote_of);
            let rb = majority_vote(&outgoing, vote_of);
            prop_assert_eq!(joint == VoteResult::Won, ra == VoteResult::Won && rb == VoteResult::Won);
            prop_assert_eq!(joint == VoteResult::Lost, ra == VoteResult::Lost || rb == VoteResult::Lost);
        }
    }

    #[test]
    fn overlapping_joint_halves_count_a_shared_voter_in_both() {
        // {1,2,3} -> {2,3,4}: voters 2 and 3 are in both halves.
        let result = joint_vote(&[2, 3, 4], &[1, 2, 3], |id| Some(id == 2 || id == 3));
        assert_eq!(result, VoteResult::Won);
        let index = joint_index(&[2, 3, 4], &[1, 2, 3], |id| [0, 5, 7, 7, 1][id as usize]);
        assert_eq!(index, 7);
    }
}
