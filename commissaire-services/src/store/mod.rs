//! The store layer: a key-value store with revisions, on which the storage service keeps
//! Commissaire's models (`/commissaire/hosts/<address>`, `/commissaire/cluster/<name>/restart`,
//! ...; values are JSON bytes).
//!
//! Two implementations share one contract, [`Store`], and one conformance suite
//! (`tests/store_conformance.rs`):
//! * [`etcd::EtcdStore`]: etcd v3 (the production back end, shared by several servers);
//! * [`embedded::EmbeddedStore`]: a durable single-node store in one redb file, for a single
//!   server without etcd.
//!
//! # Revisions
//! Every existing key has a [`Revision`] > 0 that changes on every write to that key (it is
//! etcd's `mod_revision`, or the embedded store's global counter at the time of the write).
//! Revisions only grow, so a larger revision of the same key is a newer value. A read-modify-write
//! cycle uses the revision it read as the precondition of its write, [`Expect::Revision`], and
//! retries on [`StoreError::Conflict`]: no update is lost.

pub mod embedded;
pub mod etcd;
pub mod namespaced;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// The revision of a key: > 0 for an existing key, changes on every write to it.
pub type Revision = u64;

/// A value with the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// The precondition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Always holds.
    Any,
    /// Holds while the key does not exist (create only).
    Absent,
    /// Holds while the key exists with exactly this revision. `Revision(0)` is the revision
    /// of a key that does not exist, so it means the same as [`Expect::Absent`].
    Revision(Revision),
}

impl Expect {
    /// Whether the precondition holds for a key whose current revision is `current`
    /// (`None`: the key does not exist).
    pub fn holds(self, current: Option<Revision>) -> bool {
        match (self, current) {
            (Expect::Any, _) => true,
            (Expect::Absent | Expect::Revision(0), None) => true,
            (Expect::Absent | Expect::Revision(0), Some(_)) => false,
            (Expect::Revision(want), Some(have)) => want == have,
            (Expect::Revision(_), None) => false,
        }
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written; `created` is true if it did not exist before this write.
    Put { key: String, value: Vec<u8>, revision: Revision, created: bool },
    /// The key was deleted, at `revision`; `previous` is the value it had (etcd leaves it out
    /// if its history was already compacted).
    Delete { key: String, previous: Option<Vec<u8>>, revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put { revision, .. } | WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// Errors of the store layer. The messages are meant for an operator: they say which
/// endpoint or file is concerned and what to do where that is clear.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The precondition of a write did not hold; nothing was written.
    #[error(
        "conflict on {key}: it was changed concurrently (or its existence differs from what was expected); re-read and retry"
    )]
    Conflict { key: String },
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the credentials or the operation.
    #[error("store access denied: {0}")]
    Denied(String),
    /// Stored data could not be decoded, or the file is damaged.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// Reading or writing the store's file failed (disk full, I/O error, ...).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The store's file is already open, by another process or another handle in this one.
    #[error("store file locked: {0}")]
    Locked(String),
    /// The store configuration is unusable (bad endpoint URL, unreadable certificate, ...).
    #[error("store configuration error: {0}")]
    Config(String),
    /// A key or value the store cannot take (empty key, ...).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// A watch missed changes (its history was compacted, or its reader fell too far
    /// behind); the watcher must re-read (list) and watch again.
    #[error("watch lost events: {0}")]
    WatchLost(String),
    /// Any other error reported by the back end.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The changes under a prefix, in order. Dropping it ends the watch.
///
/// Each item is an event, or an error after which the stream ends (events were lost, or the
/// watch could not be kept up): the watcher should then list the prefix and watch again.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl WatchStream {
    /// A stream fed by an implementation through `tx`. The feeder should stop when
    /// `tx.is_closed()` (the stream was dropped).
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<WatchEvent, StoreError>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, WatchStream { rx })
    }

    /// The next event; `None` once the watch has ended (the store was dropped, or an error
    /// was returned just before).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.rx.recv().await
    }
}

/// A key-value store with revisions. See the module documentation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The value of `key` and its revision, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes if `expect` holds; returns the new revision and whether the key was created.
    /// A failed precondition is [`StoreError::Conflict`] (nothing written).
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<(Revision, bool), StoreError>;

    /// Deletes if `expect` holds; returns the previous value (`None` if the key did not exist
    /// and `expect` was `Any` or `Absent`). A failed precondition is [`StoreError::Conflict`].
    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Versioned>, StoreError>;

    /// Every key under `prefix` (a plain string prefix; `""` is every key), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// The changes under `prefix` from now on, in order: every write that completes after
    /// this call returned is seen.
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError>;

    /// A cheap round trip proving the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A short description for logs, e.g. `etcd http://127.0.0.1:2379` or `redb /var/lib/x.redb`.
    fn describe(&self) -> String;
}

/// Whether `key` is under `prefix` (a plain string prefix, as [`Store::list`] and
/// [`Store::watch`] use it).
pub fn key_prefix_matches(prefix: &str, key: &str) -> bool {
    key.starts_with(prefix)
}

/// Keys must be non-empty; etcd refuses an empty key, so the embedded store does too.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("the key is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_holds() {
        assert!(Expect::Any.holds(None));
        assert!(Expect::Any.holds(Some(3)));
        assert!(Expect::Absent.holds(None));
        assert!(!Expect::Absent.holds(Some(1)));
        assert!(Expect::Revision(0).holds(None));
        assert!(!Expect::Revision(0).holds(Some(1)));
        assert!(Expect::Revision(4).holds(Some(4)));
        assert!(!Expect::Revision(4).holds(Some(5)));
        assert!(!Expect::Revision(4).holds(None));
    }

    #[test]
    fn prefix() {
        assert!(key_prefix_matches("/a/", "/a/b"));
        assert!(!key_prefix_matches("/a/", "/ab"));
        assert!(key_prefix_matches("", "/x"));
    }
}
