//! The key-value map's storage layout: values in a hash map, found with one or two cache
//! misses, and the keys' order in a B-tree beside it, for scans and snapshots; short keys are
//! stored inline, and a value is overwritten in its own allocation.
//!
//! Why not `BTreeMap<Bytes, Bytes>`: a lookup in a map of 100,000 keys compares about 17 keys,
//! and with every key behind a pointer each comparison is a cache miss; a put then allocated a
//! new key and a new value and freed the old ones. Profiled at 256 outstanding puts, that insert
//! was half of each node's apply thread (memcmp on cold keys 21 %, the tree walk 12 %, malloc
//! and free 14 %). With keys of up to [`KEY_INLINE_BYTES_MAX`] bytes inline in the tree's nodes
//! it was still the apply thread's largest cost, now the walk down the tree's levels; a put to a
//! key that exists (the usual case) now touches the hash map only. Nothing iterates the hash
//! map, so its seeded hasher never shows in results, snapshots or state hashes: every replica
//! iterates the same B-tree order.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

/// Keys up to this many bytes are stored inline in the tree's nodes; longer ones on the heap.
/// 30 keeps a [`Key`] at 32 bytes, half a cache line.
pub(crate) const KEY_INLINE_BYTES_MAX: usize = 30;

/// A value's allocation is reused for a new value of `len` bytes when its capacity is at most
/// this many times `len`: reuse saves an allocation and a free per overwrite, and the bound
/// keeps a key that once held a large value from pinning that allocation for a small one.
const VALUE_REUSE_CAPACITY_FACTOR_MAX: usize = 2;

/// A map key: ordered as its bytes are (lexicographically), so that range scans see key order.
#[derive(Clone)]
pub(crate) enum Key {
    /// Invariant: `len as usize <= KEY_INLINE_BYTES_MAX`.
    Inline { len: u8, bytes: [u8; KEY_INLINE_BYTES_MAX] },
    /// Invariant: longer than `KEY_INLINE_BYTES_MAX` (so each key has one representation).
    Heap(Box<[u8]>),
}

const _: () = assert!(size_of::<Key>() == 32);

impl Key {
    pub(crate) fn new(key: &[u8]) -> Key {
        if key.len() <= KEY_INLINE_BYTES_MAX {
            let mut bytes = [0u8; KEY_INLINE_BYTES_MAX];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline { len: key.len() as u8, bytes }
        } else {
            Key::Heap(key.into())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

// Ord, Eq and Hash all follow the bytes, as `Borrow<[u8]>` requires.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice().escape_ascii().to_string())
    }
}

/// An ordered map of byte-string keys to byte-string values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KvMap {
    values: HashMap<Key, Vec<u8>>,
    /// Invariant: holds exactly the keys of `values`.
    order: BTreeSet<Key>,
}

impl KvMap {
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// Sets `key` to `value`; returns the length of the value it replaced, if any.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<usize> {
        if let Some(old) = self.values.get_mut(key) {
            let old_len = old.len();
            if old.capacity() >= value.len() && old.capacity() <= value.len().max(1) * VALUE_REUSE_CAPACITY_FACTOR_MAX {
                old.clear();
                old.extend_from_slice(value);
            } else {
                *old = value.to_vec();
            }
            return Some(old_len);
        }
        let key = Key::new(key);
        self.order.insert(key.clone());
        self.values.insert(key, value.to_vec());
        None
    }

    /// Removes `key`; returns the length of the value it held, if any.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<usize> {
        let old = self.values.remove(key)?;
        self.order.remove(key);
        Some(old.len())
    }

    /// Entries from `start` (included) to `end` (excluded; unbounded when `None`), in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        self.order.range::<[u8], _>((Bound::Included(start), upper)).map(|key| self.entry(key))
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.order.iter().map(|key| self.entry(key))
    }

    fn entry<'a>(&'a self, key: &'a Key) -> (&'a [u8], &'a [u8]) {
        (key.as_slice(), &self.values[key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_either_side_of_the_inline_limit_order_as_their_bytes() {
        let short = vec![7u8; KEY_INLINE_BYTES_MAX];
        let mut long = short.clone();
        long.push(0);
        assert!(matches!(Key::new(&short), Key::Inline { .. }));
        assert!(matches!(Key::new(&long), Key::Heap(_)));
        assert!(Key::new(&short) < Key::new(&long), "a prefix sorts first");
        assert!(Key::new(b"") < Key::new(b"\0"), "the empty key sorts first, before a zero byte");
        assert_eq!(Key::new(&long).as_slice(), &long[..]);
    }

    #[test]
    fn an_overwrite_reuses_the_value_allocation_only_when_it_fits_snugly() {
        let mut map = KvMap::default();
        assert_eq!(map.insert(b"k", &[1; 128]), None);
        let first = map.values.get(&b"k"[..]).unwrap().as_ptr();
        assert_eq!(map.insert(b"k", &[2; 100]), Some(128));
        assert_eq!(map.values.get(&b"k"[..]).unwrap().as_ptr(), first, "128 bytes of capacity hold 100");
        assert_eq!(map.get(b"k"), Some(&[2u8; 100][..]));
        assert_eq!(map.insert(b"k", &[3; 4]), Some(100));
        assert!(map.values.get(&b"k"[..]).unwrap().capacity() < 128, "a small value does not keep a large allocation");
        assert_eq!(map.get(b"k"), Some(&[3u8; 4][..]));
        assert_eq!(map.insert(b"k", &[4; 4096]), Some(4));
        assert_eq!(map.get(b"k"), Some(&[4u8; 4096][..]));
    }

    proptest! {
        /// The map behaves as a `BTreeMap<Vec<u8>, Vec<u8>>` under puts, deletes and scans,
        /// with keys on both sides of the inline limit.
        #[test]
        fn behaves_as_an_ordered_map_of_byte_strings(
            operations in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0u8..4, 0..40), proptest::collection::vec(any::<u8>(), 0..300)),
                0..200,
            ),
            start in proptest::collection::vec(0u8..4, 0..40),
        ) {
            let mut map = KvMap::default();
            let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
            for (put, key, value) in operations {
                if put {
                    prop_assert_eq!(map.insert(&key, &value), model.insert(key.clone(), value).map(|v| v.len()));
                } else {
                    prop_assert_eq!(map.remove(&key), model.remove(&key).map(|v| v.len()));
                }
                prop_assert_eq!(map.get(&key), model.get(&key).map(Vec::as_slice));
            }
            prop_assert_eq!(map.len(), model.len());
            let all: Vec<_> = map.iter().collect();
            let expected: Vec<_> = model.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            prop_assert_eq!(all, expected);
            let scanned: Vec<_> = map.range(&start, None).map(|(k, _)| k.to_vec()).collect();
            let expected: Vec<_> = model.range(start.clone()..).map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(scanned, expected);
        }
    }
}
