//! Checks on `deploy/`: every manifest parses as a Kubernetes object of a known kind; the DaemonSet keeps its
//! security rules (never privileged, exactly the documented capabilities, hostNetwork, probes on the admin port);
//! RBAC covers every status subresource and the leader-election Lease and grants nothing on `*`; the Helm chart,
//! rendered by a tiny renderer that knows only the template constructs the chart uses, equals the plain manifests;
//! and the Gateway API objects validate against the v1.6.1 CRD schemas in `../shared/gateway-api`.
//!
//! There is no `helm` or API server here, so both the renderer and the schema validator are small and strict:
//! an unsupported template construct or schema keyword fails the test rather than being skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// Capabilities the DaemonSet adds; each one is justified in deploy/daemonset.yaml.
const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "NET_ADMIN", "NET_BIND_SERVICE"];
const ADMIN_PORT: u64 = 9902;
const NAMESPACE: &str = "ebpf-gateway-system";
const STATUS_SUBRESOURCES: [&str; 7] = [
    "gatewayclasses/status",
    "gateways/status",
    "httproutes/status",
    "grpcroutes/status",
    "tlsroutes/status",
    "tcproutes/status",
    "udproutes/status",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn crd_dir(channel: &str) -> PathBuf {
    repo()
        .join("../shared/gateway-api/config/crd")
        .join(channel)
}

/// Every non-empty YAML document in `text`.
fn documents(text: &str, origin: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            Value::deserialize(d).unwrap_or_else(|e| panic!("{}: not YAML: {e}", origin.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents(&text, path)
}

/// YAML files under `dir`, recursively, sorted; `skip` names directories left out.
fn yaml_files(dir: &Path, skip: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !skip.contains(&name.as_str()) {
                out.extend(yaml_files(&path, skip));
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

fn str_of<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path).as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Known kinds: kind -> (apiVersion, namespaced).
fn known_kinds() -> BTreeMap<&'static str, (&'static str, bool)> {
    BTreeMap::from([
        ("Namespace", ("v1", false)),
        ("ServiceAccount", ("v1", true)),
        ("Service", ("v1", true)),
        ("ConfigMap", ("v1", true)),
        ("ClusterRole", ("rbac.authorization.k8s.io/v1", false)),
        (
            "ClusterRoleBinding",
            ("rbac.authorization.k8s.io/v1", false),
        ),
        ("Role", ("rbac.authorization.k8s.io/v1", true)),
        ("RoleBinding", ("rbac.authorization.k8s.io/v1", true)),
        ("DaemonSet", ("apps/v1", true)),
        ("Deployment", ("apps/v1", true)),
        ("GatewayClass", ("gateway.networking.k8s.io/v1", false)),
        ("Gateway", ("gateway.networking.k8s.io/v1", true)),
        ("TLSRoute", ("gateway.networking.k8s.io/v1", true)),
        ("IPAddressPool", ("metallb.io/v1beta1", true)),
        ("L2Advertisement", ("metallb.io/v1beta1", true)),
    ])
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Asserts `doc` is a well-formed object of a known kind; returns its (kind, namespace, name).
fn check_object(doc: &Value, origin: &Path) -> (String, String, String) {
    let kind = str_of(doc, "kind");
    let api = str_of(doc, "apiVersion");
    let name = str_of(doc, "metadata.name");
    let ns = str_of(doc, "metadata.namespace");
    let at = format!("{}: {kind} {ns}/{name}", origin.display());
    let (want_api, namespaced) = *known_kinds()
        .get(kind)
        .unwrap_or_else(|| panic!("{at}: unknown kind {kind:?}"));
    assert_eq!(api, want_api, "{at}: apiVersion");
    assert!(
        is_dns_subdomain(name),
        "{at}: metadata.name {name:?} is not a DNS subdomain"
    );
    assert_eq!(
        !ns.is_empty(),
        namespaced,
        "{at}: metadata.namespace present iff the kind is namespaced"
    );
    (kind.into(), ns.into(), name.into())
}

/// The documents of every resource the kustomization lists.
fn base_objects() -> Vec<Value> {
    let kustomization = &load(&deploy().join("kustomization.yaml"))[0];
    strings(&kustomization["resources"])
        .iter()
        .flat_map(|r| load(&deploy().join(r)))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| str_of(o, "kind") == kind)
        .collect()
}

#[test]
fn every_manifest_parses_as_a_kubernetes_object() {
    let files = yaml_files(&deploy(), &["helm"]);
    assert!(files.len() >= 7, "deploy/ has too few manifests: {files:?}");
    let mut seen = BTreeSet::new();
    for file in &files {
        if file.file_name().unwrap() == "kustomization.yaml" {
            continue;
        }
        let docs = load(file);
        assert!(!docs.is_empty(), "{}: no objects", file.display());
        for doc in &docs {
            let id = check_object(doc, file);
            assert!(
                seen.insert(id.clone()),
                "{}: {id:?} defined twice",
                file.display()
            );
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "DaemonSet",
        "GatewayClass",
    ] {
        assert!(
            seen.iter().any(|(k, _, _)| k == kind),
            "deploy/ has no {kind}"
        );
    }
}

#[test]
fn kustomization_lists_every_top_level_manifest() {
    let kustomization = &load(&deploy().join("kustomization.yaml"))[0];
    assert_eq!(str_of(kustomization, "kind"), "Kustomization");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    for obj in base_objects() {
        let ns = str_of(&obj, "metadata.namespace");
        assert!(
            ns.is_empty() || ns == NAMESPACE,
            "{ns}: base objects live in {NAMESPACE}"
        );
    }
}

#[test]
fn the_image_is_built_with_the_provider_the_daemonset_runs() {
    let objects = base_objects();
    let ds = find(&objects, "DaemonSet");
    let args = strings(
        get(ds[0], "spec.template.spec.containers")[0]
            .get("args")
            .unwrap(),
    );
    let at = args
        .iter()
        .position(|a| a == "--provider")
        .expect("--provider");
    assert_eq!(args[at + 1], "kubernetes");
    // The agent's Lease identity and namespace come from the pod (`--identity` / `--leader-election-namespace`
    // default to these variables).
    let env = get(ds[0], "spec.template.spec.containers")[0]["env"].clone();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .as_sequence()
            .and_then(|e| e.iter().find(|v| str_of(v, "name") == name))
            .unwrap_or_else(|| panic!("{name} is not set"));
        assert_eq!(str_of(var, "valueFrom.fieldRef.fieldPath"), field, "{name}");
    }
    // The image's binary must have the `kubernetes` feature (without it `--provider kubernetes` is refused).
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the Dockerfile documents its build");
    assert!(
        build.contains("--release") && build.contains("--features kubernetes"),
        "{build}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for line in readme
        .lines()
        .filter(|l| l.contains("cargo build --release -p gateway-userspace"))
    {
        assert!(line.contains("--features kubernetes"), "README: {line}");
    }
}

#[test]
fn daemonset_is_not_privileged_and_adds_only_the_documented_capabilities() {
    let objects = base_objects();
    let ds = find(&objects, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let pod = get(ds[0], "spec.template.spec");
    assert_eq!(pod["hostNetwork"], Value::Bool(true));
    assert_eq!(str_of(pod, "dnsPolicy"), "ClusterFirstWithHostNet");
    assert_eq!(str_of(pod, "serviceAccountName"), "ebpf-gateway");
    assert!(
        get(pod, "terminationGracePeriodSeconds").as_u64().unwrap() >= 15,
        "room for the 10 s drain"
    );
    assert!(
        get(pod, "hostPID").as_bool() != Some(true) && get(pod, "hostIPC").as_bool() != Some(true)
    );
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(pod.get("initContainers").is_none());
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"],
        Value::Bool(false),
        "privileged must be explicitly false"
    );
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(strings(get(sc, "capabilities.drop")), ["ALL"]);
    assert_eq!(strings(get(sc, "capabilities.add")), CAPABILITIES);
    assert!(pod
        .get("securityContext")
        .and_then(|s| s.get("privileged"))
        .is_none());

    let args = strings(&c["args"]);
    let joined = args.join(" ");
    assert!(
        joined.starts_with("run --provider kubernetes --admin 0.0.0.0:9902"),
        "args: {joined}"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(str_of(&c[probe], "httpGet.path"), path, "{probe}");
        assert_eq!(
            get(&c[probe], "httpGet.port").as_u64(),
            Some(ADMIN_PORT),
            "{probe}"
        );
    }
    assert_eq!(
        get(c, "ports").as_sequence().unwrap()[0]["containerPort"].as_u64(),
        Some(ADMIN_PORT)
    );

    // bpffs from the node; Bidirectional propagation would need a privileged container.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let bpffs = mounts
        .iter()
        .find(|m| str_of(m, "mountPath") == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_ne!(str_of(bpffs, "mountPropagation"), "Bidirectional");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == bpffs["name"])
        .expect("bpffs volume");
    assert_eq!(str_of(volume, "hostPath.path"), "/sys/fs/bpf");
    assert_eq!(
        pod["volumes"].as_sequence().unwrap().len(),
        1,
        "no other host paths"
    );
}

/// (apiGroup, resource) -> verbs, over every rule of the given Role or ClusterRole objects.
fn grants(roles: &[&Value]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for role in roles {
        for rule in role["rules"].as_sequence().unwrap() {
            let (groups, resources, verbs) = (
                strings(&rule["apiGroups"]),
                strings(&rule["resources"]),
                strings(&rule["verbs"]),
            );
            for s in groups.iter().chain(&resources).chain(&verbs) {
                assert!(
                    !s.contains('*'),
                    "{}: a rule grants on {s:?}",
                    str_of(role, "metadata.name")
                );
            }
            assert!(rule.get("nonResourceURLs").is_none());
            for g in &groups {
                for r in &resources {
                    out.entry((g.clone(), r.clone()))
                        .or_default()
                        .extend(verbs.iter().cloned());
                }
            }
        }
    }
    out
}

fn verbs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn rbac_is_least_privilege_and_covers_status_and_leases() {
    let objects = base_objects();
    let cluster = grants(&find(&objects, "ClusterRole"));
    let read = verbs(&["get", "list", "watch"]);
    let gw = "gateway.networking.k8s.io";
    for r in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "tcproutes",
        "udproutes",
        "referencegrants",
    ] {
        assert_eq!(cluster[&(gw.into(), r.into())], read, "{r}");
    }
    for r in STATUS_SUBRESOURCES {
        assert_eq!(
            cluster[&(gw.into(), r.into())],
            verbs(&["update", "patch"]),
            "{r}"
        );
    }
    assert_eq!(cluster[&("".into(), "namespaces".into())], read);
    assert_eq!(
        cluster[&("".into(), "secrets".into())],
        read,
        "Secrets are only read"
    );
    assert_eq!(
        cluster[&("discovery.k8s.io".into(), "endpointslices".into())],
        read
    );
    assert_eq!(
        cluster[&("".into(), "services".into())],
        verbs(&["get", "list", "watch", "create", "update", "patch", "delete"])
    );
    let expected: BTreeSet<(String, String)> = [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "tlsroutes",
        "tcproutes",
        "udproutes",
        "referencegrants",
    ]
    .iter()
    .chain(&STATUS_SUBRESOURCES)
    .map(|r| (gw.to_string(), r.to_string()))
    .chain(
        [
            ("", "namespaces"),
            ("", "secrets"),
            ("", "services"),
            ("discovery.k8s.io", "endpointslices"),
        ]
        .map(|(g, r)| (g.to_string(), r.to_string())),
    )
    .collect();
    assert_eq!(
        cluster.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "nothing beyond the list"
    );

    let roles = find(&objects, "Role");
    for role in &roles {
        assert_eq!(str_of(role, "metadata.namespace"), NAMESPACE);
    }
    let namespaced = grants(&roles);
    assert_eq!(namespaced.len(), 1);
    assert_eq!(
        namespaced[&("coordination.k8s.io".into(), "leases".into())],
        verbs(&["get", "create", "update"])
    );

    for (binding, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let bindings = find(&objects, binding);
        assert_eq!(bindings.len(), 1, "{binding}");
        let b = bindings[0];
        assert_eq!(str_of(b, "roleRef.kind"), role_kind);
        assert!(find(&objects, role_kind)
            .iter()
            .any(|r| r["metadata"]["name"] == b["roleRef"]["name"]));
        let subjects = b["subjects"].as_sequence().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(str_of(&subjects[0], "kind"), "ServiceAccount");
        assert_eq!(str_of(&subjects[0], "name"), "ebpf-gateway");
        assert_eq!(str_of(&subjects[0], "namespace"), NAMESPACE);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A tiny Helm renderer: `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`, `{{ if .Values.x }}` / `{{ end }}`,
// `{{ toYaml .Values.x | nindent N }}`, with `{{-` and `-}}` whitespace trimming. Anything else panics.

struct Context<'a> {
    values: &'a Value,
    namespace: &'a str,
}

impl Context<'_> {
    fn lookup(&self, path: &str) -> Value {
        if path == ".Release.Namespace" {
            return Value::String(self.namespace.into());
        }
        let rest = path
            .strip_prefix(".Values.")
            .unwrap_or_else(|| panic!("unsupported reference {path}"));
        get(self.values, rest).clone()
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn render(template: &str, ctx: &Context) -> String {
    let mut out = String::new();
    // Stack of "is this branch emitted" flags.
    let mut emit: Vec<bool> = vec![true];
    let mut rest = template;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let text = &rest[..start];
        let text = if trim_next { text.trim_start() } else { text };
        if *emit.last().unwrap() {
            out.push_str(text);
        }
        let end = start + rest[start..].find("}}").expect("unclosed {{");
        let mut action = &rest[start + 2..end];
        if let Some(a) = action.strip_prefix('-') {
            action = a;
            if *emit.last().unwrap() {
                out.truncate(out.trim_end().len());
            }
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            action = a;
            trim_next = true;
        }
        let words: Vec<&str> = action.split_whitespace().collect();
        let on = *emit.last().unwrap();
        match words.as_slice() {
            ["if", path] => emit.push(on && truthy(&ctx.lookup(path))),
            ["end"] => {
                emit.pop();
                assert!(!emit.is_empty(), "unbalanced end");
            }
            ["toYaml", path, "|", "nindent", n] => {
                if on {
                    let n: usize = n.parse().unwrap();
                    let yaml = serde_yaml::to_string(&ctx.lookup(path)).unwrap();
                    for line in yaml.trim_end().lines() {
                        out.push('\n');
                        out.push_str(&" ".repeat(n));
                        out.push_str(line);
                    }
                }
            }
            [path] if path.starts_with('.') => {
                if on {
                    out.push_str(&scalar(&ctx.lookup(path)));
                }
            }
            _ => panic!("unsupported template action {{{{{action}}}}}"),
        }
        rest = &rest[end + 2..];
    }
    assert_eq!(emit.len(), 1, "unclosed if");
    out.push_str(if trim_next { rest.trim_start() } else { rest });
    out
}

fn chart() -> PathBuf {
    deploy().join("helm/ebpf-gateway")
}

fn render_chart(values: &Value, namespace: &str) -> Vec<Value> {
    let ctx = Context { values, namespace };
    let mut templates: Vec<PathBuf> = std::fs::read_dir(chart().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    templates.sort();
    let mut out = Vec::new();
    for t in templates {
        assert!(
            t.extension().is_some_and(|e| e == "yaml"),
            "{}: only .yaml templates",
            t.display()
        );
        let rendered = render(&std::fs::read_to_string(&t).unwrap(), &ctx);
        out.extend(documents(&rendered, &t));
    }
    out
}

fn default_values() -> Value {
    load(&chart().join("values.yaml")).remove(0)
}

fn by_identity(objects: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    objects
        .into_iter()
        .map(|o| {
            let id = (
                str_of(&o, "kind").to_owned(),
                str_of(&o, "metadata.namespace").to_owned(),
                str_of(&o, "metadata.name").to_owned(),
            );
            (id, o)
        })
        .collect()
}

#[test]
fn helm_renderer_supports_exactly_the_used_constructs() {
    let values: Value =
        serde_yaml::from_str("a: {b: x, on: true, off: false, list: [p, q]}").unwrap();
    let ctx = Context {
        values: &values,
        namespace: "ns",
    };
    assert_eq!(
        render("n: {{ .Values.a.b }} {{ .Release.Namespace }}", &ctx),
        "n: x ns"
    );
    assert_eq!(
        render("a\n  {{- if .Values.a.off }}\nb\n  {{- end }}\nc", &ctx),
        "a\nc"
    );
    assert_eq!(
        render("a\n  {{- if .Values.a.on }}\nb\n  {{- end }}\nc", &ctx),
        "a\nb\nc"
    );
    assert_eq!(
        render("l: {{- toYaml .Values.a.list | nindent 2 }}", &ctx),
        "l:\n  - p\n  - q"
    );
    assert!(std::panic::catch_unwind(|| render("{{ include \"x\" . }}", &ctx)).is_err());
}

#[test]
fn helm_chart_renders_the_plain_manifests_with_default_values() {
    let chart_meta = &load(&chart().join("Chart.yaml"))[0];
    assert_eq!(str_of(chart_meta, "apiVersion"), "v2");
    assert_eq!(str_of(chart_meta, "name"), "ebpf-gateway");

    let rendered = render_chart(&default_values(), NAMESPACE);
    for o in &rendered {
        check_object(o, &chart());
    }
    // The chart leaves the Namespace to `helm install --create-namespace`.
    let plain: Vec<Value> = base_objects()
        .into_iter()
        .filter(|o| str_of(o, "kind") != "Namespace")
        .collect();
    let (rendered, plain) = (by_identity(rendered), by_identity(plain));
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (id, object) in &plain {
        assert_eq!(
            &rendered[id], object,
            "{id:?} differs between the chart and deploy/"
        );
    }
}

#[test]
fn helm_chart_values_change_the_rendered_objects() {
    let mut values = default_values();
    let v = values.as_mapping_mut().unwrap();
    v.insert("adminPort".into(), 9999.into());
    v.insert(
        "extraArgs".into(),
        serde_yaml::from_str("[--interface, eth0]").unwrap(),
    );
    v.insert("metallb".into(), get(&default_values(), "metallb").clone());
    v.get_mut("metallb")
        .unwrap()
        .as_mapping_mut()
        .unwrap()
        .insert("enabled".into(), true.into());
    v.get_mut("gatewayClass")
        .unwrap()
        .as_mapping_mut()
        .unwrap()
        .insert("create".into(), false.into());
    let rendered = by_identity(render_chart(&values, "other"));

    let ds = &rendered[&("DaemonSet".into(), "other".into(), "ebpf-gateway".into())];
    let c = &get(ds, "spec.template.spec.containers")
        .as_sequence()
        .unwrap()[0];
    let args = strings(&c["args"]).join(" ");
    assert!(
        args.contains("--admin 0.0.0.0:9999") && args.ends_with("--interface eth0"),
        "{args}"
    );
    assert_eq!(
        get(&c["readinessProbe"], "httpGet.port").as_u64(),
        Some(9999)
    );
    assert!(!rendered.keys().any(|(k, _, _)| k == "GatewayClass"));

    // The MetalLB toggle renders deploy/metallb/l2.yaml.
    let metallb = by_identity(load(&deploy().join("metallb/l2.yaml")));
    for (id, object) in metallb {
        assert_eq!(rendered.get(&id), Some(&object), "{id:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A structural validator for CRD OpenAPI v3 schemas: types, required, properties (unknown fields are errors, as
// with `kubectl apply --validate=strict`), additionalProperties, enum, min/max (length, items, value), pattern,
// ipv4/ipv6 formats, anyOf/oneOf. CEL rules (x-kubernetes-validations) are not evaluated.

fn validate(value: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    let mut err = |m: String| errors.push(format!("{at}: {m}"));
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            err("null".into());
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str() {
        let ok = match ty {
            "object" => value.is_mapping(),
            "array" => value.is_sequence(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_bool(),
            other => panic!("schema type {other}"),
        };
        if !ok {
            err(format!("expected {ty}, got {value:?}"));
            return;
        }
    }
    if let Some(choices) = schema["enum"].as_sequence() {
        if !choices.contains(value) {
            err(format!("{value:?} not in {choices:?}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            err(format!("{s:?} longer than {:?}", schema["maxLength"]));
        }
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            err(format!("{s:?} shorter than {:?}", schema["minLength"]));
        }
        if let Some(p) = schema["pattern"].as_str() {
            if !regex::Regex::new(p)
                .unwrap_or_else(|e| panic!("pattern {p}: {e}"))
                .is_match(s)
            {
                err(format!("{s:?} does not match {p}"));
            }
        }
        match schema["format"].as_str() {
            Some("ipv4") if s.parse::<std::net::Ipv4Addr>().is_err() => {
                err(format!("{s:?} not ipv4"))
            }
            Some("ipv6") if s.parse::<std::net::Ipv6Addr>().is_err() => {
                err(format!("{s:?} not ipv6"))
            }
            _ => {}
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            err(format!("{n} above {:?}", schema["maximum"]));
        }
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            err(format!("{n} below {:?}", schema["minimum"]));
        }
    }
    if let Some(items) = value.as_sequence() {
        let n = items.len() as u64;
        if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
            err(format!("more than {:?} items", schema["maxItems"]));
        }
        if schema["minItems"].as_u64().is_some_and(|m| n < m) {
            err(format!("fewer than {:?} items", schema["minItems"]));
        }
        if let Some(item) = schema.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate(v, item, &format!("{at}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_mapping() {
        validate_object(map, schema, at, errors);
    }
    for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(branches) = schema[key].as_sequence() {
            let passing = branches
                .iter()
                .filter(|b| {
                    let mut e = Vec::new();
                    validate(value, b, at, &mut e);
                    e.is_empty()
                })
                .count();
            if passing == 0 || (exactly_one && passing > 1) {
                errors.push(format!("{at}: {passing} branches of {key} match"));
            }
        }
    }
}

fn validate_object(map: &Mapping, schema: &Value, at: &str, errors: &mut Vec<String>) {
    for r in strings(&schema["required"]) {
        if !map.contains_key(r.as_str()) {
            errors.push(format!("{at}: missing required field {r}"));
        }
    }
    let properties = schema["properties"].as_mapping();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
    for (k, v) in map {
        let key = k.as_str().unwrap_or("?");
        let path = format!("{at}.{key}");
        if let Some(p) = properties.and_then(|p| p.get(key)) {
            validate(v, p, &path, errors);
        } else if let Some(additional) = schema
            .get("additionalProperties")
            .filter(|a| a.is_mapping())
        {
            validate(v, additional, &path, errors);
        } else if properties.is_some() && !preserve {
            errors.push(format!("{path}: unknown field"));
        }
    }
}

/// The schema of `apiVersion`/`kind` from the CRDs of `channel`.
fn crd_schema(channel: &str, api_version: &str, kind: &str) -> Value {
    let (group, version) = api_version.split_once('/').unwrap();
    for file in yaml_files(&crd_dir(channel), &[]) {
        for crd in load(&file) {
            if str_of(&crd, "kind") != "CustomResourceDefinition"
                || str_of(&crd, "spec.group") != group
                || str_of(&crd, "spec.names.kind") != kind
            {
                continue;
            }
            let versions = get(&crd, "spec.versions").as_sequence().unwrap();
            let v = versions
                .iter()
                .find(|v| str_of(v, "name") == version)
                .unwrap_or_else(|| panic!("{kind}: version {version} not in the {channel} CRD"));
            assert_eq!(
                v["served"],
                Value::Bool(true),
                "{kind} {version} is not served in {channel}"
            );
            return get(v, "schema.openAPIV3Schema").clone();
        }
    }
    panic!("no CRD for {kind} in {}", crd_dir(channel).display())
}

fn schema_errors(object: &Value, channel: &str) -> Vec<String> {
    let schema = crd_schema(
        channel,
        str_of(object, "apiVersion"),
        str_of(object, "kind"),
    );
    let mut errors = Vec::new();
    validate(object, &schema, str_of(object, "kind"), &mut errors);
    errors
}

fn gateway_api_objects() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for file in yaml_files(&deploy(), &["helm"]) {
        for doc in load(&file) {
            if str_of(&doc, "apiVersion").starts_with("gateway.networking.k8s.io/") {
                out.push((file.clone(), doc));
            }
        }
    }
    out
}

#[test]
fn gateway_api_objects_validate_against_the_crd_schemas() {
    let objects = gateway_api_objects();
    let kinds: BTreeSet<&str> = objects.iter().map(|(_, o)| str_of(o, "kind")).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["Gateway", "GatewayClass", "TLSRoute"])
    );
    for channel in ["standard", "experimental"] {
        for (file, object) in &objects {
            let errors = schema_errors(object, channel);
            assert!(
                errors.is_empty(),
                "{} ({channel}): {errors:#?}",
                file.display()
            );
        }
    }
    // The GatewayClass names the controller the agent runs under.
    let class = objects
        .iter()
        .find(|(_, o)| str_of(o, "kind") == "GatewayClass")
        .unwrap();
    assert_eq!(
        str_of(&class.1, "spec.controllerName"),
        "ebpf-gateway.dev/gatewayclass-controller"
    );
}

#[test]
fn schema_validator_rejects_invalid_objects() {
    let objects = gateway_api_objects();
    let gateway = &objects
        .iter()
        .find(|(_, o)| str_of(o, "kind") == "Gateway")
        .unwrap()
        .1;
    let mutate = |f: &dyn Fn(&mut Mapping)| {
        let mut g = gateway.clone();
        f(g["spec"].as_mapping_mut().unwrap());
        schema_errors(&g, "standard")
    };
    let listener = |f: &dyn Fn(&mut Mapping)| {
        mutate(&|spec| f(spec["listeners"][0].as_mapping_mut().unwrap()))
    };
    assert!(!mutate(&|s| {
        s.remove("gatewayClassName");
    })
    .is_empty());
    assert!(!mutate(&|s| {
        s.insert("bogus".into(), 1.into());
    })
    .is_empty());
    assert!(!listener(&|l| {
        l.insert("port".into(), 70000.into());
    })
    .is_empty());
    assert!(!listener(&|l| {
        l.insert("port".into(), "443".into());
    })
    .is_empty());
    assert!(!listener(&|l| {
        l.insert("hostname".into(), "Not A Hostname".into());
    })
    .is_empty());
    assert!(!listener(&|l| {
        l.insert(
            "tls".into(),
            serde_yaml::from_str("{mode: Sideways}").unwrap(),
        );
    })
    .is_empty());
    assert!(mutate(&|_| {}).is_empty());
}
