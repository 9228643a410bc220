//! # smr-runtime: a running node
//!
//! It **owns** the pipeline that turns the parts into a node that serves clients: the stages
//! (sequencer + Raft core, log writer, apply; the transport's threads are the net stage), the
//! bounded queues between them, the data directory (identity, log, snapshots), the member
//! directory, and the per-stage metrics.
//!
//! It **must never**:
//! - send a message from `Ready::persisted_messages`, or answer a client, before the log reports
//!   the ready durable;
//! - block a stage on a queue that can be full without a bound on how long (every queue is
//!   bounded; backpressure reaches clients as `Busy`);
//! - spin when idle unless `pipeline.busy_poll` is set;
//! - start on a data directory of another cluster or node, or on an empty one without being told
//!   whether to found a cluster or join one.

mod apply_stage;
mod combining;
pub mod config;
pub mod config_file;
mod core_runner;
mod core_stage;
pub mod directory;
mod events;
mod handoff;
pub mod identity;
mod log_stage;
pub mod metrics;
mod node;
pub mod placement;
mod rebind;
pub mod snapshot;
mod snapshot_saver;
mod stage_runner;
mod status;

pub use apply_stage::EXIT_CODE_BAD_ENTRY;
pub use config::{ConfigError, InitialState, Member, NodeConfig, PipelineConfig};
pub use config_file::ConfigFileError;
pub use events::NodeEvents;
pub use handoff::Fatal;
pub use identity::{Identity, IdentityError};
pub use log_stage::{EXIT_CODE_BAD_SNAPSHOT, EXIT_CODE_NO_SPACE};
pub use metrics::{
    Counter, CounterValues, Counters, Histo, HistogramReport, MetricsConfig, MetricsHub, MetricsReport, ReportError,
    StageRecorder, StageReport, Unit,
};
pub use node::{EXIT_CODE_CONFIG, EXIT_CODE_UNAVAILABLE, Node, StartError, StartMode, StopHandle};
pub use placement::{Placement, Stage};
