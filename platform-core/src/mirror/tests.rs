//! The registry copy between two stores: what is written, deleted, and which sessions end.

use super::*;
use crate::epr::{self, ApplicationSpec};
use crate::store::MIGRATIONS;

fn db() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    for m in MIGRATIONS {
        c.execute_batch(m).unwrap();
    }
    c
}

fn app(c: &mut Connection, versions: &[&str]) {
    let spec = ApplicationSpec {
        name: "demo".into(),
        versions: versions.iter().map(|v| (*v).to_owned()).collect(),
    };
    epr::provision(c, &[spec], &[]).unwrap();
}

fn endpoint(c: &mut Connection, id: &str, token: &str) {
    epr::create_endpoint(c, "v1", Some(id), Some(token), &serde_json::Map::new()).unwrap();
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_mirror_becomes_the_owners_registry_and_keeps_its_own_data() {
    let mut owner = db();
    app(&mut owner, &["v1"]);
    endpoint(&mut owner, "e1", "t1");
    endpoint(&mut owner, "e2", "t2");
    owner
        .execute("UPDATE tokens SET state = 'active'", [])
        .unwrap();
    let mut mirror = db();
    app(&mut mirror, &["v1", "old"]);
    endpoint(&mut mirror, "e1", "t1");
    endpoint(&mut mirror, "gone", "tg");
    mirror
        .execute("UPDATE tokens SET state = 'active'", [])
        .unwrap();
    mirror
        .execute(
            "INSERT INTO series (endpoint_id, name) VALUES ('e1', 's')",
            [],
        )
        .unwrap();

    let snap = export(&owner).unwrap();
    let changes = import(&mut mirror, &snap).unwrap();
    assert_eq!(export(&mirror).unwrap(), snap, "the same registry");
    assert_eq!(changes.tokens, vec!["tg".to_string()], "its session ends");
    assert_eq!(changes.endpoints, vec!["gone".to_string()]);
    assert!(changes.rows > 0);
    assert_eq!(
        count(
            &mirror,
            "SELECT count(*) FROM series WHERE endpoint_id = 'e1'"
        ),
        1,
        "data of a kept endpoint stays"
    );
    assert_eq!(
        count(
            &mirror,
            "SELECT count(*) FROM app_versions WHERE name = 'old'"
        ),
        0
    );

    let again = import(&mut mirror, &snap).unwrap();
    assert_eq!(again, Changes::default(), "a current copy changes nothing");
}

#[test]
fn suspended_tokens_and_changed_credentials_end_sessions() {
    let mut owner = db();
    app(&mut owner, &["v1"]);
    endpoint(&mut owner, "e1", "t1");
    owner
        .execute(
            "INSERT INTO credentials_basic (username, password_hash, state, created_ms) \
             VALUES ('u', 'h2', 'active', 0), ('same', 'h', 'active', 0)",
            [],
        )
        .unwrap();
    let mut mirror = db();
    import(&mut mirror, &export(&owner).unwrap()).unwrap();
    mirror
        .execute("UPDATE tokens SET state = 'active'", [])
        .unwrap();
    mirror
        .execute(
            "UPDATE credentials_basic SET password_hash = 'h1' WHERE username = 'u'",
            [],
        )
        .unwrap();
    let changes = import(&mut mirror, &export(&owner).unwrap()).unwrap();
    assert_eq!(
        changes.tokens,
        vec!["t1".to_string()],
        "inactive on the owner"
    );
    assert_eq!(changes.basic, vec!["u".to_string()]);
}

#[test]
fn a_malformed_copy_changes_nothing() {
    let mut owner = db();
    app(&mut owner, &["v1"]);
    let mut mirror = db();
    let mut snap = export(&owner).unwrap();
    snap.tables[1].rows.push(vec![Value::from("v2")]);
    assert!(import(&mut mirror, &snap).is_err(), "a short row");
    let mut snap = export(&owner).unwrap();
    snap.tables.swap(0, 1);
    assert!(import(&mut mirror, &snap).is_err(), "tables out of order");
    let mut snap = export(&owner).unwrap();
    snap.tables[0].rows.push(vec![Value::from(1.5)]);
    assert!(
        import(&mut mirror, &snap).is_err(),
        "not a string or integer"
    );
    assert_eq!(count(&mirror, "SELECT count(*) FROM applications"), 0);
}
