//! The forwarding compiler: "who hears and sees whom", as a pure function.
//!
//! `compile(&SessionState) -> ForwardingTable` turns a session's membership, its members'
//! subscription rules and the streams they publish into the exact set of routes the media plane
//! must forward, each labelled with the rule that caused it. `diff(old, new)` gives the change
//! between two tables and `TableDiff::apply` replays it, so the media plane only ever receives
//! differences. No I/O, no clock, no randomness: the same input (in any order) gives the same
//! table, and this module is the most tested one of the crate.
//!
//! Rules (reference §1.6 and §10):
//! - only members of the session route, as publishers and as subscribers;
//! - nobody receives their own streams, even with a session-wide subscription;
//! - a non-empty participant list overrides `sessionId`; a list entry with stream aliases only
//!   routes that publisher's streams carrying one of those aliases (an unaliased stream never
//!   matches a non-empty list);
//! - a stream carries only the media kinds its publisher is permitted to publish; a stream left
//!   with none does not route.

mod compile;
mod table;

pub use compile::{compile, Member, PublishedStream, SessionState};
pub use table::{
    Cause, ForwardingTable, Link, LinkKey, MapDiff, Route, RouteKey, SortedMap, TableDiff,
};
