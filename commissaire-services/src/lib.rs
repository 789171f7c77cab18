//! Commissaire back-end services.
