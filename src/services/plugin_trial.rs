//! `huddle plugins test`: one run of a plugin outside any huddle directory,
//! on sample events or the author's own, with everything it said.
//!
//! The run goes through the same host calls a snapshot or a delivery makes
//! (same limits, same checks of the output), so what passes here fails
//! later only on different input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::model::event::{Event, DEFAULT_MAX_CONTENT_BYTES};
use crate::plugin::{
    check_file, Alert, Allowlist, CheckError, DeliveryError, HttpGrant, Implements, PluginError,
    PluginHost, PluginLogLine, PluginSource, PluginSpec, RenderContext, Section, World,
};
use crate::services::snapshot::interactions_of;

/// The events a run uses when given none: two interactions between two
/// agents, a hidden heartbeat and one of huddle's own errors.
pub const SAMPLE_EVENTS: &str = include_str!("../../examples/sample-events.jsonl");

/// Largest events file a run reads.
pub const MAX_EVENTS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Where alerts come from in a run, as `source` of each alert.
pub const TRIAL_SOURCE: &str = "huddle plugins test";

/// What to run and on what.
#[derive(Debug, Clone)]
pub struct Trial {
    pub plugin: PathBuf,
    /// Passed to `configure`, as huddle.toml's settings would be.
    pub settings: Vec<(String, String)>,
    /// A JSON Lines file of events; `None`: [`SAMPLE_EVENTS`].
    pub events: Option<PathBuf>,
    /// A sink's allowlist; empty denies every request, as in huddle.toml.
    pub allow: Vec<String>,
    /// The render context a renderer gets.
    pub section: Section,
    pub k: u32,
    pub directory: String,
    pub deadline: Duration,
    pub memory_bytes: usize,
}

/// What the plugin gave back.
#[derive(Debug)]
pub enum TrialOutput {
    /// A heading mapper: each event with its heading (`None`: hidden).
    Headings(Vec<(Event, Option<String>)>),
    /// A renderer: the text the host writes for the section, made of this
    /// many interactions (the events the default mapper shows).
    Rendered { interactions: usize, text: String },
    /// An alert sink delivered this many alerts (the error events).
    Delivered { alerts: usize },
    /// An alert sink refused the batch, with its verdict.
    Refused {
        alerts: usize,
        verdict: DeliveryError,
    },
}

/// One run: the world found, the outcome (a trap, a refused setting or
/// bad output is an `Err`), and every `host-log` line written meanwhile.
#[derive(Debug)]
pub struct TrialReport {
    pub implements: Implements,
    pub outcome: Result<TrialOutput, PluginError>,
    pub log: Vec<PluginLogLine>,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("cannot read the events file {path}: {source}")]
    ReadEvents {
        path: String,
        source: std::io::Error,
    },
    #[error("the events file {path} is {size} bytes, over the limit of {MAX_EVENTS_FILE_BYTES}")]
    EventsTooLarge { path: String, size: u64 },
    #[error("{path}, line {line}: {problem}")]
    BadEvent {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("the events file {path} holds no event")]
    NoEvents { path: String },
    #[error("--allow: {0}")]
    Allow(String),
    #[error("--settings `{0}`: expected KEY=VALUE with a non-empty KEY")]
    Setting(String),
    #[error("cannot start the plugin host: {0}")]
    Host(String),
}

/// `KEY=VALUE` as a setting; the value is passed as written (a TOML
/// number or boolean in huddle.toml reaches `configure` as the same text).
pub fn parse_setting(text: &str) -> Result<(String, String), TrialError> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(TrialError::Setting(text.to_string())),
    }
}

/// Runs the plugin once, on the trial's events, in the world it implements.
pub fn run(trial: &Trial) -> Result<TrialReport, TrialError> {
    let mut host = PluginHost::new().map_err(|e| TrialError::Host(format!("{e:#}")))?;
    let tap = host.tap_logs();
    let implements = check_file(&host, &trial.plugin)?.implements;
    let events = read_events(trial.events.as_deref())?;
    let mut spec = PluginSpec {
        settings: trial.settings.clone(),
        deadline: trial.deadline,
        memory_bytes: trial.memory_bytes,
        ..PluginSpec::new(PluginSource::File(trial.plugin.clone()))
    };
    let started = Instant::now();
    let outcome = match implements.world {
        World::HeadingMapper => host
            .headings(&spec, &events)
            .map(|headings| TrialOutput::Headings(events.into_iter().zip(headings).collect())),
        World::Renderer => render(&host, &spec, trial, events),
        World::AlertSink => {
            let allow = Allowlist::parse(&trial.allow).map_err(TrialError::Allow)?;
            spec.http = Some(HttpGrant::new(allow));
            deliver(&host, &spec, events)
        }
    };
    Ok(TrialReport {
        implements,
        outcome,
        log: tap.take(),
        took: started.elapsed(),
    })
}

fn render(
    host: &PluginHost,
    spec: &PluginSpec,
    trial: &Trial,
    events: Vec<Event>,
) -> Result<TrialOutput, PluginError> {
    // The events the built-in mapper shows, with its headings, as a
    // snapshot with the default huddle.toml would hand them over.
    let headings = host.headings(&PluginSpec::builtin("headings"), &events)?;
    let interactions = interactions_of(events, headings);
    let context = RenderContext {
        section: trial.section,
        k: trial.k,
        directory: trial.directory.clone(),
    };
    let blocks = host.render_in(spec, &context, &interactions)?;
    Ok(TrialOutput::Rendered {
        interactions: interactions.len(),
        text: blocks.concat(),
    })
}

fn deliver(
    host: &PluginHost,
    spec: &PluginSpec,
    events: Vec<Event>,
) -> Result<TrialOutput, PluginError> {
    // What the leader would deliver: the error events, one alert each.
    let alerts: Vec<Alert> = events
        .into_iter()
        .filter(|event| event.kind == crate::model::event::types::ERROR)
        .map(|event| Alert {
            event,
            count: 1,
            source: TRIAL_SOURCE.to_string(),
        })
        .collect();
    let count = alerts.len();
    Ok(match host.deliver(spec, &alerts)? {
        Ok(()) => TrialOutput::Delivered { alerts: count },
        Err(verdict) => TrialOutput::Refused {
            alerts: count,
            verdict,
        },
    })
}

/// The events of `path` (JSON Lines, each line checked as `huddle log`
/// checks an event; blank lines skipped), or the sample.
fn read_events(path: Option<&Path>) -> Result<Vec<Event>, TrialError> {
    let Some(path) = path else {
        return parse_events("the sample events", SAMPLE_EVENTS.as_bytes());
    };
    let shown = path.display().to_string();
    let read_error = |source| TrialError::ReadEvents {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_EVENTS_FILE_BYTES {
        return Err(TrialError::EventsTooLarge { path: shown, size });
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    let events = parse_events(&shown, &bytes)?;
    if events.is_empty() {
        return Err(TrialError::NoEvents { path: shown });
    }
    Ok(events)
}

fn parse_events(shown: &str, bytes: &[u8]) -> Result<Vec<Event>, TrialError> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| {
            Event::from_log_line(line.trim_ascii_end(), DEFAULT_MAX_CONTENT_BYTES).map_err(
                |problem| TrialError::BadEvent {
                    path: shown.to_string(),
                    line: i + 1,
                    problem,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_events_are_valid_and_hold_an_error_and_two_interactions() {
        let events = read_events(None).expect("the sample parses");
        assert!(events
            .iter()
            .any(|e| e.kind == crate::model::event::types::ERROR));
        let numbers: std::collections::BTreeSet<u64> =
            events.iter().map(|e| e.interaction).collect();
        assert_eq!(numbers.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn a_setting_without_an_equals_sign_or_key_is_refused_naming_it() {
        assert_eq!(
            parse_setting("max_chars=50").unwrap(),
            ("max_chars".into(), "50".into())
        );
        assert_eq!(
            parse_setting("url=http://x/?a=b").unwrap(),
            ("url".into(), "http://x/?a=b".into())
        );
        for bad in ["max_chars", "=5", " =5"] {
            let error = parse_setting(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }
}
