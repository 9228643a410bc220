//! Which stage runs on which core: resolved once against the machine, applied by one function.
//!
//! A [`Placement`] names a core for each stage, or none (the stage's thread floats wherever the
//! kernel puts it). Several stages may share a core: on the 2-core development box three nodes
//! of four stages each share two cores, and every stage blocks when idle, so sharing costs only
//! wake-up latency.

use crate::config::ConfigError;

/// The stages of the pipeline that run on threads of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Sequencer and Raft core.
    Core,
    /// Log writer: io_uring writes and group-commit fdatasync.
    Log,
    /// Apply: committed batches into the state machine, results to clients.
    Apply,
    /// Client connections and peer links (the transport's threads inherit this placement).
    Net,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Core, Stage::Log, Stage::Apply, Stage::Net];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Core => "core",
            Stage::Log => "log",
            Stage::Apply => "apply",
            Stage::Net => "net",
        }
    }
}

/// A core index per stage (`None`: not pinned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub core: Option<usize>,
    pub log: Option<usize>,
    pub apply: Option<usize>,
    pub net: Option<usize>,
}

/// Most cores a placement may name; far above any machine this runs on, it bounds the check.
pub const CORE_INDEX_MAX: usize = 4095;

impl Placement {
    pub fn of(&self, stage: Stage) -> Option<usize> {
        match stage {
            Stage::Core => self.core,
            Stage::Log => self.log,
            Stage::Apply => self.apply,
            Stage::Net => self.net,
        }
    }

    /// Checks the indexes are plausible; whether the machine has them is checked when pinning.
    ///
    /// # Errors
    /// The first stage whose core index is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for stage in Stage::ALL {
            if let Some(index) = self.of(stage)
                && index > CORE_INDEX_MAX
            {
                return Err(ConfigError::new(
                    format!("placement.{}", stage.name()),
                    format!("core {index} is beyond {CORE_INDEX_MAX}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks every named core exists on this machine.
    ///
    /// # Errors
    /// The first stage placed on a core the machine does not have.
    pub fn check_machine(&self) -> Result<(), ConfigError> {
        let available = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
        for stage in Stage::ALL {
            if let Some(index) = self.of(stage)
                && index >= available
            {
                return Err(ConfigError::new(
                    format!("placement.{}", stage.name()),
                    format!(
                        "core {index} does not exist: this machine has {available} core(s) available to this process"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Pins the calling thread according to the placement of `stage`. The one place the runtime
    /// sets CPU affinity.
    pub fn pin_current(&self, stage: Stage) {
        let Some(index) = self.of(stage) else { return };
        let pinned = core_affinity::get_core_ids()
            .and_then(|ids| ids.into_iter().nth(index))
            .is_some_and(core_affinity::set_for_current);
        if pinned {
            tracing::debug!(stage = stage.name(), core = index, "stage pinned");
        } else {
            tracing::warn!(stage = stage.name(), core = index, "could not pin stage; it runs unpinned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_the_machine_lacks_is_named() {
        let placement = Placement { apply: Some(CORE_INDEX_MAX), ..Placement::default() };
        let error = placement.check_machine().unwrap_err();
        assert_eq!(error.field, "placement.apply");
        let placement = Placement { log: Some(CORE_INDEX_MAX + 1), ..Placement::default() };
        assert_eq!(placement.validate().unwrap_err().field, "placement.log");
    }
}
