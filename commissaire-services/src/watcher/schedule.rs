//! When hosts are checked: pure decisions over the stored [`WatcherRecord`]s, no
//! IO and no clock (the caller passes `now`), so they are tested without waiting.
//!
//! - A host is due when its record's `next_check` is empty, unreadable or not
//!   after `now`.
//! - Claiming a host moves `next_check` to `now + interval × (1 + jitter × j)`,
//!   where `j ∈ [-1, 1]` is derived from a hash of the address: each host keeps
//!   its own stable offset, so checks of many hosts spread over the interval
//!   instead of bunching up, and the spread does not drift from one check to
//!   the next.
//! - A new record is first due at `now + interval × u` with `u ∈ [0, 1)` from
//!   the same hash, so hosts added together (or found together by a new
//!   deployment) do not all come due at once.
//! - [`reconcile`] says which records to create (hosts without one) and which
//!   to remove (records whose host is gone).

use std::{borrow::Borrow, collections::BTreeSet, time::Duration};

use commissaire_core::{model::WatcherRecord, timestamp};
use time::OffsetDateTime;

/// The default check interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The default jitter fraction (±10 % of the interval).
pub const DEFAULT_JITTER: f64 = 0.1;

/// How often hosts are checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub interval: Duration,
    /// Fraction of the interval by which a host's next check may move either
    /// way (0 ≤ jitter < 1).
    pub jitter: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { interval: DEFAULT_INTERVAL, jitter: DEFAULT_JITTER }
    }
}

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the interval must be at least 10 ms, got {0:?}")]
    IntervalTooShort(Duration),
    #[error("the jitter must be a fraction from 0 to 0.5, got {0}")]
    BadJitter(f64),
}

impl Schedule {
    /// A checked schedule.
    pub fn new(interval: Duration, jitter: f64) -> Result<Self, ScheduleError> {
        if interval < Duration::from_millis(10) {
            return Err(ScheduleError::IntervalTooShort(interval));
        }
        if !(0.0..=0.5).contains(&jitter) {
            return Err(ScheduleError::BadJitter(jitter));
        }
        Ok(Self { interval, jitter })
    }

    /// The shortest time between two claims of one host.
    pub fn min_gap(&self) -> Duration {
        self.interval.mul_f64(1.0 - self.jitter)
    }

    /// When a host claimed at `now` is next due.
    pub fn next_check(&self, address: &str, now: OffsetDateTime) -> OffsetDateTime {
        let spread = self.jitter * signed_unit(address);
        now + self.interval.mul_f64(1.0 + spread)
    }

    /// When a host whose record is created at `now` is first due.
    pub fn first_check(&self, address: &str, now: OffsetDateTime) -> OffsetDateTime {
        now + self.interval.mul_f64(unit(address))
    }
}

/// FNV-1a: a hash that stays the same across builds and platforms (the
/// standard library's does not promise that).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Spreads every input bit over the whole word (MurmurHash3's finaliser):
/// FNV alone leaves the top bits of similar short strings close together.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A stable value in `[0, 1)` for `address`.
fn unit(address: &str) -> f64 {
    // The top 53 bits fit an f64 mantissa exactly.
    (mix(fnv1a(address)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable value in `[-1, 1)` for `address`.
fn signed_unit(address: &str) -> f64 {
    unit(address) * 2.0 - 1.0
}

/// When the record is due (`None`: now — empty or unreadable `next_check`).
pub fn due_at(record: &WatcherRecord) -> Option<OffsetDateTime> {
    timestamp::parse(&record.next_check)
}

/// Whether the record is due at `now`.
pub fn is_due(record: &WatcherRecord, now: OffsetDateTime) -> bool {
    due_at(record).is_none_or(|at| at <= now)
}

/// The records due at `now`, the longest overdue first (records, or records
/// with their revisions).
pub fn due<'a, R: Borrow<WatcherRecord>>(records: impl IntoIterator<Item = &'a R>, now: OffsetDateTime) -> Vec<&'a R> {
    let mut due: Vec<&R> = records.into_iter().filter(|r| is_due((*r).borrow(), now)).collect();
    // One key per record (a timestamp parse and an address copy), not one per comparison.
    due.sort_by_cached_key(|r| {
        let r: &WatcherRecord = (*r).borrow();
        (due_at(r), r.address.clone())
    });
    due
}

/// The earliest time one of the records not yet due becomes due.
pub fn earliest_after<'a, R: Borrow<WatcherRecord> + 'a>(
    records: impl IntoIterator<Item = &'a R>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    records.into_iter().filter_map(|r| due_at(r.borrow())).filter(|at| *at > now).min()
}

/// Moves a due record to its next check, claimed by `owner` at `now`:
/// `false` (record unchanged) when it is not due, so a claim that lost a race
/// with another instance writes nothing.
pub fn claim(record: &mut WatcherRecord, schedule: &Schedule, owner: &str, now: OffsetDateTime) -> bool {
    if !is_due(record, now) {
        return false;
    }
    record.last_check = timestamp::format(now);
    record.next_check = timestamp::format(schedule.next_check(&record.address, now));
    record.owner = owner.to_string();
    true
}

/// Records to create and to remove so there is exactly one per host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reconcile {
    /// Hosts without a record.
    pub create: Vec<String>,
    /// Records whose host no longer exists.
    pub remove: Vec<String>,
}

/// Compares the hosts with the records (both as addresses).
pub fn reconcile<'a>(
    hosts: impl IntoIterator<Item = &'a str>,
    records: impl IntoIterator<Item = &'a str>,
) -> Reconcile {
    let hosts: BTreeSet<&str> = hosts.into_iter().collect();
    let records: BTreeSet<&str> = records.into_iter().collect();
    Reconcile {
        create: hosts.difference(&records).map(|a| a.to_string()).collect(),
        remove: records.difference(&hosts).map(|a| a.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        timestamp::parse(text).expect("timestamp")
    }

    fn record(address: &str, next_check: &str) -> WatcherRecord {
        WatcherRecord::new(address, next_check)
    }

    #[test]
    fn schedules_are_checked() {
        assert_eq!(
            Schedule::new(Duration::from_millis(1), 0.1),
            Err(ScheduleError::IntervalTooShort(Duration::from_millis(1)))
        );
        assert_eq!(Schedule::new(Duration::from_secs(1), 0.9), Err(ScheduleError::BadJitter(0.9)));
        assert!(matches!(Schedule::new(Duration::from_secs(1), f64::NAN), Err(ScheduleError::BadJitter(_))));
        assert!(Schedule::new(Duration::from_secs(60), 0.0).is_ok());
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        let schedule = Schedule { interval: Duration::from_secs(60), jitter: 0.1 };
        let now = at("2026-01-01T00:00:00.000000");
        let addresses: Vec<String> = (0..1000).map(|i| format!("10.0.{}.{}", i / 256, i % 256)).collect();
        let mut offsets = Vec::new();
        for address in &addresses {
            let next = schedule.next_check(address, now);
            // The same address always gets the same offset.
            assert_eq!(next, schedule.next_check(address, now));
            let secs = (next - now).as_seconds_f64();
            assert!((54.0..=66.0).contains(&secs), "{address}: {secs}");
            offsets.push(secs);
            let first = (schedule.first_check(address, now) - now).as_seconds_f64();
            assert!((0.0..60.0).contains(&first), "{address}: {first}");
        }
        // Spread over the whole window: every tenth of it is used.
        for decile in 0..10 {
            let low = 54.0 + 1.2 * f64::from(decile);
            assert!(offsets.iter().any(|s| (low..low + 1.2).contains(s)), "nothing in decile {decile}");
        }
        // No jitter: exactly one interval.
        let exact = Schedule { interval: Duration::from_secs(60), jitter: 0.0 };
        assert_eq!(exact.next_check("10.0.0.1", now) - now, time::Duration::seconds(60));
        assert_eq!(exact.min_gap(), Duration::from_secs(60));
        assert_eq!(schedule.min_gap(), Duration::from_secs(54));
    }

    #[test]
    fn due_records_in_order() {
        let now = at("2026-01-01T00:01:00.000000");
        let records = vec![
            record("later", "2026-01-01T00:02:00.000000"),
            record("now", "2026-01-01T00:01:00.000000"),
            record("new", ""),
            record("overdue", "2026-01-01T00:00:10.000000"),
            record("garbled", "9999"),
        ];
        let due: Vec<&str> = due(&records, now).iter().map(|r| r.address.as_str()).collect();
        // Unreadable and empty first (as if never scheduled), then by due time.
        assert_eq!(due, ["garbled", "new", "overdue", "now"]);
        assert_eq!(earliest_after(&records, now), Some(at("2026-01-01T00:02:00.000000")));
        assert_eq!(earliest_after(&records[1..], now), None);
    }

    #[test]
    fn a_claim_moves_the_next_check_and_a_second_one_in_the_interval_fails() {
        let schedule = Schedule { interval: Duration::from_secs(60), jitter: 0.1 };
        let now = at("2026-01-01T00:01:00.000000");
        let mut r = record("10.0.0.1", "2026-01-01T00:00:59.000000");
        assert!(claim(&mut r, &schedule, "a", now));
        assert_eq!(r.owner, "a");
        assert_eq!(r.last_check, "2026-01-01T00:01:00.000000");
        assert_eq!(r.next_check, timestamp::format(schedule.next_check("10.0.0.1", now)));
        // Another instance reading the claimed record finds it not due for the
        // rest of the interval, whatever its jitter.
        let before = r.clone();
        for seconds in [0, 1, 30, 53] {
            assert!(!claim(&mut r, &schedule, "b", now + time::Duration::seconds(seconds)));
        }
        assert_eq!(r, before);
        assert!(claim(&mut r, &schedule, "b", now + time::Duration::seconds(67)));
        assert_eq!(r.owner, "b");
    }

    #[test]
    fn reconcile_creates_and_removes() {
        let plan = reconcile(["a", "b", "c"], ["b", "c", "d"]);
        assert_eq!(plan, Reconcile { create: vec!["a".into()], remove: vec!["d".into()] });
        assert_eq!(reconcile(["a"], ["a"]), Reconcile::default());
    }
}
