//! The live view of a rolling operation (`status --watch`): the record, the
//! cluster's hosts, and what the event stream says changed. Pure: the caller
//! feeds records and events and prints [`Progress::render`].

use std::collections::BTreeMap;

use serde_json::Value;
use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

use crate::sse;

/// Which operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Restart,
    Upgrade,
    Deploy,
}

impl OpKind {
    /// The path segment and the command name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Restart => "restart",
            OpKind::Upgrade => "upgrade",
            OpKind::Deploy => "deploy",
        }
    }

    /// The record's model name in events.
    pub fn model(self) -> &'static str {
        match self {
            OpKind::Restart => "ClusterRestart",
            OpKind::Upgrade => "ClusterUpgrade",
            OpKind::Deploy => "ClusterDeploy",
        }
    }

    /// The record's list of hosts done.
    pub fn done_field(self) -> &'static str {
        match self {
            OpKind::Restart => "restarted",
            OpKind::Upgrade => "upgraded",
            OpKind::Deploy => "deployed",
        }
    }
}

/// Where one host is in the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    Done,
    InProcess,
    Failed,
    Pending,
}

impl HostState {
    pub fn label(self) -> &'static str {
        match self {
            HostState::Done => "done",
            HostState::InProcess => "in process",
            HostState::Failed => "failed",
            HostState::Pending => "pending",
        }
    }
}

/// How many hosts are where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub done: usize,
    pub in_process: usize,
    pub failed: usize,
    pub pending: usize,
}

/// The state being displayed.
#[derive(Debug, Clone)]
pub struct Progress {
    pub kind: OpKind,
    pub cluster: String,
    /// The cluster's members, in order (hosts not yet reached are pending).
    pub hostset: Vec<String>,
    /// The operation record as last seen.
    pub record: Value,
    /// Host statuses from `Host` events.
    pub host_status: BTreeMap<String, String>,
    /// The last event of the cluster exec service about this operation
    /// (`host_done 10.0.0.7`, `taken_over`, …).
    pub last_event: Option<String>,
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The server's timestamps: UTC, `%Y-%m-%dT%H:%M:%S.%f`.
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
    PrimitiveDateTime::parse(text, format).ok().map(PrimitiveDateTime::assume_utc)
}

/// `m:ss`, or `h:mm:ss` past an hour.
pub fn format_elapsed(seconds: i64) -> String {
    let s = seconds.max(0);
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(kind: OpKind, cluster: &str, hostset: Vec<String>, record: Value) -> Self {
        Self { kind, cluster: cluster.to_string(), hostset, record, host_status: BTreeMap::new(), last_event: None }
    }

    pub fn status(&self) -> &str {
        self.record.get("status").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn phase(&self) -> &str {
        self.record.get("phase").and_then(Value::as_str).unwrap_or_default()
    }

    /// The operation ended (`finished` or `failed`; an abort ends `finished`
    /// with phase `aborted`).
    pub fn is_over(&self) -> bool {
        !matches!(self.status(), "" | "in_process")
    }

    /// Ended failed or aborted.
    pub fn ended_badly(&self) -> bool {
        self.is_over() && (self.status() != "finished" || self.phase() == "aborted")
    }

    /// Takes in one event; whether anything shown changed.
    pub fn apply(&mut self, event: &sse::Event) -> bool {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else { return false };
        let model = data.get("model").and_then(Value::as_str).unwrap_or_default();
        let Some(document) = data.get("document") else { return false };
        if model == self.kind.model() {
            if document.get("name").and_then(Value::as_str) != Some(self.cluster.as_str()) {
                return false;
            }
            if data.get("event").and_then(Value::as_str) == Some("deleted") {
                return false;
            }
            let changed = *document != self.record;
            self.record = document.clone();
            return changed;
        }
        if model == "clusterexec" {
            let operation = document.get("operation").and_then(Value::as_str);
            let cluster = document.get("cluster").and_then(Value::as_str);
            if operation != Some(self.kind.name()) || cluster != Some(self.cluster.as_str()) {
                return false;
            }
            let mut text = document.get("event").and_then(Value::as_str).unwrap_or("event").to_string();
            for key in ["host", "reason"] {
                if let Some(value) = document.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()) {
                    text.push(' ');
                    text.push_str(value);
                }
            }
            return self.last_event.replace(text.clone()) != Some(text);
        }
        if model == "Host" {
            let Some(address) = document.get("address").and_then(Value::as_str) else { return false };
            let status = document.get("status").and_then(Value::as_str).unwrap_or_default().to_string();
            return self.host_status.insert(address.to_string(), status.clone()) != Some(status);
        }
        if model == "Cluster" && document.get("name").and_then(Value::as_str) == Some(self.cluster.as_str()) {
            let hostset = strings(document.get("hostset"));
            if !hostset.is_empty() && hostset != self.hostset {
                self.hostset = hostset;
                return true;
            }
        }
        false
    }

    /// Every host the display knows of, with its state: the cluster's members
    /// in order, then hosts only the record names.
    pub fn hosts(&self) -> Vec<(String, HostState)> {
        let done = strings(self.record.get(self.kind.done_field()));
        let in_process = strings(self.record.get("in_process"));
        let failed = strings(self.record.get("failed_hosts"));
        let mut order: Vec<String> = self.hostset.clone();
        for host in done.iter().chain(&in_process).chain(&failed) {
            if !order.contains(host) {
                order.push(host.clone());
            }
        }
        order
            .into_iter()
            .map(|host| {
                let state = if failed.contains(&host) {
                    HostState::Failed
                } else if in_process.contains(&host) {
                    HostState::InProcess
                } else if done.contains(&host) {
                    HostState::Done
                } else {
                    HostState::Pending
                };
                (host, state)
            })
            .collect()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for (_, state) in self.hosts() {
            match state {
                HostState::Done => counts.done += 1,
                HostState::InProcess => counts.in_process += 1,
                HostState::Failed => counts.failed += 1,
                HostState::Pending => counts.pending += 1,
            }
        }
        counts
    }

    /// Seconds since the start (to the end once it ended).
    pub fn elapsed(&self, now: OffsetDateTime) -> Option<i64> {
        let started = parse_timestamp(self.record.get("started_at").and_then(Value::as_str).unwrap_or_default())?;
        let until = self.record.get("finished_at").and_then(Value::as_str).and_then(parse_timestamp).unwrap_or(now);
        Some((until - started).whole_seconds())
    }

    /// The display, one line per element.
    pub fn render(&self, now: OffsetDateTime) -> Vec<String> {
        let counts = self.counts();
        let total = counts.done + counts.in_process + counts.failed + counts.pending;
        let mut lines = Vec::new();
        let phase = self.phase();
        let status = match (self.status(), phase) {
            ("", _) => "unknown".to_string(),
            (s, "") => s.to_string(),
            (s, p) if s == p => s.to_string(),
            (s, p) => format!("{s} ({p})"),
        };
        let elapsed = self.elapsed(now).map(format_elapsed).unwrap_or_else(|| "-".into());
        let version =
            self.record.get("version").and_then(Value::as_str).map(|v| format!(" to {v}")).unwrap_or_default();
        lines.push(format!("{}{version} of cluster {}: {status}, elapsed {elapsed}", self.kind.name(), self.cluster));
        const WIDTH: usize = 30;
        let filled = ((counts.done + counts.failed) * WIDTH).checked_div(total).unwrap_or(0);
        lines.push(format!(
            "[{}{}] {}/{}  done {}, in process {}, failed {}, pending {}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            counts.done + counts.failed,
            total,
            counts.done,
            counts.in_process,
            counts.failed,
            counts.pending
        ));
        let hosts = self.hosts();
        if !hosts.is_empty() {
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|(host, state)| {
                    vec![
                        host.clone(),
                        state.label().to_string(),
                        self.host_status.get(host).filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            let header = ["HOST", "STATE", "HOST STATUS"].map(String::from);
            lines.extend(crate::output::columns_text(&header, &rows).lines().map(|l| format!("  {l}")));
        }
        if let Some(event) = &self.last_event {
            lines.push(format!("last event: {event}"));
        }
        if let Some(reason) = self.record.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            lines.push(format!("reason: {reason}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(data: Value) -> sse::Event {
        sse::Event { id: None, event: "x".into(), data: data.to_string() }
    }

    fn progress() -> Progress {
        let record = json!({"name": "prod", "status": "in_process", "restarted": [], "in_process": ["a"],
            "started_at": "2026-11-22T10:00:00.000000", "finished_at": null, "phase": "running"});
        Progress::new(OpKind::Restart, "prod", vec!["a".into(), "b".into(), "c".into()], record)
    }

    #[test]
    fn counts_follow_the_record() {
        let mut p = progress();
        assert_eq!(p.counts(), Counts { done: 0, in_process: 1, failed: 0, pending: 2 });
        let changed = p.apply(&event(json!({"model": "ClusterRestart", "event": "updated", "cluster": "prod",
            "document": {"name": "prod", "status": "in_process", "restarted": ["a"], "in_process": ["b"],
                "failed_hosts": [], "started_at": "2026-11-22T10:00:00.000000", "finished_at": null}})));
        assert!(changed);
        assert_eq!(p.counts(), Counts { done: 1, in_process: 1, failed: 0, pending: 1 });
        assert!(!p.is_over());
        p.apply(&event(json!({"model": "ClusterRestart", "event": "updated", "cluster": "prod",
            "document": {"name": "prod", "status": "failed", "restarted": ["a"], "in_process": [],
                "failed_hosts": ["b"], "reason": "b: unreachable", "phase": "failed",
                "started_at": "2026-11-22T10:00:00.000000", "finished_at": "2026-11-22T10:01:05.500000"}})));
        assert_eq!(p.counts(), Counts { done: 1, in_process: 0, failed: 1, pending: 1 });
        assert!(p.is_over() && p.ended_badly());
        let now = parse_timestamp("2026-11-22T11:00:00.000000").expect("time");
        assert_eq!(p.elapsed(now), Some(65));
        let text = p.render(now).join("\n");
        assert!(text.starts_with("restart of cluster prod: failed, elapsed 1:05"), "{text}");
        assert!(text.contains("2/3  done 1, in process 0, failed 1, pending 1"), "{text}");
        assert!(text.contains("reason: b: unreachable"), "{text}");
    }

    #[test]
    fn other_clusters_and_models_are_ignored_and_hosts_shown() {
        let mut p = progress();
        assert!(!p.apply(&event(json!({"model": "ClusterRestart", "event": "updated", "cluster": "other",
            "document": {"name": "other", "status": "finished"}}))));
        assert!(!p.apply(&event(json!({"model": "ClusterUpgrade", "event": "updated", "cluster": "prod",
            "document": {"name": "prod", "status": "finished"}}))));
        assert!(!p.apply(&sse::Event { id: None, event: "x".into(), data: "not json".into() }));
        assert!(p.apply(&event(json!({"model": "Host", "event": "updated", "cluster": "prod",
            "document": {"address": "a", "status": "active"}}))));
        assert_eq!(p.status(), "in_process");
        let now = parse_timestamp("2026-11-22T10:00:07.000000").expect("time");
        let text = p.render(now).join("\n");
        assert!(text.contains("restart of cluster prod: in_process (running), elapsed 0:07"), "{text}");
        assert!(text.contains("a     in process  active"), "{text}");
        assert!(text.contains("c     pending     -"), "{text}");
    }

    #[test]
    fn operation_events_show_as_the_last_event() {
        let mut p = progress();
        assert!(p.apply(&event(json!({"model": "clusterexec", "event": "restart.host_done", "cluster": "prod",
            "document": {"cluster": "prod", "operation": "restart", "event": "host_done", "host": "a", "reason": null}}))));
        assert!(!p.apply(&event(json!({"model": "clusterexec", "event": "upgrade.host_done", "cluster": "prod",
            "document": {"cluster": "prod", "operation": "upgrade", "event": "host_done", "host": "b"}}))));
        let now = parse_timestamp("2026-11-22T10:00:07.000000").expect("time");
        assert!(p.render(now).contains(&"last event: host_done a".to_string()), "{:?}", p.render(now));
    }

    #[test]
    fn an_abort_ends_badly() {
        let mut p = progress();
        p.record = json!({"name": "prod", "status": "finished", "phase": "aborted", "restarted": ["a"]});
        assert!(p.is_over() && p.ended_badly());
        p.record = json!({"name": "prod", "status": "finished", "phase": "finished", "restarted": ["a", "b", "c"]});
        assert!(p.is_over() && !p.ended_badly());
        assert_eq!(format_elapsed(3725), "1:02:05");
    }
}
