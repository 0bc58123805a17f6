//! A real one-member etcd (Debian's `etcd-server`, installed by `make etcd`) on free 127.0.0.1
//! ports with a fresh data directory, for the fleet-mode tests. Dropping it kills the process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{free_port, http_client, workspace_root};

/// etcd 3.4 is ready in about a second; this is the limit on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// A port taken between `free_port` and etcd's bind: try again on other ports.
const START_ATTEMPTS: usize = 3;

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

pub struct Etcd {
    child: Child,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    client_port: u16,
    client: reqwest::Client,
}

impl Etcd {
    /// Starts [`etcd_bin`] and waits until it answers `/health` as healthy.
    pub async fn start() -> Result<Etcd> {
        Etcd::start_with(&etcd_bin()).await
    }

    /// Starts the etcd binary `bin` (a missing one fails, naming `make etcd`).
    pub async fn start_with(bin: &Path) -> Result<Etcd> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut etcd = Etcd::spawn(bin)?;
            match etcd.wait_ready().await {
                Ok(()) => return Ok(etcd),
                Err(e) if etcd.log_contents().contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn spawn(bin: &Path) -> Result<Etcd> {
        let dir = work_dir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path)?;
        let child = Command::new(bin)
            .args(["--name", "default", "--logger", "zap"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "etcd is not installed ({} not found): run `make etcd` (installs Debian's etcd-server)",
                bin.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("starting {}", bin.display())),
        };
        Ok(Etcd {
            child,
            dir: Some(dir),
            log_path,
            client_port,
            client: http_client(),
        })
    }

    /// Polls `GET /health` until etcd says `{"health":"true"}` (it has a leader and serves).
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "etcd exited during start-up ({status}); log tail:\n{}",
                    self.log_tail(20)
                );
            }
            let health = self.client.get(self.url("/health")).send().await;
            if let Ok(resp) = health {
                if resp
                    .text()
                    .await
                    .is_ok_and(|t| t.contains(r#""health":"true""#))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd not healthy within {START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The client port (the gRPC API and the HTTP/JSON gateway under `/v3/`).
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// `http://127.0.0.1:<client port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.client_port)
    }

    /// POSTs `body` to the gateway at `path` (e.g. `/v3/kv/range`): the status and the body.
    pub async fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
        let resp = self
            .client
            .post(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("POST {path} to etcd"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("etcd's data and log kept in {}", dir.keep().display());
            }
        }
    }
}

/// A fresh directory under `<workspace>/.tmp` (git-ignored) for one etcd's data and log.
fn work_dir() -> Result<tempfile::TempDir> {
    let base = workspace_root().join(".tmp");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new()
        .prefix("etcd-")
        .tempdir_in(&base)
        .context("creating etcd's work directory")
}
