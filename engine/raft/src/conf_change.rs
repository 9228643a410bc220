//! Membership changes: what can be asked, how it is encoded in a log entry, and how it turns
//! one configuration into the next.
//!
//! Every change of the voter set goes through a joint configuration (thesis §4.3): the entry
//! `Change` moves `C_old` to `C_old,new`; once that commits the leader appends `LeaveJoint`,
//! which moves to `C_new`. Changes that touch only learners take effect directly, since learners
//! count toward no quorum. A change takes effect on a replica when its entry is committed there,
//! and only one may be uncommitted at a time, so every replica goes through the same sequence.

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{ConfState, NodeId};

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeOp {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a non-voting member that receives the log (to catch up before promotion).
    AddLearner(NodeId),
    /// Remove a voter or a learner. Removing the leader is allowed: it steps down once the
    /// configuration without it commits.
    Remove(NodeId),
}

/// The payload of an [`crate::EntryKind::ConfChange`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// The founding voters: the first entry of a new cluster's log, identical on every founder.
    Bootstrap { voters: Vec<NodeId> },
    /// Apply `ops` together: enter a joint configuration when the voter set changes.
    Change { ops: Vec<ConfChangeOp> },
    /// Leave the joint configuration for the incoming voter set.
    LeaveJoint,
}

/// Most operations in one membership change; far above any real cluster's needs, it bounds what
/// a decoder allocates.
pub const CONF_CHANGE_OPS_MAX: usize = 64;

/// Most bytes of caller context a membership change entry carries. The core never reads the
/// context; the runtime puts a new member's addresses there, so that every replica learns them
/// from the log (and from snapshots) in the same order as the membership itself.
pub const CONF_CHANGE_CONTEXT_BYTES_MAX: usize = 4096;

const TAG_BOOTSTRAP: u8 = 1;
const TAG_CHANGE: u8 = 2;
const TAG_LEAVE_JOINT: u8 = 3;
const OP_ADD_VOTER: u8 = 1;
const OP_ADD_LEARNER: u8 = 2;
const OP_REMOVE: u8 = 3;

/// Why a membership change cannot be applied to the configuration in force.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("membership change has no operations")]
    Empty,
    #[error("membership change has {count} operations, more than the {max} allowed")]
    TooManyOps { count: usize, max: usize },
    #[error("node id 0 is not a valid member")]
    ZeroNodeId,
    #[error("node {0} appears twice in one membership change")]
    DuplicateNode(NodeId),
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {0} is already a learner")]
    AlreadyLearner(NodeId),
    #[error("node {0} is a voter; demoting a voter to learner is not supported (remove it, then add it)")]
    DemotionUnsupported(NodeId),
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error("the change would leave no voters")]
    NoVoters,
    #[error("the configuration is joint; it must leave the joint configuration first")]
    InJoint,
    #[error("the configuration is not joint; there is nothing to leave")]
    NotJoint,
    #[error("bootstrap applies only to an empty configuration")]
    AlreadyBootstrapped,
    #[error("malformed membership change entry: {0}")]
    Malformed(&'static str),
}

impl ConfChange {
    pub fn encode(&self) -> Bytes {
        self.encode_with_context(&[])
    }

    /// Encodes the change followed by `context` (when not empty) as `u32` length + bytes, so that
    /// every (change, context) pair has exactly one encoding.
    ///
    /// # Panics
    /// If `context` exceeds [`CONF_CHANGE_CONTEXT_BYTES_MAX`] (callers check it first).
    pub fn encode_with_context(&self, context: &[u8]) -> Bytes {
        assert!(context.len() <= CONF_CHANGE_CONTEXT_BYTES_MAX, "membership change context too long");
        let mut buf = BytesMut::new();
        match self {
            ConfChange::Bootstrap { voters } => {
                buf.put_u8(TAG_BOOTSTRAP);
                buf.put_u32_le(voters.len() as u32);
                for &id in voters {
                    buf.put_u64_le(id);
                }
            }
            ConfChange::Change { ops } => {
                buf.put_u8(TAG_CHANGE);
                buf.put_u32_le(ops.len() as u32);
                for op in ops {
                    let (tag, id) = match *op {
                        ConfChangeOp::AddVoter(id) => (OP_ADD_VOTER, id),
                        ConfChangeOp::AddLearner(id) => (OP_ADD_LEARNER, id),
                        ConfChangeOp::Remove(id) => (OP_REMOVE, id),
                    };
                    buf.put_u8(tag);
                    buf.put_u64_le(id);
                }
            }
            ConfChange::LeaveJoint => buf.put_u8(TAG_LEAVE_JOINT),
        }
        if !context.is_empty() {
            buf.put_u32_le(context.len() as u32);
            buf.put_slice(context);
        }
        buf.freeze()
    }

    /// Decodes an entry payload, ignoring any context.
    ///
    /// # Errors
    /// [`ConfChangeError::Malformed`] for a truncated, oversized or unknown encoding.
    pub fn decode(data: &[u8]) -> Result<ConfChange, ConfChangeError> {
        ConfChange::decode_with_context(data).map(|(change, _)| change)
    }

    /// Decodes an entry payload and the caller context it carries (empty when none).
    ///
    /// # Errors
    /// [`ConfChangeError::Malformed`] for a truncated, oversized or unknown encoding.
    pub fn decode_with_context(mut data: &[u8]) -> Result<(ConfChange, &[u8]), ConfChangeError> {
        fn take<const N: usize>(data: &mut &[u8]) -> Result<[u8; N], ConfChangeError> {
            if data.len() < N {
                return Err(ConfChangeError::Malformed("truncated"));
            }
            let (head, rest) = data.split_at(N);
            *data = rest;
            Ok(head.try_into().expect("length checked"))
        }
        let [tag] = take::<1>(&mut data)?;
        let change = match tag {
            TAG_LEAVE_JOINT => ConfChange::LeaveJoint,
            TAG_BOOTSTRAP | TAG_CHANGE => {
                let count = u32::from_le_bytes(take::<4>(&mut data)?) as usize;
                if count > CONF_CHANGE_OPS_MAX {
                    return Err(ConfChangeError::Malformed("too many operations"));
                }
                if tag == TAG_BOOTSTRAP {
                    let mut voters = Vec::with_capacity(count);
                    for _ in 0..count {
                        voters.push(u64::from_le_bytes(take::<8>(&mut data)?));
                    }
                    ConfChange::Bootstrap { voters }
                } else {
                    let mut ops = Vec::with_capacity(count);
                    for _ in 0..count {
                        let [op] = take::<1>(&mut data)?;
                        let id = u64::from_le_bytes(take::<8>(&mut data)?);
                        ops.push(match op {
                            OP_ADD_VOTER => ConfChangeOp::AddVoter(id),
                            OP_ADD_LEARNER => ConfChangeOp::AddLearner(id),
                            OP_REMOVE => ConfChangeOp::Remove(id),
                            _ => return Err(ConfChangeError::Malformed("unknown operation")),
                        });
                    }
                    ConfChange::Change { ops }
                }
            }
            _ => return Err(ConfChangeError::Malformed("unknown kind")),
        };
        if data.is_empty() {
            return Ok((change, data));
        }
        let length = u32::from_le_bytes(take::<4>(&mut data)?) as usize;
        if length == 0 || length > CONF_CHANGE_CONTEXT_BYTES_MAX {
            return Err(ConfChangeError::Malformed("context length out of range"));
        }
        if data.len() != length {
            return Err(ConfChangeError::Malformed("context length does not match the bytes that follow"));
        }
        Ok((change, data))
    }

    /// The configuration that follows `conf` under this change.
    ///
    /// # Errors
    /// A [`ConfChangeError`] naming why the change does not fit `conf`; `conf` is not changed.
    pub fn apply(&self, conf: &ConfState) -> Result<ConfState, ConfChangeError> {
        match self {
            ConfChange::Bootstrap { voters } => {
                if !conf.members().is_empty() {
                    return Err(ConfChangeError::AlreadyBootstrapped);
                }
                if voters.is_empty() {
                    return Err(ConfChangeError::NoVoters);
                }
                if voters.contains(&0) {
                    return Err(ConfChangeError::ZeroNodeId);
                }
                let next = ConfState::with_voters(voters.iter().copied());
                if next.voters.len() != voters.len() {
                    return Err(ConfChangeError::DuplicateNode(first_duplicate(voters)));
                }
                Ok(next)
            }
            ConfChange::LeaveJoint => {
                if !conf.is_joint() {
                    return Err(ConfChangeError::NotJoint);
                }
                Ok(ConfState {
                    voters: conf.voters.clone(),
                    voters_outgoing: Vec::new(),
                    learners: conf.learners.clone(),
                })
            }
            ConfChange::Change { ops } => {
                if ops.is_empty() {
                    return Err(ConfChangeError::Empty);
                }
                if ops.len() > CONF_CHANGE_OPS_MAX {
                    return Err(ConfChangeError::TooManyOps { count: ops.len(), max: CONF_CHANGE_OPS_MAX });
                }
                if conf.is_joint() {
                    return Err(ConfChangeError::InJoint);
                }
                let ids: Vec<NodeId> = ops.iter().map(|op| op.node()).collect();
                if ids.contains(&0) {
                    return Err(ConfChangeError::ZeroNodeId);
                }
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
                    return Err(ConfChangeError::DuplicateNode(pair[0]));
                }
                let mut voters = conf.voters.clone();
                let mut learners = conf.learners.clone();
                for op in ops {
                    match *op {
                        ConfChangeOp::AddVoter(id) => {
                            if voters.contains(&id) {
                                return Err(ConfChangeError::AlreadyVoter(id));
                            }
                            learners.retain(|&l| l != id);
                            voters.push(id);
                        }
                        ConfChangeOp::AddLearner(id) => {
                            if voters.contains(&id) {
                                return Err(ConfChangeError::DemotionUnsupported(id));
                            }
                            if learners.contains(&id) {
                                return Err(ConfChangeError::AlreadyLearner(id));
                            }
                            learners.push(id);
                        }
                        ConfChangeOp::Remove(id) => {
                            if !voters.contains(&id) && !learners.contains(&id) {
                                return Err(ConfChangeError::NotMember(id));
                            }
                            voters.retain(|&v| v != id);
                            learners.retain(|&l| l != id);
                        }
                    }
                }
                if voters.is_empty() {
                    return Err(ConfChangeError::NoVoters);
                }
                voters.sort_unstable();
                learners.sort_unstable();
                let voters_outgoing = if voters == conf.voters { Vec::new() } else { conf.voters.clone() };
                Ok(ConfState { voters, voters_outgoing, learners })
            }
        }
    }
}

impl ConfChangeOp {
    pub fn node(&self) -> NodeId {
        match *self {
            ConfChangeOp::AddVoter(id) | ConfChangeOp::AddLearner(id) | ConfChangeOp::Remove(id) => id,
        }
    }
}

fn first_duplicate(ids: &[NodeId]) -> NodeId {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map_or(0, |w| w[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState { voters: voters.to_vec(), voters_outgoing: vec![], learners: learners.to_vec() }
    }

    #[test]
    fn adding_a_voter_enters_a_joint_configuration() {
        let next = ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(4)] }.apply(&conf(&[1, 2, 3], &[])).unwrap();
        assert_eq!(next.voters, vec![1, 2, 3, 4]);
        assert_eq!(next.voters_outgoing, vec![1, 2, 3]);
        let left = ConfChange::LeaveJoint.apply(&next).unwrap();
        assert!(!left.is_joint());
        assert_eq!(left.voters, vec![1, 2, 3, 4]);
    }

    #[test]
    fn learner_only_changes_take_effect_directly() {
        let next = ConfChange::Change { ops: vec![ConfChangeOp::AddLearner(9)] }.apply(&conf(&[1], &[])).unwrap();
        assert!(!next.is_joint());
        assert_eq!(next.learners, vec![9]);
    }

    #[test]
    fn promoting_a_learner_moves_it_to_the_voters() {
        let next = ConfChange::Change { ops: vec![ConfChangeOp::AddVoter(9)] }.apply(&conf(&[1], &[9])).unwrap();
        assert_eq!(next.voters, vec![1, 9]);
        assert!(next.learners.is_empty());
        assert!(next.is_joint());
    }

    #[test]
    fn invalid_changes_are_refused_by_name() {
        let c = conf(&[1, 2], &[5]);
        let refuse = |ops: Vec<ConfChangeOp>| ConfChange::Change { ops }.apply(&c).unwrap_err();
        assert_eq!(refuse(vec![]), ConfChangeError::Empty);
        assert_eq!(refuse(vec![ConfChangeOp::AddVoter(1)]), ConfChangeError::AlreadyVoter(1));
        assert_eq!(refuse(vec![ConfChangeOp::AddLearner(2)]), ConfChangeError::DemotionUnsupported(2));
        assert_eq!(refuse(vec![ConfChangeOp::AddLearner(5)]), ConfChangeError::AlreadyLearner(5));
        assert_eq!(refuse(vec![ConfChangeOp::Remove(7)]), ConfChangeError::NotMember(7));
        assert_eq!(refuse(vec![ConfChangeOp::Remove(1), ConfChangeOp::Remove(2)]), ConfChangeError::NoVoters);
        assert_eq!(refuse(vec![ConfChangeOp::AddVoter(0)]), ConfChangeError::ZeroNodeId);
        assert_eq!(refuse(vec![ConfChangeOp::AddVoter(3), ConfChangeOp::Remove(3)]), ConfChangeError::DuplicateNode(3));
        assert_eq!(ConfChange::LeaveJoint.apply(&c).unwrap_err(), ConfChangeError::NotJoint);
    }

    fn any_change() -> impl Strategy<Value = ConfChange> {
        let op = prop_oneof![
            (0u64..10).prop_map(ConfChangeOp::AddVoter),
            (0u64..10).prop_map(ConfChangeOp::AddLearner),
            (0u64..10).prop_map(ConfChangeOp::Remove),
        ];
        prop_oneof![
            proptest::collection::vec(0u64..10, 0..6).prop_map(|voters| ConfChange::Bootstrap { voters }),
            proptest::collection::vec(op, 0..6).prop_map(|ops| ConfChange::Change { ops }),
            Just(ConfChange::LeaveJoint),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encoding_round_trips(change in any_change(), context in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(ConfChange::decode(&change.encode()).unwrap(), change.clone());
            let encoded = change.encode_with_context(&context);
            let (decoded, decoded_context) = ConfChange::decode_with_context(&encoded).unwrap();
            prop_assert_eq!(decoded, change);
            prop_assert_eq!(decoded_context, &context[..]);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ConfChange::decode(&bytes);
        }

        /// Any sequence of changes that applies keeps the configuration's invariants: sorted,
        /// no duplicates, voters never empty, nobody both voter and learner.
        #[test]
        fn applied_changes_keep_configuration_invariants(changes in proptest::collection::vec(any_change(), 1..20)) {
            let mut c = ConfState::with_voters([1, 2, 3]);
            for change in changes {
                if let Ok(next) = change.apply(&c) {
                    c = next;
                }
                for set in [&c.voters, &c.voters_outgoing, &c.learners] {
                    prop_assert!(set.windows(2).all(|w| w[0] < w[1]));
                }
                prop_assert!(!c.voters.is_empty());
                for l in &c.learners {
                    prop_assert!(!c.is_voter(*l));
                }
            }
        }
    }
}
