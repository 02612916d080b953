//! Which failed exports are retried, and when (the OTLP specification's rules).
//!
//! * gRPC: `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `UNAVAILABLE` and
//!   `DATA_LOSS` are retried; `RESOURCE_EXHAUSTED` only when the server sent a
//!   `google.rpc.RetryInfo` (it will recover); everything else is final. A `RetryInfo` delay is
//!   honoured.
//! * HTTP: 429, 502, 503 and 504 are retried, honouring `Retry-After` (seconds or an HTTP
//!   date); every other status is final.
//! * A connection that fails is retried, unless its TLS handshake failed (a certificate does
//!   not fix itself).
//!
//! Without a server delay the wait is exponential (initial × 2ⁿ, capped) with jitter: a random
//! point in the upper half of the step, so agents restarted together do not retry in lockstep.

use std::time::{Duration, SystemTime};

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Retry; after the server's delay when it gave one.
    Retry { after: Option<Duration> },
    /// Give up: the request itself is wrong or the server will not take it.
    Final,
}

/// The verdict on a gRPC status.
pub(crate) fn grpc(status: &tonic::Status) -> Verdict {
    use tonic::Code;
    use tonic_types::StatusExt as _;
    let delay = || status.get_details_retry_info().map(|info| info.retry_delay.unwrap_or_default());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Verdict::Retry { after: delay() },
        Code::ResourceExhausted => match delay() {
            Some(after) => Verdict::Retry { after: Some(after) },
            None => Verdict::Final,
        },
        _ => Verdict::Final,
    }
}

/// The verdict on an HTTP status with its `Retry-After` header.
pub(crate) fn http(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => Verdict::Retry { after: retry_after.and_then(|v| parse_retry_after(v, now)) },
        _ => Verdict::Final,
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (a date in the past: retry now).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Exponential backoff with jitter.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial.max(Duration::from_millis(1)), max: max.max(initial) }
    }

    /// The next wait: a random point in [step/2, step]; the step doubles up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next.min(self.max);
        self.next = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt as _};

    #[test]
    fn grpc_codes_follow_the_spec() {
        use tonic::Code;
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert_eq!(grpc(&tonic::Status::new(code, "x")), Verdict::Retry { after: None }, "{code:?}");
        }
        for code in
            [Code::InvalidArgument, Code::Unauthenticated, Code::PermissionDenied, Code::Internal, Code::Unimplemented]
        {
            assert_eq!(grpc(&tonic::Status::new(code, "x")), Verdict::Final, "{code:?}");
        }
        // RESOURCE_EXHAUSTED: final without RetryInfo, retried after its delay with it.
        assert_eq!(grpc(&tonic::Status::resource_exhausted("quota")), Verdict::Final);
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(1500)));
        let throttled = tonic::Status::with_error_details(tonic::Code::ResourceExhausted, "slow down", details);
        assert_eq!(grpc(&throttled), Verdict::Retry { after: Some(Duration::from_millis(1500)) });
        let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(2)));
        let unavailable = tonic::Status::with_error_details(tonic::Code::Unavailable, "busy", details);
        assert_eq!(grpc(&unavailable), Verdict::Retry { after: Some(Duration::from_secs(2)) });
    }

    #[test]
    fn http_statuses_and_retry_after() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for status in [429, 502, 503, 504] {
            assert_eq!(http(status, None, now), Verdict::Retry { after: None }, "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500, 501] {
            assert_eq!(http(status, Some("1"), now), Verdict::Final, "{status}");
        }
        assert_eq!(http(503, Some(" 3 "), now), Verdict::Retry { after: Some(Duration::from_secs(3)) });
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(http(429, Some("soon"), now), Verdict::Retry { after: None });
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let steps = [100, 200, 400, 500, 500];
        for step in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(d >= step / 2 && d <= step, "{d:?} not in [{:?}, {step:?}]", step / 2);
        }
        // Jitter: many draws are not all equal.
        let draws: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        assert!(draws.len() > 1);
    }
}
