//! etcd for the fleet benches: the same one-member etcd on free 127.0.0.1 ports as the test
//! harness's ([`crate::etcd`]), started by the bench itself so that it knows the process (its CPU
//! time is part of what scenario 11 compares) and can pass flags.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::etcd::etcd_bin;
use crate::util::{free_port, http_client, workspace_root};

const START_DEADLINE: Duration = Duration::from_secs(20);

pub struct BenchEtcd {
    child: Child,
    _dir: tempfile::TempDir,
    log_path: PathBuf,
    client_port: u16,
}

impl BenchEtcd {
    /// Starts etcd and waits until `/health` says it serves.
    pub async fn start() -> Result<BenchEtcd> {
        let base = workspace_root().join(".tmp");
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix("bench-etcd-")
            .tempdir_in(&base)?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path)?;
        let child = Command::new(etcd_bin())
            .args([
                "--name",
                "default",
                "--logger",
                "zap",
                "--log-level",
                "warn",
            ])
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
            .spawn()
            .context("starting etcd (installed by `make etcd`)")?;
        let mut etcd = BenchEtcd {
            child,
            _dir: dir,
            log_path,
            client_port,
        };
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = http_client();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited at start ({status}):\n{}", self.log_tail());
            }
            if let Ok(resp) = client.get(self.url("/health")).send().await {
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
                    "etcd not healthy after {START_DEADLINE:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.client_port)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The Envoy cluster `webhooks_etcd` pointing at this etcd's client port.
    pub fn envoy_cluster(&self) -> serde_json::Value {
        serde_json::json!({
            "name": super::ETCD_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": super::ETCD_CLUSTER, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address":
                    {"address": "127.0.0.1", "port_value": self.client_port}}}}]}]}
        })
    }
}

impl Drop for BenchEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
