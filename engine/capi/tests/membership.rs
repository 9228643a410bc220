//! Membership changes that succeed, through the C API as a C program makes them: a fourth node
//! started with `SMR_START_JOIN` is added as a learner with `smr_add_node`, catches up (its
//! `apply` sees the same commands, in the same order), is promoted to voter; then a founding
//! follower is removed with `smr_remove_node`. Every member's `on_membership_change` must report
//! each membership in force, and the cluster must go on committing.

use std::ffi::{CStr, CString, c_int, c_void};
use std::ptr::null_mut;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smr::smr_status::*;
use smr::*;

/// What one node's callbacks saw.
#[derive(Default)]
struct Replica {
    applied: AtomicU64,
    /// An order-sensitive hash of every command applied.
    hash: AtomicU64,
    /// Every membership notified: (voters, learners), sorted.
    memberships: Mutex<Vec<(Vec<u64>, Vec<u64>)>>,
}

impl Replica {
    fn state(&self) -> (u64, u64) {
        (self.applied.load(Ordering::SeqCst), self.hash.load(Ordering::SeqCst))
    }

    fn membership(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        self.memberships.lock().unwrap().last().cloned()
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// # Safety
/// `user_data` is the node's `Replica`.
unsafe fn replica<'a>(user_data: *mut c_void) -> &'a Replica {
    // SAFETY: the `Replica` given at start, alive until the node is freed.
    unsafe { &*user_data.cast::<Replica>() }
}

unsafe extern "C" fn apply(
    user_data: *mut c_void,
    _: u64,
    commands: *const smr_command,
    count: usize,
    sink: *mut smr_result_sink,
) {
    // SAFETY: as documented for `replica`.
    let replica = unsafe { replica(user_data) };
    // SAFETY: `commands` holds `count` commands for the duration of the call.
    for (i, command) in unsafe { std::slice::from_raw_parts(commands, count) }.iter().enumerate() {
        // SAFETY: `len` bytes at `data` for the duration of the call.
        let bytes = unsafe { std::slice::from_raw_parts(command.data, command.len) };
        let hash = replica.hash.load(Ordering::SeqCst);
        replica.hash.store(hash.rotate_left(5) ^ fnv1a64(bytes), Ordering::SeqCst);
        replica.applied.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the sink of this call; the result is copied.
        assert_eq!(unsafe { smr_result_set(sink, i, command.data, command.len) }, SMR_OK);
    }
}

unsafe extern "C" fn snapshot(user_data: *mut c_void, writer: *mut smr_writer) -> c_int {
    // SAFETY: as documented for `replica`.
    let (applied, hash) = unsafe { replica(user_data) }.state();
    let mut bytes = applied.to_le_bytes().to_vec();
    bytes.extend_from_slice(&hash.to_le_bytes());
    // SAFETY: the writer of this call; the bytes live through it.
    c_int::from(unsafe { smr_writer_write(writer, bytes.as_ptr(), bytes.len()) } != SMR_OK)
}

unsafe extern "C" fn restore(user_data: *mut c_void, reader: *mut smr_reader) -> c_int {
    // SAFETY: as documented for `replica`.
    let replica = unsafe { replica(user_data) };
    let mut bytes = [0u8; 16];
    let mut done = 0;
    while done < bytes.len() {
        let mut got = 0;
        // SAFETY: the reader of this call; the buffer has `16 - done` bytes of room.
        let status = unsafe { smr_reader_read(reader, bytes[done..].as_mut_ptr(), bytes.len() - done, &mut got) };
        if status != SMR_OK || got == 0 {
            return 1;
        }
        done += got;
    }
    replica.applied.store(u64::from_le_bytes(bytes[..8].try_into().unwrap()), Ordering::SeqCst);
    replica.hash.store(u64::from_le_bytes(bytes[8..].try_into().unwrap()), Ordering::SeqCst);
    0
}

unsafe extern "C" fn state_hash(user_data: *mut c_void) -> u64 {
    // SAFETY: as documented for `replica`.
    unsafe { replica(user_data) }.hash.load(Ordering::SeqCst)
}

unsafe extern "C" fn on_membership_change(
    user_data: *mut c_void,
    voters: *const u64,
    voter_count: usize,
    learners: *const u64,
    learner_count: usize,
) {
    // SAFETY: as documented for `replica`; the id arrays hold their counts during the call.
    let (replica, mut voters, mut learners) = unsafe {
        (
            replica(user_data),
            std::slice::from_raw_parts(voters, voter_count).to_vec(),
            std::slice::from_raw_parts(learners, learner_count).to_vec(),
        )
    };
    voters.sort_unstable();
    learners.sort_unstable();
    replica.memberships.lock().unwrap().push((voters, learners));
}

const CALLBACKS: smr_callbacks = smr_callbacks {
    apply: Some(apply),
    snapshot: Some(snapshot),
    restore: Some(restore),
    state_hash: Some(state_hash),
    on_fatal: None,
    on_role_change: None,
    on_membership_change: Some(on_membership_change),
};

/// A loopback port for a test node: below the ephemeral range, so that no other node's
/// outgoing connection takes it before this one binds it (see `smr_net::test_ports`).
fn free_port() -> u16 {
    smr_net::test_ports::free_port()
}

fn last_error() -> String {
    // SAFETY: never NULL, valid until the next call on this thread.
    unsafe { CStr::from_ptr(smr_last_error_message()) }.to_string_lossy().into_owned()
}

struct Member {
    id: u64,
    peer: String,
    client: String,
}

impl Member {
    fn new(id: u64) -> Member {
        Member { id, peer: format!("127.0.0.1:{}", free_port()), client: format!("127.0.0.1:{}", free_port()) }
    }
}

/// The config of `me`, in a cluster whose members are `members`.
fn config(dir: &std::path::Path, me: &Member, members: &[&Member]) -> String {
    let members: String = members
        .iter()
        .map(|m| {
            format!("[[members]]\nid = {}\npeer_address = \"{}\"\nclient_address = \"{}\"\n", m.id, m.peer, m.client)
        })
        .collect();
    format!(
        "node_id = {}\ncluster_id = \"0xce\"\ndata_dir = \"{}\"\nsecret = \"membership-capi-test-secret-32-chars\"\n\
         peer_listen = \"{}\"\nclient_listen = \"{}\"\n{members}\
         [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n",
        me.id,
        dir.join(format!("node{}", me.id)).display(),
        me.peer,
        me.client
    )
}

fn start(config: &str, mode: smr_start_mode, replica: &Replica) -> *mut smr_node {
    let mut node = null_mut();
    let user_data = std::ptr::from_ref(replica).cast_mut().cast();
    // SAFETY: valid pointers; `replica` outlives the node.
    let status =
        unsafe { smr_node_start(config.as_ptr().cast(), config.len(), mode as i32, &CALLBACKS, user_data, &mut node) };
    assert_eq!(status, SMR_OK, "start: {}", last_error());
    node
}

/// Proposes `command` (session 9) on whichever of `nodes` leads; returns that node's index.
fn propose_on_leader(nodes: &[*mut smr_node], sequence: u64, command: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, node) in nodes.iter().enumerate() {
            // SAFETY: live handles; the command lives through the call.
            let status =
                unsafe { smr_propose_sync(*node, 9, sequence, command.as_ptr(), command.len(), 5_000, null_mut()) };
            match status {
                SMR_OK => return i,
                SMR_E_NOT_LEADER | SMR_E_TIMED_OUT | SMR_E_BUSY => {}
                other => panic!("propose: {other:?}: {}", last_error()),
            }
        }
        assert!(Instant::now() < deadline, "no leader accepted a proposal: {}", last_error());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn membership(voters: &[u64], learners: &[u64]) -> Option<(Vec<u64>, Vec<u64>)> {
    Some((voters.to_vec(), learners.to_vec()))
}

#[test]
fn a_node_joins_catches_up_is_promoted_and_a_follower_is_removed_with_every_member_notified() {
    let dir = tempfile::tempdir().unwrap();
    let members: Vec<Member> = (1..=4).map(Member::new).collect();
    let founders: Vec<&Member> = members[..3].iter().collect();
    let replicas: Vec<Replica> = (0..4).map(|_| Replica::default()).collect();
    let mut nodes: Vec<*mut smr_node> = founders
        .iter()
        .map(|m| start(&config(dir.path(), m, &founders), smr_start_mode::SMR_START_NEW, &replicas[m.id as usize - 1]))
        .collect();
    let mut sequence = 0;
    let mut leader = 0;
    for _ in 0..20 {
        sequence += 1;
        leader = propose_on_leader(&nodes, sequence, format!("before the join {sequence}").as_bytes());
    }
    // A commit needs only two of the three: the third may still be on its way to the entry
    // that announces the membership.
    wait_until("every founder was told of the founding membership", || {
        replicas[..3].iter().all(|r| r.membership() == membership(&[1, 2, 3], &[]))
    });

    // Node 4 starts empty in join mode, and is added as a learner: it catches up.
    let all: Vec<&Member> = members.iter().collect();
    nodes.push(start(&config(dir.path(), &members[3], &all), smr_start_mode::SMR_START_JOIN, &replicas[3]));
    let (peer, client) =
        (CString::new(members[3].peer.clone()).unwrap(), CString::new(members[3].client.clone()).unwrap());
    // SAFETY: a live handle; NUL-terminated addresses.
    let status = unsafe { smr_add_node(nodes[leader], 4, peer.as_ptr(), client.as_ptr(), 1, 10_000) };
    assert_eq!(status, SMR_OK, "add node 4 as a learner: {}", last_error());
    wait_until("node 4 applied what the leader did", || replicas[3].state() == replicas[leader].state());
    assert_eq!(replicas[3].state().0, 20, "node 4 applied the 20 commands");
    wait_until("every member was told of the learner", || {
        replicas.iter().all(|r| r.membership() == membership(&[1, 2, 3], &[4]))
    });

    // Promoted with the addresses the cluster knows.
    // SAFETY: a live handle; empty NUL-terminated addresses.
    let status = unsafe { smr_add_node(nodes[leader], 4, c"".as_ptr(), c"".as_ptr(), 0, 10_000) };
    assert_eq!(status, SMR_OK, "promote node 4: {}", last_error());
    wait_until("every member was told of the voter", || {
        replicas.iter().all(|r| r.membership() == membership(&[1, 2, 3, 4], &[]))
    });
    for _ in 0..5 {
        sequence += 1;
        leader = propose_on_leader(&nodes, sequence, format!("with four {sequence}").as_bytes());
    }
    wait_until("all four applied the same commands", || replicas.iter().all(|r| r.state() == replicas[leader].state()));

    // A founding follower is removed; the other three are told, and go on committing.
    let removed = (0..3).find(|&i| i != leader).unwrap();
    let removed_id = removed as u64 + 1;
    // SAFETY: a live handle.
    let status = unsafe { smr_remove_node(nodes[leader], removed_id, 10_000) };
    assert_eq!(status, SMR_OK, "remove node {removed_id}: {}", last_error());
    let remaining: Vec<usize> = (0..4).filter(|&i| i != removed).collect();
    let voters: Vec<u64> = remaining.iter().map(|&i| i as u64 + 1).collect();
    wait_until("the remaining members were told of the removal", || {
        remaining.iter().all(|&i| replicas[i].membership() == membership(&voters, &[]))
    });
    let live: Vec<*mut smr_node> = remaining.iter().map(|&i| nodes[i]).collect();
    for _ in 0..5 {
        sequence += 1;
        leader = remaining[propose_on_leader(&live, sequence, format!("after the removal {sequence}").as_bytes())];
    }
    wait_until("the remaining three applied the same commands", || {
        remaining.iter().all(|&i| replicas[i].state() == replicas[leader].state())
    });
    assert_eq!(replicas[leader].state().0, 30, "every command applied once");
    // The removed node, still running, is sent nothing more.
    assert_eq!(replicas[removed].state().0, 25, "the removed node applied only what came before");
    // SAFETY: a live handle, freed once.
    unsafe { assert_eq!(smr_node_free(nodes[removed]), SMR_OK) };

    for i in remaining {
        // SAFETY: live handles, freed once.
        unsafe {
            assert_eq!(smr_node_stop(nodes[i]), SMR_OK, "{}", last_error());
            assert_eq!(smr_node_free(nodes[i]), SMR_OK);
        }
    }
}
