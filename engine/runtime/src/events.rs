//! What a node tells the application that embeds it, as it happens.

use smr_raft::{ConfState, NodeId, Role, Term};

use crate::handoff::Fatal;

/// Notifications for an embedding application (the C ABI forwards them to C callbacks).
///
/// Role and membership changes are delivered by the core stage, in the order they happen and
/// never concurrently, on the core's thread or (with `pipeline.inline_core`) on the transport
/// thread running the core's round; `fatal` on whichever stage failed. Each must return quickly and must not wait for the
/// node (a blocking request from here would wait for the thread it runs on).
pub trait NodeEvents: Send + std::fmt::Debug {
    /// This node's role, term or known leader changed.
    fn role_changed(&mut self, _role: Role, _term: Term, _leader: Option<NodeId>) {}
    /// The membership in force changed (it takes effect when its entry is appended, Raft §6).
    fn membership_changed(&mut self, _conf: &ConfState) {}
    /// The node stopped on its own; called at most once.
    fn fatal(&mut self, _fatal: &Fatal) {}
}
