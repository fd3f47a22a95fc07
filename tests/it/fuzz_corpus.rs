//! The fuzz corpora, replayed on stable: every input the fuzzers kept
//! (`fuzz/corpus/<target>/`, crashes they found included) goes through the
//! same checks as under `cargo fuzz run <target>`, so CI keeps what fuzzing
//! proved.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[path = "../../fuzz/checks/allowlist.rs"]
mod allowlist;
#[path = "../../fuzz/checks/event_line.rs"]
mod event_line;
#[path = "../../fuzz/checks/merge.rs"]
mod merge;
#[path = "../../fuzz/checks/region.rs"]
mod region;

/// Runs `check` on every file of the target's corpus; names every input
/// that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("list the corpus").path())
        .collect();
    inputs.sort();
    // A corpus that went missing must not pass as an empty one. (Each holds
    // at least its hand-written seeds; the fuzzers' minimised corpora are
    // added to the same folders.)
    assert!(
        inputs.len() >= 10,
        "{} holds only {} inputs",
        dir.display(),
        inputs.len()
    );
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read a corpus input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail: {failed:#?}"
    );
}

#[test]
fn the_event_line_corpus_parses_to_events_that_meet_every_rule_and_no_line_is_lost() {
    replay("event_line", event_line::check);
}

#[test]
fn the_allowlist_corpus_grants_nothing_outside_an_entry_and_agrees_with_the_reference() {
    replay("allowlist", allowlist::check);
}

#[test]
fn the_merge_corpus_merges_to_the_union_with_each_event_once_and_each_sides_order() {
    replay("merge", merge::check);
}

#[test]
fn the_region_corpus_keeps_the_peoples_text_and_finds_exactly_the_interactions_again() {
    replay("region", region::check);
}
