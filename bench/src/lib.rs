//! The pieces shared by the `smr-bench` and `smr-load` binaries (and their tests): `admin` asks
//! nodes for status and metrics, `load` is the driver (closed and open loop), `keys` draws keys
//! (uniform or zipfian), `history` writes operation histories for linearizability checking,
//! `rng` is the seeded PRNG they all draw from, `cluster` starts and stops a local cluster of
//! real `smr node` processes (`node_settings` lays `--node-set` over their configs), and `signals` cleans that up on Ctrl-C.

pub mod admin;
pub mod cluster;
pub mod history;
pub mod keys;
pub mod load;
pub mod node_settings;
pub mod rng;
pub mod signals;
