//! Conformance suite of the store layer, written once over `Arc<dyn Store>` and run against
//! etcd (the test bed's, `COMMISSAIRE_ETCD_URL`) and the embedded redb store (a temporary
//! file), plus tests specific to each.
//!
//! Needs the test bed: `bash scripts/testbed up && eval "$(bash scripts/testbed env)"`.
//! Tests that stop or restart etcd, or need TLS, start a private etcd of their own (the
//! `etcd` binary of the test bed's package) on free ports, so the shared one is never
//! disturbed. Every test works under a unique key prefix and removes its keys afterwards.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commissaire_services::store::embedded::EmbeddedStore;
use commissaire_services::store::etcd::{EtcdConfig, EtcdStore};
use commissaire_services::store::{Expect, Store, StoreError, Versioned, WatchEvent, WatchStream};

const EVENT_DEADLINE: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// fixtures

fn etcd_url() -> String {
    match std::env::var("COMMISSAIRE_ETCD_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "COMMISSAIRE_ETCD_URL is not set: start the test bed first with \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"`"
        ),
    }
}

fn unique_prefix() -> String {
    format!("/t-{}/", uuid::Uuid::new_v4())
}

async fn connect_etcd(url: &str) -> EtcdStore {
    let mut config = EtcdConfig::new([url]);
    config.connect_timeout = Duration::from_secs(3);
    config.request_timeout = Duration::from_secs(5);
    match EtcdStore::connect(config).await {
        Ok(store) => store,
        Err(e) => panic!(
            "cannot reach etcd at {url} ({e}); is the test bed up? \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"`"
        ),
    }
}

/// Deletes every key under its prefix from the test bed's etcd when dropped, also when the
/// test failed.
struct EtcdCleanup {
    url: String,
    prefix: String,
}

impl Drop for EtcdCleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let prefix = self.prefix.clone();
        // Runs on a thread of its own: drop may happen inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let mut config = EtcdConfig::new([url.as_str()]);
                config.request_timeout = Duration::from_secs(5);
                if let Ok(store) = EtcdStore::connect(config).await
                    && let Ok(keys) = store.list(&prefix).await
                {
                    for (key, _) in keys {
                        let _ = store.delete(&key, Expect::Any).await;
                    }
                }
            });
        })
        .join();
    }
}

struct Fixture {
    store: Arc<dyn Store>,
    prefix: String,
    _cleanup: Option<EtcdCleanup>,
    _dir: Option<tempfile::TempDir>,
}

async fn etcd_fixture() -> Fixture {
    let url = etcd_url();
    let store = connect_etcd(&url).await;
    let prefix = unique_prefix();
    Fixture { store: Arc::new(store), _cleanup: Some(EtcdCleanup { url, prefix: prefix.clone() }), prefix, _dir: None }
}

async fn embedded_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("store.redb")).await.unwrap();
    Fixture { store: Arc::new(store), prefix: unique_prefix(), _cleanup: None, _dir: Some(dir) }
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_DEADLINE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

/// Retries `f` until it returns `Some` or `deadline` passes (no fixed sleeps: it polls
/// with a short pause).
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "{what}: not reached within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------
// the suite, written once

mod suite {
    use super::*;

    pub async fn round_trip(store: Arc<dyn Store>, prefix: &str) {
        let key = format!("{prefix}hosts/10.0.0.1");
        assert_eq!(store.get(&key).await.unwrap(), None);

        let (rev1, created) = store.put(&key, b"{\"a\":1}".to_vec(), Expect::Any).await.unwrap();
        assert!(created, "first put creates the key");
        assert!(rev1 > 0);
        assert_eq!(store.get(&key).await.unwrap(), Some(Versioned { value: b"{\"a\":1}".to_vec(), revision: rev1 }));

        let (rev2, created) = store.put(&key, b"{\"a\":2}".to_vec(), Expect::Any).await.unwrap();
        assert!(!created, "second put updates the key");
        assert!(rev2 > rev1);

        let listed = store.list(prefix).await.unwrap();
        assert_eq!(listed, vec![(key.clone(), Versioned { value: b"{\"a\":2}".to_vec(), revision: rev2 })]);

        let previous = store.delete(&key, Expect::Any).await.unwrap();
        assert_eq!(previous, Some(Versioned { value: b"{\"a\":2}".to_vec(), revision: rev2 }));
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert_eq!(store.delete(&key, Expect::Any).await.unwrap(), None);
        assert!(store.list(prefix).await.unwrap().is_empty());

        // A key can be created again after a delete.
        let (rev3, created) = store.put(&key, b"x".to_vec(), Expect::Absent).await.unwrap();
        assert!(created);
        assert!(rev3 > rev2);
        store.ping().await.unwrap();
    }

    pub async fn revisions_change_on_every_write(store: Arc<dyn Store>, prefix: &str) {
        let key = format!("{prefix}k");
        let other = format!("{prefix}other");
        let mut last = 0;
        for _ in 0..5 {
            // The same value each time: the revision still changes.
            let (rev, _) = store.put(&key, b"same".to_vec(), Expect::Any).await.unwrap();
            assert!(rev > last, "revision {rev} after {last}");
            assert_eq!(store.get(&key).await.unwrap().unwrap().revision, rev);
            last = rev;
        }
        // A write to another key leaves this key's revision alone.
        store.put(&other, b"o".to_vec(), Expect::Any).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision, last);
    }

    pub async fn preconditions(store: Arc<dyn Store>, prefix: &str) {
        let key = format!("{prefix}cluster/c1/restart");
        let missing = format!("{prefix}missing");
        let is_conflict = |r: &StoreError| matches!(r, StoreError::Conflict { key: k } if k.contains(prefix));

        let (rev1, created) = store.put(&key, b"v1".to_vec(), Expect::Absent).await.unwrap();
        assert!(created);

        // Absent fails on an existing key, and writes nothing.
        let err = store.put(&key, b"nope".to_vec(), Expect::Absent).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        assert_eq!(store.get(&key).await.unwrap().unwrap(), Versioned { value: b"v1".to_vec(), revision: rev1 });

        // Revision with the current revision succeeds.
        let (rev2, created) = store.put(&key, b"v2".to_vec(), Expect::Revision(rev1)).await.unwrap();
        assert!(!created);
        assert!(rev2 > rev1);

        // A stale revision fails and writes nothing.
        let err = store.put(&key, b"stale".to_vec(), Expect::Revision(rev1)).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        assert_eq!(store.get(&key).await.unwrap().unwrap(), Versioned { value: b"v2".to_vec(), revision: rev2 });

        // Revision on a missing key fails and does not create it; Revision(0) means absent.
        let err = store.put(&missing, b"m".to_vec(), Expect::Revision(rev2)).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        assert_eq!(store.get(&missing).await.unwrap(), None);
        let err = store.put(&key, b"z".to_vec(), Expect::Revision(0)).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");

        // Deletes: a stale revision or Absent on an existing key fail and delete nothing.
        let err = store.delete(&key, Expect::Revision(rev1)).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        let err = store.delete(&key, Expect::Absent).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision, rev2);
        let err = store.delete(&missing, Expect::Revision(rev2)).await.unwrap_err();
        assert!(is_conflict(&err), "{err:?}");
        assert_eq!(store.delete(&missing, Expect::Absent).await.unwrap(), None);

        // The current revision deletes, returning the previous value.
        let previous = store.delete(&key, Expect::Revision(rev2)).await.unwrap();
        assert_eq!(previous, Some(Versioned { value: b"v2".to_vec(), revision: rev2 }));
        assert_eq!(store.get(&key).await.unwrap(), None);
    }

    pub async fn delete_returns_previous(store: Arc<dyn Store>, prefix: &str) {
        let key = format!("{prefix}hosts/h");
        let value = serde_json::to_vec(&serde_json::json!({"address": "h", "status": "active"})).unwrap();
        let (rev, _) = store.put(&key, value.clone(), Expect::Any).await.unwrap();
        let previous = store.delete(&key, Expect::Any).await.unwrap().unwrap();
        assert_eq!(previous.value, value);
        assert_eq!(previous.revision, rev);
        assert_eq!(store.delete(&key, Expect::Any).await.unwrap(), None);
    }

    pub async fn list_prefix_sorted(store: Arc<dyn Store>, prefix: &str) {
        let hosts = format!("{prefix}hosts/");
        let inside = ["c", "a/x", "b", "a", "a/y", "\u{e9}t\u{e9}"];
        let outside =
            [format!("{prefix}hosts"), format!("{prefix}hosts-old/a"), format!("{prefix}host/a"), format!("{prefix}a")];
        for (i, name) in inside.iter().enumerate() {
            store.put(&format!("{hosts}{name}"), vec![i as u8], Expect::Any).await.unwrap();
        }
        for key in &outside {
            store.put(key, b"out".to_vec(), Expect::Any).await.unwrap();
        }
        let listed = store.list(&hosts).await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        let mut want: Vec<String> = inside.iter().map(|n| format!("{hosts}{n}")).collect();
        want.sort();
        assert_eq!(keys, want.iter().map(String::as_str).collect::<Vec<_>>());
        for (key, v) in &listed {
            let name = &key[hosts.len()..];
            let i = inside.iter().position(|n| *n == name).unwrap();
            assert_eq!(v.value, vec![i as u8]);
            assert_eq!(store.get(key).await.unwrap().unwrap().revision, v.revision);
        }
        assert_eq!(store.list(prefix).await.unwrap().len(), inside.len() + outside.len());
        assert!(store.list(&format!("{prefix}nothing/")).await.unwrap().is_empty());
    }

    pub async fn watch_sees_changes_in_order(store: Arc<dyn Store>, prefix: &str) {
        let dir = format!("{prefix}w/");
        let key = format!("{dir}k");
        // Written before the watch: not seen.
        store.put(&format!("{dir}before"), b"0".to_vec(), Expect::Any).await.unwrap();

        let mut watch = store.watch(&dir).await.unwrap();
        let (r1, _) = store.put(&key, b"1".to_vec(), Expect::Absent).await.unwrap();
        store.put(&format!("{prefix}elsewhere"), b"x".to_vec(), Expect::Any).await.unwrap();
        let (r2, _) = store.put(&key, b"2".to_vec(), Expect::Revision(r1)).await.unwrap();
        store.delete(&key, Expect::Any).await.unwrap();
        let (r4, _) = store.put(&format!("{dir}sentinel"), b"s".to_vec(), Expect::Any).await.unwrap();

        assert_eq!(
            next_event(&mut watch).await,
            WatchEvent::Put { key: key.clone(), value: b"1".to_vec(), revision: r1, created: true }
        );
        assert_eq!(
            next_event(&mut watch).await,
            WatchEvent::Put { key: key.clone(), value: b"2".to_vec(), revision: r2, created: false }
        );
        match next_event(&mut watch).await {
            WatchEvent::Delete { key: k, previous, revision } => {
                assert_eq!(k, key);
                assert_eq!(previous, Some(b"2".to_vec()));
                assert!(revision > r2 && revision < r4);
            }
            other => panic!("expected the delete, got {other:?}"),
        }
        // Next comes the sentinel: the write outside the prefix was not delivered.
        assert_eq!(next_event(&mut watch).await.key(), format!("{dir}sentinel"));

        // Two watches on one store each see everything.
        let mut second = store.watch(&dir).await.unwrap();
        let (r5, _) = store.put(&key, b"3".to_vec(), Expect::Any).await.unwrap();
        assert_eq!(next_event(&mut watch).await.revision(), r5);
        assert_eq!(next_event(&mut second).await.revision(), r5);
    }

    /// 16 tasks each append 10 distinct items to one JSON array at one key, by read →
    /// modify → put(Expect::Revision) with retry on conflict. No update may be lost.
    pub async fn concurrent_compare_and_swap(store: Arc<dyn Store>, prefix: &str) {
        const TASKS: usize = 16;
        const ITEMS: usize = 10;
        let key = format!("{prefix}cas");
        store.put(&key, b"[]".to_vec(), Expect::Absent).await.unwrap();
        let conflicts = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let store = store.clone();
            let key = key.clone();
            let conflicts = conflicts.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..ITEMS {
                    let item = format!("task{t}-item{i}");
                    loop {
                        let current = store.get(&key).await.unwrap().unwrap();
                        let mut items: Vec<String> = serde_json::from_slice(&current.value).unwrap();
                        items.push(item.clone());
                        let value = serde_json::to_vec(&items).unwrap();
                        match store.put(&key, value, Expect::Revision(current.revision)).await {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("put failed: {e}"),
                        }
                    }
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(120), task).await.expect("CAS tasks took over 120 s").unwrap();
        }
        let items: Vec<String> = serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().value).unwrap();
        let mut unique = items.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(items.len(), TASKS * ITEMS, "lost or repeated updates");
        assert_eq!(unique.len(), TASKS * ITEMS);
        for t in 0..TASKS {
            for i in 0..ITEMS {
                assert!(unique.binary_search(&format!("task{t}-item{i}")).is_ok());
            }
        }
        println!(
            "concurrent CAS on {}: {} items from {TASKS} tasks, none lost, {} conflicts retried, {:?}",
            store.describe(),
            items.len(),
            conflicts.load(Ordering::Relaxed),
            started.elapsed()
        );
    }

    pub async fn rejects_empty_key(store: Arc<dyn Store>, _prefix: &str) {
        assert!(matches!(store.put("", b"x".to_vec(), Expect::Any).await, Err(StoreError::Invalid(_))));
        assert!(matches!(store.get("").await, Err(StoreError::Invalid(_))));
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod etcd_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::etcd_fixture().await;
                    super::suite::$name(f.store.clone(), &f.prefix).await;
                }
            )*
        }
        mod embedded_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let f = super::embedded_fixture().await;
                    super::suite::$name(f.store.clone(), &f.prefix).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip,
    revisions_change_on_every_write,
    preconditions,
    delete_returns_previous,
    list_prefix_sorted,
    watch_sees_changes_in_order,
    concurrent_compare_and_swap,
    rejects_empty_key,
);

// ------------------------------------------------------------------------------------------
// embedded store only

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_reopen_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let before;
    let last;
    {
        let store = EmbeddedStore::open(&path).await.unwrap();
        for i in 0..20 {
            store
                .put(&format!("/commissaire/hosts/10.0.0.{i}"), format!("{{\"i\":{i}}}").into_bytes(), Expect::Any)
                .await
                .unwrap();
        }
        store.put("/commissaire/hosts/10.0.0.3", b"updated".to_vec(), Expect::Any).await.unwrap();
        store.delete("/commissaire/hosts/10.0.0.4", Expect::Any).await.unwrap();
        last = store.put("/commissaire/cluster/c/restart", b"{}".to_vec(), Expect::Absent).await.unwrap().0;
        before = store.list("/").await.unwrap();
        assert_eq!(before.len(), 20);
    }
    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.list("/").await.unwrap(), before, "same keys, values and revisions after reopening");
    // The revision counter went on from where it was.
    let (next, created) = store.put("/commissaire/hosts/10.0.0.4", b"again".to_vec(), Expect::Absent).await.unwrap();
    assert!(created);
    assert_eq!(next, last + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_second_open_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let first = EmbeddedStore::open(&path).await.unwrap();
    first.put("/k", b"v".to_vec(), Expect::Any).await.unwrap();
    let err = EmbeddedStore::open(&path).await.unwrap_err();
    println!("second open: {err}");
    assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "the message names the file: {err}");
    // The first store is unharmed, and once it is closed the file opens again.
    assert_eq!(first.get("/k").await.unwrap().unwrap().value, b"v");
    drop(first);
    let again = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(again.get("/k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_open_fails_while_another_process_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = ChildStore::spawn("hold", &path);
    child.wait_for_line("READY", Duration::from_secs(30));
    let err = EmbeddedStore::open(&path).await.unwrap_err();
    println!("open while another process holds the file: {err}");
    assert!(matches!(err, StoreError::Locked(_)), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    child.kill();
    // After the holder is gone (killed, so the file was not closed cleanly) it opens again.
    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.get("/held").await.unwrap().unwrap().value, b"by the child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_acknowledged_writes_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = ChildStore::spawn("write", &path);
    // The child writes keys one after another and prints "ACK <i> <revision>" after each put
    // returned Ok; it is killed (SIGKILL) in the middle of its writes.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        let line = child.wait_for_line("ACK ", Duration::from_secs(30));
        let mut parts = line.split_whitespace().skip(1);
        let i: u64 = parts.next().unwrap().parse().unwrap();
        let rev: u64 = parts.next().unwrap().parse().unwrap();
        acked.push((i, rev));
    }
    child.kill();
    let store = EmbeddedStore::open(&path).await.unwrap();
    for (i, rev) in &acked {
        let got = store.get(&format!("/crash/{i:06}")).await.unwrap();
        assert_eq!(got.map(|v| v.revision), Some(*rev), "acknowledged write {i} lost");
    }
    println!(
        "{} acknowledged writes all present after SIGKILL; {} keys in the file",
        acked.len(),
        store.list("/crash/").await.unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_full_disk_is_a_clear_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.redb");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
    let backend = FillingDisk { inner: redb::backends::FileBackend::new(file).unwrap(), limit: 4 * 1024 * 1024 };
    let label = path.display().to_string();
    let store = EmbeddedStore::open_with_backend(label.clone(), backend).await.unwrap();
    let value = vec![7u8; 64 * 1024];
    let mut written = 0;
    let err = loop {
        match store.put(&format!("/big/{written:05}"), value.clone(), Expect::Any).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 1000, "the disk never filled up");
    };
    println!("after {written} puts of 64 KiB: {err}");
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&label), "names the file: {msg}");
    assert!(msg.contains("disk is full") || msg.contains("No space left"), "says why: {msg}");
    // Later calls fail the same clear way (or still work), never panic.
    match store.put("/big/after", b"x".to_vec(), Expect::Any).await {
        Ok(_) | Err(StoreError::Io(_)) => {}
        Err(e) => panic!("unexpected error after a full disk: {e:?}"),
    }
    let _ = store.get("/big/00000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_damaged_file_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5au8; 64 * 1024]).unwrap();
    let err = EmbeddedStore::open(&path).await.unwrap_err();
    println!("damaged file: {err}");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");

    let missing_dir = dir.path().join("no/such/dir/store.redb");
    let err = EmbeddedStore::open(&missing_dir).await.unwrap_err();
    println!("missing directory: {err}");
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
}

/// A file backend whose disk is full past `limit` bytes: writes and growth beyond it fail
/// with ENOSPC, as a real full disk does.
#[derive(Debug)]
struct FillingDisk {
    inner: redb::backends::FileBackend,
    limit: u64,
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl redb::StorageBackend for FillingDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.limit {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if offset + data.len() as u64 > self.limit {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
}

/// A child process running this test binary's `child_process_entry`.
struct ChildStore {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ChildStore {
    fn spawn(mode: &str, path: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_process_entry", "--nocapture", "--test-threads=1"])
            .env("COMMISSAIRE_STORE_CHILD", format!("{mode}:{}", path.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildStore { child, lines }
    }

    fn wait_for_line(&mut self, start: &str, deadline: Duration) -> String {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // libtest prints "test child_process_entry ... " before the child's first line.
                Ok(line) if line.contains(start) => {
                    return line[line.find(start).unwrap_or(0)..].to_string();
                }
                Ok(_) => {}
                Err(e) => panic!("the child process printed no {start:?} within {deadline:?}: {e}"),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildStore {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run as a child process by the tests above (ignored in a normal run).
#[test]
#[ignore = "entry point of a child process, run by other tests"]
fn child_process_entry() {
    let Ok(spec) = std::env::var("COMMISSAIRE_STORE_CHILD") else {
        return;
    };
    let (mode, path) = spec.split_once(':').unwrap();
    let path = PathBuf::from(path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(&path).await.unwrap();
        let mut out = std::io::stdout();
        match mode {
            "hold" => {
                store.put("/held", b"by the child".to_vec(), Expect::Any).await.unwrap();
                writeln!(out, "READY").unwrap();
                out.flush().unwrap();
                // Hold the file until the parent kills this process or closes stdin.
                let _ = tokio::task::spawn_blocking(|| {
                    let mut buf = String::new();
                    let _ = std::io::stdin().read_line(&mut buf);
                })
                .await;
            }
            "write" => {
                for i in 0u64.. {
                    let (rev, _) = store
                        .put(&format!("/crash/{i:06}"), format!("value {i}").into_bytes(), Expect::Any)
                        .await
                        .unwrap();
                    writeln!(out, "ACK {i} {rev}").unwrap();
                    out.flush().unwrap();
                }
            }
            other => panic!("unknown child mode {other}"),
        }
    });
}

// ------------------------------------------------------------------------------------------
// etcd only

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_unreachable_endpoint_is_unavailable_within_the_timeout() {
    // Nothing listens on port 1: connection refused.
    let mut config = EtcdConfig::new(["http://127.0.0.1:1"]);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = EtcdStore::connect(config).await.unwrap_err();
    println!("refused: {err} after {:?}", started.elapsed());
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:1"), "names the endpoint: {err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    // A listener that never answers (accepts TCP, says nothing): the timeout must fire.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let mut config = EtcdConfig::new([url.as_str()]);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    let started = Instant::now();
    let err = EtcdStore::connect(config).await.unwrap_err();
    println!("silent: {err} after {:?}", started.elapsed());
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&url[7..]), "names the endpoint: {err}");
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_config_errors_are_clear() {
    let mut config = EtcdConfig::new(["http://127.0.0.1:2379"]);
    config.ca_file = Some("/nonexistent/ca.pem".into());
    let err = EtcdStore::connect(config.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("http://"), "{err}");

    config.endpoints = vec!["https://127.0.0.1:2379".into()];
    let err = EtcdStore::connect(config.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

    let mut config = EtcdConfig::new(Vec::<String>::new());
    assert!(matches!(EtcdStore::connect(config.clone()).await, Err(StoreError::Config(_))));
    config.endpoints = vec!["http://127.0.0.1:2379".into()];
    config.username = Some("root".into());
    assert!(matches!(EtcdStore::connect(config).await, Err(StoreError::Config(_))));
}

/// An etcd of this test's own (the shared one is never stopped), on free ports.
struct PrivateEtcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
}

struct TlsFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PrivateEtcd {
    fn new(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| make_certificates(dir.path()));
        let mut etcd = PrivateEtcd { child: None, dir, client_port: free_port(), peer_port: free_port(), tls };
        etcd.start();
        etcd
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new([self.url()]);
        config.connect_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(2);
        if let Some(tls) = &self.tls {
            config.ca_file = Some(tls.ca.clone());
            config.cert_file = Some(tls.client_cert.clone());
            config.key_file = Some(tls.client_key.clone());
        }
        config
    }

    fn start(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name",
            "p",
            "--logger=zap",
            "--log-level=error",
            "--heartbeat-interval=10",
            "--election-timeout=100",
        ])
        .arg("--data-dir")
        .arg(self.dir.path().join("data"))
        .args(["--listen-client-urls", &self.url(), "--advertise-client-urls", &self.url()])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .arg("--initial-cluster")
        .arg(format!("p={peer}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file").arg(&tls.server_cert);
            cmd.arg("--key-file").arg(&tls.server_key);
            cmd.arg("--trusted-ca-file").arg(&tls.ca);
            cmd.arg("--client-cert-auth");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start etcd ({e}); it comes with the test bed: `bash scripts/testbed up`")
        });
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_ready(&self) -> EtcdStore {
        let config = self.config();
        eventually("private etcd ready", Duration::from_secs(30), || {
            let config = config.clone();
            async move { EtcdStore::connect(config).await.ok() }
        })
        .await
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn make_certificates(dir: &Path) -> TlsFiles {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=commissaire-test-ca"],
    ]
    .concat());
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "root")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        let subj = format!("/CN={cn}");
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_watch_resumes_after_etcd_restart_and_calls_time_out_while_down() {
    let mut etcd = PrivateEtcd::new(false);
    let store = etcd.wait_ready().await;
    let prefix = unique_prefix();
    let key = format!("{prefix}k");
    let mut watch = store.watch(&prefix).await.unwrap();
    let (r1, _) = store.put(&key, b"1".to_vec(), Expect::Any).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), r1);

    etcd.stop();
    let started = Instant::now();
    let err = store.put(&key, b"while down".to_vec(), Expect::Any).await.unwrap_err();
    println!("put while etcd is down: {err} after {:?}", started.elapsed());
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&etcd.url()), "names the endpoint: {err}");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());

    etcd.start();
    // Another client writes right after the restart, maybe before the watch is back.
    let other = etcd.wait_ready().await;
    let (r2, _) = other.put(&key, b"2".to_vec(), Expect::Any).await.unwrap();
    other.delete(&key, Expect::Any).await.unwrap();

    // The first client recovers by itself...
    eventually("the first client reconnects", Duration::from_secs(30), || {
        let store = store.clone();
        let key = key.clone();
        async move { store.get(&key).await.ok() }
    })
    .await;
    // ...and its watch went on from where it was: nothing lost, nothing repeated.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), watch.next()).await.unwrap().unwrap().unwrap(),
        WatchEvent::Put { key: key.clone(), value: b"2".to_vec(), revision: r2, created: false }
    );
    match next_event(&mut watch).await {
        WatchEvent::Delete { key: k, previous, .. } => {
            assert_eq!(k, key);
            assert_eq!(previous, Some(b"2".to_vec()));
        }
        other => panic!("expected the delete, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_tls_with_client_certificate() {
    let etcd = PrivateEtcd::new(true);
    let store = etcd.wait_ready().await;
    let key = format!("{}tls", unique_prefix());
    let (rev, created) = store.put(&key, b"secure".to_vec(), Expect::Absent).await.unwrap();
    assert!(created);
    assert_eq!(store.get(&key).await.unwrap(), Some(Versioned { value: b"secure".to_vec(), revision: rev }));

    // Without the client certificate etcd refuses the connection.
    let mut config = etcd.config();
    config.cert_file = None;
    config.key_file = None;
    let err = EtcdStore::connect(config).await.unwrap_err();
    println!("TLS without a client certificate: {err}");
    assert!(matches!(err, StoreError::Unavailable(_) | StoreError::Denied(_)), "{err:?}");

    // Plain HTTP to a TLS port fails too, within the timeout.
    let mut config = EtcdConfig::new([format!("http://127.0.0.1:{}", etcd.client_port)]);
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(2);
    assert!(EtcdStore::connect(config).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_username_and_password() {
    let etcd = PrivateEtcd::new(false);
    etcd.wait_ready().await;
    let etcdctl = |args: &[&str]| {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", etcd.url()))
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run etcdctl ({e}); it comes with the test bed: `bash scripts/testbed up`")
            });
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    etcdctl(&["user", "add", "root:s3cret", "--interactive=false"]);
    etcdctl(&["auth", "enable"]);

    let mut config = etcd.config();
    config.username = Some("root".into());
    config.password = Some("s3cret".into());
    let store = EtcdStore::connect(config.clone()).await.unwrap();
    let key = format!("{}auth", unique_prefix());
    store.put(&key, b"ok".to_vec(), Expect::Any).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value, b"ok");
    let mut watch = store.watch(&key).await.unwrap();
    let (rev, _) = store.put(&key, b"again".to_vec(), Expect::Any).await.unwrap();
    assert_eq!(next_event(&mut watch).await.revision(), rev);

    config.password = Some("wrong".into());
    let err = EtcdStore::connect(config).await.unwrap_err();
    println!("wrong password: {err}");
    assert!(matches!(err, StoreError::Denied(_)), "{err:?}");

    // Without credentials the requests are refused.
    let anonymous = EtcdStore::connect(etcd.config()).await;
    let err = match anonymous {
        Ok(store) => store.get(&key).await.unwrap_err(),
        Err(e) => e,
    };
    println!("no credentials: {err}");
    assert!(matches!(err, StoreError::Denied(_)), "{err:?}");
}
