//! Pure edits of the configuration text for the web forms (toml_edit keeps the file's
//! comments and layout), secret redaction for everything the page shows or downloads,
//! and the mapping of validation errors to form fields.
//!
//! Secrets are write-only: a secret key is shown as [`SECRET_MARK`]; a form field left
//! empty, or the mark left in place in the raw editor, keeps the value in force.

use std::collections::BTreeMap;

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// What the page shows instead of a secret.
pub const SECRET_MARK: &str = "(secret: unchanged)";

/// Keys whose values are secrets, wherever they appear.
pub const SECRET_KEYS: &[&str] = &[
    "password",
    "token",
    "password_hash",
    "admin_password_hash",
    "metrics_token",
];

/// Errors of a form, by field name (`""`: not tied to one field).
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Parses a configuration text for editing.
pub fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse::<DocumentMut>().map_err(|e| e.to_string())
}

/// Replaces every secret value with [`SECRET_MARK`].
pub fn redact(text: &str) -> String {
    match parse(text) {
        Ok(mut doc) => {
            walk_secrets(doc.as_table_mut(), &mut |_, v| {
                *v = Value::from(SECRET_MARK);
            });
            doc.to_string()
        }
        // Not TOML at all: show nothing of it rather than a secret.
        Err(_) => "# (the configuration text is not valid TOML)\n".into(),
    }
}

/// Calls `f` with the path and value of every secret in `t`.
fn walk_secrets(t: &mut dyn toml_edit::TableLike, f: &mut dyn FnMut(&str, &mut Value)) {
    fn inner(path: &str, t: &mut dyn toml_edit::TableLike, f: &mut dyn FnMut(&str, &mut Value)) {
        for (k, item) in t.iter_mut() {
            let p = if path.is_empty() {
                k.get().to_owned()
            } else {
                format!("{path}.{}", k.get())
            };
            match item {
                Item::Value(Value::String(_)) if SECRET_KEYS.contains(&k.get()) => {
                    if let Item::Value(v) = item {
                        f(&p, v);
                    }
                }
                Item::Value(Value::InlineTable(it)) => inner(&p, it, f),
                Item::Table(tab) => inner(&p, tab, f),
                Item::ArrayOfTables(arr) => {
                    for (i, tab) in arr.iter_mut().enumerate() {
                        let id = identity(tab).unwrap_or_else(|| i.to_string());
                        inner(&format!("{p}[{id}]"), tab, f);
                    }
                }
                _ => {}
            }
        }
    }
    inner("", t, f)
}

/// How an element of an array of tables is recognised across edits: its name.
fn identity(t: &Table) -> Option<String> {
    ["name", "username"]
        .iter()
        .find_map(|k| t.get(k).and_then(Item::as_str))
        .map(|n| format!("{n:?}"))
}

/// Puts back, in `new_text`, every secret left as [`SECRET_MARK`] from `old_text`.
pub fn restore_secrets(new_text: &str, old_text: &str) -> Result<String, FieldErrors> {
    let mut doc = parse(new_text).map_err(|e| one("", e))?;
    let mut old: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(mut o) = parse(old_text) {
        walk_secrets(o.as_table_mut(), &mut |p, v| {
            old.insert(p.to_owned(), v.clone());
        });
    }
    let mut errors = FieldErrors::new();
    walk_secrets(doc.as_table_mut(), &mut |p, v| {
        if v.as_str() == Some(SECRET_MARK) {
            match old.get(p) {
                Some(o) => *v = o.clone(),
                None => errors
                    .entry(String::new())
                    .or_default()
                    .push(format!("{p}: no value in force to keep; type the secret")),
            }
        }
    });
    if errors.is_empty() {
        Ok(doc.to_string())
    } else {
        Err(errors)
    }
}

/// One error for `field`.
pub fn one(field: &str, msg: impl Into<String>) -> FieldErrors {
    let mut e = FieldErrors::new();
    e.insert(field.to_owned(), vec![msg.into()]);
    e
}

/// Sorts validation errors (`path: message`) into the fields of the form under
/// `prefix` (`devices[2]`, `modbus.buses[0]`, `upstream`); the rest go under `""`.
pub fn errors_for(errors: &[String], prefix: &str) -> FieldErrors {
    let mut out = FieldErrors::new();
    for e in errors {
        let (path, msg) = e.split_once(": ").unwrap_or(("", e));
        let field = path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|_| !prefix.is_empty());
        match field {
            Some(f) => out.entry(f.to_owned()).or_default().push(msg.to_owned()),
            None => out.entry(String::new()).or_default().push(e.clone()),
        }
    }
    out
}

/// How a form field's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text; empty removes the key.
    Text,
    /// Integer; empty removes the key (the default applies).
    Int,
    /// Number; empty removes the key.
    Float,
    /// Checkbox: present means true; absent removes the key.
    Bool,
    /// A secret: empty keeps the value in force.
    Secret,
    /// Comma-separated list of text; empty removes the key.
    List,
}

/// Sets `key` in `t` from the form's text (see [`Kind`]). `Err`: the message for the field.
pub fn set(t: &mut Table, key: &str, raw: Option<&str>, kind: Kind) -> Result<(), String> {
    let text = raw.unwrap_or("").trim();
    if text.is_empty() {
        if kind != Kind::Secret {
            t.remove(key);
        }
        return Ok(());
    }
    let v: Item = match kind {
        Kind::Text | Kind::Secret => value(text),
        Kind::Int => value(
            text.parse::<i64>()
                .map_err(|_| format!("{text:?} is not a whole number"))?,
        ),
        Kind::Float => value(
            text.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{text:?} is not a number"))?,
        ),
        Kind::Bool => value(true),
        Kind::List => {
            let mut a = Array::new();
            for part in text.split(',') {
                a.push(part.trim());
            }
            value(a)
        }
    };
    t.insert(key, v);
    Ok(())
}

/// A dotted key's table (`modbus` in `modbus.bus`), made if missing.
pub fn subtable<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
    if !t.get(key).is_some_and(Item::is_table) {
        let mut sub = Table::new();
        sub.set_implicit(false);
        t.insert(key, Item::Table(sub));
    }
    match t.get_mut(key) {
        Some(Item::Table(sub)) => sub,
        _ => unreachable!("just made a table"),
    }
}

/// The array of tables at `path` (`devices`, `modbus.buses`), made if missing.
pub fn tables_at<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> &'a mut ArrayOfTables {
    let mut t = doc.as_table_mut();
    let (last, parents) = path.split_last().expect("a path");
    for p in parents {
        if !t.get(p).is_some_and(Item::is_table) {
            let mut sub = Table::new();
            sub.set_implicit(true);
            t.insert(p, Item::Table(sub));
        }
        t = match t.get_mut(p) {
            Some(Item::Table(sub)) => sub,
            _ => unreachable!("just made a table"),
        };
    }
    if !t.get(last).is_some_and(Item::is_array_of_tables) {
        t.insert(last, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    match t.get_mut(last) {
        Some(Item::ArrayOfTables(a)) => a,
        _ => unreachable!("just made an array of tables"),
    }
}

/// Read-only: the tables at `path` of a document (empty when absent).
pub fn tables<'a>(doc: &'a DocumentMut, path: &[&str]) -> Vec<&'a Table> {
    let mut item = doc.as_item();
    for p in path {
        match item.get(p) {
            Some(i) => item = i,
            None => return Vec::new(),
        }
    }
    item.as_array_of_tables()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// A value of a table as the form shows it (secrets never).
pub fn shown(t: &Table, key: &str) -> String {
    if SECRET_KEYS.contains(&key) {
        return String::new();
    }
    match t.get(key) {
        Some(Item::Value(Value::String(s))) => s.value().clone(),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        Some(Item::Value(v)) => v.to_string().trim().to_owned(),
        _ => String::new(),
    }
}

/// Point units per device name (for the live view).
pub fn point_units(text: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let Ok(doc) = parse(text) else {
        return out;
    };
    for d in tables(&doc, &["devices"]) {
        let Some(dev) = d.get("name").and_then(Item::as_str) else {
            continue;
        };
        if let Some(points) = d.get("points").and_then(Item::as_array_of_tables) {
            for p in points {
                if let (Some(name), Some(unit)) = (
                    p.get("name").and_then(Item::as_str),
                    p.get("unit").and_then(Item::as_str),
                ) {
                    out.insert((dev.to_owned(), name.to_owned()), unit.to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# my site
[upstream]
host = "kaa.example"   # the cloud
password = "s3cret-pass"

[[devices]]
name = "boiler"
token = "boiler-token"
app_version = "app-v1"
"#;

    #[test]
    fn secrets_are_redacted_and_restored_by_name_comments_stay() {
        let shown = redact(TEXT);
        assert!(!shown.contains("s3cret-pass") && !shown.contains("boiler-token"));
        assert!(shown.contains("# the cloud"));
        // The user reorders nothing but edits the host; the secrets come back.
        let edited = shown.replace("kaa.example", "kaa2.example");
        let back = restore_secrets(&edited, TEXT).unwrap();
        assert!(back.contains("s3cret-pass") && back.contains("boiler-token"));
        assert!(back.contains("kaa2.example"));
        // A new device with the mark has nothing to keep: an error, not a leak.
        let added = format!(
            "{shown}\n[[devices]]\nname = \"new\"\ntoken = \"{SECRET_MARK}\"\napp_version = \"a\"\n"
        );
        let err = restore_secrets(&added, TEXT).unwrap_err();
        assert!(err[""][0].contains("devices[\"new\"].token"), "{err:?}");
    }

    #[test]
    fn validation_errors_land_on_their_fields() {
        let errs = vec![
            "devices[1].modbus.unit_id: 0 is outside 1..=247".to_owned(),
            "devices[10].name: duplicate".to_owned(),
            "line 3: expected a value".to_owned(),
        ];
        let f = errors_for(&errs, "devices[1]");
        assert_eq!(f["modbus.unit_id"], vec!["0 is outside 1..=247"]);
        assert_eq!(f[""].len(), 2);
    }

    #[test]
    fn form_values_are_typed_and_empty_secrets_keep_theirs() {
        let mut t = Table::new();
        t.insert("token", value("keep-me"));
        set(&mut t, "port", Some("502"), Kind::Int).unwrap();
        assert_eq!(t["port"].as_integer(), Some(502));
        assert!(set(&mut t, "port", Some("50x"), Kind::Int).is_err());
        set(&mut t, "token", Some(""), Kind::Secret).unwrap();
        assert_eq!(t["token"].as_str(), Some("keep-me"));
        set(&mut t, "scale", Some(""), Kind::Float).unwrap();
        assert!(t.get("scale").is_none());
        set(&mut t, "columns", Some("a, b"), Kind::List).unwrap();
        assert_eq!(shown(&t, "columns"), "a, b");
        assert_eq!(shown(&t, "token"), "");
    }
}
