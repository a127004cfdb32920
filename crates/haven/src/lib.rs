//! The `haven` binary's library half: CLI, demo and the local cluster
//! launcher the integration tests share with the demo.

pub mod benchscale;
pub mod cli;
pub mod demo;
pub mod localcluster;
pub mod notify;
pub mod token;
pub use haven_core::timefmt;
