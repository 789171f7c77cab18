//! Support for Commissaire's behaviour suite (`tests/features.rs`): starting the
//! real binaries as separate processes ([`stack`]) and a small HTTP client for the
//! steps ([`client`]). The scenarios themselves are the `.feature` files in
//! `features/`.

pub mod client;
pub mod stack;
