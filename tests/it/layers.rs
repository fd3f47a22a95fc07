//! The library's layers (src/lib.rs): model → backends and plugin host →
//! services → apps. A module may use its own layer and those below, never
//! one above: read from the sources, every `crate::<layer>` path is checked.

use std::path::{Path, PathBuf};

/// Lower numbers are lower layers; backends and the plugin host share one.
fn rank(layer: &str) -> Option<u8> {
    match layer {
        "model" => Some(1),
        "backend" | "plugin" => Some(2),
        "services" => Some(3),
        "apps" => Some(4),
        _ => None,
    }
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    let mut breaches = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let Some(own) = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .and_then(|layer| rank(layer).map(|r| (layer.to_string(), r)))
        else {
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(file).expect("read a source file");
        for (number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let target: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if rank(&target).is_some_and(|r| r > own.1) {
                    breaches.push(format!(
                        "{}:{}: {} uses {target}",
                        relative.display(),
                        number + 1,
                        own.0
                    ));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} files found under the layers");
    assert!(
        breaches.is_empty(),
        "imports from a higher layer:\n{}",
        breaches.join("\n")
    );
}

#[test]
fn every_source_file_but_the_crate_roots_sits_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&src)
                .expect("under src/")
                .display()
                .to_string()
        })
        .filter(|f| f != "lib.rs" && f != "main.rs")
        .filter(|f| {
            f.split('/')
                .next()
                .is_none_or(|layer| rank(layer).is_none() || !f.contains('/'))
        })
        .collect();
    assert!(outside.is_empty(), "files outside the layers: {outside:?}");
}
