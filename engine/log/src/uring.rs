//! The io_uring I/O path.
//!
//! Writes are submitted as plain `IORING_OP_WRITE`s at their offsets. A sync job is one linked
//! chain: `fdatasync` of each dirty segment (the first with `IO_DRAIN`, so it starts only after
//! every earlier submitted write completed: io_uring does not order operations by itself), then
//! the state-slot write and the state file's `fdatasync`. The links make each step wait for the
//! previous one and cancel the rest when one fails, so a failed segment sync never lets the state
//! file claim anything. While a sync runs, new writes submitted behind the drain wait in the
//! kernel and gather for the next sync: that is the group commit.
//!
//! Registered files and buffers are not used: with buffered writes the per-operation file lookup
//! and page pinning they save are a few hundred nanoseconds against a 100 µs `fdatasync`, and the
//! staging buffers change with every batch.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{IoUring, Probe, opcode, squeue, types};

use crate::error::LogError;
use crate::io::{Backend, Completion, SyncJob};

const SYNC_BIT: u64 = 1 << 63;
/// Steps of one sync job are numbered in the low byte of the user data.
const STEP_BITS: u32 = 8;
/// At most 254 dirty segment files plus the state write and its sync fit in one job.
const JOB_STEPS_MAX: usize = 1 << STEP_BITS;

#[derive(Debug)]
struct OutstandingJob {
    /// Keeps the files and the state bytes alive until every step completed.
    job: SyncJob,
    steps: usize,
    completed: usize,
    /// First failure: (step, error). A cancelled step (ECANCELED) is a consequence, not a cause.
    failure: Option<(usize, io::Error)>,
}

pub(crate) struct UringIo {
    ring: IoUring,
    /// Files of outstanding writes, kept open until the write completes.
    writes: HashMap<u64, Arc<File>>,
    job: Option<OutstandingJob>,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("writes", &self.writes.len())
            .field("job", &self.job)
            .finish()
    }
}

impl UringIo {
    /// Sets up a ring able to hold `inflight_writes_max` writes plus one sync job.
    ///
    /// # Errors
    /// The OS error when io_uring is unavailable (old kernel, seccomp, disabled by sysctl) or
    /// lacks the write and fsync operations.
    pub(crate) fn new(inflight_writes_max: u32) -> io::Result<UringIo> {
        let entries = (inflight_writes_max as usize + JOB_STEPS_MAX).next_power_of_two() as u32;
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Write::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} unsupported"),
                ));
            }
        }
        Ok(UringIo {
            ring,
            writes: HashMap::new(),
            job: None,
        })
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), LogError> {
        loop {
            // SAFETY: every buffer and file an entry refers to is kept alive until its completion
            // is reaped: write buffers by the caller's contract on `Backend::write`, files in
            // `self.writes` / `self.job`, and the state bytes in `self.job`.
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
                    return Err(LogError::Io {
                        op: "io_uring_enter",
                        path: Default::default(),
                        source: e,
                    });
                }
            }
        }
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
        assert!(id & SYNC_BIT == 0, "write ids stay below 2^63");
        let len = u32::try_from(len).expect("writes are bounded by submit_bytes_max <= 1 GiB");
        let entry = opcode::Write::new(types::Fd(file.as_raw_fd()), ptr, len)
            .offset(offset)
            .build()
            .user_data(id);
        self.writes.insert(id, Arc::clone(file));
        self.push(&entry)
    }

    fn sync(&mut self, job: SyncJob) -> Result<(), LogError> {
        assert!(
            self.job.is_none(),
            "the log keeps at most one sync job outstanding"
        );
        let steps = job.files.len() + if job.state.is_some() { 2 } else { 0 };
        assert!(
            steps > 0 && steps <= JOB_STEPS_MAX,
            "a sync job has 1..={JOB_STEPS_MAX} steps, not {steps}"
        );
        assert!(job.id < (1 << (63 - STEP_BITS)), "sync ids stay below 2^55");
        let job_id = job.id;
        let user_data = |step: usize| SYNC_BIT | (job_id << STEP_BITS) | step as u64;
        let mut entries = Vec::with_capacity(steps);
        for file in &job.files {
            entries.push(
                opcode::Fsync::new(types::Fd(file.as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            );
        }
        if let Some(state) = &job.state {
            let len = u32::try_from(state.bytes.len()).expect("a state slot is 4096 bytes");
            entries.push(
                opcode::Write::new(types::Fd(state.file.as_raw_fd()), state.bytes.as_ptr(), len)
                    .offset(state.offset)
                    .build(),
            );
            entries.push(
                opcode::Fsync::new(types::Fd(state.file.as_raw_fd()))
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            );
        }
        let last = entries.len() - 1;
        // Move the job (files and state bytes) into place before its entries reach the kernel.
        self.job = Some(OutstandingJob {
            job,
            steps,
            completed: 0,
            failure: None,
        });
        for (step, entry) in entries.into_iter().enumerate() {
            let mut flags = squeue::Flags::empty();
            if step == 0 {
                flags |= squeue::Flags::IO_DRAIN;
            }
            if step < last {
                flags |= squeue::Flags::IO_LINK;
            }
            let entry = entry.flags(flags).user_data(user_data(step));
            self.push(&entry)?;
        }
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        let outstanding = !self.writes.is_empty() || self.job.is_some();
        self.submit(usize::from(block && outstanding))?;
        for cqe in self.ring.completion() {
            let user_data = cqe.user_data();
            let result = cqe.result();
            if user_data & SYNC_BIT == 0 {
                self.writes.remove(&user_data);
                let result = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                };
                out.push(Completion::Write {
                    id: user_data,
                    result,
                });
                continue;
            }
            let step = (user_data & ((1 << STEP_BITS) - 1)) as usize;
            let job = self
                .job
                .as_mut()
                .expect("a sync completion belongs to the outstanding job");
            job.completed += 1;
            let expected_len = job.job.state.as_ref().map(|s| s.bytes.len() as i32);
            let is_state_write = job.job.state.is_some() && step == job.steps - 2;
            let error = if result < 0 {
                Some(io::Error::from_raw_os_error(-result))
            } else if is_state_write && Some(result) != expected_len {
                Some(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short state write: {result} bytes"),
                ))
            } else {
                None
            };
            if let Some(error) = error {
                let cancelled = error.raw_os_error() == Some(libc::ECANCELED);
                if job.failure.is_none()
                    || (!cancelled && job.failure.as_ref().is_some_and(|(s, _)| *s > step))
                {
                    job.failure = Some((step, error));
                }
            }
            if job.completed == job.steps {
                let done = self.job.take().expect("checked above");
                let files = done.job.files.len();
                let result = match done.failure {
                    None => Ok(()),
                    Some((step, error)) => Err(((step < files).then_some(step), error)),
                };
                out.push(Completion::Sync {
                    id: done.job.id,
                    result,
                });
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

impl Drop for UringIo {
    /// Waits for every outstanding operation: the kernel may still be copying from a write's
    /// buffer, which the log frees right after this backend (field order in `Log`).
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while !self.writes.is_empty() || self.job.is_some() {
            if self.wait(&mut sink, true).is_err() {
                break;
            }
            sink.clear();
        }
    }
}
