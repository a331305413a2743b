//! Runs Gateway API conformance manifests against the real gateway in network namespaces: every Deployment of
//! the test manifest (and every base Deployment its routes reference) becomes an echo backend in its own
//! namespace, named like a pod; Services get EndpointSlices pointing at them (standalone mode has no endpoints
//! controller); every Gateway gets an address in 198.18.100.0/24. The manifests can then be changed step by step,
//! as the conformance tests do.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;

use crate::{
    echo::{spawn_echo, EchoConfig},
    manifests::CONTROLLER,
    topology, GatewayProcess, Process, Topology,
};

/// The GatewayClass name substituted for `{GATEWAY_CLASS_NAME}`.
pub const GATEWAY_CLASS: &str = "gateway-conformance";

/// Where the shared conformance material lives (present in CI too).
pub fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/gateway-api/conformance")
}

fn load_docs(path: &PathBuf) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| {
            format!(
                "reading {} (the shared conformance manifests must be present)",
                path.display()
            )
        })?
        .replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS)
        .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

use serde::Deserialize;

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn key(v: &Value) -> (String, String, String) {
    (
        s(v, &["kind"]).unwrap_or_default().to_string(),
        s(v, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_string(),
        s(v, &["metadata", "name"]).unwrap_or_default().to_string(),
    )
}

/// One echo backend standing in for a Deployment.
#[derive(Debug, Clone)]
pub struct Pod {
    pub deployment: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addr: Ipv4Addr,
}

/// A conformance manifest, loaded: `let plan = Plan::load(file)?; let topo = plan.topology()?;
/// let run = plan.start(&topo)?;` (the test owns the topology, so its namespaces go when the test ends).
pub struct Plan {
    docs: Vec<Value>,
    deployments: Vec<Value>,
}

impl Plan {
    /// Loads `test_file` (a file name under `conformance/tests/`) with the base manifests.
    pub fn load(test_file: &str) -> Result<Self> {
        Self::load_with_backends(test_file, &[])
    }

    /// Like [`Plan::load`], also running the base Deployments named in `extra` (for tests whose Services
    /// select pods the routes do not name, e.g. HTTPRouteServiceTypes' headless and manual-EndpointSlice ones).
    pub fn load_with_backends(test_file: &str, extra: &[&str]) -> Result<Self> {
        let dir = conformance_dir();
        let base = load_docs(&dir.join("base/manifests.yaml"))?;
        let test = load_docs(&dir.join("tests").join(test_file))?;
        let referenced: Vec<String> = test
            .iter()
            .filter(|d| s(d, &["kind"]).is_some_and(|k| k.ends_with("Route")))
            .flat_map(|d| {
                let rules = d
                    .get("spec")
                    .and_then(|s| s.get("rules"))
                    .and_then(Value::as_sequence)
                    .cloned()
                    .unwrap_or_default();
                rules.into_iter().flat_map(|r| {
                    let refs = r
                        .get("backendRefs")
                        .and_then(Value::as_sequence)
                        .cloned()
                        .unwrap_or_default();
                    // RequestMirror filters name backends too (`filters[].requestMirror.backendRef`).
                    let mirrors: Vec<Value> = r
                        .get("filters")
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.get("requestMirror")?.get("backendRef").cloned())
                        .collect();
                    refs.into_iter().chain(mirrors)
                })
            })
            .filter_map(|b| s(&b, &["name"]).map(str::to_string))
            .chain(extra.iter().map(|e| e.to_string()))
            .collect();
        let deployments: Vec<&Value> = test
            .iter()
            .chain(base.iter().filter(|d| {
                s(d, &["metadata", "name"]).is_some_and(|n| referenced.iter().any(|r| r == n))
            }))
            .filter(|d| s(d, &["kind"]) == Some("Deployment"))
            .collect();
        if deployments.len() > 60 {
            bail!(
                "{test_file}: {} deployments is more than this harness runs",
                deployments.len()
            );
        }
        let deployments: Vec<Value> = deployments.into_iter().cloned().collect();
        let docs: Vec<Value> = base
            .into_iter()
            .chain(test)
            .filter(|d| s(d, &["kind"]) != Some("Deployment"))
            .collect();
        Ok(Plan { docs, deployments })
    }

    /// A topology with one backend namespace per Deployment.
    pub fn topology(&self) -> Result<Topology> {
        Topology::builder()
            .backends(self.deployments.len().max(1))
            .build()
    }

    /// Starts one echo backend per Deployment and the gateway in `topo`, and waits until it is ready.
    pub fn start(self, topo: &Topology) -> Result<ConformanceRun<'_>> {
        self.start_with_args(topo, &[])
    }

    /// Like [`Plan::start`], with extra `gateway run` arguments (e.g. `--log-format json`).
    pub fn start_with_args<'t>(
        self,
        topo: &'t Topology,
        args: &[&str],
    ) -> Result<ConformanceRun<'t>> {
        let deployments = self.deployments;
        let mut pods = Vec::new();
        let mut echoes = Vec::new();
        for (i, d) in deployments.iter().enumerate() {
            let (_, namespace, deployment) = key(d);
            let name = format!(
                "{deployment}-7f9c{i:x}d5b8-{}",
                ["x2p4k", "m7t4n", "z9c3w", "q8r2v", "h5j6l"][i % 5]
            );
            let template = d
                .get("spec")
                .and_then(|s| s.get("template"))
                .context("deployment template")?;
            let labels: BTreeMap<String, String> = template
                .get("metadata")
                .and_then(|m| m.get("labels"))
                .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                .unwrap_or_default();
            let container = template
                .get("spec")
                .and_then(|s| s.get("containers"))
                .and_then(|c| c.get(0))
                .context("container")?;
            let env: BTreeMap<String, String> = container
                .get("env")
                .and_then(Value::as_sequence)
                .map(|e| {
                    e.iter()
                        .filter_map(|v| {
                            Some((
                                s(v, &["name"])?.to_string(),
                                s(v, &["value"]).unwrap_or_default().to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let port = |var: &str, default: u16| {
                env.get(var).and_then(|p| p.parse().ok()).unwrap_or(default)
            };
            let mut cfg = EchoConfig::new(&name, &namespace)
                .service(env.get("SERVICE_NAME").map(String::as_str).unwrap_or(""));
            cfg = if env.contains_key("TCP_ECHO_SERVER") {
                cfg.tcp(port("TCP_PORT", 3000))
            } else if env.contains_key("UDP_ECHO_SERVER") {
                cfg.udp(port("UDP_PORT", 8080))
            } else {
                // Like echo-basic: HTTP/1.1 and h2c listeners; requests logged (mirror checks read them).
                cfg.http(port("HTTP_PORT", 3000))
                    .h2c(port("H2C_PORT", 3001))
                    .log_requests()
            };
            echoes.push(
                spawn_echo(topo.backend(i + 1), &cfg)
                    .with_context(|| format!("backend for {deployment}"))?,
            );
            pods.push(Pod {
                deployment,
                namespace,
                name,
                labels,
                addr: topo.backend_addr(i + 1),
            });
        }
        let mut docs = self.docs;
        docs.push(serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: {GATEWAY_CLASS}}}\nspec: {{controllerName: {CONTROLLER}}}"
        ))?);
        let mut addresses = BTreeMap::new();
        let mut n = 1u8;
        for d in docs
            .iter_mut()
            .filter(|d| s(d, &["kind"]) == Some("Gateway"))
        {
            let (_, ns, name) = key(d);
            let spec = d
                .get_mut("spec")
                .and_then(Value::as_mapping_mut)
                .context("gateway spec")?;
            if !spec.contains_key("addresses") {
                let addr = topology::vip(n);
                n += 1;
                spec.insert(
                    "addresses".into(),
                    serde_yaml::from_str(&format!("[{{type: IPAddress, value: {addr}}}]"))?,
                );
                addresses.insert((ns, name), addr);
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("gwt-conformance-")
            .tempdir()?;
        let config = tmp.path().join("manifests.yaml");
        let mut run = ConformanceRun {
            docs,
            pods,
            addresses,
            config,
            gateway: None,
            echoes,
            _dir: tmp,
            topo,
        };
        run.write()?;
        run.gateway = Some(GatewayProcess::start(topo.gateway(), &[&run.config], args)?);
        Ok(run)
    }
}

/// A conformance manifest running against the gateway.
pub struct ConformanceRun<'t> {
    /// The objects currently given to the gateway (without the synthesized EndpointSlices).
    docs: Vec<Value>,
    pods: Vec<Pod>,
    addresses: BTreeMap<(String, String), Ipv4Addr>,
    config: PathBuf,
    // Field order is drop order: the gateway and backends stop before the test drops the topology.
    gateway: Option<GatewayProcess<'t>>,
    echoes: Vec<Process>,
    _dir: tempfile::TempDir,
    topo: &'t Topology,
}

impl<'t> ConformanceRun<'t> {
    pub fn topology(&self) -> &'t Topology {
        self.topo
    }

    pub fn gateway(&self) -> &GatewayProcess<'t> {
        self.gateway.as_ref().expect("started")
    }

    /// The gateway, to stop or restart it.
    pub fn gateway_mut(&mut self) -> &mut GatewayProcess<'t> {
        self.gateway.as_mut().expect("started")
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The HTTP requests the pods of `deployment` logged so far, one `request <method> <host> <uri> <proto>`
    /// line each (see [`crate::echo::EchoConfig::log_requests`]).
    pub fn requests_seen(&self, deployment: &str) -> Vec<String> {
        self.pods
            .iter()
            .zip(&self.echoes)
            .filter(|(pod, _)| pod.deployment == deployment)
            .flat_map(|(_, echo)| {
                echo.log()
                    .lines()
                    .filter(|l| l.starts_with("request "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The address given to Gateway `namespace/name`.
    pub fn address(&self, namespace: &str, name: &str) -> Ipv4Addr {
        self.addresses[&(namespace.to_string(), name.to_string())]
    }

    /// `address(namespace, name):port`.
    pub fn target(&self, namespace: &str, name: &str, port: u16) -> SocketAddr {
        SocketAddr::from((self.address(namespace, name), port))
    }

    /// Removes an object, as `kubectl delete` would.
    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> Result<()> {
        let before = self.docs.len();
        self.docs
            .retain(|d| key(d) != (kind.to_string(), namespace.to_string(), name.to_string()));
        if self.docs.len() == before {
            bail!("no {kind} {namespace}/{name} to delete");
        }
        self.write()
    }

    /// Adds (or replaces) objects given as YAML, as `kubectl apply` would. Objects added later are newer.
    pub fn apply(&mut self, yaml: &str) -> Result<()> {
        for doc in
            serde_yaml::Deserializer::from_str(&yaml.replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS))
        {
            let v = Value::deserialize(doc)?;
            let k = key(&v);
            self.docs.retain(|d| key(d) != k);
            self.docs.push(v);
        }
        self.write()
    }

    /// Writes the objects plus one EndpointSlice per Service with matching pods; atomically (rename), so the
    /// gateway's watcher never reads half a file.
    fn write(&self) -> Result<()> {
        let mut out = String::new();
        for d in &self.docs {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(d)?);
        }
        for svc in self
            .docs
            .iter()
            .filter(|d| s(d, &["kind"]) == Some("Service"))
        {
            let (_, ns, name) = key(svc);
            let selector: BTreeMap<String, String> = svc
                .get("spec")
                .and_then(|s| s.get("selector"))
                .and_then(|l| serde_yaml::from_value(l.clone()).ok())
                .unwrap_or_default();
            let pods: Vec<&Pod> = self
                .pods
                .iter()
                .filter(|p| {
                    p.namespace == ns
                        && !selector.is_empty()
                        && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            if pods.is_empty() {
                continue;
            }
            let ports: Vec<String> = svc
                .get("spec")
                .and_then(|s| s.get("ports"))
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .map(|p| {
                    let port = p
                        .get("targetPort")
                        .and_then(Value::as_u64)
                        .or_else(|| p.get("port").and_then(Value::as_u64))
                        .unwrap_or(0);
                    format!(
                        "{{name: \"{}\", port: {port}, protocol: {}}}",
                        s(p, &["name"]).unwrap_or(""),
                        s(p, &["protocol"]).unwrap_or("TCP")
                    )
                })
                .collect();
            let endpoints: String = pods
                .iter()
                .map(|p| format!("  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    targetRef: {{kind: Pod, name: {}}}\n", p.addr, p.name))
                .collect();
            out.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x7k2p\n  namespace: {ns}\n  \
                 labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{}]\nendpoints:\n{endpoints}",
                ports.join(", ")
            ));
        }
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// The computed status of one object, from the running gateway's `GET /status`.
    pub fn status_of(&self, kind: &str, namespace: &str, name: &str) -> Result<serde_json::Value> {
        let (code, body) = self.gateway().admin_get("/status")?;
        if code != 200 {
            bail!("GET /status answered {code}");
        }
        let list: serde_json::Value = serde_json::from_str(&body)?;
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i["kind"] == kind
                    && i["metadata"]["name"] == name
                    && i["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
            })
            .map(|i| i["status"].clone())
            .ok_or_else(|| anyhow!("{kind} {namespace}/{name} not in /status"))
    }

    /// Waits (≤ `timeout`) until the route's first parent has condition `type` with `reason`.
    pub fn wait_route_condition(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        ty: &str,
        reason: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status_of(kind, namespace, name).unwrap_or_default();
            let found = status["parents"][0]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == ty && c["reason"] == reason);
            if found {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{kind} {namespace}/{name}: no {ty}={reason} within {timeout:?}; status {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
