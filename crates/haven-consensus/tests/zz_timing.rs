use haven_consensus::store::{LogStore, StateMachineStore, Store};
use haven_consensus::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use std::time::Instant;
struct B;
impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for B {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), openraft::StorageError<u64>> {
        let dir = tempfile::TempDir::new().unwrap();
        let s = Store::open(dir.path()).unwrap();
        Ok((dir, s.log, s.state_machine))
    }
}
type S = Suite<TypeConfig, LogStore, StateMachineStore, B, tempfile::TempDir>;
macro_rules! t { ($($f:ident),*) => { $( {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t0 = Instant::now();
    rt.block_on(async { let (_g, l, s) = B.build().await.unwrap(); S::$f(l, s).await.unwrap(); });
    eprintln!("{:40} {:?}", stringify!($f), t0.elapsed());
} )* } }
#[test]
fn timing() {
    t!(last_membership_in_log, get_membership_from_log_gt_sm_last_applied_2, get_initial_state_log_ids, get_initial_state_re_apply_committed, get_log_entries, get_log_state, apply_multiple, snapshot_meta, last_membership_in_log_multi_step);
    let t0 = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(S::transfer_snapshot(&B)).unwrap();
    eprintln!("transfer {:?}", t0.elapsed());
}
