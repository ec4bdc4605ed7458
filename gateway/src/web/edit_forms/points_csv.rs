//! A Modbus device's point map as CSV on the web page: download it, or replace it with an
//! uploaded one — checked with the configuration's own rules, every bad row named by its
//! number, and nothing applied unless every row is right.

use axum::http::header;

use super::*;
use crate::config::points_csv::{self, row_error};
use crate::config::Config;

#[derive(Template)]
#[template(path = "points_csv.html")]
struct ImportPage {
    chrome: Chrome,
    device: String,
    index: usize,
    csv: String,
    errors: Vec<String>,
    columns: Vec<&'static str>,
}

page!(ImportPage);

/// The device at `index` (a Modbus one) and its points.
fn device_points(doc: &DocumentMut, index: usize) -> Option<(String, Vec<Table>)> {
    let devices = forms::tables(doc, &["devices"]);
    let d = devices.get(index)?;
    if !d.contains_key("modbus") {
        return None;
    }
    let points = d
        .get("points")
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().cloned().collect())
        .unwrap_or_default();
    Some((forms::shown(d, "name"), points))
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no Modbus device at that index").into_response()
}

/// `GET /config/devices/{index}/points.csv`.
pub async fn export(State(web): State<Web>, Path(index): Path<usize>) -> Response {
    let (doc, _) = doc_of(&web);
    let Some((name, points)) = device_points(&doc, index) else {
        return not_found();
    };
    let file = format!(
        "{}-points.csv",
        name.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        )
    );
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        points_csv::export(&points),
    )
        .into_response()
}

fn import_page(web: &Web, who: &Authed, device: String, index: usize, csv: String) -> ImportPage {
    ImportPage {
        chrome: Chrome::new(web, who, "Import points", "config"),
        device,
        index,
        csv,
        errors: Vec::new(),
        columns: points_csv::COLUMNS.iter().map(|(c, _)| *c).collect(),
    }
}

/// `GET /config/devices/{index}/import`.
pub async fn import_form(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<usize>,
) -> Response {
    let (doc, _) = doc_of(&web);
    match device_points(&doc, index) {
        Some((name, _)) => html(import_page(&web, &who, name, index, String::new())),
        None => not_found(),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct ImportForm {
    csv: String,
}

/// `POST /config/devices/{index}/import`: the CSV replaces the device's points.
pub async fn import(
    State(web): State<Web>,
    Extension(who): Extension<Authed>,
    Path(index): Path<usize>,
    Form(f): Form<ImportForm>,
) -> Response {
    let (mut doc, _) = doc_of(&web);
    let Some((name, _)) = device_points(&doc, index) else {
        return not_found();
    };
    let mut page = import_page(&web, &who, name.clone(), index, f.csv.clone());
    let refuse = |mut page: ImportPage, errors: Vec<String>| {
        page.errors = errors;
        page.chrome.status = StatusCode::UNPROCESSABLE_ENTITY;
        html(page)
    };
    let (points, problems) = match points_csv::read(&f.csv) {
        Ok(read) => read,
        Err(errors) => return refuse(page, errors),
    };
    let n = points.len();
    if let Some(d) = forms::tables_at(&mut doc, &["devices"]).get_mut(index) {
        let mut array = ArrayOfTables::new();
        for p in points {
            array.push(p);
        }
        d.insert("points", Item::ArrayOfTables(array));
    }
    let text = doc.to_string();
    // Checked here first so that every problem is worded by its row: the cells that did
    // not parse, then the configuration's rules on the rest (a row is reported once).
    let mut errors: Vec<(usize, String)> = problems.clone();
    if let Err(e) = Config::from_toml(&text) {
        for m in &e.0 {
            let at = points_csv::point_of(m, index);
            if at.is_some_and(|j| problems.iter().any(|(k, _)| *k == j)) {
                continue;
            }
            errors.push((at.unwrap_or(usize::MAX), row_error(m, index)));
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|(j, _)| *j);
        return refuse(page, errors.into_iter().map(|(_, m)| m).collect());
    }
    let note = format!("device {name}: {n} points imported from CSV");
    match commit(&web, &who, text, Origin::Web, note, "").await {
        Ok(a) => after_save(&a),
        Err(e) => {
            page.errors = e.into_values().flatten().collect();
            page.chrome.status = StatusCode::UNPROCESSABLE_ENTITY;
            html(page)
        }
    }
}
