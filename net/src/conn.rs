//! Reading frames from a blocking socket, with the idle and slowloris deadlines.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use thiserror::Error;

use crate::frame::{FRAME_HEADER_BYTES, FrameError, FrameHeader, decode_frame, decode_header};

/// Why a connection stopped.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("closed by the other side")]
    Closed,
    #[error("garbage frame: {0}")]
    Frame(#[from] FrameError),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("frame not complete within {0:?}")]
    SlowFrame(Duration),
    #[error("deadline passed")]
    Deadline,
}

/// Receive buffers of one connection, recycled. A buffer handed to the consumer (as the owner
/// of `Bytes` slices) comes back here when its last slice is dropped, so that a connection in
/// steady state neither allocates nor page-faults fresh memory for its reads. Measured on
/// loopback at 64 KiB messages, fresh allocations cost about a tenth of the CPU in page faults.
#[derive(Debug)]
struct BufferPool {
    buffer_bytes: usize,
    free_tx: Sender<Vec<u8>>,
    free_rx: Receiver<Vec<u8>>,
}

/// Buffers kept for reuse per connection; more in flight than this are allocated and freed.
const POOL_BUFFERS_MAX: usize = 4;

/// The owner behind the `Bytes` of received frames.
struct PooledBuffer {
    buffer: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // Buffers grown for one large frame are not kept: the pool holds ordinary ones only.
        if self.buffer.capacity() == self.pool.buffer_bytes {
            let mut buffer = std::mem::take(&mut self.buffer);
            buffer.clear();
            let _ = self.pool.free_tx.try_send(buffer);
        }
    }
}

/// Frames received on one connection.
///
/// Bytes are read into a plain buffer; when it holds whole frames, the buffer is frozen into
/// one `Bytes` (its owner returns it to the pool later) and the partial frame after them, if
/// any, is copied to the start of a fresh buffer. Payloads handed on are therefore slices of
/// the bytes the kernel wrote, with no copy, at the price of copying at most one partial frame
/// per read. A consumer that keeps one small slice alive keeps its whole read buffer (up to
/// `read_bytes`, or one large frame) alive; the log writer drops entries once persisted.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Received bytes not yet frozen; a frame starts at offset 0.
    buffer: Vec<u8>,
    /// Whole frames frozen off `buffer`, not yet all handed out; the next starts at `ready_at`.
    ready: Bytes,
    ready_at: usize,
    pool: Arc<BufferPool>,
    frame_bytes_max: usize,
    /// When the first byte of the frame now partly buffered arrived.
    partial_since: Option<Instant>,
    last_received: Instant,
    /// The read timeout this reader last set on its stream (a reader reads one stream).
    read_timeout: Option<Duration>,
}

/// How much later than asked a blocking read may give up: a read timeout this close to the one
/// wanted is kept, which spares a `setsockopt` before nearly every read of a busy connection.
const READ_TIMEOUT_SLACK: Duration = Duration::from_millis(1);

impl FrameReader {
    pub(crate) fn new(read_bytes: usize, frame_bytes_max: usize) -> FrameReader {
        let (free_tx, free_rx) = bounded(POOL_BUFFERS_MAX);
        let read_bytes = read_bytes.max(FRAME_HEADER_BYTES);
        FrameReader {
            buffer: Vec::with_capacity(read_bytes),
            ready: Bytes::new(),
            ready_at: 0,
            pool: Arc::new(BufferPool { buffer_bytes: read_bytes, free_tx, free_rx }),
            frame_bytes_max,
            partial_since: None,
            last_received: Instant::now(),
            read_timeout: None,
        }
    }

    fn fresh_buffer(&self) -> Vec<u8> {
        self.pool.free_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(self.pool.buffer_bytes))
    }

    /// The next complete frame already buffered: its header and its payload (padding cut off).
    ///
    /// All complete frames of a read are split off the receive buffer at once and frozen into
    /// one `Bytes`, so per frame there is one header check, one CRC and one reference-count
    /// increment for the payload slice, not an allocation.
    ///
    /// # Errors
    /// The buffered bytes are not a valid frame; the connection must be closed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, FrameError> {
        if self.ready_at == self.ready.len() {
            let complete = self.complete_prefix()?;
            if complete == 0 {
                return Ok(None);
            }
            let mut next = self.fresh_buffer();
            next.extend_from_slice(&self.buffer[complete..]);
            let full = std::mem::replace(&mut self.buffer, next);
            let owner = PooledBuffer { buffer: full, pool: Arc::clone(&self.pool) };
            self.ready = Bytes::from_owner(owner).slice(..complete);
            self.ready_at = 0;
            self.partial_since = if self.buffer.is_empty() { None } else { Some(self.last_received) };
        }
        let (header, total) = decode_frame(&self.ready[self.ready_at..], self.frame_bytes_max)?
            .expect("complete_prefix only counts whole frames");
        let payload_at = self.ready_at + FRAME_HEADER_BYTES;
        let payload = self.ready.slice(payload_at..payload_at + header.length as usize);
        self.ready_at += total;
        if self.ready_at == self.ready.len() {
            // Let go of the frozen region so that the buffer can be reclaimed once the
            // consumer drops its slices.
            self.ready = Bytes::new();
            self.ready_at = 0;
        }
        Ok(Some((header, payload)))
    }

    /// Bytes at the start of the receive buffer that form whole frames (by their headers; the
    /// CRC is checked frame by frame as they are taken). A bad header ends the prefix; it is
    /// reported when it is reached, so the valid frames before it are still delivered.
    fn complete_prefix(&self) -> Result<usize, FrameError> {
        let mut at = 0;
        loop {
            let header = match decode_header(&self.buffer[at..], self.frame_bytes_max) {
                Ok(Some(header)) => header,
                Ok(None) => return Ok(at),
                Err(error) if at == 0 => return Err(error),
                Err(_) => return Ok(at),
            };
            let total = header.frame_bytes();
            if self.buffer.len() - at < total {
                return Ok(at);
            }
            at += total;
        }
    }

    /// Restarts the idle clock: the caller was busy (waiting on its consumer), not the peer.
    pub(crate) fn note_alive(&mut self) {
        self.last_received = Instant::now();
    }

    /// Restarts both clocks, the idle one and that of a frame begun: the caller stopped reading
    /// for a while, so a frame left half-read in the meantime is not the peer's slowness.
    pub(crate) fn restart_clocks(&mut self) {
        self.last_received = Instant::now();
        if self.partial_since.is_some() {
            self.partial_since = Some(self.last_received);
        }
    }

    /// Reads once from `stream` (blocking up to the socket's read timeout).
    ///
    /// Returns the bytes read; `Err(Closed)` at end of stream (`Truncated` inside a frame).
    /// A read timeout comes back as an `Io` error of kind `WouldBlock` or `TimedOut`.
    fn fill(&mut self, stream: &TcpStream) -> Result<usize, ConnError> {
        self.fill_with_flags(stream, 0)
    }

    /// Reads what has arrived without waiting: `Ok(None)` when nothing has (whatever the
    /// socket's blocking mode), else as [`FrameReader::fill`].
    pub(crate) fn fill_available(&mut self, stream: &TcpStream) -> Result<Option<usize>, ConnError> {
        match self.fill_with_flags(stream, libc::MSG_DONTWAIT) {
            Ok(received) => Ok(Some(received)),
            Err(ConnError::Io(error))
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Why the connection must be closed now, if it must: nothing received for `idle_timeout`
    /// (the caller decides whether a quiet connection counts as idle), or a frame begun longer
    /// than `frame_receive_max` ago and still not complete.
    pub(crate) fn overdue(
        &self,
        now: Instant,
        idle_timeout: Duration,
        frame_receive_max: Duration,
    ) -> Option<ConnError> {
        if self.partial_since.is_some_and(|since| now >= since + frame_receive_max) {
            return Some(ConnError::SlowFrame(frame_receive_max));
        }
        if now >= self.last_received + idle_timeout {
            return Some(ConnError::Idle(idle_timeout));
        }
        None
    }

    fn fill_with_flags(&mut self, stream: &TcpStream, flags: libc::c_int) -> Result<usize, ConnError> {
        // Room for at least the rest of the current frame when its header is known (its length
        // was checked against frame_bytes_max by decode_header), else for a header.
        let needed = match decode_header(&self.buffer, self.frame_bytes_max)? {
            Some(header) => header.frame_bytes() - self.buffer.len(),
            None => FRAME_HEADER_BYTES,
        };
        if self.buffer.capacity() - self.buffer.len() < needed {
            self.buffer.reserve_exact(needed);
        }
        let spare = self.buffer.spare_capacity_mut();
        let spare_len = spare.len();
        // SAFETY: `spare` is writable memory owned by `self.buffer` of `spare_len` bytes; recv
        // writes at most that many bytes into it and reports how many it wrote.
        let received = unsafe { libc::recv(stream.as_raw_fd(), spare.as_mut_ptr().cast(), spare_len, flags) };
        if received < 0 {
            return Err(ConnError::Io(io::Error::last_os_error()));
        }
        let received = received as usize;
        if received == 0 {
            return Err(if self.buffer.is_empty() {
                ConnError::Closed
            } else {
                ConnError::Frame(FrameError::Truncated)
            });
        }
        // SAFETY: recv initialised exactly `received` bytes at the start of the spare capacity.
        unsafe { self.buffer.set_len(self.buffer.len() + received) };
        self.last_received = Instant::now();
        if self.partial_since.is_none() {
            self.partial_since = Some(self.last_received);
        }
        Ok(received)
    }

    /// Blocks until at least one more byte arrives, enforcing the idle timeout, the slowloris
    /// bound on a partly received frame and an optional absolute `deadline`.
    ///
    /// The socket's read timeout is set for each wait to the nearest of the three, so a dead or
    /// slow connection wakes its thread exactly when it must be closed, never in a loop.
    pub(crate) fn fill_with_deadlines(
        &mut self,
        stream: &TcpStream,
        idle_timeout: Duration,
        frame_receive_max: Duration,
        deadline: Option<Instant>,
    ) -> Result<usize, ConnError> {
        loop {
            let now = Instant::now();
            let idle_at = self.last_received + idle_timeout;
            let mut wake_at = idle_at;
            let slow_at = self.partial_since.map(|since| since + frame_receive_max);
            if let Some(slow_at) = slow_at {
                wake_at = wake_at.min(slow_at);
            }
            if let Some(deadline) = deadline {
                wake_at = wake_at.min(deadline);
            }
            if now >= wake_at {
                if deadline.is_some_and(|deadline| now >= deadline) {
                    return Err(ConnError::Deadline);
                }
                if slow_at.is_some_and(|slow_at| now >= slow_at) {
                    return Err(ConnError::SlowFrame(frame_receive_max));
                }
                return Err(ConnError::Idle(idle_timeout));
            }
            // A zero timeout would mean "block forever" to the kernel.
            let wanted = (wake_at - now).max(Duration::from_millis(1));
            // Kept when it wakes at most the slack late and not needlessly early.
            let keep = self.read_timeout.is_some_and(|set| set <= wanted + READ_TIMEOUT_SLACK && set >= wanted / 2);
            if !keep {
                stream.set_read_timeout(Some(wanted))?;
                self.read_timeout = Some(wanted);
            }
            match self.fill(stream) {
                Ok(received) => return Ok(received),
                Err(ConnError::Io(error))
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Reads until one whole frame is buffered and returns it (the handshake's reads).
    pub(crate) fn read_frame(
        &mut self,
        stream: &TcpStream,
        frame_receive_max: Duration,
        deadline: Instant,
    ) -> Result<(FrameHeader, Bytes), ConnError> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            self.fill_with_deadlines(stream, frame_receive_max, frame_receive_max, Some(deadline))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn restarting_the_clocks_restarts_a_partly_received_frames_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (receiver, _) = listener.accept().unwrap();
        let (idle, frame_max) = (Duration::from_secs(3600), Duration::from_secs(5));
        let mut reader = FrameReader::new(4096, 1 << 20);
        // Three bytes of a frame header: a frame begun and not finished.
        sender.write_all(&[1, 2, 3]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.fill_available(&receiver).unwrap().is_none() {
            assert!(Instant::now() < deadline, "the bytes never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        let restarted = Instant::now();
        // Just short of the frame's deadline counted from the restart, but past it counted from
        // the first byte: a reader that did not restart the clock would close the connection.
        let almost = restarted + frame_max - Duration::from_millis(1);
        assert!(matches!(reader.overdue(almost, idle, frame_max), Some(ConnError::SlowFrame(_))));
        reader.restart_clocks();
        assert!(reader.overdue(almost, idle, frame_max).is_none());
        assert!(matches!(reader.overdue(restarted + frame_max * 2, idle, frame_max), Some(ConnError::SlowFrame(_))));
        // Only the idle clock: the frame's deadline stays where it was.
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        reader.note_alive();
        let frame_at_most = before + frame_max;
        assert!(matches!(reader.overdue(frame_at_most, idle, frame_max), Some(ConnError::SlowFrame(_))));
    }
}
