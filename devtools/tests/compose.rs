//! `docker compose up` cannot run here (no Docker engine), so these tests check what can go wrong
//! without one: the compose Envoy configuration drifting from the root envoy.yaml, a mount of a
//! file that does not exist, a port published that Envoy does not listen on, a build target the
//! Dockerfile lacks; the same for the fleet example (deploy/compose-fleet: two Envoys and etcd),
//! and both compose Envoy configurations pass the real Envoy's `--mode validate` (which loads the
//! plugin and its configuration). `make compose-check` validates the compose files' syntax with
//! docker-compose.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use devtools::files::{load_yaml, plugin_config};
use devtools::workspace_root;
use serde_json::{json, Value};

const COMPOSE_ENVOY: &str = "deploy/compose/envoy.yaml";
const DEMO_ENVOY: &str = "deploy/demo/envoy.yaml";

/// The root envoy.yaml changed exactly as deploy/demo/envoy.yaml's header says.
fn root_as_demo_should_be(root: &Value) -> Result<Value> {
    let mut expected = root.clone();
    expected["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] =
        json!("127.0.0.1");
    let mut plugin = plugin_config(root)?;
    plugin["api"]["keys"] = json!([{"consumer": "demo",
        "sha256": "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"}]);
    plugin["subscriptions"] = json!([{"id": "sub_demo_receiver", "consumer": "demo",
        "url": "http://127.0.0.1:9000/webhooks", "events": ["*"],
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "description": "the bundled demo receiver"}]);
    plugin["delivery"]["allow_http"] = json!(true);
    plugin["delivery"]["allow_private_destinations"] = json!(true);
    set_plugin_configs(&mut expected, &plugin);
    let refused = refused_ranges(root)?;
    set_refused_ranges(&mut expected, without(&refused, &["127.0.0.0/8"]))?;
    Ok(expected)
}

/// The demo's envoy.yaml changed exactly as deploy/compose/envoy.yaml's header says.
fn demo_as_compose_should_be(demo: &Value, root: &Value, compose: &Value) -> Result<Value> {
    let mut expected = demo.clone();
    // The read-only stats listener and its admin cluster (checked on their own below).
    let stats = read_only_stats_listener(compose)?;
    if let Some(listeners) = expected
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
    {
        listeners.push(stats);
    }
    let admin_cluster = compose_cluster(compose, "envoy_admin")?;
    clusters_mut(&mut expected)?.push(admin_cluster);
    expected["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] =
        json!("0.0.0.0");
    let upstream = clusters_mut(&mut expected)?
        .iter_mut()
        .find(|c| c["name"] == "api_upstream")
        .context("no api_upstream cluster in envoy.yaml")?;
    upstream["type"] = json!("STRICT_DNS");
    upstream["dns_lookup_family"] = json!("V4_ONLY");
    let address = upstream
        .pointer_mut("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address")
        .context("api_upstream has no endpoint address")?;
    address["address"] = json!("orders");
    let mut plugin = plugin_config(demo)?;
    plugin["subscriptions"][0]["url"] = json!("http://receiver:9000/webhooks");
    set_plugin_configs(&mut expected, &plugin);
    let docker_networks = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
    set_refused_ranges(
        &mut expected,
        without(&refused_ranges(root)?, &docker_networks),
    )?;
    Ok(expected)
}

/// The compose file's `stats` listener, after checking that it passes only GET/HEAD of /stats…
/// and /ready to admin: deliveries can reach this container's address in the compose demo, and
/// must find nothing there that changes Envoy.
fn read_only_stats_listener(compose: &Value) -> Result<Value> {
    let listener = compose
        .pointer("/static_resources/listeners")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|l| l["name"] == "stats"))
        .context("no stats listener in the compose envoy.yaml")?;
    let routes = listener
        .pointer("/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes")
        .and_then(Value::as_array)
        .context("the stats listener has no routes")?;
    for route in routes {
        let by_prefix = route["match"]["prefix"] == "/stats";
        let by_path = route["match"]["path"] == "/ready";
        let method = route
            .pointer("/match/headers/0/string_match/safe_regex/regex")
            .and_then(Value::as_str);
        ensure!(
            (by_prefix || by_path) && method == Some("GET|HEAD"),
            "the stats listener routes more than GET/HEAD /stats… and /ready: {route}"
        );
    }
    ensure!(
        compose["admin"]["address"]["socket_address"]["address"] == "127.0.0.1",
        "admin must stay on the container's loopback"
    );
    Ok(listener.clone())
}

fn compose_cluster(compose: &Value, name: &str) -> Result<Value> {
    compose
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .cloned()
        .with_context(|| format!("no {name} cluster in the compose envoy.yaml"))
}

const RANGES: &str = "/cluster_type/typed_config/dns_cache_config/resolved_address_filter/ranges";

/// The egress DNS cache's `resolved_address_filter` ranges (the root envoy.yaml's).
fn refused_ranges(envoy: &Value) -> Result<Vec<Value>> {
    envoy["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| c.pointer(RANGES).and_then(Value::as_array))
        .cloned()
        .context("no resolved_address_filter in envoy.yaml")
}

fn without(ranges: &[Value], cidrs: &[&str]) -> Vec<Value> {
    let cidr = |r: &Value| {
        format!(
            "{}/{}",
            r["address_prefix"].as_str().unwrap_or(""),
            r["prefix_len"]
        )
    };
    ranges
        .iter()
        .filter(|r| !cidrs.contains(&cidr(r).as_str()))
        .cloned()
        .collect()
}

/// Sets the ranges of every cluster that has a DNS cache filter (the egress clusters share one).
fn set_refused_ranges(envoy: &mut Value, ranges: Vec<Value>) -> Result<()> {
    for cluster in clusters_mut(envoy)? {
        if let Some(r) = cluster.pointer_mut(RANGES) {
            *r = json!(ranges);
        }
    }
    Ok(())
}

fn clusters_mut(envoy: &mut Value) -> Result<&mut Vec<Value>> {
    envoy
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .context("no static_resources.clusters")
}

/// Replaces every plugin `configuration` string by the parsed document, so that two files
/// compare equal whatever their JSON whitespace.
fn set_plugin_configs(value: &mut Value, plugin: &Value) {
    match value {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str)
                == Some("type.googleapis.com/google.protobuf.StringValue")
            {
                map.insert("value".into(), plugin.clone());
            }
            map.values_mut().for_each(|v| set_plugin_configs(v, plugin));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| set_plugin_configs(v, plugin)),
        _ => {}
    }
}

/// The JSON pointers where `a` and `b` differ.
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let (va, vb) = (x.get(key).unwrap_or(&Value::Null), y.get(key));
                differences(va, vb.unwrap_or(&Value::Null), &format!("{at}/{key}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: {a} vs {b}")),
        _ => {}
    }
}

/// The file at `derived_path` is exactly `expected` (plugin configurations compared as JSON).
fn check_derived(derived_path: &str, expected: &Value) -> Result<()> {
    let mut derived = load_yaml(&workspace_root().join(derived_path))?;
    let plugin = plugin_config(&derived)?;
    set_plugin_configs(&mut derived, &plugin);
    let mut diff = Vec::new();
    differences(expected, &derived, "", &mut diff);
    ensure!(
        diff.is_empty(),
        "{derived_path} drifted from the file it derives from (bring the change over, or list it \
         in the header of {derived_path} and in this test):\n  {}",
        diff.join("\n  ")
    );
    Ok(())
}

#[test]
fn demo_envoy_config_differs_from_the_root_one_only_in_the_demo_settings() -> Result<()> {
    let root = load_yaml(&workspace_root().join("envoy.yaml"))?;
    check_derived(DEMO_ENVOY, &root_as_demo_should_be(&root)?)
}

#[test]
fn compose_envoy_config_differs_from_the_demo_one_only_where_containers_need_it() -> Result<()> {
    let root = load_yaml(&workspace_root().join("envoy.yaml"))?;
    let demo = load_yaml(&workspace_root().join(DEMO_ENVOY))?;
    let compose = load_yaml(&workspace_root().join(COMPOSE_ENVOY))?;
    check_derived(
        COMPOSE_ENVOY,
        &demo_as_compose_should_be(&demo, &root, &compose)?,
    )
}

/// A compose service by name.
fn service<'c>(compose: &'c Value, name: &str) -> Result<&'c Value> {
    compose["services"]
        .get(name)
        .with_context(|| format!("docker-compose.yml has no service {name:?}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Every bind mount's source exists (relative to `dir`, the compose file's directory); every named
/// volume is declared.
fn check_mounts(compose: &Value, dir: &Path) -> Result<Vec<(String, String)>> {
    let mut mounts = Vec::new();
    let services = compose["services"].as_object().context("no services")?;
    for (name, svc) in services {
        for volume in strings(&svc["volumes"]) {
            let mut parts = volume.split(':');
            let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                bail!("service {name}: volume {volume:?} is not source:target");
            };
            if source.starts_with('.') || source.starts_with('/') {
                let path = dir.join(source);
                ensure!(
                    path.exists(),
                    "service {name} mounts {source}, which does not exist"
                );
            } else {
                ensure!(
                    compose["volumes"].get(source).is_some(),
                    "service {name} mounts the undeclared volume {source:?}"
                );
            }
            mounts.push((source.to_string(), target.to_string()));
        }
    }
    Ok(mounts)
}

/// The port of `socket_address` at `pointer` in an Envoy configuration.
fn port_at(envoy: &Value, pointer: &str) -> Result<u64> {
    envoy
        .pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("no port at {pointer}"))
}

#[test]
fn compose_mounts_exist_and_published_ports_are_envoys() -> Result<()> {
    let root = workspace_root();
    let compose = load_yaml(&root.join("docker-compose.yml"))?;
    let mounts = check_mounts(&compose, &root)?;
    let envoy_yaml = load_yaml(&root.join(COMPOSE_ENVOY))?;

    let envoy = service(&compose, "envoy")?;
    let command = strings(&envoy["command"]);
    let config_arg = command
        .iter()
        .skip_while(|a| *a != "-c")
        .nth(1)
        .context("the envoy service has no `-c <config>`")?;
    let config_source = format!("./{COMPOSE_ENVOY}");
    ensure!(
        mounts.contains(&(config_source.clone(), config_arg.clone())),
        "Envoy reads {config_arg}, but {config_source} is not mounted there: {mounts:?}"
    );

    let wasm = envoy_yaml
        .pointer("/bootstrap_extensions/0/typed_config/config/vm_config/code/local/filename")
        .and_then(Value::as_str)
        .context("no .wasm filename")?;
    let workdir = envoy["working_dir"].as_str().unwrap_or("/");
    let wasm_dir = Path::new(workdir).join(wasm);
    let wasm_dir = wasm_dir
        .parent()
        .context("wasm path")?
        .display()
        .to_string();
    ensure!(
        mounts.iter().any(|(_, target)| *target == wasm_dir),
        "the plugin must be mounted at {wasm_dir} (working_dir + envoy.yaml's filename): {mounts:?}"
    );

    let published: BTreeSet<u64> = strings(&envoy["ports"])
        .iter()
        .map(|p| container_port(p))
        .collect::<Result<_>>()?;
    let listener = port_at(
        &envoy_yaml,
        "/static_resources/listeners/0/address/socket_address/port_value",
    )?;
    let stats = port_at(
        &envoy_yaml,
        "/static_resources/listeners/1/address/socket_address/port_value",
    )?;
    ensure!(
        published == BTreeSet::from([listener, stats]),
        "envoy publishes {published:?}, but envoy.yaml listens on {listener} and {stats} (stats; \
         admin itself is never published)"
    );
    Ok(())
}

/// "10000:10000" or "127.0.0.1:10000:10000" → the container port.
fn container_port(mapping: &str) -> Result<u64> {
    let port = mapping.rsplit(':').next().unwrap_or(mapping);
    let port = port.split('/').next().unwrap_or(port);
    port.parse()
        .with_context(|| format!("port mapping {mapping:?}"))
}

/// The `--port` in the ENTRYPOINT of a Dockerfile stage.
fn stage_port(dockerfile: &str, stage: &str) -> Result<u64> {
    let start = dockerfile
        .find(&format!(" AS {stage}\n"))
        .with_context(|| format!("the Dockerfile has no stage {stage}"))?;
    let rest = dockerfile.get(start..).unwrap_or_default();
    let entrypoint = rest
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .with_context(|| format!("stage {stage} has no ENTRYPOINT"))?;
    let args: Vec<String> = serde_json::from_str(entrypoint.trim_start_matches("ENTRYPOINT"))?;
    ensure!(
        args.windows(2).any(|w| w == ["--host", "0.0.0.0"]),
        "stage {stage} must listen on 0.0.0.0: {args:?}"
    );
    let port = args
        .windows(2)
        .find(|w| w[0] == "--port")
        .map(|w| w[1].clone())
        .with_context(|| format!("stage {stage} has no --port"))?;
    Ok(port.parse()?)
}

#[test]
fn compose_services_are_where_envoy_looks_for_them() -> Result<()> {
    let root = workspace_root();
    let compose = load_yaml(&root.join("docker-compose.yml"))?;
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    for (name, svc) in compose["services"].as_object().context("no services")? {
        if let Some(target) = svc.pointer("/build/target").and_then(Value::as_str) {
            ensure!(
                dockerfile.contains(&format!(" AS {target}\n")),
                "service {name} builds target {target}, which the Dockerfile lacks"
            );
        }
    }
    let envoy_yaml = load_yaml(&root.join(COMPOSE_ENVOY))?;
    let orders = port_at(
        &envoy_yaml,
        "/static_resources/clusters/0/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value",
    )?;
    let target = service(&compose, "orders")?["build"]["target"].clone();
    ensure!(stage_port(&dockerfile, target.as_str().unwrap_or_default())? == orders);
    let url = plugin_config(&envoy_yaml)?["subscriptions"][0]["url"].clone();
    let target = service(&compose, "receiver")?["build"]["target"].clone();
    let receiver = stage_port(&dockerfile, target.as_str().unwrap_or_default())?;
    ensure!(
        url == json!(format!("http://receiver:{receiver}/webhooks")),
        "the demo subscription {url} is not the receiver service on port {receiver}"
    );
    Ok(())
}

const FLEET_COMPOSE: &str = "deploy/compose-fleet/docker-compose.yml";
const FLEET_ENVOY: &str = "deploy/compose-fleet/envoy.yaml";
/// The Envoy replicas of the fleet example.
const REPLICAS: [&str; 2] = ["envoy-a", "envoy-b"];
const ETCD_CLUSTER: &str = "webhooks_etcd";

/// The `fleet` section the example's header describes (no node_id: Envoy's node id is used).
fn example_fleet_section() -> Value {
    json!({"cluster": ETCD_CLUSTER, "prefix": "/proxy-webhooks", "sync_interval": "500ms",
           "lease_ttl": "10s"})
}

/// The subnet of the fleet example's `store` network (etcd's), as address and prefix length.
fn store_subnet(compose: &Value) -> Result<(String, u64)> {
    let subnet = compose
        .pointer("/networks/store/ipam/config/0/subnet")
        .and_then(Value::as_str)
        .context("the fleet compose file has no `store` network with a fixed subnet")?;
    let (address, len) = subnet
        .split_once('/')
        .with_context(|| format!("subnet {subnet:?} is not address/length"))?;
    Ok((address.to_string(), len.parse()?))
}

/// The single-Envoy compose configuration changed exactly as deploy/compose-fleet/envoy.yaml's
/// header says.
fn compose_as_fleet_should_be(
    compose_envoy: &Value,
    fleet: &Value,
    fleet_compose: &Value,
) -> Result<Value> {
    let mut expected = compose_envoy.clone();
    let mut plugin = plugin_config(compose_envoy)?;
    plugin["fleet"] = example_fleet_section();
    set_plugin_configs(&mut expected, &plugin);
    // The etcd cluster itself is checked against the compose services below.
    clusters_mut(&mut expected)?.push(compose_cluster(fleet, ETCD_CLUSTER)?);
    let (address, len) = store_subnet(fleet_compose)?;
    let mut ranges = vec![json!({"address_prefix": address, "prefix_len": len})];
    ranges.extend(refused_ranges(compose_envoy)?);
    set_refused_ranges(&mut expected, ranges)?;
    Ok(expected)
}

#[test]
fn compose_fleet_envoy_config_is_the_compose_one_plus_fleet_mode() -> Result<()> {
    let root = workspace_root();
    let compose_envoy = load_yaml(&root.join(COMPOSE_ENVOY))?;
    let fleet = load_yaml(&root.join(FLEET_ENVOY))?;
    let fleet_compose = load_yaml(&root.join(FLEET_COMPOSE))?;
    check_derived(
        FLEET_ENVOY,
        &compose_as_fleet_should_be(&compose_envoy, &fleet, &fleet_compose)?,
    )
}

/// The value of `--flag value` or `--flag=value` in a command.
fn flag(command: &[String], name: &str) -> Option<String> {
    let prefixed = format!("{name}=");
    command.iter().enumerate().find_map(|(i, arg)| {
        if arg == name {
            command.get(i + 1).cloned()
        } else {
            arg.strip_prefix(&prefixed).map(str::to_string)
        }
    })
}

/// The networks a compose service is on (`default` when it names none).
fn networks(svc: &Value) -> BTreeSet<String> {
    match &svc["networks"] {
        Value::Array(_) => strings(&svc["networks"]).into_iter().collect(),
        Value::Object(map) => map.keys().cloned().collect(),
        _ => BTreeSet::from(["default".to_string()]),
    }
}

/// `vX.Y.Z` with X.Y at least 3.4 (what fleet mode needs), so the example is pinned and new
/// enough.
fn pinned_etcd_version(image: &str) -> Result<()> {
    let (repository, tag) = image
        .rsplit_once(':')
        .with_context(|| format!("the etcd image {image:?} has no tag"))?;
    ensure!(
        ["gcr.io/etcd-development/etcd", "quay.io/coreos/etcd"].contains(&repository),
        "the etcd service must run the official image, not {repository}"
    );
    let numbers: Vec<u64> = tag
        .trim_start_matches('v')
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("the etcd image tag {tag:?} is not a pinned vX.Y.Z"))?;
    ensure!(
        numbers.len() == 3 && (numbers[0], numbers[1]) >= (3, 4),
        "the etcd image tag {tag:?} must be a pinned v3.4.0 or later"
    );
    Ok(())
}

#[test]
fn compose_fleet_replicas_are_distinct_nodes_on_one_etcd_that_keeps_its_data() -> Result<()> {
    let root = workspace_root();
    let compose_path = root.join(FLEET_COMPOSE);
    let dir = compose_path.parent().context("compose dir")?.to_path_buf();
    let compose = load_yaml(&compose_path)?;
    let mounts = check_mounts(&compose, &dir)?;
    let envoy_yaml = load_yaml(&root.join(FLEET_ENVOY))?;
    let listener = port_at(
        &envoy_yaml,
        "/static_resources/listeners/0/address/socket_address/port_value",
    )?;
    let stats = port_at(
        &envoy_yaml,
        "/static_resources/listeners/1/address/socket_address/port_value",
    )?;
    let wasm = envoy_yaml
        .pointer("/bootstrap_extensions/0/typed_config/config/vm_config/code/local/filename")
        .and_then(Value::as_str)
        .context("no .wasm filename")?;

    // etcd: the official image, pinned; its data directory on a named volume; alone with the
    // Envoys on the `store` network; healthy before the Envoys start.
    let etcd = service(&compose, "etcd")?;
    pinned_etcd_version(etcd["image"].as_str().unwrap_or_default())?;
    let etcd_command = strings(&etcd["command"]);
    let data_dir = flag(&etcd_command, "--data-dir").context("etcd has no --data-dir")?;
    let volume = strings(&etcd["volumes"])
        .into_iter()
        .find(|v| v.split(':').nth(1) == Some(data_dir.as_str()))
        .with_context(|| format!("etcd's --data-dir {data_dir} is not a mounted volume"))?;
    let source = volume.split(':').next().unwrap_or_default();
    ensure!(
        compose["volumes"].get(source).is_some(),
        "etcd's data must be on a named volume, not {source:?}"
    );
    ensure!(
        networks(etcd) == BTreeSet::from(["store".to_string()]),
        "etcd must be on the store network only: {:?}",
        networks(etcd)
    );
    ensure!(
        etcd["healthcheck"]["test"].is_array(),
        "etcd needs a healthcheck for the Envoys to wait on"
    );
    // The outbox and the delivery logs rewrite keys all the time: without compaction etcd's
    // history fills its quota (docs/fleet.md, sizing).
    ensure!(
        flag(&etcd_command, "--auto-compaction-mode").as_deref() == Some("periodic")
            && flag(&etcd_command, "--auto-compaction-retention").is_some(),
        "etcd needs periodic auto-compaction: {etcd_command:?}"
    );
    let client_url =
        flag(&etcd_command, "--listen-client-urls").context("etcd has no --listen-client-urls")?;
    let client_port: u64 = client_url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("etcd's client URL {client_url:?} has no port"))?;
    ensure!(
        compose.pointer("/services/etcd/ports").is_none(),
        "etcd must not be published on the host"
    );

    // The Envoy cluster reaches the etcd service's client port, and the plugin uses it.
    let cluster = compose_cluster(&envoy_yaml, ETCD_CLUSTER)?;
    let address = cluster
        .pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address")
        .context("the etcd cluster has no endpoint")?;
    ensure!(
        address["address"] == "etcd" && address["port_value"] == client_port,
        "{ETCD_CLUSTER} must point at etcd:{client_port}: {address}"
    );
    ensure!(
        cluster["type"] == "STRICT_DNS",
        "{ETCD_CLUSTER} finds etcd by name"
    );
    let plugin = plugin_config(&envoy_yaml)?;
    ensure!(
        plugin["fleet"]["cluster"] == ETCD_CLUSTER && plugin["fleet"].get("node_id").is_none(),
        "the plugin must use {ETCD_CLUSTER} and take each Envoy's node id: {}",
        plugin["fleet"]
    );

    let mut nodes = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for name in REPLICAS {
        let envoy = service(&compose, name)?;
        let command = strings(&envoy["command"]);
        let config_arg = flag(&command, "-c").with_context(|| format!("{name} has no -c"))?;
        ensure!(
            mounts.contains(&("./envoy.yaml".to_string(), config_arg.clone())),
            "{name} reads {config_arg}, but ./envoy.yaml is not mounted there: {mounts:?}"
        );
        let workdir = envoy["working_dir"].as_str().unwrap_or("/");
        let wasm_dir = Path::new(workdir).join(wasm);
        let wasm_dir = wasm_dir
            .parent()
            .context("wasm path")?
            .display()
            .to_string();
        ensure!(
            strings(&envoy["volumes"])
                .iter()
                .any(|v| v.split(':').nth(1) == Some(wasm_dir.as_str())),
            "{name} must mount the plugin at {wasm_dir}"
        );
        let node = flag(&command, "--service-node")
            .with_context(|| format!("{name} has no --service-node (its fleet node id)"))?;
        ensure!(
            nodes.insert(node.clone()),
            "two replicas share node id {node}"
        );
        ensure!(
            networks(envoy) == BTreeSet::from(["default".to_string(), "store".to_string()]),
            "{name} must be on the default network (API, receiver) and store (etcd)"
        );
        ensure!(
            envoy.pointer("/depends_on/etcd/condition") == Some(&json!("service_healthy")),
            "{name} must wait for etcd to be healthy"
        );
        let published = strings(&envoy["ports"]);
        let container: BTreeSet<u64> = published
            .iter()
            .map(|p| container_port(p))
            .collect::<Result<_>>()?;
        ensure!(
            container == BTreeSet::from([listener, stats]),
            "{name} publishes {container:?}, but envoy.yaml listens on {listener} and {stats}"
        );
        for mapping in &published {
            let host = mapping.split(':').next().unwrap_or_default().to_string();
            ensure!(
                host_ports.insert(host.clone()),
                "host port {host} is published twice"
            );
        }
    }

    let dockerfile = std::fs::read_to_string(root.join("Dockerfile"))?;
    for (name, svc) in compose["services"].as_object().context("no services")? {
        if let Some(target) = svc.pointer("/build/target").and_then(Value::as_str) {
            ensure!(
                dockerfile.contains(&format!(" AS {target}\n")),
                "service {name} builds target {target}, which the Dockerfile lacks"
            );
            ensure!(
                dir.join(svc["build"]["context"].as_str().unwrap_or_default())
                    .join("Dockerfile")
                    .exists(),
                "service {name}'s build context has no Dockerfile"
            );
        }
    }
    Ok(())
}

/// `envoy --mode validate`: Envoy builds every listener, cluster and filter of `config` without
/// serving, which includes loading the plugin and its configuration (a bad one fails here).
fn envoy_validates(config: &str, node: &str) -> Result<()> {
    let root = workspace_root();
    let wasm = root.join(devtools::envoy::WASM_RELATIVE_PATH);
    ensure!(
        wasm.exists(),
        "{} is missing: build the plugin with `make wasm`",
        wasm.display()
    );
    // The configuration names the .wasm relative to the working directory, as the workspace
    // lays it out.
    let output = std::process::Command::new(devtools::envoy::envoy_bin()?)
        .current_dir(&root)
        .args(["--mode", "validate", "--log-level", "error", "-c", config])
        .args(["--service-node", node])
        .output()
        .context("running envoy --mode validate")?;
    ensure!(
        output.status.success(),
        "Envoy refused {config}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn compose_envoy_configs_pass_envoys_own_validation_with_the_plugin() -> Result<()> {
    envoy_validates(COMPOSE_ENVOY, "envoy")?;
    for node in REPLICAS {
        envoy_validates(FLEET_ENVOY, node)?;
    }
    Ok(())
}
