//! The sandbox's resource limits hold for the whole store of a call, not per
//! memory or per instance: components with several core instances, written
//! in the text format because no toolchain of ours emits them.

use std::path::PathBuf;

use huddle::event::{Event, InteractionRef, NewEvent};
use huddle::plugin::{PluginError, PluginSource, PluginSpec};

use crate::common::{host, repo_file};

const MIB: usize = 1024 * 1024;

fn compile_wat(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = wat::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    (dir, path)
}

fn one_event() -> Vec<Event> {
    vec![NewEvent::new(InteractionRef::Number(1), "a", "question", "q").into_event(1)]
}

fn mapper_spec(path: PathBuf, memory_bytes: usize) -> PluginSpec {
    let mut spec = PluginSpec::new(PluginSource::File(path));
    spec.memory_bytes = memory_bytes;
    spec
}

#[test]
fn the_memory_cap_covers_every_memory_of_a_component_together() {
    let text = std::fs::read_to_string(repo_file("tests/plugins/wat/multi_memory.wat")).unwrap();
    let (_dir, path) = compile_wat("multi_memory", &text);
    // Three memories: 64 KiB and two of 37.5 MiB, each under 64 MiB.
    let err = host()
        .headings(&mapper_spec(path.clone(), 64 * MIB), &one_event())
        .unwrap_err();
    assert!(
        matches!(err, PluginError::OutOfMemory { limit_bytes, .. } if limit_bytes == 64 * MIB),
        "{err}"
    );
    // With room for all three it instantiates and reaches its code (which
    // traps on purpose): only their sum was over the cap.
    let err = host()
        .headings(&mapper_spec(path, 80 * MIB), &one_event())
        .unwrap_err();
    assert!(matches!(err, PluginError::Trap { .. }), "{err}");
}

/// A mapper component whose instantiation creates `instances` core
/// instances of a module with `memories` one-page memories (multi-memory).
fn many_instances(instances: usize, memories: usize) -> String {
    let memory_decls = "(memory 1)".repeat(memories);
    let instantiations = "(core instance (instantiate $Filler))\n".repeat(instances);
    format!(
        r#"(component
  (core module $Main
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "configure") (param i32 i32) (result i32) unreachable)
    (func (export "headings") (param i32 i32) (result i32) unreachable))
  (core module $Filler {memory_decls})
  (core instance $main (instantiate $Main))
  {instantiations}
  (type $event (record (field "interaction" u64) (field "actor" string) (field "type" string)
    (field "content" string) (field "timestamp" string) (field "id" (option string))
    (field "term" (option u64))))
  (export $event-export "event" (type $event))
  (type $settings (list (tuple string string)))
  (func $configure (param "settings" $settings) (result (result (error string)))
    (canon lift (core func $main "configure") (memory (core memory $main "memory"))
      (realloc (core func $main "cabi_realloc"))))
  (func $headings (param "events" (list $event-export)) (result (list (option string)))
    (canon lift (core func $main "headings") (memory (core memory $main "memory"))
      (realloc (core func $main "cabi_realloc"))))
  (instance $mapper (export "configure" (func $configure)) (export "headings" (func $headings)))
  (export "huddle:plugin/mapper@0.1.0" (instance $mapper)))"#
    )
}

#[test]
fn a_component_creating_too_many_instances_or_memories_is_refused() {
    // Within the limits the component reaches its (trapping) code.
    let (_ok_dir, within) = compile_wat("within", &many_instances(8, 0));
    let err = host()
        .headings(&mapper_spec(within, 64 * MIB), &one_event())
        .unwrap_err();
    assert!(
        matches!(&err, PluginError::Trap { message, .. } if message.contains("unreachable")),
        "{err}"
    );

    let (_dir, instances) = compile_wat("instances", &many_instances(200, 0));
    let err = host()
        .headings(&mapper_spec(instances, 64 * MIB), &one_event())
        .unwrap_err();
    assert!(err.to_string().contains("instance count too high"), "{err}");

    // Ten instances of a module with one memory each: 11 memories, 640 KiB.
    let (_dir, memories) = compile_wat("memories", &many_instances(10, 1));
    let err = host()
        .headings(&mapper_spec(memories, 64 * MIB), &one_event())
        .unwrap_err();
    assert!(err.to_string().contains("memory count too high"), "{err}");
}

#[test]
fn memory_mb_in_huddle_toml_sets_the_cap_a_snapshot_enforces() {
    let dir = crate::common::HuddleDir::new();
    dir.ok(&["log", "1", "Agent A", "question", "q"]);
    std::fs::write(
        dir.file("huddle.toml"),
        format!(
            "[plugins.renderer]\nplugin = {:?}\nmemory_mb = 16\n",
            crate::common::hostile_plugin("oom").display().to_string()
        ),
    )
    .unwrap();
    let out = dir.run(&["snapshot"]);
    assert_eq!(out.status.code(), Some(1));
    let said = crate::common::stderr(&out);
    assert!(
        said.contains("out of memory") && said.contains(&(16 * MIB).to_string()),
        "{said}"
    );
}

#[test]
fn a_plugin_sees_no_clock_and_no_randomness_beyond_its_inputs() {
    let spec = PluginSpec::new(PluginSource::File(crate::common::hostile_plugin("peek")));
    let interactions = vec![huddle::plugin::Interaction {
        number: 1,
        entries: vec![huddle::plugin::Entry {
            heading: "h".into(),
            event: one_event().remove(0),
        }],
    }];
    let render = || {
        host()
            .render(&spec, huddle::plugin::Section::Communication, &interactions)
            .unwrap()
            .remove(0)
    };
    let first = render();
    assert!(first.contains("wall=0 elapsed=0 "), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(render(), first, "the same inputs give the same output");
    // And in another process, through the CLI.
    let dir = crate::common::HuddleDir::with_config(&format!(
        "[plugins.renderer]\nplugin = {:?}\n",
        crate::common::hostile_plugin("peek").display().to_string()
    ));
    dir.ok(&["log", "1", "Agent A", "question", "q"]);
    dir.ok(&["snapshot"]);
    let seed = first.split("seed=").nth(1).unwrap().trim().to_string();
    let communication = std::fs::read_to_string(dir.file("communication.md")).unwrap();
    assert!(
        communication.contains(&format!("wall=0 elapsed=0 seed={seed}")),
        "{communication}"
    );
}
