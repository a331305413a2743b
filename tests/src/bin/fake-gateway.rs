//! `fake-gateway`: a stand-in for the product's `gateway` binary, used only to
//! test `gateway_tests::gateway::GatewayProcess` (argument passing, readiness,
//! restart, bpffs directory handling) before the real binary exists.
//!
//! `fake-gateway run --config F... --admin ADDR --bpffs-root DIR [--exit-immediately] [--never-ready]`
//! serves `GET /readyz` (200), `GET /config` (the config files) and 404 otherwise.
//! It creates `DIR/fake-pins` and reports when it already existed ("adopted").

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    assert_eq!(
        args.next().as_deref(),
        Some("run"),
        "first argument must be `run`"
    );
    let (mut configs, mut admin, mut root) = (Vec::new(), None, None);
    let (mut exit_now, mut never_ready) = (false, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => configs.push(PathBuf::from(args.next().expect("--config value"))),
            "--admin" => admin = args.next(),
            "--bpffs-root" => root = args.next().map(PathBuf::from),
            "--exit-immediately" => exit_now = true,
            "--never-ready" => never_ready = true,
            other => panic!("unknown argument {other}"),
        }
    }
    if exit_now {
        eprintln!("fake-gateway: failing on purpose");
        std::process::exit(3);
    }
    let mut config_text = String::new();
    for c in &configs {
        let t = std::fs::read_to_string(c).unwrap_or_else(|e| panic!("{}: {e}", c.display()));
        println!("loaded config {}", c.display());
        config_text.push_str(&t);
    }
    let root = root.expect("--bpffs-root");
    assert!(
        root.is_dir(),
        "bpffs root {} is not visible",
        root.display()
    );
    let pins = root.join("fake-pins");
    if pins.is_dir() {
        println!("adopted existing pins");
    } else {
        std::fs::create_dir(&pins).expect("mkdir in bpffs root");
        println!("created pins");
    }
    let listener = TcpListener::bind(admin.expect("--admin")).expect("bind admin");
    println!("admin listening");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        if r.read_line(&mut line).is_err() {
            continue;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/readyz" if never_ready => ("503 Service Unavailable", "starting".to_string()),
            "/readyz" => ("200 OK", "ready".to_string()),
            "/config" => ("200 OK", config_text.clone()),
            _ => ("404 Not Found", "not found".to_string()),
        };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
