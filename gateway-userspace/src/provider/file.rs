//! The standalone file provider: YAML files and directories in, a [`Snapshot`] out; and a watcher that re-reads
//! them when they change.
//!
//! Rules of the format:
//! * A path is a file (read whatever its name) or a directory, walked recursively for `*.yaml` / `*.yml` in sorted
//!   path order; names starting with `.` are skipped (editor files, Kubernetes ConfigMap `..data` links).
//! * Files hold multi-document YAML; a `v1` `List` document is expanded into its items.
//! * Kinds: GatewayClass, Gateway, HTTPRoute, ReferenceGrant (`gateway.networking.k8s.io/v1`, `v1beta1`),
//!   GRPCRoute (`v1`), TCPRoute, UDPRoute (`v1`, `v1alpha2`), TLSRoute (`v1`, `v1alpha2`, `v1alpha3`), core `v1`
//!   Service, Secret and Namespace, `discovery.k8s.io/v1` EndpointSlice. Other kinds (Deployments, ConfigMaps,
//!   ...) are skipped.
//! * Defaults: the CRD defaults are applied; a missing namespace is `default`; a missing `metadata.generation` is 1;
//!   objects without `creationTimestamp` are ordered by their position in the input (file order).
//! * Endpoints come only from EndpointSlices in the files (label `kubernetes.io/service-name`).
//!
//! Parse errors vs status: what the API server would reject at admission by *schema* — YAML syntax, a field of the
//! wrong type, no `apiVersion`/`kind`/`metadata.name`, an apiVersion not served for a kind we read, two objects of
//! the same kind and name — is a [`LoadError`] with `file:line`, and nothing of that input is used. What the CRDs
//! reject by *validation rules* (CEL/patterns: a hostname on a TCP listener, duplicate listener names, ports out of
//! range, bad hostnames, `tls` on HTTP listeners, ...) loads, and the translation reports it in the object's
//! status with the Gateway API reason, so one bad object never takes the others down.
use crate::model::Object;
use crate::snapshot::{Snapshot, SnapshotError};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the files could not be loaded. Every variant names the file, and the line where one is known.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path could not be read or walked.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A document is not valid YAML or does not match the schema of its kind.
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// An object with the same kind, namespace and name was already loaded.
    #[error("{}:{line}: duplicate {kind} {key} (first defined at {first})", file.display())]
    Duplicate {
        file: PathBuf,
        line: usize,
        kind: &'static str,
        key: String,
        first: String,
    },
}

impl LoadError {
    /// The file and line the error points at (line 0 for I/O errors).
    pub fn location(&self) -> (&Path, usize) {
        match self {
            LoadError::Io { path, .. } => (path, 0),
            LoadError::Parse { file, line, .. } | LoadError::Duplicate { file, line, .. } => {
                (file, *line)
            }
        }
    }
}

/// Loads every object from `paths` (files or directories).
pub fn load(paths: &[PathBuf]) -> Result<Snapshot, LoadError> {
    load_contents(&read_all(paths)?)
}

/// The files `paths` stand for, in load order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads the files `paths` stand for.
fn read_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>, LoadError> {
    files(paths)?
        .into_iter()
        .map(|path| match std::fs::read(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(source) => Err(LoadError::Io { path, source }),
        })
        .collect()
}

fn load_contents(contents: &[(PathBuf, Vec<u8>)]) -> Result<Snapshot, LoadError> {
    let mut loader = Loader::default();
    for (path, bytes) in contents {
        let text = std::str::from_utf8(bytes).map_err(|e| LoadError::Parse {
            file: path.clone(),
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            message: "file is not UTF-8".into(),
        })?;
        loader.add_text(path, text)?;
    }
    Ok(loader.finish())
}

/// Builds a snapshot from YAML texts, one file at a time, in order.
#[derive(Debug, Default)]
pub struct Loader {
    snapshot: Snapshot,
    /// Where each object was defined (`file:line`), by kind and key.
    origins: HashMap<(&'static str, String), String>,
    order: u64,
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every object of a multi-document YAML text; `file` names it in errors.
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), LoadError> {
        for (start, document) in split_documents(text) {
            let parse = |line: Option<usize>, message: String| LoadError::Parse {
                file: file.to_path_buf(),
                line: start + line.unwrap_or(1).clamp(1, document.lines().count().max(1)) - 1,
                message,
            };
            let object = Object::from_yaml(document).map_err(|e| parse(e.line(), e.to_string()))?;
            let objects = match object {
                Some(object) => vec![object],
                None => list_items(document).map_err(|e| parse(e.line(), e.to_string()))?,
            };
            for object in objects {
                self.add(file, start, object)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, file: &Path, line: usize, mut object: Object) -> Result<(), LoadError> {
        object.meta_mut().load_order = self.order;
        self.order += 1;
        let kind = object.kind();
        let meta = object.meta();
        let key = match object.is_namespaced() {
            true => format!("{}/{}", meta.namespace(), meta.name),
            false => meta.name.clone(),
        };
        let here = format!("{}:{line}", file.display());
        if let Some(first) = self.origins.get(&(kind, key.clone())) {
            return Err(LoadError::Duplicate {
                file: file.to_path_buf(),
                line,
                kind,
                key,
                first: first.clone(),
            });
        }
        self.snapshot.insert(object).map_err(|e| match e {
            SnapshotError::Duplicate { kind, key } => LoadError::Duplicate {
                file: file.to_path_buf(),
                line,
                kind,
                key,
                first: here.clone(),
            },
            other => LoadError::Parse {
                file: file.to_path_buf(),
                line,
                message: other.to_string(),
            },
        })?;
        self.origins.insert((kind, key), here);
        Ok(())
    }

    pub fn finish(self) -> Snapshot {
        self.snapshot
    }
}

/// The items of a `v1` `List` document; nothing for other documents of kinds we do not read.
fn list_items(document: &str) -> Result<Vec<Object>, crate::model::ModelError> {
    let value: Value = serde_yaml::from_str(document).unwrap_or(Value::Null);
    if value.get("kind").and_then(Value::as_str) != Some("List") {
        return Ok(Vec::new());
    }
    let items = value
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut objects = Vec::new();
    for item in items {
        objects.extend(Object::from_value(item)?);
    }
    Ok(objects)
}

/// Splits multi-document YAML at `---` (and `...`) lines: each document with its 1-based first line. The `---`
/// line itself starts the document text (YAML allows it), so line numbers inside map back directly.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start_byte, mut start_line) = (0usize, 1usize);
    let mut offset = 0usize;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "...";
        if (is_start || is_end) && offset > start_byte {
            documents.push((start_line, &text[start_byte..offset]));
        }
        if is_start || is_end {
            start_byte = if is_end { offset + line.len() } else { offset };
            start_line = if is_end { index + 2 } else { index + 1 };
        }
        offset += line.len();
    }
    if offset > start_byte {
        documents.push((start_line, &text[start_byte..]));
    }
    documents
}

/// How often [`watch`] looks at the files.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Loads `paths` and keeps reloading them when their contents change (polled every [`POLL_INTERVAL`]). A load
/// that fails is logged with `file:line` (`tracing::error!`) and the last good snapshot stays current; if the very
/// first load fails the current snapshot is empty. The task ends when every receiver is dropped. Must be called
/// inside a Tokio runtime.
pub fn watch(paths: Vec<PathBuf>) -> (watch::Receiver<Arc<Snapshot>>, JoinHandle<()>) {
    watch_every(paths, POLL_INTERVAL)
}

/// [`watch`] with a chosen poll interval.
pub fn watch_every(
    paths: Vec<PathBuf>,
    interval: Duration,
) -> (watch::Receiver<Arc<Snapshot>>, JoinHandle<()>) {
    let mut last = read_all(&paths);
    let initial = match last
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|c| load_contents(c).map_err(|e| e.to_string()))
    {
        Ok(snapshot) => snapshot,
        Err(error) => {
            tracing::error!(%error, "cannot load configuration; starting empty");
            Snapshot::default()
        }
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                return;
            }
            let scan_paths = paths.clone();
            let Ok(current) = tokio::task::spawn_blocking(move || read_all(&scan_paths)).await
            else {
                continue;
            };
            if same_contents(&current, &last) {
                continue;
            }
            match current
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|c| load_contents(c).map_err(|e| e.to_string()))
            {
                Ok(snapshot) => {
                    tracing::info!(objects = snapshot.len(), "configuration reloaded");
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load configuration; keeping the last good one")
                }
            }
            last = current;
        }
    });
    (rx, task)
}

fn same_contents(
    a: &Result<Vec<(PathBuf, Vec<u8>)>, LoadError>,
    b: &Result<Vec<(PathBuf, Vec<u8>)>, LoadError>,
) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_lines() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- \n...\nd: 4\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            // The empty document between `--- ` and `...` is kept; it parses to nothing.
            vec![
                (1, "a: 1\n"),
                (2, "---\nb: 2\nc: 3\n"),
                (5, "--- \n"),
                (7, "d: 4\n")
            ]
        );
    }

    #[test]
    fn errors_point_at_the_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  listeners:\n  - name: x\n    port: [80]\n";
        let err = Loader::new()
            .add_text(Path::new("f.yaml"), text)
            .unwrap_err();
        assert_eq!(err.location().1, 13, "{err}");
        assert!(err.to_string().starts_with("f.yaml:13: "), "{err}");
    }

    #[test]
    fn duplicates_are_errors() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n";
        let err = Loader::new()
            .add_text(Path::new("f.yaml"), text)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml:5: duplicate Namespace a (first defined at f.yaml:1)"
        );
    }
}
