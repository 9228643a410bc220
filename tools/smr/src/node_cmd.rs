//! `smr node`: run one node until SIGTERM or SIGINT, then drain and stop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use smr_apply::KvStore;
use smr_runtime::{InitialState, Node, config_file};

#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// The node's TOML config (see engine/runtime/node.example.toml).
    #[arg(long)]
    config: PathBuf,
    /// On an empty data directory: found a new cluster of the configured members.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// On an empty data directory: start empty and wait for the leader to add this node.
    #[arg(long)]
    join: bool,
    /// Write the metrics as JSON to this file at shutdown (they are also logged).
    #[arg(long)]
    metrics_out: Option<PathBuf>,
}

/// Blocks SIGTERM and SIGINT in every thread (threads inherit the mask of the thread that
/// starts them, so this runs first) and returns the set, to be waited for with `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only write to it and to
    // this thread's signal mask.
    unsafe {
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
    }
    set
}

/// The log's test-only fault-injection variables: refused (as a config error, before anything is
/// opened) by a binary built without the `fault-injection` feature; announced loudly by one
/// built with it.
fn check_fault_injection() -> Result<(), String> {
    let set: Vec<&str> = [smr_log::FAULT_SYNC_JOURNAL_ENV, smr_log::FAULT_ACK_BEFORE_FSYNC_ENV]
        .into_iter()
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    if set.is_empty() {
        return Ok(());
    }
    if !smr_log::FAULT_INJECTION_BUILT {
        return Err(format!(
            "{} set, but this smr binary was built without fault-injection (a test-only feature); unset it",
            set.join(" and ")
        ));
    }
    tracing::warn!("STORAGE FAULT INJECTION ACTIVE ({}): a test-only mode, never for real data", set.join(", "));
    Ok(())
}

pub(crate) fn run(args: NodeArgs) -> ExitCode {
    let signals = block_stop_signals();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(error) = check_fault_injection() {
        eprintln!("smr node: {error}");
        return ExitCode::from(smr_runtime::EXIT_CODE_CONFIG as u8);
    }
    let mut config = match config_file::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("smr node: {error}");
            return ExitCode::from(smr_runtime::EXIT_CODE_CONFIG as u8);
        }
    };
    if args.bootstrap {
        config.initial_state = InitialState::New;
    }
    if args.join {
        config.initial_state = InitialState::Join;
    }
    let kv = KvStore::new(config.kv);
    let node = match Node::start(config, kv) {
        Ok(node) => node,
        Err(error) => {
            eprintln!("smr node: {error}");
            return ExitCode::from(error.exit_code() as u8);
        }
    };
    tracing::info!(client = %node.client_address(), peer = %node.peer_address(), mode = ?node.mode(), "node running");
    let stop = node.stop_handle();
    std::thread::Builder::new()
        .name("smr-signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: `signals` is an initialised set and `signal` a valid out-parameter.
            unsafe { libc::sigwait(&raw const signals, &raw mut signal) };
            tracing::info!(signal, "stop signal: draining");
            stop.stop();
        })
        .expect("can start the signal thread");
    while !node.is_stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = node.metrics();
    let outcome = node.shutdown();
    tracing::info!("final metrics:\n{}", report.to_text());
    if let Some(path) = args.metrics_out
        && let Err(error) = std::fs::write(&path, report.to_json())
    {
        eprintln!("smr node: cannot write {}: {error}", path.display());
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            eprintln!("smr node: stopped: {}", fatal.message);
            ExitCode::from(fatal.exit_code.clamp(1, 255) as u8)
        }
    }
}
