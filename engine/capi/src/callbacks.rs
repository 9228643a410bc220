//! The callback table and the state machine that calls it: the C side of `StateMachine`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use smr_apply::{ApplyBatch, RestoreError, Results, StateMachine};

use crate::status::smr_status::{self, *};
use crate::status::{as_callback, fail, in_callback};

/// One committed command, read in place from the log.
///
/// Ownership: `data` belongs to smr and is valid only during the `apply` call that received
/// it; copy what you keep. `data` may be NULL when `len` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct smr_command {
    pub data: *const u8,
    pub len: usize,
}

const _: () = assert!(size_of::<smr_command>() == 2 * size_of::<usize>());

/// Where `apply` puts its results: one per command, with `smr_result_set`. Opaque; valid only
/// during the `apply` call that received it, on that call's thread.
#[derive(Debug)]
pub struct smr_result_sink {
    /// `positions[i]` is the position in the batch of `commands[i]` given to `apply`.
    positions: *const usize,
    count: usize,
    results: *mut Results,
}

/// The snapshot being written. Opaque; valid only during the `snapshot` call that received it.
#[derive(Debug)]
pub struct smr_writer {
    /// Points at a `&mut dyn Write` on the stack of [`CStateMachine::snapshot`].
    out: *mut c_void,
    error: Option<std::io::Error>,
}

/// The snapshot being read back. Opaque; valid only during the `restore` call that received it.
#[derive(Debug)]
pub struct smr_reader {
    /// Points at a `&mut dyn Read` on the stack of [`CStateMachine::restore`].
    input: *mut c_void,
    error: Option<std::io::Error>,
}

/// Applies one committed batch: `commands[0..count]` in log order, `index` being the batch's log
/// index (increasing from call to call). Set one result per command with `smr_result_set` (a
/// command left without one answers an empty result). Runs on the node's apply thread.
///
/// Must be deterministic: every replica applies the same commands in the same order and must
/// reach the same state with the same results. So no clocks, no random numbers, no I/O whose
/// outcome differs between replicas. A command malformed for your state machine is answered
/// with an error *result*, changing nothing.
///
/// Retries: a command whose (session, sequence) was already applied is not passed again; the
/// node answers it with the result it gave the first time.
pub type smr_apply_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        index: u64,
        commands: *const smr_command,
        count: usize,
        sink: *mut smr_result_sink,
    ),
>;

/// Writes the whole state with `smr_writer_write`; returns 0 on success, anything else to
/// abandon this snapshot (the node tries again later). Runs on the apply thread, never
/// concurrently with `apply`.
pub type smr_snapshot_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, writer: *mut smr_writer) -> c_int>;

/// Replaces the whole state with a snapshot written by `snapshot`, read with
/// `smr_reader_read`; returns 0 on success, anything else when the snapshot is malformed (the
/// node then stops: it cannot serve from an undefined state). Runs on the thread calling
/// `smr_node_start` (on restart) or on the apply thread (a snapshot sent by the leader).
pub type smr_restore_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, reader: *mut smr_reader) -> c_int>;

/// A hash of the whole state, equal on replicas in equal states; shown by `smr_status_json`
/// as `state_hash` so operators can compare replicas. Runs on the apply thread.
pub type smr_state_hash_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> u64>;

/// The node stopped on its own: a disk error, a corrupt log, or a bug in smr. `exit_code` is the
/// exit code `smr node` would have used (see the README), `message` the reason (valid during
/// the call). Called at most once, on a thread of smr's own; only `smr_node_stop` and
/// `smr_node_free` remain useful afterwards, and not from inside this callback.
pub type smr_fatal_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, exit_code: i32, message: *const c_char)>;

/// This node's role or term, or the leader it knows, changed. `role` is 0 follower,
/// 1 pre-candidate, 2 candidate, 3 leader; `leader_id` is 0 when no leader is known. Called by
/// the node's Raft core, in order and never concurrently with itself, on the core's thread or
/// (with `pipeline.inline_core`) on the node's network thread running the core's round; it
/// must return quickly (the node waits for it).
pub type smr_role_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, role: i32, term: u64, leader_id: u64)>;

/// The membership in force changed: `voters` (`voter_count` ids) and `learners`
/// (`learner_count` ids), valid during the call only. During a joint change `voters` holds the
/// incoming voters. Called like `smr_role_fn`: by the Raft core, in order, on one of the node's
/// threads; it must return quickly.
pub type smr_membership_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        voters: *const u64,
        voter_count: usize,
        learners: *const u64,
        learner_count: usize,
    ),
>;

/// The callbacks through which the node drives the replicated state. `apply`, `snapshot` and
/// `restore` are required; `state_hash`, `on_fatal`, `on_role_change` and
/// `on_membership_change` may be NULL (C designated initializers leave them so). Each receives the
/// `user_data` given to `smr_node_start`. The table is copied at start.
///
/// Threads: `apply`, `snapshot`, `restore` and `state_hash` never run concurrently with one
/// another. Inside any callback, the calls that block (`smr_propose_sync`, `smr_read_barrier`,
/// the membership calls, `smr_status_json`, `smr_node_stop`, `smr_node_free`) return
/// `SMR_E_WRONG_THREAD`; `smr_propose` (asynchronous) is allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct smr_callbacks {
    pub apply: smr_apply_fn,
    pub snapshot: smr_snapshot_fn,
    pub restore: smr_restore_fn,
    pub state_hash: smr_state_hash_fn,
    pub on_fatal: smr_fatal_fn,
    pub on_role_change: smr_role_fn,
    pub on_membership_change: smr_membership_fn,
}

// Seven function pointers, no padding: the layout C sees.
const _: () = assert!(size_of::<smr_callbacks>() == 7 * size_of::<usize>());

/// The C caller's `user_data`: the API's contract is that callbacks may be called with it from
/// the node's threads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the header tells the C caller that every callback receives `user_data` on the node's
// threads; making that safe is the caller's side of the contract.
unsafe impl Send for UserData {}
// SAFETY: as above; smr itself never dereferences the pointer.
unsafe impl Sync for UserData {}

/// The callback table with its user data, shared by the state machine and the node handle.
#[derive(Debug)]
pub(crate) struct Callbacks {
    table: smr_callbacks,
    user_data: UserData,
    fatal_notified: AtomicBool,
}

impl Callbacks {
    /// Checks the required callbacks.
    pub(crate) fn new(table: smr_callbacks, user_data: *mut c_void) -> Result<Callbacks, smr_status> {
        for (name, missing) in [
            ("apply", table.apply.is_none()),
            ("snapshot", table.snapshot.is_none()),
            ("restore", table.restore.is_none()),
        ] {
            if missing {
                return Err(fail(SMR_E_NULL, format!("callbacks->{name} is NULL; it is required")));
            }
        }
        Ok(Callbacks { table, user_data: UserData(user_data), fatal_notified: AtomicBool::new(false) })
    }

    /// Calls `on_fatal` the first time only.
    pub(crate) fn notify_fatal(&self, exit_code: i32, message: &str) {
        if self.fatal_notified.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(on_fatal) = self.table.on_fatal else { return };
        let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
        // SAFETY: `on_fatal` is a function pointer the caller gave for this purpose; the message
        // lives for the duration of the call, as documented.
        as_callback(|| unsafe { on_fatal(self.user_data.0, exit_code, message.as_ptr()) });
    }
}

/// Forwards the node's notifications to the optional callbacks.
#[derive(Debug)]
pub(crate) struct CEvents(pub(crate) std::sync::Arc<Callbacks>);

impl smr_runtime::NodeEvents for CEvents {
    fn role_changed(&mut self, role: smr_raft::Role, term: u64, leader: Option<u64>) {
        let Some(on_role_change) = self.0.table.on_role_change else { return };
        let role = match role {
            smr_raft::Role::Follower => 0,
            smr_raft::Role::PreCandidate => 1,
            smr_raft::Role::Candidate => 2,
            smr_raft::Role::Leader => 3,
        };
        // SAFETY: a function pointer the caller gave for this purpose, called with its user data.
        as_callback(|| unsafe { on_role_change(self.0.user_data.0, role, term, leader.unwrap_or(0)) });
    }

    fn membership_changed(&mut self, conf: &smr_raft::ConfState) {
        let Some(on_membership_change) = self.0.table.on_membership_change else { return };
        let (voters, learners) = (&conf.voters, &conf.learners);
        // SAFETY: the pointers and counts describe vectors that outlive the call, as documented.
        as_callback(|| unsafe {
            on_membership_change(self.0.user_data.0, voters.as_ptr(), voters.len(), learners.as_ptr(), learners.len())
        });
    }

    fn fatal(&mut self, fatal: &smr_runtime::Fatal) {
        self.0.notify_fatal(fatal.exit_code, &fatal.message);
    }
}

/// The state machine the engine drives: every operation is a call through the table.
#[derive(Debug)]
pub(crate) struct CStateMachine {
    callbacks: std::sync::Arc<Callbacks>,
    /// Reused between batches; empty between calls, so it holds no pointer into the log.
    commands: Vec<smr_command>,
    positions: Vec<usize>,
}

// SAFETY: `commands` is emptied before `apply` returns, so the raw pointers it holds never
// outlive the batch they point into nor move between threads; the rest is `Send`.
unsafe impl Send for CStateMachine {}

impl CStateMachine {
    pub(crate) fn new(callbacks: std::sync::Arc<Callbacks>) -> CStateMachine {
        CStateMachine { callbacks, commands: Vec::new(), positions: Vec::new() }
    }
}

impl StateMachine for CStateMachine {
    fn apply(&mut self, batch: &ApplyBatch<'_>, results: &mut Results) {
        self.commands.clear();
        self.positions.clear();
        for (position, payload) in batch.commands() {
            self.commands.push(smr_command { data: payload.as_ptr(), len: payload.len() });
            self.positions.push(position);
        }
        if self.commands.is_empty() {
            // Every command was a retry, answered from the session table.
            return;
        }
        let mut sink = smr_result_sink { positions: self.positions.as_ptr(), count: self.positions.len(), results };
        let apply = self.callbacks.table.apply.expect("checked at start");
        // SAFETY: the commands point into `batch`, alive for this call; the sink points at
        // `positions` and `results`, alive for this call, and is documented as valid only
        // during it.
        as_callback(|| unsafe {
            apply(self.callbacks.user_data.0, batch.index, self.commands.as_ptr(), self.commands.len(), &mut sink)
        });
        self.commands.clear();
    }

    /// The C side reads its own state after `smr_read_barrier`; reads made through the node (an
    /// empty barrier read, or a client's read) answer empty.
    fn query(&self, _query: &[u8]) -> Bytes {
        Bytes::new()
    }

    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut out: &mut dyn Write = out;
        let mut writer = smr_writer { out: (&raw mut out).cast(), error: None };
        let snapshot = self.callbacks.table.snapshot.expect("checked at start");
        // SAFETY: the writer points at `out`, alive for this call, and is documented as valid
        // only during it.
        let code = as_callback(|| unsafe { snapshot(self.callbacks.user_data.0, &mut writer) });
        match (code, writer.error) {
            (_, Some(error)) => Err(error),
            (0, None) => Ok(()),
            (code, None) => Err(std::io::Error::other(format!("the snapshot callback returned {code}"))),
        }
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        let mut input: &mut dyn Read = input;
        let mut reader = smr_reader { input: (&raw mut input).cast(), error: None };
        let restore = self.callbacks.table.restore.expect("checked at start");
        // SAFETY: the reader points at `input`, alive for this call, and is documented as valid
        // only during it.
        let code = as_callback(|| unsafe { restore(self.callbacks.user_data.0, &mut reader) });
        match (code, reader.error) {
            (_, Some(error)) => Err(RestoreError::Io(error)),
            (0, None) => Ok(()),
            (code, None) => Err(RestoreError::Malformed(format!("the restore callback returned {code}"))),
        }
    }

    fn state_hash(&self) -> u64 {
        match self.callbacks.table.state_hash {
            // SAFETY: a function pointer the caller gave for this purpose.
            Some(state_hash) => as_callback(|| unsafe { state_hash(self.callbacks.user_data.0) }),
            None => 0,
        }
    }

    /// The C callbacks are promised the node's apply thread (`smr_apply_fn`).
    fn any_thread(&self) -> bool {
        false
    }
}

/// Checks a (data, len) pair from C and makes it a slice.
///
/// # Safety
/// When `data` is not NULL it must point at `len` readable bytes for the returned lifetime.
pub(crate) unsafe fn bytes_arg<'a>(what: &str, data: *const u8, len: usize) -> Result<&'a [u8], smr_status> {
    if len > isize::MAX as usize {
        return Err(fail(SMR_E_INVALID_ARGUMENT, format!("{what}: length {len} is not a valid length")));
    }
    if data.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(fail(SMR_E_NULL, format!("{what} is NULL with a length of {len}")));
    }
    // SAFETY: non-NULL, length checked against isize::MAX, readable per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

fn refuse_outside_callback(what: &str) -> Result<(), smr_status> {
    if !in_callback() {
        return Err(fail(SMR_E_WRONG_THREAD, format!("{what} may only be called from inside the callback")));
    }
    Ok(())
}

/// Sets the result of `commands[position]` of the current `apply` call to a copy of
/// `data[0..len]` (`data` may be NULL when `len` is 0). Setting a position twice keeps the
/// second result.
///
/// Threads: only from inside `apply`, on its thread (else `SMR_E_WRONG_THREAD`).
/// Errors: `SMR_E_NULL`, `SMR_E_INVALID_ARGUMENT` (position not below `count`).
///
/// # Safety
/// `sink` must be the sink of the `apply` call in progress; `data` must point at `len`
/// readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_result_set(
    sink: *mut smr_result_sink,
    position: usize,
    data: *const u8,
    len: usize,
) -> smr_status {
    crate::status::guard(|| {
        if sink.is_null() {
            return Err(fail(SMR_E_NULL, "smr_result_set: sink is NULL"));
        }
        refuse_outside_callback("smr_result_set")?;
        // SAFETY: per the contract, `data` holds `len` bytes.
        let result = unsafe { bytes_arg("smr_result_set: data", data, len) }?;
        // SAFETY: `sink` is the live sink of the apply call in progress (contract above).
        let sink = unsafe { &mut *sink };
        if position >= sink.count {
            return Err(fail(
                SMR_E_INVALID_ARGUMENT,
                format!("smr_result_set: position {position} is outside the batch of {}", sink.count),
            ));
        }
        // SAFETY: `positions` holds `count` entries, alive for the apply call; checked above.
        let in_batch = unsafe { *sink.positions.add(position) };
        // SAFETY: `results` is the engine's results of this batch, alive for the apply call.
        unsafe { &mut *sink.results }.set(in_batch, Bytes::copy_from_slice(result));
        Ok(())
    })
}

/// Appends `data[0..len]` to the snapshot being written (`data` may be NULL when `len` is 0).
///
/// Threads: only from inside `snapshot`, on its thread (else `SMR_E_WRONG_THREAD`).
/// Ownership: `data` stays the caller's; it is copied into the snapshot during the call.
/// Errors: `SMR_E_NULL`; `SMR_E_IO` when the node could not write (the message says why;
/// return non-zero from `snapshot` then; the node reports the error itself).
///
/// # Safety
/// `writer` must be the writer of the `snapshot` call in progress; `data` must point at `len`
/// readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_writer_write(writer: *mut smr_writer, data: *const u8, len: usize) -> smr_status {
    crate::status::guard(|| {
        if writer.is_null() {
            return Err(fail(SMR_E_NULL, "smr_writer_write: writer is NULL"));
        }
        refuse_outside_callback("smr_writer_write")?;
        // SAFETY: per the contract, `data` holds `len` bytes.
        let data = unsafe { bytes_arg("smr_writer_write: data", data, len) }?;
        // SAFETY: `writer` is the live writer of the snapshot call in progress.
        let writer = unsafe { &mut *writer };
        if let Some(error) = &writer.error {
            return Err(fail(SMR_E_IO, format!("writing the snapshot failed earlier: {error}")));
        }
        // SAFETY: `out` points at the `&mut dyn Write` on the stack of `CStateMachine::snapshot`,
        // which is waiting for this callback to return.
        let out = unsafe { &mut *writer.out.cast::<&mut dyn Write>() };
        if let Err(error) = out.write_all(data) {
            let status = fail(SMR_E_IO, format!("writing the snapshot: {error}"));
            writer.error = Some(error);
            return Err(status);
        }
        Ok(())
    })
}

/// Reads up to `capacity` bytes of the snapshot into `buffer` and stores how many in `*got`;
/// `*got` is 0 only at the end of the snapshot (or when `capacity` is 0).
///
/// Threads: only from inside `restore`, on its thread (else `SMR_E_WRONG_THREAD`).
/// Ownership: `buffer` and `got` stay the caller's; smr writes them during the call only.
/// Errors: `SMR_E_NULL` (`reader`, `got`, or `buffer` with `capacity` above 0); `SMR_E_IO` when
/// the snapshot cannot be read (return non-zero from `restore` then).
///
/// # Safety
/// `reader` must be the reader of the `restore` call in progress; `buffer` must point at
/// `capacity` writable bytes; `got` at a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_reader_read(
    reader: *mut smr_reader,
    buffer: *mut u8,
    capacity: usize,
    got: *mut usize,
) -> smr_status {
    crate::status::guard(|| {
        if reader.is_null() || got.is_null() {
            return Err(fail(SMR_E_NULL, "smr_reader_read: reader or got is NULL"));
        }
        // SAFETY: `got` is non-NULL and writable per the contract.
        unsafe { got.write(0) };
        refuse_outside_callback("smr_reader_read")?;
        if capacity > isize::MAX as usize {
            return Err(fail(SMR_E_INVALID_ARGUMENT, format!("smr_reader_read: capacity {capacity} is not valid")));
        }
        if capacity == 0 {
            return Ok(());
        }
        if buffer.is_null() {
            return Err(fail(SMR_E_NULL, format!("smr_reader_read: buffer is NULL with a capacity of {capacity}")));
        }
        // SAFETY: non-NULL, `capacity` writable bytes per the contract.
        let buffer = unsafe { std::slice::from_raw_parts_mut(buffer, capacity) };
        // SAFETY: `reader` is the live reader of the restore call in progress.
        let reader = unsafe { &mut *reader };
        if let Some(error) = &reader.error {
            return Err(fail(SMR_E_IO, format!("reading the snapshot failed earlier: {error}")));
        }
        // SAFETY: `input` points at the `&mut dyn Read` on the stack of `CStateMachine::restore`,
        // which is waiting for this callback to return.
        let input = unsafe { &mut *reader.input.cast::<&mut dyn Read>() };
        loop {
            match input.read(buffer) {
                Ok(n) => {
                    // SAFETY: as above.
                    unsafe { got.write(n) };
                    return Ok(());
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let status = fail(SMR_E_IO, format!("reading the snapshot: {error}"));
                    reader.error = Some(error);
                    return Err(status);
                }
            }
        }
    })
}
