//! `smr put|get|del` and `smr ctl ...`: one request to a running cluster, with redirects to the
//! leader and retries until `--timeout-ms`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use smr_apply::{KvCommand, KvResult};
use smr_net::{AdminRequest, Client, ClientConfig, ClientError, Consistency, RequestBody, ResponseBody};

#[derive(clap::Args, Debug)]
pub(crate) struct ClusterArgs {
    /// Client addresses of the cluster's nodes, comma-separated (any of them; requests follow
    /// redirects to the leader).
    #[arg(long, env = "SMR_CLUSTER", value_delimiter = ',', required = true)]
    cluster: Vec<SocketAddr>,
    /// Give up after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
pub(crate) struct PutArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    key: String,
    value: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    key: String,
    /// Read whatever the node has applied, without a read barrier (may be stale).
    #[arg(long, conflicts_with = "lease")]
    stale: bool,
    /// Read under the leader lease (needs raft.lease_reads on the nodes).
    #[arg(long)]
    lease: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DelArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    key: String,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CtlArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CtlCommand {
    /// The node's role, term, indexes, membership and state hash (JSON), from the first address.
    Status,
    /// The node's stage metrics (HDR percentiles and counters), from the first address.
    Stats {
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Add a node (as a voter, or a learner with --learner); promote a learner by adding it again.
    AddNode {
        id: u64,
        /// `<peer address>,<client address>` of the new node (may be omitted to promote a learner).
        #[arg(default_value = "")]
        addresses: String,
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (the leader too: it steps down once the change commits).
    RemoveNode { id: u64 },
    /// Hand leadership to a node.
    TransferLeader { id: u64 },
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("smr: {message}");
    ExitCode::from(1)
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// A session id for this invocation: a command is retried under the same session and sequence,
/// so the cluster applies it once however many times it is sent.
fn session_id() -> u64 {
    let mut seed = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `seed`, which it owns.
    unsafe { libc::getrandom((&raw mut seed).cast(), 8, 0) };
    seed | 1
}

/// Sends `body` until an answer other than a redirect or `Busy` comes, or the time runs out.
/// `follow` is false for requests meant for the first node itself (status, stats).
fn request(args: &ClusterArgs, body: RequestBody, follow: bool) -> Result<ResponseBody, String> {
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
    let config = ClientConfig { response_ms: args.timeout_ms.min(5_000), ..ClientConfig::default() };
    let addresses = if follow { args.cluster.clone() } else { args.cluster[..1].to_vec() };
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let mut client = match Client::connect(&addresses, config.clone()) {
            Ok(client) => client,
            Err(error) => {
                last = error.to_string();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let outcome = if follow {
            client.call(body.clone())
        } else {
            client.submit(body.clone()).and_then(|_| client.recv().map(|r| r.body))
        };
        match outcome {
            // Only reached with `follow` false (`call` retries `Busy` itself).
            Ok(ResponseBody::Busy) => last = "Busy".into(),
            Ok(answer) => return Ok(answer),
            Err(ClientError::Exhausted { last: answer, .. }) => last = format!("{answer:?}"),
            Err(error) => last = error.to_string(),
        }
        // An election in progress: give it time.
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no answer within {} ms (last: {last})", args.timeout_ms))
}

fn kv_answer(answer: Result<ResponseBody, String>) -> ExitCode {
    match answer {
        Ok(ResponseBody::Ok(bytes)) => match KvResult::decode(&bytes) {
            Ok(KvResult::Done) => {
                print("OK");
                ExitCode::SUCCESS
            }
            Ok(KvResult::Value(Some(value))) => {
                print(&String::from_utf8_lossy(&value));
                ExitCode::SUCCESS
            }
            Ok(KvResult::Value(None)) => {
                eprintln!("(not found)");
                ExitCode::from(1)
            }
            Ok(KvResult::Error(error)) => fail(format!("refused: {error}")),
            Ok(other) => {
                print(&format!("{other:?}"));
                ExitCode::SUCCESS
            }
            Err(error) => fail(format!("bad result from the node: {error}")),
        },
        Ok(other) => fail(format!("{other:?}")),
        Err(error) => fail(error),
    }
}

fn command(args: &ClusterArgs, payload: bytes::Bytes) -> Result<ResponseBody, String> {
    request(args, RequestBody::Command { session_id: session_id(), sequence: 1, payload }, true)
}

pub(crate) fn put(args: PutArgs) -> ExitCode {
    let payload = KvCommand::Put { key: args.key.as_bytes(), value: args.value.as_bytes() }.encode();
    kv_answer(command(&args.cluster, payload))
}

pub(crate) fn del(args: DelArgs) -> ExitCode {
    let payload = KvCommand::Delete { key: args.key.as_bytes() }.encode();
    kv_answer(command(&args.cluster, payload))
}

pub(crate) fn get(args: GetArgs) -> ExitCode {
    let consistency = match (args.stale, args.lease) {
        (true, _) => Consistency::Stale,
        (_, true) => Consistency::Lease,
        _ => Consistency::Linearizable,
    };
    let payload = KvCommand::Get { key: args.key.as_bytes() }.encode();
    // A stale read is served by the node asked; the others go to the leader.
    let follow = consistency != Consistency::Stale;
    kv_answer(request(&args.cluster, RequestBody::Read { consistency, payload }, follow))
}

pub(crate) fn ctl(args: CtlArgs) -> ExitCode {
    let (admin, follow) = match &args.command {
        CtlCommand::Status => (AdminRequest::Status, false),
        CtlCommand::Stats { .. } => (AdminRequest::Stats, false),
        CtlCommand::AddNode { id, addresses, learner } => {
            (AdminRequest::AddNode { node_id: *id, address: addresses.clone(), learner: *learner }, true)
        }
        CtlCommand::RemoveNode { id } => (AdminRequest::RemoveNode { node_id: *id }, true),
        CtlCommand::TransferLeader { id } => (AdminRequest::TransferLeader { node_id: *id }, true),
    };
    match request(&args.cluster, RequestBody::Admin(admin), follow) {
        Ok(ResponseBody::Ok(bytes)) => {
            if let CtlCommand::Stats { json: false } = args.command {
                match smr_runtime::metrics::MetricsReport::from_json(&bytes) {
                    Ok(report) => print(&report.to_text()),
                    Err(error) => return fail(format!("bad stats from the node: {error}")),
                }
            } else {
                print(&String::from_utf8_lossy(&bytes));
            }
            ExitCode::SUCCESS
        }
        Ok(other) => fail(format!("{other:?}")),
        Err(error) => fail(error),
    }
}
