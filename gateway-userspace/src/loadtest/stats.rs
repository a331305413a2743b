//! What a load run measured: HDR latency histograms per phase (connect, TLS handshake, time to first byte, full
//! exchange), counters of connections and bytes, errors by kind, and a per-second timeline for the chart.
//!
//! Latencies are recorded in microseconds. In `rate` mode every phase is measured from the connection's
//! *intended* start (see `rate.rs`), so a slow target cannot hide behind a client that fell behind.
use std::{collections::BTreeMap, io, time::Duration};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram holds (one hour, in µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Errors of this area: a histogram that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The histogram bounds were rejected.
    #[error("creating a latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}

/// A measured phase of a connection or exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// TCP connect (SYN to established).
    Connect,
    /// TLS handshake after connect (rustls mode).
    Handshake,
    /// Request sent until the first response byte.
    Ttfb,
    /// The whole exchange: from the (intended) start to the last response byte.
    Total,
}

impl Phase {
    /// Every phase, in report order.
    pub const ALL: [Phase; 4] = [Phase::Connect, Phase::Handshake, Phase::Ttfb, Phase::Total];

    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Handshake => "handshake",
            Phase::Ttfb => "ttfb",
            Phase::Total => "total",
        }
    }
}

/// Why an attempt failed, coarse enough to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Connection refused (RST to the SYN).
    Refused,
    /// Connection reset by the peer.
    Reset,
    /// An operation exceeded `--timeout`.
    Timeout,
    /// The peer closed before the exchange completed.
    Eof,
    /// TLS handshake or record error.
    Tls,
    /// An HTTP response that is not 2xx/3xx, or that does not parse.
    Http,
    /// The response did not match the request (e.g. an echo of the wrong length).
    Protocol,
    /// The client had `--max-in-flight` attempts open: the attempt was not started.
    Overload,
    /// Still in flight when the run's bounds were reached and the drain grace ran out.
    Cancelled,
    /// Any other I/O error.
    Io,
}

impl ErrorKind {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Eof => "eof",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Overload => "overload",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Io => "io",
        }
    }

    /// Classifies an I/O error (rustls reports TLS failures as `InvalidData`).
    pub fn of_io(e: &io::Error) -> ErrorKind {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ErrorKind::Reset,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::UnexpectedEof => ErrorKind::Eof,
            io::ErrorKind::InvalidData => ErrorKind::Tls,
            _ => ErrorKind::Io,
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A histogram for latencies from 1 µs to one hour with 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, StatsError> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Second {
    /// Connections established in this second.
    pub connections: u64,
    /// Exchanges completed in this second.
    pub exchanges: u64,
    /// Bytes sent plus received, counted when they completed.
    pub bytes: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Full-exchange latencies of the exchanges completed in this second.
    pub total: Histogram<u64>,
}

/// Everything measured; shared by the workers behind a mutex (a few hundred thousand updates per second at
/// most, far below what a mutex allows).
#[derive(Debug)]
pub struct Stats {
    phases: BTreeMap<Phase, Histogram<u64>>,
    /// Attempts started (new connections for TCP/TLS/HTTP, new sockets for UDP).
    pub attempts: u64,
    /// Connections established (TCP connect succeeded; for UDP, sockets that got a reply).
    pub connections: u64,
    /// Exchanges (request and complete response) that succeeded.
    pub exchanges: u64,
    /// Application bytes written (plaintext for TLS).
    pub bytes_sent: u64,
    /// Application bytes read (plaintext for TLS).
    pub bytes_received: u64,
    /// Errors by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Per-second timeline, index = second since the start.
    pub timeline: Vec<Second>,
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Result<Stats, StatsError> {
        let mut phases = BTreeMap::new();
        for p in Phase::ALL {
            phases.insert(p, new_histogram()?);
        }
        Ok(Stats {
            phases,
            attempts: 0,
            connections: 0,
            exchanges: 0,
            bytes_sent: 0,
            bytes_received: 0,
            errors: BTreeMap::new(),
            timeline: Vec::new(),
        })
    }

    fn second(&mut self, at: Duration) -> &mut Second {
        let i = at.as_secs() as usize;
        while self.timeline.len() <= i {
            self.timeline.push(Second {
                connections: 0,
                exchanges: 0,
                bytes: 0,
                errors: 0,
                total: new_histogram().expect("bounds are valid"),
            });
        }
        &mut self.timeline[i]
    }

    /// Records a latency of `phase` observed at `at` (time since the start of the run).
    pub fn record(&mut self, phase: Phase, latency: Duration, at: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        if let Some(h) = self.phases.get_mut(&phase) {
            h.saturating_record(us);
        }
        match phase {
            Phase::Connect => {
                self.connections += 1;
                self.second(at).connections += 1;
            }
            Phase::Total => {
                self.exchanges += 1;
                self.second(at).total.saturating_record(us);
                self.second(at).exchanges += 1;
            }
            Phase::Handshake | Phase::Ttfb => {}
        }
    }

    /// Counts a connection established without a connect latency (UDP).
    pub fn connected(&mut self, at: Duration) {
        self.connections += 1;
        self.second(at).connections += 1;
    }

    /// Counts bytes moved.
    pub fn bytes(&mut self, sent: u64, received: u64, at: Duration) {
        self.bytes_sent += sent;
        self.bytes_received += received;
        self.second(at).bytes += sent + received;
    }

    /// Counts an error.
    pub fn error(&mut self, kind: ErrorKind, at: Duration) {
        *self.errors.entry(kind).or_default() += 1;
        self.second(at).errors += 1;
    }

    /// Total errors.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The histogram of `phase`.
    pub fn histogram(&self, phase: Phase) -> &Histogram<u64> {
        &self.phases[&phase]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut s = Stats::new().unwrap();
        // 1..=10_000 µs, shuffled order does not matter to a histogram.
        for us in (1..=10_000u64).rev() {
            s.record(
                Phase::Total,
                Duration::from_micros(us),
                Duration::from_millis(10),
            );
        }
        let p = Percentiles::of(s.histogram(Phase::Total));
        assert_eq!(p.count, 10_000);
        assert_eq!(p.min, 1);
        let close = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.001, "got {got}, want {want} (±0.1%)");
        };
        close(p.p50, 5_000);
        close(p.p90, 9_000);
        close(p.p99, 9_900);
        close(p.p999, 9_990);
        close(p.max, 10_000);
        assert!((p.mean - 5_000.5).abs() < 5.0, "mean {}", p.mean);
    }

    #[test]
    fn percentiles_with_a_tail() {
        // 990 fast (100 µs) and 10 slow (50 ms): p50 and p90 are fast, p99 sits at the boundary, p99.9 is slow.
        let mut s = Stats::new().unwrap();
        for _ in 0..990 {
            s.record(Phase::Ttfb, Duration::from_micros(100), Duration::ZERO);
        }
        for _ in 0..10 {
            s.record(Phase::Ttfb, Duration::from_millis(50), Duration::ZERO);
        }
        let p = Percentiles::of(s.histogram(Phase::Ttfb));
        assert_eq!(p.p50, 100);
        assert_eq!(p.p90, 100);
        assert_eq!(p.p99, 100, "the 990th of 1000 samples is still fast");
        let slow = s.histogram(Phase::Ttfb).highest_equivalent(50_000);
        assert_eq!(p.p999, slow);
        assert_eq!(p.max, slow);
        // Total is untouched and reads as zeros.
        assert_eq!(
            Percentiles::of(s.histogram(Phase::Total)),
            Percentiles::default()
        );
    }

    #[test]
    fn counters_and_timeline() {
        let mut s = Stats::new().unwrap();
        s.record(
            Phase::Connect,
            Duration::from_micros(300),
            Duration::from_millis(500),
        );
        s.record(
            Phase::Connect,
            Duration::from_micros(300),
            Duration::from_millis(2500),
        );
        s.record(
            Phase::Total,
            Duration::from_millis(2),
            Duration::from_millis(2501),
        );
        s.bytes(10, 20, Duration::from_millis(2501));
        s.error(ErrorKind::Reset, Duration::from_millis(1200));
        s.error(ErrorKind::Reset, Duration::from_millis(1300));
        assert_eq!(s.connections, 2);
        assert_eq!(s.exchanges, 1);
        assert_eq!((s.bytes_sent, s.bytes_received), (10, 20));
        assert_eq!(s.errors_total(), 2);
        assert_eq!(s.timeline.len(), 3);
        assert_eq!(s.timeline[1].errors, 2);
        assert_eq!(s.timeline[2].bytes, 30);
        assert_eq!(s.timeline[2].total.len(), 1);
        assert_eq!(
            ErrorKind::of_io(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            ErrorKind::Refused
        );
    }
}
