//! Image records in SQLite: the `image_` tables of the database carrackd
//! shares (`carrack.db`). This module creates only its own tables.
//!
//! - `image_images`: one row per image (id = config digest), its record (JSON:
//!   manifest digest, layers with diff and chain ids, blobs it holds), its
//!   config JSON and the pinned flag;
//! - `image_names`: repo tags and repo digests pointing at an image;
//! - `image_rootfs`: which container rootfs uses which snapshots (kept by GC);
//! - `image_views`: the read-only views of images (image volumes) by owner
//!   and name, with the image and snapshots each uses (the image is not
//!   removed, its snapshots not collected, while one exists).
//! - `image_snapshot_usage`: bytes and inodes of each snapshot, measured
//!   once when it is made ([`crate::usage::image_fs`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::usage::image_fs::Footprint;

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Blob digest (compressed).
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Media type from the manifest.
    pub media_type: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Chain id: names the snapshot.
    pub chain_id: String,
}

/// What the store remembers about an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Config digest: the image id.
    pub id: String,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Config blob size.
    pub config_size: u64,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Every blob this image keeps alive (index, manifest, config, layers).
    pub blobs: Vec<String>,
    /// Unix seconds when recorded.
    pub created: i64,
}

/// Whether a name is a tag or a digest reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// `repo:tag`.
    Tag,
    /// `repo@sha256:…`.
    Digest,
}

impl NameKind {
    fn as_str(self) -> &'static str {
        match self {
            NameKind::Tag => "tag",
            NameKind::Digest => "digest",
        }
    }
}

/// A stored image row.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The record.
    pub record: ImageRecord,
    /// Raw config JSON.
    pub config: String,
    /// Pinned flag.
    pub pinned: bool,
    /// (name, kind) pointing at it.
    pub names: Vec<(String, NameKind)>,
}

/// The image tables.
#[derive(Debug)]
pub struct Metadata {
    conn: Mutex<Connection>,
}

impl Metadata {
    /// Opens `path` (WAL) and creates the `image_` tables.
    pub fn open(path: &Path) -> Result<Metadata, ImageError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS image_images (
                id TEXT PRIMARY KEY,
                record TEXT NOT NULL,
                config TEXT NOT NULL,
                pinned INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS image_names (
                name TEXT PRIMARY KEY,
                image_id TEXT NOT NULL,
                kind TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS image_names_by_image ON image_names(image_id);
             CREATE TABLE IF NOT EXISTS image_rootfs (
                container_id TEXT PRIMARY KEY,
                image_id TEXT NOT NULL,
                chain_ids TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS image_views (
                owner TEXT NOT NULL,
                name TEXT NOT NULL,
                image_id TEXT NOT NULL,
                chain_ids TEXT NOT NULL,
                PRIMARY KEY (owner, name)
             );
             CREATE TABLE IF NOT EXISTS image_snapshot_usage (
                chain_id TEXT PRIMARY KEY,
                bytes INTEGER NOT NULL,
                inodes INTEGER NOT NULL
             );",
        )?;
        Ok(Metadata {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `record` and points `names` at it (moving names from other
    /// images).
    pub fn put_image(
        &self,
        record: &ImageRecord,
        config: &str,
        names: &[(String, NameKind)],
    ) -> Result<(), ImageError> {
        let json = serde_json::to_string(record).expect("record serialises");
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO image_images (id, record, config) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET record = excluded.record, config = excluded.config",
            params![record.id, json, config],
        )?;
        for (name, kind) in names {
            tx.execute(
                "INSERT INTO image_names (name, image_id, kind) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, kind = excluded.kind",
                params![name, record.id, kind.as_str()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds names to an existing image.
    pub fn add_names(&self, id: &str, names: &[(String, NameKind)]) -> Result<(), ImageError> {
        let conn = self.conn();
        for (name, kind) in names {
            conn.execute(
                "INSERT INTO image_names (name, image_id, kind) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, kind = excluded.kind",
                params![name, id, kind.as_str()],
            )?;
        }
        Ok(())
    }

    /// The image a name points at.
    pub fn id_by_name(&self, name: &str) -> Result<Option<String>, ImageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT image_id FROM image_names WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Image ids starting with `prefix` (full `sha256:` form).
    pub fn ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>, ImageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM image_images WHERE substr(id, 1, ?2) = ?1")?;
        let rows = stmt.query_map(params![prefix, prefix.len() as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One image by id.
    pub fn get(&self, id: &str) -> Result<Option<StoredImage>, ImageError> {
        let conn = self.conn();
        let row: Option<(String, String, bool)> = conn
            .query_row(
                "SELECT record, config, pinned FROM image_images WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((record, config, pinned)) = row else {
            return Ok(None);
        };
        let names = names_of(&conn, id)?;
        Ok(Some(StoredImage {
            record: parse_record(&record)?,
            config,
            pinned,
            names,
        }))
    }

    /// Every image.
    pub fn all(&self) -> Result<Vec<StoredImage>, ImageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, record, config, pinned FROM image_images")?;
        let rows: Vec<(String, String, String, bool)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, record, config, pinned) in rows {
            out.push(StoredImage {
                record: parse_record(&record)?,
                config,
                pinned,
                names: names_of(&conn, &id)?,
            });
        }
        Ok(out)
    }

    /// Deletes an image and its names.
    pub fn delete(&self, id: &str) -> Result<bool, ImageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM image_names WHERE image_id = ?1", params![id])?;
        let n = tx.execute("DELETE FROM image_images WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Sets the pinned flag.
    pub fn set_pinned(&self, id: &str, pinned: bool) -> Result<bool, ImageError> {
        Ok(self.conn().execute(
            "UPDATE image_images SET pinned = ?2 WHERE id = ?1",
            params![id, pinned],
        )? > 0)
    }

    /// Records that `container_id`'s rootfs uses `chain_ids`.
    pub fn put_rootfs(
        &self,
        container_id: &str,
        image_id: &str,
        chain_ids: &[String],
    ) -> Result<(), ImageError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO image_rootfs (container_id, image_id, chain_ids) VALUES (?1, ?2, ?3)",
            params![container_id, image_id, serde_json::to_string(chain_ids).expect("serialises")],
        )?;
        Ok(())
    }

    /// Forgets a container rootfs.
    pub fn delete_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        self.conn().execute(
            "DELETE FROM image_rootfs WHERE container_id = ?1",
            params![container_id],
        )?;
        Ok(())
    }

    /// Records view `name` of `owner` on image `image_id` (`chain_ids`).
    pub fn put_view(
        &self,
        owner: &str,
        name: &str,
        image_id: &str,
        chain_ids: &[String],
    ) -> Result<(), ImageError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO image_views (owner, name, image_id, chain_ids) VALUES (?1, ?2, ?3, ?4)",
            params![owner, name, image_id, serde_json::to_string(chain_ids).expect("serialises")],
        )?;
        Ok(())
    }

    /// Forgets the views of `owner`.
    pub fn delete_views(&self, owner: &str) -> Result<(), ImageError> {
        self.conn()
            .execute("DELETE FROM image_views WHERE owner = ?1", params![owner])?;
        Ok(())
    }

    /// The views: (owner, name, image id), by owner and name.
    pub fn views(&self) -> Result<Vec<(String, String, String)>, ImageError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT owner, name, image_id FROM image_views ORDER BY owner, name")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Chain ids used by container rootfs and image views.
    pub fn rootfs_chain_ids(&self) -> Result<Vec<String>, ImageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT chain_ids FROM image_rootfs UNION ALL SELECT chain_ids FROM image_views",
        )?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for r in rows {
            let ids: Vec<String> = serde_json::from_str(&r).unwrap_or_default();
            out.extend(ids);
        }
        Ok(out)
    }

    /// The recorded usage of every measured snapshot, by chain id.
    pub fn snapshot_usages(&self) -> Result<HashMap<String, Footprint>, ImageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT chain_id, bytes, inodes FROM image_snapshot_usage")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Footprint {
                        bytes: r.get::<_, i64>(1)? as u64,
                        inodes: r.get::<_, i64>(2)? as u64,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records the usage of snapshot `chain_id`.
    pub fn put_snapshot_usage(&self, chain_id: &str, f: Footprint) -> Result<(), ImageError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO image_snapshot_usage (chain_id, bytes, inodes) VALUES (?1, ?2, ?3)",
            params![chain_id, f.bytes as i64, f.inodes as i64],
        )?;
        Ok(())
    }

    /// Forgets the usage of a removed snapshot.
    pub fn delete_snapshot_usage(&self, chain_id: &str) -> Result<(), ImageError> {
        self.conn().execute(
            "DELETE FROM image_snapshot_usage WHERE chain_id = ?1",
            params![chain_id],
        )?;
        Ok(())
    }
}

fn parse_record(s: &str) -> Result<ImageRecord, ImageError> {
    serde_json::from_str(s).map_err(|e| ImageError::InvalidManifest {
        what: "stored record",
        digest: String::new(),
        reason: format!("image_images.record does not parse: {e}"),
    })
}

fn names_of(conn: &Connection, id: &str) -> Result<Vec<(String, NameKind)>, ImageError> {
    let mut stmt = conn
        .prepare_cached("SELECT name, kind FROM image_names WHERE image_id = ?1 ORDER BY name")?;
    let rows = stmt.query_map(params![id], |r| {
        let kind: String = r.get(1)?;
        Ok((
            r.get::<_, String>(0)?,
            if kind == "digest" {
                NameKind::Digest
            } else {
                NameKind::Tag
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
