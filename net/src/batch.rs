//! Outgoing frames coalesced into one vectored write.
//!
//! Headers, small payloads and rkyv archives are appended to one aligned buffer; large payloads
//! (entry data, snapshot chunks) stay in their reference-counted `Bytes` and are handed to the
//! kernel in place by `writev`, so a 64 KiB entry is copied once, by the kernel, on its way out.

use std::io::{self, IoSlice, Write};

use bytes::Bytes;
use rkyv::util::AlignedVec;

use crate::frame::{
    FRAME_ALIGN, FRAME_HEADER_BYTES, FrameError, FrameKind, RECORD_HEADER_BYTES, frame_bytes, write_header,
    write_record_header,
};

/// Blobs shorter than this are copied into the batch buffer: an iovec per 64-byte entry would
/// cost more in the kernel's iovec walk than the copy does.
pub(crate) const BLOB_COPY_BYTES_MAX: usize = 1024;
/// A `RaftBatch` frame is closed once its payload reaches this many bytes. Small enough that a
/// receiver's read buffer holds many whole frames (a partial frame at the end of a read is
/// copied), large enough that the frame header and CRC call are paid once per hundred or so
/// small messages.
pub(crate) const RECORD_FRAME_BYTES_TARGET: usize = 16 << 10;
/// Linux refuses more iovecs than this in one `writev` (IOV_MAX).
const IOVECS_MAX: usize = 1024;

#[derive(Debug)]
enum Segment {
    Buffer { start: usize, end: usize },
    Blob(Bytes),
}

fn segment_len(segment: &Segment) -> usize {
    match segment {
        Segment::Buffer { start, end } => end - start,
        Segment::Blob(blob) => blob.len(),
    }
}

/// Frames waiting to be written, in order.
///
/// Invariant: every frame starts at a multiple of [`FRAME_ALIGN`] both of the batch's byte stream
/// and of `buffer` (whose start is 16-aligned in memory).
#[derive(Debug)]
pub struct SendBatch {
    buffer: AlignedVec<16>,
    segments: Vec<Segment>,
    /// Buffer bytes before this offset are already covered by a `Segment::Buffer`.
    buffer_flushed: usize,
    bytes: usize,
    frames: usize,
    /// Raft messages in the batch: one per `Raft` frame, one per record of a `RaftBatch` frame.
    messages: usize,
    /// The `RaftBatch` frame records are being appended to, if any. Its bytes are in the
    /// buffer; its header is written when it is closed.
    open: Option<OpenRecordFrame>,
    /// Bytes from the start already written by [`SendBatch::write_available`]; the batch is
    /// cleared once all of them are.
    sent: usize,
}

#[derive(Clone, Copy, Debug)]
struct OpenRecordFrame {
    /// Buffer offset of the frame's header.
    start: usize,
    records: u32,
}

impl Default for SendBatch {
    fn default() -> SendBatch {
        SendBatch::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch {
            buffer: AlignedVec::with_capacity(64 << 10),
            segments: Vec::new(),
            buffer_flushed: 0,
            bytes: 0,
            frames: 0,
            messages: 0,
            open: None,
            sent: 0,
        }
    }

    /// Bytes the batch will put on the wire.
    pub fn bytes(&self) -> usize {
        self.bytes + self.open.map_or(0, |open| self.buffer.len() - open.start)
    }

    /// Frames in the batch, counting a `RaftBatch` frame still open.
    pub fn frames(&self) -> usize {
        self.frames + usize::from(self.open.is_some())
    }

    /// Raft messages in the batch, whether in frames of their own or records of `RaftBatch` frames.
    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.frames() == 0
    }

    /// Bytes not yet written: all of them, less what [`SendBatch::write_available`] wrote.
    pub fn unsent_bytes(&self) -> usize {
        self.bytes() - self.sent
    }

    /// Appends one frame whose payload is `payload`, copied.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the frame exceeds `frame_bytes_max`; the batch is unchanged.
    pub fn push_frame(
        &mut self,
        kind: FrameKind,
        aux: u32,
        group: u64,
        payload: &[u8],
        frame_bytes_max: usize,
    ) -> Result<(), FrameError> {
        self.push_frame_parts(kind, aux, group, &[payload], frame_bytes_max)
    }

    /// Appends one frame whose payload is the concatenation of `parts`, copied.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the frame exceeds `frame_bytes_max`; the batch is unchanged.
    pub fn push_frame_parts(
        &mut self,
        kind: FrameKind,
        aux: u32,
        group: u64,
        parts: &[&[u8]],
        frame_bytes_max: usize,
    ) -> Result<(), FrameError> {
        let payload: usize = parts.iter().map(|part| part.len()).sum();
        let total = frame_bytes(payload);
        if total > frame_bytes_max {
            return Err(FrameError::TooLarge { bytes: total, max: frame_bytes_max });
        }
        self.close_record_frame();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        write_header(&mut header, kind, aux, group, parts.iter().copied());
        self.align_frame_start();
        self.buffer.extend_from_slice(&header);
        for part in parts {
            self.buffer.extend_from_slice(part);
        }
        self.pad();
        self.bytes += total;
        self.frames += 1;
        Ok(())
    }

    /// Appends a frame whose payload is an archive serialized by `serialize` into the batch's
    /// aligned buffer, followed by `blobs` in order. The header's `aux` is the archive's length.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the frame exceeds `frame_bytes_max`; the batch is unchanged.
    pub(crate) fn push_archive_frame<'b, E>(
        &mut self,
        kind: FrameKind,
        group: u64,
        blobs: impl Iterator<Item = &'b Bytes> + Clone,
        frame_bytes_max: usize,
        serialize: impl FnOnce(&mut AlignedVec<16>) -> Result<(), E>,
    ) -> Result<Result<(), FrameError>, E> {
        self.close_record_frame();
        self.align_frame_start();
        let frame_start = self.buffer.len();
        self.buffer.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
        let archive_start = self.buffer.len();
        if let Err(error) = serialize(&mut self.buffer) {
            self.buffer.resize(frame_start, 0);
            return Err(error);
        }
        let archive_len = self.buffer.len() - archive_start;
        self.pad();
        let archive_padded = self.buffer.len() - archive_start;
        let blob_bytes: usize = blobs.clone().map(|blob| blob.len()).sum();
        let payload = archive_padded + blob_bytes;
        let total = frame_bytes(payload);
        if total > frame_bytes_max || archive_len > u32::MAX as usize {
            self.buffer.resize(frame_start, 0);
            return Ok(Err(FrameError::TooLarge { bytes: total, max: frame_bytes_max }));
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        {
            let archive = &self.buffer.as_slice()[archive_start..];
            let parts = std::iter::once(archive).chain(blobs.clone().map(|blob| blob.as_ref()));
            write_header(&mut header, kind, archive_len as u32, group, parts);
        }
        self.buffer.as_mut_slice()[frame_start..archive_start].copy_from_slice(&header);
        for blob in blobs {
            if blob.len() <= BLOB_COPY_BYTES_MAX {
                self.buffer.extend_from_slice(blob);
            } else {
                self.flush_buffer_segment();
                self.segments.push(Segment::Blob(Bytes::clone(blob)));
            }
        }
        // The padding after the blobs; the stream offset is a multiple of 8 again after it.
        let padding = total - FRAME_HEADER_BYTES - payload;
        self.buffer.extend_from_slice(&[0u8; FRAME_ALIGN][..padding]);
        self.bytes += total;
        self.frames += 1;
        if kind == FrameKind::Raft {
            self.messages += 1;
        }
        Ok(Ok(()))
    }

    /// Appends one record to the open `RaftBatch` frame (opening one if needed): a record
    /// header, an archive serialized by `serialize` in place, then `blobs`, copied. Every blob
    /// must be at most [`BLOB_COPY_BYTES_MAX`] bytes, so that the whole frame is contiguous in
    /// the buffer and its CRC is one pass when it is closed.
    ///
    /// The frame is closed when its payload reaches [`RECORD_FRAME_BYTES_TARGET`]. A record
    /// that would take the frame past `frame_bytes_max` goes into a frame of its own.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the record alone does not fit a frame of
    /// `frame_bytes_max`; the batch is unchanged.
    pub(crate) fn push_archive_record<'b, E>(
        &mut self,
        group: u64,
        blobs: impl Iterator<Item = &'b Bytes> + Clone,
        frame_bytes_max: usize,
        mut serialize: impl FnMut(&mut AlignedVec<16>) -> Result<(), E>,
    ) -> Result<Result<(), FrameError>, E> {
        debug_assert!(blobs.clone().all(|blob| blob.len() <= BLOB_COPY_BYTES_MAX));
        loop {
            let open = match self.open {
                Some(open) => open,
                None => {
                    self.align_frame_start();
                    let start = self.buffer.len();
                    self.buffer.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
                    let open = OpenRecordFrame { start, records: 0 };
                    self.open = Some(open);
                    open
                }
            };
            let record_start = self.buffer.len();
            self.buffer.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
            let archive_start = self.buffer.len();
            if let Err(error) = serialize(&mut self.buffer) {
                self.abandon_record(open, record_start);
                return Err(error);
            }
            let archive_len = self.buffer.len() - archive_start;
            self.pad();
            for blob in blobs.clone() {
                self.buffer.extend_from_slice(blob);
            }
            let body_len = self.buffer.len() - archive_start;
            self.pad();
            // The frame with this record must fit frame_bytes_max. The record header, archive
            // and blobs were appended already, padded: the frame's size is the buffer's growth.
            let total = self.buffer.len() - open.start;
            let fits = total <= frame_bytes_max && archive_len <= u32::MAX as usize && body_len <= u32::MAX as usize;
            if !fits {
                self.abandon_record(open, record_start);
                if open.records == 0 {
                    return Ok(Err(FrameError::TooLarge { bytes: total, max: frame_bytes_max }));
                }
                // Try again in a frame of its own.
                self.close_record_frame();
                continue;
            }
            let mut header = [0u8; RECORD_HEADER_BYTES];
            write_record_header(&mut header, body_len as u32, archive_len as u32, group);
            self.buffer.as_mut_slice()[record_start..archive_start].copy_from_slice(&header);
            self.open = Some(OpenRecordFrame { records: open.records + 1, ..open });
            self.messages += 1;
            if total - FRAME_HEADER_BYTES >= RECORD_FRAME_BYTES_TARGET {
                self.close_record_frame();
            }
            return Ok(Ok(()));
        }
    }

    /// Removes a record that was partly appended; closes nothing.
    fn abandon_record(&mut self, open: OpenRecordFrame, record_start: usize) {
        if open.records == 0 {
            // The frame was opened for this record: remove its header too.
            self.buffer.resize(open.start, 0);
            self.open = None;
        } else {
            self.buffer.resize(record_start, 0);
        }
    }

    /// Writes the header of the open `RaftBatch` frame, if any: its length, its record count
    /// in `aux`, and the CRC over its whole payload, computed in one pass.
    fn close_record_frame(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        let payload_start = open.start + FRAME_HEADER_BYTES;
        let mut header = [0u8; FRAME_HEADER_BYTES];
        {
            let payload = &self.buffer.as_slice()[payload_start..];
            write_header(&mut header, FrameKind::RaftBatch, open.records, 0, [payload]);
        }
        let total = self.buffer.len() - open.start;
        debug_assert_eq!(total, frame_bytes(total - FRAME_HEADER_BYTES), "records keep the frame 8-aligned");
        self.buffer.as_mut_slice()[open.start..payload_start].copy_from_slice(&header);
        self.bytes += total;
        self.frames += 1;
    }

    /// Pads the buffer to a multiple of 8 with zeros that are sent.
    fn pad(&mut self) {
        let misalignment = self.buffer.len() % FRAME_ALIGN;
        if misalignment != 0 {
            self.buffer.extend_from_slice(&[0u8; FRAME_ALIGN][..FRAME_ALIGN - misalignment]);
        }
    }

    /// Makes the next frame start at a buffer offset that is a multiple of 8.
    ///
    /// Frames start at multiples of 8 of the byte stream, but a blob sent from outside the
    /// buffer can leave the buffer's own length misaligned. An rkyv archive is aligned relative
    /// to the buffer, and must be aligned the same way relative to the stream for the receiver
    /// to read it in place, so the buffer skips a gap of up to 7 bytes that is never sent.
    fn align_frame_start(&mut self) {
        let misalignment = self.buffer.len() % FRAME_ALIGN;
        if misalignment != 0 {
            self.flush_buffer_segment();
            self.buffer.extend_from_slice(&[0u8; FRAME_ALIGN][..FRAME_ALIGN - misalignment]);
            self.buffer_flushed = self.buffer.len();
        }
    }

    fn flush_buffer_segment(&mut self) {
        let end = self.buffer.len();
        if end > self.buffer_flushed {
            self.segments.push(Segment::Buffer { start: self.buffer_flushed, end });
            self.buffer_flushed = end;
        }
    }

    /// Writes every frame, in order, with as few `writev` calls as the kernel allows, then
    /// empties the batch (also on error: a failed connection is abandoned, not retried).
    ///
    /// # Errors
    /// The first I/O error; a zero-length write is `WriteZero`.
    pub fn write_to(&mut self, writer: &mut impl Write) -> io::Result<()> {
        debug_assert_eq!(self.sent, 0, "write_to does not resume a write_available");
        self.close_record_frame();
        self.flush_buffer_segment();
        let result = self.write_segments(writer);
        self.clear();
        result
    }

    /// Writes what `writer` takes without blocking (a non-blocking socket, or `MSG_DONTWAIT`)
    /// and remembers how far it got, so that frames pushed meanwhile follow the rest.
    ///
    /// Returns `Ok(true)` once every byte is written (the batch is then cleared), `Ok(false)`
    /// when the writer would block with bytes left.
    ///
    /// # Errors
    /// The writer failed (other than would-block or interrupted); the batch is left as it was.
    pub fn write_available(&mut self, writer: &mut impl Write) -> io::Result<bool> {
        self.close_record_frame();
        self.flush_buffer_segment();
        let buffer = self.buffer.as_slice();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.segments.len().min(IOVECS_MAX));
        loop {
            if self.sent == self.bytes {
                self.clear();
                return Ok(true);
            }
            // The first segment not wholly sent, and how much of it is.
            let mut skip = self.sent;
            let mut first = 0;
            for segment in &self.segments {
                let len = segment_len(segment);
                if skip < len {
                    break;
                }
                skip -= len;
                first += 1;
            }
            slices.clear();
            slices.extend(self.segments[first..].iter().take(IOVECS_MAX).map(|segment| match segment {
                Segment::Buffer { start, end } => IoSlice::new(&buffer[*start..*end]),
                Segment::Blob(blob) => IoSlice::new(blob),
            }));
            let mut remaining = &mut slices[..];
            IoSlice::advance_slices(&mut remaining, skip);
            match writer.write_vectored(remaining) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.sent += written,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
    }

    fn write_segments(&self, writer: &mut impl Write) -> io::Result<()> {
        let buffer = self.buffer.as_slice();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.segments.len().min(IOVECS_MAX));
        for chunk in self.segments.chunks(IOVECS_MAX) {
            slices.clear();
            slices.extend(chunk.iter().map(|segment| match segment {
                Segment::Buffer { start, end } => IoSlice::new(&buffer[*start..*end]),
                Segment::Blob(blob) => IoSlice::new(blob),
            }));
            let mut remaining = &mut slices[..];
            while !remaining.is_empty() {
                match writer.write_vectored(remaining) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(written) => IoSlice::advance_slices(&mut remaining, written),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Empties the batch, keeping its buffer's capacity (up to 4 MiB, so that one huge snapshot
    /// chunk does not pin memory forever).
    pub fn clear(&mut self) {
        if self.buffer.capacity() > 4 << 20 {
            self.buffer = AlignedVec::with_capacity(64 << 10);
        } else {
            self.buffer.clear();
        }
        self.segments.clear();
        self.buffer_flushed = 0;
        self.bytes = 0;
        self.frames = 0;
        self.messages = 0;
        self.open = None;
        self.sent = 0;
    }

    /// The batch's bytes gathered into one vector (tests and benchmarks).
    pub fn to_vec(&mut self) -> Vec<u8> {
        self.close_record_frame();
        let mut out = Vec::with_capacity(self.bytes);
        self.flush_buffer_segment();
        self.write_segments(&mut out).expect("writing to a Vec cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, IoSlice, Write};

    use bytes::Bytes;

    use super::{BLOB_COPY_BYTES_MAX, SendBatch};
    use crate::frame::FrameKind;

    /// Takes at most `room` bytes, then would block until given more room.
    struct Trickle {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut written = 0;
            for buf in bufs {
                let take = buf.len().min(self.room - written);
                self.taken.extend_from_slice(&buf[..take]);
                written += take;
                if written == self.room {
                    break;
                }
            }
            self.room -= written;
            Ok(written)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_that_would_block_resumes_where_it_stopped_and_keeps_later_frames_in_order() {
        let blob = Bytes::from(vec![9u8; BLOB_COPY_BYTES_MAX * 3]);
        let mut expected = SendBatch::new();
        let mut batch = SendBatch::new();
        for target in [&mut expected, &mut batch] {
            target.push_frame(FrameKind::ClientResponse, 0, 1, b"first", 1 << 20).unwrap();
            target.push_frame(FrameKind::ClientResponse, 0, 1, &blob, 1 << 20).unwrap();
        }
        let mut out = Trickle { taken: Vec::new(), room: 7 };
        assert!(!batch.write_available(&mut out).unwrap(), "7 bytes taken, the rest waits");
        let unsent = batch.unsent_bytes();
        assert_eq!(unsent, batch.bytes() - 7);
        // Frames pushed while the write is stalled go after the rest.
        for target in [&mut expected, &mut batch] {
            target.push_frame(FrameKind::ClientResponse, 0, 1, b"later", 1 << 20).unwrap();
        }
        let mut step = 1;
        while !batch.write_available(&mut out).unwrap() {
            out.room = step;
            step = step * 3 + 1;
        }
        assert!(batch.is_empty(), "cleared once all is written");
        assert_eq!(out.taken, expected.to_vec());
    }
}
