//! `smr log verify` and `smr log dump`: offline inspection of a stopped node's data directory.
//!
//! Both read the log through [`smr_log::ReadOnlyLog`], which runs the recovery a restart would
//! run but writes nothing (a torn tail is reported, not cut) and refuses a log a running node
//! has open. The node's log config is not stored in the data directory, so the inspection
//! config is rebuilt: cluster, node and group from the identity file, `segment_bytes` from the
//! first segment's header, and `entry_bytes_max` as large as a segment allows (the node's own
//! limit is at most that, so no record it wrote is mistaken for a bad one; a damaged length
//! field is still caught by the record CRC).
//!
//! Exit codes: 0 clean (a torn tail too: a restart cuts it, nothing durable is lost);
//! [`smr_log::EXIT_CODE_CORRUPTION`] for damage (a bad record in the middle of the log, a bad
//! segment or state file, an entry whose payload does not decode, a damaged identity file);
//! [`smr_log::EXIT_CODE_FOREIGN_DATA`] for files of another cluster, node or group;
//! [`smr_log::EXIT_CODE_IO`] for I/O errors and a log locked by a running node; 2 for usage
//! errors (no such directory, no identity file).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};
use smr_apply::KvCommand;
use smr_apply::batch::{self, ArchivedBatch};
use smr_log::{EntryRef, LogConfig, LogError, ReadOnlyLog, Verification};
use smr_raft::{ConfChange, ConfChangeOp, EntryKind, Index};
use smr_runtime::Identity;

/// Exit code for a command line that cannot be acted on (no such directory, not a data
/// directory), as clap uses for bad arguments.
const EXIT_CODE_USAGE: u8 = 2;
/// Most commands a batch read from the log may hold: the highest `batch_commands_max` a node
/// config accepts (the node's own value is not recorded in the data directory).
const BATCH_COMMANDS_MAX: usize = 1 << 20;
/// Most bytes of a key or value shown by `dump --payloads`; longer ones are cut and say so.
const SHOWN_BYTES_MAX: usize = 64;
/// Most payload problems `verify` lists one by one; beyond that it gives the count.
const PROBLEMS_LISTED_MAX: usize = 20;
/// Upper bound of `entry_bytes_max` for inspection: `LogConfig::validate` caps `submit_bytes_max`
/// at 1 GiB and wants one largest record (payload + 32-byte header) to fit a submit.
const INSPECTION_SUBMIT_BYTES_MAX: u64 = 1 << 30;
const RECORD_HEADER_BYTES: u64 = 32;
const SEGMENT_HEADER_BYTES: u64 = 4096;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LogCommand {
    /// Check every record of a stopped node's log; print a summary; exit non-zero on damage.
    Verify {
        /// The node's data directory (holds `identity` and `log/`).
        data_dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print entries (index, term, kind, bytes; for batches: command count and each command's
    /// session/seq/payload size; with --payloads the key-value command decoded).
    Dump {
        /// The node's data directory (holds `identity` and `log/`).
        data_dir: PathBuf,
        /// First index to print (default: the first the log holds).
        #[arg(long)]
        from: Option<u64>,
        /// Last index to print (default: the last the log holds).
        #[arg(long)]
        to: Option<u64>,
        /// Decode each command's payload as a key-value command.
        #[arg(long)]
        payloads: bool,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `smr log` command, printing to stdout (errors to stderr).
pub(crate) fn run(command: LogCommand) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = match command {
        LogCommand::Verify { data_dir, json } => verify(&data_dir, json, &mut out),
        LogCommand::Dump { data_dir, from, to, payloads, json } => {
            dump(&data_dir, &DumpOptions { from, to, payloads, json }, &mut out)
        }
    };
    let result = result.and_then(|code| out.flush().map(|()| code).map_err(Failure::from));
    match result {
        Ok(code) => ExitCode::from(code),
        // `smr log dump | head` closes the pipe early: not a failure of the command.
        Err(Failure::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("smr log: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Why a command stopped.
#[derive(Debug)]
enum Failure {
    /// A problem with the command line or the directory it names.
    Usage(String),
    /// The data directory is damaged, foreign or unreadable.
    Data { message: String, exit_code: u8 },
    /// Writing the output failed.
    Output(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Data { message, .. } => f.write_str(message),
            Failure::Output(error) => write!(f, "writing the output failed: {error}"),
        }
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_CODE_USAGE,
            Failure::Data { exit_code, .. } => *exit_code,
            Failure::Output(_) => 1,
        }
    }

    fn log(error: LogError) -> Failure {
        let mut message = error.to_string();
        if matches!(error, LogError::Locked { .. }) {
            message.push_str(" (is the node running? stop it before inspecting its log)");
        }
        // Every error an inspection can meet is fatal for a node; a refusal (a config error
        // from a strange recorded segment size) gets the generic failure code.
        let exit_code = error.exit_code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1);
        Failure::Data { message, exit_code }
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Output(error)
    }
}

fn exit_code_of(code: i32) -> u8 {
    u8::try_from(code).expect("smr-log exit codes fit a byte")
}

/// A data directory opened for inspection.
#[derive(Debug)]
struct Inspection {
    identity: Identity,
    log_dir: PathBuf,
    segment_bytes: u64,
    /// `None` when the node never created its log.
    log: Option<ReadOnlyLog>,
}

fn inspect(data_dir: &Path) -> Result<Inspection, Failure> {
    if !data_dir.is_dir() {
        return Err(Failure::Usage(format!("no such directory: {}", data_dir.display())));
    }
    let identity = match Identity::load(data_dir) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return Err(Failure::Usage(format!(
                "not an smr data directory: {} has no identity file",
                data_dir.display()
            )));
        }
        Err(error @ smr_runtime::IdentityError::Io { .. }) => {
            return Err(Failure::Data { message: error.to_string(), exit_code: exit_code_of(smr_log::EXIT_CODE_IO) });
        }
        Err(error) => {
            return Err(Failure::Data {
                message: error.to_string(),
                exit_code: exit_code_of(smr_log::EXIT_CODE_CORRUPTION),
            });
        }
    };
    let log_dir = data_dir.join("log");
    let mut config = LogConfig::new(identity.cluster_id, identity.node_id, identity.group_id);
    if !log_dir.exists() {
        return Ok(Inspection { identity, log_dir, segment_bytes: config.segment_bytes, log: None });
    }
    if let Some(segment_bytes) = smr_log::recorded_segment_bytes(&log_dir).map_err(Failure::log)? {
        config.segment_bytes = segment_bytes;
    }
    // As large as one record in a segment can be, rounded down to the 16-byte payload padding.
    let room = config.segment_bytes.saturating_sub(SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) / 16 * 16;
    config.entry_bytes_max = room.min(INSPECTION_SUBMIT_BYTES_MAX - RECORD_HEADER_BYTES).min(u64::from(u32::MAX));
    config.submit_bytes_max = INSPECTION_SUBMIT_BYTES_MAX;
    let log = ReadOnlyLog::open(&log_dir, &config).map_err(Failure::log)?;
    Ok(Inspection { identity, log_dir, segment_bytes: config.segment_bytes, log: Some(log) })
}

/// An entry's payload, decoded by kind.
#[derive(Debug)]
enum Payload<'a> {
    Batch(&'a ArchivedBatch),
    ConfChange(ConfChange),
    Noop,
    /// The payload does not decode: what is wrong with it.
    Bad(String),
}

fn decode<'a>(entry: &EntryRef<'a>) -> Payload<'a> {
    match entry.kind {
        EntryKind::Normal => match batch::view(entry.data) {
            Ok(archived) if archived.commands.len() > BATCH_COMMANDS_MAX => Payload::Bad(format!(
                "batch has {} commands, more than any node accepts ({BATCH_COMMANDS_MAX})",
                archived.commands.len()
            )),
            Ok(archived) => Payload::Batch(archived),
            Err(error) => Payload::Bad(error.to_string()),
        },
        EntryKind::ConfChange => match ConfChange::decode(entry.data) {
            Ok(change) => Payload::ConfChange(change),
            Err(error) => Payload::Bad(error.to_string()),
        },
        EntryKind::Noop => Payload::Noop,
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Normal => "normal",
        EntryKind::Noop => "noop",
        EntryKind::ConfChange => "conf-change",
    }
}

fn conf_change_text(change: &ConfChange) -> String {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    match change {
        ConfChange::Bootstrap { voters } => format!("bootstrap voters={}", ids(voters)),
        ConfChange::Change { ops } => {
            let ops: Vec<String> = ops
                .iter()
                .map(|op| match op {
                    ConfChangeOp::AddVoter(id) => format!("add-voter={id}"),
                    ConfChangeOp::AddLearner(id) => format!("add-learner={id}"),
                    ConfChangeOp::Remove(id) => format!("remove={id}"),
                })
                .collect();
            format!("change {}", ops.join(" "))
        }
        ConfChange::LeaveJoint => "leave-joint".to_owned(),
    }
}

/// Bytes as ASCII-escaped text (`\xNN` for other bytes) cut at [`SHOWN_BYTES_MAX`], and how
/// many bytes were left out.
fn cut_escaped(bytes: &[u8]) -> (String, usize) {
    let cut = &bytes[..bytes.len().min(SHOWN_BYTES_MAX)];
    (cut.escape_ascii().to_string(), bytes.len() - cut.len())
}

/// For JSON: the escaped text, with `...(+N bytes)` appended when it was cut.
fn escaped(bytes: &[u8]) -> String {
    match cut_escaped(bytes) {
        (text, 0) => text,
        (text, more) => format!("{text}...(+{more} bytes)"),
    }
}

/// For text: the escaped text in double quotes, followed by `...(+N bytes)` when it was cut.
fn shown(bytes: &[u8]) -> String {
    match cut_escaped(bytes) {
        (text, 0) => format!("\"{text}\""),
        (text, more) => format!("\"{text}\"...(+{more} bytes)"),
    }
}

fn kv_text(payload: &[u8]) -> String {
    let optional = |value: Option<&[u8]>, absent: &str| value.map_or_else(|| absent.to_owned(), shown);
    match KvCommand::decode(payload) {
        Ok(KvCommand::Put { key, value }) => format!("put key={} value={}", shown(key), shown(value)),
        Ok(KvCommand::Get { key }) => format!("get key={}", shown(key)),
        Ok(KvCommand::Delete { key }) => format!("delete key={}", shown(key)),
        Ok(KvCommand::Cas { key, expected, new }) => format!(
            "cas key={} expected={} new={}",
            shown(key),
            optional(expected, "<absent>"),
            optional(new, "<delete>")
        ),
        Ok(KvCommand::Scan { start, end, limit }) => {
            format!("scan start={} end={} limit={limit}", shown(start), shown(end))
        }
        // Another state machine's command: not damage, just not ours to read.
        Err(reason) => format!("(not a key-value command: {reason})"),
    }
}

fn kv_json(payload: &[u8]) -> Value {
    let optional = |value: Option<&[u8]>| value.map_or(Value::Null, |v| Value::from(escaped(v)));
    match KvCommand::decode(payload) {
        Ok(KvCommand::Put { key, value }) => json!({"op": "put", "key": escaped(key), "value": escaped(value)}),
        Ok(KvCommand::Get { key }) => json!({"op": "get", "key": escaped(key)}),
        Ok(KvCommand::Delete { key }) => json!({"op": "delete", "key": escaped(key)}),
        Ok(KvCommand::Cas { key, expected, new }) => {
            json!({"op": "cas", "key": escaped(key), "expected": optional(expected), "new": optional(new)})
        }
        Ok(KvCommand::Scan { start, end, limit }) => {
            json!({"op": "scan", "start": escaped(start), "end": escaped(end), "limit": limit})
        }
        Err(reason) => json!({"error": format!("not a key-value command: {reason}")}),
    }
}

fn identity_json(identity: &Identity) -> Value {
    json!({
        "cluster_id": format!("{:x}", identity.cluster_id),
        "node_id": identity.node_id,
        "group_id": identity.group_id,
    })
}

/// The entries of the recovered log: snapshot index + 1 ..= last index.
fn first_index(verification: &Verification) -> Index {
    verification.snapshot_index + 1
}

/// `smr log verify`: returns the exit code, or the failure that stopped it before a summary.
fn verify(data_dir: &Path, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let inspection = match inspect(data_dir) {
        Ok(inspection) => inspection,
        // A JSON consumer gets the verdict as JSON too (a usage error stays on stderr).
        Err(Failure::Data { message, exit_code }) if json => {
            let verdict =
                if exit_code == exit_code_of(smr_log::EXIT_CODE_FOREIGN_DATA) { "foreign" } else { "damaged" };
            let report = json!({"data_dir": data_dir, "status": verdict, "error": message, "exit_code": exit_code});
            writeln!(out, "{report}")?;
            return Ok(exit_code);
        }
        Err(failure) => return Err(failure),
    };
    let snapshots = list_snapshots(&data_dir.join("snapshots"));
    let Some(log) = &inspection.log else {
        if json {
            let report = json!({
                "data_dir": data_dir,
                "identity": identity_json(&inspection.identity),
                "log": Value::Null,
                "snapshots": snapshots_json(&snapshots),
                "status": "ok",
            });
            writeln!(out, "{report}")?;
        } else {
            write_identity(out, data_dir, &inspection.identity)?;
            writeln!(
                out,
                "log          none: {} does not exist (the node never started)",
                inspection.log_dir.display()
            )?;
            write_snapshots(out, &snapshots)?;
            writeln!(out, "status       ok")?;
        }
        return Ok(0);
    };
    let verification = log.verification();

    // The records passed their CRCs in recovery; now every payload must decode as its kind.
    let mut problems: Vec<(Index, String)> = Vec::new();
    let mut problem_count = 0usize;
    let (mut normal, mut noop, mut conf_change, mut commands) = (0u64, 0u64, 0u64, 0u64);
    for entry in log.entries(first_index(verification), verification.last_index) {
        match decode(&entry) {
            Payload::Batch(archived) => {
                normal += 1;
                commands += archived.commands.len() as u64;
            }
            Payload::ConfChange(_) => conf_change += 1,
            Payload::Noop => noop += 1,
            Payload::Bad(reason) => {
                problem_count += 1;
                if problems.len() < PROBLEMS_LISTED_MAX {
                    problems.push((entry.index, format!("{} entry: {reason}", kind_name(entry.kind))));
                }
            }
        }
    }
    let damaged = problem_count > 0;
    let status = match (damaged, &verification.torn_tail) {
        (true, _) => "damaged",
        (false, Some(_)) => "ok-torn-tail",
        (false, None) => "ok",
    };
    let hard_state = verification.hard_state;
    if json {
        let report = json!({
            "data_dir": data_dir,
            "identity": identity_json(&inspection.identity),
            "log": {
                "dir": inspection.log_dir,
                "segment_bytes": inspection.segment_bytes,
                "hard_state": {"term": hard_state.term, "vote": hard_state.vote, "commit": hard_state.commit},
                "snapshot": {"index": verification.snapshot_index, "term": verification.snapshot_term},
                "first_index": first_index(verification),
                "last_index": verification.last_index,
                "last_term": verification.last_term,
                "entries": {"normal": normal, "noop": noop, "conf_change": conf_change, "commands": commands},
                "segments": verification.segments.iter()
                    .map(|&(sequence, records)| json!({"sequence": sequence, "records": records}))
                    .collect::<Vec<_>>(),
                "torn_tail": verification.torn_tail,
            },
            "problems": problems.iter().map(|(index, problem)| json!({"index": index, "problem": problem}))
                .collect::<Vec<_>>(),
            "problem_count": problem_count,
            "snapshots": snapshots_json(&snapshots),
            "status": status,
        });
        writeln!(out, "{report}")?;
    } else {
        write_identity(out, data_dir, &inspection.identity)?;
        writeln!(out, "log          {} (segment_bytes {})", inspection.log_dir.display(), inspection.segment_bytes)?;
        let vote = hard_state.vote.map_or_else(|| "none".to_owned(), |v| v.to_string());
        writeln!(out, "hard state   term {} vote {vote} commit {}", hard_state.term, hard_state.commit)?;
        writeln!(out, "snapshot     index {} term {}", verification.snapshot_index, verification.snapshot_term)?;
        if verification.last_index >= first_index(verification) {
            writeln!(
                out,
                "entries      {}..={} (last term {}): {normal} normal ({commands} commands), {noop} noop, {conf_change} conf-change",
                first_index(verification),
                verification.last_index,
                verification.last_term
            )?;
        } else {
            writeln!(out, "entries      none")?;
        }
        let segments: Vec<String> =
            verification.segments.iter().map(|(sequence, records)| format!("{sequence} ({records} records)")).collect();
        writeln!(out, "segments     {}", if segments.is_empty() { "none".to_owned() } else { segments.join(", ") })?;
        write_snapshots(out, &snapshots)?;
        if let Some(torn) = &verification.torn_tail {
            writeln!(out, "warning: {torn}; a restart would cut it (it was never reported durable)")?;
        }
        for (index, problem) in &problems {
            writeln!(out, "error: index {index}: {problem}")?;
        }
        if problem_count > problems.len() {
            writeln!(out, "error: ... and {} more damaged entries", problem_count - problems.len())?;
        }
        writeln!(out, "status       {status}")?;
    }
    Ok(if damaged { exit_code_of(smr_log::EXIT_CODE_CORRUPTION) } else { 0 })
}

fn write_identity(out: &mut dyn Write, data_dir: &Path, identity: &Identity) -> std::io::Result<()> {
    writeln!(out, "data dir     {}", data_dir.display())?;
    writeln!(
        out,
        "identity     cluster {:x} node {} group {}",
        identity.cluster_id, identity.node_id, identity.group_id
    )
}

/// The snapshot directory's entries (name, bytes), or why it could not be listed; `None` when
/// it does not exist.
type Snapshots = Option<Result<Vec<(String, u64)>, String>>;

fn list_snapshots(dir: &Path) -> Snapshots {
    if !dir.exists() {
        return None;
    }
    let list = || -> std::io::Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            files.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len()));
        }
        files.sort();
        Ok(files)
    };
    Some(list().map_err(|e| format!("{}: {e}", dir.display())))
}

fn snapshots_json(snapshots: &Snapshots) -> Value {
    match snapshots {
        None => Value::Null,
        Some(Ok(files)) => files.iter().map(|(name, bytes)| json!({"name": name, "bytes": bytes})).collect(),
        Some(Err(error)) => json!({"error": error}),
    }
}

fn write_snapshots(out: &mut dyn Write, snapshots: &Snapshots) -> std::io::Result<()> {
    match snapshots {
        None => writeln!(out, "snapshots    none"),
        Some(Ok(files)) if files.is_empty() => writeln!(out, "snapshots    none"),
        Some(Ok(files)) => {
            let files: Vec<String> = files.iter().map(|(name, bytes)| format!("{name} ({bytes} bytes)")).collect();
            writeln!(out, "snapshots    {}", files.join(", "))
        }
        Some(Err(error)) => writeln!(out, "snapshots    cannot list: {error}"),
    }
}

/// What `smr log dump` prints.
#[derive(Debug)]
struct DumpOptions {
    from: Option<u64>,
    to: Option<u64>,
    payloads: bool,
    json: bool,
}

/// `smr log dump`: returns the exit code (damage in an entry is printed where it is, and makes
/// the exit code the corruption one), or the failure that stopped it before any entry.
fn dump(data_dir: &Path, options: &DumpOptions, out: &mut dyn Write) -> Result<u8, Failure> {
    let inspection = inspect(data_dir)?;
    let Some(log) = &inspection.log else {
        if options.json {
            writeln!(out, "{}", json!({"identity": identity_json(&inspection.identity), "entries": []}))?;
        } else {
            writeln!(out, "# no log: {} does not exist", inspection.log_dir.display())?;
        }
        return Ok(0);
    };
    let verification = log.verification();
    let from = options.from.unwrap_or(first_index(verification));
    let to = options.to.unwrap_or(verification.last_index);
    if options.json {
        // One JSON document, streamed: the entries are written one by one.
        let head = json!({
            "identity": identity_json(&inspection.identity),
            "first_index": first_index(verification),
            "last_index": verification.last_index,
            "torn_tail": verification.torn_tail,
        });
        let head = head.to_string();
        write!(out, "{},\"entries\":[", head.strip_suffix('}').expect("a JSON object"))?;
    } else {
        writeln!(
            out,
            "# cluster {:x} node {} group {}: log holds {}..={}",
            inspection.identity.cluster_id,
            inspection.identity.node_id,
            inspection.identity.group_id,
            first_index(verification),
            verification.last_index
        )?;
        if from < first_index(verification) {
            writeln!(out, "# entries before {} are compacted into the snapshot", first_index(verification))?;
        }
        if let Some(torn) = &verification.torn_tail {
            writeln!(out, "# warning: {torn}; a restart would cut it, so it is not shown")?;
        }
    }
    let mut damaged = false;
    for (n, entry) in log.entries(from, to).enumerate() {
        let payload = decode(&entry);
        damaged |= matches!(payload, Payload::Bad(_));
        if options.json {
            if n > 0 {
                out.write_all(b",")?;
            }
            write!(out, "{}", entry_json(&entry, &payload, options.payloads))?;
        } else {
            write_entry_text(out, &entry, &payload, options.payloads)?;
        }
    }
    if options.json {
        writeln!(out, "]}}")?;
    }
    Ok(if damaged { exit_code_of(smr_log::EXIT_CODE_CORRUPTION) } else { 0 })
}

fn write_entry_text(
    out: &mut dyn Write,
    entry: &EntryRef<'_>,
    payload: &Payload<'_>,
    payloads: bool,
) -> std::io::Result<()> {
    let (index, term, kind, bytes) = (entry.index, entry.term, kind_name(entry.kind), entry.data.len());
    match payload {
        Payload::Noop => writeln!(out, "{index} term {term} {kind} {bytes} bytes"),
        Payload::ConfChange(change) => {
            writeln!(out, "{index} term {term} {kind} {bytes} bytes: {}", conf_change_text(change))
        }
        Payload::Bad(reason) => {
            writeln!(out, "{index} term {term} {kind} {bytes} bytes: error: index {index}: {reason}")
        }
        Payload::Batch(archived) => {
            let count = archived.commands.len();
            let noun = if count == 1 { "command" } else { "commands" };
            writeln!(out, "{index} term {term} {kind} {bytes} bytes: {count} {noun}")?;
            for command in archived.commands.iter() {
                let (session, seq, payload) =
                    (command.session.to_native(), command.seq.to_native(), command.payload.as_slice());
                write!(out, "    session {session} seq {seq} payload {} bytes", payload.len())?;
                if payloads {
                    write!(out, ": {}", kv_text(payload))?;
                }
                writeln!(out)?;
            }
            Ok(())
        }
    }
}

fn entry_json(entry: &EntryRef<'_>, payload: &Payload<'_>, payloads: bool) -> Value {
    let mut value = json!({
        "index": entry.index,
        "term": entry.term,
        "kind": kind_name(entry.kind),
        "bytes": entry.data.len(),
    });
    let fields = value.as_object_mut().expect("an object");
    match payload {
        Payload::Noop => {}
        Payload::ConfChange(change) => {
            fields.insert("conf_change".into(), Value::from(conf_change_text(change)));
        }
        Payload::Bad(reason) => {
            fields.insert("error".into(), Value::from(reason.clone()));
        }
        Payload::Batch(archived) => {
            let commands: Vec<Value> = archived
                .commands
                .iter()
                .map(|command| {
                    let mut value = json!({
                        "session": command.session.to_native(),
                        "seq": command.seq.to_native(),
                        "payload_bytes": command.payload.len(),
                    });
                    if payloads {
                        let fields = value.as_object_mut().expect("an object");
                        fields.insert("kv".into(), kv_json(command.payload.as_slice()));
                    }
                    value
                })
                .collect();
            fields.insert("commands".into(), Value::from(commands));
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    use smr_apply::{BatchBuilder, Command};
    use smr_log::Log;
    use smr_raft::{Entry, HardState};

    const IDENTITY: Identity = Identity { cluster_id: 0xc1, node_id: 2, group_id: 0 };

    /// Small segments: the tool must read the size from the segment header, not assume it.
    fn log_config() -> LogConfig {
        let mut config = LogConfig::new(IDENTITY.cluster_id, IDENTITY.node_id, IDENTITY.group_id);
        config.segment_bytes = 64 << 10;
        config.entry_bytes_max = 16 << 10;
        config.submit_bytes_max = 64 << 10;
        config
    }

    /// Appends `entries` to the log of the data directory `dir` in one synced submit.
    fn append(dir: &Path, token: u64, entries: &[Entry]) {
        let (mut log, _) = Log::open(&dir.join("log"), log_config()).expect("open");
        log.submit(token, entries, None).expect("submit");
        log.sync_all().expect("sync");
    }

    /// A data directory with an identity and a log of four entries: a bootstrap conf change,
    /// a noop, a batch of three puts, and a batch of one put. Returns the log directory.
    fn data_dir(dir: &Path) -> PathBuf {
        IDENTITY.store(dir).expect("identity");
        let log_dir = dir.join("log");
        let (mut log, _) = Log::open(&log_dir, log_config()).expect("open");
        let put = |key: &str, value: &str| KvCommand::Put { key: key.as_bytes(), value: value.as_bytes() }.encode();
        let mut builder = BatchBuilder::new(1 << 20, 64);
        for (seq, (key, value)) in [("alpha", "1"), ("beta", "22"), ("gamma", "333")].into_iter().enumerate() {
            builder.push(Command { session: 7, seq: seq as u64 + 1, payload: put(key, value) }).expect("fits");
        }
        let first = builder.finish();
        builder.push(Command { session: 0, seq: 0, payload: put("delta", "4444") }).expect("fits");
        let second = builder.finish();
        let entries = vec![
            Entry {
                index: 1,
                term: 1,
                kind: EntryKind::ConfChange,
                data: ConfChange::Bootstrap { voters: vec![1, 2, 3] }.encode(),
            },
            Entry { index: 2, term: 2, kind: EntryKind::Noop, data: bytes::Bytes::new() },
            Entry { index: 3, term: 2, kind: EntryKind::Normal, data: first },
            Entry { index: 4, term: 2, kind: EntryKind::Normal, data: second },
        ];
        log.submit(1, &entries, Some(HardState { term: 2, vote: Some(1), commit: 3 })).expect("submit");
        log.sync_all().expect("sync");
        log_dir
    }

    fn run_verify(dir: &Path, json: bool) -> (Result<u8, Failure>, String) {
        let mut out = Vec::new();
        let result = verify(dir, json, &mut out);
        (result, String::from_utf8(out).expect("utf-8"))
    }

    fn run_dump(dir: &Path, options: &DumpOptions) -> (Result<u8, Failure>, String) {
        let mut out = Vec::new();
        let result = dump(dir, options, &mut out);
        (result, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn long_and_binary_bytes_are_escaped_and_cut() {
        assert_eq!(shown(b"a\"b\n\xff"), "\"a\\\"b\\n\\xff\"");
        let long = shown(&[b'x'; 100]);
        assert!(long.ends_with("xx\"...(+36 bytes)"), "{long}");
        assert!(escaped(&[b'x'; 100]).ends_with("xx...(+36 bytes)"));
    }

    fn all(payloads: bool, json: bool) -> DumpOptions {
        DumpOptions { from: None, to: None, payloads, json }
    }

    /// Flips a bit of the first occurrence of `needle` in the first segment (the only one the
    /// tests write).
    fn flip_byte_of(log_dir: &Path, needle: &[u8]) {
        let path = log_dir.join(format!("{:020}.seg", 1));
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.windows(needle.len()).position(|w| w == needle).expect("payload is in the segment");
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write");
    }

    #[test]
    fn verify_reports_the_last_index_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = data_dir(dir.path());
        let before = std::fs::read(log_dir.join(format!("{:020}.seg", 1))).expect("read");
        let (result, text) = run_verify(dir.path(), false);
        assert_eq!(result.expect("verify"), 0, "{text}");
        assert!(text.contains("identity     cluster c1 node 2 group 0"), "{text}");
        assert!(text.contains("segment_bytes 65536"), "{text}");
        assert!(text.contains("hard state   term 2 vote 1 commit 3"), "{text}");
        assert!(
            text.contains("entries      1..=4 (last term 2): 2 normal (4 commands), 1 noop, 1 conf-change"),
            "{text}"
        );
        assert!(text.ends_with("status       ok\n"), "{text}");
        assert_eq!(std::fs::read(log_dir.join(format!("{:020}.seg", 1))).expect("read"), before);

        let (result, text) = run_verify(dir.path(), true);
        assert_eq!(result.expect("verify"), 0);
        let report: Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(report["log"]["last_index"], 4);
        assert_eq!(report["log"]["entries"]["commands"], 4);
        assert_eq!(report["status"], "ok");
    }

    #[test]
    fn dump_decodes_batches_commands_and_conf_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        data_dir(dir.path());
        let (result, text) = run_dump(dir.path(), &all(true, false));
        assert_eq!(result.expect("dump"), 0, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# cluster c1 node 2 group 0: log holds 1..=4");
        assert!(
            lines[1].starts_with("1 term 1 conf-change ") && lines[1].ends_with("bytes: bootstrap voters=1,2,3"),
            "{text}"
        );
        assert_eq!(lines[2], "2 term 2 noop 0 bytes");
        assert!(lines[3].starts_with("3 term 2 normal ") && lines[3].ends_with("bytes: 3 commands"), "{text}");
        assert!(
            lines[4].starts_with("    session 7 seq 1 payload ")
                && lines[4].ends_with(": put key=\"alpha\" value=\"1\""),
            "{text}"
        );
        assert!(lines[6].ends_with(": put key=\"gamma\" value=\"333\""), "{text}");
        assert!(
            lines[8].starts_with("    session 0 seq 0 ") && lines[8].ends_with("put key=\"delta\" value=\"4444\""),
            "{text}"
        );
        assert_eq!(lines.len(), 9, "{text}");

        // Without --payloads the commands are sizes only; a range limits the entries.
        let (_, text) = run_dump(dir.path(), &DumpOptions { from: Some(3), to: Some(3), payloads: false, json: false });
        assert!(!text.contains("put"), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4, "{text}");

        let (result, text) = run_dump(dir.path(), &all(true, true));
        assert_eq!(result.expect("dump"), 0);
        let document: Value = serde_json::from_str(&text).expect("one JSON document");
        let entries = document["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0]["conf_change"], "bootstrap voters=1,2,3");
        assert_eq!(entries[2]["commands"][1]["kv"]["key"], "beta");
        assert_eq!(entries[3]["commands"][0]["session"], 0);
    }

    #[test]
    fn directory_without_identity_is_refused_as_usage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (result, text) = run_verify(dir.path(), false);
        let failure = result.expect_err("no identity");
        assert_eq!(failure.exit_code(), EXIT_CODE_USAGE);
        let message = failure.to_string();
        assert_eq!(message, format!("not an smr data directory: {} has no identity file", dir.path().display()));
        assert!(text.is_empty());
        let failure = run_dump(&dir.path().join("missing"), &all(false, false)).0.expect_err("no directory");
        assert_eq!(failure.exit_code(), EXIT_CODE_USAGE);
        assert!(failure.to_string().contains("no such directory"), "{failure}");
    }

    #[test]
    fn flipped_byte_mid_log_is_corruption_naming_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = data_dir(dir.path());
        // Entries 1..=4 went in one submit, so nothing proves entry 3 durable yet; entry 5,
        // written after their sync, does (it claims the durable frontier beyond them).
        append(dir.path(), 2, &[Entry { index: 5, term: 2, kind: EntryKind::Noop, data: bytes::Bytes::new() }]);
        flip_byte_of(&log_dir, b"gamma");

        let (result, text) = run_verify(dir.path(), false);
        let failure = result.expect_err("corruption");
        assert_eq!(failure.exit_code(), exit_code_of(smr_log::EXIT_CODE_CORRUPTION), "{failure}");
        assert!(failure.to_string().contains("index 3"), "names the index: {failure}");
        assert!(text.is_empty(), "{text}");

        let (result, text) = run_verify(dir.path(), true);
        assert_eq!(result.expect("a JSON verdict"), exit_code_of(smr_log::EXIT_CODE_CORRUPTION));
        let report: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(report["status"], "damaged");
        assert!(report["error"].as_str().expect("error").contains("index 3"), "{text}");

        let failure = run_dump(dir.path(), &all(false, false)).0.expect_err("dump refuses too");
        assert_eq!(failure.exit_code(), exit_code_of(smr_log::EXIT_CODE_CORRUPTION));
    }

    #[test]
    fn flipped_byte_in_the_last_record_is_a_torn_tail_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = data_dir(dir.path());
        flip_byte_of(&log_dir, b"delta");
        let (result, text) = run_verify(dir.path(), false);
        assert_eq!(result.expect("a torn tail is not damage"), 0, "{text}");
        assert!(text.contains("warning: torn tail") && text.contains("a restart would cut it"), "{text}");
        assert!(text.contains("status       ok-torn-tail"), "{text}");
    }

    #[test]
    fn a_valid_record_holding_a_bad_batch_is_named_by_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        data_dir(dir.path());
        // CRC-valid records whose payloads no node writes: a writer bug, or bytes from elsewhere.
        let garbage =
            Entry { index: 5, term: 2, kind: EntryKind::Normal, data: bytes::Bytes::from_static(&[0xff; 40]) };
        let conf = Entry { index: 6, term: 2, kind: EntryKind::ConfChange, data: bytes::Bytes::from_static(&[9]) };
        append(dir.path(), 2, &[garbage, conf]);

        let (result, text) = run_verify(dir.path(), false);
        assert_eq!(result.expect("summary"), exit_code_of(smr_log::EXIT_CODE_CORRUPTION), "{text}");
        assert!(text.contains("error: index 5: normal entry: batch of 40 bytes fails validation"), "{text}");
        assert!(text.contains("error: index 6: conf-change entry: malformed"), "{text}");
        assert!(text.contains("status       damaged"), "{text}");

        let (result, text) = run_dump(dir.path(), &all(true, false));
        assert_eq!(result.expect("dump"), exit_code_of(smr_log::EXIT_CODE_CORRUPTION));
        assert!(text.contains("5 term 2 normal 40 bytes: error: index 5: batch of 40 bytes"), "{text}");
    }
}
