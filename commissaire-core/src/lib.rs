//! Shared library of Commissaire: the data models, JSON-RPC 2.0 types, the
//! message bus (AMQP, Redis and in-process backends) and encryption of secrets at
//! rest. The server, the services and `commctl` depend on this crate and never on
//! each other.

pub mod bus;
pub mod config;
pub mod jsonrpc;
pub mod metrics;
pub mod model;
pub mod secrets;
pub mod storage_client;
pub mod timestamp;
