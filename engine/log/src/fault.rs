//! Test-only storage fault injection: power-loss emulation and a planted durability bug.
//!
//! A SIGKILLed process keeps its page-cache writes, so killing a node does not test what a power
//! loss does to writes that were never `fdatasync`ed. This module lets a test emulate one. It is
//! public as `smr_log::fault` only with the cargo feature `fault-injection`; release builds
//! refuse both environment variables at [`crate::Log::open`] (a [`LogError::Config`] naming the
//! variable) so a production node can never run with them by accident.
//!
//! - [`SYNC_JOURNAL_ENV`] (`SMR_FAULT_SYNC_JOURNAL=<path>`): the log appends one line to that
//!   file (`O_APPEND`, one `write(2)` per line, no fsync: a SIGKILL keeps the page cache) for
//!   every data write it issues, BEFORE issuing it, and one line per completed sync AFTER the
//!   `fdatasync` returned and before anything is reported durable. [`drop_unsynced`] then
//!   reverts, on the stopped node, the writes no completed sync covered.
//! - [`ACK_BEFORE_FSYNC_ENV`] (`SMR_FAULT_ACK_BEFORE_FSYNC=1`): the planted bug. The log
//!   reports entries and hard states durable once their writes complete, and never issues the
//!   group-commit `fdatasync`. A power-loss test that does not report lost writes with this set
//!   is blind.
//!
//! ## The journal
//!
//! One log per journal. Lines (fields separated by one space):
//!
//! - `O slot0=<hex> slot1=<hex>`: the log opened and synced everything it recovered; every
//!   write journaled before is durable. The hex is the state file's two slots as they are now
//!   on disk (trailing zeros trimmed), the base that unsynced state writes revert to.
//! - `W <seq> <file> <offset> <len> [<hex> | was=<hex>]`: a write of `len` bytes at `offset` of
//!   `file` (a segment file name or `state`, relative to the log directory), numbered `seq` from
//!   0 since the last `O`. State writes carry their bytes (trailing zeros trimmed): a state slot
//!   is rewritten every other update, so a revert restores its previous durable content, not
//!   zeros. Segment writes carry what the range held before them (`was=`, trailing zeros
//!   trimmed, so `-` in a zero-filled segment): a reused segment holds its earlier use's bytes
//!   there, and that is what a lost write leaves on the disk. Without `was=`, zeros.
//! - `S <job> <through> <file>,<file>...`: a sync completed that covers every write numbered up
//!   to `through` to the listed files (`-` for `through` when no write preceded it).
//!
//! A line without its newline (the process died inside the `write(2)`) is ignored: its write
//! was never issued.
//!
//! What a revert restores: segment bytes to what they held before the write (segments are
//! durable before use, and the log never rewrites a record in place); a state slot to the
//! content of the latest covered write to it, or the base of the `O` line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::LogError;

/// `SMR_FAULT_SYNC_JOURNAL=<path>`: journal every write and completed sync (see the module
/// documentation).
pub const SYNC_JOURNAL_ENV: &str = "SMR_FAULT_SYNC_JOURNAL";
/// `SMR_FAULT_ACK_BEFORE_FSYNC=1`: the planted durability bug (report durable before fsync).
pub const ACK_BEFORE_FSYNC_ENV: &str = "SMR_FAULT_ACK_BEFORE_FSYNC";

/// The fault injection a log runs with, read once at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Journal writes and syncs to this file.
    pub(crate) sync_journal: Option<PathBuf>,
    /// Report writes durable on completion, without any fdatasync.
    pub(crate) ack_before_fsync: bool,
}

impl Faults {
    /// Reads the two environment variables.
    ///
    /// # Errors
    /// [`LogError::Config`] naming the variable when one is set in a build without the feature,
    /// or set to a bad value.
    pub(crate) fn from_env() -> Result<Faults, LogError> {
        Faults::from_lookup(|name| std::env::var_os(name), cfg!(feature = "fault-injection"))
    }

    /// [`Faults::from_env`] with the environment and the feature passed in, for tests.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
        enabled: bool,
    ) -> Result<Faults, LogError> {
        let journal = lookup(SYNC_JOURNAL_ENV);
        let ack = lookup(ACK_BEFORE_FSYNC_ENV);
        for (name, value) in [(SYNC_JOURNAL_ENV, &journal), (ACK_BEFORE_FSYNC_ENV, &ack)] {
            if value.is_some() && !enabled {
                return Err(LogError::Config {
                    field: name,
                    reason: "is set, but smr-log was built without fault-injection (a test-only cargo feature); \
                             unset it, or use a test build"
                        .into(),
                });
            }
        }
        let sync_journal = match journal {
            Some(path) if path.is_empty() => {
                return Err(LogError::Config { field: SYNC_JOURNAL_ENV, reason: "is set but empty".into() });
            }
            Some(path) => Some(PathBuf::from(path)),
            None => None,
        };
        let ack_before_fsync = match ack.as_ref().map(|v| v.to_str()) {
            None => false,
            Some(Some("1")) => true,
            Some(Some("0")) => false,
            Some(other) => {
                return Err(LogError::Config {
                    field: ACK_BEFORE_FSYNC_ENV,
                    reason: format!("{other:?} is not 0 or 1"),
                });
            }
        };
        Ok(Faults { sync_journal, ack_before_fsync })
    }

    pub(crate) fn active(&self) -> bool {
        self.sync_journal.is_some() || self.ack_before_fsync
    }
}

/// The writer of the sync journal (one per open log).
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// The number of the next write.
    next_seq: u64,
}

impl Journal {
    pub(crate) fn open(path: &Path) -> Result<Journal, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LogError::io("open fault journal", path, e))?;
        Ok(Journal { path: path.to_path_buf(), file, next_seq: 0 })
    }

    fn line(&mut self, line: &str) -> Result<(), LogError> {
        // One write(2) of the whole line: a line is either all there or (cut by the kill inside
        // the call) missing its newline, which the reader ignores.
        (&self.file).write_all(line.as_bytes()).map_err(|e| LogError::io("write fault journal", &self.path, e))
    }

    /// Journals the open: everything before is durable; `slots` is the whole state file.
    pub(crate) fn opened(&mut self, slots: &[u8]) -> Result<(), LogError> {
        let half = slots.len() / 2;
        self.next_seq = 0;
        let line = format!("O slot0={} slot1={}\n", hex_trimmed(&slots[..half]), hex_trimmed(&slots[half..]));
        self.line(&line)
    }

    /// Journals a state write about to be issued, with its bytes; returns its number.
    pub(crate) fn write_state(&mut self, file: &str, offset: u64, bytes: &[u8]) -> Result<u64, LogError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.line(&format!("W {seq} {file} {offset} {} {}\n", bytes.len(), hex_trimmed(bytes)))?;
        Ok(seq)
    }

    /// Journals a segment write about to be issued, with what its range holds now; returns its
    /// number.
    pub(crate) fn write_segment(&mut self, file: &str, offset: u64, was: &[u8]) -> Result<u64, LogError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.line(&format!("W {seq} {file} {offset} {} was={}\n", was.len(), hex_trimmed(was)))?;
        Ok(seq)
    }

    /// The number of the last write journaled since open, if any.
    pub(crate) fn through(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }

    /// Journals a completed sync of `files` covering writes numbered up to `through`.
    /// `job` is the sync job's number, `None` for a synchronous state update (compaction,
    /// snapshot install).
    pub(crate) fn synced(&mut self, job: Option<u64>, through: Option<u64>, files: &[&str]) -> Result<(), LogError> {
        let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let line = format!("S {} {} {}\n", number(job), number(through), files.join(","));
        self.line(&line)
    }
}

/// The name a journal line uses for `path` (its file name).
pub(crate) fn journal_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("?")
}

fn hex_trimmed(bytes: &[u8]) -> String {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut out = String::with_capacity(2 * end + 1);
    for byte in &bytes[..end] {
        out.push_str(&format!("{byte:02x}"));
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(any(test, feature = "fault-injection"))]
#[cfg_attr(not(feature = "fault-injection"), allow(unused_imports, unreachable_pub))]
pub use power_loss::{DropReport, PowerLoss, TornWrite, drop_unsynced};

#[cfg(any(test, feature = "fault-injection"))]
#[cfg_attr(not(feature = "fault-injection"), allow(unreachable_pub))]
mod power_loss {
    use std::collections::HashMap;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    use crate::error::LogError;
    use crate::state::STATE_FILE_NAME as STATE_NAME;
    use crate::state::STATE_SLOT_BYTES;

    /// Bytes of a disk sector: a torn write keeps whole sectors.
    const SECTOR_BYTES: u64 = 512;
    /// A journal larger than this is refused rather than read into memory.
    const JOURNAL_BYTES_MAX: u64 = 1 << 30;
    /// Largest write a journal line may claim (a submit is at most 1 GiB, see `LogConfig`).
    const WRITE_BYTES_MAX: u64 = 1 << 30;

    /// Which unsynced writes a power loss drops.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PowerLoss {
        /// Every write no completed sync covered is lost.
        All,
        /// Each unsynced write is lost or kept, by a coin of the seeded generator (the disk
        /// wrote some of the dirty pages back before the power went).
        RandomSubset,
        /// Every unsynced write is lost except the last one, which is torn at a 512-byte sector
        /// boundary inside it (chosen by the seed): its first sectors reached the disk.
        TornLast,
    }

    /// The last write of a [`PowerLoss::TornLast`], as torn.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TornWrite {
        pub file: String,
        pub offset: u64,
        /// Bytes kept from the start of the write (a multiple of the sector size past a sector
        /// boundary); the rest was reverted.
        pub kept_bytes: u64,
        pub reverted_bytes: u64,
    }

    /// What [`drop_unsynced`] did.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct DropReport {
        /// Writes journaled since the last open.
        pub writes_journaled: usize,
        /// Of those, covered by a completed sync (untouched).
        pub writes_synced: usize,
        /// Unsynced writes reverted, wholly or (the torn one) in part.
        pub writes_reverted: usize,
        /// Bytes restored to their durable content.
        pub bytes_reverted: u64,
        /// Unsynced writes left as they are (`RandomSubset`).
        pub writes_kept: usize,
        /// Unsynced writes to segment files that no longer exist (deleted by a compaction):
        /// nothing to revert.
        pub writes_to_deleted_files: usize,
        /// The torn write of `TornLast`, if there was an unsynced write.
        pub torn: Option<TornWrite>,
    }

    impl std::fmt::Display for DropReport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{} write(s) journaled since open: {} synced, {} reverted ({} bytes), {} unsynced kept, {} to deleted files",
                self.writes_journaled,
                self.writes_synced,
                self.writes_reverted,
                self.bytes_reverted,
                self.writes_kept,
                self.writes_to_deleted_files
            )?;
            if let Some(torn) = &self.torn {
                write!(
                    f,
                    "; torn: {} at {} kept {} bytes, reverted {}",
                    torn.file, torn.offset, torn.kept_bytes, torn.reverted_bytes
                )?;
            }
            Ok(())
        }
    }

    /// One journaled write.
    #[derive(Debug)]
    struct Write {
        seq: u64,
        file: String,
        offset: u64,
        len: u64,
        /// The bytes of a state write (trailing zeros trimmed).
        data: Option<Vec<u8>>,
        /// What a segment write's range held before it (trailing zeros trimmed; empty: zeros).
        was: Vec<u8>,
        synced: bool,
    }

    /// What happens to one unsynced write.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fate {
        Lost,
        Kept,
        /// The first `kept` bytes reached the disk.
        Torn {
            kept: u64,
        },
    }

    /// The seeded generator (tests print the seed and replay from it).
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Emulates a power loss on the STOPPED node whose log is in `log_dir`: reverts every write
    /// in `journal` (its `SMR_FAULT_SYNC_JOURNAL`) that no completed sync covered (all of them,
    /// a seeded random subset, or all with the last one torn, by `how`), syncs the reverted
    /// files, and empties the journal so that the next run starts fresh. Bytes a completed sync
    /// covered are never touched. `log_dir` is the directory the log was opened in (for a node,
    /// `data_dir/log`); `seed` picks the random subset or the tear, and replays them.
    ///
    /// # Errors
    /// [`LogError::Locked`] while a log has the directory open (the node is still running);
    /// [`LogError::Corruption`] for a journal line that cannot be parsed or names a range outside
    /// its file; I/O errors.
    pub fn drop_unsynced(log_dir: &Path, journal: &Path, how: PowerLoss, seed: u64) -> Result<DropReport, LogError> {
        let _lock = crate::log::lock_dir(log_dir)?;
        let length = fs::metadata(journal).map_err(|e| LogError::io("stat", journal, e))?.len();
        if length > JOURNAL_BYTES_MAX {
            return Err(bad_journal(journal, 0, format!("journal is {length} bytes, over {JOURNAL_BYTES_MAX}")));
        }
        let text = fs::read(journal).map_err(|e| LogError::io("read", journal, e))?;
        let (writes, base) = parse(journal, &text)?;
        let mut report = DropReport {
            writes_journaled: writes.len(),
            writes_synced: writes.iter().filter(|w| w.synced).count(),
            ..DropReport::default()
        };

        let unsynced: Vec<&Write> = writes.iter().filter(|w| !w.synced).collect();
        let mut rng = Rng::new(seed);
        let fates: Vec<Fate> = unsynced
            .iter()
            .enumerate()
            .map(|(i, write)| match how {
                PowerLoss::All => Fate::Lost,
                PowerLoss::RandomSubset => {
                    if rng.below(2) == 0 {
                        Fate::Lost
                    } else {
                        Fate::Kept
                    }
                }
                PowerLoss::TornLast if i + 1 < unsynced.len() => Fate::Lost,
                PowerLoss::TornLast => {
                    // Sector boundaries strictly inside the write; none: it is lost whole.
                    let first = (write.offset / SECTOR_BYTES + 1) * SECTOR_BYTES;
                    let end = write.offset + write.len;
                    if first >= end {
                        Fate::Lost
                    } else {
                        let boundaries = (end - 1 - first) / SECTOR_BYTES + 1;
                        Fate::Torn { kept: first + rng.below(boundaries) * SECTOR_BYTES - write.offset }
                    }
                }
            })
            .collect();

        // Segment files: zero the lost ranges, minus any range a synced or kept write covers.
        let mut protected: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for write in &writes {
            if write.synced {
                protected.entry(&write.file).or_default().push((write.offset, write.offset + write.len));
            }
        }
        for (write, fate) in unsynced.iter().zip(&fates) {
            match fate {
                Fate::Kept => protected.entry(&write.file).or_default().push((write.offset, write.offset + write.len)),
                Fate::Torn { kept } => {
                    protected.entry(&write.file).or_default().push((write.offset, write.offset + kept))
                }
                Fate::Lost => {}
            }
        }
        let mut touched: Vec<PathBuf> = Vec::new();
        for (write, fate) in unsynced.iter().zip(&fates) {
            if *fate == Fate::Kept {
                report.writes_kept += 1;
                continue;
            }
            let start = match fate {
                Fate::Torn { kept } => write.offset + kept,
                _ => write.offset,
            };
            let end = write.offset + write.len;
            if let Fate::Torn { kept } = fate {
                report.torn = Some(TornWrite {
                    file: write.file.clone(),
                    offset: write.offset,
                    kept_bytes: *kept,
                    reverted_bytes: end - start,
                });
            }
            if write.file == STATE_NAME {
                // Done below, per slot.
                report.writes_reverted += 1;
                continue;
            }
            let path = log_dir.join(&write.file);
            let file = match OpenOptions::new().write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.writes_to_deleted_files += 1;
                    continue;
                }
                Err(e) => return Err(LogError::io("open", &path, e)),
            };
            let file_bytes = file.metadata().map_err(|e| LogError::io("stat", &path, e))?.len();
            if end > file_bytes {
                return Err(bad_journal(
                    journal,
                    write.seq,
                    format!("write {} to {} ends at {end}, past the file's {file_bytes} bytes", write.seq, write.file),
                ));
            }
            let ranges = subtract((start, end), protected.get(write.file.as_str()).map_or(&[][..], |v| &v[..]));
            for (from, to) in ranges {
                // What the range held before the write: its `was` bytes, zeros past them.
                let mut before = vec![0u8; (to - from) as usize];
                let was_from = ((from - write.offset) as usize).min(write.was.len());
                let was_to = ((to - write.offset) as usize).min(write.was.len());
                before[..was_to - was_from].copy_from_slice(&write.was[was_from..was_to]);
                file.write_all_at(&before, from).map_err(|e| LogError::io("pwrite", &path, e))?;
                report.bytes_reverted += to - from;
            }
            report.writes_reverted += 1;
            if !touched.contains(&path) {
                touched.push(path);
            }
        }

        // The state file: each slot an unsynced write touched gets the content the writes that
        // reached the disk leave: the durable base, then every kept (or torn) write in order.
        let mut slots: HashMap<u64, Vec<u8>> = HashMap::new();
        for (write, fate) in unsynced.iter().zip(&fates) {
            if write.file != STATE_NAME {
                continue;
            }
            let slot = write.offset / STATE_SLOT_BYTES;
            let content = slots.entry(slot).or_insert_with(|| {
                let mut bytes = base[slot as usize].clone();
                bytes.resize(STATE_SLOT_BYTES as usize, 0);
                bytes
            });
            let mut data = write.data.clone().unwrap_or_default();
            data.resize(write.len as usize, 0);
            let at = (write.offset % STATE_SLOT_BYTES) as usize;
            match fate {
                Fate::Lost => {}
                Fate::Kept => content[at..at + data.len()].copy_from_slice(&data),
                Fate::Torn { kept } => content[at..at + *kept as usize].copy_from_slice(&data[..*kept as usize]),
            }
        }
        if !slots.is_empty() {
            let path = log_dir.join(STATE_NAME);
            let file = OpenOptions::new().write(true).open(&path).map_err(|e| LogError::io("open", &path, e))?;
            for (slot, content) in &slots {
                file.write_all_at(content, slot * STATE_SLOT_BYTES).map_err(|e| LogError::io("pwrite", &path, e))?;
                report.bytes_reverted += STATE_SLOT_BYTES;
            }
            touched.push(path);
        }

        for path in &touched {
            let file = fs::File::open(path).map_err(|e| LogError::io("open", path, e))?;
            file.sync_data().map_err(|e| crate::segment::sync_error(path, e))?;
        }
        let file = OpenOptions::new().write(true).open(journal).map_err(|e| LogError::io("open", journal, e))?;
        file.set_len(0).map_err(|e| LogError::io("truncate", journal, e))?;
        file.sync_all().map_err(|e| crate::segment::sync_error(journal, e))?;
        Ok(report)
    }

    fn bad_journal(journal: &Path, at: u64, detail: String) -> LogError {
        LogError::Corruption { path: journal.to_path_buf(), offset: at, index: 0, detail }
    }

    /// `range` minus every range of `holes`.
    fn subtract(range: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut out = vec![range];
        for &(hole_start, hole_end) in holes {
            out = out
                .into_iter()
                .flat_map(|(start, end)| {
                    if hole_end <= start || hole_start >= end {
                        return vec![(start, end)];
                    }
                    let mut parts = Vec::new();
                    if start < hole_start {
                        parts.push((start, hole_start));
                    }
                    if hole_end < end {
                        parts.push((hole_end, end));
                    }
                    parts
                })
                .collect();
        }
        out
    }

    /// The writes since the last open line (with whether a sync covered them) and the state
    /// slots' durable base content.
    fn parse(journal: &Path, text: &[u8]) -> Result<(Vec<Write>, [Vec<u8>; 2]), LogError> {
        let mut writes: Vec<Write> = Vec::new();
        let mut base: Option<[Vec<u8>; 2]> = None;
        let mut offset = 0u64;
        for raw in text.split_inclusive(|&b| b == b'\n') {
            let at = offset;
            offset += raw.len() as u64;
            let Some(raw) = raw.strip_suffix(b"\n") else {
                // Cut by the kill inside its write(2): that write was never issued.
                break;
            };
            let bad = |detail: String| bad_journal(journal, at, detail);
            let line = std::str::from_utf8(raw).map_err(|_| bad("line is not UTF-8".into()))?;
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["O", slot0, slot1] => {
                    let slot = |field: &str, name: &str| -> Result<Vec<u8>, LogError> {
                        let hex = field
                            .strip_prefix(name)
                            .and_then(|f| f.strip_prefix('='))
                            .ok_or_else(|| bad(format!("expected {name}=<hex>: {line}")))?;
                        unhex(hex, STATE_SLOT_BYTES).map_err(&bad)
                    };
                    base = Some([slot(slot0, "slot0")?, slot(slot1, "slot1")?]);
                    writes.clear();
                }
                ["W", seq, file, offset, len, ref data @ ..] if data.len() <= 1 => {
                    if base.is_none() {
                        return Err(bad("a write before any open line".into()));
                    }
                    let number = |field: &str| field.parse::<u64>().map_err(|_| bad(format!("bad number {field:?}")));
                    let (seq, offset, len) = (number(seq)?, number(offset)?, number(len)?);
                    if len > WRITE_BYTES_MAX || offset.checked_add(len).is_none() {
                        return Err(bad(format!("write of {len} bytes at {offset} is out of range")));
                    }
                    check_name(file).map_err(&bad)?;
                    let (data, was) = match (file == STATE_NAME, data.first()) {
                        (true, Some(hex)) => {
                            if offset % STATE_SLOT_BYTES + len > STATE_SLOT_BYTES {
                                return Err(bad(format!("state write at {offset} of {len} bytes crosses a slot")));
                            }
                            if offset / STATE_SLOT_BYTES > 1 {
                                return Err(bad(format!("state write at {offset} is past the second slot")));
                            }
                            (Some(unhex(hex, len).map_err(&bad)?), Vec::new())
                        }
                        (false, None) => (None, Vec::new()),
                        (false, Some(field)) => match field.strip_prefix("was=") {
                            Some(hex) => (None, unhex(hex, len).map_err(&bad)?),
                            None => return Err(bad(format!("a segment write carries only was=<hex>: {line}"))),
                        },
                        (true, None) => return Err(bad(format!("a state write carries its bytes: {line}"))),
                    };
                    if writes.last().is_some_and(|w| w.seq >= seq) {
                        return Err(bad(format!("write numbers do not increase at {seq}")));
                    }
                    writes.push(Write { seq, file: file.to_owned(), offset, len, data, was, synced: false });
                }
                ["S", _job, through, files] => {
                    let through = match through {
                        "-" => None,
                        n => Some(n.parse::<u64>().map_err(|_| bad(format!("bad number {n:?}")))?),
                    };
                    let files: Vec<&str> = files.split(',').filter(|f| !f.is_empty()).collect();
                    for write in &mut writes {
                        if through.is_some_and(|t| write.seq <= t) && files.contains(&write.file.as_str()) {
                            write.synced = true;
                        }
                    }
                    // A synced state write becomes its slot's durable content.
                    let base = base.as_mut().ok_or_else(|| bad("a sync before any open line".into()))?;
                    for write in writes.iter_mut().filter(|w| w.synced && w.file == STATE_NAME) {
                        if let Some(data) = write.data.take() {
                            let slot = (write.offset / STATE_SLOT_BYTES) as usize;
                            let at = (write.offset % STATE_SLOT_BYTES) as usize;
                            let content = &mut base[slot];
                            content.resize(STATE_SLOT_BYTES as usize, 0);
                            let mut bytes = data;
                            bytes.resize(write.len as usize, 0);
                            content[at..at + bytes.len()].copy_from_slice(&bytes);
                        }
                    }
                }
                _ => return Err(bad(format!("unknown line {line:?}"))),
            }
        }
        let base = base.unwrap_or_default();
        Ok((writes, base))
    }

    /// Journal file names: a segment file name or `state`, never a path.
    fn check_name(name: &str) -> Result<(), String> {
        let segment = name.strip_suffix(".seg").is_some_and(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()));
        if name == STATE_NAME || segment {
            Ok(())
        } else {
            Err(format!("{name:?} is neither a segment file name nor {STATE_NAME}"))
        }
    }

    fn unhex(hex: &str, bytes_max: u64) -> Result<Vec<u8>, String> {
        if hex == "-" {
            return Ok(Vec::new());
        }
        if !hex.len().is_multiple_of(2) || hex.len() as u64 > 2 * bytes_max {
            return Err(format!("bad hex of {} characters (at most {bytes_max} bytes)", hex.len()));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex {:?}", &hex[i..i + 2])))
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn subtract_cuts_holes() {
            assert_eq!(subtract((0, 100), &[]), vec![(0, 100)]);
            assert_eq!(subtract((0, 100), &[(10, 20), (50, 200)]), vec![(0, 10), (20, 50)]);
            assert_eq!(subtract((0, 100), &[(0, 100)]), vec![]);
        }

        #[test]
        fn bad_journal_lines_are_refused_with_their_offset() {
            let path = Path::new("journal");
            for text in [
                "W 0 00000000000000000001.seg 0 10\n",
                "O slot0=- slot1=-\nW 0 ../etc/passwd 0 10\n",
                "O slot0=- slot1=-\nW 0 state 0 10\n",
                "O slot0=- slot1=-\nW x 00000000000000000001.seg 0 10\n",
                "O slot0=- slot1=-\nW 0 00000000000000000001.seg 0 10 0102\n",
                "O slot0=- slot1=-\nW 0 00000000000000000001.seg 0 1 was=0102\n",
                "O slot0=zz slot1=-\n",
                "hello\n",
            ] {
                let error = parse(path, text.as_bytes()).unwrap_err();
                assert!(matches!(error, LogError::Corruption { .. }), "{text}: {error}");
            }
            // A last line without its newline was never completed: ignored.
            let (writes, _) = parse(path, b"O slot0=- slot1=-\nW 0 00000000000000000001.seg 4096 10").expect("parse");
            assert!(writes.is_empty());
        }

        #[test]
        fn a_sync_covers_only_earlier_writes_to_its_files() {
            let text = "O slot0=01 slot1=-\n\
                        W 0 00000000000000000001.seg 4096 100\n\
                        W 1 state 4096 4096 0203\n\
                        W 2 00000000000000000002.seg 4096 100\n\
                        S 0 1 00000000000000000001.seg,state\n\
                        W 3 00000000000000000001.seg 4196 100\n";
            let (writes, base) = parse(Path::new("journal"), text.as_bytes()).expect("parse");
            let synced: Vec<bool> = writes.iter().map(|w| w.synced).collect();
            assert_eq!(synced, vec![true, true, false, false]);
            assert_eq!(&base[0][..1], &[1]);
            assert_eq!(&base[1][..2], &[2, 3], "the synced state write is slot 1's durable content");
        }
    }
}
