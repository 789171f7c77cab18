//! commctl, Commissaire's command line client, as a library: the command
//! line ([`cli`]), the configuration ([`config`]), the HTTP client with
//! endpoint fallback ([`client`]), output ([`output`]), the event-stream
//! parser ([`sse`]) and live operation view ([`progress`], [`watch`]),
//! cloud-init user-data ([`userdata`]) and `host ssh` ([`ssh`]).

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
