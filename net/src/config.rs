//! Every limit of the transport and the client protocol, in one struct, validated at start-up.

use std::time::Duration;

use thiserror::Error;

use crate::frame::FRAME_HEADER_BYTES;

/// Limits and timings of the transport. Every length read from the network is checked against
/// one of these before anything is allocated for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Largest frame on the wire, header included. A frame announcing more is garbage: the
    /// connection is closed and counted. It also bounds one coalesced write.
    pub frame_bytes_max: usize,
    /// Bytes asked of the kernel per `read`; the receive buffer grows past it only to hold one
    /// frame of at most `frame_bytes_max`.
    pub read_bytes_max: usize,
    /// The same for client connections, which are many and mostly small: each holds up to a
    /// few buffers of this size while its requests are in flight.
    pub client_read_bytes_max: usize,
    /// Messages waiting to be sent to one peer. When full, a new message is dropped and counted.
    pub peer_queue_messages_max: usize,
    /// Bytes (as counted by `MessageBody::size_bytes`) waiting to be sent to one peer. When a
    /// message would pass it, it is dropped and counted, so that 4096 queued 1 MiB appends to a
    /// dead peer cannot hold 4 GiB.
    pub peer_queue_bytes_max: usize,
    /// Batches of received messages waiting for the consumer. When full, readers wait (TCP
    /// backpressure reaches the sender, whose own queue then drops).
    pub inbound_batches_max: usize,
    /// Connections (peers in handshake plus clients) one listener holds at once; more are closed
    /// on accept and counted.
    pub connections_max: usize,
    /// Handshakes in progress at once on the peer listener.
    pub handshakes_max: usize,
    /// Bytes of client requests handed on and not yet answered, per connection. Above it a new
    /// request is answered `Busy` at once.
    pub client_pending_bytes_max: usize,
    /// Requests handed on and not yet answered, per client connection. Above it: `Busy`.
    pub client_inflight_max: usize,
    /// Time a handshake may take, from accept or connect to the last proof.
    pub handshake_ms: u64,
    /// A client connection on which nothing at all arrives for this long is closed.
    pub idle_timeout_ms: u64,
    /// A peer connection on which nothing at all arrives for this long is closed and dialed
    /// again. Peers send keepalives every `keepalive_ms`, so only a dead link is this quiet; it
    /// is short so that a link silenced by a partition (whose TCP retransmissions back off to
    /// seconds) is replaced soon after the partition heals.
    pub peer_idle_timeout_ms: u64,
    /// A frame whose first byte has arrived must be complete within this time (slowloris).
    pub frame_receive_ms_max: u64,
    /// A peer connection with nothing to send sends a keepalive after this long, so that the
    /// other side's `peer_idle_timeout_ms` only fires on a dead link.
    pub keepalive_ms: u64,
    /// First reconnect delay; doubled after every failure up to `reconnect_ms_max`, with jitter.
    pub reconnect_ms_min: u64,
    pub reconnect_ms_max: u64,
    /// A blocking write that makes no progress for this long closes the connection (a peer that
    /// stopped reading).
    pub write_timeout_ms: u64,
    /// Seed of the PRNG that jitters reconnect delays. No global RNG is used.
    pub seed: u64,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            frame_bytes_max: 16 << 20,
            read_bytes_max: 256 << 10,
            client_read_bytes_max: 64 << 10,
            peer_queue_messages_max: 4096,
            peer_queue_bytes_max: 64 << 20,
            inbound_batches_max: 1024,
            connections_max: 1024,
            handshakes_max: 64,
            client_pending_bytes_max: 64 << 20,
            client_inflight_max: 4096,
            handshake_ms: 2_000,
            idle_timeout_ms: 10_000,
            peer_idle_timeout_ms: 3_000,
            frame_receive_ms_max: 5_000,
            keepalive_ms: 1_000,
            reconnect_ms_min: 20,
            reconnect_ms_max: 2_000,
            write_timeout_ms: 5_000,
            seed: 0x5eed_5eed_5eed_5eed,
        }
    }
}

/// A field of [`NetConfig`] that is out of range, named so that the operator can fix it.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("net config: {field} {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: &'static str,
}

fn check(ok: bool, field: &'static str, reason: &'static str) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError { field, reason }) }
}

impl NetConfig {
    /// Checks every limit.
    ///
    /// # Errors
    /// The first field out of range, by name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Frame lengths travel as u32; 1 GiB keeps every sum of two lengths far from overflow.
        check(
            self.frame_bytes_max >= 4096 && self.frame_bytes_max <= 1 << 30,
            "frame_bytes_max",
            "must be between 4096 and 1 GiB",
        )?;
        check(self.frame_bytes_max.is_multiple_of(8), "frame_bytes_max", "must be a multiple of 8")?;
        check(
            self.read_bytes_max >= FRAME_HEADER_BYTES && self.read_bytes_max <= self.frame_bytes_max,
            "read_bytes_max",
            "must be between the frame header size and frame_bytes_max",
        )?;
        check(
            self.client_read_bytes_max >= FRAME_HEADER_BYTES && self.client_read_bytes_max <= self.frame_bytes_max,
            "client_read_bytes_max",
            "must be between the frame header size and frame_bytes_max",
        )?;
        check(self.peer_queue_messages_max >= 1, "peer_queue_messages_max", "must be at least 1")?;
        check(
            self.peer_queue_bytes_max >= self.frame_bytes_max,
            "peer_queue_bytes_max",
            "must be at least frame_bytes_max",
        )?;
        check(self.inbound_batches_max >= 1, "inbound_batches_max", "must be at least 1")?;
        check(self.connections_max >= 1, "connections_max", "must be at least 1")?;
        check(
            self.handshakes_max >= 1 && self.handshakes_max <= self.connections_max,
            "handshakes_max",
            "must be between 1 and connections_max",
        )?;
        check(
            self.client_pending_bytes_max >= self.frame_bytes_max,
            "client_pending_bytes_max",
            "must be at least frame_bytes_max",
        )?;
        check(self.client_inflight_max >= 1, "client_inflight_max", "must be at least 1")?;
        check(self.handshake_ms >= 1, "handshake_ms", "must be at least 1")?;
        check(
            self.keepalive_ms >= 1 && self.keepalive_ms < self.peer_idle_timeout_ms,
            "keepalive_ms",
            "must be at least 1 and below peer_idle_timeout_ms",
        )?;
        check(
            self.frame_receive_ms_max >= 1 && self.frame_receive_ms_max <= self.idle_timeout_ms,
            "frame_receive_ms_max",
            "must be at least 1 and at most idle_timeout_ms",
        )?;
        check(self.reconnect_ms_min >= 1, "reconnect_ms_min", "must be at least 1")?;
        check(self.reconnect_ms_max >= self.reconnect_ms_min, "reconnect_ms_max", "must be at least reconnect_ms_min")?;
        check(self.write_timeout_ms >= 1, "write_timeout_ms", "must be at least 1")?;
        Ok(())
    }

    pub(crate) fn handshake(&self) -> Duration {
        Duration::from_millis(self.handshake_ms)
    }
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub(crate) fn peer_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_idle_timeout_ms)
    }
    pub(crate) fn frame_receive_max(&self) -> Duration {
        Duration::from_millis(self.frame_receive_ms_max)
    }
    pub(crate) fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }
    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        NetConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_field_is_named() {
        let config = NetConfig { keepalive_ms: 20_000, ..NetConfig::default() };
        assert_eq!(config.validate().unwrap_err().field, "keepalive_ms");
        let config = NetConfig { frame_bytes_max: 100, ..NetConfig::default() };
        assert_eq!(config.validate().unwrap_err().field, "frame_bytes_max");
        let config = NetConfig { reconnect_ms_max: 1, ..NetConfig::default() };
        assert_eq!(config.validate().unwrap_err().field, "reconnect_ms_max");
    }
}
