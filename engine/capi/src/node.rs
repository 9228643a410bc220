//! The node handle and every call on it.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use smr_net::{AdminRequest, Consistency, RequestBody, ResponseBody};
use smr_runtime::{InitialState, Node, NodeConfig, config_file};

use crate::callbacks::{CEvents, CStateMachine, Callbacks, UserData, bytes_arg, smr_callbacks};
use crate::status::smr_status::{self, *};
use crate::status::{PanicPoint, as_callback, fail, guard, injection_point, panic_text, refuse_in_callback};

/// The longest config text accepted, 1 MiB: a config is a page of TOML.
const CONFIG_BYTES_MAX: usize = 1 << 20;
/// How often the watcher looks for a fatal stop of the node, to call `on_fatal`.
const FATAL_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The exit code reported to `on_fatal` for a panic caught at the boundary (EX_SOFTWARE).
const EXIT_CODE_PANIC: i32 = 70;

/// How `smr_node_start` treats the data directory; passed as an `int32_t`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum smr_start_mode {
    /// As the config's `initial_state` key says (`refuse` when absent).
    SMR_START_FROM_CONFIG = 0,
    /// Restart from the node's own data only; an empty data directory is refused
    /// (`SMR_E_CONFIG`). The safe choice for a process that restarts itself.
    SMR_START_EXISTING = 1,
    /// An empty data directory founds a new cluster of the config's `members`.
    SMR_START_NEW = 2,
    /// An empty data directory joins an existing cluster: the node waits to be added by the
    /// leader (`smr_add_node` there).
    SMR_START_JOIN = 3,
}

/// A running (or stopped) node. Opaque. Created by `smr_node_start`, freed by `smr_node_free`.
///
/// Threads: every call taking an `smr_node*` may be made from any thread, concurrently, except
/// `smr_node_free`, which must be the last call on the handle.
#[derive(Debug)]
pub struct smr_node {
    inner: Arc<Inner>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once stopped. Calls take the read lock with `try_read`, so a call made while
    /// `smr_node_stop` holds the write lock (a completion running during the drain, say) is
    /// answered `SMR_E_SHUTTING_DOWN` rather than deadlocking.
    node: RwLock<Option<Node>>,
    callbacks: Arc<Callbacks>,
    watcher_stop: AtomicBool,
    /// Set by a panic caught in a call on the node: the node is stopped, and every later call
    /// is refused with `SMR_E_FATAL` and this reason.
    panicked: OnceLock<String>,
}

impl Inner {
    /// Runs `f` on the running node; a panic in it is reported like a fatal failure of the node.
    /// A node that stopped on its own (a fatal failure or an earlier panic) refuses with
    /// `SMR_E_FATAL`.
    fn with_node(&self, f: impl FnOnce(&Node) -> Result<(), smr_status>) -> Result<(), smr_status> {
        let guard = match self.node.try_read() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(fail(SMR_E_SHUTTING_DOWN, "the node is being stopped"));
            }
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err(fail(SMR_E_INTERNAL, "the node handle is poisoned by an earlier panic"));
            }
        };
        let Some(node) = guard.as_ref() else {
            return Err(fail(SMR_E_STOPPED, "the node was stopped with smr_node_stop"));
        };
        if let Some(message) = self.panicked.get() {
            return Err(fail(SMR_E_FATAL, format!("the node stopped after {message} (exit code {EXIT_CODE_PANIC})")));
        }
        if node.is_stopping()
            && let Some(fatal) = node.fatal()
        {
            return Err(fail(
                SMR_E_FATAL,
                format!("the node stopped: {} (exit code {})", fatal.message, fatal.exit_code),
            ));
        }
        let call = || {
            injection_point(PanicPoint::OnNode);
            f(node)
        };
        match catch_unwind(AssertUnwindSafe(call)) {
            Ok(result) => result,
            Err(payload) => {
                let message = format!("a panic in smr: {}", panic_text(payload.as_ref()));
                let _ = self.panicked.set(message.clone());
                node.stop_handle().stop();
                self.callbacks.notify_fatal(EXIT_CODE_PANIC, &message);
                Err(fail(SMR_E_PANIC, message))
            }
        }
    }
}

/// Checks a node pointer.
///
/// # Safety
/// `node` is NULL or a handle from `smr_node_start` not yet freed.
unsafe fn node_arg<'a>(node: *const smr_node, what: &str) -> Result<&'a smr_node, smr_status> {
    if node.is_null() {
        return Err(fail(SMR_E_NULL, format!("{what}: node is NULL")));
    }
    // SAFETY: a live handle per the caller's contract.
    Ok(unsafe { &*node })
}

fn timeout_arg(what: &str, timeout_ms: u32) -> Result<Duration, smr_status> {
    if timeout_ms == 0 {
        return Err(fail(SMR_E_INVALID_ARGUMENT, format!("{what}: timeout_ms is 0")));
    }
    Ok(Duration::from_millis(u64::from(timeout_ms)))
}

/// Checks a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `text` is NULL or points at a NUL-terminated string.
unsafe fn str_arg<'a>(what: &str, text: *const c_char) -> Result<&'a str, smr_status> {
    if text.is_null() {
        return Err(fail(SMR_E_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().map_err(|_| fail(SMR_E_INVALID_ARGUMENT, format!("{what} is not UTF-8")))
}

/// The status of an answer, recording its detail as this thread's last error.
fn answer_status(answer: &ResponseBody) -> smr_status {
    match answer {
        ResponseBody::Ok(_) => SMR_OK,
        ResponseBody::NotLeader { leader_id, leader_address } => {
            let leader = match (leader_id, leader_address) {
                (Some(id), Some(address)) => format!("the leader is node {id} at {address}"),
                (Some(id), None) => format!("the leader is node {id}"),
                _ => "the leader is not known (an election may be under way)".to_string(),
            };
            fail(SMR_E_NOT_LEADER, format!("not the leader; {leader}"))
        }
        ResponseBody::Busy => fail(SMR_E_BUSY, "the node's queues are full"),
        ResponseBody::TooLarge => fail(SMR_E_TOO_LARGE, "the request is larger than the node accepts"),
        ResponseBody::TimedOut => fail(SMR_E_TIMED_OUT, "no answer within the timeout"),
        ResponseBody::ShuttingDown => fail(SMR_E_SHUTTING_DOWN, "the node is shutting down"),
        ResponseBody::InvalidRequest(why) => fail(SMR_E_INVALID_REQUEST, why),
    }
}

/// `Ok(bytes)` or the status of the answer.
fn answer_bytes(answer: ResponseBody) -> Result<Bytes, smr_status> {
    match answer {
        ResponseBody::Ok(bytes) => Ok(bytes),
        other => Err(answer_status(&other)),
    }
}

fn start_mode_arg(start_mode: i32) -> Result<Option<InitialState>, smr_status> {
    match start_mode {
        m if m == smr_start_mode::SMR_START_FROM_CONFIG as i32 => Ok(None),
        m if m == smr_start_mode::SMR_START_EXISTING as i32 => Ok(Some(InitialState::Refuse)),
        m if m == smr_start_mode::SMR_START_NEW as i32 => Ok(Some(InitialState::New)),
        m if m == smr_start_mode::SMR_START_JOIN as i32 => Ok(Some(InitialState::Join)),
        other => Err(fail(SMR_E_INVALID_ARGUMENT, format!("start_mode {other} is not an smr_start_mode"))),
    }
}

/// The checks and the start shared by both start calls.
///
/// # Safety
/// As for `smr_node_start`.
unsafe fn start(
    config: impl FnOnce() -> Result<NodeConfig, smr_status>,
    start_mode: i32,
    callbacks: *const smr_callbacks,
    user_data: *mut c_void,
    out: *mut *mut smr_node,
) -> Result<(), smr_status> {
    if out.is_null() {
        return Err(fail(SMR_E_NULL, "smr_node_start: out is NULL"));
    }
    // SAFETY: non-NULL and writable per the contract.
    unsafe { out.write(std::ptr::null_mut()) };
    if callbacks.is_null() {
        return Err(fail(SMR_E_NULL, "smr_node_start: callbacks is NULL"));
    }
    refuse_in_callback("smr_node_start")?;
    ignore_default_sigpipe();
    // SAFETY: non-NULL and readable per the contract; the table is copied.
    let table = unsafe { callbacks.read() };
    let callbacks = Arc::new(Callbacks::new(table, user_data)?);
    let initial_state = start_mode_arg(start_mode)?;
    let mut config = config()?;
    if let Some(initial_state) = initial_state {
        config.initial_state = initial_state;
    }
    let events: Box<dyn smr_runtime::NodeEvents> = Box::new(CEvents(Arc::clone(&callbacks)));
    let node =
        Node::start_with_events(config, CStateMachine::new(Arc::clone(&callbacks)), Some(events)).map_err(|error| {
            let status = if error.exit_code() == smr_runtime::EXIT_CODE_CONFIG { SMR_E_CONFIG } else { SMR_E_START };
            fail(status, format!("{error} (exit code {})", error.exit_code()))
        })?;
    let inner = Arc::new(Inner {
        node: RwLock::new(Some(node)),
        callbacks,
        watcher_stop: AtomicBool::new(false),
        panicked: OnceLock::new(),
    });
    let watched = Arc::clone(&inner);
    let watcher = std::thread::Builder::new()
        .name("smr-capi-fatal".into())
        .spawn(move || watch_fatal(&watched))
        .map_err(|error| fail(SMR_E_START, format!("cannot start the watcher thread: {error}")))?;
    let handle = Box::new(smr_node { inner, watcher: Mutex::new(Some(watcher)) });
    // SAFETY: checked non-NULL above.
    unsafe { out.write(Box::into_raw(handle)) };
    Ok(())
}

/// Sets SIGPIPE to ignored when it has the default action (terminate), as Rust programs do at
/// start-up: smr writes to sockets whose other end may have closed, and must see EPIPE.
fn ignore_default_sigpipe() {
    // SAFETY: sigaction with a NULL new action only reads the current one into `current`, a
    // zeroed, properly sized struct owned by this frame; `signal` then sets a standard
    // disposition. Both are async-signal-safe process-wide settings.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &raw mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL
        {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
}

/// Calls `on_fatal` once the node stops on its own.
fn watch_fatal(inner: &Inner) {
    while !inner.watcher_stop.load(Ordering::Acquire) {
        if let Ok(guard) = inner.node.try_read()
            && let Some(fatal) = guard.as_ref().and_then(Node::fatal)
        {
            drop(guard);
            inner.callbacks.notify_fatal(fatal.exit_code, &fatal.message);
            return;
        }
        std::thread::park_timeout(FATAL_POLL_INTERVAL);
    }
}

/// Starts a node from a config given as TOML text (`config_toml[0..config_len]`, UTF-8, no NUL
/// needed; the same keys as the `smr node` config file; relative paths resolve against the
/// current directory) and stores its handle in `*out` (NULL on failure).
///
/// `start_mode` is an `smr_start_mode`. `callbacks` is copied; `user_data` is passed to every
/// callback and must stay valid until `smr_node_free` returns.
///
/// The call returns once the node has recovered its data (calling `restore` on this thread when
/// there is a snapshot) and its threads run; it may not be leader yet (proposals answer
/// `SMR_E_NOT_LEADER` until an election is won).
///
/// Signals: if SIGPIPE still has its default action, it is set to ignored for the process (a
/// peer or client that closes its connection would otherwise kill the process on smr's next
/// write, which sees EPIPE instead). A handler the application installed is left alone.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`). Several nodes may run in one
/// process, each with its own callbacks and `user_data`.
/// Ownership: `config_toml` is read during the call only; `callbacks` is copied; `user_data`
/// stays the caller's and must outlive the node; `*out` is the caller's to free with
/// `smr_node_free` (also after a failed `smr_node_stop`).
///
/// Errors: `SMR_E_NULL`, `SMR_E_INVALID_ARGUMENT` (text not UTF-8, over 1 MiB, unknown start
/// mode), `SMR_E_CONFIG` (the message names the key), `SMR_E_START`, `SMR_E_WRONG_THREAD`
/// (from inside a callback).
///
/// # Safety
/// `config_toml` points at `config_len` readable bytes; `callbacks` at an `smr_callbacks`;
/// `out` at a writable `smr_node*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_node_start(
    config_toml: *const c_char,
    config_len: usize,
    start_mode: i32,
    callbacks: *const smr_callbacks,
    user_data: *mut c_void,
    out: *mut *mut smr_node,
) -> smr_status {
    guard(|| {
        let config = || {
            if config_len > CONFIG_BYTES_MAX {
                return Err(fail(
                    SMR_E_INVALID_ARGUMENT,
                    format!("config_len {config_len} is above the limit of {CONFIG_BYTES_MAX} bytes"),
                ));
            }
            // SAFETY: `config_len` readable bytes per the contract.
            let text = unsafe { bytes_arg("smr_node_start: config_toml", config_toml.cast(), config_len) }?;
            if config_toml.is_null() {
                return Err(fail(SMR_E_NULL, "smr_node_start: config_toml is NULL"));
            }
            let text = std::str::from_utf8(text)
                .map_err(|error| fail(SMR_E_INVALID_ARGUMENT, format!("the config is not UTF-8: {error}")))?;
            config_file::parse(text, Path::new("")).map_err(|error| fail(SMR_E_CONFIG, error))
        };
        // SAFETY: the pointers are as `smr_node_start` documents.
        unsafe { start(config, start_mode, callbacks, user_data, out) }
    })
}

/// `smr_node_start` with the config read from the file at `path` (NUL-terminated, UTF-8);
/// relative paths in the file resolve against the file's directory. Threads, ownership and
/// errors as for `smr_node_start`; `path` is read during the call only.
///
/// # Safety
/// `path` is a NUL-terminated string; the rest as for `smr_node_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_node_start_file(
    path: *const c_char,
    start_mode: i32,
    callbacks: *const smr_callbacks,
    user_data: *mut c_void,
    out: *mut *mut smr_node,
) -> smr_status {
    guard(|| {
        let config = || {
            // SAFETY: NUL-terminated per the contract.
            let path = unsafe { str_arg("smr_node_start_file: path", path) }?;
            config_file::load(Path::new(path)).map_err(|error| fail(SMR_E_CONFIG, error))
        };
        // SAFETY: the pointers are as `smr_node_start` documents.
        unsafe { start(config, start_mode, callbacks, user_data, out) }
    })
}

/// Called once with the outcome of an `smr_propose`: `status` (`SMR_OK` or the failure, whose
/// detail `smr_last_error_message` gives on this thread during the call) and the state
/// machine's result for the command (`result` valid only during the call; NULL with `len` 0
/// on failure). Runs on a node thread, or on the thread calling `smr_propose` when the node
/// refuses at once (busy, stopping); it must not block.
pub type smr_completion_fn =
    Option<unsafe extern "C" fn(context: *mut c_void, status: smr_status, result: *const u8, len: usize)>;

/// Proposes `command[0..len]` (copied; `command` may be NULL when `len` is 0) and returns at
/// once; `completion` (may be NULL) is called exactly once with the outcome when this call
/// returns `SMR_OK`, and never when it returns anything else.
///
/// Sessions: pick a `session_id` (not 0) per client and give its commands increasing
/// `sequence` numbers from 1; a retry with the same pair is applied once, and answered with
/// the first result. Session 0 is never deduplicated.
///
/// Threads: any thread, including inside callbacks.
/// Errors: `SMR_E_NULL`, `SMR_E_INVALID_ARGUMENT`, `SMR_E_STOPPED`, `SMR_E_SHUTTING_DOWN`,
/// `SMR_E_FATAL`; the outcome itself (`SMR_E_NOT_LEADER`, `SMR_E_BUSY`...) goes to the
/// completion.
///
/// # Safety
/// `node` is a live handle; `command` points at `len` readable bytes; `context` is valid
/// for the completion (smr passes it along untouched, possibly to another thread).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_propose(
    node: *mut smr_node,
    session_id: u64,
    sequence: u64,
    command: *const u8,
    len: usize,
    completion: smr_completion_fn,
    context: *mut c_void,
) -> smr_status {
    guard(|| {
        // SAFETY: a live handle per the contract.
        let handle = unsafe { node_arg(node, "smr_propose") }?;
        // SAFETY: `len` readable bytes per the contract.
        let payload = Bytes::copy_from_slice(unsafe { bytes_arg("smr_propose: command", command, len) }?);
        let context = UserData(context);
        handle.inner.with_node(|node| {
            node.submit(RequestBody::Command { session_id, sequence, payload }, move |answer| {
                let context = context;
                let status = answer_status(&answer);
                let Some(completion) = completion else { return };
                let (data, len) = match &answer {
                    ResponseBody::Ok(bytes) => (bytes.as_ptr(), bytes.len()),
                    _ => (std::ptr::null(), 0),
                };
                // SAFETY: the caller's completion with the caller's context; the result lives
                // for the duration of the call, as documented.
                as_callback(|| unsafe { completion(context.0, status, data, len) });
            });
            Ok(())
        })
    })
}

/// A result copied out of the node: `data[0..len]`, owned by the caller, freed with
/// `smr_buffer_free`. `data` is NULL when `len` is 0.
#[repr(C)]
#[derive(Debug)]
pub struct smr_buffer {
    pub data: *mut u8,
    pub len: usize,
}

const _: () = assert!(size_of::<smr_buffer>() == 2 * size_of::<usize>());

fn into_buffer(bytes: &[u8]) -> smr_buffer {
    if bytes.is_empty() {
        return smr_buffer { data: std::ptr::null_mut(), len: 0 };
    }
    let boxed: Box<[u8]> = bytes.into();
    let len = boxed.len();
    smr_buffer { data: Box::into_raw(boxed).cast(), len }
}

/// Frees a buffer filled by smr and sets it to `{NULL, 0}`; a NULL `buffer` or an empty one is
/// fine. Threads: any thread (the buffer is the caller's, not tied to the node or its thread).
///
/// # Safety
/// `buffer` is NULL or points at an `smr_buffer` filled by smr and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_buffer_free(buffer: *mut smr_buffer) {
    let _ = guard(|| {
        if buffer.is_null() {
            return Ok(());
        }
        // SAFETY: a buffer filled by smr per the contract.
        let buffer = unsafe { &mut *buffer };
        if !buffer.data.is_null() {
            let slice = std::ptr::slice_from_raw_parts_mut(buffer.data, buffer.len);
            // SAFETY: `data` and `len` came from `Box::<[u8]>::into_raw` in `into_buffer`.
            drop(unsafe { Box::from_raw(slice) });
        }
        buffer.data = std::ptr::null_mut();
        buffer.len = 0;
        Ok(())
    });
}

/// Proposes `command[0..len]` like `smr_propose` and waits for the outcome, at most
/// `timeout_ms` (above 0). On `SMR_OK`, `*result` (if `result` is not NULL) receives a copy of
/// the state machine's result, which the caller frees with `smr_buffer_free`; on failure it is
/// `{NULL, 0}`.
///
/// `SMR_E_TIMED_OUT` leaves the command's fate open: retry with the same session and sequence.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle; `command` points at `len` readable bytes; `result` is NULL or
/// points at a writable `smr_buffer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_propose_sync(
    node: *mut smr_node,
    session_id: u64,
    sequence: u64,
    command: *const u8,
    len: usize,
    timeout_ms: u32,
    result: *mut smr_buffer,
) -> smr_status {
    guard(|| {
        if !result.is_null() {
            // SAFETY: writable per the contract.
            unsafe { result.write(smr_buffer { data: std::ptr::null_mut(), len: 0 }) };
        }
        // SAFETY: a live handle per the contract.
        let handle = unsafe { node_arg(node, "smr_propose_sync") }?;
        // SAFETY: `len` readable bytes per the contract.
        let payload = Bytes::copy_from_slice(unsafe { bytes_arg("smr_propose_sync: command", command, len) }?);
        let timeout = timeout_arg("smr_propose_sync", timeout_ms)?;
        refuse_in_callback("smr_propose_sync")?;
        handle.inner.with_node(|node| {
            let bytes = answer_bytes(node.call(RequestBody::Command { session_id, sequence, payload }, timeout))?;
            if !result.is_null() {
                // SAFETY: writable per the contract.
                unsafe { result.write(into_buffer(&bytes)) };
            }
            Ok(())
        })
    })
}

/// A linearizable read barrier (Raft's ReadIndex): returns `SMR_OK` once this node's state
/// machine has applied every command committed before the call, so the caller may serve a read
/// from its own state and see every write acknowledged before the call began. Waits at most
/// `timeout_ms` (above 0). Only the leader can answer (`SMR_E_NOT_LEADER` elsewhere).
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_read_barrier(node: *mut smr_node, timeout_ms: u32) -> smr_status {
    guard(|| {
        // SAFETY: a live handle per the contract.
        let handle = unsafe { node_arg(node, "smr_read_barrier") }?;
        let timeout = timeout_arg("smr_read_barrier", timeout_ms)?;
        refuse_in_callback("smr_read_barrier")?;
        handle.inner.with_node(|node| {
            let read = RequestBody::Read { consistency: Consistency::Linearizable, payload: Bytes::new() };
            answer_bytes(node.call(read, timeout)).map(drop)
        })
    })
}

/// Sends an admin request and waits for its answer.
///
/// # Safety
/// `node` is a live handle.
unsafe fn admin(
    node: *mut smr_node,
    what: &str,
    timeout_ms: u32,
    request: impl FnOnce() -> Result<AdminRequest, smr_status>,
) -> Result<Bytes, smr_status> {
    // SAFETY: a live handle per the contract.
    let handle = unsafe { node_arg(node, what) }?;
    let timeout = timeout_arg(what, timeout_ms)?;
    refuse_in_callback(what)?;
    let request = request()?;
    let mut answer = Bytes::new();
    handle.inner.with_node(|node| {
        answer = answer_bytes(node.call(RequestBody::Admin(request), timeout))?;
        Ok(())
    })?;
    Ok(answer)
}

/// Adds node `node_id` to the cluster, reachable by its peers at `peer_address` and by clients
/// at `client_address` ("host:port", NUL-terminated), as a voter, or as a learner (receives the
/// log, does not vote) when `learner` is non-zero. Start the new node with `SMR_START_JOIN`.
/// Waits at most `timeout_ms` (above 0) for the change to commit. Leader only.
///
/// To promote a learner to voter, call it again with `learner` 0; both addresses may then be
/// "" to keep the ones the cluster knows (a node whose addresses are unknown is
/// `SMR_E_INVALID_REQUEST`). The usual way to grow a cluster: add as a learner, wait until it has
/// caught up (`applied_index` in its `smr_status_json`), promote.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
/// Ownership: the addresses are read during the call only.
///
/// # Safety
/// `node` is a live handle; the addresses are NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_add_node(
    node: *mut smr_node,
    node_id: u64,
    peer_address: *const c_char,
    client_address: *const c_char,
    learner: c_int,
    timeout_ms: u32,
) -> smr_status {
    guard(|| {
        // SAFETY: NUL-terminated per the contract.
        let peer = unsafe { str_arg("smr_add_node: peer_address", peer_address) }?;
        // SAFETY: NUL-terminated per the contract.
        let client = unsafe { str_arg("smr_add_node: client_address", client_address) }?;
        let address = if peer.is_empty() && client.is_empty() { String::new() } else { format!("{peer},{client}") };
        // SAFETY: a live handle per the contract.
        unsafe {
            admin(node, "smr_add_node", timeout_ms, || {
                Ok(AdminRequest::AddNode { node_id, address, learner: learner != 0 })
            })
        }
        .map(drop)
    })
}

/// Removes node `node_id` from the cluster; waits at most `timeout_ms` (above 0) for the change
/// to commit. Leader only. Removing an unknown node is `SMR_E_INVALID_REQUEST`.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_remove_node(node: *mut smr_node, node_id: u64, timeout_ms: u32) -> smr_status {
    guard(|| {
        // SAFETY: a live handle per the contract.
        unsafe { admin(node, "smr_remove_node", timeout_ms, || Ok(AdminRequest::RemoveNode { node_id })) }.map(drop)
    })
}

/// Asks the leader to hand leadership to node `node_id`; `SMR_OK` once the transfer started
/// (waits at most `timeout_ms`, above 0). Leader only.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_transfer_leader(node: *mut smr_node, node_id: u64, timeout_ms: u32) -> smr_status {
    guard(|| {
        // SAFETY: a live handle per the contract.
        unsafe { admin(node, "smr_transfer_leader", timeout_ms, || Ok(AdminRequest::TransferLeader { node_id })) }
            .map(drop)
    })
}

/// Copies `text` into a new NUL-terminated string for C.
fn into_c_string(text: Vec<u8>) -> Result<*mut c_char, smr_status> {
    let text = CString::new(text).map_err(|_| fail(SMR_E_INTERNAL, "the JSON text holds a NUL byte"))?;
    Ok(text.into_raw())
}

/// Stores the node's status as JSON in `*out` (role, term, leader, commit and applied indexes,
/// members, `state_hash`...: the document `smr ctl status` prints); NULL on failure. Waits at
/// most `timeout_ms` (above 0): the apply thread adds its part.
///
/// Ownership: the caller frees `*out` with `smr_free_string`.
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle; `out` points at a writable `char*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_status_json(node: *mut smr_node, timeout_ms: u32, out: *mut *mut c_char) -> smr_status {
    guard(|| {
        if out.is_null() {
            return Err(fail(SMR_E_NULL, "smr_status_json: out is NULL"));
        }
        // SAFETY: writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: a live handle per the contract.
        let json = unsafe { admin(node, "smr_status_json", timeout_ms, || Ok(AdminRequest::Status)) }?;
        // SAFETY: writable per the contract.
        unsafe { out.write(into_c_string(json.to_vec())?) };
        Ok(())
    })
}

/// Stores the node's metrics as JSON in `*out` (per stage: counters and latency histograms,
/// the document `smr ctl stats` prints); NULL on failure. Does not block.
///
/// Ownership: the caller frees `*out` with `smr_free_string`.
/// Threads: any thread, including inside callbacks.
///
/// # Safety
/// `node` is a live handle; `out` points at a writable `char*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_metrics_json(node: *mut smr_node, out: *mut *mut c_char) -> smr_status {
    guard(|| {
        if out.is_null() {
            return Err(fail(SMR_E_NULL, "smr_metrics_json: out is NULL"));
        }
        // SAFETY: writable per the contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: a live handle per the contract.
        let handle = unsafe { node_arg(node, "smr_metrics_json") }?;
        handle.inner.with_node(|node| {
            let json = into_c_string(node.metrics().to_json())?;
            // SAFETY: writable per the contract.
            unsafe { out.write(json) };
            Ok(())
        })
    })
}

/// Frees a string returned by smr (`smr_status_json`, `smr_metrics_json`); NULL is fine.
/// Threads: any thread.
///
/// # Safety
/// `text` is NULL or a string from smr not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_free_string(text: *mut c_char) {
    let _ = guard(|| {
        if !text.is_null() {
            // SAFETY: made by `CString::into_raw` in `into_c_string`, per the contract.
            drop(unsafe { CString::from_raw(text) });
        }
        Ok(())
    });
}

/// Stops the node: proposals in flight finish (for a bounded time) and their completions run,
/// everything written so far is made durable, and every node thread is joined. Afterwards every
/// call on the handle returns `SMR_E_STOPPED`; free it with `smr_node_free`. Calling it again
/// returns `SMR_E_STOPPED`.
///
/// Returns `SMR_OK`, or `SMR_E_FATAL` when the node had stopped on its own (the message says
/// why). Waits for synchronous calls in progress on other threads (each bounded by its
/// timeout).
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`).
///
/// # Safety
/// `node` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_node_stop(node: *mut smr_node) -> smr_status {
    guard(|| {
        // SAFETY: a live handle per the contract.
        let handle = unsafe { node_arg(node, "smr_node_stop") }?;
        refuse_in_callback("smr_node_stop")?;
        stop(handle)
    })
}

fn stop(handle: &smr_node) -> Result<(), smr_status> {
    // Ask first, so that calls waiting on the node are answered while the lock is awaited.
    if let Ok(guard) = handle.inner.node.try_read()
        && let Some(node) = guard.as_ref()
    {
        node.stop_handle().stop();
    }
    let taken = handle.inner.node.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    handle.inner.watcher_stop.store(true, Ordering::Release);
    if let Some(watcher) = handle.watcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
        watcher.thread().unpark();
        let _ = watcher.join();
    }
    let Some(node) = taken else {
        return Err(fail(SMR_E_STOPPED, "the node was already stopped"));
    };
    node.shutdown().map_err(|fatal| {
        handle.inner.callbacks.notify_fatal(fatal.exit_code, &fatal.message);
        fail(SMR_E_FATAL, format!("the node had stopped: {} (exit code {})", fatal.message, fatal.exit_code))
    })?;
    match handle.inner.panicked.get() {
        Some(message) => {
            Err(fail(SMR_E_FATAL, format!("the node had stopped after {message} (exit code {EXIT_CODE_PANIC})")))
        }
        None => Ok(()),
    }
}

/// Stops the node if it runs (as `smr_node_stop`) and frees the handle; NULL is fine. The
/// handle is invalid afterwards: this must be the last call on it, with no call in progress on
/// another thread.
///
/// Threads: any thread but a callback's (`SMR_E_WRONG_THREAD`, and nothing is freed).
///
/// # Safety
/// `node` is NULL or a live handle, not in use by any other thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smr_node_free(node: *mut smr_node) -> smr_status {
    guard(|| {
        if node.is_null() {
            return Ok(());
        }
        refuse_in_callback("smr_node_free")?;
        // SAFETY: a live handle from `Box::into_raw` in `start`, per the contract.
        let handle = unsafe { Box::from_raw(node) };
        match stop(&handle) {
            Ok(()) | Err(SMR_E_STOPPED) => Ok(()),
            Err(status) => Err(status),
        }
    })
}

#[cfg(test)]
mod tests {
    //! The panic path of a call on a running node, through the real entry points, with a panic
    //! injected by the test seam in `status.rs` (which exists in unit tests only).

    use std::ffi::CStr;
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::callbacks::{smr_command, smr_reader, smr_result_sink, smr_writer};
    use crate::status::{inject_panic, smr_last_error_message};

    #[derive(Default)]
    struct Seen {
        fatal_calls: AtomicU32,
        fatal: Mutex<Option<(i32, String)>>,
        completions: AtomicU32,
    }

    unsafe extern "C" fn apply(_: *mut c_void, _: u64, _: *const smr_command, _: usize, _: *mut smr_result_sink) {}

    unsafe extern "C" fn snapshot(_: *mut c_void, _: *mut smr_writer) -> c_int {
        0
    }

    unsafe extern "C" fn restore(_: *mut c_void, _: *mut smr_reader) -> c_int {
        0
    }

    unsafe extern "C" fn on_fatal(user_data: *mut c_void, exit_code: i32, message: *const c_char) {
        // SAFETY: the `Seen` given at start, alive until the node is freed.
        let seen = unsafe { &*user_data.cast::<Seen>() };
        // SAFETY: a NUL-terminated message, valid during the call.
        let message = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        seen.fatal_calls.fetch_add(1, Ordering::SeqCst);
        *seen.fatal.lock().unwrap() = Some((exit_code, message));
    }

    unsafe extern "C" fn completion(context: *mut c_void, _: smr_status, _: *const u8, _: usize) {
        // SAFETY: the `Seen` passed as the context.
        unsafe { &*context.cast::<Seen>() }.completions.fetch_add(1, Ordering::SeqCst);
    }

    fn last_error() -> String {
        // SAFETY: never NULL, valid until the next call on this thread.
        unsafe { CStr::from_ptr(smr_last_error_message()) }.to_string_lossy().into_owned()
    }

    fn config(dir: &Path) -> String {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (peer, client) = (port(), port());
        format!(
            "node_id = 1\ncluster_id = \"0xcd\"\ndata_dir = \"{}\"\nsecret = \"panic-path-test-secret-of-32-chars\"\n\
             peer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n\
             [[members]]\nid = 1\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n\
             [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n",
            dir.join("data").display()
        )
    }

    #[test]
    fn a_panic_in_a_call_on_a_node_is_smr_e_panic_then_on_fatal_then_smr_e_fatal_for_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let text = config(dir.path());
        let seen = Seen::default();
        let user_data = std::ptr::from_ref(&seen).cast_mut().cast::<c_void>();
        let table = smr_callbacks {
            apply: Some(apply),
            snapshot: Some(snapshot),
            restore: Some(restore),
            state_hash: None,
            on_fatal: Some(on_fatal),
            on_role_change: None,
            on_membership_change: None,
        };
        let mut node = std::ptr::null_mut();
        let new = smr_start_mode::SMR_START_NEW as i32;
        // SAFETY: valid pointers; `seen` outlives the node.
        let status = unsafe { smr_node_start(text.as_ptr().cast(), text.len(), new, &table, user_data, &mut node) };
        assert_eq!(status, SMR_OK, "{}", last_error());
        // A one-node cluster elects itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // SAFETY: a live handle; the command lives through the call.
            match unsafe { smr_propose_sync(node, 1, 1, b"x".as_ptr(), 1, 5_000, std::ptr::null_mut()) } {
                SMR_OK => break,
                SMR_E_NOT_LEADER if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => panic!("the node did not take a command: {other:?}: {}", last_error()),
            }
        }
        assert_eq!(seen.fatal_calls.load(Ordering::SeqCst), 0);

        // The panic: the entry point answers SMR_E_PANIC and says so, and on_fatal hears of it.
        inject_panic(PanicPoint::OnNode);
        // SAFETY: a live handle.
        let status = unsafe { smr_propose_sync(node, 1, 2, b"y".as_ptr(), 1, 5_000, std::ptr::null_mut()) };
        assert_eq!(status, SMR_E_PANIC);
        assert_eq!(last_error(), "a panic in smr: injected panic at OnNode");
        assert_eq!(seen.fatal_calls.load(Ordering::SeqCst), 1);
        let (exit_code, message) = seen.fatal.lock().unwrap().clone().unwrap();
        assert_eq!(exit_code, EXIT_CODE_PANIC);
        assert!(message.contains("injected panic at OnNode"), "{message}");

        // Every later call on the node is refused as failed, with the reason; no completion runs.
        let refused = |status: smr_status, what: &str| {
            assert_eq!(status, SMR_E_FATAL, "{what}: {}", last_error());
            assert!(last_error().contains("injected panic at OnNode"), "{what}: {}", last_error());
        };
        let context = user_data;
        // SAFETY: a live handle, and valid pointers, for each call below.
        unsafe {
            refused(smr_propose_sync(node, 1, 3, b"z".as_ptr(), 1, 5_000, std::ptr::null_mut()), "propose_sync");
            refused(smr_propose(node, 1, 3, b"z".as_ptr(), 1, Some(completion), context), "propose");
            refused(smr_read_barrier(node, 5_000), "read_barrier");
            refused(smr_transfer_leader(node, 1, 5_000), "transfer_leader");
            let mut json = std::ptr::null_mut();
            refused(smr_metrics_json(node, &mut json), "metrics_json");
            assert!(json.is_null());
            refused(smr_status_json(node, 5_000, &mut json), "status_json");
            assert!(json.is_null());
            // Stopping reports the failure once; then the handle is merely stopped.
            refused(smr_node_stop(node), "node_stop");
            assert_eq!(smr_node_stop(node), SMR_E_STOPPED);
            assert_eq!(smr_propose(node, 1, 4, b"z".as_ptr(), 1, Some(completion), context), SMR_E_STOPPED);
            assert_eq!(smr_node_free(node), SMR_OK);
        }
        assert_eq!(seen.completions.load(Ordering::SeqCst), 0, "no completion for a refused proposal");
        assert_eq!(seen.fatal_calls.load(Ordering::SeqCst), 1, "on_fatal is called once");
    }
}
