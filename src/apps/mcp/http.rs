//! `huddle mcp --http ADDR`: the streamable HTTP transport, each client its
//! own session, every request checked for the bearer token when one is set.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::apps::guard::Bearer;

use super::{Huddle, Shared};

/// The path clients connect to: `http://ADDR/mcp`.
pub const ENDPOINT: &str = "/mcp";

pub(super) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    token: Option<String>,
) -> Result<()> {
    let mut config = StreamableHttpServerConfig::default();
    if !addr.ip().is_loopback() {
        // Off loopback, clients name the host as they reach it; the token,
        // which a rebinding page cannot know, is the guard instead.
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(Huddle::new(shared.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mut app = axum::Router::new().nest_service(ENDPOINT, service);
    if let Some(token) = token {
        let expected = Bearer::new(&token);
        app = app.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let expected = expected.clone();
                async move { authorised(&expected, request, next).await }
            },
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("the listening address")?;
    // Tests and scripts read the address (the port, when 0 was asked for).
    eprintln!("huddle mcp: serving MCP on http://{bound}{ENDPOINT}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("MCP server on HTTP")
}

/// Lets through only requests carrying `Authorization: Bearer TOKEN`.
async fn authorised(expected: &Bearer, request: Request, next: Next) -> Response {
    if expected.authorises(request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "huddle mcp: this server needs `Authorization: Bearer TOKEN` (the --token it was started with)\n",
    )
        .into_response()
}
