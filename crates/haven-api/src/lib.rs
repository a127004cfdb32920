//! haven-api: the types of Haven's HTTP API, one module per version.
//!
//! What the CLI, the test bed and the benchmarks send and receive: request
//! and response bodies, and events as a kind with fields (the sentence a
//! human reads is derived from the kind, never parsed). Separate from what
//! the replicated state persists (`haven-core`): the agent converts at its
//! edge. Plain data, serde only.

pub mod v1;
