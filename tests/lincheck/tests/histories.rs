//! Hand-written histories, each named after the anomaly it catches or the behaviour it allows.

mod support;

use smr_lincheck::{CheckOptions, CheckOutcome, CheckResult, History, HistoryError, Op, OpId, Output, Verdict, check};
use support::Builder;

fn verdict(builder: &Builder) -> CheckResult<&'static str, u64> {
    check(&builder.history, &CheckOptions::default())
}

fn assert_linearizable(builder: &Builder) {
    let result = verdict(builder);
    if let Some(violation) = result.violations().next() {
        panic!("expected linearizable, got:\n{violation}");
    }
    assert_eq!(result.outcome(), CheckOutcome::Ok);
}

/// Asserts a violation on `key` only, and returns the operation reported as blocked.
fn assert_violation(builder: &Builder, key: &str) -> Option<OpId> {
    let result = verdict(builder);
    assert_eq!(result.outcome(), CheckOutcome::Violation, "{result:?}");
    let violations: Vec<_> = result.violations().collect();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].key, key);
    violations[0].blocked
}

// Reads and writes.

#[test]
fn stale_read_after_completed_write_is_a_violation() {
    let mut h = Builder::default();
    let first = h.put("x", 1, 0, 10);
    let second = h.put("x", 2, 20, 30);
    let stale = h.get("x", Some(1), 40, 50);
    assert_eq!(assert_violation(&h, "x"), Some(stale));

    let result = verdict(&h);
    let violation = result.violations().next().unwrap();
    assert_eq!(violation.longest_linearizable_prefix, vec![first, second]);
    assert_eq!(violation.value_after_prefix, Some(2));
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    let read = h.get("x", Some(99), 5, 15);
    assert_eq!(assert_violation(&h, "x"), Some(read));
}

#[test]
fn acknowledged_write_lost_is_seen_by_a_later_read() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.get("x", None, 20, 30);
    assert_violation(&h, "x");
}

#[test]
fn read_concurrent_with_a_write_may_see_the_old_or_the_new_value() {
    for seen in [Some(1), Some(2)] {
        let mut h = Builder::default();
        h.put("x", 1, 0, 10);
        h.put("x", 2, 20, 40);
        h.get("x", seen, 25, 30);
        assert_linearizable(&h);
    }
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    for last in [1, 2] {
        let mut h = Builder::default();
        h.put("x", 1, 0, 20);
        h.put("x", 2, 5, 25);
        h.get("x", Some(last), 30, 40);
        h.get("x", Some(last), 50, 60);
        assert_linearizable(&h);
    }
}

#[test]
fn reads_after_concurrent_writes_must_agree_on_their_order() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 20);
    h.put("x", 2, 5, 25);
    h.get("x", Some(1), 30, 40);
    h.get("x", Some(2), 50, 60);
    assert_violation(&h, "x");
}

#[test]
fn new_value_then_old_value_during_one_write_is_a_violation() {
    // Both reads overlap the write, but once a read has returned the new value no later read
    // may return the old one.
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.put("x", 2, 20, 100);
    h.get("x", Some(2), 30, 40);
    h.get("x", Some(1), 50, 60);
    assert_violation(&h, "x");
}

#[test]
fn operations_touching_at_one_instant_count_as_concurrent() {
    // With a clock of finite resolution, "completed at 10" and "invoked at 10" cannot be ordered.
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.get("x", None, 10, 20);
    assert_linearizable(&h);
}

#[test]
fn read_of_a_key_never_written_sees_absent() {
    let mut h = Builder::default();
    h.get("x", None, 0, 10);
    assert_linearizable(&h);

    h.get("x", Some(1), 20, 30);
    assert_violation(&h, "x");
}

#[test]
fn declared_initial_value_is_what_the_first_read_sees() {
    let mut h = Builder::default();
    h.history.set_initial_value("x", Some(7));
    h.get("x", Some(7), 0, 10);
    assert_linearizable(&h);

    h.get("x", None, 20, 30);
    assert_violation(&h, "x");
}

// Deletes.

#[test]
fn read_after_completed_delete_sees_absent() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.delete("x", 20, 30);
    h.get("x", None, 40, 50);
    assert_linearizable(&h);
}

#[test]
fn value_resurrected_after_delete_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.delete("x", 20, 30);
    let read = h.get("x", Some(1), 40, 50);
    assert_eq!(assert_violation(&h, "x"), Some(read));
}

#[test]
fn write_after_delete_is_visible() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.delete("x", 20, 30);
    h.put("x", 1, 40, 50);
    h.get("x", Some(1), 60, 70);
    assert_linearizable(&h);
}

// Compare-and-swap.

#[test]
fn cas_succeeds_when_the_value_matches() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(1), Some(2), true, 20, 30);
    h.get("x", Some(2), 40, 50);
    assert_linearizable(&h);
}

#[test]
fn cas_reporting_success_on_a_mismatched_value_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(3), Some(2), true, 20, 30);
    assert_violation(&h, "x");
}

#[test]
fn cas_reporting_failure_on_a_matching_value_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(1), Some(2), false, 20, 30);
    assert_violation(&h, "x");
}

#[test]
fn failed_cas_leaves_the_value_unchanged() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(3), Some(2), false, 20, 30);
    h.get("x", Some(1), 40, 50);
    assert_linearizable(&h);

    h.get("x", Some(2), 60, 70);
    assert_violation(&h, "x");
}

#[test]
fn cas_from_absent_creates_and_cas_to_none_deletes() {
    let mut h = Builder::default();
    h.cas("x", None, Some(1), true, 0, 10);
    h.get("x", Some(1), 20, 30);
    h.cas("x", Some(1), None, true, 40, 50);
    h.get("x", None, 60, 70);
    assert_linearizable(&h);

    h.get("x", Some(1), 80, 90);
    assert_violation(&h, "x");
}

#[test]
fn two_concurrent_cas_on_one_value_cannot_both_succeed() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(1), Some(2), true, 20, 40);
    h.cas("x", Some(1), Some(3), true, 25, 35);
    assert_violation(&h, "x");
}

#[test]
fn concurrent_cas_one_wins_one_loses() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.cas("x", Some(1), Some(2), true, 20, 40);
    h.cas("x", Some(1), Some(3), false, 25, 35);
    h.get("x", Some(2), 50, 60);
    assert_linearizable(&h);
}

// Unknown outcomes.

#[test]
fn unknown_write_that_later_appears_is_linearizable() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    h.get("x", Some(1), 30, 40);
    // Long after the client gave up, the write takes effect.
    h.get("x", Some(2), 1000, 1010);
    assert_linearizable(&h);
}

#[test]
fn unknown_write_that_never_appears_is_linearizable() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    h.get("x", Some(1), 30, 40);
    h.get("x", Some(1), 1000, 1010);
    assert_linearizable(&h);
}

#[test]
fn unknown_write_read_then_unread_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    h.get("x", Some(2), 100, 110);
    let unread = h.get("x", Some(1), 120, 130);
    assert_eq!(assert_violation(&h, "x"), Some(unread));
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation() {
    let mut h = Builder::default();
    h.get("x", Some(2), 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    assert_violation(&h, "x");
}

#[test]
fn operation_never_completed_counts_as_unknown() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.history.invoke(5, "x", Op::Put(2), 20);
    h.get("x", Some(2), 100, 110);
    assert_linearizable(&h);
}

#[test]
fn unknown_get_constrains_nothing() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Get, 20);
    h.get("x", Some(1), 30, 40);
    assert_linearizable(&h);
}

#[test]
fn unknown_cas_may_or_may_not_have_swapped() {
    for seen in [Some(1), Some(2)] {
        let mut h = Builder::default();
        h.put("x", 1, 0, 10);
        h.lost(5, "x", Op::Cas { expected: Some(1), new: Some(2) }, 20);
        h.get("x", seen, 100, 110);
        assert_linearizable(&h);
    }
}

#[test]
fn unknown_cas_cannot_swap_from_a_value_the_register_never_held() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Cas { expected: Some(3), new: Some(2) }, 20);
    h.get("x", Some(2), 100, 110);
    assert_violation(&h, "x");
}

#[test]
fn failed_cas_explained_only_by_an_unread_unknown_write_is_linearizable() {
    // The unknown put of 2 is never read, but the failed cas proves the register held something
    // other than 1: the checker must not drop the unknown write as unobservable.
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    h.cas("x", Some(1), Some(3), false, 50, 60);
    assert_linearizable(&h);
}

#[test]
fn many_unread_unknown_writes_are_checked_quickly() {
    // Sixty writes pending forever would be 2^60 subsets without dropping the unobservable ones.
    let mut h = Builder::default();
    for i in 0..60 {
        h.lost(10 + i, "x", Op::Put(1000 + i), i * 10);
        h.put("x", i, i * 10, i * 10 + 5);
        h.get("x", Some(i), i * 10 + 6, i * 10 + 8);
    }
    let result = verdict(&h);
    assert_eq!(result.outcome(), CheckOutcome::Ok);
    assert!(result.search_steps() < 10_000, "{}", result.search_steps());
}

// Many keys.

#[test]
fn only_the_violating_key_among_many_is_reported() {
    const KEYS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut h = Builder::default();
    for (i, key) in KEYS.into_iter().enumerate() {
        let base = i as u64 * 100;
        h.put(key, base, base, base + 10);
        h.get(key, Some(base), base + 20, base + 30);
    }
    h.get("f", Some(0), 2000, 2010);
    assert_violation(&h, "f");

    let result = verdict(&h);
    assert_eq!(result.keys().len(), KEYS.len());
    let linearizable = result.keys().iter().filter(|report| report.verdict == Verdict::Linearizable).count();
    assert_eq!(linearizable, KEYS.len() - 1);
}

#[test]
fn every_violating_key_is_reported() {
    let mut h = Builder::default();
    for key in ["a", "b", "c"] {
        h.put(key, 1, 0, 10);
    }
    h.get("a", Some(2), 20, 30);
    h.get("b", Some(1), 20, 30);
    h.get("c", None, 20, 30);
    let result = verdict(&h);
    let keys: Vec<_> = result.violations().map(|violation| violation.key).collect();
    assert_eq!(keys, vec!["a", "c"]);
}

// Budget and reporting.

#[test]
fn exhausted_budget_is_unknown_never_ok() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.get("x", Some(1), 20, 30);
    let options = CheckOptions { search_steps_max: 1, ..CheckOptions::default() };
    let result = check(&h.history, &options);
    assert_eq!(result.outcome(), CheckOutcome::Unknown);
    assert_eq!(result.unknown_keys().collect::<Vec<_>>(), vec![&"x"]);
}

#[test]
fn violation_report_names_the_blocked_operation_and_the_prefix() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.get("x", Some(9), 20, 30);
    let result = verdict(&h);
    let text = result.violations().next().unwrap().to_string();
    assert!(text.contains("key \"x\" is not linearizable"), "{text}");
    assert!(text.contains("#0 client 0 \"x\" put(1) = ok [0, 10]"), "{text}");
    assert!(text.contains("cannot take effect:\n  #1 client 1 \"x\" get() = Some(9) [20, 30]"), "{text}");
}

#[test]
fn empty_history_is_linearizable() {
    let history: History<u8, u8> = History::new();
    assert!(check(&history, &CheckOptions::default()).is_ok());
}

// Malformed input is refused with a typed error, leaving the history unchanged.

#[test]
fn completion_before_invocation_is_refused() {
    let mut history: History<&str, u64> = History::new();
    let id = history.invoke(0, "x", Op::Get, 100);
    assert_eq!(
        history.complete(id, Output::Get(None), 99),
        Err(HistoryError::CompletedBeforeInvoked { op: id, invoke_time: 100, complete_time: 99 })
    );
    // Still pending, so a well-formed completion is accepted.
    assert_eq!(history.complete(id, Output::Get(None), 100), Ok(()));
}

#[test]
fn output_of_the_wrong_kind_is_refused() {
    let mut history: History<&str, u64> = History::new();
    let id = history.invoke(0, "x", Op::Get, 0);
    assert_eq!(history.complete(id, Output::Cas(true), 1), Err(HistoryError::OutputMismatch(id)));
}

#[test]
fn second_outcome_for_one_operation_is_refused() {
    let mut history: History<&str, u64> = History::new();
    let id = history.invoke(0, "x", Op::Delete, 0);
    assert_eq!(history.complete(id, Output::Delete, 1), Ok(()));
    assert_eq!(history.complete(id, Output::Delete, 2), Err(HistoryError::AlreadyCompleted(id)));
    assert_eq!(history.unknown(id), Err(HistoryError::AlreadyCompleted(id)));
}

#[test]
fn operation_id_from_another_history_is_refused() {
    let mut other: History<&str, u64> = History::new();
    other.invoke(0, "x", Op::Get, 0);
    let foreign = other.invoke(0, "x", Op::Get, 0);
    let mut history: History<&str, u64> = History::new();
    assert_eq!(history.unknown(foreign), Err(HistoryError::UnknownOperation(foreign)));
}

#[test]
fn one_unknown_write_cannot_make_two_failed_cas_fail() {
    // Each failed cas needs the register to hold something other than 1; between them the value
    // 1 is written again, so one unknown write taking effect once explains only one of them.
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Put(2), 20);
    h.cas("x", Some(1), Some(3), false, 50, 60);
    h.put("x", 1, 70, 80);
    h.cas("x", Some(1), Some(3), false, 90, 100);
    assert_violation(&h, "x");

    h.lost(6, "x", Op::Put(4), 30);
    assert_linearizable(&h);
}

#[test]
fn unknown_delete_read_as_absent_then_undone_is_a_violation() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Delete, 20);
    h.lost(6, "x", Op::Delete, 25);
    h.get("x", None, 100, 110);
    h.get("x", Some(1), 120, 130);
    assert_violation(&h, "x");
}

#[test]
fn two_unknown_deletes_each_take_effect_at_most_once() {
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    h.lost(5, "x", Op::Delete, 20);
    h.lost(6, "x", Op::Delete, 25);
    h.get("x", None, 100, 110);
    h.put("x", 2, 120, 130);
    h.get("x", None, 140, 150);
    assert_linearizable(&h);

    h.put("x", 3, 160, 170);
    h.get("x", None, 180, 190);
    assert_violation(&h, "x");
}

#[test]
fn each_retry_of_an_unknown_cas_takes_effect_at_most_once() {
    // A client retried cas(1 -> 2) after a timeout; both attempts may have taken effect, at any
    // later time, but no more than twice in all.
    let mut h = Builder::default();
    h.put("x", 1, 0, 10);
    let cas = Op::Cas { expected: Some(1), new: Some(2) };
    h.lost(5, "x", cas.clone(), 20);
    h.lost(5, "x", cas, 25);
    h.get("x", Some(2), 100, 110);
    h.put("x", 1, 120, 130);
    h.get("x", Some(2), 140, 150);
    assert_linearizable(&h);

    h.put("x", 1, 160, 170);
    h.get("x", Some(2), 180, 190);
    assert_violation(&h, "x");
}

#[test]
fn report_of_a_long_history_shows_the_last_operations_before_the_violation() {
    let mut h = Builder::default();
    for i in 0..50 {
        h.put("x", i, i * 10, i * 10 + 5);
    }
    h.get("x", Some(3), 1000, 1010);
    let result = verdict(&h);
    let violation = result.violations().next().unwrap();
    assert_eq!(violation.operations.len(), 51);
    assert_eq!(violation.longest_linearizable_prefix.len(), 50);
    let text = violation.to_string();
    assert!(text.contains("  ... 40 earlier operations\n"), "{text}");
    assert!(text.contains("put(49)"), "{text}");
    assert!(!text.contains("put(39)"), "{text}");
    assert!(!text.contains("all operations on the key"), "{text}");
}
