//! Endpoint metadata: reads, full and partial writes, deletes, and the keys a write must keep.

use rusqlite::{params, Connection};
use serde_json::{Map, Value};

use crate::store::StoreError;

/// Is `s` a valid metadata key (`^[a-zA-Z0-9_]+$`)?
pub fn is_valid_metadata_key(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The endpoint's metadata, all keys or only `keys` (absent keys are left out).
pub fn metadata(
    conn: &Connection,
    endpoint_id: &str,
    keys: Option<&[String]>,
) -> Result<Map<String, Value>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT key, value FROM metadata WHERE endpoint_id = ?1 ORDER BY key")?;
    let rows = stmt.query_map([endpoint_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Map::new();
    for row in rows {
        let (k, v) = row?;
        if keys.is_some_and(|ks| !ks.contains(&k)) {
            continue;
        }
        let value = serde_json::from_str(&v)
            .map_err(|e| StoreError::Corrupt(format!("stored metadata {k:?} is not JSON: {e}")))?;
        out.insert(k, value);
    }
    Ok(out)
}

/// Sets the given keys, leaving the others (`replace_all` = false) or deleting them (true).
pub fn write_metadata(
    conn: &mut Connection,
    endpoint_id: &str,
    values: &Map<String, Value>,
    replace_all: bool,
) -> Result<(), StoreError> {
    write_metadata_keeping(conn, endpoint_id, values, replace_all, &[])
}

/// Deletes the given keys; absent keys are ignored.
pub fn delete_metadata_keys(
    conn: &mut Connection,
    endpoint_id: &str,
    keys: &[String],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for k in keys {
        tx.execute(
            "DELETE FROM metadata WHERE endpoint_id = ?1 AND key = ?2",
            params![endpoint_id, k],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Like [`write_metadata`], but a full replace leaves the keys in `keep` as they are.
pub fn write_metadata_keeping(
    conn: &mut Connection,
    endpoint_id: &str,
    values: &Map<String, Value>,
    replace_all: bool,
    keep: &[String],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    write_metadata_in(&tx, endpoint_id, values, replace_all, keep)?;
    tx.commit()?;
    Ok(())
}

/// [`write_metadata_keeping`] inside the caller's transaction (e.g. the store's group
/// commit).
pub fn write_metadata_in(
    conn: &Connection,
    endpoint_id: &str,
    values: &Map<String, Value>,
    replace_all: bool,
    keep: &[String],
) -> Result<(), StoreError> {
    if replace_all {
        let existing: Vec<String> = {
            let mut stmt =
                conn.prepare_cached("SELECT key FROM metadata WHERE endpoint_id = ?1")?;
            let rows = stmt.query_map([endpoint_id], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for k in existing.iter().filter(|k| !keep.contains(k)) {
            conn.execute(
                "DELETE FROM metadata WHERE endpoint_id = ?1 AND key = ?2",
                params![endpoint_id, k],
            )?;
        }
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO metadata(endpoint_id, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT(endpoint_id, key) DO UPDATE SET value = excluded.value",
    )?;
    for (k, v) in values {
        upsert.execute(params![endpoint_id, k, v.to_string()])?;
    }
    Ok(())
}
