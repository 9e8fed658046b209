//! Webhook health: the figures kept per webhook and the status word derived from them.

/// Delivery figures of one webhook.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthFigures {
    pub succeeded_24h: u64,
    pub failed_24h: u64,
    pub succeeded_all: u64,
    pub failed_all: u64,
    pub mean_latency_ms_24h: Option<f64>,
    pub consecutive_failures: u64,
    pub last_success_at_ms: Option<i64>,
    pub last_failure_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Failing,
    NoData,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Failing => "failing",
            HealthStatus::NoData => "no_data",
        }
    }
}

/// Consecutive failures at which a webhook counts as failing.
pub const FAILING_AFTER: u64 = 3;
/// Below this 24 h success rate a webhook counts as degraded.
pub const HEALTHY_RATE: f64 = 0.95;

fn rate(ok: u64, failed: u64) -> Option<f64> {
    let total = ok + failed;
    (total > 0).then(|| ok as f64 / total as f64)
}

impl HealthFigures {
    pub fn success_rate_24h(&self) -> Option<f64> {
        rate(self.succeeded_24h, self.failed_24h)
    }

    pub fn success_rate_all(&self) -> Option<f64> {
        rate(self.succeeded_all, self.failed_all)
    }

    pub fn status(&self) -> HealthStatus {
        if self.consecutive_failures >= FAILING_AFTER {
            return HealthStatus::Failing;
        }
        match self.success_rate_24h() {
            None if self.consecutive_failures > 0 => HealthStatus::Degraded,
            None if self.last_success_at_ms.is_some() => HealthStatus::Healthy,
            None => HealthStatus::NoData,
            Some(r) if r < 0.5 => HealthStatus::Failing,
            Some(r) if r < HEALTHY_RATE || self.consecutive_failures > 0 => HealthStatus::Degraded,
            Some(_) => HealthStatus::Healthy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_follow_the_figures() {
        let mut h = HealthFigures::default();
        assert_eq!(h.status(), HealthStatus::NoData);
        h.succeeded_24h = 99;
        h.failed_24h = 1;
        assert_eq!(h.status(), HealthStatus::Healthy);
        h.failed_24h = 10;
        assert_eq!(h.status(), HealthStatus::Degraded);
        h.consecutive_failures = 3;
        assert_eq!(h.status(), HealthStatus::Failing);
        h.consecutive_failures = 0;
        h.succeeded_24h = 1;
        assert_eq!(h.status(), HealthStatus::Failing);
    }
}
