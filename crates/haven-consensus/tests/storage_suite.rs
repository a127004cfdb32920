//! Runs openraft's own storage test suite against the redb store.

use haven_consensus::store::{LogStore, StateMachineStore, Store};
use haven_consensus::TypeConfig;
use haven_core::model::NodeId;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

/// Each suite case gets a fresh store in its own temp dir; the dir is the
/// guard value the suite keeps alive for the case and drops afterwards.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        // A batch budget of one byte: every read of a range returns one
        // entry, which the suite must accept (`limited_get_log_entries`).
        let store =
            Store::open(dir.path(), 1).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, store.log, store.state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    // Not run inside a tokio runtime: the suite starts one per case.
    if let Err(e) = Suite::test_all(RedbStoreBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
