//! Listener validation: protocol and field checks, conflicts between listeners on one port, supported route
//! kinds and certificate references.
//!
//! Supported: `HTTP`, `HTTPS`, `TLS` in `Passthrough` mode, `TCP`, `UDP`. A `TLS` listener in `Terminate` mode is
//! `Accepted=False UnsupportedValue`. Checks the CRD's CEL rules would make (hostname on TCP/UDP, `tls` on
//! HTTP/TCP/UDP, ...) are listener status here (`UnsupportedValue`), so one bad listener never takes the file down.
use super::conditions::{reason, Problem};
use super::refgrant::{self, RefFrom, RefTo};
use super::{hostname, Context};
use crate::model::{self, RouteGroupKind, Secret, GATEWAY_GROUP};

/// How a listener carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    TlsPassthrough,
    TlsTerminate,
    Tcp,
    Udp,
    Unsupported,
}

impl Protocol {
    fn of(listener: &model::Listener) -> Protocol {
        match listener.protocol.as_str() {
            "HTTP" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            "TLS" if listener.tls_mode() == Some("Passthrough") => Protocol::TlsPassthrough,
            "TLS" => Protocol::TlsTerminate,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => Protocol::Unsupported,
        }
    }

    /// The route kinds a listener of this protocol can carry.
    pub fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Protocol::Http | Protocol::Https => &["HTTPRoute", "GRPCRoute"],
            Protocol::TlsPassthrough | Protocol::TlsTerminate => &["TLSRoute"],
            Protocol::Tcp => &["TCPRoute"],
            Protocol::Udp => &["UDPRoute"],
            Protocol::Unsupported => &[],
        }
    }

    fn is_udp(self) -> bool {
        self == Protocol::Udp
    }

    /// Protocols that tell listeners on one port apart by hostname.
    fn uses_hostname(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Https | Protocol::TlsPassthrough | Protocol::TlsTerminate
        )
    }
}

/// The verdict on one spec listener.
#[derive(Clone, Debug)]
pub struct ListenerPlan<'a> {
    pub spec: &'a model::Listener,
    pub name: &'a str,
    /// 0 when the spec's port is out of range (then `accepted` is an error).
    pub port: u16,
    pub protocol: Protocol,
    /// Lower-cased.
    pub hostname: Option<String>,
    /// Empty unless the listener is accepted.
    pub supported_kinds: Vec<RouteGroupKind>,
    pub accepted: Result<(), Problem>,
    /// `HostnameConflict` or `ProtocolConflict` (then `accepted` carries the same reason).
    pub conflict: Option<Problem>,
    /// Route kinds and certificate references.
    pub resolved: Result<(), Problem>,
    /// Set when an HTTPS hostname on the same port overlaps this one.
    pub overlapping: Option<String>,
    pub programmed: Result<(), Problem>,
    /// Whether another listener earlier in the spec has the same name.
    pub duplicate_name: bool,
}

/// Evaluates every listener of a Gateway, in spec order.
pub fn evaluate<'a>(ctx: &Context<'a>, gateway: &'a model::Gateway) -> Vec<ListenerPlan<'a>> {
    let mut plans: Vec<ListenerPlan<'a>> = gateway
        .spec
        .listeners
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let protocol = Protocol::of(spec);
            let port = u16::try_from(spec.port)
                .ok()
                .filter(|p| *p != 0)
                .unwrap_or(0);
            let duplicate_name = gateway.spec.listeners[..i]
                .iter()
                .any(|l| l.name == spec.name);
            ListenerPlan {
                spec,
                name: &spec.name,
                port,
                protocol,
                hostname: spec
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(str::to_ascii_lowercase),
                supported_kinds: Vec::new(),
                accepted: validate_fields(spec, protocol, port, duplicate_name),
                conflict: None,
                resolved: Ok(()),
                overlapping: None,
                programmed: Ok(()),
                duplicate_name,
            }
        })
        .collect();

    find_conflicts(&mut plans);
    for plan in &mut plans {
        if plan.accepted.is_ok() && plan.protocol == Protocol::TlsTerminate {
            plan.accepted = Err(Problem::new(
                reason::UNSUPPORTED_VALUE,
                "TLS mode Terminate is not supported on TLS listeners; use Passthrough",
            ));
        }
        let (valid, invalid) = route_kinds(plan);
        if plan.accepted.is_ok() {
            plan.supported_kinds = valid;
        }
        plan.resolved = match invalid.is_empty() {
            true => Ok(()),
            false => Err(Problem::new(
                reason::INVALID_ROUTE_KINDS,
                format!(
                    "route kinds not supported on a {} listener: {}",
                    plan.spec.protocol,
                    invalid.join(", ")
                ),
            )),
        };
        if plan.resolved.is_ok() && plan.protocol == Protocol::Https {
            plan.resolved = certificates(ctx, gateway, plan.spec);
        }
        plan.programmed = match (&plan.accepted, &plan.resolved, &plan.conflict) {
            (_, _, Some(conflict)) => Err(conflict.clone()),
            (Err(p), _, _) => Err(Problem::new(
                reason::INVALID,
                format!("listener is not accepted: {}", p.message),
            )),
            (Ok(()), Err(p), _)
                if p.reason != reason::INVALID_ROUTE_KINDS || plan.supported_kinds.is_empty() =>
            {
                Err(Problem::new(
                    reason::INVALID,
                    format!("listener references do not resolve: {}", p.message),
                ))
            }
            _ => Ok(()),
        };
    }
    find_overlapping_tls(&mut plans);
    plans
}

/// The checks the CRD schema and CEL rules make on one listener.
fn validate_fields(
    spec: &model::Listener,
    protocol: Protocol,
    port: u16,
    duplicate_name: bool,
) -> Result<(), Problem> {
    let invalid = |message: String| Err(Problem::new(reason::UNSUPPORTED_VALUE, message));
    if duplicate_name {
        return invalid(format!(
            "listener name {:?} is used more than once",
            spec.name
        ));
    }
    if protocol == Protocol::Unsupported {
        return Err(Problem::new(
            reason::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol {:?} is not supported (HTTP, HTTPS, TLS, TCP, UDP are)",
                spec.protocol
            ),
        ));
    }
    if port == 0 {
        return invalid(format!("port {} is out of range 1-65535", spec.port));
    }
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        if !protocol.uses_hostname() {
            return invalid(format!(
                "hostname must not be set on a {} listener",
                spec.protocol
            ));
        }
        if !hostname::is_valid(h) {
            return invalid(format!("hostname {h:?} is not a valid DNS name"));
        }
    }
    match (protocol, spec.tls_mode()) {
        (Protocol::Http | Protocol::Tcp | Protocol::Udp, Some(_)) => invalid(format!(
            "tls must not be set on a {} listener",
            spec.protocol
        )),
        (Protocol::Https, Some(mode)) if mode != "Terminate" => invalid(format!(
            "HTTPS listeners need tls.mode Terminate, not {mode}"
        )),
        (Protocol::TlsPassthrough | Protocol::TlsTerminate, None) => {
            invalid("TLS listeners need tls.mode".into())
        }
        (Protocol::TlsTerminate, Some(mode)) if mode != "Terminate" => {
            invalid(format!("unknown tls.mode {mode:?}"))
        }
        _ => Ok(()),
    }
}

/// Marks listeners that cannot share their port. Never picks a winner: every listener in a conflict is rejected.
fn find_conflicts(plans: &mut [ListenerPlan<'_>]) {
    let verdicts: Vec<Option<Problem>> = (0..plans.len())
        .map(|i| {
            let a = &plans[i];
            if a.accepted.is_err() {
                return None;
            }
            let mut found: Option<Problem> = None;
            for (j, b) in plans.iter().enumerate() {
                if i == j
                    || b.accepted.is_err()
                    || a.port != b.port
                    || a.protocol.is_udp() != b.protocol.is_udp()
                {
                    continue;
                }
                let conflict = if a.protocol != b.protocol || !a.protocol.uses_hostname() {
                    Problem::new(
                        reason::PROTOCOL_CONFLICT,
                        format!(
                            "port {} is also used by listener {:?} ({})",
                            a.port, b.name, b.spec.protocol
                        ),
                    )
                } else if a.hostname == b.hostname {
                    Problem::new(
                        reason::HOSTNAME_CONFLICT,
                        format!(
                            "listener {:?} has the same port, protocol and hostname",
                            b.name
                        ),
                    )
                } else {
                    continue;
                };
                if found
                    .as_ref()
                    .is_none_or(|f| f.reason == reason::HOSTNAME_CONFLICT)
                {
                    found = Some(conflict);
                }
            }
            found
        })
        .collect();
    for (plan, verdict) in plans.iter_mut().zip(verdicts) {
        if let Some(problem) = verdict {
            plan.accepted = Err(problem.clone());
            plan.conflict = Some(problem);
        }
    }
}

/// The listener's valid route kinds (spec order, no duplicates) and the names of the invalid ones.
fn route_kinds(plan: &ListenerPlan<'_>) -> (Vec<RouteGroupKind>, Vec<String>) {
    let allowed = plan.protocol.route_kinds();
    let requested = plan.spec.allowed_kinds();
    if requested.is_empty() {
        return (
            allowed
                .iter()
                .map(|k| RouteGroupKind::gateway_api(k))
                .collect(),
            Vec::new(),
        );
    }
    let (mut valid, mut invalid) = (Vec::<RouteGroupKind>::new(), Vec::new());
    for kind in requested {
        if kind.group() == GATEWAY_GROUP && allowed.contains(&kind.kind.as_str()) {
            let normalized = RouteGroupKind::gateway_api(&kind.kind);
            if !valid.contains(&normalized) {
                valid.push(normalized);
            }
        } else {
            invalid.push(format!("{}/{}", kind.group(), kind.kind));
        }
    }
    (valid, invalid)
}

/// Resolves an HTTPS listener's certificateRefs: each must be a core Secret, permitted (ReferenceGrant when in
/// another namespace), present and hold a PEM certificate and key. Permission is checked before existence.
fn certificates(
    ctx: &Context<'_>,
    gateway: &model::Gateway,
    spec: &model::Listener,
) -> Result<(), Problem> {
    let refs = spec
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    if refs.is_empty() {
        return Err(Problem::new(
            reason::INVALID_CERTIFICATE_REF,
            "no tls.certificateRefs",
        ));
    }
    let gateway_ns = gateway.metadata.namespace();
    for cert in refs {
        let namespace = cert.namespace.as_deref().unwrap_or(gateway_ns);
        let what = format!("{}/{}", namespace, cert.name);
        if cert.group() != "" || cert.kind() != "Secret" {
            let message = format!(
                "certificateRef {what}: unsupported group/kind {:?}/{}",
                cert.group(),
                cert.kind()
            );
            return Err(Problem::new(reason::INVALID_CERTIFICATE_REF, message));
        }
        let from = RefFrom {
            group: GATEWAY_GROUP,
            kind: "Gateway",
            namespace: gateway_ns,
        };
        let to = RefTo {
            group: "",
            kind: "Secret",
            namespace,
            name: &cert.name,
        };
        if !refgrant::permits(&ctx.snapshot.reference_grants, from, to) {
            let message =
                format!("certificateRef to Secret {what} is not permitted by any ReferenceGrant");
            return Err(Problem::new(reason::REF_NOT_PERMITTED, message));
        }
        let Some(secret) = ctx.secret(namespace, &cert.name) else {
            return Err(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!("Secret {what} not found"),
            ));
        };
        if let Err(why) = check_tls_secret(secret) {
            return Err(Problem::new(
                reason::INVALID_CERTIFICATE_REF,
                format!("Secret {what}: {why}"),
            ));
        }
    }
    Ok(())
}

/// A structural check of a TLS Secret: `tls.crt` holds PEM `CERTIFICATE` blocks and `tls.key` a PEM private key,
/// each with a base64 body. (Not a full X.509 parse: the proxy that loads the pair reports deeper problems.)
pub fn check_tls_secret(secret: &Secret) -> Result<(), String> {
    let cert = secret.value("tls.crt").ok_or("no tls.crt")?;
    let key = secret.value("tls.key").ok_or("no tls.key")?;
    let cert_blocks = pem_blocks(&cert).ok_or("tls.crt is not PEM")?;
    let key_blocks = pem_blocks(&key).ok_or("tls.key is not PEM")?;
    if cert_blocks.is_empty() || cert_blocks.iter().any(|label| label != "CERTIFICATE") {
        return Err("tls.crt holds no PEM CERTIFICATE".into());
    }
    if key_blocks.len() != 1 || !key_blocks[0].ends_with("PRIVATE KEY") {
        return Err("tls.key holds no PEM private key".into());
    }
    Ok(())
}

/// The labels of the PEM blocks in `data`, or `None` when a block is malformed.
fn pem_blocks(data: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut labels = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        loop {
            let next = lines.next()?;
            if next == end {
                break;
            }
            body.push_str(next);
        }
        if body.is_empty() || model::base64_decode(&body).is_none() {
            return None;
        }
        labels.push(label.to_string());
    }
    Some(labels)
}

/// `OverlappingTLSConfig`: HTTPS listeners on one port whose hostnames overlap (`foo.example.com` and
/// `*.example.com`), so one certificate may be served for the other's names.
fn find_overlapping_tls(plans: &mut [ListenerPlan<'_>]) {
    let found: Vec<Option<String>> = plans
        .iter()
        .map(|a| {
            let a_host = a
                .hostname
                .as_deref()
                .filter(|_| a.protocol == Protocol::Https && a.accepted.is_ok())?;
            let others: Vec<&str> = plans
                .iter()
                .filter(|b| b.protocol == Protocol::Https && b.port == a.port && b.accepted.is_ok())
                .filter(|b| {
                    b.hostname
                        .as_deref()
                        .is_some_and(|h| hostname::overlaps(a_host, h))
                })
                .map(|b| b.name)
                .collect();
            (!others.is_empty())
                .then(|| format!("hostname overlaps with listeners {}", others.join(", ")))
        })
        .collect();
    for (plan, message) in plans.iter_mut().zip(found) {
        plan.overlapping = message;
    }
}
