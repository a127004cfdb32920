//! haven-core: the sans-IO decision core of Haven.
//!
//! Pure data and pure functions: the replicated state and its transitions,
//! spec validation, placement, restart policy and failure detection. Time is a
//! value passed in (`now_ms`); nothing here does I/O or depends on tokio.

/// A map keyed by host name on the heartbeat path (ten thousand lookups a
/// second at 1,000 hosts): one hash and one key comparison, where a
/// `BTreeMap<String, _>` compares a dozen keys behind as many pointers.
/// The hash has no random seed, so the simulator replays exactly; its order
/// is not sorted, so nothing that comes out in map order uses it.
pub type HostMap<V> = rustc_hash::FxHashMap<String, V>;

pub mod assignments;
pub mod changes;
pub mod coordinator;
pub mod coordinator_machine;
pub mod datastore;
pub mod events;
pub mod host_agent;
pub mod liveness;
pub mod logs;
pub mod model;
pub mod placement;
pub mod probe;
pub mod restart;
pub mod settings;
pub mod spec;
pub mod state;
pub mod timefmt;
pub mod tokens;
pub mod vm_monitor;
