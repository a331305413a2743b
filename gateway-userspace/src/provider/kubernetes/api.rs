//! The writes, as API requests: status with server-side apply on the status subresource, Services with
//! server-side apply, Service deletion. Field manager: the controller name.
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::Value;

use super::{str_at, StatusPatch, WATCHED};

/// The API of one object kind, namespaced or cluster-wide.
fn api_for(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = WATCHED
        .iter()
        .find(|w| w.2 == kind)
        .map(|w| w.3.to_owned())
        .unwrap_or_else(|| format!("{}s", kind.to_ascii_lowercase()));
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Writes one status with server-side apply, `field_manager` (the controller name) owning what it sets, forced:
/// this controller is the only writer of its own entries.
pub async fn apply_status(
    client: &Client,
    patch: &StatusPatch,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let api = api_for(
        client,
        &patch.api_version,
        &patch.kind,
        patch.namespace.as_deref(),
    );
    let params = kube::api::PatchParams::apply(field_manager).force();
    api.patch_status(&patch.name, &params, &kube::api::Patch::Apply(&patch.body))
        .await?;
    Ok(())
}

/// Creates or updates a Gateway's LoadBalancer Service ([`load_balancer_service`]) with server-side apply.
pub async fn apply_service(
    client: &Client,
    service: &Value,
    field_manager: &str,
) -> Result<(), kube::Error> {
    let name = str_at(service, &["metadata", "name"]).unwrap_or_default();
    let api = api_for(
        client,
        "v1",
        "Service",
        str_at(service, &["metadata", "namespace"]),
    );
    let params = kube::api::PatchParams::apply(field_manager).force();
    api.patch(name, &params, &kube::api::Patch::Apply(service))
        .await?;
    Ok(())
}

/// Deletes a managed Service whose Gateway is gone or no longer accepted (the owner reference also lets the
/// garbage collector do it when the Gateway is deleted). A Service already gone is not an error.
pub async fn delete_service(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    let api = api_for(client, "v1", "Service", Some(namespace));
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
