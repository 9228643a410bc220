//! Nodes of the C API in this test process, driven through the `extern "C"` functions as a C
//! program would: a 3-node cluster on loopback (replication to every member's callbacks,
//! leadership transfer), and a restore callback that refuses its snapshot.

use std::ffi::{CStr, c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smr::smr_status::*;
use smr::*;

/// What one node's callbacks saw.
#[derive(Default)]
struct Counts {
    applied: AtomicU64,
    refuse_restore: AtomicBool,
}

unsafe extern "C" fn apply(
    user_data: *mut c_void,
    _: u64,
    commands: *const smr_command,
    count: usize,
    sink: *mut smr_result_sink,
) {
    // SAFETY: `user_data` is the `Counts` given at start, alive until the node is freed.
    let counts = unsafe { &*user_data.cast::<Counts>() };
    // SAFETY: `commands` holds `count` commands for the duration of the call.
    let commands = unsafe { std::slice::from_raw_parts(commands, count) };
    for (i, command) in commands.iter().enumerate() {
        counts.applied.fetch_add(1, Ordering::Relaxed);
        // SAFETY: echo the command back as its result; the sink is this call's.
        let status = unsafe { smr_result_set(sink, i, command.data, command.len) };
        assert_eq!(status, SMR_OK);
    }
}

unsafe extern "C" fn snapshot(user_data: *mut c_void, writer: *mut smr_writer) -> c_int {
    // SAFETY: as in `apply`.
    let counts = unsafe { &*user_data.cast::<Counts>() };
    let applied = counts.applied.load(Ordering::Relaxed).to_le_bytes();
    // SAFETY: the writer is this call's; the bytes live through the call.
    c_int::from(unsafe { smr_writer_write(writer, applied.as_ptr(), applied.len()) } != SMR_OK)
}

unsafe extern "C" fn restore(user_data: *mut c_void, reader: *mut smr_reader) -> c_int {
    // SAFETY: as in `apply`.
    let counts = unsafe { &*user_data.cast::<Counts>() };
    if counts.refuse_restore.load(Ordering::Relaxed) {
        return 1;
    }
    let mut bytes = [0u8; 8];
    let mut got = 0;
    // SAFETY: the reader is this call's; `bytes` has room for 8.
    let status = unsafe { smr_reader_read(reader, bytes.as_mut_ptr(), bytes.len(), &mut got) };
    if status != SMR_OK || got != 8 {
        return 1;
    }
    counts.applied.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    0
}

const CALLBACKS: smr_callbacks = smr_callbacks {
    apply: Some(apply),
    snapshot: Some(snapshot),
    restore: Some(restore),
    state_hash: None,
    on_fatal: None,
    on_role_change: None,
    on_membership_change: None,
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

/// Configs for `n` founding members sharing one directory.
fn configs(dir: &std::path::Path, n: u64, extra: &str) -> Vec<String> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, (peer, client))| {
            format!(
                "[[members]]\nid = {}\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n",
                i + 1
            )
        })
        .collect();
    (1..=n)
        .map(|id| {
            let (peer, client) = ports[id as usize - 1];
            format!(
                "node_id = {id}\ncluster_id = \"0xcc\"\ndata_dir = \"{}\"\nsecret = \"in-process-capi-test-secret-32-chars\"\n\
                 peer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n{members}\
                 [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n{extra}",
                dir.join(format!("node{id}")).display()
            )
        })
        .collect()
}

fn start(config: &str, mode: smr_start_mode, counts: &Counts) -> Result<*mut smr_node, (smr_status, String)> {
    let mut node = null_mut();
    let user_data = std::ptr::from_ref(counts).cast_mut().cast();
    // SAFETY: valid pointers; `counts` outlives the node in every test.
    let status =
        unsafe { smr_node_start(config.as_ptr().cast(), config.len(), mode as i32, &CALLBACKS, user_data, &mut node) };
    if status == SMR_OK { Ok(node) } else { Err((status, last_error())) }
}

/// Proposes `command` on whichever node leads; returns that node's index.
fn propose_on_leader(nodes: &[*mut smr_node], session: u64, sequence: u64, command: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, node) in nodes.iter().enumerate() {
            // SAFETY: live handles; the command lives through the call.
            let status = unsafe {
                smr_propose_sync(*node, session, sequence, command.as_ptr(), command.len(), 5_000, null_mut())
            };
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

#[test]
fn three_nodes_in_one_process_replicate_to_every_callback_and_transfer_leadership() {
    let dir = tempfile::tempdir().unwrap();
    let counts: Vec<Counts> = (0..3).map(|_| Counts::default()).collect();
    let nodes: Vec<*mut smr_node> = configs(dir.path(), 3, "")
        .iter()
        .zip(&counts)
        .map(|(config, counts)| start(config, smr_start_mode::SMR_START_NEW, counts).expect("starts"))
        .collect();

    let leader = propose_on_leader(&nodes, 7, 1, b"first");
    wait_until("every member applied the command", || counts.iter().all(|c| c.applied.load(Ordering::Relaxed) == 1));
    // A retry of the same (session, sequence) on the leader is answered without applying again.
    let mut result = smr_buffer { data: null_mut(), len: 0 };
    // SAFETY: live handle; the command and the buffer live through the call.
    let status = unsafe { smr_propose_sync(nodes[leader], 7, 1, b"first".as_ptr(), 5, 5_000, &mut result) };
    assert_eq!(status, SMR_OK, "{}", last_error());
    // SAFETY: smr filled the buffer with `len` bytes.
    assert_eq!(unsafe { std::slice::from_raw_parts(result.data, result.len) }, b"first", "the first result");
    // SAFETY: filled by smr.
    unsafe { smr_buffer_free(&mut result) };
    // SAFETY: live handle.
    assert_eq!(unsafe { smr_read_barrier(nodes[leader], 5_000) }, SMR_OK, "{}", last_error());
    assert_eq!(counts[leader].applied.load(Ordering::Relaxed), 1, "the retry was not applied again");

    // A follower refuses, naming the leader.
    let follower = (leader + 1) % 3;
    // SAFETY: live handle.
    let status = unsafe { smr_propose_sync(nodes[follower], 7, 2, b"x".as_ptr(), 1, 5_000, null_mut()) };
    assert_eq!(status, SMR_E_NOT_LEADER);
    assert!(last_error().contains(&format!("node {}", leader + 1)), "{}", last_error());

    // Hand leadership to the follower; it then accepts proposals.
    // SAFETY: live handle.
    let status = unsafe { smr_transfer_leader(nodes[leader], follower as u64 + 1, 5_000) };
    assert_eq!(status, SMR_OK, "{}", last_error());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: live handle.
        match unsafe { smr_propose_sync(nodes[follower], 7, 2, b"second".as_ptr(), 6, 5_000, null_mut()) } {
            SMR_OK => break,
            SMR_E_NOT_LEADER | SMR_E_TIMED_OUT if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("the new leader did not take the proposal: {other:?}: {}", last_error()),
        }
    }
    wait_until("every member applied both commands", || counts.iter().all(|c| c.applied.load(Ordering::Relaxed) == 2));

    for node in nodes {
        // SAFETY: live handles, freed once.
        unsafe {
            assert_eq!(smr_node_stop(node), SMR_OK, "{}", last_error());
            assert_eq!(smr_node_free(node), SMR_OK);
        }
    }
}

#[test]
fn a_restore_callback_that_refuses_its_snapshot_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = configs(dir.path(), 1, "[pipeline]\nsnapshot_log_bytes = 1\n").remove(0);
    let counts = Counts::default();
    let node = start(&config, smr_start_mode::SMR_START_NEW, &counts).expect("starts");
    for sequence in 1..=5 {
        propose_on_leader(&[node], 1, sequence, b"some command");
    }
    // SAFETY: live handle, freed once.
    unsafe { assert_eq!(smr_node_free(node), SMR_OK) };

    // Restarting restores the snapshot through the callback...
    let restarted = Counts::default();
    let node = start(&config, smr_start_mode::SMR_START_EXISTING, &restarted).expect("restarts");
    assert!(restarted.applied.load(Ordering::Relaxed) > 0, "restore ran on the starting thread");
    // SAFETY: live handle, freed once.
    unsafe { assert_eq!(smr_node_free(node), SMR_OK) };

    // ...and a refusal from it is a failed start, with the reason.
    let refusing = Counts::default();
    refusing.refuse_restore.store(true, Ordering::Relaxed);
    let (status, message) = start(&config, smr_start_mode::SMR_START_EXISTING, &refusing).unwrap_err();
    assert_eq!(status, SMR_E_START, "{message}");
    assert!(message.contains("restore callback returned 1"), "{message}");
}
