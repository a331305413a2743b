//! End to end through the in-kernel TLS passthrough path (handshake, ClientHello capture, SNI routing and splice
//! in the eBPF program): the same cases as the userspace path (`tls_cases/`), plus what only the kernel path
//! promises (no socket per connection).
const MODE: &str = "kernel";

#[path = "tls_cases/mod.rs"]
mod cases;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    gateway::write_manifests,
    sockets,
    stream::{check_stream, send_stream, CHUNK},
    topology, GatewayProcess, Topology,
};

/// The corpus's post-quantum-sized ClientHello (X25519MLKEM768 key share, 1,828 bytes: two segments at MSS
/// 1,460), SNI `pq.example.com`.
fn pq_hello() -> Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../gateway-userspace/tests/corpus/clienthello/pq_sized.bin");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// `base` (a one-record ClientHello) grown by an extension of zeros to exactly `total` bytes on the wire, its
/// handshake message cut into records of at most 8 KiB.
fn padded_hello(base: &[u8], total: usize) -> Vec<u8> {
    const RECORD: usize = 8192;
    let body = &base[9..];
    // version, random, session id, cipher suites, compression methods, then the extensions' length.
    let sid = 34;
    let suites = sid + 1 + body[sid] as usize;
    let compression = suites + 2 + u16::from_be_bytes([body[suites], body[suites + 1]]) as usize;
    let extensions = compression + 1 + body[compression] as usize;
    let ext_len = u16::from_be_bytes([body[extensions], body[extensions + 1]]) as usize;
    let plain = 4 + body.len() + 4; // the handshake message with an empty padding extension
    let records = (1..)
        .find(|r| total - 5 * r - plain <= RECORD * r - plain)
        .expect("a record count");
    let pad = total - 5 * records - plain;
    let mut msg = vec![1u8];
    msg.extend_from_slice(&((body.len() + 4 + pad) as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body[..extensions]);
    msg.extend_from_slice(&((ext_len + 4 + pad) as u16).to_be_bytes());
    msg.extend_from_slice(&body[extensions + 2..]);
    msg.extend_from_slice(&[0xfd, 0x00]); // an unassigned type: the base hello has a padding extension already
    msg.extend_from_slice(&(pad as u16).to_be_bytes());
    msg.resize(msg.len() + pad, 0);
    let mut wire = Vec::with_capacity(total);
    for chunk in msg.chunks(RECORD) {
        wire.extend_from_slice(&[22, 3, 1]);
        wire.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    assert_eq!(wire.len(), total, "padded ClientHello size");
    let parsed = gateway_clienthello::parse_complete(&wire).expect("a valid padded ClientHello");
    assert_eq!(parsed.server_name.as_deref(), Some("pq.example.com"));
    wire
}

/// Gateway `stream` at VIP 1 with a kernel TLS passthrough listener routing `pq.example.com` to backend 1.
fn start_gateway<'t>(topo: &'t Topology, dir: &std::path::Path) -> Result<GatewayProcess<'t>> {
    start_gateway_with(topo, dir, &[])
}

/// [`start_gateway`] with more `gateway run` arguments.
fn start_gateway_with<'t>(
    topo: &'t Topology,
    dir: &std::path::Path,
    args: &[&str],
) -> Result<GatewayProcess<'t>> {
    let yaml = [
        cases::CLASS,
        &cases::gateway("stream", 1, None),
        &cases::route(
            "stream",
            "stream",
            &["pq.example.com"],
            "name: stream-backend, port: 443",
            "",
        ),
        &cases::service("stream-backend", "infra", topo.backend_addr(1)),
    ]
    .concat();
    let config = write_manifests(dir, &yaml)?;
    let mut all = vec!["--tls-passthrough", MODE];
    all.extend_from_slice(args);
    GatewayProcess::start(topo.gateway(), &[&config], &all)
}

fn target() -> SocketAddr {
    SocketAddr::from((topology::vip(1), cases::PORT))
}

/// Reads the replayed ClientHello on a backend connection and checks it is byte for byte what the client sent.
fn expect_hello(s: &mut TcpStream, hello: &[u8]) -> Result<()> {
    let mut got = vec![0u8; hello.len()];
    s.read_exact(&mut got)
        .context("reading the replayed ClientHello")?;
    ensure!(got == hello, "the backend received a different ClientHello");
    Ok(())
}

/// Connects through the gateway and sends the ClientHello, in two writes with a pause between them (two
/// segments on the wire) when `split` is set.
fn open_with_hello(hello: &[u8], split: bool) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&target(), Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    if split {
        s.write_all(&hello[..1000])?;
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&hello[1000..])?;
    } else {
        s.write_all(hello)?;
    }
    Ok(s)
}

/// A backend (in backend namespace 1, port 8443) that checks each connection's replayed ClientHello and then
/// echoes everything back. Returns the accept thread and a count of connections that passed the check.
fn echo_backend(topo: &Topology, hello: Vec<u8>) -> Result<(JoinHandle<()>, Arc<AtomicUsize>)> {
    echo_backend_expecting(topo, Arc::new(Mutex::new(hello)))
}

/// [`echo_backend`] checking each connection against whatever ClientHello `hello` holds when it arrives.
fn echo_backend_expecting(
    topo: &Topology,
    hello: Arc<Mutex<Vec<u8>>>,
) -> Result<(JoinHandle<()>, Arc<AtomicUsize>)> {
    let listener = topo
        .backend(1)
        .run(|| TcpListener::bind(("0.0.0.0", cases::TLS_PORT)))?;
    let good = Arc::new(AtomicUsize::new(0));
    let counter = good.clone();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let hello = hello.lock().expect("hello").clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(60))).ok();
                if expect_hello(&mut s, &hello).is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let mut w = s.try_clone().expect("clone");
                    let _ = std::io::copy(&mut s, &mut w);
                }
            });
        }
    });
    Ok((handle, good))
}

/// A ping-pong over an established spliced connection.
fn ping(s: &mut TcpStream, i: usize) -> Result<()> {
    let msg = format!("ping {i:08}\n");
    s.write_all(msg.as_bytes())?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    ensure!(back == msg.as_bytes(), "echo differs");
    Ok(())
}

fn raise_fd_limit() {
    let lim = libc::rlimit {
        rlim_cur: 16384,
        rlim_max: 16384,
    };
    // SAFETY: plain syscall with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// 1 GiB each way through one spliced connection, every byte checked, after a two-segment post-quantum-sized
/// ClientHello that the backend receives byte for byte; the gateway's namespace holds no socket for it.
#[test]
fn a_gigabyte_each_way_through_one_spliced_connection() -> Result<()> {
    const TOTAL: usize = 1 << 30;
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    let listener = topo
        .backend(1)
        .run(|| TcpListener::bind(("0.0.0.0", cases::TLS_PORT)))?;
    let expected = hello.clone();
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        expect_hello(&mut s, &expected)?;
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || send_stream(&mut w, TOTAL, 1 << 40));
        let got = check_stream(&mut s, TOTAL, 0)?;
        writer.join().expect("server writer")?;
        Ok(got)
    });
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(&topo, dir.path())?;
    let started = Instant::now();
    let mut s = topo.client().run(|| open_with_hello(&hello, true))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || send_stream(&mut w, TOTAL, 0));
    // Midway, the gateway's namespace has no socket on the listener port: the kernel splices.
    let first = check_stream(&mut s, CHUNK, 1 << 40)?;
    ensure!(
        !sockets::has_socket_on_port(topo.gateway(), cases::PORT)?,
        "the gateway holds a socket on {}",
        cases::PORT
    );
    let downloaded = first + check_stream(&mut s, TOTAL - CHUNK, (1 << 40) + (CHUNK / 8) as u64)?;
    writer.join().expect("client writer")?;
    let uploaded = server.join().expect("server")?;
    assert_eq!((uploaded, downloaded), (TOTAL, TOTAL));
    eprintln!(
        "2 GiB through one spliced connection in {:.1?}",
        started.elapsed()
    );
    ensure!(gw.kernel_packets("tls_spliced")? == 1, "one splice counted");
    Ok(())
}

/// First flights up to the handshake entry's own buffer stay there; longer ones (and ones arriving in one skb
/// longer than it) move to a long capture. Either way the backend receives the ClientHello byte for byte, written
/// by the client in one piece or in two, and the long captures are gone once the connections are spliced — or,
/// for a long hello that stalls, once its handshake times out.
#[test]
fn first_flights_beyond_the_short_buffer_move_to_a_long_capture() -> Result<()> {
    use gateway_common::clienthello::SHORT_CAPTURE;
    let base = pq_hello()?;
    let sizes = [SHORT_CAPTURE, SHORT_CAPTURE + 1, 6_000, 12_000];
    let topo = Topology::builder().backends(1).build()?;
    let expected = Arc::new(Mutex::new(Vec::new()));
    let (_backend, good) = echo_backend_expecting(&topo, expected.clone())?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_with(
        &topo,
        dir.path(),
        &["--tls-handshake-timeout", "1", "--tls-connect-timeout", "1"],
    )?;
    let mut long = 0;
    let mut passed = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        let hello = padded_hello(&base, size);
        *expected.lock().expect("hello") = hello.clone();
        for split in [false, true] {
            let mut s = topo.client().run(|| open_with_hello(&hello, split))?;
            ping(&mut s, i).with_context(|| format!("{size}-byte hello, split {split}"))?;
            passed += 1;
            long += usize::from(size > SHORT_CAPTURE);
        }
    }
    ensure!(
        good.load(Ordering::SeqCst) == passed,
        "the backend got {} of {passed} ClientHellos intact",
        good.load(Ordering::SeqCst)
    );
    ensure!(
        gw.kernel_packets("tls_long_hellos")? == long as u64,
        "long captures counted: {} (expected {long})",
        gw.kernel_packets("tls_long_hellos")?
    );
    // A long hello that stalls: its capture is held until the handshake times out (2 s), then removed.
    let stalled = topo.client().run(|| -> Result<TcpStream> {
        let hello = padded_hello(&base, 12_000);
        let mut s = TcpStream::connect_timeout(&target(), Duration::from_secs(3))?;
        s.write_all(&hello[..8000])?;
        Ok(s)
    })?;
    let held = wait_for_metric(&gw, "gateway_tls_passthrough_kernel_long_captures", |v| {
        v == 1
    })?;
    ensure!(held == 1, "the stalled long hello holds one long capture");
    let left = wait_for_metric(&gw, "gateway_tls_passthrough_kernel_long_captures", |v| {
        v == 0
    })?;
    ensure!(left == 0, "{left} long captures left after the timeout");
    drop(stalled);
    Ok(())
}

/// Replayed ClientHello segments are accounted at the backend like any data it receives: every byte queued on
/// its socket costs at least a byte of its receive memory. With a 536-byte backend MSS most of a 16,000-byte
/// hello is replayed on the backend's own ACKs, which belong to its socket; grown in place they would keep an
/// ACK's memory size (the kernel only accounts a reallocation for ownerless skbs), and the receiving TCP's
/// length-to-truesize ratio would wrap — the kernel oops that once stalled the loss test. Checked with
/// `SO_MEMINFO` against the bytes waiting (`FIONREAD`) on a backend that has not read yet.
#[test]
fn replayed_segments_cost_the_backend_at_least_their_length() -> Result<()> {
    let hello = padded_hello(&pq_hello()?, 16_000);
    let topo = Topology::builder().backends(1).build()?;
    let listener = topo
        .backend(1)
        .run(|| TcpListener::bind(("0.0.0.0", cases::TLS_PORT)))?;
    set_int_option(&listener, libc::IPPROTO_TCP, libc::TCP_MAXSEG, 536)?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(&topo, dir.path())?;
    let _client = topo.client().run(|| open_with_hello(&hello, false))?;
    let (mut s, _) = listener.accept()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (queued, receive_memory) = loop {
        let (queued, receive_memory) = receive_queue(&s)?;
        if queued >= hello.len() || Instant::now() > deadline {
            break (queued, receive_memory);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("backend: {queued} bytes queued in {receive_memory} bytes of receive memory");
    ensure!(
        queued == hello.len(),
        "{queued} of {} bytes arrived",
        hello.len()
    );
    ensure!(
        receive_memory >= queued,
        "{queued} bytes queued cost only {receive_memory} bytes of receive memory"
    );
    ensure!(
        gw.kernel_packets("tls_replay_orphaned")? >= 1,
        "no backend ACK was sent around without its owner"
    );
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    expect_hello(&mut s, &hello)
}

/// Sets an integer socket option.
fn set_int_option(
    s: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: setsockopt with a pointer to a local int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The bytes waiting on a socket (`FIONREAD`) and the receive memory they are charged (`SO_MEMINFO`'s
/// `SK_MEMINFO_RMEM_ALLOC`, the sum of the queued skbs' truesize).
fn receive_queue(s: &TcpStream) -> Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    const SO_MEMINFO: libc::c_int = 55;
    let mut meminfo = [0u32; 9];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: getsockopt into a local array with its size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    ensure!(rc == 0, "SO_MEMINFO: {}", std::io::Error::last_os_error());
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut queued) };
    ensure!(rc == 0, "FIONREAD: {}", std::io::Error::last_os_error());
    Ok((queued as usize, meminfo[0] as usize))
}

/// Polls a metric of the gateway (up to 10 s) until `done` accepts it; returns the last value.
fn wait_for_metric(gw: &GatewayProcess, series: &str, done: impl Fn(u64) -> bool) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = gw.metric(series)?;
        if done(v) || Instant::now() > deadline {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A thousand spliced connections open at once, each answering a ping-pong, with no socket in the gateway's
/// namespace on the listener port; they keep working through `kill -9` of the agent, while it is down, and
/// after it is restarted.
#[test]
fn a_thousand_spliced_connections_hold_no_socket_and_survive_kill_9() -> Result<()> {
    const N: usize = 1000;
    raise_fd_limit();
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    let (_backend, good) = echo_backend(&topo, hello.clone())?;
    let dir = tempfile::tempdir()?;
    let mut gw = start_gateway(&topo, dir.path())?;
    let mut conns = topo.client().run(|| -> Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(N);
        for i in 0..N {
            let mut s =
                open_with_hello(&hello, false).with_context(|| format!("connection {i}"))?;
            ping(&mut s, i).with_context(|| format!("connection {i}"))?;
            v.push(s);
        }
        Ok(v)
    })?;
    ensure!(
        good.load(Ordering::SeqCst) == N,
        "backend saw {} hellos",
        good.load(Ordering::SeqCst)
    );
    let held = sockets::sockets_on_port(topo.gateway(), cases::PORT)?;
    ensure!(
        held.is_empty(),
        "gateway sockets on the listener port: {held:?}"
    );
    ensure!(
        gw.kernel_packets("tls_spliced")? == N as u64,
        "splices counted"
    );
    // Memory per established connection: its two conntrack entries (the handshake state, with its capture
    // buffer, is gone once spliced). The kernel reports the map's memory; a hash map's is per entry.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        gw.metric("gateway_tls_passthrough_kernel_pending_handshakes")? == 0,
        "handshake state left behind"
    );
    let pin = gw
        .bpffs_root()
        .join(format!("v{}", gateway_common::ABI_VERSION))
        .join("FLOWS");
    // bpftool runs in the root namespace: `ip netns exec` would remount /sys and hide bpffs.
    let info: serde_json::Value = serde_json::from_str(&gateway_tests::netns::host_cmd(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        &pin.display().to_string(),
    ])?)?;
    let (bytes, entries) = (
        info["bytes_memlock"].as_u64().context("bytes_memlock")?,
        info["max_entries"].as_u64().context("max_entries")?,
    );
    let per_connection = 2 * bytes / entries;
    eprintln!(
        "kernel memory per spliced connection: {per_connection} bytes \
         (FLOWS: {bytes} bytes / {entries} entries, two per connection)"
    );
    ensure!(
        per_connection <= 512,
        "{per_connection} bytes per connection"
    );

    gw.kill9()?;
    for (i, s) in conns.iter_mut().enumerate() {
        ping(s, i).with_context(|| format!("connection {i} with the agent down"))?;
    }
    gw.start_again()?;
    for (i, s) in conns.iter_mut().enumerate() {
        ping(s, i).with_context(|| format!("connection {i} after the restart"))?;
    }
    // New connections are served by the restarted agent's programs too.
    topo.client().run(|| -> Result<()> {
        let mut s = open_with_hello(&hello, true)?;
        ping(&mut s, 0)
    })?;
    Ok(())
}

/// Bulk transfer through one spliced connection: `total` bytes each way, checked, with a backend listener
/// that announces `backend_mss` (when set).
fn transfer(topo: &Topology, hello: &[u8], total: usize, backend_mss: Option<i32>) -> Result<()> {
    use std::os::fd::AsRawFd;
    let listener = topo
        .backend(1)
        .run(|| TcpListener::bind(("0.0.0.0", cases::TLS_PORT)))?;
    if let Some(mss) = backend_mss {
        // SAFETY: setsockopt on a valid socket with a pointer to a local int.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                &mss as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    }
    let expected = hello.to_vec();
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        expect_hello(&mut s, &expected)?;
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || send_stream(&mut w, total, 1 << 40));
        let got = check_stream(&mut s, total, 0)?;
        writer.join().expect("server writer")?;
        Ok(got)
    });
    let mut s = topo.client().run(|| open_with_hello(hello, true))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || send_stream(&mut w, total, 0));
    let downloaded = check_stream(&mut s, total, 1 << 40)?;
    writer.join().expect("client writer")?;
    let uploaded = server.join().expect("server")?;
    ensure!((uploaded, downloaded) == (total, total), "short transfer");
    Ok(())
}

/// Client and backend with different MSS and window scales: the client announces MSS 1460 and scale 7 (its
/// defaults), the backend MSS 900 and, with a small tcp_rmem, scale 2; then a backend with window scaling off.
/// The gateway announced its own scale to the client before the backend existed, so every window is rescaled.
#[test]
fn client_and_backend_with_different_mss_and_window_scales() -> Result<()> {
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    topo.backend(1)
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_rmem=4096 32768 65536"])?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(&topo, dir.path())?;
    transfer(&topo, &hello, 64 << 20, Some(900))?;
    topo.backend(1)
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_window_scaling=0"])?;
    transfer(&topo, &hello, 16 << 20, None)?;
    ensure!(
        gw.kernel_packets("tls_spliced")? == 2,
        "two splices counted"
    );
    Ok(())
}

/// Drops a share of the TCP segments of `port` in `ns`, both directions (iptables `statistic`). `local` says
/// whether `port` is the namespace's own port (a server) or the peer's (a client).
fn drop_share(ns: &gateway_tests::Netns, port: u16, local: bool, probability: &str) -> Result<()> {
    let (out_match, in_match) = if local {
        ("--sport", "--dport")
    } else {
        ("--dport", "--sport")
    };
    for (chain, dir) in [("OUTPUT", out_match), ("INPUT", in_match)] {
        ns.exec(&[
            "iptables",
            "-A",
            chain,
            "-p",
            "tcp",
            dir,
            &port.to_string(),
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            probability,
            "-j",
            "DROP",
        ])?;
    }
    Ok(())
}

/// 4% of the segments lost in each direction on both sides of the gateway, during handshakes (SYN-ACKs,
/// captured segments and their ACKs, the backend SYN and SYN-ACK, the replayed ClientHello) and during a
/// transfer: retransmissions recover, every connection is spliced, and the data arrives intact.
#[test]
fn loss_during_handshakes_and_transfers_is_recovered() -> Result<()> {
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(&topo, dir.path())?;
    drop_share(topo.client(), cases::PORT, false, "0.04")?;
    drop_share(topo.backend(1), cases::TLS_PORT, true, "0.04")?;
    let (_backend, good) = echo_backend(&topo, hello.clone())?;
    const N: usize = 40;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let hello = &hello;
                let ns = topo.client();
                scope.spawn(move || -> Result<()> {
                    ns.run(|| {
                        for i in 0..N / 4 {
                            let mut s = open_with_hello(hello, i % 2 == 0)
                                .with_context(|| format!("worker {t} connection {i}"))?;
                            for k in 0..5 {
                                ping(&mut s, k)
                                    .with_context(|| format!("worker {t} connection {i}"))?;
                            }
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker")?;
        }
        Ok(())
    })?;
    eprintln!("{N} connections under loss in {:.1?}", started.elapsed());
    ensure!(
        good.load(Ordering::SeqCst) == N,
        "backend saw {} intact hellos",
        good.load(Ordering::SeqCst)
    );
    // 8 MiB echoed back through one connection under the same loss, checked.
    const TOTAL: usize = 8 << 20;
    let mut s = topo.client().run(|| open_with_hello(&hello, true))?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || send_stream(&mut w, TOTAL, 7));
    let transfer_started = Instant::now();
    check_stream(&mut s, TOTAL, 7)?;
    writer.join().expect("writer")?;
    eprintln!(
        "8 MiB echoed under loss in {:.1?}",
        transfer_started.elapsed()
    );
    let retransmits =
        gw.kernel_packets("tls_syn_retransmits")? + gw.kernel_packets("tls_replay_retransmits")?;
    let sacks = gw.kernel_packets("tls_sack_translated")?;
    eprintln!("kernel retransmissions: {retransmits}, client segments with SACK blocks translated: {sacks}");
    // The gateway's own retransmission paths ran (40 handshakes at this loss make ~10 expected), and SACK was
    // negotiated end to end and used.
    ensure!(retransmits >= 1, "no kernel retransmission happened");
    ensure!(sacks >= 1, "no SACK block crossed the splice");
    Ok(())
}

/// A client that stalls halfway through its ClientHello loses its handshake after the timeout (the agent
/// removes it, counted as `timeout`), and its next segment is reset; with the pending table full, new SYNs are
/// reset at once (counted as `overloaded`) while established splices carry on.
#[test]
fn stalled_handshakes_time_out_and_the_pending_table_is_bounded() -> Result<()> {
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    let (_backend, _good) = echo_backend(&topo, hello.clone())?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_with(
        &topo,
        dir.path(),
        &[
            "--tls-handshake-timeout",
            "1",
            "--tls-connect-timeout",
            "1",
            "--tls-max-pending",
            "2",
        ],
    )?;
    topo.client().run(|| -> Result<()> {
        // One spliced connection, which must outlive everything below.
        let mut spliced = open_with_hello(&hello, false)?;
        ping(&mut spliced, 1)?;
        // Two stalled handshakes fill the pending table.
        let mut stalled: Vec<TcpStream> = (0..2).map(|_| stall(&hello)).collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_millis(200));
        expect_refused("a SYN beyond the pending limit")?;
        // Past the timeout (2 s) and a sweep, the rest of the hello meets a reset.
        std::thread::sleep(Duration::from_millis(3500));
        for s in &mut stalled {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(&hello[500..]);
            let mut buf = [0u8; 16];
            match s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => anyhow::bail!("a timed-out handshake was not reset: {other:?}"),
            }
        }
        ping(&mut spliced, 2)?;
        // The table has room again.
        let mut again = open_with_hello(&hello, false)?;
        ping(&mut again, 3)
    })?;
    let count = kernel_outcomes(&gw)?;
    ensure!(
        count("timeout") == 2,
        "timeouts counted: {}",
        count("timeout")
    );
    ensure!(count("overloaded") >= 1, "overload counted");
    ensure!(count("route") == 2, "splices counted: {}", count("route"));
    Ok(())
}

/// Opens a connection through the gateway and sends the first 500 bytes of `hello`: a handshake left pending.
fn stall(hello: &[u8]) -> Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&target(), Duration::from_secs(3))?;
    s.write_all(&hello[..500])?;
    Ok(s)
}

/// Checks that a connection attempt through the gateway is reset at its SYN (`what` names it in the error).
fn expect_refused(what: &str) -> Result<()> {
    let attempt = TcpStream::connect_timeout(&target(), Duration::from_secs(3));
    ensure!(
        matches!(&attempt, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{what} was not reset: {attempt:?}"
    );
    Ok(())
}

/// The gateway's kernel TLS passthrough connection outcomes: a count by `reason` label.
fn kernel_outcomes(gw: &GatewayProcess) -> Result<impl Fn(&str) -> u64> {
    let (_, metrics) = gw.admin_get("/metrics")?;
    Ok(move |reason: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("gateway_tls_passthrough_connections_total")
                    && l.contains("path=\"kernel\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    })
}

/// One client address holds at most `--tls-max-pending-per-source` pending handshakes: its next SYN is reset
/// and counted as overloaded while another address still connects. The address gets a place back when one of
/// its handshakes is spliced (the kernel counts it out) or times out (the agent's sweep counts it out).
#[test]
fn one_client_address_holds_at_most_its_share_of_pending_handshakes() -> Result<()> {
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).clients(2).build()?;
    let (_backend, good) = echo_backend(&topo, hello.clone())?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_with(
        &topo,
        dir.path(),
        &[
            "--tls-max-pending-per-source",
            "2",
            "--tls-handshake-timeout",
            "1",
            "--tls-connect-timeout",
            "1",
        ],
    )?;
    let mut stalled = topo.client().run(|| -> Result<Vec<TcpStream>> {
        let stalled: Vec<TcpStream> = (0..2)
            .map(|_| stall(&hello))
            .collect::<Result<_>>()
            .context("the address's first two handshakes")?;
        std::thread::sleep(Duration::from_millis(200));
        expect_refused("a third pending handshake from one address")?;
        Ok(stalled)
    })?;
    topo.client_n(2).run(|| -> Result<()> {
        let mut other = open_with_hello(&hello, false).context("another address")?;
        ping(&mut other, 1)
    })?;
    topo.client().run(|| -> Result<()> {
        // The rest of one stalled hello: spliced, so no longer pending, and its place is free again.
        let first = &mut stalled[0];
        first.set_read_timeout(Some(Duration::from_secs(10)))?;
        first.write_all(&hello[500..])?;
        ping(first, 2)?;
        let _third = stall(&hello)?;
        std::thread::sleep(Duration::from_millis(200));
        expect_refused("a pending handshake beyond the share after a splice")?;
        // Past the timeout (2 s) and a sweep, both pending handshakes are gone and counted out: the address
        // may hold two again, and both complete.
        std::thread::sleep(Duration::from_millis(3500));
        let mut again: Vec<TcpStream> = (0..2).map(|_| stall(&hello)).collect::<Result<_>>()?;
        for (i, s) in again.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&hello[500..])?;
            ping(s, 3 + i)?;
        }
        Ok(())
    })?;
    let count = kernel_outcomes(&gw)?;
    ensure!(
        count("overloaded") == 2,
        "overloaded counted: {}",
        count("overloaded")
    );
    ensure!(
        good.load(Ordering::SeqCst) == 4,
        "backend saw {} good hellos",
        good.load(Ordering::SeqCst)
    );
    Ok(())
}

/// The per-address counts take no room once an address's handshakes are done: with a table of two pending
/// handshakes, three client addresses in turn each get a spliced connection while the agent is stopped
/// (`SIGSTOP`: no sweep can clean up behind the kernel). Entries left at zero would fill the table after two.
#[test]
fn finished_handshakes_leave_no_per_address_entry_behind() -> Result<()> {
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).clients(3).build()?;
    let (_backend, good) = echo_backend(&topo, hello.clone())?;
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_with(&topo, dir.path(), &["--tls-max-pending", "2"])?;
    let pid = gw.pid().context("the agent's pid")? as libc::pid_t;
    /// Sends SIGCONT when dropped, so a failing test never leaves the agent stopped.
    struct Stopped(libc::pid_t);
    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: a signal to the agent process this test started.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: as above.
    ensure!(
        unsafe { libc::kill(pid, libc::SIGSTOP) } == 0,
        "stopping the agent"
    );
    let stopped = Stopped(pid);
    for (i, client) in topo.clients().iter().enumerate() {
        client.run(|| -> Result<()> {
            let mut s = open_with_hello(&hello, false)
                .with_context(|| format!("client {} while the agent is stopped", i + 1))?;
            ping(&mut s, i)
        })?;
    }
    drop(stopped);
    ensure!(
        good.load(Ordering::SeqCst) == 3,
        "backend saw {} good hellos",
        good.load(Ordering::SeqCst)
    );
    Ok(())
}

/// A backend still in TIME_WAIT for the 4-tuple the gateway's SYN uses refuses that SYN with an ACK for the old
/// connection when the SYN's sequence number is not past the old connection's (about half the time: clients pick
/// ISNs per 4-tuple). The gateway then resets the TIME_WAIT and sends its SYN again at once; without that, the
/// client's hello would wait for the TIME_WAIT to expire (a minute). Each round starts a fresh gateway with one
/// SNAT port, so the TIME_WAIT the previous round's backend left (it closes first) is unknown to its conntrack
/// and the SNAT port is certainly reused.
#[test]
fn a_backend_time_wait_refusing_the_syn_is_reset_and_the_syn_sent_again() -> Result<()> {
    const ROUNDS: usize = 12;
    let hello = pq_hello()?;
    let topo = Topology::builder().backends(1).build()?;
    let listener = topo
        .backend(1)
        .run(|| TcpListener::bind(("0.0.0.0", cases::TLS_PORT)))?;
    let expected = hello.clone();
    // The backend checks the replayed hello, answers one byte and closes first (its side keeps the TIME_WAIT).
    let server = std::thread::spawn(move || -> Result<()> {
        for _ in 0..ROUNDS {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            expect_hello(&mut s, &expected)?;
            s.write_all(b"x")?;
        }
        Ok(())
    });
    let mut refusals = 0;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir()?;
        let gw = start_gateway_with(&topo, dir.path(), &["--snat-ports", "20000-20000"])?;
        let started = Instant::now();
        topo.client().run(|| -> Result<()> {
            let mut s = open_with_hello(&hello, false)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .with_context(|| format!("round {round}: no answer"))?;
            // The backend's FIN: the client closes second.
            let _ = s.read(&mut b);
            Ok(())
        })?;
        let took = started.elapsed();
        refusals += gw.kernel_packets("tls_backend_time_wait")?;
        // Without the reset the hello waits for the TIME_WAIT to end (a minute); the bound leaves room for a
        // loaded machine (and for a challenge ACK the backend rate-limits, met by the client's next retransmission).
        ensure!(
            took < Duration::from_secs(1),
            "round {round} took {took:?} ({refusals} refusals so far)"
        );
        // Let the final ACK reach the backend, so its TIME_WAIT is in place for the next round.
        std::thread::sleep(Duration::from_millis(50));
    }
    server.join().expect("backend thread")?;
    eprintln!("{refusals} of {ROUNDS} SYNs were refused by a TIME_WAIT and sent again");
    // Rounds 2.. meet a TIME_WAIT that refuses about half the time: none in 11 would happen once in 2,000 runs.
    ensure!(refusals > 0, "no round met a TIME_WAIT refusing the SYN");
    Ok(())
}
