//! Endpoint registry (EPR): applications, app versions, endpoints, tokens and metadata.
//!
//! Plain functions over a SQLite connection; callers run them on the store thread through
//! [`crate::store::StoreHandle::call`]. Invariants: an app version belongs to exactly one
//! application; an endpoint ID is immutable once created; a token names one endpoint.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::kp1::{is_valid_application_name, AppVersionName, EndpointToken};
use crate::secret::Secret;
use crate::store::{now_ms, StoreError};

mod endpoints;
mod metadata;
mod tokens;

pub use endpoints::*;
pub use metadata::*;
pub use tokens::*;

/// One application with its versions, as provisioned from config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApplicationSpec {
    pub name: String,
    pub versions: Vec<String>,
}

/// One endpoint with its token, as provisioned from config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Endpoint ID; a UUID is generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub token: Secret,
    pub app_version: String,
    /// Initial metadata, written only when the endpoint is first created.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Creates what is missing of `apps` and `endpoints`; existing rows are left as they are.
/// A token already bound to another app version or endpoint ID is an error.
pub fn provision(
    conn: &mut Connection,
    apps: &[ApplicationSpec],
    endpoints: &[EndpointSpec],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for app in apps {
        if !is_valid_application_name(&app.name) {
            return Err(StoreError::Invalid(format!(
                "invalid application name {:?}: must match ^[a-z0-9_-]+$",
                app.name
            )));
        }
        tx.execute(
            "INSERT OR IGNORE INTO applications(name) VALUES (?1)",
            [&app.name],
        )?;
        for v in &app.versions {
            AppVersionName::new(v).map_err(|e| StoreError::Invalid(e.to_string()))?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT application FROM app_versions WHERE name = ?1",
                    [v],
                    |r| r.get(0),
                )
                .optional()?;
            match owner {
                Some(o) if o != app.name => {
                    return Err(StoreError::Conflict(format!(
                        "app version {v:?} already belongs to application {o:?}"
                    )))
                }
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO app_versions(name, application) VALUES (?1, ?2)",
                        params![v, app.name],
                    )?;
                }
            }
        }
    }
    for ep in endpoints {
        EndpointToken::new(ep.token.expose()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let known: Option<(String, String)> = tx
            .query_row(
                "SELECT e.id, e.app_version FROM tokens t JOIN endpoints e ON e.id = t.endpoint_id
                 WHERE t.token = ?1",
                [ep.token.expose()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, avn)) = known {
            if avn != ep.app_version || ep.id.as_ref().is_some_and(|want| *want != id) {
                return Err(StoreError::Conflict(format!(
                    "token for endpoint {id:?} is already registered in app version {avn:?}"
                )));
            }
            continue;
        }
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM app_versions WHERE name = ?1",
                [&ep.app_version],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !exists {
            return Err(StoreError::Invalid(format!(
                "endpoint refers to unknown app version {:?}",
                ep.app_version
            )));
        }
        let id = match &ep.id {
            Some(id) if is_valid_endpoint_id(id) => id.clone(),
            Some(id) => {
                return Err(StoreError::Invalid(format!(
                    "invalid endpoint id {id:?}: must match ^[a-zA-Z0-9._~-]+$"
                )))
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        tx.execute(
            "INSERT OR IGNORE INTO endpoints(id, app_version, created_ms) VALUES (?1, ?2, ?3)",
            params![id, ep.app_version, now_ms()],
        )?;
        tx.execute(
            "INSERT INTO tokens(token, endpoint_id, state, created_ms) VALUES (?1, ?2, 'inactive', ?3)",
            params![ep.token.expose(), id, now_ms()],
        )?;
        for (k, v) in &ep.metadata {
            if !is_valid_metadata_key(k) {
                return Err(StoreError::Invalid(format!(
                    "invalid metadata key {k:?}: must match ^[a-zA-Z0-9_]+$"
                )));
            }
            tx.execute(
                "INSERT OR IGNORE INTO metadata(endpoint_id, key, value) VALUES (?1, ?2, ?3)",
                params![id, k, v.to_string()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The app version of an endpoint, if the endpoint exists.
pub fn endpoint_app_version(
    conn: &Connection,
    endpoint_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT app_version FROM endpoints WHERE id = ?1",
            [endpoint_id],
            |r| r.get(0),
        )
        .optional()?)
}

/// The application an app version belongs to.
pub fn application_of(conn: &Connection, avn: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT application FROM app_versions WHERE name = ?1",
            [avn],
            |r| r.get(0),
        )
        .optional()?)
}

/// Does this app version exist?
pub fn app_version_exists(conn: &Connection, avn: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM app_versions WHERE name = ?1", [avn], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// All applications with their versions, by name.
pub fn applications(conn: &Connection) -> Result<Vec<ApplicationSpec>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.name, v.name FROM applications a LEFT JOIN app_versions v ON v.application = a.name
         ORDER BY a.name, v.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out: Vec<ApplicationSpec> = Vec::new();
    for row in rows {
        let (app, version) = row?;
        if out.last().is_none_or(|a| a.name != app) {
            out.push(ApplicationSpec {
                name: app,
                versions: Vec::new(),
            });
        }
        if let (Some(v), Some(a)) = (version, out.last_mut()) {
            a.versions.push(v);
        }
    }
    Ok(out)
}

/// Creates an application (idempotent); false when it already existed.
pub fn create_application(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    if !is_valid_application_name(name) {
        return Err(StoreError::Invalid(format!(
            "invalid application name {name:?}: must match ^[a-z0-9_-]+$"
        )));
    }
    Ok(conn.execute(
        "INSERT OR IGNORE INTO applications(name) VALUES (?1)",
        [name],
    )? == 1)
}

/// Creates an app version of an existing application; false when it already existed.
pub fn create_app_version(
    conn: &mut Connection,
    application: &str,
    version: &str,
) -> Result<bool, StoreError> {
    let existed = app_version_exists(conn, version)?;
    provision(
        conn,
        &[ApplicationSpec {
            name: application.to_owned(),
            versions: vec![version.to_owned()],
        }],
        &[],
    )?;
    Ok(!existed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MIGRATIONS;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        for m in MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        c
    }

    fn spec(token: &str, avn: &str) -> EndpointSpec {
        EndpointSpec {
            id: None,
            token: token.into(),
            app_version: avn.into(),
            metadata: Map::new(),
        }
    }

    fn apps() -> Vec<ApplicationSpec> {
        vec![ApplicationSpec {
            name: "demo".into(),
            versions: vec!["demo-v1".into()],
        }]
    }

    #[test]
    fn provisioning_twice_is_idempotent_and_keeps_the_endpoint_id() {
        let mut c = db();
        provision(&mut c, &apps(), &[spec("t1", "demo-v1")]).unwrap();
        let TokenLookup::Active { endpoint_id: a } = use_token(&c, "demo-v1", "t1").unwrap() else {
            panic!("token not active")
        };
        provision(&mut c, &apps(), &[spec("t1", "demo-v1")]).unwrap();
        let TokenLookup::Active { endpoint_id: b } = use_token(&c, "demo-v1", "t1").unwrap() else {
            panic!("token not active")
        };
        assert_eq!(a, b);
    }

    #[test]
    fn a_token_is_only_valid_in_its_own_app_version() {
        let mut c = db();
        let apps = vec![ApplicationSpec {
            name: "demo".into(),
            versions: vec!["v1".into(), "v2".into()],
        }];
        provision(&mut c, &apps, &[spec("t1", "v1")]).unwrap();
        assert_eq!(use_token(&c, "v2", "t1").unwrap(), TokenLookup::Unknown);
        assert_eq!(use_token(&c, "v1", "nope").unwrap(), TokenLookup::Unknown);
    }

    #[test]
    fn a_token_moved_to_another_app_version_is_refused() {
        let mut c = db();
        let apps = vec![ApplicationSpec {
            name: "demo".into(),
            versions: vec!["v1".into(), "v2".into()],
        }];
        provision(&mut c, &apps, &[spec("t1", "v1")]).unwrap();
        let err = provision(&mut c, &apps, &[spec("t1", "v2")]).unwrap_err();
        assert!(err.to_string().contains("already registered"), "{err}");
    }

    #[test]
    fn suspended_and_revoked_tokens_are_reported_as_such() {
        let mut c = db();
        provision(
            &mut c,
            &apps(),
            &[spec("s", "demo-v1"), spec("r", "demo-v1")],
        )
        .unwrap();
        c.execute("UPDATE tokens SET state='suspended' WHERE token='s'", [])
            .unwrap();
        c.execute("UPDATE tokens SET state='revoked' WHERE token='r'", [])
            .unwrap();
        assert_eq!(
            use_token(&c, "demo-v1", "s").unwrap(),
            TokenLookup::Suspended
        );
        assert_eq!(use_token(&c, "demo-v1", "r").unwrap(), TokenLookup::Revoked);
    }

    #[test]
    fn metadata_upsert_replace_and_delete() {
        let mut c = db();
        let mut ep = spec("t", "demo-v1");
        ep.id = Some("dev-1".into());
        provision(&mut c, &apps(), &[ep]).unwrap();
        let m = |v: Value| v.as_object().cloned().unwrap();
        write_metadata(
            &mut c,
            "dev-1",
            &m(serde_json::json!({"a": 1, "b": "x"})),
            false,
        )
        .unwrap();
        write_metadata(&mut c, "dev-1", &m(serde_json::json!({"b": "y"})), false).unwrap();
        assert_eq!(
            Value::Object(metadata(&c, "dev-1", None).unwrap()),
            serde_json::json!({"a": 1, "b": "y"})
        );
        write_metadata(&mut c, "dev-1", &m(serde_json::json!({"c": true})), true).unwrap();
        assert_eq!(
            Value::Object(metadata(&c, "dev-1", None).unwrap()),
            serde_json::json!({"c": true})
        );
        delete_metadata_keys(&mut c, "dev-1", &["c".into(), "zz".into()]).unwrap();
        assert!(metadata(&c, "dev-1", None).unwrap().is_empty());
    }

    #[test]
    fn invalid_names_are_refused_at_provisioning() {
        let mut c = db();
        let bad = vec![ApplicationSpec {
            name: "Bad App".into(),
            versions: vec![],
        }];
        assert!(provision(&mut c, &bad, &[]).is_err());
        let mut ep = spec("t", "demo-v1");
        ep.id = Some("has space".into());
        assert!(provision(&mut c, &apps(), &[ep]).is_err());
        assert!(provision(&mut c, &apps(), &[spec("a.b", "demo-v1")]).is_err());
    }
}
