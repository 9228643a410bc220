//! Preallocation of segments ahead of need, on a background thread, off the append path.
//!
//! Creating a 64 MiB segment means writing 64 MiB of zeroes and three fsyncs: hundreds of
//! milliseconds that must never stall an append. The writer asks for segments by sequence number
//! and takes finished ones in the same order; both channels are bounded by `spare_segments_max`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use crate::config::LogConfig;
use crate::error::LogError;
use crate::segment::create_segment;

type Made = (u64, Result<PathBuf, LogError>);

#[derive(Debug)]
pub(crate) struct Preallocator {
    requests: Option<SyncSender<u64>>,
    made: Receiver<Made>,
    thread: Option<JoinHandle<()>>,
    /// Requested and not yet taken.
    outstanding: usize,
}

impl Preallocator {
    pub(crate) fn start(dir: &Path, config: &LogConfig) -> Result<Preallocator, LogError> {
        let depth = config.spare_segments_max as usize;
        let (requests, request_rx) = sync_channel::<u64>(depth);
        let (made_tx, made) = sync_channel::<Made>(depth);
        let (dir, config) = (dir.to_path_buf(), config.clone());
        let thread = std::thread::Builder::new()
            .name("smr-log-prealloc".into())
            .spawn(move || {
                crate::background::lower_thread_priority();
                while let Ok(sequence) = request_rx.recv() {
                    let result = create_segment(&dir, &config, sequence);
                    if made_tx.send((sequence, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| LogError::Io { op: "spawn preallocation thread", path: Default::default(), source: e })?;
        Ok(Preallocator { requests: Some(requests), made, thread: Some(thread), outstanding: 0 })
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Asks for segment `sequence`. The caller keeps `outstanding()` below `spare_segments_max`,
    /// so this never blocks.
    pub(crate) fn request(&mut self, sequence: u64) -> Result<(), LogError> {
        self.requests.as_ref().expect("running").send(sequence).map_err(|_| LogError::thread_gone("preallocation"))?;
        self.outstanding += 1;
        Ok(())
    }

    /// Takes the next finished segment: waits for it with `block`, else `Ok(None)` when none is
    /// finished yet.
    pub(crate) fn take(&mut self, block: bool) -> Result<Option<Made>, LogError> {
        if self.outstanding == 0 {
            return Ok(None);
        }
        let made = if block { self.made.recv().map_err(|_| TryRecvError::Disconnected) } else { self.made.try_recv() };
        match made {
            Ok(made) => {
                self.outstanding -= 1;
                Ok(Some(made))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(LogError::thread_gone("preallocation")),
        }
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.requests.take();
        // Drain finished segments so the thread is never stuck on a full channel, then join.
        while self.made.recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
