//! Loopback ports for test nodes (hidden from the docs; used by the multi-node tests).
//!
//! A port picked by binding `:0` and released could be handed out again before the node binds
//! it: as the source port of some connection (another node of the same test dialing its peers),
//! or to another cluster of the same test binary, whose nodes would then talk to this one's. So
//! ports come from below the kernel's ephemeral range, where no connection's source port lands,
//! and from a counter of this process, so that no two clusters of one binary share one.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `n` loopback ports free now, none handed out before by this process.
///
/// # Panics
/// When this process has used up every port below the ephemeral range.
pub fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000_u32, ephemeral_low.clamp(10_000, 65_536));
    let span = high - low;
    if span < 1_000 {
        // No room below the ephemeral range: fall back to the kernel's pick.
        let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
        return listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect();
    }
    // Test binaries run one after another; each starts at its own place in the range.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let taken = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(taken < span, "the test binary used up every port below {high}");
        let port = u16::try_from(low + (start + taken) % span).expect("below 65536");
        // In use by something else on this machine: skip it.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// One port, as [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports = super::free_ports(50);
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 50);
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768);
        if ephemeral_low >= 11_000 {
            assert!(ports.iter().all(|&p| (10_000..ephemeral_low).contains(&p)), "{ports:?}");
        }
        assert!(ports.iter().all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()));
    }
}
