//! `huddle mcp`: the huddle as an MCP server, for agents. Tools post, read,
//! wait and acknowledge through the services, exactly as the CLI does;
//! resources give the snapshots and the status. Transports: stdio (one
//! client), or streamable HTTP (many, each its own session).

mod http;
mod tools;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    SubscriptionFilter, Tool, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext, SubscriptionSendError};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::backend::Backend;
use crate::model::event::ValidationError;
use crate::model::names::{ARCHIVE_FILE, COMMUNICATION_FILE};
use crate::model::visible::visible;
use crate::plugin::Slot;
use crate::services::inbox::{self, LazyMapper, Query};
use crate::services::workspace::Workspace;
use crate::services::{post, status};

use tools::Args;

pub const COMMUNICATION_URI: &str = "huddle://communication.md";
pub const ARCHIVE_URI: &str = "huddle://archive.md";
pub const STATUS_URI: &str = "huddle://status";

/// How `huddle mcp` serves.
#[derive(Debug, Clone, Default)]
pub struct McpOptions {
    /// Who this server speaks for (`--actor`): `log`, `heartbeat` and `ack`
    /// refuse anyone else.
    pub actor: Option<String>,
    /// Streamable HTTP on this address instead of stdio.
    pub http: Option<SocketAddr>,
    /// Bearer token every HTTP request must carry; required off loopback.
    pub token: Option<String>,
}

/// Checks the options before anything is served: bad usage is refused with
/// a message naming the flag.
pub fn check_options(options: &McpOptions) -> Result<(), ValidationError> {
    if let Some(actor) = &options.actor {
        crate::model::event::validate_actor(actor)?;
    }
    if let Some(addr) = options.http {
        crate::apps::guard::check_listen(
            "http",
            "HUDDLE_MCP_TOKEN",
            "MCP",
            addr,
            options.token.as_deref(),
        )?;
    } else if options
        .token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(ValidationError::new("token", "must not be empty"));
    }
    Ok(())
}

/// Serves until the client goes away (stdio) or the process is interrupted (HTTP).
pub fn run(dir: &Path, options: McpOptions) -> Result<()> {
    check_options(&options)?;
    let workspace = Workspace::open(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the MCP server's runtime")?;
    runtime.block_on(async move {
        let shared = Shared::start(workspace, options.actor.clone())?;
        match options.http {
            None => {
                let server = Huddle::new(shared)
                    .serve(rmcp::transport::io::stdio_pipes())
                    .await
                    .context("MCP handshake on stdio")?;
                server.waiting().await.context("MCP server on stdio")?;
                Ok(())
            }
            Some(addr) => http::serve(shared, addr, options.token).await,
        }
    })
}

/// What every session shares: the huddle, and news of its files.
pub(crate) struct Shared {
    workspace: Workspace,
    backend: Arc<dyn Backend>,
    mapper: Arc<LazyMapper>,
    actor: Option<String>,
    tools: Vec<Tool>,
    /// URIs of resources that changed.
    changes: broadcast::Sender<&'static str>,
    /// Kept alive for as long as the server runs.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Shared {
    fn start(workspace: Workspace, actor: Option<String>) -> Result<Arc<Shared>> {
        let backend = workspace.backend();
        let mapper = Arc::new(LazyMapper::new(workspace.slot_spec(Slot::HeadingMapper)));
        let (changes, _) = broadcast::channel(64);
        let watcher = watch_snapshots(&workspace.dir, changes.clone());
        // The status changes with every append: pushed by the backend.
        match backend.subscribe() {
            Ok(mut news) => {
                let changes = changes.clone();
                tokio::spawn(async move {
                    while news.recv().await.is_some() {
                        news.drain();
                        let _ = changes.send(STATUS_URI);
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "no news of appends: huddle://status subscribers are not notified")
            }
        }
        Ok(Arc::new(Shared {
            tools: tools::list(actor.as_deref()),
            workspace,
            backend,
            mapper,
            actor,
            changes,
            _watcher: watcher,
        }))
    }
}

/// Watches the directory for communication.md and archive.md being
/// replaced (the snapshot writes a temporary file and renames it).
fn watch_snapshots(
    dir: &Path,
    changes: broadcast::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
            let uri = match path.file_name().and_then(|name| name.to_str()) {
                Some(COMMUNICATION_FILE) => COMMUNICATION_URI,
                Some(ARCHIVE_FILE) => ARCHIVE_URI,
                _ => continue,
            };
            let _ = changes.send(uri);
        }
    };
    let watching = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watching {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the snapshots: resource subscribers are not notified");
            None
        }
    }
}

/// One MCP session.
#[derive(Clone)]
pub(crate) struct Huddle {
    shared: Arc<Shared>,
    /// Resources this session subscribed to with `resources/subscribe`.
    subscribed: Arc<Mutex<HashSet<String>>>,
    forwarding: Arc<std::sync::OnceLock<()>>,
}

impl Huddle {
    pub(crate) fn new(shared: Arc<Shared>) -> Huddle {
        Huddle {
            shared,
            subscribed: Arc::default(),
            forwarding: Arc::default(),
        }
    }

    async fn call(&self, name: &str, arguments: Option<rmcp::model::JsonObject>) -> ToolAnswer {
        let shared = self.shared.clone();
        match name {
            "wait" => {
                let args = Args::new(arguments, &["agent", "timeout_ms"])?;
                let agent = args.required_string("agent")?;
                let timeout = inbox::wait_timeout(args.required_integer("timeout_ms")?)?;
                let unread = inbox::wait(
                    shared.workspace.dir.clone(),
                    shared.backend.clone(),
                    shared.mapper.clone(),
                    agent,
                    timeout,
                )
                .await
                .map_err(failure)?;
                let timed_out = unread.events.is_empty();
                let mut answer = unread_json(unread);
                answer["timed_out"] = Value::Bool(timed_out);
                Ok(answer)
            }
            _ => {
                let name = name.to_string();
                // The services do file I/O: kept off the async workers.
                tokio::task::spawn_blocking(move || call_blocking(&shared, &name, arguments))
                    .await
                    .map_err(|error| ToolError(format!("the tool stopped: {error}")))?
            }
        }
    }

    /// Forwards news of changed resources to this session's subscriptions,
    /// from its first `resources/subscribe` on.
    fn forward_changes(&self, peer: rmcp::Peer<RoleServer>) {
        if self.forwarding.set(()).is_err() {
            return;
        }
        let mut changes = self.shared.changes.subscribe();
        let subscribed = self.subscribed.clone();
        tokio::spawn(async move {
            loop {
                let uri = match changes.recv().await {
                    Ok(uri) => uri,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let wanted = subscribed.lock().is_ok_and(|set| set.contains(uri));
                if wanted
                    && peer
                        .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                        .await
                        .is_err()
                {
                    // The client is gone.
                    return;
                }
            }
        });
    }
}

/// A tool's answer, or why it failed.
type ToolAnswer = std::result::Result<Value, ToolError>;

/// Why a tool failed, in the words the CLI prints for the same failure.
struct ToolError(String);

/// The message of an error and its causes, each said once, made visible as
/// the CLI prints it.
fn failure(error: impl std::error::Error + 'static) -> ToolError {
    ToolError(visible(&crate::apps::error_text(&error)).into_owned())
}

impl From<ValidationError> for ToolError {
    fn from(error: ValidationError) -> ToolError {
        failure(error)
    }
}

fn call_blocking(
    shared: &Shared,
    name: &str,
    arguments: Option<rmcp::model::JsonObject>,
) -> ToolAnswer {
    let pinned = shared.actor.as_deref();
    let dir = &shared.workspace.dir;
    match name {
        "log" => {
            let args = Args::new(arguments, &["interaction", "actor", "type", "content"])?;
            let interaction = args.interaction()?;
            let actor = tools::speaker(args.string("actor")?, "actor", pinned)?;
            let kind = args.required_string("type")?;
            let content = args.required_string("content")?;
            let event =
                post::post(&*shared.backend, interaction, actor, kind, content).map_err(failure)?;
            Ok(event_json(&event))
        }
        "heartbeat" => {
            let args = Args::new(arguments, &["actor"])?;
            let actor = tools::speaker(args.string("actor")?, "actor", pinned)?;
            let event = post::heartbeat(&*shared.backend, actor).map_err(failure)?;
            Ok(event_json(&event))
        }
        "next" => {
            let args = Args::new(arguments, &["agent", "limit"])?;
            let agent = args.required_string("agent")?;
            let limit = args.count("limit")?;
            if let Some(limit) = limit {
                inbox::validate_limit(limit)?;
            }
            let unread = inbox::unread(dir, &*shared.backend, &*shared.mapper, &agent, limit)
                .map_err(failure)?;
            Ok(unread_json(unread))
        }
        "ack" => {
            let args = Args::new(arguments, &["agent", "interaction"])?;
            let agent = tools::speaker(args.string("agent")?, "agent", pinned)?;
            let interaction = args.required_integer("interaction")?;
            let checkpoint = inbox::ack(dir, &agent, interaction).map_err(failure)?;
            Ok(json!({ "agent": agent, "checkpoint": checkpoint }))
        }
        "read" => {
            let args = Args::new(
                arguments,
                &[
                    "from_interaction",
                    "to_interaction",
                    "types",
                    "actor",
                    "text",
                    "limit",
                ],
            )?;
            let query = Query {
                from_interaction: args.integer("from_interaction")?,
                to_interaction: args.integer("to_interaction")?,
                types: args.strings("types")?,
                actor: args.string("actor")?,
                text: args.string("text")?,
                limit: args.count("limit")?,
            };
            let found =
                inbox::search(dir, &*shared.backend, &*shared.mapper, &query).map_err(failure)?;
            Ok(json!({
                "events": found.events.iter().map(event_json).collect::<Vec<_>>(),
                "more": found.more,
            }))
        }
        "status" => {
            Args::new(arguments, &[])?;
            status_json(&shared.workspace, &*shared.backend)
        }
        other => Err(ToolError(format!(
            "unknown tool {:?}; the tools are log, next, ack, wait, read, heartbeat, status",
            visible(other)
        ))),
    }
}

fn event_json(event: &crate::model::event::Event) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
}

fn unread_json(unread: inbox::Unread) -> Value {
    json!({
        "after": unread.after,
        "events": unread.events.iter().map(event_json).collect::<Vec<_>>(),
        "more": unread.more,
    })
}

fn status_json(workspace: &Workspace, backend: &dyn Backend) -> ToolAnswer {
    let status = status::status_from(workspace, backend).map_err(failure)?;
    serde_json::to_value(&status).map_err(failure)
}

impl ServerHandler for Huddle {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new("huddle", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "huddle: a team of agents coordinating through one append-only event log. \
             Post with `log` (interaction \"next\" opens a new one), catch up with `next` or \
             `wait`, then `ack` the highest interaction you handled; search with `read`. \
             Resources: huddle://communication.md (the recent interactions), \
             huddle://archive.md, huddle://status.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.shared.tools.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !self
            .shared
            .tools
            .iter()
            .any(|tool| tool.name == request.name)
        {
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; the tools are log, next, ack, wait, read, heartbeat, status",
                    visible(&request.name)
                ),
                None,
            ));
        }
        let result = match self.call(&request.name, request.arguments).await {
            Ok(answer) => CallToolResult::structured(answer),
            Err(ToolError(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resource = |uri: &str, name: &str, mime: &str, description: &str| {
            Resource::new(uri, name)
                .with_description(description)
                .with_mime_type(mime)
        };
        Ok(ListResourcesResult::with_all_items(vec![
            resource(
                COMMUNICATION_URI,
                "communication.md",
                "text/markdown",
                "The most recent interactions, as the last snapshot rendered them.",
            ),
            resource(
                ARCHIVE_URI,
                "archive.md",
                "text/markdown",
                "Every older interaction, as the last snapshot rendered them.",
            ),
            resource(
                STATUS_URI,
                "status",
                "application/json",
                "Leader, term, actors, last errors, event count, snapshot freshness (huddle status --json).",
            ),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let shared = self.shared.clone();
        let uri = request.uri;
        let read = tokio::task::spawn_blocking(move || read_resource(&shared, &uri))
            .await
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))??;
        Ok(ReadResourceResult::new(vec![read]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        known_resource(&request.uri)?;
        if let Ok(mut set) = self.subscribed.lock() {
            set.insert(request.uri);
        }
        self.forward_changes(context.peer);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut set) = self.subscribed.lock() {
            set.remove(&request.uri);
        }
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let mut accepted = requested.supported_by(&self.get_info().capabilities);
        if let Some(uris) = accepted.resource_subscriptions.as_mut() {
            uris.retain(|uri| known_resource(uri).is_ok());
        }
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.shared.changes.subscribe();
        loop {
            let uri = tokio::select! {
                () = context.cancelled() => return Ok(()),
                news = changes.recv() => match news {
                    Ok(uri) => uri,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            };
            match context.sink().notify_resource_updated(uri).await {
                // Not among the resources this subscription asked for.
                Ok(()) | Err(SubscriptionSendError::NotificationNotAccepted(_)) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

fn known_resource(uri: &str) -> Result<(), ErrorData> {
    if [COMMUNICATION_URI, ARCHIVE_URI, STATUS_URI].contains(&uri) {
        Ok(())
    } else {
        Err(ErrorData::resource_not_found(
            format!(
                "no resource {:?}; the resources are {COMMUNICATION_URI}, {ARCHIVE_URI}, {STATUS_URI}",
                visible(uri)
            ),
            None,
        ))
    }
}

fn read_resource(shared: &Shared, uri: &str) -> Result<ResourceContents, ErrorData> {
    known_resource(uri)?;
    let file = |name: &str| -> Result<ResourceContents, ErrorData> {
        let path: PathBuf = shared.workspace.dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|error| {
            ErrorData::internal_error(
                format!(
                    "cannot read {}: {error}",
                    visible(&path.display().to_string())
                ),
                None,
            )
        })?;
        Ok(text_contents(uri, "text/markdown", text))
    };
    match uri {
        COMMUNICATION_URI => file(COMMUNICATION_FILE),
        ARCHIVE_URI => file(ARCHIVE_FILE),
        _ => {
            let status = status_json(&shared.workspace, &*shared.backend)
                .map_err(|ToolError(message)| ErrorData::internal_error(message, None))?;
            let text = serde_json::to_string_pretty(&status)
                .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
            Ok(text_contents(uri, "application/json", text))
        }
    }
}

fn text_contents(uri: &str, mime: &str, text: String) -> ResourceContents {
    ResourceContents::TextResourceContents {
        uri: uri.to_string(),
        mime_type: Some(mime.to_string()),
        text,
        meta: None,
    }
}
