//! Status codes, their text, and the per-thread detail of the last failure.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char};
use std::fmt::Display;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The outcome of every `smr_*` call that can fail. `SMR_OK` is 0 and every failure is
/// negative, so `if (status != SMR_OK)` and `if (status < 0)` both test for failure.
///
/// A failing call also records a sentence of detail for the calling thread, which
/// `smr_last_error_message` returns (the config key that was refused, the leader's address...).
/// Codes are stable: new ones are only ever added, with new numbers.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum smr_status {
    /// Success.
    SMR_OK = 0,
    /// A pointer argument that must not be NULL was NULL (also: data NULL with a length above 0).
    SMR_E_NULL = -1,
    /// An argument is out of range: an unknown start mode, a zero timeout, a length above the
    /// limit, text that is not UTF-8, a result position outside the batch.
    SMR_E_INVALID_ARGUMENT = -2,
    /// The config was refused; the message names the key (`raft.election_ticks`).
    SMR_E_CONFIG = -3,
    /// The node could not start for another reason than its config (data directory, log,
    /// snapshot, a listener's address in use); the message says which, with the exit code the
    /// `smr node` command would have used.
    SMR_E_START = -4,
    /// This node is not the leader. The message names the leader when it is known; send the
    /// request there, or wait for an election.
    SMR_E_NOT_LEADER = -5,
    /// Backpressure: the node's queues are full and nothing was done. Retry later.
    SMR_E_BUSY = -6,
    /// The request is larger than the node accepts (`raft.proposal_bytes_max`). Do not retry.
    SMR_E_TOO_LARGE = -7,
    /// No outcome within the timeout. A command may or may not be applied: retry it with the same
    /// session and sequence to have it applied exactly once.
    SMR_E_TIMED_OUT = -8,
    /// The node is stopping (asked to, or after a fatal failure); nothing more is done.
    SMR_E_SHUTTING_DOWN = -9,
    /// The node was stopped with `smr_node_stop`; only `smr_node_free` remains to be called.
    SMR_E_STOPPED = -10,
    /// The call would block the thread it is made on, and it is made from inside a callback
    /// (which runs on one of the node's own threads): it would deadlock the node.
    SMR_E_WRONG_THREAD = -11,
    /// A bug in smr: a panic was caught at the boundary; the message says where. When it
    /// happened in a call on a node, that node is stopped, `on_fatal` has been called (exit
    /// code 70), and every later call on it returns `SMR_E_FATAL`.
    SMR_E_PANIC = -12,
    /// An unexpected failure inside smr; the message says what.
    SMR_E_INTERNAL = -13,
    /// The node refused the request as malformed or naming something that does not exist
    /// (removing an unknown member, say); the message says why.
    SMR_E_INVALID_REQUEST = -14,
    /// The node stopped on its own after a fatal failure (a disk error, say, or a panic caught
    /// in smr); the message gives its exit code and reason, as `on_fatal` did. Every call on the
    /// node returns it until `smr_node_stop`; only `smr_node_stop` and `smr_node_free` remain.
    SMR_E_FATAL = -15,
    /// Writing a snapshot or reading one back failed (an I/O error of the node's files).
    SMR_E_IO = -16,
}

use smr_status::*;

/// Every status, for tests and for `smr_strerror`.
pub const ALL_STATUSES: [smr_status; 17] = [
    SMR_OK,
    SMR_E_NULL,
    SMR_E_INVALID_ARGUMENT,
    SMR_E_CONFIG,
    SMR_E_START,
    SMR_E_NOT_LEADER,
    SMR_E_BUSY,
    SMR_E_TOO_LARGE,
    SMR_E_TIMED_OUT,
    SMR_E_SHUTTING_DOWN,
    SMR_E_STOPPED,
    SMR_E_WRONG_THREAD,
    SMR_E_PANIC,
    SMR_E_INTERNAL,
    SMR_E_INVALID_REQUEST,
    SMR_E_FATAL,
    SMR_E_IO,
];

impl smr_status {
    fn text(self) -> &'static CStr {
        match self {
            SMR_OK => c"success",
            SMR_E_NULL => c"a required pointer argument is NULL",
            SMR_E_INVALID_ARGUMENT => c"an argument is out of range",
            SMR_E_CONFIG => c"the config was refused",
            SMR_E_START => c"the node could not start",
            SMR_E_NOT_LEADER => c"this node is not the leader",
            SMR_E_BUSY => c"the node is busy; retry later",
            SMR_E_TOO_LARGE => c"the request is too large",
            SMR_E_TIMED_OUT => c"timed out; a command may or may not have been applied",
            SMR_E_SHUTTING_DOWN => c"the node is shutting down",
            SMR_E_STOPPED => c"the node was stopped",
            SMR_E_WRONG_THREAD => c"this call would deadlock on a callback thread",
            SMR_E_PANIC => c"internal error (a panic in smr was caught)",
            SMR_E_INTERNAL => c"internal error",
            SMR_E_INVALID_REQUEST => c"the node refused the request",
            SMR_E_FATAL => c"the node stopped after a fatal failure",
            SMR_E_IO => c"snapshot I/O failed",
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    /// How many callbacks into C this thread is inside (they can nest: a completion called
    /// while a callback proposes).
    static CALLBACK_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Records `detail` as this thread's last error and returns `status`.
pub(crate) fn fail(status: smr_status, detail: impl Display) -> smr_status {
    let text = detail.to_string().replace('\0', " ");
    let text = CString::new(text).unwrap_or_default();
    // A thread being torn down has no last error to keep.
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = text);
    status
}

/// Whether this thread is inside a callback into C (on one of the node's threads, or the
/// `restore` callback during `smr_node_start`).
pub(crate) fn in_callback() -> bool {
    CALLBACK_DEPTH.with(|depth| depth.get() > 0)
}

/// Runs `f` (a call into C) marked as a callback on this thread.
pub(crate) fn as_callback<R>(f: impl FnOnce() -> R) -> R {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            CALLBACK_DEPTH.with(|depth| depth.set(depth.get() - 1));
        }
    }
    CALLBACK_DEPTH.with(|depth| depth.set(depth.get() + 1));
    let _leave = Leave;
    f()
}

/// Refuses a blocking call made from inside a callback.
pub(crate) fn refuse_in_callback(what: &str) -> Result<(), smr_status> {
    if in_callback() {
        return Err(fail(
            SMR_E_WRONG_THREAD,
            format!("{what} blocks, and was called from inside a callback on a node thread"),
        ));
    }
    Ok(())
}

/// The text of a caught panic.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Where this crate's own unit tests can make an entry point panic, to test the panic path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanicPoint {
    /// At the start of every entry point's body, under [`guard`].
    Entry,
    /// Inside a call on a running node, under its own `catch_unwind`.
    OnNode,
}

#[cfg(test)]
thread_local! {
    /// The point at which the next call on this thread panics (unit tests only).
    static INJECTED_PANIC: Cell<Option<PanicPoint>> = const { Cell::new(None) };
}

/// Makes the next call on this thread that passes `point` panic (unit tests only: the seam does
/// not exist in the library that C links).
#[cfg(test)]
pub(crate) fn inject_panic(point: PanicPoint) {
    INJECTED_PANIC.with(|injected| injected.set(Some(point)));
}

/// Panics if a unit test injected a panic at `point` on this thread; nothing outside tests.
#[cfg(test)]
pub(crate) fn injection_point(point: PanicPoint) {
    if INJECTED_PANIC.with(|injected| injected.get()) == Some(point) {
        INJECTED_PANIC.with(|injected| injected.set(None));
        panic!("injected panic at {point:?}");
    }
}

#[cfg(not(test))]
#[inline(always)]
pub(crate) fn injection_point(_point: PanicPoint) {}

/// Runs the body of an entry point that has no node to notify: a panic becomes `SMR_E_PANIC`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), smr_status>) -> smr_status {
    let body = || {
        injection_point(PanicPoint::Entry);
        body()
    };
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SMR_OK,
        Ok(Err(status)) => status,
        Err(payload) => fail(SMR_E_PANIC, format!("panic in smr: {}", panic_text(payload.as_ref()))),
    }
}

/// The static text of a status code: never NULL, never to be freed. An unknown code gives
/// "unknown status code". Threads: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn smr_strerror(status: i32) -> *const c_char {
    let found = ALL_STATUSES.iter().find(|s| **s as i32 == status);
    found.map_or(c"unknown status code", |s| s.text()).as_ptr()
}

/// The detail of the most recent failed `smr_*` call on the calling thread, as a NUL-terminated
/// string ("" when no call on this thread has failed yet). A completion callback may call it too:
/// the detail of its status is recorded on the completion's thread before it runs.
///
/// Ownership: the string belongs to smr and stays valid until the next `smr_*` call on this
/// thread; copy it to keep it. Never NULL. Threads: any thread; each thread has its own.
#[unsafe(no_mangle)]
pub extern "C" fn smr_last_error_message() -> *const c_char {
    LAST_ERROR.try_with(|last| last.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: never NULL, valid until the next call on this thread.
        unsafe { CStr::from_ptr(smr_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn guard_passes_outcomes_through_and_turns_a_panic_into_smr_e_panic() {
        assert_eq!(guard(|| Ok(())), SMR_OK);
        assert_eq!(guard(|| Err(fail(SMR_E_BUSY, "full"))), SMR_E_BUSY);
        assert_eq!(last_error(), "full");
        assert_eq!(guard(|| panic!("a static message")), SMR_E_PANIC);
        assert_eq!(last_error(), "panic in smr: a static message");
        let detail = 42;
        assert_eq!(guard(|| panic!("a formatted message {detail}")), SMR_E_PANIC);
        assert_eq!(last_error(), "panic in smr: a formatted message 42");
        assert_eq!(guard(|| std::panic::panic_any(7_u8)), SMR_E_PANIC);
        assert_eq!(last_error(), "panic in smr: a panic without a message");
    }

    #[test]
    fn an_entry_point_that_panics_returns_smr_e_panic_and_the_next_call_works() {
        let mut got = 5;
        inject_panic(PanicPoint::Entry);
        // SAFETY: every pointer is valid; the injected panic fires before any is used.
        let status = unsafe { crate::smr_reader_read(std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut got) };
        assert_eq!(status, SMR_E_PANIC);
        assert_eq!(last_error(), "panic in smr: injected panic at Entry");
        // SAFETY: as above; this time the NULL reader is refused.
        let status = unsafe { crate::smr_reader_read(std::ptr::null_mut(), std::ptr::null_mut(), 0, &mut got) };
        assert_eq!(status, SMR_E_NULL, "the injection fires once");
    }

    #[test]
    fn a_panic_in_a_callback_depth_guard_leaves_the_depth_balanced() {
        assert!(!in_callback());
        let caught = catch_unwind(|| as_callback(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(!in_callback(), "leaving a callback by unwinding still lowers the depth");
    }
}
