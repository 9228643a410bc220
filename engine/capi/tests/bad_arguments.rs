//! Every `extern "C"` entry point, called with NULL pointers, bad lengths, bad enum values and a
//! stopped node: each must answer the documented status code, never crash.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use smr::smr_status::*;
use smr::*;

unsafe extern "C" fn apply(_: *mut c_void, _: u64, _: *const smr_command, _: usize, _: *mut smr_result_sink) {}

unsafe extern "C" fn snapshot(_: *mut c_void, _: *mut smr_writer) -> c_int {
    0
}

unsafe extern "C" fn restore(_: *mut c_void, _: *mut smr_reader) -> c_int {
    0
}

fn callbacks() -> smr_callbacks {
    smr_callbacks {
        apply: Some(apply),
        snapshot: Some(snapshot),
        restore: Some(restore),
        state_hash: None,
        on_fatal: None,
        on_role_change: None,
        on_membership_change: None,
    }
}

/// A loopback port for a test node: below the ephemeral range, so that no other node's
/// outgoing connection takes it before this one binds it (see `smr_net::test_ports`).
fn free_port() -> u16 {
    smr_net::test_ports::free_port()
}

fn config(dir: &std::path::Path) -> String {
    let (peer, client) = (free_port(), free_port());
    format!(
        "node_id = 1\ncluster_id = \"0xcb\"\ndata_dir = \"{}\"\nsecret = \"bad-arguments-test-secret-32-chars\"\n\
         initial_state = \"new\"\npeer_listen = \"127.0.0.1:{peer}\"\nclient_listen = \"127.0.0.1:{client}\"\n\
         [[members]]\nid = 1\npeer_address = \"127.0.0.1:{peer}\"\nclient_address = \"127.0.0.1:{client}\"\n\
         [log]\nsegment_bytes = 4194304\nentry_bytes_max = 3145728\nsubmit_bytes_max = 8388608\n",
        dir.join("data").display()
    )
}

fn last_error() -> String {
    // SAFETY: never NULL, valid until the next call on this thread.
    unsafe { CStr::from_ptr(smr_last_error_message()) }.to_string_lossy().into_owned()
}

fn start(config: &str, mode: i32) -> (smr_status, *mut smr_node) {
    let mut node = null_mut();
    let table = callbacks();
    // SAFETY: valid pointers for every argument.
    let status = unsafe { smr_node_start(config.as_ptr().cast(), config.len(), mode, &table, null_mut(), &mut node) };
    (status, node)
}

#[test]
fn every_status_has_a_text_and_unknown_codes_do_too() {
    for status in ALL_STATUSES {
        // SAFETY: smr_strerror never returns NULL and its strings are static.
        let text = unsafe { CStr::from_ptr(smr_strerror(status as i32)) }.to_str().unwrap();
        assert!(!text.is_empty() && text != "unknown status code", "{status:?}");
    }
    for code in [1, -17, i32::MIN, i32::MAX] {
        // SAFETY: as above.
        let text = unsafe { CStr::from_ptr(smr_strerror(code)) }.to_str().unwrap();
        assert_eq!(text, "unknown status code");
    }
}

#[test]
fn start_refuses_null_pointers_bad_lengths_and_bad_modes() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path());
    let table = callbacks();
    let mut node = std::ptr::dangling_mut::<smr_node>();
    // SAFETY: every call below gets pointers that are NULL or valid; NULLs are what is tested.
    unsafe {
        let ok_mode = smr_start_mode::SMR_START_NEW as i32;
        assert_eq!(
            smr_node_start(text.as_ptr().cast(), text.len(), ok_mode, &table, null_mut(), null_mut()),
            SMR_E_NULL
        );
        assert_eq!(smr_node_start(null(), text.len(), ok_mode, &table, null_mut(), &mut node), SMR_E_NULL);
        assert!(node.is_null(), "out is cleared on failure");
        assert_eq!(smr_node_start(null(), 0, ok_mode, &table, null_mut(), &mut node), SMR_E_NULL);
        assert_eq!(
            smr_node_start(text.as_ptr().cast(), text.len(), ok_mode, null(), null_mut(), &mut node),
            SMR_E_NULL
        );
        for missing in 0..3 {
            let mut partial = callbacks();
            match missing {
                0 => partial.apply = None,
                1 => partial.snapshot = None,
                _ => partial.restore = None,
            }
            assert_eq!(
                smr_node_start(text.as_ptr().cast(), text.len(), ok_mode, &partial, null_mut(), &mut node),
                SMR_E_NULL
            );
            assert!(last_error().contains(["apply", "snapshot", "restore"][missing]), "{}", last_error());
        }
        for mode in [-1, 4, i32::MAX] {
            assert_eq!(
                smr_node_start(text.as_ptr().cast(), text.len(), mode, &table, null_mut(), &mut node),
                SMR_E_INVALID_ARGUMENT
            );
        }
        let not_utf8 = [0xffu8, 0xfe];
        assert_eq!(
            smr_node_start(not_utf8.as_ptr().cast(), 2, ok_mode, &table, null_mut(), &mut node),
            SMR_E_INVALID_ARGUMENT
        );
        let huge = vec![b' '; (1 << 20) + 1];
        assert_eq!(
            smr_node_start(huge.as_ptr().cast(), huge.len(), ok_mode, &table, null_mut(), &mut node),
            SMR_E_INVALID_ARGUMENT
        );
        assert_eq!(
            smr_node_start(text.as_ptr().cast(), usize::MAX, ok_mode, &table, null_mut(), &mut node),
            SMR_E_INVALID_ARGUMENT
        );
        let bad = format!("{text}[raft]\nheartbeat_ticks = 0\n");
        assert_eq!(
            smr_node_start(bad.as_ptr().cast(), bad.len(), ok_mode, &table, null_mut(), &mut node),
            SMR_E_CONFIG
        );
        assert!(last_error().contains("raft.heartbeat_ticks"), "{}", last_error());
        assert_eq!(smr_node_start_file(null(), ok_mode, &table, null_mut(), &mut node), SMR_E_NULL);
        let missing = c"/nonexistent/node.toml";
        assert_eq!(smr_node_start_file(missing.as_ptr(), ok_mode, &table, null_mut(), &mut node), SMR_E_CONFIG);
        assert_eq!(smr_node_start_file(missing.as_ptr(), ok_mode, &table, null_mut(), null_mut()), SMR_E_NULL);
        assert_eq!(smr_node_start_file(missing.as_ptr(), 17, &table, null_mut(), &mut node), SMR_E_INVALID_ARGUMENT);
        let existing = smr_start_mode::SMR_START_EXISTING as i32;
        assert_eq!(
            smr_node_start(text.as_ptr().cast(), text.len(), existing, &table, null_mut(), &mut node),
            SMR_E_CONFIG
        );
        assert!(last_error().contains("is empty"), "{}", last_error());
        assert!(node.is_null());
    }
}

#[test]
fn callback_helpers_refuse_null_and_calls_outside_their_callback() {
    let mut byte = 0u8;
    let mut got = 7usize;
    let fake: *mut u8 = &mut byte;
    // SAFETY: NULL is what is tested; the fake handles are never dereferenced because the calls
    // are refused (outside a callback) before that.
    unsafe {
        assert_eq!(smr_result_set(null_mut(), 0, null(), 0), SMR_E_NULL);
        assert_eq!(smr_writer_write(null_mut(), null(), 0), SMR_E_NULL);
        assert_eq!(smr_reader_read(null_mut(), fake, 1, &mut got), SMR_E_NULL);
        assert_eq!(smr_reader_read(fake.cast(), fake, 1, null_mut()), SMR_E_NULL);
        assert_eq!(smr_result_set(fake.cast(), 0, null(), 0), SMR_E_WRONG_THREAD);
        assert_eq!(smr_writer_write(fake.cast(), null(), 0), SMR_E_WRONG_THREAD);
        assert_eq!(smr_reader_read(fake.cast(), fake, 1, &mut got), SMR_E_WRONG_THREAD);
        assert_eq!(got, 0);
        smr_free_string(null_mut());
        smr_buffer_free(null_mut());
        let mut empty = smr_buffer { data: null_mut(), len: 0 };
        smr_buffer_free(&mut empty);
        assert_eq!(smr_node_free(null_mut()), SMR_OK);
    }
}

#[test]
fn node_calls_refuse_bad_arguments_then_answer_stopped_after_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (status, node) = start(&config(dir.path()), smr_start_mode::SMR_START_FROM_CONFIG as i32);
    assert_eq!(status, SMR_OK, "{}", last_error());
    let command = b"command";
    let mut buffer = smr_buffer { data: std::ptr::dangling_mut::<u8>(), len: 3 };
    let mut json: *mut c_char = std::ptr::dangling_mut::<c_char>();
    let (peer, client) = (c"127.0.0.1:1", c"127.0.0.1:2");
    // SAFETY: every call below gets pointers that are NULL or valid; NULLs are what is tested.
    unsafe {
        // A one-node cluster elects itself within a few election timeouts.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = smr_propose_sync(node, 1, 1, command.as_ptr(), command.len(), 5_000, &mut buffer);
            if status != SMR_E_NOT_LEADER || Instant::now() > deadline {
                assert_eq!(status, SMR_OK, "{}", last_error());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        smr_buffer_free(&mut buffer);
        assert!(buffer.data.is_null() && buffer.len == 0);

        assert_eq!(smr_propose(null_mut(), 1, 2, command.as_ptr(), command.len(), None, null_mut()), SMR_E_NULL);
        assert_eq!(smr_propose(node, 1, 2, null(), 1, None, null_mut()), SMR_E_NULL);
        assert_eq!(smr_propose(node, 1, 2, command.as_ptr(), usize::MAX, None, null_mut()), SMR_E_INVALID_ARGUMENT);
        buffer = smr_buffer { data: std::ptr::dangling_mut::<u8>(), len: 3 };
        assert_eq!(smr_propose_sync(null_mut(), 1, 2, command.as_ptr(), 1, 1_000, &mut buffer), SMR_E_NULL);
        assert!(buffer.data.is_null() && buffer.len == 0, "the result is cleared on failure");
        assert_eq!(smr_propose_sync(node, 1, 2, null(), 1, 1_000, null_mut()), SMR_E_NULL);
        assert_eq!(
            smr_propose_sync(node, 1, 2, command.as_ptr(), usize::MAX, 1_000, null_mut()),
            SMR_E_INVALID_ARGUMENT
        );
        assert_eq!(smr_propose_sync(node, 1, 2, command.as_ptr(), 1, 0, null_mut()), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_read_barrier(null_mut(), 1_000), SMR_E_NULL);
        assert_eq!(smr_read_barrier(node, 0), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_read_barrier(node, 5_000), SMR_OK, "{}", last_error());
        assert_eq!(smr_add_node(null_mut(), 2, peer.as_ptr(), client.as_ptr(), 0, 1_000), SMR_E_NULL);
        assert_eq!(smr_add_node(node, 2, null(), client.as_ptr(), 0, 1_000), SMR_E_NULL);
        assert_eq!(smr_add_node(node, 2, peer.as_ptr(), null(), 0, 1_000), SMR_E_NULL);
        assert_eq!(smr_add_node(node, 2, c"\xff".as_ptr(), client.as_ptr(), 0, 1_000), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_add_node(node, 2, peer.as_ptr(), client.as_ptr(), 0, 0), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_remove_node(null_mut(), 2, 1_000), SMR_E_NULL);
        assert_eq!(smr_remove_node(node, 2, 0), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_transfer_leader(null_mut(), 2, 1_000), SMR_E_NULL);
        assert_eq!(smr_transfer_leader(node, 2, 0), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_status_json(node, 1_000, null_mut()), SMR_E_NULL);
        assert_eq!(smr_status_json(null_mut(), 1_000, &mut json), SMR_E_NULL);
        assert!(json.is_null(), "out is cleared on failure");
        assert_eq!(smr_status_json(node, 0, &mut json), SMR_E_INVALID_ARGUMENT);
        assert_eq!(smr_metrics_json(node, null_mut()), SMR_E_NULL);
        assert_eq!(smr_metrics_json(null_mut(), &mut json), SMR_E_NULL);
        assert_eq!(smr_node_stop(null_mut()), SMR_E_NULL);

        // The JSON documents parse.
        assert_eq!(smr_status_json(node, 5_000, &mut json), SMR_OK, "{}", last_error());
        let status = CStr::from_ptr(json).to_str().unwrap().to_owned();
        assert!(status.contains("state_hash"), "{status}");
        // The C callbacks are promised the apply thread: their rounds never run inline.
        assert!(status.contains("\"inline_apply\":false"), "{status}");
        smr_free_string(json);
        assert_eq!(smr_metrics_json(node, &mut json), SMR_OK);
        assert!(CStr::from_ptr(json).to_str().unwrap().starts_with('{'));
        smr_free_string(json);

        assert_eq!(smr_node_stop(node), SMR_OK);
        assert_eq!(smr_node_stop(node), SMR_E_STOPPED);
        assert_eq!(smr_propose(node, 1, 3, command.as_ptr(), 1, None, null_mut()), SMR_E_STOPPED);
        assert_eq!(smr_propose_sync(node, 1, 3, command.as_ptr(), 1, 1_000, null_mut()), SMR_E_STOPPED);
        assert_eq!(smr_read_barrier(node, 1_000), SMR_E_STOPPED);
        assert_eq!(smr_add_node(node, 2, peer.as_ptr(), client.as_ptr(), 1, 1_000), SMR_E_STOPPED);
        assert_eq!(smr_remove_node(node, 2, 1_000), SMR_E_STOPPED);
        assert_eq!(smr_transfer_leader(node, 2, 1_000), SMR_E_STOPPED);
        assert_eq!(smr_status_json(node, 1_000, &mut json), SMR_E_STOPPED);
        assert_eq!(smr_metrics_json(node, &mut json), SMR_E_STOPPED);
        assert!(json.is_null());
        assert_eq!(smr_node_free(node), SMR_OK);
    }
}
