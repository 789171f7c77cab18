//! Slows down bursts of failed logins per client address.
//!
//! Failures are counted per address in a sliding window. Once `max_failures` failures
//! fall inside the window, the address is throttled until the oldest of them leaves
//! the window. IPv6 addresses are grouped by their /64 prefix (one host usually owns a
//! whole /64); IPv4-mapped IPv6 addresses count as their IPv4 address. A success does
//! not clear the count (otherwise a holder of one valid account could keep resetting
//! it while guessing other passwords). The table is bounded: stale entries are swept
//! and, when it is full, the entry whose last failure is oldest is evicted.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures allowed inside `window`; the next attempt is throttled. 0 disables.
    pub max_failures: usize,
    pub window: Duration,
    /// At most this many addresses are tracked.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig { max_failures: 10, window: Duration::from_secs(60), max_tracked: 10_000 }
    }
}

struct Table {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
    last_sweep: Instant,
}

pub(crate) struct Throttle {
    cfg: ThrottleConfig,
    table: Mutex<Table>,
}

pub(crate) fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Throttle {
    pub(crate) fn new(cfg: ThrottleConfig) -> Self {
        Throttle { cfg, table: Mutex::new(Table { failures: HashMap::new(), last_sweep: Instant::now() }) }
    }

    fn in_window(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.cfg.window
    }

    /// `Some(retry_after)` when the address is throttled now.
    pub(crate) fn check(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        if self.cfg.max_failures == 0 {
            return None;
        }
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let q = table.failures.get(&throttle_key(peer))?;
        let oldest = *q.front()?;
        if q.len() >= self.cfg.max_failures && self.in_window(oldest, now) {
            let until = oldest + self.cfg.window;
            Some(until.saturating_duration_since(now).max(Duration::from_secs(1)))
        } else {
            None
        }
    }

    /// Records a failure; returns true when this failure makes the address throttled.
    pub(crate) fn record_failure(&self, peer: IpAddr, now: Instant) -> bool {
        if self.cfg.max_failures == 0 || self.cfg.max_tracked == 0 {
            return false;
        }
        let key = throttle_key(peer);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(table.last_sweep) >= self.cfg.window {
            self.sweep(&mut table, now);
        }
        if !table.failures.contains_key(&key) && table.failures.len() >= self.cfg.max_tracked {
            self.sweep(&mut table, now);
            if table.failures.len() >= self.cfg.max_tracked {
                let victim = table.failures.iter().min_by_key(|(_, q)| q.back().copied()).map(|(k, _)| *k);
                if let Some(victim) = victim {
                    table.failures.remove(&victim);
                }
            }
        }
        let q = table.failures.entry(key).or_default();
        while q.front().is_some_and(|t| !self.in_window(*t, now)) {
            q.pop_front();
        }
        q.push_back(now);
        while q.len() > self.cfg.max_failures {
            q.pop_front();
        }
        q.len() == self.cfg.max_failures
    }

    fn sweep(&self, table: &mut Table, now: Instant) {
        table.failures.retain(|_, q| q.back().is_some_and(|t| self.in_window(*t, now)));
        table.last_sweep = now;
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn throttles_after_the_burst_and_releases_after_the_window() {
        let t = Throttle::new(ThrottleConfig { max_failures: 3, window: Duration::from_secs(60), max_tracked: 100 });
        let start = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!t.record_failure(a, start));
        assert!(!t.record_failure(a, start + Duration::from_secs(1)));
        assert!(t.check(a, start + Duration::from_secs(2)).is_none());
        assert!(t.record_failure(a, start + Duration::from_secs(2)));
        let retry = t.check(a, start + Duration::from_secs(3)).expect("throttled");
        assert_eq!(retry, Duration::from_secs(57));
        // Another address is not affected.
        assert!(t.check(ip("192.0.2.2"), start + Duration::from_secs(3)).is_none());
        // Sliding: once the first failure leaves the window, attempts are allowed.
        assert!(t.check(a, start + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn ipv6_is_grouped_by_slash_64_and_mapped_v4_is_v4() {
        let t = Throttle::new(ThrottleConfig { max_failures: 2, window: Duration::from_secs(60), max_tracked: 100 });
        let now = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), now);
        t.record_failure(ip("2001:db8:1:2::ffff"), now);
        assert!(t.check(ip("2001:db8:1:2:aaaa::3"), now).is_some());
        assert!(t.check(ip("2001:db8:1:3::1"), now).is_none());
        t.record_failure(ip("::ffff:198.51.100.7"), now);
        t.record_failure(ip("198.51.100.7"), now);
        assert!(t.check(ip("198.51.100.7"), now).is_some());
    }

    #[test]
    fn table_is_bounded() {
        let t = Throttle::new(ThrottleConfig { max_failures: 5, window: Duration::from_secs(60), max_tracked: 50 });
        let now = Instant::now();
        for i in 0..1000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(addr, now + Duration::from_millis(u64::from(i)));
        }
        assert!(t.tracked() <= 50);
        // The most recent offender is still tracked.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 999));
        let q_len = t.table.lock().unwrap_or_else(PoisonError::into_inner).failures.get(&last).map(VecDeque::len);
        assert_eq!(q_len, Some(1));
    }

    #[test]
    fn stale_entries_are_swept() {
        let t = Throttle::new(ThrottleConfig { max_failures: 5, window: Duration::from_secs(10), max_tracked: 100 });
        let now = Instant::now();
        for i in 0..20u32 {
            t.record_failure(IpAddr::V4(std::net::Ipv4Addr::from(i + 1)), now);
        }
        assert_eq!(t.tracked(), 20);
        t.record_failure(ip("203.0.113.9"), now + Duration::from_secs(11));
        assert_eq!(t.tracked(), 1);
    }
}
