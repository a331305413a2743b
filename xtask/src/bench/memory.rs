//! Memory a data plane holds: the resident set of its processes (`VmRSS` of `/proc/<pid>/status`) and the
//! kernel's part — the TCP sockets open in its namespace (`TCP: inuse` of `/proc/net/sockstat`, per namespace)
//! times the kernel objects behind one socket (`/proc/slabinfo`), plus TCP buffer pages (`TCP: mem`, which
//! the kernel counts machine-wide, so client and backend buffers are in it too: an upper bound). Sampled
//! before and while N connections are held open, the difference ÷ N is the memory per connection.
use gateway_tests::Netns;

/// Page size of `/proc/net/sockstat`'s `mem` (4 KiB on x86-64 and arm64 with 4K pages).
const PAGE: u64 = 4096;

/// `VmRSS` of one process in bytes (0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_vm_rss(&s))
        .unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The object size of slab cache `name` in a `/proc/slabinfo` text.
fn slab_object_size(slabinfo: &str, name: &str) -> Option<u64> {
    slabinfo.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == name).then_some(())?;
        // <active_objs> <num_objs> <objsize>
        w.nth(2)?.parse().ok()
    })
}

/// Bytes of kernel objects behind one TCP socket held by a process: `struct tcp_sock` (`TCP` slab), `struct
/// socket` with its inode (`sock_inode_cache`) and the `struct file` (`filp`). 0 where slabinfo is unreadable.
pub fn socket_object_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    ["TCP", "sock_inode_cache", "filp"]
        .iter()
        .filter_map(|n| slab_object_size(&text, n))
        .sum()
}

/// `TCP: inuse … mem N`: sockets in use and the pages of their buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSockstat {
    pub inuse: u64,
    pub mem_pages: u64,
}

fn parse_sockstat(text: &str) -> TcpSockstat {
    let mut s = TcpSockstat::default();
    if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        for pair in w[1..].chunks(2) {
            if let [k, v] = pair {
                let v = v.parse().unwrap_or(0);
                match *k {
                    "inuse" => s.inuse = v,
                    "mem" => s.mem_pages = v,
                    _ => {}
                }
            }
        }
    }
    s
}

/// The TCP sockstat of `ns` (read from a thread that joined it).
pub fn tcp_sockstat(ns: &Netns) -> TcpSockstat {
    ns.run(|| std::fs::read_to_string("/proc/thread-self/net/sockstat"))
        .map(|t| parse_sockstat(&t))
        .unwrap_or_default()
}

/// A snapshot of a data plane's memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss: u64,
    pub sockets: TcpSockstat,
}

pub fn sample(ns: &Netns, pids: &[u32]) -> Sample {
    Sample {
        rss: pids.iter().map(|&p| rss_bytes(p)).sum(),
        sockets: tcp_sockstat(ns),
    }
}

/// Per connection: (process RSS bytes, kernel socket buffer bytes, TCP sockets) between two samples.
pub fn per_connection(before: Sample, during: Sample, connections: u64) -> (f64, f64, f64) {
    let n = connections.max(1) as f64;
    let d = |a: u64, b: u64| b as f64 - a as f64;
    (
        d(before.rss, during.rss) / n,
        d(before.sockets.mem_pages, during.sockets.mem_pages) * PAGE as f64 / n,
        d(before.sockets.inuse, during.sockets.inuse) / n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(
            parse_vm_rss("Name:\tnginx\nVmPeak:\t 9000 kB\nVmRSS:\t    5120 kB\n"),
            5 << 20
        );
        assert_eq!(parse_vm_rss("Name: x\n"), 0);
        let s = parse_sockstat(
            "sockets: used 120\nTCP: inuse 2002 orphan 0 tw 7 alloc 2004 mem 310\nUDP: inuse 1 mem 2\n",
        );
        assert_eq!(
            s,
            TcpSockstat {
                inuse: 2002,
                mem_pages: 310
            }
        );
        let before = Sample {
            rss: 10 << 20,
            sockets: TcpSockstat {
                inuse: 2,
                mem_pages: 10,
            },
        };
        let during = Sample {
            rss: 20 << 20,
            sockets: TcpSockstat {
                inuse: 2002,
                mem_pages: 510,
            },
        };
        let (rss, kernel, socks) = per_connection(before, during, 1000);
        assert_eq!(rss, 10485.76);
        assert_eq!(kernel, 2048.0);
        assert_eq!(socks, 2.0);
        assert!(rss_bytes(std::process::id()) > 0);
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n\
                    TCPv6                 10     20   2560   12    8 : tunables\n\
                    TCP                   92    117   2368   13    8 : tunables    0    0    0 : slabdata\n";
        assert_eq!(slab_object_size(slab, "TCP"), Some(2368));
        assert_eq!(slab_object_size(slab, "filp"), None);
    }
}
