//! Background work that leaves room for the log's group commits: bulk writes paced on the disk,
//! and background threads at a lower CPU priority.
//!
//! A segment's zero-fill (64 MiB) or a snapshot file (15 MB for the benchmark's state) written
//! in one go and then synced puts all of it in the disk's queue at once, and every `fdatasync`
//! of the log issued meanwhile waits behind it: with three nodes at full load on the development
//! machine, log fsyncs took up to 318 ms (p99.99 258 ms) against a median of 0.7 ms, and those
//! were the benchmark's p99.9 and maximum latencies. Written here, the bytes go out one chunk at
//! a time: each chunk is written back and waited for (`sync_file_range`) before the next is
//! written, so at most one chunk of bulk data is ahead of a log sync. The caller still syncs the
//! file at the end, which is then quick.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

/// How much lower than the pipeline's threads a background thread's CPU priority is (a nice
/// value): with three nodes sharing two cores, a snapshot serialized at full priority on every
/// node at once held the apply threads back for over 100 ms.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`BACKGROUND_NICE`] (Linux gives each thread its
/// own nice value). Failure is harmless and ignored: the thread then runs at normal priority.
pub fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread's own id.
    unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, current + BACKGROUND_NICE);
    }
}

/// Bytes of bulk data written and waited for at a time.
pub const PACED_CHUNK_BYTES: usize = 256 << 10;

/// Writes `bytes` at the file's current position, which the caller gives as `offset`, chunk by
/// chunk, each written back to the disk before the next (see the module doc).
///
/// # Errors
/// The first write or writeback error.
pub fn write_paced(file: &mut File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let mut at = offset;
    for chunk in bytes.chunks(PACED_CHUNK_BYTES) {
        file.write_all(chunk)?;
        write_back(file, at, chunk.len())?;
        at += chunk.len() as u64;
    }
    Ok(())
}

/// Writes `len` zero bytes at the file's current position, `offset`, paced as [`write_paced`].
///
/// # Errors
/// The first write or writeback error.
pub fn write_zeros_paced(file: &mut File, offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; PACED_CHUNK_BYTES];
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let chunk = (end - at).min(PACED_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        write_back(file, at, chunk)?;
        at += chunk as u64;
    }
    Ok(())
}

/// Starts writeback of `len` bytes at `offset` and waits for it (not a sync: nothing is made
/// durable, no metadata is written, the disk's cache is not flushed).
fn write_back(file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain system call on a file descriptor this function borrows for its duration.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn paced_writes_put_every_byte_where_a_plain_write_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"head").unwrap();
        let body: Vec<u8> = (0..PACED_CHUNK_BYTES * 2 + 12_345).map(|i| (i % 251) as u8).collect();
        write_paced(&mut file, 4, &body).unwrap();
        write_zeros_paced(&mut file, 4 + body.len() as u64, PACED_CHUNK_BYTES as u64 + 7).unwrap();
        drop(file);
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 4 + body.len() + PACED_CHUNK_BYTES + 7);
        assert_eq!(&back[..4], b"head");
        assert_eq!(&back[4..4 + body.len()], &body[..]);
        assert!(back[4 + body.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_background_thread_runs_at_a_lower_priority() {
        // SAFETY: reading the calling thread's own priority.
        let read = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let (before, after) = std::thread::spawn(move || {
            let before = read();
            lower_thread_priority();
            (before, read())
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + BACKGROUND_NICE).min(19));
        assert_eq!(read(), before, "only the thread that asked is lowered");
    }

    #[test]
    fn a_writeback_error_is_reported() {
        // A file opened read-only cannot be written: the first chunk's error comes back.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        File::create(&path).unwrap();
        let mut read_only = File::open(&path).unwrap();
        assert!(write_paced(&mut read_only, 0, b"x").is_err());
        assert!(write_zeros_paced(&mut read_only, 0, 1).is_err());
    }
}
