//! Condition types, reasons and the builder that stamps generation and time; keeping `lastTransitionTime` of
//! conditions whose status did not change since the previous translation.
use crate::model::ParentReference;
use crate::status::{Condition, ConditionStatus, Status, Timestamp};

pub const ACCEPTED: &str = "Accepted";
pub const PROGRAMMED: &str = "Programmed";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const CONFLICTED: &str = "Conflicted";
pub const SUPPORTED_VERSION: &str = "SupportedVersion";
pub const OVERLAPPING_TLS_CONFIG: &str = "OverlappingTLSConfig";

/// Condition reasons (Gateway API constants).
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const SUPPORTED_VERSION: &str = "SupportedVersion";
    pub const INVALID: &str = "Invalid";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const OVERLAPPING_HOSTNAMES: &str = "OverlappingHostnames";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
}

/// A negative outcome: the reason of a `False` condition and a message for humans.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// Builds the conditions of one object: every condition observes the object's generation and starts at `now`.
pub struct Conditions<'a> {
    generation: i64,
    now: &'a Timestamp,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    pub fn new(generation: i64, now: &'a Timestamp) -> Self {
        Conditions {
            generation,
            now,
            list: Vec::new(),
        }
    }

    pub fn set(
        &mut self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> &mut Self {
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        });
        self
    }

    /// `True` with `reason` when `result` is `Ok`, else `False` with the problem's reason.
    pub fn outcome(
        &mut self,
        type_: &str,
        result: &Result<(), Problem>,
        ok_reason: &str,
        ok_message: &str,
    ) -> &mut Self {
        match result {
            Ok(()) => self.set(type_, ConditionStatus::True, ok_reason, ok_message),
            Err(p) => self.set(type_, ConditionStatus::False, p.reason, p.message.clone()),
        }
    }

    pub fn build(self) -> Vec<Condition> {
        self.list
    }
}

/// Keeps `lastTransitionTime` from `previous` for every condition whose type and status are unchanged.
pub fn keep_transition_times(status: &mut Status, previous: &Status) {
    for (name, class) in &mut status.gateway_classes {
        if let Some(old) = previous.gateway_classes.get(name) {
            carry(&mut class.conditions, &old.conditions);
        }
    }
    for (key, gateway) in &mut status.gateways {
        let Some(old) = previous.gateways.get(key) else {
            continue;
        };
        carry(&mut gateway.conditions, &old.conditions);
        for listener in &mut gateway.listeners {
            if let Some(old) = old.listeners.iter().find(|l| l.name == listener.name) {
                carry(&mut listener.conditions, &old.conditions);
            }
        }
    }
    for (key, route) in &mut status.routes {
        let Some(old) = previous.routes.get(key) else {
            continue;
        };
        for parent in &mut route.parents {
            let same = |p: &&crate::status::RouteParentStatus| {
                same_parent(&p.parent_ref, &parent.parent_ref)
                    && p.controller_name == parent.controller_name
            };
            if let Some(old) = old.parents.iter().find(same) {
                carry(&mut parent.conditions, &old.conditions);
            }
        }
    }
}

fn same_parent(a: &ParentReference, b: &ParentReference) -> bool {
    a == b
}

fn carry(conditions: &mut [Condition], old: &[Condition]) {
    for condition in conditions {
        if let Some(prev) = old
            .iter()
            .find(|c| c.type_ == condition.type_ && c.status == condition.status)
        {
            condition.last_transition_time = prev.last_transition_time.clone();
        }
    }
}
