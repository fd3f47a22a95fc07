//! The HTTP capability of alert sinks.
//!
//! Contract: a sink may POST only to URLs its allowlist in huddle.toml grants.
//! Fail closed, everywhere:
//!
//! - An empty allowlist denies everything. No wildcards.
//! - An entry is a prefix: a request must have the same scheme, the same host
//!   (compared after the URL standard's normalisation: case, IDNA, IPv4
//!   spellings, IPv6 compression; one trailing dot of a domain ignored) and
//!   the same port (a default port written or not), and a path that lies
//!   within the entry's path at a segment boundary (`http://h/hooks/` grants
//!   `http://h/hooks/a`, not `http://h/hooksevil`). Paths are compared
//!   segment by segment after percent-decoding, so `/hook/%78` is `/hook/x`.
//! - Anything whose meaning a server could read differently from ours is
//!   refused, not interpreted: credentials (`user:pass@`), a fragment,
//!   backslashes, encoded separators (`%2F`, `%5C`, `%3B`, any case), dot
//!   segments (`.`, `..`, `%2e`), `;` path parameters, empty segments,
//!   control characters, whitespace, broken or double percent-encoding,
//!   non-ASCII path characters (some servers fold look-alikes).
//! - Redirects are not followed (an allowed server cannot bounce a request
//!   elsewhere), proxy environment variables are ignored (only a `proxy` the
//!   operator configured is used), every request has a timeout, the response
//!   body is read up to a bound, and one plugin call makes a bounded number
//!   of requests.
//!
//! [`Allowlist::grant`] is a pure function of the list and the URL text, so
//! it can be fuzzed against an independent normalisation.

use std::io::Read;
use std::time::{Duration, Instant};

use url::{Host, Url};

/// Longest URL a sink may ask for.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// Longest URL quoted back in a refusal (status lines, logs).
const SHOWN_URL_CHARS: usize = 200;

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} is not allowed: {reason}")]
pub struct Refusal {
    /// The URL as asked for, shortened, with credentials and control
    /// characters masked.
    pub url: String,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("this sink's allowlist is empty, which denies every URL")]
    EmptyAllowlist,
    #[error("not a URL: {0}")]
    NotAUrl(String),
    #[error("longer than {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("only http:// and https:// URLs are allowed")]
    Scheme,
    #[error("it carries credentials (user:password@); only the operator configures those")]
    Userinfo,
    #[error("it has a #fragment")]
    Fragment,
    #[error("it contains a backslash")]
    Backslash,
    #[error("it contains a control character or whitespace")]
    ControlCharacter,
    #[error("its path has an encoded separator (%2F, %5C or %3B)")]
    EncodedSeparator,
    #[error("its path has a dot segment (. or .., also percent-encoded)")]
    DotSegment,
    #[error("its path has a ; parameter")]
    PathParameter,
    #[error("its path has an empty segment (//)")]
    EmptySegment,
    #[error("its path has a % not followed by two hex digits")]
    BadPercentEncoding,
    #[error("its path is percent-encoded twice (%25 followed by two hex digits)")]
    DoubleEncoding,
    #[error("its path has a non-ASCII character (servers may fold look-alikes such as ．into .)")]
    NonAscii,
    #[error("an allowlist entry cannot have a query")]
    QueryInEntry,
    #[error("it is not on this sink's allowlist ({0})")]
    NotListed(String),
    #[error("this plugin has no HTTP capability")]
    NoCapability,
}

impl Refusal {
    /// A request from a plugin granted no HTTP at all.
    pub fn no_capability(url: &str) -> Refusal {
        Refusal {
            url: shown(url),
            reason: Reason::NoCapability,
        }
    }
}

/// One allowlist entry: where requests may go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    /// The entry as written, for messages.
    written: String,
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Decoded path segments every granted path starts with.
    segments: Vec<Vec<u8>>,
    /// The entry's path ends with `/`: a granted path has at least one
    /// segment more (`/hooks/` grants `/hooks/` and `/hooks/a`, not `/hooks`).
    directory: bool,
}

/// URLs a sink may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Prefix>,
}

impl Allowlist {
    /// Parses every entry; an entry that is not a plain http(s) URL prefix
    /// is an error naming it, so a typo does not silently deny (or allow)
    /// anything.
    pub fn parse(entries: &[String]) -> Result<Allowlist, String> {
        let entries = entries
            .iter()
            .map(|entry| {
                let (url, segments) = strict_parse(entry)
                    .map_err(|reason| format!("allowlist entry {entry:?} is refused: {reason}"))?;
                if url.query().is_some() {
                    return Err(format!(
                        "allowlist entry {entry:?} is refused: {}",
                        Reason::QueryInEntry
                    ));
                }
                let directory = segments.last().is_some_and(Vec::is_empty);
                let mut segments = segments;
                if directory {
                    segments.pop();
                }
                Ok(Prefix {
                    written: entry.clone(),
                    scheme: url.scheme().to_string(),
                    host: host_key(&url).unwrap_or_default(),
                    port: url.port_or_known_default(),
                    segments,
                    directory,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    /// The URL to request if the list grants `url`, or why not.
    pub fn grant(&self, url: &str) -> Result<Url, Refusal> {
        let refuse = |reason| Refusal {
            url: shown(url),
            reason,
        };
        if self.entries.is_empty() {
            return Err(refuse(Reason::EmptyAllowlist));
        }
        let (requested, segments) = strict_parse(url).map_err(refuse)?;
        let host = host_key(&requested);
        let granted = self.entries.iter().any(|entry| {
            entry.scheme == requested.scheme()
                && Some(&entry.host) == host.as_ref()
                && entry.port == requested.port_or_known_default()
                && segments.starts_with(&entry.segments)
                && (!entry.directory || segments.len() > entry.segments.len())
        });
        if granted {
            Ok(requested)
        } else {
            let list: Vec<&str> = self.entries.iter().map(|e| e.written.as_str()).collect();
            Err(refuse(Reason::NotListed(list.join(", "))))
        }
    }
}

/// Parses an absolute http(s) URL, refusing everything the module doc lists,
/// and returns it with its decoded path segments (`/a/b/` is `a`, `b`, ``).
fn strict_parse(raw: &str) -> Result<(Url, Vec<Vec<u8>>), Reason> {
    if raw.len() > MAX_URL_BYTES {
        return Err(Reason::TooLong);
    }
    // The URL standard silently drops tabs and newlines and trims spaces
    // and controls: `/.\t./` would become `/../`. Refuse them all first.
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Reason::ControlCharacter);
    }
    // For http(s) the standard reads `\` as `/`; servers differ.
    if raw.contains('\\') {
        return Err(Reason::Backslash);
    }
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| Reason::NotAUrl("expected http://host/path or https://host/path".into()))?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(Reason::Scheme);
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(Reason::Userinfo);
    }
    if after.contains('#') {
        return Err(Reason::Fragment);
    }
    let raw_path = after.split('?').next().unwrap_or_default();
    let segments = checked_segments(if raw_path.is_empty() { "/" } else { raw_path })?;
    let url = Url::parse(raw).map_err(|e| Reason::NotAUrl(e.to_string()))?;
    if url.host().is_none() {
        return Err(Reason::NotAUrl("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Reason::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(Reason::Fragment);
    }
    // What the server will receive must mean what was checked; the
    // checks above leave the parser nothing but escaping to change.
    if checked_segments(url.path())? != segments {
        return Err(Reason::NotAUrl("its path changes when normalised".into()));
    }
    Ok((url, segments))
}

/// The percent-decoded segments of a path starting with `/`, refusing dot
/// segments, separators in disguise, parameters and empty segments (a
/// trailing `/` is the one empty segment allowed).
fn checked_segments(path: &str) -> Result<Vec<Vec<u8>>, Reason> {
    let Some(path) = path.strip_prefix('/') else {
        return Err(Reason::NotAUrl("the path must start with /".into()));
    };
    if path.contains(';') {
        return Err(Reason::PathParameter);
    }
    let raw_segments: Vec<&str> = path.split('/').collect();
    let last = raw_segments.len() - 1;
    raw_segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            let decoded = percent_decode(segment)?;
            if decoded.is_empty() && i != last {
                return Err(Reason::EmptySegment);
            }
            if decoded == b"." || decoded == b".." {
                return Err(Reason::DotSegment);
            }
            if decoded.iter().any(|b| matches!(b, b'/' | b'\\')) {
                return Err(Reason::EncodedSeparator);
            }
            if decoded.contains(&b';') {
                return Err(Reason::EncodedSeparator);
            }
            if decoded.iter().any(|b| b.is_ascii_control()) {
                return Err(Reason::ControlCharacter);
            }
            if !decoded.is_ascii() {
                return Err(Reason::NonAscii);
            }
            // A server that decodes twice would see what this one hides.
            if decoded
                .windows(3)
                .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
            {
                return Err(Reason::DoubleEncoding);
            }
            Ok(decoded)
        })
        .collect()
}

fn percent_decode(segment: &str) -> Result<Vec<u8>, Reason> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Reason::BadPercentEncoding)?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    Ok(decoded)
}

/// The host as compared: already normalised by the parser; a domain's one
/// trailing dot (the DNS root) names the same host.
fn host_key(url: &Url) -> Option<String> {
    Some(match url.host()? {
        Host::Domain(domain) => domain.strip_suffix('.').unwrap_or(domain).to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    })
}

/// A URL as quoted in a refusal: credentials masked, controls escaped, cut.
fn shown(raw: &str) -> String {
    let masked = match raw.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => raw.to_string(),
            }
        }
        None => raw.to_string(),
    };
    let mut out = String::new();
    for (count, c) in masked.chars().enumerate() {
        if count == SHOWN_URL_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a sink may do over HTTP.
#[derive(Debug, Clone)]
pub struct HttpGrant {
    pub allow: Allowlist,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    /// The proxy the operator configured for this sink; none means direct
    /// connections whatever the environment says.
    pub proxy: Option<ureq::Proxy>,
    /// Request header names (lower case) a sink may set (`allow_headers`).
    pub allow_headers: Vec<String>,
}

pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// Requests one plugin call may make: time spent waiting on them is not
/// charged to the call's CPU deadline, so their number must be bounded.
pub const MAX_REQUESTS_PER_CALL: u32 = 8;

/// Why a permitted request failed (or was not made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "not allowed: this call already made {MAX_REQUESTS_PER_CALL} requests, the limit per call"
    )]
    TooManyRequests,
    #[error("POST {url} failed: {message}")]
    Failed { url: String, message: String },
    #[error("POST {url} failed: timeout after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("not allowed: request header {name:?} is not in the sink's allow_headers ({allowed})")]
    HeaderNotAllowed { name: String, allowed: String },
}

/// A response: the status and at most `max_response_bytes` of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
    /// The body was longer and was cut at the limit.
    pub truncated: bool,
}

impl HttpGrant {
    pub fn new(allow: Allowlist) -> HttpGrant {
        HttpGrant {
            allow,
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            proxy: None,
            allow_headers: Vec::new(),
        }
    }

    /// Refuses a header whose name the sink's configuration does not list.
    fn check_headers(&self, headers: &[(String, String)]) -> Result<(), HttpError> {
        for (name, _) in headers {
            if !self
                .allow_headers
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
            {
                let allowed = if self.allow_headers.is_empty() {
                    "none are allowed".to_string()
                } else {
                    self.allow_headers.join(", ")
                };
                return Err(HttpError::HeaderNotAllowed {
                    name: name.chars().take(100).collect(),
                    allowed,
                });
            }
        }
        Ok(())
    }

    /// Performs the POST if the allowlist grants it.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.post_with_headers(url, content_type, &[], body)
    }

    /// Performs the POST with `headers` if the allowlist grants the URL and
    /// `allow_headers` every header name.
    pub fn post_with_headers(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let url = self.allow.grant(url)?;
        self.check_headers(headers)?;
        let failed = |message: String| HttpError::Failed {
            url: shown(url.as_str()),
            message,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            // ureq reads ALL_PROXY/HTTPS_PROXY/HTTP_PROXY unless told otherwise.
            .proxy(self.proxy.clone())
            .build()
            .into();
        let mut request = agent
            .post(url.as_str())
            .header("content-type", content_type);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = request.send(body).map_err(|e| match e {
            ureq::Error::Timeout(_) => HttpError::Timeout {
                url: shown(url.as_str()),
                after: self.timeout,
            },
            other => failed(other.to_string()),
        })?;
        let status = response.status().as_u16();
        // One byte past the limit tells a cut body from one that fits.
        let mut bytes = Vec::new();
        let read = response
            .body_mut()
            .as_reader()
            .take(self.max_response_bytes.saturating_add(1))
            .read_to_end(&mut bytes);
        if let Err(error) = read {
            tracing::debug!(%error, "reading the response body failed; keeping what arrived");
        }
        let truncated = bytes.len() as u64 > self.max_response_bytes;
        bytes.truncate(usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX));
        Ok(HttpResponse {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            truncated,
        })
    }
}

/// The HTTP capability for the length of one plugin call: counts requests
/// and the wall time spent waiting on them (excused from the CPU deadline).
#[derive(Debug)]
pub struct HttpSession {
    grant: HttpGrant,
    /// Calls of `post`, refused or not.
    attempts: u32,
    /// Requests made.
    requests: u32,
    waited: Duration,
}

impl HttpSession {
    pub fn new(grant: HttpGrant) -> HttpSession {
        HttpSession {
            grant,
            attempts: 0,
            requests: 0,
            waited: Duration::ZERO,
        }
    }

    pub fn post(
        &mut self,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.post_with_headers(url, content_type, &[], body)
    }

    pub fn post_with_headers(
        &mut self,
        url: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        self.attempts = self.attempts.saturating_add(1);
        // Refusals cost nothing and do not use up the requests; they are
        // still bounded by the call's deadline.
        self.grant.allow.grant(url)?;
        self.grant.check_headers(headers)?;
        if self.requests >= MAX_REQUESTS_PER_CALL {
            return Err(HttpError::TooManyRequests);
        }
        self.requests += 1;
        let started = Instant::now();
        let outcome = self
            .grant
            .post_with_headers(url, content_type, headers, body);
        self.waited += started.elapsed();
        outcome
    }

    /// Whether a failure of the latest `post` is worth a line in huddle's
    /// log: the first few of a call are, a plugin looping on refusals
    /// must not flood the log.
    pub fn worth_logging(&self) -> bool {
        self.attempts <= MAX_REQUESTS_PER_CALL
    }

    pub fn max_response_bytes(&self) -> u64 {
        self.grant.max_response_bytes
    }

    /// Wall time spent in requests since the last call.
    pub fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn reason(allow: &Allowlist, url: &str) -> Reason {
        allow
            .grant(url)
            .expect_err(&format!("{url} must be refused"))
            .reason
    }

    #[test]
    fn empty_list_denies_everything() {
        let err = list(&[]).grant("http://127.0.0.1:9099/hook").unwrap_err();
        assert_eq!(err.reason, Reason::EmptyAllowlist);
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn matches_scheme_host_port_and_path_prefix() {
        let allow = list(&["http://127.0.0.1:9099/hooks/"]);
        assert!(allow.grant("http://127.0.0.1:9099/hooks/a").is_ok());
        assert!(allow.grant("http://127.0.0.1:9099/hooks/").is_ok());
        assert!(allow.grant("http://127.0.0.1:9099/hooks/a?x=1").is_ok());
        for denied in [
            "https://127.0.0.1:9099/hooks/a",
            "http://127.0.0.1:9098/hooks/a",
            "http://localhost:9099/hooks/a",
            "http://127.0.0.1:9099/other",
            "http://127.0.0.1:9099/hooks",
            "http://127.0.0.1:9099/hooksevil",
            "http://127.0.0.1:19099/hooks/a",
            "http://127.0.0.1:9099/Hooks/a",
            "http://[::ffff:127.0.0.1]:9099/hooks/a",
        ] {
            let err = allow.grant(denied).unwrap_err();
            assert!(
                matches!(err.reason, Reason::NotListed(_))
                    && err.to_string().contains("not on this sink's allowlist"),
                "{denied}: {err}"
            );
        }
        let exact = list(&["http://h.example/hook"]);
        assert!(exact.grant("http://h.example/hook").is_ok());
        assert!(exact.grant("http://h.example/hook/").is_ok());
        assert!(exact.grant("http://h.example/hook/sub").is_ok());
        assert!(exact.grant("http://h.example/hookx").is_err());
        let everything = list(&["https://h.example"]);
        assert!(everything.grant("https://h.example/").is_ok());
        assert!(everything.grant("https://h.example").is_ok());
        assert!(everything.grant("https://h.example/a/b").is_ok());
    }

    #[test]
    fn the_filed_bypasses_are_refused() {
        let allow = list(&["http://127.0.0.1:9099/hook/"]);
        assert_eq!(
            reason(&allow, "http://u:p@127.0.0.1:9099/hook/x"),
            Reason::Userinfo
        );
        assert_eq!(
            reason(&allow, "http://127.0.0.1:9099/hook/..%2Fadmin"),
            Reason::EncodedSeparator
        );
    }

    #[test]
    fn ambiguous_urls_are_refused_with_their_reason() {
        let allow = list(&["http://127.0.0.1:9099/hook/"]);
        let base = "http://127.0.0.1:9099";
        for (path, expected) in [
            ("/hook/..%2fadmin", Reason::EncodedSeparator),
            ("/hook/a%5Cb", Reason::EncodedSeparator),
            ("/hook/a%5cb", Reason::EncodedSeparator),
            ("/hook/a%3Bb", Reason::EncodedSeparator),
            ("/hook/../admin", Reason::DotSegment),
            ("/hook/./x", Reason::DotSegment),
            ("/hook/%2e%2e/admin", Reason::DotSegment),
            ("/hook/%2E./admin", Reason::DotSegment),
            ("/hook/.%2E", Reason::DotSegment),
            ("/hook/%2e", Reason::DotSegment),
            ("/hook/x;jsessionid=1", Reason::PathParameter),
            ("/hook;/x", Reason::PathParameter),
            ("/hook//x", Reason::EmptySegment),
            ("/hook/x%zz", Reason::BadPercentEncoding),
            ("/hook/x%2", Reason::BadPercentEncoding),
            ("/hook/x%00", Reason::ControlCharacter),
            ("/hook/%252e%252e/admin", Reason::DoubleEncoding),
            ("/hook/x%252Fy", Reason::DoubleEncoding),
            ("/hook/\u{ff0e}\u{ff0e}/admin", Reason::NonAscii),
            ("/hook/caf%C3%A9", Reason::NonAscii),
            ("/hook/x#frag", Reason::Fragment),
            ("/hook/x?a#", Reason::Fragment),
            ("/hook/.\t./admin", Reason::ControlCharacter),
            ("/hook/x\n", Reason::ControlCharacter),
            ("/hook/x y", Reason::ControlCharacter),
            ("/hook\\..\\admin", Reason::Backslash),
        ] {
            assert_eq!(reason(&allow, &format!("{base}{path}")), expected, "{path}");
        }
        for (url, expected) in [
            ("http://@127.0.0.1:9099/hook/x", Reason::Userinfo),
            ("http://u@127.0.0.1:9099/hook/x", Reason::Userinfo),
            (
                "http://127.0.0.1:9099@evil.example/hook/x",
                Reason::Userinfo,
            ),
            ("http:\\\\127.0.0.1:9099/hook/x", Reason::Backslash),
            ("ftp://127.0.0.1:9099/hook/x", Reason::Scheme),
            (" http://127.0.0.1:9099/hook/x", Reason::ControlCharacter),
        ] {
            assert_eq!(reason(&allow, url), expected, "{url}");
        }
        assert!(matches!(
            reason(&allow, "http:127.0.0.1:9099/hook/x"),
            Reason::NotAUrl(_)
        ));
        assert!(matches!(
            reason(&allow, "http:/127.0.0.1:9099/hook/x"),
            Reason::NotAUrl(_)
        ));
        assert_eq!(
            reason(
                &allow,
                &format!("{base}/hook/{}", "a".repeat(MAX_URL_BYTES))
            ),
            Reason::TooLong
        );
    }

    #[test]
    fn equal_urls_match() {
        let allow = list(&["http://Hooks.Example.com/hook/"]);
        for same in [
            "http://hooks.example.com/hook/x",
            "HTTP://HOOKS.EXAMPLE.COM/hook/x",
            "http://hooks.example.com:80/hook/x",
            "http://hooks.example.com./hook/x",
            "http://hooks.example.com/%68ook/x",
            "http://hooks.example.com/hook/%78",
        ] {
            assert!(allow.grant(same).is_ok(), "{same}: {:?}", allow.grant(same));
        }
        let ip = list(&["http://127.0.0.1:9099/hook/"]);
        for same in [
            "http://127.1:9099/hook/x",
            "http://0x7f.0.0.1:9099/hook/x",
            "http://2130706433:9099/hook/x",
        ] {
            assert!(ip.grant(same).is_ok(), "{same}: {:?}", ip.grant(same));
        }
        let v6 = list(&["http://[::1]:9099/hook/"]);
        assert!(v6.grant("http://[0:0:0:0:0:0:0:1]:9099/hook/x").is_ok());
        assert!(v6.grant("http://[::2]:9099/hook/x").is_err());
        assert!(v6.grant("http://127.0.0.1:9099/hook/x").is_err());
        let idn = list(&["https://bücher.example/"]);
        assert!(idn.grant("https://xn--bcher-kva.example/a").is_ok());
        assert!(idn.grant("https://BÜCHER.example/a").is_ok());
        assert!(idn.grant("https://bucher.example/a").is_err());
        let https = list(&["https://h.example:443/"]);
        assert!(https.grant("https://h.example/x").is_ok());
        assert!(https.grant("https://h.example:8443/x").is_err());
        assert!(https.grant("http://h.example:443/x").is_err());
    }

    #[test]
    fn a_refusal_masks_credentials_and_controls() {
        let err = list(&["http://h/"])
            .grant("http://user:secret@h/x\u{1b}]52")
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("not allowed"), "{text}");
        let long = format!("http://h/{}", "a".repeat(10_000));
        assert!(
            list(&["http://g/"])
                .grant(&long)
                .unwrap_err()
                .url
                .chars()
                .count()
                <= 201
        );
    }

    #[test]
    fn a_plugin_looping_on_refusals_is_logged_only_a_few_times() {
        let mut session = HttpSession::new(HttpGrant::new(list(&["http://h/"])));
        let logged = (0..100)
            .filter(|_| {
                let refused = session.post("http://elsewhere/", "text/plain", b"");
                assert!(matches!(refused, Err(HttpError::Refused(_))));
                session.worth_logging()
            })
            .count();
        assert_eq!(logged, MAX_REQUESTS_PER_CALL as usize);
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, needle) in [
            ("ftp://x/", "ftp://x/"),
            ("not a url", "not a url"),
            ("http://u:p@h/", "credentials"),
            ("http://h/a/../b", "dot segment"),
            ("http://h/a?x=1", "query"),
            ("http://h/a#x", "fragment"),
        ] {
            let err = Allowlist::parse(&[entry.into()]).unwrap_err();
            assert!(err.contains(entry) && err.contains(needle), "{err}");
        }
    }
}
