//! What every benchmark run measures besides its own counters: latency histograms (HdrHistogram,
//! microseconds), machine-wide CPU time, and a process's resident memory, all read from `/proc`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records; anything slower is clamped to it (and shows as `max`).
const LATENCY_MICROS_MAX: u64 = 60_000_000;

/// A latency histogram in microseconds with three significant digits.
#[derive(Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies { histogram: Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3).expect("valid histogram bounds") }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, LATENCY_MICROS_MAX);
        self.histogram.record(micros).expect("the value is clamped into the histogram's bounds");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.add(&other.histogram).expect("histograms with the same bounds merge");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let at = |quantile: f64| if self.histogram.is_empty() { 0 } else { self.histogram.value_at_quantile(quantile) };
        LatencySummary {
            count: self.histogram.len(),
            p50_micros: at(0.50),
            p99_micros: at(0.99),
            p999_micros: at(0.999),
            max_micros: if self.histogram.is_empty() { 0 } else { self.histogram.max() },
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_micros: u64,
    pub p99_micros: u64,
    pub p999_micros: u64,
    pub max_micros: u64,
}

/// Clock ticks per second of `/proc/stat` (USER_HZ). It is 100 on every Linux architecture this
/// runs on; reading it properly needs `sysconf`, which safe Rust without libc cannot call.
const PROC_TICKS_PER_SECOND: u64 = 100;

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq, steal) so far, from
/// `/proc/stat`. Machine-wide on purpose: a PostgreSQL store's cost is mostly in its server
/// processes, which a per-process figure would miss.
pub fn machine_cpu_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().next() else {
        return Duration::ZERO;
    };
    // cpu  user nice system idle iowait irq softirq steal guest guest_nice
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|field| field.parse().ok()).collect();
    let busy: u64 = [0_usize, 1, 2, 5, 6, 7].iter().filter_map(|&index| fields.get(index)).sum();
    Duration::from_millis(busy * 1000 / PROC_TICKS_PER_SECOND)
}

/// A process's resident memory (`VmRSS`) and its peak (`VmHWM`) in bytes, from `/proc/<pid>/status`.
pub fn resident_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kibibytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kibibytes * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Latencies;

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let mut latencies = Latencies::new();
        for micros in 1..=1000 {
            latencies.record(Duration::from_micros(micros));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 1000);
        assert!((499..=501).contains(&summary.p50_micros), "{summary:?}");
        assert!((989..=991).contains(&summary.p99_micros), "{summary:?}");
        assert_eq!(summary.max_micros, 1000);
    }

    #[test]
    fn the_machine_has_spent_some_cpu_time() {
        assert!(super::machine_cpu_busy() > Duration::ZERO);
        let (rss, peak) = super::resident_bytes(std::process::id()).expect("our own status is readable");
        assert!(rss > 0 && peak >= rss);
    }
}
