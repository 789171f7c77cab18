//! Commissaire's back-end services. Each service is a [`commissaire_core::bus::Handler`]
//! served on its shared queue; the binaries in `src/bin` wire one up with the
//! common flags of [`runner`].

pub mod clusterexec;
pub mod containermgr;
pub mod investigator;
pub mod metrics_http;
pub mod playbook;
pub mod runner;
pub mod storage;
pub mod store;
pub mod transport;
pub mod watcher;
pub mod webhooks;
