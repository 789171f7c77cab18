//! The process's metrics, in one registry per process, exposed in the
//! Prometheus/OpenMetrics text format by [`encode`] (served at `/metrics` by the
//! REST server and, when enabled, by every service binary).
//!
//! Invariant: every label value comes from a closed set fixed by the code (a
//! route name, a method family, a status or state of a model, an error kind):
//! never an address, a user name, a path or any other value a client chooses,
//! so the number of series stays bounded.

use std::sync::OnceLock;

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The media type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type OwnedLabels1 = [(&'static str, String); 1];
type OwnedLabels2 = [(&'static str, String); 2];

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<Labels2, Counter>,
    bus_request_seconds: Family<Labels1, Histogram>,
    bus_handled: Family<Labels2, Counter>,
    hosts: Family<OwnedLabels1, Gauge>,
    operations: Family<OwnedLabels2, Gauge>,
    ssh_sessions_open: Gauge,
    ssh_sessions_failed: Family<Labels1, Counter>,
    errors: Family<Labels1, Counter>,
    webhook_deliveries: Family<Labels1, Counter>,
    webhook_dropped: Counter,
}

/// The kinds of error counted by `commissaire_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bus request got no reply in time.
    BusTimeout,
    /// A bus request failed because the connection to the broker failed.
    BusTransport,
    /// A service answered a bus request with an error.
    BusRpc,
    /// Any other bus failure (malformed message, bad URI).
    BusOther,
    /// The REST server answered with a 5xx status.
    Http5xx,
    /// An audit entry could not be written.
    Audit,
    /// A storage read done for metrics failed.
    MetricsRefresh,
    /// A webhook delivery failed (after its retries).
    Webhook,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BusTimeout => "bus_timeout",
            ErrorKind::BusTransport => "bus_transport",
            ErrorKind::BusRpc => "bus_rpc",
            ErrorKind::BusOther => "bus_other",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::Audit => "audit",
            ErrorKind::MetricsRefresh => "metrics_refresh",
            ErrorKind::Webhook => "webhook",
        }
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The process's metrics in the OpenMetrics text format (see [`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = text::encode(&mut out, &get().registry);
    out
}

/// The family of a bus routing key: the key without its method (last word),
/// at most two words (`storage`, `jobs`, `jobs.clusterexec`, `container`).
/// Routing keys are fixed by the code, so the set stays small.
pub fn method_family(routing_key: &str) -> &'static str {
    const KNOWN: &[&str] = &["storage", "container", "jobs", "jobs.clusterexec", "jobs.investigate", "notify"];
    let family = match routing_key.rsplit_once('.') {
        Some((head, _)) => head,
        None => routing_key,
    };
    KNOWN.iter().copied().find(|k| *k == family).unwrap_or("other")
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("commissaire");
        let http_requests = Family::<Labels2, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route name (never a path) and status code",
            http_requests.clone(),
        );
        let bus_request_seconds = Family::<Labels1, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "bus_request_duration_seconds",
            "Round trip of bus requests made by this process (request to reply or error), by method family",
            bus_request_seconds.clone(),
        );
        let bus_handled = Family::<Labels2, Counter>::default();
        registry.register(
            "bus_handled",
            "Bus requests handled by this process's services, by method family and outcome (ok, error)",
            bus_handled.clone(),
        );
        let hosts = Family::<OwnedLabels1, Gauge>::default();
        registry.register("hosts", "Hosts by status (read from storage when scraped)", hosts.clone());
        let operations = Family::<OwnedLabels2, Gauge>::default();
        registry.register(
            "operations",
            "Cluster operation records by kind (restart, upgrade, deploy) and status (read from storage when scraped)",
            operations.clone(),
        );
        let ssh_sessions_open = Gauge::default();
        registry.register("ssh_sessions_open", "SSH sessions (commands) running now", ssh_sessions_open.clone());
        let ssh_sessions_failed = Family::<Labels1, Counter>::default();
        registry.register(
            "ssh_sessions_failed",
            "SSH commands that could not be run, by reason (unreachable, host_key_changed, auth_failed, timeout, bad_key, protocol, refused)",
            ssh_sessions_failed.clone(),
        );
        let errors = Family::<Labels1, Counter>::default();
        registry.register("errors", "Errors by kind", errors.clone());
        let webhook_deliveries = Family::<Labels1, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome (delivered, retried, failed)",
            webhook_deliveries.clone(),
        );
        let webhook_dropped = Counter::default();
        registry.register(
            "webhook_dropped",
            "Webhook notifications dropped because an endpoint's queue was full (oldest first)",
            webhook_dropped.clone(),
        );
        Self {
            registry,
            http_requests,
            bus_request_seconds,
            bus_handled,
            hosts,
            operations,
            ssh_sessions_open,
            ssh_sessions_failed,
            errors,
            webhook_deliveries,
            webhook_dropped,
        }
    }

    /// Counts an answered HTTP request. `route` is a route name, never a path.
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests.get_or_create(&[("route", route), ("status", status_label(status))]).inc();
        if status >= 500 {
            self.error(ErrorKind::Http5xx);
        }
    }

    /// Records the round trip of one bus request.
    pub fn bus_request(&self, routing_key: &str, seconds: f64) {
        self.bus_request_seconds.get_or_create(&[("family", method_family(routing_key))]).observe(seconds);
    }

    /// Counts a handled bus request.
    pub fn bus_handled(&self, routing_key: &str, ok: bool) {
        self.bus_handled
            .get_or_create(&[("family", method_family(routing_key)), ("outcome", if ok { "ok" } else { "error" })])
            .inc();
    }

    /// Replaces the host counts: `counts` holds every status seen; the
    /// statuses of `known` missing from it are set to 0.
    pub fn set_hosts(&self, known: &[&str], counts: &[(String, i64)]) {
        for status in known {
            self.hosts.get_or_create(&[("status", (*status).to_string())]).set(0);
        }
        for (status, n) in counts {
            self.hosts.get_or_create(&[("status", bounded(status, known))]).set(*n);
        }
    }

    /// Replaces the operation counts of one kind, like [`Metrics::set_hosts`].
    pub fn set_operations(&self, kind: &'static str, known: &[&str], counts: &[(String, i64)]) {
        for status in known {
            self.operations.get_or_create(&[("kind", kind.to_string()), ("status", (*status).to_string())]).set(0);
        }
        for (status, n) in counts {
            self.operations.get_or_create(&[("kind", kind.to_string()), ("status", bounded(status, known))]).set(*n);
        }
    }

    /// An SSH session starts; the returned guard ends it when dropped.
    pub fn ssh_session(&'static self) -> SshSessionGuard {
        self.ssh_sessions_open.inc();
        SshSessionGuard(self)
    }

    /// Counts an SSH command that could not be run.
    pub fn ssh_failed(&self, reason: &'static str) {
        self.ssh_sessions_failed.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts an error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    /// Counts a webhook delivery attempt's outcome (`delivered`, `retried`, `failed`).
    pub fn webhook(&self, outcome: &'static str) {
        self.webhook_deliveries.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Counts a webhook notification dropped from a full queue.
    pub fn webhook_dropped(&self) {
        self.webhook_dropped.inc();
    }
}

/// Ends an SSH session in the `ssh_sessions_open` gauge.
pub struct SshSessionGuard(&'static Metrics);

impl Drop for SshSessionGuard {
    fn drop(&mut self) {
        self.0.ssh_sessions_open.dec();
    }
}

fn status_label(status: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    CODES.iter().find(|(c, _)| *c == status).map(|(_, s)| *s).unwrap_or(match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    })
}

/// A stored status as a label: one of `known`, or `other`.
fn bounded(status: &str, known: &[&str]) -> String {
    if known.contains(&status) { status.to_string() } else { "other".to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_a_closed_set() {
        assert_eq!(method_family("storage.get"), "storage");
        assert_eq!(method_family("jobs.clusterexec.restart"), "jobs.clusterexec");
        assert_eq!(method_family("jobs.investigate"), "jobs");
        assert_eq!(method_family("anything.a user chose.x"), "other");
    }

    #[test]
    fn encoding_names_the_metrics_and_labels() {
        let m = get();
        m.http_request("hosts", 200);
        m.http_request("hosts", 599);
        m.set_hosts(&["active", "failed"], &[("active".into(), 3), ("10.0.0.1".into(), 1)]);
        let text = encode();
        assert!(text.contains("commissaire_http_requests_total{route=\"hosts\",status=\"200\"}"), "{text}");
        assert!(text.contains("status=\"5xx\""), "{text}");
        assert!(text.contains("commissaire_hosts{status=\"active\"} 3"), "{text}");
        assert!(text.contains("commissaire_hosts{status=\"other\"} 1"), "{text}");
        assert!(!text.contains("10.0.0.1"), "no value a client chooses becomes a label");
    }
}
