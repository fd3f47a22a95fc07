//! `huddle plugins new`: a plugin project that builds and passes
//! `huddle plugins check` as written, for each world and language.
//!
//! The project is made from the files under `templates/plugin/` (embedded in
//! the binary, so it works wherever huddle is installed) and the released WIT
//! it is built against (`wit/since_v0.2.0/huddle.wit`). The templates hold
//! `{{key}}` placeholders filled in here; nothing else in them is special.
//!
//! The project is written into a temporary directory beside its destination
//! and renamed into place, so a failure leaves no half-written project.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::Slot;

/// The WIT every new project is built against: the newest released version.
pub const WIT_PACKAGE: &str = "huddle:plugin@0.2.0";
const WIT: &str = include_str!("../../wit/since_v0.2.0/huddle.wit");

/// Longest plugin name: it becomes a directory, a crate or package name and
/// a file name.
pub const MAX_NAME_CHARS: usize = 64;

/// What a plugin name may be, in the words the errors use.
pub const NAME_RULE: &str =
    "lowercase ASCII letters, digits and '-', starting with a letter, at most 64 characters";

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/templates/plugin/",
            $path
        ))
    };
}

/// The lock of the JavaScript example: the same componentize-js the tests
/// and `examples/build-polyglot.sh` install, so `npm ci` in a new project
/// gets the tool that is known to work.
const JS_LOCK: &str = include_str!("../../examples/js-sink/package-lock.json");
/// The package name in [`JS_LOCK`], replaced by the plugin's.
const JS_LOCK_NAME: &str = "\"name\": \"huddle-js-sink\"";

/// A dependency the Rust skeletons of the heading mapper and the alert sink
/// use for JSON (the mapper's `hide` list, the sink's request body).
const RUST_SERDE_JSON: &str =
    "serde_json = { version = \"1\", default-features = false, features = [\"std\"] }\n";

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// A `cdylib` crate built for `wasm32-wasip2` with wit-bindgen.
    Rust,
    /// `app.py`, built with componentize-py.
    Python,
    /// `plugin.js`, built with componentize-js.
    Js,
}

impl Language {
    pub const ALL: [Language; 3] = [Language::Rust, Language::Python, Language::Js];

    /// As people name it.
    pub fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::Js => "JavaScript",
        }
    }

    /// The one-time set-up the build needs (the README says more).
    fn install_command(self) -> &'static str {
        match self {
            Language::Rust => "rustup target add wasm32-wasip2",
            Language::Python => {
                "python3 -m venv .venv && .venv/bin/pip install componentize-py==0.25.1"
            }
            Language::Js => "npm ci",
        }
    }
}

/// Why no project was written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("NAME {shown} is not a plugin name: {problem} (a plugin name is {NAME_RULE})")]
    BadName { shown: String, problem: String },
    #[error(
        "{} already exists and is not an empty directory: nothing was written \
         (choose another NAME or --out, or remove it first)",
        path.display()
    )]
    Occupied { path: PathBuf },
    #[error(
        "--out {} does not name a directory to create: it must end in a name, not '.', '..' or '/'",
        path.display()
    )]
    NotADirectoryName { path: PathBuf },
    #[error("cannot write the new project to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ScaffoldError {
    /// The user can fix the command (a name, a destination) rather than the machine.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ScaffoldError::BadName { .. }
                | ScaffoldError::Occupied { .. }
                | ScaffoldError::NotADirectoryName { .. }
        )
    }
}

/// Checks a plugin name against [`NAME_RULE`].
pub fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |problem: String| {
        // A name of a megabyte is not echoed whole.
        let mut shown: String = name.chars().take(MAX_NAME_CHARS).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        Err(ScaffoldError::BadName {
            shown: format!("{shown:?}"),
            problem,
        })
    };
    let length = name.chars().count();
    if length == 0 {
        return bad("it is empty".to_owned());
    }
    if length > MAX_NAME_CHARS {
        return bad(format!("it is {length} characters long"));
    }
    for (position, c) in name.chars().enumerate() {
        let allowed = c.is_ascii_lowercase() || (position > 0 && (c.is_ascii_digit() || c == '-'));
        if !allowed {
            let problem = if position == 0 {
                format!("it starts with {c:?}")
            } else {
                format!("{c:?} (character {}) is not allowed", position + 1)
            };
            return bad(problem);
        }
    }
    Ok(())
}

/// One file of a new project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Relative to the project's directory, `/`-separated.
    pub path: &'static str,
    pub contents: String,
    pub executable: bool,
}

/// The files of a new project, in the order they are listed to the user.
pub fn project_files(
    name: &str,
    slot: Slot,
    language: Language,
) -> Result<Vec<ProjectFile>, ScaffoldError> {
    validate_name(name)?;
    let world = slot.name();
    let crate_name = name.replace('-', "_");
    let dependencies = match (language, slot) {
        (Language::Rust, Slot::HeadingMapper | Slot::AlertSink) => RUST_SERDE_JSON,
        _ => "",
    };
    let vars: &[(&str, &str)] = &[
        ("name", name),
        ("world", world),
        ("crate_name", &crate_name),
        ("dependencies", dependencies),
    ];
    let (about, huddle_toml) = match slot {
        Slot::Renderer => (
            template!("worlds/renderer.md"),
            template!("worlds/renderer.toml"),
        ),
        Slot::HeadingMapper => (
            template!("worlds/heading-mapper.md"),
            template!("worlds/heading-mapper.toml"),
        ),
        Slot::AlertSink => (
            template!("worlds/alert-sink.md"),
            template!("worlds/alert-sink.toml"),
        ),
    };
    let huddle_toml = fill(huddle_toml, vars);
    let mut readme_vars = vars.to_vec();
    readme_vars.push(("huddle_toml", &huddle_toml));
    let usage = fill(template!("README-use.md"), &readme_vars);
    let about = fill(about, vars);
    readme_vars.push(("use", usage.trim_end()));
    readme_vars.push(("about", about.trim_end()));

    let file = |path, template: &str, executable| ProjectFile {
        path,
        contents: fill(template, &readme_vars),
        executable,
    };
    let wit = ProjectFile {
        path: "wit/huddle.wit",
        contents: WIT.to_owned(),
        executable: false,
    };
    let files = match language {
        Language::Rust => vec![
            file("README.md", template!("rust/README.md"), false),
            file("Cargo.toml", template!("rust/Cargo.toml"), false),
            file(
                "src/lib.rs",
                match slot {
                    Slot::Renderer => template!("rust/renderer.rs"),
                    Slot::HeadingMapper => template!("rust/heading-mapper.rs"),
                    Slot::AlertSink => template!("rust/alert-sink.rs"),
                },
                false,
            ),
            wit,
            file("build.sh", template!("rust/build.sh"), true),
            file(".gitignore", template!("rust/gitignore"), false),
        ],
        Language::Python => vec![
            file("README.md", template!("python/README.md"), false),
            file(
                "app.py",
                match slot {
                    Slot::Renderer => template!("python/renderer.py"),
                    Slot::HeadingMapper => template!("python/heading-mapper.py"),
                    Slot::AlertSink => template!("python/alert-sink.py"),
                },
                false,
            ),
            wit,
            file("build.sh", template!("python/build.sh"), true),
            file(".gitignore", template!("python/gitignore"), false),
        ],
        Language::Js => vec![
            file("README.md", template!("js/README.md"), false),
            file(
                "plugin.js",
                match slot {
                    Slot::Renderer => template!("js/renderer.js"),
                    Slot::HeadingMapper => template!("js/heading-mapper.js"),
                    Slot::AlertSink => template!("js/alert-sink.js"),
                },
                false,
            ),
            file("package.json", template!("js/package.json"), false),
            ProjectFile {
                path: "package-lock.json",
                contents: JS_LOCK.replacen(JS_LOCK_NAME, &format!("\"name\": \"{name}\""), 2),
                executable: false,
            },
            wit,
            file("build.sh", template!("js/build.sh"), true),
            file(".gitignore", template!("js/gitignore"), false),
        ],
    };
    Ok(files)
}

/// `template` with each `{{key}}` of `vars` replaced by its value.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    })
}

/// A project written by [`create`].
#[derive(Debug, Clone)]
pub struct Created {
    pub dir: PathBuf,
    pub name: String,
    pub slot: Slot,
    pub language: Language,
    /// Relative to `dir`.
    pub files: Vec<&'static str>,
}

impl Created {
    /// The component `build.sh` writes, relative to `dir`.
    pub fn wasm(&self) -> String {
        format!("{}.wasm", self.name)
    }
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        writeln!(
            f,
            "created {dir}: a {} in {} ({WIT_PACKAGE})",
            self.slot.name(),
            self.language.title()
        )?;
        for file in &self.files {
            writeln!(f, "  {file}")?;
        }
        writeln!(f, "next (see {dir}/README.md):")?;
        writeln!(f, "  cd {dir}")?;
        writeln!(f, "  {}", self.language.install_command())?;
        writeln!(f, "  ./build.sh")?;
        write!(f, "  huddle plugins check {}", self.wasm())
    }
}

/// Writes a new project into `dir`, which must not exist or be an empty
/// directory; its parent is created if missing.
pub fn create(
    dir: &Path,
    name: &str,
    slot: Slot,
    language: Language,
) -> Result<Created, ScaffoldError> {
    let files = project_files(name, slot, language)?;
    // `.` or `..` would rename the project over a directory someone may be
    // standing in; `a/./b/` is just `a/b`.
    let dir: PathBuf = dir.components().collect();
    if !matches!(dir.components().next_back(), Some(Component::Normal(_))) {
        return Err(ScaffoldError::NotADirectoryName { path: dir });
    }
    let dir = dir.as_path();
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Write { path, source }
    };
    ensure_vacant(dir)?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(write_error(parent))?;
    // Beside the destination, so the rename stays on one file system; a
    // dot name keeps it out of sight while it is filled.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(parent)
        .map_err(write_error(parent))?;
    // Named as it would be in place: the staging name means nothing to anyone.
    write_files(staging.path(), &files).map_err(|(file, source)| ScaffoldError::Write {
        path: dir.join(file),
        source,
    })?;
    // rename(2) puts a directory in place of an empty one, never of one
    // that has gained files since the check above.
    if let Err(source) = std::fs::rename(staging.path(), dir) {
        return Err(match source.kind() {
            io::ErrorKind::DirectoryNotEmpty
            | io::ErrorKind::AlreadyExists
            | io::ErrorKind::NotADirectory => ScaffoldError::Occupied {
                path: dir.to_path_buf(),
            },
            _ => ScaffoldError::Write {
                path: dir.to_path_buf(),
                source,
            },
        });
    }
    // Renamed away: nothing left for the guard to remove.
    let _ = staging.keep();
    Ok(Created {
        dir: dir.to_path_buf(),
        name: name.to_owned(),
        slot,
        language,
        files: files.iter().map(|file| file.path).collect(),
    })
}

/// `dir` does not exist, or is an empty directory (not a link to one).
fn ensure_vacant(dir: &Path) -> Result<(), ScaffoldError> {
    let occupied = || ScaffoldError::Occupied {
        path: dir.to_path_buf(),
    };
    match std::fs::symlink_metadata(dir) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ScaffoldError::Write {
            path: dir.to_path_buf(),
            source,
        }),
        Ok(meta) if !meta.is_dir() => Err(occupied()),
        Ok(_) => {
            let mut entries = std::fs::read_dir(dir).map_err(|source| ScaffoldError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
            if entries.next().is_some() {
                Err(occupied())
            } else {
                Ok(())
            }
        }
    }
}

/// Writes `files` under `root`; on failure, which file and why.
fn write_files(root: &Path, files: &[ProjectFile]) -> Result<(), (&'static str, io::Error)> {
    use std::os::unix::fs::PermissionsExt;
    let set_mode =
        |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    // tempfile makes the directory private; a project is an ordinary one.
    set_mode(root, 0o755).map_err(|error| (".", error))?;
    for file in files {
        let path = root.join(file.path);
        let write = || {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)?;
            }
            std::fs::write(&path, &file.contents)?;
            if file.executable {
                set_mode(&path, 0o755)?;
            }
            Ok(())
        };
        write().map_err(|error| (file.path, error))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_project() -> impl Iterator<Item = (Slot, Language, Vec<ProjectFile>)> {
        Slot::ALL.into_iter().flat_map(|slot| {
            Language::ALL.into_iter().map(move |language| {
                let files = project_files("my-plugin", slot, language).unwrap();
                (slot, language, files)
            })
        })
    }

    #[test]
    fn every_placeholder_of_every_template_is_filled() {
        for (slot, language, files) in every_project() {
            for file in files {
                assert!(
                    !file.contents.contains("{{"),
                    "{slot:?}/{language:?} {}: a placeholder is left:\n{}",
                    file.path,
                    file.contents
                );
            }
        }
    }

    #[test]
    fn every_project_names_its_world_and_copies_the_released_wit() {
        for (slot, language, files) in every_project() {
            let wit = files.iter().find(|f| f.path == "wit/huddle.wit").unwrap();
            assert!(wit.contents.contains("package huddle:plugin@0.2.0;"));
            let readme = files.iter().find(|f| f.path == "README.md").unwrap();
            for needed in [
                format!("huddle:plugin/{}@0.2.0", slot.name()),
                "huddle plugins check my-plugin.wasm".to_owned(),
                "host-log".to_owned(),
                "./build.sh".to_owned(),
            ] {
                assert!(
                    readme.contents.contains(&needed),
                    "{slot:?}/{language:?}: README.md lacks {needed:?}"
                );
            }
            let build = files.iter().find(|f| f.path == "build.sh").unwrap();
            assert!(build.executable);
            assert!(
                build.contents.contains(slot.name()) || language == Language::Rust,
                "{slot:?}/{language:?}: build.sh does not name the world"
            );
            assert!(build.contents.contains("my-plugin.wasm"));
        }
    }

    #[test]
    fn the_js_projects_package_json_pins_what_its_lock_holds() {
        let files = project_files("my-plugin", Slot::AlertSink, Language::Js).unwrap();
        let json = |path: &str| -> serde_json::Value {
            let file = files.iter().find(|f| f.path == path).unwrap();
            serde_json::from_str(&file.contents).unwrap()
        };
        let package = json("package.json");
        let lock = json("package-lock.json");
        assert_eq!(package["name"], "my-plugin");
        assert_eq!(lock["name"], "my-plugin");
        assert_eq!(lock["packages"][""]["name"], "my-plugin");
        assert_eq!(
            package["devDependencies"],
            lock["packages"][""]["devDependencies"]
        );
        assert_eq!(
            lock["packages"]["node_modules/@bytecodealliance/componentize-js"]["version"],
            package["devDependencies"]["@bytecodealliance/componentize-js"]
        );
    }

    #[test]
    fn the_rust_projects_use_the_wit_bindgen_of_the_default_plugins() {
        let workspace = include_str!("../../plugins/Cargo.toml");
        let wanted = workspace
            .lines()
            .find(|line| line.starts_with("wit-bindgen ="))
            .unwrap();
        for slot in Slot::ALL {
            let files = project_files("my-plugin", slot, Language::Rust).unwrap();
            let manifest = files.iter().find(|f| f.path == "Cargo.toml").unwrap();
            assert!(
                manifest.contents.lines().any(|line| line == wanted),
                "{slot:?}: Cargo.toml does not have {wanted:?}:\n{}",
                manifest.contents
            );
        }
    }

    #[test]
    fn names_follow_the_rule_and_refusals_say_why() {
        for good in [
            "a",
            "my-plugin",
            "x2",
            "a-b-c-1",
            &"a".repeat(MAX_NAME_CHARS),
        ] {
            validate_name(good).unwrap();
        }
        let cases = [
            ("", "it is empty"),
            ("My-plugin", "it starts with 'M'"),
            ("2fast", "it starts with '2'"),
            ("-a", "it starts with '-'"),
            ("my_plugin", "'_' (character 3) is not allowed"),
            ("my plugin", "' ' (character 3) is not allowed"),
            ("../evil", "it starts with '.'"),
            ("a/b", "'/' (character 2) is not allowed"),
            ("é", "it starts with 'é'"),
            ("ab\n", "'\\n' (character 3) is not allowed"),
        ];
        for (name, problem) in cases {
            let error = validate_name(name).unwrap_err().to_string();
            assert!(error.starts_with("NAME "), "{error}");
            assert!(error.contains(problem), "{name:?}: {error}");
            assert!(error.contains(NAME_RULE), "{error}");
        }
        let long = "a".repeat(10_000);
        let error = validate_name(&long).unwrap_err().to_string();
        assert!(error.contains("10000 characters long"), "{error}");
        assert!(error.len() < 400, "the long name is echoed whole: {error}");
    }
}
