//! The io_uring I/O path.
//!
//! io_uring does not order operations by itself, so every `fdatasync` is ordered after the
//! writes it covers in one of two ways:
//!
//! - **Linked**: when none of those writes has reached the kernel yet (the usual case: the log
//!   submits a batch and asks for its sync at once), the writes and the sync job go in as one
//!   chain with `IO_LINK`, in a single `io_uring_enter`: write, write, ..., fdatasync of each
//!   dirty segment, state-slot write, fdatasync of the state file.
//! - **After completion**: when some covered writes are already in the kernel (they were
//!   submitted while the previous sync ran: the group that gathers for the next commit), the job
//!   waits in user space until every write issued before it has completed, then goes in as its
//!   own chain.
//!
//! `IO_DRAIN` is not used: it would also stall every later write behind the running sync, and
//! never complete while the waker's eventfd read is armed.
//!
//! A link chain breaks when one of its writes fails or is short: the rest of the chain completes
//! with `ECANCELED`. Cancelled writes are resubmitted here, and a cancelled job goes back to
//! waiting for its writes: a cancellation is never reported as an fsync failure, because no
//! fsync ran. A real `fdatasync` error is reported and is fatal in the log.
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

const SYNC_BIT: u64 = 1 << 63;
/// User data of the eventfd read that a `LogWaker` completes. Write ids stay below it.
const WAKE_ID: u64 = 1 << 62;
/// Steps of one sync job are numbered in the low byte of the user data.
const STEP_BITS: u32 = 8;
/// At most 254 dirty segment files plus the state write and its sync fit in one job.
const JOB_STEPS_MAX: usize = 1 << STEP_BITS;

/// A write as handed in: kept until its completion so that it can be resubmitted.
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

#[derive(Debug)]
struct OutstandingJob {
    /// Keeps the files and the state bytes alive until every step completed.
    job: SyncJob,
    steps: usize,
    completed: usize,
    /// First real failure: (step, error).
    failure: Option<(usize, io::Error)>,
    /// Some step was cancelled because an earlier link in its chain failed.
    cancelled: bool,
}

pub(crate) struct UringIo {
    ring: IoUring,
    /// Writes handed in and not completed, by id.
    writes: HashMap<u64, WriteOp>,
    /// Ids of writes not yet pushed to the submission queue, in order.
    pending: Vec<u64>,
    /// The job whose steps are in the kernel.
    job: Option<OutstandingJob>,
    /// A job waiting until no write with an id below the barrier is outstanding.
    deferred: Option<(SyncJob, u64)>,
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
            .field("job", &self.job)
            .field("deferred", &self.deferred.is_some())
            .finish()
    }
}

impl UringIo {
    /// Sets up a ring able to hold `inflight_writes_max` writes plus one sync job.
    ///
    /// # Errors
    /// The OS error when io_uring is unavailable (old kernel, seccomp, disabled by sysctl) or
    /// lacks the write, read and fsync operations.
    pub(crate) fn new(inflight_writes_max: u32) -> io::Result<UringIo> {
        let entries = (inflight_writes_max as usize + JOB_STEPS_MAX + 1).next_power_of_two() as u32;
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Write::CODE, opcode::Read::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, format!("io_uring opcode {code} unsupported")));
            }
        }
        Ok(UringIo {
            ring,
            writes: HashMap::new(),
            pending: Vec::new(),
            job: None,
            deferred: None,
            wake: None,
            wake_armed: false,
            closing: false,
        })
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), LogError> {
        loop {
            // SAFETY: every buffer and file an entry refers to is kept alive until its completion
            // is reaped: write buffers by the caller's contract on `Backend::write` (and their
            // files in `self.writes`), the job's files and state bytes in `self.job`, the wake
            // buffer in `self.wake`, which is only dropped after its read completed.
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

    /// How many completions a blocking wait waits for: every operation in the kernel (the
    /// writes and the steps of the sync job), so that the owner thread sleeps once per sync job
    /// rather than once per step; or the waker alone when nothing else is outstanding. A wake-up
    /// counts towards the number, so a woken wait returns at most one operation early. New work
    /// arriving meanwhile waits for the sync in flight, which it would wait for anyway: the log
    /// keeps one sync job in the kernel at a time, and the next one covers the new writes.
    fn completions_to_wait_for(&self) -> usize {
        let job_steps_left = self.job.as_ref().map_or(0, |job| job.steps - job.completed);
        let in_kernel = self.writes.len() + job_steps_left;
        if in_kernel > 0 { in_kernel } else { usize::from(self.wake_armed) }
    }

    /// Pushes pending writes unlinked.
    fn flush_pending(&mut self) -> Result<(), LogError> {
        for id in std::mem::take(&mut self.pending) {
            let entry = self.writes[&id].entry(id);
            self.push(&entry)?;
        }
        Ok(())
    }

    /// Pushes a job's steps as one chain, after `link_before` (writes to chain in front of it).
    fn start_job(&mut self, job: SyncJob, link_before: Vec<u64>) -> Result<(), LogError> {
        let steps = job_steps(&job);
        assert!(steps > 0 && steps <= JOB_STEPS_MAX, "a sync job has 1..={JOB_STEPS_MAX} steps, not {steps}");
        assert!(job.id < (1 << (62 - STEP_BITS)), "sync ids stay below 2^54");
        let job_id = job.id;
        let user_data = |step: usize| SYNC_BIT | (job_id << STEP_BITS) | step as u64;
        let mut entries = Vec::with_capacity(link_before.len() + steps);
        for id in &link_before {
            entries.push(self.writes[id].entry(*id));
        }
        for (step, file) in job.files.iter().enumerate() {
            entries.push(
                opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(user_data(step)),
            );
        }
        if let Some(state) = &job.state {
            let len = u32::try_from(state.bytes.len()).expect("a state slot is 4096 bytes");
            let fd = types::Fd(state.file.as_raw_fd());
            let step = job.files.len();
            entries.push(
                opcode::Write::new(fd, state.bytes.as_ptr(), len)
                    .offset(state.offset)
                    .build()
                    .user_data(user_data(step)),
            );
            entries
                .push(opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(user_data(step + 1)));
        }
        // Move the job (files and state bytes) into place before its entries reach the kernel.
        self.job = Some(OutstandingJob { job, steps, completed: 0, failure: None, cancelled: false });
        let last = entries.len() - 1;
        for (i, entry) in entries.into_iter().enumerate() {
            let entry = if i < last { entry.flags(squeue::Flags::IO_LINK) } else { entry };
            self.push(&entry)?;
        }
        Ok(())
    }

    /// The id every write issued so far is below.
    fn barrier(&self) -> u64 {
        self.writes.keys().max().map_or(0, |id| id + 1)
    }

    fn start_deferred_if_ready(&mut self) -> Result<(), LogError> {
        let ready = self.deferred.as_ref().is_some_and(|(_, barrier)| !self.writes.keys().any(|id| id < barrier));
        let steps = self.deferred.as_ref().map_or(0, |(job, _)| job_steps(job));
        if ready && self.job.is_none() && self.make_room(steps)? {
            let (job, _) = self.deferred.take().expect("checked");
            self.start_job(job, Vec::new())?;
        }
        Ok(())
    }

    /// Makes room for `entries` consecutive submission-queue entries. A link chain must reach
    /// the kernel in one submission: a chain cut by a full queue would run its second half
    /// unordered. `false` when the kernel could not take the queued entries (its completion
    /// queue is full); the caller then takes the path that needs no chain.
    fn make_room(&mut self, entries: usize) -> Result<bool, LogError> {
        let free = |ring: &mut IoUring| {
            let queue = ring.submission();
            queue.capacity() - queue.len()
        };
        if free(&mut self.ring) >= entries {
            return Ok(true);
        }
        self.submit(0)?;
        Ok(free(&mut self.ring) >= entries)
    }

    fn arm_wake(&mut self) -> Result<(), LogError> {
        let Some((fd, buffer)) = self.wake.as_mut() else {
            return Ok(());
        };
        let entry = opcode::Read::new(types::Fd(fd.as_raw_fd()), buffer.as_mut_ptr(), 8).build().user_data(WAKE_ID);
        self.wake_armed = true;
        self.push(&entry)
    }

    fn reap_sync(&mut self, user_data: u64, result: i32, out: &mut Vec<Completion>) {
        let step = (user_data & ((1 << STEP_BITS) - 1)) as usize;
        let job = self.job.as_mut().expect("a sync completion belongs to the outstanding job");
        job.completed += 1;
        let is_state_write = job.job.state.is_some() && step == job.steps - 2;
        let expected_len = job.job.state.as_ref().map_or(0, |s| s.bytes.len() as i32);
        if result == -libc::ECANCELED {
            job.cancelled = true;
        } else if result < 0 {
            job.failure.get_or_insert((step, io::Error::from_raw_os_error(-result)));
        } else if is_state_write && result != expected_len {
            let error = io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short state write: {result} of {expected_len} bytes"),
            );
            job.failure.get_or_insert((step, error));
        }
        if job.completed < job.steps {
            return;
        }
        let done = self.job.take().expect("checked above");
        let files = done.job.files.len();
        match done.failure {
            Some((step, error)) => {
                out.push(Completion::Sync { id: done.job.id, result: Err(((step < files).then_some(step), error)) })
            }
            // Cancelled by a broken link before any fsync failed: no fsync ran to completion
            // for it, so it simply runs again once its writes are through.
            None if done.cancelled => {
                let barrier = self.barrier();
                self.deferred = Some((done.job, barrier));
            }
            None => out.push(Completion::Sync { id: done.job.id, result: Ok(()) }),
        }
    }
}

/// Submission-queue entries of a job: one fdatasync per file, and the state write and its sync.
fn job_steps(job: &SyncJob) -> usize {
    job.files.len() + if job.state.is_some() { 2 } else { 0 }
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
        assert!(self.job.is_none() && self.deferred.is_none(), "the log keeps at most one sync job outstanding");
        let chain = self.pending.len() + job_steps(&job);
        if self.writes.len() == self.pending.len() && self.make_room(chain)? {
            // Nothing is in the kernel yet: chain the writes and the job in one submission.
            let link = std::mem::take(&mut self.pending);
            self.start_job(job, link)
        } else {
            let barrier = self.barrier();
            self.flush_pending()?;
            self.deferred = Some((job, barrier));
            Ok(())
        }
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        self.flush_pending()?;
        self.start_deferred_if_ready()?;
        self.submit(if block { self.completions_to_wait_for() } else { 0 })?;
        let mut rearm = false;
        let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (user_data, result) in cqes {
            if user_data == WAKE_ID {
                self.wake_armed = false;
                rearm = true;
                out.push(Completion::Wake);
            } else if user_data & SYNC_BIT != 0 {
                self.reap_sync(user_data, result, out);
            } else if result == -libc::ECANCELED {
                // A link before it broke: the write never ran. Submit it again, unlinked.
                self.pending.push(user_data);
            } else {
                self.writes.remove(&user_data);
                let result = if result < 0 { Err(io::Error::from_raw_os_error(-result)) } else { Ok(result as usize) };
                out.push(Completion::Write { id: user_data, result });
            }
        }
        if rearm && self.wake.is_some() && !self.closing {
            self.arm_wake()?;
        }
        // Writes may have completed that a deferred job waited for: start it now, so that it is
        // in the kernel before the owner thread blocks again.
        self.start_deferred_if_ready()?;
        Ok(())
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
    /// buffer. Pending and deferred operations never reached the kernel and are dropped.
    fn drop(&mut self) {
        self.closing = true;
        self.deferred = None;
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
        while !self.writes.is_empty() || self.job.is_some() || self.wake_armed {
            // A write cancelled here would be re-queued; drop it instead of resubmitting.
            let before = self.pending.len();
            if self.wait(&mut sink, true).is_err() {
                break;
            }
            for id in self.pending.drain(before..) {
                self.writes.remove(&id);
            }
            self.deferred = None;
            sink.clear();
        }
    }
}
