//! CPU time of processes from `/proc/<pid>/stat`: utime + stime, in clock ticks, turned into
//! nanoseconds with `sysconf(_SC_CLK_TCK)`; and their memory from `/proc/<pid>/status`: resident
//! set size now (`VmRSS`) and at its peak (`VmHWM`, the high-water mark since the process began).

/// Fields of `/proc/<pid>/stat` after the command name, which is in parentheses and may itself
/// contain spaces and parentheses (hence: split after the *last* `)`).
fn fields_after_comm(line: &str) -> Option<Vec<&str>> {
    let close = line.rfind(')')?;
    Some(line[close + 1..].split_whitespace().collect())
}

/// utime + stime in clock ticks (fields 14 and 15 of proc(5), counting from 1).
pub(crate) fn cpu_ticks(line: &str) -> Option<u64> {
    let fields = fields_after_comm(line)?;
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_per_second() -> Result<u64, String> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 { Err("sysconf(_SC_CLK_TCK) failed".to_owned()) } else { Ok(ticks as u64) }
}

fn cpu_ns_of(path: &str) -> Result<u64, String> {
    let line = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = cpu_ticks(&line).ok_or_else(|| format!("cannot parse {path}: {line:?}"))?;
    Ok(ticks * (1_000_000_000 / ticks_per_second()?))
}

/// Total CPU time (user + system) of the given processes so far, in ns.
pub(crate) fn cpu_ns_of_pids(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|pid| cpu_ns_of(&format!("/proc/{pid}/stat"))).sum()
}

/// CPU time of this process so far (all its threads), in ns.
pub(crate) fn cpu_ns_of_self() -> Result<u64, String> {
    cpu_ns_of("/proc/self/stat")
}

/// A process's resident memory, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) peak_rss_kib: u64,
    /// The anonymous part of `rss_kib` (`RssAnon`: heap and stacks, not mapped files such as
    /// the node's memory-mapped log); `None` on kernels before 4.5, which lack the line.
    pub(crate) anon_kib: Option<u64>,
}

/// The value of a `Name:   1234 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        (words.next()? == "kB").then_some(value)
    })
}

pub(crate) fn parse_memory(status: &str) -> Option<Memory> {
    Some(Memory {
        rss_kib: status_kib(status, "VmRSS")?,
        peak_rss_kib: status_kib(status, "VmHWM")?,
        anon_kib: status_kib(status, "RssAnon"),
    })
}

/// The memory of process `pid`.
pub(crate) fn memory_of_pid(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_memory(&status).ok_or_else(|| format!("no VmRSS and VmHWM lines in {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_from_a_status_file() {
        let status = "Name:\tsmr\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 1204316 kB\nVmSize:\t 1138780 kB\n\
                      VmLck:\t       0 kB\nVmHWM:\t   91232 kB\nVmRSS:\t   88120 kB\nRssAnon:\t   40000 kB\n\
                      Threads:\t12\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory { rss_kib: 88_120, peak_rss_kib: 91_232, anon_kib: Some(40_000) })
        );
        let old_kernel = "VmHWM:\t 9 kB\nVmRSS:\t 8 kB\n";
        assert_eq!(parse_memory(old_kernel), Some(Memory { rss_kib: 8, peak_rss_kib: 9, anon_kib: None }));
        // A kernel thread has neither line; a garbled value or unit is refused.
        assert_eq!(parse_memory("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_memory("VmHWM:\t 9 kB\nVmRSS:\t x kB\n"), None);
        assert_eq!(parse_memory("VmHWM:\t 9 kB\nVmRSS:\t 8 MB\n"), None);
        // VmRSSfoo is not VmRSS.
        assert_eq!(parse_memory("VmHWM:\t 9 kB\nVmRSSfoo:\t 8 kB\n"), None);
    }

    #[test]
    fn reads_the_memory_of_this_process() {
        let memory = memory_of_pid(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0 && memory.peak_rss_kib >= memory.rss_kib, "{memory:?}");
    }

    #[test]
    fn parses_a_sample_line() {
        // From a running `smr node`: utime 1234, stime 567.
        let line = "4242 (smr) S 4200 4242 4200 0 -1 4194560 2210 0 0 0 1234 567 0 0 20 0 9 0 \
                    1021337 1234567890 3456 18446744073709551615 1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(cpu_ticks(line), Some(1234 + 567));
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let line = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_ticks(line), Some(30));
    }

    #[test]
    fn truncated_or_garbled_lines_are_refused() {
        assert_eq!(cpu_ticks("7 (x) R 1 2 3"), None);
        assert_eq!(cpu_ticks("no parenthesis here"), None);
        assert_eq!(cpu_ticks("7 (x) R 1 7 7 0 -1 0 0 0 0 0 ten 20 0"), None);
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_ns_of_self().is_ok());
    }
}
