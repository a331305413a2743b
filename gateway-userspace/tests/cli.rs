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
fn the_kubernetes_provider_is_refused_with_an_explanation() {
    let ns = Netns::with_role("cli").unwrap();
    let (code, stderr) = gateway(&ns, &["run", "--provider", "kubernetes"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not wired"), "{stderr}");
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
}
