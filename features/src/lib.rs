//! Support for Commissaire's behaviour suite (`tests/features.rs`): starting the
//! real binaries as separate processes ([`stack`]), a small HTTP client for the
//! steps ([`client`]) and the pool of sshd test hosts ([`test_hosts`]). The scenarios themselves are the `.feature` files in
//! `features/`.

pub mod client;
pub mod commctl;
pub mod stack;
pub mod test_hosts;
