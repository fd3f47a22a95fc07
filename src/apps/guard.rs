//! What every huddle HTTP server (`huddle mcp --http`, `huddle dashboard`)
//! checks the same way: where it may listen without a token, and the
//! bearer token on each request.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::model::event::ValidationError;

/// Refuses a bad token, and a non-loopback address without one: off
/// loopback anyone on the network could read (or, for MCP, write) the
/// huddle. `flag` names the address option, `env` the token's variable.
pub fn check_listen(
    flag: &'static str,
    env: &str,
    serving: &str,
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<(), ValidationError> {
    if let Some(token) = token {
        if token.trim().is_empty() {
            return Err(ValidationError::new("token", "must not be empty"));
        }
    }
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(ValidationError::new(
            flag,
            format!(
                "{addr} is not a loopback address: serving {serving} there needs --token \
                 (or {env}), which every request must then carry"
            ),
        ));
    }
    Ok(())
}

/// A bearer token, kept as its digest: digests are compared, so the time
/// taken says nothing about the token.
#[derive(Clone)]
pub struct Bearer {
    digest: [u8; 32],
}

impl Bearer {
    pub fn new(token: &str) -> Bearer {
        Bearer {
            digest: Sha256::digest(token.trim().as_bytes()).into(),
        }
    }

    /// True when `given` is the token.
    pub fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest == self.digest
    }

    /// What a browser keeps in a cookie instead of the token: its digest,
    /// in hex (the cookie then says nothing of the token itself).
    pub fn cookie_value(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// True when `value` is [`Bearer::cookie_value`].
    pub fn matches_cookie(&self, value: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(value.trim().as_bytes()).into();
        let expected: [u8; 32] = Sha256::digest(self.cookie_value().as_bytes()).into();
        given == expected
    }

    /// True when the request carries `Authorization: Bearer TOKEN`.
    pub fn authorises(&self, headers: &HeaderMap) -> bool {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|token| self.matches(token))
    }
}
