//! What can go wrong, and the exit status each kind gives.

/// An error of commctl. [`Error::exit_code`] maps it to the process's exit
/// status: 2 for a usage error, 1 for anything the server or the network did.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line, the configuration file or a file named on the command
    /// line is wrong: nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// No endpoint could be reached.
    #[error("no server could be reached; tried: {}", tried.join(", "))]
    Unreachable { tried: Vec<String>, last: String },
    /// The server answered with an error status.
    #[error("{message} (HTTP {status})")]
    Server { status: u16, message: String },
    /// The connection broke or the answer could not be read.
    #[error("{0}")]
    Transport(String),
    /// An operation followed with `--watch` ended failed or aborted.
    #[error("{0}")]
    OperationFailed(String),
    /// A local step (a file, a child process) failed.
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// The status code when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
