//! A hook the transport's threads call once they have handed work to the runtime.
//!
//! Received Raft messages and client requests go into bounded channels. Without a hook the
//! consumer (the runtime's core) learns of them by blocking on those channels, which costs a
//! thread wake-up per hand-off. With one, the thread that delivered the work calls it right
//! after, so that the runtime can run the consumer there and then when it is idle (see the
//! runtime's `core_runner`). The hook must not wait for the transport (it runs on a reader
//! thread or the client event loop); the time it takes (the runtime's rounds, a disk write) is
//! not counted against the peer's idle deadline.

use std::sync::{Arc, OnceLock};

type Hook = Box<dyn Fn() + Send + Sync>;

/// Set at most once; cheap to call when unset. Clones share the hook.
#[derive(Clone, Default)]
pub(crate) struct ArrivalHook(Arc<OnceLock<Hook>>);

impl ArrivalHook {
    /// Installs `hook`. Returns false (and keeps the first) when one is already set.
    pub(crate) fn set(&self, hook: impl Fn() + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(hook)).is_ok()
    }

    /// Calls the hook, if one is set.
    pub(crate) fn call(&self) {
        if let Some(hook) = self.0.get() {
            hook();
        }
    }
}

impl std::fmt::Debug for ArrivalHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrivalHook").field("set", &self.0.get().is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_first_hook_set_is_called_by_every_clone() {
        let hook = ArrivalHook::default();
        hook.call(); // unset: nothing happens
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        assert!(hook.set(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        assert!(!hook.set(|| panic!("a second hook is refused, not called")));
        let clone = hook.clone();
        hook.call();
        clone.call();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
