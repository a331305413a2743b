//! Finds the compiled eBPF object so the `gateway` binary can embed it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_OBJECT");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target = manifest.join("../gateway-ebpf/target/bpfel-unknown-none");
    let candidates = match std::env::var_os("GATEWAY_EBPF_OBJECT") {
        Some(path) => vec![PathBuf::from(path)],
        None => vec![
            target.join("release/gateway-ebpf"),
            target.join("debug/gateway-ebpf"),
        ],
    };
    for path in &candidates {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => {
            let path = path.canonicalize().expect("object path resolves");
            println!("cargo:rustc-env=GATEWAY_EBPF_OBJECT={}", path.display());
        }
        None => panic!(
            "\n\nThe eBPF object is missing (looked at {}).\nBuild it first with:  cargo xtask build-ebpf\n(`cargo xtask test` and `cargo xtask demo` do this for you.)\n",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}
