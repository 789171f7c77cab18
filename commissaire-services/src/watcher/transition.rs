//! What a check does to a host's status: pure decisions, no IO.
//!
//! - Only hosts that are `active` or `disassociated` are checked, and hosts
//!   the watcher itself failed (so they can recover). A host being
//!   investigated or bootstrapped, not yet investigated, failed by something
//!   else (an investigation) or taking part in a cluster operation is left
//!   alone.
//! - A failed check makes the host `failed` with a reason starting with
//!   [`REASON_PREFIX`]: that prefix is how the watcher recognises its own
//!   failures, so an investigation's failure is never overridden.
//! - A successful check of a host the watcher failed restores the last good
//!   status it remembered (`active` or `disassociated`; `disassociated` if it
//!   remembered none, which claims nothing about a container manager).

use commissaire_core::model::Host;

/// Every reason the watcher writes starts with this.
pub const REASON_PREFIX: &str = "watcher: ";

/// The statuses a healthy host has, which the watcher remembers.
pub const GOOD_STATUSES: &[&str] = &["active", "disassociated"];

/// Whether a host gets checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Check,
    /// Left alone this time, and why.
    Skip(&'static str),
}

/// Whether the watcher failed this host (rather than an investigation).
pub fn failed_by_watcher(host: &Host) -> bool {
    host.status == "failed" && host.reason.starts_with(REASON_PREFIX)
}

/// Whether to check `host` (`in_operation`: the host takes part in a cluster
/// restart, upgrade or deploy in process).
pub fn plan(host: &Host, in_operation: bool) -> Plan {
    if in_operation {
        return Plan::Skip("in a cluster operation");
    }
    match host.status.as_str() {
        "active" | "disassociated" => Plan::Check,
        "failed" if failed_by_watcher(host) => Plan::Check,
        "failed" => Plan::Skip("failed by its investigation"),
        "investigating" | "bootstrapping" => Plan::Skip("being investigated"),
        _ => Plan::Skip("not investigated yet"),
    }
}

/// What to write to the host after a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Not the watcher's to change any more (its status moved on while it was
    /// being checked): write nothing.
    Leave,
    /// Still fine: only `last_check`.
    Healthy,
    /// `failed` with this reason.
    Fail { reason: String },
    /// Back to this status, reason cleared.
    Recover { status: String },
}

/// The transition for a host now in `host` (read again just before writing),
/// given the last good status the watcher remembered and the check's outcome.
pub fn transition(host: &Host, last_good_status: &str, outcome: &Result<(), String>) -> Transition {
    let good = GOOD_STATUSES.contains(&host.status.as_str());
    let ours = failed_by_watcher(host);
    match outcome {
        _ if !good && !ours => Transition::Leave,
        Ok(()) if good => Transition::Healthy,
        Ok(()) => Transition::Recover {
            status: if GOOD_STATUSES.contains(&last_good_status) { last_good_status } else { "disassociated" }
                .to_string(),
        },
        Err(why) => Transition::Fail { reason: format!("{REASON_PREFIX}{why}") },
    }
}

/// Applies a transition to the host; `false` when nothing is to be written.
pub fn apply(host: &mut Host, transition: &Transition, now: &str) -> bool {
    match transition {
        Transition::Leave => return false,
        Transition::Healthy => {}
        Transition::Fail { reason } => {
            host.status = "failed".into();
            host.reason = reason.clone();
        }
        Transition::Recover { status } => {
            host.status = status.clone();
            host.reason = String::new();
        }
    }
    host.last_check = now.to_string();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(status: &str, reason: &str) -> Host {
        let mut host = Host::new("10.0.0.1");
        host.status = status.into();
        host.reason = reason.into();
        host
    }

    const DOWN: &str = "watcher: host 10.0.0.1 is unreachable: connection refused";

    #[test]
    fn which_hosts_are_checked() {
        assert_eq!(plan(&host("active", ""), false), Plan::Check);
        assert_eq!(plan(&host("disassociated", ""), false), Plan::Check);
        assert_eq!(plan(&host("failed", DOWN), false), Plan::Check);
        assert!(matches!(plan(&host("failed", "authentication as root@h failed"), false), Plan::Skip(_)));
        assert!(matches!(plan(&host("investigating", ""), false), Plan::Skip(_)));
        assert!(matches!(plan(&host("bootstrapping", ""), false), Plan::Skip(_)));
        assert!(matches!(plan(&host("", ""), false), Plan::Skip(_)));
        assert!(matches!(plan(&host("active", ""), true), Plan::Skip("in a cluster operation")));
    }

    #[test]
    fn unreachable_fails_with_a_reason_and_recovery_restores_the_good_status() {
        let down = Err("host 10.0.0.1 is unreachable: connection refused".to_string());
        for status in GOOD_STATUSES {
            let mut h = host(status, "");
            let t = transition(&h, status, &down);
            assert_eq!(t, Transition::Fail { reason: DOWN.into() });
            assert!(apply(&mut h, &t, "2026-01-01T00:00:00.000000"));
            assert_eq!((h.status.as_str(), h.reason.as_str()), ("failed", DOWN));
            assert_eq!(h.last_check, "2026-01-01T00:00:00.000000");
            // Still down: stays failed, reason refreshed.
            assert_eq!(transition(&h, status, &down), Transition::Fail { reason: DOWN.into() });
            // Back: the remembered status.
            let t = transition(&h, status, &Ok(()));
            assert_eq!(t, Transition::Recover { status: status.to_string() });
            assert!(apply(&mut h, &t, "2026-01-01T00:01:00.000000"));
            assert_eq!((h.status.as_str(), h.reason.as_str()), (*status, ""));
        }
        // Nothing remembered: disassociated, which claims nothing.
        assert_eq!(
            transition(&host("failed", DOWN), "", &Ok(())),
            Transition::Recover { status: "disassociated".into() }
        );
        assert_eq!(transition(&host("active", ""), "active", &Ok(())), Transition::Healthy);
    }

    #[test]
    fn what_is_not_the_watchers_is_left_alone() {
        let investigation = host("failed", "authentication as root@10.0.0.1 failed");
        for outcome in [Ok(()), Err("refused".to_string())] {
            assert_eq!(transition(&investigation, "active", &outcome), Transition::Leave);
            // Re-investigated while the check ran.
            assert_eq!(transition(&host("investigating", ""), "active", &outcome), Transition::Leave);
            assert_eq!(transition(&host("bootstrapping", ""), "active", &outcome), Transition::Leave);
        }
        let mut h = investigation.clone();
        assert!(!apply(&mut h, &Transition::Leave, "2026-01-01T00:00:00.000000"));
        assert_eq!(h, investigation);
    }
}
