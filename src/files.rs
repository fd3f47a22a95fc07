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
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
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

fn same_contents(a: &Path, b: &Path) -> std::io::Result<bool> {
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

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
