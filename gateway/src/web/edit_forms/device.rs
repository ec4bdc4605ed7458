//! The device form: a Modbus device (with its points) or a serial line sensor; a simulated
//! device's waveforms are edited in the raw editor.

use super::*;
use crate::profiles::Profile;

/// What kind of device a table describes (`modbus`, `serial_line`, `simulated`).
pub(super) fn kind_of(t: &Table) -> Option<&'static str> {
    ["modbus", "serial_line", "simulated"]
        .into_iter()
        .find(|k| t.contains_key(k))
}

/// The device fields that apply to `kind` (a Modbus device has no serial line settings).
pub(super) fn device_specs(kind: &str) -> Vec<Spec> {
    DEVICE
        .iter()
        .filter(|s| match s.0.split_once('.') {
            Some((section, _)) => section == kind,
            None => true,
        })
        .copied()
        .collect()
}

/// `?kind=` of a new device's form, and what the commissioning tools pre-fill: the bus
/// and unit ID of a device a scan found, a point from the register browser.
#[derive(Debug, Default, serde::Deserialize)]
pub struct KindQuery {
    kind: Option<String>,
    bus: Option<String>,
    unit_id: Option<u8>,
    point_table: Option<String>,
    point_address: Option<u16>,
    point_type: Option<String>,
    point_order: Option<String>,
    profile: Option<String>,
}

impl KindQuery {
    /// Puts the pre-filled values into the (not yet saved) device table: a profile's
    /// points and settings first, then the bus, unit ID and point given.
    fn prefill(&self, t: &mut Table, profile: Option<&Profile>) {
        if let (Some(p), Some(m)) = (profile, t.get_mut("modbus").and_then(Item::as_table_mut)) {
            m.insert("vendor", toml_edit::value(p.vendor.as_str()));
            m.insert("model", toml_edit::value(p.model.as_str()));
            if let Some(unit) = p.defaults.unit_id {
                m.insert("unit_id", toml_edit::value(i64::from(unit)));
            }
            if let Some(ms) = p.defaults.poll_interval_ms {
                t.insert("poll_interval_ms", toml_edit::value(ms as i64));
            }
            let mut points = toml_edit::ArrayOfTables::new();
            for point in &p.points {
                let text = toml::to_string(point).unwrap_or_default();
                if let Ok(doc) = text.parse::<toml_edit::DocumentMut>() {
                    points.push(doc.as_table().clone());
                }
            }
            t.insert("points", Item::ArrayOfTables(points));
        }
        if let Some(m) = t.get_mut("modbus").and_then(Item::as_table_mut) {
            if let Some(bus) = &self.bus {
                m.insert("bus", toml_edit::value(bus.as_str()));
            }
            if let Some(unit) = self.unit_id {
                m.insert("unit_id", toml_edit::value(i64::from(unit)));
            }
        } else {
            return; // points are Modbus registers
        }
        let Some(address) = self.point_address else {
            return;
        };
        let mut p = Table::new();
        p.insert("name", toml_edit::value(""));
        let texts = [
            ("table", &self.point_table),
            ("type", &self.point_type),
            ("order", &self.point_order),
        ];
        for (key, v) in texts {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                p.insert(key, toml_edit::value(v));
            }
        }
        p.insert("address", toml_edit::value(i64::from(address)));
        if !t.contains_key("points") {
            t.insert("points", Item::ArrayOfTables(Default::default()));
        }
        if let Some(points) = t.get_mut("points").and_then(Item::as_array_of_tables_mut) {
            points.push(p);
        }
    }
}

/// Empty point rows offered under the existing ones.
const BLANK_POINTS: usize = 2;

/// The most point rows one form may carry (a device's register map, with room to spare).
const MAX_POINT_ROWS: usize = 2000;

// ---- devices ---------------------------------------------------------------------------

pub(super) fn device_page(
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
    page.csv = at.filter(|_| t.contains_key("modbus"));
    page
}

/// An empty device of `kind` (from `?kind=` or the form's hidden field).
pub(super) fn new_device(kind: Option<&str>) -> Table {
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
    let mut t = at
        .map(|i| devices[i].clone())
        .unwrap_or_else(|| new_device(q.kind.as_deref()));
    let profiles_dir = web.running().0.profiles_dir;
    let (profiles, problems) = crate::profiles::all(Some(&profiles_dir));
    for p in &problems {
        log::warn!("device profiles: {p}");
    }
    let chosen = q
        .profile
        .as_deref()
        .and_then(|id| profiles.iter().find(|p| p.id == id));
    q.prefill(&mut t, chosen);
    let mut page = device_page(&web, &who, &doc, at, &t, &FieldErrors::new());
    if at.is_none() && kind_of(&t) == Some("modbus") {
        page.profiles = profiles
            .iter()
            .map(|p| (p.id.clone(), format!("{} {}", p.vendor, p.model)))
            .collect();
        page.keep = [
            ("bus", q.bus.clone()),
            ("unit_id", q.unit_id.map(|u| u.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if let Some(p) = chosen {
            let d = &p.defaults;
            page.profile_note = format!(
                "From the profile {} ({} points), after {}. The device leaves the factory at {} baud, parity {}: set its bus to match.",
                p.id,
                p.points.len(),
                p.source,
                d.baud.map_or("?".into(), |b| b.to_string()),
                d.parity.as_deref().unwrap_or("?")
            );
        }
    }
    html(page)
}

/// Metadata lines `key = value` → a table (numbers and booleans keep their type).
pub(super) fn metadata_table(text: &str, errors: &mut FieldErrors) -> Table {
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
    // Every row the form sent (a profile or the register browser may have added rows
    // that the saved device does not have yet).
    let rows = form
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("points[")?
                .split_once(']')?
                .0
                .parse::<usize>()
                .ok()
        })
        .map(|j| j + 1)
        .max()
        .unwrap_or(0)
        .min(MAX_POINT_ROWS);
    let mut points = ArrayOfTables::new();
    for j in (0..rows).filter(|_| kind == "modbus") {
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
