//! `huddle dashboard` (and `huddle run --dashboard ADDR`): a read-only
//! health page for people, with JSON, a live stream, a health check and
//! Prometheus metrics for machines. Thin: the status read model, the feed,
//! health and metrics are services; this module serves them over HTTP.
//!
//! Routes: `/` (the page), `/panel` (its live part, re-fetched by the
//! page's script), `/assets/*` (embedded), `/api/status`, `/api/events`,
//! `/api/stream` (Server-Sent Events), `/healthz`, `/metrics`.

mod page;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::apps::guard::{check_listen, Bearer};
use crate::backend::Backend;
use crate::model::event::ValidationError;
use crate::services::feed::{self, Cursor, FeedError};
use crate::services::health;
use crate::services::status::{self, Status};
use crate::services::workspace::Workspace;

/// Where `huddle dashboard` listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7777";

/// Every response forbids everything but the page's own script, style and
/// requests: a string from the log that slipped through escaping still
/// could not run or load anything.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The cookie a browser keeps the token in, after opening `/?token=TOKEN`
/// once (a page cannot add headers to its event stream).
const TOKEN_COOKIE: &str = "huddle_dashboard_token";

/// How `huddle dashboard` serves.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    pub addr: SocketAddr,
    /// Bearer token every request must carry; required off loopback.
    pub token: Option<String>,
}

/// Refuses bad options before anything is served, naming the flag.
pub fn check_options(options: &DashboardOptions) -> Result<(), ValidationError> {
    check_listen(
        "addr",
        "HUDDLE_DASHBOARD_TOKEN",
        "the dashboard",
        options.addr,
        options.token.as_deref(),
    )
}

/// Serves until the process is interrupted.
pub fn run(dir: &std::path::Path, options: DashboardOptions) -> Result<()> {
    let listener = bind(&options)?;
    run_on(dir, listener, options)
}

/// Checks the options and takes the address, so that `huddle run
/// --dashboard` fails before its daemon starts when the port is taken.
pub fn bind(options: &DashboardOptions) -> Result<std::net::TcpListener> {
    check_options(options)?;
    let listener = std::net::TcpListener::bind(options.addr)
        .with_context(|| format!("cannot listen on {}", options.addr))?;
    listener
        .set_nonblocking(true)
        .context("the listening socket")?;
    Ok(listener)
}

/// Serves on a listener from [`bind`] until the process is interrupted.
pub fn run_on(
    dir: &std::path::Path,
    listener: std::net::TcpListener,
    options: DashboardOptions,
) -> Result<()> {
    check_options(&options)?;
    let workspace = Workspace::open(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the dashboard's runtime")?;
    runtime.block_on(serve(workspace, listener, options))
}

/// What every request shares.
struct App {
    workspace: Workspace,
    backend: Arc<dyn Backend>,
    /// The one reader behind every `/api/stream`.
    hub: Arc<stream::Hub>,
    bearer: Option<Bearer>,
}

/// Serves the dashboard on `listener` until interrupted.
async fn serve(
    workspace: Workspace,
    listener: std::net::TcpListener,
    options: DashboardOptions,
) -> Result<()> {
    check_options(&options)?;
    let backend = workspace.backend();
    let news = match backend.subscribe() {
        Ok(subscription) => Some(subscription),
        Err(error) => {
            tracing::warn!(%error, "no news of appends: the dashboard's streams poll every 500 ms");
            None
        }
    };
    let hub = stream::Hub::start(backend.clone(), news);
    let check_host = options.addr.ip().is_loopback() && options.token.is_none();
    let app = Arc::new(App {
        workspace,
        backend,
        hub,
        bearer: options.token.as_deref().map(Bearer::new),
    });
    let router = axum::Router::new()
        .route("/", get(index))
        .route("/panel", get(panel))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .route("/api/status", get(api_status))
        .route("/api/events", get(api_events))
        .route("/api/stream", get(api_stream))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::middleware::from_fn(move |request, next| {
            secure_headers(check_host, request, next)
        }))
        .with_state(app);
    let listener = tokio::net::TcpListener::from_std(listener).context("the listening socket")?;
    let bound = listener.local_addr().context("the listening address")?;
    // Tests and scripts read the address (the port, when 0 was asked for).
    eprintln!("huddle dashboard: serving on http://{bound}/");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("dashboard server")
}

/// Adds the security headers to every response, refusals included. On
/// loopback without a token, a page elsewhere could point a name it owns at
/// 127.0.0.1 (DNS rebinding) and read the dashboard: only loopback host
/// names are answered there.
async fn secure_headers(check_host: bool, request: Request, next: Next) -> Response {
    let mut response = if check_host && !loopback_host(request.headers()) {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "huddle dashboard: on loopback without a token, only localhost, 127.0.0.1 and [::1] are served\n",
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser's rebinding request.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

/// The token, when one is set, on every request: `Authorization: Bearer`,
/// or the cookie the page's `/?token=` sets.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(bearer) = &app.bearer else {
        return next.run(request).await;
    };
    if bearer.authorises(request.headers()) || cookie_matches(bearer, request.headers()) {
        return next.run(request).await;
    }
    // Opening `/?token=TOKEN` once keeps the token in a cookie, and takes it
    // out of the address bar and the history.
    if request.uri().path() == "/" {
        let given = request.uri().query().and_then(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "token")
                .map(|(_, value)| value.into_owned())
        });
        if given.is_some_and(|token| bearer.matches(&token)) {
            let cookie = format!(
                "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                bearer.cookie_value()
            );
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                return (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, HeaderValue::from_static("/")),
                        (header::SET_COOKIE, cookie),
                    ],
                )
                    .into_response();
            }
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "huddle dashboard: this server needs `Authorization: Bearer TOKEN` (the --token it was \
         started with); in a browser, open /?token=TOKEN once\n",
    )
        .into_response()
}

fn cookie_matches(bearer: &Bearer, headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == TOKEN_COOKIE && bearer.matches_cookie(value))
}

/// A failure to show: bad requests name the field, the rest say what failed.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut text = crate::model::visible::visible(&self.1).into_owned();
        text.push('\n');
        (self.0, text).into_response()
    }
}

impl From<FeedError> for Failure {
    fn from(error: FeedError) -> Failure {
        match error {
            FeedError::Invalid(invalid) => Failure(StatusCode::BAD_REQUEST, invalid.to_string()),
            FeedError::Store(store) => internal(&store),
        }
    }
}

fn internal(error: &(dyn std::error::Error + 'static)) -> Failure {
    Failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        crate::apps::error_text(error),
    )
}

/// Runs file reads off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|joined| Err(internal(&joined)))
}

fn read_status(app: &App) -> Result<Status, Failure> {
    status::status_from(&app.workspace, &*app.backend).map_err(|error| internal(&error))
}

async fn index(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    blocking(move || {
        let status = read_status(&app)?;
        // The stream goes on from what the page shows: nothing between is
        // lost, and the page renders while the backend does not answer.
        let html = page::page(&app.workspace, &status, &feed::token(status.read_to));
        Ok(html_response(html))
    })
    .await
}

async fn panel(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    blocking(move || {
        let status = read_status(&app)?;
        Ok(html_response(page::panels(&app.workspace, &status)))
    })
    .await
}

fn html_response(html: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/app.css"),
    )
        .into_response()
}

fn json_response(value: &impl serde::Serialize) -> Result<Response, Failure> {
    let body = serde_json::to_string(value).map_err(|error| internal(&error))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn api_status(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    blocking(move || json_response(&read_status(&app)?)).await
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
}

async fn api_events(
    State(app): State<Arc<App>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(query) = query.map_err(|bad| Failure(StatusCode::BAD_REQUEST, bad.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => feed::DEFAULT_LIMIT,
        Some(text) => text.trim().parse().map_err(|_| {
            Failure(
                StatusCode::BAD_REQUEST,
                ValidationError::new(
                    "limit",
                    format!("is not a whole number 1 to {}", feed::MAX_LIMIT),
                )
                .to_string(),
            )
        })?,
    };
    feed::validate_limit(limit).map_err(|bad| Failure(StatusCode::BAD_REQUEST, bad.to_string()))?;
    blocking(move || {
        let cursor = match query.after.as_deref() {
            Some(after) => feed::after_token(&*app.backend, "after", after)?,
            None => Cursor::At(crate::backend::Position::START),
        };
        json_response(&feed::read(&*app.backend, cursor, limit)?)
    })
    .await
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    /// Events after this one (a token from `/api/events`).
    after: Option<String>,
    /// Events from this place on (the head the page was rendered at).
    from: Option<String>,
}

/// Server-Sent Events: one `huddle` event per log event, `id:` its
/// position token. A client that reconnects with `Last-Event-ID` (browsers
/// do it themselves) gets every event after the last one it saw.
async fn api_stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let Query(query) = query.map_err(|bad| Failure(StatusCode::BAD_REQUEST, bad.body_text()))?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|value| {
            value.to_str().map(str::to_string).map_err(|_| {
                Failure(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: is not text".to_string(),
                )
            })
        })
        .transpose()?;
    let start = {
        let app = app.clone();
        blocking(move || {
            let backend = &*app.backend;
            Ok(match (last_event_id, query.after, query.from) {
                (Some(id), _, _) => feed::after_token(backend, "Last-Event-ID", &id)?,
                (None, Some(after), _) => feed::after_token(backend, "after", &after)?,
                (None, None, Some(from)) => feed::from_token(backend, "from", &from)?,
                (None, None, None) => match feed::head(backend) {
                    Ok(head) => head,
                    // Without a server: from what this machine has seen.
                    Err(crate::backend::StoreError::Unreachable { .. }) => {
                        feed::Cursor::At(read_status(&app)?.read_to)
                    }
                    Err(error) => return Err(internal(&error)),
                },
            })
        })
        .await?
    };
    let follower = stream::Follower::new(&app.hub, app.backend.clone(), start);
    let events = futures_util::stream::unfold(follower, stream::Follower::next);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

async fn healthz(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    blocking(move || {
        let status = status::status_from(&app.workspace, &*app.backend);
        let health = health::health(status.as_ref().map_err(|e| e as &dyn std::error::Error));
        let code = if health.healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Ok((
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", health.reason),
        )
            .into_response())
    })
    .await
}

async fn metrics(State(app): State<Arc<App>>) -> Result<Response, Failure> {
    blocking(move || {
        let status = read_status(&app)?;
        Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            health::metrics(&app.workspace, &status),
        )
            .into_response())
    })
    .await
}
