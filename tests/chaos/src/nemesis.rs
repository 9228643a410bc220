//! Faults, and a chaos run: a cluster under a recorded workload, faults injected and healed
//! one at a time, then the checks — the history is linearizable, every acknowledged write is
//! there at the end, every replica has the same state hash, and after every heal the cluster
//! served a write again within two election timeouts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use smr_net::AdminRequest;
use smr_raft::SplitMix64;

use crate::check::{self, Verdict};
use crate::cluster::{Cluster, ELECTION_TIMEOUT, PATIENCE, in_ci};
use crate::delay::DelaySpec;
use crate::fabric::DelayReport;
use crate::workload::{self, Workload, WorkloadSpec};

/// One kind of fault, injected for a while and then healed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of the leader, restarted at the heal.
    KillLeader,
    /// SIGKILL of a follower, restarted at the heal.
    KillFollower,
    /// SIGKILL of any node, restarted at the heal.
    KillRandom,
    /// SIGSTOP of the leader for longer than an election timeout, then SIGCONT.
    PauseLeader,
    /// SIGSTOP of a follower, then SIGCONT.
    PauseFollower,
    /// SIGSTOP of a majority (the leader among them): no progress until SIGCONT.
    PauseMajority,
    /// A random minority cut off from the majority, both ways.
    MajorityMinority,
    /// The leader cut off from everyone.
    IsolateLeader,
    /// Two sides that cannot talk, and one node that talks to both.
    Bridge,
    /// Followers drop everything from the leader; the leader still hears them.
    OneWay,
    /// Every node drops 25 % of the packets from the other nodes (nft numgen).
    PacketLoss,
    /// A follower's link limited to 256 kbit/s each way (tbf).
    SlowFollower,
    /// The leader's link limited to 256 kbit/s each way (tbf).
    SlowLeader,
    /// Every node's peer packets held 10 + [0, 20] ms (20 ± 10 ms) on the way out (the NFQUEUE
    /// delayer), so a round trip between two nodes takes 20 to 60 ms: well below the election
    /// timeout (400 to 800 ms) and near the 40 ms heartbeat, so the cluster must keep serving.
    DelayedLinks,
    /// Every node's peer packets held 2 + [0, 8] ms: jitter far wider than the gap between two
    /// packets of a loaded link, so packets leave out of order (TCP must put them back).
    ReorderedLinks,
}

/// How long after a cut the cut-off side's commit index is read (messages already in flight
/// arrive within it).
const FROZEN_AFTER: Duration = Duration::from_millis(300);
/// Rate of a slowed link.
pub const SLOW_LINK_KBIT: u32 = 256;
/// Percentage of peer packets dropped under [`Fault::PacketLoss`].
pub const LOSS_PERCENT: u8 = 25;
/// Base delay and jitter of [`Fault::DelayedLinks`], in milliseconds.
pub const DELAYED_LINK_DELAY_MS: u32 = 10;
pub const DELAYED_LINK_JITTER_MS: u32 = 20;
/// Base delay and jitter of [`Fault::ReorderedLinks`], in milliseconds.
pub const REORDERED_LINK_DELAY_MS: u32 = 2;
pub const REORDERED_LINK_JITTER_MS: u32 = 8;

impl Fault {
    pub const ALL: [Fault; 15] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillRandom,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::PauseMajority,
        Fault::MajorityMinority,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::OneWay,
        Fault::PacketLoss,
        Fault::SlowFollower,
        Fault::SlowLeader,
        Fault::DelayedLinks,
        Fault::ReorderedLinks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillRandom => "kill-random",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseFollower => "pause-follower",
            Fault::PauseMajority => "pause-majority",
            Fault::MajorityMinority => "partition-majority-minority",
            Fault::IsolateLeader => "partition-isolate-leader",
            Fault::Bridge => "partition-bridge",
            Fault::OneWay => "partition-one-way",
            Fault::PacketLoss => "packet-loss",
            Fault::SlowFollower => "slow-link-follower",
            Fault::SlowLeader => "slow-link-leader",
            Fault::DelayedLinks => "delayed-links",
            Fault::ReorderedLinks => "reordered-links",
        }
    }

    /// Whether it needs network namespaces (else only processes are touched).
    pub fn needs_network(self) -> bool {
        !matches!(
            self,
            Fault::KillLeader
                | Fault::KillFollower
                | Fault::KillRandom
                | Fault::PauseLeader
                | Fault::PauseFollower
                | Fault::PauseMajority
        )
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub verdict: Verdict,
    /// Faults injected, by name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Time from each heal to the next acknowledged write, with the fault healed.
    pub recoveries: Vec<(&'static str, Duration)>,
    /// Recoveries slower than two election timeouts.
    pub slow_recoveries: Vec<String>,
    /// Replicas with a different state hash at the same applied index, or nodes that crashed.
    pub replica_problems: Vec<String>,
}

impl RunReport {
    pub fn violations(&self) -> usize {
        self.verdict.violations() + self.slow_recoveries.len() + self.replica_problems.len()
    }

    pub fn describe(&self) -> String {
        let faults: Vec<String> = self.faults.iter().map(|(name, n)| format!("{name} x{n}")).collect();
        let worst = self.recoveries.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let recovery = if self.recoveries.is_empty() {
            "no heals measured".to_owned()
        } else {
            format!("writes served again within {worst:?} of each heal at worst (bound {:?})", 2 * ELECTION_TIMEOUT)
        };
        let mut text = format!("faults: {}; {recovery}\n{}", faults.join(", "), self.verdict.describe());
        for line in self.slow_recoveries.iter().chain(&self.replica_problems) {
            text += line;
            text.push('\n');
        }
        text
    }

    /// Panics with the report if anything was wrong.
    pub fn assert_ok(&self) {
        assert_eq!(self.violations(), 0, "the chaos run found violations:\n{}", self.describe());
        assert!(self.verdict.acknowledged_writes > 0, "no write was acknowledged at all:\n{}", self.describe());
    }
}

/// A cluster under a recorded workload, with faults.
#[derive(Debug)]
pub struct Run {
    pub cluster: Cluster,
    workload: Option<Workload>,
    pub rng: SplitMix64,
    report: RunReport,
    name: String,
}

impl Run {
    /// Starts `nodes` nodes and the workload. With `network` faults wanted and no namespaces
    /// (not root), says so loudly and returns `None` (the test is then skipped), except under
    /// `CI=true`, where the cluster start has already failed.
    pub fn start(name: &str, nodes: u64, network: bool, spec: &WorkloadSpec) -> Option<Run> {
        let cluster = Cluster::start(nodes);
        if network && !cluster.network_faults_possible() {
            assert!(!in_ci(), "CI=true: {name} needs network namespaces");
            eprintln!("!!! smr-chaos: SKIPPING {name}: it needs network namespaces, and this run has none");
            return None;
        }
        cluster.leader();
        eprintln!("smr-chaos [{name}]: {nodes} nodes, workload and nemesis seed {}", spec.seed);
        let workload = Workload::start(cluster.shared_addresses(), spec);
        Some(Run {
            cluster,
            workload: Some(workload),
            rng: SplitMix64::new(smr_raft::mix(spec.seed ^ 0xc4a0_5eed)),
            report: RunReport::default(),
            name: name.to_owned(),
        })
    }

    /// Lets the workload run for `duration` without a fault.
    pub fn quiet(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// Acknowledged writes so far.
    pub fn acknowledged_writes(&self) -> u64 {
        self.workload.as_ref().map_or(0, Workload::acknowledged_writes)
    }

    fn pick(&mut self, from: &[u64]) -> u64 {
        from[self.rng.below(from.len() as u64) as usize]
    }

    fn shuffled(&mut self, mut ids: Vec<u64>) -> Vec<u64> {
        for i in (1..ids.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ids.swap(i, j);
        }
        ids
    }

    /// Counts a fault injected under `name`.
    pub fn count(&mut self, name: &'static str) {
        *self.report.faults.entry(name).or_default() += 1;
    }

    /// Measures how soon after `healed_at` a write is acknowledged, against the bound of two
    /// election timeouts.
    pub fn healed(&mut self, name: &'static str, healed_at: Instant) {
        let took = self.cluster.probe_write(healed_at);
        eprintln!("smr-chaos [{}]: {name} healed; a write was acknowledged {took:?} later", self.name);
        self.report.recoveries.push((name, took));
        if took > 2 * ELECTION_TIMEOUT {
            self.report.slow_recoveries.push(format!(
                "SLOW RECOVERY: after {name} healed, the first write was acknowledged only after {took:?} \
                 (more than two election timeouts, {:?})",
                2 * ELECTION_TIMEOUT
            ));
        }
    }

    /// Injects `fault`, holds it for `hold` (a pause at least 1.5 election timeouts), heals it
    /// and measures the recovery.
    pub fn inject(&mut self, fault: Fault, hold: Duration) {
        let ids = self.cluster.ids();
        let leader = self.cluster.leader();
        let followers: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
        eprintln!("smr-chaos [{}]: {} (leader {leader}) for {hold:?}", self.name, fault.name());
        self.count(fault.name());
        match fault {
            Fault::KillLeader | Fault::KillFollower | Fault::KillRandom => {
                let victim = match fault {
                    Fault::KillLeader => leader,
                    Fault::KillFollower => self.pick(&followers),
                    _ => self.pick(&ids),
                };
                self.cluster.kill(victim);
                if victim == leader {
                    self.expect_new_leader(fault, leader, hold);
                } else {
                    std::thread::sleep(hold);
                }
                self.cluster.spawn(victim);
            }
            Fault::PauseLeader | Fault::PauseFollower => {
                let victim = if fault == Fault::PauseLeader { leader } else { self.pick(&followers) };
                self.cluster.pause(victim);
                let hold = hold.max(ELECTION_TIMEOUT * 3 / 2);
                if victim == leader {
                    self.expect_new_leader(fault, leader, hold);
                } else {
                    std::thread::sleep(hold);
                }
                self.cluster.resume(victim);
            }
            Fault::PauseMajority => {
                let mut victims = vec![leader];
                let others = self.shuffled(followers.clone());
                victims.extend(&others[..ids.len() / 2]);
                for &victim in &victims {
                    self.cluster.pause(victim);
                }
                let before = self.acknowledged_writes();
                std::thread::sleep(hold.max(ELECTION_TIMEOUT * 3 / 2));
                // Writes that were in flight may complete; nothing more can commit.
                let during = self.acknowledged_writes() - before;
                if during > 8 {
                    self.report
                        .replica_problems
                        .push(format!("{during} writes were acknowledged while a majority {victims:?} was paused"));
                }
                for &victim in &victims {
                    self.cluster.resume(victim);
                }
            }
            Fault::MajorityMinority => {
                let shuffled = self.shuffled(ids.clone());
                let (minority, majority) = shuffled.split_at(ids.len() / 2);
                let minority = minority.to_vec();
                self.cluster.partition(&[minority.clone(), majority.to_vec()]);
                let frozen = self.frozen_commits(&minority);
                if minority.contains(&leader) {
                    self.expect_new_leader(fault, leader, hold);
                } else {
                    std::thread::sleep(hold);
                }
                self.expect_frozen(fault, &frozen);
            }
            Fault::IsolateLeader => {
                self.cluster.partition(&[vec![leader], followers.clone()]);
                let frozen = self.frozen_commits(&[leader]);
                self.expect_new_leader(fault, leader, hold);
                self.expect_frozen(fault, &frozen);
            }
            Fault::Bridge => {
                let shuffled = self.shuffled(ids.clone());
                let (bridge, rest) = shuffled.split_first().expect("a cluster has nodes");
                let (left, right) = rest.split_at(rest.len() / 2);
                eprintln!("smr-chaos [{}]: bridge {bridge} between {left:?} and {right:?}", self.name);
                self.cluster.partition(&[left.to_vec(), right.to_vec()]);
                std::thread::sleep(hold);
            }
            Fault::OneWay => {
                for &follower in &followers {
                    self.cluster.cut(leader, follower);
                }
                // The followers no longer hear the leader: they elect another.
                self.expect_new_leader(fault, leader, hold);
            }
            Fault::PacketLoss => {
                self.cluster.packet_loss(LOSS_PERCENT);
                std::thread::sleep(hold);
            }
            Fault::SlowFollower | Fault::SlowLeader => {
                let victim = if fault == Fault::SlowLeader { leader } else { self.pick(&followers) };
                self.cluster.slow_link(victim, SLOW_LINK_KBIT);
                std::thread::sleep(hold);
            }
            Fault::DelayedLinks | Fault::ReorderedLinks => {
                let (delay_ms, jitter_ms) = if fault == Fault::DelayedLinks {
                    (DELAYED_LINK_DELAY_MS, DELAYED_LINK_JITTER_MS)
                } else {
                    (REORDERED_LINK_DELAY_MS, REORDERED_LINK_JITTER_MS)
                };
                for &id in &ids {
                    // Each delayer's own seed, from the run's: the jitter replays from the seed.
                    let seed = self.rng.next_u64();
                    self.cluster.delay_link(id, DelaySpec { delay_ms, jitter_ms, seed });
                }
                let until = Instant::now() + hold;
                std::thread::sleep(hold / 2);
                self.expect_slow_commit(fault, delay_ms);
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
        }
        let delays = self.cluster.heal_network();
        let healed_at = Instant::now();
        if matches!(fault, Fault::DelayedLinks | Fault::ReorderedLinks) {
            self.expect_delayed(fault, &delays);
        }
        self.healed(fault.name(), healed_at);
    }

    /// Checks that a write takes at least two delays to commit: the leader's append is delayed on
    /// its way out, and so is the follower's answer (every node is delayed), whatever else is in
    /// flight; a ping through the cluster, and a lower bound, which a loaded machine cannot break.
    fn expect_slow_commit(&mut self, fault: Fault, delay_ms: u32) {
        if self.cluster.ids().len() < 2 {
            // A node alone commits without a peer: nothing to measure.
            return;
        }
        let took = self.cluster.probe_write(Instant::now());
        let bound = Duration::from_millis(2 * u64::from(delay_ms));
        eprintln!("smr-chaos [{}]: under {} a write was acknowledged after {took:?}", self.name, fault.name());
        assert!(
            took >= bound,
            "{}: a write committed in {took:?}, less than two {delay_ms} ms delays: the fault did not take effect\n{}",
            fault.name(),
            self.cluster.report()
        );
    }

    /// Checks that every node's delayer held packets for at least its delay and, for
    /// [`Fault::ReorderedLinks`], that some packets left out of order (the fault took effect).
    fn expect_delayed(&self, fault: Fault, delays: &[DelayReport]) {
        assert_eq!(
            delays.len(),
            self.cluster.ids().len(),
            "{}: one delayer per node expected, got {delays:?}",
            fault.name()
        );
        for report in delays {
            let stats = &report.stats;
            eprintln!(
                "smr-chaos [{}]: {} on host {}: {} packets delayed {:.1} to {:.1} ms, {} reordered, {} over the \
                 held limit, {} released at the heal",
                self.name,
                fault.name(),
                report.host,
                stats.delayed,
                stats.held_us_min as f64 / 1e3,
                stats.held_us_max as f64 / 1e3,
                stats.reordered,
                stats.overflowed,
                stats.released_at_stop
            );
            assert!(
                stats.delayed > 0 && stats.held_us_min >= u64::from(report.spec.delay_ms) * 1_000,
                "{}: host {} delayed no packet by {} ms ({stats:?}): the fault did not take effect",
                fault.name(),
                report.host,
                report.spec.delay_ms
            );
        }
        if fault == Fault::ReorderedLinks {
            let reordered: u64 = delays.iter().map(|r| r.stats.reordered).sum();
            assert!(
                reordered > 0,
                "{}: no packet was released out of order on any host ({delays:?}): the fault did not take effect",
                fault.name()
            );
        }
    }

    /// Waits out `hold`, checking that within it a node other than `old` was elected (the
    /// fault took effect); a fault that changes nothing is a broken test, not a pass.
    fn expect_new_leader(&mut self, fault: Fault, old: u64, hold: Duration) {
        let until = Instant::now() + hold;
        let deadline = Instant::now() + hold.max(PATIENCE);
        let mut elected = None;
        while Instant::now() < deadline && (elected.is_none() || Instant::now() < until) {
            if elected.is_none() {
                elected = self.cluster.leader_now().filter(|&l| l != old);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match elected {
            Some(new) => eprintln!("smr-chaos [{}]: {} made node {new} leader", self.name, fault.name()),
            None => panic!(
                "{}: no node but the old leader {old} took over within {:?}: the fault did not take effect\n{}",
                fault.name(),
                hold.max(PATIENCE),
                self.cluster.report()
            ),
        }
    }

    /// The commit index of each node of `cut_off`, read once messages in flight at the cut had
    /// time to arrive.
    fn frozen_commits(&self, cut_off: &[u64]) -> Vec<(u64, u64)> {
        std::thread::sleep(FROZEN_AFTER);
        cut_off.iter().filter_map(|&id| Some((id, self.cluster.status(id)?["commit_index"].as_u64()?))).collect()
    }

    /// Checks that no node cut off from the majority committed anything more: it can neither
    /// reach a quorum nor hear of one (the partition took effect).
    fn expect_frozen(&self, fault: Fault, frozen: &[(u64, u64)]) {
        for &(id, before) in frozen {
            let Some(after) = self.cluster.status(id).and_then(|s| s["commit_index"].as_u64()) else { continue };
            assert_eq!(
                after,
                before,
                "{}: node {id} was cut off from the majority but its commit index moved from {before} to {after}: \
                 the partition did not take effect\n{}",
                fault.name(),
                self.cluster.report()
            );
        }
    }

    /// Restarts every node in turn with SIGTERM, waiting after each until it serves again. As
    /// an operator would, leadership is first handed off a node about to restart (a leader that
    /// just stops is [`Fault::KillLeader`]'s case).
    pub fn rolling_restart(&mut self) {
        self.count("rolling-restart");
        for id in self.cluster.ids() {
            eprintln!("smr-chaos [{}]: rolling restart of node {id}", self.name);
            self.move_leadership_off(id);
            let code = self.cluster.terminate(id);
            if code != Some(0) {
                self.report.replica_problems.push(format!("node {id} exited with {code:?} on SIGTERM"));
            }
            self.cluster.spawn(id);
            let restarted = Instant::now();
            self.cluster.wait_for(&format!("node {id} to serve after its restart"), || {
                self.cluster.status(id).filter(|s| s["leader"].as_u64().is_some_and(|l| l != 0)).map(|_| ())
            });
            self.healed("rolling-restart", restarted);
        }
    }

    /// Transfers leadership from `id`, if it leads, to another node, retrying until one leads.
    fn move_leadership_off(&mut self, id: u64) {
        let deadline = Instant::now() + PATIENCE;
        while self.cluster.leader() == id {
            let target = self.cluster.ids().into_iter().find(|&other| other != id).expect("another node");
            let answer = self.cluster.admin(AdminRequest::TransferLeader { node_id: target });
            eprintln!("smr-chaos [{}]: leadership from {id} to {target}: {answer:?}", self.name);
            let asked = Instant::now();
            while Instant::now() < asked + ELECTION_TIMEOUT * 2 && self.cluster.leader_now() == Some(id) {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "node {id} kept the leadership for {PATIENCE:?} of transfer requests\n{}",
                self.cluster.report()
            );
        }
    }

    /// Adds node `id` (a learner that catches up, then a voter) under load.
    pub fn add_node(&mut self, id: u64) {
        eprintln!("smr-chaos [{}]: adding node {id}", self.name);
        self.count("membership-add");
        self.cluster.add_node(id);
    }

    /// Removes node `id` under load.
    pub fn remove_node(&mut self, id: u64) {
        eprintln!("smr-chaos [{}]: removing node {id}", self.name);
        self.count("membership-remove");
        self.cluster.remove_node(id);
    }

    /// Stops the workload, heals everything, restarts what is down, and checks.
    pub fn finish(mut self) -> RunReport {
        let recorded = self.workload.take().expect("the workload runs until finish").stop();
        self.cluster.heal_network();
        for id in self.cluster.ids() {
            if self.cluster.is_paused(id) {
                self.cluster.resume(id);
            }
        }
        let crashed = self.cluster.crashed();
        self.report.replica_problems.extend(crashed);
        for id in self.cluster.ids() {
            if !self.cluster.running().contains(&id) {
                self.cluster.spawn(id);
            }
        }
        self.cluster.leader();
        let keys: std::collections::BTreeSet<u64> = recorded.ops.iter().map(|op| op.key).collect();
        let finals = workload::final_reads(&self.cluster.client_addresses(), keys, recorded.epoch, PATIENCE)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.cluster.report()));
        self.report.verdict = check::check(&recorded.ops, &finals);
        // Convergence: every replica applies the same state (the final reads are applied too).
        let (index, hash) = self.cluster.converged();
        eprintln!("smr-chaos [{}]: replicas converged at applied index {index}, state hash {hash}", self.name);
        if !self.report.verdict.is_ok() {
            let path = std::env::temp_dir().join(format!("smr-chaos-{}-{}.jsonl", self.name, std::process::id()));
            match check::save_history(&path, &recorded.ops, &finals) {
                Ok(()) => eprintln!("smr-chaos [{}]: history kept in {}", self.name, path.display()),
                Err(error) => eprintln!("smr-chaos [{}]: cannot keep the history: {error}", self.name),
            }
        }
        eprintln!("smr-chaos [{}]: {}", self.name, self.report.describe());
        self.report
    }
}
