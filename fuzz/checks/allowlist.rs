//! The allowlist of alert sinks against an independent normalisation.
//!
//! The input's first line holds allowlist entries separated by spaces; the
//! rest is the URL a sink asks for. Two properties:
//!
//! - Safety, for every URL: what `grant` lets through reaches a server as
//!   the scheme, host and port of an entry, without credentials or a
//!   fragment, at a path that, decoded once, has no dot segment, no hidden
//!   separator and lies within the entry's path.
//! - Agreement, for plain URLs (the reference below understands them
//!   without the `url` crate): `grant` allows exactly what the reference does.

use huddle::plugin::Allowlist;
use url::Url;

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (first_line, requested) = text.split_once('\n').unwrap_or((&text, ""));
    let entries: Vec<String> = first_line
        .split(' ')
        .filter(|entry| !entry.is_empty())
        .map(str::to_string)
        .collect();
    let plain_entries: Option<Vec<Plain>> = entries.iter().map(|e| plain_entry(e)).collect();
    let allowlist = match Allowlist::parse(&entries) {
        Ok(allowlist) => allowlist,
        Err(error) => {
            assert!(
                plain_entries.is_none(),
                "plain entries {entries:?} are refused: {error}"
            );
            return;
        }
    };
    let granted = allowlist.grant(requested);

    if let Err(refusal) = &granted {
        assert!(
            !refusal.url.chars().any(char::is_control),
            "a refusal quotes a control character: {refusal:?}"
        );
    }
    if let Ok(url) = &granted {
        check_safe(&entries, requested, url);
    }
    if let (Some(plain_entries), Some(plain_url)) = (&plain_entries, plain_url(requested)) {
        let expected = plain_entries.iter().any(|entry| entry.grants(&plain_url));
        assert_eq!(
            granted.is_ok(),
            expected,
            "{entries:?} and {requested:?}: grant says {granted:?}, the reference {expected}"
        );
    }
}

/// What the server receives lies within one of the entries.
fn check_safe(entries: &[String], requested: &str, url: &Url) {
    assert!(
        !requested.contains(|c: char| c.is_control() || c.is_whitespace() || c == '\\' || c == '#'),
        "granted {requested:?}, which has a character servers read differently"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "granted {requested:?} with credentials"
    );
    assert!(
        url.fragment().is_none(),
        "granted {requested:?} with a fragment"
    );
    let path = server_path(url.path()).unwrap_or_else(|| {
        panic!(
            "granted {requested:?}, whose path {} is ambiguous",
            url.path()
        )
    });
    let within = entries.iter().any(|entry| {
        let Ok(entry) = Url::parse(entry) else {
            return false;
        };
        entry.scheme() == url.scheme()
            && host(&entry).is_some()
            && host(&entry) == host(url)
            && entry.port_or_known_default() == url.port_or_known_default()
            && server_path(entry.path()).is_some_and(|prefix| path_within(&prefix, &path))
    });
    assert!(
        within,
        "granted {requested:?} ({url}), outside every entry of {entries:?}"
    );
}

/// A host as a resolver sees it: one trailing dot (the DNS root) is the same host.
fn host(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(host.strip_suffix('.').unwrap_or(host).to_string())
}

/// The path a server sees after decoding once, or None if servers may
/// disagree about it: a dot segment, a separator or `;` in disguise, a `%`
/// that is not an escape or one that survives decoding, a control or
/// non-ASCII byte, an empty segment before the last.
fn server_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let segments: Vec<&str> = rest.split('/').collect();
    let mut decoded_path = String::new();
    for (index, segment) in segments.iter().enumerate() {
        let decoded = decode(segment)?;
        let last = index + 1 == segments.len();
        let ambiguous = (decoded.is_empty() && !last)
            || decoded == "."
            || decoded == ".."
            || decoded
                .bytes()
                .any(|b| matches!(b, b'/' | b'\\' | b';' | b'%') || !b.is_ascii_graphic());
        if ambiguous {
            return None;
        }
        decoded_path.push('/');
        decoded_path.push_str(&decoded);
    }
    Some(decoded_path)
}

/// `%XX` escapes decoded; None for a `%` without two hex digits or a result
/// that is not ASCII.
fn decode(segment: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bytes = segment.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = (bytes.next()? as char).to_digit(16)?;
            let low = (bytes.next()? as char).to_digit(16)?;
            out.push((high * 16 + low) as u8);
        } else {
            out.push(b);
        }
    }
    out.is_ascii()
        .then(|| String::from_utf8(out).ok())
        .flatten()
}

/// `prefix` grants `path`: a prefix ending in `/` grants what starts with
/// it; any other grants itself and what lies below it.
fn path_within(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|below| below.starts_with('/'))
    }
}

/// A URL the reference understands on its own.
#[derive(Debug)]
struct Plain {
    scheme: &'static str,
    host: String,
    port: u32,
    /// Decoded, starting with `/`.
    path: String,
}

impl Plain {
    fn grants(&self, url: &Plain) -> bool {
        self.scheme == url.scheme
            && self.host == url.host
            && self.port == url.port
            && path_within(&self.path, &url.path)
    }
}

fn plain_entry(entry: &str) -> Option<Plain> {
    if entry.contains('?') {
        return None;
    }
    plain_url(entry)
}

/// `http(s)://host[:port][/path][?query]` where the host is a lowercase or
/// uppercase ASCII domain (labels starting with a letter, no punycode) or a
/// dotted-decimal IPv4 address, the path is segments of unreserved
/// characters (or escapes of them) without dot segments, and the query is
/// unreserved characters, `=` and `&`. Anything else: None (no opinion).
fn plain_url(url: &str) -> Option<Plain> {
    let (scheme, rest) = url.split_once("://")?;
    let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => ("http", 80),
        "https" => ("https", 443),
        _ => return None,
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query {
        if !query
            .bytes()
            .all(|b| is_unreserved(b) || b == b'=' || b == b'&')
        {
            return None;
        }
    }
    let (authority, path) = match before_query.find('/') {
        Some(slash) => before_query.split_at(slash),
        None => (before_query, "/"),
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (host, port.parse::<u32>().ok().filter(|p| *p <= 65535)?)
        }
        None => (authority, default_port),
    };
    Some(Plain {
        scheme,
        host: plain_host(host)?,
        port,
        path: plain_path(path)?,
    })
}

fn plain_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let ipv4 = labels.len() == 4
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 3
                && label.bytes().all(|b| b.is_ascii_digit())
                && (label.len() == 1 || !label.starts_with('0'))
                && label.parse::<u32>().is_ok_and(|n| n <= 255)
        });
    let domain = host.len() <= 253
        && labels.iter().all(|label| {
            let bytes = label.as_bytes();
            (1..=63).contains(&bytes.len())
                && bytes[0].is_ascii_lowercase()
                && bytes[bytes.len() - 1] != b'-'
                && !(bytes.len() >= 4 && &bytes[2..4] == b"--")
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        });
    (ipv4 || domain).then_some(host)
}

fn plain_path(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let mut decoded_path = String::new();
    for (index, segment) in segments.iter().enumerate() {
        let mut decoded = String::new();
        let mut bytes = segment.bytes();
        while let Some(b) = bytes.next() {
            let b = if b == b'%' {
                let high = (bytes.next()? as char).to_digit(16)?;
                let low = (bytes.next()? as char).to_digit(16)?;
                (high * 16 + low) as u8
            } else {
                b
            };
            if !is_unreserved(b) {
                return None;
            }
            decoded.push(b as char);
        }
        let last = index + 1 == segments.len();
        if (decoded.is_empty() && !last) || decoded == "." || decoded == ".." {
            return None;
        }
        decoded_path.push('/');
        decoded_path.push_str(&decoded);
    }
    Some(decoded_path)
}

/// RFC 3986 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}
