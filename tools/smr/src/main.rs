//! The `smr` command.

use std::process::ExitCode;

use clap::Parser;

mod log_cmd;

/// Run a node, operate a cluster, send commands, inspect a data directory.
#[derive(Parser, Debug)]
#[command(name = "smr", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Inspect a stopped node's log offline.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Log(command) => log_cmd::run(command),
    }
}
