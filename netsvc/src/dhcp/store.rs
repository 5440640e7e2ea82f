//! Durable lease storage: the [`LeaseStore`] trait, its SQLite implementation, and the
//! group-commit writer thread the server persists through.

use std::net::Ipv4Addr;
use std::sync::mpsc;

use camino::{Utf8Path, Utf8PathBuf};
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::lease::{Lease, LeaseState};
use crate::MacAddr;

/// Where leases are kept. One row per address; `save` is all-or-nothing and durable when it
/// returns (the server sends an ACK only after that).
pub trait LeaseStore: Send + 'static {
    /// What can go wrong.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every stored lease, in any state.
    fn load(&mut self) -> Result<Vec<Lease>, Self::Error>;

    /// Upserts `batch` (keyed by address) in one durable transaction.
    fn save(&mut self, batch: &[Lease]) -> Result<(), Self::Error>;
}

/// A SQLite lease database failed.
#[derive(Debug, thiserror::Error)]
pub enum SqliteStoreError {
    /// Opening or preparing the database failed.
    #[error("failed to open lease database `{path}`")]
    Open {
        /// The database file.
        path: Utf8PathBuf,
        /// Why.
        #[source]
        err: rusqlite::Error,
    },
    /// A query or the commit failed.
    #[error("lease database `{path}` failed to {op}")]
    Query {
        /// The database file.
        path: Utf8PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        err: rusqlite::Error,
    },
}

/// Leases in a SQLite file: WAL journal, `synchronous=FULL` (every commit is fsynced).
#[derive(Debug)]
pub struct SqliteLeaseStore {
    conn: Connection,
    path: Utf8PathBuf,
    stop_checkpointer: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Drop for SqliteLeaseStore {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop_checkpointer {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl SqliteLeaseStore {
    /// The file name used under a state directory.
    pub const FILE_NAME: &'static str = "dhcp-leases.sqlite";

    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Utf8Path) -> Result<Self, SqliteStoreError> {
        let open_err = |err| SqliteStoreError::Open {
            path: path.to_owned(),
            err,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS leases (
                ip INTEGER PRIMARY KEY,
                mac TEXT NOT NULL,
                client_id BLOB,
                hostname TEXT,
                expires INTEGER NOT NULL,
                state TEXT NOT NULL,
                seq INTEGER NOT NULL DEFAULT 0
            );",
        )
        .map_err(open_err)?;
        // Databases from before `seq` existed get the column; their rows keep 0 ("unknown").
        let has_seq = conn
            .prepare("SELECT 1 FROM pragma_table_info('leases') WHERE name = 'seq'")
            .and_then(|mut s| s.exists([]))
            .map_err(open_err)?;
        if !has_seq {
            conn.execute_batch("ALTER TABLE leases ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;")
                .map_err(open_err)?;
        }
        Ok(SqliteLeaseStore {
            conn,
            path: path.to_owned(),
            stop_checkpointer: None,
        })
    }

    /// Moves checkpointing off the write path: this connection no longer checkpoints the WAL
    /// on commit, and a background thread with its own connection runs passive checkpoints
    /// (which never block the writer) until `self` is dropped. Commits still fsync the WAL.
    pub fn checkpoint_in_background(&mut self) -> Result<(), SqliteStoreError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|err| self.query_err("disable autocheckpoint", err))?;
        let conn = Connection::open(&self.path).map_err(|err| SqliteStoreError::Open {
            path: self.path.clone(),
            err,
        })?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop_checkpointer = Some(stop.clone());
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("dhcp-checkpoint".into())
            .spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    if let Err(err) =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        let err = SqliteStoreError::Query {
                            path: path.clone(),
                            op: "checkpoint",
                            err,
                        };
                        tracing::warn!(error = %common::ErrorChain(&err), "lease checkpoint failed");
                    }
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %common::ErrorChain(&err), "no checkpoint thread: checkpointing on commit");
            self.conn
                .pragma_update(None, "wal_autocheckpoint", 1000)
                .map_err(|err| self.query_err("enable autocheckpoint", err))?;
        }
        Ok(())
    }

    /// Number of leases live at `now` (seconds since the epoch).
    pub fn count_live(&self, now: u64) -> Result<u64, SqliteStoreError> {
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        self.conn
            .query_row(
                "SELECT count(*) FROM leases WHERE state = 'bound' AND expires > ?1",
                [now],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|err| self.query_err("count leases", err))
    }

    fn query_err(&self, op: &'static str, err: rusqlite::Error) -> SqliteStoreError {
        SqliteStoreError::Query {
            path: self.path.clone(),
            op,
            err,
        }
    }
}

impl LeaseStore for SqliteLeaseStore {
    type Error = SqliteStoreError;

    fn load(&mut self) -> Result<Vec<Lease>, Self::Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT ip, mac, client_id, hostname, expires, state, seq FROM leases")
            .map_err(|err| self.query_err("load leases", err))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .map_err(|err| self.query_err("load leases", err))?;
        let mut out = Vec::new();
        for row in rows {
            let (ip, mac, client_id, hostname, expires, state, seq) =
                row.map_err(|err| self.query_err("load leases", err))?;
            // Rows this version did not write are skipped rather than guessed at.
            let (Ok(mac), Some(state)) = (mac.parse::<MacAddr>(), LeaseState::parse(&state)) else {
                tracing::warn!(ip = %Ipv4Addr::from(ip), "unreadable lease row skipped");
                continue;
            };
            out.push(Lease {
                ip: Ipv4Addr::from(ip),
                mac,
                client_id,
                hostname,
                expires: u64::try_from(expires).unwrap_or(0),
                state,
                seq: u64::try_from(seq).unwrap_or(0),
            });
        }
        Ok(out)
    }

    fn save(&mut self, batch: &[Lease]) -> Result<(), Self::Error> {
        let path = self.path.clone();
        let err = |op, err| SqliteStoreError::Query {
            path: path.clone(),
            op,
            err,
        };
        let tx = self
            .conn
            .transaction()
            .map_err(|e| err("begin transaction", e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO leases
                     (ip, mac, client_id, hostname, expires, state, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(|e| err("prepare upsert", e))?;
            for l in batch {
                stmt.execute(params![
                    u32::from(l.ip),
                    l.mac.to_string(),
                    l.client_id,
                    l.hostname,
                    i64::try_from(l.expires).unwrap_or(i64::MAX),
                    l.state.as_str(),
                    i64::try_from(l.seq).unwrap_or(i64::MAX),
                ])
                .map_err(|e| err("upsert lease", e))?;
            }
        }
        tx.commit().map_err(|e| err("commit", e))
    }
}

/// Persisting a lease failed; the reply that depended on it is not sent.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The writer thread is gone (shutting down).
    #[error("lease writer has stopped")]
    Stopped,
    /// The store refused the batch.
    #[error("lease store failed to save a batch")]
    Store {
        /// The store's error, printed once per batch.
        #[source]
        err: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
}

struct Job {
    leases: Vec<Lease>,
    done: oneshot::Sender<Result<(), PersistError>>,
}

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

/// Handle to the group-commit writer: concurrent callers' leases share one fsync.
#[derive(Debug, Clone)]
pub(crate) struct Persister {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("leases", &self.leases).finish()
    }
}

impl Persister {
    /// Starts the writer thread over `store`. It exits when every handle is dropped.
    pub(crate) fn spawn<S: LeaseStore>(mut store: S) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("dhcp-leases".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let batch: Vec<Lease> =
                        jobs.iter().flat_map(|j| j.leases.iter().cloned()).collect();
                    match store.save(&batch) {
                        Ok(()) => {
                            for j in jobs {
                                let _ = j.done.send(Ok(()));
                            }
                        }
                        Err(err) => {
                            let err: std::sync::Arc<dyn std::error::Error + Send + Sync> =
                                std::sync::Arc::new(err);
                            tracing::error!(
                                error = %common::ErrorChain(&*err),
                                leases = batch.len(),
                                "lease write failed"
                            );
                            for j in jobs {
                                let _ = j.done.send(Err(PersistError::Store { err: err.clone() }));
                            }
                        }
                    }
                }
            })?;
        Ok(Persister { tx })
    }

    /// Persists `leases`; returns once they are durable.
    ///
    /// Cancel safety: dropping the future does not un-queue the write; it still happens.
    pub(crate) async fn persist(&self, leases: Vec<Lease>) -> Result<(), PersistError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { leases, done })
            .map_err(|_| PersistError::Stopped)?;
        rx.await.map_err(|_| PersistError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, state: LeaseState) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 61, 0, last),
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            client_id: Some(vec![1, 2]),
            hostname: Some(format!("h{last}")),
            expires: 1000,
            state,
            seq: u64::from(last),
        }
    }

    #[test]
    fn sqlite_round_trip_and_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Utf8PathBuf::from_path_buf(dir.path().join("l.sqlite")).expect("utf8");
        let mut s = SqliteLeaseStore::open(&path).expect("open");
        let a = lease(10, LeaseState::Bound);
        let b = lease(11, LeaseState::Declined);
        s.save(&[a.clone(), b.clone()]).expect("save");
        let mut a2 = a.clone();
        a2.expires = 2000;
        s.save(std::slice::from_ref(&a2)).expect("upsert");
        drop(s);
        let mut s = SqliteLeaseStore::open(&path).expect("reopen");
        let mut got = s.load().expect("load");
        got.sort_by_key(|l| l.ip);
        assert_eq!(got, vec![a2, b]);
        assert_eq!(s.count_live(1500).expect("count"), 1);
        assert_eq!(s.count_live(2500).expect("count"), 0);
    }

    #[test]
    fn databases_without_seq_are_migrated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Utf8PathBuf::from_path_buf(dir.path().join("l.sqlite")).expect("utf8");
        let old = Connection::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE leases (ip INTEGER PRIMARY KEY, mac TEXT NOT NULL, client_id BLOB,
                hostname TEXT, expires INTEGER NOT NULL, state TEXT NOT NULL);
             INSERT INTO leases VALUES (168430090, '02:00:00:00:00:0a', NULL, 'h', 1000, 'bound');",
        )
        .expect("old schema");
        drop(old);
        let mut s = SqliteLeaseStore::open(&path).expect("migrates");
        let got = s.load().expect("load");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].ip, got[0].seq), (Ipv4Addr::new(10, 10, 10, 10), 0));
        let mut l = got[0].clone();
        l.seq = 7;
        s.save(&[l.clone()]).expect("save");
        assert_eq!(s.load().expect("load"), vec![l]);
    }

    #[tokio::test]
    async fn group_commit_persists_concurrent_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Utf8PathBuf::from_path_buf(dir.path().join("l.sqlite")).expect("utf8");
        let mut store = SqliteLeaseStore::open(&path).expect("open");
        store.checkpoint_in_background().expect("checkpointer");
        let p = Persister::spawn(store).expect("spawn");
        let mut tasks = Vec::new();
        for i in 1..=50u8 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.persist(vec![lease(i, LeaseState::Bound)]).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("persisted");
        }
        let s = SqliteLeaseStore::open(&path).expect("open");
        assert_eq!(s.count_live(0).expect("count"), 50);
    }
}
