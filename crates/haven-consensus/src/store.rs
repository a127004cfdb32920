//! Raft log and vote in one redb file, the state machine in another.
//!
//! Layout of `<data_dir>/raft-log.redb` (the log's file, version 1):
//! - table `raft_log`: log index (u64) → JSON of `openraft::Entry`;
//! - table `raft_log_meta`: its format version, the vote, the committed log
//!   id and the last purged log id, all JSON.
//!
//! Layout of `<data_dir>/raft.redb` (version 3):
//! - table `raft_meta`: small records, all JSON: the format version, the
//!   rest of the state machine (`state_rest`: [`StateMachineData`], i.e.
//!   `ClusterState` + last applied log id + last membership, without the
//!   keyed collections below) and the current snapshot (meta and data under
//!   two keys);
//! - the keyed collections of the state, one JSON record per key:
//!   `state_hosts` and `state_workloads` (by name), `state_staged` (by
//!   apply id), `state_cluster_events` and `state_workload_events` (by
//!   sequence number). A write of the state writes the records that changed
//!   since the last one (`haven_core::changes`) and the rest record, in one
//!   transaction: it costs what changed, not what exists.
//!
//! Two files because redb has one writer at a time per file: a log append
//! (which the Raft core waits for) must never queue behind a write of the
//! state's records. Layouts 1 and 2 of `raft.redb` held the log, the vote
//! and the log ids too: opening one copies them to `raft-log.redb` (whole,
//! durably), then drops them from `raft.redb` in the transaction that says
//! layout 3; a crash in between copies again at the next open.
//!
//! Durability: everything openraft must find on disk after a crash is
//! committed with redb's `Durability::Immediate` (fsync) before the call
//! returns or, for `append`, before the flush callback fires: vote, log
//! appends, truncation, purge and snapshots. The applied state machine
//! records are a cache of the log, written (durably) at most once per
//! `STATE_RECORD_INTERVAL_MS`: a restart re-applies the committed entries
//! above it, which the log keeps until a persisted snapshot covers them
//! (openraft purges only up to the snapshot). The committed log id uses
//! `Durability::Eventual`: it is an optimisation (committed entries get
//! re-applied at startup without waiting for the leader) and losing its
//! latest value is harmless. redb persists commits in order, so a durable
//! commit also makes every earlier eventual one durable.
//!
//! All redb calls run on tokio's blocking pool because a commit waits for
//! fsync and must not stall the async workers that carry heartbeats.

use crate::error::ConsensusError;
use crate::{TypeConfig, RAFT_DB_FILE, RAFT_LOG_FILE};
use haven_core::changes::{records, Changes, Record};
use haven_core::model::HostRecord;
use haven_core::model::NodeId;
use haven_core::state::{ClusterState, CommandResult, Event, Keyed, StagedApply, WorkloadRecord};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use redb::{
    Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, TableError,
    TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fmt::Display;
use std::io::Cursor;
use std::ops::Deref;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// In `raft-log.redb` (in `raft.redb` up to layout 2).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `raft-log.redb`'s small records: its format version, the vote, the
/// committed and the last purged log ids.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
/// `raft.redb`'s small records.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("state_hosts");
const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("state_workloads");
const STAGED: TableDefinition<&str, &[u8]> = TableDefinition::new("state_staged");
/// Cluster events, then workload events, by sequence number.
const EVENTS: [TableDefinition<u64, &[u8]>; 2] = [
    TableDefinition::new("state_cluster_events"),
    TableDefinition::new("state_workload_events"),
];

const KEY_FORMAT_VERSION: &str = "format_version";
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
/// Layout 1 only: the whole state machine as one record (migrated).
const KEY_STATE_MACHINE: &str = "state_machine";
const KEY_STATE_REST: &str = "state_rest";
const KEY_SNAPSHOT_META: &str = "snapshot_meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot_data";

/// Version of the layout above; bump on incompatible changes so that an old
/// binary refuses a newer file instead of misreading it. Layout 3 moved the
/// log, the vote and the log ids to `raft-log.redb`.
const FORMAT_VERSION: u64 = 3;
/// Version of `raft-log.redb`'s layout.
const LOG_FORMAT_VERSION: u64 = 1;

/// redb's page cache of `raft.redb`. The default (1 GiB) is sized for big
/// databases; ours holds a few records per host and workload, read once at
/// open and then only written.
const DB_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// redb's page cache of `raft-log.redb`: a bounded log whose recent entries
/// are read back for replication.
const LOG_DB_CACHE_BYTES: usize = 16 * 1024 * 1024;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The replicated state machine as persisted (and as shipped in snapshots).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub state: ClusterState,
}

/// The applied state, shared between the state machine task (writer) and
/// readers such as `Consensus::read`. A blocking lock, never held across an
/// await point, and fair (parking_lot's): the writer hands it to waiting
/// readers between two entries (`RwLockWriteGuard::bump`), so a reader on
/// an async worker (the heartbeat handler) waits for at most one entry's
/// apply, and a stream of readers cannot starve the writer either.
#[derive(Clone, Debug, Default)]
pub struct SharedState(Arc<RwLock<StateMachineData>>);

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachineData> {
        self.0.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, StateMachineData> {
        self.0.write()
    }
}

/// An opened store (`raft.redb` and `raft-log.redb`): the two halves
/// openraft drives, and a way to learn when the files are closed again.
pub struct Store {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub closed: DbClosed,
}

/// The database and a signal that fires once it is closed.
struct DbHandle {
    // Fields drop in order: the database (final commit, file unlocked)
    // strictly before the sender, whose drop is the "closed" signal.
    // Watching the `Arc`'s strong count instead would race with the drop.
    db: Database,
    _closed: Arc<watch::Sender<()>>,
}

impl Deref for DbHandle {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Resolves once every handle on both databases is gone and the files are
/// closed (and unlocked), e.g. after openraft's tasks ended.
#[derive(Clone)]
pub struct DbClosed(watch::Receiver<()>);

impl DbClosed {
    /// Wait at most `timeout`; returns whether the database is closed.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let mut rx = self.0.clone();
        // `changed` fails once the sender is dropped; nothing is ever sent.
        tokio::time::timeout(timeout, async { while rx.changed().await.is_ok() {} })
            .await
            .is_ok()
    }
}

impl Store {
    /// Open (or create) `<data_dir>/raft.redb` and `<data_dir>/raft-log.redb`
    /// and load the state machine.
    ///
    /// Fails with [`ConsensusError::DataDirInUse`] if another process (or
    /// another `Store` in this one) holds the file, and with
    /// [`ConsensusError::Corrupt`] if the file is not a readable database of
    /// ours; in that case nothing has been written to it.
    /// `batch_bytes_max`: the bytes of log entries one replication batch
    /// carries at most (see [`LogStore`]'s `limited_get_log_entries`).
    pub fn open(data_dir: &Path, batch_bytes_max: usize) -> Result<Store, ConsensusError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ConsensusError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let file = data_dir.join(RAFT_DB_FILE);
        let (corrupt, db_err) = (corrupt_in(&file), db_error_in(&file));
        let db = open_db(data_dir, &file, DB_CACHE_BYTES)?;

        // Validate every record before writing anything, so that a file we
        // cannot understand is reported and left as it was.
        let txn = db.begin_read().map_err(|e| db_err(e.into()))?;
        let meta = match txn.open_table(META) {
            Ok(table) => Some(table),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(db_err(e.into())),
        };
        let mut state = StateMachineData::default();
        // Write the state whole before use: it is not (or not only) in the
        // keyed tables.
        let mut rewrite = false;
        // Layouts 1 and 2 kept the log, the vote and the log ids in this
        // file: moved to `raft-log.redb` below.
        let mut legacy_log = false;
        if let Some(meta) = &meta {
            let version: Option<u64> = get_json(meta, KEY_FORMAT_VERSION).map_err(corrupt)?;
            match version {
                // Layout 1 kept the state machine as one record: moved
                // into the keyed tables below, in one transaction.
                Some(1) => {
                    if let Some(sm) = get_json(meta, KEY_STATE_MACHINE).map_err(corrupt)? {
                        state = sm;
                    }
                    rewrite = true;
                    legacy_log = true;
                }
                Some(2) | Some(FORMAT_VERSION) => {
                    if let Some(sm) = load_state(&txn).map_err(corrupt)? {
                        state = sm;
                    }
                    legacy_log = version == Some(2);
                }
                _ => {
                    return Err(corrupt(format!(
                    "layout version {version:?}, this build reads versions 1 to {FORMAT_VERSION}"
                )))
                }
            }
            if legacy_log {
                check_log_records(meta).map_err(corrupt)?;
            }
            let snapshot: Option<SnapshotMeta<NodeId, BasicNode>> =
                get_json(meta, KEY_SNAPSHOT_META).map_err(corrupt)?;
            let snapshot_data: Option<StateMachineData> =
                get_json(meta, KEY_SNAPSHOT_DATA).map_err(corrupt)?;
            match (snapshot, snapshot_data) {
                (Some(snapshot), Some(mut data)) => {
                    // The state machine record and the snapshot are written
                    // by different transactions; should a crash leave the
                    // record behind the snapshot (whose entries may already
                    // be purged from the log), resume from the snapshot.
                    if snapshot.last_log_id > state.last_applied {
                        data.last_applied = snapshot.last_log_id;
                        data.last_membership = snapshot.last_membership;
                        state = data;
                        rewrite = true;
                    }
                }
                (None, None) => {}
                _ => return Err(corrupt("snapshot meta and data do not match".into())),
            }
        }
        if legacy_log {
            check_last_entry(&txn).map_err(corrupt)?;
        }
        let fresh = meta.is_none();
        drop(meta);
        drop(txn);

        // The log's file. It must be there once this file has layout 3:
        // without it the vote and the log are lost.
        let log_file = data_dir.join(RAFT_LOG_FILE);
        let (log_corrupt, log_db_err) = (corrupt_in(&log_file), db_error_in(&log_file));
        if !fresh && !legacy_log && !log_file.exists() {
            return Err(log_corrupt(format!(
                "it is missing, but {} (layout {FORMAT_VERSION}) keeps its vote and log there; nothing was changed",
                file.display()
            )));
        }
        let log_db = open_db(data_dir, &log_file, LOG_DB_CACHE_BYTES)?;
        let log_txn = log_db.begin_read().map_err(|e| log_db_err(e.into()))?;
        // Whether it holds a vote, a purge point or an entry.
        let log_held = match log_txn.open_table(LOG_META) {
            Ok(log_meta) => {
                let version: Option<u64> =
                    get_json(&log_meta, KEY_FORMAT_VERSION).map_err(log_corrupt)?;
                if version != Some(LOG_FORMAT_VERSION) {
                    return Err(log_corrupt(format!(
                        "layout version {version:?}, this build reads version {LOG_FORMAT_VERSION}"
                    )));
                }
                check_log_records(&log_meta).map_err(log_corrupt)?;
                check_last_entry(&log_txn).map_err(log_corrupt)?;
                let entries = match log_txn.open_table(LOG) {
                    Ok(log) => !log.is_empty().map_err(|e| log_db_err(e.into()))?,
                    Err(TableError::TableDoesNotExist(_)) => false,
                    Err(e) => return Err(log_db_err(e.into())),
                };
                let record = |key| log_meta.get(key).map(|v| v.is_some());
                entries
                    || record(KEY_VOTE).map_err(|e| log_db_err(e.into()))?
                    || record(KEY_LAST_PURGED).map_err(|e| log_db_err(e.into()))?
            }
            Err(TableError::TableDoesNotExist(_)) => false,
            Err(e) => return Err(log_db_err(e.into())),
        };
        drop(log_txn);
        if fresh && log_held {
            return Err(corrupt(format!(
                "it is new, but {} holds a vote and log: the state they belong to is lost; nothing was changed",
                log_file.display()
            )));
        }

        if fresh || legacy_log {
            // The log first, whole and durable; then this file says layout
            // 3 and drops its copy. A crash in between leaves layout 2 (or
            // 1), and the next open copies again.
            let legacy = legacy_log
                .then(|| db.begin_read())
                .transpose()
                .map_err(|e| db_err(e.into()))?;
            let version = serde_json::to_vec(&LOG_FORMAT_VERSION).expect("u64 serializes");
            write_txn(&log_db, Durability::Immediate, |txn| {
                let mut log = txn.open_table(LOG)?;
                let mut log_meta = txn.open_table(LOG_META)?;
                log.retain(|_, _| false)?;
                log_meta.retain(|_, _| false)?;
                if let Some(old) = &legacy {
                    copy_legacy_log(old, &mut log, &mut log_meta)?;
                }
                log_meta.insert(KEY_FORMAT_VERSION, version.as_slice())?;
                Ok(())
            })
            .map_err(log_db_err)?;
            drop(legacy);
        }
        if fresh || legacy_log || rewrite {
            // One transaction: the layout version never says 3 before the
            // state is in the keyed tables and the log is gone from here.
            let writes = rewrite
                .then(|| StateWrites::of(&mut state, true))
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?;
            let version = serde_json::to_vec(&FORMAT_VERSION).expect("u64 serializes");
            write_txn(&db, Durability::Immediate, |txn| {
                if legacy_log {
                    txn.delete_table(LOG)?;
                    let mut meta = txn.open_table(META)?;
                    for key in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED] {
                        meta.remove(key)?;
                    }
                }
                if let Some(writes) = &writes {
                    writes.write(txn)?;
                }
                txn.open_table(META)?
                    .insert(KEY_FORMAT_VERSION, version.as_slice())?;
                Ok(())
            })
            .map_err(db_err)?;
        }
        state.state.mark_stored();

        let (closed_tx, closed_rx) = watch::channel(());
        let closed_tx = Arc::new(closed_tx);
        let db = Arc::new(DbHandle {
            db,
            _closed: closed_tx.clone(),
        });
        let log_db = Arc::new(DbHandle {
            db: log_db,
            _closed: closed_tx,
        });
        Ok(Store {
            closed: DbClosed(closed_rx),
            log: LogStore {
                db: log_db,
                file: Arc::new(log_file),
                batch_bytes_max,
                stall_file: (std::env::var(TEST_HOOKS_ENV).as_deref() == Ok("1"))
                    .then(|| Arc::new(data_dir.join(TEST_STALL_LOG_FILE))),
            },
            state_machine: StateMachineStore {
                db,
                file: Arc::new(file),
                state: SharedState(Arc::new(RwLock::new(state))),
                persisted_at: Arc::default(),
                persist_interval: Duration::from_millis(STATE_RECORD_INTERVAL_MS),
                writer: StateWriter::default(),
            },
        })
    }
}

/// `file` is not a readable database of ours, for this reason.
fn corrupt_in(file: &Path) -> impl Fn(String) -> ConsensusError + Copy + '_ {
    move |detail| ConsensusError::Corrupt {
        file: file.to_path_buf(),
        detail,
    }
}

/// A redb error on `file`: corruption said as such, anything else as it is.
fn db_error_in(file: &Path) -> impl Fn(redb::Error) -> ConsensusError + Copy + '_ {
    move |source| match source {
        redb::Error::Corrupted(detail) => corrupt_in(file)(detail),
        source => ConsensusError::Database {
            file: file.to_path_buf(),
            source,
        },
    }
}

/// Open (or create) one of the store's redb files.
fn open_db(data_dir: &Path, file: &Path, cache_bytes: usize) -> Result<Database, ConsensusError> {
    let corrupt = corrupt_in(file);
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(file)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => ConsensusError::DataDirInUse {
                data_dir: data_dir.to_path_buf(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                corrupt("not a redb database (bad file header)".into())
            }
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => corrupt(detail),
            redb::DatabaseError::UpgradeRequired(version) => corrupt(format!(
                "redb file format version {version} is not supported by this build"
            )),
            other => ConsensusError::Database {
                file: file.to_path_buf(),
                source: other.into(),
            },
        })
}

/// The vote and log ids in `meta` decode.
fn check_log_records(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<(), String> {
    get_json::<Vote<NodeId>>(meta, KEY_VOTE)?;
    get_json::<Option<LogId<NodeId>>>(meta, KEY_COMMITTED)?;
    get_json::<LogId<NodeId>>(meta, KEY_LAST_PURGED)?;
    Ok(())
}

/// The last log entry, if any, decodes.
fn check_last_entry(txn: &redb::ReadTransaction) -> Result<(), String> {
    match txn.open_table(LOG) {
        Ok(log) => {
            if let Some((index, value)) = log.last().map_err(|e| e.to_string())? {
                serde_json::from_slice::<Entry<TypeConfig>>(value.value())
                    .map_err(|e| format!("log entry {} is unreadable: {e}", index.value()))?;
            }
            Ok(())
        }
        Err(TableError::TableDoesNotExist(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Copy the log, the vote and the log ids of a layout 1 or 2 `raft.redb`
/// into `raft-log.redb`'s tables, as they are.
fn copy_legacy_log(
    old: &redb::ReadTransaction,
    log: &mut redb::Table<u64, &[u8]>,
    log_meta: &mut redb::Table<&str, &[u8]>,
) -> Result<(), redb::Error> {
    match old.open_table(LOG) {
        Ok(entries) => {
            for item in entries.iter()? {
                let (index, value) = item?;
                log.insert(index.value(), value.value())?;
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match old.open_table(META) {
        Ok(meta) => {
            for key in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED] {
                if let Some(value) = meta.get(key)? {
                    log_meta.insert(key, value.value())?;
                }
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Decode the JSON record under `key`, if any.
fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    let Some(value) = table.get(key).map_err(|e| format!("reading {key}: {e}"))? else {
        return Ok(None);
    };
    serde_json::from_slice(value.value())
        .map(Some)
        .map_err(|e| format!("record {key} is unreadable: {e}"))
}

/// Run `f` in one write transaction committed with `durability`.
fn write_txn(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability);
    f(&txn)?;
    txn.commit()?;
    Ok(())
}

/// A write of the state machine, serialized (under the state lock) and
/// then written in one transaction (after the lock is released).
#[derive(Default)]
struct StateWrites {
    /// Empty every keyed table first: the records below are all of them.
    whole: bool,
    /// `state_rest`.
    rest: Vec<u8>,
    /// Key → record, or `None` to remove the key.
    hosts: KeyedBytes,
    workloads: KeyedBytes,
    /// Every staged apply, when they changed.
    staged: Option<Vec<(String, Vec<u8>)>>,
    /// New events, and the first sequence number kept, of each kind.
    events: [Vec<(u64, Vec<u8>)>; 2],
    events_below: [u64; 2],
}

/// Key → record bytes, or `None` to remove the key.
type KeyedBytes = Vec<(String, Option<Vec<u8>>)>;

/// The records a write of the state needs, copied out of it under its
/// lock (cheap: what changed, and the small rest) and serialized after.
struct Taken {
    whole: bool,
    /// The state machine without its keyed collections.
    rest: StateMachineData,
    hosts: Vec<(String, Option<HostRecord>)>,
    workloads: Vec<(String, Option<WorkloadRecord>)>,
    staged: Option<BTreeMap<String, StagedApply>>,
    events: [Vec<Event>; 2],
    events_below: [u64; 2],
}

impl Taken {
    /// What changed in `sm` since its last write (the whole state if
    /// `whole`); the state starts a new record of changes.
    fn of(sm: &mut StateMachineData, whole: bool) -> Taken {
        let changes = if whole {
            sm.state.take_changes();
            Changes {
                hosts: sm.state.hosts.keys().cloned().collect(),
                workloads: sm.state.workloads.keys().cloned().collect(),
                staged: true,
                events_from: 0,
            }
        } else {
            sm.state.take_changes()
        };
        let keyed = sm.state.take_keyed();
        let rest = sm.clone();
        sm.state.restore_keyed(keyed);
        let mut t = Taken {
            whole,
            rest,
            hosts: vec![],
            workloads: vec![],
            staged: None,
            events: [vec![], vec![]],
            events_below: [u64::MAX; 2],
        };
        for record in records(&sm.state, &changes) {
            match record {
                Record::Host(name, h) => t.hosts.push((name.into(), h.cloned())),
                Record::Workload(name, r) => t.workloads.push((name.into(), r.cloned())),
                Record::Staged(all) => t.staged = Some(all.clone()),
                Record::Event(e) => t.events[usize::from(e.workload.is_some())].push(e.clone()),
                Record::EventsBelow { workload, seq } => {
                    t.events_below[usize::from(workload)] = seq
                }
            }
        }
        t
    }

    fn serialize(self) -> Result<StateWrites, serde_json::Error> {
        fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(v)
        }
        fn keyed<T: Serialize>(
            records: Vec<(String, Option<T>)>,
        ) -> Result<KeyedBytes, serde_json::Error> {
            records
                .into_iter()
                .map(|(k, r)| Ok((k, r.as_ref().map(json).transpose()?)))
                .collect()
        }
        let events = |es: &[Event]| -> Result<Vec<(u64, Vec<u8>)>, serde_json::Error> {
            es.iter().map(|e| Ok((e.seq, json(e)?))).collect()
        };
        Ok(StateWrites {
            whole: self.whole,
            rest: json(&self.rest)?,
            hosts: keyed(self.hosts)?,
            workloads: keyed(self.workloads)?,
            staged: self
                .staged
                .map(|all| {
                    all.iter()
                        .map(|(id, s)| Ok((id.clone(), json(s)?)))
                        .collect::<Result<_, serde_json::Error>>()
                })
                .transpose()?,
            events: [events(&self.events[0])?, events(&self.events[1])?],
            events_below: self.events_below,
        })
    }
}

impl StateWrites {
    /// What changed in `sm` since its last write (the whole state if
    /// `whole`), ready to write; the state starts a new record of changes.
    fn of(sm: &mut StateMachineData, whole: bool) -> Result<StateWrites, serde_json::Error> {
        Taken::of(sm, whole).serialize()
    }

    /// Bytes of records this write puts on disk.
    fn bytes(&self) -> usize {
        let keyed = |v: &Vec<(String, Option<Vec<u8>>)>| -> usize {
            v.iter()
                .map(|(k, r)| k.len() + r.as_ref().map_or(0, Vec::len))
                .sum()
        };
        self.rest.len()
            + keyed(&self.hosts)
            + keyed(&self.workloads)
            + self
                .staged
                .iter()
                .flatten()
                .map(|(k, r)| k.len() + r.len())
                .sum::<usize>()
            + self
                .events
                .iter()
                .flatten()
                .map(|(_, r)| 8 + r.len())
                .sum::<usize>()
    }

    fn write(&self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let mut hosts = txn.open_table(HOSTS)?;
        let mut workloads = txn.open_table(WORKLOADS)?;
        let mut staged = txn.open_table(STAGED)?;
        let mut events = [txn.open_table(EVENTS[0])?, txn.open_table(EVENTS[1])?];
        if self.whole {
            hosts.retain(|_, _| false)?;
            workloads.retain(|_, _| false)?;
            staged.retain(|_, _| false)?;
            for table in &mut events {
                table.retain(|_, _| false)?;
            }
        }
        for (table, records) in [(&mut hosts, &self.hosts), (&mut workloads, &self.workloads)] {
            for (key, record) in records {
                match record {
                    Some(r) => drop(table.insert(key.as_str(), r.as_slice())?),
                    None => drop(table.remove(key.as_str())?),
                }
            }
        }
        if let Some(all) = &self.staged {
            staged.retain(|_, _| false)?;
            for (id, r) in all {
                staged.insert(id.as_str(), r.as_slice())?;
            }
        }
        for (i, table) in events.iter_mut().enumerate() {
            for (seq, r) in &self.events[i] {
                table.insert(*seq, r.as_slice())?;
            }
            table.retain_in(..self.events_below[i], |_, _| false)?;
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(KEY_STATE_REST, self.rest.as_slice())?;
        if self.whole {
            // Layout 1's one record, if this file had it.
            meta.remove(KEY_STATE_MACHINE)?;
        }
        Ok(())
    }
}

/// The state machine as layout 2 keeps it: the rest record and the keyed
/// tables (`None` if there is no rest record). Every record is decoded;
/// one that cannot be is reported with its table and key.
fn load_state(txn: &redb::ReadTransaction) -> Result<Option<StateMachineData>, String> {
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(mut sm) = get_json::<StateMachineData>(&meta, KEY_STATE_REST)? else {
        return Ok(None);
    };
    fn decode<T: DeserializeOwned>(table: &str, key: &dyn Display, v: &[u8]) -> Result<T, String> {
        serde_json::from_slice(v)
            .map_err(|e| format!("record {key} of table {table} is unreadable: {e}"))
    }
    fn named<T: DeserializeOwned>(
        txn: &redb::ReadTransaction,
        def: TableDefinition<&str, &[u8]>,
    ) -> Result<BTreeMap<String, T>, String> {
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let record = decode(def.name(), &k.value(), v.value())?;
            out.insert(k.value().to_owned(), record);
        }
        Ok(out)
    }
    fn numbered<T: DeserializeOwned>(
        txn: &redb::ReadTransaction,
        def: TableDefinition<u64, &[u8]>,
    ) -> Result<VecDeque<T>, String> {
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(VecDeque::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = VecDeque::new();
        for item in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = item.map_err(|e| e.to_string())?;
            out.push_back(decode(def.name(), &k.value(), v.value())?);
        }
        Ok(out)
    }
    let keyed = Keyed {
        hosts: named(txn, HOSTS)?,
        workloads: named(txn, WORKLOADS)?,
        staged: named(txn, STAGED)?,
        cluster_events: numbered(txn, EVENTS[0])?,
        workload_events: numbered(txn, EVENTS[1])?,
    };
    sm.state.restore_keyed(keyed);
    Ok(Some(sm))
}

/// Run blocking redb work off the async workers.
async fn blocking<T, F>(f: F) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StorageResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        StorageError::from(StorageIOError::new(
            ErrorSubject::Store,
            ErrorVerb::Write,
            AnyError::error(format!("storage task failed: {e}")),
        ))
    })?
}

/// Wrap an error with the file it concerns, for openraft's error reports.
fn in_file(file: &Path, e: impl std::fmt::Display) -> AnyError {
    AnyError::error(format!("{}: {e}", file.display()))
}

/// Inclusive bounds of a log index range; `None` if it is empty.
fn inclusive_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, u64)> {
    let lo = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (lo <= hi).then_some((lo, hi))
}

/// Openraft's log storage over the `raft_log` and `raft_meta` tables.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DbHandle>,
    file: Arc<PathBuf>,
    /// Bytes of entries (as stored) one replication batch carries at most:
    /// openraft sends what `limited_get_log_entries` returns in one
    /// AppendEntries, whose deadline is the heartbeat interval.
    batch_bytes_max: usize,
    /// Test hook: while this file exists, log appends block (a disk that
    /// stops answering, e.g. a stuck fsync). Set only with
    /// `HAVEN_TEST_HOOKS=1` in the environment.
    stall_file: Option<Arc<PathBuf>>,
}

/// Name of the stall hook's file in the data dir (see `LogStore`).
pub const TEST_STALL_LOG_FILE: &str = "test-stall-raft-log";
const TEST_HOOKS_ENV: &str = "HAVEN_TEST_HOOKS";
const STALL_POLL_MS: u64 = 10;

impl LogStore {
    async fn read_meta<T>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let (db, file) = (self.db.clone(), self.file.clone());
        blocking(move || {
            let err = |e: String| {
                StorageIOError::new(subject.clone(), ErrorVerb::Read, in_file(&file, e))
            };
            let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
            let table = txn.open_table(LOG_META).map_err(|e| err(e.to_string()))?;
            Ok(get_json(&table, key).map_err(err)?)
        })
        .await
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let (db, file) = (self.db.clone(), self.file.clone());
        let bytes = serde_json::to_vec(value).map_err(|e| {
            StorageIOError::new(subject.clone(), ErrorVerb::Write, AnyError::new(&e))
        })?;
        blocking(move || {
            write_txn(&db, durability, |txn| {
                txn.open_table(LOG_META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, in_file(&file, e)).into())
        })
        .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// The entries from `start` on, up to `end` (exclusive), as long as
    /// they stay within `batch_bytes_max` together; at least one. The
    /// replication stream sends what this returns in one AppendEntries and
    /// asks again for the rest.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let (db, file, budget) = (self.db.clone(), self.file.clone(), self.batch_bytes_max);
        blocking(move || {
            let err = |e: String| StorageIOError::read_logs(in_file(&file, e));
            let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
            let table = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            for item in table.range(start..end).map_err(|e| err(e.to_string()))? {
                let (index, value) = item.map_err(|e| err(e.to_string()))?;
                bytes = bytes.saturating_add(value.value().len());
                if !entries.is_empty() && bytes > budget {
                    break;
                }
                let entry: Entry<TypeConfig> = serde_json::from_slice(value.value())
                    .map_err(|e| err(format!("log entry {}: {e}", index.value())))?;
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some((lo, hi)) = inclusive_bounds(&range) else {
            return Ok(Vec::new());
        };
        let (db, file) = (self.db.clone(), self.file.clone());
        blocking(move || {
            let err = |e: String| StorageIOError::read_logs(in_file(&file, e));
            let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
            let table = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
            let mut entries = Vec::new();
            for item in table.range(lo..=hi).map_err(|e| err(e.to_string()))? {
                let (index, value) = item.map_err(|e| err(e.to_string()))?;
                let entry: Entry<TypeConfig> = serde_json::from_slice(value.value())
                    .map_err(|e| err(format!("log entry {}: {e}", index.value())))?;
                entries.push(entry);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let (db, file) = (self.db.clone(), self.file.clone());
        blocking(move || {
            let err = |e: String| StorageIOError::read_logs(in_file(&file, e));
            let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
            let log = txn.open_table(LOG).map_err(|e| err(e.to_string()))?;
            let meta = txn.open_table(LOG_META).map_err(|e| err(e.to_string()))?;
            let last_purged_log_id: Option<LogId<NodeId>> =
                get_json(&meta, KEY_LAST_PURGED).map_err(err)?;
            let last_in_log = match log.last().map_err(|e| err(e.to_string()))? {
                Some((index, value)) => {
                    let entry: Entry<TypeConfig> = serde_json::from_slice(value.value())
                        .map_err(|e| err(format!("log entry {}: {e}", index.value())))?;
                    Some(entry.log_id)
                }
                None => None,
            };
            Ok(LogState {
                last_purged_log_id,
                // With every entry purged, the log continues after the purge point.
                last_log_id: last_in_log.or(last_purged_log_id),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, vote, Durability::Immediate, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(
            KEY_COMMITTED,
            &committed,
            Durability::Eventual,
            ErrorSubject::Store,
        )
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        // Stored as `Option<LogId>`, so a saved `None` reads back as `Some(None)`.
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            rows.push((entry.log_id.index, bytes));
        }
        let (db, file, stall) = (self.db.clone(), self.file.clone(), self.stall_file.clone());
        let res = blocking(move || {
            while stall.as_ref().is_some_and(|f| f.exists()) {
                std::thread::sleep(Duration::from_millis(STALL_POLL_MS));
            }
            let t0 = std::time::Instant::now();
            let r = write_txn(&db, Durability::Immediate, |txn| {
                tracing::debug!(
                    wait_ms = t0.elapsed().as_millis() as u64,
                    "log append began"
                );
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(index, bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(|e| StorageIOError::write_logs(in_file(&file, e)).into());
            tracing::debug!(
                total_ms = t0.elapsed().as_millis() as u64,
                "log append done"
            );
            r
        })
        .await;
        // The entries are durable only now: tell openraft, which may then
        // acknowledge them to the leader.
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let (db, file) = (self.db.clone(), self.file.clone());
        blocking(move || {
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(LOG)?
                    .retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            })
            .map_err(|e| StorageIOError::write_logs(in_file(&file, e)).into())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let (db, file) = (self.db.clone(), self.file.clone());
        let purged = serde_json::to_vec(&log_id)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        blocking(move || {
            // One transaction: the purge point and the deletion are never
            // seen apart, so the log always continues after `last_purged`.
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(LOG_META)?
                    .insert(KEY_LAST_PURGED, purged.as_slice())?;
                txn.open_table(LOG)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                Ok(())
            })
            .map_err(|e| StorageIOError::write_logs(in_file(&file, e)).into())
        })
        .await
    }
}

/// Openraft's state machine: `ClusterState` in memory, persisted in
/// `raft_meta` after every applied batch.
pub struct StateMachineStore {
    db: Arc<DbHandle>,
    file: Arc<PathBuf>,
    state: SharedState,
    /// When the state machine record was last written (`None`: not yet
    /// by this process).
    persisted_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// How often the state is written at most (`STATE_RECORD_INTERVAL_MS`).
    persist_interval: Duration,
    writer: StateWriter,
}

/// Writes the state's records on a thread of its own, one write at a time,
/// so that `apply` never waits for the disk (the records are a cache of
/// the log: a restart re-applies what they lack). While a write is in
/// flight the next is skipped, and the changes it would have carried wait
/// in the state's record of changes for the one after.
#[derive(Clone, Default)]
struct StateWriter(Arc<WriterInner>);

#[derive(Default)]
struct WriterInner {
    /// A write is in flight (or an installed snapshot is being written).
    busy: AtomicBool,
    /// A write failed: the next one writes the state whole (the changes
    /// it carried are no longer recorded).
    whole_next: AtomicBool,
    /// Bytes of state records the last write put on disk.
    persisted_bytes: AtomicU64,
}

impl StateWriter {
    fn try_begin(&self) -> bool {
        self.0
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Wait for the write in flight, if any, and hold off the next ones
    /// (until `end`).
    fn begin_waiting(&self) {
        while !self.try_begin() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn end(&self) {
        self.0.busy.store(false, Ordering::Release);
    }

    /// Serialize and write `taken` on the writer thread, then `end`.
    fn spawn(&self, db: Arc<DbHandle>, file: Arc<PathBuf>, taken: Taken) {
        let writer = self.clone();
        let run = move || {
            let result = taken
                .serialize()
                .map_err(|e| e.to_string())
                .and_then(|writes| {
                    write_txn(&db, Durability::Immediate, |txn| writes.write(txn))
                        .map(|()| writes.bytes())
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(bytes) => writer
                    .0
                    .persisted_bytes
                    .store(bytes as u64, Ordering::Relaxed),
                Err(e) => {
                    writer.0.whole_next.store(true, Ordering::Relaxed);
                    tracing::error!(
                        "writing the state's records to {} failed: {e}; the next write rewrites them all (the log keeps every entry they lack)",
                        file.display()
                    );
                }
            }
            // The database handle goes before the writer says it is done:
            // once idle, the file can be closed.
            drop(db);
            writer.end();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("haven-state-writer".into())
            .spawn(run)
        {
            self.0.whole_next.store(true, Ordering::Relaxed);
            self.end();
            tracing::error!("could not start the state writer thread: {e}");
        }
    }
}

/// The state machine record is a cache of the log (a restart re-applies
/// the committed entries above it, which the log keeps until a snapshot
/// covers them): it is written at most this often, not after every applied
/// batch. Serializing and syncing the whole state per entry made a large
/// state cost megabytes of CPU and disk for every command.
pub const STATE_RECORD_INTERVAL_MS: u64 = 1_000;

impl StateMachineStore {
    /// The applied state, for readers outside openraft.
    pub fn shared_state(&self) -> SharedState {
        self.state.clone()
    }

    /// Wait until no write of the state is in flight.
    pub async fn written(&self) {
        while self.writer.0.busy.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Bytes of state records the last write of the state put on disk.
    pub fn persisted_bytes(&self) -> u64 {
        self.writer.0.persisted_bytes.load(Ordering::Relaxed)
    }
}

/// A process-wide sequence that keeps snapshot ids unique even when two
/// snapshots of the same log position are built in the same millisecond.
static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

fn new_snapshot_id(last: Option<LogId<NodeId>>) -> String {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let seq = SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed);
    match last {
        Some(last) => format!("{}-{}-{unix_ms}-{seq}", last.leader_id, last.index),
        None => format!("empty-{unix_ms}-{seq}"),
    }
}

/// Builds snapshots from the shared applied state.
pub struct SnapshotBuilder {
    db: Arc<DbHandle>,
    file: Arc<PathBuf>,
    state: SharedState,
}

/// Store `meta` + `data` as the current snapshot in one durable
/// transaction; when installing, `state_machine` (the new state machine
/// record) is written in the same transaction.
///
/// A built snapshot never replaces a newer one: a build runs concurrently
/// with the state machine and may finish after a newer snapshot was
/// installed, and the current snapshot must not move back behind the purged
/// log.
fn persist_snapshot(
    db: &Database,
    file: &Path,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
    state_machine: Option<&StateWrites>,
) -> StorageResult<()> {
    let sig = Some(meta.signature());
    let meta_bytes = serde_json::to_vec(meta)
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), AnyError::new(&e)))?;
    let mut superseded = false;
    write_txn(db, Durability::Immediate, |txn| {
        let mut table = txn.open_table(META)?;
        if state_machine.is_none() {
            let current: Option<SnapshotMeta<NodeId, BasicNode>> =
                get_json(&table, KEY_SNAPSHOT_META).map_err(redb::StorageError::Corrupted)?;
            if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
                superseded = true;
                return Ok(());
            }
        }
        table.insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())?;
        table.insert(KEY_SNAPSHOT_DATA, data)?;
        drop(table);
        if let Some(sm) = state_machine {
            sm.write(txn)?;
        }
        Ok(())
    })
    .map_err(|e| StorageIOError::write_snapshot(sig, in_file(file, e)))?;
    if superseded {
        tracing::debug!(snapshot = %meta, "not keeping a built snapshot older than the current one");
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // One consistent view: the data and the meta come from the same
        // read of the applied state: a copy, taken under the read lock and
        // serialized after it (serializing a large state under the lock
        // would hold up the next apply, and every reader queued behind it).
        let (db, file, state) = (self.db.clone(), self.file.clone(), self.state.clone());
        let (meta, data) = blocking(move || {
            let sm = state.read().clone();
            let data = serde_json::to_vec(&sm)
                .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
            let meta = SnapshotMeta {
                last_log_id: sm.last_applied,
                last_membership: sm.last_membership.clone(),
                snapshot_id: new_snapshot_id(sm.last_applied),
            };
            persist_snapshot(&db, &file, &meta, &data, None)?;
            Ok((meta, data))
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let sm = self.state.read();
        Ok((sm.last_applied, sm.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Apply in memory, then write what changed if the state has not
        // been written for `STATE_RECORD_INTERVAL_MS`. Readers may see a
        // batch before it is on disk; that is fine because the entries are
        // committed (durable on a quorum) and a crash before the write just
        // re-applies them from the log. All of it runs on the blocking
        // pool: applying a large command is CPU work that must not hold up
        // the async workers carrying heartbeats and Raft RPCs. The changed
        // records are serialized under the lock (they are what changed,
        // and the rest record is small) and written after it is released.
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (db, file, state) = (self.db.clone(), self.file.clone(), self.state.clone());
        let persisted_at = self.persisted_at.clone();
        let (interval, writer) = (self.persist_interval, self.writer.clone());
        blocking(move || {
            let mut sm = state.write();
            let mut results = Vec::with_capacity(entries.len());
            for (i, entry) in entries.into_iter().enumerate() {
                if i > 0 {
                    // Readers waiting meanwhile go first: one entry (at
                    // most `COMMAND_BYTES_MAX` of commands) is the longest
                    // any reader waits, whatever the batch.
                    RwLockWriteGuard::bump(&mut sm);
                }
                sm.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(cmd) => sm.state.apply(&cmd),
                    EntryPayload::Membership(membership) => {
                        sm.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Ok
                    }
                };
                results.push(result);
            }
            let mut at = persisted_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < interval) || !writer.try_begin() {
                return Ok(results);
            }
            *at = Some(std::time::Instant::now());
            let whole = writer.0.whole_next.swap(false, Ordering::Relaxed);
            let taken = Taken::of(&mut sm, whole);
            drop(sm);
            writer.spawn(db, file, taken);
            Ok(results)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            file: self.file.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let sig = Some(meta.signature());
        let mut sm: StateMachineData = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), AnyError::new(&e)))?;
        // The meta is authoritative for the position the data stands for.
        sm.last_applied = meta.last_log_id;
        sm.last_membership = meta.last_membership.clone();
        let (db, file, meta2) = (self.db.clone(), self.file.clone(), meta.clone());
        let writer = self.writer.clone();
        // The keyed tables are written whole, with the snapshot, once the
        // write in flight (of the state being replaced) is done.
        let sm = blocking(move || {
            writer.begin_waiting();
            let result = StateWrites::of(&mut sm, true)
                .map_err(|e| StorageIOError::write_snapshot(sig, AnyError::new(&e)).into())
                .and_then(|writes| persist_snapshot(&db, &file, &meta2, &data, Some(&writes)));
            writer.end();
            result.map(|()| sm)
        })
        .await?;
        // Swap in memory only once the new state is durable.
        *self.state.write() = sm;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let (db, file) = (self.db.clone(), self.file.clone());
        blocking(move || {
            let err = |e: String| StorageIOError::read_snapshot(None, in_file(&file, e));
            let txn = db.begin_read().map_err(|e| err(e.to_string()))?;
            let table = txn.open_table(META).map_err(|e| err(e.to_string()))?;
            let Some(meta) = get_json::<SnapshotMeta<NodeId, BasicNode>>(&table, KEY_SNAPSHOT_META)
                .map_err(err)?
            else {
                return Ok(None);
            };
            let Some(data) = table
                .get(KEY_SNAPSHOT_DATA)
                .map_err(|e| err(e.to_string()))?
            else {
                return Err(err("snapshot meta present but its data is missing".into()).into());
            };
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data.value().to_vec())),
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::state::Command;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;
    use tempfile::TempDir;

    /// The batch budget of the default timing.
    const BATCH: usize = crate::budget::append_batch_bytes_max(50);

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload,
        }
    }

    /// Set `key` in `raft_meta` of a closed store to `value`, bypassing Store.
    fn overwrite_record(dir: &Path, key: &str, value: &[u8]) {
        let db = Database::create(dir.join(RAFT_DB_FILE)).unwrap();
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(META)?.insert(key, value)?;
            Ok(())
        })
        .unwrap();
    }

    fn read_record(dir: &Path, key: &str) -> Option<Vec<u8>> {
        let db = Database::create(dir.join(RAFT_DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(META).unwrap();
        let value = table.get(key).unwrap().map(|v| v.value().to_vec());
        value
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
        let dir = TempDir::new().unwrap();
        let file = dir.path().join(RAFT_DB_FILE);
        let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&file, &garbage).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        assert!(matches!(err, ConsensusError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("is corrupt"), "{msg}");
        assert_eq!(std::fs::read(&file).unwrap(), garbage);
    }

    /// The same for the log's file, and for a record in it that cannot be
    /// read: refused naming the file, nothing in either file rewritten.
    #[tokio::test]
    async fn a_bad_log_file_is_refused_and_left_untouched() {
        let dir = TempDir::new().unwrap();
        drop(Store::open(dir.path(), BATCH).unwrap());
        let log_file = dir.path().join(RAFT_LOG_FILE);
        let state_before = std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap();
        let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&log_file, &garbage).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        assert!(matches!(err, ConsensusError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(RAFT_LOG_FILE), "{err}");
        assert_eq!(std::fs::read(&log_file).unwrap(), garbage);

        std::fs::remove_file(&log_file).unwrap();
        {
            let db = Database::create(&log_file).unwrap();
            write_txn(&db, Durability::Immediate, |txn| {
                let mut meta = txn.open_table(LOG_META)?;
                meta.insert(KEY_FORMAT_VERSION, &b"1"[..])?;
                meta.insert(KEY_VOTE, &b"{not json"[..])?;
                Ok(())
            })
            .unwrap();
        }
        let log_before = std::fs::read(&log_file).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(RAFT_LOG_FILE) && msg.contains(KEY_VOTE),
            "{msg}"
        );
        assert_eq!(std::fs::read(&log_file).unwrap(), log_before);
        assert_eq!(
            std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap(),
            state_before
        );
    }

    #[test]
    fn an_unreadable_record_is_refused_and_not_rewritten() {
        let dir = TempDir::new().unwrap();
        drop(Store::open(dir.path(), BATCH).unwrap());
        overwrite_record(dir.path(), KEY_STATE_REST, b"{not json");
        let before = std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        let after = std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap();
        assert!(before == after, "the refused file was modified");
        let msg = err.to_string();
        assert!(matches!(err, ConsensusError::Corrupt { .. }), "{err:?}");
        assert!(
            msg.contains(RAFT_DB_FILE) && msg.contains(KEY_STATE_REST),
            "{msg}"
        );
        assert_eq!(
            read_record(dir.path(), KEY_STATE_REST).as_deref(),
            Some(&b"{not json"[..])
        );
    }

    /// A workload's record that cannot be read is named (table and key),
    /// and the file is left as it was.
    #[tokio::test]
    async fn an_unreadable_keyed_record_is_refused_naming_it() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        apply_two(&mut sm).await;
        sm.persist_interval = Duration::ZERO;
        apply_workloads(&mut sm, 3, &["web"]).await;
        drop(sm);
        let store = reopen(dir.path()).await;
        drop(store);
        let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
        write_txn(&db, Durability::Immediate, |txn| {
            txn.open_table(WORKLOADS)?.insert("web", &b"[1,"[..])?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let before = std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, ConsensusError::Corrupt { .. }), "{err:?}");
        assert!(
            msg.contains("record web of table state_workloads is unreadable"),
            "{msg}"
        );
        assert!(before == std::fs::read(dir.path().join(RAFT_DB_FILE)).unwrap());
    }

    /// A batch of entries is applied one entry per hold of the state lock:
    /// a reader waiting meanwhile gets in between two entries, so it waits
    /// for one entry, not for the whole batch (a burst of large applies
    /// once held every reader, the heartbeat handler's included, for most
    /// of a second, and the agent's async workers with them: finding of
    /// `a_burst_of_large_applies_keeps_one_leader_and_every_lease`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_gets_in_between_the_entries_of_a_batch() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        apply_two(&mut sm).await;
        const ENTRIES: u64 = 40;
        // Entries that take a while to apply: each re-specs large workloads.
        let batch = |first: u64| -> Vec<Entry<TypeConfig>> {
            (first..first + ENTRIES)
                .map(|i| {
                    let specs = (0..4)
                        .map(|w| {
                            let mut s = spec(&format!("big{w}"));
                            s.kind = haven_core::model::WorkloadKind::Process {
                                command: vec!["/bin/sleep".into(), "infinity".into()],
                                env: [("PAD".to_string(), format!("{i}{}", "p".repeat(30_000)))]
                                    .into(),
                            };
                            s
                        })
                        .collect();
                    let cmd = Command::ApplyWorkloads {
                        specs,
                        source: "t".into(),
                        at_ms: 10 + i,
                    };
                    entry(1, i, EntryPayload::Normal(cmd))
                })
                .collect()
        };
        let state = sm.shared_state();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
        let reader = {
            let (state, done, seen) = (state.clone(), done.clone(), seen.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let i = state.read().last_applied.map_or(0, |l| l.index);
                    seen.lock().insert(i);
                }
            })
        };
        // Did the reader get in after one entry of a batch, before its last?
        let between = |batches: &[(u64, u64)]| {
            let seen = seen.lock();
            batches
                .iter()
                .any(|(a, b)| seen.iter().any(|i| *i >= *a && *i < *b))
        };
        // The reader is spinning on the lock before the batches start. One
        // the machine does not schedule during a batch cannot be let in (a
        // loaded test machine; a CI run saw ten batches in a row pass it
        // by): up to sixty batches, until one let it in. With the lock held
        // for whole batches, none would.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut batches = vec![];
        for round in 0..60 {
            let first = 3 + round * ENTRIES;
            sm.apply(batch(first)).await.unwrap();
            batches.push((first, first + ENTRIES - 1));
            if between(&batches) {
                break;
            }
        }
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(
            between(&batches),
            "the reader saw only {:?} in {} batches: it waited for each whole batch of {ENTRIES} entries",
            seen.lock(),
            batches.len()
        );
    }

    /// Apply `names` as workloads at log index `index` (term 1).
    async fn apply_workloads(sm: &mut StateMachineStore, index: u64, names: &[&str]) {
        let apply = Command::ApplyWorkloads {
            specs: names.iter().map(|n| spec(n)).collect(),
            source: "t".into(),
            at_ms: index,
        };
        sm.apply(vec![entry(1, index, EntryPayload::Normal(apply))])
            .await
            .unwrap();
        sm.written().await;
    }

    /// A file of layout 1 (the state machine as one record) opens with its
    /// state intact, moved into the keyed tables; the old record is gone
    /// and the file says layout 2.
    #[tokio::test]
    async fn a_layout_1_file_is_moved_to_keyed_tables_with_nothing_lost() {
        let dir = TempDir::new().unwrap();
        let mut old = StateMachineData {
            last_applied: Some(log_id(1, 9)),
            ..StateMachineData::default()
        };
        old.state.apply(&Command::InitCluster {
            cluster_id: "c1".into(),
            at_ms: 1,
        });
        old.state.apply(&Command::ApplyWorkloads {
            specs: vec![spec("a"), spec("b")],
            source: "t".into(),
            at_ms: 2,
        });
        {
            let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
            write_txn(&db, Durability::Immediate, |txn| {
                txn.open_table(LOG)?;
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_FORMAT_VERSION, &b"1"[..])?;
                let record = serde_json::to_vec(&old).unwrap();
                meta.insert(KEY_STATE_MACHINE, record.as_slice())?;
                Ok(())
            })
            .unwrap();
        }
        let store = Store::open(dir.path(), BATCH).unwrap();
        assert_eq!(*store.state_machine.shared_state().read(), old);
        drop(store);
        assert_eq!(read_record(dir.path(), KEY_STATE_MACHINE), None);
        assert_eq!(
            read_record(dir.path(), KEY_FORMAT_VERSION).as_deref(),
            Some(&b"3"[..])
        );
        let store = reopen(dir.path()).await;
        assert_eq!(*store.state_machine.shared_state().read(), old);
    }

    /// An installed snapshot replaces the keyed tables whole: a workload
    /// the snapshot does not have does not come back at the next start.
    #[tokio::test]
    async fn an_installed_snapshot_replaces_every_stored_record() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        sm.persist_interval = Duration::ZERO;
        apply_two(&mut sm).await;
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        apply_workloads(&mut sm, 3, &["gone"]).await;
        assert!(sm
            .shared_state()
            .read()
            .state
            .workloads
            .contains_key("gone"));
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(log_id(2, 10));
        sm.install_snapshot(&meta, snapshot.snapshot).await.unwrap();
        let state = sm.shared_state().read().clone();
        assert!(state.state.workloads.is_empty());
        drop(sm);
        let store = reopen(dir.path()).await;
        assert_eq!(*store.state_machine.shared_state().read(), state);
    }

    /// A layout 2 file (the log, the vote and the log ids beside the
    /// state) opens with all of them moved to `raft-log.redb`, nothing
    /// lost, and none of them left in `raft.redb`.
    #[tokio::test]
    async fn a_layout_2_file_moves_its_log_and_vote_to_the_log_file_with_nothing_lost() {
        let dir = TempDir::new().unwrap();
        let entries = vec![
            entry(1, 3, EntryPayload::Blank),
            entry(
                1,
                4,
                EntryPayload::Normal(Command::InitCluster {
                    cluster_id: "c1".into(),
                    at_ms: 5,
                }),
            ),
        ];
        let vote = Vote::new(2, 1);
        {
            let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
            write_txn(&db, Durability::Immediate, |txn| {
                let mut log = txn.open_table(LOG)?;
                for e in &entries {
                    log.insert(e.log_id.index, serde_json::to_vec(e).unwrap().as_slice())?;
                }
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_FORMAT_VERSION, &b"2"[..])?;
                meta.insert(KEY_VOTE, serde_json::to_vec(&vote).unwrap().as_slice())?;
                let purged = serde_json::to_vec(&log_id(1, 2)).unwrap();
                meta.insert(KEY_LAST_PURGED, purged.as_slice())?;
                Ok(())
            })
            .unwrap();
        }
        let Store { mut log, .. } = Store::open(dir.path(), BATCH).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
        drop(log);
        assert_eq!(read_record(dir.path(), KEY_VOTE), None);
        assert_eq!(read_record(dir.path(), KEY_LAST_PURGED), None);
        assert_eq!(
            read_record(dir.path(), KEY_FORMAT_VERSION).as_deref(),
            Some(&b"3"[..])
        );
        let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        assert!(matches!(
            txn.open_table(LOG),
            Err(TableError::TableDoesNotExist(_))
        ));
        drop((txn, db));
        // Opened again, it is read as layout 3 and still holds everything.
        let Store { mut log, .. } = reopen(dir.path()).await;
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    }

    /// A layout 3 `raft.redb` whose log file is gone is refused, naming
    /// it, and nothing is created in its place: the vote is lost.
    #[test]
    fn a_missing_log_file_is_refused_and_not_recreated() {
        let dir = TempDir::new().unwrap();
        drop(Store::open(dir.path(), BATCH).unwrap());
        let log_file = dir.path().join(RAFT_LOG_FILE);
        std::fs::remove_file(&log_file).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(RAFT_LOG_FILE) && msg.contains("missing"),
            "{msg}"
        );
        assert!(!log_file.exists());
    }

    /// A new `raft.redb` beside a log file that holds a vote is refused:
    /// the state that log belongs to is lost.
    #[tokio::test]
    async fn a_log_file_with_a_vote_beside_a_new_state_file_is_refused() {
        let dir = TempDir::new().unwrap();
        let Store { mut log, .. } = Store::open(dir.path(), BATCH).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        drop(log);
        let _ = reopen(dir.path()).await;
        std::fs::remove_file(dir.path().join(RAFT_DB_FILE)).unwrap();
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        assert!(err.to_string().contains("holds a vote and log"), "{err}");
        assert!(
            !dir.path().join(RAFT_DB_FILE).exists() || {
                let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
                let txn = db.begin_read().unwrap();
                matches!(txn.open_table(META), Err(TableError::TableDoesNotExist(_)))
            }
        );
    }

    #[test]
    fn a_newer_layout_version_is_refused() {
        let dir = TempDir::new().unwrap();
        drop(Store::open(dir.path(), BATCH).unwrap());
        overwrite_record(dir.path(), KEY_FORMAT_VERSION, b"4");
        let err = Store::open(dir.path(), BATCH).err().expect("refused");
        assert!(err.to_string().contains("layout version Some(4)"), "{err}");
    }

    /// Apply an init-cluster command at (1, 1) and a blank entry at (1, 2).
    async fn apply_two(sm: &mut StateMachineStore) {
        let init = Command::InitCluster {
            cluster_id: "c2".into(),
            at_ms: 1,
        };
        sm.apply(vec![
            entry(1, 1, EntryPayload::Normal(init)),
            entry(1, 2, EntryPayload::Blank),
        ])
        .await
        .unwrap();
        sm.written().await;
    }

    #[tokio::test]
    async fn open_resumes_from_a_snapshot_newer_than_the_state_record() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            closed,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        apply_two(&mut sm).await;
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let state = sm.shared_state().read().clone();
        drop(sm);
        assert!(closed.wait(Duration::from_secs(5)).await);
        // As if a crash had lost the state records written after the
        // snapshot (and left some from before it).
        let stale = serde_json::to_vec(&StateMachineData::default()).unwrap();
        overwrite_record(dir.path(), KEY_STATE_REST, &stale);
        {
            let db = Database::create(dir.path().join(RAFT_DB_FILE)).unwrap();
            write_txn(&db, Durability::Immediate, |txn| {
                let w = br#"{"specs":[],"since_ms":0}"#;
                txn.open_table(STAGED)?.insert("stale", &w[..])?;
                Ok(())
            })
            .unwrap();
        }

        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap().0,
            snapshot.meta.last_log_id
        );
        assert_eq!(*sm.shared_state().read(), state);
        // The snapshot was written into the tables at once, whole: what
        // is written after it (the changes only) is all there is.
        sm.persist_interval = Duration::ZERO;
        apply_workloads(&mut sm, 3, &["web"]).await;
        let state = sm.shared_state().read().clone();
        drop(sm);
        let store = reopen(dir.path()).await;
        assert_eq!(*store.state_machine.shared_state().read(), state);
    }

    /// Writing the state costs what changed: after a large apply, one
    /// small change puts a few hundred bytes on disk, not the state.
    #[tokio::test]
    async fn writing_the_state_costs_what_changed_not_what_exists() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        sm.persist_interval = Duration::ZERO;
        apply_two(&mut sm).await;
        let specs: Vec<_> = (0..2_000).map(|i| spec(&format!("w{i}"))).collect();
        let apply = Command::ApplyWorkloads {
            specs,
            source: "t".into(),
            at_ms: 2,
        };
        sm.apply(vec![entry(1, 3, EntryPayload::Normal(apply))])
            .await
            .unwrap();
        sm.written().await;
        let whole = sm.persisted_bytes();
        assert!(whole > 200_000, "the apply wrote {whole} bytes");
        let one = Command::SetPending {
            workload: "w7".into(),
            reason: "waiting".into(),
            at_ms: 3,
        };
        sm.apply(vec![entry(1, 4, EntryPayload::Normal(one))])
            .await
            .unwrap();
        sm.written().await;
        let small = sm.persisted_bytes();
        assert!(small < 4_000, "one change wrote {small} bytes");
        let state = sm.shared_state().read().clone();
        drop(sm);
        let Store {
            state_machine: sm, ..
        } = reopen(dir.path()).await;
        assert_eq!(*sm.shared_state().read(), state);
    }

    fn spec(name: &str) -> haven_core::model::WorkloadSpec {
        haven_core::model::WorkloadSpec {
            name: name.into(),
            kind: haven_core::model::WorkloadKind::Process {
                command: vec!["/bin/sleep".into(), "infinity".into()],
                env: Default::default(),
            },
            vcpus: 1,
            memory_mib: 64,
            priority: haven_core::model::Priority::Medium,
            restart: Default::default(),
            isolation_response: None,
            log_max_bytes: haven_core::logs::LOG_MAX_BYTES_DEFAULT,
            user: None,
            group: None,
            required_labels: Default::default(),
            preferred_hosts: vec![],
            escalation: Default::default(),
            after: vec![],
            after_delay_s: 0,
            affinity: vec![],
            anti_affinity: vec![],
            affinity_strict: false,
            failback: false,
            probes: vec![],
        }
    }

    /// Open the store in `dir` again once the last one closed it.
    async fn reopen(dir: &Path) -> Store {
        for _ in 0..500 {
            match Store::open(dir, BATCH) {
                Err(ConsensusError::DataDirInUse { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => return other.unwrap(),
            }
        }
        panic!("the store in {} stayed open", dir.display());
    }

    #[tokio::test]
    async fn a_built_snapshot_never_replaces_a_newer_one() {
        let dir = TempDir::new().unwrap();
        let Store {
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        apply_two(&mut sm).await;
        let newer = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let older = SnapshotMeta {
            last_log_id: Some(log_id(1, 1)),
            ..newer.meta.clone()
        };
        persist_snapshot(&sm.db, &sm.file, &older, b"{}", None).unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, newer.meta);
    }

    #[tokio::test]
    async fn a_replication_batch_stays_within_its_byte_budget() {
        let dir = TempDir::new().unwrap();
        let Store { mut log, .. } = Store::open(dir.path(), BATCH).unwrap();
        // Twenty entries of about 100 KB: what once went out in one
        // AppendEntries (openraft's default is up to 300 entries).
        let big = |i: u64| {
            entry(
                1,
                i,
                EntryPayload::Normal(Command::RecordEvent {
                    message: "e".repeat(100_000),
                    at_ms: i,
                }),
            )
        };
        log.blocking_append((1..=20).map(big)).await.unwrap();
        let mut next = 1;
        let mut batches = 0;
        while next <= 20 {
            let batch = log.limited_get_log_entries(next, 21).await.unwrap();
            assert!(
                !batch.is_empty(),
                "never an empty batch for a non-empty range"
            );
            let bytes: usize = batch
                .iter()
                .map(|e| serde_json::to_vec(e).unwrap().len())
                .sum();
            assert!(
                batch.len() == 1 || bytes <= BATCH,
                "{} entries, {bytes} bytes in one batch (budget {BATCH})",
                batch.len()
            );
            assert_eq!(batch[0].log_id.index, next, "in order, none skipped");
            next += batch.len() as u64;
            batches += 1;
        }
        assert!(batches >= 10, "split into {batches} batches");
        // A single entry larger than the budget still goes, alone.
        let small_budget = LogStore {
            batch_bytes_max: 10,
            ..log.clone()
        };
        let mut reader = small_budget;
        assert_eq!(
            reader.limited_get_log_entries(1, 21).await.unwrap().len(),
            1
        );
        assert!(reader
            .limited_get_log_entries(3, 3)
            .await
            .unwrap()
            .is_empty());
    }

    /// A log append, which the Raft core waits for, does not wait for a
    /// write of the state's records: at 50,000 workloads one took up to
    /// 260 ms, and appends queued behind it held up the core, so the
    /// leadership rounds the lease gate needs missed their window and
    /// heartbeats were refused (issue 10). The log has a file of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_append_does_not_wait_for_a_write_of_the_state() {
        let dir = TempDir::new().unwrap();
        let Store {
            mut log,
            state_machine: sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        // A write of the state in progress holds its file's one write
        // transaction until released.
        let db = sm.db.clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let txn = db.begin_write().unwrap();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
            txn.abort().unwrap();
        });
        held_rx.recv().unwrap();
        let appended = tokio::time::timeout(
            Duration::from_secs(5),
            log.blocking_append(vec![entry(1, 1, EntryPayload::Blank)]),
        )
        .await;
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        assert!(
            matches!(appended, Ok(Ok(()))),
            "the log append waited for the state's write transaction: {appended:?}"
        );
    }

    #[tokio::test]
    async fn state_machine_snapshot_vote_and_log_survive_reopen() {
        let dir = TempDir::new().unwrap();
        let Store {
            mut log,
            state_machine: mut sm,
            closed,
        } = Store::open(dir.path(), BATCH).unwrap();
        let membership = Membership::new(vec![BTreeSet::from([1, 2])], None);
        let entries = vec![
            entry(1, 1, EntryPayload::Membership(membership.clone())),
            entry(
                1,
                2,
                EntryPayload::Normal(Command::InitCluster {
                    cluster_id: "c1".into(),
                    at_ms: 5,
                }),
            ),
            entry(1, 3, EntryPayload::Blank),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        log.purge(log_id(1, 1)).await.unwrap();
        let results = sm.apply(entries.clone()).await.unwrap();
        assert_eq!(results, vec![CommandResult::Ok; 3]);
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let applied = sm.applied_state().await.unwrap();
        let state = sm.shared_state().read().clone();
        drop((log, sm));
        assert!(closed.wait(Duration::from_secs(5)).await, "database closed");

        let Store {
            mut log,
            state_machine: mut sm,
            ..
        } = Store::open(dir.path(), BATCH).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        let log_state = log.get_log_state().await.unwrap();
        assert_eq!(log_state.last_purged_log_id, Some(log_id(1, 1)));
        assert_eq!(log_state.last_log_id, Some(log_id(1, 3)));
        assert_eq!(
            log.try_get_log_entries(..).await.unwrap(),
            entries[1..].to_vec()
        );
        assert_eq!(sm.applied_state().await.unwrap(), applied);
        assert_eq!(applied.0, Some(log_id(1, 3)));
        assert_eq!(applied.1.membership(), &membership);
        assert_eq!(*sm.shared_state().read(), state);
        assert_eq!(state.state.cluster_id, "c1");
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot kept");
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(
            current.snapshot.into_inner(),
            snapshot.snapshot.into_inner()
        );
    }
}
