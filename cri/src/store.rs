//! carrackd's own tables in the SQLite database it shares with the image
//! store (`<root>/carrack.db`, WAL): one row per sandbox and per container,
//! the record (state and the CRI config it was made from) as JSON.
//!
//! A row is written before the thing it describes is made (state
//! `Creating`), so that a crash half-way leaves a row start-up recovery finds
//! and cleans up.
//!
//! Every row is also kept in memory as written (read once at open): reads
//! never touch SQLite. kubelet lists every sandbox and container each
//! second and looks one up by id in each call; parsing each row's JSON on
//! every read cost a full node (250 pods) milliseconds per call.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use carrack_proto::cri;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A record did not (de)serialise.
    #[error("record {id}: {source}")]
    Json {
        /// The record's id.
        id: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The name is held by another record.
    #[error("name {name:?} is already reserved by {holder}")]
    NameTaken {
        /// The name.
        name: String,
        /// The id holding it.
        holder: String,
    },
}

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Being made: a row in this state at start-up is a leftover.
    Creating,
    /// Namespaces and files exist.
    Ready,
    /// Stopped: namespaces released, containers stopped.
    NotReady,
}

/// What carrackd keeps about one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox id.
    pub id: String,
    /// The unique name (metadata name, namespace, uid, attempt).
    pub name: String,
    /// The config it was made from.
    pub config: cri::PodSandboxConfig,
    /// The runtime handler name (resolved, never empty).
    pub runtime_handler: String,
    /// The state.
    pub state: SandboxState,
    /// Creation time, Unix nanoseconds.
    pub created_at: i64,
    /// The pod cgroup (absolute cgroupfs path).
    pub cgroup_path: String,
    /// The pinned namespace files (empty path: host namespace).
    pub netns: String,
    /// Pinned IPC namespace.
    pub ipcns: String,
    /// Pinned UTS namespace.
    pub utsns: String,
    /// Pod IP, once networking gives one.
    pub ip: String,
    /// The pod's other IPs (dual stack), after `ip`.
    #[serde(default)]
    pub additional_ips: Vec<String>,
    /// The infra process holding the pod's shared PID namespace
    /// (`namespace_options.pid = POD`), None otherwise.
    #[serde(default)]
    pub infra: Option<crate::pod_infra::InfraProcess>,
    /// The pinned user namespace file (`hostUsers: false`), empty otherwise.
    #[serde(default)]
    pub userns: String,
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Being made.
    Creating,
    /// Created (the runtime's create ran).
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
}

/// What carrackd keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container id.
    pub id: String,
    /// The unique name.
    pub name: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// The config it was made from.
    pub config: cri::ContainerConfig,
    /// The image id (`sha256:…`).
    pub image_id: String,
    /// A digest reference of the image, if known, else its id.
    pub image_ref: String,
    /// The state.
    pub state: ContainerState,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Unix nanoseconds (0: not started).
    pub started_at: i64,
    /// Unix nanoseconds (0: not finished).
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// Completed, Error, OOMKilled, or why the state is what it is.
    pub reason: String,
    /// A human-readable message.
    pub message: String,
    /// The log file (absolute), empty when none.
    pub log_path: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The runtime handler name.
    pub runtime_handler: String,
    /// The signal that stops it, the kernel's number: the config's
    /// `stop_signal`, else the image's STOPSIGNAL, else SIGTERM.
    pub stop_signal: i32,
    /// Resources as last applied.
    pub resources: Option<cri::LinuxContainerResources>,
    /// The uid, gid and groups the process was given (its OCI spec's
    /// `process.user`), set once the spec is written. Records of an older
    /// carrackd have none; ContainerStatus reads their bundle's spec then.
    #[serde(default)]
    pub user: Option<cri::ContainerUser>,
}

/// The rows of one table as written, by id and in insertion order (the
/// order of SQLite's rowids, which reads used to follow). Records are
/// shared, so that the lists kubelet polls every second take no copies.
#[derive(Debug)]
struct Rows<T> {
    /// id → (insertion number, record).
    by_id: HashMap<String, (u64, Arc<T>)>,
    /// Insertion number → id.
    order: BTreeMap<u64, String>,
    next: u64,
}

impl<T: Clone> Rows<T> {
    fn new(records: Vec<(String, T)>) -> Rows<T> {
        let mut rows = Rows {
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        };
        for (id, r) in records {
            rows.insert(id, r);
        }
        rows
    }

    fn insert(&mut self, id: String, r: T) {
        let n = self.next;
        self.next += 1;
        self.order.insert(n, id.clone());
        if let Some((old, _)) = self.by_id.insert(id, (n, Arc::new(r))) {
            self.order.remove(&old);
        }
    }

    fn update(&mut self, id: &str, r: T) {
        if let Some((_, slot)) = self.by_id.get_mut(id) {
            *slot = Arc::new(r);
        }
    }

    fn delete(&mut self, id: &str) {
        if let Some((n, _)) = self.by_id.remove(id) {
            self.order.remove(&n);
        }
    }

    fn get(&self, id: &str) -> Option<T> {
        self.by_id.get(id).map(|(_, r)| T::clone(r))
    }

    fn all(&self) -> Vec<T> {
        self.order
            .values()
            .filter_map(|id| self.by_id.get(id).map(|(_, r)| T::clone(r)))
            .collect()
    }

    fn shared(&self) -> Vec<Arc<T>> {
        self.order
            .values()
            .filter_map(|id| self.by_id.get(id).map(|(_, r)| r.clone()))
            .collect()
    }
}

/// The database.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// `cri_sandboxes` as written (writes hold `conn` while they change
    /// both, so the two agree).
    sandboxes: RwLock<Rows<SandboxRecord>>,
    /// `cri_containers` as written.
    containers: RwLock<Rows<ContainerRecord>>,
}

impl Store {
    /// Opens (creates) the database and carrackd's tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS cri_sandboxes (
                id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS cri_containers (
                id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, sandbox_id TEXT NOT NULL,
                record TEXT NOT NULL);",
        )
        .map_err(err)?;
        let sandboxes = Rows::new(read_all(&conn, "cri_sandboxes").map_err(|e| e.at(path))?);
        let containers = Rows::new(read_all(&conn, "cri_containers").map_err(|e| e.at(path))?);
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            sandboxes: RwLock::new(sandboxes),
            containers: RwLock::new(containers),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a row (the caller holds `conn` and puts the record in
    /// memory after).
    fn insert(
        &self,
        conn: &Connection,
        table: &str,
        id: &str,
        name: &str,
        extra: Option<&str>,
        json: String,
    ) -> Result<(), StoreError> {
        let holder: Option<String> = conn
            .query_row(
                &format!("SELECT id FROM {table} WHERE name = ?1"),
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        if let Some(holder) = holder {
            return Err(StoreError::NameTaken {
                name: name.to_owned(),
                holder,
            });
        }
        match extra {
            Some(sb) => conn.execute(
                &format!(
                    "INSERT INTO {table} (id, name, sandbox_id, record) VALUES (?1, ?2, ?3, ?4)"
                ),
                params![id, name, sb, json],
            ),
            None => conn.execute(
                &format!("INSERT INTO {table} (id, name, record) VALUES (?1, ?2, ?3)"),
                params![id, name, json],
            ),
        }
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Replaces the record of row `id` in `table`; true when there was one.
    fn update(
        &self,
        conn: &Connection,
        table: &str,
        id: &str,
        json: String,
    ) -> Result<bool, StoreError> {
        let n = conn
            .execute(
                &format!("UPDATE {table} SET record = ?2 WHERE id = ?1"),
                params![id, json],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Deletes row `id` of `table`.
    fn delete(&self, conn: &Connection, table: &str, id: &str) -> Result<(), StoreError> {
        conn.execute(&format!("DELETE FROM {table} WHERE id = ?1"), params![id])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Reserves the sandbox's name and stores the record.
    pub fn insert_sandbox(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        self.insert(
            &conn,
            "cri_sandboxes",
            &r.id,
            &r.name,
            None,
            to_json(&r.id, r)?,
        )?;
        write(&self.sandboxes).insert(r.id.clone(), r.clone());
        Ok(())
    }

    /// Replaces a sandbox record.
    pub fn update_sandbox(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        if self.update(&conn, "cri_sandboxes", &r.id, to_json(&r.id, r)?)? {
            write(&self.sandboxes).update(&r.id, r.clone());
        }
        Ok(())
    }

    /// Deletes a sandbox row.
    pub fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        self.delete(&conn, "cri_sandboxes", id)?;
        write(&self.sandboxes).delete(id);
        Ok(())
    }

    /// Every sandbox, in the order they were inserted.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        Ok(read(&self.sandboxes).all())
    }

    /// Every sandbox, in the order they were inserted, as shared records
    /// (nothing copied: for reads that look at each and keep little).
    pub fn sandboxes_shared(&self) -> Vec<Arc<SandboxRecord>> {
        read(&self.sandboxes).shared()
    }

    /// The sandbox whose id is `id`.
    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        Ok(read(&self.sandboxes).get(id))
    }

    /// Reserves the container's name and stores the record.
    pub fn insert_container(&self, r: &ContainerRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        self.insert(
            &conn,
            "cri_containers",
            &r.id,
            &r.name,
            Some(&r.sandbox_id),
            to_json(&r.id, r)?,
        )?;
        write(&self.containers).insert(r.id.clone(), r.clone());
        Ok(())
    }

    /// Replaces a container record.
    pub fn update_container(&self, r: &ContainerRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        if self.update(&conn, "cri_containers", &r.id, to_json(&r.id, r)?)? {
            write(&self.containers).update(&r.id, r.clone());
        }
        Ok(())
    }

    /// Deletes a container row.
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        self.delete(&conn, "cri_containers", id)?;
        write(&self.containers).delete(id);
        Ok(())
    }

    /// Every container, in the order they were inserted.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        Ok(read(&self.containers).all())
    }

    /// Every container, in the order they were inserted, as shared records
    /// (nothing copied: for reads that look at each and keep little).
    pub fn containers_shared(&self) -> Vec<Arc<ContainerRecord>> {
        read(&self.containers).shared()
    }

    /// The container whose id is `id`.
    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        Ok(read(&self.containers).get(id))
    }
}

fn read<T>(rows: &RwLock<Rows<T>>) -> std::sync::RwLockReadGuard<'_, Rows<T>> {
    rows.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(rows: &RwLock<Rows<T>>) -> std::sync::RwLockWriteGuard<'_, Rows<T>> {
    rows.write().unwrap_or_else(|e| e.into_inner())
}

/// A failure reading the rows at open, before the store knows its path.
enum ReadError {
    Sqlite(rusqlite::Error),
    Json(String, serde_json::Error),
}

impl ReadError {
    fn at(self, path: &Path) -> StoreError {
        match self {
            ReadError::Sqlite(source) => StoreError::Sqlite {
                path: path.to_owned(),
                source,
            },
            ReadError::Json(id, source) => StoreError::Json { id, source },
        }
    }
}

/// Every row of `table` by rowid, as (id, record).
fn read_all<T: for<'de> Deserialize<'de>>(
    conn: &Connection,
    table: &str,
) -> Result<Vec<(String, T)>, ReadError> {
    let mut stmt = conn
        .prepare(&format!("SELECT id, record FROM {table} ORDER BY rowid"))
        .map_err(ReadError::Sqlite)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(ReadError::Sqlite)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, json) = row.map_err(ReadError::Sqlite)?;
        let record = serde_json::from_str(&json).map_err(|e| ReadError::Json(id.clone(), e))?;
        out.push((id, record));
    }
    Ok(out)
}

fn to_json<T: Serialize>(id: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Json {
        id: id.to_owned(),
        source,
    })
}

/// Records for unit tests: the fields a test does not name are empty.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A sandbox `id` named `name`, being made, in cgroup `/carrack/<id>`.
    pub(crate) fn sandbox(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: name.into(),
            config: cri::PodSandboxConfig::default(),
            runtime_handler: "runc".into(),
            state: SandboxState::Creating,
            created_at: 1,
            cgroup_path: format!("/carrack/{id}"),
            netns: String::new(),
            ipcns: String::new(),
            utsns: String::new(),
            ip: String::new(),
            additional_ips: Vec::new(),
            infra: None,
            userns: String::new(),
        }
    }

    /// A running container `id` of sandbox `sandbox_id`, its bundle
    /// `/nonexistent`.
    pub(crate) fn container(id: &str, sandbox_id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: id.into(),
            sandbox_id: sandbox_id.into(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            state: ContainerState::Running,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            log_path: String::new(),
            bundle: PathBuf::from("/nonexistent"),
            runtime_handler: String::new(),
            stop_signal: 15,
            resources: None,
            user: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::sandbox;
    use super::*;

    #[test]
    fn names_are_unique_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let s = Store::open(&db).unwrap();
        s.insert_sandbox(&sandbox("a", "pod_ns_uid_0")).unwrap();
        let e = s.insert_sandbox(&sandbox("b", "pod_ns_uid_0")).unwrap_err();
        assert!(
            matches!(&e, StoreError::NameTaken { holder, .. } if holder == "a"),
            "{e}"
        );
        let mut r = sandbox("a", "pod_ns_uid_0");
        r.state = SandboxState::Ready;
        s.update_sandbox(&r).unwrap();
        drop(s);
        let s = Store::open(&db).unwrap();
        let all = s.sandboxes().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, SandboxState::Ready);
        s.delete_sandbox("a").unwrap();
        assert!(s.sandboxes().unwrap().is_empty());
        s.insert_sandbox(&sandbox("b", "pod_ns_uid_0")).unwrap();
    }

    /// Reads answer from the rows kept in memory: a row another connection
    /// deletes behind the store's back is still read, until a reopen.
    #[test]
    fn reads_come_from_memory_and_follow_the_stores_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let s = Store::open(&db).unwrap();
        for id in ["a", "b", "c"] {
            s.insert_sandbox(&sandbox(id, &format!("n-{id}"))).unwrap();
        }
        let other = Connection::open(&db).unwrap();
        other
            .execute("DELETE FROM cri_sandboxes WHERE id = 'a'", [])
            .unwrap();
        assert_eq!(s.sandbox("a").unwrap().unwrap().name, "n-a");
        // The store's own writes show at once, in insertion order.
        let mut b = sandbox("b", "n-b");
        b.state = SandboxState::Ready;
        s.update_sandbox(&b).unwrap();
        s.delete_sandbox("c").unwrap();
        s.insert_sandbox(&sandbox("d", "n-d")).unwrap();
        let read: Vec<(String, SandboxState)> = s
            .sandboxes()
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.state))
            .collect();
        assert_eq!(
            read,
            [
                ("a".to_string(), SandboxState::Creating),
                ("b".to_string(), SandboxState::Ready),
                ("d".to_string(), SandboxState::Creating)
            ]
        );
        assert!(s.sandbox("c").unwrap().is_none());
        // An update of a row that is not in the file changes nothing.
        s.update_sandbox(&sandbox("a", "n-a")).unwrap();
        drop(s);
        let ids: Vec<String> = Store::open(&db)
            .unwrap()
            .sandboxes()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["b", "d"]);
    }
}
