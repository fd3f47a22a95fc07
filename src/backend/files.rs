//! Writing files atomically: temp file in the same directory, fsync, rename,
//! fsync the directory (LevelDB's `SetCurrentFile`). Snapshots, checkpoints
//! and huddle's state files all go through here; snapshots also skip the
//! write when nothing changed, so a second run leaves modification times alone.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use tempfile::NamedTempFile;

/// Replaces `path` with `bytes`, atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    commit(tmp, path)
}

/// Writes a state file (under `.huddle/`, the spool): like
/// [`write_atomic`], creating its directory first, since whichever service
/// saves first in a fresh directory must not find it missing.
pub(crate) fn write_state(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(parent(path))?;
    write_atomic(path, bytes)
}

/// Replaces `path` with `bytes` unless it already holds exactly them.
/// Returns whether the file was written.
pub(crate) fn replace_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|current| current == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes)?;
    Ok(true)
}

/// A temp file next to `path`, with `path`'s permissions (or 0644 for a new
/// file: tempfile's default 0600 would hide the snapshot from teammates).
pub(crate) fn temp_beside(path: &Path) -> std::io::Result<NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .rand_bytes(TEMP_RANDOM_CHARS)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
}

/// Random characters in a temp file's name (tempfile's default).
const TEMP_RANDOM_CHARS: usize = 6;

/// Removes the temp files [`temp_beside`] made for `path` whose writer died
/// before committing them. Only for a caller holding the lock every writer
/// of `path` holds: a live writer's temp file would go too. Returns how many
/// were removed.
pub(crate) fn remove_abandoned_temps(path: &Path) -> std::io::Result<usize> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(0);
    };
    let prefix = format!(".{name}.");
    let mut removed = 0;
    for entry in std::fs::read_dir(parent(path))? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(random) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix.as_str()))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        // Exactly the random part: `.communication.md.bak.XXXXXX.tmp` is
        // not a temp file of communication.md.
        if random.len() == TEMP_RANDOM_CHARS && random.chars().all(|c| c.is_ascii_alphanumeric()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// fsync the temp file, rename it over `path`, fsync the directory.
pub(crate) fn commit(tmp: NamedTempFile, path: &Path) -> std::io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(parent(path))?.sync_all()
}

/// Keeps `path` unless `tmp` differs from it, in which case `tmp` replaces it.
pub(crate) fn commit_if_changed(tmp: NamedTempFile, path: &Path) -> std::io::Result<bool> {
    if same_contents(tmp.path(), path)? {
        return Ok(false);
    }
    commit(tmp, path)?;
    Ok(true)
}

/// Makes `to` a copy of `from` (atomically, durably), unless it already is
/// one; streams, so a large file is never in memory. Returns whether `to`
/// was written.
pub(crate) fn copy_if_changed(from: &Path, to: &Path) -> std::io::Result<bool> {
    if same_contents(from, to)? {
        return Ok(false);
    }
    let mut tmp = temp_beside(to)?;
    std::io::copy(&mut File::open(from)?, tmp.as_file_mut())?;
    commit(tmp, to)?;
    Ok(true)
}

/// Whether two files hold the same bytes (`false` if either is missing).
pub(crate) fn same_contents(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (Ok(fa), Ok(fb)) = (File::open(a), File::open(b)) else {
        return Ok(false);
    };
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (
        BufReader::with_capacity(1 << 20, fa),
        BufReader::with_capacity(1 << 20, fb),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut ra, &mut ba)?;
        let m = read_full(&mut rb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// What identifies a file's contents without reading them: a change of the
/// contents changes the change time, which no one can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub(crate) dev: u64,
    pub(crate) inode: u64,
    pub(crate) len: u64,
    pub(crate) mtime_ns: i128,
    pub(crate) ctime_ns: i128,
}

impl FileStamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_temp_files_of_the_named_file_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("communication.md");
        let abandoned = temp_beside(&target)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let names = [
            "communication.md",
            ".communication.md.bak.Ab12Cd.tmp",
            ".communication.md.tmp",
            ".communication.md.Ab12Cd.tmp.keep",
            ".archive.md.Ab12Cd.tmp",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_abandoned_temps(&target).unwrap(), 1);
        assert!(!abandoned.exists());
        for name in names {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
    }
}
