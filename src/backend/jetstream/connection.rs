//! The client side of the JetStream backend: a NATS connection on a small
//! runtime of its own, and every call to the server bounded by a deadline.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::backend::{StoreError, Subscription};
use crate::model::config::BackendConfig;
use crate::model::event::Event;

/// Largest atomic batch the server takes by default; longer batches go in
/// several, each all or none.
const MAX_BATCH: usize = 1000;

/// Below this many messages, reading them one by one beats setting up a consumer.
const DIRECT_READS: u64 = 8;

/// One message of the stream.
pub(super) struct Raw {
    pub sequence: u64,
    pub payload: Arc<[u8]>,
}

/// What [`super::JetStreamLog::ensure_stream`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCreated {
    Created,
    Existed,
}

struct Settings {
    servers: String,
    stream: String,
    subject: String,
    replicas: usize,
    dedupe_window: Duration,
    timeout: Duration,
}

impl Settings {
    fn unreachable(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unreachable {
            server: self.servers.clone(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, action: &'static str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Server {
            server: self.servers.clone(),
            action,
            reason: reason.to_string(),
        }
    }

    /// A failed request: unreachable when it got no answer, else refused.
    fn failed(&self, action: &'static str, error: impl std::fmt::Display) -> StoreError {
        let text = error.to_string();
        let lower = text.to_ascii_lowercase();
        if ["timed out", "no responders", "broken pipe", "disconnected"]
            .iter()
            .any(|sign| lower.contains(sign))
        {
            self.unreachable(format!("cannot {action}: {text}"))
        } else {
            self.refused(action, text)
        }
    }
}

/// What a connection is made with.
struct Setup {
    urls: Vec<String>,
    timeout: Duration,
    token: Option<crate::model::config::Secret>,
    creds: Option<std::path::PathBuf>,
    /// Set when the server refuses the token or credentials.
    refused: Arc<std::sync::atomic::AtomicBool>,
}

impl Setup {
    async fn options(&self) -> Result<async_nats::ConnectOptions, StoreError> {
        let refused = self.refused.clone();
        let mut options = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let refused = refused.clone();
                async move {
                    use std::sync::atomic::Ordering;
                    match event {
                        async_nats::Event::ServerError(
                            async_nats::ServerError::AuthorizationViolation,
                        ) => refused.store(true, Ordering::SeqCst),
                        async_nats::Event::Connected => refused.store(false, Ordering::SeqCst),
                        _ => {}
                    }
                }
            })
            .name("huddle")
            .max_reconnects(None)
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            // The client counts from 1: the first attempt goes at once,
            // then 100 ms more each time, up to 1 s.
            .reconnect_delay_callback(|attempts| {
                let waited = (attempts as u64).saturating_sub(1).saturating_mul(100);
                Duration::from_millis(waited.min(1000))
            });
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_string());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|error| StoreError::Io {
                    action: "read the credentials file",
                    path: creds.clone(),
                    source: error,
                })?;
        }
        Ok(options)
    }

    fn client(&self, client: async_nats::Client) -> Client {
        let mut context = jetstream::new(client.clone());
        context.set_timeout(self.timeout);
        Client { client, context }
    }
}

#[derive(Clone)]
struct Client {
    client: async_nats::Client,
    context: jetstream::Context,
}

pub(super) struct Connection {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// No server answered while the connection was first made: calls fail
    /// at once, not each after its deadline, until one does.
    never_connected: bool,
    /// Why there is no client: credentials that cannot be read.
    client: Result<Client, String>,
    /// The server refused our credentials the last time we connected.
    refused_credentials: Arc<std::sync::atomic::AtomicBool>,
    settings: Arc<Settings>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A backend may be dropped inside another runtime (the MCP server's),
        // where waiting for this one's threads would panic.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn build_runtime() -> tokio::runtime::Runtime {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("huddle-nats")
        .enable_all()
        .build();
    match built {
        Ok(runtime) => runtime,
        // Only fails when no thread can be started at all.
        Err(error) => panic!("cannot start the JetStream client's runtime: {error}"),
    }
}

impl Connection {
    pub fn new(config: &BackendConfig, dir: &Path) -> Connection {
        let settings = Arc::new(Settings {
            servers: config.url.shown(),
            stream: config.stream.clone(),
            subject: config.subject(),
            replicas: config.replicas,
            dedupe_window: Duration::from_secs(config.dedupe_window_secs),
            timeout: config.timeout(),
        });
        let runtime = build_runtime();
        let mut connection = Connection {
            runtime: Some(runtime),
            never_connected: false,
            refused_credentials: Arc::default(),
            client: Err("not connected yet".into()),
            settings,
        };
        let setup = Setup {
            urls: config.url.list(),
            timeout: config.timeout(),
            token: config.token.clone(),
            creds: config.creds.as_ref().map(|creds| dir.join(creds)),
            refused: connection.refused_credentials.clone(),
        };
        let refused = connection.refused_credentials.clone();
        let made = connection.run(async move {
            // A first attempt that waits for its answer: refused credentials
            // show at once, and a process that starts while no server
            // answers (`huddle log` during an outage) learns it once, not
            // once per call.
            let first = setup.options().await?.connect(setup.urls.as_slice());
            let first = tokio::time::timeout(setup.timeout / 2, first)
                .await
                .unwrap_or_else(|_| {
                    Err(async_nats::ConnectError::new(
                        async_nats::ConnectErrorKind::TimedOut,
                    ))
                });
            match first {
                Ok(client) => Ok((setup.client(client), true)),
                Err(error)
                    if matches!(
                        error.kind(),
                        async_nats::ConnectErrorKind::AuthorizationViolation
                            | async_nats::ConnectErrorKind::Authentication
                    ) =>
                {
                    setup
                        .refused
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    Err(StoreError::Unreachable {
                        server: String::new(),
                        reason: error.to_string(),
                    })
                }
                // No server now: the client keeps trying in the background.
                Err(_) => {
                    let client = setup
                        .options()
                        .await?
                        .retry_on_initial_connect()
                        .connect(setup.urls.as_slice())
                        .await
                        .map_err(|error| StoreError::Unreachable {
                            server: String::new(),
                            reason: error.to_string(),
                        })?;
                    Ok((setup.client(client), false))
                }
            }
        });
        match made {
            Ok((client, connected)) => {
                connection.client = Ok(client);
                connection.never_connected = !connected;
            }
            Err(error) if refused.load(std::sync::atomic::Ordering::SeqCst) => {
                connection.client = Err(error.to_string());
            }
            // No answer within the deadline: as if no server answered.
            Err(StoreError::Unreachable { .. }) => {
                connection.never_connected = true;
                connection.client = Err("no server answered".into());
            }
            Err(error) => connection.client = Err(error.to_string()),
        }
        connection
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        match &self.runtime {
            Some(runtime) => runtime,
            None => unreachable!("the runtime is only taken when the connection is dropped"),
        }
    }

    pub fn servers(&self) -> &str {
        &self.settings.servers
    }

    pub fn stream(&self) -> &str {
        &self.settings.stream
    }

    pub fn is_connected(&self) -> bool {
        self.client
            .as_ref()
            .is_ok_and(|c| c.client.connection_state() == async_nats::connection::State::Connected)
    }

    fn client(&self) -> Result<Client, StoreError> {
        if self
            .refused_credentials
            .load(std::sync::atomic::Ordering::SeqCst)
            && !self.is_connected()
        {
            // Not an outage to queue for: nothing gets in until the
            // token or credentials file is fixed.
            return Err(self.settings.refused(
                "connect",
                "authorization violation: check backend.token or backend.creds in huddle.toml",
            ));
        }
        match &self.client {
            Ok(_) if self.never_connected && !self.is_connected() => {
                Err(self.settings.unreachable(format!(
                    "no server answered when this process connected (deadline {:?})",
                    self.settings.timeout
                )))
            }
            Ok(client) => Ok(client.clone()),
            Err(why) if self.never_connected => Err(self.settings.unreachable(why)),
            Err(why) => Err(self.settings.refused("connect", why)),
        }
    }

    /// Runs `work` on the backend's runtime and waits for it, at most the
    /// deadline: the caller may be a plain thread or a task of another
    /// runtime, and is never held longer.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let deadline = self.settings.timeout;
        let settings = self.settings.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let outcome = tokio::time::timeout(deadline, work)
                .await
                .unwrap_or_else(|_| {
                    Err(settings.unreachable(format!("no answer within {deadline:?}")))
                });
            let _ = tx.send(outcome);
        });
        rx.recv_timeout(deadline + Duration::from_secs(1))
            .unwrap_or_else(|_| {
                Err(self
                    .settings
                    .unreachable(format!("no answer within {deadline:?}")))
            })
    }

    /// The last sequence of the stream and what identifies this stream
    /// among streams of the same name (its creation time).
    async fn info(client: &Client, settings: &Settings) -> Result<(u64, String), StoreError> {
        let stream = client
            .context
            .get_stream_no_info(&settings.stream)
            .await
            .map_err(|e| settings.failed("find the stream", e))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| settings.failed("read the stream's state", e))?;
        Ok((
            info.state.last_sequence,
            format!("created {}", info.created),
        ))
    }

    pub fn last_sequence(&self) -> Result<u64, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        self.run(async move { Ok(Self::info(&client, &settings).await?.0) })
    }

    pub fn identity(&self) -> Result<String, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        self.run(async move { Ok(Self::info(&client, &settings).await?.1) })
    }

    pub fn ensure_stream(&self) -> Result<StreamCreated, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        self.run(async move {
            if client
                .context
                .get_stream_no_info(&settings.stream)
                .await
                .is_ok()
            {
                // get_stream_no_info asks nothing: ask for the state to be sure.
                if Self::info(&client, &settings).await.is_ok() {
                    return Ok(StreamCreated::Existed);
                }
            }
            let config = stream::Config {
                name: settings.stream.clone(),
                subjects: vec![settings.subject.clone()],
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                duplicate_window: settings.dedupe_window,
                allow_atomic_publish: true,
                // The log is append-only, as events.log is.
                deny_delete: true,
                deny_purge: true,
                ..Default::default()
            };
            match client.context.create_stream(config).await {
                Ok(_) => Ok(StreamCreated::Created),
                Err(error) if error.to_string().contains("already in use") => {
                    Ok(StreamCreated::Existed)
                }
                Err(error) => Err(settings.failed("create the stream", error)),
            }
        })
    }

    /// Publishes `events` in order, all or none. With `expected`, only if
    /// the subject's last sequence is that: `Ok(None)` when it is not.
    /// Returns the sequence of the last event.
    pub fn publish(
        &self,
        events: &[Event],
        expected: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        let messages: Vec<(Option<String>, Vec<u8>)> = events
            .iter()
            .map(|event| (event.id.clone(), event.to_line().into_bytes()))
            .collect();
        self.run(async move {
            let mut expected = expected;
            let mut last = None;
            for batch in messages.chunks(MAX_BATCH) {
                let published = match publish_batch(&client, &settings, batch, expected).await {
                    Err(PartlyStored) => match expected {
                        Some(expected) => {
                            publish_each_after(&client, &settings, batch, expected).await
                        }
                        None => publish_each(&client, &settings, batch).await,
                    },
                    Ok(outcome) => outcome,
                };
                match published? {
                    Some(sequence) => last = Some(sequence),
                    None => return Ok(None),
                }
                // Later parts follow this one directly when the append is conditional.
                expected = expected.and(last);
            }
            Ok(last)
        })
    }

    pub fn publish_raw(&self, payload: &[u8]) -> Result<u64, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        let payload = bytes::Bytes::copy_from_slice(payload);
        self.run(async move {
            let ack = client
                .context
                .publish(settings.subject.clone(), payload)
                .await
                .map_err(|e| settings.failed("publish", e))?
                .await
                .map_err(|e| settings.failed("publish", e))?;
            Ok(ack.sequence)
        })
    }

    /// The message at `sequence`, if the stream holds one there.
    pub fn get(&self, sequence: u64) -> Result<Option<Raw>, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        self.run(async move { get(&client, &settings, sequence).await })
    }

    /// The messages from `start` to `end`, in order (fewer when some were deleted).
    pub fn fetch_range(&self, start: u64, end: u64) -> Result<Vec<Raw>, StoreError> {
        let client = self.client()?;
        let settings = self.settings.clone();
        self.run(async move {
            if end < start {
                return Ok(Vec::new());
            }
            if end - start < DIRECT_READS {
                let mut raws = Vec::new();
                for sequence in start..=end {
                    raws.extend(get(&client, &settings, sequence).await?);
                }
                return Ok(raws);
            }
            let stream = client
                .context
                .get_stream_no_info(&settings.stream)
                .await
                .map_err(|e| settings.failed("find the stream", e))?;
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: settings.subject.clone(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| settings.failed("read the stream", e))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| settings.failed("read the stream", e))?;
            let mut raws = Vec::new();
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| settings.failed("read the stream", e))?;
                let sequence = message
                    .info()
                    .map_err(|e| settings.failed("read the stream", e))?
                    .stream_sequence;
                if sequence > end {
                    break;
                }
                raws.push(Raw {
                    sequence,
                    payload: Arc::from(message.payload.as_ref()),
                });
                if sequence == end {
                    break;
                }
            }
            Ok(raws)
        })
    }

    /// News of every message published on the subject, as it is published.
    ///
    /// Made without a server too (a daemon starting during an outage): the
    /// client subscribes when it connects.
    pub fn subscribe(&self) -> Result<Subscription, StoreError> {
        let client = self
            .client
            .clone()
            .map_err(|why| self.settings.refused("connect", why))?;
        let settings = self.settings.clone();
        let mut subscriber = self.run(async move {
            let subscriber = client
                .client
                .subscribe(settings.subject.clone())
                .await
                .map_err(|e| settings.failed("subscribe", e))?;
            // Once the server has the subscription, no later publish is missed;
            // without a server it is made on reconnecting.
            let _ = tokio::time::timeout(settings.timeout / 2, client.client.flush()).await;
            Ok(subscriber)
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = self.runtime().spawn(async move {
            while subscriber.next().await.is_some() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        Ok(Subscription::new(
            rx,
            Box::new(AbortOnDrop(forward)),
            "jetstream",
        ))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn get(
    client: &Client,
    settings: &Settings,
    sequence: u64,
) -> Result<Option<Raw>, StoreError> {
    let stream = client
        .context
        .get_stream_no_info(&settings.stream)
        .await
        .map_err(|e| settings.failed("find the stream", e))?;
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(Some(Raw {
            sequence: message.sequence,
            payload: Arc::from(message.payload.as_ref()),
        })),
        Err(error)
            if matches!(
                error.kind(),
                jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(settings.failed("read a message", error)),
    }
}

fn header_map(entries: &[(&'static str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in entries {
        headers.insert(*name, value.as_str());
    }
    headers
}

/// An atomic batch refused because some of its events are stored already:
/// a retry of a batch (or of a queue holding events) whose
/// acknowledgement was lost.
struct PartlyStored;

/// JetStream's code for "atomic publish batch contains duplicate message id".
const BATCH_HAS_DUPLICATE: u64 = 10201;

/// The events one by one, so that the server drops those it already has
/// (by `Nats-Msg-Id`) and stores the others, in order. Only for a batch
/// some of which is stored already: it is then neither all-or-none nor
/// conditional, since part of it was appended when it was first sent.
async fn publish_each(
    client: &Client,
    settings: &Settings,
    batch: &[(Option<String>, Vec<u8>)],
) -> Result<Option<u64>, StoreError> {
    let mut last = None;
    for message in batch {
        match publish_batch(client, settings, std::slice::from_ref(message), None).await {
            Ok(outcome) => last = outcome?.or(last),
            Err(PartlyStored) => {
                return Err(settings.refused("publish", "a single message refused as a duplicate"))
            }
        }
    }
    Ok(last)
}

/// A conditional batch that is partly stored already, one message at a
/// time, each only right after the one before: the numbers `next` gave
/// them hold only if nothing else comes between. The messages stored by an
/// earlier attempt are answered with their old sequence and stored again
/// nowhere. `Ok(None)` when another writer came between.
async fn publish_each_after(
    client: &Client,
    settings: &Settings,
    batch: &[(Option<String>, Vec<u8>)],
    mut expected: u64,
) -> Result<Option<u64>, StoreError> {
    for message in batch {
        match publish_batch(
            client,
            settings,
            std::slice::from_ref(message),
            Some(expected),
        )
        .await
        {
            Ok(Ok(Some(sequence))) if sequence > expected => expected = sequence,
            // A duplicate: where the earlier attempt stored it.
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(error)) => return Err(error),
            Err(PartlyStored) => {
                return Err(settings.refused("publish", "a single message refused as a duplicate"))
            }
        }
    }
    Ok(Some(expected))
}

/// One publish, or one atomic batch: all of `batch` or none of it.
async fn publish_batch(
    client: &Client,
    settings: &Settings,
    batch: &[(Option<String>, Vec<u8>)],
    expected: Option<u64>,
) -> Result<Result<Option<u64>, StoreError>, PartlyStored> {
    let batch_id = uuid::Uuid::now_v7().simple().to_string();
    let atomic = batch.len() > 1;
    let mut ack = None;
    for (index, (id, line)) in batch.iter().enumerate() {
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if let Some(id) = id {
            headers.push(("Nats-Msg-Id", id.clone()));
        }
        if index == 0 {
            if let Some(expected) = expected {
                headers.push(("Nats-Expected-Last-Subject-Sequence", expected.to_string()));
            }
        }
        if atomic {
            headers.push(("Nats-Batch-Id", batch_id.clone()));
            headers.push(("Nats-Batch-Sequence", (index + 1).to_string()));
        }
        let last = index + 1 == batch.len();
        let payload = bytes::Bytes::copy_from_slice(line);
        if !last {
            if let Err(error) = client
                .client
                .publish_with_headers(settings.subject.clone(), header_map(&headers), payload)
                .await
            {
                return Ok(Err(settings.failed("publish", error)));
            }
            continue;
        }
        if atomic {
            headers.push(("Nats-Batch-Commit", "1".into()));
        }
        let message = PublishMessage::build()
            .payload(payload)
            .headers(header_map(&headers));
        let pending = client
            .context
            .send_publish(settings.subject.clone(), message)
            .await;
        let outcome = match pending {
            Ok(pending) => pending.await,
            Err(error) => Err(error),
        };
        ack = Some(match outcome {
            Ok(ack) => ack.sequence,
            Err(error) => {
                let duplicate = std::error::Error::source(&error)
                    .and_then(|source| source.downcast_ref::<jetstream::Error>())
                    .is_some_and(|api| {
                        api.error_code() == jetstream::ErrorCode(BATCH_HAS_DUPLICATE)
                    });
                if atomic && duplicate {
                    return Err(PartlyStored);
                }
                return Ok(match error.kind() {
                    PublishErrorKind::WrongLastSequence if expected.is_some() => Ok(None),
                    // Nobody answered the subject: a stream that does not
                    // exist is the user's to fix, not an outage to wait out.
                    PublishErrorKind::StreamNotFound => match Connection::info(client, settings).await {
                        Err(StoreError::Server { reason, .. })
                            if reason.to_ascii_lowercase().contains("stream not found") =>
                        {
                            Err(settings.refused(
                                "publish",
                                format!(
                                    "stream {} does not exist: create it with `huddle init --backend jetstream --url URL --stream {}`",
                                    settings.stream, settings.stream
                                ),
                            ))
                        }
                        _ => Err(settings.unreachable(format!("cannot publish: {error}"))),
                    },
                    PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending => {
                        Err(settings.unreachable(format!("cannot publish: {error}")))
                    }
                    _ => Err(settings.failed("publish", error)),
                });
            }
        });
    }
    Ok(Ok(ack))
}
