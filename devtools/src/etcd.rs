//! A real one-member etcd (Debian's `etcd-server`, installed by `make etcd`) on free 127.0.0.1
//! ports with a fresh data directory, for the fleet-mode tests. Dropping it kills the process.
//!
//! [`Etcd::stop`] and [`Etcd::start_again`] take it down and bring the same cluster back (same
//! ports, same data directory), for tests of an etcd outage. [`Etcd::put`], [`Etcd::get`],
//! [`Etcd::delete`] and [`Etcd::count`] talk to its HTTP/JSON gateway with plain keys and values
//! (base64 is done here).
//!
//! [`Etcd::start_with`] runs it as production should ([`EtcdOptions`]): clients over TLS with a
//! client certificate (a CA and certificates made at start, [`Etcd::tls`] names the files for
//! Envoy), and [`Etcd::enable_auth`] turns etcd's own authentication on with a user for the
//! plugin; the helpers then authenticate as `root` themselves. [`Etcd::start_with_args`] adds
//! flags (e.g. a tiny `--quota-backend-bytes`); [`Etcd::alarms`], [`Etcd::compact`],
//! [`Etcd::defragment`] and [`Etcd::disarm`] are an operator's maintenance calls.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::receiver::tls::TestCa;
use crate::util::{free_port, http_client, lock, workspace_root};

/// The password [`Etcd::enable_auth`] gives etcd's `root` user.
const ROOT_PASSWORD: &str = "root-test-password";

/// How [`Etcd::start_with`] runs etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// The binary; default [`etcd_bin`].
    pub bin: Option<PathBuf>,
    /// Clients over TLS only, each with a certificate signed by the test CA
    /// (`--client-cert-auth`); [`Etcd::tls`] names the files.
    pub tls: bool,
    /// `--auth-token simple --auth-token-ttl <seconds>`: how long an unused token lives.
    pub auth_token_ttl: Option<u32>,
    /// Flags added to every start (and start again), e.g. a tiny `--quota-backend-bytes`.
    pub extra_args: Vec<String>,
}

/// The PEM files of a TLS etcd, in its work directory.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate and the client's.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (empty subject) and its key, for Envoy.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// A CA, etcd's certificate (for 127.0.0.1) and a client certificate, written to `dir`.
    fn make(dir: &Path) -> Result<EtcdTls> {
        let ca = TestCa::new()?;
        let tls = EtcdTls {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        std::fs::copy(ca.pem_path(), &tls.ca).context("copying the test CA")?;
        // Not a user's name: with --client-cert-auth, etcd takes the name of the gateway's own
        // certificate (its server certificate) as the user of a call that carries no token.
        let (cert, key) = ca.server_pem("etcd-server", &["127.0.0.1", "localhost"])?;
        std::fs::write(&tls.server_cert, cert)?;
        std::fs::write(&tls.server_key, key)?;
        // No common name: etcd 3.4's gateway refuses one once authentication is on ("CommonName
        // of client sending a request against gateway will be ignored").
        let (cert, key) = ca.client_pem(None)?;
        std::fs::write(&tls.client_cert, cert)?;
        std::fs::write(&tls.client_key, key)?;
        Ok(tls)
    }

    /// A client that trusts the CA and presents the client certificate.
    fn client(&self) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?;
        let mut pem = std::fs::read(&self.client_cert)?;
        pem.extend(std::fs::read(&self.client_key)?);
        Ok(reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .identity(reqwest::Identity::from_pem(&pem)?)
            .timeout(Duration::from_secs(30))
            .build()?)
    }
}

/// etcd 3.4 is ready in about a second; this is the limit on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// A port taken between `free_port` and etcd's bind: try again on other ports.
const START_ATTEMPTS: usize = 3;
/// etcd stops within a second of SIGTERM; this is the limit on a loaded machine.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The etcd binary: `ETCD_BIN`, else `etcd` on the PATH.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

pub struct Etcd {
    launch: Launch,
    /// The `root` token the helpers send once [`Etcd::enable_auth`] ran.
    root_token: Mutex<Option<String>>,
    child: Child,
    /// Whether `child` was stopped by [`Etcd::stop`] (and not started again).
    stopped: bool,
    dir: Option<tempfile::TempDir>,
    client: reqwest::Client,
}

/// What starts the same etcd again: binary, directories, ports, TLS files, token TTL.
struct Launch {
    bin: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
    auth_token_ttl: Option<u32>,
    extra_args: Vec<String>,
}

impl Etcd {
    /// Starts [`etcd_bin`] and waits until it answers `/health` as healthy.
    pub async fn start() -> Result<Etcd> {
        Etcd::start_with(EtcdOptions::default()).await
    }

    /// Starts [`etcd_bin`] with `args` added to its flags, e.g. `--quota-backend-bytes`.
    pub async fn start_with_args(args: &[&str]) -> Result<Etcd> {
        let extra_args = args.iter().map(|a| a.to_string()).collect();
        Etcd::start_with(EtcdOptions {
            extra_args,
            ..EtcdOptions::default()
        })
        .await
    }

    /// Starts etcd as `options` say (a missing binary fails, naming `make etcd`).
    pub async fn start_with(options: EtcdOptions) -> Result<Etcd> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut etcd = Etcd::spawn(&options)?;
            match etcd.wait_ready().await {
                Ok(()) => return Ok(etcd),
                Err(e) if etcd.log_contents().contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn spawn(options: &EtcdOptions) -> Result<Etcd> {
        let dir = work_dir()?;
        let tls = match options.tls {
            true => Some(EtcdTls::make(dir.path())?),
            false => None,
        };
        let client = match &tls {
            Some(tls) => tls.client()?,
            None => http_client(),
        };
        let launch = Launch {
            bin: options.bin.clone().unwrap_or_else(etcd_bin),
            data_dir: dir.path().join("data"),
            log_path: dir.path().join("etcd.log"),
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
            auth_token_ttl: options.auth_token_ttl,
            extra_args: options.extra_args.clone(),
        };
        Ok(Etcd {
            child: launch.run()?,
            launch,
            root_token: Mutex::new(None),
            stopped: false,
            dir: Some(dir),
            client,
        })
    }

    /// Stops etcd as an operator would (SIGTERM) and waits until the process is gone: from now
    /// on nothing answers on its ports, until [`Etcd::start_again`].
    pub async fn stop(&mut self) -> Result<()> {
        ensure!(!self.stopped, "etcd is already stopped");
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "etcd had already exited ({status}); log tail:\n{}",
                self.log_tail(20)
            );
        }
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running `kill -TERM`")?;
        ensure!(sent.success(), "`kill -TERM {pid}` failed ({sent})");
        let deadline = Instant::now() + STOP_DEADLINE;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                bail!(
                    "etcd still running {STOP_DEADLINE:?} after SIGTERM; log tail:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stopped = true;
        Ok(())
    }

    /// Starts the stopped etcd again on the same ports with the same data directory (so the
    /// same cluster, with everything it held, comes back) and waits until it is healthy.
    pub async fn start_again(&mut self) -> Result<()> {
        ensure!(self.stopped, "etcd is running: stop it first");
        self.child = self.launch.run()?;
        self.stopped = false;
        self.wait_ready().await.with_context(|| {
            format!(
                "etcd restarted on its ports {} and {}",
                self.launch.client_port, self.launch.peer_port
            )
        })
    }

    /// Whether the process runs (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        !self.stopped && matches!(self.child.try_wait(), Ok(None))
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
        self.launch.client_port
    }

    /// The process id (a new one after [`Etcd::start_again`]), e.g. to read etcd's CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http(s)://127.0.0.1:<client port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.launch.url(path)
    }

    /// The TLS files, when clients must use TLS with a certificate.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.launch.tls.as_ref()
    }

    /// POSTs `body` to the gateway at `path` (e.g. `/v3/kv/range`): the status and the body.
    /// Once authentication is on, as `root` (authenticating again when etcd forgot the token).
    pub async fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
        let token = lock(&self.root_token).clone();
        let (status, text) = self.post_as(token.as_deref(), path, body).await?;
        if token.is_none() || !text.contains("invalid auth token") {
            return Ok((status, text));
        }
        let token = self.authenticate("root", ROOT_PASSWORD).await?;
        *lock(&self.root_token) = Some(token.clone());
        self.post_as(Some(&token), path, body).await
    }

    /// POSTs with `token` in `Authorization` (None: without).
    pub async fn post_as(
        &self,
        token: Option<&str>,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let mut request = self.client.post(self.url(path)).body(body.to_string());
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let resp = request
            .send()
            .await
            .with_context(|| format!("POST {path} to etcd"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// A token of `user` (`/v3/auth/authenticate`).
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<String> {
        let body = json!({"name": user, "password": password}).to_string();
        let (status, text) = self.post_as(None, "/v3/auth/authenticate", &body).await?;
        ensure!(
            status == 200,
            "authenticating {user} answered {status}: {text}"
        );
        let answer: Value = serde_json::from_str(&text)?;
        Ok(answer["token"].as_str().context("no token")?.to_string())
    }

    /// Turns etcd's authentication on: a `root` user (whom the helpers act as from now on), and
    /// `user` with `password` and a role that may read and write every key under `prefix`.
    pub async fn enable_auth(&self, user: &str, password: &str, prefix: &str) -> Result<()> {
        let role = format!("{user}-role");
        let range = json!({"permType": "READWRITE", "key": STANDARD.encode(prefix),
                           "range_end": STANDARD.encode(range_end(prefix))});
        let steps = [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": ROOT_PASSWORD}),
            ),
            ("/v3/auth/role/add", json!({"name": "root"})),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/role/add", json!({"name": role})),
            ("/v3/auth/role/grant", json!({"name": role, "perm": range})),
            (
                "/v3/auth/user/add",
                json!({"name": user, "password": password}),
            ),
            ("/v3/auth/user/grant", json!({"user": user, "role": role})),
            ("/v3/auth/enable", json!({})),
        ];
        for (path, body) in steps {
            self.call(path, &body).await?;
        }
        let token = self.authenticate("root", ROOT_PASSWORD).await?;
        *lock(&self.root_token) = Some(token);
        Ok(())
    }

    /// POSTs `body` (JSON) to the gateway at `path`, expecting 200 and a JSON answer.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, text) = self.post(path, &body.to_string()).await?;
        ensure!(status == 200, "etcd {path} answered {status}: {text}");
        serde_json::from_str(&text).with_context(|| format!("etcd {path} answered {text}"))
    }

    /// Puts `value` at `key`.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let body = json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)});
        self.call("/v3/kv/put", &body).await?;
        Ok(())
    }

    /// The value at `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let answer = self
            .call("/v3/kv/range", &json!({"key": STANDARD.encode(key)}))
            .await?;
        let Some(kv) = answer.pointer("/kvs/0") else {
            return Ok(None);
        };
        // etcd leaves `value` out when it is empty.
        let value = kv["value"].as_str().unwrap_or_default();
        Ok(Some(STANDARD.decode(value).context("etcd value")?))
    }

    /// Deletes `key`; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let answer = self
            .call("/v3/kv/deleterange", &json!({"key": STANDARD.encode(key)}))
            .await?;
        Ok(number(&answer["deleted"])? > 0)
    }

    /// How many keys start with `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<u64> {
        let body = json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(range_end(prefix)),
                          "count_only": true});
        let answer = self.call("/v3/kv/range", &body).await?;
        number(&answer["count"])
    }

    /// Every key starting with `prefix` and its value, in key order.
    pub async fn range(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let body = json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(range_end(prefix))});
        let answer = self.call("/v3/kv/range", &body).await?;
        let mut out = Vec::new();
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let key = STANDARD.decode(kv["key"].as_str().unwrap_or_default())?;
            let value = STANDARD.decode(kv["value"].as_str().unwrap_or_default())?;
            out.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        Ok(out)
    }

    /// The alarms raised, as etcd names them (`NOSPACE`, `CORRUPT`).
    pub async fn alarms(&self) -> Result<Vec<String>> {
        let answer = self
            .call("/v3/maintenance/alarm", &json!({"action": "GET"}))
            .await?;
        let alarms = answer["alarms"].as_array().into_iter().flatten();
        Ok(alarms
            .filter_map(|a| a["alarm"].as_str().map(str::to_string))
            .collect())
    }

    /// Compacts the history up to the current revision (physically, so the space is free for
    /// [`Etcd::defragment`] to give back).
    pub async fn compact(&self) -> Result<()> {
        let answer = self
            .call("/v3/kv/range", &json!({"key": STANDARD.encode("\0")}))
            .await?;
        let revision = number(&answer["header"]["revision"])?;
        let body = json!({"revision": revision.to_string(), "physical": true});
        self.call("/v3/kv/compaction", &body).await?;
        Ok(())
    }

    /// Defragments the member, returning freed space to the quota.
    pub async fn defragment(&self) -> Result<()> {
        self.call("/v3/maintenance/defragment", &json!({})).await?;
        Ok(())
    }

    /// Clears every alarm raised (an operator's `etcdctl alarm disarm`).
    pub async fn disarm(&self) -> Result<()> {
        let answer = self
            .call("/v3/maintenance/alarm", &json!({"action": "GET"}))
            .await?;
        for alarm in answer["alarms"].as_array().into_iter().flatten() {
            let mut body = alarm.clone();
            body["action"] = json!("DEACTIVATE");
            self.call("/v3/maintenance/alarm", &body).await?;
        }
        Ok(())
    }

    /// The backend's size in bytes (`dbSize` of the member's status).
    pub async fn db_size(&self) -> Result<u64> {
        let answer = self.call("/v3/maintenance/status", &json!({})).await?;
        number(&answer["dbSize"])
    }

    pub fn log_contents(&self) -> String {
        std::fs::read_to_string(&self.launch.log_path).unwrap_or_default()
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

impl Launch {
    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.client_port)
    }

    /// Starts the etcd process on its ports and data directory, appending to the log.
    fn run(&self) -> Result<Child> {
        let client_url = self.url("");
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut command = Command::new(&self.bin);
        command
            .args(["--name", "default", "--logger", "zap"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        if let Some(tls) = &self.tls {
            command
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        if let Some(ttl) = self.auth_token_ttl {
            command.args([
                "--auth-token",
                "simple",
                "--auth-token-ttl",
                &ttl.to_string(),
            ]);
        }
        command.args(&self.extra_args);
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        match child {
            Ok(child) => Ok(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "etcd is not installed ({} not found): run `make etcd` (installs Debian's etcd-server)",
                self.bin.display()
            ),
            Err(e) => Err(e).with_context(|| format!("starting {}", self.bin.display())),
        }
    }
}

/// The end of the range of keys starting with `prefix` (the prefix with its last byte plus one).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd's "\0" range end.
    vec![0]
}

/// etcd's int64 fields arrive as strings, and are left out when 0.
fn number(value: &Value) -> Result<u64> {
    match value {
        Value::Null => Ok(0),
        Value::String(s) => s.parse().with_context(|| format!("not a number: {s}")),
        other => other
            .as_u64()
            .with_context(|| format!("not a number: {other}")),
    }
}
