//! GatewayClass and Gateway (with listeners and addresses).
use super::{null_default, LabelSelector, ObjectMeta, GATEWAY_GROUP};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `gateway.networking.k8s.io` GatewayClass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClass {
    pub metadata: ObjectMeta,
    pub spec: GatewayClassSpec,
    /// The object as read (unknown fields included), echoed with its status.
    #[serde(skip)]
    pub raw: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayClassSpec {
    pub controller_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `gateway.networking.k8s.io` Gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
    #[serde(skip)]
    pub raw: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(deserialize_with = "null_default")]
    pub listeners: Vec<Listener>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub addresses: Vec<GatewayAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<GatewayInfrastructure>,
}

/// One requested address (`spec.addresses[]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayAddress {
    /// Defaults to `IPAddress`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl GatewayAddress {
    pub fn address_type(&self) -> &str {
        self.type_.as_deref().unwrap_or("IPAddress")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayInfrastructure {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters_ref: Option<Value>,
}

/// One `spec.listeners[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: i64,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

impl Listener {
    /// `tls.mode`, defaulting to `Terminate` when `tls` is set; `None` without `tls`.
    pub fn tls_mode(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .map(|t| t.mode.as_deref().unwrap_or("Terminate"))
    }

    /// `allowedRoutes.namespaces.from`, default `Same`.
    pub fn namespaces_from(&self) -> &str {
        self.allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref())
            .unwrap_or("Same")
    }

    /// `allowedRoutes.namespaces.selector`.
    pub fn namespace_selector(&self) -> Option<&LabelSelector> {
        self.allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.selector.as_ref())
    }

    /// `allowedRoutes.kinds` (empty: derived from the protocol).
    pub fn allowed_kinds(&self) -> &[RouteGroupKind] {
        self.allowed_routes
            .as_ref()
            .map(|a| a.kinds.as_slice())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ListenerTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub certificate_refs: Vec<SecretObjectReference>,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub options: BTreeMap<String, String>,
}

/// A reference to a Secret (group default `""`, kind default `Secret`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretObjectReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl SecretObjectReference {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Secret")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    /// `Same` (default), `All`, `Selector` or `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// A route kind (group defaults to `gateway.networking.k8s.io`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteGroupKind {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

impl RouteGroupKind {
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(GATEWAY_GROUP)
    }

    /// A Gateway API kind with the group set.
    pub fn gateway_api(kind: &str) -> Self {
        RouteGroupKind {
            group: Some(GATEWAY_GROUP.into()),
            kind: kind.into(),
        }
    }
}

impl Gateway {
    pub(super) fn apply_defaults(&mut self) {
        for address in &mut self.spec.addresses {
            address.type_.get_or_insert_with(|| "IPAddress".into());
        }
        for listener in &mut self.spec.listeners {
            let allowed = listener.allowed_routes.get_or_insert_with(Default::default);
            allowed
                .namespaces
                .get_or_insert_with(Default::default)
                .from
                .get_or_insert_with(|| "Same".into());
            for kind in &mut allowed.kinds {
                kind.group.get_or_insert_with(|| GATEWAY_GROUP.into());
            }
            if let Some(tls) = &mut listener.tls {
                tls.mode.get_or_insert_with(|| "Terminate".into());
                for cert in &mut tls.certificate_refs {
                    cert.group.get_or_insert_with(String::new);
                    cert.kind.get_or_insert_with(|| "Secret".into());
                }
            }
        }
    }
}
