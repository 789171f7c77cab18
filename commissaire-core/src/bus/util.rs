//! Small helpers shared by the broker backends: reconnect backoff and hiding
//! credentials when a URI has to appear in an error.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Exponential backoff for reconnecting: 100 ms doubling up to 5 s, with up to
/// 25 % jitter so that many consumers do not all hit a broker that just came back
/// at the same instant.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::MIN }
    }

    /// The delay to wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter_ms = (base.as_millis() / 4) as u64;
        base + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
    }

    /// Called after a success: the next failure starts again from the minimum.
    pub(crate) fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Sleeps for `delay` unless `stop` is cancelled first; returns false if it was.
pub(crate) async fn sleep_unless_cancelled(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// `uri` with any password replaced, for error messages and logs.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(125));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_secs(5) && capped <= Duration::from_millis(6250));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact_uri("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_uri("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_uri("rediss://:pw@h/1?x=1"), "rediss://:***@h/1?x=1");
    }
}
