//! GRPCRoute and HTTP/2 through the userspace HTTP proxy: h2c clients (the harness's hyper client), a GRPCRoute
//! routing by `/service/method` to backends spoken to over h2c, and an HTTPRoute served to an HTTP/2 client
//! from an HTTP/1.1 backend; gRPC callers get the proxy's own answers as gRPC statuses. The echo backends answer
//! any path, so routing is checked by which pod answered.
use std::{net::SocketAddr, time::Duration};

use anyhow::{ensure, Result};
use gateway_tests::{
    clients,
    echo::{spawn_echo, EchoConfig},
    gateway::write_manifests,
    manifests::CONTROLLER,
    topology, GatewayProcess, Topology,
};

const H2C_PORT: u16 = 3001;
const HTTP_PORT: u16 = 3000;

fn service(name: &str, port: u16, target: u16, endpoint: std::net::Ipv4Addr) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: infra}}
spec:
  ports: [{{port: {port}, targetPort: {target}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-a1
  namespace: infra
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{port: {target}, protocol: TCP}}]
endpoints:
- addresses: ["{endpoint}"]
  conditions: {{ready: true}}
"#
    )
}

#[test]
fn grpcroute_by_service_and_method_over_h2c() -> Result<()> {
    let topo = Topology::builder().backends(2).build()?;
    let mut echoes = Vec::new();
    for (i, name) in ["grpc-a", "grpc-b"].iter().enumerate() {
        let cfg = EchoConfig::new(&format!("{name}-5f9c-x{}", i + 1), "infra")
            .service(name)
            .http(HTTP_PORT)
            .h2c(H2C_PORT);
        echoes.push(spawn_echo(topo.backend(i + 1), &cfg)?);
    }
    let vip = topology::vip(1);
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: test}}
spec: {{controllerName: {CONTROLLER}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: test
  addresses: [{{type: IPAddress, value: "{vip}"}}]
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: grpc, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [grpc.example.com]
  rules:
  - matches: [{{method: {{service: echo.Echo, method: Exact}}}}]
    backendRefs: [{{name: grpc-a, port: 9000}}]
  - matches: [{{method: {{service: echo.Echo}}}}]
    backendRefs: [{{name: grpc-b, port: 9000}}]
  - matches: [{{method: {{service: echo.Missing}}}}]
    backendRefs: [{{name: missing, port: 9000}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [web.example.com]
  rules:
  - backendRefs: [{{name: web-a, port: 8080}}]
{}{}{}"#,
        service("grpc-a", 9000, H2C_PORT, topo.backend_addr(1)),
        service("grpc-b", 9000, H2C_PORT, topo.backend_addr(2)),
        service("web-a", 8080, HTTP_PORT, topo.backend_addr(1)),
    );
    let dir = tempfile::tempdir()?;
    let config = write_manifests(dir.path(), &yaml)?;
    let gateway = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let target = SocketAddr::from((vip, 80));
    let h2c = |authority: &str, path: &str| {
        let (a, p) = (authority.to_string(), path.to_string());
        topo.client().run(move || clients::h2c_get(target, &a, &p))
    };
    let grpc = |authority: &str, path: &str| {
        let (a, p) = (authority.to_string(), path.to_string());
        topo.client()
            .run(move || clients::grpc_call(target, &a, &p))
    };
    // The proxy's own answers to gRPC callers are trailers-only gRPC statuses with HTTP 200, as Envoy sends
    // them: UNIMPLEMENTED (12) for a call no GRPCRoute matches, UNAVAILABLE (14) for an invalid backend.
    let grpc_status = |r: &clients::HttpResponse, code: &str| -> Result<()> {
        ensure!(r.status == 200, "HTTP status {} {:?}", r.status, r.headers);
        ensure!(
            r.header("grpc-status") == Some(code),
            "grpc-status {:?}, want {code}: {:?}",
            r.header("grpc-status"),
            r.headers
        );
        ensure!(
            r.header("content-type") == Some("application/grpc"),
            "{:?}",
            r.headers
        );
        ensure!(
            r.body.is_empty(),
            "trailers-only, but a body: {:?}",
            r.text()
        );
        Ok(())
    };
    let check = || -> Result<()> {
        let r = h2c("grpc.example.com", "/echo.Echo/Exact")?;
        ensure!(r.status == 200, "status {} {}", r.status, r.text());
        let e = r.echo()?;
        ensure!(
            e.pod.starts_with("grpc-a-"),
            "exact method answered by {}",
            e.pod
        );
        ensure!(e.proto == "HTTP/2.0", "backend saw {}", e.proto);
        let r = h2c("grpc.example.com", "/echo.Echo/Other")?;
        ensure!(r.status == 200, "status {}", r.status);
        ensure!(r.echo()?.pod.starts_with("grpc-b-"), "service match");
        // No matching method or hostname: nothing is routed; a gRPC call is told UNIMPLEMENTED, anything else 404.
        ensure!(h2c("grpc.example.com", "/other.Svc/Exact")?.status == 404);
        ensure!(h2c("nothing.example.com", "/echo.Echo/Exact")?.status == 404);
        grpc_status(&grpc("grpc.example.com", "/other.Svc/Exact")?, "12")?;
        grpc_status(&grpc("nothing.example.com", "/echo.Echo/Exact")?, "12")?;
        grpc_status(&grpc("grpc.example.com", "/echo.Missing/Call")?, "14")?;
        // A matching call reaches its backend, whose answer is passed through (the echo sends no grpc-status).
        let r = grpc("grpc.example.com", "/echo.Echo/Exact")?;
        ensure!(
            r.status == 200 && r.header("grpc-status").is_none(),
            "{r:?}"
        );
        let e = r.echo()?;
        ensure!(e.pod.starts_with("grpc-a-") && e.method == "POST", "{e:?}");
        // HTTPRoute to an HTTP/1.1 backend, client on HTTP/2.
        let r = h2c("web.example.com", "/x?y=1")?;
        ensure!(r.status == 200, "status {}", r.status);
        let e = r.echo()?;
        ensure!(e.path == "/x?y=1" && e.proto == "HTTP/1.1", "{e:?}");
        Ok(())
    };
    let mut last = Ok(());
    for _ in 0..50 {
        last = check();
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if last.is_err() {
        eprintln!("gateway log:\n{}", gateway.log());
    }
    last
}
