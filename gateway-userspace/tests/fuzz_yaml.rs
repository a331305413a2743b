//! Robustness: thousands of deterministically mutated conformance manifests and garbage documents never panic;
//! each one either fails to load with a `file:line` error or translates into a status for every Gateway of ours.
mod common;

use gateway_userspace::provider::file::Loader;
use gateway_userspace::status::objects_with_status;
use gateway_userspace::translate::translate;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// xorshift64*: small, deterministic, good enough to pick mutations.
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
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const SCALARS: &[&str] = &[
    "[1, 2]",
    "{a: b}",
    "null",
    "\"str\"",
    "-7",
    "0",
    "65536",
    "99999999999999999999",
    "true",
    "~",
    "''",
    "[]",
    "{}",
    "\"*.\"",
    "\"1.2.3.4\"",
    "Passthrough",
    "TCP",
    "UDP",
    "TLS",
    "HTTPS",
    "Selector",
    "All",
    "None",
    "&a x",
    "*a",
    "!!binary aGk=",
];
const BYTES: &[u8] = b":-{}[]\"'\n \t*&!|>#%@`,?0123456789abcXYZ";

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut text = text.to_string();
    for _ in 0..1 + rng.below(3) {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        match rng.below(7) {
            0 if !text.is_empty() => {
                // byte flip (kept valid UTF-8 by working on ASCII positions only)
                let mut bytes = text.into_bytes();
                let i = rng.below(bytes.len());
                if bytes[i].is_ascii() {
                    bytes[i] = *rng.pick(BYTES);
                }
                text = String::from_utf8(bytes).unwrap_or_default();
                continue;
            }
            1 => {
                let cut = rng.below(text.len() + 1);
                text.truncate(text.floor_char_boundary(cut));
                continue;
            }
            2 | 3 if !lines.is_empty() => {
                // type swap: replace the value of a `key: value` line
                let i = rng.below(lines.len());
                if let Some(colon) = lines[i].find(": ") {
                    lines[i] = format!("{}: {}", &lines[i][..colon], rng.pick(SCALARS));
                } else if let Some(dash) = lines[i].find("- ") {
                    lines[i] = format!("{}- {}", &lines[i][..dash], rng.pick(SCALARS));
                }
            }
            4 if !lines.is_empty() => {
                // delete keys (one to three lines)
                let i = rng.below(lines.len());
                let n = (1 + rng.below(3)).min(lines.len() - i);
                lines.drain(i..i + n);
            }
            5 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            _ if !lines.is_empty() => {
                let i = rng.below(lines.len());
                lines[i] = match rng.below(2) {
                    0 => format!("  {}", lines[i]),
                    _ => lines[i].trim_start().to_string(),
                };
            }
            _ => {}
        }
        text = lines.join("\n") + "\n";
    }
    text
}

fn garbage(rng: &mut Rng) -> String {
    let tokens = [
        "apiVersion:",
        "kind:",
        "Gateway",
        "HTTPRoute",
        "v1",
        "gateway.networking.k8s.io/v1",
        "metadata:",
        "spec:",
        "name:",
        "---",
        "- ",
        "  ",
        "\n",
        "{",
        "}",
        "[",
        "]",
        ":",
        "listeners:",
        "port:",
        "80",
        "parentRefs:",
        "\"x\"",
        "&a",
        "*a",
        "#",
    ];
    (0..rng.below(60))
        .map(|_| *rng.pick(&tokens))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(name: &str, text: &str) -> bool {
    let lines = text.lines().count().max(1);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut loader = Loader::new();
        let result = loader.add_text(Path::new(name), &common::substitute(text));
        match result {
            Err(error) => {
                let (file, line) = error.location();
                assert_eq!(file, Path::new(name));
                assert!(
                    line >= 1 && line <= lines + 1,
                    "line {line} outside the text ({lines} lines): {error}"
                );
                assert!(
                    error.to_string().starts_with(&format!("{name}:{line}: ")),
                    "{error}"
                );
                false
            }
            Ok(()) => {
                let mut snapshot = loader.finish();
                if !snapshot.contains("GatewayClass", None, common::CLASS) {
                    common::add_gateway_class(&mut snapshot, common::CLASS);
                }
                let (_, status) = translate(&snapshot, &common::options());
                for gateway in snapshot
                    .gateways
                    .iter()
                    .filter(|g| g.spec.gateway_class_name == common::CLASS)
                {
                    let s = status
                        .gateway(gateway.metadata.namespace(), &gateway.metadata.name)
                        .unwrap_or_else(|| {
                            panic!("no status for Gateway {}", gateway.metadata.name)
                        });
                    assert!(
                        s.conditions.iter().any(|c| c.type_ == "Accepted")
                            && s.conditions.iter().any(|c| c.type_ == "Programmed")
                    );
                }
                let list = objects_with_status(&snapshot, &status);
                assert_eq!(list["items"].as_array().map(Vec::len), Some(snapshot.len()));
                true
            }
        }
    }));
    match outcome {
        Ok(loaded) => loaded,
        Err(_) => panic!("panicked on input {name}:\n{text}"),
    }
}

#[test]
fn mutated_conformance_manifests_never_panic() {
    let dir = common::conformance_dir().join("tests");
    let mut sources: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            [
                "tlsroute-",
                "tcproute-",
                "udproute-",
                "gateway-",
                "httproute-invalid",
                "httproute-hostname",
                "httproute-reference",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    sources.sort();
    assert!(
        sources.len() > 40,
        "expected the conformance manifests, found {}",
        sources.len()
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut loaded, mut rejected) = (0, 0);
    for round in 0..3000 {
        let (name, text) = rng.pick(&sources);
        let mutated = mutate(&mut rng, text);
        if check(&format!("{round}-{name}"), &mutated) {
            loaded += 1;
        } else {
            rejected += 1;
        }
    }
    // Both outcomes must occur often: the mutations neither all break nor all miss the parser.
    assert!(
        loaded > 300 && rejected > 300,
        "loaded {loaded}, rejected {rejected}"
    );
}

#[test]
fn garbage_documents_never_panic() {
    let mut rng = Rng(42);
    for round in 0..1500 {
        let text = garbage(&mut rng);
        check(&format!("garbage-{round}.yaml"), &text);
    }
    for text in ["", "---", "...", "- 1\n- 2", "\"just a string\"", "kind: Gateway", "apiVersion: v1\nkind: List\nitems: [1, {a: b}]",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {gatewayClassName: ebpf-gateway, listeners: [{name: a, port: -1, protocol: TCP}, {name: a, port: 70000, protocol: UDP, hostname: x}]}"]
    {
        check("edge.yaml", text);
    }
}
