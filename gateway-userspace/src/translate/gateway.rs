//! GatewayClass acceptance, and per Gateway: acceptance, addresses, programming and the status of it and its
//! listeners.
//!
//! Standalone addresses: a Gateway is served on the `spec.addresses` of type `IPAddress` that the injected
//! [`AddressPolicy`](super::AddressPolicy) finds usable and that no older Gateway of ours already uses. Another
//! address type makes the Gateway `Accepted=False UnsupportedAddress`; an unusable address `Programmed=False
//! AddressNotUsable` (the usable ones are still served); no `spec.addresses`, or an address without value, gives
//! `Programmed=False AddressNotAssigned`: standalone mode has no address pool to assign from. (In a cluster the
//! Kubernetes provider fills an empty `spec.addresses` in with the address MetalLB gave the Gateway's Service.)
use super::conditions::{self, reason, Conditions, Problem};
use super::listener::{self, ListenerPlan};
use super::route::Attachment;
use super::{Context, SUPPORTED_FEATURES};
use crate::model::{self, GatewayClass};
use crate::status::{
    ConditionStatus, GatewayClassStatus, GatewayStatus, GatewayStatusAddress, ListenerStatus,
    SupportedFeature,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Acceptance of the GatewayClasses of our controller, by name, with their status.
pub fn classes<'a>(ctx: &Context<'a>) -> BTreeMap<&'a str, (bool, GatewayClassStatus)> {
    ctx.snapshot
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == ctx.options.controller_name)
        .map(|class| (class.metadata.name.as_str(), class_status(ctx, class)))
        .collect()
}

fn class_status(ctx: &Context<'_>, class: &GatewayClass) -> (bool, GatewayClassStatus) {
    let mut c = Conditions::new(class.metadata.generation(), &ctx.options.now);
    let accepted = match &class.spec.parameters_ref {
        Some(_) => Err(Problem::new(
            reason::INVALID_PARAMETERS,
            "parametersRef is not supported by this controller",
        )),
        None => Ok(()),
    };
    c.outcome(
        conditions::ACCEPTED,
        &accepted,
        reason::ACCEPTED,
        "handled by this controller",
    );
    c.set(
        conditions::SUPPORTED_VERSION,
        ConditionStatus::True,
        reason::SUPPORTED_VERSION,
        "Gateway API v1.6",
    );
    let mut features: Vec<SupportedFeature> = SUPPORTED_FEATURES
        .iter()
        .map(|name| SupportedFeature {
            name: name.to_string(),
        })
        .collect();
    features.sort();
    (
        accepted.is_ok(),
        GatewayClassStatus {
            conditions: c.build(),
            supported_features: features,
        },
    )
}

/// Everything decided about one Gateway of ours.
#[derive(Debug)]
pub struct GatewayPlan<'a> {
    pub gateway: &'a model::Gateway,
    pub listeners: Vec<ListenerPlan<'a>>,
    /// `Accepted`: status, reason, message.
    pub accepted: (bool, &'static str, String),
    /// Addresses the Gateway is served on.
    pub addresses: Vec<IpAddr>,
    /// Why the Gateway is not programmed, if so.
    pub not_programmed: Option<Problem>,
    /// Routes accepted per listener (index into the route views, and how).
    pub attached: Vec<Vec<(usize, Attachment)>>,
}

impl GatewayPlan<'_> {
    pub fn is_accepted(&self) -> bool {
        self.accepted.0
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.gateway.metadata.namespace(),
            self.gateway.metadata.name
        )
    }
}

/// Plans every Gateway of an accepted or rejected class of ours, sorted by namespace/name. Addresses are claimed
/// oldest Gateway first.
pub fn plan<'a>(
    ctx: &Context<'a>,
    classes: &BTreeMap<&str, (bool, GatewayClassStatus)>,
) -> Vec<GatewayPlan<'a>> {
    let mut ours: Vec<&model::Gateway> = ctx
        .snapshot
        .gateways
        .iter()
        .filter(|g| classes.contains_key(g.spec.gateway_class_name.as_str()))
        .collect();
    ours.sort_by_key(|g| g.metadata.age_key());
    let mut claimed: HashMap<IpAddr, String> = HashMap::new();
    let mut plans: Vec<GatewayPlan<'a>> = ours
        .into_iter()
        .map(|gateway| {
            let class_accepted = classes
                .get(gateway.spec.gateway_class_name.as_str())
                .is_some_and(|c| c.0);
            plan_one(ctx, gateway, class_accepted, &mut claimed)
        })
        .collect();
    plans.sort_by(|a, b| {
        (a.gateway.metadata.namespace(), &a.gateway.metadata.name)
            .cmp(&(b.gateway.metadata.namespace(), &b.gateway.metadata.name))
    });
    plans
}

fn plan_one<'a>(
    ctx: &Context<'a>,
    gateway: &'a model::Gateway,
    class_accepted: bool,
    claimed: &mut HashMap<IpAddr, String>,
) -> GatewayPlan<'a> {
    let listeners = listener::evaluate(ctx, gateway);
    let unsupported_types: Vec<&str> = gateway
        .spec
        .addresses
        .iter()
        .map(model::GatewayAddress::address_type)
        .filter(|t| *t != "IPAddress")
        .collect();
    let invalid_listeners: Vec<&str> = listeners
        .iter()
        .filter(|l| l.accepted.is_err())
        .map(|l| l.name)
        .collect();
    let duplicates: Vec<&str> = listeners
        .iter()
        .filter(|l| l.duplicate_name)
        .map(|l| l.name)
        .collect();
    let accepted: (bool, &'static str, String) = if !class_accepted {
        (
            false,
            reason::INVALID,
            format!(
                "GatewayClass {:?} is not accepted",
                gateway.spec.gateway_class_name
            ),
        )
    } else if gateway
        .spec
        .infrastructure
        .as_ref()
        .is_some_and(|i| i.parameters_ref.is_some())
    {
        (
            false,
            reason::INVALID_PARAMETERS,
            "spec.infrastructure.parametersRef is not supported".into(),
        )
    } else if !unsupported_types.is_empty() {
        let message = format!(
            "address type(s) {} not supported (IPAddress is)",
            unsupported_types.join(", ")
        );
        (false, reason::UNSUPPORTED_ADDRESS, message)
    } else if !duplicates.is_empty() {
        (
            false,
            reason::INVALID,
            format!("listener names must be unique: {}", duplicates.join(", ")),
        )
    } else if !listeners.is_empty() && invalid_listeners.len() == listeners.len() {
        (
            false,
            reason::LISTENERS_NOT_VALID,
            format!(
                "no valid listener; invalid: {}",
                invalid_listeners.join(", ")
            ),
        )
    } else if !invalid_listeners.is_empty() {
        (
            true,
            reason::LISTENERS_NOT_VALID,
            format!("invalid listeners: {}", invalid_listeners.join(", ")),
        )
    } else {
        (true, reason::ACCEPTED, "accepted".into())
    };

    let mut addresses = Vec::new();
    let not_programmed;
    if accepted.0 {
        let key = format!("{}/{}", gateway.metadata.namespace(), gateway.metadata.name);
        let mut unusable = Vec::new();
        let mut unassigned = gateway.spec.addresses.is_empty();
        for address in &gateway.spec.addresses {
            let Some(value) = address.value.as_deref().filter(|v| !v.is_empty()) else {
                unassigned = true;
                continue;
            };
            let verdict = match value.parse::<IpAddr>() {
                Err(_) => Err("not an IP address".to_string()),
                Ok(ip) => ctx
                    .options
                    .address_policy
                    .check(ip)
                    .map(|()| ip)
                    .and_then(|ip| match claimed.get(&ip) {
                        Some(owner) if *owner != key => {
                            Err(format!("already used by Gateway {owner}"))
                        }
                        _ => Ok(ip),
                    }),
            };
            match verdict {
                Ok(ip) => {
                    claimed.insert(ip, key.clone());
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
                Err(why) => unusable.push(format!("{value}: {why}")),
            }
        }
        not_programmed = if !unusable.is_empty() {
            Some(Problem::new(
                reason::ADDRESS_NOT_USABLE,
                format!("unusable addresses: {}", unusable.join("; ")),
            ))
        } else if unassigned || addresses.is_empty() {
            Some(Problem::new(
                reason::ADDRESS_NOT_ASSIGNED,
                "no address to serve: spec.addresses has no IPAddress value (standalone mode has no address pool; \
                 in a cluster, the Gateway's LoadBalancer Service has no address yet)",
            ))
        } else if !listeners.is_empty() && listeners.iter().all(|l| l.programmed.is_err()) {
            Some(Problem::new(reason::INVALID, "no listener is programmed"))
        } else {
            None
        };
    } else {
        not_programmed = Some(Problem::new(
            reason::INVALID,
            format!("the Gateway is not accepted: {}", accepted.2),
        ));
    }
    let attached = vec![Vec::new(); listeners.len()];
    GatewayPlan {
        gateway,
        listeners,
        accepted,
        addresses,
        not_programmed,
        attached,
    }
}

/// The status of one planned Gateway, after routes were attached.
pub fn status(ctx: &Context<'_>, plan: &GatewayPlan<'_>) -> GatewayStatus {
    let generation = plan.gateway.metadata.generation();
    let now = &ctx.options.now;
    let mut c = Conditions::new(generation, now);
    let (ok, why, message) = &plan.accepted;
    c.set(
        conditions::ACCEPTED,
        if *ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        why,
        message.clone(),
    );
    let programmed = plan.not_programmed.clone().map_or(Ok(()), Err);
    c.outcome(
        conditions::PROGRAMMED,
        &programmed,
        reason::PROGRAMMED,
        "programmed in the data plane",
    );

    let mut listeners: Vec<ListenerStatus> = Vec::new();
    for (i, l) in plan.listeners.iter().enumerate() {
        if l.duplicate_name {
            continue;
        }
        let mut lc = Conditions::new(generation, now);
        lc.outcome(
            conditions::ACCEPTED,
            &l.accepted,
            reason::ACCEPTED,
            "accepted",
        );
        match &l.conflict {
            Some(p) => lc.set(
                conditions::CONFLICTED,
                ConditionStatus::True,
                p.reason,
                p.message.clone(),
            ),
            None => lc.set(
                conditions::CONFLICTED,
                ConditionStatus::False,
                reason::NO_CONFLICTS,
                "no conflicts",
            ),
        };
        lc.outcome(
            conditions::PROGRAMMED,
            &l.programmed,
            reason::PROGRAMMED,
            "programmed",
        );
        lc.outcome(
            conditions::RESOLVED_REFS,
            &l.resolved,
            reason::RESOLVED_REFS,
            "all references resolved",
        );
        if let Some(message) = &l.overlapping {
            lc.set(
                conditions::OVERLAPPING_TLS_CONFIG,
                ConditionStatus::True,
                reason::OVERLAPPING_HOSTNAMES,
                message.clone(),
            );
        }
        let mut routes: Vec<usize> = plan.attached[i].iter().map(|(r, _)| *r).collect();
        routes.sort_unstable();
        routes.dedup();
        listeners.push(ListenerStatus {
            name: l.name.to_string(),
            supported_kinds: l.supported_kinds.clone(),
            attached_routes: i32::try_from(routes.len()).unwrap_or(i32::MAX),
            conditions: lc.build(),
        });
    }
    let addresses = match plan.is_accepted() {
        true => plan
            .addresses
            .iter()
            .map(|ip| GatewayStatusAddress {
                type_: "IPAddress".into(),
                value: ip.to_string(),
            })
            .collect(),
        false => Vec::new(),
    };
    GatewayStatus {
        addresses,
        conditions: c.build(),
        listeners,
    }
}
