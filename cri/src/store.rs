//! carrackd's own tables in the SQLite database it shares with the image
//! store (`<root>/carrack.db`, WAL): one row per sandbox and per container,
//! the record (state and the CRI config it was made from) as JSON.
//!
//! A row is written before the thing it describes is made (state
//! `Creating`), so that a crash half-way leaves a row start-up recovery finds
//! and cleans up.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The database.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
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
        Ok(Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
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

    fn insert(
        &self,
        table: &str,
        id: &str,
        name: &str,
        extra: Option<&str>,
        json: String,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
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

    /// Reserves the sandbox's name and stores the record.
    pub fn insert_sandbox(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        self.insert("cri_sandboxes", &r.id, &r.name, None, to_json(&r.id, r)?)
    }

    /// Replaces a sandbox record.
    pub fn update_sandbox(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE cri_sandboxes SET record = ?2 WHERE id = ?1",
                params![r.id, to_json(&r.id, r)?],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Deletes a sandbox row.
    pub fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM cri_sandboxes WHERE id = ?1", params![id])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every sandbox.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        self.all("cri_sandboxes")
    }

    /// Reserves the container's name and stores the record.
    pub fn insert_container(&self, r: &ContainerRecord) -> Result<(), StoreError> {
        self.insert(
            "cri_containers",
            &r.id,
            &r.name,
            Some(&r.sandbox_id),
            to_json(&r.id, r)?,
        )
    }

    /// Replaces a container record.
    pub fn update_container(&self, r: &ContainerRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE cri_containers SET record = ?2 WHERE id = ?1",
                params![r.id, to_json(&r.id, r)?],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Deletes a container row.
    pub fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM cri_containers WHERE id = ?1", params![id])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every container.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.all("cri_containers")
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, table: &str) -> Result<Vec<T>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT id, record FROM {table} ORDER BY rowid"))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(|e| self.sql(e))?;
            out.push(
                serde_json::from_str(&json).map_err(|source| StoreError::Json { id, source })?,
            );
        }
        Ok(out)
    }
}

fn to_json<T: Serialize>(id: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|source| StoreError::Json {
        id: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: name.into(),
            config: cri::PodSandboxConfig::default(),
            runtime_handler: "runc".into(),
            state: SandboxState::Creating,
            created_at: 1,
            cgroup_path: "/carrack/x".into(),
            netns: String::new(),
            ipcns: String::new(),
            utsns: String::new(),
            ip: String::new(),
            additional_ips: Vec::new(),
            infra: None,
            userns: String::new(),
        }
    }

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
}
