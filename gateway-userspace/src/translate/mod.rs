//! The translation: a [`Snapshot`] in, the data-plane [`Ir`] and the computed [`Status`] out. Pure and
//! deterministic: no I/O, no clock (the time stamped on changed conditions is [`TranslateOptions::now`]).
//!
//! Scope: GatewayClasses whose `controllerName` is ours, their Gateways, and the routes whose parentRefs name
//! those Gateways. Objects of other controllers get no status. See the submodules for the rules of each step.
pub mod backend;
pub mod conditions;
pub mod gateway;
pub mod hostname;
pub mod http;
pub mod listener;
pub mod program;
pub mod refgrant;
pub mod route;

use crate::ir::Ir;
use crate::model::{EndpointSlice, Secret, Service, NAMESPACE_NAME_LABEL, SERVICE_NAME_LABEL};
use crate::snapshot::Snapshot;
use crate::status::{RouteParentStatus, RouteStatus, Status, Timestamp};
use conditions::{reason, Conditions, Problem};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// The controller name this implementation answers to by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "ebpf-gateway.dev/gatewayclass-controller";

/// What GatewayClass `status.supportedFeatures` claims: the kinds whose status and data plane this
/// implementation handles. HTTPRoute and GRPCRoute are served by the userspace proxy ([`crate::http`]).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GRPCRoute",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
];

/// Decides whether a requested static address can be served (`Err` carries why not).
#[derive(Clone)]
pub struct AddressPolicy(Arc<dyn Fn(IpAddr) -> Result<(), String> + Send + Sync>);

impl AddressPolicy {
    pub fn new(policy: impl Fn(IpAddr) -> Result<(), String> + Send + Sync + 'static) -> Self {
        AddressPolicy(Arc::new(policy))
    }

    /// The default: IPv4 unicast addresses (not unspecified, loopback, multicast or broadcast). The kernel path
    /// serves IPv4 only for now.
    pub fn ipv4_unicast() -> Self {
        AddressPolicy::new(|ip| match ip {
            IpAddr::V6(_) => Err("IPv6 addresses are not served yet".into()),
            IpAddr::V4(v4)
                if v4.is_unspecified()
                    || v4.is_loopback()
                    || v4.is_multicast()
                    || v4.is_broadcast() =>
            {
                Err("not a unicast address".into())
            }
            IpAddr::V4(_) => Ok(()),
        })
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        (self.0)(ip)
    }
}

impl fmt::Debug for AddressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressPolicy(..)")
    }
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy::ipv4_unicast()
    }
}

/// Everything the translation needs besides the snapshot.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// Which `spec.addresses` can be served.
    pub address_policy: AddressPolicy,
    /// The time written as `lastTransitionTime` on conditions that changed. The caller sets it for every
    /// translation (e.g. `options.at(Timestamp::now())`); the default is the Unix epoch.
    pub now: Timestamp,
    /// Which path serves TLS passthrough listeners unless a Gateway annotation says otherwise.
    pub tls_passthrough: PassthroughMode,
}

/// The path that serves a TLS passthrough listener.
///
/// The agent's `--tls-passthrough` sets the default; a Gateway chooses for all its passthrough listeners with the
/// annotation [`PASSTHROUGH_ANNOTATION`] (`kernel` or `userspace`), and for one listener with
/// `gateway.ebpf.dev/tls-passthrough.<listener name>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PassthroughMode {
    /// The userspace proxy: a socket pair per connection, bytes moved with splice(2).
    #[default]
    Userspace,
    /// The eBPF program: handshake, ClientHello capture, SNI routing and splicing in the kernel; no socket.
    Kernel,
}

/// Gateway annotation choosing the TLS passthrough path (see [`PassthroughMode`]).
pub const PASSTHROUGH_ANNOTATION: &str = "gateway.ebpf.dev/tls-passthrough";

impl PassthroughMode {
    /// The mode for `listener` of a Gateway with these annotations; unknown values fall back to `default`.
    pub fn for_listener(
        annotations: &std::collections::BTreeMap<String, String>,
        listener: &str,
        default: PassthroughMode,
    ) -> PassthroughMode {
        let parse = |v: &String| match v.trim() {
            "kernel" => Some(PassthroughMode::Kernel),
            "userspace" => Some(PassthroughMode::Userspace),
            _ => None,
        };
        annotations
            .get(&format!("{PASSTHROUGH_ANNOTATION}.{listener}"))
            .and_then(parse)
            .or_else(|| annotations.get(PASSTHROUGH_ANNOTATION).and_then(parse))
            .unwrap_or(default)
    }
}

impl TranslateOptions {
    /// These options at another time.
    pub fn at(&self, now: Timestamp) -> TranslateOptions {
        TranslateOptions {
            now,
            ..self.clone()
        }
    }
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            controller_name: DEFAULT_CONTROLLER_NAME.into(),
            address_policy: AddressPolicy::default(),
            now: Timestamp::default(),
            tls_passthrough: PassthroughMode::default(),
        }
    }
}

/// Translates a snapshot. Every condition gets `lastTransitionTime = options.now`; use
/// [`translate_with_previous`] to keep the times of unchanged conditions.
pub fn translate(snapshot: &Snapshot, options: &TranslateOptions) -> (Ir, Status) {
    translate_with_previous(snapshot, options, None)
}

/// Translates a snapshot; conditions whose type and status equal those in `previous` keep its
/// `lastTransitionTime`.
pub fn translate_with_previous(
    snapshot: &Snapshot,
    options: &TranslateOptions,
    previous: Option<&Status>,
) -> (Ir, Status) {
    let ctx = Context::new(snapshot, options);
    let mut status = Status::default();

    let classes = gateway::classes(&ctx);
    let mut plans = gateway::plan(&ctx, &classes);
    for (name, (_, class_status)) in classes {
        status
            .gateway_classes
            .insert(name.to_string(), class_status);
    }

    let routes = route::views(snapshot);
    let mut backends: program::RouteBackends = Vec::with_capacity(routes.len());
    for (index, view) in routes.iter().enumerate() {
        let ns = view.meta.namespace();
        let mut problems: Vec<Problem> = Vec::new();
        let mut rules = Vec::with_capacity(view.rules.len());
        for rule in &view.rules {
            let mut resolved = Vec::with_capacity(rule.len());
            for backend_ref in rule {
                let (backend, problem) = backend::resolve(&ctx, view.kind, ns, backend_ref);
                problems.extend(problem);
                resolved.push(backend);
            }
            rules.push(resolved);
        }
        for extra in &view.extra_refs {
            problems.extend(backend::resolve(&ctx, view.kind, ns, extra).1);
        }
        backends.push(rules);
        let resolved_refs = match problems.first() {
            None => Ok(()),
            Some(first) => {
                let message = problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(Problem::new(first.reason, message))
            }
        };

        let mut parents: Vec<RouteParentStatus> = Vec::new();
        for parent in view.parent_refs.iter().filter(|p| route::names_gateway(p)) {
            let echo = route::echo(parent);
            if parents.iter().any(|p| p.parent_ref == echo) {
                continue;
            }
            let gateway_ns = parent.namespace.as_deref().unwrap_or(ns);
            let Some(plan) = plans.iter_mut().find(|p| {
                p.gateway.metadata.name == parent.name
                    && p.gateway.metadata.namespace() == gateway_ns
            }) else {
                continue;
            };
            let accepted = route::attach(&ctx, view, parent, plan).map(|attachments| {
                for attachment in attachments {
                    plan.attached[attachment.listener].push((index, attachment));
                }
            });
            let mut c = Conditions::new(view.meta.generation(), &options.now);
            c.outcome(
                conditions::ACCEPTED,
                &accepted,
                reason::ACCEPTED,
                "accepted",
            );
            c.outcome(
                conditions::RESOLVED_REFS,
                &resolved_refs,
                reason::RESOLVED_REFS,
                "all references resolved",
            );
            parents.push(RouteParentStatus {
                parent_ref: echo,
                controller_name: options.controller_name.clone(),
                conditions: c.build(),
            });
        }
        if !parents.is_empty() {
            let key = crate::status::route_key(view.kind.as_str(), ns, &view.meta.name);
            status.routes.insert(key, RouteStatus { parents });
        }
    }

    for plan in &plans {
        status
            .gateways
            .insert(plan.key(), gateway::status(&ctx, plan));
    }
    let ir = program::build(&ctx, &plans, &routes, &backends);
    if let Some(previous) = previous {
        conditions::keep_transition_times(&mut status, previous);
    }
    (ir, status)
}

/// Objects by namespace, then name.
type ByNamespace<'a, T> = HashMap<&'a str, HashMap<&'a str, T>>;

fn by_namespace<'a, T: 'a, V>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> (&'a str, &'a str),
    mut add: impl FnMut(&mut Option<V>, T),
) -> ByNamespace<'a, V> {
    let mut map: HashMap<&'a str, HashMap<&'a str, Option<V>>> = HashMap::new();
    for item in items {
        let (ns, name) = key(&item);
        add(map.entry(ns).or_default().entry(name).or_default(), item);
    }
    map.into_iter()
        .map(|(ns, names)| {
            (
                ns,
                names
                    .into_iter()
                    .filter_map(|(n, v)| Some((n, v?)))
                    .collect(),
            )
        })
        .collect()
}

/// Lookups over one snapshot.
pub struct Context<'a> {
    pub snapshot: &'a Snapshot,
    pub options: &'a TranslateOptions,
    services: ByNamespace<'a, &'a Service>,
    slices: ByNamespace<'a, Vec<&'a EndpointSlice>>,
    secrets: ByNamespace<'a, &'a Secret>,
    namespaces: HashMap<&'a str, &'a BTreeMap<String, String>>,
}

impl<'a> Context<'a> {
    pub fn new(snapshot: &'a Snapshot, options: &'a TranslateOptions) -> Self {
        Context {
            snapshot,
            options,
            services: by_namespace(
                &snapshot.services,
                |s| (s.metadata.namespace(), s.metadata.name.as_str()),
                |slot, item| *slot = Some(item),
            ),
            slices: by_namespace(
                snapshot.endpoint_slices.iter().filter_map(|s| {
                    Some((
                        s.metadata.namespace(),
                        s.metadata.labels.get(SERVICE_NAME_LABEL)?.as_str(),
                        s,
                    ))
                }),
                |(ns, service, _)| (*ns, *service),
                |slot: &mut Option<Vec<_>>, (_, _, slice)| {
                    slot.get_or_insert_with(Vec::new).push(slice)
                },
            ),
            secrets: by_namespace(
                &snapshot.secrets,
                |s| (s.metadata.namespace(), s.metadata.name.as_str()),
                |slot, item| *slot = Some(item),
            ),
            namespaces: snapshot
                .namespaces
                .iter()
                .map(|n| (n.metadata.name.as_str(), &n.metadata.labels))
                .collect(),
        }
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(namespace)?.get(name).copied()
    }

    pub fn slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.slices
            .get(namespace)
            .and_then(|m| m.get(service))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<&'a Secret> {
        self.secrets.get(namespace)?.get(name).copied()
    }

    /// A namespace's labels, with the implicit `kubernetes.io/metadata.name` (also for namespaces that have no
    /// Namespace object in the snapshot).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(namespace)
            .map(|l| (*l).clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
        labels
    }
}
