//! How services reach managed hosts: SSH, no agent on the host.
//!
//! - [`quote`]: remote command lines built from an argv, every value quoted ([`Command`]).
//! - [`ssh`]: [`SshTransport`] on russh — private keys from memory only, connection reuse,
//!   connect and command timeouts, a global bound on concurrent sessions, host keys pinned on
//!   first contact, `sudo` for users other than root.

pub mod quote;
pub mod ssh;

pub use quote::{Command, shell_quote};
pub use ssh::{CommandOutput, HostTarget, SshConfig, SshTransport, TransportError};
