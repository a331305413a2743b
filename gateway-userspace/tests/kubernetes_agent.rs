//! `gateway run --provider kubernetes` end to end: the real agent process, in a network namespace, reads a cluster
//! from the mock API server of `mock_api/` (served over HTTP inside that namespace, reached through a
//! `KUBECONFIG`), programs the kernel from it — traffic flows from a client namespace to an echo backend — and, as
//! leader, writes the Lease, status and the Gateway's Service. A route deleted in the cluster stops being
//! served, also after an API server outage; on SIGTERM the agent releases its Lease. Needs `--features kubernetes`, root and eBPF (never skipped).
#![cfg(feature = "kubernetes")]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig},
    manifests::{l4_gateway, L4Listener},
    topology, GatewayProcess, Topology,
};
use serde_json::Value;

mod mock_api;
use mock_api::{serve_http, ApiServer};

const PORT: u16 = 9000;

/// The objects of a multi-document YAML, by resource plural, as a cluster would hold them (with a uid).
fn cluster_from_yaml(yaml: &str) -> HashMap<String, Vec<Value>> {
    let mut lists: HashMap<String, Vec<Value>> = HashMap::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let mut object: Value = serde_json::to_value(
            <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap(),
        )
        .unwrap();
        let kind = object["kind"].as_str().unwrap().to_string();
        let plural = gateway_userspace::provider::kubernetes::WATCHED
            .iter()
            .find(|w| w.2 == kind)
            .unwrap_or_else(|| panic!("{kind}"))
            .3;
        object["metadata"]["uid"] = format!("uid-{i}").into();
        object["metadata"]["generation"] = 1.into();
        object["metadata"]["creationTimestamp"] = format!("2026-01-01T00:00:{i:02}Z").into();
        lists.entry(plural.into()).or_default().push(object);
    }
    lists
}

/// Waits (≤ `timeout`) until `check` holds.
fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn target() -> SocketAddr {
    SocketAddr::from((topology::vip(1), PORT))
}

#[test]
fn the_agent_serves_what_the_cluster_holds_and_writes_status_as_leader() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let _echo = spawn_echo(
        topo.backend(1),
        &EchoConfig::new("k8s-backend-1", "infra")
            .service("echo")
            .tcp(3000),
    )?;
    let yaml = l4_gateway(
        topology::vip(1),
        &[L4Listener::tcp("tcp", PORT, 3000, &[topo.backend_addr(1)])],
    );
    let server = ApiServer::new(cluster_from_yaml(&yaml));

    // The API server listens on the gateway namespace's loopback (a socket stays in the namespace it was made in).
    let listener = topo
        .gateway()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))?;
    listener.set_nonblocking(true)?;
    let api_port = listener.local_addr()?.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api_thread = std::thread::spawn({
        let server = server.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = serve_http(server, listener, "gateway") => {}
                    _ = stop_rx => {}
                }
            });
        }
    });
    let dir = gateway_tests::netns::temp_dir("kubeconfig")?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: mock, cluster: {{server: \"http://127.0.0.1:{api_port}\"}}}}]\n\
             users: [{{name: mock, user: {{}}}}]\n\
             contexts: [{{name: mock, context: {{cluster: mock, user: mock, namespace: default}}}}]\n\
             current-context: mock\n"
        ),
    )?;

    let mut gw = GatewayProcess::spawn_with_env(
        topo.gateway(),
        &[] as &[&Path],
        &[
            "--provider",
            "kubernetes",
            "--identity",
            "node-a",
            "--leader-election-namespace",
            "ebpf-gateway-system",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )?;
    gw.wait_ready(Duration::from_secs(30))
        .context("ready = the cluster's configuration is in the kernel")?;

    // The kernel serves the TCPRoute the cluster holds.
    let reply = topo
        .client()
        .run(|| clients::tcp_echo_test(target()))
        .with_context(|| gw.log_tail(40))?;
    assert_eq!(reply.namespace, "infra");
    assert!(reply.pod.starts_with("k8s-backend-1"), "{}", reply.pod);
    assert!(gw.kernel_packets("forwarded")? > 0);

    // As the only agent it leads: Lease, status, the Gateway's Service.
    let lock = || server.lock().unwrap();
    until("the Lease", Duration::from_secs(10), || {
        lock()
            .leases
            .get("ebpf-gateway-leader")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "node-a")
    });
    until("the leader metric", Duration::from_secs(10), || {
        gw.metric("gateway_leader").is_ok_and(|v| v == 1)
    });
    until("the Gateway's status", Duration::from_secs(10), || {
        lock()
            .get("gateways", Some("infra"), "gw")
            .is_some_and(|g| {
                g["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Programmed" && c["status"] == "True")
                })
            })
    });
    until("the TCPRoute's status", Duration::from_secs(10), || {
        lock()
            .get("tcproutes", Some("infra"), "tcp")
            .is_some_and(|r| {
                r["status"]["parents"][0]["controllerName"]
                    == "ebpf-gateway.dev/gatewayclass-controller"
            })
    });
    until("the Gateway's Service", Duration::from_secs(10), || {
        lock()
            .get("services", Some("infra"), "ebpf-gw-gw")
            .is_some()
    });
    let service = lock().get("services", Some("infra"), "ebpf-gw-gw").unwrap();
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(
        service["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"],
        topology::vip(1).to_string()
    );
    {
        let s = lock();
        assert!(
            s.calls.iter().all(|c| !c.path.ends_with("/secrets")),
            "no Secret is referenced, none is read"
        );
    }

    // The API server goes away for a while: the agent keeps serving.
    {
        let mut s = lock();
        s.down = true;
        s.watches.clear();
    }
    std::thread::sleep(Duration::from_secs(2));
    let reply = topo.client().run(|| clients::tcp_echo_test(target()))?;
    assert_eq!(reply.namespace, "infra", "still served during the outage");
    assert!(gw.is_running(), "the agent survives the outage");

    // It returns, and the route is deleted: the listener stops forwarding (a RST, no backend).
    lock().down = false;
    until("the watches resume", Duration::from_secs(30), || {
        lock().watches.iter().any(|w| w.plural == "tcproutes")
    });
    lock().remove("tcproutes", "infra", "tcp");
    until(
        "the route is gone from the kernel",
        Duration::from_secs(10),
        || {
            topo.client()
                .run(|| TcpStream::connect_timeout(&target(), Duration::from_secs(2)))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        },
    );

    // SIGTERM: the agent exits cleanly and gives its Lease up for the next agent.
    let status = gw.stop(Duration::from_secs(15))?;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        gw.log_tail(20)
    );
    let lease = lock().leases["ebpf-gateway-leader"].clone();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );
    let _ = stop_tx.send(());
    api_thread.join().unwrap();
    Ok(())
}
