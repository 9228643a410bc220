//! The chaos suite of smr: real `smr node` processes, each in its own network namespace, killed,
//! paused, partitioned, slowed and reconfigured while clients write, with every history checked.
//!
//! - [`fabric`]: the hosts' network (namespaces, veth pairs, a bridge; nft, tc and NFQUEUE
//!   faults).
//! - [`delay`]: the delayer behind an NFQUEUE queue (`smr-chaos delay`), delay and reordering of
//!   real packets on a kernel without `sch_netem`.
//! - [`cluster`]: the node processes on those hosts, their faults and their status.
//! - [`workload`]: the clients, recording a history in smr-load's format.
//! - [`check`]: linearizability (smr-lincheck) and lost writes.
//! - [`nemesis`]: the faults, and a run that injects them and checks what it saw.
//!
//! The tests are in `tests/chaos.rs`; `smr-chaos soak` runs random schedules for as long as asked
//! and `smr-chaos perf` measures throughput under faults (see the binary's help).

pub mod check;
pub mod cluster;
pub mod delay;
pub mod fabric;
pub mod nemesis;
pub mod workload;
