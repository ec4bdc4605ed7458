//! A device's point map as CSV (pure): one row per `[[devices.points]]`, one column per
//! key, for devices with hundreds of registers edited in a spreadsheet. Rows are numbered
//! as a spreadsheet shows them (the header is row 1); an empty cell leaves the key out.

use toml_edit::{value, Item, Table};

/// The columns, in order, with how each cell is read.
pub const COLUMNS: &[(&str, Cell)] = &[
    ("name", Cell::Text),
    ("unit", Cell::Text),
    ("table", Cell::Text),
    ("address", Cell::Int),
    ("type", Cell::Text),
    ("length", Cell::Int),
    ("bit", Cell::Int),
    ("order", Cell::Text),
    ("scale", Cell::Float),
    ("offset", Cell::Float),
    ("deadband", Cell::Float),
    ("writable", Cell::Bool),
    ("readback", Cell::Bool),
    ("write_function", Cell::Text),
    ("poll_interval_ms", Cell::Int),
];

/// How a cell becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Text,
    Int,
    Float,
    Bool,
}

/// The points as CSV (every column, in [`COLUMNS`] order).
pub fn export(points: &[Table]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(COLUMNS.iter().map(|(c, _)| *c));
    for p in points {
        let row: Vec<String> = COLUMNS
            .iter()
            .map(|(c, _)| match p.get(c).and_then(Item::as_value) {
                Some(v) => v
                    .as_str()
                    .map_or_else(|| v.to_string().trim().to_owned(), str::to_owned),
                None => String::new(),
            })
            .collect();
        let _ = w.write_record(&row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// The spreadsheet row number of point `index` (header = row 1).
pub fn row_of(index: usize) -> usize {
    index + 2
}

fn cell(kind: Cell, text: &str) -> Result<Item, String> {
    match kind {
        Cell::Text => Ok(value(text)),
        Cell::Int => text
            .parse::<i64>()
            .map(value)
            .map_err(|_| format!("{text:?} is not a whole number")),
        Cell::Float => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(value)
            .ok_or_else(|| format!("{text:?} is not a number")),
        Cell::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(value(true)),
            "false" | "no" | "0" => Ok(value(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
    }
}

/// A CSV point map read: one table per row (a cell that did not parse left out), and the
/// problems found, by point index.
pub type Imported = (Vec<Table>, Vec<(usize, String)>);

/// Reads a CSV point map; columns may come in any order and may be left out (not `name`).
/// `Err`: the header is wrong. Otherwise every row gives a point, and every cell that did
/// not parse a problem worded with its row number.
pub fn read(text: &str) -> Result<Imported, Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut errors = Vec::new();
    let header: Vec<String> = match r.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => return Err(vec![format!("row 1: {e}")]),
    };
    let mut columns = Vec::new();
    for (i, h) in header.iter().enumerate() {
        match COLUMNS.iter().find(|(c, _)| c == h) {
            Some(&(c, kind)) if !columns.iter().any(|&(_, n, _)| n == c) => {
                columns.push((i, c, kind))
            }
            Some(_) => errors.push(format!("row 1: column {h:?} appears twice")),
            None => errors.push(format!(
                "row 1: unknown column {h:?} (columns: {})",
                COLUMNS
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if !columns.iter().any(|&(_, c, _)| c == "name") {
        errors.push("row 1: the header needs a \"name\" column".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut points = Vec::new();
    let mut problems = Vec::new();
    for (n, record) in r.records().enumerate() {
        let row = row_of(n);
        let record = match record {
            Ok(rec) => rec,
            Err(e) => {
                problems.push((n, format!("row {row}: {e}")));
                points.push(Table::new());
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            problems.push((n, format!("row {row}: empty row")));
            points.push(Table::new());
            continue;
        }
        if record.len() > header.len() {
            problems.push((
                n,
                format!(
                    "row {row}: {} cells for {} columns",
                    record.len(),
                    header.len()
                ),
            ));
            points.push(Table::new());
            continue;
        }
        let mut p = Table::new();
        for &(i, c, kind) in &columns {
            let Some(text) = record.get(i).filter(|t| !t.is_empty()) else {
                continue;
            };
            match cell(kind, text) {
                Ok(item) => {
                    p.insert(c, item);
                }
                Err(e) => problems.push((n, format!("row {row}: {c}: {e}"))),
            }
        }
        points.push(p);
    }
    Ok((points, problems))
}

/// [`read`], all or nothing: the points, or every problem.
pub fn import(text: &str) -> Result<Vec<Table>, Vec<String>> {
    let (points, problems) = read(text)?;
    if problems.is_empty() {
        Ok(points)
    } else {
        Err(problems.into_iter().map(|(_, p)| p).collect())
    }
}

/// The point index a validation error about `devices[device].points[j]` is about.
pub fn point_of(error: &str, device: usize) -> Option<usize> {
    let rest = error.strip_prefix(&format!("devices[{device}].points["))?;
    rest.split_once(']')?.0.parse().ok()
}

/// Turns a validation error about `devices[device].points[j]` into its row's wording.
pub fn row_error(error: &str, device: usize) -> String {
    let prefix = format!("devices[{device}].points[");
    if let Some(rest) = error.strip_prefix(&prefix) {
        if let Some((j, tail)) = rest.split_once(']') {
            if let Ok(j) = j.parse::<usize>() {
                let tail = tail.trim_start_matches('.');
                return format!("row {}: {tail}", row_of(j));
            }
        }
    }
    error.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "name,unit,table,address,type,order,scale,writable\n\
                       voltage,V,input,0,f32,ABCD,,\n\
                       \"setpoint, main\",°C,holding,10,i16,,0.1,true\n";

    #[test]
    fn import_then_export_then_import_is_identical() {
        let points = import(MAP).unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(
            points[1].get("name").unwrap().as_str(),
            Some("setpoint, main")
        );
        assert_eq!(points[1].get("scale").unwrap().as_float(), Some(0.1));
        assert_eq!(points[1].get("writable").unwrap().as_bool(), Some(true));
        assert!(points[0].get("scale").is_none(), "an empty cell is no key");
        let csv = export(&points);
        let again = import(&csv).unwrap();
        assert_eq!(export(&again), csv);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn every_bad_row_is_reported_with_its_number() {
        let bad = "name,address,scale,writable\n\
                   ok,1,,\n\
                   a,x,,\n\
                   b,2,big,\n\
                   c,3,,maybe\n";
        assert_eq!(
            import(bad).unwrap_err(),
            vec![
                "row 3: address: \"x\" is not a whole number",
                "row 4: scale: \"big\" is not a number",
                "row 5: writable: \"maybe\" is not true or false",
            ]
        );
        let unknown = import("name,colour\nx,red\n").unwrap_err();
        assert!(
            unknown[0].starts_with("row 1: unknown column \"colour\""),
            "{unknown:?}"
        );
        assert_eq!(
            row_error("devices[3].points[4].address: required", 3),
            "row 6: address: required"
        );
    }
}
