//! Property tests: histories linearizable by construction are accepted, a corrupted read is
//! caught on exactly its key, and on small random histories the checker agrees with a brute-force
//! enumeration of every order.

mod support;

use proptest::prelude::*;
use smr_lincheck::{CheckOptions, CheckOutcome, History, Op, Output, Verdict, check};
use support::{Shape, generate};

/// Up to 250 operations on as few as one key, from up to 8 clients, with up to 4 % unknown
/// outcomes: a busy simulator run. Far more unknown outcomes on one key can exhaust the default
/// budget when the history is not linearizable; that case is covered below by "never called
/// linearizable" with a small budget.
fn shape() -> impl Strategy<Value = Shape> {
    (1usize..250, 1u32..8, 1u32..9, 0u32..40).prop_map(|(operations, keys, clients, unknown_per_mille)| Shape {
        operations,
        keys,
        clients,
        unknown_per_mille,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn history_of_a_sequential_register_is_linearizable(seed: u64, shape in shape()) {
        let generated = generate(seed, shape, None);
        let result = check(&generated.history, &CheckOptions::default());
        if let Some(violation) = result.violations().next() {
            return Err(TestCaseError::fail(format!("false violation:\n{violation}")));
        }
        prop_assert_eq!(result.outcome(), CheckOutcome::Ok);
    }

    #[test]
    fn read_of_a_never_written_value_is_caught_on_its_key_only(
        seed: u64,
        shape in shape(),
        read in any::<usize>(),
    ) {
        let generated = generate(seed, shape, Some(read));
        let result = check(&generated.history, &CheckOptions::default());
        let Some(key) = generated.corrupted_key else {
            // No completed read to corrupt: nothing to catch.
            prop_assert!(result.is_ok());
            return Ok(());
        };
        let violating: Vec<u32> = result.violations().map(|violation| violation.key).collect();
        prop_assert_eq!(violating, vec![key]);
        prop_assert_eq!(result.unknown_keys().count(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Many unknown outcomes on few keys can exceed any budget; the answer must then be
    /// "unknown", never "linearizable".
    #[test]
    fn corrupted_read_is_never_called_linearizable_even_with_many_unknown_outcomes(
        seed: u64,
        operations in 1usize..300,
        keys in 1u32..4,
        clients in 1u32..9,
        unknown_per_mille in 0u32..400,
        read in any::<usize>(),
    ) {
        let shape = Shape { operations, keys, clients, unknown_per_mille };
        let generated = generate(seed, shape, Some(read));
        let options = CheckOptions { search_steps_max: 100_000, ..CheckOptions::default() };
        let result = check(&generated.history, &options);
        if let Some(key) = generated.corrupted_key {
            let report = result.keys().iter().find(|report| report.key == key).unwrap();
            prop_assert!(report.verdict != Verdict::Linearizable);
        }
    }
}

/// One operation of a small random history: any op, any answer, so most such histories are not
/// linearizable and both verdicts get exercised.
#[derive(Clone, Debug)]
struct Small {
    op: Op<u8>,
    invoke_time: u64,
    /// `None`: the outcome is unknown.
    completion: Option<(u64, Output<u8>)>,
}

fn value() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![Just(None), (0u8..3).prop_map(Some)]
}

/// `unknown_per_ten`: the chance, in tenths, that an operation's outcome is unknown.
fn small(unknown_per_ten: u64) -> impl Strategy<Value = Small> {
    let op = prop_oneof![
        (0u8..3).prop_map(Op::Put),
        Just(Op::Get),
        Just(Op::Delete),
        (value(), value()).prop_map(|(expected, new)| Op::Cas { expected, new }),
    ];
    (op, 0u64..20, 0u64..10, 0u64..10, value(), any::<bool>()).prop_map(
        move |(op, invoke_time, duration, dice, read, swapped)| {
            let output = match op {
                Op::Put(_) => Output::Put,
                Op::Get => Output::Get(read),
                Op::Delete => Output::Delete,
                Op::Cas { .. } => Output::Cas(swapped),
            };
            Small { op, invoke_time, completion: (dice >= unknown_per_ten).then_some((invoke_time + duration, output)) }
        },
    )
}

/// The register's value after `op` answers `output` from `state`, or `None` if it cannot.
/// Written independently of the checker's own transition function, from the model's definition.
fn apply(state: Option<u8>, op: &Op<u8>, output: Option<&Output<u8>>) -> Option<Option<u8>> {
    match (op, output) {
        (Op::Put(value), _) => Some(Some(*value)),
        (Op::Delete, _) => Some(None),
        (Op::Get, Some(Output::Get(read))) => (*read == state).then_some(state),
        (Op::Get, _) => Some(state),
        (Op::Cas { expected, new }, Some(Output::Cas(swapped))) => {
            (*swapped == (state == *expected)).then_some(if *swapped { *new } else { state })
        }
        (Op::Cas { expected, new }, _) => Some(if state == *expected { *new } else { state }),
    }
}

/// Tries every order: an operation may go next once every operation that completed before its
/// invocation has gone; an operation with unknown outcome may also never go.
fn brute_force(ops: &[Small], placed: &mut Vec<bool>, state: Option<u8>) -> bool {
    let all_known_placed = ops.iter().zip(placed.iter()).all(|(op, &done)| done || op.completion.is_none());
    if all_known_placed {
        return true;
    }
    for next in 0..ops.len() {
        if placed[next] {
            continue;
        }
        let ready = ops.iter().zip(placed.iter()).all(|(before, &done)| {
            done || !matches!(before.completion, Some((complete, _)) if complete < ops[next].invoke_time)
        });
        if !ready {
            continue;
        }
        let output = ops[next].completion.as_ref().map(|(_, output)| output);
        if let Some(new_state) = apply(state, &ops[next].op, output) {
            placed[next] = true;
            let found = brute_force(ops, placed, new_state);
            placed[next] = false;
            if found {
                return true;
            }
        }
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn checker_agrees_with_brute_force_on_small_histories(
        ops in prop::collection::vec(small(1), 0..8),
        initial in value(),
    ) {
        agrees_with_brute_force(&ops, initial)?;
    }

    /// Unknown outcomes are where the search takes shortcuts (dead, unread and interchangeable
    /// unknown writes); here half the operations have one.
    #[test]
    fn checker_agrees_with_brute_force_when_half_the_outcomes_are_unknown(
        ops in prop::collection::vec(small(5), 0..8),
        initial in value(),
    ) {
        agrees_with_brute_force(&ops, initial)?;
    }
}

fn agrees_with_brute_force(ops: &[Small], initial: Option<u8>) -> Result<(), TestCaseError> {
    {
        let mut history: History<u8, u8> = History::new();
        history.set_initial_value(0, initial);
        for op in ops {
            let id = history.invoke(0, 0, op.op.clone(), op.invoke_time);
            if let Some((complete_time, output)) = &op.completion {
                history.complete(id, output.clone(), *complete_time).unwrap();
            }
        }
        let expected = brute_force(ops, &mut vec![false; ops.len()], initial);
        let result = check(&history, &CheckOptions::default());
        prop_assert_eq!(
            result.outcome(),
            if expected { CheckOutcome::Ok } else { CheckOutcome::Violation },
            "{:?}",
            ops
        );
    }
    Ok(())
}
