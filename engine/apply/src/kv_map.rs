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
//!
//! Snapshots: [`KvMap::view`] shares the table with a [`KvMapView`] in constant time, and writes
//! made while it is shared go to a delta, merged back once the view is dropped. A snapshot
//! written from the view on another thread then holds the state at one applied index while the
//! apply thread goes on (serializing 15 MB of state on the apply thread stalled every answer
//! for 80 ms alone, 220 ms at full load).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;

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

/// The map proper: values by key, and the keys' order.
#[derive(Clone, Debug, Default)]
struct Table {
    values: HashMap<Key, Vec<u8>>,
    /// Invariant: holds exactly the keys of `values`.
    order: BTreeSet<Key>,
}

impl Table {
    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<usize> {
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

    /// Sets `key` to `value`, taking both as they are.
    fn insert_owned(&mut self, key: Key, value: Vec<u8>) {
        if let Some(old) = self.values.get_mut(&key) {
            *old = value;
            return;
        }
        self.order.insert(key.clone());
        self.values.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) -> Option<usize> {
        let old = self.values.remove(key)?;
        self.order.remove(key);
        Some(old.len())
    }

    fn entry<'a>(&'a self, key: &'a Key) -> (&'a [u8], &'a [u8]) {
        (key.as_slice(), &self.values[key])
    }
}

/// Writes made while the table was shared with a [`KvMapView`].
#[derive(Clone, Debug, Default)]
struct Delta {
    /// The new value of each key written; `None` for a key deleted.
    values: HashMap<Key, Option<Vec<u8>>>,
    /// Invariant: holds exactly the keys of `values`.
    order: BTreeSet<Key>,
}

impl Delta {
    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        if let Some(slot) = self.values.get_mut(key) {
            *slot = value.map(<[u8]>::to_vec);
            return;
        }
        let key = Key::new(key);
        self.order.insert(key.clone());
        self.values.insert(key, value.map(<[u8]>::to_vec));
    }

    /// Drops the pending change of `key`: a write to the table itself supersedes it.
    fn forget(&mut self, key: &[u8]) {
        if self.values.remove(key).is_some() {
            self.order.remove(key);
        }
    }

    /// Moves up to `count` changes into `table`.
    fn merge_into(&mut self, table: &mut Table, count: usize) {
        for _ in 0..count {
            let Some(key) = self.order.pop_first() else { return };
            match self.values.remove(&key).expect("the delta's order holds exactly its keys") {
                Some(value) => table.insert_owned(key, value),
                None => {
                    table.remove(key.as_slice());
                }
            }
        }
    }
}

/// Changes moved from the delta into the table by each write, once no view shares the table:
/// the merge is spread over the writes that follow a snapshot instead of stalling one of them
/// for all the writes made while the snapshot was written. Small under test, so that the
/// property tests see deltas merged partly.
const MERGE_STEP: usize = if cfg!(test) { 2 } else { 16 };

/// An ordered map of byte-string keys to byte-string values, of which a point-in-time
/// [`KvMapView`] is taken in constant time, for a snapshot written on another thread while the
/// map goes on changing.
///
/// While a view shares the table, writes go to a delta beside it (a deletion is recorded as
/// such), and reads look in the delta first. Once the last view is dropped, writes go to the
/// table again, each also moving [`MERGE_STEP`] changes of the delta into it, until it is empty.
#[derive(Debug, Default)]
pub(crate) struct KvMap {
    table: Arc<Table>,
    /// Present once a write found the table shared.
    delta: Option<Delta>,
    /// Entries, counting the delta's.
    len: usize,
}

impl KvMap {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if let Some(value) = self.delta.as_ref().and_then(|delta| delta.values.get(key)) {
            return value.as_deref();
        }
        self.table.get(key)
    }

    /// Sets `key` to `value`; returns the length of the value it replaced, if any.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<usize> {
        let old = if self.delta.is_none()
            && let Some(table) = Arc::get_mut(&mut self.table)
        {
            table.insert(key, value)
        } else {
            let old = self.get(key).map(<[u8]>::len);
            match self.merging(key) {
                Some(table) => {
                    table.insert(key, value);
                }
                None => self.delta.get_or_insert_with(Delta::default).set(key, Some(value)),
            }
            old
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns the length of the value it held, if any.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<usize> {
        let old = if self.delta.is_none()
            && let Some(table) = Arc::get_mut(&mut self.table)
        {
            table.remove(key)
        } else {
            let old = self.get(key).map(<[u8]>::len);
            match self.merging(key) {
                // The table may hold a value the delta had deleted: gone either way.
                Some(table) => {
                    table.remove(key);
                }
                None if old.is_some() => self.delta.get_or_insert_with(Delta::default).set(key, None),
                None => {}
            }
            old
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// With a delta: the table to write `key` in place when no view shares it any more, after
    /// dropping `key`'s pending change and merging a step of the others; `None` while shared.
    fn merging(&mut self, key: &[u8]) -> Option<&mut Table> {
        let table = Arc::get_mut(&mut self.table)?;
        if let Some(delta) = &mut self.delta {
            delta.forget(key);
            delta.merge_into(table, MERGE_STEP);
            if delta.values.is_empty() {
                self.delta = None;
            }
        }
        Some(table)
    }

    /// A point-in-time copy of the map that can be read on another thread, in constant time
    /// once the changes of the last view are merged (they are merged here if some are left);
    /// `None` while an earlier view is still alive and writes made since are in the delta (the
    /// caller then copies the map the slow way).
    pub(crate) fn view(&mut self) -> Option<KvMapView> {
        self.view_within(usize::MAX)
    }

    /// [`KvMap::view`], merging at most `merge_max` changes of the last view's delta here: `None`
    /// also while more are left.
    pub(crate) fn view_within(&mut self, merge_max: usize) -> Option<KvMapView> {
        if let Some(table) = Arc::get_mut(&mut self.table)
            && let Some(delta) = &mut self.delta
        {
            delta.merge_into(table, merge_max);
            if delta.values.is_empty() {
                self.delta = None;
            }
        }
        if self.delta.is_some() {
            return None;
        }
        Some(KvMapView { table: Arc::clone(&self.table) })
    }

    /// Entries from `start` (included) to `end` (excluded; unbounded when `None`), in key order.
    pub(crate) fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let bounds = (Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded));
        Merged {
            table: &self.table,
            delta: self.delta.as_ref(),
            table_keys: self.table.order.range::<[u8], _>(bounds).peekable(),
            delta_keys: self.delta.iter().flat_map(move |delta| delta.order.range::<[u8], _>(bounds)).peekable(),
        }
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.range(&[], None)
    }
}

impl Clone for KvMap {
    /// A copy that shares nothing with this map (a shared table would put both in delta mode
    /// for good).
    fn clone(&self) -> KvMap {
        let mut table = Table::default();
        for (key, value) in self.iter() {
            table.insert(key, value);
        }
        KvMap { table: Arc::new(table), delta: None, len: self.len }
    }
}

impl PartialEq for KvMap {
    fn eq(&self, other: &KvMap) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for KvMap {}

/// The table's keys and the delta's, merged in key order; the delta's entry wins, and its
/// deletions hide the table's entry.
struct Merged<'a, T: Iterator<Item = &'a Key>, D: Iterator<Item = &'a Key>> {
    table: &'a Table,
    delta: Option<&'a Delta>,
    table_keys: std::iter::Peekable<T>,
    delta_keys: std::iter::Peekable<D>,
}

impl<'a, T: Iterator<Item = &'a Key>, D: Iterator<Item = &'a Key>> Iterator for Merged<'a, T, D> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        loop {
            let from_table = match (self.table_keys.peek(), self.delta_keys.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(&table_key), Some(&delta_key)) => match table_key.cmp(delta_key) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => {
                        // Overridden by the delta.
                        self.table_keys.next();
                        false
                    }
                },
            };
            if from_table {
                let key = self.table_keys.next().expect("peeked");
                return Some(self.table.entry(key));
            }
            let key = self.delta_keys.next().expect("peeked");
            let delta = self.delta.expect("delta keys come from the delta");
            if let Some(value) = &delta.values[key] {
                return Some((key.as_slice(), value));
            }
        }
    }
}

/// A frozen copy of a [`KvMap`] as it was when taken, readable from any thread.
#[derive(Clone, Debug)]
pub(crate) struct KvMapView {
    table: Arc<Table>,
}

impl KvMapView {
    pub(crate) fn len(&self) -> usize {
        self.table.values.len()
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.order.iter().map(|key| self.table.entry(key))
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
        let first = map.table.values.get(&b"k"[..]).unwrap().as_ptr();
        assert_eq!(map.insert(b"k", &[2; 100]), Some(128));
        assert_eq!(map.table.values.get(&b"k"[..]).unwrap().as_ptr(), first, "128 bytes of capacity hold 100");
        assert_eq!(map.get(b"k"), Some(&[2u8; 100][..]));
        assert_eq!(map.insert(b"k", &[3; 4]), Some(100));
        assert!(
            map.table.values.get(&b"k"[..]).unwrap().capacity() < 128,
            "a small value does not keep a large allocation"
        );
        assert_eq!(map.get(b"k"), Some(&[3u8; 4][..]));
        assert_eq!(map.insert(b"k", &[4; 4096]), Some(4));
        assert_eq!(map.get(b"k"), Some(&[4u8; 4096][..]));
    }

    /// What the property test below does next.
    #[derive(Clone, Debug)]
    enum Step {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
        /// Take a view; it is checked against the model as it was, then dropped, `after` steps
        /// later (or at the end).
        View {
            after: usize,
        },
        Scan(Vec<u8>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let key = || proptest::collection::vec(0u8..4, 0..36);
        prop_oneof![
            4 => (key(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(k, v)| Step::Put(k, v)),
            2 => key().prop_map(Step::Delete),
            1 => (0usize..40).prop_map(|after| Step::View { after }),
            1 => key().prop_map(Step::Scan),
        ]
    }

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn entries_of(model: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) -> Entries {
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn entries_of_view(view: &KvMapView) -> Entries {
        assert_eq!(view.iter().count(), view.len());
        view.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn a_view_keeps_the_state_it_was_taken_at_and_the_delta_merges_back() {
        let mut map = KvMap::default();
        map.insert(b"a", b"1");
        map.insert(b"b", b"2");
        let view = map.view().expect("no earlier view");
        map.insert(b"a", b"changed");
        map.remove(b"b");
        map.insert(b"c", b"3");
        assert!(map.delta.is_some(), "writes go to the delta while the view lives");
        assert_eq!(map.view().map(|_| ()), None, "no second view while the first holds writes apart");
        assert_eq!(entries_of_view(&view), vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
        let now: Vec<_> = map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(now, vec![(b"a".to_vec(), b"changed".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
        assert_eq!(map.len(), 2);
        drop(view);
        map.insert(b"d", b"4");
        assert_eq!(map.delta.as_ref().map(|d| d.values.len()), Some(1), "each write merges a step of the delta");
        assert_eq!((map.get(b"a"), map.get(b"b"), map.get(b"c")), (Some(&b"changed"[..]), None, Some(&b"3"[..])));
        map.insert(b"e", b"5");
        assert!(map.delta.is_none(), "merged in full");
        assert_eq!(map.table.values.len(), 4);
        assert_eq!(map.len(), 4);
        assert!(map.view().is_some());
    }

    proptest! {
        /// With views taken and dropped at any point, the map still behaves as a
        /// `BTreeMap<Vec<u8>, Vec<u8>>`, and every view holds the state it was taken at.
        #[test]
        fn views_freeze_the_state_while_the_map_goes_on(steps in proptest::collection::vec(step(), 0..160)) {
            let mut map = KvMap::default();
            let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
            // (drop at step, view, the entries it must hold)
            let mut views: Vec<(usize, KvMapView, Entries)> = Vec::new();
            for (at, step) in steps.into_iter().enumerate() {
                views.retain(|(until, view, expected)| {
                    if *until > at {
                        return true;
                    }
                    assert_eq!(&entries_of_view(view), expected);
                    false
                });
                match step {
                    Step::Put(key, value) => {
                        prop_assert_eq!(map.insert(&key, &value), model.insert(key.clone(), value).map(|v| v.len()));
                        prop_assert_eq!(map.get(&key), model.get(&key).map(Vec::as_slice));
                    }
                    Step::Delete(key) => {
                        prop_assert_eq!(map.remove(&key), model.remove(&key).map(|v| v.len()));
                        prop_assert_eq!(map.get(&key), None);
                    }
                    Step::View { after } => {
                        let alive = !views.is_empty();
                        match map.view() {
                            Some(view) => views.push((at + after, view, entries_of(&model))),
                            None => prop_assert!(alive, "a view is refused only while another is alive"),
                        }
                    }
                    Step::Scan(start) => {
                        let scanned: Vec<_> = map.range(&start, None).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                        let expected: Vec<_> = model.range(start.clone()..).map(|(k, v)| (k.clone(), v.clone())).collect();
                        prop_assert_eq!(scanned, expected);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
            }
            for (_, view, expected) in &views {
                prop_assert_eq!(&entries_of_view(view), expected);
            }
            let all: Vec<_> = map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            prop_assert_eq!(all, entries_of(&model));
            let copy = map.clone();
            prop_assert!(copy == map);
            prop_assert!(copy.delta.is_none());
        }

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
