//! Run a real Envoy for a test, configured from the shipped `envoy.yaml`.
//!
//! Tests start from the file users get, so a test run also checks that the shipped configuration
//! still loads. [`EnvoyConfig::render`] changes only what a test must: ports (everything on
//! 127.0.0.1, the listener and admin on ports Envoy picks itself, so parallel tests never clash),
//! the upstream port, the absolute path of the `.wasm`, and the plugin configuration, in both
//! places it appears (the HTTP filter and the bootstrap dispatcher).
//!
//! One more change is on by default, because test receivers live on 127.0.0.1 and tests must
//! reach nothing else: the egress clusters' `resolved_address_filter` refuses every address but
//! 127.0.0.0/8 (so a test's `https://hooks.example.com` subscription is never delivered to for
//! real). Tests of egress safety turn that off with [`EnvoyConfig::shipped_egress`] and run the
//! egress clusters exactly as the base configuration has them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::util::{http_client, workspace_root};

/// How long Envoy may take to become ready (or to fail, for bad configurations).
const START_DEADLINE: Duration = Duration::from_secs(20);
/// A SIGKILLed process is gone at once; this only bounds a wait that should never last.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

const HTTP_WASM_FILTER: &str = "envoy.filters.http.wasm";
const BOOTSTRAP_WASM: &str = "envoy.bootstrap.wasm";
const HCM: &str = "envoy.filters.network.http_connection_manager";
const UPSTREAM_CLUSTER: &str = "api_upstream";
const HTTPS_EGRESS_CLUSTER: &str = "webhooks_egress_https";

/// The release build of the plugin, relative to the workspace root.
pub const WASM_RELATIVE_PATH: &str = "target/wasm32-wasip1/release/proxy_webhooks.wasm";

/// What to change in the shipped `envoy.yaml` for one Envoy instance.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    /// The plugin configuration (a JSON document, given verbatim to the filter and the dispatcher).
    pub plugin_config: String,
    /// Port of the API behind Envoy (the `api_upstream` cluster) on 127.0.0.1.
    pub upstream_port: u16,
    /// Listener port; 0 lets Envoy pick a free one (read back after start).
    pub listener_port: u16,
    /// Admin port; 0 lets Envoy pick a free one (read back after start).
    pub admin_port: u16,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Without the plugin (no wasm filter, no bootstrap dispatcher): the baseline for benchmarks.
    pub plain: bool,
    /// Clusters appended to `static_resources.clusters`.
    pub extra_clusters: Vec<Value>,
    /// HTTP filters inserted, in order, just before the plugin's filter (e.g. authentication).
    pub filters_before_plugin: Vec<Value>,
    /// `--log-level`.
    pub log_level: String,
    /// The `.wasm` file; defaults to [`wasm_path`].
    pub wasm_path: PathBuf,
    /// The Envoy configuration to start from; defaults to the workspace's `envoy.yaml`.
    pub base_config: PathBuf,
    /// CA certificates (PEM) the https egress cluster trusts instead of the shipped bundle.
    pub trusted_ca: Option<PathBuf>,
    /// Lets the egress clusters reach 127.0.0.0/8 (where test receivers listen) and nothing else:
    /// their `resolved_address_filter` refuses every other address. Default true; see
    /// [`EnvoyConfig::shipped_egress`].
    pub loopback_egress: bool,
    /// Environment variables of the Envoy process handed to both plugin VMs
    /// (`vm_config.environment_variables.host_env_keys`), as an operator gives secrets.
    pub vm_env: Vec<(String, String)>,
    /// Keeps the runtime key `http.async_response_buffer_limit` the base configuration must
    /// have. Default true; see [`EnvoyConfig::without_answer_limit`].
    pub answer_limit: bool,
}

/// Envoy's runtime key capping what it buffers of a callout's answer (docs/operations.md).
pub const ANSWER_LIMIT_KEY: &str = "http.async_response_buffer_limit";

impl EnvoyConfig {
    /// The shipped configuration with `plugin_config` (a `serde_json::Value` or a raw string),
    /// in front of an API on `127.0.0.1:upstream_port`.
    pub fn new(plugin_config: impl ToString, upstream_port: u16) -> EnvoyConfig {
        let root = workspace_root();
        EnvoyConfig {
            plugin_config: plugin_config.to_string(),
            upstream_port,
            listener_port: 0,
            admin_port: 0,
            concurrency: 2,
            plain: false,
            extra_clusters: Vec::new(),
            filters_before_plugin: Vec::new(),
            log_level: "info".to_string(),
            wasm_path: wasm_path(&root),
            base_config: root.join("envoy.yaml"),
            trusted_ca: None,
            loopback_egress: true,
            vm_env: Vec::new(),
            answer_limit: true,
        }
    }

    /// Plain Envoy (no plugin) in front of `127.0.0.1:upstream_port`.
    pub fn plain(upstream_port: u16) -> EnvoyConfig {
        EnvoyConfig {
            plain: true,
            ..EnvoyConfig::new("{}", upstream_port)
        }
    }

    pub fn concurrency(mut self, workers: u32) -> EnvoyConfig {
        self.concurrency = workers;
        self
    }

    pub fn log_level(mut self, level: &str) -> EnvoyConfig {
        self.log_level = level.to_string();
        self
    }

    pub fn with_cluster(mut self, cluster: Value) -> EnvoyConfig {
        self.extra_clusters.push(cluster);
        self
    }

    /// Sets `name` to `value` in Envoy's environment and lists it in both plugin VMs'
    /// `environment_variables.host_env_keys` (replacing an earlier value of the same name).
    pub fn with_vm_env(mut self, name: &str, value: &str) -> EnvoyConfig {
        self.vm_env.retain(|(n, _)| n != name);
        self.vm_env.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs `filter` (an `http_filters` entry) before the plugin's filter, after any added before.
    pub fn with_filter_before_plugin(mut self, filter: Value) -> EnvoyConfig {
        self.filters_before_plugin.push(filter);
        self
    }

    /// Makes `webhooks_egress_https` trust the CA certificates in `pem` (e.g. a test CA) instead
    /// of the system bundle.
    pub fn trusted_ca(mut self, pem: &Path) -> EnvoyConfig {
        self.trusted_ca = Some(pem.to_path_buf());
        self
    }

    /// Keeps the egress clusters' `resolved_address_filter` exactly as the base configuration has
    /// it (the shipped one refuses loopback): for tests that check a delivery cannot reach inside,
    /// and for the demo's configuration, which has its own.
    pub fn shipped_egress(mut self) -> EnvoyConfig {
        self.loopback_egress = false;
        self
    }

    /// Removes the runtime key capping callout answers, to show what it prevents. Only tests
    /// that measure its absence want this.
    pub fn without_answer_limit(mut self) -> EnvoyConfig {
        self.answer_limit = false;
        self
    }

    /// The Envoy configuration as JSON (what is written to the `-c` file).
    pub fn render(&self) -> Result<Value> {
        let text = std::fs::read_to_string(&self.base_config)
            .with_context(|| format!("reading {}", self.base_config.display()))?;
        // serde_yaml resolves the anchors (`&webhooks_config` / `*webhooks_config`), so each use
        // becomes its own copy that can be changed separately.
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
            .with_context(|| format!("parsing {}", self.base_config.display()))?;
        let mut root = serde_json::to_value(yaml).context("converting envoy.yaml to JSON")?;
        set_admin(&mut root, self.admin_port)?;
        set_listener(&mut root, self.listener_port)?;
        set_upstream(&mut root, self.upstream_port)?;
        if !self.plain {
            answer_limit(&root).with_context(|| {
                format!(
                    "{} must bound what Envoy buffers of a receiver's answer",
                    self.base_config.display()
                )
            })?;
        }
        if !self.answer_limit {
            remove_answer_limit(&mut root)?;
        }
        if self.plain {
            remove_plugin(&mut root)?;
        } else {
            let env_keys: Vec<&str> = self.vm_env.iter().map(|(k, _)| k.as_str()).collect();
            set_plugin(&mut root, &self.wasm_path, &self.plugin_config, &env_keys)?;
        }
        if let Some(pem) = &self.trusted_ca {
            set_trusted_ca(&mut root, pem)?;
        }
        if self.loopback_egress {
            allow_loopback_egress(&mut root)?;
        }
        if !has_resolved_address_filter()? {
            remove_resolved_address_filter(&mut root)?;
        }
        add_clusters(&mut root, &self.extra_clusters)?;
        insert_filters(&mut root, &self.filters_before_plugin)?;
        Ok(root)
    }
}

/// What a configuration's static runtime layers set [`ANSWER_LIMIT_KEY`] to.
pub fn answer_limit(root: &Value) -> Result<u64> {
    let layers = root
        .pointer("/layered_runtime/layers")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no layered_runtime.layers"))?;
    layers
        .iter()
        .find_map(|layer| {
            layer
                .pointer("/static_layer")?
                .get(ANSWER_LIMIT_KEY)?
                .as_u64()
        })
        .ok_or_else(|| anyhow!("no static runtime layer sets {ANSWER_LIMIT_KEY}"))
}

/// Removes [`ANSWER_LIMIT_KEY`] from every static runtime layer.
fn remove_answer_limit(root: &mut Value) -> Result<()> {
    for layer in array_at(root, "/layered_runtime/layers")? {
        if let Some(Value::Object(values)) = layer.get_mut("static_layer") {
            values.remove(ANSWER_LIMIT_KEY);
        }
    }
    Ok(())
}

fn set_admin(root: &mut Value, port: u16) -> Result<()> {
    let address = root
        .pointer_mut("/admin/address")
        .ok_or_else(|| anyhow!("envoy.yaml has no admin.address"))?;
    *address = json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    Ok(())
}

fn set_listener(root: &mut Value, port: u16) -> Result<()> {
    let listeners = array_at(root, "/static_resources/listeners")?;
    let [listener] = listeners.as_mut_slice() else {
        bail!("envoy.yaml should have exactly one listener");
    };
    listener["address"] = json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    Ok(())
}

fn set_upstream(root: &mut Value, port: u16) -> Result<()> {
    let clusters = array_at(root, "/static_resources/clusters")?;
    let cluster = clusters
        .iter_mut()
        .find(|c| c["name"] == UPSTREAM_CLUSTER)
        .ok_or_else(|| anyhow!("envoy.yaml has no cluster {UPSTREAM_CLUSTER}"))?;
    cluster["load_assignment"] = json!({
        "cluster_name": UPSTREAM_CLUSTER,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address":
            {"address": "127.0.0.1", "port_value": port}}}}]}]
    });
    Ok(())
}

/// Where the https egress cluster names its trusted CA bundle.
const TRUSTED_CA_FILENAME: &str =
    "/transport_socket/typed_config/common_tls_context/validation_context/trusted_ca/filename";

fn set_trusted_ca(root: &mut Value, pem: &Path) -> Result<()> {
    let clusters = array_at(root, "/static_resources/clusters")?;
    let filename = clusters
        .iter_mut()
        .find(|c| c["name"] == HTTPS_EGRESS_CLUSTER)
        .and_then(|c| c.pointer_mut(TRUSTED_CA_FILENAME))
        .ok_or_else(|| {
            anyhow!("envoy.yaml has no {TRUSTED_CA_FILENAME} in {HTTPS_EGRESS_CLUSTER}")
        })?;
    *filename = json!(pem.display().to_string());
    Ok(())
}

/// Every address but 127.0.0.0/8, as `resolved_address_filter` ranges (prefix, length).
pub const ALL_BUT_LOOPBACK: &[(&str, u64)] = &[
    ("0.0.0.0", 2),
    ("64.0.0.0", 3),
    ("96.0.0.0", 4),
    ("112.0.0.0", 5),
    ("120.0.0.0", 6),
    ("124.0.0.0", 7),
    ("126.0.0.0", 8),
    ("128.0.0.0", 1),
    ("::", 1),
    ("8000::", 1),
];

/// Makes every dynamic-forward-proxy cluster's DNS cache refuse all addresses but loopback.
fn allow_loopback_egress(root: &mut Value) -> Result<()> {
    let ranges: Vec<Value> = ALL_BUT_LOOPBACK
        .iter()
        .map(|(prefix, len)| json!({"address_prefix": prefix, "prefix_len": len}))
        .collect();
    for cluster in array_at(root, "/static_resources/clusters")? {
        if let Some(cache) = cluster.pointer_mut("/cluster_type/typed_config/dns_cache_config") {
            cache["resolved_address_filter"] = json!({"ranges": ranges});
        }
    }
    Ok(())
}

/// The DNS cache field that Envoy before 1.39 lacks (docs/envoy-versions.md).
pub const RESOLVED_ADDRESS_FILTER: &str = "resolved_address_filter";

/// Removes [`RESOLVED_ADDRESS_FILTER`] from every dynamic-forward-proxy cluster's DNS cache (what
/// an Envoy before 1.39 needs to load the configuration at all); how many it removed.
pub fn remove_resolved_address_filter(root: &mut Value) -> Result<usize> {
    let mut removed = 0;
    for cluster in array_at(root, "/static_resources/clusters")? {
        if let Some(Value::Object(cache)) =
            cluster.pointer_mut("/cluster_type/typed_config/dns_cache_config")
        {
            removed += usize::from(cache.remove(RESOLVED_ADDRESS_FILTER).is_some());
        }
    }
    Ok(removed)
}

/// Points both plugin instances at `wasm` with `configuration`; fails unless both were found.
/// `env_keys`: Envoy's environment variables both VMs get (none: `vm_config` as it is).
fn set_plugin(root: &mut Value, wasm: &Path, configuration: &str, env_keys: &[&str]) -> Result<()> {
    let mut found = 0;
    let mut apply = |config: &mut Value| {
        config["vm_config"]["code"]["local"]["filename"] = json!(wasm.display().to_string());
        if !env_keys.is_empty() {
            config["vm_config"]["environment_variables"] = json!({"host_env_keys": env_keys});
        }
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration,
        });
        found += 1;
    };
    for ext in bootstrap_wasm(root)? {
        apply(&mut ext["typed_config"]["config"]);
    }
    for filter in http_filters(root)?
        .into_iter()
        .flat_map(|f| f.iter_mut())
        .filter(|f| f["name"] == HTTP_WASM_FILTER)
    {
        // The filter may be wrapped in an ExtensionWithMatcher (envoy.yaml skips it for reads).
        let typed = &mut filter["typed_config"];
        if typed.get("extension_config").is_some() {
            apply(&mut typed["extension_config"]["typed_config"]["config"]);
        } else {
            apply(&mut typed["config"]);
        }
    }
    if found != 2 {
        bail!(
            "expected the plugin twice in envoy.yaml (filter + dispatcher), found it {found} times"
        );
    }
    Ok(())
}

/// Removes the wasm HTTP filter and the bootstrap dispatcher.
fn remove_plugin(root: &mut Value) -> Result<()> {
    if let Some(exts) = root
        .get_mut("bootstrap_extensions")
        .and_then(Value::as_array_mut)
    {
        exts.retain(|e| e["name"] != BOOTSTRAP_WASM);
    }
    for filters in http_filters(root)? {
        filters.retain(|f| f["name"] != HTTP_WASM_FILTER);
    }
    // Routes that switch the filter off name it; without the filter they must not.
    for route in routes(root)? {
        if let Some(per_filter) = route
            .get_mut("typed_per_filter_config")
            .and_then(Value::as_object_mut)
        {
            per_filter.remove(HTTP_WASM_FILTER);
            if per_filter.is_empty() {
                route
                    .as_object_mut()
                    .map(|r| r.remove("typed_per_filter_config"));
            }
        }
    }
    Ok(())
}

/// Every route of every virtual host of every listener's connection manager.
fn routes(root: &mut Value) -> Result<Vec<&mut Value>> {
    let mut out = Vec::new();
    for listener in array_at(root, "/static_resources/listeners")? {
        let chains = listener["filter_chains"]
            .as_array_mut()
            .into_iter()
            .flatten();
        let managers = chains.flat_map(|c| c["filters"].as_array_mut().into_iter().flatten());
        for manager in managers {
            let hosts = manager["typed_config"]["route_config"]["virtual_hosts"].as_array_mut();
            for host in hosts.into_iter().flatten() {
                out.extend(host["routes"].as_array_mut().into_iter().flatten());
            }
        }
    }
    Ok(out)
}

/// Puts `filters` in front of the plugin's filter in every connection manager that has it.
fn insert_filters(root: &mut Value, filters: &[Value]) -> Result<()> {
    if filters.is_empty() {
        return Ok(());
    }
    let mut inserted = false;
    for list in http_filters(root)? {
        if let Some(at) = list.iter().position(|f| f["name"] == HTTP_WASM_FILTER) {
            list.splice(at..at, filters.iter().cloned());
            inserted = true;
        }
    }
    if !inserted {
        bail!("envoy.yaml has no {HTTP_WASM_FILTER} filter to insert filters before");
    }
    Ok(())
}

fn add_clusters(root: &mut Value, extra: &[Value]) -> Result<()> {
    array_at(root, "/static_resources/clusters")?.extend(extra.iter().cloned());
    Ok(())
}

fn bootstrap_wasm(root: &mut Value) -> Result<Vec<&mut Value>> {
    Ok(array_at(root, "/bootstrap_extensions")?
        .iter_mut()
        .filter(|e| e["name"] == BOOTSTRAP_WASM)
        .collect())
}

/// The `http_filters` list of every HTTP connection manager of every listener.
fn http_filters(root: &mut Value) -> Result<Vec<&mut Vec<Value>>> {
    let mut lists = Vec::new();
    for listener in array_at(root, "/static_resources/listeners")? {
        let chains = listener
            .get_mut("filter_chains")
            .and_then(Value::as_array_mut);
        for chain in chains.into_iter().flatten() {
            let filters = chain.get_mut("filters").and_then(Value::as_array_mut);
            for filter in filters.into_iter().flatten().filter(|f| f["name"] == HCM) {
                if let Some(list) = filter
                    .pointer_mut("/typed_config/http_filters")
                    .and_then(Value::as_array_mut)
                {
                    lists.push(list);
                }
            }
        }
    }
    Ok(lists)
}

fn array_at<'a>(root: &'a mut Value, pointer: &str) -> Result<&'a mut Vec<Value>> {
    root.pointer_mut(pointer)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("envoy.yaml has no list at {pointer}"))
}

/// The plugin: `$PROXY_WEBHOOKS_WASM` (e.g. another build), else the workspace's release build.
pub fn wasm_path(workspace: &Path) -> PathBuf {
    match std::env::var_os("PROXY_WEBHOOKS_WASM") {
        Some(path) => PathBuf::from(path),
        None => workspace.join(WASM_RELATIVE_PATH),
    }
}

/// The Envoy binary: `$ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`. Missing is an error, not a
/// reason to skip: integration tests that silently do nothing would hide a broken setup.
pub fn envoy_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join(".venv/bin/envoy"),
    };
    if !path.exists() {
        bail!(
            "Envoy not found at {} (set ENVOY_BIN or install it with `make envoy`)",
            path.display()
        );
    }
    Ok(path)
}

/// The version of the Envoy at [`envoy_bin`] (`(1, 36, 4)`), from `envoy --version`; read once.
pub fn envoy_version() -> Result<(u32, u32, u32)> {
    static VERSION: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    let version = VERSION.get_or_init(|| version_of(&envoy_bin().ok()?).ok());
    version.ok_or_else(|| anyhow!("cannot read the version of {:?}", envoy_bin().ok()))
}

/// The version `envoy --version` of `bin` prints (`envoy  version: <sha>/1.36.4/Clean/...`).
pub fn version_of(bin: &Path) -> Result<(u32, u32, u32)> {
    let output = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = text
        .split_once("version:")
        .and_then(|(_, rest)| rest.split('/').nth(1))
        .with_context(|| format!("no version in {text:?}"))?;
    let mut parts = field.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => Ok((major, minor, patch)),
        _ => bail!("no version in {text:?}"),
    }
}

/// Whether the Envoy under test has the DNS cache's `resolved_address_filter` (1.39 and later):
/// the harness removes it from configurations for older ones, which then do not refuse what a
/// name resolves to (docs/envoy-versions.md).
pub fn has_resolved_address_filter() -> Result<bool> {
    Ok(envoy_version()? >= (1, 39, 0))
}

/// A running Envoy. Dropping it kills the process; the work directory (configuration and log) is
/// deleted, unless the thread is panicking (a failing test) or `DEVTOOLS_KEEP_ENVOY` is set, when
/// it is kept and its path printed.
pub struct Envoy {
    child: Child,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    listener_port: u16,
    admin_port: u16,
    client: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy and waits until its admin `/ready` answers 200.
    pub async fn start(cfg: EnvoyConfig) -> Result<Envoy> {
        let mut envoy = Envoy::spawn(&cfg)?;
        let deadline = Instant::now() + START_DEADLINE;
        envoy.admin_port = envoy.wait_admin_port(deadline).await?;
        envoy.wait_ready(deadline).await?;
        envoy.listener_port = match cfg.listener_port {
            0 => envoy.read_listener_port().await?,
            port => port,
        };
        Ok(envoy)
    }

    /// Runs Envoy with a configuration it must refuse: waits for a non-zero exit and returns the
    /// log. Starting (becoming ready) or exiting with 0 is an error.
    pub async fn start_expect_failure(cfg: EnvoyConfig) -> Result<String> {
        let mut envoy = Envoy::spawn(&cfg)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = envoy.child.try_wait()? {
                let log = envoy.log_contents();
                if status.success() {
                    bail!("Envoy exited with success, expected a failure; log:\n{log}");
                }
                return Ok(log);
            }
            if envoy.admin_port == 0 {
                envoy.admin_port = envoy.read_admin_port().unwrap_or(0);
            }
            if envoy.admin_port != 0 && envoy.is_ready().await {
                bail!("Envoy started although it should have refused the configuration; log tail:\n{}", envoy.log_tail(40));
            }
            if Instant::now() >= deadline {
                bail!("Envoy neither failed nor became ready within {START_DEADLINE:?}; log tail:\n{}", envoy.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the configuration and starts the process (not yet waiting for anything).
    fn spawn(cfg: &EnvoyConfig) -> Result<Envoy> {
        let bin = envoy_bin()?;
        if !cfg.plain && !cfg.wasm_path.exists() {
            bail!(
                "the plugin is not built: {} is missing (build it with `make wasm`)",
                cfg.wasm_path.display()
            );
        }
        let dir = work_dir()?;
        let config_path = dir.path().join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&cfg.render()?)?)?;
        let log_path = dir.path().join("envoy.log");
        let log = File::create(&log_path)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &cfg.concurrency.to_string()])
            .args(["--log-level", &cfg.log_level])
            // No shared memory for hot restart: parallel instances need no distinct base ids.
            .arg("--disable-hot-restart")
            .envs(cfg.vm_env.iter().map(|(k, v)| (k, v)))
            .arg("--admin-address-path")
            .arg(dir.path().join("admin-address"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Envoy {
            child,
            dir: Some(dir),
            log_path,
            listener_port: cfg.listener_port,
            admin_port: cfg.admin_port,
            client: http_client(),
        })
    }

    /// The admin port Envoy bound (it writes `host:port` to `--admin-address-path`).
    async fn wait_admin_port(&mut self, deadline: Instant) -> Result<u16> {
        loop {
            self.fail_if_exited()?;
            if let Some(port) = self.read_admin_port() {
                return Ok(port);
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy did not open its admin port within {START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn read_admin_port(&self) -> Option<u16> {
        let dir = self.dir.as_ref()?;
        let text = std::fs::read_to_string(dir.path().join("admin-address")).ok()?;
        text.trim().rsplit(':').next()?.parse().ok()
    }

    async fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            self.fail_if_exited()?;
            if self.is_ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy was not ready within {START_DEADLINE:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        let response = self.client.get(self.admin_url("/ready")).send().await;
        matches!(response, Ok(r) if r.status() == 200)
    }

    fn fail_if_exited(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Envoy exited during start-up ({status}); log tail:\n{}",
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The port of the (only) listener, from admin `/listeners`.
    async fn read_listener_port(&self) -> Result<u16> {
        let listeners: Value = self
            .client
            .get(self.admin_url("/listeners?format=json"))
            .send()
            .await?
            .json()
            .await?;
        listeners
            .pointer("/listener_statuses/0/local_address/socket_address/port_value")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no listener port in admin /listeners: {listeners}"))
    }

    /// `http://127.0.0.1:<listener><path>`: where API clients send requests.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.listener_port, path)
    }

    /// `http://127.0.0.1:<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    pub fn listener_port(&self) -> u16 {
        self.listener_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The HTTP client the harness uses for this Envoy (its connections are reused).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The Envoy process id (benchmarks read its memory use from `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's resident memory (`VmRSS`) in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }

    /// A counter or gauge by name; `name` may omit the `wasmcustom.` prefix of plugin stats.
    /// `None` when Envoy has no such stat (e.g. the plugin never defined it).
    pub async fn stat(&self, name: &str) -> Result<Option<u64>> {
        let regex = format!("^(wasmcustom\\.)?{}$", name.replace('.', "\\."));
        let stats: Value = self
            .client
            .get(self.admin_url("/stats"))
            .query(&[("format", "json"), ("filter", regex.as_str())])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let candidates = [name.to_string(), format!("wasmcustom.{name}")];
        let value = stats["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| candidates.iter().any(|c| s["name"] == c.as_str()))
            .and_then(|s| s["value"].as_u64());
        Ok(value)
    }

    /// A counter's value (0 when it does not exist yet).
    pub async fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.stat(name).await?.unwrap_or(0))
    }

    /// A gauge's value (0 when it does not exist yet).
    pub async fn gauge(&self, name: &str) -> Result<u64> {
        Ok(self.stat(name).await?.unwrap_or(0))
    }

    /// Polls until counter `name` is at least `min`; returns its value.
    pub async fn wait_for_counter(&self, name: &str, min: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.counter(name).await?;
            if value >= min {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!("counter {name} is {value} after {timeout:?}, expected at least {min}; log tail:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything Envoy logged so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Asks Envoy to stop as on `docker stop` or a Kubernetes pod termination (SIGTERM), and waits
    /// for the process to exit; returns how it exited. Fails if it is still running after
    /// `timeout` (it is then killed when dropped).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Envoy had already exited ({status}) before SIGTERM; log tail:\n{}",
                self.log_tail(40)
            );
        }
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running `kill -TERM`")?;
        if !sent.success() {
            bail!("`kill -TERM {pid}` failed ({sent})");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy still running {timeout:?} after SIGTERM; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills Envoy with SIGKILL, as a crash or the OOM killer would (no shutdown code runs), and
    /// waits until the process is gone; returns how it exited. Fails if it had already exited.
    pub async fn kill(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "Envoy had already exited ({status}) before SIGKILL; log tail:\n{}",
                self.log_tail(40)
            );
        }
        // std's `Child::kill` sends SIGKILL on Unix.
        self.child.kill().context("sending SIGKILL to Envoy")?;
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("Envoy still running {KILL_DEADLINE:?} after SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The directory with `envoy.json` and `envoy.log`.
    pub fn work_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("DEVTOOLS_KEEP_ENVOY").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "Envoy's configuration and log kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// A fresh directory under `<workspace>/.tmp` (git-ignored) for one Envoy's files.
fn work_dir() -> Result<tempfile::TempDir> {
    let base = workspace_root().join(".tmp");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new()
        .prefix("envoy-")
        .tempdir_in(&base)
        .context("creating Envoy's work directory")
}

/// `VmRSS` of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    match kb {
        Some(kb) => Ok(kb * 1024),
        None => bail!("no VmRSS in /proc/{pid}/status"),
    }
}
