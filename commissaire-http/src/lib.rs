//! Commissaire's REST server: the `/api/v0` routes ([`api`]) behind
//! authentication ([`auth`]) and optional TLS ([`tls`]), served by [`server`],
//! configured by [`settings`]; [`allinone`] runs it with every service in one
//! process.

pub mod allinone;
pub mod api;
pub mod auth;
pub mod events;
pub mod router;
pub mod server;
pub mod settings;
pub mod tls;
