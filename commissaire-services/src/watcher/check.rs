//! The check itself: [`HostCheck`], and [`SshCheck`], which logs in over SSH
//! with the host's credentials and pinned host key and runs `true`.

use async_trait::async_trait;
use commissaire_core::model::{Host, HostCreds};

use crate::{
    investigator::host_target,
    transport::{Command, SshTransport},
};

/// Whether a host answers. `Err` carries the reason, for the host's `reason`.
#[async_trait]
pub trait HostCheck: Send + Sync {
    async fn check(&self, host: &Host, creds: &HostCreds) -> Result<(), String>;
}

/// The fixed command run on the host: nothing from the API reaches the shell.
const CHECK_COMMAND: &str = "true";

/// Logs in over SSH (as the credentials' user, with the host key pinned at
/// investigation) and runs `true`. A host key that changed is a failure whose
/// reason says so; the connection is reused between checks by the transport.
#[derive(Clone)]
pub struct SshCheck {
    ssh: SshTransport,
}

impl SshCheck {
    pub fn new(ssh: SshTransport) -> Self {
        Self { ssh }
    }
}

#[async_trait]
impl HostCheck for SshCheck {
    async fn check(&self, host: &Host, creds: &HostCreds) -> Result<(), String> {
        let target = host_target(host, creds)?;
        match self.ssh.run(&target, &Command::script(CHECK_COMMAND)).await {
            Ok(output) if output.success() => Ok(()),
            Ok(output) => Err(format!(
                "the check command failed on the host (exit {:?}): {}",
                output.exit_status,
                output.stderr.trim()
            )),
            // A changed host key says so (and that nothing was sent); an
            // unreachable host, a refused key or a timeout likewise name themselves.
            Err(err) => Err(err.to_string()),
        }
    }
}
