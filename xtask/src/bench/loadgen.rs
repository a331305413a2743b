//! The load generator's own servers (run in a backend namespace) and clients (threads in the client namespace):
//!
//! - `accept-close` server: writes one greeting byte and closes (the server closes first, so neither the client
//!   nor a proxy keeps TIME_WAIT sockets that would exhaust ports during a connection-rate run);
//! - `echo` server: writes one greeting byte, then echoes until the client closes;
//! - connection rate: threads that connect, read the greeting and the close, and start over;
//! - request/response latency: ping-pong of small messages over one connection, and over a fresh connection
//!   each time (connect + greeting + one exchange), recorded in an HDR histogram (µs).
//!
//! Every loop is bounded by a deadline and a count.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context};
use gateway_tests::Netns;
use hdrhistogram::Histogram;
use socket2::{Domain, Socket, Type};

/// Port of the accept-and-close server.
pub const ACCEPT_CLOSE_PORT: u16 = 7000;
/// Port of the echo server.
pub const ECHO_PORT: u16 = 7001;
/// Size of one ping-pong message.
pub const MESSAGE_SIZE: usize = 64;
const GREETING: &[u8] = b"G";
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers in one backend namespace; stopped (listeners shut down, threads joined) on drop.
pub struct Servers {
    listeners: Vec<Arc<Socket>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections accepted so far by the accept-close and the echo server.
    pub accepted: Arc<AtomicU64>,
}

fn listen(ns: &Netns, port: u16) -> anyhow::Result<Arc<Socket>> {
    ns.run(|| -> anyhow::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        // A deep backlog: bursts of SYNs must not be dropped and retried after a second.
        s.listen(4096)?;
        Ok(s)
    })
    .map(Arc::new)
    .with_context(|| format!("listening on port {port} in {}", ns.name()))
}

impl Servers {
    /// Starts both servers in `ns` (threads of this process, sockets in the namespace).
    pub fn start(ns: &Netns) -> anyhow::Result<Self> {
        let accept_close = listen(ns, ACCEPT_CLOSE_PORT)?;
        let echo = listen(ns, ECHO_PORT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (l, stop, accepted) = (accept_close.clone(), stop.clone(), accepted.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((s, _)) = l.accept() else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let s: TcpStream = s.into();
                    let _ = s.set_nodelay(true);
                    let _ = (&s).write_all(GREETING);
                }
            }));
        }
        // Each echo worker serves one connection at a time: enough for one persistent connection plus a
        // sequence of fresh ones, and no thread creation on the measured path.
        for _ in 0..4 {
            let (l, stop, accepted) = (echo.clone(), stop.clone(), accepted.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((s, _)) = l.accept() else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let mut s: TcpStream = s.into();
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    if s.write_all(GREETING).is_err() {
                        continue;
                    }
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Servers {
            listeners: vec![accept_close, echo],
            stop,
            threads,
            accepted,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket wakes the threads blocked in accept(2) (Linux).
        for l in &self.listeners {
            let _ = l.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Result of a connection-rate run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateResult {
    pub completed: u64,
    pub failed: u64,
    pub seconds: f64,
}

impl RateResult {
    pub fn per_second(&self) -> f64 {
        self.completed as f64 / self.seconds.max(1e-3)
    }
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One short connection to the accept-close server: connect, greeting byte, the server's close.
fn one_connection(target: SocketAddr) -> std::io::Result<()> {
    let mut s = connect(target)?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b[..1])?;
    // Wait for the server's FIN so the client side is the passive closer (no TIME_WAIT here).
    while s.read(&mut b)? > 0 {}
    Ok(())
}

/// New connections per second from `threads` threads in `ns` to `target` (the accept-close server behind
/// the data plane), for `duration` or until `max` connections completed.
pub fn connection_rate(
    ns: &Netns,
    target: SocketAddr,
    threads: usize,
    duration: Duration,
    max: u64,
) -> RateResult {
    ns.run(|| {
        let completed = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let started = Instant::now();
        let deadline = started + duration;
        // Threads spawned from a thread that joined the namespace are in the namespace too.
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while Instant::now() < deadline && completed.load(Ordering::Relaxed) < max {
                        match one_connection(target) {
                            Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                            Err(_) => {
                                // Failures are counted, not retried in a tight loop.
                                std::thread::sleep(Duration::from_millis(1));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                });
            }
        });
        RateResult {
            completed: completed.into_inner(),
            failed: failed.into_inner(),
            seconds: started.elapsed().as_secs_f64(),
        }
    })
}

/// Latency samples of one ping-pong run.
pub struct Latency {
    pub histogram: Histogram<u64>,
    pub failed: u64,
}

impl Latency {
    fn new() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            failed: 0,
        }
    }

    pub fn p50_us(&self) -> f64 {
        self.histogram.value_at_quantile(0.50) as f64
    }

    pub fn p99_us(&self) -> f64 {
        self.histogram.value_at_quantile(0.99) as f64
    }

    fn record(&mut self, d: Duration) {
        let _ = self.histogram.record((d.as_micros() as u64).max(1));
    }
}

fn exchange(
    s: &mut TcpStream,
    msg: &[u8; MESSAGE_SIZE],
    reply: &mut [u8; MESSAGE_SIZE],
) -> std::io::Result<()> {
    s.write_all(msg)?;
    s.read_exact(reply)
}

/// Round trips of a `MESSAGE_SIZE`-byte message over one TCP connection to the echo server.
pub fn ping_pong_persistent(
    ns: &Netns,
    target: SocketAddr,
    duration: Duration,
    max: u64,
) -> anyhow::Result<Latency> {
    ns.run(|| {
        let mut lat = Latency::new();
        let mut s = connect(target).with_context(|| format!("connecting to {target}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("reading the echo greeting")?;
        let msg = [b'x'; MESSAGE_SIZE];
        let mut reply = [0u8; MESSAGE_SIZE];
        let deadline = Instant::now() + duration;
        let mut n = 0;
        while Instant::now() < deadline && n < max {
            let t = Instant::now();
            exchange(&mut s, &msg, &mut reply).context("ping-pong on the persistent connection")?;
            lat.record(t.elapsed());
            ensure!(reply == msg, "the echo server answered different bytes");
            n += 1;
        }
        Ok(lat)
    })
}

/// Connect + greeting + one `MESSAGE_SIZE`-byte round trip on a fresh connection each time; the time from
/// `connect` to the reply is recorded (the close is not).
pub fn ping_pong_fresh(
    ns: &Netns,
    target: SocketAddr,
    duration: Duration,
    max: u64,
) -> anyhow::Result<Latency> {
    ns.run(|| {
        let mut lat = Latency::new();
        let msg = [b'y'; MESSAGE_SIZE];
        let mut reply = [0u8; MESSAGE_SIZE];
        let deadline = Instant::now() + duration;
        let mut n = 0;
        while Instant::now() < deadline && n < max {
            let t = Instant::now();
            let r = (|| -> std::io::Result<()> {
                let mut s = connect(target)?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                exchange(&mut s, &msg, &mut reply)
            })();
            match r {
                Ok(()) => lat.record(t.elapsed()),
                Err(_) => lat.failed += 1,
            }
            n += 1;
        }
        ensure!(
            !lat.histogram.is_empty(),
            "no fresh-connection exchange succeeded against {target}"
        );
        Ok(lat)
    })
}

/// A single connection to the accept-close server, to check a path before measuring it.
pub fn probe(ns: &Netns, target: SocketAddr) -> anyhow::Result<()> {
    ns.run(|| one_connection(target))
        .with_context(|| format!("a probe connection from {} to {target}", ns.name()))
}
