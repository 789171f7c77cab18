//! A JSON file that is re-read when it changes (checked at most once per interval).
//!
//! A change is noticed from the file's modification time, size and inode. Because
//! file times are only as fine as the kernel's clock tick, a file whose modification
//! time is very recent may still be rewritten within the same tick without any of
//! these changing; such a file is re-read (and its contents' digest compared) on each
//! check until its modification time is old enough to be trusted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::AuthConfigError;

/// A modification time closer than this to the time of the check is not trusted.
const RACY_WINDOW: Duration = Duration::from_secs(2);

type Parser<T> = Box<dyn Fn(&[u8]) -> Result<T, String> + Send + Sync>;

/// What identifies a version of the file: modification time, size and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

impl Stamp {
    fn is_racy(&self) -> bool {
        match self.modified.map(|m| SystemTime::now().duration_since(m)) {
            Some(Ok(age)) => age < RACY_WINDOW,
            // Unknown or in the future: never trust it.
            _ => true,
        }
    }
}

struct State<T> {
    current: Arc<T>,
    stamp: Option<Stamp>,
    digest: [u8; 32],
    last_check: Instant,
}

pub(crate) struct Reloadable<T> {
    path: PathBuf,
    kind: &'static str,
    parse: Parser<T>,
    check_interval: Duration,
    state: Mutex<State<T>>,
}

impl<T> Reloadable<T> {
    /// Reads the file now; any problem is an error naming the file.
    pub(crate) fn load(
        path: PathBuf,
        kind: &'static str,
        check_interval: Duration,
        parse: Parser<T>,
    ) -> Result<Self, AuthConfigError> {
        let file_err = |reason: String| AuthConfigError::File { kind, path: path.display().to_string(), reason };
        let st = stamp(&path).map_err(|e| file_err(e.to_string()))?;
        let bytes = std::fs::read(&path).map_err(|e| file_err(e.to_string()))?;
        let value = parse(&bytes).map_err(file_err)?;
        let digest = Sha256::digest(&bytes).into();
        Ok(Reloadable {
            kind,
            parse,
            check_interval,
            state: Mutex::new(State { current: Arc::new(value), stamp: Some(st), digest, last_check: Instant::now() }),
            path,
        })
    }

    /// The current contents, and whether they were (re)loaded by this call. When the
    /// file changed but cannot be read or parsed, the previous contents stay in use
    /// and a warning is logged.
    pub(crate) fn current(&self) -> (Arc<T>, bool) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(st.last_check) < self.check_interval {
            return (st.current.clone(), false);
        }
        st.last_check = now;
        let new_stamp = match stamp(&self.path) {
            Ok(s) => Some(s),
            Err(e) => {
                if st.stamp.is_some() {
                    tracing::warn!(
                        file = %self.path.display(),
                        error = %e,
                        "cannot read the {}; keeping the previous contents",
                        self.kind
                    );
                }
                st.stamp = None;
                return (st.current.clone(), false);
            }
        };
        if new_stamp == st.stamp && !new_stamp.as_ref().is_some_and(Stamp::is_racy) {
            return (st.current.clone(), false);
        }
        st.stamp = new_stamp;
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    file = %self.path.display(),
                    error = %e,
                    "cannot read the {}; keeping the previous contents",
                    self.kind
                );
                return (st.current.clone(), false);
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest == st.digest {
            return (st.current.clone(), false);
        }
        // Remember the new version even if it turns out broken: it is reported once,
        // and the next change is picked up.
        st.digest = digest;
        match (self.parse)(&bytes) {
            Ok(value) => {
                tracing::info!(file = %self.path.display(), "reloaded the {}", self.kind);
                st.current = Arc::new(value);
                (st.current.clone(), true)
            }
            Err(e) => {
                tracing::warn!(
                    file = %self.path.display(),
                    error = %e,
                    "the {} changed but is invalid; keeping the previous contents",
                    self.kind
                );
                (st.current.clone(), false)
            }
        }
    }
}
