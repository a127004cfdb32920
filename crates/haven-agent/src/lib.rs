//! haven-agent: the daemon that runs on every host.
//!
//! It serves cluster RPC and the operator API over HTTP (axum), keeps the
//! Raft state on managers (haven-consensus), heartbeats the coordinator to
//! hold its lease, supervises its workloads (haven-drivers), and, on the Raft
//! leader, runs the coordinator. Every decision is made by haven-core; this
//! crate performs them.

pub mod api;
pub mod auth;
pub mod child;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod credential;
pub mod datadir;
pub mod datastore;
pub mod fence;
pub mod heartbeat;
pub mod lane;
pub mod logs;
pub mod node;
pub mod notify;
pub mod peer;
pub mod pki;
pub mod probe;
pub mod renew;
pub mod rpc;
pub mod serve;
pub mod server;
pub mod supervisor;
pub mod tokens;
pub mod vm;
pub mod watchdog;

pub use config::{AgentConfig, StartMode};
pub use node::run;
