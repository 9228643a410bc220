//! The fallback I/O path: `pwrite` on the writer's thread, sync jobs on a helper thread.
//!
//! Writes into the page cache are quick and complete at once; the `fdatasync` is what takes
//! 100 µs or more, so it runs on a helper thread while the writer keeps accepting appends that
//! gather for the next sync: the same group commit as the io_uring path. Every write is complete
//! before the job that covers it is even queued, which gives the ordering that io_uring needs a
//! link chain or a wait for completions for. Channels are bounded: one job in flight, one result waiting.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::LogError;
use crate::io::{Backend, Completion, SyncJob, WakerInner};

/// How often a blocked wait checks that the sync thread is alive (it only dies by panicking).
const SYNC_THREAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct FallbackIo {
    done: VecDeque<Completion>,
    jobs: Option<SyncSender<SyncJob>>,
    results: Receiver<Completion>,
    syncer: Option<JoinHandle<()>>,
    sync_outstanding: bool,
    /// Kept to hand out wakers; `Some` once one was made.
    wake_sender: SyncSender<Completion>,
    waker_made: bool,
}

impl FallbackIo {
    pub(crate) fn new() -> Result<FallbackIo, LogError> {
        let (jobs, job_rx) = sync_channel::<SyncJob>(1);
        // Two slots: one sync result and one wake, so a pending wake never holds up the sync
        // thread's report.
        let (result_tx, results) = sync_channel::<Completion>(2);
        let wake_sender = result_tx.clone();
        let syncer = std::thread::Builder::new()
            .name("smr-log-sync".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let result = run_job(&job);
                    if result_tx.send(Completion::Sync { id: job.id, result }).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| LogError::Io { op: "spawn sync thread", path: Default::default(), source: e })?;
        Ok(FallbackIo {
            done: VecDeque::new(),
            jobs: Some(jobs),
            results,
            syncer: Some(syncer),
            sync_outstanding: false,
            wake_sender,
            waker_made: false,
        })
    }
}

fn run_job(job: &SyncJob) -> Result<(), (Option<usize>, io::Error)> {
    for (i, file) in job.files.iter().enumerate() {
        file.sync_data().map_err(|e| (Some(i), e))?;
    }
    if let Some(state) = &job.state {
        state.file.write_all_at(&state.bytes, state.offset).map_err(|e| (None, e))?;
        state.file.sync_data().map_err(|e| (None, e))?;
    }
    Ok(())
}

impl Backend for FallbackIo {
    unsafe fn write(
        &mut self,
        id: u64,
        file: &Arc<std::fs::File>,
        offset: u64,
        ptr: *const u8,
        len: usize,
    ) -> Result<(), LogError> {
        // SAFETY: the caller guarantees `ptr..ptr + len` is valid and unmodified until the
        // completion is collected; the write happens right here, before this returns.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        // One `pwrite` (not a loop): a short write is reported as such and the log resubmits the
        // rest, exactly as with io_uring, so both paths share the short-write handling.
        let result = loop {
            match file.write_at(bytes, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.done.push_back(Completion::Write { id, result });
        Ok(())
    }

    fn sync(&mut self, job: SyncJob) -> Result<(), LogError> {
        assert!(!self.sync_outstanding, "the log keeps at most one sync job outstanding");
        self.sync_outstanding = true;
        self.jobs.as_ref().expect("open").send(job).map_err(|_| LogError::thread_gone("fallback sync"))
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        out.extend(self.done.drain(..));
        let mut block = block && out.is_empty() && (self.sync_outstanding || self.waker_made);
        loop {
            let received = if block {
                // This backend holds a sender itself (for wakers), so the channel never reports a
                // dead sync thread: look at the thread every second while waiting instead.
                match self.results.recv_timeout(SYNC_THREAD_CHECK_INTERVAL) {
                    Ok(completion) => Ok(completion),
                    Err(RecvTimeoutError::Timeout) => {
                        if self.syncer.as_ref().is_none_or(|t| t.is_finished()) {
                            return Err(LogError::thread_gone("fallback sync"));
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => Err(TryRecvError::Disconnected),
                }
            } else {
                self.results.try_recv()
            };
            match received {
                Ok(completion) => {
                    if matches!(completion, Completion::Sync { .. }) {
                        self.sync_outstanding = false;
                    }
                    out.push(completion);
                    block = false;
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    return Err(LogError::thread_gone("fallback sync"));
                }
            }
        }
    }

    fn waker(&mut self) -> Result<WakerInner, LogError> {
        self.waker_made = true;
        Ok(WakerInner::Channel(self.wake_sender.clone()))
    }

    fn name(&self) -> &'static str {
        "pwrite+fdatasync"
    }
}

impl Drop for FallbackIo {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after its current job.
        self.jobs.take();
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
    }
}
