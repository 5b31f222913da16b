//! Test support for cluster tests in every crate (SDK, CLI, node, chaos harness): a
//! playground of real `arkd` processes in a temp dir that is always torn down, also when a
//! test fails, the `ark` CLI run against it, and `/metrics` scrapes.
//!
//! Helpers panic with what failed instead of returning errors: they are for tests only,
//! where a failed set-up is the test's failure. Must not hold assertions about Ark's
//! behaviour (those belong in the tests).

#![allow(clippy::unwrap_used)] // test support: a failed set-up fails the test loudly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use ark_client::ArkClient;

use crate::playground::{self, Layout, Playground, PlaygroundNode};

/// A running playground; dropping it stops every node and removes the temp dir.
pub struct Pg {
    /// The playground's folder, removed on drop.
    pub dir: tempfile::TempDir,
    /// The `arkd` processes this test started (reaped on drop).
    pub children: Vec<Child>,
}

/// Panics, saying how to build it, unless the `arkd` binary can be found.
pub fn arkd_built() {
    if let Err(e) = playground::find_arkd() {
        panic!("{e}: run the tests with `cargo nextest run --workspace` (or cargo test --workspace) so arkd is built");
    }
}

impl Pg {
    /// Starts `sites` sites of one node each (a snapshot every `snapshot_every` log
    /// entries) and waits until they are ready.
    pub async fn up(sites: u32, snapshot_every: u64) -> Pg {
        arkd_built();
        let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
        let layout = Layout {
            sites,
            nodes_per_site: 1,
            snapshot_logs_since_last: snapshot_every,
            ready_timeout: Duration::from_secs(60),
            ..Layout::default()
        };
        let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
        Pg { dir, children }
    }

    /// Starts a playground laid out as `layout` says and waits until it is ready.
    pub async fn up_layout(layout: &Layout) -> Pg {
        arkd_built();
        let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
        let (_, children) = playground::up(dir.path(), layout).await.unwrap();
        Pg { dir, children }
    }

    /// The playground's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What `playground.json` records now.
    pub fn info(&self) -> Playground {
        Playground::load(self.path()).unwrap()
    }

    /// Node `id` as recorded.
    pub fn node(&self, id: u64) -> PlaygroundNode {
        self.info().node(id).cloned().unwrap()
    }

    /// An SDK client for this playground.
    pub fn client(&self) -> ArkClient {
        ArkClient::new(&Playground::client_config(self.path()).unwrap()).unwrap()
    }

    /// An SDK client that talks to node `id` only (for per-node limits, or to read through
    /// a chosen node).
    pub fn client_of(&self, id: u64) -> ArkClient {
        let mut cfg = Playground::client_config(self.path()).unwrap();
        cfg.endpoints = vec![self.node(id).client_addr];
        ArkClient::new(&cfg).unwrap()
    }

    /// A client config like `client.toml` but presenting `cert`/`key`, written to
    /// `client-NAME.toml` in the playground's folder (what a test speaking as another identity,
    /// or with another CA's certificate, passes to `ark --config`).
    pub fn client_toml_as(&self, name: &str, cert: &Path, key: &Path, op_timeout_ms: u64) -> PathBuf {
        let endpoints: Vec<String> = self
            .info()
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.client_addr))
            .collect();
        let toml = format!(
            "endpoints = [{}]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nop_timeout_ms = {op_timeout_ms}\n",
            endpoints.join(", "),
            self.path().join("certs/ca.pem").display(),
            cert.display(),
            key.display()
        );
        let path = self.path().join(format!("client-{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// The playground's `client.toml`.
    pub fn client_toml(&self) -> PathBuf {
        self.path().join("client.toml")
    }

    /// kill -9 of one node.
    pub fn kill(&mut self, id: u64) {
        self.signal_and_wait(id, nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10));
    }

    /// SIGTERM of one node (a graceful stop, as systemd's); waits until it has exited.
    pub fn stop(&mut self, id: u64) {
        self.signal_and_wait(id, nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    }

    fn signal_and_wait(&mut self, id: u64, sig: nix::sys::signal::Signal, within: Duration) {
        let n = self.node(id);
        if !playground::signal_node(&n, sig).unwrap() {
            let log = n.config.parent().map(|d| d.join("arkd.log"));
            let tail = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            panic!("node {id} was not running; the end of its log:\n{tail}");
        }
        self.reap();
        let deadline = Instant::now() + within;
        while playground::process_alive(n.pid) {
            assert!(
                Instant::now() < deadline,
                "node {id} did not exit within {within:?} of {sig}"
            );
            std::thread::sleep(Duration::from_millis(10));
            self.reap();
        }
    }

    /// Starts node `id` again.
    pub fn start(&mut self, id: u64) {
        let (_, child) = playground::start_node(self.path(), id).unwrap();
        self.children.push(child);
    }

    /// Starts a new node in `site` (not yet a member).
    pub fn add_node(&mut self, site: &str, snapshot_every: u64) -> PlaygroundNode {
        let (n, child) = playground::add_node(self.path(), site, snapshot_every).unwrap();
        self.children.push(child);
        n
    }

    fn reap(&mut self) {
        for c in &mut self.children {
            let _ = c.try_wait();
        }
    }

    /// Waits for a leader other than `not` (if given); returns its id.
    pub async fn wait_leader(&self, not: Option<u64>, within: Duration) -> u64 {
        let client = self.client().with_op_timeout(Duration::from_millis(500));
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = client.status().await {
                if let Some(l) = s.leader_id {
                    if Some(l) != not && s.node_id == l {
                        return l;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no new leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the `ark` CLI against this playground. The binary is found like `arkd`
    /// (`$ARK_BIN`, beside the test, on `PATH`): the CLI crate's own tests always have it.
    pub fn ark(&self, args: &[&str]) -> Output {
        let ark = playground::find_binary("ark", "ARK_BIN").unwrap();
        let mut cmd = Command::new(ark);
        cmd.arg("--config").arg(self.client_toml()).args(args);
        cmd.output().unwrap()
    }

    /// Scrapes one counter or gauge of a node's /metrics.
    pub fn metric(&self, id: u64, name: &str) -> f64 {
        let addr = self.node(id).metrics_addr;
        let body = http_get(&addr, "/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = playground::down(self.dir.path(), Duration::from_secs(5));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The whole HTTP/1.0 answer (headers and body) of `GET http://ADDR/PATH`, retried a few
/// times while the server starts.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..5 {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match attempt {
            Ok(out) => return out,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("GET http://{addr}{path} failed: {last}");
}

/// A process's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// A process's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
