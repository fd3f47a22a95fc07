//! Isolating the inputs a plugin cannot handle, so that one event never
//! makes a whole snapshot fail.
//!
//! A batch call that fails in a way one input could cause (a trap, the
//! deadline, out of memory, invalid output, the plugin's own error) is split
//! in halves until the inputs it fails on stand alone; those are isolated
//! with the reason and the rest is used. Two guards keep a plugin that is
//! simply broken from being mistaken for many bad inputs:
//!
//! - before bisecting (and when every output of a call is invalid), a fixed,
//!   harmless probe input is tried: if the plugin fails on that too, the
//!   failure is the plugin's and the whole call fails as before (the caller
//!   keeps its last good output), after two calls instead of dozens;
//! - a bisection makes at most [`FAILED_CALL_BUDGET`] failing calls (each may
//!   cost a full deadline); past that the whole call fails.
//!
//! Load, link and configure failures never depend on the input: they fail
//! the call at once.

use super::host::{
    Entry, Interaction, RenderContext, MAX_HEADING_BYTES, MAX_OUTPUT_BYTES, PART_BYTES,
};
use super::{PluginError, PluginHost, PluginSpec};
use crate::model::event::Event;

/// Entries of one interaction beyond which a renderer that can render in
/// parts (WIT 0.2.0) is called part by part.
pub const ENTRIES_PER_CALL: usize = 8192;

/// Failing calls one isolation may make before it blames the plugin.
pub const FAILED_CALL_BUDGET: usize = 32;

/// What the heading mapper made of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heading {
    Shown(String),
    Hidden,
    /// The mapper could not handle this event; the reason names the plugin.
    Isolated(String),
}

/// An input left out of a renderer's output, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolatedEntry {
    /// Index of the interaction in the batch.
    pub interaction: usize,
    /// Index of the entry in that interaction; `None`: the whole
    /// interaction could not be rendered even without its failing entries.
    pub entry: Option<usize>,
    pub reason: String,
}

/// A renderer's blocks, one per interaction (empty for an interaction
/// left out whole), and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub blocks: Vec<String>,
    pub isolated: Vec<IsolatedEntry>,
}

impl PluginError {
    /// True if a particular input could have caused this failure.
    fn may_be_caused_by_input(&self) -> bool {
        matches!(
            self,
            PluginError::DeadlineExceeded { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::Trap { .. }
                | PluginError::Failed { .. }
                | PluginError::InvalidOutput { .. }
        )
    }
}

type ItemResults<R> = Vec<Result<R, PluginError>>;
/// A batch call: one result per item, or a failure of the whole call.
type BatchCall<'a, T, R> = dyn FnMut(&[T]) -> Result<ItemResults<R>, PluginError> + 'a;

/// Calls `call` on `items`, bisecting on failures an input could cause.
/// `call` returns one result per item (an item's own output may be invalid)
/// or fails as a whole.
fn bisect<T, R>(
    items: &[T],
    budget: &mut usize,
    call: &mut BatchCall<'_, T, R>,
) -> Result<ItemResults<R>, PluginError> {
    match call(items) {
        Ok(results) => Ok(results),
        Err(error) if !error.may_be_caused_by_input() || *budget == 0 => Err(error),
        Err(error) => {
            *budget -= 1;
            if items.len() <= 1 {
                return Ok(items.iter().map(|_| Err(error.clone())).collect());
            }
            let (left, right) = items.split_at(items.len() / 2);
            let mut results = bisect(left, budget, call)?;
            results.extend(bisect(right, budget, call)?);
            Ok(results)
        }
    }
}

/// The isolation: when a call fails in a way an input could cause, the
/// probe decides whether the plugin works at all (if not, the call fails
/// with the first error), then `bisect` finds the inputs it fails on. A
/// call whose every output is invalid is judged by the probe the same way.
fn isolate<T: Clone, R>(
    items: &[T],
    probe: T,
    budget: &mut usize,
    call: &mut BatchCall<'_, T, R>,
) -> Result<ItemResults<R>, PluginError> {
    let works_on_probe = |call: &mut BatchCall<'_, T, R>| matches!(call(std::slice::from_ref(&probe)), Ok(probed) if probed.iter().all(Result::is_ok));
    let results = match call(items) {
        Ok(results) => results,
        Err(error) if !error.may_be_caused_by_input() || *budget == 0 => return Err(error),
        Err(error) => {
            if !works_on_probe(call) {
                return Err(error);
            }
            *budget -= 1;
            if items.len() <= 1 {
                return Ok(items.iter().map(|_| Err(error.clone())).collect());
            }
            let (left, right) = items.split_at(items.len() / 2);
            let mut results = bisect(left, budget, call)?;
            results.extend(bisect(right, budget, call)?);
            results
        }
    };
    if let Some(first_failure) = results.iter().find_map(|r| r.as_ref().err()) {
        if results.iter().all(Result::is_err) && !works_on_probe(call) {
            return Err(first_failure.clone());
        }
    }
    Ok(results)
}

/// A harmless event for probing whether a plugin works at all.
fn probe_event() -> Event {
    Event {
        interaction: 1,
        actor: "huddle".into(),
        kind: "note".into(),
        content: "probe".into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        id: None,
        term: None,
        extra: Default::default(),
    }
}

/// Why a heading cannot be used, if it cannot.
pub(crate) fn heading_problem(heading: &str) -> Option<String> {
    if heading.len() > MAX_HEADING_BYTES {
        return Some(format!(
            "a heading of {} bytes is over the limit of {MAX_HEADING_BYTES}",
            heading.len()
        ));
    }
    if let Some(c) = heading
        .chars()
        .find(|c| crate::model::event::is_invisible_control(*c))
    {
        return Some(format!("the heading contains the control character {c:?}"));
    }
    None
}

impl PluginHost {
    /// One verdict per event: its heading, hidden, or isolated with the
    /// reason (see the module docs). `Err` when the mapper itself fails.
    pub fn headings_isolating(
        &self,
        spec: &PluginSpec,
        events: &[Event],
    ) -> Result<Vec<Heading>, PluginError> {
        let plugin = spec.name();
        let mut call = |batch: &[Event]| -> Result<ItemResults<Option<String>>, PluginError> {
            let headings = self.headings_unchecked(spec, batch)?;
            Ok(headings
                .into_iter()
                .map(
                    |heading| match heading.as_deref().and_then(heading_problem) {
                        Some(message) => Err(PluginError::InvalidOutput {
                            plugin: plugin.clone(),
                            message,
                        }),
                        None => Ok(heading),
                    },
                )
                .collect())
        };
        let mut budget = FAILED_CALL_BUDGET;
        let results = isolate(events, probe_event(), &mut budget, &mut call)?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                Ok(Some(heading)) => Heading::Shown(heading),
                Ok(None) => Heading::Hidden,
                Err(error) => Heading::Isolated(error.to_string()),
            })
            .collect())
    }

    /// One block per interaction; an interaction the renderer fails on is
    /// rendered without the entries it fails on, or left out whole (see the
    /// module docs). `check` judges each block (e.g. no marker lines).
    ///
    /// An interaction over the limits of one call (more than
    /// [`ENTRIES_PER_CALL`] entries or [`PART_BYTES`] of content) is rendered
    /// in parts by a renderer built against WIT 0.2.0 or later, and left
    /// out whole if that fails; a 0.1.0 renderer gets it like any other.
    pub fn render_isolating(
        &self,
        spec: &PluginSpec,
        context: &RenderContext,
        interactions: &[Interaction],
        check: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Rendered, PluginError> {
        let oversized = |interaction: &Interaction| {
            interaction.entries.len() > ENTRIES_PER_CALL
                || interaction
                    .entries
                    .iter()
                    .map(super::host::part_weight)
                    .sum::<usize>()
                    > PART_BYTES
        };
        if !interactions.iter().any(oversized) {
            return self.render_batch_isolating(spec, context, interactions, check);
        }
        // The oversized ones one by one, in parts; the rest in one batch.
        let mut in_parts: Vec<Option<Result<String, PluginError>>> = Vec::new();
        for interaction in interactions {
            in_parts.push(if oversized(interaction) {
                self.render_in_parts(spec, context, interaction, ENTRIES_PER_CALL)
                    .transpose()
                    .map(|rendered| {
                        rendered.and_then(|block| match check(&block) {
                            Some(problem) => Err(PluginError::InvalidOutput {
                                plugin: spec.name(),
                                message: format!(
                                    "the block for interaction {}: {problem}",
                                    interaction.number
                                ),
                            }),
                            None => Ok(block),
                        })
                    })
            } else {
                None
            });
        }
        let batch: Vec<Interaction> = interactions
            .iter()
            .zip(&in_parts)
            .filter(|(_, parts)| parts.is_none())
            .map(|(interaction, _)| interaction.clone())
            .collect();
        let mut rest = self.render_batch_isolating(spec, context, &batch, check)?;
        let mut rest_isolated = rest.isolated.into_iter().peekable();
        let mut rest_blocks = rest.blocks.drain(..);
        let mut rendered = Rendered::default();
        let mut batch_index = 0;
        for (index, parts) in in_parts.into_iter().enumerate() {
            match parts {
                Some(Ok(block)) => rendered.blocks.push(block),
                Some(Err(error)) => {
                    if !error.may_be_caused_by_input() {
                        return Err(error);
                    }
                    rendered.blocks.push(String::new());
                    rendered.isolated.push(IsolatedEntry {
                        interaction: index,
                        entry: None,
                        reason: error.to_string(),
                    });
                }
                None => {
                    rendered.blocks.push(rest_blocks.next().unwrap_or_default());
                    while let Some(isolated) =
                        rest_isolated.next_if(|isolated| isolated.interaction == batch_index)
                    {
                        rendered.isolated.push(IsolatedEntry {
                            interaction: index,
                            ..isolated
                        });
                    }
                    batch_index += 1;
                }
            }
        }
        Ok(rendered)
    }

    fn render_batch_isolating(
        &self,
        spec: &PluginSpec,
        context: &RenderContext,
        interactions: &[Interaction],
        check: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Rendered, PluginError> {
        let plugin = spec.name();
        let invalid = |message: String| PluginError::InvalidOutput {
            plugin: plugin.clone(),
            message,
        };
        let probe = Interaction {
            number: 1,
            entries: vec![Entry {
                heading: "huddle".into(),
                event: probe_event(),
            }],
        };
        let mut call = |batch: &[Interaction]| -> Result<ItemResults<String>, PluginError> {
            let blocks = self.render_in(spec, context, batch)?;
            Ok(blocks
                .into_iter()
                .zip(batch)
                .map(|(block, interaction)| match check(&block) {
                    Some(problem) => Err(invalid(format!(
                        "the block for interaction {}: {problem}",
                        interaction.number
                    ))),
                    None => Ok(block),
                })
                .collect())
        };
        let mut budget = FAILED_CALL_BUDGET;
        let results = isolate(interactions, probe, &mut budget, &mut call)?;
        let mut rendered = Rendered::default();
        for (index, (result, interaction)) in results.into_iter().zip(interactions).enumerate() {
            match result {
                Ok(block) => rendered.blocks.push(block),
                Err(_) => {
                    let (block, isolated) =
                        render_without_failing_entries(&mut call, &mut budget, interaction, index);
                    rendered.blocks.push(block);
                    rendered.isolated.extend(isolated);
                }
            }
        }
        let total: usize = rendered.blocks.iter().map(String::len).sum();
        if total > MAX_OUTPUT_BYTES {
            return Err(invalid(format!(
                "returned {total} bytes, over the limit of {MAX_OUTPUT_BYTES} bytes per call"
            )));
        }
        Ok(rendered)
    }
}

/// Renders one interaction that failed alone: finds the entries it fails
/// on, then renders the rest; if that fails too, the interaction is left
/// out whole. Failing calls count against the caller's `budget`.
fn render_without_failing_entries(
    render: &mut BatchCall<'_, Interaction, String>,
    budget: &mut usize,
    interaction: &Interaction,
    index: usize,
) -> (String, Vec<IsolatedEntry>) {
    let mut one = |entries: &[Entry]| -> Result<ItemResults<()>, PluginError> {
        let sub = Interaction {
            number: interaction.number,
            entries: entries.to_vec(),
        };
        let mut results = render(std::slice::from_ref(&sub))?;
        match results.pop() {
            Some(Ok(_)) => Ok(entries.iter().map(|_| Ok(())).collect()),
            Some(Err(error)) => Err(error),
            None => Ok(entries.iter().map(|_| Ok(())).collect()),
        }
    };
    let verdicts = match bisect(&interaction.entries, budget, &mut one) {
        Ok(verdicts) => verdicts,
        Err(error) => {
            return (
                String::new(),
                vec![IsolatedEntry {
                    interaction: index,
                    entry: None,
                    reason: error.to_string(),
                }],
            )
        }
    };
    let mut isolated = Vec::new();
    let mut kept = Vec::new();
    for (entry_index, (verdict, entry)) in
        verdicts.into_iter().zip(&interaction.entries).enumerate()
    {
        match verdict {
            Ok(()) => kept.push(entry.clone()),
            Err(error) => isolated.push(IsolatedEntry {
                interaction: index,
                entry: Some(entry_index),
                reason: error.to_string(),
            }),
        }
    }
    if kept.is_empty() {
        return (String::new(), isolated);
    }
    let remaining = Interaction {
        number: interaction.number,
        entries: kept,
    };
    match render(std::slice::from_ref(&remaining)).map(|mut r| r.pop()) {
        Ok(Some(Ok(block))) => (block, isolated),
        Ok(Some(Err(error))) | Err(error) => {
            isolated.push(IsolatedEntry {
                interaction: index,
                entry: None,
                reason: error.to_string(),
            });
            (String::new(), isolated)
        }
        Ok(None) => (String::new(), isolated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap(message: &str) -> PluginError {
        PluginError::Trap {
            plugin: "p".into(),
            message: message.into(),
        }
    }

    /// A plugin that traps on every batch holding one of `bad`.
    fn fails_on(
        bad: &'static [u32],
    ) -> impl FnMut(&[u32]) -> Result<ItemResults<u32>, PluginError> {
        move |batch: &[u32]| {
            if batch.iter().any(|n| bad.contains(n)) {
                Err(trap("bad input"))
            } else {
                Ok(batch.iter().map(|n| Ok(n * 10)).collect())
            }
        }
    }

    #[test]
    fn isolates_exactly_the_inputs_a_plugin_fails_on() {
        let items: Vec<u32> = (0..100).collect();
        let results = isolate(
            &items,
            1000,
            &mut FAILED_CALL_BUDGET.clone(),
            &mut fails_on(&[7, 63]),
        )
        .unwrap();
        for (n, result) in items.iter().zip(&results) {
            match result {
                Ok(value) => assert_eq!(*value, n * 10),
                Err(_) => assert!([7, 63].contains(n), "{n} isolated"),
            }
        }
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 2);
    }

    #[test]
    fn a_lone_bad_input_is_isolated_when_the_probe_works() {
        let results = isolate(
            &[7],
            1000,
            &mut FAILED_CALL_BUDGET.clone(),
            &mut fails_on(&[7]),
        )
        .unwrap();
        assert!(results[0].is_err());
    }

    #[test]
    fn a_plugin_that_fails_on_everything_fails_the_call() {
        let mut broken =
            |_: &[u32]| -> Result<ItemResults<u32>, PluginError> { Err(trap("broken")) };
        let error = isolate(
            &[1, 2, 3],
            1000,
            &mut FAILED_CALL_BUDGET.clone(),
            &mut broken,
        )
        .unwrap_err();
        assert!(error.to_string().contains("broken"), "{error}");
    }

    #[test]
    fn configure_failures_are_never_bisected() {
        let mut calls = 0;
        let mut refuses = |_: &[u32]| -> Result<ItemResults<u32>, PluginError> {
            calls += 1;
            Err(PluginError::Configure {
                plugin: "p".into(),
                message: "bad settings".into(),
            })
        };
        assert!(isolate(
            &[1, 2, 3, 4],
            1000,
            &mut FAILED_CALL_BUDGET.clone(),
            &mut refuses
        )
        .is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn bisection_gives_up_after_its_budget_of_failing_calls() {
        let mut calls = 0;
        // Fails on every even number: far more failures than the budget allows.
        let mut picky = |batch: &[u32]| -> Result<ItemResults<u32>, PluginError> {
            calls += 1;
            if batch.iter().any(|n| n % 2 == 0) {
                Err(trap("even"))
            } else {
                Ok(batch.iter().map(|n| Ok(*n)).collect())
            }
        };
        let items: Vec<u32> = (0..4096).collect();
        assert!(isolate(&items, 1, &mut FAILED_CALL_BUDGET.clone(), &mut picky).is_err());
        assert!(calls <= 2 * FAILED_CALL_BUDGET + 2, "{calls} calls");
    }
}
