//! The block device under the nodes' data directories: its requests and busy time over a
//! measured window, from the kernel's per-device counters (`/sys/dev/block/MAJ:MIN/stat`).
//!
//! It shows how hard a step pushed the disk, which on a machine whose nodes share one disk is
//! often what bounds the step: the bytes written and the flushes per proposed entry (three nodes
//! each write and flush every entry), what a flush took at the device, and the share of the
//! window the device had a request in flight. The counters are the whole device's, so anything
//! else using it in the window counts too.
//!
//! Write requests are not reported: the kernel counts each flush's empty write among them too
//! (measured on 6.18 against a block-layer trace of the same 5 s: 17,802 writes counted, 10,501
//! issued, 7,007 flushes; sectors and flushes matched the trace exactly).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The device's cumulative counters at one moment. Times are in ms, as the kernel keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DiskStat {
    sectors_written: u64,
    /// Milliseconds with at least one request in flight.
    busy_ms: u64,
    /// Flush requests; `None` on kernels before 5.5, whose stat lines stop before them.
    flushes: Option<u64>,
    flush_ms: Option<u64>,
}

/// Fields of a stat line (`Documentation/block/stat.rst`), 0-based.
const FIELD_SECTORS_WRITTEN: usize = 6;
/// Bytes of a sector in these counters, whatever the device's own sector size.
const SECTOR_BYTES: f64 = 512.0;
const FIELD_BUSY_MS: usize = 9;
const FIELD_FLUSHES: usize = 15;
const FIELD_FLUSH_MS: usize = 16;

/// Parses a device's stat line.
pub(crate) fn parse(line: &str) -> Result<DiskStat, String> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse::<u64>().map_err(|_| format!("a block stat field is not a number: {f:?} in {line:?}")))
        .collect::<Result<_, _>>()?;
    if fields.len() <= FIELD_BUSY_MS {
        return Err(format!(
            "a block stat line has {} fields, at least {} expected: {line:?}",
            fields.len(),
            FIELD_BUSY_MS + 1
        ));
    }
    Ok(DiskStat {
        sectors_written: fields[FIELD_SECTORS_WRITTEN],
        busy_ms: fields[FIELD_BUSY_MS],
        flushes: fields.get(FIELD_FLUSHES).copied(),
        flush_ms: fields.get(FIELD_FLUSH_MS).copied(),
    })
}

/// The stat file of the block device `path` is on.
///
/// # Errors
/// When `path` cannot be read, or is on no block device (tmpfs, overlay: major number 0).
pub(crate) fn stat_file_of(path: &Path) -> Result<PathBuf, String> {
    let dev = std::fs::metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major == 0 {
        return Err(format!("{} is on no block device (device {major}:{minor})", path.display()));
    }
    let file = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
    read(&file)?;
    Ok(file)
}

/// Reads the counters now.
pub(crate) fn read(file: &Path) -> Result<DiskStat, String> {
    let line = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    parse(&line)
}

/// The device over a measured window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct DiskWindow {
    /// Share of the window with a request in flight, in %.
    pub(crate) busy_percent: f64,
    pub(crate) written_mib_per_sec: f64,
    pub(crate) flushes_per_sec: Option<f64>,
    /// Mean time of a flush at the device (queue included), in µs; `None` without flushes.
    pub(crate) flush_mean_us: Option<f64>,
    /// KiB written and flushes per entry the leader proposed in the window; `None` when the
    /// entry count is not known.
    pub(crate) written_kib_per_entry: Option<f64>,
    pub(crate) flushes_per_entry: Option<f64>,
}

impl DiskWindow {
    /// From the counters at the window's edges, `secs` apart, with `entries` proposed in it.
    /// `None` when a counter went backwards (the device was reset or replaced).
    pub(crate) fn between(start: &DiskStat, end: &DiskStat, secs: f64, entries: Option<f64>) -> Option<DiskWindow> {
        if secs <= 0.0 {
            return None;
        }
        let written = end.sectors_written.checked_sub(start.sectors_written)? as f64 * SECTOR_BYTES;
        let busy_ms = end.busy_ms.checked_sub(start.busy_ms)?;
        let flushes = end.flushes.zip(start.flushes).and_then(|(e, s)| e.checked_sub(s));
        let flush_ms = end.flush_ms.zip(start.flush_ms).and_then(|(e, s)| e.checked_sub(s));
        let mean_us = |ms: u64, count: u64| (count > 0).then(|| ms as f64 * 1_000.0 / count as f64);
        let entries = entries.filter(|&e| e > 0.0);
        Some(DiskWindow {
            busy_percent: (busy_ms as f64 / 10.0 / secs).min(100.0),
            written_mib_per_sec: written / secs / (1 << 20) as f64,
            flushes_per_sec: flushes.map(|f| f as f64 / secs),
            flush_mean_us: flush_ms.zip(flushes).and_then(|(ms, f)| mean_us(ms, f)),
            written_kib_per_entry: entries.map(|e| written / 1024.0 / e),
            flushes_per_entry: entries.zip(flushes).map(|(e, f)| f as f64 / e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of this machine's `/sys/block/vda/stat` (kernel 6.18: 17 fields).
    const LINE: &str = " 3251838    80929 119975842  5019775 66793790   720065 2693787928 23106559        0  \
                        8648700 34487289   579786      141 1736070432   902626 26779278  5458328\n";

    #[test]
    fn stat_lines_parse_with_and_without_flush_counters() {
        let stat = parse(LINE).unwrap();
        assert_eq!(
            stat,
            DiskStat {
                sectors_written: 2_693_787_928,
                busy_ms: 8_648_700,
                flushes: Some(26_779_278),
                flush_ms: Some(5_458_328)
            }
        );
        let old: String = LINE.split_whitespace().take(11).collect::<Vec<_>>().join(" ");
        assert_eq!(parse(&old).unwrap().flushes, None);
        assert!(parse("1 2 3").unwrap_err().contains("3 fields"));
        assert!(parse(&LINE.replace("141", "x")).unwrap_err().contains("\"x\""));
    }

    #[test]
    fn a_window_gives_rates_means_and_figures_per_entry() {
        let start = DiskStat { sectors_written: 1_000, busy_ms: 2_000, flushes: Some(400), flush_ms: Some(100) };
        // 8 MiB written in 4 s.
        let end = DiskStat { sectors_written: 17_384, busy_ms: 4_000, flushes: Some(2_400), flush_ms: Some(600) };
        let w = DiskWindow::between(&start, &end, 4.0, Some(512.0)).unwrap();
        assert_eq!(w.busy_percent, 50.0);
        assert_eq!(w.written_mib_per_sec, 2.0);
        assert_eq!(w.flushes_per_sec, Some(500.0));
        assert_eq!(w.flush_mean_us, Some(250.0));
        assert_eq!((w.written_kib_per_entry, w.flushes_per_entry), (Some(16.0), Some(2000.0 / 512.0)));
        let unknown = DiskWindow::between(&start, &end, 4.0, None).unwrap();
        assert_eq!(unknown.written_kib_per_entry, None);
        assert!(DiskWindow::between(&end, &start, 4.0, None).is_none(), "counters that went back");
        let idle = DiskWindow::between(&start, &start, 4.0, Some(0.0)).unwrap();
        assert_eq!((idle.flush_mean_us, idle.written_kib_per_entry), (None, None));
    }

    #[test]
    fn the_device_of_a_path_is_found_or_named_missing() {
        match stat_file_of(Path::new(env!("CARGO_MANIFEST_DIR"))) {
            Ok(file) => assert!(read(&file).is_ok()),
            // A checkout on tmpfs or overlay has no block device; the error says so.
            Err(message) => {
                assert!(message.contains("no block device") || message.contains("cannot read"), "{message}")
            }
        }
        assert!(stat_file_of(Path::new("/nonexistent/smr")).unwrap_err().contains("cannot stat"));
        assert!(stat_file_of(Path::new("/proc")).unwrap_err().contains("no block device"));
    }
}
