//! Socket writes that never raise SIGPIPE.
//!
//! Writing to a TCP connection the peer has closed raises SIGPIPE, whose default action kills
//! the process. Rust programs ignore it from `main`, but a C program embedding smr (libsmr) keeps
//! the default, so every write smr makes to a socket goes through `send`/`sendmsg` with
//! `MSG_NOSIGNAL`: a closed connection is then an `EPIPE` error like any other, on that
//! connection only.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// A writer over a borrowed stream whose writes never raise SIGPIPE. Write timeouts set on the
/// stream (`SO_SNDTIMEO`) apply as usual.
/// Blocking writes to a stream, without SIGPIPE.
#[derive(Debug)]
pub(crate) struct NoSignal<'a>(pub(crate) &'a TcpStream);

/// Writes that never block either: a full socket buffer is a `WouldBlock` error, whatever the
/// socket's own blocking mode (so that one thread may wait in a blocking read on it meanwhile).
#[derive(Debug)]
pub(crate) struct NoWait<'a>(pub(crate) &'a TcpStream);

impl Write for NoSignal<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf, libc::MSG_NOSIGNAL)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs, libc::MSG_NOSIGNAL)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for NoWait<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(stream: &TcpStream, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice of `buf.len()` bytes for the duration of the call, and the
    // descriptor is kept open by the borrowed stream.
    let sent = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

fn send_vectored(stream: &TcpStream, bufs: &[IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix.
    header.msg_iov = bufs.as_ptr().cast_mut().cast();
    header.msg_iovlen = bufs.len().min(libc::c_int::MAX as usize) as _;
    // SAFETY: the header points at `bufs`, live and unmodified for the duration of the call (the
    // kernel only reads it), and the descriptor is kept open by the borrowed stream.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &header, flags) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::NoSignal;

    /// Set in the child process that runs the body with SIGPIPE at its default action.
    const CHILD_ENV: &str = "SMR_NET_NOSIGNAL_CHILD";

    #[test]
    fn writes_reach_the_peer_and_a_closed_peer_is_an_error_not_a_signal() {
        if std::env::var_os(CHILD_ENV).is_none() {
            // The body restores SIGPIPE's default action, as a C host has it, which must not
            // leak into the other tests of this process: it runs in a child of its own.
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "nosignal::tests::writes_reach_the_peer_and_a_closed_peer_is_an_error_not_a_signal"])
                .env(CHILD_ENV, "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child died or failed: {status:?}");
            return;
        }
        // SAFETY: setting a signal disposition to SIG_DFL has no memory preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut writer = NoSignal(&stream);
        writer.write_all(b"one").unwrap();
        let sent = writer.write_vectored(&[IoSlice::new(b"two"), IoSlice::new(b"three")]).unwrap();
        assert_eq!(sent, 8);
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"onetwothree");
        drop(peer);
        // The first write after the close may still be accepted (the RST comes back after it);
        // a later one fails with EPIPE or ECONNRESET, and the process lives on.
        let mut failed = None;
        for _ in 0..100 {
            if let Err(error) = writer.write_all(&[0u8; 4096]) {
                failed = Some(error);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let error = failed.expect("writes to a closed connection fail");
        assert!(matches!(error.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)), "unexpected error: {error}");
    }
}
