//! Saving the apply stage's snapshots on a thread of their own, which also hashes the state for
//! status requests.
//!
//! The apply stage freezes the state at one applied index between two applies (see
//! `StateMachine::snapshot_view`; for the built-in KV map that costs nothing), then hands it
//! here to be serialized and saved. Serializing 15 MB of state took 220 ms on the apply thread
//! at full load, and saving (temporary file, `fdatasync`, rename,
//! directory fsync) took 0.5 to 0.7 s for a 15 MB snapshot with three nodes at full load on the
//! development machine, and on the apply thread it held every client's answer for that long:
//! those stalls were the benchmark's p99.9 and maximum latencies. The core hears of a snapshot
//! only once its file is durable, so the log is still compacted only behind a saved snapshot.
//!
//! The same thread hashes the state for status requests (`smr ctl status`) when the state
//! machine freezes it for that (`StateMachine::state_hash_later`; the KV map does, with the
//! same kind of view): walking 100,000 keys took the apply thread tens of milliseconds per
//! request, an answer stall that any monitoring would have caused.
//!
//! One job at a time, a save or a hash: the apply stage hands over no other while one is in
//! progress. A KV map's view can only be taken while no writes wait in the delta an earlier view
//! left, so two jobs at once would send the second one down the slow path anyway.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError, bounded};
use smr_apply::StateHashLater;
use smr_net::{ClientRequest, ResponseBody};
use smr_raft::{Index, SnapshotMeta};

use crate::handoff::{Shared, SnapshotTaken};
use crate::snapshot::SnapshotStore;

/// Writes a snapshot's bytes (the whole file's content) on the saver thread, given the size of
/// the last one saved (0 at first) to reserve its buffer by.
pub(crate) type WriteSnapshot = Box<dyn FnOnce(usize) -> std::io::Result<Bytes> + Send>;

/// A snapshot to save, as taken by the apply stage.
struct SaveJob {
    meta: SnapshotMeta,
    write: WriteSnapshot,
    /// How long the apply stage took to take it (the stall of applying).
    taken_in: Duration,
}

/// Status requests waiting for the state hash: each status (JSON) gets it as `state_hash`.
pub(crate) type StatusRequests = Vec<(serde_json::Value, ClientRequest)>;

enum Job {
    Save(SaveJob),
    HashForStatus { hash: StateHashLater, statuses: StatusRequests },
}

/// How a job ended.
enum Finished {
    Save(Saved),
    Hash,
}

/// How a save ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    /// On disk, and handed to the core.
    Done { index: Index },
    /// Not saved (a full disk, say): logged; the apply stage tries again later.
    Failed { index: Index },
}

/// The apply stage's handle on the saver thread. Dropping it ends the thread once the job in
/// progress, if any, is done.
#[derive(Debug)]
pub(crate) struct SnapshotSaver {
    jobs: Sender<Job>,
    results: Receiver<Finished>,
    /// A job was handed over and its end not yet collected.
    busy: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Save(job) => job.fmt(f),
            Job::HashForStatus { statuses, .. } => {
                f.debug_struct("HashForStatus").field("statuses", &statuses.len()).finish_non_exhaustive()
            }
        }
    }
}

impl std::fmt::Debug for SaveJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveJob")
            .field("index", &self.meta.index)
            .field("taken_in", &self.taken_in)
            .finish_non_exhaustive()
    }
}

impl SnapshotSaver {
    /// Starts the saver thread (named `smr-snapshot-<node>`), which runs `pin` first.
    ///
    /// # Errors
    /// The thread could not be started.
    pub(crate) fn start(
        node: u64,
        store: SnapshotStore,
        snapshots_out: Sender<SnapshotTaken>,
        shared: Arc<Shared>,
        pin: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<(SnapshotSaver, JoinHandle<()>)> {
        let (jobs, job_rx) = bounded::<Job>(1);
        let (result_tx, results) = bounded::<Finished>(1);
        let thread = std::thread::Builder::new().name(format!("smr-snapshot-{node}")).spawn(move || {
            pin();
            // Serializing a large state is seconds of CPU that must not hold the pipeline back.
            smr_log::lower_thread_priority();
            let mut last_bytes = 0;
            for job in job_rx {
                let finished = match job {
                    Job::Save(job) => Finished::Save(save(&store, job, &mut last_bytes, &snapshots_out, &shared)),
                    Job::HashForStatus { hash, statuses } => {
                        answer_statuses(hash(), statuses);
                        Finished::Hash
                    }
                };
                if result_tx.send(finished).is_err() {
                    return;
                }
            }
        })?;
        Ok((SnapshotSaver { jobs, results, busy: false }, thread))
    }

    /// Collects the end of the job in progress, if it ended: the result of a save.
    pub(crate) fn poll(&mut self) -> Option<Saved> {
        if !self.busy {
            return None;
        }
        match self.results.try_recv() {
            Ok(finished) => {
                self.busy = false;
                match finished {
                    Finished::Save(saved) => Some(saved),
                    Finished::Hash => None,
                }
            }
            Err(TryRecvError::Empty) => None,
            // The thread is gone (it only ends when this handle drops, or by a panic).
            Err(TryRecvError::Disconnected) => {
                self.busy = false;
                None
            }
        }
    }

    /// Whether a job (a save or a hash) is in progress: no other can be handed over.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy
    }

    /// Hands a snapshot to the saver: `write` produces its bytes there.
    ///
    /// # Panics
    /// While a job is in progress ([`SnapshotSaver::is_busy`]): one at a time. When the saver
    /// thread is gone: it ends only with this handle, or by a panic of its own (a bug), and a
    /// node that can no longer save snapshots would grow its log without bound.
    pub(crate) fn save(&mut self, meta: SnapshotMeta, write: WriteSnapshot, taken_in: Duration) {
        self.hand_over(Job::Save(SaveJob { meta, write, taken_in }));
    }

    /// Hands over a state hash to compute and the status requests to answer with it.
    ///
    /// # Panics
    /// As [`SnapshotSaver::save`].
    pub(crate) fn hash_for_status(&mut self, hash: StateHashLater, statuses: StatusRequests) {
        self.hand_over(Job::HashForStatus { hash, statuses });
    }

    fn hand_over(&mut self, job: Job) {
        assert!(!self.busy, "one job at a time");
        // The channel holds one job and the thread takes it only when idle, which it is: the
        // end of the last job was collected.
        match self.jobs.try_send(job) {
            Ok(()) => self.busy = true,
            Err(TrySendError::Full(_)) => unreachable!("the saver is idle when no job is in progress"),
            Err(TrySendError::Disconnected(_)) => panic!("the snapshot saver thread is gone"),
        }
    }
}

/// Answers each status request with its status (JSON), `hash` added as `state_hash`.
pub(crate) fn answer_statuses(hash: u64, statuses: StatusRequests) {
    for (mut status, request) in statuses {
        status["state_hash"] = format!("{hash:016x}").into();
        request.respond(ResponseBody::Ok(Bytes::from(status.to_string())));
    }
}

fn save(
    store: &SnapshotStore,
    job: SaveJob,
    last_bytes: &mut usize,
    snapshots_out: &Sender<SnapshotTaken>,
    shared: &Shared,
) -> Saved {
    let index = job.meta.index;
    let serializing = Instant::now();
    // A little over the last one's size, so that a state that grew does not regrow the buffer.
    let hint = *last_bytes + *last_bytes / 16;
    let bytes = match (job.write)(hint) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!("writing the snapshot at {index} failed: {e}");
            return Saved::Failed { index };
        }
    };
    *last_bytes = bytes.len();
    let saving = Instant::now();
    if let Err(e) = store.save(&job.meta, &bytes) {
        tracing::warn!("saving the snapshot at {index} failed: {e}");
        return Saved::Failed { index };
    }
    tracing::info!(
        index,
        bytes = bytes.len(),
        taken_us = job.taken_in.as_micros() as u64,
        serialize_ms = saving.duration_since(serializing).as_millis() as u64,
        save_ms = saving.elapsed().as_millis() as u64,
        "snapshot saved"
    );
    // The core may miss one (its slot is full); it takes the next, and the file is saved.
    let _ = snapshots_out.try_send(SnapshotTaken { index, bytes });
    shared.wake_core();
    Saved::Done { index }
}

#[cfg(test)]
mod tests {
    use smr_raft::ConfState;

    use super::*;
    use crate::directory::Directory;
    use crate::snapshot;

    const CLUSTER: u64 = 0x5a;

    fn snapshot_at(index: Index) -> (SnapshotMeta, Bytes) {
        let meta = SnapshotMeta { index, term: 2, conf: ConfState { voters: vec![1, 2, 3], ..ConfState::default() } };
        let bytes = snapshot::encode(CLUSTER, &meta, &Directory::default(), &[7u8; 1000]);
        (meta, bytes)
    }

    fn written(bytes: Bytes) -> WriteSnapshot {
        Box::new(move |_| Ok(bytes))
    }

    /// A saver started on a store in `dir`, with the core's ends of its channels.
    struct Started {
        saver: SnapshotSaver,
        thread: JoinHandle<()>,
        taken: Receiver<SnapshotTaken>,
        core_wakes: Receiver<()>,
    }

    fn start_saver(dir: &std::path::Path) -> Started {
        let store = SnapshotStore::open(dir, CLUSTER, 1 << 20).unwrap();
        let (taken_tx, taken) = bounded(1);
        let (shared, core_wakes) = Shared::new(Directory::default(), None);
        let (saver, thread) = SnapshotSaver::start(1, store, taken_tx, shared, || {}).unwrap();
        Started { saver, thread, taken, core_wakes }
    }

    impl Started {
        fn stop(self) {
            drop(self.saver);
            self.thread.join().unwrap();
        }
    }

    fn wait_for_result(saver: &mut SnapshotSaver) -> Saved {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(saved) = saver.poll() {
                return saved;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("the save never ended");
    }

    #[test]
    fn a_saved_snapshot_is_on_disk_before_the_core_hears_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut started = start_saver(dir.path());
        let saver = &mut started.saver;
        let (meta, bytes) = snapshot_at(40);
        saver.save(meta, written(bytes.clone()), Duration::ZERO);
        assert!(saver.is_busy());
        assert_eq!(wait_for_result(saver), Saved::Done { index: 40 });
        assert!(!saver.is_busy());
        let handed = started.taken.try_recv().expect("handed to the core");
        assert_eq!((handed.index, &handed.bytes), (40, &bytes));
        assert!(started.core_wakes.try_recv().is_ok(), "the core is woken to take it");
        let on_disk = SnapshotStore::open(dir.path(), CLUSTER, 1 << 20).unwrap().latest().unwrap().expect("saved");
        assert_eq!(on_disk.meta.index, 40);
        started.stop();
    }

    #[test]
    fn every_waiting_status_is_answered_with_the_hash_and_the_saver_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut started = start_saver(dir.path());
        let saver = &mut started.saver;
        let (answers_tx, answers) = bounded(3); // One answer per status.
        let statuses: StatusRequests = (0..3)
            .map(|n| {
                let request = smr_net::Request {
                    request_id: n,
                    group: 0,
                    body: smr_net::RequestBody::Admin(smr_net::AdminRequest::Status),
                };
                let answers = answers_tx.clone();
                let status = serde_json::json!({ "node_id": 1, "request": n });
                (status, ClientRequest::local(request, move |body| answers.send(body).unwrap()))
            })
            .collect();
        saver.hash_for_status(Box::new(|| 0xfeed_0000_beef), statuses);
        assert!(saver.is_busy(), "a hash in progress holds snapshots back");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let body = answers.recv_timeout(Duration::from_secs(10)).expect("answered");
            let ResponseBody::Ok(json) = body else { panic!("not an answer: {body:?}") };
            let status: serde_json::Value = serde_json::from_slice(&json).unwrap();
            assert_eq!(status["state_hash"], "0000feed0000beef");
            assert_eq!(status["node_id"], 1, "the core's part is kept");
            seen.push(status["request"].as_u64().unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while saver.is_busy() {
            assert_eq!(saver.poll(), None, "a hash is no save");
            assert!(Instant::now() < deadline, "the hash job never ended");
            std::thread::sleep(Duration::from_millis(2));
        }
        // Free again: a snapshot goes through.
        let (meta, bytes) = snapshot_at(43);
        saver.save(meta, written(bytes), Duration::ZERO);
        assert_eq!(wait_for_result(saver), Saved::Done { index: 43 });
        assert_eq!(started.taken.try_recv().unwrap().index, 43);
        started.stop();
    }

    #[test]
    fn a_failed_save_is_reported_and_never_handed_to_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let mut started = start_saver(&dir.path().join("snapshots"));
        // The directory disappears under the store: creating the file fails.
        std::fs::remove_dir_all(dir.path().join("snapshots")).unwrap();
        let (meta, bytes) = snapshot_at(41);
        started.saver.save(meta, written(bytes), Duration::ZERO);
        assert_eq!(wait_for_result(&mut started.saver), Saved::Failed { index: 41 });
        assert!(started.taken.try_recv().is_err(), "the core never hears of a snapshot that is not on disk");
        started.stop();
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_is_reported_and_nothing_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let mut started = start_saver(dir.path());
        let (meta, _) = snapshot_at(42);
        let failing: WriteSnapshot = Box::new(|_| Err(std::io::Error::other("the state machine refused")));
        started.saver.save(meta, failing, Duration::ZERO);
        assert_eq!(wait_for_result(&mut started.saver), Saved::Failed { index: 42 });
        assert!(started.taken.try_recv().is_err());
        assert!(SnapshotStore::open(dir.path(), CLUSTER, 1 << 20).unwrap().latest().unwrap().is_none());
        started.stop();
    }
}
