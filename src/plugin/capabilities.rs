//! The HTTP capability of alert sinks.
//!
//! Contract: a sink may POST only to URLs on its allowlist in huddle.toml. An
//! empty allowlist denies everything. An entry is a URL prefix: the request
//! must have the same scheme, host and port, and a path that starts with the
//! entry's path at a segment boundary (`http://h/hooks/` allows
//! `http://h/hooks/a`, not `http://h/hooksevil`). No wildcards. Redirects are
//! not followed, so an allowed server cannot bounce a request elsewhere. The
//! host makes the request with a timeout and reads at most a bounded body.

use std::time::Duration;

use url::Url;

/// URLs a sink may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Url>,
}

impl Allowlist {
    /// Parses every entry; an entry that is not an http(s) URL is an error
    /// naming it, so a typo does not silently deny (or allow) anything.
    pub fn parse(entries: &[String]) -> Result<Allowlist, String> {
        let entries = entries
            .iter()
            .map(|entry| {
                let url = Url::parse(entry)
                    .map_err(|e| format!("allowlist entry {entry:?} is not a URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(format!(
                        "allowlist entry {entry:?} must be an http:// or https:// URL with a host"
                    ));
                }
                Ok(url)
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    /// The parsed URL if it is allowed, or a sentence saying why not.
    pub fn grant(&self, url: &str) -> Result<Url, String> {
        let requested = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if self.entries.is_empty() {
            return Err(format!(
                "{url} is not allowed: this sink's allowlist is empty, which denies every URL"
            ));
        }
        let allowed = self.entries.iter().any(|entry| {
            entry.scheme() == requested.scheme()
                && entry.host() == requested.host()
                && entry.port_or_known_default() == requested.port_or_known_default()
                && path_within(entry.path(), requested.path())
        });
        if allowed {
            Ok(requested)
        } else {
            let list: Vec<&str> = self.entries.iter().map(Url::as_str).collect();
            Err(format!(
                "{url} is not on this sink's allowlist ({})",
                list.join(", ")
            ))
        }
    }
}

fn path_within(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix == path {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// What a sink may do over HTTP.
#[derive(Debug, Clone)]
pub struct HttpGrant {
    pub allow: Allowlist,
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024;

impl HttpGrant {
    pub fn new(allow: Allowlist) -> HttpGrant {
        HttpGrant {
            allow,
            timeout: DEFAULT_HTTP_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Performs the POST if the allowlist grants it. Returns status and body.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, String), String> {
        let url = self.allow.grant(url)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let mut response = agent
            .post(url.as_str())
            .header("content-type", content_type)
            .send(body)
            .map_err(|e| format!("POST {url} failed: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_response_bytes)
            .read_to_vec()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_list_denies_everything() {
        let err = list(&[]).grant("http://127.0.0.1:9099/hook").unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn matches_scheme_host_port_and_path_prefix() {
        let allow = list(&["http://127.0.0.1:9099/hooks/"]);
        assert!(allow.grant("http://127.0.0.1:9099/hooks/a").is_ok());
        assert!(allow.grant("http://127.0.0.1:9099/hooks/").is_ok());
        for denied in [
            "https://127.0.0.1:9099/hooks/a",
            "http://127.0.0.1:9098/hooks/a",
            "http://localhost:9099/hooks/a",
            "http://127.0.0.1:9099/other",
            "http://127.0.0.1:9099/hooksevil",
            "http://127.0.0.1:19099/hooks/a",
        ] {
            let err = allow.grant(denied).unwrap_err();
            assert!(
                err.contains("not on this sink's allowlist"),
                "{denied}: {err}"
            );
        }
        let exact = list(&["http://h.example/hook"]);
        assert!(exact.grant("http://h.example/hook").is_ok());
        assert!(exact.grant("http://h.example/hook/sub").is_ok());
        assert!(exact.grant("http://h.example/hookx").is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Allowlist::parse(&["ftp://x/".into()]).unwrap_err();
        assert!(err.contains("ftp://x/"), "{err}");
        let err = Allowlist::parse(&["not a url".into()]).unwrap_err();
        assert!(err.contains("not a url"), "{err}");
    }
}
