//! The `gateway` command line: mistakes are reported with an actionable message and a non-zero exit, before
//! anything is loaded or attached. Runs inside a throwaway network namespace, so a regression could not touch the
//! host's interfaces.
use gateway_tests::netns::Netns;

fn gateway(ns: &Netns, args: &[&str]) -> (i32, String) {
    let mut argv = vec![env!("CARGO_BIN_EXE_gateway")];
    argv.extend_from_slice(args);
    let out = ns.exec_output(&argv).expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_without_configuration_says_what_is_missing_and_attaches_nothing() {
    let ns = Netns::with_role("cli").unwrap();
    ns.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "c1"])
        .unwrap();
    ns.ip(&["link", "set", "c0", "up"]).unwrap();
    let (code, stderr) = gateway(
        &ns,
        &[
            "run",
            "--bpffs-root",
            "/sys/fs/bpf/gwt-cli-should-not-exist",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(
        !std::path::Path::new("/sys/fs/bpf/gwt-cli-should-not-exist").exists(),
        "nothing pinned"
    );
}

#[test]
fn the_kubernetes_provider_without_a_cluster_says_why_and_attaches_nothing() {
    let ns = Netns::with_role("cli").unwrap();
    let pins = "/sys/fs/bpf/gwt-cli-k8s-should-not-exist";
    // No cluster: KUBECONFIG names a file that does not exist (and there is no in-cluster service account).
    let out = ns
        .exec_output(&[
            "env",
            "KUBECONFIG=/nonexistent/kubeconfig",
            env!("CARGO_BIN_EXE_gateway"),
            "run",
            "--provider",
            "kubernetes",
            "--bpffs-root",
            pins,
        ])
        .expect("runs");
    let (code, stderr) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 1);
    if cfg!(feature = "kubernetes") {
        assert!(stderr.contains("KUBECONFIG"), "{stderr}");
    } else {
        assert!(
            stderr.contains("built without Kubernetes support"),
            "{stderr}"
        );
        assert!(stderr.contains("--features kubernetes"), "{stderr}");
    }
    assert!(!std::path::Path::new(pins).exists(), "nothing pinned");
    let (code, stderr) = gateway(&ns, &["run", "--provider", "kubernetes", "--config", "x"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--config is for --provider file"),
        "{stderr}"
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let ns = Netns::with_role("cli").unwrap();
    let (code, stderr) = gateway(&ns, &["run", "--config", "x", "--snat-ports", "9-3"]);
    assert_eq!(code, 2, "clap usage error");
    assert!(
        stderr.contains("MIN-MAX") || stderr.contains("range"),
        "{stderr}"
    );
    let (code, stderr) = gateway(
        &ns,
        &["run", "--config", "x", "--tls-handshake-timeout", "0"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("positive"), "{stderr}");
    let (code, stderr) = gateway(&ns, &["run", "--config", "x", "--http-client-timeout=-1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("--http-client-timeout"), "{stderr}");
}

#[test]
fn bad_xdp_flags_are_reported_before_anything_is_attached() {
    let ns = Netns::with_role("cli").unwrap();
    let (code, stderr) = gateway(&ns, &["run", "--config", "x", "--xdp", "eth0:turbo"]);
    assert_eq!(code, 2, "clap usage error: {stderr}");
    assert!(stderr.contains("native or generic"), "{stderr}");
    let (code, stderr) = gateway(
        &ns,
        &[
            "run",
            "--config",
            "x",
            "--interface",
            "eth0",
            "--xdp",
            "eth1",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("not among --interface"), "{stderr}");
    let (code, stderr) = gateway(
        &ns,
        &[
            "run",
            "--config",
            "x",
            "--xdp",
            "eth0",
            "--xdp",
            "eth0:generic",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("two modes"), "{stderr}");
}
