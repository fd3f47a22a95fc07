//! The merge by id: pure functions shared by the sync, the merge driver
//! (`huddle merge-driver`) and the fuzz target.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Event identity for merging: the id, or the whole line for lines without one.
fn identity(line: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<LastId>(line) {
        Ok(LastId(Some(id))) => [b"id:".as_slice(), id.as_bytes()].concat(),
        _ => [b"line:".as_slice(), line].concat(),
    }
}

/// The `id` of a JSON object line as the event parser reads it: the last
/// `id` key counts (a line naming two ids is the event with the second),
/// and an `id` that is not a string makes no id.
struct LastId(Option<String>);

impl<'de> Deserialize<'de> for LastId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<LastId, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LastId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LastId, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "id" {
                        id = match map.next_value::<serde_json::Value>()? {
                            serde_json::Value::String(id) => Some(id),
                            _ => None,
                        };
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(LastId(id))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The lines of a log, without their line ends (`\n` or `\r\n`), skipping
/// blank ones. A last line without a newline counts as a line.
pub fn log_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

/// The merge by id: the lines of `remote` whose events `local` lacks, in
/// `remote`'s order, each event once. Appending them to `local` gives the
/// union of both logs with each side's order kept: `local` as it is, then
/// what only `remote` had. An event is its `id`; a line without one (from
/// another tool) is its text.
pub fn lines_to_append<'a>(local: &[u8], remote: &'a [u8]) -> Vec<&'a [u8]> {
    let known: HashSet<Vec<u8>> = log_lines(local).map(identity).collect();
    let mut seen = HashSet::new();
    log_lines(remote)
        .filter(|line| {
            let id = identity(line);
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
    crate::files::write_atomic(ours, &merged_log(&mine, &other))
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
            let line: Vec<u8> = match random.below(6) {
                0..=2 => format!(
                    r#"{{"id":"e{}","interaction":1,"actor":"a","type":"note","content":"c{}","timestamp":"2026-01-01T00:00:00Z"}}"#,
                    random.below(10),
                    random.below(3)
                )
                .into_bytes(),
                3 => format!("shell line {}", random.below(5)).into_bytes(),
                4 => vec![0xff, b'x', b'0' + random.below(3) as u8],
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
            // What is appended is the remote's, in the remote's order.
            let remote_lines: Vec<&[u8]> = log_lines(&remote).collect();
            assert!(is_subsequence(&fresh, &remote_lines), "{context}");
            // Each appended event is new to the local side and appears once.
            let local_ids: HashSet<Vec<u8>> = identities(&local).into_iter().collect();
            let mut appended_ids = HashSet::new();
            for line in &fresh {
                let id = identity(line);
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
            let expected: Vec<&[u8]> = log_lines(&local).chain(fresh.iter().copied()).collect();
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
}
