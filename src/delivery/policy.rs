//! The retry policy: a pure function from the schedule and an attempt's outcome to what
//! happens next.

use std::time::Duration;

use crate::store::AttemptResult;

/// What an attempt achieved, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// 410 Gone: the receiver asks us to stop.
    Gone,
}

/// `round_attempt` is 1 for the first attempt since the schedule (re)started. With N
/// delays there are N+1 attempts; the k-th retry waits `schedule[k-1]` after the failure.
pub fn decide(
    schedule: &[Duration],
    round_attempt: i64,
    verdict: Verdict,
    now_ms: i64,
) -> AttemptResult {
    match verdict {
        Verdict::Success => AttemptResult::Succeeded,
        Verdict::Gone => AttemptResult::Gone,
        Verdict::Failure => {
            let index = usize::try_from(round_attempt - 1).unwrap_or(usize::MAX);
            match schedule.get(index) {
                Some(delay) => AttemptResult::RetryAt(now_ms + delay.as_millis() as i64),
                None => AttemptResult::Failed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_schedule() -> Vec<Duration> {
        [60, 300, 900].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn the_spec_schedule_gives_four_attempts() {
        let s = spec_schedule();
        assert_eq!(
            decide(&s, 1, Verdict::Failure, 0),
            AttemptResult::RetryAt(60_000)
        );
        assert_eq!(
            decide(&s, 2, Verdict::Failure, 0),
            AttemptResult::RetryAt(300_000)
        );
        assert_eq!(
            decide(&s, 3, Verdict::Failure, 0),
            AttemptResult::RetryAt(900_000)
        );
        assert_eq!(decide(&s, 4, Verdict::Failure, 0), AttemptResult::Failed);
    }

    #[test]
    fn success_and_gone_end_at_once() {
        let s = spec_schedule();
        assert_eq!(decide(&s, 1, Verdict::Success, 0), AttemptResult::Succeeded);
        assert_eq!(decide(&s, 1, Verdict::Gone, 0), AttemptResult::Gone);
        assert_eq!(decide(&[], 1, Verdict::Failure, 0), AttemptResult::Failed);
    }
}
