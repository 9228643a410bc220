//! Counters of everything the transport sends, receives, drops and refuses.
//!
//! Each is a relaxed atomic bumped where the event happens; [`NetStats`] is a plain snapshot of
//! them for the runtime's metrics and `smr ctl stats`. Relaxed ordering is enough: the counters
//! order nothing, they are read for display.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// The live counters, shared by the transport's threads.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
            /// Bounds the warning lines of refusals and disconnects.
            pub(crate) log_limit: LogLimit,
        }

        /// A snapshot of the counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct NetStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> NetStats {
                NetStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl NetStats {
            /// Every counter by name, for printing.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            fn fields_mut(&mut self) -> Vec<(&'static str, &mut u64)> {
                vec![$((stringify!($name), &mut self.$name),)*]
            }
        }
    };
}

counters! {
    /// Messages handed to a peer connection's writer.
    messages_sent,
    /// Messages decoded, validated and handed to the consumer.
    messages_received,
    frames_sent,
    frames_received,
    bytes_sent,
    bytes_received,
    /// `writev` batches (several frames each, ideally).
    write_batches,
    /// Write batches a sender wrote itself, finding the link idle (no hand-off to its thread).
    direct_writes,
    /// Dropped because the peer's send queue was full.
    send_dropped_queue_full,
    /// Dropped because the destination is not a known peer.
    send_dropped_unknown_peer,
    /// Dropped because the message does not fit `frame_bytes_max`.
    send_dropped_too_large,
    /// Dropped because the connection failed while they were in a write batch.
    send_dropped_connection_lost,
    connects_attempted,
    connects_failed,
    /// Peer connections that completed the handshake, both directions.
    connections_established,
    /// Connections closed at accept because `connections_max` or `handshakes_max` was reached.
    connections_refused_limit,
    handshake_refused_version,
    handshake_refused_foreign_cluster,
    handshake_refused_unknown_node,
    handshake_refused_duplicate_node,
    handshake_refused_wrong_target,
    handshake_refused_bad_proof,
    handshake_refused_malformed,
    handshake_refused_timeout,
    /// Peers whose replicated settings differ from ours.
    handshake_refused_settings,
    /// Our own handshake attempts that the other side refused.
    handshake_refused_by_peer,
    /// Connections closed for bytes that were not a valid frame or message.
    disconnects_garbage,
    /// Connections closed because nothing arrived within `idle_timeout_ms`.
    disconnects_idle,
    /// Connections closed because a frame took longer than `frame_receive_ms_max` (slowloris).
    disconnects_slow_frame,
    /// Connections closed by an I/O error or the other side.
    disconnects_io,
    /// Valid messages whose `from` is not the authenticated peer or whose `to` is not us.
    messages_misaddressed,
    /// Times a reader waited because the inbound queue was full (backpressure).
    inbound_full_waits,
    client_requests,
    client_responses,
    /// Client requests answered `Busy` by the transport itself (queue or per-connection limit).
    client_busy,
    /// Client requests answered `InvalidRequest`.
    client_invalid,
    client_connections_accepted,
}

/// Reads a transport's counters from anywhere, for as long as it is held (the counters outlive
/// the transport's threads). Made by [`crate::PeerTransport::stats_reader`] and
/// [`crate::ClientServer::stats_reader`].
#[derive(Clone)]
pub struct StatsReader(pub(crate) std::sync::Arc<dyn Fn() -> NetStats + Send + Sync>);

impl StatsReader {
    /// A reader of whatever `read` returns (the transports make their own; tests make others).
    pub fn new(read: impl Fn() -> NetStats + Send + Sync + 'static) -> StatsReader {
        StatsReader(std::sync::Arc::new(read))
    }

    pub fn read(&self) -> NetStats {
        (self.0)()
    }
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsReader").finish_non_exhaustive()
    }
}

impl std::ops::Add for NetStats {
    type Output = NetStats;

    /// Counter by counter: the peer transport's and the client server's, for one table.
    fn add(self, other: NetStats) -> NetStats {
        let mut sum = self;
        for ((_, total), (_, value)) in sum.fields_mut().into_iter().zip(other.fields()) {
            *total += value;
        }
        sum
    }
}

#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[inline]
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// Warning lines allowed per second per transport. A flood of garbage connections is counted
/// in full but logged at this rate, so that an attacker cannot fill the disk with log lines.
const LOG_LINES_PER_SECOND_MAX: u64 = 20;

/// A per-second budget of log lines, shared by a transport's threads.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Seconds since `epoch` of the current window, and lines logged in it.
    window: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl LogLimit {
    /// Whether one more line may be logged now. When lines were suppressed, the number is
    /// returned with the first line allowed after them, so the log says how many were cut.
    pub(crate) fn allow(&self) -> Option<u64> {
        let epoch = *self.epoch.get_or_init(std::time::Instant::now);
        let second = epoch.elapsed().as_secs() + 1;
        if self.window.swap(second, Ordering::Relaxed) != second {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < LOG_LINES_PER_SECOND_MAX {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_limited_per_second_and_the_cut_is_reported() {
        let limit = LogLimit::default();
        let allowed = (0..100).filter(|_| limit.allow().is_some()).count() as u64;
        assert_eq!(allowed, LOG_LINES_PER_SECOND_MAX);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(limit.allow(), Some(100 - LOG_LINES_PER_SECOND_MAX));
    }
}
