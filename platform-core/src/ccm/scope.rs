//! Credential scopes: which applications (and, optionally, which endpoint tokens) a basic
//! credential may act for. A scoped client's requests for other endpoints get 403, and it
//! receives copies and pushes only of the endpoints it is bound to (docs/protocol.md §6).
//!
//! Stored as JSON in `credentials_basic.scope`; NULL means unbound (credentials made
//! before scopes existed, or given `applications = ["*"]`).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::sessions::Reach;
use crate::store::StoreError;

/// The wildcard application name: every application (an unbound credential).
pub const ALL: &str = "*";

/// A credential's scope as configured or sent to the REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Application names; `["*"]`: every application.
    pub applications: Vec<String>,
    /// Endpoint tokens; empty: every endpoint of those applications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

impl Scope {
    /// Unbound (every application and endpoint)?
    pub fn is_unbound(&self) -> bool {
        self.applications.iter().any(|a| a == ALL) && self.endpoints.is_empty()
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.applications.is_empty() {
            return Some(format!(
                "applications is empty: name the applications this credential may act for, or [\"{ALL}\"] for all"
            ));
        }
        if self.applications.iter().any(|a| a == ALL) && self.applications.len() > 1 {
            return Some(format!("\"{ALL}\" stands alone in applications"));
        }
        if let Some(bad) = self
            .applications
            .iter()
            .chain(&self.endpoints)
            .find(|s| s.is_empty() || s.contains(['/', '+', '#']))
        {
            return Some(format!(
                "{bad:?} is not an application name or endpoint token"
            ));
        }
        None
    }

    /// The stored form: NULL when unbound.
    pub fn to_db(&self) -> Option<String> {
        (!self.is_unbound()).then(|| serde_json::to_string(self).unwrap_or_default())
    }
}

/// The scope of basic credential `username` (`None`: unbound or unknown).
pub fn of_basic(conn: &Connection, username: &str) -> Result<Option<Scope>, StoreError> {
    let stored: Option<Option<String>> = conn
        .query_row(
            "SELECT scope FROM credentials_basic WHERE username = ?1",
            [username],
            |r| r.get(0),
        )
        .optional()?;
    stored
        .flatten()
        .map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| StoreError::Corrupt(format!("scope of credential {username:?}: {e}")))
        })
        .transpose()
}

/// Binds basic credential `username` to `scope`; false when there is no such credential.
pub fn set_basic(conn: &Connection, username: &str, scope: &Scope) -> Result<bool, StoreError> {
    let n = conn.execute(
        "UPDATE credentials_basic SET scope = ?2 WHERE username = ?1",
        rusqlite::params![username, scope.to_db()],
    )?;
    Ok(n == 1)
}

/// What a session authenticated as `username` may reach: the versions of its
/// applications as they are now (a version added later counts from the next CONNECT).
pub fn reach_of_basic(conn: &Connection, username: &str) -> Result<Option<Reach>, StoreError> {
    let Some(scope) = of_basic(conn, username)? else {
        return Ok(None);
    };
    let all = scope.applications.iter().any(|a| a == ALL);
    let mut versions = HashSet::new();
    let mut stmt = conn.prepare_cached("SELECT name, application FROM app_versions")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (version, app) = row?;
        if all || scope.applications.contains(&app) {
            versions.insert(version);
        }
    }
    Ok(Some(Reach {
        versions,
        tokens: scope.endpoints.into_iter().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_stored_null_when_unbound() {
        let all = Scope {
            applications: vec![ALL.into()],
            endpoints: vec![],
        };
        assert!(all.is_unbound() && all.to_db().is_none() && all.problem().is_none());
        let one = Scope {
            applications: vec!["site".into()],
            endpoints: vec!["pump-1".into()],
        };
        assert!(!one.is_unbound() && one.problem().is_none());
        let back: Scope = serde_json::from_str(&one.to_db().unwrap()).unwrap();
        assert_eq!(back, one);
        assert!(Scope::default()
            .problem()
            .unwrap()
            .contains("applications is empty"));
        let mixed = Scope {
            applications: vec![ALL.into(), "site".into()],
            endpoints: vec![],
        };
        assert!(mixed.problem().is_some());
        let wild = Scope {
            applications: vec!["site/#".into()],
            endpoints: vec![],
        };
        assert!(wild.problem().is_some());
    }

    #[test]
    fn a_reach_allows_only_its_versions_and_tokens() {
        let r = Reach {
            versions: ["a-v1".to_string()].into(),
            tokens: HashSet::new(),
        };
        assert!(r.allows("a-v1", "any") && !r.allows("b-v1", "any"));
        let r = Reach {
            versions: ["a-v1".to_string()].into(),
            tokens: ["t1".to_string()].into(),
        };
        assert!(r.allows("a-v1", "t1") && !r.allows("a-v1", "t2"));
    }
}
