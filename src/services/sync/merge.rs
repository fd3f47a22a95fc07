//! The merge by id: pure functions shared by the sync, the merge driver
//! (`huddle merge-driver`) and the fuzz target.

use std::collections::HashSet;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Event identity for merging: the id, or the whole line for lines without one.
pub(super) fn identity(line: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<IdOnly>(line) {
        Ok(IdOnly(Some(id))) => [b"id:".as_slice(), id.as_bytes()].concat(),
        _ => [b"line:".as_slice(), line].concat(),
    }
}

/// The `id` of a line that is a JSON object, read as the event parser reads
/// it: of duplicate keys the last counts, and every other value must be
/// valid JSON too (UTF-8, escapes, numbers in range). A line that is not an
/// object, or is broken anywhere, is not an event, so it has no id: were it
/// to share one with a real event, the merge would keep the broken line and
/// drop the event.
struct IdOnly(Option<String>);

impl<'de> Deserialize<'de> for IdOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IdOnly, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = IdOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdOnly, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Id => id = map.next_value::<Option<String>>()?,
                        Key::Other => map.next_value::<Checked>().map(drop)?,
                    }
                }
                Ok(IdOnly(id))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A key of the object: `id` or another, without allocating.
enum Key {
    Id,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(if key == "id" { Key::Id } else { Key::Other })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Any JSON value, parsed in full and dropped. Unlike `IgnoredAny`, which
/// skips strings and numbers without checking them, a broken value is an
/// error here, as it is for the event parser.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Checked, D::Error> {
        struct CheckedVisitor;
        impl<'de> Visitor<'de> for CheckedVisitor {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_entry::<Checked, Checked>()?.is_some() {}
                Ok(Checked)
            }
        }
        deserializer.deserialize_any(CheckedVisitor)
    }
}

/// The lines of a log as written, without their `\n` (a `\r` before it
/// kept), skipping blank ones. A last line without a newline counts.
pub(super) fn raw_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == b'\n').filter(|line| !is_blank(line))
}

/// A line of nothing but whitespace, which the log skips.
pub(super) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

pub(super) fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The lines of a log, without their line ends (`\n` or `\r\n`), skipping
/// blank ones. A last line without a newline counts as a line.
pub fn log_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw_lines(bytes).map(without_cr)
}

/// The merge by id: the lines of `remote` whose events `local` lacks, in
/// `remote`'s order, each event once. Appending them to `local` gives the
/// union of both logs with each side's order kept: `local` as it is, then
/// what only `remote` had. An event is its `id`; a line without one (from
/// another tool) is its text. The lines are returned as `remote` has them,
/// a `\r` before the newline included: appended with a `\n`, each reads
/// back as the same line (a line ending in `\r\r` would otherwise lose its
/// last `\r`, become another line, and come back at every merge).
pub fn lines_to_append<'a>(local: &[u8], remote: &'a [u8]) -> Vec<&'a [u8]> {
    let known: HashSet<Vec<u8>> = log_lines(local).map(identity).collect();
    let mut seen = HashSet::new();
    raw_lines(remote)
        .filter(|line| {
            let id = identity(without_cr(line));
            !known.contains(&id) && seen.insert(id)
        })
        .collect()
}

/// `local` with `lines` appended the way the log lock's `append_raw_lines`
/// appends them: a torn last line is sealed with a newline first, and
/// nothing changes when there is nothing to append.
pub fn with_lines_appended(mut local: Vec<u8>, lines: &[&[u8]]) -> Vec<u8> {
    if lines.is_empty() {
        return local;
    }
    if !local.is_empty() && !local.ends_with(b"\n") {
        local.push(b'\n');
    }
    for line in lines {
        local.extend_from_slice(line);
        local.push(b'\n');
    }
    local
}

/// Both logs merged by id: `local`, then the events only `remote` has.
pub fn merged_log(local: &[u8], remote: &[u8]) -> Vec<u8> {
    let fresh = lines_to_append(local, remote);
    with_lines_appended(local.to_vec(), &fresh)
}

/// `huddle merge-driver %O %A %B`: writes into A every event of A, then the
/// events of B that A lacks. Never conflicts.
/// Replaces A whole (temp file, rename), so a driver stopped midway leaves
/// A as git gave it, never half-written.
pub fn merge_driver(ours: &Path, theirs: &Path) -> std::io::Result<()> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })
    };
    let mine = read(ours)?;
    let other = read(theirs)?;
    crate::backend::files::write_atomic(ours, &merged_log(&mine, &other))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", ours.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a small deterministic generator (the seed is printed on failure).
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random log: events with ids from a small pool (so both sides share
    /// some, sometimes with different content), lines without ids, blank
    /// lines, CRLF line ends, bytes that are not UTF-8, and sometimes a last
    /// line without a newline.
    fn random_log(random: &mut Random) -> Vec<u8> {
        let mut log = Vec::new();
        for _ in 0..random.below(12) {
            let line: Vec<u8> = match random.below(7) {
                0..=2 => format!(
                    r#"{{"id":"e{}","interaction":1,"actor":"a","type":"note","content":"c{}","timestamp":"2026-01-01T00:00:00Z"}}"#,
                    random.below(10),
                    random.below(3)
                )
                .into_bytes(),
                3 => format!("shell line {}", random.below(5)).into_bytes(),
                4 => vec![0xff, b'x', b'0' + random.below(3) as u8],
                // A line of another tool that itself ends in a CR.
                5 => format!("cr line {}\r", random.below(3)).into_bytes(),
                _ => b"  ".to_vec(),
            };
            log.extend_from_slice(&line);
            log.extend_from_slice(if random.below(4) == 0 { b"\r\n" } else { b"\n" });
        }
        if random.below(4) == 0 {
            log.extend_from_slice(b"{\"id\":\"torn");
        }
        log
    }

    fn identities(log: &[u8]) -> Vec<Vec<u8>> {
        log_lines(log).map(identity).collect()
    }

    /// Whether `part` appears in `whole` in the same order.
    fn is_subsequence(part: &[&[u8]], whole: &[&[u8]]) -> bool {
        let mut rest = whole.iter();
        part.iter()
            .all(|line| rest.any(|candidate| candidate == line))
    }

    #[test]
    fn the_merge_by_id_is_a_union_with_each_event_once_and_each_sides_order_kept() {
        for seed in 1..=3000u64 {
            let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let local = random_log(&mut random);
            let remote = random_log(&mut random);
            let fresh = lines_to_append(&local, &remote);
            let merged = merged_log(&local, &remote);
            let context = format!(
                "seed {seed}\nlocal: {:?}\nremote: {:?}",
                String::from_utf8_lossy(&local),
                String::from_utf8_lossy(&remote)
            );

            // The local side is kept as it is, in its order: merged starts with it.
            assert!(merged.starts_with(&local), "{context}");
            // What is appended is the remote's lines as written, in the remote's order.
            let remote_lines: Vec<&[u8]> = remote.split(|b| *b == b'\n').collect();
            assert!(is_subsequence(&fresh, &remote_lines), "{context}");
            // Each appended event is new to the local side and appears once.
            let local_ids: HashSet<Vec<u8>> = identities(&local).into_iter().collect();
            let mut appended_ids = HashSet::new();
            for line in &fresh {
                let id = identity(without_cr(line));
                assert!(!local_ids.contains(&id), "{context}");
                assert!(appended_ids.insert(id), "appended twice; {context}");
            }
            // Union: every event of either side is in the result.
            let merged_ids: HashSet<Vec<u8>> = identities(&merged).into_iter().collect();
            let union: HashSet<Vec<u8>> = identities(&local)
                .into_iter()
                .chain(identities(&remote))
                .collect();
            assert_eq!(merged_ids, union, "{context}");
            // The lines of the result are the local lines, then the appended ones.
            let merged_lines: Vec<&[u8]> = log_lines(&merged).collect();
            let expected: Vec<&[u8]> = log_lines(&local)
                .chain(fresh.iter().map(|line| without_cr(line)))
                .collect();
            assert_eq!(merged_lines, expected, "{context}");
            // Merging again brings nothing: the result has every remote event.
            assert!(lines_to_append(&merged, &remote).is_empty(), "{context}");
            // Both orders hold the same events.
            let other_way: HashSet<Vec<u8>> = identities(&merged_log(&remote, &local))
                .into_iter()
                .collect();
            assert_eq!(other_way, union, "{context}");
        }
    }

    #[test]
    fn an_event_is_its_id_and_a_line_without_one_is_its_text() {
        let local = b"{\"id\":\"a\",\"content\":\"first\"}\nplain\n";
        let remote = b"{\"id\":\"a\",\"content\":\"edited\"}\nplain\r\nplain 2\n{\"id\":\"b\"}\n{\"id\":\"b\"}\n";
        let fresh = lines_to_append(local, remote);
        assert_eq!(
            fresh,
            vec![b"plain 2".as_slice(), b"{\"id\":\"b\"}".as_slice()]
        );
    }

    #[test]
    fn a_torn_last_line_is_sealed_before_appending() {
        assert_eq!(
            merged_log(b"{\"id\":\"a\"}\ntorn", b"x\n"),
            b"{\"id\":\"a\"}\ntorn\nx\n"
        );
        assert_eq!(merged_log(b"torn", b"torn\n"), b"torn");
    }

    #[test]
    fn a_line_ending_in_cr_is_appended_as_written_and_merging_again_adds_nothing() {
        let remote = b"x\r\r\n{\"id\":\"a\"}\r\ntorn\r\r";
        let merged = merged_log(b"", remote);
        assert_eq!(merged, b"x\r\r\n{\"id\":\"a\"}\r\ntorn\r\r\n");
        assert!(lines_to_append(&merged, remote).is_empty());
        assert_eq!(
            log_lines(&merged).collect::<Vec<_>>(),
            log_lines(remote).collect::<Vec<_>>()
        );
    }

    #[test]
    fn only_a_whole_json_object_has_an_id_and_of_duplicate_keys_the_last_counts() {
        let event = br#"{"id":"e1","interaction":1,"actor":"a","type":"note","content":"c","timestamp":"2026-01-01T00:00:00Z"}"#;
        // Lines that are not events: an array, invalid UTF-8 or a lone
        // surrogate in another field, a number out of range, a second value
        // after the object. None of them keeps the event with their id out.
        let broken: [&[u8]; 5] = [
            br#"["e1"]"#,
            b"{\"id\":\"e1\",\"actor\":\"\xff\"}",
            br#"{"id":"e1","content":"\ud800"}"#,
            br#"{"id":"e1","n":1e400}"#,
            br#"{"id":"e1"} {}"#,
        ];
        for line in broken {
            assert_eq!(identity(line), [b"line:".as_slice(), line].concat());
            let local = [line, b"\n"].concat();
            assert_eq!(lines_to_append(&local, event), vec![event.as_slice()]);
        }
        // As for the event parser, the last `id` counts.
        assert_eq!(identity(br#"{"id":"a","id":"b"}"#), b"id:b");
        let unset = br#"{"id":"a","id":null}"#;
        assert_eq!(identity(unset), [b"line:".as_slice(), unset].concat());
        assert!(lines_to_append(b"{\"id\":\"a\",\"id\":\"e1\"}\n", event).is_empty());
    }
}
