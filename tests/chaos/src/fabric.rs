//! The hosts' network: one network namespace per node, each with a veth pair into a Linux
//! bridge in the root namespace, and an address `10.231.S.H` (`S` the cluster's subnet, `H` the
//! host number); the bridge itself is `10.231.S.254`, which is where the clients (this process,
//! in the root namespace) reach the nodes from. Faults are injected inside a node's namespace:
//! nft rules in one table (`inet smrc`) on the input hook for partitions and packet loss, a
//! `tbf` qdisc on both ends of its veth for a slow link, and for delay and reordering an iptables
//! NFQUEUE rule feeding the peer packets that leave the host to a delayer process
//! ([`crate::delay`], `smr-chaos delay`) in its namespace.
//!
//! Every name starts with [`NAME_PREFIX`] and carries the owning process id in hex, so that
//! [`remove_leftovers`] can tell the leftovers of a crashed run (owner dead) from a live run of
//! another process. Everything is removed when the [`Namespaces`] drop, delayers included; a
//! delayer left by a killed run is inside one of its namespaces and is killed with the nodes.
//!
//! This kernel has no `sch_netem` (`tc qdisc add ... netem` fails with "Specified qdisc kind is
//! unknown"), hence the delayer: see [`crate::delay`] for how it works and why it fails open.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::delay::{DelaySpec, DelayStats};

/// The first characters of every namespace, link and bridge name this crate makes.
pub const NAME_PREFIX: &str = "smrc";
/// The first two octets of every address (`10.231.0.0/16`).
const NETWORK: [u8; 2] = [10, 231];
/// The host number of the bridge's own address, where clients connect from.
pub const BRIDGE_HOST: u8 = 254;
/// Host numbers run from 1 to this (a cluster with joiners and replacements).
pub const HOSTS_MAX: u8 = 16;
/// Subnets tried, `10.231.S.0/24` for S in `0..SUBNETS`.
const SUBNETS: u16 = 250;
/// The nft table that holds every rule of a host.
const NFT_TABLE: &str = "smrc";

/// How long a delayer may take to bind its queue after it was started, in milliseconds (a
/// process start on a loaded two-core machine takes tens of them).
const DELAYER_START_MS_MAX: u64 = 10_000;
/// How long a delayer may take to release what it holds and exit after SIGTERM, in milliseconds;
/// after it, it is killed and reported.
const DELAYER_STOP_MS_MAX: u64 = 5_000;

/// Runs a command and returns its stdout, or an error naming the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin.write_all(text.as_bytes()).map_err(|e| format!("cannot feed {program}: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("cannot wait for {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The owner's pid in a name made here (`smrc<hex pid>...` or `smrc-<hex pid>-...`).
fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u32::from_str_radix(&hex, 16).ok()
}

/// Removes the namespaces, links and bridges of earlier runs whose process is gone, killing
/// any node process still running inside such a namespace. Returns what it removed.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let stale = |name: &str| owner_of(name).is_some_and(|pid| pid != me && !pid_alive(pid));
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|line| line.split_whitespace().next()) {
            if name.starts_with(NAME_PREFIX) && stale(name) {
                kill_processes_in(name);
                if run("ip", &["netns", "delete", name]).is_ok() {
                    removed.push(format!("netns {name}"));
                }
            }
        }
    }
    if let Ok(list) = run("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: smrc1a2bp1@if2: <...>"
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            if name.starts_with(NAME_PREFIX) && stale(name) && run("ip", &["link", "delete", name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    removed
}

fn kill_processes_in(netns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", netns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: SIGKILL to a process left inside a namespace of ours by a dead run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Why namespaces cannot be made here, or `None` if they can be tried.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces need CAP_NET_ADMIN)".to_owned());
    }
    if let Err(error) = run("ip", &["netns", "list"]) {
        return Some(format!("`ip netns` does not work: {error}"));
    }
    None
}

/// The filter state of one host, regenerated as a whole into its nft table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Filter {
    /// Hosts whose packets this host drops.
    drop_from: BTreeSet<u8>,
    /// Percentage of packets from other hosts dropped at random.
    loss_percent: u8,
}

/// A delayer process in a host's namespace and the iptables rule that feeds it.
#[derive(Debug)]
struct Delayer {
    child: Child,
    /// The delayer's stdout, past its `ready` line: its counts come here when it stops.
    stdout: BufReader<ChildStdout>,
    /// The rule's arguments after `-A`/`-D`.
    rule: Vec<String>,
    spec: DelaySpec,
}

/// What one host's delayer did, read when it was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayReport {
    pub host: u8,
    pub spec: DelaySpec,
    pub stats: DelayStats,
}

/// The namespaces, veth pairs and bridge of one cluster.
#[derive(Debug)]
pub struct Namespaces {
    /// The owner's pid in hex, in every name.
    tag: String,
    subnet: u8,
    hosts: BTreeSet<u8>,
    filters: Vec<Filter>,
    slow: BTreeSet<u8>,
    delayers: BTreeMap<u8, Delayer>,
    nft_checked: bool,
    iptables_checked: bool,
}

impl Namespaces {
    /// Makes the bridge on a free subnet. Hosts are added with [`Namespaces::add_host`].
    ///
    /// # Errors
    /// A command failed (not root, no iproute2, no bridge support); what was made is removed.
    pub fn create() -> Result<Namespaces, String> {
        if let Some(reason) = unavailable_reason() {
            return Err(reason);
        }
        let pid = std::process::id();
        let tag = format!("{pid:x}");
        let used = run("ip", &["-o", "-4", "addr", "show"])?;
        let start = (pid % u32::from(SUBNETS)) as u16;
        let subnet = (0..SUBNETS)
            .map(|offset| ((start + offset) % SUBNETS) as u8)
            .find(|s| !used.contains(&format!(" {}.{}.{s}.", NETWORK[0], NETWORK[1])))
            .ok_or("every subnet of 10.231.0.0/16 is in use")?;
        let fabric = Namespaces {
            tag,
            subnet,
            hosts: BTreeSet::new(),
            filters: vec![Filter::default(); usize::from(HOSTS_MAX) + 1],
            slow: BTreeSet::new(),
            delayers: BTreeMap::new(),
            nft_checked: false,
            iptables_checked: false,
        };
        let bridge = fabric.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let address = format!("{}/24", fabric.address(BRIDGE_HOST));
        run("ip", &["addr", "add", &address, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(fabric)
    }

    fn bridge(&self) -> String {
        format!("{NAME_PREFIX}{}x", self.tag)
    }

    fn veth(&self, host: u8) -> String {
        format!("{NAME_PREFIX}{}p{host}", self.tag)
    }

    /// The namespace of `host`.
    pub fn netns(&self, host: u8) -> String {
        format!("{NAME_PREFIX}-{}-{host}", self.tag)
    }

    /// The address of `host` (or of the bridge, [`BRIDGE_HOST`]).
    pub fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(NETWORK[0], NETWORK[1], self.subnet, host)
    }

    /// The namespace file of `host`, for `setns` in a child about to exec.
    ///
    /// # Errors
    /// The host was not made.
    pub fn netns_file(&self, host: u8) -> Result<File, String> {
        let path = format!("/run/netns/{}", self.netns(host));
        File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))
    }

    /// Makes `host`'s namespace, its veth pair into the bridge and its address.
    ///
    /// # Errors
    /// A command failed.
    pub fn add_host(&mut self, host: u8) -> Result<(), String> {
        assert!((1..=HOSTS_MAX).contains(&host), "host numbers run from 1 to {HOSTS_MAX}");
        if self.hosts.contains(&host) {
            return Ok(());
        }
        let netns = self.netns(host);
        let veth = self.veth(host);
        run("ip", &["netns", "add", &netns])?;
        self.hosts.insert(host);
        run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        run("ip", &["link", "set", &veth, "master", &self.bridge(), "up"])?;
        let address = format!("{}/24", self.address(host));
        run("ip", &["-n", &netns, "addr", "add", &address, "dev", "eth0"])?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn check_nft(&mut self) -> Result<(), String> {
        if !self.nft_checked {
            run("nft", &["--version"])
                .map_err(|e| format!("nft is needed for partitions and packet loss (apt-get install nftables): {e}"))?;
            self.nft_checked = true;
        }
        Ok(())
    }

    fn apply_filter(&mut self, host: u8) -> Result<(), String> {
        self.check_nft()?;
        let filter = &self.filters[usize::from(host)];
        let mut script = format!(
            "add table inet {NFT_TABLE}\nflush table inet {NFT_TABLE}\n\
             add chain inet {NFT_TABLE} input {{ type filter hook input priority 0 ; policy accept ; }}\n"
        );
        if !filter.drop_from.is_empty() {
            let from: Vec<String> = filter.drop_from.iter().map(|&h| self.address(h).to_string()).collect();
            script += &format!("add rule inet {NFT_TABLE} input ip saddr {{ {} }} drop\n", from.join(", "));
        }
        if filter.loss_percent > 0 {
            let peers: Vec<String> =
                self.hosts.iter().filter(|&&h| h != host).map(|&h| self.address(h).to_string()).collect();
            if !peers.is_empty() {
                script += &format!(
                    "add rule inet {NFT_TABLE} input ip saddr {{ {} }} numgen random mod 100 < {} drop\n",
                    peers.join(", "),
                    filter.loss_percent
                );
            }
        }
        let netns = self.netns(host);
        run_with_input("ip", &["netns", "exec", &netns, "nft", "-f", "-"], Some(&script)).map(|_| ())
    }

    /// From now on `to` drops every packet from `from` (a one-way cut).
    ///
    /// # Errors
    /// nft failed.
    pub fn cut(&mut self, from: u8, to: u8) -> Result<(), String> {
        self.filters[usize::from(to)].drop_from.insert(from);
        self.apply_filter(to)
    }

    /// Every host drops `percent` % of the packets from the other hosts (not from clients).
    ///
    /// # Errors
    /// nft failed.
    pub fn set_loss(&mut self, hosts: &[u8], percent: u8) -> Result<(), String> {
        for &host in hosts {
            self.filters[usize::from(host)].loss_percent = percent.min(100);
            self.apply_filter(host)?;
        }
        Ok(())
    }

    /// Limits `host`'s link to `kbit` kbit/s both ways with a token bucket (tbf).
    ///
    /// # Errors
    /// tc failed.
    pub fn slow(&mut self, host: u8, kbit: u32) -> Result<(), String> {
        let rate = format!("{kbit}kbit");
        let netns = self.netns(host);
        let shape = ["root", "tbf", "rate", &rate, "burst", "16kb", "latency", "200ms"];
        let inner: Vec<&str> = ["-n", &netns, "qdisc", "replace", "dev", "eth0"].into_iter().chain(shape).collect();
        run("tc", &inner)?;
        let veth = self.veth(host);
        let outer: Vec<&str> = ["qdisc", "replace", "dev", &veth].into_iter().chain(shape).collect();
        run("tc", &outer)?;
        self.slow.insert(host);
        Ok(())
    }

    fn check_iptables(&mut self) -> Result<(), String> {
        if !self.iptables_checked {
            run("iptables", &["--version"]).map_err(|e| {
                format!(
                    "iptables is needed for delay and reordering, an NFQUEUE rule feeding the delayer \
                     (apt-get install iptables): {e}"
                )
            })?;
            self.iptables_checked = true;
        }
        Ok(())
    }

    /// Delays the peer packets leaving `host` by `spec` (reordering them when the jitter is wider
    /// than the gap between packets): starts a delayer (`smr-chaos delay`, found next to the
    /// `smr` binary) in the host's namespace, waits until it has bound its queue, then adds an
    /// iptables rule that queues every TCP packet leaving the host's `eth0` for another host.
    /// Packets to the bridge's address (the clients, and the harness's own status requests) are
    /// left alone, so that the fault is between the nodes and the harness measures it rather than
    /// suffers it.
    ///
    /// # Errors
    /// No iptables, no `smr-chaos` binary, the host is delayed already, or the delayer did not
    /// start.
    pub fn delay(&mut self, host: u8, spec: DelaySpec) -> Result<(), String> {
        self.check_iptables()?;
        if self.delayers.contains_key(&host) {
            return Err(format!("host {host} is delayed already; heal first"));
        }
        let program = crate::cluster::binary("smr-chaos")?;
        let netns = self.netns(host);
        // Each namespace has queue numbers of its own, so any would do; the host number makes a
        // delayer's command line (in `ps`) say whose it is.
        let queue = u16::from(host);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &netns])
            .arg(&program)
            .args(["delay", "--queue", &queue.to_string(), "--delay-ms", &spec.delay_ms.to_string()])
            .args(["--jitter-ms", &spec.jitter_ms.to_string(), "--seed", &spec.seed.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is a plain system call, async-signal-safe between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // The delayer dies with the thread that started it, should the harness be killed
                // (`ip netns exec` execs it in the same process, which keeps this setting).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut stdout = BufReader::new(stdout);
        if let Err(error) = wait_ready(&mut child, &mut stdout, host) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "eth0",
            "-p",
            "tcp",
            "!",
            "-d",
            &self.address(BRIDGE_HOST).to_string(),
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue.to_string(),
            "--queue-bypass",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Err(error) = iptables(&netns, "-A", &rule) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(error);
        }
        self.delayers.insert(host, Delayer { child, stdout, rule, spec });
        Ok(())
    }

    /// The process id of `host`'s delayer, while it is delayed.
    pub fn delayer_pid(&self, host: u8) -> Option<u32> {
        self.delayers.get(&host).map(|d| d.child.id())
    }

    /// Removes `host`'s NFQUEUE rule, then stops its delayer and reads its counts.
    ///
    /// # Errors
    /// The delayer died while its fault was on (its packets went undelayed, passed by the rule's
    /// `--queue-bypass`), did not stop in time or printed no counts; or iptables failed.
    fn stop_delayer(&mut self, host: u8) -> Result<DelayReport, String> {
        let Some(mut delayer) = self.delayers.remove(&host) else {
            return Err(format!("host {host} has no delayer"));
        };
        // The rule first: then nothing more enters the queue, and the delayer releases what it
        // holds before it exits, so that no packet is dropped with the queue.
        let unruled = iptables(&self.netns(host), "-D", &delayer.rule);
        let died = delayer.child.try_wait().map_err(|e| format!("cannot check the delayer of host {host}: {e}"))?;
        if let Some(status) = died {
            return Err(format!(
                "the delayer of host {host} ({:?}) DIED while its fault was on ({status}): from then on the \
                 host's packets passed undelayed (--queue-bypass); its stderr is above",
                delayer.spec
            ));
        }
        // SAFETY: signalling a child process we own and have not reaped.
        unsafe { libc::kill(delayer.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(DELAYER_STOP_MS_MAX);
        let status = loop {
            match delayer.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = delayer.child.kill();
                    let _ = delayer.child.wait();
                    return Err(format!(
                        "the delayer of host {host} did not stop within {DELAYER_STOP_MS_MAX} ms of SIGTERM"
                    ));
                }
            }
        };
        let mut output = String::new();
        let _ = delayer.stdout.read_to_string(&mut output);
        unruled?;
        if !status.success() {
            return Err(format!("the delayer of host {host} failed ({status}); its stderr is above"));
        }
        let stats = output
            .lines()
            .last()
            .and_then(|line| serde_json::from_str::<DelayStats>(line).ok())
            .ok_or_else(|| format!("the delayer of host {host} printed no counts: {output:?}"))?;
        Ok(DelayReport { host, spec: delayer.spec, stats })
    }

    /// Removes every partition, loss rule, rate limit and delay; returns what the delayers did.
    ///
    /// # Errors
    /// nft, tc or iptables failed, or a delayer had died (see [`Namespaces::delay`]); every
    /// fault is removed all the same.
    pub fn heal(&mut self) -> Result<Vec<DelayReport>, String> {
        let mut errors = Vec::new();
        let mut reports = Vec::new();
        let delayed: Vec<u8> = self.delayers.keys().copied().collect();
        for host in delayed {
            match self.stop_delayer(host) {
                Ok(report) => reports.push(report),
                Err(error) => errors.push(error),
            }
        }
        let hosts: Vec<u8> = self.hosts.iter().copied().collect();
        for host in hosts {
            if self.filters[usize::from(host)] != Filter::default() {
                self.filters[usize::from(host)] = Filter::default();
                if let Err(error) = self.apply_filter(host) {
                    errors.push(error);
                }
            }
        }
        for host in std::mem::take(&mut self.slow) {
            let netns = self.netns(host);
            for result in [
                run("tc", &["-n", &netns, "qdisc", "del", "dev", "eth0", "root"]),
                run("tc", &["qdisc", "del", "dev", &self.veth(host), "root"]),
            ] {
                if let Err(error) = result {
                    errors.push(error);
                }
            }
        }
        if errors.is_empty() { Ok(reports) } else { Err(errors.join("; ")) }
    }
}

/// Runs `iptables ACTION RULE...` inside `netns`.
fn iptables(netns: &str, action: &str, rule: &[String]) -> Result<(), String> {
    let mut args = vec!["netns", "exec", netns, "iptables", action];
    args.extend(rule.iter().map(String::as_str));
    run("ip", &args).map(|_| ())
}

/// Waits until a delayer just started says `ready` (its queue is bound).
fn wait_ready(child: &mut Child, stdout: &mut BufReader<ChildStdout>, host: u8) -> Result<(), String> {
    let mut poll = libc::pollfd { fd: stdout.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, which lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, DELAYER_START_MS_MAX as libc::c_int) };
    if ready <= 0 {
        return Err(format!("the delayer of host {host} did not bind its queue within {DELAYER_START_MS_MAX} ms"));
    }
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| format!("cannot read the delayer of host {host}: {e}"))?;
    if line.trim() == "ready" {
        return Ok(());
    }
    let status = child.wait().map_err(|e| format!("cannot wait for the delayer of host {host}: {e}"))?;
    Err(format!("the delayer of host {host} did not start ({status}, said {line:?}); its stderr is above"))
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // The delayers first and reaped, so that none is left even as a zombie; the namespace's
        // deletion takes the rules with it.
        for delayer in self.delayers.values_mut() {
            let _ = delayer.child.kill();
            let _ = delayer.child.wait();
        }
        for &host in &self.hosts {
            let netns = self.netns(host);
            kill_processes_in(&netns);
            // Deleting the namespace deletes the veth pair with it.
            let _ = run("ip", &["netns", "delete", &netns]);
            let _ = run("ip", &["link", "delete", &self.veth(host)]);
        }
        let _ = run("ip", &["link", "delete", &self.bridge()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_back_from_every_kind_of_name() {
        assert_eq!(owner_of("smrc1a2bx"), Some(0x1a2b));
        assert_eq!(owner_of("smrc1a2bp12"), Some(0x1a2b));
        assert_eq!(owner_of("smrc-1a2b-3"), Some(0x1a2b));
        assert_eq!(owner_of("smrcx"), None);
        assert_eq!(owner_of("eth0"), None);
    }
}
