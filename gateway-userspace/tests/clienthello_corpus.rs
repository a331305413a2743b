//! The ClientHello corpus (`tests/corpus/clienthello/`, described by its `MANIFEST`): every recorded or hand-made
//! hello must give its expected outcome whole and when fed one byte at a time, and a bounded, deterministic
//! mutation run over the corpus must never panic (the cheap stand-in for the cargo-fuzz target in `fuzz/`).
use std::{
    io::Read,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gateway_userspace::passthrough::clienthello::{self, ClientHelloError, MAX_BUFFERED};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/clienthello")
}

/// `(file, expected outcome)` from the manifest.
fn manifest() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("MANIFEST")).expect("MANIFEST");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            (
                words.next().unwrap().to_string(),
                words.next().expect("outcome").to_string(),
            )
        })
        .collect()
}

/// The outcome label of a parse of a complete buffer, in the manifest's terms.
fn outcome(result: Result<clienthello::ClientHello, ClientHelloError>) -> String {
    match result {
        Ok(hello) => match hello.server_name {
            Some(name) => format!("sni:{name}"),
            None => "reject:no_sni".into(),
        },
        Err(e) => format!("reject:{}", e.reason()),
    }
}

/// Feeds `bytes` one at a time like a client writing byte by byte; the first definite answer is the outcome.
fn outcome_byte_by_byte(bytes: &[u8]) -> String {
    for end in 1..=bytes.len() {
        match clienthello::parse(&bytes[..end]) {
            Ok(None) => continue,
            Ok(Some(hello)) => {
                assert_eq!(
                    hello.records_len, end,
                    "a hello completes exactly at its last byte"
                );
                return outcome(Ok(hello));
            }
            Err(e) => return outcome(Err(e)),
        }
    }
    outcome(Err(ClientHelloError::Truncated))
}

#[test]
fn every_corpus_case_has_its_expected_outcome() {
    let cases = manifest();
    assert!(cases.len() >= 25, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for (file, expected) in &cases {
        let bytes =
            std::fs::read(corpus_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let whole = outcome(clienthello::parse_complete(&bytes));
        let split = outcome_byte_by_byte(&bytes);
        if &whole != expected || &split != expected {
            failures.push(format!(
                "{file}: expected {expected}, whole {whole}, byte by byte {split}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_has_real_clients_and_a_post_quantum_sized_hello() {
    let cases = manifest();
    for file in [
        "openssl_s_client.bin",
        "curl.bin",
        "rustls.bin",
        "pq_sized.bin",
    ] {
        assert!(
            cases.iter().any(|(f, _)| f == file),
            "{file} missing from MANIFEST"
        );
    }
    let pq = std::fs::read(corpus_dir().join("pq_sized.bin")).unwrap();
    assert!(
        pq.len() > 1460,
        "post-quantum hello must exceed one segment ({} bytes)",
        pq.len()
    );
}

/// Records the first bytes a rustls client (the harness's) sends to a local socket.
fn rustls_hello(sni: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let sni = sni.to_string();
    let client = std::thread::spawn(move || {
        // Any CA will do: the connection is closed before the server speaks.
        let pki = gateway_tests::pki::Pki::new("corpus-ca").unwrap();
        let _ = gateway_tests::clients::tls_echo_test(addr, &sni, pki.ca_pem());
    });
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while clienthello::parse(&buf).unwrap().is_none() {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "rustls closed before its ClientHello was complete");
        buf.extend_from_slice(&chunk[..n]);
    }
    drop(conn);
    client.join().unwrap();
    buf
}

#[test]
fn live_rustls_hello_gives_its_sni() {
    let hello = rustls_hello("live.example.com");
    assert_eq!(
        outcome(clienthello::parse_complete(&hello)),
        "sni:live.example.com"
    );
}

/// The recorded `rustls.bin` routes exactly like a hello recorded now; `UPDATE_CORPUS=1` rewrites it (when the
/// rustls version changes).
#[test]
fn recorded_rustls_hello_matches_a_live_one() {
    let live = rustls_hello("rustls.example.com");
    let path = corpus_dir().join("rustls.bin");
    if std::env::var_os("UPDATE_CORPUS").is_some() {
        std::fs::write(&path, &live).unwrap();
    }
    let recorded = std::fs::read(&path).unwrap();
    assert_eq!(
        outcome(clienthello::parse_complete(&recorded)),
        outcome(clienthello::parse_complete(&live))
    );
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            2 => out.insert(at, rng.next() as u8),
            3 if at < out.len() => {
                out.remove(at);
            }
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            // Length fields are where parsers break: write 0x00, 0xff or a random 16-bit big-endian value.
            _ if at + 1 < out.len() => {
                let v = [0u16, 0xffff, 0x4000, rng.next() as u16][rng.below(4)];
                out[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    out.truncate(MAX_BUFFERED + 64);
    out
}

/// Mutated corpus entries never panic the parser, and a whole run stays within a few seconds (≤ 10 s budget).
#[test]
fn mutated_corpus_never_panics() {
    let corpus: Vec<Vec<u8>> = manifest()
        .iter()
        .map(|(f, _)| std::fs::read(corpus_dir().join(f)).unwrap())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let mut runs = 0u64;
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    while runs < 300_000 && started.elapsed() < Duration::from_secs(6) {
        let input = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let mutated = mutate(&mut rng, input, other);
        let result = clienthello::parse(&mutated);
        let label = match &result {
            Ok(None) => "incomplete".to_string(),
            Ok(Some(_)) => "complete".to_string(),
            Err(e) => e.reason().to_string(),
        };
        *outcomes.entry(label).or_default() += 1;
        // The incremental answer must agree with the whole-buffer one for any prefix that decides.
        if runs.is_multiple_of(64) {
            let _ = outcome_byte_by_byte(&mutated);
        }
        runs += 1;
    }
    eprintln!(
        "{runs} mutated inputs in {:?}: {outcomes:?}",
        started.elapsed()
    );
    assert!(runs >= 1_000, "too few runs in the time budget: {runs}");
    assert!(
        outcomes.contains_key("complete") && outcomes.contains_key("malformed"),
        "{outcomes:?}"
    );
}
