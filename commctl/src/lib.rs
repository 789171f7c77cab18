//! commctl, Commissaire's command line client, as a library: the command
//! line ([`cli`]), the configuration ([`config`]), the HTTP client with
//! endpoint fallback ([`client`]), output ([`output`]), the event-stream
//! parser ([`sse`]) and live operation view ([`progress`], [`watch`]),
//! cloud-init user-data ([`userdata`]) and `host ssh` ([`ssh`]).

/// `println!` that never panics: output to a closed pipe (`commctl … | head`)
/// is dropped.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln!`]); flushes.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, $($arg)*);
        let _ = stdout.flush();
    }};
}

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod progress;
pub mod sse;
pub mod ssh;
pub mod userdata;
pub mod watch;
