//! ICMP through the kernel path, end to end: errors from backends reach the client translated (UDP "port
//! unreachable" surfaces as ECONNREFUSED), and a link narrower than the client's path MTU is discovered by PMTUD
//! through the gateway (UDP learns the MTU; a TCP upload completes intact).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use gateway_tests::{
    gateway::write_manifests,
    manifests::{l4_gateway, L4Listener},
    topology, GatewayProcess, Topology,
};

#[test]
fn udp_port_unreachable_from_a_backend_reaches_the_client() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    let dir = tempfile::tempdir()?;
    // Nothing listens on UDP 3999 in the backend: its kernel answers with ICMP port unreachable.
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::udp("udp", 9001, 3999, &[topo.backend_addr(1)])],
        ),
    )?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let target = SocketAddr::from((topology::vip(1), 9001));
    let err = topo.client().run(move || -> Result<std::io::Error> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(target)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send(b"anyone?")?;
        let mut buf = [0u8; 64];
        Ok(s.recv(&mut buf).expect_err("no answer expected"))
    })?;
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the translated ICMP reached the socket: {err}"
    );
    assert!(gw.kernel_packets("icmp_translated")? >= 1);
    Ok(())
}

fn ip_mtu(socket: &UdpSocket) -> i32 {
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket with a correctly sized out-parameter.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(IP_MTU)");
    mtu
}

#[test]
fn udp_path_mtu_is_discovered_through_the_gateway() -> Result<()> {
    let topo = Topology::builder().backends(1).build()?;
    topo.gateway().ip(&["link", "set", "bk1", "mtu", "1400"])?;
    let dir = tempfile::tempdir()?;
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::udp("udp", 9001, 3001, &[topo.backend_addr(1)])],
        ),
    )?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let target = SocketAddr::from((topology::vip(1), 9001));
    let (before, after) = topo.client().run(move || -> Result<(i32, i32)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(target)?;
        let on: libc::c_int = libc::IP_PMTUDISC_DO;
        // SAFETY: setsockopt on an open socket with a correctly sized value.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&on as *const libc::c_int).cast(),
                4,
            )
        };
        ensure!(rc == 0, "IP_MTU_DISCOVER");
        let before = ip_mtu(&s);
        let _ = s.send(&[0u8; 1472]); // a full 1500-byte packet with DF
        std::thread::sleep(Duration::from_millis(300));
        Ok((before, ip_mtu(&s)))
    })?;
    assert_eq!(before, 1500);
    assert_eq!(
        after, 1400,
        "the client learnt the gateway's narrower egress link"
    );
    assert!(gw.kernel_packets("frag_needed_sent")? >= 1);
    Ok(())
}

#[test]
fn tcp_upload_crosses_a_narrower_link_with_pmtud() -> Result<()> {
    const SIZE: usize = 8 << 20;
    let topo = Topology::builder().backends(1).build()?;
    // Only the gateway's side is narrower, so the backend's MSS does not hide the problem: the client sends
    // full 1500-byte segments and must learn the path MTU from the gateway.
    topo.gateway().ip(&["link", "set", "bk1", "mtu", "1400"])?;
    let listener = topo.backend(1).run(|| TcpListener::bind("0.0.0.0:5000"))?;
    let sink = std::thread::spawn(move || -> Result<(usize, u64)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let (mut n, mut sum, mut buf) = (0usize, 0u64, vec![0u8; 65536]);
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            for (i, b) in buf[..k].iter().enumerate() {
                sum = sum.wrapping_add(((n + i) as u64 % 251) ^ *b as u64);
            }
            n += k;
        }
        s.write_all(&n.to_be_bytes())?;
        Ok((n, sum))
    });
    let dir = tempfile::tempdir()?;
    let config = write_manifests(
        dir.path(),
        &l4_gateway(
            topology::vip(1),
            &[L4Listener::tcp("tcp", 9000, 5000, &[topo.backend_addr(1)])],
        ),
    )?;
    let gw = GatewayProcess::start(topo.gateway(), &[&config], &[])?;
    let target = SocketAddr::from((topology::vip(1), 9000));
    let acked = topo.client().run(move || -> Result<usize> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
        s.write_all(&data)
            .context("upload stalled: PMTUD did not work")?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut n = [0u8; 8];
        s.read_exact(&mut n)?;
        Ok(usize::from_be_bytes(n))
    })?;
    let (received, sum) = sink.join().expect("sink thread")?;
    let expected: u64 = (0..SIZE).fold(0u64, |acc, i| {
        acc.wrapping_add((i as u64 % 251) ^ (i % 253) as u64)
    });
    assert_eq!((acked, received), (SIZE, SIZE));
    assert_eq!(sum, expected, "content intact");
    assert!(
        gw.kernel_packets("frag_needed_sent")? >= 1,
        "the gateway told the client about the narrower link"
    );
    Ok(())
}
