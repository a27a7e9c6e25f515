//! # patchbay-testkit
//!
//! What patchbay's tests and examples share, in one place (a dev-dependency only, never
//! shipped):
//! - [`app`]: the whole server, running in-process on real ports ([`app::spawn_app`]);
//! - [`db`]: real databases to run it on (a temp SQLite file, a fresh PostgreSQL database);
//! - [`wait`]: waiting for a condition instead of sleeping ([`wait::eventually`]);
//! - [`phone_ua`]: a minimal SIP phone that dials in, sends a tone and keeps what it hears;
//! - [`rules`]: subscription rules as tests write them;
//! - [`rtc`]: the str0m mechanics of a browser-like device, whatever its transport;
//! - [`browser`]: the browser-like device of the in-memory media tests, sending the
//!   synthetic [`frames`].
#![warn(missing_docs)]
#![allow(clippy::disallowed_methods)] // the test kit runs servers, phones and clocks for tests

pub mod app;
pub mod browser;
pub mod db;
pub mod frames;
pub mod phone_ua;
pub mod rtc;
pub mod rules;
pub mod wait;
