//! The built-in key-value state machine: put, get, delete, compare-and-swap and bounded range
//! scans over byte-string keys, in key order.
//!
//! Commands and results use a small binary encoding ([`KvCommand::encode`],
//! [`KvResult::decode`]) read in place from the command payload: a put's key and value are
//! copied once, into the map ([`crate::kv_map`]), and nowhere else.

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::kv_map::{KvMap, KvMapView};
use crate::state_machine::{ApplyBatch, RestoreError, Results, StateHash, StateMachine, StateView, WrittenState};

/// Limits of the key-value state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Most entries one scan returns.
    pub scan_entries_max: usize,
    /// Most bytes (keys plus values) one scan returns.
    pub scan_bytes_max: usize,
}

impl Default for KvConfig {
    fn default() -> KvConfig {
        KvConfig { key_bytes_max: 4096, value_bytes_max: 1 << 20, scan_entries_max: 10_000, scan_bytes_max: 4 << 20 }
    }
}

/// A command of the key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    /// Set `key` to `new` (delete when `None`) if it holds `expected` (absent when `None`).
    Cas {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    },
    /// Keys in `[start, end)` (`end` empty: to the last key), at most `limit` of them.
    Scan {
        start: &'a [u8],
        end: &'a [u8],
        limit: u32,
    },
}

/// The answer to a [`KvCommand`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    Done,
    Value(Option<Bytes>),
    /// Whether the swap happened, and the value found.
    Cas {
        swapped: bool,
        current: Option<Bytes>,
    },
    /// Entries in key order, and whether a limit cut the scan short.
    Scan {
        entries: Vec<(Bytes, Bytes)>,
        truncated: bool,
    },
    /// The command was refused (malformed, or over a limit); nothing changed.
    Error(String),
}

const TAG_PUT: u8 = 1;
const TAG_GET: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_CAS: u8 = 4;
const TAG_SCAN: u8 = 5;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated: wanted {n} bytes, {} left", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn optional(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            other => Err(format!("bad option flag {other}")),
        }
    }
    fn done(&self) -> Result<(), String> {
        if self.0.is_empty() { Ok(()) } else { Err(format!("{} trailing bytes", self.0.len())) }
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32_le(b.len() as u32);
    buf.put_slice(b);
}

fn put_optional(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => buf.put_u8(0),
        Some(b) => {
            buf.put_u8(1);
            put_bytes(buf, b);
        }
    }
}

impl<'a> KvCommand<'a> {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match *self {
            KvCommand::Put { key, value } => {
                buf.put_u8(TAG_PUT);
                put_bytes(&mut buf, key);
                put_bytes(&mut buf, value);
            }
            KvCommand::Get { key } => {
                buf.put_u8(TAG_GET);
                put_bytes(&mut buf, key);
            }
            KvCommand::Delete { key } => {
                buf.put_u8(TAG_DELETE);
                put_bytes(&mut buf, key);
            }
            KvCommand::Cas { key, expected, new } => {
                buf.put_u8(TAG_CAS);
                put_bytes(&mut buf, key);
                put_optional(&mut buf, expected);
                put_optional(&mut buf, new);
            }
            KvCommand::Scan { start, end, limit } => {
                buf.put_u8(TAG_SCAN);
                put_bytes(&mut buf, start);
                put_bytes(&mut buf, end);
                buf.put_u32_le(limit);
            }
        }
        buf.freeze()
    }

    /// Decodes a command in place.
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn decode(payload: &'a [u8]) -> Result<KvCommand<'a>, String> {
        let mut r = Reader(payload);
        let command = match r.u8()? {
            TAG_PUT => KvCommand::Put { key: r.bytes()?, value: r.bytes()? },
            TAG_GET => KvCommand::Get { key: r.bytes()? },
            TAG_DELETE => KvCommand::Delete { key: r.bytes()? },
            TAG_CAS => KvCommand::Cas { key: r.bytes()?, expected: r.optional()?, new: r.optional()? },
            TAG_SCAN => KvCommand::Scan { start: r.bytes()?, end: r.bytes()?, limit: r.u32()? },
            other => return Err(format!("unknown command tag {other}")),
        };
        r.done()?;
        Ok(command)
    }
}

const RESULT_DONE: u8 = 0;
const RESULT_VALUE: u8 = 1;
const RESULT_CAS: u8 = 2;
const RESULT_SCAN: u8 = 3;
const RESULT_ERROR: u8 = 255;

impl KvResult {
    pub fn encode(&self) -> Bytes {
        // Nearly every result is a put's `Done`: one static byte, no allocation per command.
        static DONE: [u8; 1] = [RESULT_DONE];
        let mut buf = BytesMut::new();
        match self {
            KvResult::Done => return Bytes::from_static(&DONE),
            KvResult::Value(v) => {
                buf.put_u8(RESULT_VALUE);
                put_optional(&mut buf, v.as_deref());
            }
            KvResult::Cas { swapped, current } => {
                buf.put_u8(RESULT_CAS);
                buf.put_u8(u8::from(*swapped));
                put_optional(&mut buf, current.as_deref());
            }
            KvResult::Scan { entries, truncated } => {
                buf.put_u8(RESULT_SCAN);
                buf.put_u8(u8::from(*truncated));
                buf.put_u32_le(entries.len() as u32);
                for (k, v) in entries {
                    put_bytes(&mut buf, k);
                    put_bytes(&mut buf, v);
                }
            }
            KvResult::Error(message) => {
                buf.put_u8(RESULT_ERROR);
                put_bytes(&mut buf, message.as_bytes());
            }
        }
        buf.freeze()
    }

    /// Decodes a result received from a node.
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<KvResult, String> {
        let mut r = Reader(bytes);
        let owned = |b: Option<&[u8]>| b.map(Bytes::copy_from_slice);
        let result = match r.u8()? {
            RESULT_DONE => KvResult::Done,
            RESULT_VALUE => KvResult::Value(owned(r.optional()?)),
            RESULT_CAS => KvResult::Cas { swapped: r.u8()? == 1, current: owned(r.optional()?) },
            RESULT_SCAN => {
                let truncated = r.u8()? == 1;
                let count = r.u32()? as usize;
                // Each entry takes at least 8 bytes; a count beyond that is a lie, refused
                // before anything is allocated for it.
                if count > r.0.len() / 8 {
                    return Err(format!("scan claims {count} entries in {} bytes", r.0.len()));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let k = Bytes::copy_from_slice(r.bytes()?);
                    entries.push((k, Bytes::copy_from_slice(r.bytes()?)));
                }
                KvResult::Scan { entries, truncated }
            }
            RESULT_ERROR => KvResult::Error(String::from_utf8_lossy(r.bytes()?).into_owned()),
            other => return Err(format!("unknown result tag {other}")),
        };
        r.done()?;
        Ok(result)
    }
}

/// The built-in replicated key-value map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    config: KvConfig,
    map: KvMap,
    bytes: u64,
}

impl KvStore {
    pub fn new(config: KvConfig) -> KvStore {
        KvStore { config, map: KvMap::default(), bytes: 0 }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), String> {
        if key.len() > self.config.key_bytes_max {
            return Err(format!("key of {} bytes exceeds key_bytes_max ({})", key.len(), self.config.key_bytes_max));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), String> {
        if value.len() > self.config.value_bytes_max {
            return Err(format!(
                "value of {} bytes exceeds value_bytes_max ({})",
                value.len(),
                self.config.value_bytes_max
            ));
        }
        Ok(())
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) {
        let new = (key.len() + value.len()) as u64;
        if let Some(old_len) = self.map.insert(key, value) {
            self.bytes -= (key.len() + old_len) as u64;
        }
        self.bytes += new;
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old_len) = self.map.remove(key) {
            self.bytes -= (key.len() + old_len) as u64;
        }
    }

    /// The value of `key`, copied out of the map for an answer.
    fn value(&self, key: &[u8]) -> Option<Bytes> {
        self.map.get(key).map(Bytes::copy_from_slice)
    }

    /// Executes one command. Reads (get, scan) are served here too when they go through the log.
    pub fn execute(&mut self, payload: &[u8]) -> KvResult {
        let command = match KvCommand::decode(payload) {
            Ok(c) => c,
            Err(e) => return KvResult::Error(e),
        };
        let checked = match command {
            KvCommand::Put { key, value } => self.check_key(key).and_then(|()| self.check_value(value)),
            KvCommand::Cas { key, new, .. } => {
                self.check_key(key).and_then(|()| new.map_or(Ok(()), |v| self.check_value(v)))
            }
            KvCommand::Get { key } | KvCommand::Delete { key } => self.check_key(key),
            KvCommand::Scan { .. } => Ok(()),
        };
        if let Err(e) = checked {
            return KvResult::Error(e);
        }
        match command {
            KvCommand::Put { key, value } => {
                self.insert(key, value);
                KvResult::Done
            }
            KvCommand::Delete { key } => {
                self.remove(key);
                KvResult::Done
            }
            KvCommand::Cas { key, expected, new } => {
                let current = self.value(key);
                if current.as_deref() == expected {
                    match new {
                        Some(v) => self.insert(key, v),
                        None => self.remove(key),
                    }
                    KvResult::Cas { swapped: true, current }
                } else {
                    KvResult::Cas { swapped: false, current }
                }
            }
            KvCommand::Get { .. } | KvCommand::Scan { .. } => self.read(command),
        }
    }

    fn read(&self, command: KvCommand<'_>) -> KvResult {
        match command {
            KvCommand::Get { key } => KvResult::Value(self.value(key)),
            KvCommand::Scan { start, end, limit } => {
                let limit = (limit as usize).min(self.config.scan_entries_max);
                let end = if end.is_empty() { None } else { Some(end) };
                let mut entries = Vec::new();
                let mut bytes = 0usize;
                let mut truncated = false;
                for (k, v) in self.map.range(start, end) {
                    if entries.len() >= limit || bytes + k.len() + v.len() > self.config.scan_bytes_max {
                        truncated = true;
                        break;
                    }
                    bytes += k.len() + v.len();
                    entries.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
                }
                KvResult::Scan { entries, truncated }
            }
            _ => KvResult::Error("not a read".into()),
        }
    }
}

/// Bytes of entries gathered before each write to a snapshot's output.
const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

/// The map's snapshot format: the entry count, then each key and value with its length.
fn write_entries<'a>(
    len: usize,
    entries: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
    chunk.extend_from_slice(&(len as u64).to_le_bytes());
    for (k, v) in entries {
        chunk.extend_from_slice(&(k.len() as u32).to_le_bytes());
        chunk.extend_from_slice(k);
        chunk.extend_from_slice(&(v.len() as u32).to_le_bytes());
        chunk.extend_from_slice(v);
        if chunk.len() >= SNAPSHOT_CHUNK_BYTES {
            out.write_all(&chunk)?;
            chunk.clear();
        }
    }
    out.write_all(&chunk)
}

/// The store's snapshot, to be written on the snapshot thread: the map as it was, shared with it.
struct KvView(KvMapView);

impl StateView for KvView {
    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        write_entries(self.0.len(), self.0.iter(), out)
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, batch: &ApplyBatch<'_>, results: &mut Results) {
        for (position, payload) in batch.commands() {
            let result = self.execute(payload);
            results.set(position, result.encode());
        }
    }

    fn query(&self, query: &[u8]) -> Bytes {
        match KvCommand::decode(query) {
            Ok(command @ (KvCommand::Get { .. } | KvCommand::Scan { .. })) => self.read(command).encode(),
            Ok(_) => KvResult::Error("a query must be a get or a scan".into()).encode(),
            Err(e) => KvResult::Error(e).encode(),
        }
    }

    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        write_entries(self.map.len(), self.map.iter(), out)
    }

    /// The map's table shared in constant time (see `kv_map`); a copy written now only while
    /// the view of the previous snapshot is still alive with writes made since.
    fn snapshot_view(&mut self) -> std::io::Result<Box<dyn StateView>> {
        if let Some(view) = self.map.view() {
            return Ok(Box::new(KvView(view)));
        }
        let mut bytes = Vec::new();
        self.snapshot(&mut bytes)?;
        Ok(Box::new(WrittenState(bytes)))
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let count = u64::from_le_bytes(word);
        let mut map = KvMap::default();
        let mut bytes = 0u64;
        let mut read_field = |limit: usize, what: &str| -> Result<Vec<u8>, RestoreError> {
            let mut len = [0u8; 4];
            input.read_exact(&mut len)?;
            let len = u32::from_le_bytes(len) as usize;
            if len > limit {
                return Err(RestoreError::Malformed(format!("{what} of {len} bytes exceeds its limit ({limit})")));
            }
            let mut buf = vec![0u8; len];
            input.read_exact(&mut buf)?;
            Ok(buf)
        };
        for _ in 0..count {
            let k = read_field(self.config.key_bytes_max, "key")?;
            let v = read_field(self.config.value_bytes_max, "value")?;
            bytes += (k.len() + v.len()) as u64;
            if map.insert(&k, &v).is_some() {
                return Err(RestoreError::Malformed("duplicate keys".into()));
            }
        }
        self.map = map;
        self.bytes = bytes;
        Ok(())
    }

    fn state_hash(&self) -> u64 {
        hash_entries(self.map.len(), self.map.iter())
    }

    fn state_hash_later(&mut self) -> StateHash {
        match self.map.view_within(HASH_MERGE_STEP) {
            Some(view) => StateHash::Later(Box::new(move || hash_entries(view.len(), view.iter()))),
            None => StateHash::NotYet,
        }
    }
}

/// Changes of a former view's delta merged back per request for a status hash: a status that
/// arrives just after a snapshot was written would otherwise merge every write made meanwhile
/// (tens of thousands at full load) in one go, on the apply thread.
const HASH_MERGE_STEP: usize = 4096;

/// The state hash of `count` entries given in key order.
fn hash_entries<'a>(count: usize, entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> u64 {
    let mut h = crc32c::crc32c(&(count as u64).to_le_bytes());
    for (k, v) in entries {
        h = crc32c::crc32c_append(h, &(k.len() as u32).to_le_bytes());
        h = crc32c::crc32c_append(h, k);
        h = crc32c::crc32c_append(h, &(v.len() as u32).to_le_bytes());
        h = crc32c::crc32c_append(h, v);
    }
    u64::from(h) | ((count as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(kv: &mut KvStore, c: KvCommand<'_>) -> KvResult {
        let result = kv.execute(&c.encode());
        assert_eq!(KvResult::decode(&result.encode()).unwrap(), result, "results round trip");
        result
    }

    #[test]
    fn put_get_delete_and_cas_behave_as_registers() {
        let mut kv = KvStore::new(KvConfig::default());
        assert_eq!(run(&mut kv, KvCommand::Get { key: b"a" }), KvResult::Value(None));
        assert_eq!(run(&mut kv, KvCommand::Put { key: b"a", value: b"1" }), KvResult::Done);
        assert_eq!(run(&mut kv, KvCommand::Get { key: b"a" }), KvResult::Value(Some(Bytes::from_static(b"1"))));
        let cas = run(&mut kv, KvCommand::Cas { key: b"a", expected: Some(b"2"), new: Some(b"3") });
        assert_eq!(cas, KvResult::Cas { swapped: false, current: Some(Bytes::from_static(b"1")) });
        let cas = run(&mut kv, KvCommand::Cas { key: b"a", expected: Some(b"1"), new: None });
        assert!(matches!(cas, KvResult::Cas { swapped: true, .. }));
        assert_eq!(run(&mut kv, KvCommand::Get { key: b"a" }), KvResult::Value(None), "cas to None deletes");
        assert!(matches!(
            run(&mut kv, KvCommand::Cas { key: b"a", expected: None, new: Some(b"x") }),
            KvResult::Cas { swapped: true, .. }
        ));
        run(&mut kv, KvCommand::Delete { key: b"a" });
        assert_eq!(kv.len(), 0);
        assert_eq!(kv.bytes(), 0);
    }

    #[test]
    fn scans_are_ordered_and_bounded() {
        let mut kv = KvStore::new(KvConfig { scan_entries_max: 3, ..KvConfig::default() });
        for k in [b"d", b"a", b"c", b"b", b"e"] {
            run(&mut kv, KvCommand::Put { key: k, value: b"v" });
        }
        let KvResult::Scan { entries, truncated } = run(&mut kv, KvCommand::Scan { start: b"b", end: b"", limit: 100 })
        else {
            panic!("not a scan")
        };
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, vec![&b"b"[..], b"c", b"d"]);
        assert!(truncated, "scan_entries_max cut it short");
        let KvResult::Scan { entries, truncated } =
            run(&mut kv, KvCommand::Scan { start: b"a", end: b"c", limit: 100 })
        else {
            panic!("not a scan")
        };
        assert_eq!(entries.len(), 2);
        assert!(!truncated);
    }

    #[test]
    fn oversized_and_malformed_commands_are_refused_without_change() {
        let mut kv = KvStore::new(KvConfig { key_bytes_max: 4, value_bytes_max: 4, ..KvConfig::default() });
        assert!(
            matches!(run(&mut kv, KvCommand::Put { key: b"12345", value: b"v" }), KvResult::Error(e) if e.contains("key_bytes_max"))
        );
        assert!(
            matches!(run(&mut kv, KvCommand::Put { key: b"k", value: b"12345" }), KvResult::Error(e) if e.contains("value_bytes_max"))
        );
        assert!(matches!(kv.execute(&[TAG_PUT, 9, 0, 0, 0]), KvResult::Error(e) if e.contains("truncated")));
        assert!(matches!(kv.execute(&[77]), KvResult::Error(e) if e.contains("unknown command")));
        assert!(kv.is_empty());
    }

    proptest! {
        #[test]
        fn snapshot_and_restore_give_an_equal_store(entries in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..8), proptest::collection::vec(any::<u8>(), 0..8), 0..50)
        ) {
            let mut kv = KvStore::new(KvConfig::default());
            for (k, v) in &entries {
                kv.execute(&KvCommand::Put { key: k, value: v }.encode());
            }
            let mut buf = Vec::new();
            kv.snapshot(&mut buf).unwrap();
            let mut back = KvStore::new(KvConfig::default());
            back.restore(&mut buf.as_slice()).unwrap();
            prop_assert_eq!(back.state_hash(), kv.state_hash());
            prop_assert_eq!(&back, &kv);
            // The view taken now writes the same bytes after the store has moved on.
            let view = kv.snapshot_view().unwrap();
            for k in entries.keys() {
                kv.execute(&KvCommand::Put { key: k, value: b"moved on" }.encode());
                kv.execute(&KvCommand::Delete { key: k }.encode());
            }
            let mut from_view = Vec::new();
            view.write(&mut from_view).unwrap();
            prop_assert_eq!(from_view, buf);
        }

        #[test]
        fn decoding_arbitrary_payloads_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = KvCommand::decode(&bytes);
            let _ = KvResult::decode(&bytes);
        }
    }
}
