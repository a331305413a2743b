//! Differential test: the kernel's ClientHello parser (eBPF, run with BPF_PROG_TEST_RUN) and the userspace one
//! agree on every ClientHello of the corpus, and on thousands of mutations of it.
use std::path::PathBuf;

use gateway_tests::netns::unique_id;
use gateway_userspace::{
    dataplane::{Dataplane, Settings},
    passthrough::clienthello,
};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/clienthello")
}

/// `(file, expected outcome)` from the corpus manifest.
fn corpus() -> Vec<(String, String)> {
    std::fs::read_to_string(corpus_dir().join("MANIFEST"))
        .expect("corpus manifest")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect()
}

fn userspace(bytes: &[u8]) -> String {
    match clienthello::parse_complete(bytes) {
        Ok(hello) => match hello.server_name {
            Some(name) => format!("sni:{name}"),
            None => "reject:no_sni".into(),
        },
        Err(e) => format!("reject:{}", e.reason()),
    }
}

fn with_kernel_parser(body: impl FnOnce(&mut Dataplane)) {
    let root = PathBuf::from(format!("/sys/fs/bpf/gwt-{}-hello", unique_id()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut dp = Dataplane::load(Settings {
            bpffs_root: root.clone(),
            ..Settings::default()
        })
        .expect("the eBPF object loads and passes the verifier");
        body(&mut dp);
    }));
    let _ = std::fs::remove_dir_all(&root);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn kernel_and_userspace_parsers_agree_on_the_corpus() {
    with_kernel_parser(|dp| {
        let cases = corpus();
        assert!(cases.len() >= 25, "corpus present");
        let mut disagreements = Vec::new();
        for (file, expected) in &cases {
            let bytes = std::fs::read(corpus_dir().join(file)).expect("corpus file");
            let kernel = dp
                .parse_clienthello_in_kernel(&bytes, 0)
                .expect("probe runs")
                .describe();
            let user = userspace(&bytes);
            if kernel != user || &user != expected {
                disagreements.push(format!(
                    "{file}: expected {expected}, userspace {user}, kernel {kernel}"
                ));
            }
        }
        assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    });
}

#[test]
fn kernel_and_userspace_parsers_agree_on_mutations() {
    with_kernel_parser(|dp| {
        let seeds: Vec<Vec<u8>> = corpus()
            .iter()
            .map(|(f, _)| std::fs::read(corpus_dir().join(f)).unwrap())
            .collect();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut disagreements = Vec::new();
        for i in 0..3000 {
            let mut bytes = seeds[i % seeds.len()].clone();
            if bytes.is_empty() {
                continue;
            }
            for _ in 0..1 + next() % 3 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 4 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    2 => bytes.truncate(at.max(1)),
                    _ => bytes.insert(at, next() as u8),
                }
            }
            let (kernel, user) = (
                dp.parse_clienthello_in_kernel(&bytes, 0)
                    .unwrap()
                    .describe(),
                userspace(&bytes),
            );
            // The SNI decision must be identical; reject reasons may differ only where the kernel deliberately
            // validates less (contents of extensions other than server_name: userspace says malformed).
            let same_decision =
                kernel == user || (kernel.starts_with("reject:") && user.starts_with("reject:"));
            let kernel_accepts_what_userspace_rejects =
                kernel.starts_with("sni:") && user == "reject:malformed";
            if !same_decision && !kernel_accepts_what_userspace_rejects {
                disagreements.push(format!("mutation {i}: userspace {user}, kernel {kernel}"));
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements:\n{}",
            disagreements.len(),
            disagreements[..disagreements.len().min(20)].join("\n")
        );
    });
}

/// A minimal TLS 1.2-style ClientHello carrying `name` in server_name.
fn hello_with_sni(name: &str) -> Vec<u8> {
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut handshake = vec![1, 0];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn kernel_and_userspace_sni_tables_pick_the_same_route() {
    use gateway_userspace::{
        ir::{Gateway, Ir, Listener, ListenerKind, ObjectRef, SniRoute, TlsPassthrough},
        passthrough::{proxy_protocol::ProxyProtocol, router::SniTable},
    };
    let route = |name: &str| ObjectRef {
        kind: "TLSRoute".into(),
        namespace: "infra".into(),
        name: name.into(),
    };
    let entry = |hostname: &str, r: &str| SniRoute {
        hostname: hostname.into(),
        route: route(r),
        backends: vec![],
    };
    // In lookup order, as the translation emits them: exact names, then wildcards by more labels, then `*`.
    let table = TlsPassthrough {
        hostname: None,
        kernel: false,
        routes: vec![
            entry("abc.example.com", "exact"),
            entry("other.example.org", "exact-org"),
            entry("*.b.example.com", "deep-wildcard"),
            entry("*.example.com", "wildcard"),
            entry("*", "catch-all"),
        ],
    };
    let gateway = ObjectRef {
        kind: "Gateway".into(),
        namespace: "infra".into(),
        name: "gw".into(),
    };
    let ir = Ir {
        gateways: vec![Gateway {
            gateway: gateway.clone(),
            addresses: vec!["198.18.100.1".parse().unwrap()],
            listeners: vec![Listener {
                name: "tls".into(),
                port: 443,
                kind: ListenerKind::TlsPassthrough(table.clone()),
            }],
        }],
    };
    let user = SniTable::new(&table, |_| ProxyProtocol::None);
    with_kernel_parser(|dp| {
        dp.apply(&ir).expect("apply");
        let listener = dp
            .listener_id(&gateway, "tls")
            .expect("listener programmed");
        let names = [
            "abc.example.com",
            "x.abc.example.com",
            "b.example.com",
            "a.b.example.com",
            "deep.a.b.example.com",
            "other.example.com",
            "example.com",
            "other.example.org",
            "x.other.example.org",
            "unrelated.net",
        ];
        let mut mismatches = Vec::new();
        for name in names {
            let expected = user.lookup(name).map(|r| r.route.name.clone());
            let kernel = dp
                .parse_clienthello_in_kernel(&hello_with_sni(name), listener)
                .expect("probe runs");
            assert_eq!(kernel.describe(), format!("sni:{name}"));
            let got = kernel
                .route
                .as_deref()
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_string);
            if got != expected {
                mismatches.push(format!("{name}: userspace {expected:?}, kernel {got:?}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        assert!(user
            .lookup("unrelated.net")
            .is_some_and(|r| r.route.name == "catch-all"));
    });
}
