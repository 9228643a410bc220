//! Shared by the tests and the benchmark: a generator of histories that are linearizable by
//! construction, because they are produced by running a real sequential register.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;

use smr_lincheck::{History, Op, OpId, Output};

/// A value no generated put ever writes: reading it can never be explained.
pub(crate) const NEVER_WRITTEN: u64 = u64::MAX;

/// The shape of a generated history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) operations: usize,
    pub(crate) keys: u32,
    /// Clients, each with one operation outstanding at a time: the concurrency.
    pub(crate) clients: u32,
    /// Chance, in thousandths, that a client never learns an operation's outcome.
    pub(crate) unknown_per_mille: u32,
}

/// A generated history and what was done to it.
#[derive(Debug)]
pub(crate) struct Generated {
    pub(crate) history: History<u32, u64>,
    /// The key of the read whose answer was replaced by [`NEVER_WRITTEN`], if one was.
    pub(crate) corrupted_key: Option<u32>,
}

/// A small deterministic PRNG (SplitMix64): tests and benchmark replay from a seed.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// Uniform in `0..bound` (bound > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub(crate) fn chance_per_mille(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

struct Planned {
    client: u64,
    key: u32,
    op: Op<u64>,
    invoke_time: u64,
    complete_time: u64,
    /// When it takes effect on the register, if it does.
    effect_time: Option<u64>,
    known: bool,
    output: Option<Output<u64>>,
}

/// Generates a history by running a sequential map of registers: each client issues operations
/// one after another, each operation takes effect at a random instant inside its interval (an
/// operation with unknown outcome: at a random instant, or never), and the answers are what the
/// register returned at that instant. If `corrupt_read` is `Some(n)`, the answer of the
/// `n`-th completed get (modulo their number) is replaced by [`NEVER_WRITTEN`].
pub(crate) fn generate(seed: u64, shape: Shape, corrupt_read: Option<usize>) -> Generated {
    let mut rng = Rng::new(seed);
    let clients = shape.clients.max(1);
    let per_client = shape.operations.div_ceil(clients as usize);
    let mut planned: Vec<Planned> = Vec::with_capacity(shape.operations);
    let mut written: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut next_value = 1u64;

    for client in 0..u64::from(clients) {
        let mut time = rng.below(10);
        for _ in 0..per_client {
            if planned.len() == shape.operations {
                break;
            }
            let key = rng.below(u64::from(shape.keys.max(1))) as u32;
            let values = written.entry(key).or_default();
            let op = match rng.below(100) {
                0..40 => {
                    next_value += 1;
                    values.push(next_value);
                    Op::Put(next_value)
                }
                40..75 => Op::Get,
                75..85 => Op::Delete,
                _ => {
                    // Expect a value this key has had (or absent) so that some swaps succeed.
                    let expected = match values.len() {
                        0 => None,
                        len => (rng.below(4) != 0).then(|| values[len - 1 - rng.below(len.min(3) as u64) as usize]),
                    };
                    let new = if rng.below(10) == 0 {
                        None
                    } else {
                        next_value += 1;
                        values.push(next_value);
                        Some(next_value)
                    };
                    Op::Cas { expected, new }
                }
            };
            let invoke_time = time + rng.below(5);
            let effect_offset = rng.below(20);
            let complete_time = invoke_time + effect_offset + rng.below(20);
            let known = !rng.chance_per_mille(shape.unknown_per_mille);
            let effect_time = if known || rng.below(2) == 0 {
                // An unknown operation may take effect long after the client gave up on it.
                let late = if known { 0 } else { rng.below(100) };
                Some(invoke_time + effect_offset + late)
            } else {
                None
            };
            planned.push(Planned { client, key, op, invoke_time, complete_time, effect_time, known, output: None });
            time = complete_time + rng.below(5);
        }
    }

    // Run the sequential register in effect order: this order is the linearization witness.
    let mut order: Vec<usize> = (0..planned.len()).filter(|&index| planned[index].effect_time.is_some()).collect();
    order.sort_by_key(|&index| (planned[index].effect_time, index));
    let mut registers: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    for index in order {
        let operation = &mut planned[index];
        let register = registers.entry(operation.key).or_default();
        operation.output = Some(match &operation.op {
            Op::Put(value) => {
                *register = Some(*value);
                Output::Put
            }
            Op::Get => Output::Get(*register),
            Op::Delete => {
                *register = None;
                Output::Delete
            }
            Op::Cas { expected, new } => {
                let swapped = register == expected;
                if swapped {
                    *register = *new;
                }
                Output::Cas(swapped)
            }
        });
    }

    let mut corrupted_key = None;
    if let Some(n) = corrupt_read {
        let reads: Vec<usize> =
            (0..planned.len()).filter(|&index| planned[index].known && planned[index].op == Op::Get).collect();
        if !reads.is_empty() {
            let read = &mut planned[reads[n % reads.len()]];
            read.output = Some(Output::Get(Some(NEVER_WRITTEN)));
            corrupted_key = Some(read.key);
        }
    }

    let mut history = History::new();
    for operation in planned {
        let id = history.invoke(operation.client, operation.key, operation.op, operation.invoke_time);
        match (operation.known, operation.output) {
            (true, Some(output)) => {
                history.complete(id, output, operation.complete_time).expect("generated completions are well formed")
            }
            _ => history.unknown(id).expect("each operation ends once"),
        }
    }
    Generated { history, corrupted_key }
}

/// Terse history building for hand-written tests: times are small integers.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    pub(crate) history: History<&'static str, u64>,
}

impl Builder {
    /// An operation that completed with `output` over `[invoke, complete]`.
    pub(crate) fn done(
        &mut self,
        client: u64,
        key: &'static str,
        op: Op<u64>,
        output: Output<u64>,
        invoke: u64,
        complete: u64,
    ) -> OpId {
        let id = self.history.invoke(client, key, op, invoke);
        self.history.complete(id, output, complete).expect("hand-written completions are well formed");
        id
    }

    /// An operation invoked at `invoke` whose outcome the client never learnt.
    pub(crate) fn lost(&mut self, client: u64, key: &'static str, op: Op<u64>, invoke: u64) -> OpId {
        let id = self.history.invoke(client, key, op, invoke);
        self.history.unknown(id).expect("a fresh operation can end");
        id
    }

    pub(crate) fn put(&mut self, key: &'static str, value: u64, invoke: u64, complete: u64) -> OpId {
        self.done(0, key, Op::Put(value), Output::Put, invoke, complete)
    }

    pub(crate) fn get(&mut self, key: &'static str, value: Option<u64>, invoke: u64, complete: u64) -> OpId {
        self.done(1, key, Op::Get, Output::Get(value), invoke, complete)
    }

    pub(crate) fn delete(&mut self, key: &'static str, invoke: u64, complete: u64) -> OpId {
        self.done(2, key, Op::Delete, Output::Delete, invoke, complete)
    }

    pub(crate) fn cas(
        &mut self,
        key: &'static str,
        expected: Option<u64>,
        new: Option<u64>,
        swapped: bool,
        invoke: u64,
        complete: u64,
    ) -> OpId {
        self.done(3, key, Op::Cas { expected, new }, Output::Cas(swapped), invoke, complete)
    }
}
