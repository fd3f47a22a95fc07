//! Plugin benchmarks: the wasm renderer against the same rendering in native
//! Rust, the Python (componentize-py) and JavaScript (componentize-js)
//! renderers against it, cold compile and cached load of the interpreter
//! components (12-18 MB), loading a cached plugin, and a cold `huddle plugins list`.
//! Run with `cargo bench --bench plugins`; prints a table of medians.

mod support;
use support::{median, ms, output, time, Mode};

use std::collections::BTreeMap;
use std::process::Command;

use huddle::event::{InteractionRef, NewEvent};
use huddle::plugin::{
    Entry, Interaction, Origin, PluginHost, PluginSource, PluginSpec, Section, Slot,
};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Value};
use sha2::{Digest, Sha256};

fn main() {
    let mode = Mode::from_args();
    let interaction_count = mode.size(3000, 30);
    let runs = mode.size(15, 2);
    let interactions = sample(interaction_count);
    let fresh_cache = tempfile::tempdir().expect("temp dir");
    let cache = mode.plugin_cache(fresh_cache.path().to_path_buf());
    let host = PluginHost::with_cache_dir(cache.clone()).expect("plugin host");
    let markdown = PluginSpec::builtin("markdown");
    host.preload(&markdown, Slot::Renderer)
        .expect("load markdown");

    // The markdown plugin renders its stock templates with hand-written code
    // and operator templates with minijinja: compare each with the same
    // rendering done natively. Passing the stock template text as a setting
    // forces the template path.
    let mut templated = PluginSpec::builtin("markdown");
    templated.settings = vec![(
        "communication_template".into(),
        include_str!("../plugins/markdown/templates/communication.md.j2").into(),
    )];
    host.preload(&templated, Slot::Renderer)
        .expect("load markdown");
    let env = native_environment();
    let (mut wasm_stock, mut native_stock) = (Vec::new(), Vec::new());
    let (mut wasm_template, mut native_template) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut wasm_blocks = Vec::new();
        wasm_stock.push(time(|| {
            wasm_blocks = host
                .render(&markdown, Section::Communication, &interactions)
                .expect("render")
        }));
        let mut native_blocks = Vec::new();
        native_stock.push(time(|| native_blocks = render_format(&interactions)));
        assert_eq!(wasm_blocks, native_blocks, "the two renderings must agree");
        wasm_template.push(time(|| {
            wasm_blocks = host
                .render(&templated, Section::Communication, &interactions)
                .expect("render")
        }));
        native_template.push(time(|| native_blocks = render_native(&env, &interactions)));
        assert_eq!(wasm_blocks, native_blocks, "the two renderings must agree");
    }
    let (wasm_stock, native_stock) = (median(&mut wasm_stock), median(&mut native_stock));
    let (wasm_template, native_template) =
        (median(&mut wasm_template), median(&mut native_template));

    // The Python and JavaScript renderers on the same interactions, one
    // call each (their output is their own, not the markdown plugin's: the
    // work is the same shape).
    let mut interpreted = Vec::new();
    for (name, file) in [
        ("Python renderer (componentize-py)", PYTHON_RENDERER),
        ("JavaScript renderer (componentize-js)", JS_RENDERER),
    ] {
        let spec = PluginSpec::new(PluginSource::File(repo_file(file)));
        host.preload(&spec, Slot::Renderer)
            .unwrap_or_else(|e| panic!("load the {name}: {e}"));
        let mut times = Vec::new();
        for _ in 0..runs {
            let mut blocks = Vec::new();
            times.push(time(|| {
                blocks = host
                    .render(&spec, Section::Communication, &interactions)
                    .unwrap_or_else(|e| panic!("render with the {name}: {e}"))
            }));
            assert_eq!(blocks.len(), interactions.len());
            for (block, interaction) in blocks.iter().zip(&interactions) {
                assert!(
                    block.starts_with(&format!("### Interaction #{}\n", interaction.number)),
                    "{name}: {block}"
                );
            }
        }
        interpreted.push((name, median(&mut times)));
    }

    // The big components: the first compile (into an empty cache when
    // measuring), then loads from the cache by fresh hosts.
    let mut big = Vec::new();
    for (name, file, slot) in [
        ("Python renderer", PYTHON_RENDERER, Slot::Renderer),
        ("JavaScript renderer", JS_RENDERER, Slot::Renderer),
        ("JavaScript sink", JS_SINK, Slot::AlertSink),
    ] {
        let spec = PluginSpec::new(PluginSource::File(repo_file(file)));
        let size = std::fs::metadata(repo_file(file)).expect("component").len();
        let empty = tempfile::tempdir().expect("temp dir");
        let cold_cache = mode.plugin_cache(empty.path().to_path_buf());
        let first = PluginHost::with_cache_dir(cold_cache.clone())
            .expect("host")
            .preload(&spec, slot)
            .expect("compile");
        if mode == Mode::Measure {
            assert_eq!(
                first.origin,
                Origin::Compiled,
                "{name}: the cache was empty"
            );
        }
        // Wall time of the whole preload a new process pays: reading and
        // hashing the component (its sha256 is the cache key), mapping and
        // checking the entry, deserializing, linking.
        let mut loads = Vec::new();
        for _ in 0..runs {
            let fresh = PluginHost::with_cache_dir(cold_cache.clone()).expect("host");
            let mut loaded = None;
            loads.push(time(|| {
                loaded = Some(fresh.preload(&spec, slot).expect("load"))
            }));
            let loaded = loaded.expect("loaded");
            assert_eq!(loaded.origin, Origin::Cached, "{name}: {loaded:?}");
        }
        big.push((name, size, first.elapsed, median(&mut loads)));
    }

    // A fresh host (new engine) loading the compiled component from the disk
    // cache, then one call: deserialize + link + instantiate + configure + render.
    let one = sample(1);
    let mut load_times = Vec::new();
    let mut call_times = Vec::new();
    for _ in 0..runs {
        let fresh = PluginHost::with_cache_dir(cache.clone()).expect("host");
        load_times.push(time(|| {
            fresh.preload(&markdown, Slot::Renderer).expect("load");
        }));
        let mut blocks = Vec::new();
        call_times.push(time(|| {
            blocks = fresh
                .render(&markdown, Section::Communication, &one)
                .expect("render");
        }));
        assert_eq!(blocks, render_format(&one), "the fresh host rendered wrong");
    }
    let load = median(&mut load_times);
    let call = median(&mut call_times);

    // `huddle plugins list` as a new process, cache warm.
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = env!("CARGO_BIN_EXE_huddle");
    let markdown_sha256: String = Sha256::digest(include_bytes!("../plugins/dist/markdown.wasm"))
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut list_times = Vec::new();
    for _ in 0..runs {
        let mut out = None;
        list_times.push(time(|| {
            out = Some(output(
                Command::new(exe)
                    .arg("--dir")
                    .arg(dir.path())
                    .args(["plugins", "list"])
                    .env("HUDDLE_CACHE_DIR", &cache),
            ));
        }));
        let out = out.expect("plugins list ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "plugins list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let renderer = stdout
            .lines()
            .find(|line| line.starts_with("renderer "))
            .unwrap_or_else(|| panic!("plugins list shows no renderer:\n{stdout}"));
        assert!(
            renderer.contains("markdown (built-in)") && renderer.ends_with(&markdown_sha256),
            "plugins list shows the wrong renderer or hash: {renderer}"
        );
    }
    let list = median(&mut list_times);

    println!();
    println!("| plugin benchmark (median of {runs})                                   | time       | ratio |");
    println!("|-------------------------------------------------------------------|------------|-------|");
    println!(
        "| wasm markdown, stock templates, {interaction_count} interactions, one call     | {:>7.2} ms | {:>4.2}x |",
        ms(wasm_stock),
        wasm_stock.as_secs_f64() / native_stock.as_secs_f64()
    );
    println!(
        "|   native Rust, the same hand-written rendering                    | {:>7.2} ms | 1.00x |",
        ms(native_stock)
    );
    println!(
        "| wasm markdown, minijinja template, {interaction_count} interactions, one call  | {:>7.2} ms | {:>4.2}x |",
        ms(wasm_template),
        wasm_template.as_secs_f64() / native_template.as_secs_f64()
    );
    println!(
        "|   native Rust, the same minijinja template                        | {:>7.2} ms | 1.00x |",
        ms(native_template)
    );
    for (name, render) in &interpreted {
        println!(
            "| wasm {name}, {interaction_count} interactions, one call | {:>7.2} ms | {:>4.2}x |",
            ms(*render),
            render.as_secs_f64() / wasm_stock.as_secs_f64()
        );
    }
    println!(
        "|   (ratios against the wasm markdown plugin, stock templates)      |            |       |"
    );
    for (name, size, compile, load) in &big {
        println!(
            "| {name}, {:>5.1} MB: cold compile                            | {:>7.0} ms |     - |",
            *size as f64 / 1e6,
            ms(*compile)
        );
        println!(
            "| {name}: load from the compiled cache, fresh engine (whole preload) | {:>7.2} ms |     - |",
            ms(*load)
        );
    }
    println!(
        "| load cached plugin in a fresh engine (deserialize + link)          | {:>7.2} ms |     - |",
        ms(load)
    );
    println!(
        "| first call: instantiate + configure + render one interaction       | {:>7.2} ms |     - |",
        ms(call)
    );
    println!(
        "| `huddle plugins list`, new process, warm cache                    | {:>7.2} ms |     - |",
        ms(list)
    );
}

const PYTHON_RENDERER: &str = "examples/python-renderer/python-renderer.wasm";
const JS_SINK: &str = "examples/js-sink/js-sink.wasm";
const JS_RENDERER: &str = "examples/js-renderer/js-renderer.wasm";

fn repo_file(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn sample(count: usize) -> Vec<Interaction> {
    (0..count as u64)
        .map(|n| {
            let entries = [
                ("question", "A → B"),
                ("answer", "B → A"),
                ("followup", "A Follow-Up"),
            ]
            .iter()
            .map(|(kind, heading)| Entry {
                heading: (*heading).into(),
                event: NewEvent::new(
                    InteractionRef::Number(n),
                    "Agent A",
                    *kind,
                    format!(
                        "Message about interaction {n}: a line of typical length for an agent."
                    ),
                )
                .into_event(n),
            })
            .collect();
            Interaction { number: n, entries }
        })
        .collect()
}

fn native_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("syntax"),
    );
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    env.add_template(
        "communication",
        include_str!("../plugins/markdown/templates/communication.md.j2"),
    )
    .expect("template");
    env
}

fn render_native(env: &Environment<'static>, interactions: &[Interaction]) -> Vec<String> {
    let template = env.get_template("communication").expect("template");
    interactions
        .iter()
        .map(|interaction| {
            let entries: Vec<Value> = interaction
                .entries
                .iter()
                .map(|entry| {
                    let e = &entry.event;
                    let event = BTreeMap::from([
                        ("interaction", Value::from(e.interaction)),
                        ("actor", Value::from(e.actor.clone())),
                        ("type", Value::from(e.kind.clone())),
                        ("content", Value::from(e.content.clone())),
                        ("timestamp", Value::from(e.timestamp.clone())),
                        ("id", Value::from(e.id.clone())),
                        ("term", Value::from(e.term)),
                    ]);
                    Value::from(BTreeMap::from([
                        ("heading", Value::from(entry.heading.clone())),
                        ("event", Value::from(event)),
                    ]))
                })
                .collect();
            // A whole interaction is its only part (WIT 0.2.0 `render-part`).
            let context = BTreeMap::from([
                (
                    "interaction",
                    Value::from(BTreeMap::from([
                        ("number", Value::from(interaction.number)),
                        ("entries", Value::from(entries)),
                    ])),
                ),
                (
                    "part",
                    Value::from(BTreeMap::from([
                        ("first", Value::from(true)),
                        ("last", Value::from(true)),
                    ])),
                ),
            ]);
            template.render(context).expect("render")
        })
        .collect()
}

fn render_format(interactions: &[Interaction]) -> Vec<String> {
    interactions
        .iter()
        .map(|interaction| {
            let mut block = format!("### Interaction #{}\n", interaction.number);
            for entry in &interaction.entries {
                block.push_str(&format!(
                    "#### {}\n - {}\n",
                    entry.heading, entry.event.content
                ));
            }
            block.push('\n');
            block
        })
        .collect()
}
