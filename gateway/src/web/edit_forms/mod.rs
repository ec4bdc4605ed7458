//! The upstream, Modbus bus and device forms: what each shows (from the text in force,
//! secrets never), and how a submitted form becomes a new configuration text. Saving goes
//! through [`super::config_pages::commit`] like every other change.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use super::config_pages::{after_save, commit};
use super::forms::{self, FieldErrors, Kind};
use super::guard::Authed;
use super::pages::{html, page, Chrome};
use super::Web;
use crate::config_store::Origin;

mod device;
pub mod points_csv;
mod specs;

pub use device::{device_delete, device_form, device_save, KindQuery};
use specs::{BUS, DEVICE, POINT, UPSTREAM};

/// One input of a form.
#[derive(Debug, Clone)]
pub struct Field {
    /// The form field's name: the key's path inside the edited table.
    pub name: String,
    pub label: &'static str,
    /// `text`, `number`, `password`, `select`, `checkbox`, `textarea`.
    pub input: &'static str,
    pub value: String,
    pub options: Vec<String>,
    pub errors: Vec<String>,
    pub help: &'static str,
}

/// (name, label, input, kind, options, help) of one field.
type Spec = (
    &'static str,
    &'static str,
    &'static str,
    Kind,
    &'static [&'static str],
    &'static str,
);

fn lookup<'a>(t: &'a Table, path: &'a str) -> Option<(&'a Table, &'a str)> {
    match path.split_once('.') {
        Some((sub, key)) => t.get(sub)?.as_table().map(|s| (s, key)),
        None => Some((t, path)),
    }
}

fn fields(specs: &[Spec], t: &Table, errors: &FieldErrors, prefix: &str) -> Vec<Field> {
    specs
        .iter()
        .map(|(name, label, input, _, options, help)| {
            let value = lookup(t, name)
                .map(|(tab, key)| forms::shown(tab, key))
                .unwrap_or_default();
            let full = format!("{prefix}{name}");
            Field {
                errors: errors.get(&full).cloned().unwrap_or_default(),
                name: full,
                label,
                input,
                value,
                options: options.iter().map(|s| (*s).to_owned()).collect(),
                help,
            }
        })
        .collect()
}

/// Sets the table from the form; wrong values become errors of their fields.
fn apply(
    specs: &[Spec],
    t: &mut Table,
    form: &[(String, String)],
    prefix: &str,
    errors: &mut FieldErrors,
) {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for (name, _, _, kind, _, _) in specs {
        let full = format!("{prefix}{name}");
        let raw = get(&full);
        let (tab, key) = match name.split_once('.') {
            Some((sub, key)) => (forms::subtable(t, sub), key),
            None => (&mut *t, *name),
        };
        if let Err(msg) = forms::set(tab, key, raw, *kind) {
            errors.entry(full).or_default().push(msg);
        }
    }
    // Sub-tables of this form left empty (no TLS files) go away; others stay as they were.
    let sections: Vec<&str> = specs
        .iter()
        .filter_map(|s| s.0.split_once('.').map(|(sub, _)| sub))
        .collect();
    let empty: Vec<String> = t
        .iter()
        .filter(|(k, v)| sections.contains(k) && v.as_table().is_some_and(Table::is_empty))
        .map(|(k, _)| k.to_owned())
        .collect();
    for k in empty {
        t.remove(&k);
    }
}

#[derive(Template)]
#[template(path = "form.html")]
struct FormPage {
    chrome: Chrome,
    heading: String,
    action: String,
    errors: Vec<String>,
    fields: Vec<Field>,
    point_labels: Vec<&'static str>,
    points: Vec<Vec<Field>>,
    delete: Option<String>,
    /// The device's name, for "read now".
    read_now: Option<String>,
    /// A stored Modbus device's index: CSV export and import of its points.
    csv: Option<usize>,
    test_upstream: bool,
    /// The device's kind (devices only).
    kind: &'static str,
    /// A new Modbus device: the profiles to start from (id, label), and what was taken.
    profiles: Vec<(String, String)>,
    profile_note: String,
    /// Kept through the profile choice: the pre-filled bus and unit ID.
    keep: Vec<(&'static str, String)>,
}

page!(FormPage);

impl FormPage {
    fn new(chrome: Chrome, heading: String, action: String, fields: Vec<Field>) -> Self {
        Self {
            chrome,
            heading,
            action,
            errors: Vec::new(),
            fields,
            point_labels: Vec::new(),
            points: Vec::new(),
            delete: None,
            read_now: None,
            csv: None,
            test_upstream: false,
            profiles: Vec::new(),
            profile_note: String::new(),
            keep: Vec::new(),
            kind: "",
        }
    }
}

fn doc_of(web: &Web) -> (DocumentMut, String) {
    let (_, text) = web.running();
    (forms::parse(&text).unwrap_or_default(), text)
}

/// `new` → None (append), a number → Some(index); anything else → 404.
fn index_of(raw: &str, len: usize) -> Result<Option<usize>, Box<Response>> {
    if raw == "new" {
        return Ok(None);
    }
    match raw.parse::<usize>() {
        Ok(i) if i < len => Ok(Some(i)),
        _ => Err(Box::new(
            (StatusCode::NOT_FOUND, "no such entry").into_response(),
        )),
    }
}

fn failed(mut page: FormPage, errors: FieldErrors) -> Response {
    page.errors = errors.get("").cloned().unwrap_or_default();
    page.chrome.status = StatusCode::UNPROCESSABLE_ENTITY;
    html(page)
}

// ---- upstream --------------------------------------------------------------------------

/// The "Use TLS" checkbox: not a key of its own, but whether `[upstream.tls]` exists.
const TLS_ON: &str = "tls_on";

fn upstream_page(web: &Web, who: &Authed, t: &Table, errors: &FieldErrors) -> FormPage {
    let mut shown = t.clone();
    if t.contains_key("tls") {
        shown.insert(TLS_ON, toml_edit::value(true));
    }
    let mut page = FormPage::new(
        Chrome::new(web, who, "Upstream", "config"),
        "Upstream (the Kaa server)".into(),
        "/config/upstream".into(),
        fields(UPSTREAM, &shown, errors, ""),
    );
    page.test_upstream = true;
    page
}

/// `?preset=` of the upstream form.
#[derive(Debug, serde::Deserialize)]
pub struct PresetQuery {
    preset: Option<String>,
}

/// `GET /config/upstream` (`?preset=kaa-cloud` fills in KaaIoT's cloud: its MQTT host,
/// port 8883 and TLS checked against the system's trust store; credentials stay yours).
pub async fn upstream_form(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    axum::extract::Query(q): axum::extract::Query<PresetQuery>,
) -> Response {
    let (doc, _) = doc_of(&web);
    let mut t = doc
        .get("upstream")
        .and_then(Item::as_table)
        .cloned()
        .unwrap_or_default();
    if q.preset.as_deref() == Some("kaa-cloud") {
        t.insert("host", toml_edit::value(KAA_CLOUD_HOST));
        t.insert("port", toml_edit::value(8883));
        t.remove("tls");
        forms::subtable(&mut t, "tls");
    }
    html(upstream_page(&web, &who, &t, &FieldErrors::new()))
}

/// KaaIoT's cloud MQTT host (as its own example clients use it).
pub const KAA_CLOUD_HOST: &str = "mqtt.cloud.kaaiot.com";

/// Sets `[upstream]` of `doc` from the upstream form; returns the table as set.
pub fn apply_upstream(
    doc: &mut DocumentMut,
    form: &[(String, String)],
    errors: &mut FieldErrors,
) -> Table {
    let t = forms::subtable(doc.as_table_mut(), "upstream");
    apply(UPSTREAM, t, form, "", errors);
    // The checkbox decides whether there is TLS; without a CA file the system's store.
    if t.remove(TLS_ON).is_some() {
        forms::subtable(t, "tls");
    } else {
        t.remove("tls");
    }
    t.clone()
}

/// `POST /config/upstream`.
pub async fn upstream_save(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let (mut doc, _) = doc_of(&web);
    let mut errors = FieldErrors::new();
    let t = apply_upstream(&mut doc, &form, &mut errors);
    let result = if errors.is_empty() {
        commit(
            &web,
            &who,
            doc.to_string(),
            Origin::Web,
            "upstream edited".into(),
            "upstream",
        )
        .await
    } else {
        Err(errors)
    };
    match result {
        Ok(a) => after_save(&a),
        Err(e) => failed(upstream_page(&web, &who, &t, &e), e),
    }
}

// ---- buses -----------------------------------------------------------------------------

fn bus_page(web: &Web, who: &Authed, at: Option<usize>, t: &Table, e: &FieldErrors) -> FormPage {
    let slot = at.map_or("new".to_owned(), |i| i.to_string());
    let mut page = FormPage::new(
        Chrome::new(web, who, "Modbus bus", "config"),
        at.map_or("New Modbus bus".into(), |_| {
            format!("Modbus bus {}", forms::shown(t, "name"))
        }),
        format!("/config/buses/{slot}"),
        fields(BUS, t, e, ""),
    );
    page.delete = at.map(|i| format!("/config/buses/{i}/delete"));
    page
}

/// `GET /config/buses/{index|new}`.
pub async fn bus_form(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<String>,
) -> Response {
    let (doc, _) = doc_of(&web);
    let buses = forms::tables(&doc, &["modbus", "buses"]);
    let at = match index_of(&index, buses.len()) {
        Ok(at) => at,
        Err(r) => return *r,
    };
    let t = at.map(|i| buses[i].clone()).unwrap_or_default();
    html(bus_page(&web, &who, at, &t, &FieldErrors::new()))
}

/// `POST /config/buses/{index|new}`.
pub async fn bus_save(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let (mut doc, _) = doc_of(&web);
    let buses = forms::tables_at(&mut doc, &["modbus", "buses"]);
    let at = match index_of(&index, buses.len()) {
        Ok(at) => at,
        Err(r) => return *r,
    };
    let mut t = at.and_then(|i| buses.get(i).cloned()).unwrap_or_default();
    let mut errors = FieldErrors::new();
    apply(BUS, &mut t, &form, "", &mut errors);
    let slot = at.unwrap_or(buses.len());
    match at {
        Some(i) => {
            if let Some(b) = buses.get_mut(i) {
                *b = t.clone();
            }
        }
        None => buses.push(t.clone()),
    }
    let note = format!(
        "bus {} {}",
        forms::shown(&t, "name"),
        if at.is_some() { "edited" } else { "added" }
    );
    let result = if errors.is_empty() {
        let prefix = format!("modbus.buses[{slot}]");
        commit(&web, &who, doc.to_string(), Origin::Web, note, &prefix).await
    } else {
        Err(errors)
    };
    match result {
        Ok(a) => after_save(&a),
        Err(e) => failed(bus_page(&web, &who, at, &t, &e), e),
    }
}

/// `POST /config/buses/{index}/delete`.
pub async fn bus_delete(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<usize>,
) -> Response {
    remove_at(&web, &who, &["modbus", "buses"], index, "bus").await
}

async fn remove_at(web: &Web, who: &Authed, path: &[&str], index: usize, what: &str) -> Response {
    let (mut doc, _) = doc_of(web);
    let arr: &mut ArrayOfTables = forms::tables_at(&mut doc, path);
    if index >= arr.len() {
        return (StatusCode::NOT_FOUND, "no such entry").into_response();
    }
    let name = arr
        .get(index)
        .map(|t| forms::shown(t, "name"))
        .unwrap_or_default();
    arr.remove(index);
    match commit(
        web,
        who,
        doc.to_string(),
        Origin::Web,
        format!("{what} {name} removed"),
        "",
    )
    .await
    {
        Ok(a) => after_save(&a),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{what} {name} cannot be removed: {}",
                e.into_values().flatten().collect::<Vec<_>>().join("; ")
            ),
        )
            .into_response(),
    }
}
