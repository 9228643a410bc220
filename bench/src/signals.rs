//! SIGINT and SIGTERM: stop the nodes we started and remove their directory, then exit.
//!
//! Both signals are blocked in every thread (the mask is set before any thread starts and is
//! inherited) and taken synchronously by one thread with `sigwait`, so the clean-up runs as
//! ordinary code, not in a signal handler. A blocked mask survives `exec`, so child processes
//! unblock both before `exec` (`unblock_in_child`): the nodes must see SIGTERM as usual.

use std::path::PathBuf;
use std::sync::Mutex;

/// What to clean up if a signal arrives now: registered by the local cluster while it runs.
#[derive(Debug)]
pub struct Cleanup {
    pub pids: Vec<u32>,
    pub dir: PathBuf,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

/// A script running now (smr-bench's `--peers`), to be sent SIGTERM and waited for: it stops
/// what it started itself.
static SCRIPT: Mutex<Option<u32>> = Mutex::new(None);

/// Registers the process id of a running script (`None` when it has ended).
pub fn register_script(pid: Option<u32>) {
    *SCRIPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = pid;
}

/// Registers what a signal must clean up (replacing any earlier registration).
pub fn register(cleanup: Cleanup) {
    *CLEANUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cleanup);
}

/// Withdraws the registration: the caller cleans up itself. Blocks while a signal's clean-up
/// is running (which then exits the process).
pub fn unregister() {
    CLEANUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use, and sigaddset
    // only fails for invalid signal numbers, which these are not.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Unblocks SIGINT and SIGTERM; for `CommandExt::pre_exec`, between fork and exec, so it makes
/// only async-signal-safe calls and allocates nothing.
pub fn unblock_in_child() -> std::io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::from_raw_os_error(rc)) }
}

/// Blocks SIGINT and SIGTERM in the calling thread (call it before starting any other) and
/// starts the thread that waits for them.
pub fn install() -> std::io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid place for the result.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc == 0 {
                clean_up_and_exit(signal);
            }
        }
    })?;
    Ok(())
}

fn clean_up_and_exit(signal: libc::c_int) -> ! {
    let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
    eprintln!("\nsmr-bench: {name}: stopping the nodes and removing their directory");
    if let Some(pid) = SCRIPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
        eprintln!("smr-bench: waiting for the running script (pid {pid}) to clean up");
        // SAFETY: signalling and reaping our own child process. The main thread may be waiting
        // for it too; whichever waitpid returns first reaps it, the other gets ECHILD.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    // Held until exit, so the main thread cannot start cleaning up the same things.
    let mut guard = CLEANUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(cleanup) = guard.take() {
        for &pid in &cleanup.pids {
            // SAFETY: signalling and reaping our own child processes.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&cleanup.dir) {
            eprintln!("smr-bench: cannot remove {}: {error}", cleanup.dir.display());
        }
    }
    std::process::exit(128 + signal);
}
