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

const UPSTREAM: &[Spec] = &[
    (
        "host",
        "Host",
        "text",
        Kind::Text,
        &[],
        "Kaa server name or address",
    ),
    (
        "port",
        "Port",
        "number",
        Kind::Int,
        &[],
        "1883, or 8883 with TLS",
    ),
    ("client_id", "Client ID", "text", Kind::Text, &[], ""),
    ("username", "User name", "text", Kind::Text, &[], ""),
    (
        "password",
        "Password",
        "password",
        Kind::Secret,
        &[],
        "write-only: empty keeps the one in force",
    ),
    (
        "tls.ca_file",
        "TLS CA file",
        "text",
        Kind::Text,
        &[],
        "empty: no TLS",
    ),
    (
        "tls.client_cert_file",
        "TLS client certificate",
        "text",
        Kind::Text,
        &[],
        "",
    ),
    (
        "tls.client_key_file",
        "TLS client key",
        "text",
        Kind::Text,
        &[],
        "",
    ),
    (
        "keepalive_secs",
        "Keepalive (s)",
        "number",
        Kind::Int,
        &[],
        "",
    ),
];

const BUS: &[Spec] = &[
    (
        "name",
        "Name",
        "text",
        Kind::Text,
        &[],
        "devices refer to the bus by it",
    ),
    (
        "kind",
        "Kind",
        "select",
        Kind::Text,
        &["rtu", "tcp", "rtu_over_tcp"],
        "",
    ),
    (
        "port",
        "Serial port (RTU)",
        "text",
        Kind::Text,
        &[],
        "/dev/ttyUSB0, /dev/ttySC0, …",
    ),
    ("baud", "Baud (RTU)", "number", Kind::Int, &[], ""),
    (
        "parity",
        "Parity (RTU)",
        "select",
        Kind::Text,
        &["", "none", "even", "odd"],
        "",
    ),
    ("data_bits", "Data bits (RTU)", "number", Kind::Int, &[], ""),
    ("stop_bits", "Stop bits (RTU)", "number", Kind::Int, &[], ""),
    (
        "address",
        "Address (TCP)",
        "text",
        Kind::Text,
        &[],
        "IP:port, e.g. 192.168.1.20:502",
    ),
    ("timeout_ms", "Time-out (ms)", "number", Kind::Int, &[], ""),
    ("retries", "Retries", "number", Kind::Int, &[], ""),
];

const DEVICE: &[Spec] = &[
    ("name", "Name", "text", Kind::Text, &[], ""),
    (
        "token",
        "Endpoint token",
        "password",
        Kind::Secret,
        &[],
        "write-only: empty keeps the one in force",
    ),
    (
        "app_version",
        "Application version",
        "text",
        Kind::Text,
        &[],
        "",
    ),
    (
        "poll_interval_ms",
        "Poll period (ms)",
        "number",
        Kind::Int,
        &[],
        "",
    ),
    (
        "modbus.bus",
        "Modbus bus",
        "select",
        Kind::Text,
        &[],
        "Modbus devices: the bus",
    ),
    (
        "modbus.unit_id",
        "Unit ID",
        "number",
        Kind::Int,
        &[],
        "1–247",
    ),
    ("modbus.vendor", "Vendor", "text", Kind::Text, &[], ""),
    ("modbus.model", "Model", "text", Kind::Text, &[], ""),
    (
        "serial_line.port",
        "Serial port (line sensor)",
        "text",
        Kind::Text,
        &[],
        "serial line sensors only",
    ),
    (
        "serial_line.baud",
        "Baud (line sensor)",
        "number",
        Kind::Int,
        &[],
        "",
    ),
    (
        "serial_line.format",
        "Line format",
        "select",
        Kind::Text,
        &["", "json", "key_value", "csv", "nmea", "regex"],
        "",
    ),
    (
        "serial_line.columns",
        "CSV columns",
        "text",
        Kind::List,
        &[],
        "comma-separated",
    ),
    (
        "serial_line.separator",
        "Separator",
        "text",
        Kind::Text,
        &[],
        "",
    ),
    (
        "serial_line.pattern",
        "Regex pattern",
        "text",
        Kind::Text,
        &[],
        "named groups are fields",
    ),
];

const POINT: &[Spec] = &[
    ("name", "Name", "text", Kind::Text, &[], ""),
    ("unit", "Unit", "text", Kind::Text, &[], ""),
    (
        "table",
        "Table",
        "select",
        Kind::Text,
        &["", "holding", "input", "coil", "discrete_input"],
        "",
    ),
    ("address", "Address", "number", Kind::Int, &[], ""),
    (
        "type",
        "Type",
        "select",
        Kind::Text,
        &[
            "", "bool", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string",
        ],
        "",
    ),
    (
        "order",
        "Order",
        "select",
        Kind::Text,
        &["", "ABCD", "DCBA", "BADC", "CDAB"],
        "",
    ),
    ("scale", "Scale", "text", Kind::Float, &[], ""),
    ("offset", "Offset", "text", Kind::Float, &[], ""),
    ("deadband", "Deadband", "text", Kind::Float, &[], ""),
    ("writable", "Writable", "checkbox", Kind::Bool, &[], ""),
];

/// What kind of device a table describes (`modbus`, `serial_line`, `simulated`).
fn kind_of(t: &Table) -> Option<&'static str> {
    ["modbus", "serial_line", "simulated"]
        .into_iter()
        .find(|k| t.contains_key(k))
}

/// The device fields that apply to `kind` (a Modbus device has no serial line settings).
fn device_specs(kind: &str) -> Vec<Spec> {
    DEVICE
        .iter()
        .filter(|s| match s.0.split_once('.') {
            Some((section, _)) => section == kind,
            None => true,
        })
        .copied()
        .collect()
}

/// `?kind=` of a new device's form.
#[derive(Debug, serde::Deserialize)]
pub struct KindQuery {
    kind: Option<String>,
}

/// Empty point rows offered under the existing ones.
const BLANK_POINTS: usize = 2;

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
    test_upstream: bool,
    /// The device's kind (devices only).
    kind: &'static str,
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
            test_upstream: false,
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

fn upstream_page(web: &Web, who: &Authed, t: &Table, errors: &FieldErrors) -> FormPage {
    let mut page = FormPage::new(
        Chrome::new(web, who, "Upstream", "config"),
        "Upstream (the Kaa server)".into(),
        "/config/upstream".into(),
        fields(UPSTREAM, t, errors, ""),
    );
    page.test_upstream = true;
    page
}

/// `GET /config/upstream`.
pub async fn upstream_form(State(web): State<Web>, Extension(who): Extension<Authed>) -> Response {
    let (doc, _) = doc_of(&web);
    let t = doc
        .get("upstream")
        .and_then(Item::as_table)
        .cloned()
        .unwrap_or_default();
    html(upstream_page(&web, &who, &t, &FieldErrors::new()))
}

/// Sets `[upstream]` of `doc` from the upstream form; returns the table as set.
pub fn apply_upstream(
    doc: &mut DocumentMut,
    form: &[(String, String)],
    errors: &mut FieldErrors,
) -> Table {
    let t = forms::subtable(doc.as_table_mut(), "upstream");
    apply(UPSTREAM, t, form, "", errors);
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

// ---- devices ---------------------------------------------------------------------------

fn device_page(
    web: &Web,
    who: &Authed,
    doc: &DocumentMut,
    at: Option<usize>,
    t: &Table,
    e: &FieldErrors,
) -> FormPage {
    let slot = at.map_or("new".to_owned(), |i| i.to_string());
    let kind = kind_of(t).unwrap_or("modbus");
    let mut fs = fields(&device_specs(kind), t, e, "");
    let bus_names: Vec<String> = forms::tables(doc, &["modbus", "buses"])
        .iter()
        .map(|b| forms::shown(b, "name"))
        .collect();
    if let Some(f) = fs.iter_mut().find(|f| f.name == "modbus.bus") {
        f.options = std::iter::once(String::new()).chain(bus_names).collect();
    }
    let metadata = t
        .get("metadata")
        .and_then(Item::as_table_like)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k} = {}",
                        v.as_str()
                            .map_or_else(|| v.to_string().trim().to_owned(), str::to_owned)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    fs.push(Field {
        name: "metadata".into(),
        label: "Metadata",
        input: "textarea",
        value: metadata,
        options: Vec::new(),
        errors: e.get("metadata").cloned().unwrap_or_default(),
        help: "one key = value per line (sent to the platform's endpoint metadata)",
    });
    let existing: Vec<Table> = t
        .get("points")
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default();
    // Points are Modbus registers here; a serial sensor's fields come from its lines, and
    // a simulated device's waveforms are edited in the raw editor.
    let points = if kind == "modbus" {
        existing
            .iter()
            .chain(std::iter::repeat_n(&Table::new(), BLANK_POINTS))
            .enumerate()
            .map(|(j, p)| fields(POINT, p, e, &format!("points[{j}].")))
            .collect()
    } else {
        Vec::new()
    };
    let name = forms::shown(t, "name");
    let mut page = FormPage::new(
        Chrome::new(web, who, "Device", "config"),
        at.map_or("New device".into(), |_| format!("Device {name}")),
        format!("/config/devices/{slot}"),
        fs,
    );
    page.point_labels = POINT.iter().map(|s| s.1).collect();
    page.points = points;
    page.kind = kind;
    page.delete = at.map(|i| format!("/config/devices/{i}/delete"));
    page.read_now = at.filter(|_| t.contains_key("modbus")).map(|_| name);
    page
}

/// An empty device of `kind` (from `?kind=` or the form's hidden field).
fn new_device(kind: Option<&str>) -> Table {
    let mut t = Table::new();
    let kind = match kind {
        Some("serial_line") => "serial_line",
        _ => "modbus",
    };
    forms::subtable(&mut t, kind);
    t
}

/// `GET /config/devices/{index|new}` (`?kind=modbus|serial_line` for a new one).
pub async fn device_form(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<String>,
    axum::extract::Query(q): axum::extract::Query<KindQuery>,
) -> Response {
    let (doc, _) = doc_of(&web);
    let devices = forms::tables(&doc, &["devices"]);
    let at = match index_of(&index, devices.len()) {
        Ok(at) => at,
        Err(r) => return *r,
    };
    let t = at
        .map(|i| devices[i].clone())
        .unwrap_or_else(|| new_device(q.kind.as_deref()));
    html(device_page(&web, &who, &doc, at, &t, &FieldErrors::new()))
}

/// Metadata lines `key = value` → a table (numbers and booleans keep their type).
fn metadata_table(text: &str, errors: &mut FieldErrors) -> Table {
    let mut t = Table::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            errors
                .entry("metadata".into())
                .or_default()
                .push(format!("line {}: write key = value", n + 1));
            continue;
        };
        let v = v.trim();
        let item = if let Ok(i) = v.parse::<i64>() {
            toml_edit::value(i)
        } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
            toml_edit::value(f)
        } else if let Ok(b) = v.parse::<bool>() {
            toml_edit::value(b)
        } else {
            toml_edit::value(v.trim_matches('"'))
        };
        t.insert(k.trim(), item);
    }
    t
}

/// `POST /config/devices/{index|new}`.
pub async fn device_save(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let (mut doc, _) = doc_of(&web);
    let devices = forms::tables_at(&mut doc, &["devices"]);
    let at = match index_of(&index, devices.len()) {
        Ok(at) => at,
        Err(r) => return *r,
    };
    let slot = at.unwrap_or(devices.len());
    let kind_field = form
        .iter()
        .find(|(k, _)| k == "kind")
        .map(|(_, v)| v.as_str());
    let mut t = at
        .and_then(|i| devices.get(i).cloned())
        .unwrap_or_else(|| new_device(kind_field));
    let kind = kind_of(&t).unwrap_or("modbus");
    let mut errors = FieldErrors::new();
    apply(&device_specs(kind), &mut t, &form, "", &mut errors);
    let meta = form
        .iter()
        .find(|(k, _)| k == "metadata")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let meta = metadata_table(meta, &mut errors);
    if meta.is_empty() {
        t.remove("metadata");
    } else {
        t.insert("metadata", Item::Table(meta));
    }
    // Point rows: a row without a name is no point (that is how one is removed). Only
    // Modbus devices edit points here.
    let old_points: Vec<Table> = t
        .get("points")
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default();
    let mut points = ArrayOfTables::new();
    for j in (0..old_points.len() + BLANK_POINTS).filter(|_| kind == "modbus") {
        let prefix = format!("points[{j}].");
        let named = form
            .iter()
            .any(|(k, v)| *k == format!("{prefix}name") && !v.trim().is_empty());
        if !named {
            continue;
        }
        let mut p = old_points.get(j).cloned().unwrap_or_default();
        apply(POINT, &mut p, &form, &prefix, &mut errors);
        points.push(p);
    }
    if kind == "modbus" {
        if points.is_empty() {
            t.remove("points");
        } else {
            t.insert("points", Item::ArrayOfTables(points));
        }
    }
    match at {
        Some(i) => {
            if let Some(d) = devices.get_mut(i) {
                *d = t.clone();
            }
        }
        None => devices.push(t.clone()),
    }
    let note = format!(
        "device {} {}",
        forms::shown(&t, "name"),
        if at.is_some() { "edited" } else { "added" }
    );
    let result = if errors.is_empty() {
        commit(
            &web,
            &who,
            doc.to_string(),
            Origin::Web,
            note,
            &format!("devices[{slot}]"),
        )
        .await
    } else {
        Err(errors)
    };
    match result {
        Ok(a) => after_save(&a),
        Err(e) => failed(device_page(&web, &who, &doc, at, &t, &e), e),
    }
}

/// `POST /config/devices/{index}/delete`.
pub async fn device_delete(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<usize>,
) -> Response {
    remove_at(&web, &who, &["devices"], index, "device").await
}
