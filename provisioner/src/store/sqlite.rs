//! The embedded SQLite store: one database file in WAL mode, schema versioned by `user_version`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{CasOutcome, SecretKind, Store};
use crate::api::{
    Event, EventSeq, HardwareInventory, HostId, HostState, HostSummary, ImageInfo, ImageName,
    MacAddr, NewRule, Rule, RuleId, StateName, Timestamp,
};
use crate::secret::SecretHash;

/// Schema migrations; `user_version` is the number applied so far.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    "CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        mac TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE inventory (
        host_id TEXT PRIMARY KEY REFERENCES hosts(id) ON DELETE CASCADE,
        data TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        artifacts TEXT NOT NULL,
        imported_at INTEGER NOT NULL
    );
    CREATE TABLE rules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        body TEXT NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        host_id TEXT NOT NULL,
        mac TEXT NOT NULL,
        event TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        state TEXT
    );
    CREATE INDEX events_host ON events(host_id, seq);
    CREATE TABLE secrets (
        host_id TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (host_id, kind)
    );",
];

/// Errors of the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("failed to open inventory database `{path}`")]
    Open {
        /// Database file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: rusqlite::Error,
    },
    /// A schema migration failed.
    #[error("failed to migrate inventory database `{path}` to schema version {version}")]
    Migrate {
        /// Database file.
        path: PathBuf,
        /// The version being applied.
        version: usize,
        /// Cause.
        #[source]
        err: rusqlite::Error,
    },
    /// The database has a newer schema than this program knows.
    #[error("inventory database `{path}` has schema version {found}, newer than {known}")]
    TooNew {
        /// Database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this program knows.
        known: usize,
    },
    /// A query failed.
    #[error("inventory query failed: {op}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        err: rusqlite::Error,
    },
    /// A stored value does not decode.
    #[error("corrupt {what} in inventory database")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Cause.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The SQLite inventory store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn q(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |err| StoreError::Query { op, err }
}

fn corrupt<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |err| StoreError::Corrupt {
        what,
        err: Box::new(err),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("invariant: API types always serialize to JSON")
}

fn ts(v: i64) -> Timestamp {
    Timestamp(u64::try_from(v).unwrap_or(0))
}

fn sql_ts(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn state_name_str(s: StateName) -> String {
    s.to_string()
}

/// A raw `hosts` row.
struct HostRow {
    id: String,
    mac: String,
    state: String,
    generation: i64,
    created_at: i64,
    updated_at: i64,
}

const HOST_COLS: &str = "id, mac, state, generation, created_at, updated_at";

fn host_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HostRow> {
    Ok(HostRow {
        id: r.get(0)?,
        mac: r.get(1)?,
        state: r.get(2)?,
        generation: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

impl HostRow {
    fn decode(self) -> Result<HostSummary, StoreError> {
        let state: HostState = serde_json::from_str(&self.state).map_err(corrupt("host state"))?;
        let hostname = match &state {
            HostState::Deploying { plan, .. }
            | HostState::Deployed { plan }
            | HostState::Failed {
                plan: Some(plan), ..
            } => Some(plan.hostname.clone()),
            HostState::Discovered
            | HostState::Inspected
            | HostState::Ready
            | HostState::Failed { plan: None, .. } => None,
        };
        Ok(HostSummary {
            id: self.id.parse().map_err(corrupt("host id"))?,
            mac: self.mac.parse().map_err(corrupt("host mac"))?,
            hostname,
            state,
            generation: u64::try_from(self.generation).unwrap_or(0),
            created_at: ts(self.created_at),
            updated_at: ts(self.updated_at),
        })
    }
}

struct EventRow {
    seq: i64,
    at: i64,
    host: String,
    mac: String,
    event: String,
    from: Option<String>,
    to: Option<String>,
    state: Option<String>,
}

fn parse_state_name(s: &str) -> Result<StateName, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(corrupt("event state name"))
}

impl EventRow {
    fn decode(self) -> Result<Event, StoreError> {
        Ok(Event {
            seq: EventSeq(u64::try_from(self.seq).unwrap_or(0)),
            at: ts(self.at),
            host: self.host.parse().map_err(corrupt("event host id"))?,
            mac: self.mac.parse().map_err(corrupt("event mac"))?,
            event: self.event,
            from: self.from.as_deref().map(parse_state_name).transpose()?,
            to: self.to.as_deref().map(parse_state_name).transpose()?,
            state: self
                .state
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(corrupt("event state"))?,
        })
    }
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    at: Timestamp,
    host: HostId,
    mac: MacAddr,
    event: &str,
    from: Option<StateName>,
    to: Option<&HostState>,
) -> Result<Event, StoreError> {
    tx.execute(
        "INSERT INTO events (at, host_id, mac, event, from_state, to_state, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            sql_ts(at),
            host.to_string(),
            mac.to_string(),
            event,
            from.map(state_name_str),
            to.map(|s| state_name_str(s.name())),
            to.map(to_json),
        ],
    )
    .map_err(q("insert event"))?;
    Ok(Event {
        seq: EventSeq(u64::try_from(tx.last_insert_rowid()).unwrap_or(0)),
        at,
        host,
        mac,
        event: event.to_owned(),
        from,
        to: to.map(HostState::name),
        state: to.cloned(),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, enables WAL and foreign keys, and
    /// applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |err| StoreError::Open {
            path: path.to_owned(),
            err,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        let applied = usize::try_from(version).unwrap_or(0);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            let version = i + 1;
            let mig_err = |err| StoreError::Migrate {
                path: path.to_owned(),
                version,
                err,
            };
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(mig_err)?;
            tx.execute_batch(sql).map_err(mig_err)?;
            tx.pragma_update(
                None,
                "user_version",
                i64::try_from(version).unwrap_or(i64::MAX),
            )
            .map_err(mig_err)?;
            tx.commit().map_err(mig_err)?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(q("read schema version"))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (rusqlite
        // rolls back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn host_where(
        conn: &Connection,
        clause: &str,
        arg: String,
    ) -> Result<Option<HostSummary>, StoreError> {
        conn.query_row(
            &format!("SELECT {HOST_COLS} FROM hosts WHERE {clause}"),
            [arg],
            host_row,
        )
        .optional()
        .map_err(q("read host"))?
        .map(HostRow::decode)
        .transpose()
    }
}

impl Store for SqliteStore {
    type Error = StoreError;

    fn upsert_host_by_mac(
        &self,
        mac: MacAddr,
        now: Timestamp,
    ) -> Result<(HostSummary, bool), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(q("begin"))?;
        if let Some(h) = Self::host_where(&tx, "mac = ?1", mac.to_string())? {
            return Ok((h, false));
        }
        let id = HostId::new_random();
        let state = HostState::Discovered;
        tx.execute(
            "INSERT INTO hosts (id, mac, state, generation, created_at, updated_at)
             VALUES (?1, ?2, ?3, 0, ?4, ?4)",
            params![
                id.to_string(),
                mac.to_string(),
                to_json(&state),
                sql_ts(now)
            ],
        )
        .map_err(q("insert host"))?;
        insert_event(&tx, now, id, mac, "discovered", None, Some(&state))?;
        let host = Self::host_where(&tx, "id = ?1", id.to_string())?
            .expect("invariant: the host was inserted in this transaction");
        tx.commit().map_err(q("commit"))?;
        Ok((host, true))
    }

    fn host(&self, id: HostId) -> Result<Option<HostSummary>, StoreError> {
        Self::host_where(&self.lock(), "id = ?1", id.to_string())
    }

    fn host_by_mac(&self, mac: MacAddr) -> Result<Option<HostSummary>, StoreError> {
        Self::host_where(&self.lock(), "mac = ?1", mac.to_string())
    }

    fn hosts(&self) -> Result<Vec<HostSummary>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {HOST_COLS} FROM hosts ORDER BY created_at, id"
            ))
            .map_err(q("list hosts"))?;
        let rows = stmt
            .query_map([], host_row)
            .map_err(q("list hosts"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q("list hosts"))?;
        rows.into_iter().map(HostRow::decode).collect()
    }

    fn delete_host(&self, id: HostId, now: Timestamp) -> Result<Option<Event>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(q("begin"))?;
        let Some(host) = Self::host_where(&tx, "id = ?1", id.to_string())? else {
            return Ok(None);
        };
        tx.execute("DELETE FROM hosts WHERE id = ?1", [id.to_string()])
            .map_err(q("delete host"))?;
        let ev = insert_event(
            &tx,
            now,
            id,
            host.mac,
            "deleted",
            Some(host.state.name()),
            None,
        )?;
        tx.commit().map_err(q("commit"))?;
        Ok(Some(ev))
    }

    fn compare_and_swap(
        &self,
        id: HostId,
        expected: u64,
        state: &HostState,
        event: &str,
        now: Timestamp,
    ) -> Result<CasOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(q("begin"))?;
        let Some(before) = Self::host_where(&tx, "id = ?1", id.to_string())? else {
            return Ok(CasOutcome::Missing);
        };
        let expected_sql = i64::try_from(expected).unwrap_or(i64::MAX);
        let n = tx
            .execute(
                "UPDATE hosts SET state = ?1, generation = generation + 1, updated_at = ?2
                 WHERE id = ?3 AND generation = ?4",
                params![to_json(state), sql_ts(now), id.to_string(), expected_sql],
            )
            .map_err(q("update host state"))?;
        if n == 0 {
            return Ok(CasOutcome::Stale);
        }
        let ev = insert_event(
            &tx,
            now,
            id,
            before.mac,
            event,
            Some(before.state.name()),
            Some(state),
        )?;
        let after = Self::host_where(&tx, "id = ?1", id.to_string())?
            .expect("invariant: the host was updated in this transaction");
        tx.commit().map_err(q("commit"))?;
        Ok(CasOutcome::Swapped(Box::new(after), Box::new(ev)))
    }

    fn put_inventory(
        &self,
        id: HostId,
        inv: &HardwareInventory,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO inventory (host_id, data, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host_id) DO UPDATE SET data = excluded.data,
                 updated_at = excluded.updated_at",
                params![id.to_string(), to_json(inv), sql_ts(now)],
            )
            .map_err(q("write inventory"))?;
        Ok(())
    }

    fn inventory(&self, id: HostId) -> Result<Option<HardwareInventory>, StoreError> {
        let data: Option<String> = self
            .lock()
            .query_row(
                "SELECT data FROM inventory WHERE host_id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("read inventory"))?;
        data.map(|d| serde_json::from_str(&d).map_err(corrupt("inventory")))
            .transpose()
    }

    fn insert_image(&self, image: &ImageInfo) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute(
                "INSERT INTO images (name, artifacts, imported_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![
                    image.name.as_str(),
                    to_json(&image.artifacts),
                    sql_ts(image.imported_at)
                ],
            )
            .map_err(q("insert image"))?;
        Ok(n == 1)
    }

    fn images(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT name, artifacts, imported_at FROM images ORDER BY name")
            .map_err(q("list images"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(q("list images"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q("list images"))?;
        rows.into_iter().map(decode_image).collect()
    }

    fn image(&self, name: &ImageName) -> Result<Option<ImageInfo>, StoreError> {
        self.lock()
            .query_row(
                "SELECT name, artifacts, imported_at FROM images WHERE name = ?1",
                [name.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(q("read image"))?
            .map(decode_image)
            .transpose()
    }

    fn add_rule(&self, rule: &NewRule) -> Result<Rule, StoreError> {
        let conn = self.lock();
        conn.execute("INSERT INTO rules (body) VALUES (?1)", [to_json(rule)])
            .map_err(q("insert rule"))?;
        Ok(Rule {
            id: RuleId(u64::try_from(conn.last_insert_rowid()).unwrap_or(0)),
            rule: rule.clone(),
        })
    }

    fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id, body FROM rules ORDER BY id")
            .map_err(q("list rules"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(q("list rules"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q("list rules"))?;
        rows.into_iter()
            .map(|(id, body)| {
                Ok(Rule {
                    id: RuleId(u64::try_from(id).unwrap_or(0)),
                    rule: serde_json::from_str(&body).map_err(corrupt("rule"))?,
                })
            })
            .collect()
    }

    fn delete_rule(&self, id: RuleId) -> Result<bool, StoreError> {
        let id = i64::try_from(id.0).unwrap_or(-1);
        let n = self
            .lock()
            .execute("DELETE FROM rules WHERE id = ?1", [id])
            .map_err(q("delete rule"))?;
        Ok(n == 1)
    }

    fn events(
        &self,
        after: Option<EventSeq>,
        host: Option<HostId>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, at, host_id, mac, event, from_state, to_state, state FROM events
                 WHERE seq > ?1 AND (?2 IS NULL OR host_id = ?2) ORDER BY seq LIMIT ?3",
            )
            .map_err(q("list events"))?;
        let after = after.map_or(0, |s| i64::try_from(s.0).unwrap_or(i64::MAX));
        let rows = stmt
            .query_map(params![after, host.map(|h| h.to_string()), limit], |r| {
                Ok(EventRow {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    host: r.get(2)?,
                    mac: r.get(3)?,
                    event: r.get(4)?,
                    from: r.get(5)?,
                    to: r.get(6)?,
                    state: r.get(7)?,
                })
            })
            .map_err(q("list events"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(q("list events"))?;
        rows.into_iter().map(EventRow::decode).collect()
    }

    fn set_secret(
        &self,
        host: HostId,
        kind: SecretKind,
        hash: &SecretHash,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO secrets (host_id, kind, hash, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (host_id, kind) DO UPDATE SET hash = excluded.hash,
                 created_at = excluded.created_at",
                params![host.to_string(), kind.as_str(), hash.as_str(), sql_ts(now)],
            )
            .map_err(q("write secret"))?;
        Ok(())
    }

    fn secret_owner(
        &self,
        kind: SecretKind,
        hash: &SecretHash,
    ) -> Result<Option<HostId>, StoreError> {
        let id: Option<String> = self
            .lock()
            .query_row(
                "SELECT host_id FROM secrets WHERE kind = ?1 AND hash = ?2",
                params![kind.as_str(), hash.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("read secret"))?;
        id.map(|s| s.parse().map_err(corrupt("secret host id")))
            .transpose()
    }

    fn revoke_secrets(&self, host: HostId) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM secrets WHERE host_id = ?1", [host.to_string()])
            .map_err(q("revoke secrets"))?;
        Ok(())
    }
}

fn decode_image((name, artifacts, at): (String, String, i64)) -> Result<ImageInfo, StoreError> {
    Ok(ImageInfo {
        name: name.parse().map_err(corrupt("image name"))?,
        artifacts: serde_json::from_str(&artifacts).map_err(corrupt("image artifacts"))?,
        imported_at: ts(at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DeployPhase, DeployPlan, DiskSelector, Progress, RuleMatch};
    use crate::secret::Secret;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("inventory.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn migrations_set_user_version_and_reopen() {
        let (dir, store) = open();
        assert_eq!(store.schema_version().unwrap(), 1);
        let (h, created) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        assert!(created);
        drop(store);
        let store = SqliteStore::open(&dir.path().join("inventory.db")).unwrap();
        assert_eq!(store.schema_version().unwrap(), 1);
        assert_eq!(store.host(h.id).unwrap().unwrap(), h);
        let mode: String = store
            .lock()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn too_new_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn upsert_is_idempotent_per_mac() {
        let (_d, store) = open();
        let (a, c1) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        let (b, c2) = store.upsert_host_by_mac(mac(1), Timestamp(2)).unwrap();
        assert!(c1 && !c2);
        assert_eq!(a, b);
        assert_eq!(a.state, HostState::Discovered);
        assert_eq!(a.generation, 0);
        assert_eq!(store.host_by_mac(mac(1)).unwrap().unwrap().id, a.id);
        assert!(store.host_by_mac(mac(2)).unwrap().is_none());
    }

    #[test]
    fn compare_and_swap_checks_generation_and_logs() {
        let (_d, store) = open();
        let (h, _) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        let CasOutcome::Swapped(after, ev) = store
            .compare_and_swap(
                h.id,
                0,
                &HostState::Inspected,
                "inventory_posted",
                Timestamp(5),
            )
            .unwrap()
        else {
            panic!("expected swap");
        };
        assert_eq!(after.generation, 1);
        assert_eq!(after.state, HostState::Inspected);
        assert_eq!(after.updated_at, Timestamp(5));
        assert_eq!(ev.from, Some(StateName::Discovered));
        assert_eq!(ev.to, Some(StateName::Inspected));
        // A second writer with the old generation loses.
        assert_eq!(
            store
                .compare_and_swap(h.id, 0, &HostState::Ready, "x", Timestamp(6))
                .unwrap(),
            CasOutcome::Stale
        );
        assert_eq!(
            store
                .compare_and_swap(
                    HostId::new_random(),
                    0,
                    &HostState::Ready,
                    "x",
                    Timestamp(6)
                )
                .unwrap(),
            CasOutcome::Missing
        );
        let evs = store.events(None, None, 100).unwrap();
        assert_eq!(
            evs.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["discovered", "inventory_posted"]
        );
        assert_eq!(store.events(Some(evs[0].seq), None, 100).unwrap().len(), 1);
        assert_eq!(
            store
                .events(None, Some(HostId::new_random()), 100)
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn hostname_comes_from_plan() {
        let (_d, store) = open();
        let (h, _) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        let s = HostState::Deploying {
            plan: DeployPlan {
                image: "img".parse().unwrap(),
                hostname: "node-7".into(),
                disk: "vda".into(),
            },
            phase: DeployPhase::Writing,
            progress: Progress { done: 1, total: 2 },
        };
        store
            .compare_and_swap(h.id, 0, &s, "rule_matched", Timestamp(2))
            .unwrap();
        let h = store.host(h.id).unwrap().unwrap();
        assert_eq!(h.hostname.as_deref(), Some("node-7"));
        assert_eq!(h.state, s);
    }

    #[test]
    fn delete_cascades_and_logs() {
        let (_d, store) = open();
        let (h, _) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        let secret = Secret::generate();
        store
            .set_secret(h.id, SecretKind::Imager, &secret.hash(), Timestamp(1))
            .unwrap();
        store
            .put_inventory(h.id, &crate::rules::tests::inventory(), Timestamp(1))
            .unwrap();
        let ev = store.delete_host(h.id, Timestamp(3)).unwrap().unwrap();
        assert_eq!(ev.event, "deleted");
        assert_eq!(ev.to, None);
        assert!(store.host(h.id).unwrap().is_none());
        assert!(store.inventory(h.id).unwrap().is_none());
        assert!(
            store
                .secret_owner(SecretKind::Imager, &secret.hash())
                .unwrap()
                .is_none()
        );
        assert!(store.delete_host(h.id, Timestamp(4)).unwrap().is_none());
    }

    #[test]
    fn secrets_are_per_host_and_kind_and_rotate() {
        let (_d, store) = open();
        let (a, _) = store.upsert_host_by_mac(mac(1), Timestamp(1)).unwrap();
        let (b, _) = store.upsert_host_by_mac(mac(2), Timestamp(1)).unwrap();
        let (sa, sb) = (Secret::generate(), Secret::generate());
        store
            .set_secret(a.id, SecretKind::Imager, &sa.hash(), Timestamp(1))
            .unwrap();
        store
            .set_secret(b.id, SecretKind::Enrol, &sb.hash(), Timestamp(1))
            .unwrap();
        assert_eq!(
            store.secret_owner(SecretKind::Imager, &sa.hash()).unwrap(),
            Some(a.id)
        );
        assert_eq!(
            store.secret_owner(SecretKind::Enrol, &sa.hash()).unwrap(),
            None
        );
        assert_eq!(
            store.secret_owner(SecretKind::Enrol, &sb.hash()).unwrap(),
            Some(b.id)
        );
        // Rotating replaces the old secret.
        let sa2 = Secret::generate();
        store
            .set_secret(a.id, SecretKind::Imager, &sa2.hash(), Timestamp(2))
            .unwrap();
        assert_eq!(
            store.secret_owner(SecretKind::Imager, &sa.hash()).unwrap(),
            None
        );
        store.revoke_secrets(a.id).unwrap();
        assert_eq!(
            store.secret_owner(SecretKind::Imager, &sa2.hash()).unwrap(),
            None
        );
    }

    #[test]
    fn rules_and_images_round_trip() {
        let (_d, store) = open();
        let new = NewRule {
            matches: RuleMatch {
                vendor: Some("QEMU".into()),
                ..RuleMatch::default()
            },
            image: "img".parse().unwrap(),
            hostname: "node-{serial}".into(),
            disk: DiskSelector::Largest,
        };
        let r1 = store.add_rule(&new).unwrap();
        let r2 = store.add_rule(&new).unwrap();
        assert!(r2.id > r1.id);
        assert_eq!(store.rules().unwrap(), vec![r1.clone(), r2.clone()]);
        assert!(store.delete_rule(r1.id).unwrap());
        assert!(!store.delete_rule(r1.id).unwrap());
        assert_eq!(store.rules().unwrap(), vec![r2]);

        let img = ImageInfo {
            name: "img".parse().unwrap(),
            artifacts: vec![crate::api::Artifact {
                path: "disk.raw".into(),
                sha256: "00".repeat(32),
                size: 3,
            }],
            imported_at: Timestamp(9),
        };
        assert!(store.insert_image(&img).unwrap());
        assert!(!store.insert_image(&img).unwrap());
        assert_eq!(store.images().unwrap(), vec![img.clone()]);
        assert_eq!(store.image(&img.name).unwrap(), Some(img));
    }
}
