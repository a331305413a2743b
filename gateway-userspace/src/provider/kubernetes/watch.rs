//! The watch side: one cluster-wide reflector per watched kind (Secrets excepted), plus one reflector per
//! referenced Secret, watched by name (`fieldSelector=metadata.name=<name>` in its namespace) — the agent never
//! lists the cluster's Secrets. A task rebuilds, after each burst of changes, the live objects (for the writer)
//! and the [`Snapshot`] (for the agent), and publishes each only when it changed.
//!
//! Failures: a watch that errors or drops is retried with kube-rs' default backoff (relisting when needed); a
//! reflector's store keeps its last state until a relist succeeds and then is replaced whole. Nothing is
//! published before every kind has listed once, and nothing while the API server is unreachable (the stores do
//! not change), so the agent keeps serving the last snapshot and catches up when the server returns.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{api_resource, permitted_secret_refs, snapshot_from_objects, WATCHED};
use crate::snapshot::Snapshot;

/// How long a snapshot waits for a newly referenced Secret to be read before it is published without it (the
/// listener then reports the reference as invalid until the Secret arrives).
const SECRET_READ_GRACE: Duration = Duration::from_secs(5);

/// The longest a snapshot waits for a burst of changes to end.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// What [`watch`] publishes.
pub struct Watch {
    /// Snapshots for the agent. The initial value is an empty snapshot that is not meant to be served: wait for
    /// the first change.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Every object the snapshot was built from, as the API server returned it (status included; Secrets only
    /// when referenced), for the writer. Changes more often than the snapshot (status writes).
    pub objects: watch::Receiver<Arc<Vec<Value>>>,
    /// The task that builds them; the reflectors stop when it ends or is aborted.
    pub task: JoinHandle<()>,
}

/// Starts the reflectors and the task that publishes snapshots and objects.
pub fn watch(client: Client, debounce: Duration) -> Watch {
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (objects_tx, objects) = watch::channel(Arc::new(Vec::new()));
    let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
    let mut stores = Vec::new();
    let mut reflectors = Vec::new();
    for kind in WATCHED.into_iter().filter(|k| k.2 != "Secret") {
        let resource = api_resource(kind);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let (store, task) = reflect(
            api,
            resource.clone(),
            watcher::Config::default(),
            &changed_tx,
        );
        stores.push((resource, store));
        reflectors.push(task);
    }
    let reflectors = AbortOnDrop(reflectors);
    let task = tokio::spawn(async move {
        // The reflectors live as long as this task (also when it is aborted).
        let _reflectors = reflectors;
        for (resource, store) in &stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
            debug!(kind = resource.kind, "listed");
        }
        let mut secrets = SecretWatches::new(client, changed_tx);
        loop {
            // Debounce: rebuild once nothing changed for `debounce`, or after `MAX_DELAY` of steady changes (a
            // busy cluster, e.g. EndpointSlice churn, must not hold the snapshot back forever).
            let burst = tokio::time::Instant::now();
            while burst.elapsed() < MAX_DELAY {
                match tokio::time::timeout(debounce, changed_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            let mut objects = collect(&stores);
            secrets.follow(&permitted_secret_refs(&objects)).await;
            objects.extend(secrets.objects());
            let snapshot = snapshot_from_objects(objects.clone());
            objects_tx.send_if_modified(|last| {
                let modified = **last != objects;
                if modified {
                    *last = Arc::new(objects);
                }
                modified
            });
            snapshot_tx.send_if_modified(|last| {
                let modified = **last != snapshot;
                if modified {
                    *last = Arc::new(snapshot);
                }
                modified
            });
            if changed_rx.recv().await.is_none() {
                break;
            }
        }
    });
    Watch {
        snapshots,
        objects,
        task,
    }
}

/// Background tasks aborted when dropped.
pub(super) struct AbortOnDrop(pub(super) Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs a reflector for `api` into a new store; every event (or error) pokes `changed`.
fn reflect(
    api: Api<DynamicObject>,
    resource: ApiResource,
    config: watcher::Config,
    changed: &mpsc::Sender<()>,
) -> (Store<DynamicObject>, JoinHandle<()>) {
    let writer = Writer::<DynamicObject>::new(resource.clone());
    let store = writer.as_reader();
    let changed = changed.clone();
    let task = tokio::spawn(async move {
        let mut events =
            std::pin::pin!(reflector::reflector(writer, watcher(api, config)).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    let _ = changed.try_send(());
                }
                Err(e) => {
                    warn!(kind = resource.kind, error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    });
    (store, task)
}

/// One reflector per referenced Secret.
struct SecretWatches {
    client: Client,
    changed: mpsc::Sender<()>,
    resource: ApiResource,
    watches: HashMap<(String, String), SecretWatch>,
}

struct SecretWatch {
    store: Store<DynamicObject>,
    task: JoinHandle<()>,
    started: Instant,
}

impl SecretWatches {
    fn new(client: Client, changed: mpsc::Sender<()>) -> Self {
        let resource = api_resource(*WATCHED.iter().find(|k| k.2 == "Secret").expect("Secret"));
        SecretWatches {
            client,
            changed,
            resource,
            watches: HashMap::new(),
        }
    }

    /// Watches exactly the Secrets in `refs`: starts the new ones, stops the ones no longer referenced, and waits
    /// (up to [`SECRET_READ_GRACE`] after each started) for the new ones to be read.
    async fn follow(&mut self, refs: &std::collections::HashSet<(String, String)>) {
        self.watches.retain(|key, w| {
            let keep = refs.contains(key);
            if !keep {
                debug!(
                    namespace = key.0,
                    name = key.1,
                    "Secret no longer referenced"
                );
                w.task.abort();
            }
            keep
        });
        for key in refs {
            if self.watches.contains_key(key) {
                continue;
            }
            info!(
                namespace = key.0,
                name = key.1,
                "watching a referenced Secret"
            );
            let api = Api::namespaced_with(self.client.clone(), &key.0, &self.resource);
            let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
            let (store, task) = reflect(api, self.resource.clone(), config, &self.changed);
            self.watches.insert(
                key.clone(),
                SecretWatch {
                    store,
                    task,
                    started: Instant::now(),
                },
            );
        }
        for w in self.watches.values() {
            let left = SECRET_READ_GRACE.saturating_sub(w.started.elapsed());
            let _ = tokio::time::timeout(left, w.store.wait_until_ready()).await;
        }
    }

    fn objects(&self) -> Vec<Value> {
        self.watches
            .values()
            .flat_map(|w| {
                w.store
                    .state()
                    .into_iter()
                    .filter_map(|o| to_value(&o, &self.resource))
            })
            .collect()
    }
}

impl Drop for SecretWatches {
    fn drop(&mut self) {
        for w in self.watches.values() {
            w.task.abort();
        }
    }
}

/// The JSON of a stored object, with the `apiVersion` and `kind` list items lack, less the bookkeeping that
/// changes on every write (`resourceVersion`, `managedFields`) so such writes do not make a new snapshot.
fn to_value(object: &DynamicObject, resource: &ApiResource) -> Option<Value> {
    let mut value = serde_json::to_value(object).ok()?;
    let map = value.as_object_mut()?;
    map.insert("apiVersion".into(), resource.api_version.clone().into());
    map.insert("kind".into(), resource.kind.clone().into());
    if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    Some(value)
}

/// Every object of every store.
fn collect(stores: &[(ApiResource, Store<DynamicObject>)]) -> Vec<Value> {
    stores
        .iter()
        .flat_map(|(resource, store)| {
            store
                .state()
                .into_iter()
                .filter_map(move |o| to_value(&o, resource))
        })
        .collect()
}
