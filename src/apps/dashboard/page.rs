//! The dashboard's HTML. Every string that comes from the log, a state file
//! or communication.md goes through [`text`] (or the markdown renderer,
//! which turns raw HTML into text): hostile content shows as what it is.

use std::fmt::Write as _;

use crate::model::visible::visible;
use crate::services::health;
use crate::services::snapshot::current_region;
use crate::services::status::{Status, RATE_MINUTES};
use crate::services::workspace::Workspace;

/// Text for an HTML element or a quoted attribute: `& < > " '` escaped,
/// and characters that reorder or hide text shown as escapes.
pub fn text(value: &str) -> String {
    let shown = visible(value);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(secs: Option<f64>) -> String {
    match secs {
        None => "?".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

/// The whole page; its links are relative, so it also works under a
/// reverse proxy's prefix. `from` is where the page's stream starts (the head when
/// it was rendered), so no event between rendering and connecting is missed.
pub fn page(workspace: &Workspace, status: &Status, from: &str) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>huddle dashboard</title>
<link rel="stylesheet" href="assets/app.css">
<script src="assets/app.js" defer></script>
</head>
<body data-from="{from}">
<header><h1>huddle</h1><span class="dir">{dir}</span><span id="connection" class="connection">connecting…</span></header>
<div id="panels">{panels}</div>
<section class="card wide" id="live-card"><h2>Live events</h2>
<p class="hint">Events appended since this page was opened, newest first.</p>
<ol id="live"></ol></section>
</body>
</html>
"#,
        from = text(from),
        dir = text(&workspace.dir.display().to_string()),
        panels = panels(workspace, status),
    );
    out
}

/// The part of the page that the script fetches again on news.
pub fn panels(workspace: &Workspace, status: &Status) -> String {
    let mut out = String::with_capacity(12 * 1024);
    let health = health::health(Ok(status));
    let _ = write!(
        out,
        r#"<div id="health" class="health {class}" data-healthy="{healthy}">{reason}</div>"#,
        class = if health.healthy { "ok" } else { "bad" },
        healthy = health.healthy,
        reason = text(&health.reason),
    );
    if let Some(pause) = &status.paused {
        let _ = write!(
            out,
            r#"<div id="paused" class="banner bad">PAUSED since {since} by {by}: {reason}. Fix the cause, then run <code>huddle resume --dir {dir}</code></div>"#,
            since = text(&pause.since),
            by = text(&pause.by),
            reason = text(&pause.reason),
            dir = text(&shell_quoted(&workspace.dir.display().to_string())),
        );
    }
    out.push_str(r#"<div class="grid">"#);
    leader(&mut out, status);
    actors(&mut out, status);
    errors(&mut out, status);
    state(&mut out, status);
    rate(&mut out, status);
    out.push_str("</div>");
    communication(&mut out, workspace);
    out
}

fn leader(out: &mut String, status: &Status) {
    out.push_str(r#"<section class="card" id="leader-card"><h2>Leader</h2>"#);
    match (&status.leader, status.leader_heartbeat_age_secs) {
        (Some(name), beat) => {
            let stale = beat.is_none_or(|age| age > status.leader_timeout_secs);
            let _ = write!(
                out,
                r#"<p><span id="leader" class="big">{name}</span> term <span id="term">{term}</span></p><p>last heartbeat <span id="heartbeat-age" class="{class}">{age} ago{mark}</span></p>"#,
                name = text(name),
                term = status.term,
                class = if stale { "stale" } else { "fresh" },
                age = age(beat),
                mark = if stale {
                    " (stale: over the leader timeout)"
                } else {
                    ""
                },
            );
        }
        (None, _) => {
            let _ = write!(
                out,
                r#"<p><span id="leader" class="big none">none</span> last term <span id="term">{}</span></p>"#,
                status.term
            );
        }
    }
    out.push_str(r#"<h3>Elections</h3><table id="elections"><tr><th>term</th><th>who</th><th>what</th><th>when</th></tr>"#);
    for record in status.elections.iter().rev() {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            record.term,
            text(&record.actor),
            if record.action == "resign" {
                "resigned"
            } else {
                "won"
            },
            text(&record.timestamp)
        );
    }
    out.push_str("</table></section>");
}

fn actors(out: &mut String, status: &Status) {
    out.push_str(r#"<section class="card" id="actors-card"><h2>Actors</h2><table id="actors"><tr><th>actor</th><th>last event</th><th>age</th></tr>"#);
    for actor in &status.actors {
        let stale = actor
            .last_event_age_secs
            .is_none_or(|age| age > status.leader_timeout_secs);
        let _ = write!(
            out,
            r#"<tr class="{class}"><td class="actor">{name}</td><td>{kind}</td><td>{age}{mark}</td></tr>"#,
            class = if stale { "stale" } else { "fresh" },
            name = text(&actor.actor),
            kind = text(&actor.last_type),
            age = age(actor.last_event_age_secs),
            mark = if stale { " (stale)" } else { "" },
        );
    }
    out.push_str("</table></section>");
}

fn errors(out: &mut String, status: &Status) {
    out.push_str(r#"<section class="card" id="errors-card"><h2>Last errors</h2>"#);
    if status.last_errors.is_empty() {
        out.push_str(r#"<p class="none">none</p>"#);
    }
    out.push_str(r#"<ol id="errors">"#);
    for error in status.last_errors.iter().rev() {
        let _ = write!(
            out,
            r#"<li><span class="when">{}</span> <span class="actor">{}</span>: <span class="content">{}</span><ul class="deliveries">"#,
            text(&error.timestamp),
            text(&error.actor),
            text(&error.content),
        );
        let key = crate::services::alerts::error_key(&error.actor, &error.content);
        for sink in &status.alerts {
            let given_up = sink.given_up.iter().rev().find(|g| g.error == key);
            let passed = error.at.is_some_and(|at| sink.cursor.offset > at.offset);
            let delivery = match given_up {
                Some(given_up) => format!(
                    r#"<span class="failed">failed: {}</span>"#,
                    text(&given_up.reason)
                ),
                None if passed => "delivered".to_string(),
                None => match &sink.last_error {
                    Some(retrying) => format!("pending (last attempt: {})", text(retrying)),
                    None => "pending".to_string(),
                },
            };
            let _ = write!(out, r#"<li>{}: {delivery}</li>"#, text(&sink.sink));
        }
        out.push_str("</ul></li>");
    }
    out.push_str("</ol><h3>Alert sinks</h3>");
    if status.alerts.is_empty() {
        out.push_str(r#"<p class="none">no sink has run yet</p>"#);
    }
    out.push_str(r#"<table id="sinks"><tr><th>sink</th><th>delivered</th><th>failed</th><th>last failure</th></tr>"#);
    for sink in &status.alerts {
        let failure = match (&sink.last_error, &sink.last_error_at) {
            (Some(error), Some(at)) => format!("{}: {}", text(at), text(error)),
            (Some(error), None) => text(error),
            _ => "none".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(&sink.sink),
            sink.delivered,
            sink.failed,
            failure
        );
    }
    out.push_str("</table></section>");
}

fn state(out: &mut String, status: &Status) {
    out.push_str(r#"<section class="card" id="state-card"><h2>Snapshot and sync</h2><dl>"#);
    let snapshot = &status.snapshot;
    let freshness = match (&snapshot.updated_at, snapshot.age_secs) {
        (Some(_), age_secs) if snapshot.up_to_date() => {
            format!("up to date (written {} ago)", age(age_secs))
        }
        (Some(_), age_secs) => format!(
            "{} of the log not in it yet (written {} ago)",
            snapshot.lag(),
            age(age_secs)
        ),
        (None, _) => "never written".into(),
    };
    let _ = write!(
        out,
        r#"<dt>events</dt><dd id="events">{}</dd><dt>snapshot</dt><dd id="snapshot">{}</dd>"#,
        status.events,
        text(&freshness)
    );
    match &status.sync {
        Some(sync) => {
            let _ = write!(
                out,
                r#"<dt>sync</dt><dd id="sync" class="{class}">{remote}: {state}, {pending} bytes not pushed, last success {last}{error}</dd>"#,
                class = if sync.offline { "bad" } else { "ok" },
                remote = text(&sync.remote),
                state = if sync.offline { "OFFLINE" } else { "online" },
                pending = sync.pending_bytes,
                last = text(sync.last_success.as_deref().unwrap_or("never")),
                error = sync
                    .last_error
                    .as_deref()
                    .filter(|_| sync.offline)
                    .map(|e| format!(" ({})", text(e)))
                    .unwrap_or_default(),
            );
        }
        None => out.push_str(r#"<dt>sync</dt><dd id="sync">not configured</dd>"#),
    }
    let backend = &status.backend;
    let _ = write!(
        out,
        r#"<dt>backend</dt><dd id="backend" class="{class}">{kind}{place}: {state}, {queued} events queued{reason}</dd>"#,
        class = if backend.offline { "bad" } else { "ok" },
        kind = backend.kind,
        place = match (&backend.servers, &backend.stream) {
            (Some(servers), Some(stream)) => format!(" {} stream {}", text(servers), text(stream)),
            _ => String::new(),
        },
        state = if backend.offline { "OFFLINE" } else { "online" },
        queued = backend.queued,
        reason = backend
            .offline_reason
            .as_deref()
            .map(|why| format!(" ({})", text(why)))
            .unwrap_or_default(),
    );
    let _ = write!(
        out,
        r#"<dt>paused</dt><dd>{}</dd>"#,
        if status.paused.is_some() { "yes" } else { "no" }
    );
    out.push_str("</dl></section>");
}

/// Events per minute over the last hour, as bars in an inline SVG.
fn rate(out: &mut String, status: &Status) {
    let counts = &status.event_rate_per_minute;
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = counts.iter().sum();
    let (width, height) = (RATE_MINUTES * 5, 60usize);
    let _ = write!(
        out,
        r#"<section class="card" id="rate-card"><h2>Event rate</h2><p>{total} events in the last hour, at most {peak} a minute</p><svg id="rate" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="events per minute over the last hour">"#
    );
    for (i, count) in counts.iter().enumerate() {
        let bar = (*count as f64 / peak as f64 * height as f64).round() as usize;
        let _ = write!(
            out,
            r#"<rect class="bar" x="{}" y="{}" width="4" height="{bar}"><title>{count}</title></rect>"#,
            i * 5,
            height - bar
        );
    }
    out.push_str("</svg></section>");
}

fn communication(out: &mut String, workspace: &Workspace) {
    out.push_str(r#"<section class="card wide" id="communication-card"><h2>Communication</h2><div id="communication">"#);
    match current_region(&workspace.dir) {
        Some(region) => out.push_str(&markdown(&region)),
        None => out.push_str(r#"<p class="none">communication.md has no region yet</p>"#),
    }
    out.push_str("</div></section>");
}

/// Markdown to HTML, with raw HTML shown as text and links only to
/// http(s), mailto and places on the page.
pub fn markdown(source: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, Tag};
    let safe = |url: &str| {
        let lower = url.trim().to_ascii_lowercase();
        lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("mailto:")
            || lower.starts_with('#')
    };
    let events = Parser::new_ext(
        source,
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    )
    .map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe(&dest_url) => Event::Start(Tag::Link {
            link_type,
            dest_url: "#".into(),
            title,
            id,
        }),
        // Images would make the reader's browser fetch what the log names.
        Event::Start(Tag::Image { dest_url, .. }) => Event::Text(dest_url),
        Event::End(pulldown_cmark::TagEnd::Image) => Event::Text("".into()),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    html
}

/// A path as a shell word, for the resume hint.
fn shell_quoted(path: &str) -> String {
    if path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        path.to_string()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_every_html_special_character() {
        assert_eq!(
            text(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn markdown_shows_raw_html_as_text_and_drops_script_links() {
        let html = markdown("<script>alert(1)</script>\n\n[x](javascript:alert(1)) <b>b</b>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
