//! The applier end to end: batches in, one outcome per command out, exactly once per session
//! command, and snapshots that restore the same replicated state.

use bytes::Bytes;
use smr_apply::batch::encode;
use smr_apply::{
    Applier, ApplyError, Batch, Command, CommandOutcome, KvCommand, KvConfig, KvResult, KvStore, SessionConfig,
    StateHash, StateHashLater, StateMachine,
};
use smr_raft::EntryKind;

fn applier() -> Applier<KvStore> {
    Applier::new(
        KvStore::new(KvConfig::default()),
        SessionConfig { sessions_max: 100, window_max: 8, expiry_entries: 1000 },
        1024,
    )
}

fn put(session: u64, seq: u64, key: &[u8], value: &[u8]) -> Command {
    Command { session, seq, payload: KvCommand::Put { key, value }.encode() }
}

fn cas(session: u64, seq: u64, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Command {
    Command { session, seq, payload: KvCommand::Cas { key, expected, new: Some(new) }.encode() }
}

fn apply(a: &mut Applier<KvStore>, commands: Vec<Command>) -> Vec<CommandOutcome> {
    let index = a.applied_index() + 1;
    let mut out = Vec::new();
    a.apply(index, 1, EntryKind::Normal, &encode(&Batch { commands }), &mut out).unwrap();
    out
}

#[test]
fn a_retried_command_is_applied_once_and_answered_with_its_first_result() {
    let mut a = applier();
    apply(&mut a, vec![put(1, 1, b"k", b"v1")]);
    let first = apply(&mut a, vec![cas(1, 2, b"k", Some(b"v1"), b"v2")]);
    assert_eq!(
        first[0],
        CommandOutcome::Applied(KvResult::Cas { swapped: true, current: Some(Bytes::from_static(b"v1")) }.encode())
    );
    // Another client changes the key; then the first client's retry of seq 2 arrives.
    apply(&mut a, vec![put(2, 1, b"k", b"v1")]);
    let retry = apply(&mut a, vec![cas(1, 2, b"k", Some(b"v1"), b"v2")]);
    let CommandOutcome::Duplicate(result) = &retry[0] else { panic!("not answered as a duplicate: {retry:?}") };
    assert!(
        matches!(KvResult::decode(result).unwrap(), KvResult::Cas { swapped: true, .. }),
        "the first result, not a new execution"
    );
    assert_eq!(a.state_machine().get(b"k"), Some(&b"v1"[..]), "not applied twice");
}

#[test]
fn two_copies_of_a_command_in_one_batch_apply_once() {
    let mut a = applier();
    let out =
        apply(&mut a, vec![put(1, 1, b"k", b"a"), put(1, 1, b"k", b"a"), put(0, 0, b"n", b"x"), put(0, 0, b"n", b"y")]);
    assert!(matches!(out[0], CommandOutcome::Applied(_)));
    assert!(matches!(out[1], CommandOutcome::Duplicate(_)));
    assert!(matches!(out[2], CommandOutcome::Applied(_)), "session 0 is never deduplicated");
    assert!(matches!(out[3], CommandOutcome::Applied(_)));
    assert_eq!(a.state_machine().get(b"n"), Some(&b"y"[..]));
}

#[test]
fn a_retry_older_than_the_window_is_refused_as_stale() {
    let mut a = applier();
    for seq in 1..=20 {
        apply(&mut a, vec![put(1, seq, b"k", b"v")]);
    }
    let out = apply(&mut a, vec![put(1, 3, b"k", b"old")]);
    assert_eq!(out[0], CommandOutcome::Stale { oldest_remembered: 13 });
    assert_eq!(a.state_machine().get(b"k"), Some(&b"v"[..]));
}

#[test]
fn entries_must_be_applied_in_order_and_bad_batches_change_nothing() {
    let mut a = applier();
    let mut out = Vec::new();
    let batch = encode(&Batch { commands: vec![put(1, 1, b"k", b"v")] });
    assert!(matches!(
        a.apply(2, 1, EntryKind::Normal, &batch, &mut out),
        Err(ApplyError::OutOfOrder { index: 2, expected: 1 })
    ));
    assert!(matches!(
        a.apply(1, 1, EntryKind::Normal, b"not a batch at all", &mut out),
        Err(ApplyError::BadBatch { index: 1, .. })
    ));
    assert_eq!(a.applied_index(), 0);
    a.apply(1, 1, EntryKind::Noop, &[], &mut out).unwrap();
    assert_eq!(a.applied_index(), 1, "entries without a batch still advance the applied index");
    assert!(out.is_empty());
}

#[test]
fn a_snapshot_restores_the_same_replicated_state() {
    let mut a = applier();
    for seq in 1..=30 {
        apply(&mut a, vec![put(seq % 3 + 1, seq, format!("key{seq}").as_bytes(), b"value")]);
    }
    let mut snapshot = Vec::new();
    a.snapshot(&mut snapshot).unwrap();
    let mut b = applier();
    b.restore(&mut snapshot.as_slice()).unwrap();
    assert_eq!(b.applied_index(), a.applied_index());
    assert_eq!(b.state_hash(), a.state_hash());
    // Sessions came along: a retry after restore is still a duplicate.
    let out = apply(&mut b, vec![put(1, 30, b"key30", b"other")]);
    assert!(matches!(out[0], CommandOutcome::Duplicate(_)));
}

#[test]
fn a_snapshot_view_writes_the_state_it_was_taken_at_while_applying_goes_on() {
    let mut a = applier();
    for seq in 1..=30 {
        apply(&mut a, vec![put(seq % 3 + 1, seq, format!("key{seq}").as_bytes(), b"value")]);
    }
    let mut at_view = Vec::new();
    a.snapshot(&mut at_view).unwrap();
    let hash_at_view = a.state_hash();
    let view = a.snapshot_view().unwrap();
    // Applying goes on: overwrites, new keys, new sessions.
    for seq in 31..=60 {
        apply(&mut a, vec![put(seq % 5 + 1, seq, format!("key{}", seq % 40).as_bytes(), b"later")]);
    }
    let (written_on_another_thread, written_into) = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        view.write(&mut bytes).unwrap();
        // Appended to what the buffer already holds (the snapshot file's header, in the node).
        let mut into = b"header".to_vec();
        view.write_into(&mut into).unwrap();
        (bytes, into)
    })
    .join()
    .unwrap();
    assert_eq!(written_on_another_thread, at_view, "the view writes the snapshot of its own time, byte for byte");
    assert_eq!(&written_into[..6], b"header");
    assert_eq!(&written_into[6..], &at_view[..], "written in place, the same bytes");
    let mut b = applier();
    b.restore(&mut written_on_another_thread.as_slice()).unwrap();
    assert_eq!(b.state_hash(), hash_at_view);
    // And the applier, its view gone, snapshots its current state again.
    let mut now = Vec::new();
    a.snapshot_view().unwrap().write(&mut now).unwrap();
    let mut expected = Vec::new();
    a.snapshot(&mut expected).unwrap();
    assert_eq!(now, expected);
    assert_ne!(now, at_view);
}

fn later(hash: StateHash) -> StateHashLater {
    match hash {
        StateHash::Later(hash) => hash,
        other => panic!("the KV store freezes its state for a hash: {other:?}"),
    }
}

#[test]
fn a_state_hash_taken_for_later_is_the_hash_of_its_own_time_while_applying_goes_on() {
    let mut a = applier();
    for seq in 1..=30 {
        apply(&mut a, vec![put(seq % 3 + 1, seq, format!("key{seq}").as_bytes(), b"value")]);
    }
    let hash_now = a.state_hash();
    let frozen = later(a.state_hash_later());
    for seq in 31..=60 {
        apply(&mut a, vec![put(seq % 5 + 1, seq, format!("key{}", seq % 40).as_bytes(), b"later")]);
    }
    assert_ne!(a.state_hash(), hash_now, "the applies after it changed the state");
    let hashed_on_another_thread = std::thread::spawn(frozen).join().unwrap();
    assert_eq!(hashed_on_another_thread, hash_now);
    assert_eq!(later(a.state_hash_later())(), a.state_hash());
}

#[test]
fn no_state_hash_is_frozen_while_a_snapshot_view_holds_writes_back_and_the_merge_is_spread_out() {
    let mut a = applier();
    for seq in 1..=20 {
        apply(&mut a, vec![put(1, seq, format!("key{seq}").as_bytes(), b"value")]);
    }
    let snapshot_view = a.snapshot_view().unwrap();
    // Writes made while the view is alive go to the delta: no second freeze is possible.
    for seq in 21..=10_020 {
        apply(&mut a, vec![put(2, seq, format!("key{seq}").as_bytes(), b"during")]);
    }
    assert!(matches!(a.state_hash_later(), StateHash::NotYet));
    drop(snapshot_view);
    // The delta (10,000 writes) is merged back a step per request, not all at once.
    assert!(matches!(a.state_hash_later(), StateHash::NotYet), "4,096 merged, more left");
    assert!(matches!(a.state_hash_later(), StateHash::NotYet), "8,192 merged, more left");
    let hash = later(a.state_hash_later());
    assert_eq!(hash(), a.state_hash());
}

/// A state machine with only the trait's defaults hashes at once.
#[test]
fn the_default_hashes_now() {
    let mut blob = Blob::default();
    let StateHash::Now(hash) = blob.state_hash_later() else { panic!("the default hashes at once") };
    assert_eq!(hash, blob.state_hash());
}

#[test]
fn a_corrupted_snapshot_is_refused() {
    let mut a = applier();
    apply(&mut a, vec![put(1, 1, b"k", b"v")]);
    let mut snapshot = Vec::new();
    a.snapshot(&mut snapshot).unwrap();
    for position in [0, 9, snapshot.len() / 2, snapshot.len() - 6, snapshot.len() - 1] {
        let mut bad = snapshot.clone();
        bad[position] ^= 0x40;
        let mut b = applier();
        assert!(b.restore(&mut bad.as_slice()).is_err(), "a flip at byte {position} went unnoticed");
    }
    let mut b = applier();
    assert!(b.restore(&mut &snapshot[..snapshot.len() - 3]).is_err(), "a truncated snapshot is refused");
}

/// A state machine whose restore reads its input to the end, as C backends do through
/// `smr_reader_read`: it must see exactly the bytes its snapshot wrote, not the applier's
/// checksum after them.
#[derive(Debug, Default)]
struct Blob(Vec<u8>);

impl smr_apply::StateMachine for Blob {
    fn apply(&mut self, batch: &smr_apply::ApplyBatch<'_>, results: &mut smr_apply::Results) {
        for (position, payload) in batch.commands() {
            self.0.extend_from_slice(payload);
            results.set(position, Bytes::new());
        }
    }
    fn query(&self, _: &[u8]) -> Bytes {
        Bytes::new()
    }
    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.0)
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> Result<(), smr_apply::RestoreError> {
        self.0.clear();
        input.read_to_end(&mut self.0)?;
        Ok(())
    }
    fn state_hash(&self) -> u64 {
        self.0.len() as u64
    }
}

#[test]
fn a_restore_that_reads_to_the_end_sees_exactly_what_the_snapshot_wrote() {
    let mut a = Applier::new(Blob::default(), SessionConfig::default(), 1024);
    let batch = encode(&Batch { commands: vec![Command { session: 1, seq: 1, payload: Bytes::from_static(b"abc") }] });
    a.apply(1, 1, EntryKind::Normal, &batch, &mut Vec::new()).unwrap();
    let mut snapshot = Vec::new();
    a.snapshot(&mut snapshot).unwrap();
    let mut b = Applier::new(Blob::default(), SessionConfig::default(), 1024);
    b.restore(&mut snapshot.as_slice()).unwrap();
    assert_eq!(b.state_machine().0, b"abc");
    assert_eq!(b.state_hash(), a.state_hash());
}
