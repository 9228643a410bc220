//! # smr-capi: smr for programs written in C
//!
//! `libsmr.so` / `libsmr.a` with the header `include/smr.h`, generated from this crate's doc
//! comments by cbindgen (`tests/header.rs` fails when the checked-in header is stale). A C
//! process starts a node with a config and a table of callbacks (its state machine), proposes
//! commands, asks for read barriers, changes membership, and stops the node.
//!
//! It **must never**:
//! - let a panic cross the boundary: every entry point runs under `catch_unwind`, and a panic
//!   becomes `SMR_E_PANIC` (and a fatal notification when a node is involved);
//! - dereference a pointer it has not checked for NULL, or trust a length or an enum value
//!   from C without checking it (enums arrive as `int32_t` and are matched);
//! - block a node thread: blocking calls made from inside a callback are refused with
//!   `SMR_E_WRONG_THREAD`.

#![allow(non_camel_case_types)]

mod callbacks;
mod node;
mod status;

pub use callbacks::{
    smr_apply_fn, smr_callbacks, smr_command, smr_fatal_fn, smr_membership_fn, smr_reader, smr_reader_read,
    smr_restore_fn, smr_result_set, smr_result_sink, smr_role_fn, smr_snapshot_fn, smr_state_hash_fn, smr_writer,
    smr_writer_write,
};
pub use node::{
    smr_add_node, smr_buffer, smr_buffer_free, smr_completion_fn, smr_free_string, smr_metrics_json, smr_node,
    smr_node_free, smr_node_start, smr_node_start_file, smr_node_stop, smr_propose, smr_propose_sync, smr_read_barrier,
    smr_remove_node, smr_start_mode, smr_status_json, smr_transfer_leader,
};
pub use status::{ALL_STATUSES, smr_last_error_message, smr_status, smr_strerror};
