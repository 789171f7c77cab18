//! Commissaire back-end services.
pub mod store;
