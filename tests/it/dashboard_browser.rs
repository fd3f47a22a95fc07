//! The dashboard page in real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by scripts/test):
//! live updates without a reload, a leader change after kill -9, hostile
//! content shown as text. Each test saves a screenshot under
//! target/dashboard-screenshots/.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{exclusive, wait_until, HuddleDir};
use crate::daemon::{Daemon, FAST};
use crate::dashboard::Dashboard;

/// How long a browser and its driver may take to come up.
const BROWSER_LIMIT: Duration = Duration::from_secs(30);
/// The issue's bound: an append shows on the page within a second.
const LIVE_LIMIT: Duration = Duration::from_secs(1);

fn program(name: &str, debian_path: &str) -> PathBuf {
    let path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from(debian_path)])
        .find(|path| path.exists());
    path.unwrap_or_else(|| {
        panic!(
            "{name} is missing: scripts/test installs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver)"
        )
    })
}

/// Headless Chromium behind its chromedriver, one session.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<fantoccini::Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let chromium = program("chromium", "/usr/bin/chromium");
        let chromedriver = program("chromedriver", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + BROWSER_LIMIT;
        let client = loop {
            let connected = runtime.block_on(
                fantoccini::ClientBuilder::new(
                    hyper_util::client::legacy::connect::HttpConnector::new(),
                )
                .capabilities(capabilities.clone())
                .connect(&url),
            );
            match connected {
                Ok(client) => break client,
                Err(error) if Instant::now() > deadline => {
                    panic!("no WebDriver session with chromium: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Browser {
            runtime,
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn client(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("a session")
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns true.
    fn wait_true(&self, limit: Duration, script: &str) -> bool {
        wait_until(limit, || {
            (self.eval(script) == Value::Bool(true)).then_some(())
        })
        .is_some()
    }

    /// Saves a PNG of the page under target/dashboard-screenshots/.
    fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("a screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Opens the page and waits for its event stream to be open; marks the
    /// document so a reload would show.
    fn open_dashboard(&self, dashboard: &Dashboard) {
        self.goto(&dashboard.url("/"));
        assert!(
            self.wait_true(
                Duration::from_secs(10),
                "return document.body.dataset.stream === 'open';"
            ),
            "the page's event stream did not open"
        );
        self.eval("window.__sameDocument = 'not reloaded'; return null;");
    }

    fn assert_not_reloaded(&self) {
        assert_eq!(
            self.eval("return window.__sameDocument || null;"),
            json!("not reloaded"),
            "the page was reloaded"
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The texts of `selector`'s matches, as a script returns them.
fn texts(selector: &str) -> String {
    format!("return Array.from(document.querySelectorAll({selector:?})).map(e => e.textContent);")
}

fn has_text(browser: &Browser, selector: &str, wanted: &str) -> bool {
    browser
        .eval(&texts(selector))
        .as_array()
        .is_some_and(|all| all.iter().any(|text| text.as_str() == Some(wanted)))
}

#[test]
fn the_page_shows_cli_appended_events_and_an_error_within_a_second_without_a_reload() {
    let _heavy = exclusive();
    let dir = HuddleDir::new();
    let dashboard = Dashboard::start(&dir, &[]);
    let browser = Browser::start();
    browser.open_dashboard(&dashboard);

    dir.ok(&["log", "next", "alice", "question", "Is the build green?"]);
    let appended = Instant::now();
    let shown = wait_until(LIVE_LIMIT, || {
        has_text(&browser, "#live .content", "Is the build green?").then(|| appended.elapsed())
    });
    assert!(
        shown.is_some(),
        "the question was not on the page within 1 s"
    );

    dir.ok(&["log", "0", "builder", "error", "disk full on /var/build"]);
    let appended = Instant::now();
    let shown = wait_until(LIVE_LIMIT, || {
        (has_text(&browser, "#live .content", "disk full on /var/build")
            && has_text(&browser, "#errors .content", "disk full on /var/build"))
        .then(|| appended.elapsed())
    });
    assert!(
        shown.is_some(),
        "the error was not in the live list and the errors panel within 1 s"
    );
    assert!(has_text(&browser, "#actors .actor", "builder"));
    browser.assert_not_reloaded();
    browser.screenshot("live-events");
}

#[test]
fn the_page_shows_the_new_leader_after_the_leader_daemon_is_killed() {
    let _heavy = exclusive();
    let dir = HuddleDir::with_config(FAST);
    let first = Daemon::start(&dir, "first-leader");
    let leads = |name: &str| {
        let status: Value =
            serde_json::from_str(&dir.ok(&["status", "--json"])).expect("status JSON");
        status["leader"] == name
    };
    assert!(
        crate::common::wait_for(Duration::from_secs(15), || leads("first-leader")),
        "the first daemon never led"
    );
    let _second = Daemon::start(&dir, "second-leader");
    dir.ok(&["log", "next", "alice", "question", "Who leads?"]);
    dir.ok(&[
        "log",
        "1",
        "bob",
        "answer",
        "Whoever claimed the **highest** term.",
    ]);
    dir.ok(&["snapshot"]);
    let dashboard = Dashboard::start(&dir, &[]);
    let browser = Browser::start();
    browser.open_dashboard(&dashboard);
    assert!(
        browser.wait_true(
            Duration::from_secs(5),
            "return document.getElementById('leader').textContent === 'first-leader';"
        ),
        "the page did not show the first leader"
    );

    first.signal(libc::SIGKILL);
    drop(first);
    assert!(
        browser.wait_true(
            Duration::from_secs(20),
            "return document.getElementById('leader').textContent === 'second-leader';"
        ),
        "the page did not show the new leader"
    );
    // The election history names both, newest first.
    let rows = browser.eval(&texts("#elections tr"));
    let rows: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rows.get(1).is_some_and(|row| row.contains("second-leader")),
        "{rows:?}"
    );
    assert!(
        rows.iter().any(|row| row.contains("first-leader")),
        "{rows:?}"
    );
    browser.assert_not_reloaded();
    browser.screenshot("leader-change");
}

#[test]
fn hostile_actor_and_content_render_as_text_in_the_browser() {
    let _heavy = exclusive();
    let dir = HuddleDir::new();
    let dashboard = Dashboard::start(&dir, &[]);
    let browser = Browser::start();
    browser.open_dashboard(&dashboard);
    browser.eval("window.__pwned = []; return null;");

    let actor = r#"<img src=x onerror="window.__pwned.push('actor')">"#;
    let content = "<script>window.__pwned.push('script')</script>\
                   <img src=y onerror=\"window.__pwned.push('img')\"> <b>bold?</b> \
                   **markdown** [link](javascript:window.__pwned.push('link')) \u{202e}reversed";
    dir.ok(&["log", "next", actor, "question", content]);
    dir.ok(&["log", "0", actor, "error", content]);
    dir.ok(&["snapshot"]);
    assert!(
        crate::common::wait_for(Duration::from_secs(5), || {
            has_text(&browser, "#live .actor", actor) && has_text(&browser, "#errors .actor", actor)
        }),
        "the hostile actor did not show as text"
    );
    assert!(
        browser.wait_true(
            Duration::from_secs(5),
            "return document.getElementById('communication').textContent.includes('<script>');"
        ),
        "communication.md's region did not show the content as text"
    );
    let live_content = browser.eval(&texts("#live .content"));
    let shown = live_content.as_array().expect("contents");
    assert!(
        shown.iter().all(|text| {
            let text = text.as_str().unwrap_or("");
            text.starts_with("<script>window.__pwned.push('script')</script>")
                && text.contains("<b>bold?</b>")
        }),
        "{shown:?}"
    );
    // Nothing of it became markup, ran, or links to script.
    let injected = browser.eval(
        "return document.querySelectorAll('#panels img, #live img, #panels script, #live script, \
         #panels b, #live b, a[href^=\"javascript\"]').length;",
    );
    assert_eq!(injected, json!(0));
    // One more event through the same path: by the time it shows, any
    // handler an injected element had would have run.
    dir.ok(&[
        "log",
        "next",
        "sentinel",
        "note",
        "after the hostile events",
    ]);
    assert!(crate::common::wait_for(Duration::from_secs(5), || {
        has_text(&browser, "#live .content", "after the hostile events")
    }));
    let all = browser.eval(&texts("#live .content")).to_string();
    let all: Vec<String> = serde_json::from_str(&all).expect("texts");
    assert!(
        all.iter().any(|text| text.contains(r"\u{202e}reversed"))
            && all.iter().all(|text| !text.contains('\u{202e}')),
        "the bidirectional override is shown as an escape, not obeyed: {all:?}"
    );
    assert_eq!(browser.eval("return window.__pwned;"), json!([]));
    browser.assert_not_reloaded();
    browser.screenshot("hostile-content");
}
