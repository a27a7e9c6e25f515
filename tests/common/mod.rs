//! The test databases, for the test binaries that include this file with `#[path]`: the
//! helpers themselves live in the test kit (`patchbay_testkit::db`).
#![allow(unused_imports)]

pub use patchbay_testkit::db::*;
