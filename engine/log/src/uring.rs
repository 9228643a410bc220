//! The io_uring I/O path: writes through io_uring, `fdatasync` on the writer's own thread.
//!
//! Writes go into the ring unlinked, many in flight at once; buffered writes into the page cache
//! complete quickly. A sync job (the `fdatasync` of each dirty segment, then the state-slot write
//! and the state file's `fdatasync`) runs on the calling thread, in [`Backend::sync`], once
//! every write issued before it has completed: completion before the sync is what orders them
//! (io_uring does not order operations by itself), with no link chains, no drains and no
//! cancelled chains to resubmit. A real `fdatasync` error is reported and is fatal in the log.
//!
//! Why not an io_uring fsync: the kernel has no non-blocking fsync, so io_uring always hands
//! one to an io-wq worker thread, and the log writer then sleeps until that worker wakes it.
//! Each sync cost two wake-ups and a third thread; on the 2-core development machine, three
//! nodes at 256 puts outstanding did 70-78k puts/s at 17-19 µs of CPU per put that way, and
//! 87-88k at 15 µs with the sync on the writer's thread (same binary, interleaved runs). The
//! writer cannot take new appends while it syncs, which costs little: they gather in its queue
//! meanwhile and the next sync covers all of them (group commit), as it would with one sync
//! job in flight at a time, which the log allows anyway.
//!
//! On a file system without non-blocking buffered writes (ext4) io_uring hands every write to an
//! io-wq worker and the writer sleeps until it is done, so [`crate::IoMode::Auto`] probes for
//! that at open ([`buffered_writes_complete_inline`]) and writes with `pwrite` on the writer's
//! thread (`fallback.rs`) where it finds it; `log.rs`, at `choose_io`, gives the figures.
//!
//! Registered files and buffers are not used: with buffered writes the per-operation file lookup
//! and page pinning they save are a few hundred nanoseconds against a 100 µs `fdatasync`, and the
//! staging buffers change with every batch.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{IoUring, Probe, opcode, squeue, types};

use crate::error::LogError;
use crate::io::{Backend, Completion, LogWaker, SyncJob, WakerInner};

/// User data of the eventfd read that a `LogWaker` completes. Write ids stay below it.
const WAKE_ID: u64 = 1 << 62;

/// Non-blocking writes the probe tries; one that completes is enough (more tries cover a lock
/// that happened to be held, or a timestamp tick between the page's caching write and the try).
const PROBE_WRITES: u64 = 3;
/// Bytes of each probe write: one page.
const PROBE_BYTES: u32 = 4096;

/// Whether io_uring completes a buffered write to a file in `dir` within the submitting call,
/// as it does on a file system that takes non-blocking buffered writes (XFS), or hands it to an
/// io-wq worker thread, as it does on one that does not (ext4, btrfs and tmpfs on Linux 6.18:
/// the kernel checks the file system's `FOP_BUFFER_WASYNC` and punts every buffered write
/// without it). A punted write costs the writer a sleep until the worker is done, and two thread
/// wake-ups, per append.
///
/// Writes one cached page of an unnamed temporary file (`O_TMPFILE`: gone when closed, so a
/// crash leaves nothing behind) through io_uring with `RWF_NOWAIT`, which makes io_uring report
/// `EAGAIN` (or the file system `EOPNOTSUPP`) instead of punting, right after writing the same
/// page with `pwrite`. Timing the completion instead would race with a worker that is already
/// awake.
///
/// # Errors
/// The OS error when the file or the ring cannot be made (no `O_TMPFILE` here, no io_uring).
pub(crate) fn buffered_writes_complete_inline(dir: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).open(dir)?;
    let page = vec![0u8; PROBE_BYTES as usize];
    let mut ring = IoUring::new(2)?;
    for id in 0..PROBE_WRITES {
        // Cache the page, and bring the file's times up to date, right before each try: a
        // non-blocking write is refused for a page not in memory, or when it would have to
        // update the modification time (a clock tick since the last write), blocking or not.
        file.write_all_at(&page, 0)?;
        let entry = opcode::Write::new(types::Fd(file.as_raw_fd()), page.as_ptr(), PROBE_BYTES)
            .offset(0)
            .rw_flags(libc::RWF_NOWAIT)
            .build()
            .user_data(id);
        // SAFETY: `page` and `file` outlive the write: its completion is collected right below.
        unsafe { ring.submission().push(&entry) }.map_err(|_| io::Error::other("probe ring is full"))?;
        ring.submit_and_wait(1)?;
        let result =
            ring.completion().next().ok_or_else(|| io::Error::other("probe write has no completion"))?.result();
        match result {
            written if written >= 0 => return Ok(true),
            refused if refused == -libc::EAGAIN || refused == -libc::EOPNOTSUPP => {}
            error => return Err(io::Error::from_raw_os_error(-error)),
        }
    }
    Ok(false)
}

/// A write as handed in: kept until its completion, which keeps its file open meanwhile.
#[derive(Debug)]
struct WriteOp {
    file: Arc<File>,
    offset: u64,
    ptr: *const u8,
    len: u32,
}

// SAFETY: the raw pointer is only handed to the kernel; the log guarantees the buffer lives
// until the completion (the `Backend::write` contract), whichever thread the backend is on.
unsafe impl Send for WriteOp {}

impl WriteOp {
    fn entry(&self, id: u64) -> squeue::Entry {
        opcode::Write::new(types::Fd(self.file.as_raw_fd()), self.ptr, self.len)
            .offset(self.offset)
            .build()
            .user_data(id)
    }
}

pub(crate) struct UringIo {
    ring: IoUring,
    /// Writes handed in and not completed, by id.
    writes: HashMap<u64, WriteOp>,
    /// Ids of writes not yet pushed to the submission queue, in order.
    pending: Vec<u64>,
    /// Completions collected while a sync waited for its writes, and the sync's own: handed
    /// out by the next `wait`, in the order they happened.
    collected: Vec<Completion>,
    /// The waker's eventfd and the buffer its armed read fills (boxed: the kernel holds its
    /// address while the read is armed).
    wake: Option<(Arc<OwnedFd>, Box<[u8; 8]>)>,
    wake_armed: bool,
    /// Set while dropping: the wake read is not re-armed.
    closing: bool,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("writes", &self.writes.len())
            .field("pending", &self.pending.len())
            .field("collected", &self.collected.len())
            .finish()
    }
}

impl UringIo {
    /// Sets up a ring able to hold `inflight_writes_max` writes and the waker's read.
    ///
    /// # Errors
    /// The OS error when io_uring is unavailable (old kernel, seccomp, disabled by sysctl) or
    /// lacks the write and read operations.
    pub(crate) fn new(inflight_writes_max: u32) -> io::Result<UringIo> {
        let entries = (inflight_writes_max as usize + 1).next_power_of_two() as u32;
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Write::CODE, opcode::Read::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring opcode {code} unsupported")));
            }
        }
        Ok(UringIo {
            ring,
            writes: HashMap::new(),
            pending: Vec::new(),
            collected: Vec::new(),
            wake: None,
            wake_armed: false,
            closing: false,
        })
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), LogError> {
        loop {
            // SAFETY: every buffer and file an entry refers to is kept alive until its completion
            // is reaped: write buffers by the caller's contract on `Backend::write` (and their
            // files in `self.writes`), the wake buffer in `self.wake`, which is only dropped
            // after its read completed.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel, which frees its slots.
            self.submit(0)?;
        }
    }

    fn submit(&mut self, want: usize) -> Result<(), LogError> {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full: the caller reaps and comes back.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => {
                    return Err(LogError::Io { op: "io_uring_enter", path: Default::default(), source: e });
                }
            }
        }
    }

    /// How many completions a blocking wait waits for: every write in the kernel, so that the
    /// owner thread sleeps once per batch of writes rather than once per write; or the waker
    /// alone when nothing else is outstanding. A wake-up counts towards the number, so a woken
    /// wait returns at most one write early.
    fn completions_to_wait_for(&self) -> usize {
        if self.writes.is_empty() { usize::from(self.wake_armed) } else { self.writes.len() }
    }

    /// Pushes pending writes.
    fn flush_pending(&mut self) -> Result<(), LogError> {
        for id in std::mem::take(&mut self.pending) {
            let entry = self.writes[&id].entry(id);
            self.push(&entry)?;
        }
        Ok(())
    }

    fn arm_wake(&mut self) -> Result<(), LogError> {
        let Some((fd, buffer)) = self.wake.as_mut() else {
            return Ok(());
        };
        let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), buffer.as_mut_ptr(), 8).build().user_data(WAKE_ID);
        self.wake_armed = true;
        self.push(&entry)
    }

    /// Submits what is queued and collects completions into `out`; with `block`, first waits
    /// for every write in the kernel (or the waker, when there is none).
    fn reap(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        self.flush_pending()?;
        self.submit(if block { self.completions_to_wait_for() } else { 0 })?;
        let mut rearm = false;
        let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (user_data, result) in cqes {
            if user_data == WAKE_ID {
                self.wake_armed = false;
                rearm = true;
                out.push(Completion::Wake);
            } else {
                self.writes.remove(&user_data);
                let result = if result < 0 { Err(io::Error::from_raw_os_error(-result)) } else { Ok(result as usize) };
                out.push(Completion::Write { id: user_data, result });
            }
        }
        if rearm && self.wake.is_some() && !self.closing {
            self.arm_wake()?;
        }
        Ok(())
    }
}

impl Backend for UringIo {
    unsafe fn write(
        &mut self,
        id: u64,
        file: &Arc<File>,
        offset: u64,
        ptr: *const u8,
        len: usize,
    ) -> Result<(), LogError> {
        assert!(id < WAKE_ID, "write ids stay below 2^62");
        let len = u32::try_from(len).expect("writes are bounded by submit_bytes_max <= 1 GiB");
        let previous = self.writes.insert(id, WriteOp { file: Arc::clone(file), offset, ptr, len });
        assert!(previous.is_none(), "write {id} is already outstanding");
        self.pending.push(id);
        Ok(())
    }

    fn sync(&mut self, job: SyncJob) -> Result<(), LogError> {
        // `fdatasync` covers what is in the page cache: every write issued before the job must
        // have completed first.
        let mut collected = std::mem::take(&mut self.collected);
        while !self.writes.is_empty() {
            self.reap(&mut collected, true)?;
        }
        let result = job.run();
        collected.push(Completion::Sync { id: job.id, result });
        self.collected = collected;
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        let collected = !self.collected.is_empty();
        out.append(&mut self.collected);
        self.reap(out, block && !collected)
    }

    fn waker(&mut self) -> Result<WakerInner, LogError> {
        if self.wake.is_none() {
            // SAFETY: eventfd has no memory preconditions; the result is checked below.
            let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if raw < 0 {
                return Err(LogError::Io {
                    op: "eventfd",
                    path: Default::default(),
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            self.wake = Some((Arc::new(fd), Box::new([0u8; 8])));
            self.arm_wake()?;
        }
        let (fd, _) = self.wake.as_ref().expect("made above");
        Ok(WakerInner::Eventfd(Arc::clone(fd)))
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

impl Drop for UringIo {
    /// Waits for every operation in the kernel: it may still be copying from a write's buffer,
    /// which the log frees right after this backend (field order in `Log`), or filling the wake
    /// buffer. Pending writes never reached the kernel and are dropped.
    fn drop(&mut self) {
        self.closing = true;
        for id in std::mem::take(&mut self.pending) {
            self.writes.remove(&id);
        }
        if self.wake_armed
            && let Some((fd, _)) = &self.wake
        {
            // Complete the armed read so the kernel lets go of its buffer (not re-armed now).
            LogWaker { inner: WakerInner::Eventfd(Arc::clone(fd)) }.wake();
        }
        let mut sink = Vec::new();
        while !self.writes.is_empty() || self.wake_armed {
            if self.reap(&mut sink, true).is_err() {
                break;
            }
            sink.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `statfs` magic of XFS, whose buffered writes io_uring completes inline since Linux 6.0.
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

    #[test]
    fn the_write_probe_is_steady_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let first = buffered_writes_complete_inline(dir.path()).expect("the probe runs where io_uring does");
        assert_eq!(buffered_writes_complete_inline(dir.path()).unwrap(), first, "the same answer twice");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe's file has no name");
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `statfs` is plain data, valid when zeroed.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `stat` a live struct for statfs to fill.
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &raw mut stat) }, 0);
        if stat.f_type == XFS_SUPER_MAGIC {
            assert!(first, "XFS takes buffered writes without blocking");
        }
        eprintln!("file system {:#x}: buffered writes complete inline: {first}", stat.f_type);
    }

    #[test]
    fn the_write_probe_names_a_missing_directory() {
        let error = buffered_writes_complete_inline(std::path::Path::new("/nonexistent/smr-log")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
