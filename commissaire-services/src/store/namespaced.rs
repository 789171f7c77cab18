//! A store seen under a namespace: every key is prefixed on the way in and
//! stripped on the way out. Lets several deployments (or test runs) share one
//! etcd without seeing each other's `/commissaire/` tree (handler member
//! `namespace`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Expect, Revision, Store, StoreError, Versioned, WatchEvent, WatchStream};

pub struct Namespaced {
    inner: Arc<dyn Store>,
    namespace: String,
}

impl Namespaced {
    /// `namespace` is prefixed as given (e.g. `/staging`), without a trailing `/`.
    pub fn new(inner: Arc<dyn Store>, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into().trim_end_matches('/').to_string();
        Self { inner, namespace }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn strip(&self, key: &str) -> String {
        key.strip_prefix(&self.namespace).unwrap_or(key).to_string()
    }
}

#[async_trait]
impl Store for Namespaced {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(&self.full(key)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<(Revision, bool), StoreError> {
        self.inner.put(&self.full(key), value, expect).await.map_err(|e| self.unprefix_error(e))
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Versioned>, StoreError> {
        self.inner.delete(&self.full(key), expect).await.map_err(|e| self.unprefix_error(e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let entries = self.inner.list(&self.full(prefix)).await?;
        Ok(entries.into_iter().map(|(k, v)| (self.strip(&k), v)).collect())
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let mut inner = self.inner.watch(&self.full(prefix)).await?;
        let (tx, stream) = WatchStream::channel(256);
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            let strip = |key: String| key.strip_prefix(&namespace).map(str::to_string).unwrap_or(key);
            while let Some(item) = inner.next().await {
                let item = item.map(|event| match event {
                    WatchEvent::Put { key, value, revision, created } => {
                        WatchEvent::Put { key: strip(key), value, revision, created }
                    }
                    WatchEvent::Delete { key, previous, revision } => {
                        WatchEvent::Delete { key: strip(key), previous, revision }
                    }
                });
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(stream)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn describe(&self) -> String {
        format!("{} (namespace {})", self.inner.describe(), self.namespace)
    }
}

impl Namespaced {
    fn unprefix_error(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Conflict { key } => StoreError::Conflict { key: self.strip(&key) },
            other => other,
        }
    }
}
