//! The simulated clients' view of the key-value service, and its translation to the product's
//! apply layer: replicas run the real `smr-apply` [`Applier`] over the real [`KvStore`], so
//! batching, client sessions and snapshots are exercised under every fault the simulator injects.

use bytes::Bytes;
use smr_apply::batch::encode;
use smr_apply::{Applier, Batch, KvCommand, KvConfig, KvResult, KvStore, SessionConfig};

pub type Key = u64;
pub type Value = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put { key: Key, value: Value },
    Delete { key: Key },
    Cas { key: Key, expected: Option<Value>, new: Value },
}

impl Op {
    pub fn key(&self) -> Key {
        match *self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
        }
    }
}

/// One client command: applied at most once per `(client, seq)` (the client is the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    pub client: u64,
    pub seq: u64,
    pub op: Op,
}

/// What applying a command returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    Done,
    Cas(bool),
}

/// Keys are big-endian so that the store's key order is the numeric order.
pub fn key_bytes(key: Key) -> [u8; 8] {
    key.to_be_bytes()
}

pub fn value_bytes(value: Value) -> [u8; 8] {
    value.to_le_bytes()
}

pub fn decode_value(bytes: &[u8]) -> Value {
    Value::from_le_bytes(bytes.try_into().expect("the simulator writes 8-byte values"))
}

fn payload(op: &Op) -> Vec<u8> {
    let command = match *op {
        Op::Put { key, value } => KvCommand::Put { key: &key_bytes(key), value: &value_bytes(value) }.encode(),
        Op::Delete { key } => KvCommand::Delete { key: &key_bytes(key) }.encode(),
        Op::Cas { key, expected, new } => {
            let expected = expected.map(value_bytes);
            KvCommand::Cas {
                key: &key_bytes(key),
                expected: expected.as_ref().map(|e| &e[..]),
                new: Some(&value_bytes(new)),
            }
            .encode()
        }
    };
    command.to_vec()
}

/// Packs commands into one archived batch (the sequencer's job).
pub fn encode_batch(commands: &[Command]) -> Bytes {
    encode(&Batch {
        commands: commands
            .iter()
            .map(|c| smr_apply::Command { session: c.client, seq: c.seq, payload: payload(&c.op).into() })
            .collect(),
    })
}

/// The `(session, seq)` of every command in a batch. The simulator only decodes what it
/// encoded, so a malformed batch is a bug (corruption the core let through) and panics.
pub fn batch_commands(data: &[u8]) -> Vec<(u64, u64)> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    let batch = smr_apply::batch::view(&aligned).expect("a batch the simulator encoded");
    batch.commands.iter().map(|c| (c.session.to_native(), c.seq.to_native())).collect()
}

/// Translates a result of the store back to the client's terms.
pub fn op_result(result: &[u8]) -> OpResult {
    match KvResult::decode(result).expect("a result the store encoded") {
        KvResult::Done => OpResult::Done,
        KvResult::Cas { swapped, .. } => OpResult::Cas(swapped),
        other => panic!("unexpected result {other:?} for a write"),
    }
}

/// A replica's state: the product's applier over the built-in store. The simulated clients keep
/// one operation outstanding each, so a short session window is enough; it keeps snapshots (and
/// the chunked transfers that carry them) small.
pub fn new_state() -> Applier<KvStore> {
    let sessions = SessionConfig { window_max: 16, ..SessionConfig::default() };
    Applier::new(KvStore::new(KvConfig::default()), sessions, 4096)
}

/// FNV-1a, 64 bit: a small deterministic hash for trace and entry hashing.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, data: &[u8]) {
        for &byte in data {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv::new()
    }
}
