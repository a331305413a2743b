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
        let mut dp = Dataplane::load(Settings { bpffs_root: root.clone(), ..Settings::default() })
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
            let kernel = dp.parse_clienthello_in_kernel(&bytes).expect("probe runs").describe();
            let user = userspace(&bytes);
            if kernel != user || &user != expected {
                disagreements.push(format!("{file}: expected {expected}, userspace {user}, kernel {kernel}"));
            }
        }
        assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    });
}

#[test]
fn kernel_and_userspace_parsers_agree_on_mutations() {
    with_kernel_parser(|dp| {
        let seeds: Vec<Vec<u8>> = corpus().iter().map(|(f, _)| std::fs::read(corpus_dir().join(f)).unwrap()).collect();
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
            let (kernel, user) = (dp.parse_clienthello_in_kernel(&bytes).unwrap().describe(), userspace(&bytes));
            // The SNI decision must be identical; reject reasons may differ only where the kernel deliberately
            // validates less (contents of extensions other than server_name: userspace says malformed).
            let same_decision = kernel == user || (kernel.starts_with("reject:") && user.starts_with("reject:"));
            let kernel_accepts_what_userspace_rejects = kernel.starts_with("sni:") && user == "reject:malformed";
            if !same_decision && !kernel_accepts_what_userspace_rejects {
                disagreements.push(format!("mutation {i}: userspace {user}, kernel {kernel}"));
            }
        }
        assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements[..disagreements.len().min(20)].join("\n"));
    });
}
