//! The simulator's replicated state machine: a key-value register per key, with client sessions
//! so that a retried command is applied once.
//!
//! This is deliberately tiny and independent of the product's state machine: its job is to make
//! every replica's state comparable (a state hash) and every client's history checkable.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

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

/// One client command: applied at most once per `(client, seq)`.
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

const COMMAND_BYTES: usize = 8 + 8 + 1 + 8 + 1 + 8 + 8;

pub fn encode_batch(commands: &[Command]) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + commands.len() * COMMAND_BYTES);
    buf.put_u32_le(commands.len() as u32);
    for c in commands {
        buf.put_u64_le(c.client);
        buf.put_u64_le(c.seq);
        let (tag, key, has_expected, a, b) = match c.op {
            Op::Put { key, value } => (1u8, key, 0u8, value, 0),
            Op::Delete { key } => (2, key, 0, 0, 0),
            Op::Cas { key, expected, new } => (3, key, u8::from(expected.is_some()), expected.unwrap_or(0), new),
        };
        buf.put_u8(tag);
        buf.put_u64_le(key);
        buf.put_u8(has_expected);
        buf.put_u64_le(a);
        buf.put_u64_le(b);
    }
    buf.freeze()
}

/// Decodes a batch. The simulator only ever decodes what it encoded, so a malformed batch is a
/// bug (corruption the core let through) and panics.
pub fn decode_batch(data: &[u8]) -> Vec<Command> {
    let count = u32::from_le_bytes(data[..4].try_into().expect("batch header")) as usize;
    assert_eq!(data.len(), 4 + count * COMMAND_BYTES, "malformed batch");
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("in bounds"));
    (0..count)
        .map(|i| {
            let at = 4 + i * COMMAND_BYTES;
            let (client, seq, tag, key) = (u64_at(at), u64_at(at + 8), data[at + 16], u64_at(at + 17));
            let (has_expected, a, b) = (data[at + 25], u64_at(at + 26), u64_at(at + 34));
            let op = match tag {
                1 => Op::Put { key, value: a },
                2 => Op::Delete { key },
                3 => Op::Cas { key, expected: (has_expected == 1).then_some(a), new: b },
                other => panic!("unknown command tag {other}"),
            };
            Command { client, seq, op }
        })
        .collect()
}

/// The replicated state: data, sessions, and how far the log has been applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub data: BTreeMap<Key, Value>,
    /// Per client: the last sequence number applied and its result.
    pub sessions: BTreeMap<u64, (u64, OpResult)>,
    pub applied: u64,
}

impl Kv {
    /// Applies one command, once per `(client, seq)`: a duplicate returns the first result.
    pub fn apply(&mut self, command: &Command) -> OpResult {
        if let Some(&(seq, result)) = self.sessions.get(&command.client)
            && command.seq <= seq
        {
            return result;
        }
        let result = match command.op {
            Op::Put { key, value } => {
                self.data.insert(key, value);
                OpResult::Done
            }
            Op::Delete { key } => {
                self.data.remove(&key);
                OpResult::Done
            }
            Op::Cas { key, expected, new } => {
                if self.data.get(&key).copied() == expected {
                    self.data.insert(key, new);
                    OpResult::Cas(true)
                } else {
                    OpResult::Cas(false)
                }
            }
        };
        self.sessions.insert(command.client, (command.seq, result));
        result
    }

    /// FNV-1a over the whole state: equal states give equal hashes.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(self.applied);
        for (&k, &v) in &self.data {
            h.u64(k);
            h.u64(v);
        }
        for (&client, &(seq, result)) in &self.sessions {
            h.u64(client);
            h.u64(seq);
            h.u64(match result {
                OpResult::Done => 2,
                OpResult::Cas(b) => u64::from(b),
            });
        }
        h.finish()
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u64_le(self.applied);
        buf.put_u64_le(self.data.len() as u64);
        for (&k, &v) in &self.data {
            buf.put_u64_le(k);
            buf.put_u64_le(v);
        }
        buf.put_u64_le(self.sessions.len() as u64);
        for (&client, &(seq, result)) in &self.sessions {
            buf.put_u64_le(client);
            buf.put_u64_le(seq);
            buf.put_u64_le(match result {
                OpResult::Done => 2,
                OpResult::Cas(b) => u64::from(b),
            });
        }
        buf.freeze()
    }

    pub fn decode(data: &[u8]) -> Kv {
        let mut at = 0;
        let mut next = || {
            let v = u64::from_le_bytes(data[at..at + 8].try_into().expect("snapshot in bounds"));
            at += 8;
            v
        };
        let applied = next();
        let mut kv = Kv { applied, ..Kv::default() };
        for _ in 0..next() {
            let (k, v) = (next(), next());
            kv.data.insert(k, v);
        }
        for _ in 0..next() {
            let (client, seq, r) = (next(), next(), next());
            kv.sessions.insert(client, (seq, if r == 2 { OpResult::Done } else { OpResult::Cas(r == 1) }));
        }
        kv
    }
}

/// FNV-1a, 64 bit: a small deterministic hash for state and trace hashing.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn u64(&mut self, v: u64) {
        for byte in v.to_le_bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_command_is_applied_once() {
        let mut kv = Kv::default();
        let put = Command { client: 1, seq: 1, op: Op::Put { key: 1, value: 10 } };
        let cas = Command { client: 1, seq: 2, op: Op::Cas { key: 1, expected: Some(10), new: 11 } };
        assert_eq!(kv.apply(&put), OpResult::Done);
        assert_eq!(kv.apply(&cas), OpResult::Cas(true));
        assert_eq!(kv.apply(&cas), OpResult::Cas(true), "the duplicate returns the first result");
        assert_eq!(kv.data[&1], 11);
        kv.apply(&Command { client: 2, seq: 1, op: Op::Put { key: 1, value: 10 } });
        assert_eq!(kv.apply(&cas), OpResult::Cas(true), "not re-executed against the new value");
        assert_eq!(kv.data[&1], 10);
    }

    #[test]
    fn batches_and_snapshots_round_trip() {
        let commands = vec![
            Command { client: 1, seq: 1, op: Op::Put { key: 3, value: 4 } },
            Command { client: 2, seq: 9, op: Op::Cas { key: 3, expected: None, new: 5 } },
            Command { client: 2, seq: 10, op: Op::Delete { key: 3 } },
        ];
        assert_eq!(decode_batch(&encode_batch(&commands)), commands);
        let mut kv = Kv::default();
        for c in &commands {
            kv.apply(c);
        }
        kv.applied = 7;
        assert_eq!(Kv::decode(&kv.encode()), kv);
    }
}
