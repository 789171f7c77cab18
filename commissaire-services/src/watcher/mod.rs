//! The watcher service: every host is checked on a schedule kept in the store,
//! by however many instances run, each host by one of them per interval.
//!
//! The schedule is one [`WatcherRecord`] per host (keyed by address) holding
//! when it is next due. Every tick an instance lists the hosts and the
//! records, creates the records that are missing (hosts added while no watcher
//! ran are picked up) and removes those whose host is gone, then, for each due
//! host it may check, *claims* it: a compare-and-swap write of the record
//! moving `next_check` one (jittered) interval ahead, before the check. Of two
//! instances claiming the same host one write fails and that instance moves
//! on, so a host is checked once per interval; an instance that dies after
//! claiming leaves the host due again one interval later, so nothing is lost.
//!
//! A check ([`HostCheck`]; in production [`SshCheck`]) runs with a timeout, at
//! most `concurrency` at a time, each in its own task: a slow host never holds
//! up the schedule of the others. The outcome is written to the host with
//! compare-and-swap: `last_check`, and `failed` with a reason, or back to the
//! remembered good status, as [`transition`] decides. Nothing circulates on
//! the bus; the store is the schedule. See `docs/watcher.md`.

pub mod check;
pub mod schedule;
pub mod transition;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use commissaire_core::{
    bus::Bus,
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Host, HostCreds, WatcherRecord},
    storage_client::{Revisioned, StorageClient, StorageError},
    timestamp,
};
use time::OffsetDateTime;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

pub use check::{HostCheck, SshCheck};
pub use schedule::{Schedule, ScheduleError};
pub use transition::{Plan, REASON_PREFIX, Transition};

/// See [`WatcherConfig::connection_idle`].
pub const DEFAULT_CONNECTION_IDLE: Duration = Duration::from_secs(2);

/// How a watcher instance works.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub schedule: Schedule,
    /// Checks running at the same time (default 16).
    pub concurrency: usize,
    /// A check that has not answered by then fails (default: the interval,
    /// at most 30 s).
    pub check_timeout: Duration,
    /// The longest time between two looks at the store, which is how soon new
    /// hosts and other instances' claims are seen (default: the interval, at
    /// most 5 s). The watcher otherwise wakes when the next host is due.
    pub tick: Duration,
    /// How long an SSH connection is kept after a check (default 2 s). A
    /// connection kept for a whole interval, to be reused by the host's next
    /// check, costs tens of KB per host; a new one costs a handshake.
    pub connection_idle: Duration,
}

impl WatcherConfig {
    /// The defaults for `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        let bounded = |limit: Duration| schedule.interval.min(limit);
        Self {
            schedule,
            concurrency: 16,
            check_timeout: bounded(Duration::from_secs(30)),
            tick: bounded(Duration::from_secs(5)),
            connection_idle: DEFAULT_CONNECTION_IDLE,
        }
    }
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self::new(Schedule::default())
    }
}

/// See the module documentation.
pub struct Watcher {
    storage: StorageClient,
    check: Arc<dyn HostCheck>,
    config: WatcherConfig,
    id: String,
    in_flight: Mutex<HashSet<String>>,
    /// Due hosts of the last look at the store that found no free check slot,
    /// the longest overdue first: started as slots free up, without listing
    /// the store again (a list per finished check made a pass quadratic in
    /// the number of hosts).
    backlog: Mutex<VecDeque<Due>>,
    permits: Arc<Semaphore>,
    finished: Notify,
}

/// A due host as the last look at the store found it: the host and its
/// watcher record, each with the revision it was read at, so that claiming it
/// and recording its outcome are one compare-and-swap write each when nothing
/// changed them since (a changed one is read again).
struct Due {
    host: Revisioned<Host>,
    record: Revisioned<WatcherRecord>,
}

/// Instance names: process id and a counter, for the records' `owner`.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Why a tick could not look at the store.
#[derive(Debug, thiserror::Error)]
#[error("the watcher could not read the store: {0}")]
pub struct TickError(#[from] StorageError);

impl Watcher {
    pub fn new(bus: Arc<dyn Bus>, check: Arc<dyn HostCheck>, config: WatcherConfig) -> Self {
        let id = format!("watcher-{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed));
        let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
        Self {
            storage: StorageClient::new(bus),
            check,
            config,
            id,
            in_flight: Mutex::new(HashSet::new()),
            backlog: Mutex::new(VecDeque::new()),
            permits,
            finished: Notify::new(),
        }
    }

    /// This instance's name, as written to the records it claims.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the watcher in a task until [`Running::stop`] (or until dropped).
    pub fn spawn(self) -> Running {
        let stop = CancellationToken::new();
        let watcher = Arc::new(self);
        let task = tokio::spawn(watcher.run(stop.clone()));
        Running { stop, task: Some(task) }
    }

    /// The loop: tick, start the checks of due hosts, sleep until the next one
    /// is due (or `tick`, or a check slot frees up while hosts wait), until
    /// `stop`; then lets the checks in progress finish.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(id = %self.id, interval = ?self.config.schedule.interval, "watcher started");
        let mut tasks = JoinSet::new();
        let mut listed_at: Option<tokio::time::Instant> = None;
        while !stop.is_cancelled() {
            // While due hosts wait for a slot and the last list is recent,
            // a freed slot takes the next of them; otherwise look at the store.
            let fresh = listed_at.is_some_and(|at| at.elapsed() < self.config.tick);
            let (wake, waiting) = if fresh && !self.lock_backlog().is_empty() {
                let waiting = self.start_backlog(&mut tasks);
                let since = listed_at.map_or(Duration::ZERO, |at| at.elapsed());
                (self.config.tick.saturating_sub(since).max(Duration::from_millis(20)), waiting)
            } else {
                // A tick waiting on an unavailable store must not delay a stop;
                // what it leaves half done the next tick of any instance redoes.
                let ticked = tokio::select! {
                    _ = stop.cancelled() => break,
                    ticked = self.tick(&mut tasks) => ticked,
                };
                match ticked {
                    Ok(next) => {
                        listed_at = Some(tokio::time::Instant::now());
                        next
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "watcher tick failed; trying again");
                        (self.config.tick, false)
                    }
                }
            };
            while let Some(done) = tasks.try_join_next() {
                if let Err(err) = done {
                    tracing::error!(error = %err, "a check task failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wake) => {}
                _ = self.finished.notified(), if waiting => {}
            }
        }
        tracing::info!(id = %self.id, checks = tasks.len(), "watcher stopping: finishing the checks in progress");
        while tasks.join_next().await.is_some() {}
    }

    /// One look at the store: returns how long to sleep and whether due hosts
    /// wait for a free check slot.
    async fn tick(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<(Duration, bool), TickError> {
        let records = self.storage.list_revisioned::<WatcherRecord>().await?;
        let hosts = self.storage.list_revisioned::<Host>().await?;
        let now = OffsetDateTime::now_utc();
        let mut earliest = schedule::earliest_after(&records, now);

        let plan = schedule::reconcile(
            hosts.iter().map(|h| h.model.address.as_str()),
            records.iter().map(|r| r.model.address.as_str()),
        );
        for address in &plan.create {
            let first = self.config.schedule.first_check(address, now);
            match self.storage.save_if(&WatcherRecord::new(address.clone(), timestamp::format(first)), 0).await {
                Ok(_) => tracing::debug!(%address, "watching a new host"),
                // Another instance made it first.
                Err(StorageError::Conflict(_)) => {}
                Err(err) => return Err(err.into()),
            }
            earliest = Some(earliest.map_or(first, |e| e.min(first)));
        }
        for address in &plan.remove {
            match self.storage.delete::<WatcherRecord>(address).await {
                Ok(()) => tracing::info!(%address, "host deleted: no longer watched"),
                Err(StorageError::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }

        let hosts: HashMap<&str, &Revisioned<Host>> = hosts.iter().map(|h| (h.model.address.as_str(), h)).collect();
        let due: Vec<&Revisioned<WatcherRecord>> = schedule::due(&records, now)
            .into_iter()
            .filter(|r| hosts.contains_key(r.model.address.as_str()) && !self.is_in_flight(&r.model.address))
            .collect();
        let busy = if due.is_empty() {
            HashSet::new()
        } else {
            self.hosts_in_operations(due.iter().map(|r| r.model.address.as_str()).collect()).await?
        };
        let mut backlog = VecDeque::new();
        for record in due {
            let address = &record.model.address;
            let Some(&host) = hosts.get(address.as_str()) else { continue };
            if let Plan::Skip(why) = transition::plan(&host.model, busy.contains(address)) {
                tracing::debug!(%address, why, "not checked");
                continue;
            }
            backlog.push_back(Due { host: host.clone(), record: record.clone() });
        }
        *self.lock_backlog() = backlog;
        let waiting = self.start_backlog(tasks);

        let after_now = |at: OffsetDateTime| Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
        let wake = earliest.map_or(self.config.tick, |at| after_now(at).min(self.config.tick));
        // Never spin: due hosts that were skipped stay due.
        Ok((wake.max(Duration::from_millis(20)), waiting))
    }

    /// Starts the checks of backlogged hosts while slots are free; `true`
    /// when hosts are left waiting.
    fn start_backlog(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> bool {
        let mut backlog = self.lock_backlog();
        while !backlog.is_empty() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { return true };
            let Some(due) = backlog.pop_front() else { break };
            if !self.lock_in_flight().insert(due.host.model.address.clone()) {
                continue;
            }
            tasks.spawn(self.clone().check_one(due, permit));
        }
        false
    }

    fn lock_backlog(&self) -> std::sync::MutexGuard<'_, VecDeque<Due>> {
        self.backlog.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_in_flight(&self, address: &str) -> bool {
        self.lock_in_flight().contains(address)
    }

    /// The hosts among `due` whose cluster has a restart, upgrade or deploy in
    /// process: they are expected to be unreachable for a while.
    async fn hosts_in_operations(&self, due: HashSet<&str>) -> Result<HashSet<String>, StorageError> {
        let mut busy = HashSet::new();
        for cluster in self.storage.list::<Cluster>().await? {
            if !cluster.hostset.iter().any(|h| due.contains(h.as_str())) {
                continue;
            }
            let running = matches!(self.storage.find::<ClusterRestart>(&cluster.name).await?, Some(op) if op.status == "in_process")
                || matches!(self.storage.find::<ClusterUpgrade>(&cluster.name).await?, Some(op) if op.status == "in_process")
                || matches!(self.storage.find::<ClusterDeploy>(&cluster.name).await?, Some(op) if op.status == "in_process");
            if running {
                busy.extend(cluster.hostset.iter().cloned());
            }
        }
        Ok(busy)
    }

    /// Claims, checks and records one host, as listed by the last tick.
    async fn check_one(self: Arc<Self>, due: Due, _permit: OwnedSemaphorePermit) {
        let host = &due.host.model;
        let address = host.address.clone();
        let _done = InFlight { watcher: &self, address: &address };
        let Some(record) = self.claim(host, &due.record).await else { return };
        let outcome = match self.storage.get::<HostCreds>(&address).await {
            Ok(creds) => {
                let timeout = self.config.check_timeout;
                tokio::time::timeout(timeout, self.check.check(host, &creds))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            }
            Err(StorageError::NotFound { .. }) => Err("the host has no credentials".to_string()),
            Err(err) => {
                // Not the host's fault: try again next interval.
                tracing::warn!(%address, error = %err, "credentials unavailable; check skipped");
                return;
            }
        };
        self.record_outcome(&due.host, &record, &outcome).await;
    }

    /// The claim: the record moved one interval ahead with compare-and-swap,
    /// first against the revision listed and, when the record changed since,
    /// once more against the record read again (a claim by another instance
    /// leaves it not due, so it is not claimed twice). `None` when it is not
    /// due any more, the write lost a race, or the store failed.
    async fn claim(&self, host: &Host, listed: &Revisioned<WatcherRecord>) -> Option<WatcherRecord> {
        let address = &host.address;
        if let Ok(saved) = self.try_claim(host, listed.clone()).await? {
            return Some(saved);
        }
        let stored = match self.storage.get_revisioned::<WatcherRecord>(address).await {
            Ok(stored) => stored,
            Err(StorageError::NotFound { .. }) => return None,
            Err(err) => {
                tracing::warn!(%address, error = %err, "cannot read the watcher record");
                return None;
            }
        };
        self.try_claim(host, stored).await?.ok()
    }

    /// One claim attempt against `current`'s revision: `None` when the record
    /// is not due or the store failed, `Some(Err(()))` when the record changed
    /// since `current` was read.
    async fn try_claim(&self, host: &Host, current: Revisioned<WatcherRecord>) -> Option<Result<WatcherRecord, ()>> {
        let Revisioned { model: mut record, revision } = current;
        if !schedule::claim(&mut record, &self.config.schedule, &self.id, OffsetDateTime::now_utc()) {
            return None;
        }
        if transition::GOOD_STATUSES.contains(&host.status.as_str()) {
            record.last_good_status = host.status.clone();
        }
        match self.storage.save_if(&record, revision).await {
            Ok(saved) => Some(Ok(saved)),
            Err(StorageError::Conflict(_)) => Some(Err(())),
            Err(err) => {
                tracing::warn!(address = %host.address, error = %err, "cannot claim the host");
                None
            }
        }
    }

    /// Writes the outcome to the host (compare-and-swap): first on the host as
    /// listed, and when it changed since, on the host read again.
    async fn record_outcome(&self, listed: &Revisioned<Host>, record: &WatcherRecord, outcome: &Result<(), String>) {
        let address = listed.model.address.as_str();
        let now = timestamp::now();
        let decide = |host: &mut Host| {
            let t = transition::transition(host, &record.last_good_status, outcome);
            let before = host.status.clone();
            let write = transition::apply(host, &t, &now);
            (t, before, write)
        };
        let mut host = listed.model.clone();
        let (t, before, write) = decide(&mut host);
        let mut applied = (t, before);
        let result = if !write {
            Ok(Ok(host))
        } else {
            match self.storage.save_if(&host, listed.revision).await {
                Err(StorageError::Conflict(_)) => {
                    self.storage
                        .update::<Host, _, std::convert::Infallible>(address, 8, |host| {
                            let (t, before, write) = decide(host);
                            applied = (t, before);
                            Ok(write)
                        })
                        .await
                }
                other => other.map(Ok),
            }
        };
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(never)) => match never {},
            Err(StorageError::NotFound { .. }) => {
                // Deleted while checked; the next tick removes the record too.
                tracing::debug!(%address, "host deleted during its check");
                return;
            }
            Err(err) => {
                tracing::warn!(%address, error = %err, "cannot record the check on the host");
                return;
            }
        }
        let (transition, before) = applied;
        match &transition {
            Transition::Fail { reason } if before != "failed" => {
                tracing::warn!(%address, %reason, was = %before, "host failed its check");
                // The status really replaced, should it differ from what the claim remembered.
                if before != record.last_good_status && transition::GOOD_STATUSES.contains(&before.as_str()) {
                    self.remember(address, &before).await;
                }
            }
            Transition::Recover { status } => tracing::info!(%address, %status, "host recovered"),
            Transition::Leave => tracing::debug!(%address, "host changed during its check; left alone"),
            _ => tracing::debug!(%address, ok = outcome.is_ok(), "checked"),
        }
    }

    async fn remember(&self, address: &str, status: &str) {
        let result = self
            .storage
            .update::<WatcherRecord, _, std::convert::Infallible>(address, 8, |r| {
                r.last_good_status = status.to_string();
                Ok(true)
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(%address, error = %err, "cannot remember the host's good status");
        }
    }
}

/// Takes the host off this instance's in-flight set when its check ends,
/// however it ends, and wakes the loop if hosts wait for a slot.
struct InFlight<'a> {
    watcher: &'a Watcher,
    address: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.watcher.lock_in_flight().remove(self.address);
        self.watcher.finished.notify_one();
    }
}

/// A running watcher. Dropping it stops the loop at once, abandoning checks
/// in progress (as a crash would: their hosts come due again next interval).
pub struct Running {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops taking new hosts and waits for the checks in progress.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::error!(error = %err, "the watcher task failed");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The SSH transport for the checks of a watcher with these settings: its
/// timeouts within the check timeout, as many sessions as checks at once.
pub fn transport_for(settings: &WatcherConfig) -> crate::transport::SshTransport {
    use crate::transport::{SshConfig, SshTransport};
    SshTransport::new(SshConfig {
        connect_timeout: settings.check_timeout.min(SshConfig::default().connect_timeout),
        command_timeout: settings.check_timeout,
        max_sessions: settings.concurrency,
        idle_timeout: settings.connection_idle,
        ..SshConfig::default()
    })
}

/// Settings given as flags; each overrides the configuration member of the
/// same name (`interval`, `jitter`, `concurrency`, `check_timeout`, `tick`,
/// `connection_idle`;
/// times in seconds).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub interval: Option<f64>,
    pub jitter: Option<f64>,
    pub concurrency: Option<usize>,
    pub check_timeout: Option<f64>,
    pub tick: Option<f64>,
    pub connection_idle: Option<f64>,
}

/// Why the watcher's settings cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("{member} must be a number{reason}")]
    NotANumber { member: &'static str, reason: &'static str },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

/// The configuration from the service's configuration members and flags.
pub fn settings(
    members: &serde_json::Map<String, serde_json::Value>,
    flags: &Overrides,
) -> Result<WatcherConfig, SettingsError> {
    let number = |member: &'static str, flag: Option<f64>| -> Result<Option<f64>, SettingsError> {
        match (flag, members.get(member)) {
            (Some(value), _) => Ok(Some(value)),
            (None, None | Some(serde_json::Value::Null)) => Ok(None),
            (None, Some(value)) => value.as_f64().map(Some).ok_or(SettingsError::NotANumber { member, reason: "" }),
        }
    };
    let seconds = |member: &'static str, flag: Option<f64>| -> Result<Option<Duration>, SettingsError> {
        number(member, flag)?
            .map(|s| {
                Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or(SettingsError::NotANumber { member, reason: " of seconds above 0" })
            })
            .transpose()
    };
    let interval = seconds("interval", flags.interval)?.unwrap_or(schedule::DEFAULT_INTERVAL);
    let jitter = number("jitter", flags.jitter)?.unwrap_or(schedule::DEFAULT_JITTER);
    let mut config = WatcherConfig::new(Schedule::new(interval, jitter)?);
    if let Some(n) = number("concurrency", flags.concurrency.map(|n| n as f64))? {
        if n < 1.0 || n.fract() != 0.0 || n > 100_000.0 {
            return Err(SettingsError::NotANumber { member: "concurrency", reason: " from 1 to 100000" });
        }
        config.concurrency = n as usize;
    }
    if let Some(timeout) = seconds("check_timeout", flags.check_timeout)? {
        config.check_timeout = timeout;
    }
    if let Some(tick) = seconds("tick", flags.tick)? {
        config.tick = tick;
    }
    if let Some(idle) = seconds("connection_idle", flags.connection_idle)? {
        config.connection_idle = idle;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn members(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn settings_from_file_and_flags() {
        let config = settings(&members(json!({})), &Overrides::default()).expect("defaults");
        assert_eq!(config.schedule, Schedule::default());
        assert_eq!(
            (config.concurrency, config.check_timeout, config.tick),
            (16, Duration::from_secs(30), Duration::from_secs(5))
        );

        let file = members(json!({"interval": 10, "jitter": 0.2, "concurrency": 4, "check_timeout": 2.5}));
        let config = settings(&file, &Overrides::default()).expect("file");
        assert_eq!(config.schedule, Schedule { interval: Duration::from_secs(10), jitter: 0.2 });
        assert_eq!((config.concurrency, config.check_timeout), (4, Duration::from_millis(2500)));
        assert_eq!(config.tick, Duration::from_secs(5));

        let flags = Overrides { interval: Some(1.0), concurrency: Some(2), ..Overrides::default() };
        let config = settings(&file, &flags).expect("flags win");
        assert_eq!(config.connection_idle, DEFAULT_CONNECTION_IDLE);
        let idle = settings(&members(json!({"connection_idle": 90})), &Overrides::default()).expect("idle");
        assert_eq!(idle.connection_idle, Duration::from_secs(90));
        assert_eq!(transport_for(&idle).config().idle_timeout, Duration::from_secs(90));
        assert_eq!(config.schedule.interval, Duration::from_secs(1));
        assert_eq!((config.concurrency, config.tick), (2, Duration::from_secs(1)));

        assert_eq!(
            settings(&members(json!({"interval": "60"})), &Overrides::default()).map(|_| ()),
            Err(SettingsError::NotANumber { member: "interval", reason: "" })
        );
        assert!(settings(&members(json!({"interval": -1})), &Overrides::default()).is_err());
        assert!(settings(&members(json!({"concurrency": 0})), &Overrides::default()).is_err());
        assert!(matches!(
            settings(&members(json!({"jitter": 2})), &Overrides::default()),
            Err(SettingsError::Schedule(ScheduleError::BadJitter(_)))
        ));
    }

    #[test]
    fn the_shipped_configuration_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/watcher.conf");
        let text = std::fs::read_to_string(path).expect("conf/watcher.conf");
        let members = commissaire_core::config::parse(&text, "watcher.conf").expect("json object");
        let config = settings(&members, &Overrides::default()).expect("settings");
        assert_eq!(config.schedule, Schedule::default());
        assert_eq!(config.concurrency, 16);
    }
}
