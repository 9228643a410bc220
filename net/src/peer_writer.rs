//! The write side of one peer connection, shared by the peer's link thread and every thread
//! that sends to the peer.
//!
//! A sender that finds the link idle (nothing queued, nothing half-written) writes its message
//! to the socket itself, without blocking, instead of queueing it and waking the link thread.
//! At one command outstanding a write crosses about a dozen threads between the client and its
//! answer, and on a small shared machine each crossing is a wake-up that costs tens of
//! microseconds; this takes two of them (the leader's append, the follower's acknowledgement)
//! off every write's path. Otherwise, when the link is busy, the sender queues the message and
//! rings the link's doorbell; the link thread then takes the write side, finishes what is
//! half-written and drains the queue with blocking writes, many messages per `writev`.
//!
//! Ordering: messages to the peer leave in the order `send` accepted them. Messages are taken
//! off the queue only by the holder of the write side, and are written (or left half-written in
//! its batch, which is finished before anything else) before it lets go. A sender writes
//! directly only while it holds the write side and finds the queue and the batch empty, so
//! everything accepted before its message has been handed to the socket already.
//!
//! Senders never wait for the write side (`try_lock`): a sender is the Raft core or the log
//! writer, and neither may block on a peer. Only the link thread waits for it.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use crossbeam_channel::{Receiver, Sender, bounded};
use smr_raft::{Message, NodeId};

use crate::batch::SendBatch;
use crate::frame::{FrameError, FrameKind};
use crate::nosignal::{NoSignal, NoWait};
use crate::stats::{Counters, add, bump};
use crate::wire::{EncodeError, encode_message_batched};

/// Bytes counted against a peer queue's byte bound per message, beyond `size_bytes`.
pub(crate) const QUEUE_MESSAGE_OVERHEAD_BYTES: usize = 64;
/// Bytes of frames the link gathers for one `writev` before it writes them (a single larger
/// message still goes out whole). Small enough that the batch buffer is reused, not regrown and
/// page-faulted, for every write; large enough that a write carries thousands of small messages.
const WRITE_BATCH_BYTES_MAX: usize = 256 << 10;

/// Bytes a queued message counts against `peer_queue_bytes_max`.
pub(crate) fn message_queue_bytes(message: &Message) -> usize {
    usize::try_from(message.body.size_bytes()).unwrap_or(usize::MAX / 2) + QUEUE_MESSAGE_OVERHEAD_BYTES
}

/// The socket and the frames on their way into it.
struct WriteSide {
    /// The live connection; `None` between connections.
    stream: Option<Arc<TcpStream>>,
    batch: SendBatch,
    /// Messages encoded into `batch`, dropped together once it is written: their entry data
    /// (reference counts shared with the producer) and entry lists are released in one burst
    /// instead of one at a time between encodings, which halves what the drops cost.
    sent: Vec<Message>,
}

/// One peer's write side and the doorbell that wakes its link thread. See the module docs.
pub(crate) struct PeerWriter {
    peer: NodeId,
    frame_bytes_max: usize,
    side: Mutex<WriteSide>,
    /// Capacity 1: one ring pending is enough to make the link look at its queue.
    doorbell: Sender<()>,
}

impl PeerWriter {
    /// A writer for `peer`, and the doorbell its link thread waits on.
    pub(crate) fn new(peer: NodeId, frame_bytes_max: usize) -> (PeerWriter, Receiver<()>) {
        let (doorbell, rings) = bounded(1);
        let side = WriteSide { stream: None, batch: SendBatch::new(), sent: Vec::new() };
        (PeerWriter { peer, frame_bytes_max, side: Mutex::new(side), doorbell }, rings)
    }

    /// Writes `message` now, without blocking, when the link is connected and idle: nothing in
    /// `queue` and nothing half-written. Hands the message back when it cannot (the caller then
    /// queues it). A write the socket takes only part of is finished by the link thread.
    pub(crate) fn try_write_now(
        &self,
        message: Message,
        queue: &Sender<Message>,
        counters: &Counters,
    ) -> Result<(), Message> {
        let mut side = match self.side.try_lock() {
            Ok(side) => side,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(message),
        };
        let Some(stream) = side.stream.clone() else { return Err(message) };
        if !side.batch.is_empty() || !queue.is_empty() {
            return Err(message);
        }
        self.push(&mut side, message, counters);
        if side.batch.is_empty() {
            return Ok(()); // too large for a frame: dropped and counted
        }
        let totals = Totals::of(&side.batch);
        match side.batch.write_available(&mut NoWait(&stream)) {
            Ok(true) => {
                totals.count(counters);
                bump(&counters.direct_writes);
                side.sent.clear();
            }
            // The socket is full: the link thread finishes the batch, blocking.
            Ok(false) => self.ring(),
            Err(error) => {
                tracing::info!(peer = self.peer, %error, "peer connection lost while writing");
                add(&counters.send_dropped_connection_lost, totals.messages);
                side.batch.clear();
                side.sent.clear();
                side.stream = None;
                // The reader sees the connection end, and the link thread reconnects.
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        Ok(())
    }

    /// Wakes the link thread to look at its queue.
    pub(crate) fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }

    /// Makes `stream` the connection senders write to.
    pub(crate) fn attach(&self, stream: Arc<TcpStream>) {
        let mut side = self.lock();
        debug_assert!(side.batch.is_empty());
        side.stream = Some(stream);
    }

    /// Ends the connection's write side: anything half-written is dropped and counted.
    pub(crate) fn detach(&self, counters: &Counters) {
        let mut side = self.lock();
        side.stream = None;
        if !side.batch.is_empty() {
            add(&counters.send_dropped_connection_lost, side.batch.messages() as u64);
            side.batch.clear();
        }
        side.sent.clear();
    }

    /// The link thread's turn: finishes what is half-written, then writes everything queued,
    /// blocking (up to the socket's write timeout). `queued_bytes` is the queue's byte count,
    /// given back for what is taken.
    ///
    /// # Errors
    /// The connection failed or timed out; what was being written is dropped and counted.
    pub(crate) fn drain(
        &self,
        queue: &Receiver<Message>,
        queued_bytes: &AtomicUsize,
        counters: &Counters,
    ) -> io::Result<()> {
        let mut side = self.lock();
        loop {
            let bytes_max = self.frame_bytes_max.min(WRITE_BATCH_BYTES_MAX);
            let mut dequeued_bytes = 0;
            while side.batch.bytes() < bytes_max {
                let Ok(message) = queue.try_recv() else { break };
                dequeued_bytes += message_queue_bytes(&message);
                self.push(&mut side, message, counters);
            }
            // One atomic for the whole drain, not one per message.
            queued_bytes.fetch_sub(dequeued_bytes, Ordering::Relaxed);
            if side.batch.is_empty() {
                return Ok(());
            }
            self.write_blocking(&mut side, counters)?;
        }
    }

    /// Sends a keepalive frame after whatever is half-written.
    ///
    /// # Errors
    /// As [`PeerWriter::drain`].
    pub(crate) fn keepalive(&self, counters: &Counters) -> io::Result<()> {
        let mut side = self.lock();
        let pushed = side.batch.push_frame(FrameKind::Ping, 0, 0, &[], self.frame_bytes_max);
        debug_assert!(pushed.is_ok());
        self.write_blocking(&mut side, counters)
    }

    fn lock(&self) -> MutexGuard<'_, WriteSide> {
        self.side.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_blocking(&self, side: &mut WriteSide, counters: &Counters) -> io::Result<()> {
        let Some(stream) = side.stream.clone() else {
            // Detached meanwhile (a sender's write failed): the link reconnects.
            add(&counters.send_dropped_connection_lost, side.batch.messages() as u64);
            side.batch.clear();
            side.sent.clear();
            return Err(io::ErrorKind::NotConnected.into());
        };
        let totals = Totals::of(&side.batch);
        // The socket blocks, so only its write timeout makes `write_available` stop short.
        let written = side.batch.write_available(&mut NoSignal(&stream)).and_then(|done| {
            if done { Ok(()) } else { Err(io::Error::new(io::ErrorKind::TimedOut, "peer write timed out")) }
        });
        side.sent.clear();
        match written {
            Ok(()) => {
                totals.count(counters);
                Ok(())
            }
            Err(error) => {
                add(&counters.send_dropped_connection_lost, totals.messages);
                side.batch.clear();
                Err(error)
            }
        }
    }

    /// Encodes `message` into the batch; one too large for a frame is dropped and counted.
    fn push(&self, side: &mut WriteSide, message: Message, counters: &Counters) {
        match encode_message_batched(&mut side.batch, &message, self.frame_bytes_max) {
            Ok(()) => side.sent.push(message),
            Err(EncodeError::Frame(FrameError::TooLarge { bytes, max })) => {
                bump(&counters.send_dropped_too_large);
                if let Some(suppressed) = counters.log_limit.allow() {
                    tracing::warn!(
                        peer = self.peer,
                        kind = message.body.name(),
                        bytes,
                        max,
                        suppressed,
                        "message dropped: larger than a frame"
                    );
                }
            }
            Err(error) => {
                bump(&counters.send_dropped_too_large);
                if let Some(suppressed) = counters.log_limit.allow() {
                    tracing::warn!(peer = self.peer, kind = message.body.name(), %error, suppressed, "message dropped: cannot encode");
                }
            }
        }
    }
}

/// What a batch holds, counted once it is wholly written.
struct Totals {
    frames: u64,
    bytes: u64,
    messages: u64,
}

impl Totals {
    fn of(batch: &SendBatch) -> Totals {
        Totals { frames: batch.frames() as u64, bytes: batch.bytes() as u64, messages: batch.messages() as u64 }
    }

    fn count(&self, counters: &Counters) {
        add(&counters.frames_sent, self.frames);
        add(&counters.bytes_sent, self.bytes);
        add(&counters.messages_sent, self.messages);
        bump(&counters.write_batches);
    }
}
