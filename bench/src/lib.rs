//! The load-generation pieces shared by the `smr-bench` and `smr-load` binaries: `admin` asks
//! nodes for status and metrics, `load` is the driver (closed and open loop), `keys` draws keys
//! (uniform or zipfian), `history` writes operation histories for linearizability checking,
//! `rng` is the seeded PRNG they all draw from.

pub mod admin;
pub mod history;
pub mod keys;
pub mod load;
pub mod rng;
