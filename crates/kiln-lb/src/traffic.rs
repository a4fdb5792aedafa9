//! What clients got from the balancer, as ALB's CloudWatch metrics count
//! it: responses by status class, whether an instance answered or the
//! balancer did (HTTPCode_Target_*_Count and HTTPCode_ELB_*_Count
//! together), and the time until the response's head in histogram buckets
//! (TargetResponseTime). A few atomic adds per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the latency buckets, in seconds; one more bucket
/// counts everything slower.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// 1xx to 5xx.
    classes: [AtomicU64; 5],
    /// Non-cumulative, one per bound and a last for slower ones.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Traffic {
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.classes[class as usize].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn snapshot(&self) -> TrafficStats {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let mut cumulative = 0;
        let mut latency_buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            latency_buckets.push(LatencyBucket {
                le_seconds: *bound,
                count: cumulative,
            });
        }
        let slower = self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        TrafficStats {
            responses: classes
                .iter()
                .zip(&self.classes)
                .map(|(name, n)| (name.to_string(), n.load(Ordering::Relaxed)))
                .collect(),
            latency_buckets,
            latency_count: cumulative + slower,
            latency_sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Every response the balancer sent since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TrafficStats {
    /// Responses by status class, `1xx` to `5xx`, the balancer's own
    /// 502, 503 and 504 included.
    pub responses: std::collections::BTreeMap<String, u64>,
    /// How many responses had their head within each bound, cumulative as
    /// a Prometheus histogram counts them.
    pub latency_buckets: Vec<LatencyBucket>,
    /// All responses timed, the slowest bucket's included.
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LatencyBucket {
    pub le_seconds: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_class_and_timed_into_cumulative_buckets() {
        let t = Traffic::default();
        t.record(200, Duration::from_millis(3));
        t.record(204, Duration::from_millis(30));
        t.record(503, Duration::from_secs(20));
        t.record(999, Duration::from_millis(1));
        let s = t.snapshot();
        assert_eq!(s.responses["2xx"], 2);
        assert_eq!(s.responses["5xx"], 1);
        assert_eq!(s.responses["4xx"], 0);
        let at = |le: f64| {
            s.latency_buckets
                .iter()
                .find(|b| b.le_seconds == le)
                .unwrap()
                .count
        };
        assert_eq!(at(0.005), 2, "3 ms and 1 ms");
        assert_eq!(at(0.05), 3);
        assert_eq!(at(10.0), 3, "20 s is slower than every bound");
        assert_eq!(s.latency_count, 4);
        assert!((s.latency_sum_seconds - 20.034).abs() < 1e-9);
    }
}
