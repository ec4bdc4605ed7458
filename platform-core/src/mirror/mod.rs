//! One registry for several core replicas: the owner replica's applications, app
//! versions, endpoints, tokens and credentials, copied whole into the other replicas'
//! stores (docs/protocol.md §11). This part is the SQL: [`export`] on the owner,
//! [`import`] on a mirror, in one transaction; `sync` is the NATS actor around them.
//!
//! Metadata, data, commands and configurations are not part of the copy: each replica
//! keeps its own.

pub mod sync;

use std::collections::HashMap;

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::StoreError;

/// This replica's part in the registry (with `[core.nats] registry_owner`).
#[derive(Debug, Clone, Default)]
pub enum Registry {
    /// Its own registry: no copy made or taken (the default).
    #[default]
    Own,
    /// The owner: others copy its registry; it says when it changed.
    Owner,
    /// A copy of the owner's: REST calls about the registry go to the owner.
    Mirror(std::sync::Arc<sync::Mirror>),
}

impl Registry {
    /// For `/api/v1/kpc/stats`: the role, and for a mirror its owner and copies made.
    pub fn stats_json(&self) -> Value {
        match self {
            Self::Own => serde_json::json!({"role": "own"}),
            Self::Owner => serde_json::json!({"role": "owner"}),
            Self::Mirror(m) => serde_json::json!({
                "role": "mirror",
                "owner": m.owner(),
                "copiesThatChangedSomething": m.updates.load(std::sync::atomic::Ordering::Relaxed),
            }),
        }
    }
}

/// The registry tables in dependency order: name, columns (primary key first).
const TABLES: &[(&str, &[&str])] = &[
    ("applications", &["name"]),
    ("app_versions", &["name", "application"]),
    ("endpoints", &["id", "app_version", "created_ms"]),
    ("tokens", &["token", "endpoint_id", "state", "created_ms"]),
    (
        "credentials_basic",
        &["username", "password_hash", "state", "created_ms", "scope"],
    ),
    (
        "credentials_x509",
        &["fingerprint", "subject", "state", "created_ms"],
    ),
];

/// The registry as the owner has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    /// Each row's values in column order: strings, integers or null.
    pub rows: Vec<Vec<Value>>,
}

/// What a mirror must do after an import: end the sessions that used what changed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Tokens that were active here and are not (any more, or at all) on the owner.
    pub tokens: Vec<String>,
    /// Basic credentials removed or changed (password, state, scope).
    pub basic: Vec<String>,
    /// X.509 credentials removed or changed.
    pub x509: Vec<String>,
    /// Endpoints the owner no longer has.
    pub endpoints: Vec<String>,
    /// Rows written or deleted (0: the copy was current).
    pub rows: usize,
}

/// The owner's registry, whole.
pub fn export(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut tables = Vec::with_capacity(TABLES.len());
    for (name, cols) in TABLES {
        let sql = format!(
            "SELECT {} FROM {name} ORDER BY {}",
            cols.join(", "),
            cols[0]
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map([], |r| {
                (0..cols.len())
                    .map(|i| {
                        Ok(match r.get::<_, Sql>(i)? {
                            Sql::Null => Value::Null,
                            Sql::Integer(n) => Value::from(n),
                            Sql::Text(s) => Value::from(s),
                            Sql::Real(f) => Value::from(f),
                            Sql::Blob(_) => Value::Null,
                        })
                    })
                    .collect::<Result<Vec<_>, rusqlite::Error>>()
            })?
            .collect::<Result<Vec<_>, _>>()?;
        tables.push(Table {
            name: (*name).to_owned(),
            columns: cols.iter().map(|c| (*c).to_owned()).collect(),
            rows,
        });
    }
    Ok(Snapshot { tables })
}

fn sql_value(v: &Value) -> Result<Sql, StoreError> {
    match v {
        Value::Null => Ok(Sql::Null),
        Value::String(s) => Ok(Sql::Text(s.clone())),
        Value::Number(n) => n
            .as_i64()
            .map(Sql::Integer)
            .ok_or_else(|| StoreError::Internal(format!("registry copy: {n} is not an integer"))),
        other => Err(StoreError::Internal(format!(
            "registry copy: {other} is not a string, integer or null"
        ))),
    }
}

/// A table's rows by primary key, as SQL values.
type Rows = HashMap<String, Vec<Sql>>;

fn key_of(row: &[Sql]) -> String {
    match row.first() {
        Some(Sql::Text(s)) => s.clone(),
        Some(Sql::Integer(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn local_rows(conn: &Connection, name: &str, cols: &[&str]) -> Result<Rows, StoreError> {
    let sql = format!("SELECT {} FROM {name}", cols.join(", "));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map([], |r| {
            (0..cols.len())
                .map(|i| r.get::<_, Sql>(i))
                .collect::<Result<Vec<_>, _>>()
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows.into_iter().map(|r| (key_of(&r), r)).collect())
}

/// Checks the snapshot's shape and turns it into SQL rows, table by table (all or nothing).
fn incoming(s: &Snapshot) -> Result<Vec<Rows>, StoreError> {
    if s.tables.len() != TABLES.len() {
        return Err(StoreError::Internal(format!(
            "registry copy: {} tables, expected {}",
            s.tables.len(),
            TABLES.len()
        )));
    }
    let mut out = Vec::with_capacity(TABLES.len());
    for (t, (name, cols)) in s.tables.iter().zip(TABLES) {
        if t.name != *name
            || t.columns
                .iter()
                .map(String::as_str)
                .ne(cols.iter().copied())
        {
            return Err(StoreError::Internal(format!(
                "registry copy: table {} {:?} is not {name} {cols:?}",
                t.name, t.columns
            )));
        }
        let mut rows = Rows::new();
        for r in &t.rows {
            if r.len() != cols.len() {
                return Err(StoreError::Internal(format!(
                    "registry copy: a row of {name} has {} values",
                    r.len()
                )));
            }
            let row = r.iter().map(sql_value).collect::<Result<Vec<_>, _>>()?;
            rows.insert(key_of(&row), row);
        }
        out.push(rows);
    }
    Ok(out)
}

/// Makes this store's registry the owner's `snapshot`, in one transaction: rows the owner
/// has are written, rows it has not are deleted (an endpoint with everything it owns).
pub fn import(conn: &mut Connection, snapshot: &Snapshot) -> Result<Changes, StoreError> {
    let theirs = incoming(snapshot)?;
    let tx = conn.transaction()?;
    let mine = TABLES
        .iter()
        .map(|(name, cols)| local_rows(&tx, name, cols))
        .collect::<Result<Vec<_>, _>>()?;
    let mut changes = Changes::default();
    // What ends sessions: tokens active here but not there; credentials gone or changed.
    let state = |row: &[Sql], i: usize| match row.get(i) {
        Some(Sql::Text(s)) => s.clone(),
        _ => String::new(),
    };
    for (token, row) in &mine[3] {
        let still = theirs[3]
            .get(token)
            .is_some_and(|t| state(t, 2) == "active");
        if state(row, 2) == "active" && !still {
            changes.tokens.push(token.clone());
        }
    }
    for (user, row) in &mine[4] {
        if theirs[4].get(user) != Some(row) {
            changes.basic.push(user.clone());
        }
    }
    for (fp, row) in &mine[5] {
        if theirs[5].get(fp).map(|t| state(t, 2)) != Some(state(row, 2)) {
            changes.x509.push(fp.clone());
        }
    }
    // Deletions, dependents first.
    for i in (0..TABLES.len()).rev() {
        let (name, cols) = TABLES[i];
        let gone: Vec<&String> = mine[i]
            .keys()
            .filter(|k| !theirs[i].contains_key(*k))
            .collect();
        for key in gone {
            if name == "endpoints" {
                // With everything it owns, as a deletion through the REST API.
                crate::epr::delete_endpoint_in(&tx, key)?;
                changes.endpoints.push(key.clone());
            } else {
                tx.execute(&format!("DELETE FROM {name} WHERE {} = ?1", cols[0]), [key])?;
            }
            changes.rows += 1;
        }
    }
    // Writes, in dependency order; unchanged rows are left alone.
    for i in 0..TABLES.len() {
        let (name, cols) = TABLES[i];
        let sql = format!(
            "INSERT INTO {name} ({}) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}",
            cols.join(", "),
            vec!["?"; cols.len()].join(", "),
            cols[0],
            cols.iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stmt = tx.prepare(&sql)?;
        for (key, row) in &theirs[i] {
            if mine[i].get(key) != Some(row) {
                stmt.execute(params_from_iter(row.iter()))?;
                changes.rows += 1;
            }
        }
    }
    tx.commit()?;
    for v in [
        &mut changes.tokens,
        &mut changes.basic,
        &mut changes.x509,
        &mut changes.endpoints,
    ] {
        v.sort();
    }
    Ok(changes)
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
