//! A snapshot: every object the translation reads, as plain owned values (no I/O). Providers build one; the
//! translation reads one.
use crate::model::{
    EndpointSlice, Gateway, GatewayClass, GrpcRoute, HttpRoute, ModelError, Namespace, Object,
    ReferenceGrant, Secret, Service, TcpRoute, TlsRoute, UdpRoute,
};
use serde_json::Value;

/// All objects of one point in time, per kind, in provider order (file order for the file provider).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tls_routes: Vec<TlsRoute>,
    pub tcp_routes: Vec<TcpRoute>,
    pub udp_routes: Vec<UdpRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub namespaces: Vec<Namespace>,
}

/// Why objects could not be put together into one snapshot.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SnapshotError {
    /// Document number `index` (0-based) could not be decoded.
    #[error("document {index}: {source}")]
    Document { index: usize, source: ModelError },
    /// Two objects with the same kind, namespace and name.
    #[error("duplicate {kind} {key}")]
    Duplicate { kind: &'static str, key: String },
}

impl Snapshot {
    /// Builds a snapshot from parsed documents (YAML or JSON values). Kinds the translation does not read are
    /// skipped; `load_order` follows the iteration order.
    pub fn from_documents(
        documents: impl IntoIterator<Item = Value>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut snapshot = Snapshot::default();
        for (index, document) in documents.into_iter().enumerate() {
            if let Some(mut object) = Object::from_value(document)
                .map_err(|source| SnapshotError::Document { index, source })?
            {
                object.meta_mut().load_order = index as u64;
                snapshot.insert(object)?;
            }
        }
        Ok(snapshot)
    }

    /// Adds an object; an object of the same kind, namespace and name already present is an error.
    pub fn insert(&mut self, object: Object) -> Result<(), SnapshotError> {
        let kind = object.kind();
        let meta = object.meta();
        let key = match object.is_namespaced() {
            true => format!("{}/{}", meta.namespace(), meta.name),
            false => meta.name.clone(),
        };
        if self.contains(kind, meta.namespace.as_deref(), &meta.name) {
            return Err(SnapshotError::Duplicate { kind, key });
        }
        match object {
            Object::GatewayClass(o) => self.gateway_classes.push(o),
            Object::Gateway(o) => self.gateways.push(o),
            Object::HttpRoute(o) => self.http_routes.push(o),
            Object::GrpcRoute(o) => self.grpc_routes.push(o),
            Object::TlsRoute(o) => self.tls_routes.push(o),
            Object::TcpRoute(o) => self.tcp_routes.push(o),
            Object::UdpRoute(o) => self.udp_routes.push(o),
            Object::ReferenceGrant(o) => self.reference_grants.push(o),
            Object::Service(o) => self.services.push(o),
            Object::EndpointSlice(o) => self.endpoint_slices.push(o),
            Object::Secret(o) => self.secrets.push(o),
            Object::Namespace(o) => self.namespaces.push(o),
        }
        Ok(())
    }

    /// Whether an object of `kind` (as Kubernetes spells it) with this namespace and name is present.
    pub fn contains(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or("default");
        let hit =
            |meta: &crate::model::ObjectMeta| meta.name == name && meta.namespace() == namespace;
        match kind {
            "GatewayClass" => self.gateway_classes.iter().any(|o| o.metadata.name == name),
            "Namespace" => self.namespaces.iter().any(|o| o.metadata.name == name),
            "Gateway" => self.gateways.iter().any(|o| hit(&o.metadata)),
            "HTTPRoute" => self.http_routes.iter().any(|o| hit(&o.metadata)),
            "GRPCRoute" => self.grpc_routes.iter().any(|o| hit(&o.metadata)),
            "TLSRoute" => self.tls_routes.iter().any(|o| hit(&o.metadata)),
            "TCPRoute" => self.tcp_routes.iter().any(|o| hit(&o.metadata)),
            "UDPRoute" => self.udp_routes.iter().any(|o| hit(&o.metadata)),
            "ReferenceGrant" => self.reference_grants.iter().any(|o| hit(&o.metadata)),
            "Service" => self.services.iter().any(|o| hit(&o.metadata)),
            "EndpointSlice" => self.endpoint_slices.iter().any(|o| hit(&o.metadata)),
            "Secret" => self.secrets.iter().any(|o| hit(&o.metadata)),
            _ => false,
        }
    }

    /// Removes an object by kind, namespace and name; returns whether one was removed.
    pub fn remove(&mut self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let namespace = namespace.filter(|n| !n.is_empty()).unwrap_or("default");
        fn retain<T>(v: &mut Vec<T>, keep: impl Fn(&T) -> bool) -> bool {
            let before = v.len();
            v.retain(keep);
            v.len() != before
        }
        let miss =
            |meta: &crate::model::ObjectMeta| !(meta.name == name && meta.namespace() == namespace);
        match kind {
            "GatewayClass" => retain(&mut self.gateway_classes, |o| o.metadata.name != name),
            "Namespace" => retain(&mut self.namespaces, |o| o.metadata.name != name),
            "Gateway" => retain(&mut self.gateways, |o| miss(&o.metadata)),
            "HTTPRoute" => retain(&mut self.http_routes, |o| miss(&o.metadata)),
            "GRPCRoute" => retain(&mut self.grpc_routes, |o| miss(&o.metadata)),
            "TLSRoute" => retain(&mut self.tls_routes, |o| miss(&o.metadata)),
            "TCPRoute" => retain(&mut self.tcp_routes, |o| miss(&o.metadata)),
            "UDPRoute" => retain(&mut self.udp_routes, |o| miss(&o.metadata)),
            "ReferenceGrant" => retain(&mut self.reference_grants, |o| miss(&o.metadata)),
            "Service" => retain(&mut self.services, |o| miss(&o.metadata)),
            "EndpointSlice" => retain(&mut self.endpoint_slices, |o| miss(&o.metadata)),
            "Secret" => retain(&mut self.secrets, |o| miss(&o.metadata)),
            _ => false,
        }
    }

    /// The number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.udp_routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.secrets.len()
            + self.namespaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next `load_order` value: one past the largest in the snapshot (for objects added after loading).
    pub fn next_load_order(&self) -> u64 {
        let all = self
            .gateway_classes
            .iter()
            .map(|o| &o.metadata)
            .chain(self.gateways.iter().map(|o| &o.metadata))
            .chain(self.http_routes.iter().map(|o| &o.metadata))
            .chain(self.grpc_routes.iter().map(|o| &o.metadata))
            .chain(self.tls_routes.iter().map(|o| &o.metadata))
            .chain(self.tcp_routes.iter().map(|o| &o.metadata))
            .chain(self.udp_routes.iter().map(|o| &o.metadata));
        all.map(|m| m.load_order + 1).max().unwrap_or(0)
    }
}
