//! The event stream behind `GET /api/v0/events`: the bus's `notify.#` events
//! as server-sent events, filterable by cluster and by model.
//!
//! One [`EventHub`] per server subscribes to the bus once (on the first
//! stream) and fans events out to every open stream through a bounded
//! broadcast channel; a stream that falls behind is told how many events it
//! missed (`event: lagged`) rather than slowing the others. Each event's
//! cluster is worked out once, in the hub: the record's own name for
//! `Cluster` and operation records, the cluster whose hostset holds the host
//! for `Host` (from a membership cache reloaded after any `Cluster` event),
//! the body's `cluster` member for other sources. Internal bookkeeping
//! (`WatcherRecord`) is not streamed; secrets never reach the bus.
//!
//! Wire format, per event:
//!
//! ```text
//! id: <sequence number in this stream>
//! event: <name>         Host.updated, ClusterRestart.created, clusterexec.restart.host_done, …
//! data: {"model": …, "event": …, "cluster": … or null, "document": {…}}
//! ```
//!
//! Storage events (`notify.storage.<Model>.<event>`) are named
//! `<Model>.<event>` with the record's safe form as `document`; others
//! (`notify.<source>.<rest>`) are named `<source>.<rest>`, with `model` the
//! source and `document` the published body. A comment (`: keepalive`) goes
//! out every 15 s; the stream never replays history.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use commissaire_core::{
    bus::{Bus, Event},
    model::Cluster,
    storage_client::StorageClient,
};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Events kept for streams that fall behind.
const BACKLOG: usize = 4096;
/// How often an idle stream says it is alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Storage models that are not streamed.
const INTERNAL_MODELS: &[&str] = &["WatcherRecord", "HostCreds"];
/// The operation record models, keyed by their cluster's name.
const OPERATION_MODELS: &[&str] = &["ClusterRestart", "ClusterUpgrade", "ClusterDeploy"];

/// One event, as streams send it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The SSE event name.
    pub name: String,
    pub model: String,
    pub event: String,
    pub cluster: Option<String>,
    pub document: Value,
}

impl StreamEvent {
    /// The SSE frame for this event, numbered `id`.
    pub fn frame(&self, id: u64) -> Bytes {
        let data =
            json!({"model": self.model, "event": self.event, "cluster": self.cluster, "document": self.document});
        // serde_json never writes a raw newline, so data is one line
        Bytes::from(format!("id: {id}\nevent: {}\ndata: {data}\n\n", self.name))
    }
}

/// What a stream asks for: `cluster=NAME`, `models=A,B`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub cluster: Option<String>,
    pub models: Option<Vec<String>>,
}

impl Filter {
    /// Parses a query string; every error names the parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut filter = Filter::default();
        let valid = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "cluster" => {
                    if !valid(value) {
                        return Err(format!("cluster: {value:?} is not a cluster name ([A-Za-z0-9_-]+)"));
                    }
                    filter.cluster = Some(value.to_string());
                }
                "models" => {
                    let models: Vec<String> = value.split(',').map(str::to_string).collect();
                    if let Some(bad) = models.iter().find(|m| !valid(m)) {
                        return Err(format!("models: {bad:?} is not a model name"));
                    }
                    filter.models = Some(models);
                }
                other => return Err(format!("unknown query parameter {other:?} (known: cluster, models)")),
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, event: &StreamEvent) -> bool {
        if let Some(cluster) = &self.cluster
            && event.cluster.as_deref() != Some(cluster.as_str())
        {
            return false;
        }
        self.models.as_ref().is_none_or(|models| models.contains(&event.model))
    }
}

/// Turns a bus event into a stream event (`None`: not streamed). `cluster_of`
/// answers which cluster a host belongs to.
pub fn classify(event: &Event, cluster_of: impl FnOnce(&str) -> Option<String>) -> Option<StreamEvent> {
    let rest = event.routing_key.strip_prefix("notify.")?;
    if let Some(storage) = rest.strip_prefix("storage.") {
        let (model, what) = storage.split_once('.')?;
        if INTERNAL_MODELS.contains(&model) {
            return None;
        }
        let document = event.body.get("model").cloned().unwrap_or(Value::Null);
        let key = |field: &str| document.get(field).and_then(Value::as_str).map(str::to_string);
        let cluster = match model {
            "Cluster" => key("name"),
            m if OPERATION_MODELS.contains(&m) => key("name"),
            "Host" => key("address").and_then(|address| cluster_of(&address)),
            _ => None,
        };
        return Some(StreamEvent {
            name: storage.to_string(),
            model: model.to_string(),
            event: what.to_string(),
            cluster,
            document,
        });
    }
    let (source, what) = rest.split_once('.').unwrap_or((rest, ""));
    Some(StreamEvent {
        name: rest.to_string(),
        model: source.to_string(),
        event: what.to_string(),
        cluster: event.body.get("cluster").and_then(Value::as_str).map(str::to_string),
        document: event.body.clone(),
    })
}

/// The server's one subscription to the bus, shared by every stream.
pub struct EventHub {
    tx: broadcast::Sender<Arc<StreamEvent>>,
}

/// Which cluster each host is in, reloaded after cluster changes.
struct Membership {
    storage: StorageClient,
    hosts: Mutex<HashMap<String, String>>,
    stale: AtomicBool,
}

impl Membership {
    async fn refresh_if_stale(&self) {
        if !self.stale.swap(false, Ordering::AcqRel) {
            return;
        }
        match self.storage.list::<Cluster>().await {
            Ok(clusters) => {
                let map = clusters
                    .into_iter()
                    .flat_map(|c| {
                        let name = c.name;
                        c.hostset.into_iter().map(move |h| (h, name.clone()))
                    })
                    .collect();
                *self.hosts.lock().unwrap_or_else(PoisonError::into_inner) = map;
            }
            Err(err) => {
                tracing::warn!(error = %err, "event stream: cannot read cluster membership");
                self.stale.store(true, Ordering::Release);
            }
        }
    }

    fn cluster_of(&self, host: &str) -> Option<String> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).get(host).cloned()
    }
}

impl EventHub {
    /// Subscribes to the bus (returns once the subscription is live) and
    /// relays its events until the bus is gone.
    pub async fn start(bus: Arc<dyn Bus>) -> Result<Arc<Self>, commissaire_core::bus::BusError> {
        let mut subscription = bus.subscribe(&["notify.#"]).await?;
        let (tx, _) = broadcast::channel(BACKLOG);
        let hub = Arc::new(EventHub { tx: tx.clone() });
        let membership = Membership {
            storage: StorageClient::new(bus.clone()),
            hosts: Mutex::new(HashMap::new()),
            stale: AtomicBool::new(true),
        };
        tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                if event.routing_key.starts_with("notify.storage.Cluster.") {
                    membership.stale.store(true, Ordering::Release);
                }
                if event.routing_key.starts_with("notify.storage.Host.") {
                    membership.refresh_if_stale().await;
                }
                if let Some(stream_event) = classify(&event, |host| membership.cluster_of(host)) {
                    // no receiver is fine: nobody is streaming
                    let _ = tx.send(Arc::new(stream_event));
                }
            }
            tracing::warn!("event stream: the bus subscription ended");
        });
        Ok(hub)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.tx.subscribe()
    }
}

/// The hub, started on first use.
#[derive(Default)]
pub struct LazyHub(OnceCell<Arc<EventHub>>);

impl LazyHub {
    pub async fn get(&self, bus: &Arc<dyn Bus>) -> Result<Arc<EventHub>, commissaire_core::bus::BusError> {
        self.0.get_or_try_init(|| EventHub::start(bus.clone())).await.cloned()
    }
}

/// Feeds one stream: the frames for `filter` into `out` until the client
/// goes (the receiver is dropped), the hub ends or `stop` is cancelled.
pub async fn pump(
    mut events: broadcast::Receiver<Arc<StreamEvent>>,
    filter: Filter,
    out: mpsc::Sender<Bytes>,
    stop: CancellationToken,
) {
    // Tells the client the stream is live: events from here on reach it.
    if out.send(Bytes::from_static(b"retry: 2000\n: connected\n\n")).await.is_err() {
        return;
    }
    let mut id: u64 = 0;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            _ = out.closed() => return,
            received = tokio::time::timeout(KEEPALIVE, events.recv()) => match received {
                Err(_) => Bytes::from_static(b": keepalive\n\n"),
                Ok(Ok(event)) if filter.matches(&event) => {
                    id += 1;
                    event.frame(id)
                }
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    id += 1;
                    Bytes::from(format!("id: {id}\nevent: lagged\ndata: {{\"missed\": {missed}}}\n\n"))
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
            },
        };
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, body: Value) -> Event {
        Event { routing_key: key.into(), body }
    }

    #[test]
    fn storage_events_are_named_by_model_and_given_their_cluster() {
        let host = event(
            "notify.storage.Host.updated",
            json!({"event": "updated", "class": "Host", "model": {"address": "10.0.0.1", "status": "active"}}),
        );
        let streamed = classify(&host, |h| (h == "10.0.0.1").then(|| "prod".to_string())).expect("streamed");
        assert_eq!(streamed.name, "Host.updated");
        assert_eq!((streamed.model.as_str(), streamed.event.as_str()), ("Host", "updated"));
        assert_eq!(streamed.cluster.as_deref(), Some("prod"));
        assert_eq!(streamed.document["status"], "active");

        let op =
            event("notify.storage.ClusterRestart.updated", json!({"model": {"name": "prod", "status": "in_process"}}));
        assert_eq!(classify(&op, |_| None).and_then(|e| e.cluster), Some("prod".into()));
        let watcher = event("notify.storage.WatcherRecord.updated", json!({"model": {"address": "10.0.0.1"}}));
        assert_eq!(classify(&watcher, |_| None), None);
        assert_eq!(classify(&event("jobs.investigate", json!({})), |_| None), None);
    }

    #[test]
    fn other_sources_keep_their_body_and_cluster() {
        let done = event("notify.clusterexec.restart.host_done", json!({"cluster": "prod", "host": "10.0.0.1"}));
        let streamed = classify(&done, |_| None).expect("streamed");
        assert_eq!(streamed.name, "clusterexec.restart.host_done");
        assert_eq!((streamed.model.as_str(), streamed.event.as_str()), ("clusterexec", "restart.host_done"));
        assert_eq!(streamed.cluster.as_deref(), Some("prod"));
        let frame = String::from_utf8(streamed.frame(7).to_vec()).expect("utf-8");
        assert!(frame.starts_with("id: 7\nevent: clusterexec.restart.host_done\ndata: {"), "{frame}");
        assert!(frame.ends_with("}\n\n") && frame.matches('\n').count() == 4, "{frame}");
    }

    #[test]
    fn filters_parse_and_match() {
        assert_eq!(Filter::parse(None), Ok(Filter::default()));
        let filter = Filter::parse(Some("cluster=prod&models=Host,ClusterRestart")).expect("valid");
        let mut e = StreamEvent {
            name: "Host.updated".into(),
            model: "Host".into(),
            event: "updated".into(),
            cluster: Some("prod".into()),
            document: Value::Null,
        };
        assert!(filter.matches(&e));
        e.cluster = Some("dev".into());
        assert!(!filter.matches(&e));
        e.cluster = Some("prod".into());
        e.model = "Network".into();
        assert!(!filter.matches(&e));
        for (bad, named) in [("cluster=a%2Fb", "cluster"), ("models=Host,", "models"), ("since=1", "since")] {
            let err = Filter::parse(Some(bad)).expect_err(bad);
            assert!(err.contains(named), "{bad}: {err}");
        }
    }
}
