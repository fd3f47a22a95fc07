//! The compiled-artifact cache: what it trusts, `huddle plugins warm`, and a
//! plugin swapped under a running daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use huddle::plugin::{Origin, PluginHost, PluginSpec, Section, Slot};

use crate::common::{repo_file, wait_for, wait_until, HuddleDir};
use crate::daemon::{Daemon, FAST};

fn markdown() -> PluginSpec {
    PluginSpec::builtin("markdown")
}

/// The single entry of a cache directory.
fn only_entry(cache: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

/// A fresh host (a new engine) loads markdown from `cache`: the reason the
/// entry was refused, or `None` if it was loaded. Either way it must render.
fn load_markdown(cache: &Path) -> Option<String> {
    let (origin, rejected) = load_markdown_from(cache);
    match origin {
        Origin::Cached => None,
        _ => Some(rejected.expect("a refused entry says why")),
    }
}

fn load_markdown_from(cache: &Path) -> (Origin, Option<String>) {
    let host = PluginHost::with_cache_dir(cache.to_path_buf()).unwrap();
    let ready = host.preload(&markdown(), Slot::Renderer).unwrap();
    let interaction = huddle::plugin::Interaction {
        number: 3,
        entries: Vec::new(),
    };
    let blocks = host
        .render(&markdown(), Section::Archive, &[interaction])
        .unwrap();
    assert!(blocks[0].contains("Interaction #3"), "{blocks:?}");
    (ready.origin, ready.rejected)
}

#[test]
fn a_foreign_damaged_or_writable_cache_entry_is_compiled_again_never_loaded() {
    let temp = tempfile::tempdir().unwrap();
    // A directory huddle creates itself.
    let cache = temp.path().join("cache");
    let cache = cache.as_path();
    assert_eq!(
        load_markdown_from(cache),
        (Origin::Compiled, None),
        "an empty cache compiles"
    );
    let entry = only_entry(cache);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&entry), 0o600, "entries are private");
    assert_eq!(mode(cache), 0o700, "the cache directory is private");
    assert_eq!(load_markdown(cache), None, "a good entry is loaded");
    let good = std::fs::read(&entry).unwrap();

    // Another component's artifact, valid for wasmtime, under markdown's key.
    let other = tempfile::tempdir().unwrap();
    PluginHost::with_cache_dir(other.path().to_path_buf())
        .unwrap()
        .preload(&PluginSpec::builtin("stderr"), Slot::AlertSink)
        .unwrap();
    std::fs::copy(only_entry(other.path()), &entry).unwrap();
    let refused = load_markdown(cache).expect("a foreign entry is refused");
    assert!(refused.contains("another component"), "{refused}");
    assert_eq!(std::fs::read(&entry).unwrap(), good, "and replaced");
    assert_eq!(load_markdown(cache), None);

    // One byte changed in the machine code.
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(&entry, &damaged).unwrap();
    let refused = load_markdown(cache).expect("a damaged entry is refused");
    assert!(refused.contains("checksum"), "{refused}");
    assert_eq!(load_markdown(cache), None);

    // Cut short, as by a full disk under another writer.
    std::fs::write(&entry, &good[..good.len() / 2]).unwrap();
    let refused = load_markdown(cache).expect("a truncated entry is refused");
    assert!(refused.contains("announces"), "{refused}");

    // wasmtime's own artifact for the very same component, without
    // huddle's header: nothing says who wrote it or that it is intact.
    let host = PluginHost::with_cache_dir(other.path().to_path_buf()).unwrap();
    let raw = host
        .engine()
        .precompile_component(huddle::plugin::builtin_wasm("markdown").unwrap())
        .unwrap();
    std::fs::write(&entry, &raw).unwrap();
    let refused = load_markdown(cache).expect("a headerless entry is refused");
    assert!(refused.contains("header"), "{refused}");

    // A good entry that others may write could be swapped under us.
    std::fs::write(&entry, &good).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = load_markdown(cache).expect("a writable entry is refused");
    assert!(refused.contains("written by others"), "{refused}");
    assert_eq!(mode(&entry), 0o600, "the replacement is private again");
    assert_eq!(load_markdown(cache), None);

    // Likewise a directory others may write: entries in it are not
    // trusted, and huddle writes none there.
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = load_markdown(cache).expect("a shared directory is refused");
    assert!(refused.contains("its directory"), "{refused}");
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn plugins_warm_compiles_every_configured_plugin_then_a_second_run_loads_them() {
    let dir = HuddleDir::with_config(&format!(
        "[plugins.renderer]\nplugin = {:?}\n\n[[alerts.sinks]]\nplugin = {:?}\nallow = [\"http://127.0.0.1:9/\"]\nurl = \"http://127.0.0.1:9/x\"\n",
        repo_file("examples/dist/json-renderer.wasm").display().to_string(),
        repo_file("examples/dist/ntfy-sink.wasm").display().to_string(),
    ));
    let cache = tempfile::tempdir().unwrap();
    let warm = |expect: &str| {
        let out = dir
            .command(&["plugins", "warm"])
            .env("HUDDLE_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for plugin in [
            "headings (built-in)",
            "json-renderer.wasm",
            "ntfy-sink.wasm",
        ] {
            let line = text
                .lines()
                .find(|line| line.contains(plugin))
                .unwrap_or_else(|| panic!("{plugin} not warmed: {text}"));
            assert!(line.contains(expect), "{line}");
        }
        text
    };
    warm(": compiled in ");
    let entries = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert_eq!(entries, 3, "one artifact per plugin");
    // And the sha256 of each plugin file with its stamp, so the next
    // process knows the (unchanged) files without reading them.
    let stamps = std::fs::read_dir(cache.path().join("stamps"))
        .unwrap()
        .count();
    assert_eq!(stamps, 2, "one record per plugin file");
    warm(": loaded from the compiled-artifact cache in ");
}

#[test]
fn plugins_warm_fails_naming_a_plugin_that_cannot_be_compiled() {
    let dir = HuddleDir::with_config("[plugins.renderer]\nplugin = \"broken.wasm\"\n");
    std::fs::write(dir.file("broken.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let out = dir.run(&["plugins", "warm"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("renderer")).unwrap();
    assert!(
        line.contains("broken.wasm") && line.contains("cannot load"),
        "{line}"
    );
}

#[test]
fn a_plugin_rebuilt_under_a_running_daemon_is_prepared_aside_then_named_in_the_log() {
    let dir = HuddleDir::with_config(&format!(
        "{FAST}\n[plugins.renderer]\nplugin = \"renderer.wasm\"\n"
    ));
    let installed = dir.file("renderer.wasm");
    std::fs::copy(repo_file("examples/dist/json-renderer.wasm"), &installed).unwrap();
    let daemon = Daemon::start(&dir, "d");
    let communication =
        || std::fs::read_to_string(dir.file("communication.md")).unwrap_or_default();
    dir.ok(&["log", "1", "Agent A", "question", "first"]);
    assert!(
        wait_for(Duration::from_secs(20), || communication()
            .contains("```json")),
        "the JSON renderer renders: {}",
        communication()
    );

    // Rebuilt in place, as `cargo build` and a copy would do: a new file
    // renamed over the old one.
    let staged = dir.file("renderer.wasm.new");
    std::fs::copy(repo_file("plugins/dist/markdown.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    let mut next = 2;
    let swapped = wait_until(Duration::from_secs(30), || {
        let text = communication();
        if text.contains("### Interaction #1") && !text.contains("```json") {
            return Some(text);
        }
        // Each event makes the leader snapshot again.
        dir.ok(&["log", &next.to_string(), "Agent A", "question", "more"]);
        next += 1;
        std::thread::sleep(Duration::from_millis(100));
        None
    });
    let log = daemon.log_text();
    assert!(swapped.is_some(), "the markdown plugin took over: {log}");
    let position = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the daemon's log: {log}"))
    };
    let preparing = position("preparing it while the previous version keeps serving");
    let ready = position("ready (");
    let reloaded = position("plugin reloaded");
    assert!(preparing < ready && ready < reloaded, "{log}");
    let line = log[reloaded..].lines().next().unwrap();
    assert!(
        line.contains("renderer.wasm"),
        "the log names the plugin: {line}"
    );
}

/// `plugins check` (and `plugins test`, which starts with it) inspects the
/// component through the cache: the first check compiles it into the cache,
/// later ones load that entry instead of compiling again (seconds for an
/// interpreter-sized component).
#[test]
fn plugins_check_compiles_into_the_cache_once_and_later_checks_load_the_entry() {
    use std::os::unix::fs::MetadataExt;
    let temp = tempfile::tempdir().unwrap();
    let cache = temp.path().join("cache");
    let plugin = repo_file("tests/plugins/dist/context.wasm");
    let check = || -> String {
        use crate::common::OutputWithin;
        let out = crate::common::huddle_outside(temp.path(), &["plugins", "check"])
            .arg(&plugin)
            .env("HUDDLE_CACHE_DIR", &cache)
            .output_within(crate::common::COMMAND_LIMIT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = check();
    assert!(
        first.contains("implements huddle:plugin/renderer@0.2.0 (compiled in "),
        "{first}"
    );
    let entry = only_entry(&cache);
    let sha = huddle::plugin::hex_sha256(&std::fs::read(&plugin).unwrap());
    assert!(
        entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&sha),
        "{entry:?} is not the entry of {sha}"
    );
    let written = std::fs::metadata(&entry).unwrap();
    let second = check();
    assert!(
        second.contains("(loaded from the compiled-artifact cache in "),
        "{second}"
    );
    let after = std::fs::metadata(only_entry(&cache)).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (written.ino(), written.mtime(), written.mtime_nsec()),
        "the second check compiled the component again and replaced the entry"
    );
}
