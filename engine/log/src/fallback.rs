//! The fallback I/O path: `pwrite` and `fdatasync` on the writer's own thread.
//!
//! Writes into the page cache are quick and complete at once; a sync job then runs right where
//! it is issued, so every write it covers is complete before it starts, which is the ordering
//! it needs. As on the io_uring path, appends that arrive during a sync gather in the writer's
//! queue and the next sync covers them all (group commit); `uring.rs` says why the sync runs on
//! the writer's thread rather than on a helper.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use crate::error::LogError;
use crate::io::{Backend, Completion, SyncJob, WakerInner};

#[derive(Debug)]
pub(crate) struct FallbackIo {
    /// Completions of the writes and syncs done since the last `wait`, in order.
    done: VecDeque<Completion>,
    /// Wake-ups from [`crate::LogWaker`]s. Capacity 1: one pending wake is enough.
    wakes: Receiver<Completion>,
    /// Kept to hand out wakers.
    wake_sender: SyncSender<Completion>,
    waker_made: bool,
}

impl FallbackIo {
    pub(crate) fn new() -> FallbackIo {
        let (wake_sender, wakes) = sync_channel::<Completion>(1);
        FallbackIo { done: VecDeque::new(), wakes, wake_sender, waker_made: false }
    }
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
        let result = job.run();
        self.done.push_back(Completion::Sync { id: job.id, result });
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Completion>, block: bool) -> Result<(), LogError> {
        out.extend(self.done.drain(..));
        // Nothing is ever in flight here: a blocking wait with nothing done waits for a wake.
        if block && out.is_empty() && self.waker_made {
            // This backend holds a sender itself, so the channel never disconnects.
            if let Ok(wake) = self.wakes.recv() {
                out.push(wake);
            }
        }
        match self.wakes.try_recv() {
            Ok(wake) => out.push(wake),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
        }
        Ok(())
    }

    fn waker(&mut self) -> Result<WakerInner, LogError> {
        self.waker_made = true;
        Ok(WakerInner::Channel(self.wake_sender.clone()))
    }

    fn name(&self) -> &'static str {
        "pwrite+fdatasync"
    }

    fn synchronous(&self) -> bool {
        true
    }
}
