//! The native playbook engine: the project's playbooks (`playbooks/` at the repository root,
//! Ansible's YAML, runnable unchanged with `ansible-playbook`) executed over the SSH transport,
//! without Python or Ansible on either side.
//!
//! - [`Playbook::load`] reads a playbook and checks it against the supported subset before
//!   any host is touched: plays with `hosts: all`, `gather_facts: no`, `become`, `vars`,
//!   `serial`; tasks with `name`, `when`, `register`, `ignore_errors`, `changed_when`,
//!   `failed_when`; modules `command`, `shell`, `copy`, `template`, `file` (directories),
//!   `stat`, `service`/`systemd`, `package`, `reboot`, `fail`, `debug`, `set_fact`, `ping`.
//!   Anything else is a [`PlaybookError::Unsupported`] naming the file, play, task and key.
//! - [`PlaybookRunner::run`] runs it on one [`HostTarget`] with extra variables and returns a
//!   [`PlaybookReport`] (every task: ok, changed, skipped or failed, with a message). The
//!   runner is cheap to clone and keeps no state between runs, so one runner and one loaded
//!   playbook serve many hosts at once.
//! - [`os`]: the OS table (package manager, packages, paths, services, upgrade command) and
//!   the bootstrap variables built from a host, its network and the deployment's settings.
//!
//! No value reaches a remote shell unquoted: commands are argv lists of [`crate::transport::Command`],
//! fixed scripts take values as positional parameters, file contents travel base64-encoded
//! as parameters, `command` lines may not hold templates (values go in `argv`), and `{{ }}`
//! inside a `shell` script must end with `| quote`. Errors carry the host's stderr, never key
//! material. See `docs/playbooks.md`.

pub mod jinja;
pub mod load;
pub mod os;
pub mod run;

use std::path::PathBuf;

pub use load::{Play, Playbook};
pub use os::{BootstrapSettings, DockerRegistry, OsError, OsSupport, PackageManager, bootstrap_vars};
pub use run::{PlaybookReport, PlaybookRunner, RunnerConfig, TaskReport, TaskStatus};

use crate::transport::TransportError;

/// Why a playbook could not be loaded or did not complete on a host.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    #[error("cannot read playbook {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    /// The playbook uses something outside the engine's subset, or has a syntax error in a
    /// template or condition. Nothing ran.
    #[error("{path}: {location}: {message}")]
    Unsupported { path: PathBuf, location: String, message: String },
    /// A task failed on the host (and was not `ignore_errors`).
    #[error("task {task:?} failed on {host}: {message}{}", stderr_suffix(stderr))]
    TaskFailed { host: String, task: String, message: String, stderr: String, report: Box<PlaybookReport> },
    /// The host could not be reached (or the connection failed) while running a task.
    #[error("task {task:?}: {source}")]
    Unreachable { host: String, task: String, source: Box<TransportError>, report: Box<PlaybookReport> },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() { String::new() } else { format!(" (stderr: {})", stderr.trim()) }
}

impl PlaybookError {
    /// The report of the tasks that ran before the failure (runs that started).
    pub fn report(&self) -> Option<&PlaybookReport> {
        match self {
            PlaybookError::TaskFailed { report, .. } | PlaybookError::Unreachable { report, .. } => Some(report),
            _ => None,
        }
    }

    /// The task that failed, if a run started.
    pub fn task(&self) -> Option<&str> {
        match self {
            PlaybookError::TaskFailed { task, .. } | PlaybookError::Unreachable { task, .. } => Some(task),
            _ => None,
        }
    }
}
