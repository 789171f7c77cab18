//! [`Store`] in one redb file: a durable single-node store for a server without etcd.
//!
//! * Table `kv`: key → record `[revision: u64 BE][create revision: u64 BE][value]`.
//! * Table `meta`: `revision` (the global counter, incremented by every write, as etcd's
//!   store revision is) and `format` (the record layout version).
//! * Writes go to one writer thread that applies them in redb write transactions committed
//!   with [`redb::Durability::Immediate`] (redb 4's default, set explicitly): a put that returned
//!   `Ok` is on disk. Preconditions are checked inside the same write transaction, so
//!   concurrent compare-and-swap on one key loses no update. Writes that arrive while a commit
//!   is in progress are grouped into the next transaction (group commit: one fsync for many
//!   writes); each still gets its own revision and its own precondition check.
//! * Reads run in redb read transactions (snapshots), which never wait for the writer. A
//!   point read runs in the caller's task: it is a few microseconds of cached B-tree pages,
//!   less than handing it to a blocking thread and waking the caller again costs. So does a
//!   list of up to 64 records; a longer one, whose cost grows with the store, is read again on
//!   `tokio::task::spawn_blocking`.
//! * Watch: events are broadcast in process after each commit, in revision order.
//! * redb locks the file: a second open (from another process, or from this one) fails with
//!   [`StoreError::Locked`]. I/O errors, a full disk included, come back as [`StoreError::Io`]
//!   naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use super::{Expect, Revision, Store, StoreError, Versioned, WatchEvent, WatchStream, check_key};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_FORMAT: &str = "format";
const FORMAT: u64 = 1;
const RECORD_HEADER: usize = 16;

/// Most writes grouped into one transaction.
const MAX_BATCH: usize = 256;
/// Events kept for watchers that are behind; a watcher further behind gets
/// [`StoreError::WatchLost`].
const EVENT_BUFFER: usize = 16 * 1024;
const WATCH_BUFFER: usize = 256;
/// redb's page cache (its default is 1 GiB).
const CACHE_SIZE: usize = 64 * 1024 * 1024;

/// [`Store`] in one redb file. Dropping it stops the writer thread and closes the file
/// (once reads still in flight have finished).
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    writes: Option<std_mpsc::Sender<WriteOp>>,
    writer: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    /// The file (or backend description), for messages.
    label: String,
    events: broadcast::Sender<Arc<WatchEvent>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("file", &self.inner.label).finish()
    }
}

enum WriteKind {
    Put { value: Vec<u8> },
    Delete,
}

enum Outcome {
    Put { revision: Revision, created: bool },
    Delete { previous: Option<Versioned> },
}

struct WriteOp {
    key: String,
    expect: Expect,
    kind: WriteKind,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// A stored record: the value with its revision and the revision that created the key.
struct Record {
    revision: Revision,
    created: Revision,
    value: Vec<u8>,
}

fn encode(revision: Revision, created: Revision, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + value.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.extend_from_slice(&created.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(label: &str, key: &str, raw: &[u8]) -> Result<Record, StoreError> {
    let bad = || StoreError::Corrupt(format!("{label}: the record of {key} is damaged ({} bytes)", raw.len()));
    if raw.len() < RECORD_HEADER {
        return Err(bad());
    }
    let (head, value) = raw.split_at(RECORD_HEADER);
    let (rev, created) = head.split_at(8);
    let revision = u64::from_be_bytes(rev.try_into().map_err(|_| bad())?);
    let created = u64::from_be_bytes(created.try_into().map_err(|_| bad())?);
    if revision == 0 || created == 0 || created > revision {
        return Err(bad());
    }
    Ok(Record { revision, created, value: value.to_vec() })
}

/// Maps a redb error to a [`StoreError`] naming the file and what was being done.
fn map_redb(label: &str, what: &str, e: impl Into<redb::Error>) -> StoreError {
    use redb::Error as E;
    match e.into() {
        E::DatabaseAlreadyOpen => StoreError::Locked(format!(
            "{label} is already open (by another process, or by another store in this one); only one may use it at a time"
        )),
        E::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt(format!("{what} {label}: {io} (the file is not a store, or is damaged)"))
        }
        E::Io(io) => {
            let hint = match io.kind() {
                std::io::ErrorKind::StorageFull => " (the disk is full: free space, then restart)",
                std::io::ErrorKind::PermissionDenied => " (check the file's owner and mode)",
                std::io::ErrorKind::NotFound => " (does its directory exist?)",
                _ => "",
            };
            StoreError::Io(format!("{what} {label}: {io}{hint}"))
        }
        E::PreviousIo => StoreError::Io(format!(
            "{what} {label}: an earlier I/O error (e.g. a full disk) left the store unusable; fix the cause and restart"
        )),
        E::Corrupted(msg) => StoreError::Corrupt(format!("{label}: {msg}")),
        E::ValueTooLarge(n) => StoreError::Invalid(format!("{what} {label}: a value of {n} bytes is too large")),
        E::UpgradeRequired(v) => StoreError::Corrupt(format!(
            "{label} uses redb file format {v}, which this version cannot open; upgrade the file first"
        )),
        E::RepairAborted => StoreError::Corrupt(format!("{label} was not closed cleanly and its repair was aborted")),
        E::DatabaseClosed => StoreError::Io(format!("{what} {label}: the store is closed")),
        other => StoreError::Backend(format!("{what} {label}: {other}")),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in the file at `path`. The directory must exist.
    ///
    /// Fails with [`StoreError::Locked`] if the file is already open, [`StoreError::Io`] if it
    /// cannot be read or written, [`StoreError::Corrupt`] if it is not a store (integrity is
    /// checked on every open, so a damaged file is reported rather than trusted).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let label = path.display().to_string();
        run_blocking(&label.clone(), move || {
            let db = Database::builder()
                .set_check_integrity_on_open(true)
                .set_cache_size(CACHE_SIZE)
                .create(&path)
                .map_err(|e| map_redb(&label, "opening", e))?;
            Self::start(db, label)
        })
        .await
    }

    /// Opens a store on another redb storage backend; `label` names it in messages.
    /// For storage other than a plain file, and for tests that need a backend that fails
    /// (e.g. a disk that fills up).
    pub async fn open_with_backend(label: impl Into<String>, backend: impl StorageBackend) -> Result<Self, StoreError> {
        let label = label.into();
        run_blocking(&label.clone(), move || {
            let db = Database::builder()
                .set_cache_size(CACHE_SIZE)
                .create_with_backend(backend)
                .map_err(|e| map_redb(&label, "opening", e))?;
            Self::start(db, label)
        })
        .await
    }

    /// Prepares the tables and starts the writer thread.
    fn start(db: Database, label: String) -> Result<Self, StoreError> {
        let txn = begin_durable(&db, &label)?;
        {
            let mut meta = txn.open_table(META).map_err(|e| map_redb(&label, "initialising", e))?;
            let format = meta.get(META_FORMAT).map_err(|e| map_redb(&label, "reading", e))?.map(|g| g.value());
            match format {
                None => {
                    meta.insert(META_FORMAT, FORMAT).map_err(|e| map_redb(&label, "initialising", e))?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "{label} has store format {other}; this version reads format {FORMAT}"
                    )));
                }
            }
            txn.open_table(KV).map_err(|e| map_redb(&label, "initialising", e))?;
        }
        txn.commit().map_err(|e| map_redb(&label, "initialising", e))?;

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner { db, label, events });
        let (writes, rx) = std_mpsc::channel();
        let writer_inner = inner.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_inner, &rx))
            .map_err(|e| StoreError::Backend(format!("{}: cannot start the writer thread: {e}", inner.label)))?;
        Ok(EmbeddedStore { inner, writes: Some(writes), writer: Some(writer) })
    }

    /// The file (or backend label) of this store.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    async fn write(&self, key: &str, expect: Expect, kind: WriteKind) -> Result<Outcome, StoreError> {
        check_key(key)?;
        let stopped = || StoreError::Backend(format!("{}: the store's writer has stopped", self.inner.label));
        let (reply, answer) = oneshot::channel();
        let op = WriteOp { key: key.to_owned(), expect, kind, reply };
        self.writes.as_ref().ok_or_else(stopped)?.send(op).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let label = self.inner.label.clone();
        run_blocking(&label, move || f(&inner)).await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current transaction; joining it makes
        // sure the file is released when no read is in flight.
        drop(self.writes.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(file = %self.inner.label, "the store writer thread panicked");
        }
    }
}

/// The longest list read in the caller's task (see the module documentation).
const INLINE_LIST_LIMIT: usize = 64;

/// The records under `prefix` in one snapshot; `None` when there are more than `limit`.
fn list_in(inner: &Inner, prefix: &str, limit: Option<usize>) -> Result<Option<Vec<(String, Versioned)>>, StoreError> {
    let label = inner.label.as_str();
    let err = |e: redb::StorageError| map_redb(label, "reading", e);
    let txn = inner.db.begin_read().map_err(|e| map_redb(label, "reading", e))?;
    let kv = txn.open_table(KV).map_err(|e| map_redb(label, "reading", e))?;
    let mut out = Vec::new();
    for item in kv.range::<&str>(prefix..).map_err(err)? {
        let (k, v) = item.map_err(err)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if limit.is_some_and(|limit| out.len() == limit) {
            return Ok(None);
        }
        let record = decode(label, key, v.value())?;
        out.push((key.to_owned(), Versioned { value: record.value, revision: record.revision }));
    }
    Ok(Some(out))
}

async fn run_blocking<T: Send + 'static>(
    label: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("{label}: a store task failed: {e}")))?
}

fn begin_durable(db: &Database, label: &str) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(|e| map_redb(label, "writing", e))?;
    txn.set_durability(Durability::Immediate).map_err(|e| StoreError::Backend(format!("{label}: {e}")))?;
    Ok(txn)
}

fn writer_loop(inner: &Inner, rx: &std_mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for op in batch {
            replies.push(op.reply);
            requests.push((op.key, op.expect, op.kind));
        }
        match apply_batch(inner, requests) {
            Ok((results, events)) => {
                for event in events {
                    // No receiver is fine: nobody watches.
                    let _ = inner.events.send(Arc::new(event));
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type BatchResult = (Vec<Result<Outcome, StoreError>>, Vec<WatchEvent>);

/// Applies a batch of writes in one durable transaction. An error of the transaction itself
/// (I/O, ...) fails the whole batch and writes nothing; a failed precondition fails only its
/// own write.
fn apply_batch(inner: &Inner, requests: Vec<(String, Expect, WriteKind)>) -> Result<BatchResult, StoreError> {
    let label = inner.label.as_str();
    let io = |e: redb::StorageError| map_redb(label, "writing", e);
    let txn = begin_durable(&inner.db, label)?;
    let mut results = Vec::with_capacity(requests.len());
    let mut events = Vec::new();
    {
        let mut meta = txn.open_table(META).map_err(|e| map_redb(label, "writing", e))?;
        let mut kv = txn.open_table(KV).map_err(|e| map_redb(label, "writing", e))?;
        let start = meta.get(META_REVISION).map_err(io)?.map(|g| g.value()).unwrap_or(0);
        let mut revision = start;
        for (key, expect, kind) in requests {
            let current = match kv.get(key.as_str()).map_err(io)? {
                Some(raw) => match decode(label, &key, raw.value()) {
                    Ok(record) => Some(record),
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                },
                None => None,
            };
            if !expect.holds(current.as_ref().map(|r| r.revision)) {
                results.push(Err(StoreError::Conflict { key }));
                continue;
            }
            match kind {
                WriteKind::Put { value } => {
                    revision += 1;
                    let created = current.as_ref().map_or(revision, |r| r.created);
                    kv.insert(key.as_str(), encode(revision, created, &value).as_slice()).map_err(io)?;
                    results.push(Ok(Outcome::Put { revision, created: current.is_none() }));
                    events.push(WatchEvent::Put { key, value, revision, created: current.is_none() });
                }
                WriteKind::Delete => match current {
                    None => results.push(Ok(Outcome::Delete { previous: None })),
                    Some(record) => {
                        revision += 1;
                        kv.remove(key.as_str()).map_err(io)?;
                        events.push(WatchEvent::Delete { key, previous: Some(record.value.clone()), revision });
                        results.push(Ok(Outcome::Delete {
                            previous: Some(Versioned { value: record.value, revision: record.revision }),
                        }));
                    }
                },
            }
        }
        if revision != start {
            meta.insert(META_REVISION, revision).map_err(io)?;
        }
    }
    txn.commit().map_err(|e| map_redb(label, "committing to", e))?;
    Ok((results, events))
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let inner = &self.inner;
        let label = inner.label.as_str();
        let txn = inner.db.begin_read().map_err(|e| map_redb(label, "reading", e))?;
        let kv = txn.open_table(KV).map_err(|e| map_redb(label, "reading", e))?;
        let found = kv.get(key).map_err(|e| map_redb(label, "reading", e))?;
        match found {
            Some(raw) => {
                let record = decode(label, key, raw.value())?;
                Ok(Some(Versioned { value: record.value, revision: record.revision }))
            }
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<(Revision, bool), StoreError> {
        match self.write(key, expect, WriteKind::Put { value }).await? {
            Outcome::Put { revision, created } => Ok((revision, created)),
            Outcome::Delete { .. } => Err(StoreError::Backend("put answered as a delete".into())),
        }
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Versioned>, StoreError> {
        match self.write(key, expect, WriteKind::Delete).await? {
            Outcome::Delete { previous } => Ok(previous),
            Outcome::Put { .. } => Err(StoreError::Backend("delete answered as a put".into())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        // Most lists are short (clusters, networks): read inline. One that turns out
        // longer is read again, whole, on a blocking thread.
        if let Some(short) = list_in(&self.inner, prefix, Some(INLINE_LIST_LIMIT))? {
            return Ok(short);
        }
        let prefix = prefix.to_owned();
        self.read(move |inner| list_in(inner, &prefix, None).map(Option::unwrap_or_default)).await
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        // Subscribed before returning: every write committed from now on is seen.
        let mut events = self.inner.events.subscribe();
        let prefix = prefix.to_owned();
        let label = self.inner.label.clone();
        let (tx, stream) = WatchStream::channel(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = tx.closed() => return,
                    r = events.recv() => r,
                };
                match received {
                    Ok(event) => {
                        if event.key().starts_with(prefix.as_str()) && tx.send(Ok((*event).clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = tx
                            .send(Err(StoreError::WatchLost(format!(
                                "{label}: watch {prefix} fell {missed} events behind; list and watch again"
                            ))))
                            .await;
                        return;
                    }
                    // The store was dropped.
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(stream)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|inner| {
            let txn = inner.db.begin_read().map_err(|e| map_redb(&inner.label, "reading", e))?;
            txn.open_table(META).map_err(|e| map_redb(&inner.label, "reading", e))?;
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("redb {}", self.inner.label)
    }
}
