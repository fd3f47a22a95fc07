//! Health and metrics for monitoring systems: is the team led (`/healthz`
//! of the dashboard), and the status as Prometheus text (`/metrics`), so
//! teams alert on huddle with the tools they already run.

use std::fmt::Write as _;
use std::io::BufRead;

use crate::backend::state::StateDir;
use crate::model::names::QUARANTINE_FILE;
use crate::model::visible::visible;
use crate::services::status::{SnapshotState, Status, SNAPSHOT_BUCKETS, SNAPSHOT_STATE_FILE};
use crate::services::workspace::Workspace;

/// The answer of [`health`]: healthy or not, and why, on one line.
#[derive(Debug, Clone)]
pub struct Health {
    pub healthy: bool,
    pub reason: String,
}

/// Healthy while the status can be read and the leader's heartbeat is no
/// older than the leader timeout.
pub fn health(status: Result<&Status, &dyn std::error::Error>) -> Health {
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            return unhealthy(format!(
                "cannot read the huddle directory: {}",
                crate::model::visible::visible(&error.to_string())
            ))
        }
    };
    match (&status.leader, status.leader_heartbeat_age_secs) {
        (Some(leader), Some(age)) if age <= status.leader_timeout_secs => Health {
            healthy: true,
            reason: one_line(&format!(
                "ok: leader {leader} (term {}), last heartbeat {age:.1}s ago",
                status.term
            )),
        },
        (Some(leader), Some(age)) => unhealthy(format!(
            "leader {leader} (term {}) silent for {age:.1}s, over the {:.1}s leader timeout",
            status.term, status.leader_timeout_secs
        )),
        _ => unhealthy(format!("no leader (last term {})", status.term)),
    }
}

fn unhealthy(reason: String) -> Health {
    Health {
        healthy: false,
        reason: one_line(&reason),
    }
}

/// Names come from the log: shown, never obeyed, and on one line.
fn one_line(text: &str) -> String {
    visible(text).replace(['\n', '\r'], " ")
}

/// The status as Prometheus text (exposition format 0.0.4), every name
/// prefixed `huddle_`.
pub fn metrics(workspace: &Workspace, status: &Status) -> String {
    let mut out = String::new();
    family(&mut out, "events", "gauge", "Events in the log.");
    let _ = writeln!(out, "huddle_events {}", status.events);

    family(
        &mut out,
        "appends_total",
        "counter",
        "Events in the log, by type.",
    );
    for (kind, count) in &status.events_by_type {
        let _ = writeln!(
            out,
            "huddle_appends_total{{type=\"{}\"}} {count}",
            label(kind)
        );
    }

    family(
        &mut out,
        "leader_term",
        "gauge",
        "The highest term claimed.",
    );
    let _ = writeln!(out, "huddle_leader_term {}", status.term);
    family(
        &mut out,
        "leader_present",
        "gauge",
        "1 while a leader holds the term.",
    );
    let _ = writeln!(
        out,
        "huddle_leader_present {}",
        u8::from(status.leader.is_some())
    );
    family(
        &mut out,
        "leader_heartbeat_age_seconds",
        "gauge",
        "Seconds since the leader's last heartbeat (absent without a leader).",
    );
    if let Some(age) = status.leader_heartbeat_age_secs {
        let _ = writeln!(out, "huddle_leader_heartbeat_age_seconds {age}");
    }
    family(
        &mut out,
        "leader_timeout_seconds",
        "gauge",
        "Without a heartbeat for this long the leader is presumed gone.",
    );
    let _ = writeln!(
        out,
        "huddle_leader_timeout_seconds {}",
        status.leader_timeout_secs
    );

    family(
        &mut out,
        "snapshot_duration_seconds",
        "histogram",
        "How long snapshots took.",
    );
    let durations = StateDir::of(&workspace.dir)
        .load::<SnapshotState>(SNAPSHOT_STATE_FILE)
        .map(|state| state.durations)
        .unwrap_or_default();
    let mut cumulative = 0;
    for (i, bound) in SNAPSHOT_BUCKETS.iter().enumerate() {
        cumulative += durations.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "huddle_snapshot_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "huddle_snapshot_duration_seconds_bucket{{le=\"+Inf\"}} {}\nhuddle_snapshot_duration_seconds_sum {}\nhuddle_snapshot_duration_seconds_count {}",
        durations.count, durations.sum_secs, durations.count
    );
    family(
        &mut out,
        "snapshot_bytes_behind",
        "gauge",
        "Bytes of events.log not yet in the snapshot.",
    );
    let _ = writeln!(
        out,
        "huddle_snapshot_bytes_behind {}",
        status.snapshot.bytes_behind
    );
    family(
        &mut out,
        "snapshot_events_behind",
        "gauge",
        "Entries of the log not yet in the snapshot, on any backend (absent before the first snapshot).",
    );
    if let Some(behind) = status.snapshot.events_behind {
        let _ = writeln!(out, "huddle_snapshot_events_behind {behind}");
    }
    family(
        &mut out,
        "snapshot_age_seconds",
        "gauge",
        "Seconds since the snapshot was last written (absent if never).",
    );
    if let Some(age) = status.snapshot.age_secs {
        let _ = writeln!(out, "huddle_snapshot_age_seconds {age}");
    }

    family(
        &mut out,
        "alert_deliveries_total",
        "counter",
        "Alerts delivered, per sink.",
    );
    for sink in &status.alerts {
        let _ = writeln!(
            out,
            "huddle_alert_deliveries_total{{sink=\"{}\"}} {}",
            label(&sink.sink),
            sink.delivered
        );
    }
    family(
        &mut out,
        "alert_failures_total",
        "counter",
        "Alerts given up on, per sink.",
    );
    for sink in &status.alerts {
        let _ = writeln!(
            out,
            "huddle_alert_failures_total{{sink=\"{}\"}} {}",
            label(&sink.sink),
            sink.failed
        );
    }

    family(
        &mut out,
        "sync_enabled",
        "gauge",
        "1 when git sync is configured.",
    );
    let _ = writeln!(
        out,
        "huddle_sync_enabled {}",
        u8::from(status.sync.is_some())
    );
    family(
        &mut out,
        "sync_offline",
        "gauge",
        "1 while git sync is offline.",
    );
    let offline = status.sync.as_ref().is_some_and(|sync| sync.offline);
    let _ = writeln!(out, "huddle_sync_offline {}", u8::from(offline));
    family(
        &mut out,
        "sync_bytes_not_pushed",
        "gauge",
        "Bytes of the log not yet pushed to the git remote.",
    );
    let pending = status.sync.as_ref().map_or(0, |sync| sync.pending_bytes);
    let _ = writeln!(out, "huddle_sync_bytes_not_pushed {pending}");

    family(
        &mut out,
        "paused",
        "gauge",
        "1 while huddle is paused after a write error.",
    );
    let _ = writeln!(out, "huddle_paused {}", u8::from(status.paused.is_some()));
    family(
        &mut out,
        "quarantined_lines",
        "gauge",
        "Malformed log lines set aside in events.error.log.",
    );
    let _ = writeln!(
        out,
        "huddle_quarantined_lines {}",
        quarantined_lines(workspace)
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP huddle_{name} {help}\n# TYPE huddle_{name} {kind}"
    );
}

/// Entries of events.error.log: one line each.
fn quarantined_lines(workspace: &Workspace) -> u64 {
    match std::fs::File::open(workspace.dir.join(QUARANTINE_FILE)) {
        Ok(file) => std::io::BufReader::new(file)
            .split(b'\n')
            .filter(|line| line.as_ref().is_ok_and(|line| !line.is_empty()))
            .count() as u64,
        Err(_) => 0,
    }
}

/// A label value: backslash, quote and newline escaped, as the format asks.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
